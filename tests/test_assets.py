"""Packaged weights: named ``avseg:<name>`` (an unknown name is a one-line error listing what exists), stored with
their SHA-256 and the commands that reproduce them, loaded through the normal SAM2 path."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from avseg.assets import ASSETS, asset_path, is_packaged, resolve_weights
from avseg.errors import UsageError
from avseg.layers.sam2 import build_sam2, tiny_sam2_config


def test_sources_without_the_prefix_pass_through():
    assert resolve_weights("facebook/sam2.1-hiera-tiny") == "facebook/sam2.1-hiera-tiny"
    assert resolve_weights("/data/sam2-folder") == "/data/sam2-folder"
    assert is_packaged("avseg:sam2-tiny-synthav")
    assert not any(is_packaged(s) for s in ("facebook/sam2.1-hiera-tiny", "/data/avseg:x", "", None))


def test_an_unknown_packaged_name_is_one_line_naming_it():
    with pytest.raises(UsageError, match=r"unknown packaged weights avseg:nope; available: "):
        resolve_weights("avseg:nope")
    # build_sam2 loads packaged weights even without pretrained=True, so the name is checked there too.
    assert "nope" not in ASSETS
    with pytest.raises(UsageError, match="avseg:nope"):
        build_sam2(tiny_sam2_config(64, weights="avseg:nope"), pretrained=False)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# What each asset's card must name: the commands that reproduce it and the figure it reaches.
_CARD_NEEDS = {
    "sam2-tiny-synthav": ("avseg data synth", "avseg train", "avseg convert sam2", "J&F"),
    "vit-tiny-synthav": ("avseg data pretrain-encoders", "accuracy"),
    "logmel-cnn-synthav": ("avseg data pretrain-encoders", "accuracy"),
}


@pytest.mark.parametrize("name", sorted(ASSETS))
def test_each_asset_has_the_recorded_hash_and_says_how_it_was_made(name):
    from safetensors.torch import load_file

    folder = asset_path(name)
    assert _sha256(folder / "model.safetensors") == ASSETS[name]
    card = (folder / "ASSET.md").read_text()
    assert ASSETS[name] in card  # the card states the hash it describes
    for needed in _CARD_NEEDS[name]:
        assert needed in card, needed
    stored = load_file(str(folder / "model.safetensors"))
    assert {t.dtype for t in stored.values() if t.is_floating_point()} == {torch.float16}
    assert (folder / "model.safetensors").stat().st_size < 8 * 2**20  # a few MB


def test_the_tiny_sam2_asset_loads_through_the_normal_path_into_auralsam2_tiny_frozen():
    from safetensors.torch import load_file

    from avseg.models import create_model

    model = create_model("auralsam2-tiny")
    assert model.config.sam2.weights == "avseg:sam2-tiny-synthav"
    stored = load_file(str(asset_path("sam2-tiny-synthav") / "model.safetensors"))
    ours = model.sam2.model.state_dict()
    assert stored.keys() == ours.keys()
    for key, value in stored.items():
        assert torch.equal(ours[key], value.float()), key
    assert not any(p.requires_grad for p in model.sam2.parameters())  # frozen, as the paper freezes SAM2
    assert any(p.requires_grad for p in model.fuser.parameters())


def test_the_tiny_sam2_asset_segments_an_object_from_one_click():
    """On SynthAV scenes it was not trained on (another seed), one click at an object's centre gives a mask that
    overlaps the object well, on the clicked frame, without memory (SAM2's image path)."""
    from avseg.data.synthav import generate_scene, render_scene
    from avseg.layers.sam2 import Sam2Prompt
    from avseg.layers.sam2.config import CPU_SAM2_WEIGHTS, cpu_sam2_config
    from avseg.layers.sam2.prompts import sample_error_points
    from avseg.models.base import IMAGENET_MEAN, IMAGENET_STD

    layer = build_sam2(cpu_sam2_config(weights=CPU_SAM2_WEIGHTS)).eval()
    images, objects = [], []
    for index in range(8):
        frames, labels = render_scene(generate_scene(seed=7, index=index, size=layer.image_size, num_frames=1))
        for object_id in range(1, int(labels[0].max()) + 1):
            if (labels[0] == object_id).sum() >= 40:  # visible enough to click on
                images.append(torch.from_numpy(frames[0]).permute(2, 0, 1))
                objects.append(torch.from_numpy(labels[0] == object_id))
    gt = torch.stack(objects)  # (N, S, S)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        features = layer.encode_frames((torch.stack(images).float() / 255 - mean) / std)
        points, labels = sample_error_points(gt, None, method="center")
        out = layer.decode(features, Sam2Prompt(points=points, point_labels=labels), multimask_output=True)
    chosen = out.mask_logits[torch.arange(len(gt)), out.iou_pred.argmax(dim=1)]  # the IoU head's pick
    pred = torch.nn.functional.interpolate(chosen[:, None], size=gt.shape[-2:], mode="bilinear")[:, 0] > 0
    iou = (pred & gt).flatten(1).sum(1) / (pred | gt).flatten(1).sum(1).clamp(min=1)
    assert len(gt) >= 12
    assert float(iou.mean()) > 0.6, iou


def test_sam2love_tiny_freezes_the_packaged_encoders_and_leaves_them_out_of_checkpoints():
    from safetensors.torch import load_file

    from avseg.models import create_model

    model = create_model("sam2love-tiny")
    vit = model.vision_encoder.module.model
    stored = load_file(str(asset_path("vit-tiny-synthav") / "model.safetensors"))
    for key, value in stored.items():
        assert torch.equal(vit.state_dict()[key], value.float()), key
    cnn = model.audio_encoder.cnn.module
    stored = load_file(str(asset_path("logmel-cnn-synthav") / "model.safetensors"))
    for key, value in stored.items():
        expected = value.float() if value.is_floating_point() else value
        assert torch.equal(cnn.state_dict()[key], expected), key
    model.train()
    assert not cnn.training and not vit.training  # batch-norm statistics and dropout stay as pretrained
    frozen = [*model.vision_encoder.parameters(), *model.audio_encoder.parameters()]
    assert frozen and not any(p.requires_grad for p in frozen)
    keys = model.state_dict().keys()
    assert not any(k.startswith(("vision_encoder.", "audio_encoder.")) for k in keys)
    assert any(k.startswith("fusion.") for k in keys)  # what trains is saved


@pytest.mark.parametrize("name", ["vit-tiny-synthav", "logmel-cnn-synthav"])
def test_a_packaged_encoder_given_as_a_checkpoint_is_one_error_saying_what_it_is(name):
    from avseg.checkpoint import NotACheckpointError, resolve_checkpoint

    with pytest.raises(NotACheckpointError, match=f"avseg:{name} is a packaged encoder, not a model to run"):
        resolve_checkpoint(f"avseg:{name}")
