"""A two-convolution model on the avseg contract and in-memory data, for tests of the machinery (checkpoints, trainer,
evaluation, prediction), not a method.

The task is learnable (the mask is "red channel > 127"). :class:`ToyTrainConfig` adds what trainer tests vary:
dropout (to exercise RNG restoring), a conv frozen for the first epochs (to exercise optimiser rebuilding) and a
delay per forward pass (time-budget tests, on a virtual clock that advances when ``time.sleep`` is called).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from avseg.data.base import ClipRecord
from avseg.data.types import AVSBatch, AVSSample, collate
from avseg.models.base import AVSModel, AVSOutput

TOY_PRESET = "toytrain-test"


@dataclass
class ToyConfig:
    width: int = 4
    num_classes: int = 1


@dataclass
class ToyTrainConfig(ToyConfig):
    dropout: float = 0.0
    freeze_conv_epochs: int = 0
    """The first conv is frozen during epochs < this (as AVS models freeze a backbone for a few epochs)."""
    sleep_s: float = 0.0
    """Seconds each forward pass sleeps (time-budget tests)."""


class ToyModel(AVSModel):
    """``conv -> relu -> dropout -> head``; any config with ``width`` and ``num_classes`` builds it (subclasses bring
    their own), and only a :class:`ToyTrainConfig` sets dropout, freezing and delay."""

    family = "toy"
    config_class = ToyConfig

    def __init__(self, config: ToyConfig) -> None:
        super().__init__(config)
        knobs = config if isinstance(config, ToyTrainConfig) else ToyTrainConfig()  # else no dropout, freezing, delay
        self.freeze_conv_epochs = knobs.freeze_conv_epochs
        self.sleep_s = knobs.sleep_s
        self.conv = nn.Conv2d(3, config.width, 3, padding=1)
        self.head = nn.Conv2d(config.width, config.num_classes, 1)
        self.tied = self.head  # an alias, to exercise shared tensors in checkpoints
        self.drop = nn.Dropout(knobs.dropout)

    def forward(self, batch: AVSBatch) -> AVSOutput:
        if self.sleep_s:
            time.sleep(self.sleep_s)
        b, t = batch.frames.shape[:2]
        x = self.normalize_frames(batch)  # (B*T, 3, H, W)
        logits = self.head(self.drop(torch.relu(self.conv(x))))  # (B*T, K, H, W)
        return self.check_output(batch, AVSOutput(mask_logits=logits.view(b, t, *logits.shape[1:])))

    def losses(self, batch: AVSBatch, output: AVSOutput) -> dict[str, torch.Tensor]:
        valid = batch.label_valid
        logits = output.mask_logits[:, :, 0][valid]
        bce = F.binary_cross_entropy_with_logits(logits, batch.masks[valid].float())
        mean_logit = output.mask_logits.mean()
        return {"loss": bce, "bce": bce.detach(), "mean_logit": mean_logit.detach()}

    def on_epoch_start(self, epoch: int) -> None:
        self.conv.requires_grad_(epoch >= self.freeze_conv_epochs)


class ToyTrainModel(ToyModel):
    """The toy under its own family, so that a checkpoint of it is rebuilt with its :class:`ToyTrainConfig`."""

    family = "toytrain"
    config_class = ToyTrainConfig


class SimulatedCrash(RuntimeError):
    """Raised by ToyDataset(fail_after=N) to interrupt a run."""


def toy_model(**overrides) -> ToyTrainModel:
    return ToyTrainModel(ToyTrainConfig(**overrides))


def toy_sample(i: int, *, size: int = 8, frames: int = 2, split: str = "train", seed: int = 0) -> AVSSample:
    """Random frames whose mask is "red channel > 127": a conv can learn it."""
    g = torch.Generator().manual_seed(seed * 10_000 + i)
    rgb = torch.randint(0, 256, (frames, 3, size, size), generator=g, dtype=torch.uint8)
    masks = (rgb[:, 0] > 127).to(torch.uint8)
    return AVSSample(
        frames=rgb,
        masks=masks,
        frame_valid=torch.ones(frames, dtype=torch.bool),
        label_valid=torch.ones(frames, dtype=torch.bool),
        audio_wave=torch.zeros(frames * 160, dtype=torch.float32),
        audio_examples=torch.zeros(frames, 1, 96, 64),
        video_id=f"{split}-{i}",
        split=split,
        dataset="toy",
        uid=f"{split}-{i}",
    )


class ToyDataset(Dataset):
    """In-memory samples with reader-like ``records`` (the trainer checks their split names)."""

    def __init__(self, n: int, *, split: str = "train", seed: int = 0, size: int = 8, fail_after: int | None = None):
        self.samples = [toy_sample(i, split=split, seed=seed, size=size) for i in range(n)]
        self.records = [
            ClipRecord(
                dataset="toy",
                split=split,
                video_id=s.video_id,
                frame_paths=(),
                mask_refs=(),
                audio_path=None,
                num_frames=s.num_frames,
            )
            for s in self.samples
        ]
        self.fail_after = fail_after
        self.fetched = 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> AVSSample:
        if self.fail_after is not None and self.fetched >= self.fail_after:
            raise SimulatedCrash(f"simulated interruption after {self.fetched} samples")
        self.fetched += 1
        return self.samples[i]


def mean_iou_evaluator(model: nn.Module, dataset: Dataset) -> dict[str, float]:
    """A small independent evaluator: mean IoU of sigmoid > 0.5 over the dataset, as J and J&F."""
    ious = []
    for i in range(len(dataset)):
        batch = collate([dataset[i]])
        pred = model(batch).mask_logits[:, :, 0] > 0
        gt = batch.masks.bool()
        inter = (pred & gt).sum().item()
        union = (pred | gt).sum().item()
        ious.append(inter / union if union else 1.0)
    j = sum(ious) / len(ious)
    return {"J": j, "J&F": j}


def ensure_registered() -> str:
    """Register the toy preset in this process (once) and return its name."""
    from avseg.models.registry import list_models, register_model

    if TOY_PRESET not in list_models():
        register_model(TOY_PRESET, ToyTrainModel, tasks=("refavs",))(lambda: ToyTrainConfig())
    return TOY_PRESET
