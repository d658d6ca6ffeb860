"""Segmentation loss primitives shared by the models (each model's ``losses`` composes them with its own weights).

All take logits, never probabilities, so that the numerically stable ``*_with_logits`` forms are used, and reduce
to a scalar mean over the leading (frame or mask) axis unless stated otherwise.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["sigmoid_focal_loss", "soft_dice_loss"]


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
