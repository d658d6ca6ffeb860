"""The one model contract every avseg model follows.

A model is an ``nn.Module`` built from a config dataclass. It takes an :class:`~avseg.data.types.AVSBatch` and returns
an :class:`AVSOutput`; it says how it is trained through :meth:`AVSModel.losses` and :meth:`AVSModel.param_groups`.
The trainer, the evaluator, ``avseg predict`` and the registry-wide tests depend on nothing else, so the four
families (transformer AVS models, SAM2-prompting models, SAM2 external fusers, MLLM + SAM) are interchangeable.

Shapes: ``B`` batch, ``T`` frames, ``K`` mask channels (1 for binary tasks: S4, MS3, Ref-AVS, RVOS; the number of
classes, 71, for AVSS), ``H, W`` the batch's frame size (models that predict at lower resolution upsample).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from avseg.data.types import AVSBatch
from avseg.errors import ShapeError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "AVSModel", "AVSOutput"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class AVSOutput:
    """What every model returns.

    Attributes:
        mask_logits: ``(B, T, K, H, W)`` logits at the batch's frame size. Binary tasks: ``K = 1``, probability =
            sigmoid. Semantic (AVSS): ``K`` classes, softmax over ``K``.
        object_logits: optional ``(B, T)`` logits that the referred object is present (SAM2 object score).
        iou_pred: optional ``(B, T, M)`` predicted IoU of ``M`` candidate masks.
        aux: named auxiliary tensors (intermediate masks, embeddings for contrastive losses, ...), documented by each
            model; consumed by its own ``losses``.
    """

    mask_logits: Tensor
    object_logits: Tensor | None = None
    iou_pred: Tensor | None = None
    aux: dict[str, Any] = field(default_factory=dict)

    def probabilities(self) -> Tensor:
        """``(B, T, K, H, W)``: sigmoid for ``K = 1``, softmax over classes otherwise."""
        if self.mask_logits.shape[2] == 1:
            return self.mask_logits.sigmoid()
        return self.mask_logits.softmax(dim=2)


class AVSModel(nn.Module):
    """Base class: holds the config, normalises frames, checks outputs, and supplies default parameter groups.

    Subclasses set ``family`` (the registry name of the architecture, e.g. ``"tpavi"``), ``config_class``, and
    implement :meth:`forward` and :meth:`losses`.
    """

    family: ClassVar[str]
    config_class: ClassVar[type]

    def __init__(self, config: Any) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0, persistent=False)

    # -- the contract ------------------------------------------------------------------------------------------------

    def forward(self, batch: AVSBatch) -> AVSOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def losses(self, batch: AVSBatch, output: AVSOutput) -> dict[str, Tensor]:  # pragma: no cover - abstract
        """Named scalar losses; ``"loss"`` is the total the trainer back-propagates, the others are logged."""
        raise NotImplementedError

    @property
    def demo_recipe(self) -> dict[str, Any]:
        """The preset's training recipe (``config.recipe``, a :class:`avseg.models.recipe.TrainRecipe`) as
        ``avseg.train.config.TrainConfig`` keys; empty when the config has none. Read by ``avseg demo``."""
        recipe = getattr(self.config, "recipe", None)
        return recipe.train_config() if recipe is not None else {}

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Optimiser parameter groups over trainable parameters. Default: one group, no weight decay on biases and
        norm weights (the usual AdamW practice). Models with lower-LR parts override this."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
        groups = [{"params": decay, "lr": lr, "weight_decay": weight_decay, "name": "decay"}]
        if no_decay:
            groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": "no_decay"})
        return [g for g in groups if g["params"]]

    def on_epoch_start(self, epoch: int) -> None:
        """Hook for schedules inside the model (e.g. unfreezing a backbone after N epochs). Default: nothing."""

    # -- helpers for subclasses --------------------------------------------------------------------------------------

    @property
    def input_size(self) -> int | None:
        """The square frame size the model was configured for (``config.image_size`` or ``config.input_size``), or
        None when it takes any size. Readers resize to it so that frames are decoded once at the right size."""
        for name in ("image_size", "input_size"):
            value = getattr(self.config, name, None)
            if isinstance(value, int):
                return value
        return None

    def draw_training_frames(self, batch: AVSBatch, count: int | None) -> Tensor | None:
        """In training mode: the sorted indices ``(T',)`` of ``count`` frames drawn among those labelled in some clip
        of the batch (all frames when none is), from torch's global generator so that seeded runs repeat. None
        (run every frame) in eval mode, without ``count``, or when ``count`` covers the clip.

        Models with a ``train_frames`` option run only these frames in training: each step then sees more clips for
        the same compute, which is what CPU presets need most."""
        t = batch.frames.shape[1]
        if not self.training or count is None or count >= t:
            return None
        candidates = torch.nonzero((batch.label_valid & batch.frame_valid).any(0)).flatten().cpu()
        if len(candidates) == 0:
            candidates = torch.arange(t)
        return candidates[torch.randperm(len(candidates))[:count]].sort().values

    @property
    def num_mask_channels(self) -> int:
        return int(getattr(self.config, "num_classes", 1))

    def normalize_frames(self, batch: AVSBatch) -> Tensor:
        """``uint8`` ``(B, T, 3, H, W)`` → ImageNet-normalised ``float`` ``(B*T, 3, H, W)``."""
        frames = batch.frames
        if frames.ndim != 5 or frames.shape[2] != 3:
            raise ShapeError(f"batch.frames must be (B, T, 3, H, W), got {tuple(frames.shape)}")
        x = frames.flatten(0, 1).float()  # (B*T, 3, H, W)
        return (x - self.pixel_mean) / self.pixel_std

    def check_output(self, batch: AVSBatch, output: AVSOutput) -> AVSOutput:
        """Raise ShapeError unless ``output.mask_logits`` is ``(B, T, K, H, W)`` for this batch."""
        b, t, _, h, w = batch.frames.shape
        expected = (b, t, self.num_mask_channels, h, w)
        if tuple(output.mask_logits.shape) != expected:
            raise ShapeError(f"{type(self).__name__}: mask_logits {tuple(output.mask_logits.shape)} != {expected}")
        return output

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.parameters() if p.requires_grad)

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
