"""ReVOS A, R and summary against an independent re-implementation of VISA's ``tools/metrics.py`` and
``tools/eval_revos.py`` (also Sa2VA's ``third_parts/revos/utils/metrics.py``, ``tools/eval/eval_revos.py``)."""

import doctest
import math

import numpy as np
import pytest
import torch

from avseg.metrics import r2vos_accuracy, r2vos_robustness, revos_scores
from avseg.metrics import revos as revos_module


def reference_accuracy(gt_masks, pred_masks):
    """Official A: per frame, the mean of ``gt == pred`` over uint8 masks."""
    return np.array([np.mean(g == p) for g, p in zip(gt_masks, pred_masks)])


def reference_robustness(gt_masks, pred_masks, fg_masks):
    """Official R: uint8 arithmetic, ``neg = sum((1 - gt) * pred)``, ``max(1 - neg / (sum(fg) + 1e-6), 0)``."""
    out = []
    for g, p, fg in zip(gt_masks, pred_masks, fg_masks):
        negatives = ((1 - g) * p).sum()
        positives = fg.sum()
        out.append(max(1 - negatives / (positives + 1e-6), 0.0))
    return np.array(out)


def reference_summary(j, f, a, r, type_ids):
    """Official summary: per expression ``round(100 * x, 2)`` on np.float64, means per type 0 / 1, overall = mean."""
    rows = []
    for jj, ff, aa, rr, t in zip(j, f, a, r, type_ids):
        rows.append({k: round(100 * np.float64(v), 2) for k, v in zip("JFAR", (jj, ff, aa, rr))} | {"type_id": t})
    res = {}
    for name, t in (("referring", 0), ("reason", 1)):
        group = {k: np.array([d[k] for d in rows if d["type_id"] == t]).mean() for k in "JFAR"}
        group["JF"] = (group["J"] + group["F"]) / 2
        res[name] = group
    res["overall"] = {k: (res["referring"][k] + res["reason"][k]) / 2 for k in ("J", "F", "A", "R", "JF")}
    return res


def _random_masks(rng, t=6, h=9, w=11, p=0.3):
    return (rng.random((t, h, w)) < p).astype(np.uint8)


def test_accuracy_and_robustness_match_the_official_computation():
    rng = np.random.default_rng(0)
    for _ in range(20):
        gt, pred = _random_masks(rng), _random_masks(rng, p=rng.uniform(0.05, 0.6))
        # The foreground: the expression's object plus other objects, summed as the official loader sums them.
        other = _random_masks(rng, p=0.2)
        fg = (gt + other).astype(np.uint8)
        gt[1] = 0  # empty ground truth on one frame
        pred[2] = 0  # empty prediction on another
        pred[3] = 1  # full-frame prediction
        fg[4] = 0  # no foreground at all
        np.testing.assert_allclose(r2vos_accuracy(gt, pred).numpy(), reference_accuracy(gt, pred), rtol=0, atol=1e-12)
        np.testing.assert_allclose(
            r2vos_robustness(torch.from_numpy(gt), torch.from_numpy(pred), torch.from_numpy(fg)).numpy(),
            reference_robustness(gt, pred, fg),
            rtol=0,
            atol=1e-12,
        )


def test_edge_cases():
    h, w = 4, 5
    zeros, ones = np.zeros((h, w), np.uint8), np.ones((h, w), np.uint8)
    gt = zeros.copy()
    gt[:2, :2] = 1
    # Empty ground truth and empty prediction: perfect on both.
    assert float(r2vos_accuracy(zeros, zeros)) == 1.0 and float(r2vos_robustness(zeros, zeros, zeros)) == 1.0
    # Empty prediction: A counts the missed pixels, R is 1 (no false positive).
    assert float(r2vos_accuracy(gt, zeros)) == 1 - 4 / 20 and float(r2vos_robustness(gt, zeros, ones)) == 1.0
    # A false positive on a frame without foreground: R is clamped to 0, as the official max(..., 0).
    assert float(r2vos_robustness(zeros, gt, zeros)) == 0.0
    # Full-frame prediction over a 4-pixel target with a 20-pixel foreground: 16 false positives.
    assert float(r2vos_robustness(gt, ones, ones)) == pytest.approx(1 - 16 / (20 + 1e-6), abs=1e-12)
    assert float(r2vos_accuracy(gt, ones)) == 4 / 20
    # Batched shapes, numpy and torch alike.
    assert r2vos_accuracy(torch.zeros(2, 3, h, w), torch.zeros(2, 3, h, w)).shape == (2, 3)


def test_overlapping_objects_are_united():
    # The official sum of two overlapping anno_id masks holds 2 where they overlap; avseg scores the union, which is
    # the official result on that union.
    a = np.zeros((1, 4, 4), np.uint8)
    b = np.zeros((1, 4, 4), np.uint8)
    a[0, :2, :2] = 1
    b[0, 1:3, 1:3] = 1
    summed, union = a + b, np.maximum(a, b)
    pred = union.copy()
    assert float(r2vos_accuracy(summed, pred)) == reference_accuracy(union, pred)[0] == 1.0
    assert reference_accuracy(summed, pred)[0] < 1.0  # the official quirk avseg does not reproduce
    fg = union.copy()
    assert float(r2vos_robustness(summed, pred, fg)) == pytest.approx(reference_robustness(union, pred, fg)[0])


def test_shape_and_sign_errors():
    with pytest.raises(ValueError, match="same shape"):
        r2vos_accuracy(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="foreground"):
        r2vos_robustness(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="non-negative"):
        r2vos_robustness(np.zeros((2, 3)), np.zeros((2, 3)), -np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"\(\.\.\., H, W\)"):
        r2vos_accuracy(np.zeros(3), np.zeros(3))


def test_summary_matches_the_official_reduction():
    rng = np.random.default_rng(1)
    n = 40
    j, f, a, r = (rng.random(n) for _ in range(4))
    type_ids = rng.integers(0, 3, n).tolist()  # type 2 enters no number
    got = revos_scores(j, f, a, r, type_ids)
    want = reference_summary(j, f, a, r, type_ids)
    for group in ("referring", "reason", "overall"):
        for key in ("J", "F", "A", "R", "JF"):
            assert got[group][key] == pytest.approx(want[group][key] / 100, abs=1e-12), (group, key)
    # Rounding happens per expression in percent: exact scores differ from the rounded ones.
    exact = revos_scores(j, f, a, r, type_ids, percent_decimals=None)
    assert exact["overall"]["J"] != got["overall"]["J"]
    assert exact["referring"]["J"] == pytest.approx(np.mean([x for x, t in zip(j, type_ids) if t == 0]))


def test_summary_without_reasoning_expressions_is_nan_like_the_official_mean():
    got = revos_scores([0.5], [0.5], [1.0], [1.0], [0])
    assert got["referring"]["JF"] == 0.5 and math.isnan(got["reason"]["J"]) and math.isnan(got["overall"]["JF"])
    with pytest.raises(ValueError, match="F has 1 scores for 2 type_ids"):
        revos_scores([0.5, 0.5], [0.5], [1.0, 1.0], [1.0, 1.0], [0, 1])


def test_doctests():
    result = doctest.testmod(revos_module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
