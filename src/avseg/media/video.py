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

import contextlib
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
from avseg.media.audio import frame_to_float, open_container, read_audio, samples_for
from avseg.media.image import read_rgb
from avseg.media.resample import resample

__all__ = [
    "FramePick",
    "Progress",
    "SampledFrame",
    "VideoClip",
    "VideoInfo",
    "VideoReader",
    "VideoWriter",
    "probe_video",
    "read_video",
    "write_video",
]

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
    """Streams decoded frames through the sampling windows, holding only the current window's candidate.

    :meth:`push` and :meth:`finish` return the frames of the windows they close, in window order, so the caller can
    convert and hand them on one at a time.
    """

    def __init__(self, fps: Fraction, frame_pick: FramePick) -> None:
        self.fps = fps
        self.frame_pick = frame_pick
        self.emitted = 0
        self._window = 0
        self._candidate: _Decoded | None = None
        self._last: _Decoded | None = None  # most recent frame: the filler for windows without a frame

    def push(self, item: _Decoded) -> list[_Decoded]:
        # max() keeps a frame whose timestamp goes backwards (broken muxing) in the current window.
        window = max(self._window, math.floor(item.rel * self.fps))
        closed: list[_Decoded] = []
        if window > self._window:
            closed.append(self._emit(self._candidate))
            for _ in range(window - self._window - 1):
                closed.append(self._emit(self._last))
            self._window, self._candidate = window, None
        if self._candidate is None or self.frame_pick == "last":
            self._candidate = item
        elif self.frame_pick == "center":
            center = (window + Fraction(1, 2)) / self.fps
            if abs(item.rel - center) < abs(self._candidate.rel - center):  # strict: the earlier frame wins ties
                self._candidate = item
        self._last = item
        return closed

    def finish(self, duration: Fraction) -> list[_Decoded]:
        """Close the last window under the window count ``K = max(1, floor(duration * fps + 0.5))``: the last
        window is kept only when it is among the ``K`` (at least half covered), and windows up to ``K`` without a
        frame repeat the last one. Every window closed by :meth:`push` lies before the last frame's window, so it is
        always among the ``K``."""
        num_windows = max(1, math.floor(duration * self.fps + Fraction(1, 2)))
        closed: list[_Decoded] = []
        if self._candidate is not None and self.emitted < num_windows:
            closed.append(self._emit(self._candidate))
        self._candidate = None
        while self.emitted < num_windows:
            closed.append(self._emit(self._last))
        return closed

    def _emit(self, item: _Decoded | None) -> _Decoded:
        assert item is not None  # window 0 always holds the first frame, so a filler always exists
        self.emitted += 1
        return item


@dataclass
class SampledFrame:
    """One sampled frame of a video, as :class:`VideoReader` hands it on.

    Attributes:
        index: its position among the sampled frames (window ``index``), from 0.
        image: ``uint8`` ``(3, H, W)`` RGB.
        time_s: presentation time (s) of the source frame.
        source_index: index of the source frame in decode (= presentation) order.
    """

    index: int
    image: torch.Tensor
    time_s: float
    source_index: int


class VideoReader:
    """The sampled frames of a video file (or folder of frames), decoded and handed on one at a time.

    Iterating it (once) yields :class:`SampledFrame` in time order, by the sampling rules of the module docstring;
    it holds only the decoder's state, the current window's candidate frame and the last converted frame, so a video
    of any length goes through in constant memory. :func:`read_video` is this reader collected into a
    :class:`VideoClip`.

    The soundtrack (mono at ``audio_rate``, sample 0 at the first frame) is decoded when the first frame is: its
    native-rate samples are resampled chunk by chunk as they are decoded, so only the ``audio_rate`` track is held
    (10 minutes of 16 kHz mono are 38 MB, next to about 2.8 MB for one 720p frame). :meth:`audio_upto` gives its
    first samples while frames are still coming; when the iteration ends, :attr:`audio` is the track over exactly
    the sampled span, padded with silence as :func:`read_video` describes (the :class:`~avseg.errors.
    AudioPaddedWarning` comes then), and :attr:`num_frames`, :attr:`source_fps` and :attr:`span_s` are final.

    Args: as :func:`read_video` (``audio=False`` skips the soundtrack).

    Raises:
        as :func:`read_video`; errors found while decoding are raised by the iteration.
    """

    def __init__(
        self,
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
    ) -> None:
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
        self.path = path
        self.is_folder = path.is_dir()
        self.fps = None if self.is_folder else fps
        self.frame_pick = "all" if self.is_folder or fps is None else frame_pick
        self.max_frames = max_frames
        self.with_audio = audio
        self.audio_rate = audio_rate
        self.folder_fps = folder_fps or 1.0
        self.audio_path = audio_path
        self.progress = progress
        self.num_frames = 0
        """Sampled frames handed on so far (all of them once the iteration has ended)."""
        self.source_fps = self.folder_fps if self.is_folder else 0.0
        self.span_s = 0.0
        """Seconds the sampled frames stand for (``T / fps``; with every frame, up to the end of the last one); while
        frames are still coming, a lower bound of it (the soundtrack's samples up to it are final)."""
        self.audio: np.ndarray | None = None
        self.audio_padded = False
        self.finished = False
        self._track: _Soundtrack | None = None

    @property
    def sample_fps(self) -> float | None:
        """The sampling rate, ``None`` when every frame is returned."""
        return float(self.fps) if self.fps is not None else None

    def __iter__(self) -> Iterator[SampledFrame]:
        return self._folder() if self.is_folder else self._file()

    def audio_upto(self, num_samples: int) -> np.ndarray:
        """The first ``num_samples`` samples of the soundtrack (silence where it has none), once a frame has come.

        Sampled frames only ever add windows, so a prefix of the span handed on so far never changes later."""
        if self._track is None:
            raise RuntimeError("VideoReader.audio_upto: no frame has been read yet, or audio=False")
        return self._track.upto(num_samples)

    def clip(self, frames: list[SampledFrame]) -> VideoClip:
        """The frames collected from a finished iteration, as a :class:`VideoClip`."""
        return VideoClip(
            frames=torch.stack([f.image for f in frames]),
            timestamps=np.asarray([f.time_s for f in frames], dtype=np.float64),
            source_indices=np.asarray([f.source_index for f in frames], dtype=np.int64),
            source_fps=self.source_fps,
            sample_fps=self.sample_fps,
            frame_pick=self.frame_pick,
            audio=self.audio,
            audio_rate=self.audio_rate,
            audio_padded=self.audio_padded,
            path=self.path,
        )

    def _sampled(self, item: _Decoded, convert: _RGBConverter) -> SampledFrame:
        image = torch.from_numpy(np.ascontiguousarray(convert(item).transpose(2, 0, 1)))  # (3, H, W)
        frame = SampledFrame(self.num_frames, image, item.time_s, item.index)
        self.num_frames += 1
        # A lower bound of the final span while frames come: windows only add, frames only move later.
        self.span_s = self.num_frames / self.fps if self.fps is not None else max(self.span_s, float(item.rel))
        return frame

    def _file(self) -> Iterator[SampledFrame]:
        path, fps, max_frames = self.path, self.fps, self.max_frames
        container = open_container(path)
        frames = None
        try:
            if not container.streams.video:
                raise NoVideoStreamError(path, "no video stream in the container")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            frames = _decode_frames(container, stream, path)
            declared = stream.average_rate or stream.guessed_rate
            self.source_fps = float(declared) if declared else 0.0
            step = 1 / Fraction(declared) if declared else 1 / _FALLBACK_FPS
            convert = _RGBConverter()
            rate = Fraction(fps).limit_denominator(_MAX_RATE_DENOMINATOR) if fps is not None else None
            picker = _WindowPicker(rate, self.frame_pick) if rate is not None else None  # type: ignore[arg-type]
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
                    if self.with_audio:
                        self._track = _Soundtrack(path, float(t0), self.audio_rate)
                last = _Decoded(index, time - t0, float(time), frame)
                last_step = Fraction(frame.duration) * frame.time_base if frame.duration and frame.time_base else step
                for item in picker.push(last) if picker is not None else [last]:
                    yield self._sampled(item, convert)
                    if max_frames is not None and self.num_frames >= max_frames:
                        break
                if self.progress is not None:
                    self.progress(1)
                if max_frames is not None and self.num_frames >= max_frames:
                    reached_end = False
                    break
            if last is None:
                raise EmptyVideoError(path, "the video stream has no decodable frames")
            # Duration up to the end of the last decoded frame; unknown (and not needed) when decoding stopped early.
            duration = last.rel + last_step if reached_end else None
            if not declared:
                self.source_fps = _estimate_fps(last)
            if picker is not None and duration is not None:
                for item in picker.finish(duration):
                    yield self._sampled(item, convert)
            self.span_s = self.num_frames / fps if fps is not None else float(last.rel + last_step)
        finally:
            if frames is not None:
                frames.close()  # finish the decode generator before its container goes away
            container.close()
        if self._track is not None:
            covered_s = min(self.span_s, float(duration)) if duration is not None else self.span_s
            self.audio, self.audio_padded = self._track.finish(self.span_s, covered_s)
        self.finished = True

    def _folder(self) -> Iterator[SampledFrame]:
        folder, fps = self.path, self.folder_fps
        files = _folder_frames(folder)
        if not files:
            raise EmptyVideoError(folder, f"no frames ({', '.join(sorted(_FRAME_SUFFIXES))}) in the folder")
        files = files[: self.max_frames]
        self.span_s = len(files) / fps
        if self.with_audio:
            # A folder's soundtrack is a separate sound file, read whole (folders of frames are benchmark clips).
            wave, self.audio_padded = _folder_audio_track(folder, self.audio_path, len(files), fps, self.audio_rate)
            self._track = _Soundtrack.of(wave)
        shape = None
        for index, file in enumerate(files):
            image = read_rgb(file)
            if shape is not None and image.shape != shape:
                raise CorruptMediaError(
                    file,
                    f"frame size {image.shape[1]}x{image.shape[0]} differs from {files[0].name}'s "
                    f"{shape[1]}x{shape[0]}",
                )
            shape = image.shape
            frame = SampledFrame(
                index, torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), index / fps, index
            )
            self.num_frames += 1
            yield frame
            if self.progress is not None:
                self.progress(1)
        if self._track is not None:
            self.audio = self._track.upto(samples_for(self.span_s, self.audio_rate))
        self.finished = True


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

    All sampled frames are held at full resolution; :class:`VideoReader` hands them on one at a time instead (this
    function collects it).

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
    reader = VideoReader(
        path,
        fps=fps,
        frame_pick=frame_pick,
        max_frames=max_frames,
        audio=audio,
        audio_rate=audio_rate,
        folder_fps=folder_fps,
        audio_path=audio_path,
        progress=progress,
    )
    return reader.clip(list(reader))


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


class VideoWriter:
    """Encodes frames pushed one at a time, and the sound pushed beside them, into a video file, atomically.

    ``.mp4``/``.m4v``/``.mov``/``.mkv`` get h264 (yuv420p) + AAC, ``.webm`` gets VP9 + Opus. The frame size is the
    first frame's; odd sizes are padded to even by repeating the last row or column, since 4:2:0 chroma needs even
    sizes. Sound is encoded in 1024-sample frames as it comes (push it in step with the frames, so the two stay
    interleaved in the file); a partial last frame is encoded on :meth:`close`. The file is written to a temporary
    name in the same folder and renamed into place by :meth:`close`; leaving the ``with`` block by an exception (or
    calling :meth:`discard`) removes it, so a failure never leaves a half-written (or clobbered) output.

    Args:
        path: destination file; its suffix picks the format.
        fps: frame rate.
        audio_rate: rate in Hz of the sound pushed with :meth:`write_audio`; ``None``: no audio track.
        audio_channels: 1 (mono) or 2 (stereo).
        crf: constant-rate factor of the video encoder (lower is better quality; 23 is x264's default).
    """

    _AUDIO_CHUNK = 1024

    def __init__(
        self, path: str | Path, fps: float, *, audio_rate: int | None = None, audio_channels: int = 1, crf: int = 23
    ) -> None:
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in _WRITERS:
            raise ValueError(f"write_video: {path}: unsupported suffix {suffix!r}, expected one of {sorted(_WRITERS)}")
        if not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"write_video: fps must be positive, got {fps}")
        if not 0 <= crf <= 63:
            raise ValueError(f"write_video: crf must be in [0, 63], got {crf}")
        if audio_rate is not None and audio_rate <= 0:
            raise ValueError(f"write_video: audio_rate must be positive, got {audio_rate}")
        self.path = path
        self.muxer, self.video_codec, self.audio_codec = _WRITERS[suffix]
        if audio_rate is not None and self.audio_codec == "libopus" and audio_rate not in _OPUS_RATES:
            raise ValueError(f"write_video: {path}: Opus takes {_OPUS_RATES} Hz, got {audio_rate} (resample first)")
        self.rate = Fraction(fps).limit_denominator(1001)
        self.crf = crf
        self.audio_rate = audio_rate
        self.layout = "mono" if audio_channels == 1 else "stereo"
        self.frames = 0
        self._stack = contextlib.ExitStack()
        self._tmp = self._stack.enter_context(atomic_file(path, suffix=f".tmp{suffix}"))
        self._container: av.container.OutputContainer | None = None
        self._video = None
        self._audio = None
        self._pending = np.zeros((audio_channels, 0), np.float32)  # pushed, not yet encoded
        self._audio_pos = 0
        self._closed = False

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, kind: type | None, *rest: object) -> None:
        if kind is None:
            self.close()
        else:
            self.discard()

    def _open(self, height: int, width: int) -> None:
        options = {"crf": str(self.crf)}
        if self.video_codec == "libvpx-vp9":
            options.update({"b": "0", "deadline": "realtime", "cpu-used": "8"})  # constant quality, fast
        self._container = av.open(str(self._tmp), mode="w", format=self.muxer)
        self._video = self._container.add_stream(self.video_codec, rate=self.rate, options=options)
        self._video.height, self._video.width = height, width
        self._video.pix_fmt = "yuv420p"
        if self.audio_rate is not None:
            self._audio = self._container.add_stream(self.audio_codec, rate=self.audio_rate, layout=self.layout)

    def write(self, frame: np.ndarray | torch.Tensor) -> None:
        """Encode one ``uint8`` frame, ``(H, W, 3)`` or ``(3, H, W)`` (the rule of :func:`write_video`)."""
        image = _as_thwc(frame[None])[0]
        height, width = image.shape[0] + image.shape[0] % 2, image.shape[1] + image.shape[1] % 2
        if (height, width) != image.shape[:2]:
            image = np.pad(image, ((0, height - image.shape[0]), (0, width - image.shape[1]), (0, 0)), mode="edge")
        if self._container is None:
            self._open(height, width)
        elif (height, width) != (self._video.height, self._video.width):
            raise ShapeError(
                f"write_video: frame {self.frames} is {width}x{height}, the first was "
                f"{self._video.width}x{self._video.height}"
            )
        av_frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        av_frame.pts = self.frames
        self._container.mux(self._video.encode(av_frame))
        self.frames += 1
        self._encode_audio(final=False)

    def write_audio(self, samples: np.ndarray) -> None:
        """Append float samples in ``[-1, 1]``, ``(N,)`` mono or ``(C, N)``, to the audio track."""
        if self.audio_rate is None:
            raise ValueError(f"write_video: {self.path} was opened without an audio track (audio_rate=None)")
        wave = _as_channels_first(samples)
        if wave.shape[0] != self._pending.shape[0]:
            raise ShapeError(f"write_video: audio has {wave.shape[0]} channel(s), the track {self._pending.shape[0]}")
        self._pending = np.concatenate([self._pending, wave], axis=1)
        self._encode_audio(final=False)

    def _encode_audio(self, *, final: bool) -> None:
        """Encode the pending sound in whole chunks (a partial one only at the very end)."""
        if self._audio is None or self._container is None:
            return
        chunk = self._AUDIO_CHUNK
        pos = 0
        while self._pending.shape[1] - pos >= chunk or (final and pos < self._pending.shape[1]):
            piece = np.ascontiguousarray(self._pending[:, pos : pos + chunk])
            frame = av.AudioFrame.from_ndarray(piece, format="fltp", layout=self.layout)
            frame.sample_rate = self.audio_rate
            frame.pts = self._audio_pos
            frame.time_base = Fraction(1, self.audio_rate)
            self._container.mux(self._audio.encode(frame))
            pos += piece.shape[1]
            self._audio_pos += piece.shape[1]
        self._pending = self._pending[:, pos:]

    def close(self) -> Path:
        """Flush the encoders and put the file in place; returns its path (again when already closed)."""
        if self._closed:
            return self.path
        if self._container is None:
            self.discard()
            raise ShapeError(f"write_video: {self.path}: no frame was written")
        try:
            self._container.mux(self._video.encode(None))
            if self._audio is not None:
                self._encode_audio(final=True)
                self._container.mux(self._audio.encode(None))
            self._container.close()
            self._container = None
        except BaseException:
            self.discard()
            raise
        self._stack.close()  # the rename
        self._closed = True
        return self.path

    def discard(self) -> None:
        """Stop and remove the temporary file; the destination is left as it was."""
        if self._closed:
            return
        self._closed = True
        if self._container is not None:
            with contextlib.suppress(Exception):
                self._container.close()
            self._container = None
        self._stack.__exit__(RuntimeError, RuntimeError("discarded"), None)


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
    """Encode frames (and optional audio) to a video file, atomically, with :class:`VideoWriter`.

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
    if audio_rate <= 0:
        raise ValueError(f"write_video: audio_rate must be positive, got {audio_rate}")
    video = _as_thwc(frames)
    wave = _as_channels_first(audio) if audio is not None else None
    if wave is not None and _WRITERS[suffix][2] == "libopus" and audio_rate not in _OPUS_RATES:
        wave, audio_rate = resample(wave, audio_rate, 48_000), 48_000
    channels = wave.shape[0] if wave is not None else 1
    with VideoWriter(
        path, fps, audio_rate=audio_rate if wave is not None else None, audio_channels=channels, crf=crf
    ) as writer:
        pos = 0
        for index, image in enumerate(video):
            writer.write(image)
            if wave is not None:
                until = min(wave.shape[1], math.ceil((index + 1) / writer.rate * audio_rate))
                writer.write_audio(wave[:, pos:until])
                pos = max(pos, until)
            if progress is not None:
                progress(1)
        if wave is not None:
            writer.write_audio(wave[:, pos:])
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


class _Soundtrack:
    """The first audio stream of a file as mono at ``rate``, sample 0 at the video's first frame ``start_s``.

    It is decoded in one pass when the reader meets the first frame; every decoded chunk is averaged to mono and
    resampled at once (:class:`_StreamResampler`), so the native-rate track (44.1/48 kHz, often stereo) is never held
    whole. Held: the ``rate`` samples, in a buffer that grows by doubling.
    """

    def __init__(self, path: Path | None, start_s: float, rate: int) -> None:
        self.path = path
        self.rate = rate
        self._wave = np.zeros(0, np.float32)
        self._size = 0
        self.present = False
        self.native_rate = rate
        self.native_samples = 0  # native samples after alignment, for the padding report
        self.lead_s = 0.0  # silence put in front of audio that starts after the first frame
        if path is not None:
            self._decode(path, start_s)

    @classmethod
    def of(cls, wave: np.ndarray) -> _Soundtrack:
        """A track already decoded and fitted (a frame folder's sound file)."""
        track = cls(None, 0.0, 0)
        track._append(np.asarray(wave, np.float32))
        return track

    def _append(self, chunk: np.ndarray) -> None:
        if self._size + chunk.size > self._wave.size:
            grown = np.zeros(max(2 * self._wave.size, self._size + chunk.size), np.float32)
            grown[: self._size] = self._wave[: self._size]
            self._wave = grown
        self._wave[self._size : self._size + chunk.size] = chunk
        self._size += chunk.size

    def _decode(self, path: Path, start_s: float) -> None:
        container = open_container(path)
        try:
            if not container.streams.audio:
                return
            self.present = True
            stream = container.streams.audio[0]
            if stream.duration is not None and stream.time_base is not None:  # reserve the whole track at once
                self._wave = np.zeros(math.ceil(float(stream.duration * stream.time_base) * self.rate) + 1, np.float32)
            resampler: _StreamResampler | None = None
            skip = 0
            for chunk, native, chunk_start_s in _audio_chunks(container, path):
                if resampler is None:
                    self.native_rate = native
                    resampler = _StreamResampler(native, self.rate)
                    # Align sample 0 with the first video frame: drop audio before it (AAC priming shows up as
                    # negative times), put silence in front of audio that starts later.
                    offset = samples_for(abs(chunk_start_s - start_s), native)
                    if chunk_start_s > start_s and offset:
                        self.lead_s = offset / native
                        self.native_samples += offset
                        self._append(np.clip(resampler.push(np.zeros(offset, np.float32)), -1.0, 1.0))
                    else:
                        skip = offset
                if skip:
                    dropped = min(skip, chunk.size)
                    chunk, skip = chunk[dropped:], skip - dropped
                self.native_samples += chunk.size
                self._append(np.clip(resampler.push(chunk), -1.0, 1.0))
            if resampler is not None:
                self._append(np.clip(resampler.flush(), -1.0, 1.0))
        finally:
            container.close()

    def upto(self, num_samples: int) -> np.ndarray:
        """The first ``num_samples`` samples, silence past the decoded audio (a view, not a copy)."""
        if num_samples > self._size:
            self._append(np.zeros(num_samples - self._size, np.float32))
        return self._wave[:num_samples]

    def finish(self, span_s: float, covered_s: float) -> tuple[np.ndarray, bool]:
        """The track over ``span_s`` seconds, and whether silence was added where the video has picture.

        ``covered_s`` (at most ``span_s``) is how much of the span the video itself covers: silence added beyond it
        (the half-covered trailing window) is expected and does not count as padding.
        """
        num_samples = samples_for(span_s, self.rate)
        path = self.path
        if not self.present:
            warnings.warn(f"{path}: no audio track; using {span_s:.3f} s of silence", AudioPaddedWarning, stacklevel=2)
            return np.zeros(num_samples, np.float32), True
        native = self.native_rate
        kept = min(self.native_samples, math.ceil(span_s * native) + 1)
        missing_s = self.lead_s + max(0.0, covered_s - kept / native)
        padded = missing_s > _AUDIO_TOLERANCE_S
        if padded:
            warnings.warn(
                f"{path}: audio is missing for {missing_s:.3f} s of the {covered_s:.3f} s clip; padded with silence",
                AudioPaddedWarning,
                stacklevel=2,
            )
        return self.upto(num_samples), padded  # a view: the track is held once


class _StreamResampler:
    """:func:`~avseg.media.resample.resample` of a signal given in chunks, with the same result as on the whole.

    The polyphase filter reads ``10 * max(up, down) / up`` input samples on each side of an output sample, so each
    block of input is resampled with a margin of real neighbours on both sides (silence before the start, as
    ``resample_poly`` pads), and the outputs of the margins are dropped. Blocks start on multiples of ``down`` input
    samples, where the output grid has a sample, so the blocks' outputs join into the whole signal's.
    """

    _BLOCK = 1 << 16  # input samples resampled per call

    def __init__(self, orig_sr: int, target_sr: int) -> None:
        g = math.gcd(orig_sr, target_sr)
        self.up, self.down = target_sr // g, orig_sr // g
        self.same = orig_sr == target_sr
        reach = 10 * max(self.up, self.down) // self.up + 2
        self.margin = math.ceil(reach / self.down) * self.down  # input samples, a multiple of down
        self.block = max(1, self._BLOCK // self.down) * self.down
        self._buffer = np.zeros(self.margin, np.float32)  # left context, then samples not yet resampled

    def push(self, chunk: np.ndarray) -> np.ndarray:
        if self.same:
            return np.asarray(chunk, np.float32)
        self._buffer = np.concatenate([self._buffer, np.asarray(chunk, np.float32)])
        outputs = []
        skip = self.margin * self.up // self.down
        while self._buffer.size >= 2 * self.margin + self.block:
            segment = self._buffer[: 2 * self.margin + self.block]
            outputs.append(_poly(segment, self.up, self.down)[skip : skip + self.block * self.up // self.down])
            self._buffer = self._buffer[self.block :]
        return np.concatenate(outputs) if outputs else np.zeros(0, np.float32)

    def flush(self) -> np.ndarray:
        """The rest, with silence after the end (as ``resample_poly`` pads)."""
        if self.same or self._buffer.size <= self.margin:
            return np.zeros(0, np.float32)
        skip = self.margin * self.up // self.down
        rest = self._buffer.size - self.margin
        return _poly(self._buffer, self.up, self.down)[skip : skip + math.ceil(rest * self.up / self.down)]


def _poly(segment: np.ndarray, up: int, down: int) -> np.ndarray:
    from scipy.signal import resample_poly

    return resample_poly(segment, up, down).astype(np.float32)


def _audio_chunks(container: av.container.InputContainer, path: Path) -> Iterator[tuple[np.ndarray, int, float]]:
    """Decoded chunks of the first audio stream as mono float32 ``(n,)`` at the native rate, with the rate and the
    time of the first sample (0.0 when the stream gives none); errors say where they happened."""
    stream = container.streams.audio[0]
    rate = 0
    start_s: float | None = None
    end_s = 0.0
    try:
        for frame in container.decode(stream):
            if frame.samples == 0:
                continue
            if rate == 0:
                rate = frame.sample_rate
            elif frame.sample_rate != rate:
                raise CorruptMediaError(
                    path, f"audio changes format mid-stream at t={end_s:.3f} s ({rate} Hz -> {frame.sample_rate} Hz)"
                )
            if start_s is None:
                time_base = frame.time_base or stream.time_base
                start_s = float(frame.pts * time_base) if frame.pts is not None and time_base is not None else 0.0
            chunk = frame_to_float(frame, path).mean(axis=0, dtype=np.float32)  # (n,)
            end_s += frame.samples / rate
            yield chunk, rate, start_s
    except av.error.FFmpegError as err:
        raise CorruptMediaError(path, f"audio decode failed near t={end_s:.3f} s: {err}") from err


def _folder_audio_track(
    folder: Path, audio_path: str | Path | None, count: int, fps: float, rate: int
) -> tuple[np.ndarray, bool]:
    """The sound of a frame folder over its ``count`` frames at ``fps``, padded with silence (and a warning)."""
    span_s = count / fps
    num_samples = samples_for(span_s, rate)
    audio_file = _folder_audio(folder, audio_path)
    if audio_file is None:
        warnings.warn(
            f"{folder}: no audio file ({_FOLDER_AUDIO_NAME} in the folder or its parent); "
            f"using {span_s:.3f} s of silence",
            AudioPaddedWarning,
            stacklevel=4,
        )
        return np.zeros(num_samples, np.float32), True
    wave = read_audio(audio_file, rate, mono=True)[0]
    padded = num_samples - wave.size > _AUDIO_TOLERANCE_S * rate
    if padded:
        warnings.warn(
            f"{audio_file}: audio is {wave.size / rate:.3f} s long, padded with silence to the "
            f"{span_s:.3f} s of {count} frames at {fps} fps",
            AudioPaddedWarning,
            stacklevel=4,
        )
    return np.pad(wave[:num_samples], (0, max(0, num_samples - wave.size))), padded


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
