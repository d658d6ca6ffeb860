"""Hand-computed AVSS (AVSBench-semantic) scores: the official quirks and the corrected variant."""

import dataclasses
import math

import pytest
import torch

from avseg.metrics import (
    MetricAccumulator,
    avss_corrected,
    avss_official,
    avss_scores,
    get_preset,
    semantic_frame_stats,
)

# Three classes (0 = background). One video, 1x4-pixel frames, the last frame padded:
#   f0: label 0 0 1 1   pred 0 1 1 1
#   f1: label 0 0 0 0   pred 0 0 0 0
#   f2: label 0 0 0 0   pred 1 1 0 0   (padding: valid = False)
# Per frame:
#   f0 class 0: inter 1, pred 1, label 2, union 2 -> IoU 1/2, F = 1.3 * 1 * 0.5 / (0.3 + 0.5) = 0.8125
#      class 1: inter 2, pred 3, label 2, union 3 -> IoU 2/3, F = 1.3 * (2/3) / (0.3 * 2/3 + 1) = 13/18
#   f1 class 0: IoU 1, F 1
#   f2 class 0: inter 2, pred 2, label 4 -> IoU 1/2, F 0.8125;  class 1: inter 0, union 2 -> IoU 0, F 0
# Class 2 is never seen.
LABELS = torch.tensor([[[[0, 0, 1, 1]], [[0, 0, 0, 0]], [[0, 0, 0, 0]]]], dtype=torch.uint8)  # (1, 3, 1, 4)
PREDS = torch.tensor([[[[0, 1, 1, 1]], [[0, 0, 0, 0]], [[1, 1, 0, 0]]]])
VALID = torch.tensor([[True, True, False]])
F_C1 = 13 / 18


def class_logits():
    return torch.nn.functional.one_hot(PREDS, 3).permute(0, 1, 4, 2, 3).float() * 5.0  # (1, 3, 3, 1, 4)


def stats():
    return semantic_frame_stats(class_logits().reshape(3, 3, 1, 4), LABELS.reshape(3, 1, 4))


def test_frame_stats_by_hand():
    s = stats()
    assert s.inter.tolist() == [[1, 2, 0], [4, 0, 0], [2, 0, 0]]
    assert s.pred.tolist() == [[1, 3, 0], [4, 0, 0], [2, 2, 0]]
    assert s.label.tolist() == [[2, 2, 0], [4, 0, 0], [4, 0, 0]]


def test_official_keeps_padding_and_unseen_classes():
    scores = avss_official(stats())
    # class 0: (1/2 + 1 + 1/2) / 3; class 1: (2/3 + 0) / 2 (counted where in pred or label); class 2: never seen.
    assert scores.miou_per_class[:2].tolist() == pytest.approx([2 / 3, 1 / 3])
    assert math.isnan(scores.miou_per_class[2])
    assert scores.class_count.tolist() == [3, 2, 0]
    assert scores.miou == pytest.approx((2 / 3 + 1 / 3 + 0) / 3)  # the unseen class stays in as 0
    f0 = (0.8125 + 1 + 0.8125) / 3
    f1 = F_C1 / 2
    assert scores.fscore == pytest.approx((f0 + f1 + 0) / 3)
    # noBg drops the LAST index (class 2 here), not background.
    assert scores.miou_no_bg == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert scores.fscore_no_bg == pytest.approx((f0 + f1) / 2)
    assert scores.frames == 3


def test_corrected_drops_padding_unseen_classes_and_background():
    scores = avss_corrected(stats(), valid=VALID.reshape(-1))
    # valid frames only: class 0 (1/2 + 1) / 2, class 1: 2/3; class 2 dropped from the mean.
    assert scores.miou == pytest.approx((0.75 + 2 / 3) / 2)
    assert scores.fscore == pytest.approx(((0.8125 + 1) / 2 + F_C1) / 2)
    assert scores.miou_no_bg == pytest.approx(2 / 3)  # index 0 removed
    assert scores.fscore_no_bg == pytest.approx(F_C1)
    assert scores.frames == 2
    # Each switch alone.
    only_frames = avss_scores(stats(), valid=VALID.reshape(-1), include_invalid_frames=False)
    assert only_frames.miou == pytest.approx((0.75 + 2 / 3 + 0) / 3)
    only_unseen = avss_scores(stats(), unseen_classes="drop")
    assert only_unseen.miou == pytest.approx((2 / 3 + 1 / 3) / 2)


def test_accumulator_avss_presets():
    as_given = dataclasses.replace(get_preset("avss"), resize=None)  # score the 1x4 frames as they are
    official = MetricAccumulator(as_given)
    official.update(class_logits(), LABELS, valid=VALID, ids=["v"])
    result = official.compute()
    # The official models multiply their logits by the frame-validity flag, so the padded f2 is predicted as
    # background (0 0 0 0): class 0 scores (1/2 + 1 + 1) / 3, class 1 only f0 (2/3), class 2 is unseen.
    assert result["J"] == pytest.approx((5 / 6 + 2 / 3 + 0) / 3) and result["miou"] == result["J"]
    kept = MetricAccumulator(dataclasses.replace(as_given, zero_padded_logits=False))
    kept.update(class_logits(), LABELS, valid=VALID, ids=["v"])
    result = kept.compute()  # the model's own prediction on the padded frame: the statistics above
    assert result["J"] == pytest.approx(1 / 3)
    assert result["corrected"]["miou"] == pytest.approx((0.75 + 2 / 3) / 2)
    assert result["per_class"]["count"] == [3, 2, 0]
    assert result["counts"]["classes_seen"] == 2 and result["counts"]["scored_frames"] == 3
    assert result["settings"]["include_invalid_frames"] is True and result["settings"]["no_bg_index"] == -1
    corrected = MetricAccumulator("avss_corrected")
    corrected.update(class_logits(), LABELS, valid=VALID)
    result = corrected.compute()
    assert result["J"] == pytest.approx((0.75 + 2 / 3) / 2)
    assert result["official"]["miou"] == pytest.approx(1 / 3)
    assert result["counts"]["scored_frames"] == 2


def test_ignored_and_out_of_range_labels_follow_the_reference():
    logits = torch.zeros(1, 2, 1, 3)
    logits[0, 1] = 5.0  # predicts class 1 everywhere
    labels = torch.tensor([[[-1, 1, 7]]])  # -1: ignored everywhere; 7 >= K: counted on the prediction side only
    s = semantic_frame_stats(logits, labels)
    assert s.pred.tolist() == [[0, 2]] and s.label.tolist() == [[0, 1]] and s.inter.tolist() == [[0, 1]]


def test_softmax_ties_resolve_to_the_lower_index():
    s = semantic_frame_stats(torch.zeros(1, 3, 1, 2), torch.zeros(1, 1, 2, dtype=torch.long))
    assert s.pred.tolist() == [[2, 0, 0]]
