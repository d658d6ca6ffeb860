"""The helpers every model inherits from AVSModel (avseg.models.base)."""

from __future__ import annotations

import torch

from avseg.data.types import random_batch
from tests.toy_model import ToyConfig, ToyModel


def test_training_frames_are_drawn_sorted_among_labelled_frames_in_training_only() -> None:
    model = ToyModel(ToyConfig())
    batch = random_batch(2, 8, 8)
    batch.label_valid[:] = False
    batch.label_valid[0, [1, 4, 6]] = True
    batch.label_valid[1, 2] = True  # labelled in some clip of the batch: a candidate
    torch.manual_seed(0)
    draws = {tuple(model.train().draw_training_frames(batch, 2).tolist()) for _ in range(40)}
    assert all(list(d) == sorted(d) and len(set(d)) == 2 and set(d) <= {1, 2, 4, 6} for d in draws)
    assert len(draws) > 1  # drawn at random, not the first two
    torch.manual_seed(5)
    first = model.draw_training_frames(batch, 3)
    torch.manual_seed(5)
    assert torch.equal(first, model.draw_training_frames(batch, 3))  # seeded runs repeat
    assert model.draw_training_frames(batch, None) is None
    assert model.draw_training_frames(batch, 8) is None  # covers the clip
    assert model.eval().draw_training_frames(batch, 2) is None
    batch.label_valid[:] = False
    assert len(model.train().draw_training_frames(batch, 3)) == 3  # nothing labelled: any frame
