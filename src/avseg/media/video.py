"""Video I/O with PyAV: frames sampled at a fixed rate by an explicit convention, the matching audio, and writing.

Frame-sampling convention
-------------------------
Audio-visual segmentation benchmarks work on frames sampled at a low fixed rate (1 fps for AVSBench and Ref-AVS),
and the field uses three different rules to pick "the" frame of each second. They give different frames for the same
clip (benchmarks.md §1.6), so the rule is a parameter (``frame_pick``) and is recorded in :class:`VideoClip`.

Time is the presentation time of each decoded frame (``frame.pts * time_base``), never ``index / fps``, so variable
frame rate and streams that do not start at zero are handled. With ``t0`` the first frame's time, window ``k`` is
``[t0 + k/fps, t0 + (k+1)/fps)``; the clip has ``K = max(1, floor(duration * fps + 0.5))`` windows, i.e. a trailing
window is kept when at least half of it is covered by the video. From each window:

- ``"last"`` (default) takes the last frame whose time lies in the window. AVSBench's preprocessing keeps the last of
  every second's frames, so this gives frames 24, 49, 74, ... of a 25 fps clip.
- ``"first"`` takes the first frame with time ``>= k/fps``, the usual PyAV loop: frames 0, 25, 50, ...
- ``"center"`` takes the frame nearest ``(k + 0.5)/fps`` (the earlier one on a tie), which is what ffmpeg's
  ``fps=1`` filter gives: frames 12, 37, 62, ...

A float ``fps`` is read as the simple fraction it stands for (``29.97002997...`` as ``30000/1001``), so the windows
of a stream sampled at its own rate (``probe_video(path).source_fps``) start exactly on its frames. A window that
contains no frame (source slower than ``fps``) repeats the nearest earlier frame; ``avseg predict`` therefore never
samples above the source rate. ``fps=None`` returns every frame (``frame_pick`` is then reported as ``"all"``).
Frames are decoded sequentially and only the picked ones are kept (as RGB arrays), so a long video sampled at 1 fps
stays small; ``max_frames`` stops decoding early.

Display rotation (phone videos) is applied as ffmpeg does by default, so frames come out the way players show them.

Audio
-----
``read_video`` also returns the first audio stream, mono at ``audio_rate`` and aligned so that sample 0 is at ``t0``.
When sampling it spans exactly the ``T`` windows, ``round(T / fps * audio_rate)`` samples; with ``fps=None`` it
spans the returned frames. A clip without audio, or whose audio ends early, is padded with silence and an
:class:`~avseg.errors.AudioPaddedWarning` naming the file is issued (``audio_padded=True``): it never fails.

A folder of frames is read as a video too (see :func:`read_video`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import numpy as np
import torch

from avseg.errors import (
    AudioPaddedWarning,
    CorruptMediaError,
    EmptyVideoError,
    MissingFileError,
    NoVideoStreamError,
    ShapeError,
)
from avseg.fileio import atomic_file
from avseg.media.audio import decode_audio_stream, open_container, read_audio, samples_for
from avseg.media.image import read_rgb
from avseg.media.resample import resample

__all__ = ["FramePick", "Progress", "VideoClip", "VideoInfo", "probe_video", "read_video", "write_video"]

FramePick = Literal["first", "last", "center"]

_FRAME_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
_FOLDER_AUDIO_NAME = "audio.wav"
# Audio shortfalls up to this long are codec noise (AAC priming/padding), not missing sound.
_AUDIO_TOLERANCE_S = 0.1
# Step assumed between frames that carry no timestamp, when the stream declares no rate either.
_FALLBACK_FPS = Fraction(25)
# Largest denominator kept when a float sampling rate becomes a Fraction: recovers the intended rational rate
# (29.97002997... -> 30000/1001) so windows line up with the frames of a stream at that very rate.
_MAX_RATE_DENOMINATOR = 1_000_000

Progress = Callable[[int], object]
"""A progress callback, called with the number of frames just handled (e.g. a ``tqdm`` bar's ``update``)."""

# Output suffix -> (muxer, video encoder, audio encoder).
_WRITERS = {
    ".mp4": ("mp4", "libx264", "aac"),
    ".m4v": ("mp4", "libx264", "aac"),
    ".mov": ("mov", "libx264", "aac"),
    ".mkv": ("matroska", "libx264", "aac"),
    ".webm": ("webm", "libvpx-vp9", "libopus"),
}
_OPUS_RATES = (8000, 12000, 16000, 24000, 48000)


@dataclass
class VideoClip:
    """Frames picked from a video (or frame folder), with their timing and the matching audio.

    Attributes:
        frames: ``uint8`` ``(T, 3, H, W)`` RGB.
        timestamps: float64 ``(T,)`` presentation time (s) of each picked source frame.
        source_indices: int64 ``(T,)`` index of each picked frame in decode (= presentation) order.
        source_fps: average rate of the source stream, or the folder's declared rate.
        sample_fps: the rate frames were sampled at; ``None`` when every frame was returned.
        frame_pick: the convention used: ``"first"``, ``"last"``, ``"center"`` or ``"all"``.
        audio: float32 ``(N,)`` mono at ``audio_rate``; ``None`` when not requested.
        audio_rate: rate of ``audio`` in Hz.
        audio_padded: the audio was missing or short and silence was added.
        path: the file or folder read.
    """

    frames: torch.Tensor
    timestamps: np.ndarray
    source_indices: np.ndarray
    source_fps: float
    sample_fps: float | None
    frame_pick: str
    audio: np.ndarray | None
    audio_rate: int
    audio_padded: bool
    path: Path


@dataclass
class VideoInfo:
    """Container-level facts about a video, read without decoding it (the first frame aside).

    Attributes:
        path: the file or folder.
        duration_s: duration of the video stream in seconds (0.0 when unknown).
        source_fps: average frame rate (0.0 when unknown).
        num_frames: frame count, from the container when it stores one, else estimated as ``duration * fps``.
        width: displayed width (after rotation) in pixels.
        height: displayed height in pixels.
        has_audio: an audio stream (or, for a folder, an audio file) exists.
        audio_rate: native audio rate in Hz, ``None`` without audio.
    """

    path: Path
    duration_s: float
    source_fps: float
    num_frames: int
    width: int
    height: int
    has_audio: bool
    audio_rate: int | None


@dataclass
class _Decoded:
    """A decoded frame held (as a reference, not yet converted) until it is picked or superseded."""

    index: int
    rel: Fraction  # time since the stream's first frame
    time_s: float  # absolute presentation time
    frame: av.VideoFrame


class _RGBConverter:
    """Turns decoded frames into upright ``(H, W, 3)`` RGB arrays of one size (the first frame's)."""

    def __init__(self) -> None:
        self._size: tuple[int, int] | None = None
        self._cached: tuple[int, np.ndarray] | None = None

    def __call__(self, item: _Decoded) -> np.ndarray:
        if self._cached is not None and self._cached[0] == item.index:
            return self._cached[1]
        frame = item.frame
        if self._size is None:
            self._size = (frame.width, frame.height)
        width, height = self._size
        # A mid-stream resolution change would break stacking; scale such frames to the first frame's size.
        array = frame.to_ndarray(format="rgb24", width=width, height=height)
        quarter_turns = round((frame.rotation or 0) / 90) % 4  # counter-clockwise, as the display matrix says
        if quarter_turns:
            array = np.rot90(array, quarter_turns)
        array = np.ascontiguousarray(array)
        self._cached = (item.index, array)
        return array


class _WindowPicker:
    """Streams decoded frames through the sampling windows, holding only the current window's candidate."""

    def __init__(self, fps: Fraction, frame_pick: FramePick, convert: _RGBConverter) -> None:
        self.fps = fps
        self.frame_pick = frame_pick
        self.convert = convert
        self.indices: list[int] = []
        self.times: list[float] = []
        self.images: list[np.ndarray] = []
        self._window = 0
        self._candidate: _Decoded | None = None
        self._last: _Decoded | None = None  # most recent frame: the filler for windows without a frame

    def __len__(self) -> int:
        return len(self.indices)

    def push(self, item: _Decoded) -> None:
        # max() keeps a frame whose timestamp goes backwards (broken muxing) in the current window.
        window = max(self._window, math.floor(item.rel * self.fps))
        if window > self._window:
            self._emit(self._candidate)
            for _ in range(window - self._window - 1):
                self._emit(self._last)
            self._window, self._candidate = window, None
        if self._candidate is None or self.frame_pick == "last":
            self._candidate = item
        elif self.frame_pick == "center":
            center = (window + Fraction(1, 2)) / self.fps
            if abs(item.rel - center) < abs(self._candidate.rel - center):  # strict: the earlier frame wins ties
                self._candidate = item
        self._last = item

    def finish(self, duration: Fraction) -> None:
        """Close the last window and apply the window count ``K = max(1, floor(duration * fps + 0.5))``."""
        if self._candidate is not None:
            self._emit(self._candidate)
            self._candidate = None
        num_windows = max(1, math.floor(duration * self.fps + Fraction(1, 2)))
        del self.indices[num_windows:], self.times[num_windows:], self.images[num_windows:]
        while len(self) < num_windows:
            self._emit(self._last)

    def _emit(self, item: _Decoded | None) -> None:
        assert item is not None  # window 0 always holds the first frame, so a filler always exists
        self.indices.append(item.index)
        self.times.append(item.time_s)
        self.images.append(self.convert(item))


def read_video(
    path: str | Path,
    *,
    fps: float | None = 1.0,
    frame_pick: FramePick = "last",
    max_frames: int | None = None,
    audio: bool = True,
    audio_rate: int = 16_000,
    folder_fps: float | None = None,
    audio_path: str | Path | None = None,
    progress: Progress | None = None,
) -> VideoClip:
    """Decode a video file (or a folder of frames) into frames sampled at ``fps`` and the matching mono audio.

    A folder holds frames ``*.jpg|*.jpeg|*.png``, sorted by numeric stem when every stem is an integer (``9.jpg``
    before ``10.jpg``), else by name. Every frame is returned (``fps`` and ``frame_pick`` do not apply;
    ``frame_pick="all"``), at ``source_fps = folder_fps or 1.0``. Its audio is ``audio_path`` when given, else
    ``audio.wav`` in the folder, else ``audio.wav`` in its parent folder.

    Args:
        path: video file (anything PyAV opens: mp4, mkv, webm, mov, avi, ...) or folder of frames.
        fps: sampling rate in frames per second (see the module docstring); ``None`` returns every frame.
        frame_pick: which frame of each window to take: ``"last"``, ``"first"`` or ``"center"``.
        max_frames: return at most this many frames and stop decoding there.
        audio: also decode the audio.
        audio_rate: rate of the returned audio in Hz.
        folder_fps: frame rate of a frame folder (ignored for video files).
        audio_path: audio file of a frame folder, instead of looking for ``audio.wav`` (ignored for video files).
        progress: called with 1 after each decoded source frame (each file read, for a folder); the total is about
            :attr:`VideoInfo.num_frames` of :func:`probe_video`.

    Returns:
        The picked frames, their timing and the audio as a :class:`VideoClip`.

    Raises:
        MissingFileError: ``path`` does not exist.
        CorruptMediaError: the container cannot be opened, decoding fails (the message gives the frame and time),
            or a folder holds frames of different sizes (the message names the odd file).
        NoVideoStreamError: the file has no video stream (e.g. a wav file).
        EmptyVideoError: no frame decodes, or the folder holds no frames.
        ValueError: an argument is out of range.
    """
    path = Path(path)
    if fps is not None and not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"read_video: fps must be positive or None, got {fps}")
    if frame_pick not in ("first", "last", "center"):
        raise ValueError(f"read_video: frame_pick must be 'first', 'last' or 'center', got {frame_pick!r}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"read_video: max_frames must be >= 1 or None, got {max_frames}")
    if audio_rate <= 0:
        raise ValueError(f"read_video: audio_rate must be positive, got {audio_rate}")
    if folder_fps is not None and not (math.isfinite(folder_fps) and folder_fps > 0):
        raise ValueError(f"read_video: folder_fps must be positive or None, got {folder_fps}")
    if not path.exists():
        raise MissingFileError(path, "video")
    if path.is_dir():
        return _read_folder(
            path,
            max_frames=max_frames,
            audio=audio,
            audio_rate=audio_rate,
            fps=folder_fps or 1.0,
            audio_path=audio_path,
            progress=progress,
        )
    return _read_file(
        path,
        fps=fps,
        frame_pick=frame_pick,
        max_frames=max_frames,
        audio=audio,
        audio_rate=audio_rate,
        progress=progress,
    )


def _read_file(
    path: Path,
    *,
    fps: float | None,
    frame_pick: FramePick,
    max_frames: int | None,
    audio: bool,
    audio_rate: int,
    progress: Progress | None,
) -> VideoClip:
    """:func:`read_video` on a video file (arguments already checked)."""
    container = open_container(path)
    frames = None
    try:
        if not container.streams.video:
            raise NoVideoStreamError(path, "no video stream in the container")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        frames = _decode_frames(container, stream, path)
        declared = stream.average_rate or stream.guessed_rate
        step = 1 / Fraction(declared) if declared else 1 / _FALLBACK_FPS
        convert = _RGBConverter()
        rate = Fraction(fps).limit_denominator(_MAX_RATE_DENOMINATOR) if fps is not None else None
        picker = _WindowPicker(rate, frame_pick, convert) if rate is not None else None
        indices: list[int] = []  # fps=None: every frame, converted as it comes
        times: list[float] = []
        images: list[np.ndarray] = []
        t0: Fraction | None = None
        last: _Decoded | None = None
        last_step = step
        reached_end = True
        for index, frame in frames:
            time = _frame_time(frame, stream)
            if time is None:
                time = last.rel + t0 + step if last is not None else Fraction(0)
            if t0 is None:
                t0 = time
            last = _Decoded(index, time - t0, float(time), frame)
            last_step = Fraction(frame.duration) * frame.time_base if frame.duration and frame.time_base else step
            if picker is not None:
                picker.push(last)
                count = len(picker)
            else:
                indices.append(index)
                times.append(last.time_s)
                images.append(convert(last))
                count = len(indices)
            if progress is not None:
                progress(1)
            if max_frames is not None and count >= max_frames:
                reached_end = False
                break
        if last is None:
            raise EmptyVideoError(path, "the video stream has no decodable frames")
        # Duration up to the end of the last decoded frame; unknown (and not needed) when decoding stopped early.
        duration = last.rel + last_step if reached_end else None
        source_fps = float(declared) if declared else _estimate_fps(last)
        if picker is not None:
            if duration is not None:
                picker.finish(duration)
            keep = max_frames if max_frames is not None else len(picker)
            indices, times, images = picker.indices[:keep], picker.times[:keep], picker.images[:keep]
            span_s = len(indices) / fps
        else:
            span_s = float(last.rel + last_step)
        start_s = float(t0)
    finally:
        if frames is not None:
            frames.close()  # finish the decode generator before its container goes away
        container.close()

    wave, padded = None, False
    if audio:
        covered_s = min(span_s, float(duration)) if duration is not None else span_s
        wave, padded = _file_audio(path, start_s, span_s, covered_s, audio_rate)
    return VideoClip(
        frames=_stack(images),
        timestamps=np.asarray(times, dtype=np.float64),
        source_indices=np.asarray(indices, dtype=np.int64),
        source_fps=source_fps,
        sample_fps=float(fps) if fps is not None else None,
        frame_pick=frame_pick if fps is not None else "all",
        audio=wave,
        audio_rate=audio_rate,
        audio_padded=padded,
        path=path,
    )


def probe_video(path: str | Path, *, folder_fps: float | None = None) -> VideoInfo:
    """Read a video's duration, rate, frame count, size and audio facts, decoding at most its first frame.

    Args:
        path: video file or folder of frames (see :func:`read_video`).
        folder_fps: frame rate of a frame folder (default 1.0).

    Raises:
        MissingFileError, CorruptMediaError, NoVideoStreamError: as :func:`read_video`.
    """
    path = Path(path)
    if not path.exists():
        raise MissingFileError(path, "video")
    if path.is_dir():
        files = _folder_frames(path)
        fps = folder_fps or 1.0
        height, width = read_rgb(files[0]).shape[:2] if files else (0, 0)
        audio_file = _folder_audio(path, None)
        audio_rate = None
        if audio_file is not None:
            audio_rate = read_audio(audio_file, None)[1]
        return VideoInfo(path, len(files) / fps, fps, len(files), width, height, audio_file is not None, audio_rate)

    container = open_container(path)
    try:
        if not container.streams.video:
            raise NoVideoStreamError(path, "no video stream in the container")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = 0.0
        num_frames = stream.frames or round(duration * fps)
        width, height = stream.codec_context.width, stream.codec_context.height
        try:
            first = next(container.decode(stream), None)
        except av.error.FFmpegError as err:
            raise CorruptMediaError(path, f"cannot decode the first frame: {err}") from err
        if first is not None and round((first.rotation or 0) / 90) % 2:
            width, height = height, width
        has_audio = bool(container.streams.audio)
        audio_rate = container.streams.audio[0].codec_context.sample_rate if has_audio else None
    finally:
        container.close()
    return VideoInfo(path, duration, fps, int(num_frames), int(width), int(height), has_audio, audio_rate)


def write_video(
    path: str | Path,
    frames: np.ndarray | torch.Tensor,
    fps: float,
    *,
    audio: np.ndarray | None = None,
    audio_rate: int = 16_000,
    crf: int = 23,
    progress: Progress | None = None,
) -> Path:
    """Encode frames (and optional audio) to a video file, atomically.

    ``.mp4``/``.m4v``/``.mov``/``.mkv`` get h264 (yuv420p) + AAC, ``.webm`` gets VP9 + Opus (audio resampled to
    48 kHz when Opus does not take ``audio_rate``). Odd frame sizes are padded to even by repeating the last row or
    column, since 4:2:0 chroma needs even sizes. The file is written to a temporary name in the same folder and
    renamed into place, so a failure never leaves a half-written (or clobbered) output; the file gets the mode the
    umask gives new files (0644 under umask 022).

    Args:
        path: destination file; its suffix picks the format.
        frames: ``uint8`` frames ``(T, H, W, 3)`` or ``(T, 3, H, W)``. When both the second and the last axis have
            size 3, a tensor is read as ``(T, 3, H, W)`` and an array as ``(T, H, W, 3)``.
        fps: frame rate.
        audio: float samples in ``[-1, 1]``, ``(N,)`` mono or ``(C, N)`` with ``C`` 1 or 2; ``None`` for no sound.
        audio_rate: rate of ``audio`` in Hz.
        crf: constant-rate factor of the video encoder (lower is better quality; 23 is x264's default).
        progress: called with 1 after each encoded frame (``T`` in all).

    Returns:
        ``path``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _WRITERS:
        raise ValueError(f"write_video: {path}: unsupported suffix {suffix!r}, expected one of {sorted(_WRITERS)}")
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"write_video: fps must be positive, got {fps}")
    if not 0 <= crf <= 63:
        raise ValueError(f"write_video: crf must be in [0, 63], got {crf}")
    if audio_rate <= 0:
        raise ValueError(f"write_video: audio_rate must be positive, got {audio_rate}")
    video = _as_thwc(frames)
    height, width = video.shape[1] + video.shape[1] % 2, video.shape[2] + video.shape[2] % 2
    if (height, width) != video.shape[1:3]:
        pad = ((0, 0), (0, height - video.shape[1]), (0, width - video.shape[2]), (0, 0))
        video = np.pad(video, pad, mode="edge")
    wave = _as_channels_first(audio) if audio is not None else None
    muxer, video_codec, audio_codec = _WRITERS[suffix]
    if wave is not None and audio_codec == "libopus" and audio_rate not in _OPUS_RATES:
        wave, audio_rate = resample(wave, audio_rate, 48_000), 48_000

    rate = Fraction(fps).limit_denominator(1001)
    with atomic_file(path, suffix=f".tmp{suffix}") as tmp:
        _encode(tmp, muxer, video, rate, video_codec, crf, wave, audio_rate, audio_codec, progress)
    return path


# --------------------------------------------------------------------------------------------------------------------
# Helpers


def _decode_frames(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, path: Path
) -> Iterator[tuple[int, av.VideoFrame]]:
    """Yield ``(index, frame)`` in presentation order; decoder failures become errors that say where they happened."""
    index, time_s = -1, 0.0
    try:
        for frame in container.decode(stream):
            index += 1
            time_s = frame.time if frame.time is not None else time_s
            yield index, frame
    except av.error.FFmpegError as err:
        where = f"after frame {index} (t={time_s:.3f} s)" if index >= 0 else "at the first frame"
        raise CorruptMediaError(path, f"video decode failed {where}: {err}") from err


def _frame_time(frame: av.VideoFrame, stream: av.video.stream.VideoStream) -> Fraction | None:
    if frame.pts is None:
        return None
    time_base = frame.time_base or stream.time_base
    return Fraction(frame.pts) * time_base if time_base is not None else None


def _estimate_fps(last: _Decoded) -> float:
    return float(last.index / last.rel) if last.rel > 0 else 0.0


def _stack(images: list[np.ndarray]) -> torch.Tensor:
    """``(H, W, 3)`` arrays -> ``uint8`` ``(T, 3, H, W)`` tensor, in one copy."""
    return torch.from_numpy(np.stack([image.transpose(2, 0, 1) for image in images]))


def _file_audio(path: Path, start_s: float, span_s: float, covered_s: float, rate: int) -> tuple[np.ndarray, bool]:
    """Mono audio of a video file from ``start_s`` for ``span_s`` seconds, padded with silence where missing.

    ``covered_s`` (at most ``span_s``) is how much of the span the video itself covers: silence added beyond it (the
    half-covered trailing window) is expected and does not count as padding.
    """
    num_samples = samples_for(span_s, rate)
    container = open_container(path)
    try:
        if not container.streams.audio:
            warnings.warn(f"{path}: no audio track; using {span_s:.3f} s of silence", AudioPaddedWarning, stacklevel=4)
            return np.zeros(num_samples, np.float32), True
        wave, native, audio_start_s = decode_audio_stream(container, path, mono=True, until_s=start_s + span_s + 0.05)
    finally:
        container.close()
    wave = wave[0]
    # Align sample 0 with the first video frame: drop audio before it (AAC priming shows up as negative times),
    # put silence in front of audio that starts later.
    offset = samples_for(abs(audio_start_s - start_s), native)
    lead_s = 0.0
    if audio_start_s > start_s and offset:
        wave = np.concatenate([np.zeros(offset, np.float32), wave])
        lead_s = offset / native
    elif offset:
        wave = wave[offset:]
    wave = wave[: math.ceil(span_s * native) + 1]
    missing_s = lead_s + max(0.0, covered_s - wave.size / native)
    if native != rate and wave.size:
        wave = resample(wave, native, rate)
    padded = missing_s > _AUDIO_TOLERANCE_S
    if padded:
        warnings.warn(
            f"{path}: audio is missing for {missing_s:.3f} s of the {covered_s:.3f} s clip; padded with silence",
            AudioPaddedWarning,
            stacklevel=4,
        )
    wave = np.pad(wave[:num_samples], (0, max(0, num_samples - wave.size)))
    return np.clip(wave, -1.0, 1.0).astype(np.float32, copy=False), padded


def _folder_frames(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in _FRAME_SUFFIXES]
    if files and all(p.stem.isdigit() for p in files):
        return sorted(files, key=lambda p: (int(p.stem), p.name))
    return sorted(files, key=lambda p: p.name)


def _folder_audio(folder: Path, audio_path: str | Path | None) -> Path | None:
    if audio_path is not None:
        if not Path(audio_path).is_file():
            raise MissingFileError(audio_path, "audio file")
        return Path(audio_path)
    for candidate in (folder / _FOLDER_AUDIO_NAME, folder.parent / _FOLDER_AUDIO_NAME):
        if candidate.is_file():
            return candidate
    return None


def _read_folder(
    folder: Path,
    *,
    max_frames: int | None,
    audio: bool,
    audio_rate: int,
    fps: float,
    audio_path: str | Path | None,
    progress: Progress | None,
) -> VideoClip:
    files = _folder_frames(folder)
    if not files:
        raise EmptyVideoError(folder, f"no frames ({', '.join(sorted(_FRAME_SUFFIXES))}) in the folder")
    files = files[:max_frames]
    images = []
    for file in files:
        image = read_rgb(file)
        if images and image.shape != images[0].shape:
            raise CorruptMediaError(
                file,
                f"frame size {image.shape[1]}x{image.shape[0]} differs from {files[0].name}'s "
                f"{images[0].shape[1]}x{images[0].shape[0]}",
            )
        images.append(image)
        if progress is not None:
            progress(1)

    wave, padded = None, False
    if audio:
        span_s = len(files) / fps
        num_samples = samples_for(span_s, audio_rate)
        audio_file = _folder_audio(folder, audio_path)
        if audio_file is None:
            warnings.warn(
                f"{folder}: no audio file ({_FOLDER_AUDIO_NAME} in the folder or its parent); "
                f"using {span_s:.3f} s of silence",
                AudioPaddedWarning,
                stacklevel=3,
            )
            wave, padded = np.zeros(num_samples, np.float32), True
        else:
            wave = read_audio(audio_file, audio_rate, mono=True)[0]
            padded = num_samples - wave.size > _AUDIO_TOLERANCE_S * audio_rate
            if padded:
                warnings.warn(
                    f"{audio_file}: audio is {wave.size / audio_rate:.3f} s long, padded with silence to the "
                    f"{span_s:.3f} s of {len(files)} frames at {fps} fps",
                    AudioPaddedWarning,
                    stacklevel=3,
                )
            wave = np.pad(wave[:num_samples], (0, max(0, num_samples - wave.size)))
    return VideoClip(
        frames=_stack(images),
        timestamps=np.arange(len(files), dtype=np.float64) / fps,
        source_indices=np.arange(len(files), dtype=np.int64),
        source_fps=float(fps),
        sample_fps=None,
        frame_pick="all",
        audio=wave,
        audio_rate=audio_rate,
        audio_padded=padded,
        path=folder,
    )


def _as_thwc(frames: np.ndarray | torch.Tensor) -> np.ndarray:
    is_tensor = isinstance(frames, torch.Tensor)
    array = frames.detach().cpu().numpy() if is_tensor else np.asarray(frames)
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[0] == 0 or 3 not in (array.shape[1], array.shape[3]):
        raise ShapeError(
            f"write_video: frames must be uint8 (T, H, W, 3) or (T, 3, H, W) with T >= 1, "
            f"got {array.dtype} {tuple(array.shape)}"
        )
    channels_first = array.shape[1] == 3 and (array.shape[3] != 3 or is_tensor)
    return np.ascontiguousarray(array.transpose(0, 2, 3, 1) if channels_first else array)


def _as_channels_first(audio: np.ndarray) -> np.ndarray:
    wave = np.asarray(audio)
    if not np.issubdtype(wave.dtype, np.floating) or wave.ndim not in (1, 2) or (wave.ndim == 2 and wave.shape[0] > 2):
        raise ShapeError(f"write_video: audio must be float (N,) or (C, N) with C <= 2, got {wave.dtype} {wave.shape}")
    wave = wave[None] if wave.ndim == 1 else wave
    return np.ascontiguousarray(np.clip(wave, -1.0, 1.0), dtype=np.float32)


def _encode(
    target: Path,
    muxer: str,
    video: np.ndarray,
    rate: Fraction,
    video_codec: str,
    crf: int,
    wave: np.ndarray | None,
    audio_rate: int,
    audio_codec: str,
    progress: Progress | None = None,
) -> None:
    """Mux ``video`` ``(T, H, W, 3)`` and ``wave`` ``(C, N)`` into ``target``, interleaving audio with the frames."""
    options = {"crf": str(crf)}
    if video_codec == "libvpx-vp9":
        options.update({"b": "0", "deadline": "realtime", "cpu-used": "8"})  # constant quality, fast
    with av.open(str(target), mode="w", format=muxer) as container:
        video_stream = container.add_stream(video_codec, rate=rate, options=options)
        video_stream.height, video_stream.width = video.shape[1:3]
        video_stream.pix_fmt = "yuv420p"
        audio_stream = None
        if wave is not None:
            layout = "mono" if wave.shape[0] == 1 else "stereo"
            audio_stream = container.add_stream(audio_codec, rate=audio_rate, layout=layout)
        chunk = 1024
        audio_pos = 0
        for index, image in enumerate(video):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            container.mux(video_stream.encode(frame))
            if audio_stream is not None:
                until = min(wave.shape[1], math.ceil((index + 1) / rate * audio_rate))
                audio_pos = _encode_audio(container, audio_stream, wave, audio_pos, until, audio_rate, chunk)
            if progress is not None:
                progress(1)
        container.mux(video_stream.encode(None))
        if audio_stream is not None:
            _encode_audio(container, audio_stream, wave, audio_pos, wave.shape[1], audio_rate, chunk)
            container.mux(audio_stream.encode(None))


def _encode_audio(container, stream, wave: np.ndarray, start: int, stop: int, rate: int, chunk: int) -> int:
    """Encode ``wave[:, start:stop]`` in whole ``chunk``-sample frames (a partial one only at the very end)."""
    layout = "mono" if wave.shape[0] == 1 else "stereo"
    pos = start
    while pos < stop and (stop - pos >= chunk or stop == wave.shape[1]):
        piece = np.ascontiguousarray(wave[:, pos : min(pos + chunk, stop)])
        frame = av.AudioFrame.from_ndarray(piece, format="fltp", layout=layout)
        frame.sample_rate = rate
        frame.pts = pos
        frame.time_base = Fraction(1, rate)
        container.mux(stream.encode(frame))
        pos += piece.shape[1]
    return pos
