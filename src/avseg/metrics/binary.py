"""Binary-mask metrics: per-frame sufficient statistics and their reductions (AVSBench S4/MS3, Ref-AVS, null S).

Every function here is pure: it takes prediction and ground-truth tensors of shape ``(..., H, W)`` (any leading axes,
typically ``(N, H, W)`` frames) and returns per-frame statistics or one number. The defaults reproduce the official
AVSBench evaluation (``OpenNLPLab/AVSBench:avs_scripts/avs_s4/utils/utility.py``), which Ref-AVS and AVSegFormer copy:

- :func:`mask_iou`: ``sigmoid(logits) > 0.5``, per-frame ``inter / (union + 1e-7)``, and the **true-negative rule**
  for frames whose ground truth is empty (``inter := Σ(1-t)(1-p)``, ``union := H·W``), averaged over the frames
  given. Ref-AVS uses the same function with ``threshold=0.4``.
- :func:`eval_fmeasure`: the official ``Eval_Fmeasure``: 255 thresholds ``linspace(0, 1 - 1e-10, 255)``, ``β² = 0.3``,
  ``prec = tp / (Σ(p ≥ th) + 1e-20)``, ``rec = tp / (Σgt + 1e-20)``, NaN → 0, frames with empty ground truth skipped,
  the curves of the remaining frames averaged and the **maximum over thresholds** of that average returned (0 when
  every frame has empty ground truth). It is the composition of :func:`fmeasure_curve` and
  :func:`fmeasure_sweep_max`.

Because the official F takes a maximum per evaluation batch, its value depends on how frames are grouped; see
:mod:`avseg.metrics.presets`. Batch-independent alternatives live next to the legacy ones: :func:`fmeasure_at_threshold`
(per frame at a fixed threshold), :func:`fmeasure_pooled` (dataset-level from pooled tp/fp/fn), :func:`miou_per_frame`
and :func:`miou_dataset` (``Σ inter / Σ union``, the semantic-segmentation convention; cyh-0/CAVP#6).

Numerics: the threshold comparisons that decide pixel counts are made exactly as in the reference (probabilities in
the input's floating dtype, at least float32; the 255 thresholds are float32, so the last one is exactly 1.0 and a
saturated ``sigmoid`` of 1.0 still counts as positive there). Counts are integers and the ratios are computed in
float64, so results match the float32 reference to about 1e-6.

Ground truth is binarised with ``> 0``; the reference multiplies by the raw float ground truth, which is the same for
binary masks.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F

__all__ = [
    "EmptyGT",
    "FMeasureCurves",
    "FrameF",
    "FrameIoU",
    "binarize",
    "eval_fmeasure",
    "fmeasure_at_threshold",
    "fmeasure_curve",
    "fmeasure_from_counts",
    "fmeasure_pooled",
    "fmeasure_sweep_max",
    "frame_iou_stats",
    "mask_iou",
    "miou_dataset",
    "miou_per_frame",
    "null_s",
    "resize_logits",
    "resize_mask",
]

EmptyGT = Literal["tn_ratio", "one", "skip", "zero"]
"""What an all-zero ground-truth frame scores in J:

- ``"tn_ratio"``: the AVSBench/Ref-AVS rule, the fraction of pixels correctly predicted as background.
- ``"one"``: the DAVIS rule, 1 when prediction and ground truth are both empty (union 0), else the plain IoU (0).
- ``"skip"``: the frame is left out of every mean.
- ``"zero"``: the plain formula, 0 when the union is empty.
"""

_EMPTY_GT_VALUES = ("tn_ratio", "one", "skip", "zero")
_CHUNK_PIXELS = 1 << 22  # pixels per step of fmeasure_curve


class FrameIoU(NamedTuple):
    """Per-frame IoU statistics; every field has the leading shape ``(...)`` of the inputs.

    Attributes:
        iou: float64 per-frame J after the empty-GT rule; NaN where ``counted`` is False.
        counted: bool, whether the frame enters J (False only for ``empty_gt="skip"`` on empty ground truth).
        inter: int64 ``|P ∩ G|`` (raw, before the empty-GT rule).
        union: int64 ``|P ∪ G|`` (raw).
        pred_area: int64 ``|P|``.
        gt_area: int64 ``|G|``.
        num_pixels: ``H·W``.
    """

    iou: torch.Tensor
    counted: torch.Tensor
    inter: torch.Tensor
    union: torch.Tensor
    pred_area: torch.Tensor
    gt_area: torch.Tensor
    num_pixels: int


class FMeasureCurves(NamedTuple):
    """Per-frame F-measure curves over the threshold sweep.

    Attributes:
        curves: float64 ``(..., num_thresholds)``, F at each threshold (NaN replaced by 0).
        counted: bool ``(...)``, False for frames whose ground truth is empty (the reference skips them).
    """

    curves: torch.Tensor
    counted: torch.Tensor


class FrameF(NamedTuple):
    """Per-frame F at one fixed threshold, with the pooled counts.

    Attributes:
        f: float64 ``(...)``; NaN where ``counted`` is False.
        counted: bool ``(...)``.
        tp: int64 ``(...)`` true-positive pixels.
        fp: int64 ``(...)`` false-positive pixels.
        fn: int64 ``(...)`` false-negative pixels.
    """

    f: torch.Tensor
    counted: torch.Tensor
    tp: torch.Tensor
    fp: torch.Tensor
    fn: torch.Tensor


def _check_pair(pred: torch.Tensor, target: torch.Tensor, fn: str) -> None:
    if pred.dim() < 2:
        raise ValueError(f"{fn}: pred must have shape (..., H, W), got {tuple(pred.shape)}")
    if pred.shape != target.shape:
        raise ValueError(f"{fn}: pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")


def _probabilities(pred: torch.Tensor, from_logits: bool) -> torch.Tensor:
    # The references apply sigmoid in the model's float32; half-precision outputs are upcast so that the comparisons
    # below see the same values as a float32 evaluation would.
    if not pred.is_floating_point():
        raise ValueError(f"pred must be a floating tensor of logits or probabilities, got {pred.dtype}")
    if pred.dtype in (torch.float16, torch.bfloat16):
        pred = pred.float()
    return torch.sigmoid(pred) if from_logits else pred


def binarize(pred: torch.Tensor, *, threshold: float = 0.5, from_logits: bool = True) -> torch.Tensor:
    """Binary prediction ``sigmoid(pred) > threshold`` (or ``pred > threshold`` for probabilities).

    Args:
        pred: ``(..., H, W)`` logits or probabilities; a bool tensor is returned unchanged.
        threshold: strict lower bound on the probability (0.5 AVSBench, 0.4 Ref-AVS J).
        from_logits: apply a sigmoid first.

    Returns:
        bool tensor of the same shape.
    """
    if pred.dtype == torch.bool:
        return pred
    return _probabilities(pred, from_logits) > threshold


def frame_iou_stats(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    threshold: float = 0.5,
    from_logits: bool = True,
    empty_gt: EmptyGT = "tn_ratio",
    eps: float = 1e-7,
) -> FrameIoU:
    """Per-frame intersection/union and J with an explicit rule for empty ground truth.

    The default (``tn_ratio``, ``eps=1e-7``, threshold 0.5) is AVSBench's ``mask_iou`` frame by frame.

    Args:
        pred: ``(..., H, W)`` logits (or probabilities with ``from_logits=False``, or a bool mask).
        target: ``(..., H, W)`` ground truth; ``> 0`` is foreground.
        threshold: probability threshold, strict (``>``).
        from_logits: apply a sigmoid to ``pred`` first.
        empty_gt: rule for frames whose ground truth is empty, see :data:`EmptyGT`.
        eps: added to the union, as in the reference (``1e-7``).

    Returns:
        :class:`FrameIoU` with per-frame fields of shape ``(...)``.

    Example:
        >>> import torch
        >>> logits = torch.tensor([[[9.0, 9.0], [-9.0, -9.0]], [[9.0, -9.0], [-9.0, -9.0]]])
        >>> target = torch.tensor([[[1, 0], [0, 0]], [[0, 0], [0, 0]]])
        >>> stats = frame_iou_stats(logits, target)
        >>> stats.inter.tolist(), stats.union.tolist()  # frame 0: 1 of 2 pixels; frame 1: empty GT, 1 predicted
        ([1, 0], [2, 1])
        >>> [round(v, 6) for v in stats.iou.tolist()]  # 1/2; 3 of 4 pixels correctly background
        [0.5, 0.75]
    """
    _check_pair(pred, target, "frame_iou_stats")
    if empty_gt not in _EMPTY_GT_VALUES:
        raise ValueError(f"empty_gt must be one of {_EMPTY_GT_VALUES}, got {empty_gt!r}")
    p = binarize(pred, threshold=threshold, from_logits=from_logits)
    t = target > 0
    num_pixels = p.shape[-1] * p.shape[-2]
    inter = (p & t).sum(dim=(-2, -1))
    union = (p | t).sum(dim=(-2, -1))
    pred_area = p.sum(dim=(-2, -1))
    gt_area = t.sum(dim=(-2, -1))
    empty = gt_area == 0
    iou = inter.double() / (union.double() + eps)
    counted = torch.ones_like(empty)
    if empty_gt == "tn_ratio":
        true_negatives = (num_pixels - pred_area).double()
        iou = torch.where(empty, true_negatives / (num_pixels + eps), iou)
    elif empty_gt == "one":
        iou = torch.where(union == 0, torch.ones_like(iou), iou)
    elif empty_gt == "zero":
        iou = torch.where(union == 0, torch.zeros_like(iou), iou)
    else:  # skip
        counted = ~empty
        iou = torch.where(counted, iou, torch.full_like(iou, float("nan")))
    return FrameIoU(iou, counted, inter, union, pred_area, gt_area, num_pixels)


def miou_per_frame(stats: FrameIoU) -> torch.Tensor:
    """Mean of the per-frame J over the counted frames (each frame weighs the same, batch-independent).

    Args:
        stats: per-frame statistics from :func:`frame_iou_stats`.

    Returns:
        0-dim float64 tensor; NaN when no frame is counted.
    """
    iou = stats.iou[stats.counted]
    return iou.mean() if iou.numel() else torch.tensor(float("nan"), dtype=torch.float64)


def miou_dataset(stats: FrameIoU) -> torch.Tensor:
    """Dataset-level foreground IoU ``Σ inter / Σ union`` over all frames (the semantic-segmentation convention).

    Empty-GT frames add their raw counts (0 to the intersection, the predicted area to the union), independent of
    the empty-GT rule used for J.

    Args:
        stats: per-frame statistics from :func:`frame_iou_stats`.

    Returns:
        0-dim float64 tensor; NaN when the pooled union is 0.

    Example:
        >>> import torch
        >>> pred = torch.tensor([[[True, True], [False, False]], [[True, False], [False, False]]])
        >>> target = torch.tensor([[[1, 0], [0, 0]], [[1, 1], [1, 1]]])
        >>> stats = frame_iou_stats(pred, target)
        >>> float(miou_dataset(stats))  # (1 + 1) / (2 + 4)
        0.3333333333333333
        >>> round(float(miou_per_frame(stats)), 6)  # (1/2 + 1/4) / 2
        0.375
    """
    union = stats.union.sum().double()
    if union == 0:
        return torch.tensor(float("nan"), dtype=torch.float64)
    return stats.inter.sum().double() / union


def mask_iou(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    threshold: float = 0.5,
    from_logits: bool = True,
    empty_gt: EmptyGT = "tn_ratio",
    eps: float = 1e-7,
) -> torch.Tensor:
    """AVSBench ``mask_iou``: the mean per-frame J over all frames given (one evaluation group).

    The defaults are the official AVSBench S4/MS3 behaviour; Ref-AVS is ``threshold=0.4``. The official scripts call it
    once per test batch and average the batch values, see :mod:`avseg.metrics.presets` for that grouping.

    Args:
        pred: ``(..., H, W)`` logits (or probabilities with ``from_logits=False``).
        target: ``(..., H, W)`` ground truth, ``> 0`` is foreground.
        threshold: probability threshold, strict.
        from_logits: apply a sigmoid to ``pred`` first.
        empty_gt: rule for empty ground truth, see :data:`EmptyGT`.
        eps: added to the union.

    Returns:
        0-dim float64 tensor; NaN when no frame is counted (only possible with ``empty_gt="skip"``).

    Example:
        >>> import torch
        >>> target = torch.ones(4, 5, 5)
        >>> target[:2] = 0  # two empty-GT frames
        >>> round(float(mask_iou(torch.ones(4, 5, 5), target)), 6)  # sigmoid(1) > 0.5 everywhere: 0, 0, 1, 1
        0.5
    """
    stats = frame_iou_stats(pred, target, threshold=threshold, from_logits=from_logits, empty_gt=empty_gt, eps=eps)
    return miou_per_frame(stats)


def _thresholds(num_thresholds: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    # Built in float32 exactly as the reference builds them; 1 - 1e-10 rounds to 1.0 there.
    return torch.linspace(0, 1 - 1e-10, num_thresholds, dtype=torch.float32, device=device).to(dtype)


def fmeasure_curve(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    num_thresholds: int = 255,
    beta2: float = 0.3,
    from_logits: bool = True,
) -> FMeasureCurves:
    """Per-frame F-measure curves over ``linspace(0, 1 - 1e-10, num_thresholds)`` (AVSBench ``_eval_pr``).

    At threshold ``th``: ``tp = Σ (p ≥ th)·t``, ``prec = tp / (Σ(p ≥ th) + 1e-20)``, ``rec = tp / (Σt + 1e-20)``,
    ``F = (1 + β²)·prec·rec / (β²·prec + rec)`` with NaN → 0.

    Args:
        pred: ``(..., H, W)`` logits (or probabilities with ``from_logits=False``).
        target: ``(..., H, W)`` ground truth, ``> 0`` is foreground.
        num_thresholds: number of thresholds (255 in the reference).
        beta2: β² (0.3 in the reference).
        from_logits: apply a sigmoid to ``pred`` first.

    Returns:
        :class:`FMeasureCurves`: ``curves`` ``(..., num_thresholds)`` float64 and ``counted`` ``(...)``, False where
        the ground truth is empty (the reference skips those frames).
    """
    _check_pair(pred, target, "fmeasure_curve")
    if num_thresholds < 1:
        raise ValueError(f"num_thresholds must be >= 1, got {num_thresholds}")
    lead = pred.shape[:-2]
    prob = _probabilities(pred, from_logits).reshape(-1, pred.shape[-2] * pred.shape[-1])  # (N, H*W)
    t = (target > 0).reshape(prob.shape)
    th = _thresholds(num_thresholds, prob.dtype, prob.device)
    bins = num_thresholds + 1
    positives, tp = [], []
    # Frames in chunks of about 2**22 pixels, so that the int64 indices below stay near 32 MB even at 1024x1024.
    chunk = max(1, _CHUNK_PIXELS // max(1, prob.shape[1]))
    for start in range(0, prob.shape[0], chunk):
        p_c, t_c = prob[start : start + chunk], t[start : start + chunk]
        n = p_c.shape[0]
        # k = number of thresholds <= p, so the pixel is positive at thresholds 0..k-1; one histogram of k per
        # frame then gives every threshold's count by a reversed cumulative sum.
        k = torch.searchsorted(th, p_c.contiguous(), right=True)  # (n, H*W) in [0, num_thresholds]
        flat = k + torch.arange(n, device=k.device).unsqueeze(1) * bins
        hist_all = torch.bincount(flat.reshape(-1), minlength=n * bins).reshape(n, bins)
        hist_tp = torch.bincount(flat[t_c], minlength=n * bins).reshape(n, bins)
        positives.append(hist_all.flip(-1).cumsum(-1).flip(-1)[:, 1:])  # (n, num_thresholds): Σ(p >= th_i)
        tp.append(hist_tp.flip(-1).cumsum(-1).flip(-1)[:, 1:])
    positives = torch.cat(positives).double()
    tp = torch.cat(tp).double()
    gt_area = t.sum(-1, keepdim=True).double()
    prec = tp / (positives + 1e-20)
    rec = tp / (gt_area + 1e-20)
    f = (1 + beta2) * prec * rec / (beta2 * prec + rec)
    f = torch.nan_to_num(f, nan=0.0)
    counted = gt_area.squeeze(-1) > 0
    return FMeasureCurves(f.reshape(*lead, num_thresholds), counted.reshape(lead))


def fmeasure_sweep_max(curves: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    """Official group F: average the curves of the counted frames, then take the maximum over thresholds.

    Args:
        curves: ``(N, num_thresholds)`` per-frame curves of one group (any leading axes are flattened).
        counted: ``(N,)`` bool, the frames with non-empty ground truth.

    Returns:
        0-dim float64 tensor; 0 when no frame is counted (the reference's score starts at zeros).
    """
    curves = curves.reshape(-1, curves.shape[-1])
    counted = counted.reshape(-1)
    if curves.shape[0] != counted.shape[0]:
        raise ValueError(f"curves {tuple(curves.shape)} and counted {tuple(counted.shape)} disagree on frames")
    if not bool(counted.any()):
        return torch.zeros((), dtype=torch.float64)
    return curves[counted].double().mean(0).max()


def eval_fmeasure(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    num_thresholds: int = 255,
    beta2: float = 0.3,
    from_logits: bool = True,
) -> torch.Tensor:
    """AVSBench ``Eval_Fmeasure`` on one group of frames: max over thresholds of the mean curve.

    Args:
        pred: ``(..., H, W)`` logits (or probabilities with ``from_logits=False``).
        target: ``(..., H, W)`` ground truth, ``> 0`` is foreground.
        num_thresholds: number of thresholds (255).
        beta2: β² (0.3).
        from_logits: apply a sigmoid to ``pred`` first.

    Returns:
        0-dim float64 tensor in ``[0, 1]``.

    Example:
        >>> import torch
        >>> logits = torch.tensor([[[3.0, -3.0], [-3.0, -3.0]]])  # probabilities 0.953 and 0.047
        >>> target = torch.tensor([[[1, 0], [0, 0]]])
        >>> float(eval_fmeasure(logits, target))  # some threshold in (0.047, 0.953] separates them exactly
        1.0
        >>> float(eval_fmeasure(logits, torch.zeros(1, 2, 2)))  # only empty ground truth
        0.0
    """
    curves = fmeasure_curve(pred, target, num_thresholds=num_thresholds, beta2=beta2, from_logits=from_logits)
    return fmeasure_sweep_max(curves.curves, curves.counted)


def fmeasure_at_threshold(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    threshold: float = 0.5,
    beta2: float = 0.3,
    from_logits: bool = True,
    empty_gt: Literal["skip", "one", "zero"] = "skip",
) -> FrameF:
    """Batch-independent per-frame F at one fixed threshold (no oracle sweep).

    ``F = (1 + β²)·P·R / (β²·P + R)`` with ``P = tp / (tp + fp)``, ``R = tp / (tp + fn)``, and 0 when ``tp = 0``.

    Args:
        pred: ``(..., H, W)`` logits (or probabilities with ``from_logits=False``, or a bool mask).
        target: ``(..., H, W)`` ground truth, ``> 0`` is foreground.
        threshold: probability threshold, strict.
        beta2: β².
        from_logits: apply a sigmoid to ``pred`` first.
        empty_gt: frames with empty ground truth are skipped (as in the official F), score 1 when the prediction is
            also empty (``"one"``), or score 0 (``"zero"``).

    Returns:
        :class:`FrameF` with per-frame F and the tp/fp/fn counts for :func:`fmeasure_pooled`.

    Example:
        >>> import torch
        >>> pred = torch.tensor([[[True, True], [False, False]]])
        >>> target = torch.tensor([[[1, 0], [1, 0]]])
        >>> round(float(fmeasure_at_threshold(pred, target).f[0]), 6)  # P = R = 1/2
        0.5
    """
    _check_pair(pred, target, "fmeasure_at_threshold")
    if empty_gt not in ("skip", "one", "zero"):
        raise ValueError(f"empty_gt must be 'skip', 'one' or 'zero' for F, got {empty_gt!r}")
    p = binarize(pred, threshold=threshold, from_logits=from_logits)
    t = target > 0
    tp = (p & t).sum(dim=(-2, -1))
    fp = (p & ~t).sum(dim=(-2, -1))
    fn = (~p & t).sum(dim=(-2, -1))
    f = fmeasure_from_counts(tp, fp, fn, beta2=beta2)
    empty = (tp + fn) == 0
    counted = torch.ones_like(empty)
    if empty_gt == "skip":
        counted = ~empty
        f = torch.where(empty, torch.full_like(f, float("nan")), f)
    elif empty_gt == "one":
        f = torch.where(empty, (fp == 0).double(), f)
    return FrameF(f, counted, tp, fp, fn)


def fmeasure_from_counts(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor, *, beta2: float = 0.3) -> torch.Tensor:
    """Element-wise ``F = (1 + β²)·P·R / (β²·P + R)`` from pixel counts, 0 where ``tp = 0``.

    Args:
        tp: true-positive counts, any shape.
        fp: false-positive counts, same shape.
        fn: false-negative counts, same shape.
        beta2: β².

    Returns:
        float64 tensor of the common shape.
    """
    tp, fp, fn = tp.double(), fp.double(), fn.double()
    precision = tp / (tp + fp).clamp(min=1)
    recall = tp / (tp + fn).clamp(min=1)
    denom = beta2 * precision + recall
    f = (1 + beta2) * precision * recall / torch.where(denom > 0, denom, torch.ones_like(denom))
    return torch.where(tp > 0, f, torch.zeros_like(f))


def fmeasure_pooled(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor, *, beta2: float = 0.3) -> torch.Tensor:
    """Dataset-level F from tp/fp/fn pooled over every frame given (batch-independent).

    Args:
        tp: per-frame true-positive counts, any shape.
        fp: per-frame false-positive counts, same shape.
        fn: per-frame false-negative counts, same shape.
        beta2: β².

    Returns:
        0-dim float64 tensor; 0 when the pooled tp is 0.

    Example:
        >>> import torch
        >>> f = fmeasure_pooled(torch.tensor([1, 3]), torch.tensor([1, 0]), torch.tensor([0, 1]), beta2=1.0)
        >>> round(float(f), 6)  # P = 4/5, R = 4/5
        0.8
    """
    return fmeasure_from_counts(tp.sum(), fp.sum(), fn.sum(), beta2=beta2)


def null_s(
    pred: torch.Tensor,
    *,
    mode: Literal["sqrt_ratio", "ratio"] = "sqrt_ratio",
    threshold: float = 0.5,
    from_logits: bool = True,
) -> torch.Tensor:
    """Null-split S: the predicted foreground fraction of the frames given (lower is better).

    ``sqrt_ratio`` is Ref-AVS ``metric_s_for_null``: ``sqrt(Σ fg / (N_frames·H·W))`` for one evaluation group;
    ``ratio`` is AuralSAM2's ``Σ fg / Σ pixels`` without the square root (pooled over the whole split there).

    Args:
        pred: ``(..., H, W)`` logits (or probabilities with ``from_logits=False``).
        mode: ``"sqrt_ratio"`` or ``"ratio"``.
        threshold: probability threshold, strict (0.5 in both references).
        from_logits: apply a sigmoid to ``pred`` first.

    Returns:
        0-dim float64 tensor.

    Example:
        >>> import torch
        >>> pred = torch.full((2, 2, 2), -5.0)
        >>> pred[0, 0, 0] = 5.0  # 1 foreground pixel of 8
        >>> float(null_s(pred, mode="ratio")), round(float(null_s(pred)), 12)  # sqrt(1/8); the last bit varies by build
        (0.125, 0.353553390593)
    """
    if mode not in ("sqrt_ratio", "ratio"):
        raise ValueError(f"mode must be 'sqrt_ratio' or 'ratio', got {mode!r}")
    if pred.numel() == 0:
        raise ValueError("null_s: pred is empty")
    fg = binarize(pred, threshold=threshold, from_logits=from_logits).sum().double()
    ratio = fg / pred.numel()
    return ratio.sqrt() if mode == "sqrt_ratio" else ratio


def resize_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of logits over the last two axes (``align_corners=False``, no antialiasing).

    This is the half-pixel-centre bilinear rule of ``cv2.resize(INTER_LINEAR)`` and of the Hugging Face Mask2Former
    post-processing that produces Ref-AVS's 256×256 predictions.

    Args:
        logits: ``(..., H, W)`` floating tensor.
        size: ``(H_out, W_out)``.

    Returns:
        ``(..., H_out, W_out)`` tensor of the input dtype (half precision is computed in float32).
    """
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    lead = logits.shape[:-2]
    x = logits.reshape(-1, 1, *logits.shape[-2:])  # (N, 1, H, W)
    work = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    out = F.interpolate(work, size=tuple(size), mode="bilinear", align_corners=False)
    return out.reshape(*lead, *size).to(logits.dtype)


def resize_mask(
    mask: torch.Tensor, size: tuple[int, int], *, mode: Literal["bilinear_gt0", "nearest"] = "bilinear_gt0"
) -> torch.Tensor:
    """Resize a ground-truth mask over the last two axes; returns 0/1.

    ``bilinear_gt0`` is Ref-AVS's rule: ``cv2.resize`` (bilinear, on the stored uint8 grey levels) followed by
    ``> 0``. OpenCV rounds the interpolated uint8 value, so a pixel is foreground when the bilinear interpolation
    (half-pixel centres, no antialiasing) of the stored levels is at least 0.5: for 0/255 masks any foreground
    weight of 1/510 or more (a slight dilation), for 0/1 masks a weight of at least 0.5. Give the levels as stored
    (the Ref-AVS reader's ``native_masks``); a 0/1 mask is treated as stored 0/1. Against OpenCV on random masks this
    matches every pixel for 0/255 masks (OpenCV's fixed-point sums can differ on a few pixels for other levels).
    ``nearest`` uses ``floor(dst·scale)`` like ``cv2.INTER_NEAREST``.

    Args:
        mask: ``(..., H, W)`` ground truth, ``> 0`` is foreground; integer grey levels for ``bilinear_gt0``.
        size: ``(H_out, W_out)``.
        mode: ``"bilinear_gt0"`` or ``"nearest"``.

    Returns:
        ``(..., H_out, W_out)`` uint8 tensor of 0/1.
    """
    if mode not in ("bilinear_gt0", "nearest"):
        raise ValueError(f"mode must be 'bilinear_gt0' or 'nearest', got {mode!r}")
    if tuple(mask.shape[-2:]) == tuple(size):
        return (mask > 0).to(torch.uint8)
    lead = mask.shape[:-2]
    if mode == "bilinear_gt0":
        x = mask.reshape(-1, 1, *mask.shape[-2:]).float()  # (N, 1, H, W) stored levels
        out = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False) >= 0.5
    else:
        x = (mask > 0).reshape(-1, 1, *mask.shape[-2:]).float()
        out = F.interpolate(x, size=tuple(size), mode="nearest") > 0
    return out.reshape(*lead, *size).to(torch.uint8)
