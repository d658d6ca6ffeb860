"""Segmentation loss primitives shared by the models (each model's ``losses`` composes them with its own weights).

All take logits, never probabilities, so that the numerically stable ``*_with_logits`` forms are used, and reduce
to a scalar mean over the leading (frame or mask) axis unless stated otherwise.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["sam_multimask_losses", "sigmoid_focal_loss", "soft_dice_loss"]


def soft_dice_loss(logits: Tensor, target: Tensor, smooth: float = 1.0) -> Tensor:
    """Mean over the leading axis of ``1 - (2|p∩g| + s) / (|p| + |g| + s)`` with ``p = sigmoid(logits)``.

    Args:
        logits: ``(N, ...)``; everything after the first axis is one mask.
        target: same shape, 0/1.
        smooth: ``s``; with an empty target the loss is ``|p| / (|p| + s)``, which pushes predictions to empty.
    """
    p = logits.sigmoid().flatten(1)
    g = target.to(p.dtype).flatten(1)
    dice = (2 * (p * g).sum(1) + smooth) / (p.sum(1) + g.sum(1) + smooth)
    return (1 - dice).mean()


def sigmoid_focal_loss(logits: Tensor, target: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Focal loss (Lin et al. 2017) averaged over every element: ``-a_t (1 - p_t)^gamma log(p_t)``.

    Args:
        logits: ``(N, ...)``.
        target: same shape, 0/1.
        alpha: weight of positives (``1 - alpha`` for negatives); a negative value disables the weighting.
        gamma: focusing exponent.
    """
    target = target.to(logits.dtype)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p = logits.sigmoid()
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * target + (1 - alpha) * (1 - target))
    return loss.mean()


def sam_multimask_losses(
    mask_logits: Tensor,
    iou_pred: Tensor,
    object_logits: Tensor,
    target: Tensor,
    *,
    focal_weight: float = 20.0,
    dice_weight: float = 1.0,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
    supervise_all_iou: bool = True,
    iou_l1: bool = True,
) -> dict[str, Tensor]:
    """SAM2's training loss for one prediction step of ``N`` frames (``MultiStepMultiMasksAndIous``), per frame.

    With ``M > 1`` candidate masks only the best one by ``focal_weight·focal + dice_weight·dice`` is supervised by
    the focal and dice terms; the IoU head regresses the true IoU of every candidate (``supervise_all_iou``, mean
    over candidates) or of the best one, with an L1 (``iou_l1``) or squared error. The mask, dice and IoU terms count
    only on frames whose target has foreground; the object-score term is a plain BCE on "target has foreground".
    Focal and dice are means over each mask's pixels (SAM2 divides by the number of objects, here 1 per frame).

    Args:
        mask_logits: ``(N, M, H, W)`` candidate mask logits at the target's resolution.
        iou_pred: ``(N, M)`` predicted IoUs.
        object_logits: ``(N,)`` object-score logits.
        target: ``(N, H, W)`` binary targets.
        focal_weight, dice_weight: the weights used to pick the best candidate (20 and 1 in SAM2).
        focal_alpha, focal_gamma: focal-loss parameters (0.25, 2).
        supervise_all_iou: regress the IoU of every candidate, not only the best.
        iou_l1: L1 (True) or squared error for the IoU head.

    Returns:
        Per-frame ``(N,)`` tensors ``"focal"``, ``"dice"``, ``"iou"``, ``"object"`` (unweighted) and ``"best"`` (the
        index of the supervised candidate); combine them with the caller's weights.
    """
    target = target.to(mask_logits.dtype)
    t = target[:, None].expand_as(mask_logits)  # (N, M, H, W)
    ce = F.binary_cross_entropy_with_logits(mask_logits, t, reduction="none")
    p = mask_logits.sigmoid()
    p_t = p * t + (1 - p) * (1 - t)
    focal = ce * (1 - p_t) ** focal_gamma
    if focal_alpha >= 0:
        focal = focal * (focal_alpha * t + (1 - focal_alpha) * (1 - t))
    focal = focal.flatten(2).mean(-1)  # (N, M)
    dice = 1 - (2 * (p * t).flatten(2).sum(-1) + 1) / (p.flatten(2).sum(-1) + t.flatten(2).sum(-1) + 1)  # (N, M)
    pred_fg, gt_fg = mask_logits.flatten(2) > 0, t.flatten(2) > 0
    actual_iou = (pred_fg & gt_fg).sum(-1).to(p.dtype) / (pred_fg | gt_fg).sum(-1).clamp_min(1).to(p.dtype)
    iou_err = (iou_pred - actual_iou).abs() if iou_l1 else (iou_pred - actual_iou) ** 2  # (N, M)
    best = (focal_weight * focal + dice_weight * dice).argmin(1, keepdim=True)  # (N, 1)
    has_object = (target.flatten(1) > 0).any(1).to(p.dtype)  # (N,)
    iou_term = iou_err.mean(1) if supervise_all_iou else iou_err.gather(1, best)[:, 0]
    return {
        "focal": focal.gather(1, best)[:, 0] * has_object,
        "dice": dice.gather(1, best)[:, 0] * has_object,
        "iou": iou_term * has_object,
        "object": F.binary_cross_entropy_with_logits(object_logits, has_object, reduction="none"),
        "best": best[:, 0],
    }


def squared_dice_loss(logits: Tensor, target: Tensor, eps: float = 1e-3) -> Tensor:
    """Mean over the leading axis of ``1 - 2|p∩g| / (|p|² + |g|² + 2 eps)`` with ``p = sigmoid(logits)`` (V-Net Dice).

    The "IoU loss" of AVSegFormer (``F5_Dice_loss``: squared sums in the denominator, ``eps`` added to each). With an
    empty target the loss is 1 whatever the prediction, so it gives no gradient there: pair it with BCE when empty
    masks must be learned (null expressions).

    Args:
        logits: ``(N, ...)``; everything after the first axis is one mask.
        target: same shape, 0/1.
        eps: added to each squared sum.
    """
    p = logits.sigmoid().flatten(1)
    g = target.to(p.dtype).flatten(1)
    dice = 2 * (p * g).sum(1) / ((p * p).sum(1) + eps + (g * g).sum(1) + eps)
    return (1 - dice).mean()
