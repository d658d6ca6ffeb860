"""``avseg data pretrain-encoders``: the labels the tiny encoders are pretrained on, and folders that load back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avseg.data.synthav import generate_scene
from avseg.data.synthav.pretrain import (
    CLASS_NAMES,
    COLOUR_NAMES,
    EncoderPretraining,
    patch_targets,
    pretrain_encoders,
    sounding_targets,
)
from avseg.data.synthav.scene import SceneObject
from avseg.errors import CheckpointError
from avseg.layers.audio import AudioEncoder, load_logmel_cnn, tiny_logmel_audio
from avseg.layers.vit import ViTEncoderConfig, build_vit_encoder


def _object(fid: int, cls: str, colour: str, loudness: list[float]) -> SceneObject:
    return SceneObject(
        fid=fid,
        cls=cls,
        colour=colour,
        radius=4.0,
        rotation=0.0,
        centres=np.zeros((len(loudness), 2)),
        loudness=np.asarray(loudness),
        sound_seed=0,
    )


def test_each_patch_is_labelled_with_the_object_covering_most_of_it():
    labels = np.zeros((1, 16, 16), np.uint8)  # a 4x4 grid of 4-px patches
    labels[0, 0:4, 8:12] = 1  # patch (row 0, col 2) fully covered by object fid 0
    labels[0, 12:16, 0:3] = 2  # patch (3, 0): 12 of 16 pixels are fid 1
    labels[0, 4:6, 4:8] = 2  # patch (1, 1): 8 of 16 pixels; the background ties and wins
    objects = [_object(0, "star", "blue", [0.0]), _object(1, "cross", "red", [0.0])]
    targets = patch_targets(labels, objects, grid=4)
    assert targets.shape == (1, 4, 4, 2)
    star, cross = CLASS_NAMES.index("star") + 1, CLASS_NAMES.index("cross") + 1
    assert tuple(targets[0, 0, 2]) == (star, COLOUR_NAMES.index("blue") + 1)
    assert tuple(targets[0, 3, 0]) == (cross, COLOUR_NAMES.index("red") + 1)
    assert tuple(targets[0, 1, 1]) == (0, 0)
    assert (targets[0] > 0).any(-1).sum() == 2  # every other patch is background
    with pytest.raises(ValueError, match="multiple of the patch grid"):
        patch_targets(labels, objects, grid=5)


def test_sounding_targets_mark_the_seconds_each_class_sounds_in():
    objects = [
        _object(0, "circle", "red", [0.0, 0.5, 0.0]),
        _object(1, "circle", "blue", [0.3, 0.0, 0.0]),  # the same class twice: either sounding counts
        _object(2, "square", "green", [0.0, 0.0, 0.0]),  # silent
    ]
    targets = sounding_targets(objects, 3)
    circle = CLASS_NAMES.index("circle")
    np.testing.assert_array_equal(targets[:, circle], [1.0, 1.0, 0.0])
    assert targets.sum() == 2.0


def test_a_short_pretraining_writes_encoders_that_load_back_exactly(tmp_path):
    record = pretrain_encoders(tmp_path, EncoderPretraining(videos=10, size=64, vit_steps=2, audio_steps=2))
    assert record["training_frames"] == 60 and record["held_out_frames"] == 10  # 6 train and 1 val scene
    assert 0.0 <= record["vit"]["held_out_accuracy"]["class"] <= 1.0
    # The CNN folder loads into the tiny presets' audio encoder, frozen and out of checkpoints.
    from safetensors.torch import load_file

    stored = load_file(str(tmp_path / "logmel-cnn-synthav" / "model.safetensors"))
    assert all(t.dtype == torch.float16 for t in stored.values() if t.is_floating_point())
    encoder = AudioEncoder(tiny_logmel_audio(weights=str(tmp_path / "logmel-cnn-synthav")), pretrained=True)
    inner = encoder.cnn.module
    for name, tensor in stored.items():
        assert torch.equal(inner.state_dict()[name], tensor.float() if tensor.is_floating_point() else tensor), name
    assert not any(p.requires_grad for p in encoder.parameters())
    assert encoder.state_dict() == {}
    encoder.train()
    assert not inner.training  # batch-norm statistics stay fixed
    # Not pretrained and not packaged: the folder is not read.
    random = AudioEncoder(tiny_logmel_audio(weights=str(tmp_path / "logmel-cnn-synthav")), pretrained=False)
    assert not torch.equal(random.cnn.module.proj[0].weight, inner.proj[0].weight)
    # The ViT folder loads through the normal image-transformer path.
    config = ViTEncoderConfig(kind="vit", weights=str(tmp_path / "vit-tiny-synthav"), image_size=64)
    vit = build_vit_encoder(config, pretrained=True)
    vit_stored = load_file(str(tmp_path / "vit-tiny-synthav" / "model.safetensors"))
    ours = vit.module.model.state_dict()
    for name, tensor in vit_stored.items():
        assert torch.equal(ours[name], tensor.float()), name
    assert ours[next(iter(vit_stored))].dtype == torch.float32
    assert vit.state_dict() == {}


def test_the_pretraining_never_draws_the_held_out_class():
    # 6 of every 10 indices are training scenes; none of them may show the class test_u holds out.
    for index in range(40):
        scene = generate_scene(1, index, size=64)
        if scene.split == "train":
            assert "heart" not in {o.cls for o in scene.objects}


def test_a_folder_that_is_not_a_logmel_cnn_is_one_error_naming_it(tmp_path):
    with pytest.raises(CheckpointError, match=str(tmp_path)):
        load_logmel_cnn(str(tmp_path))
    (tmp_path / "config.json").write_text('{"pool": [2, 2], "channels": [16, 32, 64], "out_dim": 128}')
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="not a log-mel CNN"):
        load_logmel_cnn(str(tmp_path))
