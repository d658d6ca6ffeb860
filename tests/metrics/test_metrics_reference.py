"""Randomised checks of every preset against naive NumPy re-implementations written here from the official code.

The references loop over frames, thresholds, classes and pixels in float64, exactly as the official scripts describe
the computation (AVSBench ``utility.py``, Ref-AVS ``utility.py`` + ``train.py::test``, AVSBench ``avss`` metrics,
davis2017-evaluation ``metrics.py``). Probabilities are drawn half-way between two F thresholds so that float32 and
float64 evaluations cannot disagree on which side of a threshold a pixel lies.
"""

import dataclasses
import math

import numpy as np
import pytest
import torch

from avseg.metrics import MetricAccumulator, get_preset, resize_logits

# ----------------------------------------------------------------------------------------------- naive references


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def naive_mask_iou(logits, gt, thr, eps=1e-7):
    """AVSBench/Ref-AVS mask_iou over the frames of one batch: (N, H, W) -> float."""
    total = 0.0
    n, h, w = logits.shape
    for i in range(n):
        p = (sigmoid(logits[i]) > thr).astype(np.float64)
        t = (gt[i] > 0).astype(np.float64)
        if t.sum() == 0:
            inter = ((1 - t) * (1 - p)).sum()
            union = h * w
        else:
            inter = (p * t).sum()
            union = np.maximum(p, t).sum()
        total += inter / (union + eps)
    return total / n


def naive_eval_fmeasure(logits, gt, num=255, beta2=0.3):
    """AVSBench Eval_Fmeasure over the frames of one batch: (N, H, W) -> float."""
    thresholds = np.linspace(0, 1 - 1e-10, num)
    avg = np.zeros(num)
    counted = 0
    for i in range(logits.shape[0]):
        t = (gt[i] > 0).astype(np.float64)
        if t.mean() == 0:
            continue
        p = sigmoid(logits[i])
        f = np.zeros(num)
        for k, th in enumerate(thresholds):
            y = (p >= th).astype(np.float64)
            tp = (y * t).sum()
            prec = tp / (y.sum() + 1e-20)
            rec = tp / (t.sum() + 1e-20)
            with np.errstate(invalid="ignore"):
                f[k] = (1 + beta2) * prec * rec / (beta2 * prec + rec)
            if f[k] != f[k]:
                f[k] = 0.0
        avg += f
        counted += 1
    return (avg / counted).max() if counted else 0.0


def naive_null_s(logits):
    p = sigmoid(logits) > 0.5
    return math.sqrt(p.sum() / p.size)


def naive_binary(logits, masks, k, thr):
    """Official loop: K videos per batch, mean over batches of J, F and S."""
    js, fs, ss = [], [], []
    for start in range(0, logits.shape[0], k):
        lg = logits[start : start + k].reshape(-1, *logits.shape[-2:])
        gt = masks[start : start + k].reshape(-1, *masks.shape[-2:])
        js.append(naive_mask_iou(lg, gt, thr))
        fs.append(naive_eval_fmeasure(lg, gt))
        ss.append(naive_null_s(lg))
    return np.mean(js), np.mean(fs), np.mean(ss)


def naive_bilinear(img, out_h, out_w):
    """Half-pixel-centre bilinear resize (cv2 INTER_LINEAR geometry), float64."""
    in_h, in_w = img.shape
    out = np.zeros((out_h, out_w))

    def axis(dst, n_in, n_out):
        src = (dst + 0.5) * n_in / n_out - 0.5
        src = max(src, 0.0)
        i0 = math.floor(src)
        i0 = min(i0, n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        lam = src - i0 if i0 < n_in - 1 else 0.0
        return i0, i1, lam

    for y in range(out_h):
        y0, y1, ly = axis(y, in_h, out_h)
        for x in range(out_w):
            x0, x1, lx = axis(x, in_w, out_w)
            top = (1 - lx) * img[y0, x0] + lx * img[y0, x1]
            bottom = (1 - lx) * img[y1, x0] + lx * img[y1, x1]
            out[y, x] = (1 - ly) * top + ly * bottom
    return out


def naive_avss(logits, labels, valid, *, official, beta2=0.3):
    """AVSBench avss _batch_miou_fscore + test.py reduction: logits (N, K, H, W), labels (N, H, W)."""
    n, k = logits.shape[:2]
    ious, fs, counts = np.zeros(k), np.zeros(k), np.zeros(k)
    for i in range(n):
        if not official and not valid[i]:
            continue
        pred = logits[i].argmax(0)
        for c in range(k):
            inter = np.sum((pred == c) & (labels[i] == c))
            area_p = np.sum(pred == c)
            area_l = np.sum(labels[i] == c)
            union = area_p + area_l - inter
            ious[c] += inter / (2.220446049250313e-16 + union)
            if union > 0:
                counts[c] += 1
            with np.errstate(invalid="ignore", divide="ignore"):
                prec = inter / area_p
                rec = inter / area_l
                f = (1 + beta2) * prec * rec / (beta2 * prec + rec)
            fs[c] += 0.0 if np.isnan(f) else f
    with np.errstate(invalid="ignore"):
        miou_pc, f_pc = ious / counts, fs / counts
    if official:
        miou_pc, f_pc = np.nan_to_num(miou_pc), np.nan_to_num(f_pc)
        return miou_pc.mean(), f_pc.mean(), miou_pc[:-1].mean(), f_pc[:-1].mean()
    seen = counts > 0
    no_bg = seen.copy()
    no_bg[0] = False
    return miou_pc[seen].mean(), f_pc[seen].mean(), miou_pc[no_bg].mean(), f_pc[no_bg].mean()


def naive_seg2bmap(seg):
    seg = seg > 0
    h, w = seg.shape
    b = np.zeros((h, w), dtype=bool)
    for y in range(h):
        for x in range(w):
            e = seg[y, x + 1] if x + 1 < w else False
            s = seg[y + 1, x] if y + 1 < h else False
            se = seg[y + 1, x + 1] if (x + 1 < w and y + 1 < h) else False
            if y == h - 1 and x == w - 1:
                b[y, x] = False
            elif y == h - 1:
                b[y, x] = seg[y, x] != e
            elif x == w - 1:
                b[y, x] = seg[y, x] != s
            else:
                b[y, x] = (seg[y, x] != e) or (seg[y, x] != s) or (seg[y, x] != se)
    return b


def naive_dilate_disk(b, r):
    h, w = b.shape
    out = np.zeros_like(b)
    offsets = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if dx * dx + dy * dy <= r * r]
    for y, x in zip(*np.nonzero(b)):
        for dy, dx in offsets:
            if 0 <= y + dy < h and 0 <= x + dx < w:
                out[y + dy, x + dx] = True
    return out


def naive_davis_frame(gt, pred, bound_th=0.008):
    gt, pred = gt > 0, pred > 0
    union = np.sum(gt | pred)
    j = 1.0 if union == 0 else np.sum(gt & pred) / union
    r = math.ceil(bound_th * math.sqrt(gt.shape[0] ** 2 + gt.shape[1] ** 2))
    fb, gb = naive_seg2bmap(pred), naive_seg2bmap(gt)
    n_fg, n_gt = fb.sum(), gb.sum()
    if n_fg == 0 and n_gt > 0:
        p, rc = 1.0, 0.0
    elif n_fg > 0 and n_gt == 0:
        p, rc = 0.0, 1.0
    elif n_fg == 0 and n_gt == 0:
        p, rc = 1.0, 1.0
    else:
        p = np.sum(fb & naive_dilate_disk(gb, r)) / n_fg
        rc = np.sum(gb & naive_dilate_disk(fb, r)) / n_gt
    f = 0.0 if p + rc == 0 else 2 * p * rc / (p + rc)
    return j, f


# ------------------------------------------------------------------------------------------------ random inputs


def grid_logits(rng, shape):
    """Logits whose sigmoids sit half-way between two of the 255 F thresholds (i/254)."""
    p = (rng.integers(0, 254, size=shape) + 0.5) / 254
    return np.log(p / (1 - p)).astype(np.float32)


def random_masks(rng, shape, empty_frac=0.25, full_frac=0.1):
    masks = (rng.random(shape) < rng.uniform(0.1, 0.6)).astype(np.uint8)
    flat = masks.reshape(-1, *shape[-2:])
    for i in range(flat.shape[0]):
        u = rng.random()
        if u < empty_frac:
            flat[i] = 0
        elif u < empty_frac + full_frac:
            flat[i] = 1
    return masks


def correlated_logits(rng, masks):
    """Predictions that resemble the masks, so that F and J span a useful range."""
    base = np.where(masks > 0, rng.integers(90, 254, size=masks.shape), rng.integers(0, 170, size=masks.shape))
    p = (base + 0.5) / 254
    return np.log(p / (1 - p)).astype(np.float32)


# ------------------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("group,k", [("video", 1), ("batch:2", 2), ("batch:3", 3)])
@pytest.mark.parametrize("seed", [0, 1])
def test_avsbench_matches_naive_reference(group, k, seed):
    rng = np.random.default_rng(seed)
    masks = random_masks(rng, (7, 5, 9, 11))
    logits = correlated_logits(rng, masks)
    logits[0] = grid_logits(rng, logits[0].shape)  # one uncorrelated video
    acc = MetricAccumulator("avsbench", group=group)
    # Updates of 3 videos: batch groupings must span calls.
    for start in range(0, 7, 3):
        acc.update(torch.from_numpy(logits[start : start + 3]), torch.from_numpy(masks[start : start + 3]))
    result = acc.compute()
    j, f, s = naive_binary(logits, masks, k, 0.5)
    assert result["J"] == pytest.approx(j, abs=1e-9)
    assert result["F"] == pytest.approx(f, abs=1e-9)
    assert result["J&F"] == pytest.approx((j + f) / 2, abs=1e-9)
    assert result["S"] == pytest.approx(s, abs=1e-12)
    assert result["counts"]["groups"] == math.ceil(7 / k)


def test_refavs_scored_at_given_resolution_matches_naive():
    rng = np.random.default_rng(3)
    preset = dataclasses.replace(get_preset("refavs"), resize=None)
    masks = random_masks(rng, (6, 4, 8, 10))
    logits = correlated_logits(rng, masks)
    acc = MetricAccumulator(preset)
    acc.update(torch.from_numpy(logits), torch.from_numpy(masks))
    result = acc.compute()
    j, f, s = naive_binary(logits, masks, 4, 0.4)
    assert result["settings"]["group"] == "batch:4"
    assert result["J"] == pytest.approx(j, abs=1e-9)
    assert result["F"] == pytest.approx(f, abs=1e-9)
    assert result["S"] == pytest.approx(s, abs=1e-12)


def test_refavs_gt_resize_matches_naive_bilinear_then_gt0():
    rng = np.random.default_rng(4)
    preset = dataclasses.replace(get_preset("refavs"), resize=32)
    masks = random_masks(rng, (5, 3, 20, 24), empty_frac=0.2, full_frac=0.0)
    masks = masks * (rng.random(masks.shape) < 0.3) * 255  # sparse 0/255 foreground: the dilation is visible
    # cv2 rounds its uint8 bilinear result, then "> 0": the interpolated level must reach 0.5.
    resized = np.stack([[naive_bilinear(m.astype(np.float64), 32, 32) >= 0.5 for m in video] for video in masks])
    resized = resized.astype(np.uint8)
    assert resized.sum() > (masks > 0).sum() * (32 * 32) / (20 * 24)  # bilinear then "> 0" dilates the masks
    logits = correlated_logits(rng, resized)  # predictions already at the scoring size
    acc = MetricAccumulator(preset)
    acc.update(torch.from_numpy(logits), torch.from_numpy(masks))
    result = acc.compute()
    j, f, s = naive_binary(logits, resized, 4, 0.4)
    assert result["settings"]["resolution"] == "32x32"
    assert result["J"] == pytest.approx(j, abs=1e-9)
    assert result["F"] == pytest.approx(f, abs=1e-9)
    assert result["S"] == pytest.approx(s, abs=1e-12)


def test_refavs_logit_resize_is_naive_bilinear():
    rng = np.random.default_rng(5)
    logits = rng.normal(0, 3, size=(2, 3, 13, 7)).astype(np.float32)
    ours = resize_logits(torch.from_numpy(logits), (32, 24)).numpy()
    for b in range(2):
        for t in range(3):
            np.testing.assert_allclose(ours[b, t], naive_bilinear(logits[b, t].astype(np.float64), 32, 24), atol=1e-5)


def test_refavs_end_to_end_with_both_resized():
    """Prediction and GT both at another size than 256: the preset resizes logits bilinearly and the GT as cv2 does
    (bilinear on the stored 0/1 levels, rounded, then > 0)."""
    rng = np.random.default_rng(6)
    preset = dataclasses.replace(get_preset("refavs"), resize=16)
    masks = random_masks(rng, (4, 2, 8, 8), empty_frac=0.25, full_frac=0.0)
    logits = correlated_logits(rng, masks)
    acc = MetricAccumulator(preset)
    acc.update(torch.from_numpy(logits), torch.from_numpy(masks))
    result = acc.compute()
    lg = np.stack([[naive_bilinear(x.astype(np.float64), 16, 16) for x in v] for v in logits])
    gt = np.stack([[naive_bilinear(m.astype(np.float64), 16, 16) >= 0.5 for m in v] for v in masks]).astype(np.uint8)
    j, _, s = naive_binary(lg, gt, 4, 0.4)
    assert result["J"] == pytest.approx(j, abs=1e-9)
    assert result["S"] == pytest.approx(s, abs=1e-12)
    _, f, _ = naive_binary(lg, gt, 4, 0.4)
    assert result["F"] == pytest.approx(f, abs=2e-3)  # interpolated probabilities may sit on an F threshold


@pytest.mark.parametrize("official", [True, False])
def test_avss_matches_naive_reference(official):
    rng = np.random.default_rng(7)
    n_videos, t, k, h, w = 3, 4, 6, 7, 9
    logits = rng.normal(0, 2, size=(n_videos, t, k, h, w)).astype(np.float32)
    labels = rng.integers(0, 4, size=(n_videos, t, h, w)).astype(np.uint8)  # classes 4, 5 never labelled
    logits[..., 5, :, :] -= 20  # class 5 never predicted either: never seen
    valid = np.ones((n_videos, t), dtype=bool)
    valid[0, 2:] = False  # padded frames: black images, all-background labels
    labels[0, 2:] = 0
    # At the size given (the presets' 224x224 resize is tested elsewhere).
    acc = MetricAccumulator(dataclasses.replace(get_preset("avss" if official else "avss_corrected"), resize=None))
    acc.update(torch.from_numpy(logits[:2]), torch.from_numpy(labels[:2]), valid=torch.from_numpy(valid[:2]))
    acc.update(torch.from_numpy(logits[2:]), torch.from_numpy(labels[2:]), valid=torch.from_numpy(valid[2:]))
    result = acc.compute()
    if official:  # the official models multiply their logits by the frame-validity flag
        logits = logits * valid[:, :, None, None, None]
    miou, f, miou_nobg, f_nobg = naive_avss(
        logits.reshape(-1, k, h, w), labels.reshape(-1, h, w), valid.reshape(-1), official=official
    )
    assert result["J"] == pytest.approx(miou, abs=1e-12)
    assert result["F"] == pytest.approx(f, abs=1e-12)
    assert result["miou_no_bg"] == pytest.approx(miou_nobg, abs=1e-12)
    assert result["fscore_no_bg"] == pytest.approx(f_nobg, abs=1e-12)
    assert result["per_class"]["count"][5] == 0
    assert result["counts"]["scored_frames"] == (12 if official else 10)


def test_davis_matches_naive_reference():
    rng = np.random.default_rng(8)
    n_expr, t, h, w = 3, 4, 60, 80  # radius ceil(0.008 * 100) = 1
    masks = np.zeros((n_expr, t, h, w), dtype=np.uint8)
    preds = np.zeros_like(masks)
    for e in range(n_expr):
        for i in range(t):
            y, x = rng.integers(0, h - 20), rng.integers(0, w - 20)
            masks[e, i, y : y + rng.integers(5, 20), x : x + rng.integers(5, 20)] = 1
            dy, dx = rng.integers(-3, 4, size=2)
            preds[e, i] = np.roll(masks[e, i], (dy, dx), axis=(0, 1)) * (rng.random((h, w)) > 0.05)
    masks[0, 0] = 0  # empty GT with a non-empty prediction
    preds[1, 1] = 0  # empty prediction
    masks[2, 2] = 0  # both empty
    preds[2, 2] = 0
    logits = np.where(preds > 0, 6.0, -6.0).astype(np.float32)
    acc = MetricAccumulator("davis")
    acc.update(torch.from_numpy(logits), torch.from_numpy(masks))
    result = acc.compute()
    js, fs = [], []
    for e in range(n_expr):
        frames = [naive_davis_frame(masks[e, i], preds[e, i]) for i in range(t)]
        js.append(np.mean([x[0] for x in frames]))
        fs.append(np.mean([x[1] for x in frames]))
    assert result["J"] == pytest.approx(np.mean(js), abs=1e-12)
    assert result["F"] == pytest.approx(np.mean(fs), abs=1e-12)
    assert [v["F"] for v in result["per_video"]] == pytest.approx(fs, abs=1e-12)


def test_davis_boundary_larger_radius_matches_naive():
    from avseg.metrics import db_eval_boundary

    rng = np.random.default_rng(9)
    h, w = 90, 160  # radius ceil(0.008 * 183.6) = 2
    gt = np.zeros((3, h, w), dtype=np.uint8)
    gt[:, 20:60, 30:100] = 1
    pred = np.stack([np.roll(gt[i], (i, 2 * i), axis=(0, 1)) for i in range(3)]) * (rng.random((3, h, w)) > 0.1)
    ours = db_eval_boundary(torch.from_numpy(gt), torch.from_numpy(pred)).tolist()
    expected = [naive_davis_frame(gt[i], pred[i])[1] for i in range(3)]
    assert ours == pytest.approx(expected, abs=1e-12)
    assert 0.0 < min(ours) < 1.0
