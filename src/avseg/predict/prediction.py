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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from avseg import __version__
from avseg.audio.alignment import window_index
from avseg.audio.logmel import SAMPLE_RATE
from avseg.data.benchmarks import AVSS_NUM_CLASSES
from avseg.errors import AudioPaddedWarning
from avseg.media.video import probe_video, read_video, write_video
from avseg.predict.memory import check_memory
from avseg.predict.settings import positive_float
from avseg.progress import Progress
from avseg.viz import overlay_masks, write_mask_png

__all__ = ["OVERLAY_SUFFIXES", "Prediction"]

OVERLAY_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm")
"""Suffixes :func:`~avseg.media.video.write_video` encodes; checked before the model runs, not after."""


@dataclass
class Prediction:
    """Masks for the sampled frames of one video, with everything needed to render and describe them.

    Attributes:
        masks: ``uint8`` ``(T, H, W)`` at the video's resolution: 0/1 for binary models, class ids for semantic ones.
        kind: ``"binary"`` or ``"semantic"``.
        num_classes: the model's mask channels ``K`` (1 for binary).
        frames: ``uint8`` ``(T, 3, H, W)`` the sampled frames (shared with the decoded clip, not copied).
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
        audio: float32 ``(N,)`` 16 kHz mono spanning the ``T`` windows (silence where the video had none).
        has_audio: the source has an audio stream.
        audio_padded: silence was added to the source's audio.
        source_fps: frame rate of the source video.
        video_path: the input, when it was a file or folder.
        elapsed_s: wall time of the forward passes and mask upsampling (decoding and writing excluded).
        device: the device the model ran on.
        image_size: ``(h, w)`` the model's input size.
    """

    masks: Tensor
    kind: Literal["binary", "semantic"]
    num_classes: int
    frames: Tensor
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
    audio: np.ndarray | None
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
        return int(self.masks.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of the video and of the masks."""
        return int(self.masks.shape[1]), int(self.masks.shape[2])

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
            progress: show the progress of decoding (with ``overlay_fps``) and encoding on stderr.
            **style: ``colors``, ``alpha``, ``contour`` of :func:`~avseg.viz.overlay_masks`.

        Returns:
            What was written: ``{"path", "fps", "frames", "duration_s", "audio"}``.
        """
        if overlay_fps is None:
            frames, masks, rate, audio = self.frames, self.masks, self.fps, self.audio
        else:
            frames, masks, rate, audio = self._resampled_for_overlay(overlay_fps, progress=progress)
        audio = audio if self.has_audio else None
        count = int(frames.shape[0])
        # viz.write_overlay_video, in two steps so that the encoding can report its progress.
        painted = overlay_masks(frames, masks, kind=self.kind, **style)
        with Progress(f"writing {Path(path).name}", count, "frame", enabled=progress) as bar:
            write_video(path, painted, rate, audio=audio, audio_rate=SAMPLE_RATE, crf=crf, progress=bar.update)
        return {"path": str(path), "fps": rate, "frames": count, "duration_s": count / rate, "audio": audio is not None}

    def _resampled_for_overlay(
        self, overlay_fps: float, *, progress: bool = False
    ) -> tuple[Tensor, Tensor, float, np.ndarray | None]:
        overlay_fps = positive_float(overlay_fps, "overlay_fps")
        if self.video_path is None or self.video_path.is_dir():
            raise ValueError("overlay_fps needs the prediction of a video file (a frame folder has no other frames)")
        every = self.source_fps > 0 and overlay_fps >= self.source_fps - 1e-6
        info = probe_video(self.video_path)
        count = math.ceil(info.duration_s * (min(overlay_fps, info.source_fps) if info.source_fps else overlay_fps))
        height, width = self.size
        check_memory(
            count * height * width * 7,
            f"an overlay of {count} frames at {overlay_fps:g} fps",
            "a lower --overlay-fps, or none (the overlay at the sampled rate)",
        )
        with (
            warnings.catch_warnings(),
            Progress(
                f"decoding {self.video_path.name} for the overlay", info.num_frames or None, "frame", enabled=progress
            ) as bar,
        ):
            warnings.simplefilter("ignore", AudioPaddedWarning)  # already reported when the video was first read
            clip = read_video(
                self.video_path,
                fps=None if every else overlay_fps,
                frame_pick="first",
                audio=True,
                progress=bar.update,
            )
        rate = float(clip.source_fps if every else overlay_fps)
        # "first" (or every frame) makes timestamps[0] the first frame's time t0, the origin of the sampled windows.
        window = window_index(clip.timestamps - clip.timestamps[0], self.fps, self.num_frames)
        return clip.frames, self.masks[torch.from_numpy(window)], rate, clip.audio

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
