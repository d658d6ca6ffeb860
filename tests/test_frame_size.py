"""One frame size per checkpoint: train, eval and predict read frames at the size the training run read them at."""

import json

import numpy as np

import avseg.data.readers
from avseg.checkpoint import read_training_data
from avseg.cli import main
from avseg.media.video import write_video
from tests.data.fixtures_refavs import write_refavs_tree
from tests.toy_model import ensure_registered


def test_train_eval_and_predict_read_frames_at_one_size(tmp_path, monkeypatch, capsys):
    root = write_refavs_tree(tmp_path / "refavs").root
    sizes: dict[str, object] = {}
    real_get_reader = avseg.data.readers.get_reader

    def recording_get_reader(format, root, **options):
        reader = real_get_reader(format, root, **options)
        sizes.setdefault(command, reader.image_size)
        return reader

    monkeypatch.setattr(avseg.data.readers, "get_reader", recording_get_reader)
    run = tmp_path / "run"
    command = "train"
    train = ["train", "--data", root, "--model", ensure_registered(), "--out", run, "--device", "cpu"]
    assert main([*map(str, train), "--max-steps", "2", "--image-size", "48", "--val-split", "none"]) == 0
    recorded = read_training_data(run)
    assert (recorded.format, recorded.image_size) == ("refavs", 48)

    command = "eval"
    evaluate = [
        "eval",
        "--checkpoint",
        run,
        "--data",
        root,
        "--format",
        "refavs",
        "--split",
        "test_s",
        "--device",
        "cpu",
    ]
    assert main([*map(str, evaluate), "--pointer", "latest"]) == 0

    video = tmp_path / "clip.mp4"
    frames = np.random.default_rng(0).integers(0, 255, size=(25, 64, 80, 3), dtype=np.uint8)
    write_video(video, frames, fps=10.0, audio=np.zeros((1, 40_000), dtype=np.float32))
    out = tmp_path / "overlay.mp4"
    argv = ["predict", video, "--checkpoint", run, "--pointer", "latest", "--out", out, "--device", "cpu", "--quiet"]
    assert main(list(map(str, argv))) == 0
    capsys.readouterr()
    sizes["predict"] = tuple(json.loads(out.with_suffix(".json").read_text())["image_size"])

    assert sizes == {"train": (48, 48), "eval": (48, 48), "predict": (48, 48)}
    # an explicit size still wins
    command = "eval-64"
    assert main([*map(str, evaluate), "--pointer", "latest", "--image-size", "64"]) == 0
    assert sizes["eval-64"] == (64, 64)


def test_the_recorded_size_is_read_without_the_training_transform(tmp_path):
    """The checkpoint's data record decodes the first clip without the training transform: a transform draws random
    numbers, which would shift the run's random stream."""
    from types import SimpleNamespace

    import torch

    from avseg.data.readers import get_reader
    from avseg.train.trainer import Trainer

    def transform(sample):
        raise AssertionError("the training transform ran")

    reader = get_reader("refavs", write_refavs_tree(tmp_path / "refavs").root, image_size=(40, 56))
    dataset = reader.dataset("train", transform=transform)
    fake = SimpleNamespace(_data_meta=None, run_config={"data": {"format": "refavs"}}, train_dataset=dataset)
    state = torch.random.get_rng_state()
    record = Trainer._data_record(fake)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert record["format"] == "refavs" and record["image_size"] == [40, 56] and record["num_frames"] == 10
