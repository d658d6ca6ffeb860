"""The generated CLI: every command has --help, its table help matches its docstring, errors are one line."""

import inspect
import json
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


# -- the same --quiet and --json everywhere ----------------------------------------------------------------------------

# Commands a person waits on: progress on stderr, none with --quiet.
QUIET = {"data synth", "data check", "data references", "train", "eval", "predict", "demo", "bench"} | {
    " ".join(c.words) for c in COMMANDS if c.words[0] == "convert"
}
# Commands that produce results: --json prints them as one JSON document on stdout.
JSON = {"data check", "data references", "score", "models", "eval", "bench"} | {
    " ".join(c.words) for c in COMMANDS if c.words[0] == "convert"
}


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c.words))
def test_quiet_and_json_have_one_spelling_and_meaning(cmd):
    name = " ".join(cmd.words)
    params = inspect.signature(cmd.load()).parameters
    docs = _doc_args(cmd.load())
    assert ("quiet" in params) == (name in QUIET), name
    assert ("json" in params) == (name in JSON), name
    if "quiet" in params:
        assert params["quiet"].default is False and docs["quiet"].startswith("show no progress"), docs["quiet"]
        args = build_parser(load=name).parse_args([*cmd.words, *_required(name), "--quiet"])
        assert args.quiet is True
    if "json" in params:
        assert params["json"].default is False and "JSON" in docs["json"], docs["json"]
        args = build_parser(load=name).parse_args([*cmd.words, *_required(name), "--json"])
        assert args.json is True


def _required(name: str) -> list[str]:
    """Arguments that let ``name`` parse (positionals and required options)."""
    by_command = {
        "data synth": ["out"],
        "data check": ["root", "--format", "refavs"],
        "data references": ["root"],
        "score": ["--pred", "p.npz", "--gt", "g.npz"],
        "train": ["--data", "d"],
        "eval": ["--checkpoint", "c", "--data", "d"],
        "predict": ["v.mp4", "--checkpoint", "c", "--out", "o.mp4"],
    }
    if name.startswith("convert"):
        return ["in", "out"]
    return by_command.get(name, [])


def test_models_json_lists_each_preset_with_its_family_and_tasks(capsys):
    from avseg.config import config_to_dict
    from avseg.models.registry import get_entry, list_models

    assert main(["models", "--pattern", "tpavi-*", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)  # stdout holds the JSON document and nothing else
    assert [row["preset"] for row in rows] == list_models("tpavi-*") and rows
    for row in rows:
        entry = get_entry(row["preset"])
        assert row["family"] == "tpavi" and row["tasks"] == list(entry.tasks)
        assert row["description"] == entry.description and "config" not in row
    assert main(["models", "--pattern", "tpavi-tiny", "--json", "--verbose"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["config"] == json.loads(json.dumps(config_to_dict(get_entry("tpavi-tiny").config()), default=str))
    assert main(["models", "--pattern", "nothing-*", "--json"]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out) == [] and "no registered model matches 'nothing-*'" in captured.err


def test_data_check_json_holds_the_counts_and_quiet_hides_progress(tmp_path, capsys, monkeypatch):
    import avseg.progress
    from tests.data.fixtures_refavs import write_refavs_tree

    tree = write_refavs_tree(tmp_path / "refavs")
    monkeypatch.setattr(avseg.progress, "LOG_INTERVAL_S", 0.0)  # a progress line at every expression
    assert main(["data", "check", str(tree.root), "--format", "refavs", "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)  # stdout holds the JSON document and nothing else
    assert report["root"] == str(tree.root) and report["format"] == "refavs" and report["ok"] is True
    assert report["item_name"] == "expressions" and report["missing"] == [] and report["unreadable"] == []
    for split, counts in tree.counts.items():
        assert {k: report["splits"][split][k] for k in counts} == counts, split
    train = tree.counts["train"]["items"]
    assert f"checking train: {train}/{train} expressions (100%)" in captured.err
    assert main(["data", "check", str(tree.root), "--format", "refavs", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "checking" not in captured.err and "OK: no missing or unreadable files" in captured.out
