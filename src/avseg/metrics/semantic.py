"""AVSS (AVSBench-semantic) mIoU and F: the official formula with its quirks, and a corrected variant.

Reference: ``OpenNLPLab/AVSBench:avs_scripts/avss/utils/compute_color_metrics.py::_batch_miou_fscore`` and the loop
in ``avss/test.py`` (AVSegFormer's ``utils/compute_color_metrics.py`` is the same code). The official evaluation:

1. ``predict = argmax(softmax(logits), 1) + 1`` and ``target = label + 1``, so every class including background is
   scored; per frame and class ``c`` the intersection, predicted and labelled areas are histogrammed;
2. per frame ``IoU_c = inter / (union + 2.22e-16)``, and ``cls_count[c] += 1`` whenever ``union_c > 0``;
   ``F_c = (1 + β²)·P·R / (β²·P + R)`` with ``P = inter / pred``, ``R = inter / label``, NaN → 0, β² = 0.3;
3. both are **summed over every frame of the test set, padded frames included** (v1s/v1m clips are padded to 10
   frames with black images and all-background labels, and the temporal flags are not used in scoring);
4. ``miou = mean_c(Σ IoU_c / cls_count_c)`` over all classes; classes never seen (0 / 0) are set to **0 and kept**
   in the mean; likewise for F;
5. ``miou_noBg = mean(miou_pc[:-1])`` drops the **last** class index, although palette index 0 (black) is the
   background (the official AVSS loss and metric; whether the last index is a real class depends on ``label2idx.json``,
   unverified).

:func:`avss_official` reproduces this; :func:`avss_corrected` scores only the valid (real, labelled) frames, drops
never-seen classes from the means and removes index 0 for the no-background numbers. :func:`avss_scores` exposes each
switch by name.

Numerics: areas are exact integer counts; ratios and sums are float64, where the reference sums in float32, so
results agree to about 1e-5.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch

__all__ = [
    "SemanticScores",
    "SemanticStats",
    "avss_corrected",
    "avss_official",
    "avss_scores",
    "semantic_frame_stats",
]

_DBL_EPS = 2.220446049250313e-16  # the reference's union epsilon (numpy float64 eps)


class SemanticStats(NamedTuple):
    """Per-frame, per-class pixel areas.

    Attributes:
        inter: int64 ``(N, K)`` pixels predicted as class ``c`` whose label is ``c``.
        pred: int64 ``(N, K)`` pixels predicted as ``c`` (pixels labelled negative are excluded, as in the reference).
        label: int64 ``(N, K)`` pixels labelled ``c`` (labels outside ``[0, K)`` are not counted).
    """

    inter: torch.Tensor
    pred: torch.Tensor
    label: torch.Tensor


@dataclass(frozen=True)
class SemanticScores:
    """AVSS scores; all tensors are float64 ``(K,)`` on the CPU.

    Attributes:
        miou: mean IoU over classes (the headline J).
        fscore: mean F over classes (the headline F).
        miou_no_bg: mean IoU without the "background" index chosen by ``no_bg_index``.
        fscore_no_bg: mean F without that index.
        miou_per_class: per-class IoU (NaN for never-seen classes, before the ``unseen_classes`` rule).
        fscore_per_class: per-class F (NaN for never-seen classes).
        class_count: number of frames in which each class appears in prediction or label.
        frames: number of frames scored.
    """

    miou: float
    fscore: float
    miou_no_bg: float
    fscore_no_bg: float
    miou_per_class: torch.Tensor
    fscore_per_class: torch.Tensor
    class_count: torch.Tensor
    frames: int


def semantic_frame_stats(logits: torch.Tensor, labels: torch.Tensor, *, chunk_frames: int = 16) -> SemanticStats:
    """Histogram the prediction ``argmax(softmax(logits))`` against the labels, frame by frame.

    Args:
        logits: ``(N, K, H, W)`` class scores (softmax is applied before argmax as in the reference, so ties that
            softmax creates resolve to the lower index there too).
        labels: ``(N, H, W)`` integer labels; class ``c`` is palette index ``c`` (0 = background). Negative labels
            are ignored everywhere; labels ``>= K`` count only on the prediction side (both as in the reference).
        chunk_frames: frames per softmax call, to bound memory.

    Returns:
        :class:`SemanticStats` with ``(N, K)`` areas on the device of ``logits``.

    Example:
        >>> import torch
        >>> logits = torch.zeros(1, 3, 1, 4)
        >>> logits[0, 1, 0, :2] = 5.0  # predicts 1 1 0 0
        >>> stats = semantic_frame_stats(logits, torch.tensor([[[1, 0, 0, 2]]]))
        >>> stats.inter.tolist(), stats.pred.tolist(), stats.label.tolist()
        ([[1, 1, 0]], [[2, 2, 0]], [[2, 1, 1]])
    """
    if logits.dim() != 4:
        raise ValueError(f"logits must have shape (N, K, H, W), got {tuple(logits.shape)}")
    n, k, h, w = logits.shape
    if tuple(labels.shape) != (n, h, w):
        raise ValueError(
            f"labels must have shape {(n, h, w)} to match logits {tuple(logits.shape)}, got {tuple(labels.shape)}"
        )
    if not logits.is_floating_point():
        raise ValueError(f"logits must be floating, got {logits.dtype}")
    preds = []
    for start in range(0, n, chunk_frames):
        chunk = logits[start : start + chunk_frames]
        if chunk.dtype in (torch.float16, torch.bfloat16):
            chunk = chunk.float()
        preds.append(torch.softmax(chunk, dim=1).argmax(dim=1))
    pred = torch.cat(preds).reshape(n, h * w)  # (N, H*W) in [0, K)
    lab = labels.reshape(n, h * w).long()
    keep = lab >= 0
    in_range = keep & (lab < k)
    offsets = torch.arange(n, device=pred.device).unsqueeze(1) * k  # (N, 1)

    def hist(values: torch.Tensor, select: torch.Tensor) -> torch.Tensor:
        return torch.bincount((values + offsets)[select], minlength=n * k).reshape(n, k)

    pred_area = hist(pred, keep)
    label_area = hist(lab.clamp(0, k - 1), in_range)
    inter = hist(pred, in_range & (pred == lab))
    return SemanticStats(inter, pred_area, label_area)


def _per_frame_scores(stats: SemanticStats, beta2: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    inter, pred, label = (x.double() for x in stats)
    union = pred + label - inter
    iou = inter / (_DBL_EPS + union)
    precision = inter / pred
    recall = inter / label
    f = (1 + beta2) * precision * recall / (beta2 * precision + recall)
    f = torch.nan_to_num(f, nan=0.0)
    return iou, f, union > 0


def _class_mean(values: torch.Tensor, unseen: Literal["zero", "drop"]) -> float:
    if unseen == "zero":
        return float(torch.nan_to_num(values, nan=0.0).mean()) if values.numel() else float("nan")
    seen = values[~torch.isnan(values)]
    return float(seen.mean()) if seen.numel() else float("nan")


def avss_scores(
    stats: SemanticStats,
    *,
    valid: torch.Tensor | None = None,
    include_invalid_frames: bool = True,
    unseen_classes: Literal["zero", "drop"] = "zero",
    no_bg_index: int = -1,
    beta2: float = 0.3,
) -> SemanticScores:
    """AVSS mIoU and F with every deviation from the official evaluation as a named switch.

    Args:
        stats: per-frame areas from :func:`semantic_frame_stats` (frames concatenated over the whole split).
        valid: optional ``(N,)`` bool, True for real labelled frames (False for padding).
        include_invalid_frames: score frames marked invalid too (official: True, padded frames count).
        unseen_classes: ``"zero"`` keeps never-seen classes as 0 in the class mean (official), ``"drop"`` leaves
            them out.
        no_bg_index: class index removed for ``miou_no_bg`` / ``fscore_no_bg`` (official: ``-1``, the last index;
            background is index 0).
        beta2: β² of the per-class F (0.3).

    Returns:
        :class:`SemanticScores`.
    """
    if unseen_classes not in ("zero", "drop"):
        raise ValueError(f"unseen_classes must be 'zero' or 'drop', got {unseen_classes!r}")
    n, k = stats.inter.shape
    if not -k <= no_bg_index < k:
        raise ValueError(f"no_bg_index {no_bg_index} is out of range for {k} classes")
    select = torch.ones(n, dtype=torch.bool, device=stats.inter.device)
    if valid is not None:
        valid = valid.reshape(-1).to(device=select.device, dtype=torch.bool)
        if valid.shape[0] != n:
            raise ValueError(f"valid has {valid.shape[0]} frames, stats have {n}")
        if not include_invalid_frames:
            select = valid
    stats = SemanticStats(*(x[select] for x in stats))
    iou, f, present = _per_frame_scores(stats, beta2)
    count = present.sum(0).double().cpu()
    miou_pc = iou.sum(0).cpu() / count  # 0/0 = NaN for never-seen classes
    f_pc = f.sum(0).cpu() / count
    drop = torch.ones(k, dtype=torch.bool)
    drop[no_bg_index] = False
    return SemanticScores(
        miou=_class_mean(miou_pc, unseen_classes),
        fscore=_class_mean(f_pc, unseen_classes),
        miou_no_bg=_class_mean(miou_pc[drop], unseen_classes),
        fscore_no_bg=_class_mean(f_pc[drop], unseen_classes),
        miou_per_class=miou_pc,
        fscore_per_class=f_pc,
        class_count=count,
        frames=int(select.sum()),
    )


def avss_official(stats: SemanticStats, *, valid: torch.Tensor | None = None, beta2: float = 0.3) -> SemanticScores:
    """The official AVSS evaluation: all frames (padding included), never-seen classes as 0, noBg drops index -1.

    Args:
        stats: per-frame areas from :func:`semantic_frame_stats`.
        valid: accepted for symmetry and ignored, exactly as the official code ignores the temporal flags.
        beta2: β² (0.3).

    Returns:
        :class:`SemanticScores`.

    Example:
        >>> import torch
        >>> logits = torch.zeros(2, 3, 1, 2)
        >>> logits[:, 1] = 5.0  # predicts class 1 everywhere
        >>> labels = torch.tensor([[[1, 1]], [[0, 0]]])  # frame 1 is a padded, all-background frame
        >>> scores = avss_official(semantic_frame_stats(logits, labels))
        >>> scores.miou_per_class.tolist()  # class 0: IoU 0 in frame 1; class 1: (1 + 0) / 2; class 2: never seen
        [0.0, 0.5, nan]
        >>> round(scores.miou, 6)  # (0 + 0.5 + 0) / 3
        0.166667
    """
    return avss_scores(
        stats, valid=valid, include_invalid_frames=True, unseen_classes="zero", no_bg_index=-1, beta2=beta2
    )


def avss_corrected(stats: SemanticStats, *, valid: torch.Tensor | None = None, beta2: float = 0.3) -> SemanticScores:
    """Corrected AVSS evaluation: valid frames only, never-seen classes dropped, no-background drops index 0.

    Args:
        stats: per-frame areas from :func:`semantic_frame_stats`.
        valid: ``(N,)`` bool, True for real labelled frames; None scores every frame.
        beta2: β² (0.3).

    Returns:
        :class:`SemanticScores`.
    """
    return avss_scores(
        stats, valid=valid, include_invalid_frames=False, unseen_classes="drop", no_bg_index=0, beta2=beta2
    )
