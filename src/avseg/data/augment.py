"""Training-time augmentations: callables ``AVSSample -> AVSSample`` passed as a dataset's ``transform``.

They must keep every label true. A horizontal flip mirrors the frames and masks, so any expression that names a side
has to be mirrored too ("the object on the left" becomes "the object on the right"); :class:`HorizontalFlip` swaps
those words, and leaves a sample unflipped when its expression mentions a direction it cannot mirror safely.

Randomness comes from torch's global generator, which the trainer seeds per rank and stores in its checkpoints, so a
run with ``num_workers = 0`` repeats exactly and resumes exactly; with worker processes, each worker's generator is
seeded from the epoch by the trainer's DataLoader.
"""

from __future__ import annotations

import re
from dataclasses import replace

import torch

from avseg.data.types import AVSSample

__all__ = ["HorizontalFlip", "mirror_text"]

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
