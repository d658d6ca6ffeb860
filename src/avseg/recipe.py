"""How a preset is meant to be trained: the optimiser, the learning-rate schedule and the recipe that holds them.

These configs sit below both the models and the trainer: a preset's config carries its :class:`TrainRecipe` next to
the architecture, so the numbers of the paper or of the released training script live in one place with their
provenance (``notes``), and the trainer's :class:`~avseg.train.config.TrainConfig` embeds the same
:class:`OptimConfig` and :class:`ScheduleConfig`. The recipe is the lowest layer of every run
(:func:`avseg.train.run.build_run_config`): a config file, command-line options and overrides replace any of it.
Its data augmentation (``augment``) is a sample transform, applied by the trainer to the training split.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any, Literal

from avseg.data.augment import ClipAugmentConfig, Transform, training_transform

__all__ = ["ClipAugmentConfig", "OptimConfig", "ScheduleConfig", "TrainRecipe", "upgrade_recipe"]


@dataclass
class OptimConfig:
    """The optimiser. Parameter groups come from the model (``AVSModel.param_groups``); these are the defaults.

    Attributes:
        name: ``adamw`` (decoupled weight decay) or ``adam`` (weight decay added to the gradient, as torch's Adam).
        lr: base learning rate; groups may scale it (a backbone at 0.1x).
        weight_decay: default weight decay (the default groups exempt biases and norm weights).
        betas: Adam's moment coefficients.
        eps: Adam's denominator epsilon.
    """

    name: Literal["adamw", "adam"] = "adamw"
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if self.name not in ("adamw", "adam"):
            raise ValueError(f"optim.name must be 'adamw' or 'adam', got {self.name!r}")
        if not self.lr > 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr!r}")
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay must be >= 0, got {self.weight_decay!r}")
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {self.betas!r}")
        if not self.eps > 0:
            raise ValueError(f"optim.eps must be > 0, got {self.eps!r}")


@dataclass
class ScheduleConfig:
    """The learning-rate schedule, as a factor of each group's base lr per optimiser step (see ``avseg.train.optim``).

    Attributes:
        kind: ``constant``; ``cosine`` (half cosine to ``min_lr_ratio``); ``poly`` (``(1 - t)^power``, AVSBench and
            AuralSAM2 use 0.9); ``warmup_decay`` (DeepSpeed's WarmupDecayLR with linear warmup: linear decay to 0).
            Every kind starts with the linear warmup, when one is set.
        warmup_steps: linear warmup from 0 over this many optimiser steps.
        warmup_ratio: or warmup over this fraction of the total steps (rounded up); set one of the two, not both.
        power: exponent of ``poly``.
        min_lr_ratio: floor of the decaying kinds, as a fraction of the base lr (0: decay to zero).
        fit_to_budget: with ``train.max_minutes``, end the schedule (and the run) at the step the time budget allows,
            so that a decaying schedule actually decays instead of being cut off near its start. The step is
            estimated from the measured step and validation times once the warmup (at least 20 steps) is over, and
            re-estimated every 25 steps and after each validation; it is never later than ``max_steps``/``max_epochs``.
    """

    kind: Literal["constant", "cosine", "poly", "warmup_decay"] = "cosine"
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    power: float = 0.9
    min_lr_ratio: float = 0.0
    fit_to_budget: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("constant", "cosine", "poly", "warmup_decay"):
            raise ValueError(f"schedule.kind must be constant, cosine, poly or warmup_decay, got {self.kind!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"schedule.warmup_steps must be >= 0, got {self.warmup_steps!r}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"schedule.warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if self.warmup_steps and self.warmup_ratio:
            raise ValueError(
                f"set schedule.warmup_steps ({self.warmup_steps}) or schedule.warmup_ratio ({self.warmup_ratio}), "
                "not both"
            )
        if not self.power > 0:
            raise ValueError(f"schedule.power must be > 0, got {self.power!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"schedule.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")


@dataclass
class TrainRecipe:
    """How a preset is meant to be trained. Every preset states its optimiser, schedule, batch and length.

    Attributes:
        optim: the optimiser.
        schedule: the learning-rate schedule (``fit_to_budget`` is a run setting and is not taken from here).
        batch_size: clips per micro-batch (per process).
        grad_accum_steps: micro-batches accumulated per optimiser step (the papers' "batch × accumulation").
        epochs: training epochs (the run's length unless the run gives ``max_steps`` or ``max_epochs``).
        clip_grad_norm: gradient-norm clipping (None: none).
        image_size: the square size frames are read at (the default of ``data.image_size``, the size the official
            loaders produce: 224 for TPAVI, 512 for AVSegFormer S4/MS3, 1024 for AuralSAM2); None reads them at the
            size stored on disk. The network's own input size is the model config's.
        augment: the clip augmentation of training samples (:class:`~avseg.data.augment.ClipAugmentConfig`; SAM2's
            video augmentation in the AuralSAM2 paper presets); None: none besides the run's ``data.hflip``.
        notes: provenance of these numbers.
    """

    optim: OptimConfig
    schedule: ScheduleConfig
    batch_size: int
    epochs: int
    clip_grad_norm: float | None = None
    grad_accum_steps: int = 1
    image_size: int | None = None
    augment: ClipAugmentConfig | None = None
    notes: str = ""

    def __post_init__(self) -> None:
        for name in ("batch_size", "epochs", "grad_accum_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"recipe.{name} must be a positive integer, got {value!r}")
        if self.image_size is not None and (isinstance(self.image_size, bool) or self.image_size < 1):
            raise ValueError(f"recipe.image_size must be a positive integer or null, got {self.image_size!r}")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise ValueError(f"recipe.clip_grad_norm must be > 0 or null, got {self.clip_grad_norm!r}")
        if self.schedule.fit_to_budget:
            raise ValueError("recipe.schedule.fit_to_budget is a run setting (train.schedule.fit_to_budget)")

    def train_config(self) -> dict[str, Any]:
        """The recipe as ``avseg.train.config.TrainConfig`` keys (the run decides its length and budget)."""
        schedule = asdict(self.schedule)
        del schedule["fit_to_budget"]  # a run setting: the recipe must not hide the run's own default
        return {
            "optim": asdict(self.optim),
            "schedule": schedule,
            "batch_size": self.batch_size,
            "grad_accum_steps": self.grad_accum_steps,
            "clip_grad_norm": self.clip_grad_norm,
        }

    def data_config(self) -> dict[str, Any]:
        """The recipe as ``avseg.train.config.DataConfig`` keys."""
        return {"image_size": self.image_size}

    def train_transform(self, hflip: float = 0.0) -> Transform | None:
        """The transform of training samples (:func:`avseg.data.augment.training_transform`): the clip augmentation
        of ``augment`` (``hflip > 0`` sets its flip probability), else a horizontal flip with probability ``hflip``;
        None when neither augments."""
        return training_transform(self.augment, hflip)


def upgrade_recipe(recipe: dict[str, Any]) -> dict[str, Any]:
    """A recipe as checkpoints of avseg 0.1 stored it (flat ``optimizer``, ``lr``, ``weight_decay``, ``schedule``
    kind, ``warmup_steps``, ``num_frames``, ``demo_minutes``) in today's layout; a current recipe is returned as is."""
    if "optimizer" not in recipe:
        return recipe
    old = copy.deepcopy(recipe)
    new: dict[str, Any] = {
        "optim": {
            "name": old.pop("optimizer"),
            "lr": old.pop("lr", 1e-4),
            "weight_decay": old.pop("weight_decay", 0.0),
        },
        "schedule": {"kind": old.pop("schedule", "constant"), "warmup_steps": old.pop("warmup_steps", 0)},
    }
    for gone in ("num_frames", "demo_minutes"):  # the readers and the demo own these now
        old.pop(gone, None)
    return {**new, **old}
