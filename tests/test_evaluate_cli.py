"""``avseg eval`` on the command line: output paths and the device are checked before anything is loaded, a model
that needs text is refused on data without text, and a good run writes a JSON report and a separate markdown table.

The checkpoints hold a two-convolution toy model (registered for the test as family ``evaltoy``), the data are the
tiny AVSBench-object (S4) and AVSBench-semantic trees of tests/data.
"""

import json
from dataclasses import dataclass

import pytest

import avseg.models
import avseg.models.registry
from avseg.checkpoint import save_checkpoint
from avseg.cli import main
from avseg.metrics.protocols import AVSBENCH_TEST_SH, protocol_table
from tests.data.fixtures_avs_object import write_s4_tree
from tests.data.fixtures_avss import write_avss_tree
from tests.toy_model import ToyModel


@dataclass
class EvalToyConfig:
    width: int = 4
    num_classes: int = 1
    image_size: int = 32
    use_text: bool = False  # True: a text branch, so what the checkpoint was trained on decides whether it needs text


class EvalToy(ToyModel):
    family = "evaltoy"
    config_class = EvalToyConfig

    @property
    def text_input(self):
        return "optional" if self.config.use_text else "none"


class EvalToyWithProtocol(EvalToy):
    """The toy with a published S4 protocol (AVSBench test.sh: batches of 4 clips)."""

    family = "evaltoy-official"
    official_protocols = protocol_table(s4=AVSBENCH_TEST_SH)


@pytest.fixture(autouse=True)
def _register_toy(monkeypatch):
    monkeypatch.setitem(avseg.models.registry._FAMILIES, EvalToy.family, EvalToy)
    monkeypatch.setitem(avseg.models.registry._FAMILIES, EvalToyWithProtocol.family, EvalToyWithProtocol)


@pytest.fixture(scope="module")
def s4_root(tmp_path_factory):
    return write_s4_tree(tmp_path_factory.mktemp("s4")).root


def refavs_checkpoint(path):
    """A model with a text branch trained on Ref-AVS: it needs a referring expression."""
    return save_checkpoint(path, EvalToy(EvalToyConfig(use_text=True)), meta={"data": {"format": "refavs"}})


def on_s4(ck, s4_root):
    """The arguments that evaluate ``ck`` on the S4 test split."""
    return ["--checkpoint", ck, "--data", s4_root, "--format", "avs-object", "--split", "test"]


def run_eval(capsys, *args):
    status = main(["eval", *map(str, args)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def one_error_line(err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("avseg: error: "), err
    return lines[0]


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if the model is loaded: the checks must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(avseg.models, "load_model", refuse)


def test_json_out_with_another_suffix_is_refused_before_loading(tmp_path, s4_root, capsys, no_loading):
    ck = save_checkpoint(tmp_path / "ck", EvalToy(EvalToyConfig()))
    status, _, err = run_eval(capsys, *on_s4(ck, s4_root), "--json-out", tmp_path / "results.md")
    assert status == 2
    line = one_error_line(err)
    assert "--json-out" in line and "results.md" in line and "must end in .json" in line
    assert not (tmp_path / "results.md").exists()


@pytest.mark.parametrize("case", ["folder", "checkpoint config", "parent is a file"])
def test_bad_json_out_paths_are_refused_before_loading(tmp_path, s4_root, capsys, no_loading, case):
    ck = save_checkpoint(tmp_path / "ck", EvalToy(EvalToyConfig()))
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "r.json").mkdir()
    target = {
        "folder": tmp_path / "r.json",
        "checkpoint config": ck / "config.json",
        "parent is a file": tmp_path / "a_file" / "r.json",
    }[case]
    before = (ck / "config.json").read_text()
    status, _, err = run_eval(capsys, *on_s4(ck, s4_root), "--json-out", target)
    assert status == 2
    line = one_error_line(err)
    assert f"--json-out {target}" in line
    assert (ck / "config.json").read_text() == before


def test_json_out_whose_table_would_be_a_folder_is_refused(tmp_path, s4_root, capsys, no_loading):
    ck = save_checkpoint(tmp_path / "ck", EvalToy(EvalToyConfig()))
    (tmp_path / "r.md").mkdir()
    status, _, err = run_eval(capsys, *on_s4(ck, s4_root), "--json-out", tmp_path / "r.json")
    assert status == 2
    assert "--json-out" in one_error_line(err) and "r.md" in err


def test_save_masks_that_is_a_file_is_refused_before_loading(tmp_path, s4_root, capsys, no_loading):
    ck = save_checkpoint(tmp_path / "ck", EvalToy(EvalToyConfig()))
    (tmp_path / "masks").write_text("x")
    status, _, err = run_eval(capsys, *on_s4(ck, s4_root), "--save-masks", tmp_path / "masks")
    assert status == 2
    assert "--save-masks" in one_error_line(err)
    same = tmp_path / "new" / "r.json"
    status, _, err = run_eval(capsys, *on_s4(ck, s4_root), "--save-masks", same, "--json-out", same)
    assert status == 2
    assert "--save-masks" in one_error_line(err) and "--json-out" in err


def test_bad_device_is_refused_before_loading(tmp_path, s4_root, capsys, no_loading, monkeypatch):
    ck = save_checkpoint(tmp_path / "ck", EvalToy(EvalToyConfig()))
    common = on_s4(ck, s4_root)
    status, _, err = run_eval(capsys, *common, "--device", "banana")
    assert status == 2 and "--device 'banana'" in one_error_line(err)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # a CPU-only torch
    status, _, err = run_eval(capsys, *common, "--device", "cuda")
    assert status == 2 and "--device 'cuda'" in one_error_line(err)


@pytest.mark.parametrize("fmt", ["avs-object", "avss"])
def test_text_model_is_refused_on_data_without_text(tmp_path, s4_root, capsys, fmt):
    ck = refavs_checkpoint(tmp_path / "refavs-ck")
    data = s4_root if fmt == "avs-object" else write_avss_tree(tmp_path / "avss").root
    args = ["--checkpoint", ck, "--data", data, "--format", fmt, "--split", "test", "--image-size", "32"]
    status, out, err = run_eval(capsys, *args, "--device", "cpu")
    assert status == 2
    line = one_error_line(err)
    assert str(ck) in line and f"--format {fmt}" in line and "trained on refavs" in line and "text" in line
    assert "| test |" not in out  # nothing was scored


def test_eval_writes_json_and_markdown_and_shows_progress(tmp_path, s4_root, capsys, monkeypatch):
    import avseg.progress

    monkeypatch.setattr(avseg.progress, "LOG_INTERVAL_S", 0.0)  # a progress line at every batch
    # The same text-capable architecture trained on S4 data runs without text.
    ck = save_checkpoint(
        tmp_path / "ck", EvalToy(EvalToyConfig(use_text=True)), meta={"data": {"format": "avs-object"}}
    )
    status, out, err = run_eval(
        capsys,
        "--checkpoint",
        ck,
        "--data",
        s4_root,
        "--format",
        "avs-object",
        "--split",
        "test",
        "--json-out",
        tmp_path / "out" / "r.json",
        "--device",
        "cpu",
    )
    assert status == 0, err
    report = json.loads((tmp_path / "out" / "r.json").read_text())
    assert set(report["splits"]) == {"test"} and report["splits"]["test"]["settings"]["preset"] == "avsbench"
    table = (tmp_path / "out" / "r.md").read_text()
    assert table.startswith("## ") and "| test | all | 1 |" in table
    # the split's progress, with its true total and its rate
    assert any(line.startswith("eval test: 1/1 items (100%)") and "items/s" in line for line in err.splitlines())
    assert f"wrote {tmp_path / 'out' / 'r.json'} and {tmp_path / 'out' / 'r.md'}" in out


def test_eval_json_prints_the_json_out_report_and_quiet_hides_progress(tmp_path, s4_root, capsys, monkeypatch):
    import avseg.progress

    monkeypatch.setattr(avseg.progress, "LOG_INTERVAL_S", 0.0)  # the default would print a line at every batch
    ck = save_checkpoint(tmp_path / "ck", EvalToy(EvalToyConfig()), meta={"data": {"format": "avs-object"}})
    args = [*on_s4(ck, s4_root), "--device", "cpu", "--json-out", tmp_path / "r.json", "--audio", "true", "silence"]
    status, out, err = run_eval(capsys, *args, "--json")
    assert status == 0, err
    printed = json.loads(out)  # stdout holds the JSON document and nothing else
    assert printed == json.loads((tmp_path / "r.json").read_text())
    test = printed["splits"]["test"]
    assert test["split"] == "test" and test["settings"]["preset"] == "avsbench"
    assert test["settings"]["format"] == "avs-object"
    assert {"J", "F", "J&F"} <= set(test["metrics"]) and test["settings"]["num_items"] == 1
    assert set(printed["audio"]["splits"]["test"]) == {"true", "silence"}
    assert "| test |" not in out and f"wrote {tmp_path / 'r.json'}" in err  # the table is replaced; notes on stderr
    assert "eval test: 1/1 items" in err and "eval test audio=silence: 1/1 items" in err
    status, out, err = run_eval(capsys, *args, "--json", "--quiet")
    assert status == 0, err
    assert json.loads(out)["splits"]["test"]["metrics"] == test["metrics"]
    assert "eval test" not in err and "items/s" not in err


def test_official_protocol_is_recorded_in_json_and_markdown(tmp_path, s4_root, capsys):
    ck = save_checkpoint(tmp_path / "ck", EvalToyWithProtocol(EvalToyConfig()))
    out_json = tmp_path / "r.json"
    args = [*on_s4(ck, s4_root), "--protocol", "official", "--json-out", out_json, "--device", "cpu"]
    status, _, err = run_eval(capsys, *args)
    assert status == 0, err
    settings = json.loads(out_json.read_text())["splits"]["test"]["settings"]
    assert settings["protocol"]["kind"] == "official" and settings["protocol"]["name"] == AVSBENCH_TEST_SH.name
    assert settings["group"] == "batch:4" and settings["preset"] == "avsbench" and settings["benchmark"] == "s4"
    assert settings["gt_source"].startswith("native") and settings["protocol"]["native_masks"] is True
    table = (tmp_path / "r.md").read_text()
    assert "Protocol `official` (AVSBench test.sh" in table and "grouping `batch:4`" in table
    status, _, err = run_eval(capsys, *on_s4(ck, s4_root), "--json-out", out_json, "--device", "cpu")
    assert status == 0, err
    settings = json.loads(out_json.read_text())["splits"]["test"]["settings"]
    assert settings["protocol"]["kind"] == "default" and settings["group"] == "video"
    assert "Protocol `default`" in (tmp_path / "r.md").read_text()


def test_official_protocol_without_one_is_a_one_line_error(tmp_path, s4_root, capsys):
    ck = save_checkpoint(tmp_path / "ck", EvalToy(EvalToyConfig()))
    status, out, err = run_eval(capsys, *on_s4(ck, s4_root), "--protocol", "official", "--device", "cpu")
    assert status == 2 and "| test |" not in out
    line = one_error_line(err)
    assert "no published evaluation protocol for evaltoy on s4" in line and "evaltoy: none" in line


def test_official_protocol_refuses_preset_and_group_before_loading(tmp_path, s4_root, capsys, no_loading):
    ck = save_checkpoint(tmp_path / "ck", EvalToyWithProtocol(EvalToyConfig()))
    status, _, err = run_eval(capsys, *on_s4(ck, s4_root), "--protocol", "official", "--group", "video")
    assert status == 2
    assert "--protocol official fixes the metric preset and grouping; drop --group video" in one_error_line(err)


def test_answer_mode_for_a_model_that_writes_no_answer_is_one_line(tmp_path, s4_root, capsys):
    ck = save_checkpoint(tmp_path / "ck", EvalToy(EvalToyConfig()))
    status, _, err = run_eval(capsys, *on_s4(ck, s4_root), "--answer-mode", "generate")
    line = one_error_line(err)
    assert status == 2 and "--answer-mode generate" in line and str(ck) in line and "writes no answer" in line
