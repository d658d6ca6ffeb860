"""Tests of SAM2's prompt simulation (avseg.layers.sam2.prompts) against reimplementations of SAM2's samplers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import distance_transform_edt

from avseg.errors import ShapeError
from avseg.layers.sam2.prompts import (
    PromptSimulationConfig,
    mask_to_box,
    plan_prompts,
    sample_box_points,
    sample_error_points,
)

# -- SAM2's computations, restated from sam2/utils/misc.py and sam2/modeling/sam2_utils.py ---------------------------


def sam2_mask_to_box(masks: torch.Tensor) -> torch.Tensor:
    """``mask_to_box`` on ``(B, 1, H, W)`` bool masks: ``(B, 1, 4)``."""
    b, _, h, w = masks.shape
    grid_x, grid_y = torch.meshgrid(torch.arange(w), torch.arange(h), indexing="xy")
    grid_x, grid_y = grid_x[None, None].expand(b, 1, h, w), grid_y[None, None].expand(b, 1, h, w)
    x1 = torch.where(masks, grid_x, w).flatten(-2).min(-1).values
    x2 = torch.where(masks, grid_x, -1).flatten(-2).max(-1).values
    y1 = torch.where(masks, grid_y, h).flatten(-2).min(-1).values
    y2 = torch.where(masks, grid_y, -1).flatten(-2).max(-1).values
    return torch.stack((x1, y1, x2, y2), dim=-1)


def sam2_box_points(masks: torch.Tensor, generator: torch.Generator, noise=0.1, bound=20):
    """``sample_box_points`` on ``(B, 1, H, W)`` masks."""
    coords = sam2_mask_to_box(masks).float()
    b, _, h, w = masks.shape
    dx = torch.min((coords[..., 2] - coords[..., 0]) * noise, torch.tensor(bound))
    dy = torch.min((coords[..., 3] - coords[..., 1]) * noise, torch.tensor(bound))
    draw = 2 * torch.rand(b, 1, 4, generator=generator) - 1
    coords = coords + draw * torch.stack((dx, dy, dx, dy), dim=-1)
    bounds = torch.tensor([w, h, w, h]) - 1
    coords = torch.max(torch.min(coords, bounds), torch.zeros_like(bounds))
    return coords.reshape(-1, 2, 2), torch.tensor([2, 3], dtype=torch.int32).repeat(b).reshape(-1, 2)


def sam2_random_points(gt: torch.Tensor, pred: torch.Tensor | None, generator: torch.Generator):
    """``sample_random_points_from_errors`` with one point, on ``(B, 1, H, W)`` bool masks."""
    if pred is None:
        pred = torch.zeros_like(gt)
    b, _, h, w = gt.shape
    fp, fn = ~gt & pred, gt & ~pred
    correct = torch.all((gt == pred).flatten(2), dim=2)[..., None, None]
    noise = torch.rand(b, 1, h, w, 2, generator=generator)
    noise[..., 0] *= fp | (correct & ~gt)
    noise[..., 1] *= fn
    idx = noise.flatten(2).argmax(dim=2)
    labels = (idx % 2).to(torch.int32)
    idx = idx // 2
    return torch.stack([idx % w, idx // w], dim=2).float(), labels


def sam2_center_point(gt: np.ndarray, pred: np.ndarray):
    """``sample_one_point_from_error_center`` on one ``(H, W)`` pair (cv2's precise L2 distance transform is the
    exact Euclidean one, scipy's ``distance_transform_edt``)."""
    w = gt.shape[1]
    fn = np.pad(gt & ~pred, ((1, 1), (1, 1)), "constant")
    fp = np.pad(~gt & pred, ((1, 1), (1, 1)), "constant")
    fn_dt = distance_transform_edt(fn)[1:-1, 1:-1].reshape(-1)
    fp_dt = distance_transform_edt(fp)[1:-1, 1:-1].reshape(-1)
    fn_i, fp_i = np.argmax(fn_dt), np.argmax(fp_dt)
    positive = fn_dt[fn_i] > fp_dt[fp_i]
    i = fn_i if positive else fp_i
    return (i % w, i // w), int(positive)


def random_masks(b: int, h: int, w: int, seed: int) -> torch.Tensor:
    """Blobby masks: random rectangles, some frames empty."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(b, h, w, dtype=torch.bool)
    for i in range(b):
        if i % 4 == 3:
            continue  # empty
        y1, x1 = (int(v) for v in torch.randint(0, h // 2, (2,), generator=g))
        y2, x2 = (
            y1 + int(torch.randint(2, h // 2, (), generator=g)),
            x1 + int(torch.randint(2, w // 2, (), generator=g)),
        )
        masks[i, y1:y2, x1:x2] = True
    return masks


# -- plans ------------------------------------------------------------------------------------------------------------


def test_plans_follow_sam2s_rules_and_probabilities():
    cfg = PromptSimulationConfig()
    g = torch.Generator().manual_seed(0)
    plans = [plan_prompts(8, cfg, g) for _ in range(4000)]
    points = [p for p in plans if p.use_points]
    assert 0.46 < len(points) / len(plans) < 0.54  # prob_to_use_pt_input_for_train 0.5
    boxes = [v for p in points for v in p.use_box.values()]
    assert 0.46 < sum(boxes) / len(boxes) < 0.54  # prob_to_use_box_input_for_train 0.5 of the point prompts
    for p in plans:
        assert p.init_cond_frames[0] == 0 and 1 <= len(p.init_cond_frames) <= 2
        assert len(set(p.init_cond_frames)) == len(p.init_cond_frames)
        if p.use_points:
            # every conditioning frame is corrected, then at most one tracked frame
            assert p.frames_to_correct[: len(p.init_cond_frames)] == p.init_cond_frames
            assert len(p.frames_to_correct) <= 2 and set(p.use_box) == set(p.init_cond_frames)
        else:
            assert p.frames_to_correct == [] and p.use_box == {}
    counts = {n: sum(len(p.init_cond_frames) == n for p in plans) for n in (1, 2)}
    assert 0.45 < counts[1] / len(plans) < 0.55  # rand_init_cond_frames: 1 or 2, uniformly
    corrected_tracked = [p for p in points if len(p.init_cond_frames) == 1 and len(p.frames_to_correct) == 2]
    assert corrected_tracked  # rand_frames_to_correct: a tracked frame is sometimes corrected


def test_plans_repeat_with_the_seed_and_a_single_frame_is_interactive():
    cfg = PromptSimulationConfig()
    a = [plan_prompts(8, cfg, torch.Generator().manual_seed(3)) for _ in range(5)]
    b = [plan_prompts(8, cfg, torch.Generator().manual_seed(3)) for _ in range(5)]
    assert a == b
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        plan = plan_prompts(1, cfg, g)
        assert plan.use_points and plan.init_cond_frames == [0] and plan.frames_to_correct == [0]
    fixed = PromptSimulationConfig(num_init_cond_frames=1, num_frames_to_correct=1, rand_frames_to_correct=False)
    for _ in range(20):
        plan = plan_prompts(8, fixed, g)
        assert plan.init_cond_frames == [0] and plan.frames_to_correct in ([], [0])


def test_config_rejects_what_sam2_asserts():
    with pytest.raises(ValueError, match="num_frames_to_correct"):
        PromptSimulationConfig(num_init_cond_frames=2, num_frames_to_correct=1)
    with pytest.raises(ValueError, match="prob_point_input"):
        PromptSimulationConfig(prob_point_input=1.5)


# -- boxes ------------------------------------------------------------------------------------------------------------


def test_mask_to_box_equals_sam2s_and_is_zero_for_empty_masks():
    masks = random_masks(12, 24, 32, seed=0)
    boxes = mask_to_box(masks)
    reference = sam2_mask_to_box(masks[:, None])[:, 0].float()
    present = masks.flatten(1).any(1)
    torch.testing.assert_close(boxes[present], reference[present], rtol=0, atol=0)
    assert (boxes[~present] == 0).all() and (~present).any()
    with pytest.raises(ShapeError):
        mask_to_box(masks[:, None])


def test_exact_boxes_enclose_the_mask_and_touch_it():
    masks = random_masks(8, 20, 20, seed=1)
    points, labels = sample_box_points(masks, noise=0.0)
    for mask, corners, label in zip(masks, points, labels):
        if not mask.any():
            continue
        (x1, y1), (x2, y2) = corners.long().tolist()
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert (x1, y1, x2, y2) == (xs.min(), ys.min(), xs.max(), ys.max())
        assert label.tolist() == [2, 3]


def test_noised_boxes_equal_sam2s_with_the_same_generator():
    masks = random_masks(8, 40, 48, seed=2)
    present = masks.flatten(1).any(1)
    masks = masks[present]  # SAM2's box of an empty mask is inverted; avseg gives a click (tested below)
    points, labels = sample_box_points(masks, generator=torch.Generator().manual_seed(7))
    ref_points, ref_labels = sam2_box_points(masks[:, None], torch.Generator().manual_seed(7))
    torch.testing.assert_close(points, ref_points)
    assert torch.equal(labels, ref_labels)
    assert (points[..., 0] <= 47).all() and (points >= 0).all() and (points[..., 1] <= 39).all()


def test_an_empty_mask_gets_a_negative_click_and_padding_instead_of_a_box():
    masks = torch.zeros(2, 10, 10, dtype=torch.bool)
    masks[0, 2:5, 3:7] = True
    points, labels = sample_box_points(masks, generator=torch.Generator().manual_seed(0))
    assert labels.tolist() == [[2, 3], [0, -1]]
    assert (points[1, 1] == 0).all()


# -- clicks -----------------------------------------------------------------------------------------------------------


def test_uniform_clicks_equal_sam2s_with_the_same_generator():
    gt = random_masks(12, 16, 20, seed=3)
    pred = random_masks(12, 16, 20, seed=4)
    for p in (pred, None):
        points, labels = sample_error_points(gt, p, generator=torch.Generator().manual_seed(5))
        ref_points, ref_labels = sam2_random_points(
            gt[:, None], None if p is None else p[:, None], torch.Generator().manual_seed(5)
        )
        torch.testing.assert_close(points, ref_points, rtol=0, atol=0)
        assert torch.equal(labels, ref_labels)


def test_uniform_clicks_fall_in_the_error_region_with_its_label():
    gt = random_masks(40, 16, 16, seed=5)
    pred = random_masks(40, 16, 16, seed=6)
    points, labels = sample_error_points(gt, pred, generator=torch.Generator().manual_seed(0))
    for i in range(len(gt)):
        x, y = points[i, 0].long().tolist()
        if (gt[i] == pred[i]).all():
            assert labels[i, 0] == 0 and not gt[i, y, x]  # exact: a negative click on the background
        elif labels[i, 0] == 1:
            assert gt[i, y, x] and not pred[i, y, x]  # missed pixel
        else:
            assert pred[i, y, x] and not gt[i, y, x]  # false pixel
    # The larger error wins in proportion to its size: 3 false-negative pixels against 1 false-positive one.
    gt1 = torch.zeros(1, 4, 4, dtype=torch.bool)
    gt1[0, 0, :3] = True
    pred1 = torch.zeros(1, 4, 4, dtype=torch.bool)
    pred1[0, 3, 3] = True
    g = torch.Generator().manual_seed(1)
    positive = sum(int(sample_error_points(gt1, pred1, generator=g)[1]) for _ in range(2000)) / 2000
    assert 0.71 < positive < 0.79


def test_first_clicks_and_empty_masks():
    gt = torch.zeros(3, 8, 8, dtype=torch.bool)
    gt[0, 2:4, 2:4] = True
    gt[2] = True  # the object covers the frame
    g = torch.Generator().manual_seed(0)
    points, labels = sample_error_points(gt, None, generator=g)
    x, y = points[0, 0].long().tolist()
    assert labels[0, 0] == 1 and gt[0, y, x]  # the first click: inside the object
    assert labels[1, 0] == 0  # empty ground truth: a negative click
    # A whole-frame object already predicted exactly: a positive click (SAM2 would click negatively at (0, 0)).
    points, labels = sample_error_points(gt[2:], gt[2:], generator=g)
    assert labels[0, 0] == 1


def test_clicks_repeat_with_the_seed():
    gt, pred = random_masks(6, 12, 12, seed=8), random_masks(6, 12, 12, seed=9)
    a = sample_error_points(gt, pred, generator=torch.Generator().manual_seed(11))
    b = sample_error_points(gt, pred, generator=torch.Generator().manual_seed(11))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_center_clicks_equal_sam2s_and_sit_at_the_centre():
    gt = random_masks(10, 18, 22, seed=10)
    pred = random_masks(10, 18, 22, seed=11)
    points, labels = sample_error_points(gt, pred, method="center")
    for i in range(len(gt)):
        (x, y), positive = sam2_center_point(gt[i].numpy(), pred[i].numpy())
        assert points[i, 0].tolist() == [x, y] and labels[i, 0] == positive
    # A 5×5 object alone: the first click is its centre pixel.
    square = torch.zeros(1, 20, 20, dtype=torch.bool)
    square[0, 4:9, 10:15] = True
    points, labels = sample_error_points(square, None, method="center")
    assert points[0, 0].tolist() == [12.0, 6.0] and labels[0, 0] == 1
    with pytest.raises(ValueError, match="method"):
        sample_error_points(square, None, method="corner")  # type: ignore[arg-type]
