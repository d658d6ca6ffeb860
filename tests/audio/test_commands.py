"""The ``logmel`` and ``embed`` command functions on small files written here."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile
import torch

from avseg.audio.commands import embed, logmel
from avseg.audio.vggish import CheckpointError, VGGish
from avseg.cli import main
from avseg.errors import CorruptMediaError, MissingFileError


def write_wav(path: Path, seconds: float, rate: int = 44100) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    stereo = np.stack([0.3 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 1000 * t)], axis=1)  # (N, C)
    soundfile.write(str(path), stereo.astype(np.float32), rate)
    return path


def write_video(path: Path, seconds: float, rate: int = 44100) -> Path:
    """A 4 fps 64x48 H.264 + AAC mp4 with a 440 Hz tone."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=4)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = container.add_stream("aac", rate=rate, layout="mono")
        for i in range(int(seconds * 4)):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 10 * i, dtype=np.uint8), format="rgb24")
            frame.pts = i
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        wave = (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * rate)) / rate)).astype(np.float32)[None]
        for start in range(0, wave.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(wave[:, start : start + 1024]), format="fltp", layout="mono"
            )
            frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
            container.mux(audio.encode(frame))
        container.mux(audio.encode(None))
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Stride-0 constant tensors with the port's keys and shapes: a valid checkpoint of a few kilobytes.
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in VGGish().state_dict().items()}
    path = tmp_path_factory.mktemp("weights") / "vggish-test.pth"
    torch.save({k: torch.full((1,), 0.001).expand(shape) for k, shape in shapes.items()}, path)
    return path


def test_logmel_wav(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    wav = write_wav(tmp_path / "a.wav", 3.5)
    out = tmp_path / "out" / "a_logmel.npy"
    assert logmel(wav, out=out) == 0
    arr = np.load(out)
    assert arr.shape == (3, 96, 64) and arr.dtype == np.float32
    printed = capsys.readouterr().out
    assert "3.50 s" in printed and "3 log-mel examples" in printed


def test_logmel_video(tmp_path: Path):
    clip = write_video(tmp_path / "clip.mp4", 2.5)
    out = tmp_path / "clip.npy"
    assert logmel(clip, out=out) == 0
    arr = np.load(out)
    assert arr.shape == (2, 96, 64) and arr.dtype == np.float32
    # The 440 Hz tone: mel(440) = 549.6, bands start at mel(125) = 185.2 and step (2773.5 - 185.2) / 65 = 39.8 mel,
    # so the loudest band is the one centred at 185.2 + 9 * 39.8 = 543.8 mel, band index 8.
    assert int(arr.mean(axis=(0, 1)).argmax()) == 8


def test_embed_wav_with_frames_and_cache(tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str]):
    wav = write_wav(tmp_path / "a.wav", 3.5)
    out = tmp_path / "emb.npy"
    assert embed(wav, weights=weights, out=out, frames=5, cache_dir=tmp_path / "cache") == 0
    arr = np.load(out)
    assert arr.shape == (5, 128) and arr.dtype == np.float32
    np.testing.assert_allclose(arr[4], arr[2], rtol=1e-4)  # repeat_last padding (batch position moves rounding)
    assert "computed" in capsys.readouterr().out
    out2 = tmp_path / "emb2.npy"
    assert embed(wav, weights=weights, out=out2, frames=5, cache_dir=tmp_path / "cache") == 0
    assert "from cache" in capsys.readouterr().out
    np.testing.assert_array_equal(np.load(out2), arr)
    assert embed(wav, weights=weights, out=tmp_path / "all.npy") == 0
    assert np.load(tmp_path / "all.npy").shape == (3, 128)


def test_embed_video_zero_padding(tmp_path: Path, weights: Path):
    clip = write_video(tmp_path / "clip.mp4", 2.5)
    out = tmp_path / "emb.npy"
    assert embed(clip, weights=weights, out=out, frames=4, pad="zero") == 0
    arr = np.load(out)
    assert arr.shape == (4, 128)
    assert not np.array_equal(arr[3], arr[1])  # a zero example, not a repeat


def test_embed_errors_name_the_file(tmp_path: Path, weights: Path):
    wav = write_wav(tmp_path / "a.wav", 1.5)
    with pytest.raises(MissingFileError, match=r"nope\.pth"):
        embed(wav, weights=tmp_path / "nope.pth", out=tmp_path / "o.npy")
    with pytest.raises(MissingFileError, match=r"missing\.wav"):
        embed(tmp_path / "missing.wav", weights=weights, out=tmp_path / "o.npy")
    with pytest.raises(MissingFileError, match=r"missing\.wav"):
        logmel(tmp_path / "missing.wav", out=tmp_path / "o.npy")
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match=r"broken\.pth"):
        embed(wav, weights=broken, out=tmp_path / "o.npy")
    bad_audio = tmp_path / "bad.wav"
    bad_audio.write_bytes(b"RIFF....WAVEjunk")
    with pytest.raises(CorruptMediaError, match=r"bad\.wav"):
        logmel(bad_audio, out=tmp_path / "o.npy")
    assert not (tmp_path / "o.npy").exists()


def _cli_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI, expect the one-line error of a user mistake, and return that line."""
    status = main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert status == 2 and len(lines) == 1, captured.err
    assert lines[0].startswith("avseg: error: ")
    return lines[0]


@pytest.mark.parametrize("command", ["logmel", "embed"])
def test_out_folder_is_refused_before_any_work(
    tmp_path: Path, weights: Path, command: str, capsys: pytest.CaptureFixture[str]
):
    # A corrupt input proves the check comes first: decoding it would fail with another message.
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....WAVEjunk")
    folder = tmp_path / "features"
    folder.mkdir()
    extra = ["--weights", str(weights)] if command == "embed" else []
    line = _cli_error(["audio", command, str(bad), "--out", str(folder), *extra], capsys)
    assert line == f"avseg: error: --out {folder}: is a folder; give a file name"
    assert list(folder.iterdir()) == []


def test_out_that_is_an_input_is_refused(tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str]):
    wav = write_wav(tmp_path / "a.wav", 1.5)
    original, original_weights = wav.read_bytes(), weights.read_bytes()
    line = _cli_error(["audio", "logmel", str(wav), "--out", str(wav)], capsys)
    assert line.startswith(f"avseg: error: --out {wav}: is the input file")
    line = _cli_error(["audio", "embed", str(wav), "--weights", str(weights), "--out", str(weights)], capsys)
    assert line.startswith(f"avseg: error: --out {weights}: is the input file")
    assert wav.read_bytes() == original and weights.read_bytes() == original_weights


def test_cache_dir_that_is_a_file_is_refused(tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str]):
    wav = write_wav(tmp_path / "a.wav", 1.5)
    cache = tmp_path / "cache"
    cache.write_text("not a folder")
    line = _cli_error(
        [
            "audio",
            "embed",
            str(wav),
            "--weights",
            str(weights),
            "--out",
            str(tmp_path / "e.npy"),
            "--cache-dir",
            str(cache),
        ],
        capsys,
    )
    assert line == f"avseg: error: --cache-dir {cache}: is a file, not a folder"
    assert not (tmp_path / "e.npy").exists()
