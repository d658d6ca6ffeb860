"""Optimiser groups and learning-rate schedules against hand-computed values."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from avseg.errors import AVSegWarning
from avseg.train.config import OptimConfig, ScheduleConfig, TrainConfig
from avseg.train.optim import LRSchedule, build_optimizer, build_scheduler, resolve_warmup, schedule_of
from tests.toy_model import toy_model


def factor(kind: str, step: int, total: int = 10, **kw) -> float:
    cfg = ScheduleConfig(kind=kind, **kw)
    return LRSchedule(kind, total, resolve_warmup(cfg, total), cfg.power, cfg.min_lr_ratio)(step)


def test_cosine_with_warmup():
    # total 10, warmup 2: s/2 during warmup, then 0.5 * (1 + cos(pi * (s - 2) / 8)).
    assert factor("cosine", 0, warmup_steps=2) == 0.0
    assert factor("cosine", 1, warmup_steps=2) == pytest.approx(0.5)
    assert factor("cosine", 2, warmup_steps=2) == pytest.approx(1.0)
    assert factor("cosine", 4, warmup_steps=2) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert factor("cosine", 6, warmup_steps=2) == pytest.approx(0.5)
    assert factor("cosine", 10, warmup_steps=2) == pytest.approx(0.0)
    assert factor("cosine", 12, warmup_steps=2) == pytest.approx(0.0)  # past the end: stays at the floor
    # floor 0.1: 0.1 + 0.9 * cosine part
    assert factor("cosine", 6, warmup_steps=2, min_lr_ratio=0.1) == pytest.approx(0.55)
    assert factor("cosine", 10, warmup_steps=2, min_lr_ratio=0.1) == pytest.approx(0.1)


def test_poly_matches_avsbench_formula():
    # (1 - it / max) ** 0.9 without warmup
    for s in (0, 1, 5, 9, 10):
        assert factor("poly", s) == pytest.approx((1 - s / 10) ** 0.9)
    assert factor("poly", 5, power=2.0) == pytest.approx(0.25)


def test_warmup_decay_matches_deepspeed_linear():
    # DeepSpeed WarmupDecayLR, warmup_type linear, min 0: s / W, then (N - s) / (N - W), floored at 0.
    assert factor("warmup_decay", 1, warmup_steps=4) == pytest.approx(0.25)
    assert factor("warmup_decay", 4, warmup_steps=4) == pytest.approx(1.0)
    assert factor("warmup_decay", 7, warmup_steps=4) == pytest.approx(3 / 6)
    assert factor("warmup_decay", 10, warmup_steps=4) == pytest.approx(0.0)
    assert factor("warmup_decay", 13, warmup_steps=4) == 0.0


def test_constant_and_warmup_ratio():
    assert resolve_warmup(ScheduleConfig(warmup_ratio=0.25), 10) == 3  # ceil(2.5)
    assert factor("constant", 1, warmup_ratio=0.25) == pytest.approx(1 / 3)
    assert factor("constant", 3, warmup_ratio=0.25) == 1.0
    assert factor("constant", 1000) == 1.0


def test_schedule_config_validation():
    with pytest.raises(ValueError, match="not both"):
        ScheduleConfig(warmup_steps=2, warmup_ratio=0.1)
    with pytest.raises(ValueError, match="kind"):
        ScheduleConfig(kind="step")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lr"):
        OptimConfig(lr=0.0)


class TwoPart(nn.Module):
    """A model with a lower-lr backbone group, an absolute-lr head group and a frozen part."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Linear(3, 3)
        self.head = nn.Linear(3, 1)
        self.frozen = nn.Linear(3, 3).requires_grad_(False)

    def param_groups(self, lr: float, weight_decay: float):
        return [
            {"params": [*self.backbone.parameters(), *self.frozen.parameters()], "lr_scale": 0.1, "name": "backbone"},
            {"params": list(self.head.parameters()), "lr": 0.5, "weight_decay": 0.0, "name": "head"},
        ]


def test_groups_scales_and_frozen_parameters_excluded():
    model = TwoPart()
    opt = build_optimizer(model, OptimConfig(lr=0.01, weight_decay=0.05))
    assert isinstance(opt, torch.optim.AdamW)
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["backbone"]["lr"] == pytest.approx(0.001)
    assert groups["backbone"]["weight_decay"] == 0.05
    assert groups["head"]["lr"] == 0.5 and groups["head"]["weight_decay"] == 0.0
    in_optimizer = {id(p) for g in opt.param_groups for p in g["params"]}
    assert all(id(p) not in in_optimizer for p in model.frozen.parameters())
    assert {id(p) for p in model.backbone.parameters()} <= in_optimizer


def test_default_groups_of_avs_model_skip_frozen_and_exempt_biases():
    model = toy_model(freeze_conv_epochs=1)
    model.on_epoch_start(0)  # conv frozen
    opt = build_optimizer(model, OptimConfig(name="adam", lr=0.1, weight_decay=0.01))
    assert isinstance(opt, torch.optim.Adam)
    params = {id(p): n for n, p in model.named_parameters()}
    names = {g["name"]: [params[id(p)] for p in g["params"]] for g in opt.param_groups}
    assert names == {"decay": ["head.weight"], "no_decay": ["head.bias"]}
    assert {g["name"]: g["weight_decay"] for g in opt.param_groups} == {"decay": 0.01, "no_decay": 0.0}


class PartWithItsOwnRate(nn.Linear):
    """A submodule that trains at its own learning rate, as the SAM2 layer does with ``sam2.lr``."""

    own_lr = 1e-4


def test_default_groups_give_a_part_with_its_own_rate_that_rate():
    model = toy_model()
    model.part = PartWithItsOwnRate(3, 2)
    opt = build_optimizer(model, OptimConfig(lr=0.1, weight_decay=0.01))
    params = {id(p): n for n, p in model.named_parameters()}
    groups = {g["name"]: ([params[id(p)] for p in g["params"]], g["lr"], g["weight_decay"]) for g in opt.param_groups}
    assert groups["decay@0.0001"] == (["part.weight"], 1e-4, 0.01)
    assert groups["no_decay@0.0001"] == (["part.bias"], 1e-4, 0.0)
    assert "part.weight" not in groups["decay"][0] and groups["decay"][1] == 0.1


def test_group_errors_and_warnings():
    model = TwoPart()
    model.param_groups = lambda lr, wd: [  # type: ignore[method-assign]
        {"params": list(model.head.parameters())},
        {"params": [model.head.weight]},
    ]
    with pytest.raises(ValueError, match=r"head\.weight"):
        build_optimizer(model, OptimConfig())
    model.param_groups = lambda lr, wd: [{"params": list(model.head.parameters())}]  # type: ignore[method-assign]
    with pytest.warns(AVSegWarning, match=r"backbone\.weight"):
        build_optimizer(model, OptimConfig())
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(model, OptimConfig())


def test_scheduler_drives_every_group_and_round_trips():
    model = TwoPart()
    cfg = ScheduleConfig(kind="cosine", warmup_steps=2)
    opt = build_optimizer(model, OptimConfig(lr=0.01))
    sched = build_scheduler(opt, cfg, total_steps=10)
    expected = [0.5 * (1 + math.cos(math.pi * (s - 2) / 8)) if s >= 2 else s / 2 for s in range(11)]
    assert opt.param_groups[0]["lr"] == 0.0  # step 0 of a warmup
    for s in range(1, 5):
        opt.step()
        sched.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(0.001 * expected[s])
        assert opt.param_groups[1]["lr"] == pytest.approx(0.5 * expected[s])
    buffer = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    # A new run with another schedule config: the checkpoint's curve wins.
    opt2 = build_optimizer(model, OptimConfig(lr=0.01))
    sched2 = build_scheduler(opt2, ScheduleConfig(kind="constant"), total_steps=99)
    opt2.load_state_dict(state["opt"])
    sched2.load_state_dict(state["sched"])
    assert sched2.lr_lambdas[0] == LRSchedule("cosine", 10, 2, 0.9, 0.0)
    for s in range(5, 11):
        opt.step(), sched.step(), opt2.step(), sched2.step()
        assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == pytest.approx(0.001 * expected[s])


def test_scheduler_built_mid_run():
    model = TwoPart()
    opt = build_optimizer(model, OptimConfig(lr=0.01))
    sched = build_scheduler(opt, LRSchedule("poly", 10), 0, start_step=4)
    assert sched.last_epoch == 4
    assert opt.param_groups[0]["lr"] == pytest.approx(0.001 * 0.6**0.9)
    opt.step()
    sched.step()
    assert opt.param_groups[1]["lr"] == pytest.approx(0.5 * 0.5**0.9)


def test_refit_moves_the_end_of_the_schedule_from_the_next_step_on():
    # cosine, warmup 2: 10 steps on a 100-step curve, then the run is cut to 20 steps.
    model = TwoPart()
    opt = build_optimizer(model, OptimConfig(lr=0.01))
    sched = build_scheduler(opt, ScheduleConfig(kind="cosine", warmup_steps=2), total_steps=100)
    for _ in range(10):
        opt.step()
        sched.step()
    coming = opt.param_groups[1]["lr"]
    assert coming == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi * 8 / 98)))
    schedule_of(sched).refit(20)
    assert opt.param_groups[1]["lr"] == coming  # the lr of the coming step is the one already set
    for s in range(11, 21):
        opt.step()
        sched.step()
        assert opt.param_groups[1]["lr"] == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi * (s - 2) / 18)))
    assert opt.param_groups[1]["lr"] == pytest.approx(0.0)  # the cosine ends with the refitted run
    # the refitted curve is what a checkpoint stores
    fresh = build_scheduler(build_optimizer(model, OptimConfig(lr=0.01)), ScheduleConfig(kind="constant"), 5)
    fresh.load_state_dict(sched.state_dict())
    assert schedule_of(fresh) == LRSchedule("cosine", 20, 2, 0.9, 0.0)
    with pytest.raises(ValueError, match="total_steps"):
        schedule_of(sched).refit(0)


def test_schedule_of_needs_a_scheduler_of_build_scheduler():
    opt = build_optimizer(TwoPart(), OptimConfig(lr=0.01))
    with pytest.raises(TypeError, match="LRSchedule"):
        schedule_of(torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0))


def test_train_config_validation():
    with pytest.raises(ValueError, match="test split"):
        TrainConfig(seed=0, max_steps=1, val_split="test_s")
    with pytest.raises(ValueError, match="test split"):
        TrainConfig(seed=0, max_steps=1, val_split="Test_n")
    with pytest.raises(ValueError, match=r"max_steps or train\.max_epochs"):
        TrainConfig(seed=0)
    with pytest.raises(ValueError, match="seed"):
        TrainConfig(seed=-1, max_steps=1)
    with pytest.raises(ValueError, match="grad_accum_steps"):
        TrainConfig(seed=0, max_steps=1, grad_accum_steps=0)
    assert TrainConfig(seed=0, max_epochs=1, val_split="").val_split is None
