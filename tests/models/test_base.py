"""The helpers every model inherits from AVSModel (avseg.models.base)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from avseg.data.types import AVSBatch, random_batch
from avseg.errors import ShapeError
from avseg.models.base import AVSModel, AVSOutput, requires_text
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


@dataclass
class FramesConfig:
    train_frames: int | None = None


class FramesModel(AVSModel):
    """A model that only implements the per-frame part: each frame's logits are its mean pixel value."""

    family = "frames-test"
    config_class = FramesConfig

    def __init__(self, config: FramesConfig, frames_out: int | None = None) -> None:
        super().__init__(config)
        self.seen: list[torch.Tensor | None] = []
        self.frames_out = frames_out  # return this many frames instead of the drawn ones (a broken model)

    def forward_frames(self, batch: AVSBatch, frames: torch.Tensor | None) -> AVSOutput:
        self.seen.append(frames)
        mean = batch.frames.float().mean((2, 3, 4)) + 1.0  # (B, T), never zero
        if frames is not None:
            mean = mean[:, frames]  # (B, T')
        if self.frames_out is not None:
            mean = mean[:, : self.frames_out]
        b, t = mean.shape
        h, w = batch.frames.shape[-2:]
        return AVSOutput(
            mask_logits=mean[:, :, None, None, None].expand(b, t, 1, h, w),
            object_logits=-mean,
            iou_pred=mean[..., None].expand(b, t, 3),
            aux={"per_frame": mean},
        )


def test_forward_runs_the_drawn_frames_and_places_them_in_the_clip() -> None:
    model = FramesModel(FramesConfig(train_frames=2)).train()
    batch = random_batch(2, 5, 8)
    torch.manual_seed(0)
    out = model(batch)
    torch.manual_seed(0)
    drawn = model.draw_training_frames(batch, 2)
    assert torch.equal(model.seen[0], drawn)
    expected = torch.zeros(2, 5, dtype=torch.bool)
    expected[:, drawn] = True
    assert torch.equal(out.computed_frames, expected)
    mean = batch.frames.float().mean((2, 3, 4)) + 1.0  # (B, T)
    assert out.mask_logits.shape == (2, 5, 1, 8, 8) and out.iou_pred.shape == (2, 5, 3)
    torch.testing.assert_close(out.object_logits, torch.where(expected, -mean, 0.0))
    torch.testing.assert_close(out.mask_logits[:, :, 0, 0, 0], torch.where(expected, mean, 0.0))
    torch.testing.assert_close(out.iou_pred[..., 1], torch.where(expected, mean, 0.0))
    # select_computed gives the frames in the order of aux.
    torch.testing.assert_close(out.select_computed(out.object_logits), -out.aux["per_frame"])
    assert out.select_computed(batch.masks).shape == (2, 2, 8, 8)
    # Evaluation runs every frame.
    with torch.no_grad():
        full = model.eval()(batch)
    assert model.seen[-1] is None and full.computed_frames.all()
    torch.testing.assert_close(full.object_logits, -mean)
    assert full.select_computed(batch.masks).shape == (2, 5, 8, 8)


def test_forward_refuses_a_per_frame_output_of_the_wrong_length() -> None:
    model = FramesModel(FramesConfig(train_frames=3), frames_out=1).train()
    with pytest.raises(ShapeError, match="forward_frames"):
        model(random_batch(1, 5, 8))


# -- text input ------------------------------------------------------------------------------------------------------


class TextToy(ToyModel):
    """A toy that declares a text input."""

    def __init__(self, config: ToyConfig, text_input: str) -> None:
        super().__init__(config)
        self._text_input = text_input

    @property
    def text_input(self) -> str:
        return self._text_input


def test_requires_text_follows_the_declaration_then_the_training_data_then_the_preset() -> None:
    assert ToyModel(ToyConfig()).text_input == "none"
    assert requires_text(ToyModel(ToyConfig()), "refavs") is None  # no text branch: never
    required = TextToy(ToyConfig(), "required")
    assert "declares that it reads text" in requires_text(required, "avs-object")  # the declaration wins
    optional = TextToy(ToyConfig(), "optional")
    assert "trained on refavs data" in requires_text(optional, "refavs")
    assert "trained on rvos data" in requires_text(optional, "rvos")
    assert requires_text(optional, "avs-object") is None and requires_text(optional, "avss") is None
    # Training data unknown: the preset's benchmarks decide.
    assert "does not record" in requires_text(optional)
    optional.preset, optional.tasks = "tpavi-tiny", ("s4", "ms3", "refavs")  # serves S4 and MS3 too
    assert requires_text(optional) is None
    optional.preset, optional.tasks = "tpavi-r50-refavs", ("refavs",)
    assert "preset tpavi-r50-refavs serves only referring tasks" in requires_text(optional)
    optional.preset, optional.tasks = "not-a-preset", ()
    assert "preset not-a-preset is not registered" in requires_text(optional)


def test_the_registry_records_preset_and_tasks_on_the_model(tmp_path) -> None:
    from avseg.checkpoint import save_checkpoint
    from avseg.models import create_model, get_entry, load_model

    model = create_model("tpavi-tiny")
    assert (
        (model.preset, model.tasks)
        == ("tpavi-tiny", get_entry("tpavi-tiny").tasks)
        == ("tpavi-tiny", ("s4", "ms3", "refavs"))
    )
    loaded = load_model(save_checkpoint(tmp_path / "ck", model, preset="tpavi-tiny"))
    assert (loaded.preset, loaded.tasks) == ("tpavi-tiny", ("s4", "ms3", "refavs"))
    plain = load_model(save_checkpoint(tmp_path / "plain", model, preset=None))
    assert (plain.preset, plain.tasks) == (None, ())
    assert requires_text(plain) is not None and requires_text(loaded) is None


TEXTLESS = {
    "tpavi-tiny": {"text.encoder": None},
    "avsegformer-tiny": {"text.encoder": None},
    "auralsam2-tiny": {"text.encoder": None, "fuser.text_dim": None},
}


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(TEXTLESS))
def test_families_declare_their_text_input_from_their_config(preset: str) -> None:
    from avseg.models import create_model

    assert create_model(preset, **TEXTLESS[preset]).text_input == "none"
    model = create_model(preset).eval()
    assert model.text_input == "optional"
    batch = random_batch(1, 2, 32)  # no expressions: an optional text branch must run without them
    with torch.no_grad():
        assert model(batch).mask_logits.shape == (1, 2, 1, 32, 32)


def test_normalize_frames_gives_zero_on_padded_frames_and_imagenet_values_on_real_ones() -> None:
    model = ToyModel(ToyConfig())
    batch = random_batch(2, 4, 8)
    batch.frame_valid[0, 2:] = False  # clip 0: two real frames, then padding (the reader stores black frames there)
    batch.frames[0, 2:] = 0
    x = model.normalize_frames(batch)  # (B*T, 3, H, W)
    assert x.shape == (8, 3, 8, 8)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    expected = (batch.frames.flatten(0, 1).float() / 255.0 - mean) / std  # (B*T, 3, H, W)
    real = batch.frame_valid.flatten()
    # The official loaders pad with zero tensors after normalising: a padded frame is 0, not (0 - mean) / std.
    assert torch.count_nonzero(x[~real]) == 0
    torch.testing.assert_close(x[real], expected[real])
    # Selecting frames and resizing keep the rule: the selected padded frame stays 0 at the new size.
    picked = model.normalize_frames(batch, torch.tensor([1, 3]), (16, 16))  # (B*2, 3, 16, 16)
    assert picked.shape == (4, 3, 16, 16) and torch.count_nonzero(picked[1]) == 0
    torch.testing.assert_close(
        picked[3], F.interpolate(expected[7:8], size=(16, 16), mode="bilinear", antialias=True)[0]
    )
