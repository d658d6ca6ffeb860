"""``avseg predict`` with a promptable model (a randomly initialised sam2-tiny): clicks, a box or a mask on one frame
of a short synthetic video (tests/test_predict.py's bar video, 96x64 at 5 fps, 10 frames) are tracked through the
video, and every bad prompt is one line before any frame is decoded.

A random SAM2 tracks nothing in particular, so the tests check what does not depend on its weights: the prompt each
object reaches SAM2 with (coordinates scaled from the video's pixels to SAM2's input size), the frames before the
prompted one left empty, the mask of the prompted frame (SAM2 outputs a mask prompt as that frame's mask), the
object ids of a multi-object mask, and the files written.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from avseg.checkpoint import save_checkpoint
from avseg.data.avss import avss_palette
from avseg.errors import UsageError
from avseg.media.image import read_mask, write_png
from avseg.models.sam2_vos import SAM2VOS, sam2_tiny
from avseg.predict import Predictor, parse_prompts
from tests.test_predict import HEIGHT, WIDTH, ProbeModel, run_cli, write_test_video
from tests.toy_model import ToyConfig

FRAMES, RATE = 10, 5
SIZE = 128  # sam2-tiny's input size


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return write_test_video(tmp_path_factory.mktemp("video") / "bars.mp4", fps=RATE, num_frames=FRAMES)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = SAM2VOS(sam2_tiny())
    return save_checkpoint(
        tmp_path_factory.mktemp("ck") / "sam2", model, preset="sam2-tiny", meta={"data": {"format": "vos"}}
    )


@pytest.fixture
def tracked(monkeypatch):
    """Record the prompt each tracking run receives, the conditioning prompt it gives SAM2 and the frames it sees.

    ``avseg predict`` tracks a stream (``SAM2VOS.track_iter``, chunks of frames as they are decoded)."""
    calls: list[dict] = []
    track_iter, user_prompt = SAM2VOS.track_iter, SAM2VOS._user_prompt

    def spy_track_iter(self, chunks, **kwargs):
        call = {"kwargs": kwargs, "chunks": []}
        calls.append(call)

        def seen():
            for chunk in chunks:
                call["chunks"].append(tuple(chunk.frames.shape))
                yield chunk

        yield from track_iter(self, seen(), **kwargs)
        b, _, c, h, w = call["chunks"][0]
        call["frames"] = (b, kwargs.get("start", 0) + sum(shape[1] for shape in call["chunks"]), c, h, w)

    def spy_user_prompt(self, batch, **kwargs):
        calls[-1]["prompt"] = user_prompt(self, batch, **kwargs)
        return calls[-1]["prompt"]

    monkeypatch.setattr(SAM2VOS, "track_iter", spy_track_iter)
    monkeypatch.setattr(SAM2VOS, "_user_prompt", spy_user_prompt)
    return calls


def predict_cli(capsys, video, checkpoint, out, *args):
    status, printed, err = run_cli(capsys, "predict", video, "--checkpoint", checkpoint, "--out", out, *args)
    assert status == 0, err
    return printed, json.loads(out.with_suffix(".json").read_text())


def test_points_are_scaled_to_sam2s_input_and_tracked_through_every_frame(video, checkpoint, tmp_path, capsys, tracked):
    out = tmp_path / "points.mp4"
    printed, settings = predict_cli(capsys, video, checkpoint, out, "--points", "48,32; 24,16,0", "--prompt-frame", "3")
    # Every frame of the video (5 fps), as one clip; the prompt reaches SAM2 at its input size (x / 96 * 128).
    assert "10 frames (5 fps, all) in 1 clip(s) of 10" in printed
    (call,) = tracked
    # Frames 3..9 reach SAM2 in chunks of its eval_chunk (8); frames 0..2 come before the prompt.
    assert call["frames"] == (1, FRAMES, 3, SIZE, SIZE) and call["kwargs"]["start"] == 3
    assert call["chunks"] == [(1, FRAMES - 3, 3, SIZE, SIZE)]
    prompt = call["prompt"]
    torch.testing.assert_close(prompt.points, torch.tensor([[[64.0, 64.0], [32.0, 32.0]]]))
    assert prompt.point_labels.tolist() == [[1, 0]] and prompt.masks is None
    pngs = sorted((tmp_path / "points_masks").glob("*.png"))
    assert len(pngs) == FRAMES
    masks = np.stack([read_mask(p) for p in pngs])
    assert masks.shape == (FRAMES, HEIGHT, WIDTH) and set(np.unique(masks)) <= {0, 255}
    assert not masks[:3].any()  # frames before the prompted one
    assert settings["prompt"]["frame"] == 3 and settings["prompt"]["objects"] == [
        {"object_id": 1, "points": [[48.0, 32.0, 1], [24.0, 16.0, 0]]}
    ]
    assert settings["fps"] == RATE and settings["num_frames"] == FRAMES and out.is_file()


@pytest.mark.slow
def test_a_box_is_sam2s_two_corner_points(video, checkpoint, tmp_path, capsys, tracked):
    predict_cli(capsys, video, checkpoint, tmp_path / "box.mp4", "--box", "12,8,60,40", "--fps", "2.5")
    (call,) = tracked
    assert call["frames"][1] == 5 and call["kwargs"]["start"] == 0  # --fps samples every other frame
    torch.testing.assert_close(call["prompt"].points, torch.tensor([[[16.0, 16.0], [80.0, 80.0]]]))
    assert call["prompt"].point_labels.tolist() == [[2, 3]]


@pytest.mark.slow
def test_a_palette_mask_tracks_one_object_per_id(video, checkpoint, tmp_path, capsys, tracked):
    given = np.zeros((HEIGHT, WIDTH), np.uint8)
    given[8:40, 16:48] = 2
    given[44:60, 60:92] = 5
    given[0, :] = 255  # DAVIS's void label: not an object
    write_png(tmp_path / "first.png", given, avss_palette(256))
    out = tmp_path / "mask.mp4"
    printed, settings = predict_cli(
        capsys, video, checkpoint, out, "--mask", tmp_path / "first.png", "--prompt-frame", "1"
    )
    (call,) = tracked
    assert call["frames"][0] == 2 and tuple(call["kwargs"]["masks"].shape) == (2, HEIGHT, WIDTH)
    assert "object ids [2, 5]" in printed
    masks = np.stack([read_mask(p) for p in sorted((tmp_path / "mask_masks").glob("*.png"))])
    assert set(np.unique(masks)) <= {0, 2, 5} and not masks[0].any()
    # SAM2 outputs a mask prompt as its frame's mask (here through 128 -> 32 -> 64x96 and back).
    for oid in (2, 5):
        inter = ((masks[1] == oid) & (given == oid)).sum()
        assert inter / ((masks[1] == oid) | (given == oid)).sum() > 0.85, oid
    assert settings["object_ids"] == [2, 5] and settings["kind"] == "semantic"


def run_error(capsys, *args) -> str:
    status, _, err = run_cli(capsys, "predict", *args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2 and len(lines) == 1 and lines[0].startswith("avseg: error: "), err
    return lines[0]


@pytest.fixture
def no_decoding(monkeypatch):
    import avseg.predict.predictor

    def forbidden(*args, **kwargs):
        raise AssertionError("predict decoded the video before refusing its prompt")

    monkeypatch.setattr(avseg.predict.predictor, "VideoReader", forbidden)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--points", "96,10"], "point (96, 10) is outside"),
        (["--points", "10;20,5"], "cannot read '10'"),
        (["--points", "10,20,2"], "label 2 of '10,20,2' must be 1 or 0"),
        (["--box", "40,10,20,30"], "x0 < x1"),
        (["--box", "0,0,97,20"], "reaches outside"),
        (["--points", "1,1", "--mask", "m.png"], "a mask prompt stands alone"),
        (["--prompt-frame", "2"], "give the prompt too"),
        ([], "tracks the object(s) you give on one frame"),
    ],
)
def test_bad_prompts_are_one_line_before_decoding(video, checkpoint, tmp_path, capsys, no_decoding, args, message):
    line = run_error(capsys, video, "--checkpoint", checkpoint, "--out", tmp_path / "o.mp4", *args)
    assert message in line


def test_a_mask_of_another_size_is_one_line_naming_both_sizes(video, checkpoint, tmp_path, capsys, no_decoding):
    small = np.zeros((32, 48), np.uint8)
    small[4:10, 4:10] = 1
    write_png(tmp_path / "small.png", small)
    line = run_error(
        capsys, video, "--checkpoint", checkpoint, "--out", tmp_path / "o.mp4", "--mask", tmp_path / "small.png"
    )
    assert "small.png" in line and "48x32" in line and f"{WIDTH}x{HEIGHT}" in line


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        # Within a frame of the container's count: found once the video has been read.
        ("10", "--prompt-frame 10: the video has 10 sampled frame(s)"),
        # Further: refused from the container's count, before anything is decoded.
        ("12", "--prompt-frame 12: the video has about 10 sampled frame(s) (0..9)"),
    ],
)
def test_a_prompt_frame_beyond_the_video_is_one_line(frame, message, video, checkpoint, tmp_path, capsys, request):
    if frame == "12":
        request.getfixturevalue("no_decoding")
    args = ["--checkpoint", checkpoint, "--out", tmp_path / "o.mp4", "--box", "1,1,9,9", "--prompt-frame", frame]
    assert message in run_error(capsys, video, *args)


def test_a_prompt_for_a_model_without_prompts_is_refused(video, tmp_path, capsys, monkeypatch, no_decoding):
    predictor = Predictor(ProbeModel(ToyConfig()), device="cpu", image_size=16)
    with pytest.raises(UsageError, match=r"--box 1,1,9,9: model .* takes no prompt"):
        predictor.predict_video(video, prompts=parse_prompts(box="1,1,9,9"))
    assert not predictor.model.seen
    # On the command line, with a checkpoint of a model that finds its objects itself.
    import avseg.models.registry

    monkeypatch.setitem(avseg.models.registry._FAMILIES, ProbeModel.family, ProbeModel)
    ck = save_checkpoint(tmp_path / "toy", ProbeModel(ToyConfig()), meta={"data": {"image_size": 16}})
    line = run_error(capsys, video, "--checkpoint", ck, "--out", tmp_path / "o.mp4", "--points", "5,5")
    assert "--points 5,5: model" in line and "takes no prompt" in line


@pytest.mark.slow  # tracks 18 frames twice with SAM2 (about 30 s on 2 busy cores)
def test_streamed_tracking_equals_tracking_the_whole_clip():
    from avseg.data.types import random_batch

    torch.manual_seed(0)
    model = SAM2VOS(sam2_tiny()).eval()
    torch.manual_seed(1)
    # 20 frames: past SAM2's read window (15 frames before), so the bank forgets while tracking.
    batch = random_batch(1, 20, SIZE)
    points, labels = torch.tensor([[[40.0, 50.0], [90.0, 20.0]]]), torch.tensor([[1, 0]])
    whole = model.track(batch, start=2, points=points, point_labels=labels)
    chunk = model.config.eval_chunk  # 8: frames 2..9, 10..17, 18..19
    chunks = (batch.select_frames(torch.arange(s, min(s + chunk, 20))) for s in range(2, 20, chunk))
    streamed = list(model.track_iter(chunks, start=2, points=points, point_labels=labels))
    assert [frame for frame, _, _ in streamed] == list(range(2, 20))
    torch.testing.assert_close(torch.stack([m for _, m, _ in streamed], dim=1), whole.mask_logits[:, 2:])
    torch.testing.assert_close(torch.stack([o for _, _, o in streamed], dim=1), whole.object_logits[:, 2:])
