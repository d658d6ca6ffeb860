"""Hand-computed results of every preset through MetricAccumulator: empty GT, empty prediction, full frame, grouping."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from avseg.errors import ShapeError
from avseg.metrics import MetricAccumulator, MetricPreset, get_preset, group_ranges, list_presets, parse_group

EPS = 1e-7


def logit(p):
    return math.log(p / (1 - p))


def run(preset, logits, masks, group=None, valid=None, split=None):
    acc = MetricAccumulator(preset, group=group)
    if split is None:
        acc.update(logits, masks, valid=valid)
    else:  # several updates, to check that groups span calls
        for start in range(0, logits.shape[0], split):
            sl = slice(start, start + split)
            acc.update(logits[sl], masks[sl], valid=None if valid is None else valid[sl])
    return acc.compute()


# --------------------------------------------------------------------------------------------------- registry


def test_registry_and_grouping_parser():
    assert list_presets() == [
        "auralsam2_compat",
        "avsbench",
        "avss",
        "avss_corrected",
        "davis",
        "davis_semi",
        "refavs",
        "simtoken_compat",
    ]
    assert get_preset("avsbench_official") is get_preset("avsbench")
    with pytest.raises(ValueError, match="unknown metric preset 'nope'; available: auralsam2_compat"):
        get_preset("nope")
    assert parse_group("expression").size == 1
    for bad in ("batch:0", "batch", "frames", "batch:-2"):
        with pytest.raises(ValueError, match="group must be"):
            parse_group(bad)
    assert group_ranges(3, "video") == [range(0, 1), range(1, 2), range(2, 3)]
    with pytest.raises(ValueError, match="empty_gt"):
        MetricPreset(name="x", empty_gt="never")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="per_class"):
        MetricPreset(name="x", task="semantic")
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_preset("refavs").threshold = 0.5  # type: ignore[misc]


def test_preset_values_match_benchmarks_md():
    avs, ref, dav = get_preset("avsbench"), get_preset("refavs"), get_preset("davis")
    assert (avs.threshold, avs.empty_gt, avs.f_mode, avs.beta2, avs.num_thresholds, avs.group, avs.resize) == (
        0.5,
        "tn_ratio",
        "beta_sweep_max",
        0.3,
        255,
        "video",
        None,
    )
    assert (ref.threshold, ref.s_threshold, ref.resize, ref.gt_resize_mode, ref.group, ref.null_s) == (
        0.4,
        0.5,
        256,
        "bilinear_gt0",
        "batch:4",
        "sqrt_ratio",
    )
    assert (dav.empty_gt, dav.f_mode, dav.bound_th, dav.group) == ("one", "boundary", 0.008, "expression")
    aural = get_preset("auralsam2_compat")
    assert (aural.null_s, aural.null_s_reduction, aural.group) == ("ratio", "pooled", "batch:4")
    assert "unverified" in aural.notes.lower() and "unverified" in get_preset("simtoken_compat").notes.lower()


# --------------------------------------------------------------------------------------------------- avsbench


def test_avsbench_empty_gt_empty_prediction_full_frame():
    # Video 0 (2x2 frames): frame 0 empty GT + empty prediction -> J = 4/4 (true negatives), frame 1 empty GT + full
    # prediction -> J = 0; F: both frames skipped -> the group scores 0.
    # Video 1: frame 0 full GT + full prediction -> J = 1, F = 1; frame 1 GT 1 px, prediction empty (p = 1.2e-4)
    # -> J = 0, F only at threshold 0: P = 1/4, R = 1 -> 0.325/1.075; the averaged curve peaks at threshold 0 with
    # (1 + 0.325/1.075) / 2.
    logits = torch.tensor(
        [
            [[[-9.0, -9.0], [-9.0, -9.0]], [[9.0, 9.0], [9.0, 9.0]]],
            [[[9.0, 9.0], [9.0, 9.0]], [[-9.0, -9.0], [-9.0, -9.0]]],
        ]
    )
    masks = torch.tensor(
        [[[[0, 0], [0, 0]], [[0, 0], [0, 0]]], [[[1, 1], [1, 1]], [[1, 0], [0, 0]]]], dtype=torch.uint8
    )
    result = run("avsbench", logits, masks)
    j0 = (4 / (4 + EPS) + 0) / 2
    j1 = (4 / (4 + EPS) + 0) / 2
    f1 = (1 + 0.325 / 1.075) / 2
    assert [v["J"] for v in result["per_video"]] == pytest.approx([j0, j1])
    assert [v["F"] for v in result["per_video"]] == pytest.approx([0.0, f1])
    assert result["J"] == pytest.approx((j0 + j1) / 2)
    assert result["F"] == pytest.approx(f1 / 2)
    assert result["J&F"] == pytest.approx(((j0 + j1) / 2 + f1 / 2) / 2)
    assert result["counts"]["empty_gt_frames"] == 2
    # Batch-independent numbers: pooled IoU (0 + 0 + 4 + 0) / (0 + 4 + 4 + 1); per-frame F at 0.5 over the two
    # frames with GT: 1 and 0.
    assert result["miou_dataset"] == pytest.approx(4 / 9)
    assert result["F_fixed_per_frame"] == pytest.approx(0.5)
    assert result["F_fixed_dataset"] == pytest.approx(1.3 * (4 / 8) * (4 / 5) / (0.3 * (4 / 8) + 4 / 5))
    assert result["settings"]["preset"] == "avsbench" and result["settings"]["resolution"] == "2x2"


def _grouping_videos():
    # Three one-frame videos of 1x2 pixels, GT [1, 0] for A and B, [1, 1] for C.
    # A: p = (0.9, 0.6): F curve 13/23 (P=1/2, R=1) for th <= 0.6, 1 for 0.6 < th <= 0.9, 0 above; J = 1/2.
    # B: p = (0.3, 0.1): 13/23 for th <= 0.1, 1 for 0.1 < th <= 0.3, 0 above; J = 0 (nothing above 0.5).
    # C: p = (0.99988, 0.99988): F = 1 up to 0.9998; J = 1.
    logits = torch.tensor(
        [[[[logit(0.9), logit(0.6)]]], [[[logit(0.3), logit(0.1)]]], [[[9.0, 9.0]]]], dtype=torch.float32
    )
    masks = torch.tensor([[[[1, 0]]], [[[1, 0]]], [[[1, 1]]]], dtype=torch.uint8)
    return logits, masks


def test_avsbench_video_and_batch2_grouping_differ_by_hand():
    logits, masks = _grouping_videos()
    video = run("avsbench", logits, masks, group="video", split=2)
    batch2 = run("avsbench", logits, masks, group="batch:2", split=2)
    # video: every video alone reaches F = 1 at its own best threshold.
    assert video["F"] == pytest.approx(1.0)
    assert video["J"] == pytest.approx((2 / (2 + EPS) / 2 + 0 + 2 / (2 + EPS)) / 3)
    # batch:2: group {A, B} averages the curves: on 0.1 < th <= 0.3 the mean is (13/23 + 1) / 2 = 18/23, the
    # maximum (elsewhere 13/23, (13/23 + 0)/2, (1 + 0)/2, 0). Group {C} (the partial last group) scores 1 and weighs
    # the same: F = (18/23 + 1) / 2 = 41/46; J = ((1/2 + 0)/2 + 1) / 2 = 0.625.
    assert batch2["F"] == pytest.approx(41 / 46)
    assert batch2["J"] == pytest.approx(((2 / (2 + EPS) / 2 + 0) / 2 + 2 / (2 + EPS)) / 2)
    assert batch2["counts"]["groups"] == 2 and batch2["settings"]["group"] == "batch:2"
    # Batch-independent numbers do not move.
    assert video["miou_per_frame"] == pytest.approx(batch2["miou_per_frame"])
    assert video["F_fixed_dataset"] == pytest.approx(batch2["F_fixed_dataset"])


def test_invalid_frames_are_dropped_for_binary_presets():
    logits, masks = _grouping_videos()
    logits = logits.repeat(1, 2, 1, 1)  # (3, 2, 1, 2): frame 1 duplicates frame 0 ...
    masks = masks.repeat(1, 2, 1, 1).clone()
    masks[:, 1] = 1 - masks[:, 1]  # ... with a different GT, marked invalid below
    valid = torch.tensor([[True, False]] * 3)
    result = run("avsbench", logits, masks, group="batch:2", valid=valid)
    assert result["F"] == pytest.approx(41 / 46)
    assert result["counts"]["invalid_frames_dropped"] == 3 and result["counts"]["frames"] == 3


# ----------------------------------------------------------------------------------------------------- refavs


def test_refavs_threshold_04_and_gt_resize_by_hand():
    # Logits 0 (p = 0.5) are foreground at 0.4 but not at 0.5. The 2x2 GT stored as 0/255 has one foreground pixel;
    # cv2's bilinear resize to 256 rounds 255 * w(dy) * w(dx), w(d) = 1 - clamp((d + 0.5) / 128 - 0.5, 0, 1), and
    # "> 0" keeps the pixels where that reaches 0.5 (nearly a 192x192 block), so a full prediction scores
    # J = n / 256^2 (+ eps) at 0.4.
    weight = 1 - np.clip((np.arange(256) + 0.5) / 128 - 0.5, 0, 1)
    n = int((255 * np.outer(weight, weight) >= 0.5).sum())
    assert 190**2 < n < 192**2
    logits = torch.zeros(1, 1, 2, 2)
    masks = torch.tensor([[[[255, 0], [0, 0]]]], dtype=torch.uint8)
    result = run("refavs", logits, masks)
    assert result["J"] == pytest.approx(n / (256**2 + EPS))
    assert result["settings"]["resolution"] == "256x256" and result["settings"]["resize"] == 256
    assert result["settings"]["threshold"] == 0.4 and result["settings"]["gt_resize_mode"] == "bilinear_gt0"
    # F: p = 0.5 everywhere: P = n / 256^2, R = 1 for th <= 0.5 -> 1.3 * P / (0.3 * P + 1).
    precision = n / 256**2
    assert result["F"] == pytest.approx(1.3 * precision / (0.3 * precision + 1))
    assert run("avsbench", logits, masks)["J"] == 0.0  # same logits at 0.5: empty prediction


def test_refavs_full_frame_and_empty_prediction():
    full = torch.ones(1, 2, 256, 256, dtype=torch.uint8)
    result = run("refavs", torch.full((1, 2, 256, 256), 9.0), full)
    assert result["J"] == pytest.approx(256**2 / (256**2 + EPS)) and result["F"] == pytest.approx(1.0)
    # Empty prediction on a full GT: J = 0; F at threshold 0: P = 1, R = 1 -> 1 (the threshold-0 quirk).
    result = run("refavs", torch.full((1, 2, 256, 256), -9.0), full)
    assert result["J"] == 0.0 and result["F"] == pytest.approx(1.0)


def test_refavs_null_s_by_hand():
    # Null split: 5 expressions x 2 frames, all GT empty. Expression 0 predicts everything, the rest nothing.
    logits = torch.full((5, 2, 4, 4), -9.0)
    logits[0] = 9.0
    masks = torch.zeros(5, 2, 4, 4, dtype=torch.uint8)
    result = run("refavs", logits, masks, split=3)
    # batch:4: group {0..3} has 2 of 8 frames foreground -> sqrt(1/4) = 1/2; group {4} -> 0; S = mean = 1/4.
    assert result["S"] == pytest.approx(0.25)
    assert result["fg_ratio"] == pytest.approx(0.2)
    assert result["F"] == 0.0  # every group has only empty GT
    # J: expression 0 has no true negatives (0), others are all true negatives (~1): group means 3/4 and 1.
    assert result["J"] == pytest.approx((0.75 * 65536 / (65536 + EPS) + 65536 / (65536 + EPS)) / 2)
    per_expression = run("refavs", logits, masks, group="expression")
    assert per_expression["S"] == pytest.approx(0.2)  # (sqrt(1) + 0 + 0 + 0 + 0) / 5


# ------------------------------------------------------------------------------------------ compat presets


def test_simtoken_compat_weights_expressions_by_frames():
    # Expression A: 1 valid frame (of 3), perfect -> J = 1, F = 1. Expression B: 3 frames, GT left half of 1x2,
    # prediction empty -> J = 0, F = 13/23 (P = 1/2, R = 1 at threshold 0).
    logits = torch.full((2, 3, 1, 2), -9.0)
    logits[0, :, 0, 0] = 9.0
    masks = torch.tensor([[[[1, 0]]] * 3] * 2, dtype=torch.uint8)
    valid = torch.tensor([[True, False, False], [True, True, True]])
    result = run("simtoken_compat", logits, masks, valid=valid)
    assert result["J"] == pytest.approx((1 * 1 / (1 + EPS) + 3 * 0) / 4)
    assert result["F"] == pytest.approx((1 * 1 + 3 * 13 / 23) / 4)
    equal = run(dataclasses.replace(get_preset("simtoken_compat"), group_weighting="equal"), logits, masks, valid=valid)
    assert equal["J"] == pytest.approx(0.5, abs=1e-6) and equal["F"] == pytest.approx((1 + 13 / 23) / 2)


def test_auralsam2_compat_pools_s_without_sqrt():
    # 6 expressions x 1 frame of 2x2: expression 0 predicts 1 pixel, expression 5 predicts 4. Pooled: 5 / 24.
    logits = torch.full((6, 1, 2, 2), -9.0)
    logits[0, 0, 0, 0] = 9.0
    logits[5] = 9.0
    masks = torch.zeros(6, 1, 2, 2, dtype=torch.uint8)
    result = run("auralsam2_compat", logits, masks)
    assert result["S"] == pytest.approx(5 / 24)
    assert result["settings"]["null_s"] == "ratio" and result["settings"]["group"] == "batch:4"
    # Ref-AVS's S on the same predictions (scored at 2x2, not resized): batch {0..3}: sqrt(1/16); {4, 5}: sqrt(4/8).
    refavs_native = dataclasses.replace(get_preset("refavs"), resize=None)
    assert run(refavs_native, logits, masks)["S"] == pytest.approx((0.25 + math.sqrt(0.5)) / 2)


# ------------------------------------------------------------------------------------------------------ davis


def test_davis_preset_by_hand():
    full = torch.ones(4, 4, dtype=torch.uint8)
    empty = torch.zeros(4, 4, dtype=torch.uint8)
    obj = torch.zeros(4, 4, dtype=torch.uint8)
    obj[1:3, 1:3] = 1
    # Expression 0: (GT, prediction) = (empty, empty): J 1, F 1; (obj, empty): J 0, F 0 (P 1, R 0).
    # Expression 1: (full, full): J 1, F 1 (a full mask has no seg2bmap boundary); (full, empty): J 0 but F 1 -
    # both boundary maps are empty, the DAVIS "both empty" case.
    masks = torch.stack([torch.stack([empty, obj]), torch.stack([full, full])])
    preds = torch.stack([torch.stack([empty, empty]), torch.stack([full, empty])])
    logits = torch.where(preds > 0, 5.0, -5.0)
    result = run("davis", logits, masks)
    assert [v["J"] for v in result["per_video"]] == [0.5, 0.5]
    assert [v["F"] for v in result["per_video"]] == [0.5, 1.0]
    assert result["J"] == 0.5 and result["F"] == 0.75 and result["J&F"] == 0.625
    assert result["settings"]["f_mode"] == "boundary" and result["settings"]["bound_th"] == 0.008


def test_davis_semi_is_davis_without_each_items_first_and_last_scored_frame():
    # One item of 5 frames whose prediction is right on frames 1..3 only: davis_semi scores exactly those.
    obj = torch.zeros(5, 8, 8, dtype=torch.uint8)
    obj[:, 2:6, 2:6] = 1
    logits = torch.where(obj > 0, 5.0, -5.0)
    logits[0], logits[4] = -5.0, -5.0  # missed on the first (conditioning) and last frames
    semi = run("davis_semi", logits[None], obj[None])
    assert semi["J"] == 1.0 and semi["F"] == 1.0 and semi["counts"]["frames"] == 3
    assert semi["counts"]["unscored_frames"] == 2
    assert run("davis", logits[None], obj[None])["J"] == pytest.approx(3 / 5)
    # The end frames are those of the labelled frames from the item's first frame on.
    acc = MetricAccumulator("davis_semi")
    valid = torch.tensor([[True, True, True, False, True]])
    acc.update(logits[None], obj[None], valid=valid, first_frame=[1])
    result = acc.compute()
    assert result["counts"]["frames"] == 1 and result["J"] == 1.0  # frame 2: after 1, before the last labelled (4)
    with pytest.raises(ShapeError, match="first_frame 5 of item 0 is outside its 5 frames"):
        acc.update(logits[None], obj[None], first_frame=[5])


# ------------------------------------------------------------------------------------------------ accumulator


def test_accumulator_validates_inputs():
    acc = MetricAccumulator("avsbench")
    with pytest.raises(ShapeError, match=r"\(B, T, H, W\)"):
        acc.update(torch.zeros(2, 3, 3), torch.zeros(2, 3, 3, dtype=torch.uint8))
    with pytest.raises(ShapeError, match="floating"):
        acc.update(torch.zeros(1, 1, 3, 3, dtype=torch.int64), torch.zeros(1, 1, 3, 3, dtype=torch.uint8))
    with pytest.raises(ShapeError, match="bool or integer"):
        acc.update(torch.zeros(1, 1, 3, 3), torch.zeros(1, 1, 3, 3))
    with pytest.raises(ShapeError, match="valid"):
        acc.update(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3, dtype=torch.uint8), valid=torch.ones(1, 2))
    with pytest.raises(ShapeError, match="ids"):
        acc.update(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3, dtype=torch.uint8), ids=["a", "b"])
    with pytest.raises(ValueError, match="no data"):
        acc.compute()
    semantic = MetricAccumulator("avss")
    with pytest.raises(ShapeError, match=r"\(B, T, K, H, W\)"):
        semantic.update(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3, dtype=torch.uint8))


def test_logits_are_brought_to_the_ground_truth_size():
    # 3x3 logits against a 4x6 ground truth (resize=None): the logits are resized bilinearly, never the masks.
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 2, 3, 3, generator=g)
    masks = (torch.rand(1, 2, 4, 6, generator=g) > 0.5).to(torch.uint8)
    result = run("avsbench", logits, masks)
    up = torch.nn.functional.interpolate(logits, size=(4, 6), mode="bilinear", align_corners=False)
    expected = run("avsbench", up, masks)
    assert result["J"] == expected["J"] and result["F"] == expected["F"]
    assert result["settings"]["resolution"] == "4x6" and result["settings"]["gt_resolution"] == "4x6"
    # With a fixed size, both go there and the record keeps the size the ground truth was given at.
    fixed = run("refavs", logits, masks)
    assert fixed["settings"]["resolution"] == "256x256" and fixed["settings"]["gt_resolution"] == "4x6"


def test_avss_ground_truth_resize_is_pil_nearest():
    # The AVSS loader resizes val/test colour masks to 224 with PIL's NEAREST (pixel centres), not floor(dst*scale).
    from PIL import Image

    labels = torch.randint(0, 5, (1, 2, 30, 40), generator=torch.Generator().manual_seed(1)).to(torch.uint8)
    logits = torch.zeros(1, 2, 5, 224, 224)
    pil = [Image.fromarray(m.numpy()).resize((224, 224), Image.NEAREST) for m in labels[0]]
    logits[0] = torch.nn.functional.one_hot(torch.from_numpy(np.stack(pil)).long(), 5).permute(0, 3, 1, 2) * 9.0
    result = run("avss", logits, labels)  # predicting PIL's resized labels exactly scores 1
    assert result["J"] == pytest.approx(1.0) and result["F"] == pytest.approx(1.0)
    assert result["settings"]["gt_resize_mode"] == "nearest_exact"


def test_preset_resolution_fields():
    table = {name: (get_preset(name).gt_source, get_preset(name).resize) for name in list_presets()}
    assert table == {
        "auralsam2_compat": ("input", None),
        "avsbench": ("native", None),
        "avss": ("native", 224),
        "avss_corrected": ("native", 224),
        "davis": ("native", None),
        "davis_semi": ("native", None),
        "refavs": ("native", 256),
        "simtoken_compat": ("native", None),
    }
    assert get_preset("avss").zero_padded_logits and not get_preset("avss_corrected").zero_padded_logits
    for name in list_presets():
        assert "Eval " in get_preset(name).notes  # every note says what evaluation does with it
    with pytest.raises(ValueError, match="zero_padded_logits"):
        MetricPreset(name="x", zero_padded_logits=True)
    with pytest.raises(ValueError, match="bilinearly"):
        MetricPreset(name="x", task="semantic", f_mode="per_class", gt_resize_mode="bilinear_gt0")
    with pytest.raises(ValueError, match="gt_source"):
        MetricPreset(name="x", gt_source="disk")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="skip_end_frames is for binary presets"):
        MetricPreset(name="x", task="semantic", f_mode="per_class", gt_resize_mode="nearest", skip_end_frames=True)


def test_accumulator_reset_and_ids():
    logits, masks = _grouping_videos()
    acc = MetricAccumulator("avsbench", group="batch:2")
    acc.update(logits, masks, ids=["a", "b", "c"])
    assert len(acc) == 3 and [v["id"] for v in acc.compute()["per_video"]] == ["a", "b", "c"]
    acc.reset()
    assert len(acc) == 0
    acc.update(logits[:1], masks[:1])
    assert acc.compute()["per_video"][0]["id"] == "0"


@pytest.mark.parametrize("preset", ["refavs", "davis", "avss"])
def test_an_item_added_from_another_accumulator_scores_as_if_updated_again(preset):
    torch.manual_seed(0)
    semantic = get_preset(preset).task == "semantic"
    logits = torch.randn(3, 2, 4, 8, 8) if semantic else torch.randn(3, 2, 8, 8)
    masks = torch.randint(0, 4 if semantic else 2, (3, 2, 8, 8))
    overall = MetricAccumulator(preset)
    overall.update(logits, masks, ids=["a", "b", "c"])
    updated, added = MetricAccumulator(preset), MetricAccumulator(preset)
    for i in (2, 0):  # a subset of the items, in another order
        updated.update(logits[i : i + 1], masks[i : i + 1], ids=[["a", "b", "c"][i]])
        added.add_scored(overall, i - 3)  # counted from the end, as evaluation does within a batch
    expected, got = updated.compute(), added.compute()
    assert [v["id"] for v in got["per_video"]] == ["c", "a"]
    assert got["J"] == expected["J"] and got["F"] == expected["F"]
    assert got["per_video"] == expected["per_video"]
    with pytest.raises(ValueError, match=f"source accumulator uses preset '{preset}'"):
        MetricAccumulator("davis" if preset != "davis" else "refavs").add_scored(overall, 0)
