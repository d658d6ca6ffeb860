"""SAM2's memory bank, kept bounded: what a frame leaves behind and which of it later frames read.

After each frame SAM2 stores a *spatial memory* (the memory encoder's ``(64, H/16, W/16)`` map of the frame's features
and predicted mask) and an *object pointer* (a ``C``-vector from the decoder's output token). A later frame ``t``
cross-attends to the memories of every conditioning (prompted) frame and of the ``num_maskmem - 1`` frames just
before it (after it, when tracking backwards), and to the pointers of the conditioning frames and of up to
``max_object_pointers - 1`` frames before it. This is ``_gather_memory_frame_outputs`` / ``_get_object_pointers``
of transformers' ``Sam2VideoModel`` (``_prepare_memory_conditioned_features`` of upstream ``SAM2Base``),
restated on a plain dictionary so that it runs with gradients and with any batch size.

Upstream and transformers keep every tracked frame's output until the session ends (40-80 GB on 1-4 minute videos,
facebookresearch/sam2#196). :class:`MemoryBank` instead forgets a tracked frame as soon as no frame still to be
processed can read it (:func:`last_reads`), so a video of any length holds at most the conditioning frames plus a
window of ``max(num_maskmem, max_object_pointers)`` tracked frames, and the results are unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

__all__ = ["FrameMemory", "MemoryBank", "last_reads"]


@dataclass
class FrameMemory:
    """What one frame of ``B`` tracks leaves in the memory bank.

    Attributes:
        features: ``(h*w, B, 64)`` spatial memory (in ``memory_dtype``).
        pos: ``(h*w, B, 64)`` its sine position encoding.
        pointer: ``(B, C)`` object pointer.
    """

    features: Tensor
    pos: Tensor
    pointer: Tensor


def _reads(frame: int, reverse: bool, window: int, num_frames: int) -> range:
    """Frames (other than conditioning ones) that tracking ``frame`` may read: the ``window`` frames before it
    (after it when ``reverse``)."""
    if reverse:
        return range(frame + 1, min(frame + window, num_frames - 1) + 1)
    return range(max(frame - window, 0), frame)


def last_reads(plan: Sequence[tuple[int, bool]], window: int, num_frames: int) -> dict[int, int]:
    """For a processing plan ``[(frame, reverse), …]``, the last step at which each frame may still be read."""
    last: dict[int, int] = {}
    for step, (frame, reverse) in enumerate(plan):
        for read in _reads(frame, reverse, window, num_frames):
            last[read] = step
    return last


class MemoryBank:
    """The memories and pointers of ``B`` tracks through one video.

    Args:
        num_maskmem: SAM2's number of memory slots (7: the conditioning frames plus 6 recent frames).
        max_object_pointers: pointers read per frame (SAM2: ``min(num_frames, 16)``).
        max_cond_frames: at most this many conditioning frames are attended to (-1: all), the temporally closest.
    """

    def __init__(self, *, num_maskmem: int, max_object_pointers: int, max_cond_frames: int) -> None:
        self.num_maskmem = num_maskmem
        self.max_object_pointers = max_object_pointers
        self.max_cond_frames = max_cond_frames
        self.cond: dict[int, FrameMemory] = {}
        self.tracked: dict[int, FrameMemory] = {}

    @property
    def read_window(self) -> int:
        """How many tracked frames before a frame (after it, tracking backwards) it may read:
        ``max(num_maskmem, max_object_pointers) - 1``; the ``window`` of :func:`last_reads`."""
        return max(self.num_maskmem, self.max_object_pointers) - 1

    def add(self, frame: int, memory: FrameMemory, *, conditioning: bool) -> None:
        """Store a frame's memory, as a conditioning memory (read by every later frame) or a tracked one. A frame
        stored again replaces its earlier memory, and a conditioning memory replaces a tracked one."""
        if conditioning:
            self.tracked.pop(frame, None)
        (self.cond if conditioning else self.tracked)[frame] = memory

    def forget(self, frames: Sequence[int]) -> None:
        """Drop tracked frames that nothing will read any more."""
        for frame in frames:
            self.tracked.pop(frame, None)

    def _select_cond(self, frame: int) -> tuple[dict[int, FrameMemory], dict[int, FrameMemory]]:
        """The conditioning frames attended to (the closest before, the closest after, then the nearest) and the
        others (SAM2's ``select_closest_cond_frames``)."""
        cond = self.cond
        if self.max_cond_frames == -1 or len(cond) <= self.max_cond_frames:
            return dict(cond), {}
        selected: dict[int, FrameMemory] = {}
        before = max((t for t in cond if t < frame), default=None)
        if before is not None:
            selected[before] = cond[before]
        after = min((t for t in cond if t >= frame), default=None)
        if after is not None:
            selected[after] = cond[after]
        rest = sorted((t for t in cond if t not in selected), key=lambda t: abs(t - frame))
        for t in rest[: self.max_cond_frames - len(selected)]:
            selected[t] = cond[t]
        return selected, {t: m for t, m in cond.items() if t not in selected}

    def memories(self, frame: int, *, reverse: bool) -> list[tuple[int, FrameMemory]]:
        """``(temporal offset, memory)`` pairs read by ``frame``: offset 0 for conditioning frames, then
        ``num_maskmem - 1 … 1`` for the recent tracked frames that exist (transformers' order)."""
        selected, unselected = self._select_cond(frame)
        out = [(0, memory) for memory in selected.values()]
        for offset in range(self.num_maskmem - 1, 0, -1):
            previous = frame + offset if reverse else frame - offset
            memory = self.tracked.get(previous, unselected.get(previous))
            if memory is not None:
                out.append((offset, memory))
        return out

    def pointers(self, frame: int, *, reverse: bool, only_past_cond: bool) -> tuple[list[int], list[Tensor]]:
        """Temporal offsets and object pointers read by ``frame``: the conditioning frames (in eval mode only those
        not after it, SAM2's ``only_obj_ptrs_in_the_past_for_eval``), then up to ``max_object_pointers - 1``
        tracked frames before it."""
        sign = -1 if reverse else 1
        offsets: list[int] = []
        pointers: list[Tensor] = []
        for t, memory in self.cond.items():
            if only_past_cond and (t < frame if reverse else t > frame):
                continue
            offsets.append((frame - t) * sign)
            pointers.append(memory.pointer)
        for diff in range(1, self.max_object_pointers):
            previous = frame + diff if reverse else frame - diff
            if previous < 0:
                break
            memory = self.tracked.get(previous)
            if memory is not None:
                offsets.append(diff)
                pointers.append(memory.pointer)
        return offsets, pointers

    def nbytes(self) -> int:
        """Bytes held by the bank's tensors."""
        total = 0
        for memory in [*self.cond.values(), *self.tracked.values()]:
            for tensor in (memory.features, memory.pos, memory.pointer):
                total += tensor.numel() * tensor.element_size()
        return total
