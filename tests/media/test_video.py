"""read_video / probe_video / write_video on small synthetic clips (see conftest.py for how they are made)."""

from __future__ import annotations

import math
import os
import re
import stat
import warnings
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile
import torch

from avseg.errors import (
    AudioPaddedWarning,
    CorruptMediaError,
    EmptyVideoError,
    MediaError,
    MissingFileError,
    NoVideoStreamError,
    ShapeError,
)
from avseg.media import VideoClip, probe_video, read_video, write_png, write_video

# Geometry and tone of the synthetic clips (conftest.py).
WIDTH, HEIGHT = 64, 48
TONE_HZ, TONE_AMPLITUDE = 440.0, 0.5


def reference_picks(times: list[Fraction], fps: Fraction, pick: str, duration: Fraction) -> list[int]:
    """Naive statement of the documented convention, in exact arithmetic (quadratic, fine for tests)."""
    t0 = times[0]
    rel = [t - t0 for t in times]
    picks = []
    for k in range(max(1, math.floor(duration * fps + Fraction(1, 2)))):
        lo, hi = k / fps, (k + 1) / fps
        inside = [i for i, t in enumerate(rel) if lo <= t < hi]
        if not inside:
            picks.append(max(i for i, t in enumerate(rel) if t < lo))
        elif pick == "first":
            picks.append(inside[0])
        elif pick == "last":
            picks.append(inside[-1])
        else:
            center = (k + Fraction(1, 2)) / fps
            picks.append(min(inside, key=lambda i: (abs(rel[i] - center), i)))
    return picks


def assert_frames_match_indices(synth, clip: VideoClip) -> None:
    decoded = [synth.decode_index(frame) for frame in clip.frames]
    assert decoded == clip.source_indices.tolist()


def spectrum_peak_hz(wave: np.ndarray, rate: int) -> float:
    magnitude = np.abs(np.fft.rfft(wave * np.hanning(wave.size)))
    return float(np.fft.rfftfreq(wave.size, 1 / rate)[np.argmax(magnitude)])


# --------------------------------------------------------------------------------------------------------------------
# Frame sampling


@pytest.mark.parametrize(
    ("frame_pick", "expected"),
    [
        ("first", [0, 25, 50, 75, 100]),
        ("last", [24, 49, 74, 99, 124]),
        ("center", [12, 37, 62, 87, 112]),  # frames 12 and 13 tie around 0.5 s; the earlier one wins (as ffmpeg)
    ],
)
def test_frame_pick_conventions_at_1fps(synth, clip25, frame_pick, expected):
    clip = read_video(clip25, fps=1, frame_pick=frame_pick)
    assert clip.source_indices.tolist() == expected
    np.testing.assert_allclose(clip.timestamps, np.array(expected) / 25)
    assert clip.frames.shape == (5, 3, HEIGHT, WIDTH) and clip.frames.dtype == torch.uint8
    assert clip.frame_pick == frame_pick and clip.sample_fps == 1.0 and clip.source_fps == 25.0
    assert clip.timestamps.dtype == np.float64 and clip.source_indices.dtype == np.int64
    assert_frames_match_indices(synth, clip)


@pytest.mark.parametrize("fps", [2, 3, 0.5])
@pytest.mark.parametrize("frame_pick", ["first", "last", "center"])
def test_frame_pick_matches_reference(synth, clip25, fps, frame_pick):
    clip = read_video(clip25, fps=fps, frame_pick=frame_pick, audio=False)
    times = [Fraction(i, 25) for i in range(125)]
    assert clip.source_indices.tolist() == reference_picks(times, Fraction(fps), frame_pick, Fraction(5))
    assert_frames_match_indices(synth, clip)


def test_fps2_last_hand_computed(clip25):
    clip = read_video(clip25, fps=2, audio=False)
    assert clip.source_indices.tolist() == [12, 24, 37, 49, 62, 74, 87, 99, 112, 124]


def test_every_frame_with_fps_none(synth, clip25):
    clip = read_video(clip25, fps=None)
    assert clip.source_indices.tolist() == list(range(125))
    assert clip.frame_pick == "all" and clip.sample_fps is None
    assert clip.frames.shape == (125, 3, HEIGHT, WIDTH)
    assert clip.audio.shape == (5 * 16000,)
    assert_frames_match_indices(synth, clip)


@pytest.mark.parametrize(
    ("num_frames", "expected_windows"),
    [(115, 5), (110, 4), (113, 5), (112, 4)],  # 4.6 s, 4.4 s, 4.52 s, 4.48 s: a window is kept when half covered
)
def test_trailing_window_rule(synth, media_dir, num_frames, expected_windows):
    path = synth.make_clip(media_dir / f"len{num_frames}.mp4", num_frames=num_frames, audio_s=num_frames / 25)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AudioPaddedWarning)  # silence after the video's end is not "missing audio"
        clip = read_video(path, fps=1, frame_pick="last")
    assert len(clip.source_indices) == expected_windows
    assert clip.source_indices[-1] == min(25 * expected_windows - 1, num_frames - 1)
    assert clip.audio.shape == (expected_windows * 16000,) and not clip.audio_padded


def test_max_frames(clip25):
    clip = read_video(clip25, fps=1, max_frames=2)
    assert clip.source_indices.tolist() == [24, 49]
    assert clip.audio.shape == (2 * 16000,)
    clip = read_video(clip25, fps=None, max_frames=10)
    assert clip.source_indices.tolist() == list(range(10))
    assert clip.audio.shape == (10 * 16000 // 25,)
    clip = read_video(clip25, fps=1, frame_pick="first", max_frames=100)  # more than the clip has
    assert clip.source_indices.tolist() == [0, 25, 50, 75, 100]


def test_empty_windows_repeat_the_earlier_frame(synth, media_dir):
    # 3 frames at 0.5 fps (t = 0, 2, 4 s, 6 s long) sampled at 1 fps: windows 1, 3, 5 hold no frame.
    path = synth.make_clip(media_dir / "slow.mkv", num_frames=3, fps=Fraction(1, 2), audio_s=None)
    for frame_pick in ("first", "last", "center"):
        clip = read_video(path, fps=1, frame_pick=frame_pick, audio=False)
        assert clip.source_indices.tolist() == [0, 0, 1, 1, 2, 2]
        np.testing.assert_allclose(clip.timestamps, [0, 0, 2, 2, 4, 4])
        assert_frames_match_indices(synth, clip)


def test_variable_frame_rate_uses_timestamps(synth, media_dir):
    times = [0.0, 0.1, 0.2, 0.3, 1.0, 1.5, 2.0, 2.05, 2.9, 2.95]
    path = synth.make_clip(media_dir / "vfr.mp4", times=times, audio_s=None)
    exact = [Fraction(round(t * 1000), 1000) for t in times]
    duration = exact[-1] + Fraction(5, 100)  # the muxer gives the last frame the previous frame's duration
    for frame_pick, expected in (("first", [0, 4, 6]), ("last", [3, 5, 9]), ("center", [3, 5, 8])):
        clip = read_video(path, fps=1, frame_pick=frame_pick, audio=False)
        assert clip.source_indices.tolist() == expected == reference_picks(exact, Fraction(1), frame_pick, duration)
        np.testing.assert_allclose(clip.timestamps, [times[i] for i in expected])
        assert_frames_match_indices(synth, clip)


def test_display_rotation_is_applied(synth, media_dir):
    def corner(index: int) -> np.ndarray:
        image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
        image[: HEIGHT // 2, : WIDTH // 2] = 255  # bright top-left quadrant
        return image

    path = synth.make_clip(media_dir / "rotated.mp4", num_frames=5, audio_s=None, rotation=90, frame_fn=corner)
    clip = read_video(path, fps=None, audio=False)
    assert clip.frames.shape == (5, 3, WIDTH, HEIGHT)
    # A 90-degree counter-clockwise turn moves the top-left quadrant to the bottom-left.
    gray = clip.frames[0].float().mean(0)
    assert gray[-WIDTH // 4 :, : HEIGHT // 4].mean() > 200
    assert gray[: WIDTH // 4, :].mean() < 50
    info = probe_video(path)
    assert (info.width, info.height) == (HEIGHT, WIDTH)


@pytest.mark.parametrize(
    ("suffix", "video_codec", "audio_codec", "audio_rate"),
    [
        (".mkv", "libx264", "aac", 44100),
        (".webm", "libvpx-vp9", "libopus", 48000),
        (".mov", "libx264", "aac", 44100),
    ],
)
def test_other_containers(synth, media_dir, suffix, video_codec, audio_codec, audio_rate):
    path = synth.make_clip(
        media_dir / f"variant{suffix}", video_codec=video_codec, audio_codec=audio_codec, audio_rate=audio_rate
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", AudioPaddedWarning)
        clip = read_video(path, fps=1)
    assert clip.source_indices.tolist() == [24, 49, 74, 99, 124]
    assert_frames_match_indices(synth, clip)
    assert clip.audio.shape == (80000,) and not clip.audio_padded
    assert abs(spectrum_peak_hz(clip.audio, 16000) - TONE_HZ) < 2


# --------------------------------------------------------------------------------------------------------------------
# Audio of a video


def test_audio_is_16k_mono_tone(clip25):
    clip = read_video(clip25)
    assert clip.audio.dtype == np.float32 and clip.audio.shape == (80000,) and clip.audio_rate == 16000
    assert not clip.audio_padded
    assert abs(spectrum_peak_hz(clip.audio, 16000) - TONE_HZ) < 1
    # Both channels carry the same sine, so the mono mix keeps its RMS, amplitude / sqrt(2).
    rms = float(np.sqrt(np.mean(clip.audio[1600:-1600] ** 2)))
    assert rms == pytest.approx(TONE_AMPLITUDE / math.sqrt(2), rel=0.05)
    assert np.abs(clip.audio).max() <= 1.0


def test_audio_rate_and_no_audio(clip25):
    clip = read_video(clip25, fps=2, audio_rate=8000, max_frames=3)
    assert clip.audio.shape == (round(3 / 2 * 8000),) and clip.audio_rate == 8000
    clip = read_video(clip25, audio=False)
    assert clip.audio is None and not clip.audio_padded


def test_missing_audio_track_gives_silence_and_warns(clip_no_audio):
    with pytest.warns(AudioPaddedWarning, match=re.escape(str(clip_no_audio))):
        clip = read_video(clip_no_audio)
    assert clip.audio_padded and clip.audio.shape == (80000,) and not clip.audio.any()
    assert clip.source_indices.tolist() == [24, 49, 74, 99, 124]


def test_short_audio_is_padded_and_warns(clip_short_audio):
    with pytest.warns(AudioPaddedWarning, match=re.escape(str(clip_short_audio))):
        clip = read_video(clip_short_audio)
    assert clip.audio_padded and clip.audio.shape == (80000,)
    assert np.sqrt(np.mean(clip.audio[1600:30000] ** 2)) > 0.3  # the 2 s of tone
    assert not clip.audio[2 * 16000 + 800 :].any()  # silence after (AAC padding may ring a few ms)


def test_late_audio_is_aligned_to_the_first_frame(synth, media_dir):
    path = synth.make_clip(media_dir / "late_audio.mkv", audio_s=4.0, audio_start_s=1.0)
    with pytest.warns(AudioPaddedWarning, match=re.escape(str(path))):
        clip = read_video(path)
    assert clip.audio_padded and clip.audio.shape == (80000,)
    assert np.abs(clip.audio[: 16000 - 400]).max() < 1e-3  # first second silent
    assert np.sqrt(np.mean(clip.audio[17000:78000] ** 2)) > 0.3


# --------------------------------------------------------------------------------------------------------------------
# Folders of frames


def _write_folder(synth, folder: Path, names: list[str], size=(HEIGHT, WIDTH)) -> None:
    folder.mkdir(parents=True)
    for i, name in enumerate(names):
        write_png(folder / name, synth.index_image(i, *size))


def test_folder_numeric_sort_and_audio(synth, tmp_path):
    folder = tmp_path / "clip" / "frames"
    names = [f"{i}.png" for i in range(12)]
    _write_folder(synth, folder, list(reversed(names)))  # synth.index_image(i) goes to file 11 - i
    soundfile.write(str(folder / "audio.wav"), synth.tone(12 / 5, 44100, 2).T, 44100)
    (folder / "notes.txt").write_text("not a frame")
    with warnings.catch_warnings():
        warnings.simplefilter("error", AudioPaddedWarning)
        clip = read_video(folder, folder_fps=5, fps=1, frame_pick="first")  # fps / frame_pick do not apply
    # Numeric order 0, 1, ..., 9, 10, 11 (lexicographic would put 10 and 11 after 1).
    assert [synth.decode_index(frame) for frame in clip.frames] == [11 - i for i in range(12)]
    assert clip.frame_pick == "all" and clip.sample_fps is None and clip.source_fps == 5.0
    np.testing.assert_allclose(clip.timestamps, np.arange(12) / 5)
    assert clip.source_indices.tolist() == list(range(12))
    assert clip.audio.shape == (round(12 / 5 * 16000),) and not clip.audio_padded
    assert abs(spectrum_peak_hz(clip.audio, 16000) - TONE_HZ) < 1


def test_folder_lexicographic_when_stems_are_not_numbers(synth, tmp_path):
    folder = tmp_path / "frames"
    _write_folder(synth, folder, ["frame10.jpg", "frame9.jpg", "a.jpeg"])
    with pytest.warns(AudioPaddedWarning, match=re.escape(str(folder))):
        clip = read_video(folder)
    assert [synth.decode_index(frame) for frame in clip.frames] == [2, 0, 1]  # a.jpeg, frame10.jpg, frame9.jpg
    assert clip.audio_padded and clip.audio.shape == (3 * 16000,) and not clip.audio.any()


def test_folder_audio_in_parent_and_max_frames(synth, tmp_path):
    folder = tmp_path / "video" / "frames"
    _write_folder(synth, folder, [f"{i:05d}.jpg" for i in range(6)])
    soundfile.write(str(folder.parent / "audio.wav"), synth.tone(2.0, 16000, 1)[0], 16000)
    with pytest.warns(AudioPaddedWarning, match="audio.wav"):  # 2 s of sound for 6 frames at 1 fps
        clip = read_video(folder)
    assert clip.audio_padded and clip.audio.shape == (6 * 16000,)
    assert clip.audio[: 2 * 16000].any() and not clip.audio[2 * 16000 :].any()
    clip = read_video(folder, max_frames=2)
    assert len(clip.frames) == 2 and clip.audio.shape == (2 * 16000,) and not clip.audio_padded


def test_folder_with_mixed_sizes_names_the_odd_file(synth, tmp_path):
    folder = tmp_path / "frames"
    _write_folder(synth, folder, ["0.png", "1.png"])
    write_png(folder / "2.png", synth.index_image(2, 24, 32))
    with pytest.raises(CorruptMediaError) as info:
        read_video(folder, audio=False)
    assert str(info.value).startswith(str(folder / "2.png"))


def test_empty_folder(tmp_path):
    with pytest.raises(EmptyVideoError) as info:
        read_video(tmp_path)
    assert str(info.value).startswith(str(tmp_path))


# --------------------------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("name", ["random", "truncated", "empty"])
def test_corrupt_container(corrupt_files, name):
    path = corrupt_files[name]
    with pytest.raises(CorruptMediaError) as info:
        read_video(path)
    assert str(info.value).startswith(str(path))
    with pytest.raises(CorruptMediaError):
        probe_video(path)


def test_decode_failure_mid_stream_says_where(corrupt_files):
    path = corrupt_files["mid_stream"]
    with pytest.raises(CorruptMediaError) as info:
        read_video(path, fps=None, audio=False)
    message = str(info.value)
    assert message.startswith(str(path))
    assert re.search(r"after frame \d+ \(t=\d+\.\d+ s\)", message)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.mp4"
    with pytest.raises(MissingFileError) as info:
        read_video(path)
    assert str(info.value).startswith(str(path))
    with pytest.raises(FileNotFoundError):
        probe_video(path)


def test_no_video_stream(wav_file, audio_only):
    for path in (wav_file, audio_only):
        with pytest.raises(NoVideoStreamError) as info:
            read_video(path)
        assert str(info.value).startswith(str(path))
        with pytest.raises(NoVideoStreamError):
            probe_video(path)


def test_zero_frames(zero_frame):
    with pytest.raises(EmptyVideoError) as info:
        read_video(zero_frame)
    assert str(info.value).startswith(str(zero_frame))
    assert isinstance(info.value, MediaError)


@pytest.mark.parametrize(
    "kwargs", [{"fps": 0}, {"fps": -1.0}, {"frame_pick": "middle"}, {"max_frames": 0}, {"audio_rate": 0}]
)
def test_bad_arguments(clip25, kwargs):
    with pytest.raises(ValueError, match=re.escape(str(next(iter(kwargs.values()))))):
        read_video(clip25, **kwargs)


# --------------------------------------------------------------------------------------------------------------------
# probe_video


def test_probe(synth, clip25, clip_no_audio, tmp_path):
    info = probe_video(clip25)
    assert info.duration_s == pytest.approx(5.0, abs=0.05) and info.source_fps == 25.0 and info.num_frames == 125
    assert (info.width, info.height) == (WIDTH, HEIGHT) and info.has_audio and info.audio_rate == 44100
    info = probe_video(clip_no_audio)
    assert not info.has_audio and info.audio_rate is None
    folder = tmp_path / "frames"
    _write_folder(synth, folder, ["1.png", "2.png", "3.png"])
    info = probe_video(folder, folder_fps=2)
    assert (info.num_frames, info.duration_s, info.width, info.height) == (3, 1.5, WIDTH, HEIGHT)
    assert not info.has_audio


# --------------------------------------------------------------------------------------------------------------------
# write_video


def _smooth_frames(num: int, height: int, width: int) -> np.ndarray:
    """Gradients that move over time: easy for the codec, so decoded pixels stay close to the input."""
    y, x = np.mgrid[0:height, 0:width]
    frames = [
        np.stack([(x * 4 + 10 * t) % 200 + 20, (y * 4) % 200 + 20, np.full_like(x, 40 + 10 * t)], axis=-1)
        for t in range(num)
    ]
    return np.asarray(frames, dtype=np.uint8)


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".mov", ".webm"])
def test_write_video_round_trip_odd_size(synth, tmp_path, suffix):
    frames = _smooth_frames(10, 25, 33)  # odd height and width
    sound = synth.tone(1.0, 16000, 1)[0]
    path = write_video(tmp_path / f"out{suffix}", frames, 10, audio=sound, audio_rate=16000, crf=18)
    assert path == tmp_path / f"out{suffix}"
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"out{suffix}"]  # no temporary file left behind
    with warnings.catch_warnings():
        warnings.simplefilter("error", AudioPaddedWarning)
        clip = read_video(path, fps=None)
    assert clip.frames.shape == (10, 3, 26, 34)  # padded to even
    assert clip.source_fps == pytest.approx(10.0)
    decoded = clip.frames.permute(0, 2, 3, 1).numpy().astype(np.int16)
    assert np.abs(decoded[:, :25, :33] - frames).mean() < 4
    # Edge replication: the added row and column repeat the last ones.
    assert np.abs(decoded[:, 25, :33] - frames[:, 24]).mean() < 6
    assert np.abs(decoded[:, :25, 33] - frames[:, :, 32]).mean() < 6
    assert clip.audio.shape == (16000,) and not clip.audio_padded
    assert abs(spectrum_peak_hz(clip.audio, 16000) - TONE_HZ) < 2
    assert np.sqrt(np.mean(clip.audio[800:-800] ** 2)) == pytest.approx(TONE_AMPLITUDE / math.sqrt(2), rel=0.1)


def test_write_video_channels_first_tensor_stereo(synth, tmp_path):
    frames = torch.from_numpy(_smooth_frames(4, 48, 64)).permute(0, 3, 1, 2)  # (T, 3, H, W)
    path = write_video(tmp_path / "t.mp4", frames, 25, audio=synth.tone(0.16, 44100, 2), audio_rate=44100)
    clip = read_video(path, fps=None)
    assert clip.frames.shape == (4, 3, 48, 64)
    assert (clip.frames.int() - frames.int()).abs().float().mean() < 4
    info = probe_video(path)
    assert info.has_audio and info.audio_rate == 44100 and info.num_frames == 4


def test_write_video_without_audio(tmp_path):
    path = write_video(tmp_path / "silent.mp4", _smooth_frames(3, 16, 16), 5)
    assert not probe_video(path).has_audio


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "out.mp4"
    target.write_bytes(b"previous content")
    real = av.VideoFrame.from_ndarray
    calls = []

    def fail_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("simulated crash while encoding")
        return real(*args, **kwargs)

    monkeypatch.setattr(av.VideoFrame, "from_ndarray", staticmethod(fail_on_third))
    with pytest.raises(RuntimeError, match="simulated crash"):
        write_video(target, _smooth_frames(6, 16, 16), 5, audio=np.zeros(16000, np.float32))
    assert target.read_bytes() == b"previous content"  # not clobbered
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]  # temporary file removed
    new = tmp_path / "new.mp4"
    with pytest.raises(RuntimeError):
        calls.clear()
        write_video(new, _smooth_frames(6, 16, 16), 5)
    assert not new.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]


def test_write_video_bad_input(tmp_path):
    with pytest.raises(ShapeError, match="float32"):
        write_video(tmp_path / "a.mp4", np.zeros((2, 8, 8, 3), np.float32), 5)
    with pytest.raises(ShapeError, match=r"\(8, 8, 3\)"):
        write_video(tmp_path / "a.mp4", np.zeros((8, 8, 3), np.uint8), 5)
    with pytest.raises(ValueError, match=r"\.avi"):
        write_video(tmp_path / "a.avi", np.zeros((2, 8, 8, 3), np.uint8), 5)
    with pytest.raises(ShapeError, match="audio"):
        write_video(tmp_path / "a.mp4", np.zeros((2, 8, 8, 3), np.uint8), 5, audio=np.zeros(10, np.int16))
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_write_video_mode_follows_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        path = write_video(tmp_path / "shared.mp4", _smooth_frames(2, 16, 16), 5)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # 0644 / 0640, not tempfile's 0600


def test_write_video_reports_progress(tmp_path):
    steps: list[int] = []
    write_video(
        tmp_path / "p.mp4", _smooth_frames(7, 16, 16), 5, audio=np.zeros(8000, np.float32), progress=steps.append
    )
    assert steps == [1] * 7


def test_read_video_reports_progress(clip25):
    steps: list[int] = []
    clip = read_video(clip25, fps=1, audio=False, progress=steps.append)
    assert len(clip.source_indices) == 5 and sum(steps) == 125  # every decoded frame counts, not just the picked
    steps.clear()
    read_video(clip25, fps=1, audio=False, max_frames=2, progress=steps.append)
    assert sum(steps) == 51  # decoding stops at the frame that closes the 2nd window (frame 50)


def test_sampling_at_the_streams_own_fractional_rate_takes_every_frame(synth, media_dir):
    # 29.97 fps is 30000/1001; its float, read as a binary fraction, is a hair below that, so every window would
    # end just before "its" frame: frames shifted by one and the last one repeated.
    path = synth.make_clip(media_dir / "ntsc.mp4", num_frames=60, fps=Fraction(30000, 1001), audio_s=None)
    rate = probe_video(path).source_fps
    assert Fraction(rate) < Fraction(30000, 1001)  # the premise: the float is below the true rate
    clip = read_video(path, fps=rate, frame_pick="last", audio=False)
    assert clip.source_indices.tolist() == list(range(60))
    assert_frames_match_indices(synth, clip)


# --------------------------------------------------------------------------------------------------------------------
# Streaming: VideoReader hands frames on one at a time, VideoWriter takes them one at a time


def test_reader_streams_the_frames_read_video_returns(synth, clip25):
    from avseg.media import VideoReader

    clip = read_video(clip25, fps=2.0, frame_pick="center")
    reader = VideoReader(clip25, fps=2.0, frame_pick="center")
    seen = []
    for frame in reader:
        if not seen:  # the soundtrack is there from the first frame on, and never changes afterwards
            head = reader.audio_upto(8000).copy()
        seen.append(frame)
        assert reader.span_s <= len(clip.timestamps) / 2.0  # a lower bound while frames come
    assert [f.index for f in seen] == list(range(10)) and reader.num_frames == 10
    assert [f.source_index for f in seen] == clip.source_indices.tolist()
    torch.testing.assert_close(torch.stack([f.image for f in seen]), clip.frames)
    np.testing.assert_array_equal(reader.audio, clip.audio)
    np.testing.assert_array_equal(head, clip.audio[:8000])


def test_chunked_resampling_equals_resampling_the_whole_track():
    from avseg.media.resample import resample
    from avseg.media.video import _StreamResampler

    rng = np.random.default_rng(0)
    wave = (0.1 * rng.standard_normal(200_003)).astype(np.float32)
    for rate in (44_100, 48_000, 22_050):
        stream = _StreamResampler(rate, 16_000)
        pieces = [stream.push(wave[i : i + 5_001]) for i in range(0, wave.size, 5_001)] + [stream.flush()]
        np.testing.assert_allclose(np.concatenate(pieces), resample(wave, rate, 16_000), atol=1e-6)


def test_writer_takes_frames_and_sound_one_at_a_time(synth, tmp_path):
    from avseg.media import VideoWriter

    frames = _smooth_frames(10, 33, 47)  # odd size: padded to even
    wave = synth.tone(2.0, 16_000, 1)[0]
    with VideoWriter(tmp_path / "s.mp4", 5.0, audio_rate=16_000) as writer:
        for i, image in enumerate(frames):
            writer.write(torch.from_numpy(image.transpose(2, 0, 1).copy()))  # (3, H, W) works too
            writer.write_audio(wave[i * 3200 : (i + 1) * 3200])
        assert not (tmp_path / "s.mp4").exists()  # in place only once closed
        writer.close()
    info = probe_video(tmp_path / "s.mp4")
    assert info.num_frames == 10 and (info.width, info.height) == (48, 34) and info.has_audio
    assert abs(read_video(tmp_path / "s.mp4", fps=None).audio.size / 16_000 - 2.0) < 0.05
    with pytest.raises(RuntimeError), VideoWriter(tmp_path / "t.mp4", 5.0) as writer:
        writer.write(frames[0])
        raise RuntimeError("interrupted")
    assert not list(tmp_path.glob("*t.mp4*"))  # nothing left behind
