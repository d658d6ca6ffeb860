"""A synthetic model batch shared by the model tests (the Foundation I batch type, random content)."""

from __future__ import annotations

from typing import Literal

import torch

from avseg.data.types import AVSBatch


def make_batch(
    b: int = 2,
    t: int = 3,
    size: int = 64,
    *,
    texts: list[str | None] | None = None,
    classes: int = 1,
    masks: Literal["random", "square"] = "random",
    seed: int = 0,
) -> AVSBatch:
    """A batch of ``b`` clips of ``t`` random frames ``size`` pixels square with log-mel audio examples.

    ``masks="random"`` draws each pixel (30% foreground, or a class in ``[0, classes)``); ``"square"`` gives every
    frame one square object (a target a model can fit quickly).
    """
    g = torch.Generator().manual_seed(seed)
    if masks == "square":
        mask = torch.zeros(b, t, size, size, dtype=torch.uint8)
        mask[:, :, size // 4 : size // 2, size // 4 : size // 2] = 1
    elif classes == 1:
        mask = (torch.rand(b, t, size, size, generator=g) > 0.7).to(torch.uint8)
    else:
        mask = torch.randint(0, classes, (b, t, size, size), generator=g).to(torch.uint8)
    return AVSBatch(
        frames=torch.randint(0, 256, (b, t, 3, size, size), generator=g).to(torch.uint8),
        masks=mask,
        frame_valid=torch.ones(b, t, dtype=torch.bool),
        label_valid=torch.ones(b, t, dtype=torch.bool),
        audio_wave=torch.zeros(b, t * 16000),
        audio_examples=torch.randn(b, t, 1, 96, 64, generator=g),
        is_null=torch.zeros(b, dtype=torch.bool),
        has_audio=torch.ones(b, dtype=torch.bool),
        video_id=[f"v{i}" for i in range(b)],
        split=["train"] * b,
        dataset=["synthetic"] * b,
        text=list(texts) if texts is not None else [None] * b,
        uid=[None] * b,
        object_id=[None] * b,
        modalities=[()] * b,
        frame_names=[()] * b,
        orig_size=[None] * b,
        meta=[{} for _ in range(b)],
    )
