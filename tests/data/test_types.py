"""AVSSample validation and collate padding."""

import pytest
import torch

from avseg.data.types import AVSSample, collate, random_batch
from avseg.errors import ShapeError


def make_sample(t: int = 3, h: int = 8, w: int = 10, uid: str = "u", embeddings: bool = False) -> AVSSample:
    return AVSSample(
        frames=torch.randint(0, 255, (t, 3, h, w), dtype=torch.uint8),
        masks=torch.randint(0, 2, (t, h, w), dtype=torch.uint8),
        frame_valid=torch.ones(t, dtype=torch.bool),
        label_valid=torch.tensor([True] + [False] * (t - 1)),
        audio_wave=torch.randn(t * 16000),
        audio_examples=torch.randn(t, 1, 96, 64),
        audio_embeddings=torch.randn(t, 128) if embeddings else None,
        video_id="v" + uid,
        split="train",
        dataset="test",
        uid=uid,
        text="the red circle",
    )


def test_collate_pads_time_with_invalid_frames():
    a, b = make_sample(t=3, uid="a"), make_sample(t=5, uid="b")
    batch = collate([a, b])
    assert batch.frames.shape == (2, 5, 3, 8, 10)
    assert batch.masks.shape == (2, 5, 8, 10)
    assert batch.audio_examples.shape == (2, 5, 1, 96, 64)
    assert batch.audio_wave.shape == (2, 5 * 16000)
    assert batch.frame_valid.tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    assert batch.label_valid[0].tolist() == [True, False, False, False, False]
    assert torch.equal(batch.frames[0, :3], a.frames) and batch.frames[0, 3:].eq(0).all()
    assert batch.uid == ["a", "b"] and batch.text == ["the red circle"] * 2
    assert batch.audio_embeddings is None


def test_collate_fixed_length_and_embeddings():
    batch = collate([make_sample(t=2, embeddings=True)], num_frames=4)
    assert batch.audio_embeddings.shape == (1, 4, 128)
    with pytest.raises(ShapeError, match="num_frames=1"):
        collate([make_sample(t=2)], num_frames=1)


def test_collate_rejects_mixed_sizes_naming_samples():
    with pytest.raises(ShapeError, match=r"a: \(8, 10\).*b: \(9, 10\)"):
        collate([make_sample(uid="a"), make_sample(h=9, uid="b")])
    with pytest.raises(ShapeError, match="audio_embeddings"):
        collate([make_sample(embeddings=True), make_sample()])
    with pytest.raises(ShapeError, match="empty"):
        collate([])


def test_sample_validation_names_field():
    s = make_sample()
    with pytest.raises(ShapeError, match="masks must be uint8"):
        s.with_updates(masks=torch.zeros(3, 8, 9, dtype=torch.uint8))
    with pytest.raises(ShapeError, match="frames must be uint8"):
        s.with_updates(frames=s.frames.float())
    with pytest.raises(ShapeError, match="audio_examples"):
        s.with_updates(audio_examples=torch.zeros(2, 1, 96, 64))


def test_batch_to_moves_tensors_only():
    batch = collate([make_sample()])
    moved = batch.to("cpu")
    assert moved.frames is not None and moved.uid == batch.uid


def test_random_batch_has_the_contract_shapes_and_the_requested_masks() -> None:
    batch = random_batch(2, 3, 32, texts=["the red circle", None], classes=5, seed=1)
    assert batch.frames.shape == (2, 3, 3, 32, 32) and batch.frames.dtype == torch.uint8
    assert batch.audio_examples.shape == (2, 3, 1, 96, 64) and batch.audio_wave.shape == (2, 3 * 16000)
    assert batch.masks.max() <= 4 and batch.masks.max() > 1 and batch.text == ["the red circle", None]
    square = random_batch(1, 2, 16, masks="square").masks
    assert square.sum() == 2 * 4 * 4 and square[0, 0, 4, 4] == 1
    assert random_batch(1, 1, 8, masks="empty").masks.sum() == 0
    torch.testing.assert_close(random_batch(seed=3).frames, random_batch(seed=3).frames)
    with pytest.raises(ValueError, match="texts"):
        random_batch(2, texts=["one"])


def test_select_frames_slices_every_per_frame_field() -> None:
    batch = collate([make_sample(t=4, embeddings=True, uid="a"), make_sample(t=4, embeddings=True, uid="b")])
    batch.frame_names = [("f0", "f1", "f2", "f3"), ("g0", "g1", "g2", "g3")]
    index = torch.tensor([1, 3])
    sub = batch.select_frames(index)
    assert sub.num_frames == 2 and sub.batch_size == 2
    for name in ("frames", "masks", "frame_valid", "label_valid", "audio_examples", "audio_embeddings"):
        torch.testing.assert_close(getattr(sub, name), getattr(batch, name)[:, index])
    assert sub.frame_names == [("f1", "f3"), ("g1", "g3")]
    assert sub.audio_wave is batch.audio_wave and sub.uid == batch.uid  # the soundtrack is not per frame
    with pytest.raises(ShapeError, match=r"0\.\.3"):
        batch.select_frames(torch.tensor([0, 4]))
