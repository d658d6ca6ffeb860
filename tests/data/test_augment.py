"""Training augmentations (avseg.data.augment): text-aware flips and SAM2's clip augmentation, built from recipes."""

import dataclasses

import pytest
import torch

from avseg.data.augment import ClipAugment, ClipAugmentConfig, HorizontalFlip, mirror_text, training_transform
from avseg.data.types import AVSSample
from avseg.models import get_entry


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


STILL = ClipAugmentConfig(
    hflip=0.0,
    degrees=0.0,
    shear=0.0,
    brightness=0.0,
    contrast=0.0,
    saturation=0.0,
    frame_brightness=0.0,
    frame_contrast=0.0,
    frame_saturation=0.0,
    grayscale=0.0,
)
GEOMETRY = dataclasses.replace(STILL, hflip=0.5, degrees=25.0, shear=20.0)
NO_FRAME_JITTER = dataclasses.replace(
    ClipAugmentConfig(), frame_brightness=0.0, frame_contrast=0.0, frame_saturation=0.0
)


def clip(text: str | None = None, t: int = 4, size: int = 48) -> AVSSample:
    """``t`` identical frames: a textured background and a bright object in the left third, which the mask covers."""
    g = torch.Generator().manual_seed(0)
    frame = (torch.rand(3, size, size, generator=g) * 80).to(torch.uint8)
    mask = torch.zeros(size, size, dtype=torch.uint8)
    mask[size // 4 : size // 2, 2 : size // 3] = 1
    frame[:, mask.bool()] = 255
    return AVSSample(
        frames=frame.expand(t, -1, -1, -1).clone(),
        masks=mask.expand(t, -1, -1).clone(),
        frame_valid=torch.ones(t, dtype=torch.bool),
        label_valid=torch.ones(t, dtype=torch.bool),
        audio_wave=torch.zeros(t * 16000),
        audio_examples=torch.zeros(t, 1, 96, 64),
        video_id="v",
        split="train",
        dataset="refavs",
        text=text,
    )


def column_centre(masks: torch.Tensor) -> float:
    """Mean x of the foreground of ``masks (T, H, W)``, as a fraction of the width."""
    xs = torch.nonzero(masks)[:, -1].float()
    return float(xs.mean()) / masks.shape[-1]


def test_clip_augmentation_transforms_every_frame_alike_and_masks_follow_the_pixels():
    torch.manual_seed(0)
    source = clip()
    changed = 0
    for _ in range(8):
        out = ClipAugment(NO_FRAME_JITTER)(source)
        assert out.frames.dtype == torch.uint8 and out.masks.dtype == torch.uint8
        assert (out.frames == out.frames[:1]).all() and (out.masks == out.masks[:1]).all()  # one draw per clip
        changed += not torch.equal(out.masks, source.masks)
        assert set(out.masks.unique().tolist()) <= {0, 1}
    assert changed >= 6  # the draws differ from clip to clip (flip, rotation, shear)
    # Without colour changes the object's pixels and its mask move together.
    for _ in range(8):
        out = ClipAugment(GEOMETRY)(source)
        bright, mask = out.frames[:, 0] > 160, out.masks.bool()
        assert (bright & mask).sum() / (bright | mask).sum() > 0.85
    # The released per-frame colour jitter changes colours frame by frame but never the geometry.
    out = ClipAugment(ClipAugmentConfig())(source)
    assert (out.masks == out.masks[:1]).all() and not (out.frames == out.frames[:1]).all()


def test_clip_augmentation_without_any_change_is_the_identity():
    torch.manual_seed(0)
    source = clip("the guitar on the left")
    out = ClipAugment(STILL)(source)
    assert torch.equal(out.frames, source.frames) and torch.equal(out.masks, source.masks)
    assert out.text == source.text and "hflip" not in out.meta


@pytest.mark.parametrize("preset", ["tpavi-tiny", "avsegformer-tiny", "auralsam2-tiny", "auralsam2-l-refavs"])
def test_a_flipped_refavs_sample_gets_its_expression_mirrored_in_every_family(preset):
    # The trainer builds every family's transform the same way: from the preset's recipe and data.hflip.
    transform = get_entry(preset).config().recipe.train_transform(hflip=1.0)
    torch.manual_seed(0)
    out = transform(clip("the guitar on the left of the piano"))
    assert out.text == "the guitar on the right of the piano" and out.meta["hflip"] is True
    assert column_centre(out.masks) > 0.5  # the object moved to the right with its mask
    unsafe = transform(clip("the car driving west"))  # no mirror word for "west": the clip is not flipped
    assert unsafe.text == "the car driving west" and "hflip" not in unsafe.meta and column_centre(unsafe.masks) < 0.5


def test_training_transform_follows_the_recipe():
    assert training_transform(None) is None
    assert isinstance(training_transform(None, hflip=0.5), HorizontalFlip)
    paper = get_entry("auralsam2-l-refavs").config().recipe
    assert paper.augment == ClipAugmentConfig()  # the released augmentation: flip 0.5, affine, colour, grayscale
    released = paper.train_transform()
    assert isinstance(released, ClipAugment) and released.config.hflip == 0.5
    assert paper.train_transform(hflip=0.2).config.hflip == 0.2  # data.hflip sets the recipe's flip probability
    assert get_entry("tpavi-tiny").config().recipe.train_transform() is None
    with pytest.raises(ValueError, match="hflip must be a probability"):
        training_transform(None, hflip=2.0)


@pytest.mark.parametrize(
    ("field", "value"), [("hflip", 1.5), ("grayscale", -0.1), ("shear", 90.0), ("degrees", -1.0), ("contrast", -0.1)]
)
def test_invalid_clip_augmentation_is_refused_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"augment\.{field}"):
        ClipAugmentConfig(**{field: value})
