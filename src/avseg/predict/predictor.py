"""The :class:`Predictor`: a trained model run on whole videos with their own soundtrack, in a stream.

No AVS reference repository runs on a user's video (OpenNLPLab/AVSBench#2, cyh-0/CAVP#12); this does, with the same
sampling conventions the benchmarks use, so a prediction on a benchmark clip matches what ``avseg eval`` feeds the
model.

1. **Frames.** :class:`~avseg.media.video.VideoReader` samples the video at the model's rate (default 1 frame/s as in
   AVSBench and Ref-AVS; :mod:`avseg.predict.settings`) with an explicit ``frame_pick`` rule (``"last"``, AVSBench's,
   by default) and hands the frames on one at a time; sampled frame ``k`` stands for window ``k``, the interval
   ``[k / fps, (k + 1) / fps)`` after the first frame. A rate at or above the video's own frame rate takes every
   source frame once, at the source rate (a higher rate would only repeat frames; it is lowered with a
   :class:`FpsCappedWarning`). Frames stay at the video's resolution (for the outputs) and are resized per clip to
   the model's ``image_size`` (antialiased bilinear, as the dataset readers do).
2. **Clips.** The sampled frames are cut into consecutive clips of the model's clip length ``T`` (default 10) as they
   are decoded. The last clip, when shorter, is padded by :func:`~avseg.data.types.collate` with invalid frames
   (``frame_valid = False``) and the outputs of the padding are dropped. Clips are independent forward passes (a
   model keeps no memory from one clip to the next), run ``batch_size`` at a time.
3. **Audio.** The soundtrack is 16 kHz mono (sample 0 is the start of window 0; a missing or short track is padded
   with silence and an :class:`~avseg.errors.AudioPaddedWarning`). Each sampled frame gets one VGGish example,
   centred on its window (``audio_align="window"``, default) or laid out as the benchmark readers do (``"clip"``);
   :mod:`avseg.audio.alignment` gives both rules and computes the examples of one clip from that clip's span only.
   Near the end of the track the ``"window"`` rule shifts an example back so that it ends with the track, and the
   track's length is only known once the last frame is decoded; a clip is therefore run once enough frames after it
   have been decoded that its examples cannot change (half a second of frames), or at the end of the video.
4. **Masks.** The logits of each kept frame are upsampled bilinearly to the video's resolution, then thresholded
   (``sigmoid > threshold``, binary models, ``K = 1``) or arg-maxed over classes (semantic models, ``K > 1``).

:meth:`Predictor.stream_video` yields each sampled frame with its mask as soon as its clip has run
(:class:`SegmentedFrame`): held at once are only the frames of the clips being run (``batch_size * T`` frames plus
the half second of look-ahead), never the whole video, so ``avseg predict`` writes PNGs and the overlay of a video
of any length in bounded memory. :meth:`Predictor.predict_video` collects the same stream into an in-memory
:class:`~avseg.predict.prediction.Prediction` (short videos, notebooks); since that holds every frame, it is refused
up front, with a message, when it would not fit in memory.

**Promptable models** (SAM2, :func:`~avseg.predict.prompts.is_promptable`) track the object(s) a user gives on one
frame (:class:`~avseg.predict.prompts.VideoPrompts`: clicks, a box or a mask, in the video's pixel coordinates)
through the whole video, frame by frame from the prompted frame on, with
:meth:`~avseg.models.sam2_vos.SAM2VOS.track_iter` (the frames go in chunks of the model's ``eval_chunk``, so the
result is that of :meth:`~avseg.models.sam2_vos.SAM2VOS.track` on the whole video); only SAM2's windowed memory bank
is kept. Earlier frames are predicted empty. Without a rate recorded in the checkpoint or given, such a model samples
every frame of the video, as VOS benchmarks do. Each object is thresholded at ``sigmoid > threshold``; with several
objects a pixel takes the id of its highest-scoring object (the output PNGs then hold the objects' ids, as DAVIS
results do).

**Finished masks.** ``stream_video(..., finished=...)`` is given the masks an interrupted run already wrote: a clip
whose frames all have one is not run again (its masks are read back), which is how ``avseg predict`` resumes. A
tracking run cannot start in the middle (SAM2's memory of a frame depends on every frame before it since the
prompt), so it tracks again from the prompted frame and the finished masks are recomputed; the result is the same.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from avseg.audio.alignment import AudioAlign, clip_waveform, frame_audio_examples, window_example_starts, window_span
from avseg.audio.logmel import SAMPLE_RATE
from avseg.checkpoint import resolve_checkpoint
from avseg.data.base import resize_frames
from avseg.data.types import AVSBatch, AVSSample, collate
from avseg.device import resolve_device
from avseg.errors import AVSegError, AVSegWarning, MissingFileError, UsageError
from avseg.media.audio import samples_for
from avseg.media.video import FramePick, SampledFrame, VideoClip, VideoInfo, VideoReader, probe_video
from avseg.predict.memory import check_memory
from avseg.predict.prediction import Prediction, PredictionSummary
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

__all__ = [
    "FpsCappedWarning",
    "PredictionStream",
    "Predictor",
    "SegmentedFrame",
    "TextRequiredError",
    "fallback_pointer",
]

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


def _expected_frames(info: VideoInfo, *, folder: bool, sample_fps: float | None, rate: float) -> int | None:
    """Sampled frames a video should give: a folder's frame count, the container's count when every frame is read
    (None when it has none), else the duration at ``rate`` (both can be a frame off)."""
    if folder:
        return info.num_frames
    if sample_fps is None:
        return info.num_frames or None
    return max(1, math.floor(info.duration_s * rate + 0.5))


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

    def open_video(
        self,
        video_path: str | Path,
        *,
        fps: float | None = None,
        frame_pick: FramePick | None = None,
        prompts: VideoPrompts | None = None,
    ) -> tuple[VideoReader, VideoInfo, float, float | None]:
        """The reader of a video at the predictor's rate (every frame at or above the source rate, with a
        :class:`FpsCappedWarning` above it), before any frame is decoded; ``prompts`` are checked against the video's
        size first.

        Returns:
            The :class:`~avseg.media.video.VideoReader`, the video's :class:`~avseg.media.video.VideoInfo`, the
            window rate, and the rate that was asked for when it was lowered (else None).
        """
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
                    stacklevel=3,
                )
            rate, sample_fps = info.source_fps, None
        if prompts is not None:
            expected = _expected_frames(info, folder=path.is_dir(), sample_fps=sample_fps, rate=rate)
            # The count from the container or the duration can be a frame off: a prompt frame past it by more is
            # refused now, before decoding; the exact count is checked once the video has been read.
            if expected is not None and prompts.frame > expected:
                prompts.check_frame(expected, estimated=True)
        reader = VideoReader(
            path, fps=sample_fps, frame_pick=frame_pick or self.frame_pick, audio=True, folder_fps=rate
        )
        return reader, info, rate, requested

    def stream_video(
        self,
        video_path: str | Path,
        text: str | None = None,
        *,
        fps: float | None = None,
        clip_len: int | None = None,
        frame_pick: FramePick | None = None,
        prompts: VideoPrompts | None = None,
        progress: bool = False,
        finished: Callable[[int], Tensor | None] | None = None,
    ) -> PredictionStream:
        """Segment a video (file or folder of frames) as it is decoded: iterate the result for each sampled frame
        with its mask (:class:`SegmentedFrame`, in time order); afterwards it describes the run.

        Same arguments as :meth:`predict_video`, plus ``finished``: sampled frame ``k`` → its mask when an earlier run
        already made it (``uint8 (H, W)`` as :attr:`SegmentedFrame.mask`), else None; clips whose frames all have one
        are not run (promptable models track the whole video in any case). Text and prompts are checked, and the
        prompts against the video's size, before anything is decoded.
        """
        text = self.check_text(text)
        self.check_prompts(prompts)
        reader, info, rate, requested = self.open_video(video_path, fps=fps, frame_pick=frame_pick, prompts=prompts)
        total = _expected_frames(info, folder=reader.is_folder, sample_fps=reader.fps, rate=rate)
        length = positive_int(clip_len if clip_len is not None else self.clip_len, "clip_len")
        return PredictionStream(
            self,
            reader,
            rate=rate,
            text=text,
            clip_len=length,
            has_audio=info.has_audio,
            prompts=prompts,
            total=total,
            progress=progress,
            finished=finished,
            requested_fps=requested,
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
        """Decode a video (file or folder of frames) with its soundtrack and segment every sampled frame, in memory.

        This is :meth:`stream_video` collected: every sampled frame and mask is held at the video's resolution, so a
        run that would not fit in the available memory is refused before decoding (``avseg predict`` streams to files
        instead and has no such limit). A rate above the video's frame rate is lowered to it, with a
        :class:`FpsCappedWarning`: at or above the source rate every source frame is used once (``frame_pick``
        ``"all"``), never a repeated one.

        Args:
            video_path: any file PyAV opens, or a folder of frames (read at ``fps`` frames per second, with
                ``audio.wav`` beside them; see :func:`~avseg.media.video.read_video`).
            text: the referring expression (required by text models, ignored by AVS models).
            fps: sampling rate (default: the predictor's).
            clip_len: frames per forward clip (default: the predictor's).
            frame_pick: frame-picking rule (default: the predictor's).
            prompts: the object(s) a promptable model tracks (required by it, refused by other models); checked
                against the video's size before decoding.
            progress: show the progress over the sampled frames on stderr (a bar on a terminal, else a line every
                15 s), with its rate and ETA.

        Returns:
            The :class:`Prediction`.
        """
        stream = self.stream_video(
            video_path, text, fps=fps, clip_len=clip_len, frame_pick=frame_pick, prompts=prompts, progress=progress
        )
        if not stream.reader.is_folder:  # decoded frames + masks + the painted overlay, all at the video's resolution
            info = probe_video(video_path)
            frames = stream.total or max(1, math.floor(info.duration_s * stream.rate + 0.5))
            check_memory(
                frames * info.width * info.height * 7, f"{frames} sampled frames of {video_path}", "a lower --fps"
            )
        return stream.collect()

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
            prompts: the object(s) a promptable model tracks.
            progress: show the progress over the frames on stderr.
        """
        text = self.check_text(text)
        self.check_prompts(prompts)
        length = positive_int(clip_len if clip_len is not None else self.clip_len, "clip_len")
        source = _ClipFrames(clip, float(clip.sample_fps or clip.source_fps or self.fps))
        if prompts is not None:
            prompts.check(int(clip.frames.shape[2]), int(clip.frames.shape[3]))
        if has_audio is None:
            has_audio = clip.audio is not None and bool(np.any(source.wave))
        stream = PredictionStream(
            self,
            source,
            rate=source.rate,
            text=text,
            clip_len=length,
            has_audio=has_audio,
            prompts=prompts,
            total=int(clip.frames.shape[0]),
            progress=progress,
        )
        return stream.collect()

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


@dataclass
class SegmentedFrame:
    """One sampled frame with its mask, as :meth:`Predictor.stream_video` hands it on.

    Attributes:
        index: sampled frame ``k`` (window ``k``).
        image: ``uint8`` ``(3, H, W)`` the frame at the video's resolution.
        mask: ``uint8`` ``(H, W)``: 0/1 for binary models, class ids for semantic ones, object ids (or 0/1 for one
            object) for promptable ones.
        time_s: presentation time (s) of the source frame.
        source_index: index of the source frame in the video.
        finished: the mask came from ``finished`` (an earlier run), not from the model.
    """

    index: int
    image: Tensor
    mask: Tensor
    time_s: float
    source_index: int
    finished: bool = False


class _ClipFrames:
    """A decoded :class:`~avseg.media.video.VideoClip` as the frame source :class:`PredictionStream` reads."""

    def __init__(self, clip: VideoClip, rate: float) -> None:
        self.clip, self.rate = clip, rate
        num_frames = int(clip.frames.shape[0])
        if clip.audio is not None:
            if clip.audio_rate != SAMPLE_RATE:
                raise ValueError(f"predict_clip: audio must be at {SAMPLE_RATE} Hz, got {clip.audio_rate}")
            self.wave = np.asarray(clip.audio, dtype=np.float32)
        else:
            self.wave = np.zeros(window_span(0, num_frames, rate)[1], np.float32)
        self.audio = self.wave
        self.num_frames = num_frames
        self.span_s = self.wave.size / SAMPLE_RATE
        self.is_folder = False
        self.path = clip.path
        self.source_fps = float(clip.source_fps)
        self.frame_pick = clip.frame_pick
        self.audio_padded = bool(clip.audio_padded)
        self.progress = None

    def __iter__(self) -> Iterator[SampledFrame]:
        for k in range(self.num_frames):
            yield SampledFrame(k, self.clip.frames[k], float(self.clip.timestamps[k]), int(self.clip.source_indices[k]))

    def audio_upto(self, num_samples: int) -> np.ndarray:
        return np.pad(self.wave[:num_samples], (0, max(0, num_samples - self.wave.size)))


class PredictionStream:
    """The sampled frames of one video with their masks, made while the video is decoded (iterate it once).

    Built by :meth:`Predictor.stream_video`; the iteration yields :class:`SegmentedFrame` in time order and keeps
    only small per-frame records (time, source frame, foreground share). Afterwards :meth:`summary` describes the
    run (the settings ``avseg predict`` records) and :attr:`audio` is the soundtrack of the sampled span.

    Attributes:
        rate: the window rate (frames per second of video).
        clip_len: frames per forward clip (the whole video for a promptable model).
        total: the sampled frames expected (from the container; None when unknown).
        kind, num_classes: the mask kind (``"binary"``/``"semantic"``) and channels, once a mask exists.
        num_clips: forward clips run (or, resuming, that would have run).
        model_calls: forward passes actually run.
        elapsed_s: seconds spent in the model and the upsampling.
    """

    def __init__(
        self,
        predictor: Predictor,
        reader: VideoReader | _ClipFrames,
        *,
        rate: float,
        text: str | None,
        clip_len: int,
        has_audio: bool,
        prompts: VideoPrompts | None,
        total: int | None,
        progress: bool,
        finished: Callable[[int], Tensor | None] | None = None,
        requested_fps: float | None = None,
    ) -> None:
        self.predictor = predictor
        self.reader = reader
        self.rate = rate
        self.text = text
        self.clip_len = clip_len
        self.has_audio = has_audio
        self.prompts = prompts
        self.total = total
        self.progress = progress
        self.finished = finished
        self.requested_fps = requested_fps
        self.kind: Literal["binary", "semantic"] | None = None
        self.num_classes = 0
        self.num_clips = 0
        self.model_calls = 0
        self.elapsed_s = 0.0
        # What an MLLM segmenter that writes its answer (answer_mode "generate") wrote for each clip it ran.
        self.answers: list[dict[str, Any]] = []
        self.size: tuple[int, int] = (0, 0)
        self.timestamps: list[float] = []
        self.source_indices: list[int] = []
        self.foreground: list[float] = []
        self.done = False
        name = Path(reader.path).stem if reader.path is not None else "video"
        self.name = name

    @property
    def audio(self) -> np.ndarray:
        """16 kHz mono over the sampled span (after the iteration)."""
        if self.reader.audio is None:
            raise RuntimeError("PredictionStream.audio: the stream has not been read to its end")
        return self.reader.audio

    def audio_upto(self, num_samples: int) -> np.ndarray:
        """The first samples of the soundtrack, final while frames are still coming (see ``VideoReader``)."""
        return self.reader.audio_upto(num_samples)

    def __iter__(self) -> Iterator[SegmentedFrame]:
        desc = f"{'tracking' if self.prompts is not None else 'segmenting'} {Path(self.reader.path).name}"
        with Progress(desc, self.total, "frame", enabled=self.progress) as bar:
            frames = self._track() if self.prompts is not None else self._segment()
            for frame in frames:
                self.timestamps.append(frame.time_s)
                self.source_indices.append(frame.source_index)
                self.foreground.append(float((frame.mask > 0).float().mean()))
                bar.update()
                yield frame
        if self.prompts is not None:
            self.prompts.check_frame(len(self.timestamps))
        self.done = True

    # -- groups of frames ----------------------------------------------------------------------------------------

    def _groups(self, length: int, offset: int = 0) -> Iterator[tuple[int, list[SampledFrame], np.ndarray]]:
        """Consecutive groups of sampled frames, ``length`` at a time from frame ``offset`` (one at a time before
        it), each with the audio track its clip reads (a prefix of the final track that covers it).

        A group comes out once its frames' audio examples can no longer change (module docstring, 3.), so that it
        holds the frames of one clip plus at most half a second of look-ahead."""
        pending: list[SampledFrame] = []
        for frame in self.reader:
            if not pending and not self.size[0]:
                self.size = (int(frame.image.shape[1]), int(frame.image.shape[2]))
            pending.append(frame)
            while pending:
                start = pending[0].index
                size = 1 if start < offset else length
                if len(pending) < size:
                    break
                known = samples_for(self.reader.span_s, SAMPLE_RATE)  # the track's final samples so far
                if not self._audio_final(start, start + size, known):
                    break
                yield start, pending[:size], self.reader.audio_upto(known)
                del pending[:size]
        wave = self.reader.audio if self.reader.audio is not None else self.reader.audio_upto(0)
        while pending:
            start = pending[0].index
            size = 1 if start < offset else length
            yield start, pending[:size], wave
            del pending[:size]

    def _audio_final(self, start: int, stop: int, known: int) -> bool:
        """Whether the examples of frames ``[start, stop)`` are the same on a track of ``known`` samples as on any
        longer one (the ``"window"`` rule shifts the last examples back to the track's end)."""
        if self.predictor.audio_align != "window":
            return window_span(start, stop, self.rate)[1] <= known
        frames = range(start, stop)
        return bool(
            np.array_equal(
                window_example_starts(frames, self.rate, known), window_example_starts(frames, self.rate, 1 << 62)
            )
        )

    def _sample(self, frames: list[SampledFrame], wave: np.ndarray, length: int) -> AVSSample:
        """The model input of consecutive sampled frames, at the model's size (padding is added by collate)."""
        predictor = self.predictor
        start, stop = frames[0].index, frames[-1].index + 1
        pixels = resize_frames(torch.stack([f.image for f in frames]), predictor.image_size)  # (n, 3, h, w)
        n = stop - start
        return AVSSample(
            frames=pixels,
            masks=torch.zeros((n, *predictor.image_size), dtype=torch.uint8),
            frame_valid=torch.ones(n, dtype=torch.bool),
            label_valid=torch.zeros(n, dtype=torch.bool),
            audio_wave=clip_waveform(wave, self.rate, start, stop, length),
            audio_examples=frame_audio_examples(wave, self.rate, start, stop, predictor.audio_align),
            video_id=self.name,
            split="predict",
            dataset="video",
            text=self.text,
            uid=f"{self.name}@{start}",
            has_audio=self.has_audio,
            orig_size=self.size,
            meta={"frame_indices": list(range(start, stop)), "timestamps": [f.time_s for f in frames]},
        )

    # -- clip models ---------------------------------------------------------------------------------------------

    def _segment(self) -> Iterator[SegmentedFrame]:
        """Run the clips ``batch_size`` at a time as they fill up; clips whose masks are all ``finished`` are not
        run."""
        group: list[tuple[list[SampledFrame], np.ndarray]] = []
        for _, frames, wave in self._groups(self.clip_len):
            self.num_clips += 1
            stored = [self.finished(f.index) for f in frames] if self.finished is not None else [None]
            if all(m is not None for m in stored):
                yield from self._run(group)
                group = []
                for frame, mask in zip(frames, stored, strict=True):
                    yield self._segmented(frame, mask, finished=True)
                continue
            group.append((frames, wave))
            if len(group) == self.predictor.batch_size:
                yield from self._run(group)
                group = []
        yield from self._run(group)

    def _run(self, group: list[tuple[list[SampledFrame], np.ndarray]]) -> Iterator[SegmentedFrame]:
        if not group:
            return
        predictor, length = self.predictor, self.clip_len
        batch = collate([self._sample(frames, wave, length) for frames, wave in group], num_frames=length)
        batch = batch.to(predictor.device)
        tic = time.perf_counter()
        with torch.inference_mode():
            output = predictor.model(batch)
            logits = output.mask_logits  # (B, T, K, h, w)
            self.model_calls += 1
            if logits.ndim != 5 or tuple(logits.shape[:2]) != (len(group), length):
                raise AVSegError(
                    f"model {predictor.name} returned mask_logits of shape {tuple(logits.shape)}, "
                    f"expected ({len(group)}, {length}, K, h, w)"
                )
            self._set_kind(int(logits.shape[2]))
            answers = output.aux.get("answers")  # one text per clip, from an MLLM that writes its answer
            if answers is not None:
                for (frames, _), answer in zip(group, answers, strict=True):
                    self.answers.append({"frames": [frames[0].index, frames[-1].index], "answer": answer})
            # Padded frames (beyond each clip's own) are dropped here; they never reach the outputs.
            masks = [
                _logits_to_masks(logits[i, : len(frames)], self.size, predictor.threshold)
                for i, (frames, _) in enumerate(group)
            ]
        predictor._synchronize()
        self.elapsed_s += time.perf_counter() - tic
        for (frames, _), clip_masks in zip(group, masks, strict=True):
            for frame, mask in zip(frames, clip_masks, strict=True):
                yield self._segmented(frame, mask)

    def _set_kind(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.kind = "binary" if num_classes == 1 else "semantic"

    def _segmented(self, frame: SampledFrame, mask: Tensor, *, finished: bool = False) -> SegmentedFrame:
        return SegmentedFrame(frame.index, frame.image, mask, frame.time_s, frame.source_index, finished)

    # -- promptable models ---------------------------------------------------------------------------------------

    def _track(self) -> Iterator[SegmentedFrame]:
        """Track the prompted objects from the prompted frame on, ``eval_chunk`` frames per encoder call."""
        prompts = self.prompts
        assert prompts is not None
        predictor = self.predictor
        objects = prompts.objects
        self.num_clips = 1
        self._set_kind(len(objects))
        ids = prompts.object_ids if len(objects) > 1 else None
        held: list[SampledFrame] = []  # decoded frames whose masks are still being tracked

        def chunks() -> Iterator[AVSBatch]:
            for _, frames, wave in groups:
                held.extend(frames)
                sample = self._sample(frames, wave, len(frames))
                # One row per object; every row holds the same frames (SAM2 tracks each object with its own memory).
                yield collate([sample] * len(objects), num_frames=len(frames)).to(predictor.device)

        chunk = int(getattr(predictor.model.config, "eval_chunk", 8))
        groups = self._groups(chunk, offset=prompts.frame)
        if prompts.frame > 0:
            for _, frames, _ in groups:  # the frames before the prompted one, one at a time: empty
                yield self._segmented(frames[0], torch.zeros(self.size, dtype=torch.uint8))
                if frames[0].index + 1 == prompts.frame:
                    break
        if prompts.kind == "mask":
            kwargs = {"masks": torch.from_numpy(np.stack([o.mask for o in objects]))}  # (n, H, W) bool
        else:
            points, labels = objects[0].clicks()  # (P, 2) in the video's pixels, (P,)
            kwargs = {"points": torch.from_numpy(points)[None], "point_labels": torch.from_numpy(labels)[None]}
        tracked = predictor.model.track_iter(chunks(), start=prompts.frame, **kwargs)
        while True:
            tic = time.perf_counter()
            with torch.inference_mode():
                step = next(tracked, None)
                if step is not None:  # (n, 1, h, w) -> (1, n, h, w): the objects as channels
                    logits = step[1].transpose(0, 1)
                    mask = _logits_to_masks(logits, self.size, predictor.threshold, object_ids=ids)[0]
            predictor._synchronize()
            self.elapsed_s += time.perf_counter() - tic
            if step is None:
                break
            yield self._segmented(held.pop(0), mask)
        self.model_calls = 1

    # -- results -------------------------------------------------------------------------------------------------

    def collect(self) -> Prediction:
        """Read the whole stream into an in-memory :class:`Prediction`."""
        images, masks = [], []
        for frame in self:
            images.append(frame.image)
            masks.append(frame.mask)
        summary = self.summary()
        return Prediction(
            masks=torch.stack(masks) if masks else torch.zeros((0, *self.size), dtype=torch.uint8),
            frames=torch.stack(images) if images else torch.zeros((0, 3, *self.size), dtype=torch.uint8),
            audio=self.audio,
            **{f.name: getattr(summary, f.name) for f in dataclasses.fields(PredictionSummary)},
        )

    def summary(self) -> PredictionSummary:
        """What the finished run made and how (see :class:`~avseg.predict.prediction.PredictionSummary`)."""
        if not self.done:
            raise RuntimeError("PredictionStream.summary: the stream has not been read to its end")
        prompts = self.prompts
        extra: dict[str, Any] = (
            {} if prompts is None else {"prompt": prompts.record(), "object_ids": prompts.object_ids}
        )
        if self.requested_fps is not None:
            extra["requested_fps"] = self.requested_fps
        if self.answers:
            extra["answers"] = self.answers
        reader = self.reader
        return PredictionSummary(
            kind=self.kind or "binary",
            num_classes=self.num_classes or 1,
            size=self.size,
            timestamps=np.asarray(self.timestamps, dtype=np.float64),
            source_indices=np.asarray(self.source_indices, dtype=np.int64),
            foreground=np.asarray(self.foreground, dtype=np.float64),
            fps=self.rate,
            frame_pick=reader.frame_pick,
            clip_len=len(self.timestamps) if prompts is not None else self.clip_len,
            num_clips=self.num_clips,
            threshold=self.predictor.threshold,
            text=self.text,
            audio_align=self.predictor.audio_align,
            has_audio=self.has_audio,
            audio_padded=bool(reader.audio_padded),
            source_fps=float(reader.source_fps),
            video_path=Path(reader.path) if reader.path is not None else None,
            elapsed_s=self.elapsed_s,
            device=str(self.predictor.device),
            image_size=self.predictor.image_size,
            extra=extra,
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
