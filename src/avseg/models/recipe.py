"""How a preset is meant to be trained: one recipe dataclass shared by every model family.

A preset's config carries its :class:`TrainRecipe` next to the architecture, so the numbers of the paper or of the
released training script live in one place with their provenance (``notes``). The trainer does not read the recipe
implicitly (an explicit ``avseg train`` config always wins); ``avseg demo`` and users who want "the preset's own
recipe" take it through :meth:`TrainRecipe.train_config`, exposed on every model as ``AVSModel.demo_recipe``. The
recipe's data augmentation (``augment``) is a sample transform, built by :meth:`TrainRecipe.train_transform`
(``AVSModel.train_transform``) and applied by the trainer to the training dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from avseg.data.augment import ClipAugmentConfig, Transform, training_transform

__all__ = ["ClipAugmentConfig", "TrainRecipe"]


@dataclass
class TrainRecipe:
    """How a preset is meant to be trained.

    The defaults are the AVSBench baseline's official scripts (TPAVI); presets of other families set every field
    they depend on.

    Attributes:
        optimizer: ``adam`` (TPAVI official: ``torch.optim.Adam(params, lr)``, no weight decay) or ``adamw``.
        lr: learning rate.
        weight_decay: weight decay (the TPAVI scripts parse ``--wt_dec 5e-4`` but never pass it to Adam).
        batch_size: clips per step (per process).
        epochs: training epochs.
        schedule: learning-rate schedule kind (``constant``, ``cosine``, ``poly`` with power 0.9, ``warmup_decay``).
        warmup_steps: linear warmup steps before the schedule.
        clip_grad_norm: gradient-norm clipping (None: none).
        num_frames: frames per clip (5 in S4/MS3, 10 in AVSS and Ref-AVS).
        image_size: frame size the reader should produce (models resize to their own input size anyway).
        augment: the clip augmentation of training samples (:class:`~avseg.data.augment.ClipAugmentConfig`; SAM2's
            video augmentation in the AuralSAM2 paper presets); None: none besides the trainer's ``data.hflip``.
        notes: provenance of these numbers.
        demo_minutes: the training budget ``avseg demo`` gives this preset (None: the demo's default); a CPU preset
            whose evaluation is slow takes less, so that the whole demo ends within 10 minutes on 2 cores.
    """

    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = 1e-4
    weight_decay: float = 0.0
    batch_size: int = 4
    epochs: int = 15
    schedule: Literal["constant", "cosine", "poly", "warmup_decay"] = "constant"
    warmup_steps: int = 0
    clip_grad_norm: float | None = None
    num_frames: int = 5
    image_size: int = 224
    augment: ClipAugmentConfig | None = None
    notes: str = ""
    demo_minutes: float | None = None

    def __post_init__(self) -> None:
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"recipe.optimizer must be 'adam' or 'adamw', got {self.optimizer!r}")
        if self.schedule not in ("constant", "cosine", "poly", "warmup_decay"):
            raise ValueError(f"recipe.schedule: unknown kind {self.schedule!r}")
        if not self.lr > 0:
            raise ValueError(f"recipe.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"recipe.weight_decay must be >= 0, got {self.weight_decay}")
        for name in ("batch_size", "epochs", "num_frames", "image_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"recipe.{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_steps < 0:
            raise ValueError(f"recipe.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.demo_minutes is not None and not self.demo_minutes > 0:
            raise ValueError(f"recipe.demo_minutes must be > 0, got {self.demo_minutes}")

    def train_config(self) -> dict[str, Any]:
        """The recipe as ``avseg.train.config.TrainConfig`` keys (epochs are left to the caller's budget)."""
        return {
            "optim": {"name": self.optimizer, "lr": self.lr, "weight_decay": self.weight_decay},
            "schedule": {"kind": self.schedule, "warmup_steps": self.warmup_steps},
            "batch_size": self.batch_size,
            "clip_grad_norm": self.clip_grad_norm,
        }

    def train_transform(self, hflip: float = 0.0) -> Transform | None:
        """The transform of training samples (:func:`avseg.data.augment.training_transform`): the clip augmentation
        of ``augment`` (``hflip > 0`` sets its flip probability), else a horizontal flip with probability ``hflip``;
        None when neither augments."""
        return training_transform(self.augment, hflip)
