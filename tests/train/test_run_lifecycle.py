"""The trainer at the edges of a run: a budget that allows no step, resuming a finished run, a schedule fitted to the
budget, progress that follows the time budget (on a terminal and in a log), the warning of a budget far short of the
recipe, and files replaced atomically with the umask's mode. Time is virtual (``VirtualClock``), so nothing here
depends on the machine's speed."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import re
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from avseg.train import run_folder as run_folder_module
from avseg.train import trainer as trainer_module
from avseg.train.config import ScheduleConfig
from avseg.train.optim import LRSchedule, group_lrs
from avseg.train.trainer import ProgressDisplay, Trainer, TrainingError, budget_shortfall
from tests.toy_model import ToyDataset, mean_iou_evaluator, toy_model
from tests.train.test_trainer import VirtualClock, config, events


@pytest.fixture
def clock(monkeypatch) -> VirtualClock:
    """Virtual time for the trainer; the toy model's forward "takes" its ``sleep_s`` of it."""
    clock = VirtualClock()
    monkeypatch.setattr(trainer_module, "time", SimpleNamespace(monotonic=clock.monotonic))
    monkeypatch.setattr(time, "sleep", clock.sleep)
    return clock


def slow_evaluator(clock: VirtualClock, seconds: float):
    def evaluate(model, dataset):
        clock.sleep(seconds)
        return mean_iou_evaluator(model, dataset)

    return evaluate


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def budget_run(clock: VirtualClock, out: Path, *, budget_s: float, fit: bool, progress: bool = True, **kw):
    """A run of at most 100 000 steps cut by a virtual budget: 0.1 s per step, 0.5 s per validation every 10 steps."""
    cfg = config(
        max_steps=100_000,
        max_minutes=budget_s / 60,
        val_every=10,
        progress_bar=progress,
        schedule=ScheduleConfig(kind="cosine", warmup_steps=5, fit_to_budget=fit),
        **kw,
    )
    return Trainer(
        toy_model(sleep_s=0.1),
        ToyDataset(8),
        cfg,
        out,
        val_dataset=ToyDataset(2, split="val"),
        evaluator=slow_evaluator(clock, 0.5),
        clock_start=clock.monotonic(),
    ).fit()


# -- a budget that allows no step -----------------------------------------------------------------------------------


def test_a_budget_used_up_before_the_first_step_is_an_error_and_saves_nothing(tmp_path, clock):
    out = tmp_path / "run"
    started = clock.monotonic()
    clock.sleep(10.0)  # "setup" took 10 s of a 3-s budget
    trainer = Trainer(
        toy_model(),
        ToyDataset(8),
        config(max_steps=50, max_minutes=0.05),
        out,
        val_dataset=ToyDataset(2, split="val"),
        evaluator=mean_iou_evaluator,
        clock_start=started,
    )
    with pytest.raises(TrainingError, match=r"max_minutes=0.05 \(3 s\) was used up .* before the first optimiser step"):
        trainer.fit()
    # the random initialisation is neither a checkpoint nor "best"; nothing at all was written
    assert not out.exists() or not list(out.rglob("*"))


def test_a_budget_that_runs_out_while_outputs_are_prepared_saves_no_checkpoint(tmp_path, clock, monkeypatch):
    prepare = Trainer._prepare_outputs

    def slow_prepare(self, resumed):
        prepare(self, resumed)
        clock.sleep(10.0)  # the budget runs out after the first check and before the first step

    monkeypatch.setattr(Trainer, "_prepare_outputs", slow_prepare)
    out = tmp_path / "run"
    trainer = Trainer(
        toy_model(),
        ToyDataset(8),
        config(max_steps=50, max_minutes=0.05),
        out,
        val_dataset=ToyDataset(2, split="val"),
        evaluator=mean_iou_evaluator,
        clock_start=clock.monotonic(),
    )
    with pytest.raises(TrainingError, match="before the first optimiser step"):
        trainer.fit()
    assert not (out / "checkpoints" / "best.json").exists() and not (out / "checkpoints" / "latest.json").exists()
    assert not list((out / "checkpoints").glob("step-*")) and not (out / "train_summary.json").exists()
    assert not events(out, "val")  # the untrained model was not validated either


# -- resuming a finished run ----------------------------------------------------------------------------------------


def test_resuming_a_finished_run_changes_nothing(tmp_path):
    out = tmp_path / "run"
    val = ToyDataset(2, split="val", seed=1)
    cfg = config(max_steps=4, val_every=2)
    first = Trainer(toy_model(), ToyDataset(8), cfg, out, val_dataset=val, evaluator=mean_iou_evaluator).fit()
    before = snapshot(out)
    again = Trainer(toy_model(), ToyDataset(8), cfg, out, val_dataset=val, evaluator=mean_iou_evaluator)
    summary = again.fit(resume=True)
    assert again.already_complete
    assert summary == first  # the recorded summary, not an empty session's
    assert snapshot(out) == before  # summary, checkpoints, pointers, metrics.jsonl, run_config.yaml untouched
    # a longer run resumed from the same folder does train on
    longer = Trainer(
        toy_model(), ToyDataset(8), config(max_steps=6, val_every=2), out, val_dataset=val, evaluator=mean_iou_evaluator
    )
    with pytest.warns(UserWarning, match="schedule is kept"):
        assert longer.fit(resume=True).steps == 6
    assert not longer.already_complete


# -- a schedule fitted to the budget --------------------------------------------------------------------------------


def cosine(step: int, total: int, warmup: int) -> float:
    """The warmup-cosine factor, written out independently of avseg.train.optim."""
    if step < warmup:
        return step / warmup
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def test_a_fitted_schedule_takes_each_new_length_from_the_next_step_on(tmp_path, clock, monkeypatch):
    cfg = config(
        max_steps=100_000,
        max_minutes=8.0 / 60,
        val_every=10,
        schedule=ScheduleConfig(kind="cosine", warmup_steps=5, fit_to_budget=True),
    )
    calls = []

    def slower_and_slower(model, dataset):
        calls.append(1)
        clock.sleep(0.3 * len(calls))  # each validation takes longer: every estimate moves the schedule's end
        return mean_iou_evaluator(model, dataset)

    trainer = Trainer(
        toy_model(sleep_s=0.1),
        ToyDataset(8),
        cfg,
        tmp_path / "run",
        val_dataset=ToyDataset(2, split="val"),
        evaluator=slower_and_slower,
        clock_start=clock.monotonic(),
    )
    refits: list[tuple[int, int]] = []  # (step after which the length changed, the new length)
    refit = LRSchedule.refit

    def recording_refit(schedule: LRSchedule, total_steps: int) -> None:
        refits.append((trainer.progress.step, total_steps))
        coming = group_lrs(trainer.optimizer)
        refit(schedule, total_steps)
        assert group_lrs(trainer.optimizer) == coming  # the lr set for the coming step stays

    monkeypatch.setattr(LRSchedule, "refit", recording_refit)
    summary = trainer.fit()
    assert len(refits) >= 2 and refits[-1][1] == summary.total_steps == summary.steps  # re-estimated as it ran
    train = events(tmp_path / "run", "train")
    assert [e["step"] for e in train] == list(range(1, summary.steps + 1))
    for event in train:
        # The lr logged after step s is the one step s + 1 uses: f(s) on the length known when the scheduler moved
        # to s, i.e. the planned length until the first estimate, then the length estimated before step s.
        total = next((t for s, t in reversed(refits) if s < event["step"]), 100_000)
        expected = cfg.optim.lr * cosine(event["step"], total, warmup=5)
        assert event["lr"] == pytest.approx({"decay": expected, "no_decay": expected}, rel=1e-12), event


def test_a_resumed_fitted_run_estimates_its_length_once_it_has_timed_a_step(tmp_path, clock):
    # Step 20 ends the warmup; a session that resumes at step 19 has measured no step time when it gets there.
    schedule = ScheduleConfig(kind="cosine", warmup_steps=5, fit_to_budget=True)
    val = ToyDataset(2, split="val")
    out = tmp_path / "run"
    Trainer(toy_model(), ToyDataset(8), config(max_steps=19, schedule=schedule), out).fit()
    resumed = Trainer(
        toy_model(sleep_s=0.1),
        ToyDataset(8),
        config(max_steps=30, max_minutes=1.0, val_every=7, schedule=schedule),
        out,
        val_dataset=val,
        evaluator=slow_evaluator(clock, 0.5),
        clock_start=clock.monotonic(),
    )
    with pytest.warns(UserWarning, match="schedule is kept"):  # the first session planned 19 steps
        summary = resumed.fit(resume=True)
    # A minute allows the 11 steps left: the run reaches max_steps (not cut at its first step, not crashed).
    assert summary.steps == summary.total_steps == 30 and summary.stopped_reason == "max_steps"


# -- progress -------------------------------------------------------------------------------------------------------


class TerminalStream(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("fit", [True, False], ids=["fit_to_budget", "plain_budget"])
def test_progress_in_a_log_counts_to_the_budgets_end_in_a_few_plain_lines(tmp_path, clock, capsys, fit):
    summary = budget_run(clock, tmp_path / "run", budget_s=6.0, fit=fit)
    err = capsys.readouterr().err
    assert "\r" not in err  # no bar redraws in a log
    lines = err.splitlines()
    assert lines and all(line.startswith("train: ") for line in lines), err
    validations = len(events(tmp_path / "run", "val"))
    # a line to start, two per validation (phase and result), one at the end: no flood
    assert len(lines) <= 2 + 2 * validations, err
    assert sum("validating on val (2 clips)" in line for line in lines) == validations
    assert sum(re.search(r"validation at step \d+: J&F", line) is not None for line in lines) == validations
    totals = [int(m.group(1)) for m in re.finditer(r"step \d+/(\d+)", err)]
    assert totals and "100000" not in err and "100,000" not in err  # never the recipe's length
    assert all(total < 60 for total in totals)  # the budget allows about 35 steps
    assert lines[-1].startswith(f"train: step {summary.steps}/{summary.steps} (100%)"), lines[-1]


def test_progress_bar_on_a_terminal_follows_the_budget_and_shows_validation(tmp_path, clock, monkeypatch):
    terminal = TerminalStream()
    monkeypatch.setattr(sys, "stderr", terminal)
    summary = budget_run(clock, tmp_path / "run", budget_s=6.0, fit=True)
    shown = terminal.getvalue()
    assert "/100000" not in shown  # the bar never counted to the recipe's length
    assert "validating on val (2 clips)" in shown  # validation shows in the bar instead of freezing it
    assert f"{summary.steps}/{summary.steps}" in shown.split("\r")[-1]  # the bar ends full, at the run's last step


def test_progress_display_lines_are_rate_limited():
    now = [0.0]
    log = io.StringIO()
    display = ProgressDisplay(None, stream=log, interval=30.0, clock=lambda: now[0])
    assert not display.tty
    for step in range(1, 601):  # 600 steps at 0.5 s each: 300 s
        now[0] += 0.5
        if step == 10:
            display.set_total(600)
        display.update(step, loss="0.5")
    display.close()
    lines = log.getvalue().splitlines()
    assert 10 <= len(lines) <= 12, lines  # one at the start, then one per 30 s, and the last count
    assert lines[0] == "train: step 1, loss 0.5, 2.00 steps/s, elapsed 0:00, ETA once the time budget is estimated"
    assert lines[1].startswith("train: step 61/600 (10%), loss 0.5, 2.00 steps/s, elapsed 0:30, ETA 4:30")
    assert lines[-1].startswith("train: step 600/600 (100%)")


def test_progress_bar_on_a_terminal_shows_steps_per_second_loss_and_eta():
    terminal = TerminalStream()
    display = ProgressDisplay(100, stream=terminal)
    assert display.tty
    for step in range(1, 51):
        display.update(step, loss="0.4312", epoch=1)
    display.close()
    last = terminal.getvalue().split("\r")[-1]  # the bar's last state
    assert "50/100" in last and "step/s" in last and "loss=0.4312" in last and "epoch=1" in last
    assert re.search(r"\[\d\d:\d\d<\d\d:\d\d", last), last  # elapsed<ETA


# -- the warning of a budget far short of the recipe ----------------------------------------------------------------


def test_a_budget_far_short_of_the_recipe_is_named_in_one_line(tmp_path, clock):
    summary = budget_run(clock, tmp_path / "run", budget_s=3.0, fit=True, progress=False)
    assert summary.stopped_reason == "max_minutes" and summary.planned_steps == 100_000
    assert json.loads((tmp_path / "run" / "train_summary.json").read_text())["planned_steps"] == 100_000
    message = budget_shortfall(summary)
    assert message is not None and "\n" not in message
    assert f"allowed {summary.steps:,} optimiser steps" in message
    assert "of the 100,000 the recipe plans (max_steps/max_epochs)" in message

    def shortfall(steps: int, planned: int, reason: str = "max_minutes") -> str | None:
        return budget_shortfall(dataclasses.replace(summary, steps=steps, planned_steps=planned, stopped_reason=reason))

    assert shortfall(300, 2000) is not None  # 15% of the recipe
    assert shortfall(90, 120) is not None  # 75%, but fewer than 100 steps
    assert shortfall(150, 400) is None  # 37.5% and 150 steps
    assert shortfall(90, 90) is None  # the recipe's length was reached
    assert shortfall(10, 1000, reason="max_steps") is None  # not cut by the budget
    assert budget_shortfall(dataclasses.replace(summary, steps=150, planned_steps=1000), min_fraction=0.0) is None


# -- files ----------------------------------------------------------------------------------------------------------


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def test_summary_and_run_config_get_the_umask_mode_and_are_replaced_atomically(tmp_path, umask_027, monkeypatch):
    out = tmp_path / "run"
    Trainer(toy_model(), ToyDataset(8), config(max_steps=2), out).fit()
    for name in ("train_summary.json", "run_config.yaml", "metrics.jsonl"):
        assert (out / name).stat().st_mode & 0o777 == 0o640, name
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    before = (out / "train_summary.json").read_bytes()

    def failing_dumps(obj, **kw):
        text = json.dumps(obj, **kw)
        return text + "\udc80" if kw.get("indent") else text  # the summary cannot be encoded: its write fails

    monkeypatch.setattr(
        run_folder_module,
        "json",
        SimpleNamespace(dumps=failing_dumps, loads=json.loads, JSONDecodeError=json.JSONDecodeError),
    )
    with pytest.warns(UserWarning, match="schedule is kept"), pytest.raises(UnicodeEncodeError):
        Trainer(toy_model(), ToyDataset(8), config(max_steps=3), out).fit(resume=True)
    assert (out / "train_summary.json").read_bytes() == before  # a failed write leaves the previous summary whole
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
