"""RunFolder: the layout of a run folder, starting and resuming a run in it, pruning checkpoints, and files that are
replaced atomically with the umask's mode."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from avseg.train import run_folder as run_folder_module
from avseg.train.run_folder import RunFolder


def fake_checkpoint(run: RunFolder, step: int) -> Path:
    """A folder that ``resolve_checkpoint`` accepts (it holds a ``config.json``)."""
    folder = run.checkpoint(step)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    return folder


def test_the_layout_of_a_run_folder(tmp_path):
    run = RunFolder(tmp_path / "out")
    assert run.checkpoints == tmp_path / "out" / "checkpoints"
    assert run.latest_pointer == run.checkpoints / "latest.json" and run.best_pointer == run.checkpoints / "best.json"
    assert run.metrics.name == "metrics.jsonl" and run.summary.name == "train_summary.json"
    assert run.run_config.name == "run_config.yaml" and run.tensorboard.name == "tensorboard"
    assert run.checkpoint(42) == run.checkpoints / "step-0000042"
    assert RunFolder(str(tmp_path)).root == tmp_path  # a string works too


def test_a_new_run_starts_empty_and_an_existing_one_is_refused(tmp_path):
    run = RunFolder(tmp_path / "out")
    run.start({"train": {"max_steps": 3}}, resumed_step=None)
    assert run.checkpoints.is_dir() and run.metrics.read_text() == ""
    assert yaml.safe_load(run.run_config.read_text()) == {"train": {"max_steps": 3}}
    assert not run.holds_run()
    run.check_new()  # nothing to protect yet
    run.append_event({"event": "train", "step": 1})
    run.point_latest(fake_checkpoint(run, 1), 1)
    assert run.holds_run()
    assert json.loads(run.latest_pointer.read_text()) == {"checkpoint": "step-0000001", "step": 1}
    with pytest.raises(FileExistsError, match=r"already holds a training run .*resume it"):
        run.check_new()
    assert run.resume_point() == run.checkpoint(1)  # the one latest.json names
    assert run.resume_point(run.checkpoint(1)) == run.checkpoint(1)  # or an explicit checkpoint


def test_resuming_keeps_the_events_up_to_the_checkpoint(tmp_path):
    run = RunFolder(tmp_path)
    lines = [json.dumps({"event": "train", "step": s}) for s in range(1, 6)]
    run.metrics.write_text("\n".join([*lines, '{"event": "tra']))  # the last line was cut by the interruption
    run.start({"train": {}}, resumed_step=3)
    assert [json.loads(line)["step"] for line in run.metrics.read_text().splitlines()] == [1, 2, 3]
    assert run.run_config.is_file() and run.checkpoints.is_dir()
    RunFolder(tmp_path / "fresh").start({}, resumed_step=3)  # a resumed run whose events file was lost


def test_pruning_keeps_the_last_checkpoints_and_the_best(tmp_path):
    run = RunFolder(tmp_path)
    for step in range(1, 6):
        fake_checkpoint(run, step)
    (run.checkpoints / "notes").mkdir()  # not a checkpoint: never touched
    assert [s for s, _ in run.step_checkpoints()] == [1, 2, 3, 4, 5]
    run.prune(2, keep="step-0000001")
    left = sorted(p.name for p in run.checkpoints.iterdir())
    assert left == ["notes", "step-0000001", "step-0000004", "step-0000005"]
    assert run.remove_checkpoints_after(4) == ["step-0000005"]
    assert [s for s, _ in run.step_checkpoints()] == [1, 4]


def test_the_best_pointer_is_set_and_cleared(tmp_path):
    run = RunFolder(tmp_path)
    folder = fake_checkpoint(run, 4)
    run.point_best(folder, {"step": 4, "metric": "J&F", "value": 0.5})
    expected = {"checkpoint": "step-0000004", "step": 4, "metric": "J&F", "value": 0.5}
    assert json.loads(run.best_pointer.read_text()) == expected
    run.clear_best()
    assert not run.best_pointer.exists()
    run.clear_best()  # nothing to clear


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def test_the_summary_is_replaced_atomically_with_the_umask_mode(tmp_path, umask_027, monkeypatch):
    run = RunFolder(tmp_path)
    assert run.read_summary() is None
    run.write_summary({"steps": 3, "seed": 0})
    assert run.read_summary() == {"steps": 3, "seed": 0}
    assert run.summary.stat().st_mode & 0o777 == 0o640

    def failing_dumps(obj, **kw):
        return json.dumps(obj, **kw) + "\udc80"  # text that cannot be encoded: the write fails midway

    monkeypatch.setattr(run_folder_module, "json", SimpleNamespace(dumps=failing_dumps, loads=json.loads))
    with pytest.raises(UnicodeEncodeError):
        run.write_summary({"steps": 4, "seed": 0})
    monkeypatch.undo()
    assert run.read_summary() == {"steps": 3, "seed": 0}  # and the previous summary is whole
    assert [p.name for p in tmp_path.iterdir()] == ["train_summary.json"]  # no temporary file left
    run.summary.write_text("[1, 2]")
    assert run.read_summary() is None  # not a summary
    run.summary.write_text("{not json")
    assert run.read_summary() is None
