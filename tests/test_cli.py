"""The generated CLI: every command has --help, its table help matches its docstring, errors are one line."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from avseg.cli import COMMANDS, _doc_args, _doc_summary, build_parser, main
from avseg.errors import AVSegError


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c.words))
def test_every_command_documents_every_parameter(cmd):
    import inspect

    fn = cmd.load()
    assert cmd.help == _doc_summary(fn), "the table's one-line help must equal the function docstring's first line"
    documented = _doc_args(fn)
    params = [p for p in inspect.signature(fn).parameters if p not in ("self",)]
    assert set(params) == set(documented), f"undocumented: {set(params) - set(documented)}"


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c.words))
def test_help_of_every_command(cmd, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*cmd.words, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: avseg " + " ".join(cmd.words))
    assert cmd.help.split()[0] in out


def test_top_level_help_lists_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for word in ("data", "audio", "score", "train", "eval", "predict", "demo", "models"):
        assert word in out


def test_user_errors_are_one_line_with_status_2(tmp_path, capsys):
    status = main(["data", "check", str(tmp_path / "missing"), "--format", "refavs"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert err == [f"avseg: error: {tmp_path / 'missing'}: refavs dataset root folder not found"]


def test_parser_types_and_choices():
    parser = build_parser(load="data check")
    args = parser.parse_args(["data", "check", "/x", "--format", "avss", "--json"])
    assert args.format == "avss" and args.json is True and args.deep is False
    with pytest.raises(SystemExit):
        parser.parse_args(["data", "check", "/x", "--format", "nope"])


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "avseg", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("avseg ")


def _readme_command_lines() -> list[str]:
    """The command lines of the README's command table, with optional parts ``[...]`` kept and the first of each
    ``a|b`` choice taken (the table's own notation)."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Command line", 1)[1].split("\n## ", 1)[0]
    lines = []
    for row in section.splitlines():
        match = re.match(r"^\| `avseg ([^`]+)` \|", row)
        if match:
            line = match.group(1).replace("\\|", "|").replace("[", "").replace("]", "")
            lines.append(re.sub(r"(\S+?)\|\S+", r"\1", line))
    return lines


README_LINES = _readme_command_lines()


def test_readme_table_lists_every_command():
    listed = {c.words for line in README_LINES for c in COMMANDS if tuple(line.split()[: len(c.words)]) == c.words}
    assert listed == {c.words for c in COMMANDS}


@pytest.mark.parametrize("line", README_LINES)
def test_readme_command_lines_parse_to_their_command(line):
    """Every command line the README shows parses as written and reaches the function the table names."""
    words = shlex.split(line)
    cmd = next(c for c in COMMANDS if tuple(words[: len(c.words)]) == c.words)
    args = build_parser(load=" ".join(cmd.words)).parse_args(words)
    assert args._fn is cmd.load()
    for option in (w for w in words if w.startswith("--") and not w.startswith("--no-")):
        dest = option[2:].replace("-", "_")
        assert getattr(args, dest) is not None and getattr(args, dest) is not False, f"{option} of {line!r} not parsed"


def test_debug_flag_shows_the_traceback(tmp_path, capsys):
    argv = ["data", "check", str(tmp_path / "missing"), "--format", "refavs"]
    assert main(argv) == 2
    with pytest.raises(AVSegError):
        main([*argv, "--debug"])


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (FileExistsError(17, "File exists", "/runs/x"), "avseg: error: /runs/x: File exists"),
        (NotADirectoryError(20, "Not a directory", "/runs/file"), "avseg: error: /runs/file: Not a directory"),
        (IsADirectoryError(21, "Is a directory", "/out"), "avseg: error: /out: Is a directory"),
        (PermissionError(13, "Permission denied", "/root/x"), "avseg: error: /root/x: Permission denied"),
    ],
)
def test_os_errors_are_one_line_naming_the_path(monkeypatch, capsys, error, expected):
    import avseg.models.commands

    def fail(**_):
        raise error

    monkeypatch.setattr(avseg.models.commands, "models", fail)
    assert main(["models"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [expected]


def test_bugs_keep_their_traceback(monkeypatch):
    import avseg.models.commands

    def fail(**_):
        raise KeyError("a bug")

    monkeypatch.setattr(avseg.models.commands, "models", fail)
    with pytest.raises(KeyError):
        main(["models"])
