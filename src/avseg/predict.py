"""``avseg predict``: run a trained model on any video with its own soundtrack; masks as PNGs plus an overlay video.

No AVS reference repository runs on a user's video (OpenNLPLab/AVSBench#2, cyh-0/CAVP#12); this module does, with
the same sampling conventions the benchmarks use, so a prediction on a benchmark clip matches what ``avseg eval``
feeds the model.

Pipeline
--------
1. **Frames.** :func:`~avseg.media.video.read_video` samples the video at the model's rate (``config.fps``, default
   1 frame/s as in AVSBench and Ref-AVS) with an explicit ``frame_pick`` rule (``"last"``, AVSBench's, by default);
   sampled frame ``k`` stands for window ``k``, the interval ``[k / fps, (k + 1) / fps)`` after the first frame. A rate
   at or above the video's own frame rate takes every source frame once, at the source rate (a higher rate would
   only repeat frames; it is lowered with a :class:`FpsCappedWarning`). The frames are kept at the video's
   resolution (for the outputs) and resized per clip to the model's ``image_size`` (antialiased bilinear, as the
   dataset readers do).
2. **Clips.** The sampled frames are cut into consecutive clips of the model's clip length ``T`` (``config.num_frames``,
   default 10). The last clip, when shorter, is padded by :func:`~avseg.data.types.collate` with invalid frames
   (``frame_valid = False``) and the outputs of the padding are dropped. Clips are independent forward passes (a
   model keeps no memory from one clip to the next), run ``batch_size`` at a time; only the current clips are resized
   and only uint8 masks are kept, so memory grows with the sampled frames, not with the model's outputs. The sampled
   frames are held at full resolution (``T x H x W x 3`` bytes: a minute of 1080p at 1 fps is 373 MB); a run whose
   frames, masks and overlay would not fit in the available memory is refused before decoding, with a message.
3. **Audio.** The soundtrack comes with the frames (16 kHz mono; sample 0 is the start of window 0; a missing or
   short track is padded with silence and an :class:`~avseg.errors.AudioPaddedWarning`). Each sampled frame gets one
   VGGish log-mel example (96 frames of 10 ms, i.e. 15,600 samples = 0.975 s) by one of two rules
   (``audio_align``):

   - ``"window"`` (default): the example is **centred on the frame's window**: it starts at STFT frame
     ``j_k = floor(((k + 0.5) / fps * 16000 - 7800) / 160 + 0.5)``, clamped to ``[0, F - 96]`` where ``F`` is the
     number of STFT frames of the whole track. At 1 fps that is samples ``[16000 k + 160, 16000 k + 15760)``, inside
     second ``k``. Windows shorter than 0.975 s (``fps > 1.025``) get overlapping examples; near the end of the video
     the clamp shifts the example back so it never reads past the audio. A track shorter than 0.975 s is padded
     with silence to one example. This rule does not depend on where clips start, so the clip length never changes
     what a frame hears.
   - ``"clip"``: the layout of the benchmark readers (AVSBench preprocessing): the audio of each clip's windows is cut
     into consecutive examples from the clip's start (example ``i`` starts at ``0.96 i`` s), and a clip with fewer
     examples than frames repeats its last one. At 1 fps and ``T`` equal to the training clip length this is
     exactly what the model saw in training; example ``i`` then drifts ahead of window ``i`` by ``0.04 i`` s.

4. **Masks.** The logits of each kept frame are upsampled bilinearly to the video's resolution, then thresholded
   (``sigmoid > threshold``, binary models, ``K = 1``) or arg-maxed over classes (semantic models, ``K > 1``).

Outputs of the ``predict`` command
----------------------------------
- ``masks_dir/{k:05d}.png`` for sampled frame ``k`` (0-based, in time order; the sidecar maps ``k`` to its time and
  source frame): binary 0/255 greyscale, or for semantic models a palette PNG that stores the class ids and shows
  the AVSBench colours. Every PNG has the video's size.
- The overlay video ``out``. By default it runs **at the sampled rate**: one frame per sampled frame, shown for its
  whole window, so it shows exactly the frames the model saw; its duration is ``T_total / fps`` and the original
  audio of those windows is muxed unchanged, so sound and picture stay in sync and have the same length. With
  ``overlay_fps`` the video is decoded again at that rate (every source frame when ``overlay_fps`` reaches the
  source rate) and each frame gets the mask of the sampled window containing it: smooth playback, same sound.
  A video without an audio stream gives an overlay without an audio track (a silent track would suggest there was
  sound); the model then hears silence, with a warning.
- ``out.with_suffix(".json")``: the settings (checkpoint, preset, fps, frame_pick, clip length, threshold, text, audio
  rule), per-frame timestamps, source frame indices and foreground fractions.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avseg import __version__
from avseg.audio.logmel import (
    EXAMPLE_FRAMES,
    HOP_LENGTH,
    SAMPLE_RATE,
    frame_count,
    log_mel_spectrogram,
    min_samples_for,
    pad_or_trim_examples,
    waveform_to_examples,
)
from avseg.checkpoint import resolve_checkpoint
from avseg.data.base import resize_frames, to_size
from avseg.data.types import AVSSample, collate
from avseg.device import resolve_device
from avseg.errors import AudioPaddedWarning, AVSegError, AVSegWarning, MissingFileError, UsageError
from avseg.fileio import atomic_write_text, check_output_dir, check_output_file
from avseg.media.audio import samples_for
from avseg.media.video import FramePick, VideoClip, probe_video, read_video, write_video
from avseg.viz import overlay_masks, write_mask_png

__all__ = [
    "DEFAULT_CLIP_LEN",
    "DEFAULT_FPS",
    "OVERLAY_SUFFIXES",
    "AudioAlign",
    "FpsCappedWarning",
    "Prediction",
    "Predictor",
    "TextRequiredError",
    "clip_audio_examples",
    "model_defaults",
    "model_requires_text",
    "predict",
    "training_data_format",
    "window_audio_examples",
    "window_example_starts",
]

AudioAlign = Literal["window", "clip"]

DEFAULT_CLIP_LEN = 10
"""Clip length used when a model config has no ``num_frames`` (AVSS and Ref-AVS clips are 10 frames)."""
DEFAULT_FPS = 1.0
"""Sampling rate used when a model config has no ``fps`` (AVSBench and Ref-AVS are sampled at 1 frame/s)."""

OVERLAY_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm")
"""Suffixes :func:`~avseg.media.video.write_video` encodes; checked before the model runs, not after."""

_EXAMPLE_SAMPLES = min_samples_for(1)  # 15,600 samples: 96 STFT frames of 400 samples with a 160-sample hop
# Upsampled logits held at once: bounds memory for 71-class models on large videos (71 x 1080p is ~590 MB a frame).
_UPSAMPLE_BUDGET = 64 * 1024 * 1024  # elements (256 MB of float32)
# Relative slack when comparing a sampling rate with the source rate (both floats from rationals such as 30000/1001).
_RATE_TOLERANCE = 1e-9
# Seconds between two progress lines when stderr is not a terminal (a log file, CI): often enough to see that a long
# run moves, rarely enough that an hour-long phase writes 240 lines, not one per frame.
_LOG_INTERVAL_S = 15.0


class TextRequiredError(AVSegError):
    """The model segments the object named by a referring expression, and none was given."""


class FpsCappedWarning(AVSegWarning):
    """The requested sampling rate was above the video's frame rate and was lowered to it (every frame, once)."""


# --------------------------------------------------------------------------------------------------------------------
# Model facts


_AVS_TASKS = frozenset({"s4", "ms3", "avss", "avs"})
_TEXT_FORMATS = frozenset({"refavs", "rvos"})


def model_requires_text(model: nn.Module, data_format: str | None = None) -> bool:
    """Whether a model must be given a referring expression (``batch.text``) to run.

    In order: the model's own declaration (a bool attribute or property ``uses_text``) wins. A model without a text
    branch (no :class:`~avseg.layers.text.TextEncoderConfig` anywhere in its config, no true ``use_text`` flag)
    needs none. A model with one needs text when it was trained on a referring benchmark (``data_format``
    ``refavs`` or ``rvos``), or, when the training data is unknown, when its registered preset serves no AVSBench
    task (``s4``, ``ms3``, ``avss``): presets such as ``tpavi-tiny`` serve both and run without text too.

    Args:
        model: the model.
        data_format: the benchmark format it was trained on, if known (see :func:`training_data_format`).
    """
    declared = getattr(model, "uses_text", None)
    if isinstance(declared, bool):
        return declared
    if not _has_text_branch(getattr(model, "config", None)):
        return False
    if data_format is not None:
        return data_format in _TEXT_FORMATS
    preset = getattr(model, "preset", None)
    if preset:
        from avseg.models.registry import get_entry

        try:
            tasks = set(get_entry(str(preset)).tasks)
        except ValueError:  # a preset this installation does not know: fall through to "needs text"
            tasks = set()
        return not (tasks & _AVS_TASKS)
    return True


def training_data_format(checkpoint: str | Path) -> str | None:
    """The benchmark format a checkpoint was trained on, when recorded: ``meta.data_format`` in its
    ``config.json``, else ``data.format`` of the training run's ``run_config.yaml`` (``RUN/checkpoints/NAME``)."""
    from avseg.checkpoint import read_checkpoint_config

    folder = Path(checkpoint)
    meta = read_checkpoint_config(folder).get("meta") or {}
    if isinstance(meta.get("data_format"), str):
        return meta["data_format"]
    run_config = folder.parent.parent / "run_config.yaml"
    if run_config.is_file():
        import yaml

        try:
            data = yaml.safe_load(run_config.read_text()) or {}
        except yaml.YAMLError:
            return None
        fmt = (data.get("data") or {}).get("format") if isinstance(data, dict) else None
        return fmt if isinstance(fmt, str) else None
    return None


def _has_text_branch(config: Any) -> bool:
    """A non-None TextEncoderConfig anywhere in a (nested) dataclass config, or a true ``use_text`` flag."""
    if config is None or not dataclasses.is_dataclass(config):
        return False
    from avseg.layers.text import TextEncoderConfig

    if getattr(config, "use_text", None) is True:
        return True
    for f in dataclasses.fields(config):
        value = getattr(config, f.name, None)
        if isinstance(value, TextEncoderConfig) or _has_text_branch(value):
            return True
    return False


def model_defaults(model: nn.Module) -> dict[str, Any]:
    """The sampling settings a model was trained with, from its config (``None`` where it does not say).

    Looks at the top level of the config, then at its ``recipe`` (TPAVI keeps the reader's settings there):
    ``image_size`` (falling back to the model's ``input_size``), ``num_frames`` (clip length) and ``fps``.
    """
    config = getattr(model, "config", None)
    recipe = getattr(config, "recipe", None)

    def find(*names: str) -> Any:
        for holder in (config, recipe):
            for name in names:
                value = getattr(holder, name, None)
                if value is not None:
                    return value
        return None

    return {
        "image_size": find("image_size") or getattr(config, "input_size", None),
        "clip_len": find("num_frames", "clip_len"),
        "fps": find("fps"),
    }


def _model_name(model: nn.Module) -> str:
    preset = getattr(model, "preset", None)
    return str(preset) if preset else f"{type(model).__name__} ({getattr(model, 'family', '?')})"


# --------------------------------------------------------------------------------------------------------------------
# Audio alignment


def window_example_starts(frame_indices: Sequence[int] | np.ndarray, fps: float, num_samples: int) -> np.ndarray:
    """The STFT frame at which each sampled frame's ``"window"`` example starts (see the module docstring).

    Args:
        frame_indices: sampled-frame (window) indices ``k``.
        fps: sampling rate (windows per second).
        num_samples: length of the 16 kHz track (sample 0 = start of window 0); at least one example is assumed.

    Returns:
        int64 ``(n,)`` start frames ``j_k``; the example spans samples ``[160 j_k, 160 j_k + 15600)``.
    """
    k = np.asarray(frame_indices, dtype=np.float64)
    centres = (k + 0.5) / fps * SAMPLE_RATE  # window centres in samples
    starts = np.floor((centres - _EXAMPLE_SAMPLES / 2) / HOP_LENGTH + 0.5).astype(np.int64)
    last = frame_count(max(num_samples, _EXAMPLE_SAMPLES)) - EXAMPLE_FRAMES
    return np.clip(starts, 0, last)


def window_audio_examples(wave: np.ndarray | Tensor, fps: float, frame_indices: Sequence[int] | range) -> Tensor:
    """VGGish examples centred on the windows of the given sampled frames (``audio_align="window"``).

    Only the span of audio those frames need is analysed, so a clip of a long video costs a clip's worth of FFTs; the
    STFT grid is the whole track's (hop 160 from sample 0), so a frame's example does not depend on its clip.

    Args:
        wave: float ``(N,)`` 16 kHz mono track whose sample 0 is the start of window 0.
        fps: sampling rate of the frames.
        frame_indices: the frames (window indices) to compute examples for.

    Returns:
        float32 ``(n, 1, 96, 64)``, one example per index.
    """
    wave = wave.detach().cpu().float() if isinstance(wave, Tensor) else torch.from_numpy(np.asarray(wave, np.float32))
    if wave.ndim != 1:
        raise ValueError(f"window_audio_examples: wave must be mono (N,), got shape {tuple(wave.shape)}")
    if wave.numel() < _EXAMPLE_SAMPLES:
        wave = F.pad(wave, (0, _EXAMPLE_SAMPLES - wave.numel()))  # silence up to one example
    starts = torch.from_numpy(window_example_starts(list(frame_indices), fps, wave.numel()))
    if starts.numel() == 0:
        return torch.zeros((0, 1, EXAMPLE_FRAMES, 64))
    first, last = int(starts.min()), int(starts.max())
    segment = wave[first * HOP_LENGTH : last * HOP_LENGTH + _EXAMPLE_SAMPLES]
    log_mel = log_mel_spectrogram(segment)  # (frames, 64) on the track's STFT grid, shifted by `first`
    rows = (starts - first)[:, None] + torch.arange(EXAMPLE_FRAMES)  # (n, 96)
    return log_mel[rows][:, None].float()  # (n, 1, 96, 64)


def clip_audio_examples(wave: np.ndarray | Tensor, fps: float, start: int, stop: int) -> Tensor:
    """Benchmark-reader examples for the clip of windows ``[start, stop)`` (``audio_align="clip"``).

    The clip's audio ``[start / fps, stop / fps)`` is cut into consecutive 0.96 s examples from its beginning and
    padded by repeating the last one (AVSBench S4/MS3 preprocessing; ``avseg.data.base.load_audio_features``).

    Returns:
        float32 ``(stop - start, 1, 96, 64)``.
    """
    array = wave.detach().cpu().numpy() if isinstance(wave, Tensor) else np.asarray(wave, dtype=np.float32)
    segment = array[samples_for(start / fps, SAMPLE_RATE) : samples_for(stop / fps, SAMPLE_RATE)]
    examples = waveform_to_examples(np.ascontiguousarray(segment, dtype=np.float32), SAMPLE_RATE)
    return pad_or_trim_examples(examples, stop - start, mode="repeat_last").float()


# --------------------------------------------------------------------------------------------------------------------
# Prediction


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
        num_classes = max(self.num_classes, 71)
        files = []
        with _Progress("writing masks", self.num_frames, "PNG", enabled=progress) as bar:
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
        with _Progress(f"writing {Path(path).name}", count, "frame", enabled=progress) as bar:
            write_video(path, painted, rate, audio=audio, audio_rate=SAMPLE_RATE, crf=crf, progress=bar.update)
        return {"path": str(path), "fps": rate, "frames": count, "duration_s": count / rate, "audio": audio is not None}

    def _resampled_for_overlay(
        self, overlay_fps: float, *, progress: bool = False
    ) -> tuple[Tensor, Tensor, float, np.ndarray | None]:
        if not (math.isfinite(overlay_fps) and overlay_fps > 0):
            raise ValueError(f"overlay_fps must be positive, got {overlay_fps}")
        if self.video_path is None or self.video_path.is_dir():
            raise ValueError("overlay_fps needs the prediction of a video file (a frame folder has no other frames)")
        every = self.source_fps > 0 and overlay_fps >= self.source_fps - 1e-6
        info = probe_video(self.video_path)
        count = math.ceil(info.duration_s * (min(overlay_fps, info.source_fps) if info.source_fps else overlay_fps))
        height, width = self.size
        _check_memory(
            count * height * width * 7,
            f"an overlay of {count} frames at {overlay_fps:g} fps",
            "a lower --overlay-fps, or none (the overlay at the sampled rate)",
        )
        with (
            warnings.catch_warnings(),
            _Progress(
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
        rel = clip.timestamps - clip.timestamps[0]
        window = np.clip(np.floor(rel * self.fps + 1e-9).astype(np.int64), 0, self.num_frames - 1)
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


class Predictor:
    """A loaded model plus the sampling settings to run it on whole videos.

    Settings left at ``None`` come from the model's config: ``image_size`` (required unless given here),
    ``num_frames`` (clip length, default :data:`DEFAULT_CLIP_LEN`) and ``fps`` (default :data:`DEFAULT_FPS`).

    Args:
        model: an :class:`~avseg.models.base.AVSModel` (moved to ``device`` and put in eval mode).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda:1"``, ...
        image_size: model input size, int (square) or ``(h, w)``.
        clip_len: frames per forward clip.
        fps: frames sampled per second of video.
        threshold: sigmoid threshold of binary models.
        frame_pick: which frame of each window is sampled (``"last"``, ``"first"``, ``"center"``).
        audio_align: ``"window"`` or ``"clip"`` (module docstring).
        batch_size: clips per forward pass.
        checkpoint: the checkpoint the model came from (recorded only).
        requires_text: refuse to run without an expression (default: :func:`model_requires_text`).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        device: str | torch.device = "auto",
        image_size: int | tuple[int, int] | None = None,
        clip_len: int | None = None,
        fps: float | None = None,
        threshold: float = 0.5,
        frame_pick: FramePick = "last",
        audio_align: AudioAlign = "window",
        batch_size: int = 1,
        checkpoint: str | Path | None = None,
        requires_text: bool | None = None,
    ) -> None:
        self.device = resolve_device(device, arg="device")
        self.model = model.to(self.device).eval()
        defaults = model_defaults(model)
        size = image_size if image_size is not None else defaults["image_size"]
        if size is None:
            raise ValueError(
                f"Predictor: model {_model_name(model)} has no config.image_size; pass image_size= (its input size)"
            )
        self.image_size: tuple[int, int] = to_size(size)  # type: ignore[assignment]
        self.clip_len = _positive_int(
            clip_len if clip_len is not None else defaults["clip_len"] or DEFAULT_CLIP_LEN, "clip_len"
        )
        self.fps = _positive_float(fps if fps is not None else defaults["fps"] or DEFAULT_FPS, "fps")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"Predictor: threshold must be in [0, 1], got {threshold}")
        if frame_pick not in ("first", "last", "center"):
            raise ValueError(f"Predictor: frame_pick must be 'first', 'last' or 'center', got {frame_pick!r}")
        if audio_align not in ("window", "clip"):
            raise ValueError(f"Predictor: audio_align must be 'window' or 'clip', got {audio_align!r}")
        self.threshold = float(threshold)
        self.frame_pick: FramePick = frame_pick
        self.audio_align: AudioAlign = audio_align
        self.batch_size = _positive_int(batch_size, "batch_size")
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.requires_text = model_requires_text(model) if requires_text is None else bool(requires_text)
        declared = getattr(model, "uses_text", None)
        self.reads_text = self.requires_text or (
            declared if isinstance(declared, bool) else _has_text_branch(getattr(model, "config", None))
        )
        self.name = _model_name(model)

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, *, pointer: Literal["best", "latest"] = "best", **settings: Any
    ) -> Predictor:
        """Load a checkpoint folder (or a run folder: its ``best.json`` / ``latest.json``) and wrap it."""
        from avseg.models import load_model

        folder = resolve_checkpoint(Path(path), pointer, fallback=_other_pointer(pointer))
        model = load_model(folder)
        if "requires_text" not in settings:
            settings["requires_text"] = model_requires_text(model, training_data_format(folder))
        return cls(model, checkpoint=folder, **settings)

    # -- running -----------------------------------------------------------------------------------------------------

    def check_text(self, text: str | None) -> str | None:
        """Return the expression to use, raising :class:`TextRequiredError` when the model needs one and has none."""
        text = text.strip() if text is not None else None
        if self.requires_text and not text:
            raise TextRequiredError(
                f"model {self.name} segments the object named by a referring expression: pass one with "
                f'--text "the dog that barks" (Python: predict_video(..., text=...))'
            )
        return text or None

    def predict_video(
        self,
        video_path: str | Path,
        text: str | None = None,
        *,
        fps: float | None = None,
        clip_len: int | None = None,
        frame_pick: FramePick | None = None,
        progress: bool = False,
    ) -> Prediction:
        """Decode a video (file or folder of frames) with its soundtrack and segment every sampled frame.

        A rate above the video's frame rate is lowered to it, with a :class:`FpsCappedWarning`: at or above the
        source rate every source frame is used once (``frame_pick`` ``"all"``), never a repeated one.

        Args:
            video_path: any file PyAV opens, or a folder of frames (read in full, at ``fps`` frames per second,
                with ``audio.wav`` beside them; see :func:`~avseg.media.video.read_video`).
            text: the referring expression (required by text models, ignored by AVS models).
            fps: sampling rate (default: the predictor's).
            clip_len: frames per forward clip (default: the predictor's).
            frame_pick: frame-picking rule (default: the predictor's).
            progress: show the progress of decoding and of the clips on stderr (a bar on a terminal, else a line
                every 15 s).

        Returns:
            The :class:`Prediction`.
        """
        text = self.check_text(text)
        rate = _positive_float(fps if fps is not None else self.fps, "fps")
        path = Path(video_path)
        if not path.exists():
            raise MissingFileError(path, "video")
        info = probe_video(path, folder_fps=rate)
        sample_fps: float | None = rate
        requested = None
        if not path.is_dir() and info.source_fps > 0 and rate >= info.source_fps * (1 - _RATE_TOLERANCE):
            # Windows shorter than a frame would repeat frames; every frame once is all the video has. Decoding them
            # all (fps=None) rather than sampling at the float source rate keeps each frame exactly once even when
            # the container rounds timestamps (29.97 fps in Matroska's milliseconds).
            if rate > info.source_fps * (1 + _RATE_TOLERANCE):
                requested = rate
                warnings.warn(
                    f"{path}: requested {rate:g} fps is above the video's frame rate of {info.source_fps:g} fps; "
                    f"sampling every frame ({info.source_fps:g} fps) instead of repeating frames",
                    FpsCappedWarning,
                    stacklevel=2,
                )
            rate, sample_fps = info.source_fps, None
        if not path.is_dir():  # decoded frames + masks + the painted overlay, all at the video's resolution
            frames = max(1, math.floor(info.duration_s * rate + 0.5))
            _check_memory(frames * info.width * info.height * 7, f"{frames} sampled frames of {path}", "a lower --fps")
        has_audio = info.has_audio
        with _Progress(f"decoding {path.name}", info.num_frames or None, "frame", enabled=progress) as bar:
            clip = read_video(
                path,
                fps=sample_fps,
                frame_pick=frame_pick or self.frame_pick,
                audio=True,
                folder_fps=rate,
                progress=bar.update,
            )
        prediction = self.predict_clip(clip, text, clip_len=clip_len, has_audio=has_audio, progress=progress)
        if requested is not None:
            prediction.extra["requested_fps"] = requested
        return prediction

    def predict_clip(
        self,
        clip: VideoClip,
        text: str | None = None,
        *,
        clip_len: int | None = None,
        has_audio: bool | None = None,
        progress: bool = False,
    ) -> Prediction:
        """Segment frames that were already decoded (by :func:`~avseg.media.video.read_video` or built by hand).

        Args:
            clip: the sampled frames and their audio; ``clip.sample_fps`` (or ``source_fps`` for every-frame clips)
                is the window rate.
            text: the referring expression.
            clip_len: frames per forward clip (default: the predictor's).
            has_audio: whether the source has sound (default: ``clip.audio`` is present and not all zero).
            progress: show the progress over clips on stderr.
        """
        text = self.check_text(text)
        length = _positive_int(clip_len if clip_len is not None else self.clip_len, "clip_len")
        rate = float(clip.sample_fps or clip.source_fps or self.fps)
        num_frames, height, width = clip.frames.shape[0], clip.frames.shape[2], clip.frames.shape[3]
        if clip.audio is not None:
            wave = np.asarray(clip.audio, dtype=np.float32)
            if clip.audio_rate != SAMPLE_RATE:
                raise ValueError(f"predict_clip: audio must be at {SAMPLE_RATE} Hz, got {clip.audio_rate}")
        else:
            wave = np.zeros(samples_for(num_frames / rate, SAMPLE_RATE), np.float32)
        if has_audio is None:
            has_audio = clip.audio is not None and bool(np.any(wave))

        masks = torch.zeros((num_frames, height, width), dtype=torch.uint8)
        clip_starts = list(range(0, num_frames, length))
        groups = [clip_starts[i : i + self.batch_size] for i in range(0, len(clip_starts), self.batch_size)]
        num_classes = 1
        elapsed = 0.0
        with _Progress("segmenting", len(clip_starts), "clip", enabled=progress) as bar:
            for group in groups:
                samples = [
                    self._sample(clip, wave, rate, s, min(s + length, num_frames), length, text, has_audio)
                    for s in group
                ]
                batch = collate(samples, num_frames=length).to(self.device)
                tic = time.perf_counter()
                with torch.inference_mode():
                    logits = self.model(batch).mask_logits  # (B, T, K, h, w)
                    if logits.ndim != 5 or tuple(logits.shape[:2]) != (len(group), length):
                        raise AVSegError(
                            f"model {self.name} returned mask_logits of shape {tuple(logits.shape)}, "
                            f"expected ({len(group)}, {length}, K, h, w)"
                        )
                    num_classes = int(logits.shape[2])
                    for i, start in enumerate(group):
                        stop = min(start + length, num_frames)
                        # Padded frames (beyond `stop`) are dropped here; they never reach the outputs.
                        masks[start:stop] = _logits_to_masks(logits[i, : stop - start], (height, width), self.threshold)
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                elapsed += time.perf_counter() - tic
                bar.update(len(group))

        foreground = (masks > 0).flatten(1).float().mean(1).double().numpy() if num_frames else np.zeros(0)
        return Prediction(
            masks=masks,
            kind="binary" if num_classes == 1 else "semantic",
            num_classes=num_classes,
            frames=clip.frames,
            timestamps=np.asarray(clip.timestamps, dtype=np.float64),
            source_indices=np.asarray(clip.source_indices, dtype=np.int64),
            foreground=foreground,
            fps=rate,
            frame_pick=clip.frame_pick,
            clip_len=length,
            num_clips=len(clip_starts),
            threshold=self.threshold,
            text=text,
            audio_align=self.audio_align,
            audio=wave,
            has_audio=has_audio,
            audio_padded=bool(clip.audio_padded),
            source_fps=float(clip.source_fps),
            video_path=Path(clip.path) if clip.path is not None else None,
            elapsed_s=elapsed,
            device=str(self.device),
            image_size=self.image_size,
        )

    def _sample(
        self,
        clip: VideoClip,
        wave: np.ndarray,
        rate: float,
        start: int,
        stop: int,
        length: int,
        text: str | None,
        has_audio: bool,
    ) -> AVSSample:
        """The model input of sampled frames ``[start, stop)``, at the model's size (padding is added by collate)."""
        frames = resize_frames(clip.frames[start:stop], self.image_size)  # (n, 3, h, w)
        n = stop - start
        if self.audio_align == "window":
            examples = window_audio_examples(wave, rate, range(start, stop))
        else:
            examples = clip_audio_examples(wave, rate, start, stop)
        # The clip's own audio, zero-padded to a full clip so every batch has the same wave length.
        lo = samples_for(start / rate, SAMPLE_RATE)
        span = samples_for(length / rate, SAMPLE_RATE)
        segment = wave[lo : min(lo + span, samples_for(stop / rate, SAMPLE_RATE))]
        audio_wave = torch.zeros(span, dtype=torch.float32)
        audio_wave[: segment.size] = torch.from_numpy(np.ascontiguousarray(segment))
        name = Path(clip.path).stem if clip.path is not None else "video"
        return AVSSample(
            frames=frames,
            masks=torch.zeros((n, *self.image_size), dtype=torch.uint8),
            frame_valid=torch.ones(n, dtype=torch.bool),
            label_valid=torch.zeros(n, dtype=torch.bool),
            audio_wave=audio_wave,
            audio_examples=examples,
            video_id=name,
            split="predict",
            dataset="video",
            text=text,
            uid=f"{name}@{start}",
            has_audio=has_audio,
            orig_size=(int(clip.frames.shape[2]), int(clip.frames.shape[3])),
            meta={"frame_indices": list(range(start, stop)), "timestamps": clip.timestamps[start:stop].tolist()},
        )


def _logits_to_masks(logits: Tensor, size: tuple[int, int], threshold: float) -> Tensor:
    """``(n, K, h, w)`` logits → ``uint8`` ``(n, H, W)`` on the CPU: bilinear upsampling, then threshold or argmax."""
    n, k = logits.shape[:2]
    per_step = max(1, _UPSAMPLE_BUDGET // max(1, k * size[0] * size[1]))
    out = []
    for i in range(0, n, per_step):
        up = F.interpolate(logits[i : i + per_step].float(), size=size, mode="bilinear", align_corners=False)
        labels = up[:, 0].sigmoid() > threshold if k == 1 else up.argmax(dim=1)
        out.append(labels.to(torch.uint8).cpu())
    return torch.cat(out) if out else torch.zeros((0, *size), dtype=torch.uint8)


def _available_memory() -> int | None:
    """Bytes the kernel says can be allocated without swapping (Linux ``MemAvailable``); None elsewhere."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _check_memory(needed: int, what: str, advice: str) -> None:
    """Refuse, with a message, work whose frames would not fit in memory: better than being killed mid-way."""
    available = _available_memory()
    if available is not None and needed > 0.8 * available:
        raise AVSegError(
            f"{what}: about {needed / 2**30:.1f} GiB of memory needed (frames at full resolution), only "
            f"{available / 2**30:.1f} GiB available; use {advice}, or cut the video into parts"
        )


class _Progress:
    """Progress of one long phase (decoding, segmenting, writing) on stderr, with its total.

    On a terminal: a ``tqdm`` bar, removed when the phase ends. Otherwise (a log file, a CI job), where a bar's
    carriage returns would pile up into one unreadable line: a plain line ``desc: done/total units (pct%), N s`` at most
    every :data:`_LOG_INTERVAL_S` seconds, and a last one when a phase that lasted that long ends; a short phase
    prints nothing. Disabled, it only counts.
    """

    def __init__(
        self,
        desc: str,
        total: int | None,
        unit: str,
        *,
        enabled: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.desc, self.total, self.unit = desc, total, unit
        self.count = 0
        self._clock = clock
        self._start = self._last = clock()
        self._printed: int | None = None  # count shown by the last line
        self._bar = None
        self._lines = enabled and not _is_terminal(sys.stderr)
        if enabled and not self._lines:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True)

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units done."""
        self.count += n
        if self._bar is not None:
            self._bar.update(n)
        elif self._lines:
            now = self._clock()
            if now - self._last >= _LOG_INTERVAL_S:
                self._last = now
                self._print(now)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._lines:
            now = self._clock()
            if now - self._start >= _LOG_INTERVAL_S and self._printed != self.count:
                self._print(now)
            self._lines = False

    def _print(self, now: float) -> None:
        done = f"{self.count}/{self.total}" if self.total else str(self.count)
        share = f" ({100 * self.count / self.total:.0f}%)" if self.total else ""
        print(f"{self.desc}: {done} {self.unit}s{share}, {now - self._start:.0f} s", file=sys.stderr, flush=True)
        self._printed = self.count


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _other_pointer(pointer: str) -> str:
    """The pointer to fall back to when a run folder lacks ``pointer`` (a run without validation has no best)."""
    return "latest" if pointer == "best" else "best"


def _positive_float(value: Any, name: str) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be positive, got {value}")
    return value


# --------------------------------------------------------------------------------------------------------------------
# The command


def predict(
    video: Path,
    *,
    checkpoint: Path,
    out: Path,
    text: str | None = None,
    masks_dir: Path | None = None,
    fps: float | None = None,
    clip_len: int | None = None,
    frame_pick: Literal["first", "last", "center"] = "last",
    device: str = "auto",
    threshold: float = 0.5,
    pointer: Literal["best", "latest"] = "best",
    overlay_fps: float | None = None,
    audio_align: Literal["window", "clip"] = "window",
    batch_size: int = 1,
    quiet: bool = False,
) -> int:
    """Segment the sounding (or referred) objects of a video with a trained model; write mask PNGs and an overlay.

    Frames are sampled at the model's rate (1 frame/s for AVSBench and Ref-AVS models), cut into clips of the model's
    length, and heard through the video's own soundtrack (one 0.975 s VGGish example centred on each frame's window).
    Writes one PNG per sampled frame, an overlay video that keeps the original sound, and a JSON file with the
    settings and per-frame timestamps. A video without sound runs on silence (with a warning) and its overlay has no
    audio track. The outputs, the device and the checkpoint are checked before anything is decoded: an output that
    is the input video (or one of the checkpoint's files) is refused. Progress goes to stderr: bars on a terminal,
    a line every 15 s in a log; warnings are one ``warning:`` line each on stderr.

    Args:
        video: input video file (mp4, mkv, webm, mov, ...) or folder of frames (with audio.wav).
        checkpoint: checkpoint folder, or training run folder (its best.json / latest.json is followed).
        out: overlay video to write (.mp4, .m4v, .mov, .mkv or .webm); settings go to the same name with .json.
        text: referring expression, required by Ref-AVS/RVOS models, ignored by AVS models.
        masks_dir: folder for the mask PNGs, {frame:05d}.png per sampled frame (default: OUT's name + '_masks').
        fps: frames sampled per second (default: the model's training rate, else 1); at most the video's own frame
            rate (a higher rate is lowered to it, with a warning: every frame once, none repeated).
        clip_len: frames per model clip (default: the model's training clip length, else 10).
        frame_pick: which frame of each 1/fps window is used: last (AVSBench), first, or center (ffmpeg fps filter).
        device: 'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:1', 'mps', ...
        threshold: foreground threshold on the sigmoid, binary models only.
        pointer: which checkpoint of a run folder to use: best or latest (the other when it is missing).
        overlay_fps: frame rate of the overlay video; default: the sampling rate (the frames the model saw, each held
            for its window). Give e.g. the source rate for smooth playback (each frame shows its window's mask).
        audio_align: audio example per frame: window (centred on the frame's window) or clip (the benchmark readers'
            consecutive 0.96 s examples from each clip's start).
        batch_size: clips per forward pass (raise it on a GPU).
        quiet: show no progress (warnings and the summary are still printed).
    """
    out, video = Path(out), Path(video)
    if out.suffix.lower() not in OVERLAY_SUFFIXES:
        raise UsageError(f"--out {out}: must end in one of {', '.join(OVERLAY_SUFFIXES)} (it is the overlay video)")
    if overlay_fps is not None:
        _positive_float(overlay_fps, "overlay_fps")
    if not video.exists():
        raise MissingFileError(video, "video")
    # Everything a user can get wrong is checked here, before the model loads or a frame decodes.
    torch_device = resolve_device(device, arg="--device")
    folder = resolve_checkpoint(Path(checkpoint), pointer, fallback=_other_pointer(pointer))
    inputs = _input_paths(video, Path(checkpoint), folder)
    sidecar = out.with_suffix(".json")
    check_output_file(out, arg="--out", inputs=inputs)
    check_output_file(sidecar, arg="--out (its .json settings file)", inputs=inputs)
    masks_arg = "--masks-dir" if masks_dir is not None else "--masks-dir (default: OUT's name + _masks)"
    masks_dir = Path(masks_dir) if masks_dir is not None else out.parent / f"{out.stem}_masks"
    check_output_dir(masks_dir, arg=masks_arg, inputs=inputs)
    if masks_dir.resolve() in (out.resolve(), sidecar.resolve()):
        raise UsageError(f"{masks_arg} {masks_dir}: is a file --out writes; give the masks their own folder")

    predictor = Predictor.from_checkpoint(
        folder,
        device=torch_device,
        fps=fps,
        clip_len=clip_len,
        threshold=threshold,
        frame_pick=frame_pick,
        audio_align=audio_align,
        batch_size=batch_size,
    )
    if text and not predictor.reads_text:
        print(f"note: model {predictor.name} does not read text; --text is ignored")
    with warnings.catch_warnings():  # restores the filters and showwarning afterwards
        warnings.simplefilter("always", AVSegWarning)
        warnings.showwarning = _one_line_warnings(warnings.showwarning)
        prediction = predictor.predict_video(video, text, progress=not quiet)

    files = prediction.write_masks(masks_dir, progress=not quiet)
    stale = sorted(
        p.name for p in masks_dir.glob("[0-9][0-9][0-9][0-9][0-9].png") if int(p.stem) >= prediction.num_frames
    )
    overlay = prediction.write_overlay(out, overlay_fps=overlay_fps, progress=not quiet)
    model = predictor.model
    info = {
        "checkpoint": str(predictor.checkpoint),
        "preset": getattr(model, "preset", None),
        "family": getattr(model, "family", None),
        "model_config": _config_dict(model),
        "masks_dir": str(masks_dir),
        "mask_files": [p.name for p in files],
        "overlay": overlay,
        "batch_size": predictor.batch_size,
        **prediction.settings(),
    }
    atomic_write_text(sidecar, json.dumps(info, indent=2))

    height, width = prediction.size
    png_kind = "0/255 grey" if prediction.kind == "binary" else "AVSS palette"
    print(f"masks:    {masks_dir}/ ({len(files)} PNG{'s' * (len(files) != 1)}, {width}x{height}, {png_kind})")
    if stale:
        print(f"note: {masks_dir} also holds {len(stale)} older PNG(s) from a longer run ({stale[0]}, ...)")
    sound = "original audio" if overlay["audio"] else "no audio track (the video has none)"
    print(f"overlay:  {out} ({overlay['frames']} frames at {overlay['fps']:g} fps, {sound})")
    print(f"settings: {sidecar}")
    print(
        f"predict: {prediction.num_frames} frames ({prediction.fps:g} fps, {prediction.frame_pick}) in "
        f"{prediction.num_clips} clip(s) of {prediction.clip_len} | {prediction.num_frames / prediction.fps:.1f} s "
        f"sampled | {prediction.elapsed_s:.2f} s on {prediction.device} | mean foreground "
        f"{100 * float(prediction.foreground.mean()):.2f}%"
    )
    return 0


def _one_line_warnings(previous: Callable[..., None]) -> Callable[..., None]:
    """A ``warnings.showwarning`` that prints avseg's warnings as one ``warning: ...`` line on stderr, when they
    happen (a silent soundtrack or a lowered --fps changes the result), instead of Python's display with a line of
    avseg's source under it; other warnings go to ``previous``."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, AVSegWarning):
            from tqdm import tqdm

            tqdm.write(f"warning: {message}", file=sys.stderr)  # clears and redraws a progress bar on a terminal
        else:
            previous(message, category, filename, lineno, file, line)

    return show


def _input_paths(video: Path, checkpoint: Path, folder: Path) -> list[Path]:
    """What ``predict`` reads and must never overwrite: the video and the files of the checkpoint (or run) folder."""
    paths = [video, checkpoint, folder]
    for holder in {checkpoint, folder}:
        if holder.is_dir():
            paths.extend(p for p in holder.iterdir() if p.is_file())
    return paths


def _config_dict(model: nn.Module) -> dict[str, Any] | None:
    config = getattr(model, "config", None)
    if config is None or not dataclasses.is_dataclass(config):
        return None
    from avseg.config import config_to_dict

    return config_to_dict(config)
