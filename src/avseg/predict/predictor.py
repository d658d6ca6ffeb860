"""The :class:`Predictor`: a trained model run on whole videos with their own soundtrack.

No AVS reference repository runs on a user's video (OpenNLPLab/AVSBench#2, cyh-0/CAVP#12); this does, with the same
sampling conventions the benchmarks use, so a prediction on a benchmark clip matches what ``avseg eval`` feeds the
model.

1. **Frames.** :func:`~avseg.media.video.read_video` samples the video at the model's rate (default 1 frame/s as in
   AVSBench and Ref-AVS; :mod:`avseg.predict.settings`) with an explicit ``frame_pick`` rule (``"last"``, AVSBench's,
   by default); sampled frame ``k`` stands for window ``k``, the interval ``[k / fps, (k + 1) / fps)`` after the first
   frame. A rate at or above the video's own frame rate takes every source frame once, at the source rate (a higher
   rate would only repeat frames; it is lowered with a :class:`FpsCappedWarning`). The frames are kept at the video's
   resolution (for the outputs) and resized per clip to the model's ``image_size`` (antialiased bilinear, as the
   dataset readers do).
2. **Clips.** The sampled frames are cut into consecutive clips of the model's clip length ``T`` (default 10). The
   last clip, when shorter, is padded by :func:`~avseg.data.types.collate` with invalid frames (``frame_valid =
   False``) and the outputs of the padding are dropped. Clips are independent forward passes (a model keeps no memory
   from one clip to the next), run ``batch_size`` at a time; only the current clips are resized and only uint8 masks
   are kept, so memory grows with the sampled frames, not with the model's outputs. The sampled frames are held at
   full resolution (``T x H x W x 3`` bytes: a minute of 1080p at 1 fps is 373 MB); a run whose frames, masks and
   overlay would not fit in the available memory is refused before decoding, with a message.
3. **Audio.** The soundtrack comes with the frames (16 kHz mono; sample 0 is the start of window 0; a missing or
   short track is padded with silence and an :class:`~avseg.errors.AudioPaddedWarning`). Each sampled frame gets one
   VGGish example, centred on its window (``audio_align="window"``, default) or laid out as the benchmark readers do
   (``"clip"``); :mod:`avseg.audio.alignment` gives both rules.
4. **Masks.** The logits of each kept frame are upsampled bilinearly to the video's resolution, then thresholded
   (``sigmoid > threshold``, binary models, ``K = 1``) or arg-maxed over classes (semantic models, ``K > 1``), into a
   :class:`~avseg.predict.prediction.Prediction`.

**Promptable models** (SAM2, :func:`~avseg.predict.prompts.is_promptable`) track the object(s) a user gives on one
frame (:class:`~avseg.predict.prompts.VideoPrompts`: clicks, a box or a mask, in the video's pixel coordinates)
through the whole video: the sampled frames are one clip, run by the model's
:meth:`~avseg.models.sam2_vos.SAM2VOS.track` from the prompted frame on; earlier frames are predicted empty. Without a
rate recorded in the checkpoint or given, such a model samples every frame of the video, as VOS benchmarks do. Each
object is thresholded at ``sigmoid > threshold``; with several objects a pixel takes the id of its highest-scoring
object (the output PNGs then hold the objects' ids, as DAVIS results do).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from avseg.audio.alignment import AudioAlign, clip_waveform, frame_audio_examples, window_span
from avseg.audio.logmel import SAMPLE_RATE
from avseg.checkpoint import resolve_checkpoint
from avseg.data.base import resize_frames
from avseg.data.types import AVSSample, collate
from avseg.device import resolve_device
from avseg.errors import AVSegError, AVSegWarning, MissingFileError, UsageError
from avseg.media.video import FramePick, VideoClip, probe_video, read_video
from avseg.predict.memory import check_memory
from avseg.predict.prediction import Prediction
from avseg.predict.prompts import VideoPrompts, is_promptable
from avseg.predict.settings import (
    TrainingData,
    model_name,
    positive_float,
    positive_int,
    read_training_data,
    sampling_settings,
)
from avseg.progress import Progress

if TYPE_CHECKING:
    from avseg.models.base import AVSModel

__all__ = ["FpsCappedWarning", "Predictor", "TextRequiredError", "fallback_pointer"]

# Upsampled logits held at once: bounds memory for 71-class models on large videos (71 x 1080p is ~590 MB a frame).
_UPSAMPLE_BUDGET = 64 * 1024 * 1024  # elements (256 MB of float32)
# Relative slack when comparing a sampling rate with the source rate (both floats from rationals such as 30000/1001).
_RATE_TOLERANCE = 1e-9


class TextRequiredError(AVSegError):
    """The model segments the object named by a referring expression, and none was given."""


class FpsCappedWarning(AVSegWarning):
    """The requested sampling rate was above the video's frame rate and was lowered to it (every frame, once)."""


def fallback_pointer(pointer: str) -> str:
    """The pointer to fall back to when a run folder lacks ``pointer`` (a run without validation has no best)."""
    return "latest" if pointer == "best" else "best"


class Predictor:
    """A loaded model plus the sampling settings to run it on whole videos.

    Settings left at ``None`` come from what the checkpoint records (``training``), then from the model's recipe
    (:func:`~avseg.predict.settings.sampling_settings`): ``image_size`` (required unless one of them gives it), clip
    length (default :data:`~avseg.predict.settings.DEFAULT_CLIP_LEN`) and ``fps`` (default
    :data:`~avseg.predict.settings.DEFAULT_FPS`).

    Args:
        model: an :class:`~avseg.models.base.AVSModel` (moved to ``device`` and put in eval mode).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda:1"``, ...
        image_size: model input size, int (square) or ``(h, w)``.
        clip_len: frames per forward clip.
        fps: frames sampled per second of video (a promptable model without one, here or in its checkpoint,
            samples every frame).
        threshold: sigmoid threshold of binary models and of each object a promptable model tracks.
        frame_pick: which frame of each window is sampled (``"last"``, ``"first"``, ``"center"``).
        audio_align: ``"window"`` or ``"clip"`` (:mod:`avseg.audio.alignment`).
        batch_size: clips per forward pass.
        checkpoint: the checkpoint the model came from (recorded only).
        training: what the model was trained on (:func:`~avseg.predict.settings.read_training_data`); its format
            decides whether a model with an optional text branch needs an expression.
        requires_text: refuse to run without an expression (default: :func:`avseg.models.base.requires_text`).
    """

    def __init__(
        self,
        model: AVSModel,
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
        training: TrainingData | None = None,
        requires_text: bool | None = None,
    ) -> None:
        from avseg.models import base

        self.device = resolve_device(device, arg="device")
        self.model = model.to(self.device).eval()
        self.name = model_name(model)
        self.training = training or TrainingData()
        settings = sampling_settings(model, self.training, image_size=image_size, clip_len=clip_len, fps=fps)
        self.image_size = settings.image_size
        self.clip_len = settings.clip_len
        self.fps = settings.fps
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"Predictor: threshold must be in [0, 1], got {threshold}")
        if frame_pick not in ("first", "last", "center"):
            raise ValueError(f"Predictor: frame_pick must be 'first', 'last' or 'center', got {frame_pick!r}")
        if audio_align not in ("window", "clip"):
            raise ValueError(f"Predictor: audio_align must be 'window' or 'clip', got {audio_align!r}")
        self.threshold = float(threshold)
        self.frame_pick: FramePick = frame_pick
        self.audio_align: AudioAlign = audio_align
        self.batch_size = positive_int(batch_size, "batch_size")
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        # A caller's explicit decision overrides the model's rule (and then no reason is given).
        self.text_reason = base.requires_text(model, self.training.format) if requires_text is None else None
        self.requires_text = bool(requires_text) if requires_text is not None else self.text_reason is not None
        self.reads_text = self.requires_text or model.text_input != "none"
        self.promptable = is_promptable(model)
        # Tracking follows the object frame by frame: every frame, unless a rate is given or recorded.
        self.every_frame = self.promptable and fps is None and self.training.fps is None

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, *, pointer: Literal["best", "latest"] = "best", **settings: Any
    ) -> Predictor:
        """Load a checkpoint folder (or a run folder: its ``best.json`` / ``latest.json``, the other one when it is
        missing) and wrap it, with the sampling settings and data format its ``config.json`` records."""
        from avseg.models import load_model

        folder = resolve_checkpoint(Path(path), pointer, fallback=fallback_pointer(pointer))
        model = load_model(folder)
        return cls(model, checkpoint=folder, training=read_training_data(folder), **settings)

    # -- running -----------------------------------------------------------------------------------------------------

    def check_text(self, text: str | None) -> str | None:
        """Return the expression to use, raising :class:`TextRequiredError` when the model needs one and has none."""
        text = text.strip() if text is not None else None
        if self.requires_text and not text:
            reason = f" ({self.text_reason})" if self.text_reason else ""
            raise TextRequiredError(
                f"model {self.name} segments the object named by a referring expression{reason}: pass one with "
                f'--text "the dog that barks" (Python: predict_video(..., text=...))'
            )
        return text or None

    def check_prompts(self, prompts: VideoPrompts | None) -> None:
        """Refuse a promptable model without prompts, and prompts for a model that takes none (UsageError)."""
        if self.promptable and prompts is None:
            raise UsageError(
                f'model {self.name} tracks the object(s) you give on one frame: pass --points "x,y[,label];...", '
                '--box "x0,y0,x1,y1" or --mask MASK.png (Python: predict_video(..., prompts=parse_prompts(...)))'
            )
        if not self.promptable and prompts is not None:
            raise UsageError(
                f"{prompts.source}: model {self.name} takes no prompt (it finds the objects by itself); drop the "
                "prompt options, or use a promptable (sam2) checkpoint"
            )

    def predict_video(
        self,
        video_path: str | Path,
        text: str | None = None,
        *,
        fps: float | None = None,
        clip_len: int | None = None,
        frame_pick: FramePick | None = None,
        prompts: VideoPrompts | None = None,
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
            prompts: the object(s) a promptable model tracks (required by it, refused by other models); checked
                against the video's size before decoding.
            progress: show the progress of decoding and of the clips on stderr (a bar on a terminal, else a line
                every 15 s).

        Returns:
            The :class:`Prediction`.
        """
        text = self.check_text(text)
        self.check_prompts(prompts)
        rate = positive_float(fps if fps is not None else self.fps, "fps")
        path = Path(video_path)
        if not path.exists():
            raise MissingFileError(path, "video")
        info = probe_video(path, folder_fps=rate)
        if prompts is not None:
            prompts.check(info.height, info.width, what=str(path))
        if fps is None and self.every_frame and not path.is_dir() and info.source_fps > 0:
            rate = info.source_fps
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
            check_memory(frames * info.width * info.height * 7, f"{frames} sampled frames of {path}", "a lower --fps")
        has_audio = info.has_audio
        with Progress(f"decoding {path.name}", info.num_frames or None, "frame", enabled=progress) as bar:
            clip = read_video(
                path,
                fps=sample_fps,
                frame_pick=frame_pick or self.frame_pick,
                audio=True,
                folder_fps=rate,
                progress=bar.update,
            )
        prediction = self.predict_clip(
            clip, text, clip_len=clip_len, has_audio=has_audio, prompts=prompts, progress=progress
        )
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
        prompts: VideoPrompts | None = None,
        progress: bool = False,
    ) -> Prediction:
        """Segment frames that were already decoded (by :func:`~avseg.media.video.read_video` or built by hand).

        Args:
            clip: the sampled frames and their audio; ``clip.sample_fps`` (or ``source_fps`` for every-frame clips)
                is the window rate.
            text: the referring expression.
            clip_len: frames per forward clip (default: the predictor's).
            has_audio: whether the source has sound (default: ``clip.audio`` is present and not all zero).
            prompts: the object(s) a promptable model tracks (then the frames are one clip; ``clip_len`` is unused).
            progress: show the progress over clips on stderr.
        """
        text = self.check_text(text)
        self.check_prompts(prompts)
        length = positive_int(clip_len if clip_len is not None else self.clip_len, "clip_len")
        rate = float(clip.sample_fps or clip.source_fps or self.fps)
        num_frames, height, width = clip.frames.shape[0], clip.frames.shape[2], clip.frames.shape[3]
        if clip.audio is not None:
            wave = np.asarray(clip.audio, dtype=np.float32)
            if clip.audio_rate != SAMPLE_RATE:
                raise ValueError(f"predict_clip: audio must be at {SAMPLE_RATE} Hz, got {clip.audio_rate}")
        else:
            wave = np.zeros(window_span(0, num_frames, rate)[1], np.float32)
        if has_audio is None:
            has_audio = clip.audio is not None and bool(np.any(wave))

        if prompts is not None:
            prompts.check(height, width)
            prompts.check_frame(num_frames)
            length = max(1, num_frames)  # one clip: the model tracks through the whole video
        clip_starts = list(range(0, num_frames, length))
        with Progress("tracking" if prompts else "segmenting", len(clip_starts), "clip", enabled=progress) as bar:
            samples = (
                self._sample(clip, wave, rate, s, min(s + length, num_frames), length, text, has_audio)
                for s in clip_starts
            )
            if prompts is not None:
                masks, num_classes, elapsed = self._track(next(samples), prompts, (height, width))
                bar.update(1)
            else:
                masks, num_classes, elapsed = self._segment(
                    samples, clip_starts, num_frames, length, (height, width), bar
                )
        extra = {} if prompts is None else {"prompt": prompts.record(), "object_ids": prompts.object_ids}
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
            extra=extra,
        )

    def _segment(
        self,
        samples: Iterator[AVSSample],
        clip_starts: list[int],
        num_frames: int,
        length: int,
        size: tuple[int, int],
        bar: Progress,
    ) -> tuple[Tensor, int, float]:
        """Run the clips ``batch_size`` at a time: ``uint8`` masks ``(T, H, W)``, the mask channels ``K`` and the
        seconds spent in the model and the upsampling."""
        masks = torch.zeros((num_frames, *size), dtype=torch.uint8)
        num_classes = 1
        elapsed = 0.0
        for first in range(0, len(clip_starts), self.batch_size):
            group = clip_starts[first : first + self.batch_size]
            batch = collate([next(samples) for _ in group], num_frames=length).to(self.device)
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
                    masks[start:stop] = _logits_to_masks(logits[i, : stop - start], size, self.threshold)
            self._synchronize()
            elapsed += time.perf_counter() - tic
            bar.update(len(group))
        return masks, num_classes, elapsed

    def _track(self, sample: AVSSample, prompts: VideoPrompts, size: tuple[int, int]) -> tuple[Tensor, int, float]:
        """Track the prompted objects through ``sample`` (every sampled frame): ``uint8`` masks ``(T, H, W)`` (0/1
        for one object, else the objects' ids), the number of objects and the seconds spent."""
        objects = prompts.objects
        # One row per object; every row holds the same frames (SAM2 tracks each object with its own memory).
        batch = collate([sample] * len(objects), num_frames=sample.num_frames).to(self.device)
        tic = time.perf_counter()
        with torch.inference_mode():
            if prompts.kind == "mask":
                masks = torch.from_numpy(np.stack([o.mask for o in objects]))  # (n, H, W) bool
                output = self.model.track(batch, start=prompts.frame, masks=masks)
            else:
                points, labels = objects[0].clicks()  # (P, 2) in the video's pixels, (P,)
                output = self.model.track(
                    batch,
                    start=prompts.frame,
                    points=torch.from_numpy(points)[None],
                    point_labels=torch.from_numpy(labels)[None],
                )
            tracked = output.mask_logits[:, :, 0].transpose(0, 1)  # (T, n, h, w): the objects as channels
            ids = prompts.object_ids if len(objects) > 1 else None
            masks = _logits_to_masks(tracked, size, self.threshold, object_ids=ids)
        self._synchronize()
        return masks, len(objects), time.perf_counter() - tic

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

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
        name = Path(clip.path).stem if clip.path is not None else "video"
        return AVSSample(
            frames=frames,
            masks=torch.zeros((n, *self.image_size), dtype=torch.uint8),
            frame_valid=torch.ones(n, dtype=torch.bool),
            label_valid=torch.zeros(n, dtype=torch.bool),
            audio_wave=clip_waveform(wave, rate, start, stop, length),
            audio_examples=frame_audio_examples(wave, rate, start, stop, self.audio_align),
            video_id=name,
            split="predict",
            dataset="video",
            text=text,
            uid=f"{name}@{start}",
            has_audio=has_audio,
            orig_size=(int(clip.frames.shape[2]), int(clip.frames.shape[3])),
            meta={"frame_indices": list(range(start, stop)), "timestamps": clip.timestamps[start:stop].tolist()},
        )


def _logits_to_masks(
    logits: Tensor, size: tuple[int, int], threshold: float, *, object_ids: list[int] | None = None
) -> Tensor:
    """``(n, K, h, w)`` logits → ``uint8`` ``(n, H, W)`` on the CPU: bilinear upsampling, then threshold or argmax.

    With ``object_ids`` the ``K`` channels are tracked objects, not classes: a pixel takes the id of its
    highest-scoring object where that object's ``sigmoid > threshold``, else 0.
    """
    n, k = logits.shape[:2]
    per_step = max(1, _UPSAMPLE_BUDGET // max(1, k * size[0] * size[1]))
    ids = None if object_ids is None else torch.tensor(object_ids, dtype=torch.uint8)
    out = []
    for i in range(0, n, per_step):
        up = F.interpolate(logits[i : i + per_step].float(), size=size, mode="bilinear", align_corners=False)
        if ids is not None:
            best = up.max(dim=1)
            labels = torch.where(best.values.sigmoid() > threshold, ids.to(up.device)[best.indices], 0)
        else:
            labels = up[:, 0].sigmoid() > threshold if k == 1 else up.argmax(dim=1)
        out.append(labels.to(torch.uint8).cpu())
    return torch.cat(out) if out else torch.zeros((0, *size), dtype=torch.uint8)
