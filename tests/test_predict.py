"""``avseg predict`` on small synthetic videos written with PyAV.

The video (96x64, 25 fps, 5.52 s) shows a white bar whose position encodes the second: during second ``s`` the bar
covers columns ``16 * s .. 16 * s + 15``. Its audio is a 440 Hz tone during even seconds and silence during odd ones.
Test models turn those into masks (bright pixels are foreground; or everything is foreground when the frame's audio
example holds the tone), so every mask says which frame and which audio the model was given.
"""

import json
import os
import shutil
import warnings
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from avseg.checkpoint import CheckpointPointerWarning, save_checkpoint, write_pointer
from avseg.data.types import AVSBatch
from avseg.errors import AudioPaddedWarning, AVSegError, MetadataError, UsageError
from avseg.media.audio import read_audio
from avseg.media.image import read_mask, read_rgb, write_png
from avseg.media.video import probe_video, read_video
from avseg.models import get_entry
from avseg.models.base import AVSOutput, requires_text
from avseg.predict import (
    DEFAULT_CLIP_LEN,
    FpsCappedWarning,
    Predictor,
    TextRequiredError,
    TrainingData,
    predict,
    read_training_data,
)
from tests.toy_model import ToyConfig, ToyModel

WIDTH, HEIGHT, FPS, NUM_SOURCE = 96, 64, 25, 138  # 5.52 s: six 1-s windows, the last one half covered
RATE = 16000


def bar_image(index: int, fps: int = FPS) -> np.ndarray:
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    second = index // fps
    image[:, 16 * second : 16 * second + 16] = 255
    return image


def write_test_video(path: Path, *, with_audio: bool = True, fps: int = FPS, num_frames: int = NUM_SOURCE) -> Path:
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        audio = container.add_stream("aac", rate=RATE, layout="mono") if with_audio else None
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(bar_image(i, fps), format="rgb24")
            frame.pts = i
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if audio is not None:
            t = np.arange(round(num_frames / fps * RATE)) / RATE
            wave = np.where(np.floor(t) % 2 == 0, 0.5 * np.sin(2 * np.pi * 440 * t), 0.0).astype(np.float32)[None]
            for start in range(0, wave.shape[1], 1024):
                piece = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(wave[:, start : start + 1024]), format="fltp", layout="mono"
                )
                piece.sample_rate, piece.pts, piece.time_base = RATE, start, Fraction(1, RATE)
                container.mux(audio.encode(piece))
            container.mux(audio.encode(None))
    return path


class ProbeModel(ToyModel):
    """Foreground = bright pixels (``mode="bar"``) or every pixel when the frame's example holds the tone
    (``mode="audio"``); padded frames are all foreground, so a padded output that leaked would show. Records what
    each batch carried."""

    def __init__(self, config: ToyConfig, mode: str = "bar") -> None:
        super().__init__(config)
        self.mode = mode
        self.seen: list[AVSBatch] = []

    def forward(self, batch: AVSBatch) -> AVSOutput:
        self.seen.append(batch)
        b, t, _, h, w = batch.frames.shape
        if self.mode == "bar":
            score = batch.frames.float().mean(2) / 255.0 - 0.5  # (B, T, h, w)
        else:
            loud = batch.audio_examples.amax(-1).mean((-1, -2)) > 0.0  # (B, T): tone frames peak near log(50)
            score = torch.where(loud, 1.0, -1.0)[..., None, None].expand(b, t, h, w)
        score = torch.where(batch.frame_valid[..., None, None], score, torch.ones_like(score))
        logits = 20.0 * score[:, :, None]  # (B, T, 1, h, w)
        if self.config.num_classes > 1:  # semantic: class 2 on the bar, class 0 elsewhere
            logits = torch.cat([-logits, torch.zeros_like(logits), logits], dim=2)
        return AVSOutput(mask_logits=logits)


class TextModel(ProbeModel):
    @property
    def text_input(self) -> str:
        return "required"


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return write_test_video(tmp_path_factory.mktemp("video") / "bars.mp4")


@pytest.fixture(scope="module")
def silent_video(tmp_path_factory) -> Path:
    return write_test_video(tmp_path_factory.mktemp("video") / "silent.mp4", with_audio=False)


@pytest.fixture(scope="module")
def short_video(tmp_path_factory) -> Path:
    """2 s at 10 fps (20 frames) with sound: every frame of it is two clips of tpavi-tiny."""
    return write_test_video(tmp_path_factory.mktemp("video") / "short.mp4", fps=10, num_frames=20)


def expected_bar(second: int) -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), bool)
    mask[:, 16 * second : 16 * second + 16] = True
    return mask


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def test_clips_are_stitched_in_order_and_padding_dropped(video):
    model = ProbeModel(ToyConfig())
    prediction = Predictor(model, device="cpu", image_size=32, clip_len=4).predict_video(video)
    # "last" frame of each 1-s window; the sixth window is half covered and ends at the last frame (137).
    assert prediction.source_indices.tolist() == [24, 49, 74, 99, 124, 137]
    assert np.allclose(prediction.timestamps, np.array([24, 49, 74, 99, 124, 137]) / FPS)
    assert prediction.masks.shape == (6, HEIGHT, WIDTH) and prediction.num_clips == 2
    for k in range(6):  # each frame's own bar, at the video's resolution, after 32x32 and back
        assert iou(prediction.masks[k].numpy() > 0, expected_bar(k)) > 0.8, k
    assert [b.frames.shape[1] for b in model.seen] == [4, 4]
    assert model.seen[1].frame_valid.tolist() == [[True, True, False, False]]
    assert tuple(model.seen[0].frames.shape[-2:]) == (32, 32)
    assert np.allclose(prediction.foreground, [expected_bar(k).mean() for k in range(6)], atol=0.05)


def test_each_frame_hears_its_own_window(video):
    model = ProbeModel(ToyConfig(), mode="audio")
    prediction = Predictor(model, device="cpu", image_size=16, clip_len=4).predict_video(video)
    full = [bool(prediction.masks[k].all()) for k in range(6)]
    empty = [not prediction.masks[k].any() for k in range(6)]
    assert full == [True, False, True, False, True, False] and empty == [not f for f in full]
    assert prediction.has_audio and prediction.audio.shape == (6 * RATE,)


def test_an_in_memory_prediction_streams_a_smooth_overlay_at_the_source_rate(video, tmp_path):
    prediction = Predictor(ProbeModel(ToyConfig()), device="cpu", image_size=32, clip_len=4).predict_video(video)
    info = prediction.write_overlay(tmp_path / "smooth.mp4", overlay_fps=FPS, alpha=1.0)
    assert info["frames"] == NUM_SOURCE and info["fps"] == FPS and info["audio"]
    clip = read_video(tmp_path / "smooth.mp4", fps=None)
    assert clip.frames.shape[0] == NUM_SOURCE
    # Each source frame shows the mask of its own 1-s window: frame 60 (second 2) is painted on second 2's bar only.
    painted = clip.frames[60].float().std(0) > 30  # the mask colour, not grey or white
    assert iou(painted.numpy(), expected_bar(2)) > 0.7


def test_text_model_needs_text(video):
    predictor = Predictor(TextModel(ToyConfig()), device="cpu", image_size=16, clip_len=10)
    with pytest.raises(TextRequiredError, match="--text"):
        predictor.predict_video(video)
    predictor.predict_video(video, "the white bar")
    assert predictor.model.seen[-1].text == ["the white bar"]
    assert requires_text(ProbeModel(ToyConfig())) is None


def test_video_without_audio_warns_and_overlay_is_silent(silent_video, tmp_path):
    predictor = Predictor(ProbeModel(ToyConfig()), device="cpu", image_size=16, clip_len=10)
    with pytest.warns(AudioPaddedWarning, match="no audio"):
        prediction = predictor.predict_video(silent_video)
    assert not prediction.has_audio and not prediction.audio.any()
    info = prediction.write_overlay(tmp_path / "o.mp4")
    assert not info["audio"] and not probe_video(tmp_path / "o.mp4").has_audio


def test_semantic_masks_are_palette_pngs(video, tmp_path):
    model = ProbeModel(ToyConfig(num_classes=3))
    prediction = Predictor(model, device="cpu", image_size=32, clip_len=10).predict_video(video)
    assert prediction.kind == "semantic" and prediction.num_classes == 3
    files = prediction.write_masks(tmp_path / "m")
    ids = read_mask(files[2])
    assert set(np.unique(ids)) == {0, 2} and iou(ids == 2, expected_bar(2)) > 0.8
    assert read_rgb(files[2])[32, 40].tolist() == [0, 128, 0]  # AVSS palette colour of class 2


@pytest.fixture(scope="module")
def tpavi_run(tmp_path_factory) -> Path:
    """A training-run folder holding one tpavi-tiny checkpoint and only a latest.json pointer."""
    from avseg.models import create_model

    run = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    folder = save_checkpoint(run / "step-1", create_model("tpavi-tiny"), preset="tpavi-tiny")
    write_pointer(run, "latest", folder)
    return run


def test_predict_command(video, tpavi_run, tmp_path, capsys):
    out = tmp_path / "result.mp4"
    # A run trained without validation has no best.json: predict falls back to latest.json and says so.
    with pytest.warns(CheckpointPointerWarning, match="has no best.json; using latest.json"):
        assert predict(video, checkpoint=tpavi_run, out=out, device="cpu") == 0
    printed = capsys.readouterr().out
    assert "6 frames" in printed and "1 clip(s) of 10" in printed
    pngs = sorted((tmp_path / "result_masks").glob("*.png"))
    assert [p.name for p in pngs] == [f"{k:05d}.png" for k in range(6)]
    assert read_mask(pngs[0]).shape == (HEIGHT, WIDTH) and set(np.unique(read_mask(pngs[0]))) <= {0, 255}
    info = probe_video(out)
    wave, _ = read_audio(out)
    assert info.num_frames == 6 and info.width == WIDTH and info.height == HEIGHT
    assert abs(len(wave) / RATE - 6.0) < 0.1  # 6 windows at 1 fps: 6 s of picture and of sound
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["preset"] == "tpavi-tiny" and sidecar["clip_len"] == 10 and sidecar["fps"] == 1.0
    assert sidecar["frame_pick"] == "last" and sidecar["threshold"] == 0.5 and sidecar["text"] is None
    assert np.allclose(sidecar["timestamps"], np.array([24, 49, 74, 99, 124, 137]) / FPS)
    # The checkpoint records no reading size and tpavi-tiny's recipe reads as stored: frames go in at the network's
    # own input size.
    side = get_entry("tpavi-tiny").config().input_size
    assert sidecar["image_size"] == [side, side] and sidecar["checkpoint"].endswith("step-1")

    smooth = tmp_path / "smooth.mp4"
    text = "the white bar"
    assert (
        predict(
            video,
            checkpoint=tpavi_run,
            pointer="latest",
            out=smooth,
            text=text,
            masks_dir=tmp_path / "m2",
            overlay_fps=25.0,
            clip_len=4,
        )
        == 0
    )
    info = probe_video(smooth)
    wave, _ = read_audio(smooth)
    assert info.num_frames == NUM_SOURCE and abs(len(wave) / RATE - NUM_SOURCE / FPS) < 0.1
    printed = capsys.readouterr().out
    assert "2 clip(s) of 4" in printed and "does not read text" not in printed  # tpavi-tiny's text is optional
    sidecar = json.loads(smooth.with_suffix(".json").read_text())
    assert sidecar["text"] == text and sidecar["overlay"]["frames"] == NUM_SOURCE and sidecar["clip_len"] == 4


def with_meta(checkpoint: Path, dest: Path, meta: dict) -> Path:
    """A copy of ``checkpoint`` whose config.json records ``meta`` (as a trainer writes it)."""
    shutil.copytree(checkpoint, dest)
    config = json.loads((dest / "config.json").read_text())
    (dest / "config.json").write_text(json.dumps({**config, "meta": meta}))
    return dest


def test_predict_refuses_text_models_without_text_and_bad_outputs(video, tpavi_run, tmp_path):
    from avseg.models import load_model

    model = load_model(tpavi_run)
    assert requires_text(model, "refavs") and requires_text(model, "avs-object") is None
    assert requires_text(model) is None  # tpavi-tiny also serves S4/MS3: text is optional
    # The same weights, recorded as trained on Ref-AVS: this checkpoint needs an expression.
    refavs = with_meta(tpavi_run / "step-1", tmp_path / "refavs", {"data": {"format": "refavs", "num_frames": 10}})
    assert read_training_data(refavs).format == "refavs"
    with pytest.raises(TextRequiredError, match=r"trained on refavs data\): pass one with --text"):
        predict(video, checkpoint=refavs, out=tmp_path / "o.mp4", device="cpu")
    legacy = with_meta(tpavi_run / "step-1", tmp_path / "legacy", {"data_format": "refavs"})  # earlier trainers
    assert Predictor.from_checkpoint(legacy, device="cpu").requires_text
    with pytest.raises(ValueError, match="must end in one of"):
        predict(video, checkpoint=tpavi_run, out=tmp_path / "o.json")


def test_sampling_settings_come_from_the_checkpoint_not_the_run_folder(tpavi_run, tmp_path):
    step = tpavi_run / "step-1"
    recorded = {"data": {"format": "avs-object", "image_size": 64, "num_frames": 4, "fps": 2}}
    predictor = Predictor.from_checkpoint(with_meta(step, tmp_path / "ck", recorded), device="cpu")
    assert predictor.image_size == (64, 64) and predictor.clip_len == 4 and predictor.fps == 2.0
    assert predictor.training == TrainingData("avs-object", 64, 4, 2.0) and not predictor.requires_text
    explicit = Predictor.from_checkpoint(tmp_path / "ck", device="cpu", image_size=32, clip_len=3, fps=0.5)
    assert explicit.image_size == (32, 32) and explicit.clip_len == 3 and explicit.fps == 0.5

    # Nothing recorded: the preset's reading size (tpavi-tiny's recipe reads as stored, so the network's input size),
    # 10 frames per clip and 1 fps. The trainer's run_config.yaml beside it is not read.
    run = tmp_path / "run"
    bare = with_meta(step, run / "checkpoints" / "step-1", {})
    (run / "run_config.yaml").write_text("data: {format: refavs, image_size: 64}\n")
    assert read_training_data(bare) == TrainingData()
    predictor = Predictor.from_checkpoint(bare, device="cpu")
    side = get_entry("tpavi-tiny").config().input_size
    assert predictor.image_size == (side, side) and predictor.clip_len == DEFAULT_CLIP_LEN == 10
    assert predictor.fps == 1.0 and not predictor.requires_text

    broken = with_meta(step, tmp_path / "broken", {"data": {"image_size": "large"}})
    with pytest.raises(MetadataError, match=r"config.json: meta.data.image_size must be a positive int"):
        read_training_data(broken)


def test_memory_guard_refuses_before_decoding(video, monkeypatch):
    import avseg.predict.memory

    monkeypatch.setattr(avseg.predict.memory, "available_memory", lambda: 10_000)  # 10 kB: 6 frames of 96x64 do not fit
    predictor = Predictor(ProbeModel(ToyConfig()), device="cpu", image_size=16)
    with pytest.raises(AVSegError, match=r"6 sampled frames .* lower --fps"):
        predictor.predict_video(video)
    assert not predictor.model.seen


def test_command_line_signature_parses():
    from avseg.cli import Command, build_parser

    command = Command(("predict",), "avseg.predict:predict", "Run a trained model on a video.")
    args = build_parser([command], load="predict").parse_args(
        [
            "predict",
            "v.mp4",
            "--checkpoint",
            "ck",
            "--out",
            "o.mp4",
            "--text",
            "a dog",
            "--overlay-fps",
            "25",
            "--frame-pick",
            "center",
        ]
    )
    assert args.video == Path("v.mp4") and args.text == "a dog" and args.overlay_fps == 25.0
    assert args.frame_pick == "center" and args.pointer == "best" and args.clip_len is None


# --------------------------------------------------------------------------------------------------------------------
# The command line: outputs, device, rate and progress are checked or shown before and while the work runs


@pytest.fixture
def no_work(monkeypatch):
    """Make loading a model or decoding a frame fail loudly: a refusal must come before either."""
    import avseg.models
    import avseg.predict.predictor

    def forbidden(*args, **kwargs):
        raise AssertionError("predict loaded a model or decoded a video before refusing its arguments")

    monkeypatch.setattr(avseg.models, "load_model", forbidden)
    monkeypatch.setattr(avseg.predict.predictor, "VideoReader", forbidden)
    monkeypatch.setattr(avseg.predict.predictor, "probe_video", forbidden)
    monkeypatch.delenv("AVSEG_DEBUG", raising=False)


def run_cli(capsys, *args: str | Path) -> tuple[int, str, str]:
    from avseg.cli import main

    status = main([str(a) for a in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("avseg: error: "), err
    return lines[0]


@pytest.mark.parametrize("spelling", ["same", "symlink", "dotdot", "hardlink"])
def test_out_that_is_the_input_video_is_refused_up_front(video, tpavi_run, tmp_path, capsys, no_work, spelling):
    source = tmp_path / "in" / "clip.mp4"
    source.parent.mkdir()
    source.write_bytes(video.read_bytes())
    before = source.read_bytes()
    out = {
        "same": source,
        "symlink": tmp_path / "link.mp4",
        "dotdot": tmp_path / "in" / ".." / "in" / "clip.mp4",
        "hardlink": tmp_path / "hard.mp4",
    }[spelling]
    if spelling == "symlink":
        out.symlink_to(source)
    elif spelling == "hardlink":
        os.link(source, out)
    checkpoint = tpavi_run / "step-1"  # a checkpoint folder: no pointer to follow, no fallback warning
    status, _, err = run_cli(capsys, "predict", source, "--checkpoint", checkpoint, "--out", out, "--device", "cpu")
    line = one_error_line(err)
    assert status == 2 and "--out" in line and "input" in line
    assert source.read_bytes() == before
    assert not (tmp_path / "in" / "clip_masks").exists() and not source.with_suffix(".json").exists()


def test_masks_dir_that_is_the_input_frame_folder_is_refused(tpavi_run, tmp_path, capsys, no_work):
    frames = tmp_path / "frames"
    frames.mkdir()
    for k in range(3):  # named like the mask PNGs predict writes: they would be overwritten
        write_png(frames / f"{k:05d}.png", bar_image(25 * k))
    before = {p.name: p.read_bytes() for p in frames.iterdir()}
    status, _, err = run_cli(
        capsys,
        "predict",
        frames,
        "--checkpoint",
        tpavi_run / "step-1",
        "--out",
        tmp_path / "o.mp4",
        "--masks-dir",
        tmp_path / "frames" / ".." / "frames",
    )
    line = one_error_line(err)
    assert status == 2 and "--masks-dir" in line and "input" in line
    assert {p.name: p.read_bytes() for p in frames.iterdir()} == before


def test_settings_file_that_would_replace_a_checkpoint_pointer_is_refused(video, tpavi_run, capsys, no_work):
    pointer = tpavi_run / "latest.json"  # --out RUN/latest.mp4 writes its settings to RUN/latest.json
    before = pointer.read_bytes()
    status, _, err = run_cli(
        capsys, "predict", video, "--checkpoint", tpavi_run, "--pointer", "latest", "--out", tpavi_run / "latest.mp4"
    )
    line = one_error_line(err)
    assert status == 2 and "--out" in line and "latest.json" in line
    assert pointer.read_bytes() == before and not (tpavi_run / "latest.mp4").exists()


def test_out_that_is_a_folder_or_under_a_file_is_refused_up_front(video, tpavi_run, tmp_path, capsys, no_work):
    checkpoint = tpavi_run / "step-1"
    folder = tmp_path / "result.mp4"
    folder.mkdir()
    status, _, err = run_cli(capsys, "predict", video, "--checkpoint", checkpoint, "--out", folder)
    assert status == 2 and "--out" in one_error_line(err) and "folder" in err
    assert not list(folder.iterdir())
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file, not a folder")
    status, _, err = run_cli(capsys, "predict", video, "--checkpoint", checkpoint, "--out", blocker / "o.mp4")
    assert status == 2 and "--out" in one_error_line(err) and "notes.txt" in err
    status, _, err = run_cli(
        capsys, "predict", video, "--checkpoint", checkpoint, "--out", tmp_path / "o.mp4", "--masks-dir", blocker
    )
    assert status == 2 and "--masks-dir" in one_error_line(err) and "is a file" in err


@pytest.mark.parametrize("device", ["banana", "cuda"])
def test_unavailable_device_is_one_line_before_loading(
    video, tpavi_run, tmp_path, capsys, no_work, monkeypatch, device
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU-only torch, also on a GPU machine
    status, _, err = run_cli(
        capsys, "predict", video, "--checkpoint", tpavi_run, "--out", tmp_path / "o.mp4", "--device", device
    )
    line = one_error_line(err)
    assert status == 2 and "--device" in line and repr(device) in line
    with pytest.raises(UsageError, match="device 'banana'"):
        Predictor(ProbeModel(ToyConfig()), device="banana", image_size=16)


def test_fps_above_the_source_rate_takes_every_frame_once(short_video):
    predictor = Predictor(ProbeModel(ToyConfig()), device="cpu", image_size=16, clip_len=20)
    with pytest.warns(FpsCappedWarning, match=r"requested 1000 fps .* frame rate of 10 fps"):
        prediction = predictor.predict_video(short_video, fps=1000)
    assert prediction.source_indices.tolist() == list(range(20))  # each source frame once, none repeated
    assert prediction.fps == 10 and prediction.num_frames == 20 and prediction.frame_pick == "all"
    assert prediction.settings()["requested_fps"] == 1000
    assert prediction.audio.shape == (2 * RATE,)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FpsCappedWarning)  # the source rate itself is not capped
        same = predictor.predict_video(short_video, fps=10)
    assert same.source_indices.tolist() == list(range(20))


def test_command_caps_fps_with_one_warning_line(short_video, tpavi_run, tmp_path, capsys):
    out = tmp_path / "o.mp4"
    status, stdout, err = run_cli(
        capsys,
        "predict",
        short_video,
        "--checkpoint",
        tpavi_run,
        "--pointer",
        "latest",  # the run has no best.json: no fallback warning besides the one tested
        "--out",
        out,
        "--fps",
        "50",
        "--device",
        "cpu",
    )
    assert status == 0
    warning_lines = [line for line in err.splitlines() if "warning" in line.lower()]
    assert len(warning_lines) == 1 and warning_lines[0].startswith("avseg: warning: ")
    assert "requested 50 fps" in warning_lines[0] and "frame rate of 10 fps" in warning_lines[0]
    assert len(list((tmp_path / "o_masks").glob("*.png"))) == 20  # not 100: no frame written five times
    assert "20 frames (10 fps, all)" in stdout
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["fps"] == 10 and sidecar["requested_fps"] == 50 and sidecar["source_indices"] == list(range(20))


def test_progress_is_shown_in_logs_with_totals(short_video, tpavi_run, tmp_path, capsys, monkeypatch):
    import avseg.progress

    monkeypatch.setattr(avseg.progress, "LOG_INTERVAL_S", 0.0)  # a line at every step: each phase must report
    out = tmp_path / "o.mp4"
    assert predict(short_video, checkpoint=tpavi_run, pointer="latest", out=out, device="cpu", fps=5) == 0
    # Captured, stderr is not a terminal: whole lines (split on newlines only, so a bar's "\r" would show).
    err = capsys.readouterr().err
    lines = err.split("\n")
    # One streaming phase: frames are decoded, segmented and written (PNG and overlay) as they come.
    assert any(line.startswith("segmenting short.mp4: 10/10 frames (100%)") for line in lines), err
    running = [line for line in lines if line.startswith("segmenting short.mp4: 5/10 frames (50%)")]
    assert running and "frames/s, ETA" in running[0], err  # shown while it runs, with its rate and ETA
    assert predict(short_video, checkpoint=tpavi_run, pointer="latest", out=out, device="cpu", fps=5, quiet=True) == 0
    quiet_err = capsys.readouterr().err
    assert not any(phase in quiet_err for phase in ("decoding", "segmenting", "writing"))
    # The overlay at another rate is a second phase, decoding the video again.
    assert (
        predict(short_video, checkpoint=tpavi_run, pointer="latest", out=out, device="cpu", fps=5, overlay_fps=10) == 0
    )
    assert any(line.startswith("writing o.mp4: 20/20 frames (100%)") for line in capsys.readouterr().err.split("\n"))


def test_progress_lines_do_not_flood_a_log(capsys):
    from avseg.progress import Progress

    now = [0.0]
    bar = Progress("decoding long.mp4", 100_000, "frame", clock=lambda: now[0])
    for i in range(1, 100_001):  # 100,000 frames in 100 simulated seconds
        now[0] = i / 1000
        bar.update()
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 7  # at 15, 30, ... 90 s, and the final count
    assert lines[0] == "decoding long.mp4: 15000/100000 frames (15%), 15 s, 1000 frames/s, ETA 85 s"
    assert lines[-1] == "decoding long.mp4: 100000/100000 frames (100%), 100 s, 1000 frames/s"
    short = Progress("segmenting", 3, "clip", clock=lambda: now[0])
    short.update(3)
    short.close()
    assert capsys.readouterr().err == ""  # a phase shorter than the interval says nothing


@pytest.mark.slow  # builds two MLLM segmenters and runs them on a video (a few seconds each on 2 cores)
@pytest.mark.parametrize("name", ["simtoken-tiny", "sa2va-tiny"])
def test_mllm_segmenters_run_on_a_user_video_with_its_soundtrack_and_an_expression(video, name):
    from avseg.models import create_model

    torch.manual_seed(0)
    predictor = Predictor(create_model(name), device="cpu", image_size=64, clip_len=6)
    with pytest.raises(TextRequiredError, match="--text"):
        predictor.predict_video(video)
    prediction = predictor.predict_video(video, "the white bar")
    assert prediction.masks.shape[0] == 6 and prediction.has_audio


def test_progress_reports_to_a_listener_even_when_quiet():
    from avseg.progress import Progress, report_to

    seen = []
    with report_to(lambda *event: seen.append(event)), Progress("segmenting", 2, "clip", enabled=False) as bar:
        bar.update()
        bar.update()
    with Progress("writing", 1, "frame", enabled=False) as bar:  # outside the block: nobody listens
        bar.update()
    assert seen == [("segmenting", 0, 2), ("segmenting", 1, 2), ("segmenting", 2, 2)]


# --------------------------------------------------------------------------------------------------------------------
# Streaming: the command writes as it goes, in bounded memory, and resumes after an interruption


@pytest.fixture(scope="module")
def long_video(tmp_path_factory) -> Path:
    """12 s at 5 fps with sound: 60 frames when every frame is sampled."""
    return write_test_video(tmp_path_factory.mktemp("video") / "long.mp4", fps=5, num_frames=60)


@pytest.fixture
def probe_checkpoint(tmp_path, monkeypatch) -> Path:
    """A checkpoint of :class:`ProbeModel` (input 16x16), loadable by ``avseg predict``."""
    import avseg.models.registry

    monkeypatch.setitem(avseg.models.registry._FAMILIES, ProbeModel.family, ProbeModel)
    return save_checkpoint(tmp_path / "probe", ProbeModel(ToyConfig()), meta={"data": {"image_size": 16}})


def test_streamed_outputs_equal_the_in_memory_prediction(video, probe_checkpoint, tmp_path):
    out = tmp_path / "o.mp4"
    assert predict(video, checkpoint=probe_checkpoint, out=out, clip_len=4, device="cpu", quiet=True) == 0
    predictor = Predictor.from_checkpoint(probe_checkpoint, device="cpu", clip_len=4)
    prediction = predictor.predict_video(video)
    pngs = sorted((tmp_path / "o_masks").glob("*.png"))
    assert len(pngs) == prediction.num_frames == 6
    for k, png in enumerate(pngs):
        np.testing.assert_array_equal(read_mask(png) > 0, prediction.masks[k].numpy() > 0)
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["foreground"] == prediction.settings()["foreground"]
    assert sidecar["timestamps"] == prediction.settings()["timestamps"]
    # The in-memory overlay and the streamed one: same frames (up to the codec) and the same soundtrack.
    prediction.write_overlay(tmp_path / "memory.mp4")
    streamed = av.open(str(out))
    memory = av.open(str(tmp_path / "memory.mp4"))
    a = np.stack([f.to_ndarray(format="rgb24") for f in streamed.decode(video=0)])
    b = np.stack([f.to_ndarray(format="rgb24") for f in memory.decode(video=0)])
    streamed.close(), memory.close()
    assert a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).mean() < 1.0
    np.testing.assert_allclose(read_audio(out)[0], read_audio(tmp_path / "memory.mp4")[0], atol=1e-4)


def test_overlay_at_the_source_rate_keeps_the_inputs_duration_and_sound(long_video, probe_checkpoint, tmp_path):
    out = tmp_path / "o.mkv"
    assert predict(long_video, checkpoint=probe_checkpoint, out=out, fps=5, device="cpu", quiet=True) == 0
    source, overlay = probe_video(long_video), probe_video(out)
    assert overlay.num_frames == 60 and abs(overlay.duration_s - source.duration_s) <= 1 / 5 + 1e-6
    wave, _ = read_audio(out)
    original, _ = read_audio(long_video)
    assert overlay.has_audio and abs(len(wave) - len(original)) / RATE < 0.1  # 12 s of sound, as the input
    # The tone of even seconds survives: the soundtrack is the input's, not silence.
    loud = [float(np.abs(wave[s * RATE : (s + 1) * RATE]).mean()) for s in range(12)]
    assert all(loud[s] > 0.1 for s in range(0, 12, 2)) and all(loud[s] < 0.02 for s in range(1, 12, 2))


def test_the_command_holds_a_bounded_number_of_frames(long_video, probe_checkpoint, tmp_path, monkeypatch):
    import weakref

    import avseg.predict.predictor
    from avseg.media.video import VideoReader

    alive: list[weakref.ref] = []
    peak = [0]

    class CountingReader(VideoReader):
        def __iter__(self):
            for frame in super().__iter__():
                alive.append(weakref.ref(frame.image))
                peak[0] = max(peak[0], sum(ref() is not None for ref in alive))
                yield frame

    monkeypatch.setattr(avseg.predict.predictor, "VideoReader", CountingReader)
    assert predict(long_video, checkpoint=probe_checkpoint, out=tmp_path / "o.mp4", fps=5, clip_len=4, quiet=True) == 0
    assert len(alive) == 60
    # Never the whole video: the clip being run (4 frames), the look-ahead the window audio rule needs (half a second
    # and an example's rounding: at most 4 frames at 5 fps) and the last frames of the previous clip, still referenced
    # while their PNGs and overlay frames are written.
    assert peak[0] <= 4 + 4 + 4, peak[0]


class FailingAfter(ProbeModel):
    """Raises on its forward pass number ``fail_at`` (an interruption), counting every pass."""

    calls = 0
    fail_at: int | None = None

    def forward(self, batch: AVSBatch) -> AVSOutput:
        type(self).calls += 1
        if type(self).calls == type(self).fail_at:
            raise KeyboardInterrupt
        return super().forward(batch)


def test_an_interrupted_run_resumes_without_redoing_finished_clips(long_video, tmp_path, monkeypatch, capsys):
    import avseg.models.registry

    monkeypatch.setitem(avseg.models.registry._FAMILIES, FailingAfter.family, FailingAfter)
    ck = save_checkpoint(tmp_path / "ck", FailingAfter(ToyConfig()), meta={"data": {"image_size": 16}})
    args = {"checkpoint": ck, "fps": 5, "clip_len": 4, "device": "cpu", "quiet": True}
    reference = tmp_path / "ref.mp4"
    assert predict(long_video, out=reference, **args) == 0
    assert FailingAfter.calls == 15  # 60 frames in clips of 4

    out = tmp_path / "o.mp4"
    FailingAfter.calls, FailingAfter.fail_at = 0, 6
    with pytest.raises(KeyboardInterrupt):
        predict(long_video, out=out, **args)
    written = sorted((tmp_path / "o_masks").glob("*.png"))
    assert len(written) == 20 and not out.exists()  # five clips finished; no half-written overlay
    FailingAfter.calls, FailingAfter.fail_at = 0, None
    assert predict(long_video, out=out, **args) == 0
    assert FailingAfter.calls == 10  # the five finished clips were not run again
    assert "resumed:  20 finished mask(s) kept, 40 new" in capsys.readouterr().out
    for mine, ref in zip(
        sorted((tmp_path / "o_masks").glob("*.png")), sorted((tmp_path / "ref_masks").glob("*.png")), strict=True
    ):
        np.testing.assert_array_equal(read_mask(mine), read_mask(ref))
    assert probe_video(out).num_frames == probe_video(reference).num_frames == 60
    a, b = (json.loads(p.with_suffix(".json").read_text()) for p in (out, reference))
    assert a["foreground"] == b["foreground"] and a["mask_files"] == b["mask_files"]

    # Other settings in the same masks folder: one line naming what differs and how to start over.
    with pytest.raises(
        UsageError,
        match=r"o_masks: holds the masks of an earlier run with other settings "
        r"\(threshold 0\.5 there, 0\.7 now\); run again with --restart",
    ):
        predict(long_video, out=out, **args, threshold=0.7)
    FailingAfter.calls = 0
    assert predict(long_video, out=out, **args, threshold=0.7, restart=True) == 0
    assert FailingAfter.calls == 15
