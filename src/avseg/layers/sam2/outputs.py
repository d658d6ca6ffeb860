"""What the SAM2 layer passes around: image features of frames, and tracked frames and clips."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Sam2Features", "Sam2FrameOutput", "Sam2TrackOutput"]


@dataclass
class Sam2Features:
    """Image-encoder outputs of ``N`` frames.

    Attributes:
        fpn: the FPN levels ``(N, C, S/4, S/4)``, ``(N, C, S/8, S/8)``, ``(N, C, S/16, S/16)`` (SAM2's
            ``backbone_fpn[0..2]``, before the mask decoder's ``conv_s0`` / ``conv_s1`` projections).
        pos: their sine position encodings, same shapes (expanded views: identical for every frame).
    """

    fpn: tuple[Tensor, Tensor, Tensor]
    pos: tuple[Tensor, Tensor, Tensor]

    @property
    def num_frames(self) -> int:
        return self.fpn[0].shape[0]

    def select(self, index: int | slice | Sequence[int] | Tensor) -> Sam2Features:
        """The features of some frames (along ``N``)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        if isinstance(index, slice):
            fpn = tuple(f[index] for f in self.fpn)
        else:
            index = torch.as_tensor(index, dtype=torch.long, device=self.fpn[0].device)
            fpn = tuple(f.index_select(0, index) for f in self.fpn)
        count = fpn[0].shape[0]
        pos = tuple(p[:1].expand(count, *p.shape[1:]) for p in self.pos)
        return Sam2Features(fpn=fpn, pos=pos)  # type: ignore[arg-type]


@dataclass
class Sam2FrameOutput:
    """One tracked frame of ``B`` tracks.

    Attributes:
        frame_idx: the frame index.
        masks: ``(B, 1, S/4, S/4)`` the mask SAM2 tracks (best predicted IoU among the multimask outputs, or the
            single-mask output), set to -1024 where the object score is negative.
        multimask_logits: ``(B, 3, S/4, S/4)`` the three multimask outputs (same suppression; a mask-prompted frame
            repeats its mask).
        multimask_iou: ``(B, 3)`` their predicted IoUs.
        object_score_logits: ``(B,)`` object-presence logits.
        object_pointer: ``(B, C)`` the frame's object pointer.
    """

    frame_idx: int
    masks: Tensor
    multimask_logits: Tensor
    multimask_iou: Tensor
    object_score_logits: Tensor
    object_pointer: Tensor


@dataclass
class Sam2TrackOutput:
    """A propagated clip, in frame order.

    Attributes:
        masks: ``(B, T, 1, S/4, S/4)`` tracked masks (see :class:`Sam2FrameOutput`).
        multimask_logits: ``(B, T, 3, S/4, S/4)``.
        multimask_iou: ``(B, T, 3)``.
        object_score_logits: ``(B, T)``.
    """

    masks: Tensor
    multimask_logits: Tensor
    multimask_iou: Tensor
    object_score_logits: Tensor
