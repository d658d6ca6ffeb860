"""The trainer on a toy model: it learns, checkpoints atomically, selects on val only, resumes exactly, keeps to a
time budget and writes parseable metrics."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from safetensors.torch import load_file

from avseg.checkpoint import load_training_state, resolve_checkpoint
from avseg.errors import AVSegWarning
from avseg.train import trainer as trainer_module
from avseg.train.config import OptimConfig, ScheduleConfig, TrainConfig
from avseg.train.determinism import EpochBatchSampler
from avseg.train.trainer import TIMING_KEYS, Trainer
from tests.toy_model import SimulatedCrash, ToyDataset, mean_iou_evaluator, toy_model


def config(**kw) -> TrainConfig:
    base = dict(
        seed=0,
        batch_size=2,
        optim=OptimConfig(lr=0.05),
        schedule=ScheduleConfig(kind="constant"),
        log_every=1,
        progress_bar=False,
    )
    return TrainConfig(**{**base, **kw})


def events(out: Path, kind: str | None = None) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    parsed = [json.loads(line) for line in lines]
    return [e for e in parsed if kind is None or e["event"] == kind]


def without_timing(items: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k not in TIMING_KEYS} for e in items]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(resolve_checkpoint(folder) / "model.safetensors"))


def test_sampler_is_a_seeded_sharded_permutation():
    kw = dict(batch_size=2, batches_per_rank=3, seed=5, epoch=1)
    r0 = EpochBatchSampler(13, rank=0, world_size=2, **kw)
    r1 = EpochBatchSampler(13, rank=1, world_size=2, **kw)
    a, b = list(r0), list(r1)
    flat = sorted(i for batch in a + b for i in batch)
    assert len(flat) == 12 and len(set(flat)) == 12  # disjoint shards, 13th sample left out
    assert a == list(EpochBatchSampler(13, rank=0, world_size=2, **kw))  # same seed and epoch: same order
    assert a != list(EpochBatchSampler(13, rank=0, world_size=2, **{**kw, "epoch": 2}))
    assert list(EpochBatchSampler(13, rank=0, world_size=2, start_batch=2, **kw)) == a[2:]


def test_toy_model_learns_and_writes_outputs(tmp_path):
    out = tmp_path / "run"
    cfg = config(max_steps=30, batch_size=4, log_every=5, val_every=10)
    summary = Trainer(
        toy_model(),
        ToyDataset(16),
        cfg,
        out,
        val_dataset=ToyDataset(4, split="val", seed=1),
        evaluator=mean_iou_evaluator,
    ).fit()
    train = events(out, "train")
    assert [e["step"] for e in train] == [5, 10, 15, 20, 25, 30]
    assert train[-1]["loss"] < 0.6 * train[0]["loss"]
    assert all(set(e) >= {"step", "epoch", "losses", "lr", "samples_per_s", "elapsed_s"} for e in train)
    assert train[0]["lr"] == {"decay": 0.05, "no_decay": 0.05}
    assert [e["step"] for e in events(out, "val")] == [10, 20, 30]
    written = json.loads((out / "train_summary.json").read_text())
    assert written["steps"] == summary.steps == 30
    assert written["world_size"] == 1 and written["stopped_reason"] == "max_steps"
    assert written["samples_seen"] == 120 and written["samples_per_s"] > 0
    assert written["peak_memory_mib"] > 0 and written["peak_memory_kind"] == "max_rss"
    assert yaml.safe_load((out / "run_config.yaml").read_text())["train"]["max_steps"] == 30
    # a second run into the same folder is refused
    with pytest.raises(FileExistsError, match="resume"):
        Trainer(toy_model(), ToyDataset(16), cfg, out).fit()


def test_checkpoints_pointers_atomic_and_pruned(tmp_path):
    out = tmp_path / "run"
    Trainer(toy_model(), ToyDataset(8), config(max_steps=7, checkpoint_every=2, keep_last=2), out).fit()
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest.json", "step-0000006", "step-0000007"]
    assert not [p for p in ckpts.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]
    assert json.loads((ckpts / "latest.json").read_text()) == {"checkpoint": "step-0000007", "step": 7}
    state = load_training_state(ckpts)
    assert state["progress"]["step"] == 7 and state["progress"]["epoch"] == 1 and state["progress"]["epoch_step"] == 3
    assert len(state["per_rank"]) == 1 and "rng" in state["per_rank"][0]
    meta = json.loads((ckpts / "step-0000007" / "config.json").read_text())
    assert meta["family"] == "toytrain" and meta["meta"]["step"] == 7


def test_best_is_selected_on_val_only_and_never_pruned(tmp_path):
    val = ToyDataset(2, split="val", seed=1)
    scores = iter([0.2, 0.9, 0.5, 0.4])
    seen = []

    def scripted(model, dataset):
        seen.append(dataset)
        assert not model.training
        return {"J&F": next(scores), "J": 0.0}

    out = tmp_path / "run"
    summary = Trainer(
        toy_model(),
        ToyDataset(8),
        config(max_steps=8, val_every=2, keep_last=1),
        out,
        val_dataset=val,
        evaluator=scripted,
    ).fit()
    assert all(d is val for d in seen) and len(seen) == 4
    best = json.loads((out / "checkpoints" / "best.json").read_text())
    assert best == {"checkpoint": "step-0000004", "step": 4, "metric": "J&F", "value": 0.9, "split": "val"}
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-0000004", "step-0000008"]
    assert summary.best["step"] == 4 and summary.final_metrics["J&F"] == 0.4
    assert [e["is_best"] for e in events(out, "val")] == [True, True, False, False]
    # "min" mode picks the lowest value
    scores2 = iter([0.3, 0.1, 0.2])
    out2 = tmp_path / "run2"
    cfg = config(max_steps=6, val_every=2, select_mode="min", select_metric="loss")
    Trainer(
        toy_model(), ToyDataset(8), cfg, out2, val_dataset=val, evaluator=lambda m, d: {"loss": next(scores2)}
    ).fit()
    assert json.loads((out2 / "checkpoints" / "best.json").read_text())["step"] == 4


def test_test_splits_are_refused_for_validation(tmp_path):
    with pytest.raises(ValueError, match="test split"):
        config(max_steps=1, val_split="test_s")
    # the dataset's own split names are checked too
    with pytest.raises(ValueError, match="test split"):
        Trainer(
            toy_model(),
            ToyDataset(4),
            config(max_steps=1, val_split="val"),
            tmp_path,
            val_dataset=ToyDataset(2, split="test_s"),
            evaluator=mean_iou_evaluator,
        )


def _resume_config(**kw) -> TrainConfig:
    base = dict(
        max_steps=8,
        grad_accum_steps=2,
        checkpoint_every=2,
        val_every=3,
        log_every=3,
        keep_last=10,
        schedule=ScheduleConfig(kind="cosine", warmup_steps=2),
    )
    return config(**{**base, **kw})


def _resume_model():
    # dropout exercises the RNG state; the conv is frozen in epoch 0 and trained from epoch 1 (optimiser rebuilt)
    torch.manual_seed(0)
    return toy_model(dropout=0.3, freeze_conv_epochs=1)


def test_resume_after_interrupt_is_exact(tmp_path):
    val = ToyDataset(4, split="val", seed=1)
    # 16 samples / (batch 2 x accum 2) = 4 steps per epoch; the conv trains from step 5 (epoch 1) on.
    full = tmp_path / "full"
    Trainer(
        _resume_model(), ToyDataset(16), _resume_config(), full, val_dataset=val, evaluator=mean_iou_evaluator
    ).fit()
    final_full = weights(full / "checkpoints")

    # 1. A crash while fetching the data of step 3 (4 samples per step): the last checkpoint is step 2, mid-epoch 0.
    part = tmp_path / "part"
    crashing = ToyDataset(16, fail_after=2 * 4 + 1)
    with pytest.raises(SimulatedCrash):
        Trainer(_resume_model(), crashing, _resume_config(), part, val_dataset=val, evaluator=mean_iou_evaluator).fit()
    assert json.loads((part / "checkpoints" / "latest.json").read_text())["step"] == 2
    with pytest.raises(FileExistsError):
        Trainer(_resume_model(), ToyDataset(16), _resume_config(), part).fit()
    # a checkpoint written after step 2 whose pointer never was (the crash window): abandoned on resume
    shutil.copytree(full / "checkpoints" / "step-0000006", part / "checkpoints" / "step-0000007")
    with pytest.warns(AVSegWarning, match=r"removing later checkpoints \['step-0000007'\]"):
        summary = Trainer(
            _resume_model(), ToyDataset(16), _resume_config(), part, val_dataset=val, evaluator=mean_iou_evaluator
        ).fit(resume=True)
    assert summary.resumed_from.endswith("step-0000002") and summary.steps == 8
    assert not (part / "checkpoints" / "step-0000007").exists()

    # 2. Resuming from the epoch-boundary checkpoint (step 4: the optimiser still has the conv frozen).
    boundary = tmp_path / "boundary"
    (boundary / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step-0000004", boundary / "checkpoints" / "step-0000004")
    shutil.copy(full / "metrics.jsonl", boundary / "metrics.jsonl")
    trainer = Trainer(
        _resume_model(), ToyDataset(16), _resume_config(), boundary, val_dataset=val, evaluator=mean_iou_evaluator
    )
    trainer.fit(resume=boundary / "checkpoints" / "step-0000004")

    for run in (part, boundary):
        final = weights(run / "checkpoints")
        assert final.keys() == final_full.keys()
        for key in final_full:
            assert torch.equal(final_full[key], final[key]), (run.name, key)
        for kind in ("train", "val"):
            assert without_timing(events(full, kind)) == without_timing(events(run, kind)), (run.name, kind)
        assert len(events(run, "resume")) == 1
    assert [e["step"] for e in events(part, "val")] == [3, 6, 8]
    # the conv was frozen in epoch 0 (steps 1-4) and trained afterwards: the optimiser rebuild was exercised
    initial = _resume_model().conv.weight.detach()
    assert torch.equal(weights(full / "checkpoints" / "step-0000004")["conv.weight"], initial)
    assert not torch.equal(final_full["conv.weight"], initial)


def test_conv_frozen_during_first_epoch(tmp_path):
    out = tmp_path / "run"
    model = _resume_model()
    initial = model.conv.weight.detach().clone()
    Trainer(model, ToyDataset(16), _resume_config(max_steps=None, max_epochs=1), out).fit()
    assert torch.equal(weights(out / "checkpoints")["conv.weight"], initial)
    assert not torch.equal(weights(out / "checkpoints")["head.weight"], torch.zeros(1))


class VirtualClock:
    """A clock that advances only when someone sleeps (plus a microsecond per reading), so that time-budget logic
    is tested without depending on how loaded the machine is."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        self.now += 1e-6
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_max_minutes_stops_early_with_checkpoint_and_validation(tmp_path, monkeypatch):
    clock = VirtualClock()
    monkeypatch.setattr(trainer_module, "time", SimpleNamespace(monotonic=clock.monotonic))
    monkeypatch.setattr(time, "sleep", clock.sleep)
    out = tmp_path / "run"
    budget_s = 3.0  # virtual: 0.05 s per step, 0.3 s per validation

    def slow_eval(model, dataset):
        clock.sleep(0.3)
        return mean_iou_evaluator(model, dataset)

    started = clock.monotonic()
    cfg = config(max_steps=100_000, max_minutes=budget_s / 60, val_every=20)
    summary = Trainer(
        toy_model(sleep_s=0.05),
        ToyDataset(8),
        cfg,
        out,
        val_dataset=ToyDataset(2, split="val"),
        evaluator=slow_eval,
        clock_start=started,
    ).fit()
    assert summary.stopped_reason == "max_minutes"
    assert 0 < summary.steps < 100_000
    assert clock.monotonic() - started < budget_s  # the budget covers the final validation and checkpoint
    last = events(out)[-2:]
    assert last[0]["event"] == "val" and last[0]["step"] == summary.steps
    assert last[1]["event"] == "checkpoint" and last[1]["step"] == summary.steps
    assert (out / "checkpoints" / f"step-{summary.steps:07d}" / "model.safetensors").is_file()


def test_fit_to_budget_ends_the_cosine_schedule_within_the_time_budget(tmp_path, monkeypatch):
    clock = VirtualClock()
    monkeypatch.setattr(trainer_module, "time", SimpleNamespace(monotonic=clock.monotonic))
    monkeypatch.setattr(time, "sleep", clock.sleep)  # the toy model's forward "takes" sleep_s of virtual time

    def slow_eval(model, dataset):
        clock.sleep(0.5)
        return mean_iou_evaluator(model, dataset)

    budget_s = 20.0  # virtual: 0.1 s per step, 0.5 s per validation
    cfg = config(
        max_steps=100_000,
        max_minutes=budget_s / 60,
        val_every=25,
        schedule=ScheduleConfig(kind="cosine", warmup_steps=5, fit_to_budget=True),
    )
    trainer = Trainer(
        toy_model(sleep_s=0.1),
        ToyDataset(8),
        cfg,
        tmp_path / "run",
        val_dataset=ToyDataset(2, split="val"),
        evaluator=slow_eval,
        clock_start=clock.monotonic(),
    )
    summary = trainer.fit()
    # About (20 s - final validation and checkpoint) / (0.1 s per step + 0.5 s per 25 steps) = 160 steps; the
    # schedule ends there and the run reaches that end, where the cosine has decayed to (nearly) zero.
    assert 140 <= summary.total_steps <= 185, summary
    assert summary.steps == summary.total_steps and summary.stopped_reason == "max_minutes"
    lrs = [max(e["lr"].values()) for e in events(tmp_path / "run", "train")]
    assert max(lrs) > 0.9 * cfg.optim.lr and lrs[-1] < 0.01 * cfg.optim.lr, lrs
    # Without fit_to_budget the same budget cuts the 100 000-step cosine near its start: the lr is still the base.
    clock.now = 5000.0
    plain = config(
        max_steps=100_000,
        max_minutes=budget_s / 60,
        val_every=25,
        schedule=ScheduleConfig(kind="cosine", warmup_steps=5),
    )
    Trainer(
        toy_model(sleep_s=0.1),
        ToyDataset(8),
        plain,
        tmp_path / "plain",
        val_dataset=ToyDataset(2, split="val"),
        evaluator=slow_eval,
        clock_start=clock.monotonic(),
    ).fit()
    assert max(events(tmp_path / "plain", "train")[-1]["lr"].values()) > 0.99 * cfg.optim.lr


def test_grad_accumulation_equals_a_larger_batch(tmp_path):
    # Two micro-batches of 2 give the same update as one batch of 4 (same samples, mean losses, no dropout).
    cfg_a = config(max_steps=3, batch_size=4, optim=OptimConfig(lr=0.01))
    cfg_b = config(max_steps=3, batch_size=2, grad_accum_steps=2, optim=OptimConfig(lr=0.01))
    torch.manual_seed(0)
    Trainer(toy_model(), ToyDataset(12), cfg_a, tmp_path / "a").fit()
    torch.manual_seed(0)
    Trainer(toy_model(), ToyDataset(12), cfg_b, tmp_path / "b").fit()
    wa, wb = weights(tmp_path / "a" / "checkpoints"), weights(tmp_path / "b" / "checkpoints")
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-5, atol=1e-6)


def test_workers_precision_and_tensorboard_options(tmp_path):
    import importlib.util

    # DataLoader workers do not change the data order; bf16 autocast runs on CPU; "auto" means no autocast on CPU.
    runs = {}
    for name, kw in (("plain", {}), ("workers", {"num_workers": 2}), ("bf16", {"mixed_precision": "bf16"})):
        torch.manual_seed(0)
        summary = Trainer(toy_model(), ToyDataset(8), config(max_steps=4, **kw), tmp_path / name).fit()
        runs[name] = (summary, weights(tmp_path / name / "checkpoints"))
    assert runs["plain"][0].mixed_precision == "no" and runs["bf16"][0].mixed_precision == "bf16"
    for key, value in runs["plain"][1].items():
        assert torch.equal(value, runs["workers"][1][key]), key
    assert any(not torch.equal(v, runs["bf16"][1][k]) for k, v in runs["plain"][1].items())
    cfg = config(max_steps=1, tensorboard=True)
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.warns(AVSegWarning, match="tensorboard"):
            Trainer(toy_model(), ToyDataset(2), cfg, tmp_path / "tb").fit()
    else:
        Trainer(toy_model(), ToyDataset(2), cfg, tmp_path / "tb").fit()
        assert any((tmp_path / "tb" / "tensorboard").iterdir())
