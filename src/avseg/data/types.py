"""The sample and batch types every reader emits and every model consumes.

One :class:`AVSSample` is one clip of ``T`` frames with its soundtrack and, for referring tasks, one expression: a
Ref-AVS expression, an AVSBench clip (no text), or an RVOS expression (no audio). :func:`collate` stacks samples into
an :class:`AVSBatch`, padding clips of different lengths with zero frames whose ``frame_valid`` flag is False: a
batch never silently mixes shapes, and code downstream uses the flags instead of guessing.

Conventions (all tensors on CPU until the trainer moves them):

- ``frames``: ``uint8`` ``(T, 3, H, W)`` RGB, not normalised (each model applies its own mean/std).
- ``audio_wave``: ``float32`` ``(N,)`` mono at 16 kHz covering the clip (``N = T * 16000`` at one frame per second).
- ``audio_examples``: ``float32`` ``(T, 1, 96, 64)`` VGGish log-mel examples, one per frame (see ``avseg.audio``).
- ``audio_embeddings``: optional ``float32`` ``(T, 128)`` precomputed VGGish embeddings.
- ``masks``: ``uint8`` ``(T, H, W)``: 0/1 for binary tasks, class indices 0..70 for AVSS (0 = background). Frames
  without a label hold zeros and have ``label_valid`` False.
- ``frame_valid``: ``bool`` ``(T,)`` real frames (False on padding). ``label_valid``: ``bool`` ``(T,)`` frames whose
  mask is ground truth (S4/v1s training labels only the first frame).
- ``native_masks``: optional ``uint8`` ``(T, H0, W0)``: the ground truth at the resolution stored on disk, read the way
  the benchmark's official loader reads it. Readers fill it when built with ``native_masks=True`` (evaluation), so
  that a metric preset can score at the resolution the official code scores at; ``masks`` stays at the model's size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

import torch
from torch import Tensor

from avseg.errors import ShapeError

__all__ = ["AUDIO_SAMPLE_RATE", "AVSBatch", "AVSSample", "collate", "random_batch"]

AUDIO_SAMPLE_RATE = 16_000


@dataclass
class AVSSample:
    """One clip (and, for referring tasks, one expression). See the module docstring for shapes."""

    frames: Tensor
    masks: Tensor
    frame_valid: Tensor
    label_valid: Tensor
    audio_wave: Tensor
    audio_examples: Tensor
    video_id: str
    split: str
    dataset: str
    text: str | None = None
    audio_embeddings: Tensor | None = None
    uid: str | None = None
    object_id: str | None = None
    is_null: bool = False
    has_audio: bool = True
    modalities: tuple[str, ...] = ()
    """Which cues the expression needs (SynthAV records e.g. ``("audio",)``, ``("visual",)``); empty if unknown."""
    frame_names: tuple[str, ...] = ()
    """Source frame names (e.g. RVOS frame ids), used when predictions are written back under original names."""
    orig_size: tuple[int, int] | None = None
    """``(H, W)`` of the frames on disk before any resize."""
    native_masks: Tensor | None = None
    """``uint8`` ``(T, H0, W0)`` ground truth at the resolution on disk (see the module docstring), or None."""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    def validate(self) -> None:
        """Check ranks, sizes and dtypes; raise :class:`ShapeError` naming the field and the sample."""
        who = f"sample {self.uid or self.video_id!r}"
        if self.frames.ndim != 4 or self.frames.shape[1] != 3 or self.frames.dtype != torch.uint8:
            raise ShapeError(
                f"{who}: frames must be uint8 (T, 3, H, W), got {self.frames.dtype} {tuple(self.frames.shape)}"
            )
        t, _, h, w = self.frames.shape
        if self.masks.shape != (t, h, w) or self.masks.dtype != torch.uint8:
            raise ShapeError(
                f"{who}: masks must be uint8 {(t, h, w)}, got {self.masks.dtype} {tuple(self.masks.shape)}"
            )
        for name in ("frame_valid", "label_valid"):
            flag = getattr(self, name)
            if flag.shape != (t,) or flag.dtype != torch.bool:
                raise ShapeError(f"{who}: {name} must be bool ({t},), got {flag.dtype} {tuple(flag.shape)}")
        if self.audio_wave.ndim != 1 or self.audio_wave.dtype != torch.float32:
            raise ShapeError(
                f"{who}: audio_wave must be float32 (N,), got {self.audio_wave.dtype} {tuple(self.audio_wave.shape)}"
            )
        if self.audio_examples.shape != (t, 1, 96, 64):
            raise ShapeError(f"{who}: audio_examples must be ({t}, 1, 96, 64), got {tuple(self.audio_examples.shape)}")
        if self.audio_embeddings is not None and self.audio_embeddings.shape != (t, 128):
            raise ShapeError(f"{who}: audio_embeddings must be ({t}, 128), got {tuple(self.audio_embeddings.shape)}")
        native = self.native_masks
        if native is not None and (native.ndim != 3 or native.shape[0] != t or native.dtype != torch.uint8):
            got = f"{native.dtype} {tuple(native.shape)}"
            raise ShapeError(f"{who}: native_masks must be uint8 ({t}, H0, W0), got {got}")

    def with_updates(self, **changes: Any) -> AVSSample:
        """A copy with some fields replaced (validated again)."""
        return replace(self, **changes)


@dataclass
class AVSBatch:
    """A collated batch; tensor fields gain a leading batch axis ``B``, per-sample fields become lists.

    Attributes:
        frames: ``uint8`` ``(B, T, 3, H, W)``.
        masks: ``uint8`` ``(B, T, H, W)``.
        frame_valid, label_valid: ``bool`` ``(B, T)``.
        audio_wave: ``float32`` ``(B, N)`` (zero-padded to the longest clip).
        audio_examples: ``float32`` ``(B, T, 1, 96, 64)``.
        audio_embeddings: ``float32`` ``(B, T, 128)`` or None.
        is_null, has_audio: ``bool`` ``(B,)``.
        native_masks: per clip, ``uint8`` ``(T, H0, W0)`` ground truth at the resolution on disk (padded in time
            like ``masks``), or None when the reader was not asked for it.
    """

    frames: Tensor
    masks: Tensor
    frame_valid: Tensor
    label_valid: Tensor
    audio_wave: Tensor
    audio_examples: Tensor
    is_null: Tensor
    has_audio: Tensor
    video_id: list[str]
    split: list[str]
    dataset: list[str]
    text: list[str | None]
    uid: list[str | None]
    object_id: list[str | None]
    modalities: list[tuple[str, ...]]
    frame_names: list[tuple[str, ...]]
    orig_size: list[tuple[int, int] | None]
    meta: list[dict[str, Any]]
    audio_embeddings: Tensor | None = None
    native_masks: list[Tensor | None] | None = None

    @property
    def batch_size(self) -> int:
        return int(self.frames.shape[0])

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[1])

    def __len__(self) -> int:
        return self.batch_size

    def select_frames(self, index: Tensor) -> AVSBatch:
        """The same clips restricted to the frames ``index (T',)`` (in that order): every per-frame field is sliced
        (frames, masks, validity, audio examples and embeddings, frame names); ``audio_wave`` stays whole, since
        its samples are not per frame."""
        index = index.to(torch.long)
        cpu = index.cpu().tolist()
        if any(not 0 <= i < self.num_frames for i in cpu):
            raise ShapeError(f"select_frames: indices {cpu} outside 0..{self.num_frames - 1}")

        def take(x: Tensor) -> Tensor:
            return x.index_select(1, index.to(x.device))

        return replace(
            self,
            frames=take(self.frames),
            masks=take(self.masks),
            frame_valid=take(self.frame_valid),
            label_valid=take(self.label_valid),
            audio_examples=take(self.audio_examples),
            audio_embeddings=take(self.audio_embeddings) if self.audio_embeddings is not None else None,
            frame_names=[tuple(names[i] for i in cpu if i < len(names)) for names in self.frame_names],
            native_masks=(
                None
                if self.native_masks is None
                else [None if m is None else m.index_select(0, index.to(m.device)) for m in self.native_masks]
            ),
        )

    def to(self, device: torch.device | str, non_blocking: bool = False) -> AVSBatch:
        """Move every tensor field to ``device`` (lists are shared, not copied)."""
        changes = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                changes[f.name] = value.to(device, non_blocking=non_blocking)
        return replace(self, **changes)


def _pad_time(x: Tensor, length: int) -> Tensor:
    if x.shape[0] == length:
        return x
    pad = x.new_zeros((length - x.shape[0], *x.shape[1:]))
    return torch.cat([x, pad], dim=0)


def collate(samples: Sequence[AVSSample], num_frames: int | None = None) -> AVSBatch:
    """Stack samples into a batch, padding the time axis with invalid zero frames.

    Args:
        samples: at least one sample; all must share the frame size ``(H, W)`` (resize in the reader otherwise).
        num_frames: pad every clip to this length (default: the longest clip in the batch). A clip longer than
            ``num_frames`` is an error, never a silent truncation.

    Returns:
        The batch; padded frames have ``frame_valid = label_valid = False``.
    """
    if not samples:
        raise ShapeError("collate: got an empty list of samples")
    sizes = {tuple(s.frames.shape[-2:]) for s in samples}
    if len(sizes) > 1:
        detail = ", ".join(f"{s.uid or s.video_id}: {tuple(s.frames.shape[-2:])}" for s in samples)
        raise ShapeError(
            f"collate: samples have different frame sizes ({detail}); pass image_size to the reader to resize them"
        )
    longest = max(s.num_frames for s in samples)
    length = longest if num_frames is None else num_frames
    if longest > length:
        raise ShapeError(f"collate: a clip has {longest} frames but num_frames={length}")
    has_embeddings = {s.audio_embeddings is not None for s in samples}
    if len(has_embeddings) > 1:
        raise ShapeError("collate: some samples carry audio_embeddings and others do not")
    wave_len = max(int(s.audio_wave.shape[0]) for s in samples)
    return AVSBatch(
        frames=torch.stack([_pad_time(s.frames, length) for s in samples]),
        masks=torch.stack([_pad_time(s.masks, length) for s in samples]),
        frame_valid=torch.stack([_pad_time(s.frame_valid, length) for s in samples]),
        label_valid=torch.stack([_pad_time(s.label_valid, length) for s in samples]),
        audio_wave=torch.stack([_pad_time(s.audio_wave, wave_len) for s in samples]),
        audio_examples=torch.stack([_pad_time(s.audio_examples, length) for s in samples]),
        audio_embeddings=(
            torch.stack([_pad_time(s.audio_embeddings, length) for s in samples])  # type: ignore[arg-type]
            if True in has_embeddings
            else None
        ),
        is_null=torch.tensor([s.is_null for s in samples], dtype=torch.bool),
        has_audio=torch.tensor([s.has_audio for s in samples], dtype=torch.bool),
        video_id=[s.video_id for s in samples],
        split=[s.split for s in samples],
        dataset=[s.dataset for s in samples],
        text=[s.text for s in samples],
        uid=[s.uid for s in samples],
        object_id=[s.object_id for s in samples],
        modalities=[s.modalities for s in samples],
        frame_names=[s.frame_names for s in samples],
        orig_size=[s.orig_size for s in samples],
        meta=[s.meta for s in samples],
        native_masks=(
            [None if s.native_masks is None else _pad_time(s.native_masks, length) for s in samples]
            if any(s.native_masks is not None for s in samples)
            else None
        ),
    )


def random_batch(
    b: int = 2,
    t: int = 3,
    size: int = 64,
    *,
    texts: Sequence[str | None] | None = None,
    classes: int = 1,
    masks: Literal["random", "square", "empty"] = "random",
    seed: int = 0,
) -> AVSBatch:
    """A batch of ``b`` clips of ``t`` random uint8 frames ``size`` pixels square, with random log-mel examples
    ``(b, t, 1, 96, 64)`` and silent waveforms: the model contract's input without a dataset, for tests, benchmarks
    and shape checks.

    Args:
        b, t, size: clips, frames per clip, frame size.
        texts: one expression (or None) per clip; None: no expressions.
        classes: mask classes (1: binary masks; K: labels in ``[0, K)``).
        masks: ``"random"`` draws each pixel (30% foreground for binary masks), ``"square"`` puts one square object
            in every frame (a target a model can fit quickly), ``"empty"`` gives empty masks.
        seed: seed of every random tensor.
    """
    if texts is not None and len(texts) != b:
        raise ValueError(f"random_batch: texts has {len(texts)} entries for {b} clips")
    g = torch.Generator().manual_seed(seed)
    if masks == "square" or masks == "empty":
        mask = torch.zeros(b, t, size, size, dtype=torch.uint8)
        if masks == "square":
            mask[:, :, size // 4 : size // 2, size // 4 : size // 2] = 1
    elif masks == "random" and classes == 1:
        mask = (torch.rand(b, t, size, size, generator=g) > 0.7).to(torch.uint8)
    elif masks == "random":
        mask = torch.randint(0, classes, (b, t, size, size), generator=g).to(torch.uint8)
    else:
        raise ValueError(f"random_batch: masks must be 'random', 'square' or 'empty', got {masks!r}")
    return AVSBatch(
        frames=torch.randint(0, 256, (b, t, 3, size, size), generator=g).to(torch.uint8),
        masks=mask,
        frame_valid=torch.ones(b, t, dtype=torch.bool),
        label_valid=torch.ones(b, t, dtype=torch.bool),
        audio_wave=torch.zeros(b, t * AUDIO_SAMPLE_RATE),
        audio_examples=torch.randn(b, t, 1, 96, 64, generator=g),
        is_null=torch.zeros(b, dtype=torch.bool),
        has_audio=torch.ones(b, dtype=torch.bool),
        video_id=[f"v{i}" for i in range(b)],
        split=["train"] * b,
        dataset=["synthetic"] * b,
        text=list(texts) if texts is not None else [None] * b,
        uid=[None] * b,
        object_id=[None] * b,
        modalities=[()] * b,
        frame_names=[()] * b,
        orig_size=[None] * b,
        meta=[{} for _ in range(b)],
    )
