"""Hand-computed cases for the binary metric functions (AVSBench / Ref-AVS J, the F sweep, batch-free F, S)."""

import math

import numpy as np
import pytest
import torch

from avseg.metrics import (
    eval_fmeasure,
    fmeasure_at_threshold,
    fmeasure_curve,
    fmeasure_pooled,
    fmeasure_sweep_max,
    frame_iou_stats,
    mask_iou,
    miou_dataset,
    miou_per_frame,
    null_s,
    resize_logits,
    resize_mask,
)

EPS = 1e-7
FULL = 25 / (25 + EPS)  # a perfect 5x5 frame under mask_iou's eps


# The six pred/target pairs of AVSBench utility.py's __main__; the "logits" are 0/1, so sigmoid gives 0.5 / 0.731.
@pytest.mark.parametrize(
    "pred_fill,target_fill,at_05,at_04",
    [
        # pred ones, target ones: a perfect match at either threshold.
        ("ones", "ones", FULL, FULL),
        # pred zeros (sigmoid 0.5), target empty: at 0.5 nothing is predicted, all 25 pixels are true negatives;
        # at 0.4 (Ref-AVS) sigmoid(0) = 0.5 > 0.4, every pixel is predicted and the true-negative count is 0.
        ("zeros", "zeros", FULL, 0.0),
        # pred zeros, target full: 0 at 0.5; at 0.4 the full prediction matches.
        ("zeros", "ones", 0.0, FULL),
        # pred ones, target empty: no true negatives.
        ("ones", "zeros", 0.0, 0.0),
    ],
)
def test_mask_iou_avsbench_main_pairs(pred_fill, target_fill, at_05, at_04):
    pred = torch.ones(4, 5, 5) if pred_fill == "ones" else torch.zeros(4, 5, 5)
    target = torch.ones(4, 5, 5) if target_fill == "ones" else torch.zeros(4, 5, 5)
    assert float(mask_iou(pred, target)) == pytest.approx(at_05, abs=1e-12)
    assert float(mask_iou(pred, target, threshold=0.4)) == pytest.approx(at_04, abs=1e-12)


def test_mask_iou_avsbench_main_mixed_pairs():
    # pred5: ones; target5: first two frames empty -> 0, 0 (no true negative), 1, 1 -> mean 0.5 (x FULL).
    target5 = torch.ones(4, 5, 5)
    target5[:2] = 0
    assert float(mask_iou(torch.ones(4, 5, 5), target5)) == pytest.approx(FULL / 2, abs=1e-12)
    # pred6: first two frames ones; target ones -> 1, 1, 0, 0.
    pred6 = torch.zeros(4, 5, 5)
    pred6[:2] = 1
    assert float(mask_iou(pred6, torch.ones(4, 5, 5))) == pytest.approx(FULL / 2, abs=1e-12)


def test_empty_gt_rules_by_hand():
    # Two 2x2 frames with empty GT: frame 0 predicts one pixel, frame 1 predicts nothing; frame 2 is a 1-of-2 hit.
    pred = torch.tensor(
        [[[True, False], [False, False]], [[False, False], [False, False]], [[True, True], [False, False]]]
    )
    target = torch.tensor([[[0, 0], [0, 0]], [[0, 0], [0, 0]], [[1, 0], [0, 0]]])
    tn = frame_iou_stats(pred, target, empty_gt="tn_ratio")
    assert tn.iou.tolist() == pytest.approx([3 / (4 + EPS), 4 / (4 + EPS), 1 / (2 + EPS)])
    one = frame_iou_stats(pred, target, empty_gt="one", eps=0.0)
    assert one.iou.tolist() == [0.0, 1.0, 0.5]  # DAVIS: only empty/empty scores 1
    zero = frame_iou_stats(pred, target, empty_gt="zero", eps=0.0)
    assert zero.iou.tolist() == [0.0, 0.0, 0.5]
    skip = frame_iou_stats(pred, target, empty_gt="skip")
    assert skip.counted.tolist() == [False, False, True]
    assert math.isnan(skip.iou[0]) and math.isnan(skip.iou[1])
    assert float(miou_per_frame(skip)) == pytest.approx(0.5, abs=1e-6)
    # Raw counts do not depend on the rule: dataset IoU = (0 + 0 + 1) / (1 + 0 + 2).
    assert float(miou_dataset(skip)) == pytest.approx(1 / 3)
    assert float(miou_dataset(tn)) == pytest.approx(1 / 3)


def test_miou_dataset_nan_when_everything_empty():
    stats = frame_iou_stats(torch.zeros(2, 3, 3, dtype=torch.bool), torch.zeros(2, 3, 3))
    assert math.isnan(float(miou_dataset(stats)))
    assert float(miou_per_frame(stats)) == pytest.approx(9 / (9 + EPS))


def test_fmeasure_empty_prediction_scores_at_threshold_zero():
    # Every probability is sigmoid(-9) = 1.2e-4: positive only at the first threshold (0). GT is 1 of 4 pixels,
    # so there P = 1/4, R = 1 and F = 1.3 * 0.25 / (0.3 * 0.25 + 1) = 0.325 / 1.075; 0 at every other threshold.
    logits = torch.full((1, 2, 2), -9.0)
    target = torch.tensor([[[1, 0], [0, 0]]])
    curves = fmeasure_curve(logits, target)
    assert curves.curves.shape == (1, 255)
    assert float(curves.curves[0, 0]) == pytest.approx(0.325 / 1.075)
    assert curves.curves[0, 1:].abs().max() == 0
    assert float(eval_fmeasure(logits, target)) == pytest.approx(0.325 / 1.075)


def test_fmeasure_full_frame_and_beta():
    full = torch.ones(1, 3, 3)
    assert float(eval_fmeasure(torch.full((1, 3, 3), 9.0), full)) == pytest.approx(1.0)
    # Two pixels at p = 0.9, GT one of them: at thresholds <= 0.9, P = 1/2 and R = 1.
    logits = torch.full((1, 1, 2), math.log(9.0))
    target = torch.tensor([[[1, 0]]])
    assert float(eval_fmeasure(logits, target)) == pytest.approx(1.3 * 0.5 / (0.3 * 0.5 + 1))  # 13/23
    assert float(eval_fmeasure(logits, target, beta2=1.0)) == pytest.approx(2 * 0.5 / 1.5)  # plain F1 = 2/3


def test_fmeasure_saturated_sigmoid_counts_at_the_last_float32_threshold():
    # The reference's thresholds are float32: 1 - 1e-10 rounds to exactly 1.0. sigmoid(20) is 1.0 in float32, so
    # the pixel is positive at every threshold; in float64 sigmoid(20) = 1 - 2e-9 < 1.0 misses the last one.
    target = torch.tensor([[[1]]])
    f32 = fmeasure_curve(torch.tensor([[[20.0]]]), target).curves[0]
    f64 = fmeasure_curve(torch.tensor([[[20.0]]], dtype=torch.float64), target).curves[0]
    assert f32.tolist() == [1.0] * 255
    assert f64[:-1].tolist() == [1.0] * 254 and float(f64[-1]) == 0.0


def test_fmeasure_sweep_max_averages_curves_before_the_max():
    # Curves peak at different thresholds: max of the mean (0.6) != mean of the maxima (0.8).
    curves = torch.tensor([[0.2, 0.8, 0.0], [0.6, 0.4, 0.8], [9.0, 9.0, 9.0]], dtype=torch.float64)
    counted = torch.tensor([True, True, False])
    assert float(fmeasure_sweep_max(curves, counted)) == pytest.approx(0.6)
    assert float(fmeasure_sweep_max(curves, torch.zeros(3, dtype=torch.bool))) == 0.0


def test_fmeasure_at_threshold_and_pooled_by_hand():
    # Frame 0: pred 2 px, GT 1 px, hit 1 -> P 1/2, R 1. Frame 1: pred 1 px, GT 2 px, hit 1 -> P 1, R 1/2.
    # Frame 2: empty GT, empty prediction.
    pred = torch.tensor([[[True, True], [False, False]], [[True, False], [False, False]], [[False] * 2] * 2])
    target = torch.tensor([[[1, 0], [0, 0]], [[1, 1], [0, 0]], [[0, 0], [0, 0]]])
    out = fmeasure_at_threshold(pred, target, beta2=0.3)
    assert out.tp.tolist() == [1, 1, 0] and out.fp.tolist() == [1, 0, 0] and out.fn.tolist() == [0, 1, 0]
    assert out.f[0].item() == pytest.approx(1.3 * 0.5 / (0.15 + 1))
    assert out.f[1].item() == pytest.approx(1.3 * 0.5 / (0.3 + 0.5))
    assert out.counted.tolist() == [True, True, False] and math.isnan(out.f[2])
    assert fmeasure_at_threshold(pred, target, empty_gt="one").f[2].item() == 1.0
    assert fmeasure_at_threshold(pred, target, empty_gt="zero").f[2].item() == 0.0
    # Pooled: tp 2, fp 1, fn 1 -> P = R = 2/3 -> F = 2/3 for any beta.
    assert float(fmeasure_pooled(out.tp, out.fp, out.fn)) == pytest.approx(2 / 3)


def test_null_s_by_hand():
    logits = torch.full((2, 2, 4), -3.0)
    logits[0, 0, :2] = 3.0  # 2 of 16 pixels foreground
    logits[1, 1, 0] = 0.0  # sigmoid 0.5 is not > 0.5
    assert float(null_s(logits, mode="ratio")) == pytest.approx(2 / 16)
    assert float(null_s(logits)) == pytest.approx(math.sqrt(2 / 16))
    assert float(null_s(logits, threshold=0.4, mode="ratio")) == pytest.approx(3 / 16)


def test_resize_mask_bilinear_gt0_follows_cv2_rounding_by_hand():
    # 2 -> 256 along an axis: output pixel d samples source x = (d + 0.5) / 128 - 0.5 (clamped at 0), where source
    # pixel 0 weighs w(d) = 1 - x. One foreground corner pixel stored as `level` gives level * w(dy) * w(dx) at
    # (dy, dx); cv2's uint8 resize rounds that, so the pixel is foreground when it is >= 0.5.
    x = np.clip((np.arange(256) + 0.5) / 128 - 0.5, 0, 1)
    weight = np.clip(1 - x, 0, 1)
    for level in (255, 1):
        mask = torch.tensor([[level, 0], [0, 0]], dtype=torch.uint8)
        expected = level * np.outer(weight, weight) >= 0.5
        np.testing.assert_array_equal(resize_mask(mask, (256, 256)).numpy().astype(bool), expected)
    # 0/255 storage dilates (about a 192-px block); 0/1 storage does not (about the 128-px block nearest gives).
    assert int(resize_mask(torch.tensor([[255, 0], [0, 0]], dtype=torch.uint8), (256, 256))[:, 0].sum()) == 192
    assert int(resize_mask(torch.tensor([[1, 0], [0, 0]], dtype=torch.uint8), (256, 256))[:, 0].sum()) == 128
    mask = torch.tensor([[1, 0], [0, 0]], dtype=torch.uint8)
    assert int(resize_mask(mask, (256, 256), mode="nearest").sum()) == 128 * 128
    assert resize_mask(mask * 255, (2, 2)).tolist() == [[1, 0], [0, 0]]  # same size: only binarised


def test_resize_logits_identity_and_constant():
    x = torch.randn(2, 3, 5, 7)
    assert resize_logits(x, (5, 7)) is x
    assert torch.allclose(resize_logits(torch.full((1, 4, 4), 2.5), (9, 3)), torch.full((1, 9, 3), 2.5))


def test_bad_inputs_raise_value_error():
    with pytest.raises(ValueError, match="same shape"):
        mask_iou(torch.zeros(2, 3, 3), torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="empty_gt"):
        frame_iou_stats(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2), empty_gt="ones")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="floating"):
        eval_fmeasure(torch.zeros(1, 2, 2, dtype=torch.int64), torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="mode"):
        null_s(torch.zeros(1, 2, 2), mode="sqrt")  # type: ignore[arg-type]


def test_fmeasure_curve_chunking_does_not_change_results(monkeypatch):
    # With a 40-pixel budget, 5 frames of 4x5 pixels are processed as chunks of 2, 2 and 1 frames.
    import avseg.metrics.binary as binary

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 4, 5, generator=gen)
    target = torch.rand(5, 4, 5, generator=gen) > 0.6
    whole = fmeasure_curve(logits, target).curves
    monkeypatch.setattr(binary, "_CHUNK_PIXELS", 40)
    chunked = fmeasure_curve(logits, target).curves
    alone = torch.stack([fmeasure_curve(logits[i : i + 1], target[i : i + 1]).curves[0] for i in range(5)])
    assert torch.equal(whole, chunked) and torch.equal(whole, alone)
