"""Training-time augmentations: callables ``AVSSample -> AVSSample`` passed as a dataset's ``transform``.

They must keep every label true. A horizontal flip mirrors the frames and masks, so any expression that names a side
has to be mirrored too ("the object on the left" becomes "the object on the right"); :class:`HorizontalFlip` and
:class:`ClipAugment` swap those words, and leave a sample unflipped when its expression mentions a direction they
cannot mirror safely. Augmentation happens here and nowhere else (no model augments inside ``forward``), so that
pixels, masks and text change together; :func:`training_transform` builds the transform a preset's recipe asks for.

Randomness comes from torch's global generator, which the trainer seeds per rank and stores in its checkpoints, so a
run with ``num_workers = 0`` repeats exactly and resumes exactly; with worker processes, each worker's generator is
seeded from the epoch by the trainer's DataLoader.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from avseg.data.types import AVSSample

__all__ = ["ClipAugment", "ClipAugmentConfig", "HorizontalFlip", "mirror_text", "training_transform"]

Transform = Callable[[AVSSample], AVSSample]

_SWAPS = {"left": "right", "right": "left", "leftmost": "rightmost", "rightmost": "leftmost"}
_WORDS = re.compile(r"\b(" + "|".join(sorted(_SWAPS, key=len, reverse=True)) + r")\b", re.IGNORECASE)
# Words whose mirror image is not a word swap ("clockwise", "east"); a sample mentioning one is never flipped.
_UNSAFE = re.compile(r"\b(clockwise|counterclockwise|anticlockwise|east|west|eastward|westward)\b", re.IGNORECASE)


def mirror_text(text: str) -> str | None:
    """The expression of the mirrored scene: left and right swapped, case kept; None when it cannot be mirrored."""
    if _UNSAFE.search(text):
        return None

    def swap(match: re.Match[str]) -> str:
        word = match.group(0)
        new = _SWAPS[word.lower()]
        return new.capitalize() if word[0].isupper() else new

    return _WORDS.sub(swap, text)


class HorizontalFlip:
    """Mirror a clip (frames, masks, expression) with probability ``p``.

    Args:
        p: flip probability.
    """

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"HorizontalFlip: p must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, sample: AVSSample) -> AVSSample:
        if self.p == 0.0 or torch.rand(()).item() >= self.p:
            return sample
        text = sample.text
        if text is not None:
            text = mirror_text(text)
            if text is None:
                return sample
        return replace(
            sample,
            frames=sample.frames.flip(-1),  # (T, 3, H, W)
            masks=sample.masks.flip(-1),  # (T, H, W)
            text=text,
            meta={**sample.meta, "hflip": True},
        )

    def __repr__(self) -> str:
        return f"HorizontalFlip(p={self.p})"


@dataclass
class ClipAugmentConfig:
    """SAM2's video training augmentation (the ``sam2_training_config.yaml`` that AuralSAM2 trains with).

    One draw per clip decides the flip, the rotation and shear, the first colour jitter and the grayscale, so every
    frame gets the same geometric and clip-level colour transform and the masks move with the pixels. As released, a
    second, weaker colour jitter is drawn per frame (``frame_*``); it moves no pixel, so the masks stay exact.

    Attributes:
        hflip: probability of a horizontal flip (frames, masks and the expression's left/right).
        degrees: rotation range ``±degrees``.
        shear: x-shear range ``±shear`` degrees.
        brightness, contrast, saturation: strengths of the colour jitter drawn once per clip (factor
            ``1 ± strength``).
        frame_brightness, frame_contrast, frame_saturation: strengths of the colour jitter drawn per frame.
        grayscale: probability of turning the clip to grayscale.
    """

    hflip: float = 0.5
    degrees: float = 25.0
    shear: float = 20.0
    brightness: float = 0.1
    contrast: float = 0.03
    saturation: float = 0.03
    frame_brightness: float = 0.1
    frame_contrast: float = 0.05
    frame_saturation: float = 0.05
    grayscale: float = 0.05

    def __post_init__(self) -> None:
        for name in ("hflip", "grayscale"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"augment.{name} must be a probability in [0, 1], got {getattr(self, name)!r}")
        if not 0.0 <= self.shear < 90.0:
            raise ValueError(f"augment.shear must be in [0, 90) degrees, got {self.shear!r}")
        jitter = ("brightness", "contrast", "saturation", "frame_brightness", "frame_contrast", "frame_saturation")
        for name in ("degrees", *jitter):
            if getattr(self, name) < 0:
                raise ValueError(f"augment.{name} must be >= 0, got {getattr(self, name)!r}")


def _luma(x: Tensor) -> Tensor:
    """``(..., 3, H, W)`` RGB → ``(..., 1, H, W)`` ITU-R 601 luma."""
    return 0.299 * x[..., 0:1, :, :] + 0.587 * x[..., 1:2, :, :] + 0.114 * x[..., 2:3, :, :]


def _jitter(x: Tensor, brightness: Tensor, contrast: Tensor, saturation: Tensor) -> Tensor:
    """Colour jitter of ``x (T, 3, H, W)`` in [0, 255] with factors ``(T or 1, 1, 1, 1)``: brightness, then contrast
    around the image's mean luma, then saturation around each pixel's luma."""
    x = x * brightness
    mean = _luma(x).mean((-3, -2, -1), keepdim=True)  # (T, 1, 1, 1)
    x = (x - mean) * contrast + mean
    gray = _luma(x)  # (T, 1, H, W)
    return ((x - gray) * saturation + gray).clamp(0, 255)


class ClipAugment:
    """SAM2-style augmentation of a whole clip (see :class:`ClipAugmentConfig`).

    Randomness comes from torch's global generator (see the module docstring). A clip whose expression names a
    direction that cannot be mirrored (:func:`mirror_text`) is not flipped; it still gets the other transforms.

    Args:
        config: the augmentation.
    """

    def __init__(self, config: ClipAugmentConfig) -> None:
        self.config = config

    @staticmethod
    def _uniform(span: float, *shape: int) -> Tensor:
        """Uniform draws in ``[-span, span]`` of shape ``shape`` (a scalar without one)."""
        return (torch.rand(shape) * 2 - 1) * span

    def __call__(self, sample: AVSSample) -> AVSSample:
        cfg = self.config
        t, _, h, w = sample.frames.shape
        flip = bool(torch.rand(()) < cfg.hflip)
        angle = float(self._uniform(math.radians(cfg.degrees)))
        shear = float(self._uniform(math.radians(cfg.shear)))
        text = sample.text
        if flip and text is not None:
            text = mirror_text(text)
            if text is None:  # a direction that has no mirror word: keep the clip unflipped
                flip, text = False, sample.text
        frames = sample.frames.float()  # (T, 3, H, W) in [0, 255]
        masks = sample.masks
        if flip or angle != 0.0 or shear != 0.0:
            # Output → input sampling matrix in normalised coordinates: inverse of (rotation · x-shear), then the flip.
            cos, sin, tan = math.cos(angle), math.sin(angle), math.tan(shear)
            sx = -1.0 if flip else 1.0
            theta = torch.tensor([[cos * sx, (sin - tan * cos) * sx, 0.0], [-sin, cos + tan * sin, 0.0]])
            grid = F.affine_grid(theta.expand(t, 2, 3), [t, 3, h, w], align_corners=False)  # (T, H, W, 2)
            frames = F.grid_sample(frames, grid, mode="bilinear", align_corners=False)  # zero outside the image
            moved = F.grid_sample(masks[:, None].float(), grid, mode="nearest", align_corners=False)  # (T, 1, H, W)
            masks = moved[:, 0].round().to(masks.dtype)

        def factors(span: float, n: int) -> Tensor:  # (n, 1, 1, 1)
            return 1 + self._uniform(span, n).view(n, 1, 1, 1)

        frames = _jitter(frames, factors(cfg.brightness, 1), factors(cfg.contrast, 1), factors(cfg.saturation, 1))
        if bool(torch.rand(()) < cfg.grayscale):
            frames = _luma(frames).expand_as(frames)
        frames = _jitter(
            frames,
            factors(cfg.frame_brightness, t),
            factors(cfg.frame_contrast, t),
            factors(cfg.frame_saturation, t),
        )
        return replace(
            sample,
            frames=frames.round().clamp(0, 255).to(torch.uint8),
            masks=masks,
            text=text,
            meta={**sample.meta, "hflip": True} if flip else sample.meta,
        )

    def __repr__(self) -> str:
        return f"ClipAugment({self.config})"


def training_transform(augment: ClipAugmentConfig | None, hflip: float = 0.0) -> Transform | None:
    """The transform of training samples: :class:`ClipAugment` when a recipe gives ``augment`` (with ``hflip > 0``
    replacing its flip probability), else :class:`HorizontalFlip` with probability ``hflip``; None when neither
    augments. Validation and test samples are never augmented.

    Args:
        augment: the preset recipe's clip augmentation (``TrainRecipe.augment``), or None.
        hflip: a flip probability asked for on top of the preset (``data.hflip``); 0 leaves the preset's.
    """
    if not 0.0 <= hflip <= 1.0:
        raise ValueError(f"hflip must be a probability in [0, 1], got {hflip!r}")
    if augment is not None:
        return ClipAugment(replace(augment, hflip=hflip) if hflip > 0 else augment)
    return HorizontalFlip(hflip) if hflip > 0 else None
