"""Typed configs of a training run: the optimiser, the learning-rate schedule, the trainer, and a whole run.

A run config file (YAML or JSON) holds four sections; every key is checked against these dataclasses, so a typo is an
error that names the key::

    model: tpavi-tiny
    model_overrides: {num_classes: 1}
    data: {root: null, format: refavs, train_split: train, image_size: 224, options: {null_masks: read}}
    train:
      seed: 0
      val_split: val
      optim: {name: adamw, lr: 1.0e-4, weight_decay: 0.01}
      schedule: {kind: cosine, warmup_ratio: 0.05}
      batch_size: 2
      max_epochs: 10

``avseg train --config FILE`` reads it; the trainer writes the effective config of every run to
``OUT/run_config.yaml``, which can be passed back to ``--config``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from avseg.data.benchmarks import FORMAT_READERS, DatasetFormat
from avseg.recipe import OptimConfig, ScheduleConfig

__all__ = [
    "DataConfig",
    "OptimConfig",
    "RunConfig",
    "ScheduleConfig",
    "TrainConfig",
    "check_val_split",
]

Precision = Literal["auto", "no", "bf16", "fp16"]
Device = Literal["auto", "cpu", "cuda"]


def check_val_split(split: str | None, where: str = "val_split") -> None:
    """Refuse a validation split that is a test split (``test``, ``test_s``, ``Test_u``, ...).

    Model selection (best checkpoint, early decisions) on a test split leaks the test set into training; benchmarks
    report test numbers of a model chosen on validation data only.
    """
    if split is not None and split.strip().lower().startswith("test"):
        raise ValueError(
            f"{where}={split!r}: model selection must not use a test split; choose a validation split "
            "(e.g. 'val'), or none"
        )


@dataclass
class TrainConfig:
    """Everything the trainer decides: length, batch, precision, validation, checkpoints, logging.

    Steps are optimiser steps (one step = ``grad_accum_steps`` micro-batches of ``batch_size`` per process), so the
    global batch is ``batch_size * grad_accum_steps * world_size``.

    Attributes:
        seed: seeds model building (in ``avseg train``), the data order (a permutation per epoch) and every RNG.
            Required: two runs with the same seed and config train the same model.
        optim: the optimiser.
        schedule: the learning-rate schedule.
        batch_size: samples per micro-batch and process.
        grad_accum_steps: micro-batches accumulated per optimiser step.
        max_steps: stop after this many optimiser steps.
        max_epochs: stop after this many epochs; with ``max_steps`` too, the earlier limit wins. One of the two must
            be set.
        max_minutes: wall-clock budget: the trainer stops early enough to checkpoint and validate within it. A
            budget used up before the first optimiser step is a ``TrainingError``, and no checkpoint is written.
        clip_grad_norm: clip the global gradient norm to this value (None: no clipping).
        mixed_precision: ``no``, ``bf16``, ``fp16`` (CUDA only), or ``auto`` (bf16 where the GPU supports it, else no).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        num_workers: DataLoader worker processes per process.
        log_every: write a train event to ``metrics.jsonl`` every this many steps (losses averaged in between).
        val_every: validate every this many steps; None validates at the end of every epoch. Training always ends with
            a validation when a validation split is set.
        val_split: the split used for validation and best-checkpoint selection; never a test split. None: no
            validation.
        val_batch_size: evaluation batch size (default: ``batch_size``).
        select_metric: the validation metric that selects the best checkpoint (e.g. ``J&F``, ``J``, ``mIoU``).
        select_mode: ``max`` or ``min`` of ``select_metric``.
        checkpoint_every: save a checkpoint every this many steps; None saves at the end of every epoch. A checkpoint
            is also saved at the end and whenever validation finds a new best.
        keep_last: keep this many most recent checkpoints (the best one is never deleted).
        tensorboard: also log to TensorBoard under ``OUT/tensorboard`` (needs the ``tensorboard`` package).
        progress_bar: show progress on rank 0: a tqdm bar on a terminal; when the output goes to a log, a plain line
            at most every 30 s and around each validation. Under ``max_minutes`` it counts to the step the budget is
            estimated to allow.
        find_unused_parameters: DDP option for models whose trainable parameters do not all receive a gradient in
            every step (on by default: AVSBench's FPN decoder, for one, never uses ``path4.resConfUnit1``); turn it
            off for speed when every trainable parameter is used.
    """

    seed: int
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    batch_size: int = 2
    grad_accum_steps: int = 1
    max_steps: int | None = None
    max_epochs: int | None = None
    max_minutes: float | None = None
    clip_grad_norm: float | None = None
    mixed_precision: Precision = "auto"
    device: Device = "auto"
    num_workers: int = 0
    log_every: int = 10
    val_every: int | None = None
    val_split: str | None = "val"
    val_batch_size: int | None = None
    select_metric: str = "J&F"
    select_mode: Literal["max", "min"] = "max"
    checkpoint_every: int | None = None
    keep_last: int = 3
    tensorboard: bool = False
    progress_bar: bool = True
    find_unused_parameters: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"train.seed must be a non-negative integer, got {self.seed!r}")
        positive = {
            "batch_size": self.batch_size,
            "grad_accum_steps": self.grad_accum_steps,
            "log_every": self.log_every,
            "keep_last": self.keep_last,
        }
        optional_positive = {
            "max_steps": self.max_steps,
            "max_epochs": self.max_epochs,
            "val_every": self.val_every,
            "val_batch_size": self.val_batch_size,
            "checkpoint_every": self.checkpoint_every,
        }
        for name, value in {**positive, **optional_positive}.items():
            if value is None and name in optional_positive:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"train.{name} must be a positive integer, got {value!r}")
        if self.max_steps is None and self.max_epochs is None:
            raise ValueError("set train.max_steps or train.max_epochs (or both): training needs a length")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"train.max_minutes must be > 0, got {self.max_minutes!r}")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise ValueError(f"train.clip_grad_norm must be > 0 or null, got {self.clip_grad_norm!r}")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise ValueError(f"train.mixed_precision must be auto, no, bf16 or fp16, got {self.mixed_precision!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"train.device must be auto, cpu or cuda, got {self.device!r}")
        if self.num_workers < 0:
            raise ValueError(f"train.num_workers must be >= 0, got {self.num_workers!r}")
        if self.select_mode not in ("max", "min"):
            raise ValueError(f"train.select_mode must be 'max' or 'min', got {self.select_mode!r}")
        if self.val_split is not None and not self.val_split.strip():
            self.val_split = None
        check_val_split(self.val_split, "train.val_split")


@dataclass
class DataConfig:
    """Where the data is and how to read it.

    Attributes:
        root: the dataset folder (``avseg train DATA`` fills it; null in a shared config file).
        format: benchmark format (``avseg.data.readers``).
        train_split: the split to train on.
        image_size: resize frames and masks to this square size (None keeps the size on disk; batches then need
            clips of one size).
        metric_preset: validation metric preset (``avseg.metrics.presets``); None picks the format's official one.
        options: extra reader options (e.g. ``null_masks: zeros`` for Ref-AVS).
        hflip: probability of mirroring a training clip, its masks and its expression (left and right swapped;
            see :mod:`avseg.data.augment`); 0 disables it. When the preset's recipe has a clip augmentation
            (``recipe.augment``), a value above 0 sets that augmentation's flip probability. Validation and test clips
            are never augmented.
        val_items: validate on only the first this-many items of the validation split (None: all of it); a short
            run on a CPU budget would otherwise spend much of its time validating.
    """

    root: str | None = None
    format: DatasetFormat = "refavs"
    train_split: str = "train"
    image_size: int | None = None
    metric_preset: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    hflip: float = 0.0
    val_items: int | None = None

    def __post_init__(self) -> None:
        if self.val_items is not None and (isinstance(self.val_items, bool) or self.val_items < 1):
            raise ValueError(f"data.val_items must be a positive integer or null, got {self.val_items!r}")
        if not 0.0 <= self.hflip <= 1.0:
            raise ValueError(f"data.hflip must be a probability in [0, 1], got {self.hflip!r}")
        if self.format not in FORMAT_READERS:
            raise ValueError(f"data.format must be one of {', '.join(FORMAT_READERS)}, got {self.format!r}")
        if self.image_size is not None and (isinstance(self.image_size, bool) or self.image_size < 1):
            raise ValueError(f"data.image_size must be a positive integer or null, got {self.image_size!r}")
        if not self.train_split:
            raise ValueError("data.train_split must name a split")
        if self.train_split.strip().lower().startswith("test"):
            raise ValueError(f"data.train_split={self.train_split!r}: training on a test split is refused")


@dataclass
class RunConfig:
    """A whole run, as read from ``--config`` and written to ``OUT/run_config.yaml``.

    Attributes:
        model: a registered model preset (``avseg.models.list_models()``).
        train: the trainer's config.
        model_overrides: dotted overrides of the preset's config (``{"decoder.dim": 64}``).
        data: the data section.
    """

    model: str
    train: TrainConfig
    model_overrides: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model must name a registered model preset")
