"""The README's code runs as written: its Python example is executed here (its command table is parsed in
tests/test_cli.py)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_a_python_example():
    assert len(python_blocks()) == 1


@pytest.mark.slow
def test_the_python_example_runs_on_a_small_synthav(tmp_path, monkeypatch, capsys):
    from avseg.cli import main

    assert main(["data", "synth", str(tmp_path / "synthav"), "--videos", "10", "--size", "64", "--workers", "1"]) == 0
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)  # the example reads "synthav/refavs", as `avseg data synth synthav` writes it
    namespace: dict = {}
    exec(compile(python_blocks()[0], str(README), "exec"), namespace)
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and 0.0 <= float(printed[0]) <= 1.0  # the J&F of an untrained model
    assert tuple(namespace["out"].mask_logits.shape)[:3] == (4, 10, 1)
