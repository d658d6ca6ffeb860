"""Optimisers from a model's parameter groups, and learning-rate schedules as pure ``LambdaLR`` factors.

The model decides the groups (``AVSModel.param_groups(lr, weight_decay)``: no decay on biases and norms, a backbone at
a lower lr, ...); this module only drops frozen parameters, fills defaults and builds the optimiser. A schedule is a
factor ``f(step)`` of each group's base lr, where ``step`` counts optimiser steps already taken (the lr used by step
``s + 1`` is ``base_lr * f(s)``):

- warmup (any kind, when ``W > 0``): ``f(s) = s / W`` for ``s < W``;
- ``constant``: ``1``;
- ``cosine``: ``m + (1 - m) * 0.5 * (1 + cos(pi * p))`` with ``p = (s - W) / (N - W)`` clamped to ``[0, 1]``;
- ``poly``: ``m + (1 - m) * (1 - p) ** power`` (AVSBench, AuralSAM2: ``(1 - it / max) ** 0.9``);
- ``warmup_decay``: ``m + (1 - m) * max(0, (N - s) / max(1, N - W))``, DeepSpeed's ``WarmupDecayLR`` with
  ``warmup_type="linear"`` and ``warmup_min_lr=0`` (``m = 0`` reproduces it exactly);

with ``N`` the total optimiser steps and ``m`` = ``min_lr_ratio``. The factor is a small callable object, so
``LambdaLR.state_dict()`` stores its parameters and a resumed run continues on the same curve. A run that learns its
length only while it runs (``schedule.fit_to_budget``) moves ``N`` with :meth:`LRSchedule.refit`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from avseg.errors import AVSegWarning
from avseg.train.config import OptimConfig, ScheduleConfig

__all__ = [
    "LRSchedule",
    "build_optimizer",
    "build_scheduler",
    "group_lrs",
    "parameters_of",
    "resolve_warmup",
    "schedule_of",
    "trainable_names",
]


def trainable_names(model: nn.Module) -> tuple[str, ...]:
    """Names of the parameters that currently require gradients, in registration order."""
    return tuple(name for name, p in model.named_parameters() if p.requires_grad)


def _model_groups(model: nn.Module, cfg: OptimConfig) -> list[dict[str, Any]]:
    if hasattr(model, "param_groups") and callable(model.param_groups):
        return list(model.param_groups(cfg.lr, cfg.weight_decay))
    return [{"params": [p for p in model.parameters() if p.requires_grad], "name": "all"}]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> Optimizer:
    """Build Adam/AdamW over the model's trainable parameter groups.

    Each group from ``model.param_groups(cfg.lr, cfg.weight_decay)`` may carry ``lr`` (absolute), ``lr_scale``
    (relative to ``cfg.lr``, used when ``lr`` is absent), ``weight_decay`` and ``name``; missing values default to the
    config. Parameters with ``requires_grad=False`` are dropped (frozen parts get no optimiser state), empty groups
    are dropped, and a parameter listed in two groups is an error.

    Args:
        model: an ``AVSModel`` (any ``nn.Module`` works: then one group of its trainable parameters).
        cfg: the optimiser config.

    Returns:
        The optimiser; every group has ``lr``, ``weight_decay`` and ``name``.

    Raises:
        ValueError: a parameter appears in two groups, or nothing is trainable.
    """
    names = {id(p): n for n, p in model.named_parameters()}
    seen: dict[int, str] = {}
    groups: list[dict[str, Any]] = []
    for i, group in enumerate(_model_groups(model, cfg)):
        if "params" not in group:
            raise ValueError(f"{type(model).__name__}.param_groups(): group {i} has no 'params'")
        name = str(group.get("name", f"group{i}"))
        params = []
        for p in group["params"]:
            if not p.requires_grad:
                continue
            if id(p) in seen:
                raise ValueError(
                    f"{type(model).__name__}.param_groups(): parameter {names.get(id(p), '?')!r} is in groups "
                    f"{seen[id(p)]!r} and {name!r}"
                )
            seen[id(p)] = name
            params.append(p)
        if not params:
            continue
        extra = {k: v for k, v in group.items() if k not in ("params", "lr", "lr_scale", "weight_decay", "name")}
        lr = float(group["lr"]) if "lr" in group else cfg.lr * float(group.get("lr_scale", 1.0))
        groups.append(
            {
                "params": params,
                "lr": lr,
                "weight_decay": float(group.get("weight_decay", cfg.weight_decay)),
                "name": name,
                **extra,
            }
        )
    if not groups:
        raise ValueError(f"{type(model).__name__} has no trainable parameters (all have requires_grad=False)")
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
    if missing:
        shown = ", ".join(missing[:8]) + (f", ... ({len(missing)} in all)" if len(missing) > 8 else "")
        warnings.warn(
            f"{type(model).__name__}.param_groups() leaves out trainable parameters (not updated): {shown}",
            AVSegWarning,
            stacklevel=2,
        )
    optimizer_cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return optimizer_cls(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)


def resolve_warmup(cfg: ScheduleConfig, total_steps: int) -> int:
    """Warmup length in optimiser steps: ``warmup_steps``, or ``ceil(warmup_ratio * total_steps)``."""
    if cfg.warmup_steps:
        return int(cfg.warmup_steps)
    return math.ceil(cfg.warmup_ratio * total_steps)


@dataclass
class LRSchedule:
    """The lr factor ``f(step)`` of one schedule (formulas in the module docstring).

    A plain object, not a closure: ``LambdaLR.state_dict()`` stores its attributes and ``load_state_dict`` restores
    them, so the curve survives a resume even if the config that built it changed.

    Attributes:
        kind: ``constant``, ``cosine``, ``poly`` or ``warmup_decay``.
        total_steps: ``N``, optimiser steps of the whole run.
        warmup_steps: ``W``.
        power: exponent of ``poly``.
        min_lr_ratio: ``m``, the floor of the decaying kinds.
    """

    kind: str
    total_steps: int
    warmup_steps: int = 0
    power: float = 0.9
    min_lr_ratio: float = 0.0

    def __call__(self, step: int) -> float:
        w, n, m = self.warmup_steps, self.total_steps, self.min_lr_ratio
        if step < w:
            return step / w
        if self.kind == "constant":
            return 1.0
        if self.kind == "warmup_decay":
            return m + (1.0 - m) * max(0.0, (n - step) / max(1, n - w))
        progress = min(1.0, max(0.0, (step - w) / max(1, n - w)))
        if self.kind == "cosine":
            return m + (1.0 - m) * 0.5 * (1.0 + math.cos(math.pi * progress))
        if self.kind == "poly":
            return m + (1.0 - m) * (1.0 - progress) ** self.power
        raise ValueError(f"unknown schedule kind {self.kind!r}")

    def refit(self, total_steps: int) -> None:
        """Move the end of the schedule to ``total_steps`` (``N``), keeping the warmup and the curve's shape.

        A scheduler that applies this schedule uses the new length from its next ``step()`` on: the learning rate
        already set for the coming optimiser step stays as it is. ``LambdaLR.state_dict()`` then stores the new
        length, so a resumed run goes on along the refitted curve.

        Raises:
            ValueError: ``total_steps < 1``.
        """
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.total_steps = int(total_steps)


def build_scheduler(
    optimizer: Optimizer, cfg: ScheduleConfig | LRSchedule, total_steps: int, *, start_step: int = 0
) -> LambdaLR:
    """A ``LambdaLR`` that applies the schedule's factor to every group's base lr; call ``step()`` after each
    optimiser step.

    Args:
        optimizer: the optimiser (its groups' current ``lr`` are the base lrs, unless they carry ``initial_lr``).
        cfg: the schedule config, or an :class:`LRSchedule` to reuse as is (then ``total_steps`` is ignored).
        total_steps: optimiser steps of the whole run (``N``).
        start_step: build the scheduler as if ``start_step`` optimiser steps had been taken (used when the trainer
            rebuilds the optimiser mid-run because the set of trainable parameters changed).
    """
    if isinstance(cfg, LRSchedule):
        schedule = cfg
    else:
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        warmup = resolve_warmup(cfg, total_steps)
        if warmup > total_steps:
            warnings.warn(
                f"schedule warmup ({warmup} steps) is longer than the run ({total_steps} steps)",
                AVSegWarning,
                stacklevel=2,
            )
        schedule = LRSchedule(cfg.kind, total_steps, warmup, cfg.power, cfg.min_lr_ratio)
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")
    if start_step == 0:
        return LambdaLR(optimizer, schedule)
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    # LambdaLR(last_epoch=k - 1) takes one step in its constructor, landing on step k with lr = initial_lr * f(k).
    return LambdaLR(optimizer, schedule, last_epoch=start_step - 1)


def schedule_of(scheduler: LambdaLR) -> LRSchedule:
    """The :class:`LRSchedule` that a scheduler from :func:`build_scheduler` applies to every group.

    After ``scheduler.load_state_dict(...)`` this is the checkpoint's curve (``LambdaLR`` restores the attributes of
    its factor objects in place).

    Raises:
        TypeError: the scheduler was not built by :func:`build_scheduler`.
    """
    schedules = getattr(scheduler, "lr_lambdas", None) or [None]
    if not isinstance(schedules[0], LRSchedule):
        raise TypeError(f"{type(scheduler).__name__} does not apply an LRSchedule (not built by build_scheduler)")
    return schedules[0]


def group_lrs(optimizer: Optimizer) -> dict[str, float]:
    """Current lr of each group by name (for logging)."""
    return {str(g.get("name", i)): float(g["lr"]) for i, g in enumerate(optimizer.param_groups)}


def parameters_of(optimizer: Optimizer) -> Iterable[nn.Parameter]:
    """Every parameter the optimiser updates."""
    for group in optimizer.param_groups:
        yield from group["params"]
