"""ReVOS's extra scores: R2-VOS accuracy A and robustness R, and the ReVOS summary by expression type.

Reference: ``cilinyan/VISA`` ``tools/metrics.py`` (``get_r2vos_accuracy``, ``get_r2vos_robustness``) and
``tools/eval_revos.py`` (``eval_queue`` and the summary), copied unchanged into ``magic-research/Sa2VA`` as
``third_parts/revos/utils/metrics.py`` and ``tools/eval/eval_revos.py``. Per frame:

- **A** (accuracy) is the fraction of pixels where the prediction equals the ground truth: ``mean(gt == pred)``.
  Empty prediction and empty ground truth give 1.
- **R** (robustness) is ``max(1 - |pred ∧ ¬gt| / (|foreground| + 1e-6), 0)``: one minus the false-positive pixels
  relative to the frame's foreground, the pixels of all annotated objects of the video on that frame
  (``mask_dict_foreground.json``: ``{vid: {"masks_rle": [RLE or [RLE, ...] per frame]}}``; the official code sums the
  decoded per-object masks, so a pixel covered by two objects counts twice, and avseg takes ``foreground`` as that
  count map). No false positive gives 1 whatever the foreground; a false positive on a frame without foreground
  gives 0.

Per expression, J, F, A and R are means over **all** frames of the video (the same frames as :func:`davis_jf
<avseg.metrics.davis.davis_jf>`). The summary (:func:`revos_scores`) rounds each expression's score in percent to
two decimals (``round(100 * x, 2)``), averages them per ``type_id`` (0 referring, 1 reasoning; type 2 enters no
reported number), takes ``JF = (J + F) / 2`` of those means, and reports ``overall`` as the mean of the referring and
reasoning values (not a mean over all expressions). avseg returns fractions, not percents.

Deviation: ``eval_revos.py`` builds the ground truth of an expression with several ``anno_id`` by *adding* their
uint8 masks, so a pixel where two of its objects overlap holds 2: ``gt == pred`` is then false whatever the
prediction, and ``1 - gt`` wraps to 255 in uint8, counting such a predicted pixel as 255 false positives. avseg
takes the union (``> 0``), as the official J does (``astype(bool)``) and as the RVOS reader returns it; the two agree
whenever an expression's objects do not overlap. Predictions are binary (``> 0``); the official code compares the
raw values, the same for the 0/1 masks Sa2VA writes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["REVOS_TYPES", "r2vos_accuracy", "r2vos_robustness", "revos_scores"]

REVOS_TYPES = {0: "referring", 1: "reason"}
"""The ReVOS ``type_id`` values the summary reports, with their names there; other types enter no number."""

_EPS = 1e-6  # the official denominator offset


def _as_bool(x: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.dim() < 2:
        raise ValueError(f"{name} must be (..., H, W) masks, got shape {tuple(t.shape)}")
    return t if t.dtype == torch.bool else t > 0


def r2vos_accuracy(annotation: torch.Tensor | np.ndarray, segmentation: torch.Tensor | np.ndarray) -> torch.Tensor:
    """R2-VOS accuracy A per frame: the fraction of pixels where prediction and ground truth agree.

    Args:
        annotation: ``(..., H, W)`` ground truth, ``> 0`` is foreground.
        segmentation: ``(..., H, W)`` binary prediction, ``> 0`` is foreground.

    Returns:
        float64 tensor of shape ``(...)``.

    Example:
        >>> import torch
        >>> gt = torch.tensor([[[1, 1], [0, 0]], [[0, 0], [0, 0]]])
        >>> pred = torch.tensor([[[1, 0], [0, 0]], [[0, 0], [0, 0]]])
        >>> r2vos_accuracy(gt, pred).tolist()
        [0.75, 1.0]
    """
    gt, seg = _as_bool(annotation, "annotation"), _as_bool(segmentation, "segmentation")
    if gt.shape != seg.shape:
        raise ValueError(f"annotation {tuple(gt.shape)} and segmentation {tuple(seg.shape)} must have the same shape")
    return (gt == seg).double().mean(dim=(-2, -1))


def r2vos_robustness(
    annotation: torch.Tensor | np.ndarray,
    segmentation: torch.Tensor | np.ndarray,
    foreground: torch.Tensor | np.ndarray,
) -> torch.Tensor:
    """R2-VOS robustness R per frame: ``max(1 - |pred ∧ ¬gt| / (Σ foreground + 1e-6), 0)``.

    Args:
        annotation: ``(..., H, W)`` ground truth of the expression, ``> 0`` is foreground.
        segmentation: ``(..., H, W)`` binary prediction, ``> 0`` is foreground.
        foreground: ``(..., H, W)`` the video's annotated objects on each frame, as the number of objects covering
            each pixel (the sum of their binary masks; a binary mask when they do not overlap). Non-negative.

    Returns:
        float64 tensor of shape ``(...)``.

    Example:
        >>> import torch
        >>> gt = torch.tensor([[1, 1, 0, 0]])
        >>> fg = torch.tensor([[1, 1, 1, 1]])
        >>> round(float(r2vos_robustness(gt, torch.tensor([[1, 1, 1, 0]]), fg)), 6)  # 1 false positive, 4 fg pixels
        0.75
        >>> float(r2vos_robustness(gt, torch.tensor([[0, 0, 0, 0]]), torch.zeros(1, 4)))
        1.0
    """
    gt, seg = _as_bool(annotation, "annotation"), _as_bool(segmentation, "segmentation")
    fg = torch.as_tensor(foreground)
    if not (gt.shape == seg.shape == fg.shape):
        raise ValueError(
            f"annotation {tuple(gt.shape)}, segmentation {tuple(seg.shape)} and foreground {tuple(fg.shape)} must "
            "have the same shape"
        )
    if fg.dtype != torch.bool and bool((fg < 0).any()):
        raise ValueError("foreground must be non-negative (the number of objects covering each pixel)")
    false_positives = (seg & ~gt).sum(dim=(-2, -1)).double()
    positives = fg.double().sum(dim=(-2, -1))
    return (1 - false_positives / (positives + _EPS)).clamp(min=0.0)


def revos_scores(
    j: Sequence[float],
    f: Sequence[float],
    a: Sequence[float],
    r: Sequence[float],
    type_ids: Sequence[int | None],
    *,
    percent_decimals: int | None = 2,
) -> dict[str, dict[str, float]]:
    """The ReVOS summary of ``eval_revos.py`` from per-expression scores (fractions).

    Args:
        j, f, a, r: per expression, the means over its frames of J, boundary F, A and R.
        type_ids: per expression, its ReVOS ``type_id`` (``meta["type_id"]`` of the RVOS reader); expressions of
            other types than 0 and 1 (or None) enter no number, as in the official summary.
        percent_decimals: each expression's score is rounded to this many decimals *in percent* before averaging
            (2, as the official script does); None keeps it exact.

    Returns:
        ``{"referring" | "reason" | "overall": {"J", "F", "A", "R", "JF": fraction}}``; a type without expressions
        gives NaN there and in ``overall`` (the official mean of an empty list).

    Example:
        >>> scores = revos_scores([0.5, 1.0], [0.25, 1.0], [1.0, 1.0], [1.0, 0.5], [0, 1])
        >>> scores["referring"]["JF"], scores["overall"]["J"], scores["overall"]["R"]
        (0.375, 0.75, 0.75)
    """
    columns = {"J": j, "F": f, "A": a, "R": r}
    n = len(type_ids)
    for name, values in columns.items():
        if len(values) != n:
            raise ValueError(f"{name} has {len(values)} scores for {n} type_ids")
    out: dict[str, dict[str, float]] = {}
    for type_id, group in REVOS_TYPES.items():
        chosen = [i for i, t in enumerate(type_ids) if t == type_id]
        means = {}
        for name, values in columns.items():
            percent = 100 * np.asarray([values[i] for i in chosen], dtype=np.float64)
            if percent_decimals is not None:
                percent = np.round(percent, percent_decimals)  # numpy's rounding, as round() on np.float64 uses
            means[name] = float(percent.mean()) / 100 if chosen else float("nan")
        means["JF"] = (means["J"] + means["F"]) / 2
        out[group] = means
    out["overall"] = {k: (out["referring"][k] + out["reason"][k]) / 2 for k in ("J", "F", "A", "R", "JF")}
    return out
