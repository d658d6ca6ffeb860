import pytest
import torch

from avseg.data.augment import HorizontalFlip, mirror_text
from avseg.data.types import AVSSample


def sample(text: str | None) -> AVSSample:
    frames = torch.zeros(2, 3, 4, 6, dtype=torch.uint8)
    frames[:, 0, :, 0] = 255  # a red column on the left edge
    masks = torch.zeros(2, 4, 6, dtype=torch.uint8)
    masks[:, :, :2] = 1  # the object on the left
    return AVSSample(
        frames=frames,
        masks=masks,
        frame_valid=torch.ones(2, dtype=torch.bool),
        label_valid=torch.ones(2, dtype=torch.bool),
        audio_wave=torch.zeros(32000),
        audio_examples=torch.zeros(2, 1, 96, 64),
        video_id="v",
        split="train",
        dataset="synthetic",
        text=text,
    )


def test_mirror_text_swaps_sides_and_keeps_case():
    assert mirror_text("the object on the left") == "the object on the right"
    assert mirror_text("Right of the leftmost dog, left") == "Left of the rightmost dog, right"
    assert mirror_text("the brightest object") == "the brightest object"  # "right" inside a word is not a side
    assert mirror_text("the dog running east") is None


def test_flip_mirrors_frames_masks_and_text_together():
    torch.manual_seed(0)
    out = HorizontalFlip(p=1.0)(sample("the silent object on the left"))
    assert out.text == "the silent object on the right"
    assert out.masks[:, :, -2:].all() and not out.masks[:, :, :-2].any()
    assert (out.frames[:, 0, :, -1] == 255).all() and (out.frames[:, 0, :, 0] == 0).all()
    assert out.meta["hflip"] is True
    # Audio and flags are untouched.
    assert out.audio_examples.shape == (2, 1, 96, 64) and out.frame_valid.all()


def test_flip_probability_and_unsafe_expressions():
    torch.manual_seed(0)
    flip = HorizontalFlip(p=0.5)
    flipped = sum(bool(flip(sample("the red circle")).meta.get("hflip")) for _ in range(400))
    assert 150 < flipped < 250
    assert HorizontalFlip(p=1.0)(sample("the car driving west")).meta.get("hflip") is None
    assert HorizontalFlip(p=1.0)(sample(None)).meta["hflip"] is True  # AVS clips without text flip freely
    with pytest.raises(ValueError, match="p must be in"):
        HorizontalFlip(p=1.5)
