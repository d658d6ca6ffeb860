"""``avseg train``: config precedence, overrides, refusals, and an end-to-end run on the Ref-AVS fixture."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest
import yaml

from avseg.cli import main
from avseg.errors import AVSegWarning, UsageError
from avseg.train import commands as commands_module
from avseg.train import trainer as trainer_module
from avseg.train.commands import train
from avseg.train.run import build_run_config
from tests.data.fixtures_refavs import write_refavs_tree
from tests.toy_model import ensure_registered
from tests.train.test_trainer import VirtualClock


@pytest.fixture(scope="module")
def refavs_root(tmp_path_factory):
    return write_refavs_tree(tmp_path_factory.mktemp("refavs") / "refavs").root


def test_precedence_defaults_file_options_overrides(tmp_path):
    file = tmp_path / "run.yaml"
    file.write_text(
        yaml.safe_dump(
            {
                "model": "from-file",
                "data": {"format": "avss", "image_size": 32},
                "train": {"seed": 3, "max_epochs": 2, "batch_size": 4, "optim": {"lr": 0.5}},
            }
        )
    )
    # options at their defaults keep the file's values; given options replace them; overrides apply last
    run = build_run_config(
        data=tmp_path,
        model=None,
        config=file,
        overrides=["train.lr=0.25", "train.schedule.kind=poly", "model.decoder.dim=8", "data.options.null_masks=zeros"],
        explicit={"train.batch_size": 8},
        defaults={"train.seed": 0, "data.format": "refavs", "train.val_split": "val"},
    )
    assert run.model == "from-file"
    assert run.data.root == str(tmp_path) and run.data.format == "avss" and run.data.image_size == 32
    assert run.train.seed == 3 and run.train.max_epochs == 2 and run.train.batch_size == 8
    assert run.train.optim.lr == 0.25 and run.train.schedule.kind == "poly"  # train.lr is short for train.optim.lr
    assert run.model_overrides == {"decoder.dim": 8}
    assert run.data.options == {"null_masks": "zeros"}
    assert run.train.val_split == "val"


def test_a_registered_preset_trains_with_its_own_recipe_below_the_file_and_overrides(tmp_path):
    from avseg.models import get_entry

    recipe = get_entry("avsegformer-tiny").config().recipe
    run = build_run_config(data=tmp_path, model="avsegformer-tiny", config=None, defaults={"train.seed": 0})
    assert (run.train.optim.name, run.train.optim.lr, run.train.optim.weight_decay) == ("adamw", recipe.optim.lr, 1e-4)
    assert (run.train.schedule.kind, run.train.schedule.warmup_steps) == ("cosine", recipe.schedule.warmup_steps)
    assert (run.train.batch_size, run.train.clip_grad_norm, run.train.max_epochs) == (4, 1.0, recipe.epochs)
    assert not run.train.schedule.fit_to_budget
    # the recipe's epochs apply only when nothing else gives the run a length
    run = build_run_config(
        data=tmp_path,
        model="avsegformer-tiny",
        config=None,
        explicit={"train.max_steps": 7},
        defaults={"train.seed": 0},
    )
    assert (run.train.max_steps, run.train.max_epochs, run.train.optim.lr) == (7, None, recipe.optim.lr)
    # a file that sets only the learning rate keeps the rest of the recipe; model.recipe.* overrides reach it too
    file = tmp_path / "run.yaml"
    file.write_text(yaml.safe_dump({"train": {"optim": {"lr": 0.5}, "max_epochs": 2}}))
    run = build_run_config(
        data=tmp_path,
        model="avsegformer-tiny",
        config=file,
        overrides=["model.recipe.optim.weight_decay=0.25"],
        defaults={"train.seed": 0, "train.schedule.fit_to_budget": True},
    )
    assert (run.train.optim.name, run.train.optim.lr, run.train.optim.weight_decay) == ("adamw", 0.5, 0.25)
    assert run.train.max_epochs == 2 and run.train.schedule.kind == recipe.schedule.kind
    assert run.train.schedule.fit_to_budget  # --max-minutes fits the schedule unless told otherwise
    run = build_run_config(
        data=tmp_path,
        model="avsegformer-tiny",
        config=None,
        overrides=["train.schedule.fit_to_budget=false"],
        defaults={"train.seed": 0, "train.schedule.fit_to_budget": True},
    )
    assert not run.train.schedule.fit_to_budget


def test_bad_overrides_and_configs_name_the_key(tmp_path):
    with pytest.raises(ValueError, match="must start with"):
        build_run_config(data=tmp_path, model="m", config=None, overrides=["lr=1"], defaults={"train.seed": 0})
    with pytest.raises(ValueError, match="max_stepz"):
        build_run_config(
            data=tmp_path, model="m", config=None, overrides=["train.max_stepz=1"], defaults={"train.seed": 0}
        )
    with pytest.raises(ValueError, match="no model"):
        build_run_config(
            data=tmp_path, model=None, config=None, explicit={"train.max_steps": 1}, defaults={"train.seed": 0}
        )
    # A model key is named as the user typed it, with its "model." prefix.
    with pytest.raises(ValueError, match=r"override 'model\.decoderz\.dim': no config section 'model\.decoderz'"):
        build_run_config(
            data=tmp_path, model="tpavi-tiny", config=None, overrides=["model.decoderz.dim=8"], defaults={}
        )
    with pytest.raises(ValueError, match=r"override 'model\.num_classez': unknown key"):
        build_run_config(data=tmp_path, model="tpavi-tiny", config=None, overrides=["model.num_classez=2"], defaults={})
    # The Python API takes the keys without the prefix, and names them so.
    from avseg.models import get_entry

    with pytest.raises(ValueError, match=r"override 'num_classez': unknown key"):
        get_entry("tpavi-tiny").config(num_classez=2)


def test_test_split_refused(refavs_root, tmp_path):
    with pytest.raises(ValueError, match="test split"):
        train(data=refavs_root, model=ensure_registered(), out=tmp_path / "run", max_steps=1, val_split="test_s")
    assert not (tmp_path / "run").exists()


def test_train_end_to_end_on_refavs_fixture(refavs_root, tmp_path, capsys):
    out = tmp_path / "run"
    status = train(
        data=refavs_root,
        model=ensure_registered(),
        out=out,
        max_steps=2,
        image_size=16,
        batch_size=2,
        overrides=["train.lr=0.01", "train.log_every=1", "train.progress_bar=false"],
    )
    assert status == 0
    printed = capsys.readouterr().out
    assert "2 steps" in printed and "best J&F" in printed
    run_config = yaml.safe_load((out / "run_config.yaml").read_text())
    assert run_config["train"]["optim"]["lr"] == 0.01 and run_config["data"]["root"] == str(refavs_root)
    assert run_config["model"] == "toytrain-test"
    vals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    vals = [e for e in vals if e["event"] == "val"]
    assert len(vals) == 1 and vals[0]["split"] == "val" and {"J", "F", "J&F"} <= set(vals[0]["metrics"])
    best = json.loads((out / "checkpoints" / "best.json").read_text())
    assert best["split"] == "val" and best["checkpoint"] == "step-0000002"
    # resume in the same folder continues; a fresh run there is refused
    with pytest.raises(UsageError, match="pass --resume to continue it, or choose a new folder"):
        train(data=refavs_root, model=ensure_registered(), out=out, max_steps=2, image_size=16, val_split="none")
    with pytest.warns(AVSegWarning, match="schedule is kept"):
        status = train(
            data=refavs_root,
            model=ensure_registered(),
            out=out,
            max_steps=3,
            image_size=16,
            batch_size=2,
            resume=True,
            val_split="none",
            overrides=["train.progress_bar=false"],
        )
    assert status == 0
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 3 and summary["resumed_from"].endswith("step-0000002")
    # resuming the finished run says so in one line and changes nothing
    capsys.readouterr()
    files = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    argv = ["train", "--data", str(refavs_root), "--model", "toytrain-test", "--out", str(out), "--max-steps", "3"]
    assert main([*argv, "--image-size", "16", "--batch-size", "2", "--val-split", "none", "--resume"]) == 0
    printed = capsys.readouterr()
    assert printed.out.splitlines() == [
        f"avseg train: the run in {out} is already complete (3 of 3 steps); nothing to do (give a longer --max-steps "
        "or train.max_epochs to train further)"
    ]
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == files
    # the saved run config is a valid --config
    again = build_run_config(data=refavs_root, model=None, config=out / "run_config.yaml")
    assert again.model == "toytrain-test" and again.train.max_steps == 3


def test_train_shows_progress_lines_and_quiet_hides_them(refavs_root, tmp_path, capsys):
    ensure_registered()
    argv = ["train", "--data", str(refavs_root), "--model", "toytrain-test", "--max-steps", "2", "--image-size", "16"]
    argv += ["--batch-size", "2", "--val-split", "none"]
    assert main([*argv, "--out", str(tmp_path / "shown")]) == 0
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("train: step")]
    # stderr is not a terminal here: plain lines, the first when training starts and the last at the end
    assert lines[0].startswith("train: step 1/2 (50%), loss ") and "steps/s" in lines[0] and "ETA" in lines[0]
    assert lines[-1].startswith("train: step 2/2 (100%), loss ")
    assert "avseg train: toytrain-test on refavs:train, 2 steps" in captured.out
    assert main([*argv, "--out", str(tmp_path / "quiet"), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "train: step" not in captured.err and "steps/s" not in captured.err
    assert "avseg train: toytrain-test on refavs:train, 2 steps" in captured.out  # the summary is still printed
    # --quiet is about this run's display, not the experiment: the recorded config, reused with --config, shows progress
    recorded = yaml.safe_load((tmp_path / "quiet" / "run_config.yaml").read_text())
    assert recorded["train"]["progress_bar"] is True


def test_cli_parses_overrides_list(refavs_root, tmp_path):
    ensure_registered()
    out = tmp_path / "run"
    argv = ["train", "--data", str(refavs_root), "--model", "toytrain-test", "--out", str(out), "--max-steps", "1"]
    argv += [
        "--image-size",
        "16",
        "--val-split",
        "none",
        "--overrides",
        "train.batch_size=1",
        "train.progress_bar=false",
    ]
    assert main(argv) == 0
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 1 and summary["samples_seen"] == 1 and summary["final_metrics"] is None


def test_out_is_checked_before_any_model_or_data_work(tmp_path, monkeypatch, capsys):
    import avseg.models.registry as registry

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before --out was checked")

    monkeypatch.setattr(registry, "create_model", no_model)
    model = ensure_registered()
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    with pytest.raises(UsageError, match=rf"--out {a_file}: is a file"):
        train(data=tmp_path / "missing", model=model, out=a_file, max_steps=1)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "latest.json").write_text('{"checkpoint": "step-0000001", "step": 1}')
    with pytest.raises(UsageError) as err:
        train(data=tmp_path / "missing", model=model, out=run, max_steps=1)
    assert str(err.value) == (
        f"--out {run}: already holds a training run ({run / 'checkpoints' / 'latest.json'}); pass --resume to "
        "continue it, or choose a new folder"
    )
    with pytest.raises(UsageError, match=rf"--out {tmp_path / 'new'}: holds no training run to resume"):
        train(data=tmp_path / "missing", model=model, out=tmp_path / "new", max_steps=1, resume=True)
    # on the command line: one line, exit status 2
    capsys.readouterr()
    argv = ["train", "--data", str(tmp_path / "missing"), "--model", model, "--max-steps", "1", "--out"]
    assert main([*argv, str(run)]) == 2
    latest = run / "checkpoints" / "latest.json"
    assert capsys.readouterr().err.splitlines() == [
        f"avseg: error: --out {run}: already holds a training run ({latest}); pass --resume to continue it, or "
        "choose a new folder"
    ]
    assert main([*argv, str(a_file)]) == 2
    assert capsys.readouterr().err.splitlines() == [f"avseg: error: --out {a_file}: is a file, not a folder"]


def test_a_budget_that_allows_no_step_is_one_line_and_saves_nothing(refavs_root, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--data", str(refavs_root), "--model", ensure_registered(), "--out", str(out)]
    # 0.6 ms: the budget is used up by building the model and indexing the data
    assert main([*argv, "--max-steps", "5", "--image-size", "16", "--max-minutes", "0.00001"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("avseg: warning:")]
    assert len(err) == 1 and err[0].startswith("avseg: error: the time budget train.max_minutes=1e-05"), err
    assert "before the first optimiser step: nothing was trained and no checkpoint was written" in err[0]
    assert not (out / "checkpoints" / "best.json").exists() and not (out / "train_summary.json").exists()
    assert not list(out.glob("checkpoints/step-*"))


def test_a_budget_far_short_of_the_recipe_warns_in_one_line(refavs_root, tmp_path, capsys, monkeypatch):
    clock = VirtualClock()  # virtual time: 0.05 s per forward pass of the toy model, nothing else takes time
    monkeypatch.setattr(commands_module, "time", SimpleNamespace(monotonic=clock.monotonic))
    monkeypatch.setattr(trainer_module, "time", SimpleNamespace(monotonic=clock.monotonic))
    monkeypatch.setattr(time, "sleep", clock.sleep)
    status = train(
        data=refavs_root,
        model=ensure_registered(),
        out=tmp_path / "run",
        max_steps=1000,
        max_minutes=0.01,
        image_size=16,
        batch_size=1,
        overrides=["model.sleep_s=0.05", "train.progress_bar=false"],
    )
    assert status == 0
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["stopped_reason"] == "max_minutes" and 0 < summary["steps"] < 15
    warnings_printed = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings_printed == [
        f"avseg: warning: the time budget allowed {summary['steps']} optimiser steps, "
        f"{summary['steps'] / 1000:.1%} of the 1,000 the recipe plans (max_steps/max_epochs): the model is far from "
        "trained; give a larger --max-minutes"
    ]
