"""SAM2 weights where a checkpoint is expected: the packaged tiny SAM2, a folder ``avseg convert sam2`` wrote, and a
Hub repository of Meta's (by its name) each give the ``sam2-*`` preset of their shape with those weights, ready to
track a clicked object in a user's video with ``avseg predict`` and to be scored with ``avseg eval --format vos``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from avseg.assets import asset_path
from avseg.checkpoint import TrainingData, read_training_data, sam2_weights_config, save_checkpoint
from avseg.data.synthav import generate_scene, render_scene
from avseg.errors import UsageError
from avseg.media.image import read_mask
from avseg.media.video import write_video
from avseg.models import load_model
from avseg.models.sam2_vos import SAM2VOS, sam2_tiny, weights_preset
from tests.test_predict import one_error_line, run_cli

ASSET = "avseg:sam2-tiny-synthav"


def _sam2_state(model: SAM2VOS) -> dict[str, torch.Tensor]:
    return model.sam2.model.state_dict()


def test_the_packaged_sam2_loads_as_a_ready_sam2_tiny():
    model = load_model(ASSET)
    assert isinstance(model, SAM2VOS) and model.preset == "sam2-tiny" and not model.training
    assert model.config.pretrained and model.config.sam2.image_size == 128
    stored = load_file(str(asset_path("sam2-tiny-synthav") / "model.safetensors"))
    ours = _sam2_state(model)
    assert stored and set(stored) <= set(ours)
    for key, value in stored.items():
        assert torch.equal(ours[key], value.float()), key
    assert read_training_data(ASSET) == TrainingData(format="vos")


def test_a_converted_folder_loads_with_the_weights_it_holds(tmp_path, capsys):
    torch.manual_seed(3)
    trained = SAM2VOS(sam2_tiny())
    checkpoint = save_checkpoint(tmp_path / "ck", trained, preset="sam2-tiny", meta={"data": {"format": "vos"}})
    status, _, err = run_cli(capsys, "convert", "sam2", checkpoint, tmp_path / "weights", "--quiet")
    assert status == 0, err
    assert sam2_weights_config(tmp_path / "weights") is not None and sam2_weights_config(checkpoint) is None
    model = load_model(tmp_path / "weights")
    assert model.preset == "sam2-tiny"
    expected = _sam2_state(trained)
    for key, value in _sam2_state(model).items():
        assert torch.equal(value, expected[key]), key


def test_the_preset_comes_from_the_record_else_the_variants_name(tmp_path):
    folder = tmp_path / "weights"
    folder.mkdir()
    assert weights_preset(folder, "facebook/sam2.1-hiera-large") == "sam2.1-hiera-l"
    assert weights_preset(folder, "facebook/sam2-hiera-base-plus") == "sam2-hiera-b+"
    (folder / "conversion.json").write_text(json.dumps({"preset": None, "variant": "sam2.1-hiera-small"}))
    assert weights_preset(folder, str(folder)) == "sam2.1-hiera-s"
    # The SAM2 of an AuralSAM2 checkpoint records that preset; its variant decides.
    (folder / "conversion.json").write_text(json.dumps({"preset": "auralsam2-tiny", "variant": "test-tiny"}))
    assert weights_preset(folder, str(folder)) == "sam2-tiny"
    (folder / "conversion.json").write_text("{}")
    with pytest.raises(UsageError, match=r"me/my-sam2: SAM2 weights of an unknown variant .* --variant V"):
        weights_preset(folder, "me/my-sam2")


def test_an_unknown_asset_is_one_line(clicked_video, tmp_path, capsys):
    status, _, err = run_cli(
        capsys,
        "predict",
        clicked_video[0],
        "--checkpoint",
        "avseg:nope",
        "--points",
        "5,5",
        "--out",
        tmp_path / "o.mp4",
    )
    assert status == 2
    available = "available: ['logmel-cnn-synthav', 'sam2-tiny-synthav', 'vit-tiny-synthav']"
    assert f"unknown packaged weights avseg:nope; {available}" in one_error_line(err)


def test_a_truncated_weights_file_is_one_line_naming_the_folder(clicked_video, tmp_path, capsys):
    folder = tmp_path / "weights"
    shutil.copytree(asset_path("sam2-tiny-synthav"), folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    status, _, err = run_cli(
        capsys, "predict", clicked_video[0], "--checkpoint", folder, "--points", "5,5", "--out", tmp_path / "o.mp4"
    )
    assert status == 2
    assert f"{folder}: cannot read the SAM2 weights in its model.safetensors" in one_error_line(err)
    assert not (tmp_path / "o.mp4").exists()


@pytest.fixture(scope="module")
def clicked_video(tmp_path_factory) -> tuple[Path, np.ndarray, tuple[int, int]]:
    """A SynthAV scene the packaged SAM2 was not trained on (seed 7) as an mp4, its largest shape's label map and a
    click at that shape's centre on the first frame."""
    frames, labels = render_scene(generate_scene(seed=7, index=3, size=128, num_frames=10))
    ids, counts = np.unique(labels[0][labels[0] > 0], return_counts=True)
    target = labels == ids[counts.argmax()]
    ys, xs = np.nonzero(target[0])
    path = tmp_path_factory.mktemp("video") / "shapes.mp4"
    write_video(path, frames, fps=5.0, audio=np.zeros((1, 32_000), dtype=np.float32), crf=12)
    return path, target, (round(float(xs.mean())), round(float(ys.mean())))


def test_predict_tracks_a_clicked_object_with_the_packaged_sam2(clicked_video, tmp_path, capsys):
    video, target, (x, y) = clicked_video
    out = tmp_path / "out.mp4"
    status, _, err = run_cli(
        capsys, "predict", video, "--checkpoint", ASSET, "--points", f"{x},{y}", "--out", out, "--quiet"
    )
    assert status == 0, err
    assert "Loading weights" not in err  # --quiet hides transformers' loading bar too
    settings = json.loads(out.with_suffix(".json").read_text())
    assert settings["preset"] == "sam2-tiny"
    assert Path(settings["checkpoint"]) == asset_path("sam2-tiny-synthav")
    masks = sorted(Path(settings["masks_dir"]).glob("*.png"))
    assert len(masks) == len(target)
    pred = np.stack([np.array(read_mask(p)) > 0 for p in masks])
    iou = (pred & target).sum((1, 2)) / np.maximum((pred | target).sum((1, 2)), 1)
    assert iou.mean() > 0.6, iou  # 0.94 when written


def test_eval_scores_the_packaged_sam2_on_a_vos_layout(tmp_path, capsys):
    from avseg.data.synthav import synth

    root = tmp_path / "synthav"
    assert synth(root, videos=5, seed=7, size=128, workers=1, layouts=("vos",), quiet=True) == 0
    report = tmp_path / "eval.json"
    status, _, err = run_cli(
        capsys,
        "eval",
        "--checkpoint",
        ASSET,
        "--data",
        root / "vos",
        "--format",
        "vos",
        "--split",
        "val,test_s",
        "--json-out",
        report,
        "--quiet",
    )
    assert status == 0, err
    splits = json.loads(report.read_text())["splits"]
    objects = [item for split in splits.values() for item in split["items"]]
    assert len(objects) >= 3
    assert all(split["metrics"]["J&F"] > 0.8 for split in splits.values()), {
        k: v["metrics"]["J&F"] for k, v in splits.items()
    }


def test_the_app_offers_the_packaged_sam2_as_a_promptable_model():
    from avseg.app import PACKAGED_SAM2, find_models, inspect_model

    assert find_models() == [PACKAGED_SAM2]
    info = inspect_model(PACKAGED_SAM2.source)
    assert info.promptable and not info.reads_text and info.name == "sam2-tiny"
    assert info.folder == asset_path("sam2-tiny-synthav")


def test_a_hub_repository_of_sam2_weights_gives_the_preset_its_name_spells(tmp_path, capsys, monkeypatch):
    """Meta's repositories hold transformers' format without conversion.json: the repository's name decides."""
    import shutil

    import huggingface_hub

    torch.manual_seed(4)
    trained = SAM2VOS(sam2_tiny())
    checkpoint = save_checkpoint(tmp_path / "ck", trained, preset="sam2-tiny", meta={"data": {"format": "vos"}})
    assert run_cli(capsys, "convert", "sam2", checkpoint, tmp_path / "weights", "--quiet")[0] == 0
    repo = tmp_path / "hub" / "facebook" / "sam2.1-hiera-tiny"
    repo.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):  # what the Hub repository holds of what avseg fetches
        shutil.copyfile(tmp_path / "weights" / name, repo / name)
    asked = []

    def snapshot_download(repo_id, *, allow_patterns=None, **kwargs):
        asked.append((repo_id, allow_patterns))
        return str(tmp_path / "hub" / repo_id)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    model = load_model("facebook/sam2.1-hiera-tiny")
    assert [a[0] for a in asked] == ["facebook/sam2.1-hiera-tiny"]
    assert model.preset == "sam2.1-hiera-t" and model.config.sam2.image_size == 1024
    expected = _sam2_state(trained)
    for key, value in _sam2_state(model).items():
        assert torch.equal(value, expected[key]), key
