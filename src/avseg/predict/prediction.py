"""The masks of one video and what is written from them: mask PNGs, an overlay video, a settings record.

- ``{k:05d}.png`` for sampled frame ``k`` (0-based, in time order; the settings map ``k`` to its time and source
  frame): binary 0/255 greyscale, or for semantic models a palette PNG that stores the class ids and shows the
  AVSBench colours. Every PNG has the video's size.
- The overlay video. By default it runs **at the sampled rate**: one frame per sampled frame, shown for its whole
  window, so it shows exactly the frames the model saw; its duration is ``T_total / fps`` and the original audio of
  those windows is muxed unchanged, so sound and picture stay in sync and have the same length. With ``overlay_fps``
  the video is decoded again at that rate (every source frame when ``overlay_fps`` reaches the source rate) and each
  frame gets the mask of the sampled window containing it: smooth playback, same sound. A video without an audio
  stream gives an overlay without an audio track (a silent track would suggest there was sound).
- :meth:`Prediction.settings`: how the prediction was made (fps, frame_pick, clip length, threshold, text, audio
  rule), per-frame timestamps, source frame indices and foreground fractions, ready for JSON.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from torch import Tensor

from avseg import __version__
from avseg.audio.alignment import window_index
from avseg.audio.logmel import SAMPLE_RATE
from avseg.data.benchmarks import AVSS_NUM_CLASSES
from avseg.errors import AudioPaddedWarning
from avseg.media.audio import samples_for
from avseg.media.video import VideoReader, VideoWriter, probe_video, write_video
from avseg.predict.settings import positive_float
from avseg.progress import Progress
from avseg.viz import overlay_masks, write_mask_png

__all__ = ["OVERLAY_SUFFIXES", "OverlayWriter", "Prediction", "PredictionSummary", "write_overlay_from_masks"]

OVERLAY_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm")
"""Suffixes :func:`~avseg.media.video.write_video` encodes; checked before the model runs, not after."""


@dataclass(kw_only=True)
class PredictionSummary:
    """How the masks of one video were made and what they found, without the masks: what ``avseg predict`` records
    when it streams the masks to files, and the part of a :class:`Prediction` that :meth:`settings` describes.

    Attributes:
        kind: ``"binary"`` or ``"semantic"``.
        num_classes: the model's mask channels ``K`` (1 for binary).
        size: ``(H, W)`` of the video and of the masks.
        timestamps: float64 ``(T,)`` presentation time (s) of each sampled frame.
        source_indices: int64 ``(T,)`` index of each sampled frame in the source video.
        foreground: float64 ``(T,)`` fraction of foreground pixels per frame.
        fps: sampling rate (windows per second); frame ``k`` stands for ``[k / fps, (k + 1) / fps)``.
        frame_pick: the frame-picking rule used (``"all"`` for a folder of frames).
        clip_len: frames per model clip.
        num_clips: forward clips run.
        threshold: binary threshold on the sigmoid (unused by semantic models).
        text: the referring expression, if any.
        audio_align: the audio rule (``"window"`` or ``"clip"``).
        has_audio: the source has an audio stream.
        audio_padded: silence was added to the source's audio.
        source_fps: frame rate of the source video.
        video_path: the input, when it was a file or folder.
        elapsed_s: wall time of the forward passes and mask upsampling (decoding and writing excluded).
        device: the device the model ran on.
        image_size: ``(h, w)`` the model's input size.
        extra: more settings to record (the prompt, the object ids, a lowered rate, and the answers an MLLM segmenter
            wrote with ``answer_mode = "generate"``: ``{"frames": [first, last], "answer": text}`` per clip it ran).
    """

    kind: Literal["binary", "semantic"]
    num_classes: int
    size: tuple[int, int]
    timestamps: np.ndarray
    source_indices: np.ndarray
    foreground: np.ndarray
    fps: float
    frame_pick: str
    clip_len: int
    num_clips: int
    threshold: float
    text: str | None
    audio_align: str
    has_audio: bool
    audio_padded: bool
    source_fps: float
    video_path: Path | None = None
    elapsed_s: float = 0.0
    device: str = "cpu"
    image_size: tuple[int, int] = (0, 0)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return len(self.timestamps)

    def settings(self) -> dict[str, Any]:
        """JSON-ready description of how the prediction was made and what it found."""
        return {
            "avseg_version": __version__,
            "video": str(self.video_path) if self.video_path is not None else None,
            "video_size": list(self.size),
            "source_fps": self.source_fps,
            "fps": self.fps,
            "frame_pick": self.frame_pick,
            "clip_len": self.clip_len,
            "num_frames": self.num_frames,
            "num_clips": self.num_clips,
            "image_size": list(self.image_size),
            "kind": self.kind,
            "num_classes": self.num_classes,
            "threshold": self.threshold if self.kind == "binary" else None,
            "text": self.text,
            "audio_align": self.audio_align,
            "has_audio": self.has_audio,
            "audio_padded": self.audio_padded,
            "device": self.device,
            "elapsed_s": round(self.elapsed_s, 4),
            "mean_foreground": float(self.foreground.mean()) if self.foreground.size else 0.0,
            "timestamps": [round(float(t), 6) for t in self.timestamps],
            "source_indices": [int(i) for i in self.source_indices],
            "foreground": [round(float(v), 6) for v in self.foreground],
            **self.extra,
        }


@dataclass(kw_only=True)
class Prediction(PredictionSummary):
    """Masks for the sampled frames of one video, held in memory, with everything needed to render and describe
    them (:meth:`~avseg.predict.predictor.Predictor.predict_video`; ``avseg predict`` streams to files instead).

    Attributes (besides :class:`PredictionSummary`'s):
        masks: ``uint8`` ``(T, H, W)`` at the video's resolution: 0/1 for binary models, class ids for semantic ones.
        frames: ``uint8`` ``(T, 3, H, W)`` the sampled frames.
        audio: float32 ``(N,)`` 16 kHz mono spanning the ``T`` windows (silence where the video had none).
    """

    masks: Tensor
    frames: Tensor
    audio: np.ndarray | None

    def write_masks(self, folder: str | Path, *, progress: bool = False) -> list[Path]:
        """Write ``folder/{k:05d}.png`` for every sampled frame (binary 0/255 or AVSS palette; see the module doc).

        ``progress`` shows the count of PNGs written on stderr.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        masks = self.masks.numpy()
        num_classes = max(self.num_classes, AVSS_NUM_CLASSES)  # the AVSS palette also for fewer classes
        files = []
        with Progress("writing masks", self.num_frames, "PNG", enabled=progress) as bar:
            for k in range(self.num_frames):
                files.append(write_mask_png(folder / f"{k:05d}.png", masks[k], kind=self.kind, num_classes=num_classes))
                bar.update()
        return files

    def write_overlay(
        self,
        path: str | Path,
        *,
        overlay_fps: float | None = None,
        crf: int = 23,
        progress: bool = False,
        **style: Any,
    ) -> dict[str, Any]:
        """Encode the overlay video, keeping the original audio (see the module docstring for the two rates).

        Args:
            path: destination (a suffix of :data:`OVERLAY_SUFFIXES`).
            overlay_fps: ``None``: one frame per sampled frame, at the sampling rate. A rate: decode the video again
                at that rate (every frame when it reaches the source rate) and show each frame with the mask of its
                window; needs ``video_path``.
            crf: encoder quality.
            progress: show the frames encoded on stderr.
            **style: ``colors``, ``alpha``, ``contour`` of :func:`~avseg.viz.overlay_masks`.

        Returns:
            What was written: ``{"path", "fps", "frames", "duration_s", "audio"}``.
        """
        if overlay_fps is not None:
            # Streamed: the video is decoded again frame by frame, never held whole (at its source rate a long
            # video would not fit in memory).
            masks = self.masks
            return write_overlay_from_masks(
                path, self, lambda k: masks[k], overlay_fps, crf=crf, progress=progress, **style
            )
        audio = self.audio if self.has_audio else None
        count = self.num_frames
        # viz.write_overlay_video, in two steps so that the encoding can report its progress.
        painted = overlay_masks(self.frames, self.masks, kind=self.kind, **style)
        with Progress(f"writing {Path(path).name}", count, "frame", enabled=progress) as bar:
            write_video(path, painted, self.fps, audio=audio, audio_rate=SAMPLE_RATE, crf=crf, progress=bar.update)
        return {
            "path": str(path),
            "fps": self.fps,
            "frames": count,
            "duration_s": count / self.fps,
            "audio": audio is not None,
        }


class OverlayWriter:
    """The overlay video, painted and encoded one frame at a time with the soundtrack muxed beside the frames.

    Frame ``i`` is shown for ``1 / fps`` s and the sound up to its end is pushed after it, so picture and sound stay
    interleaved; :meth:`close` adds the rest of the track, so the file lasts as long as the track given there.

    Args:
        path: destination (a suffix of :data:`OVERLAY_SUFFIXES`), written atomically.
        fps: frame rate.
        kind: the mask kind, for the colours.
        audio: the soundtrack (``audio_upto(n)``: its first ``n`` samples at 16 kHz), or None for a video without
            sound (no audio track: a silent one would suggest there was sound).
        crf: encoder quality.
        **style: ``colors``, ``alpha``, ``contour`` of :func:`~avseg.viz.overlay_masks`.
    """

    def __init__(
        self,
        path: str | Path,
        fps: float,
        *,
        kind: Literal["binary", "semantic"] | None,
        audio: Any | None,
        crf: int = 23,
        **style: Any,
    ) -> None:
        self.path, self.fps, self.kind, self.audio, self.style = Path(path), fps, kind, audio, style
        self.writer = VideoWriter(path, fps, audio_rate=SAMPLE_RATE if audio is not None else None, crf=crf)
        self.frames = 0
        self._audio_pos = 0

    def __enter__(self) -> OverlayWriter:
        return self

    def __exit__(self, kind: type | None, *rest: object) -> None:
        if kind is not None:
            self.writer.discard()

    def add(self, image: Tensor, mask: Tensor, kind: Literal["binary", "semantic"] | None = None) -> None:
        """Paint ``mask (H, W)`` over ``image (3, H, W)`` and encode it, with the sound up to its end."""
        self.writer.write(overlay_masks(image, mask, kind=kind or self.kind or "auto", **self.style))
        self.frames += 1
        if self.audio is not None:
            self._push_audio(self.audio.audio_upto(samples_for(self.frames / self.fps, SAMPLE_RATE)))

    def _push_audio(self, wave: np.ndarray) -> None:
        if wave.size > self._audio_pos:
            self.writer.write_audio(wave[self._audio_pos :])
            self._audio_pos = wave.size

    def close(self, audio: np.ndarray | None = None) -> dict[str, Any]:
        """Add the rest of the track ``audio`` (the whole track, 16 kHz mono) and put the file in place.

        Returns:
            What was written: ``{"path", "fps", "frames", "duration_s", "audio"}``.
        """
        if audio is not None and self.audio is not None:
            self._push_audio(np.asarray(audio, np.float32))
        self.writer.close()
        return {
            "path": str(self.path),
            "fps": self.fps,
            "frames": self.frames,
            "duration_s": self.frames / self.fps,
            "audio": self.audio is not None,
        }


def write_overlay_from_masks(
    path: str | Path,
    summary: PredictionSummary,
    masks: Callable[[int], Tensor],
    overlay_fps: float,
    *,
    crf: int = 23,
    progress: bool = False,
    **style: Any,
) -> dict[str, Any]:
    """Decode the video again at ``overlay_fps`` (every frame when it reaches the source rate) and encode each frame
    with the mask of the sampled window containing it, streaming: smooth playback of a prediction at a low rate.

    Args:
        path: destination (a suffix of :data:`OVERLAY_SUFFIXES`).
        summary: the prediction (its video file, window rate and count, mask kind, whether there is sound).
        masks: window ``k`` → its mask ``uint8 (H, W)`` (read from the PNGs; each is asked for once, in order).
        overlay_fps: the overlay's rate.
        crf: encoder quality.
        progress: show the frames encoded on stderr.
        **style: ``colors``, ``alpha``, ``contour`` of :func:`~avseg.viz.overlay_masks`.

    Returns:
        What was written, as :meth:`OverlayWriter.close`.
    """
    overlay_fps = positive_float(overlay_fps, "overlay_fps")
    video = summary.video_path
    if video is None or video.is_dir():
        raise ValueError("overlay_fps needs the prediction of a video file (a frame folder has no other frames)")
    every = summary.source_fps > 0 and overlay_fps >= summary.source_fps - 1e-6
    info = probe_video(video)
    reader = VideoReader(video, fps=None if every else overlay_fps, frame_pick="first", audio=True)
    rate = float(summary.source_fps if every else overlay_fps)
    total = math.ceil(info.duration_s * (min(overlay_fps, info.source_fps) if info.source_fps else overlay_fps))
    current: tuple[int, Tensor] | None = None
    t0: float | None = None
    sound = reader if summary.has_audio else None
    with (
        warnings.catch_warnings(),
        Progress(f"writing {Path(path).name}", total or None, "frame", enabled=progress) as bar,
        OverlayWriter(path, rate, kind=summary.kind, audio=sound, crf=crf, **style) as out,
    ):
        warnings.simplefilter("ignore", AudioPaddedWarning)  # already reported when the video was first read
        for frame in reader:
            # "first" (or every frame) makes the first frame's time t0, the origin of the sampled windows.
            t0 = frame.time_s if t0 is None else t0
            window = int(window_index([frame.time_s - t0], summary.fps, summary.num_frames)[0])
            if current is None or current[0] != window:
                current = (window, masks(window))
            out.add(frame.image, current[1])
            bar.update()
        return out.close(reader.audio)
