"""Prompts simulated from the ground truth, to train SAM2 as a promptable video segmenter the way SAM2 is trained.

SAM2's training loop (facebookresearch/sam2 ``training/model/sam2.py::SAM2Train``, with the samplers of
``sam2/modeling/sam2_utils.py``) prompts each 8-frame clip on one or two *conditioning frames*, with the ground-truth
mask, a box around it or a click inside it, and then, on the frames chosen for correction, adds one click at a time
where the current prediction is wrong (a positive click on a missed pixel, a negative click on a false one), decoding
again after each click. This module holds those decisions as pure functions of the ground truth, the prediction and a
``torch.Generator``:

* :func:`plan_prompts`: prompt kind, conditioning frames and frames to correct for one clip batch
  (``prepare_prompt_inputs``);
* :func:`mask_to_box` and :func:`sample_box_points`: the box prompt, optionally noised (``mask_to_box``,
  ``sample_box_points``);
* :func:`sample_error_points`: one click per track from the error region, uniformly (training) or at the pixel
  farthest from the region's boundary (evaluation; ``get_next_point`` with ``"uniform"`` / ``"center"``).

Coordinates are ``(x, y)`` pixel indices of the masks given (SAM2's prompt encoder adds the half-pixel offset).
Masks are ``(B, H, W)``; ``B`` tracks are sampled independently, one draw per track.

Differences from SAM2, where it has no answer: an empty mask gets no box (SAM2's box of an empty mask is inverted);
:func:`sample_box_points` gives it a negative click on the background and a padding point instead. A prediction that
is already exact on a mask covering the whole frame gets a positive click inside it (SAM2 would place a negative
click at pixel (0, 0), inside the object).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from avseg.errors import ShapeError

__all__ = [
    "PromptPlan",
    "PromptSimulationConfig",
    "mask_to_box",
    "plan_prompts",
    "sample_box_points",
    "sample_error_points",
    "uniform",
]

PointSampling = Literal["uniform", "center"]


@dataclass
class PromptSimulationConfig:
    """How training prompts are drawn (SAM2's ``sam2.1_hiera_b+_MOSE_finetune.yaml``; ``SAM2Train`` defaults in
    brackets where they differ).

    Attributes:
        prob_point_input: probability that a clip batch is prompted with clicks or boxes rather than masks (0.5,
            ``prob_to_use_pt_input_for_train``).
        prob_box_input: among point-prompted clips, probability that a conditioning frame gets a box instead of a
            click (0.5, ``prob_to_use_box_input_for_train``: a box on a quarter of the clips).
        box_noise: box corners move by up to this fraction of the box's width and height (0.1, SAM's default).
        box_noise_bound: and by at most this many pixels (20).
        num_init_cond_frames: conditioning frames of a clip: the first one, plus randomly chosen others (2 [1]).
        rand_init_cond_frames: draw the number of conditioning frames in ``1..num_init_cond_frames`` (True).
        num_frames_to_correct: frames that receive corrective clicks, the conditioning frames first (2 [1]).
        rand_frames_to_correct: draw that number in ``num_init_cond_frames..num_frames_to_correct`` (True [False]).
        add_all_frames_to_correct_as_cond: a tracked frame that receives clicks becomes a conditioning frame of the
            memory (True [False]).
        num_correction_points: corrective clicks per corrected frame, each followed by a new decoder pass (7).
        prob_sample_from_gt: probability that a corrective click is drawn from the ground truth instead of the
            error region (0.1 [0], ``prob_to_sample_from_gt_for_train``).
    """

    prob_point_input: float = 0.5
    prob_box_input: float = 0.5
    box_noise: float = 0.1
    box_noise_bound: float = 20.0
    num_init_cond_frames: int = 2
    rand_init_cond_frames: bool = True
    num_frames_to_correct: int = 2
    rand_frames_to_correct: bool = True
    add_all_frames_to_correct_as_cond: bool = True
    num_correction_points: int = 7
    prob_sample_from_gt: float = 0.1

    def __post_init__(self) -> None:
        for name in ("prob_point_input", "prob_box_input", "prob_sample_from_gt"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"prompts.{name} must be a probability in [0, 1], got {getattr(self, name)!r}")
        if self.box_noise < 0 or self.box_noise_bound < 0:
            raise ValueError(
                f"prompts.box_noise and box_noise_bound must be >= 0, got {self.box_noise}, {self.box_noise_bound}"
            )
        if self.num_init_cond_frames < 1:
            raise ValueError(f"prompts.num_init_cond_frames must be >= 1, got {self.num_init_cond_frames}")
        if self.num_correction_points < 0:
            raise ValueError(f"prompts.num_correction_points must be >= 0, got {self.num_correction_points}")
        if self.prob_point_input > 0 and self.num_frames_to_correct < self.num_init_cond_frames:
            # SAM2 asserts this: every conditioning frame prompted with a click is also corrected.
            raise ValueError(
                f"prompts.num_frames_to_correct ({self.num_frames_to_correct}) must be >= num_init_cond_frames "
                f"({self.num_init_cond_frames}) when point prompts are used"
            )


@dataclass
class PromptPlan:
    """The prompting of one clip batch (the same for its ``B`` tracks, as in SAM2).

    Attributes:
        use_points: clicks or boxes (True) or ground-truth masks (False) on the conditioning frames.
        init_cond_frames: the conditioning frames, the clip's first frame first.
        use_box: per conditioning frame, a box instead of a click (only with ``use_points``).
        frames_to_correct: frames that receive corrective clicks (the conditioning frames, then tracked ones);
            empty with mask prompts.
    """

    use_points: bool
    init_cond_frames: list[int]
    use_box: dict[int, bool]
    frames_to_correct: list[int]


def _device(generator: torch.Generator | None) -> torch.device | None:
    """Where draws from ``generator`` must be made (a CUDA generator draws CUDA tensors)."""
    return generator.device if generator is not None else None


def uniform(generator: torch.Generator | None) -> float:
    """A number drawn uniformly in ``[0, 1)``."""
    return float(torch.rand((), generator=generator, device=_device(generator)))


def _integer(low: int, high: int, generator: torch.Generator | None) -> int:
    """An integer drawn uniformly in ``low..high`` (both included)."""
    return int(torch.randint(low, high + 1, (), generator=generator, device=_device(generator)))


def _choose(candidates: list[int], count: int, generator: torch.Generator | None) -> list[int]:
    """``count`` of ``candidates`` without replacement."""
    order = torch.randperm(len(candidates), generator=generator, device=_device(generator))[:count].tolist()
    return [candidates[i] for i in order]


def plan_prompts(num_frames: int, config: PromptSimulationConfig, generator: torch.Generator | None) -> PromptPlan:
    """Decide how a training clip batch is prompted (SAM2's ``SAM2Train.prepare_prompt_inputs``, training branch).

    One draw decides clicks/boxes versus masks; then the number of conditioning frames (the first frame plus others
    drawn without replacement) and, with clicks, the frames to correct (the conditioning frames plus others); each
    conditioning frame draws box versus click. A single-frame clip always uses one click-prompted, corrected frame.

    Args:
        num_frames: ``T``, frames in the clip.
        config: the probabilities and counts.
        generator: the random stream (None: torch's global one).

    Returns:
        The plan.
    """
    if num_frames < 1:
        raise ValueError(f"plan_prompts needs at least one frame, got {num_frames}")
    prob_points, n_correct, n_cond = config.prob_point_input, config.num_frames_to_correct, config.num_init_cond_frames
    if num_frames == 1:  # SAM2: an image is always trained as interactive segmentation
        prob_points, n_correct, n_cond = 1.0, 1, 1
    use_points = uniform(generator) < prob_points
    n_cond = min(n_cond, num_frames)
    n_correct = min(n_correct, num_frames)
    if config.rand_init_cond_frames and n_cond > 1:
        n_cond = _integer(1, n_cond, generator)
    if use_points and config.rand_frames_to_correct and n_correct > n_cond:
        n_correct = _integer(n_cond, n_correct, generator)
    cond = [0, *_choose(list(range(1, num_frames)), n_cond - 1, generator)]
    others = [t for t in range(num_frames) if t not in cond]
    use_box = {t: uniform(generator) < config.prob_box_input for t in cond} if use_points else {}
    if not use_points:
        correct: list[int] = []
    else:
        correct = cond + _choose(others, max(n_correct - n_cond, 0), generator)
    return PromptPlan(use_points=use_points, init_cond_frames=cond, use_box=use_box, frames_to_correct=correct)


def _check_masks(masks: Tensor, name: str) -> Tensor:
    if masks.ndim != 3:
        raise ShapeError(f"{name} must be (B, H, W), got {tuple(masks.shape)}")
    return masks.bool()


def mask_to_box(masks: Tensor) -> Tensor:
    """The extent of each mask as ``(x1, y1, x2, y2)`` pixel indices, both ends included (SAM2's ``mask_to_box``).

    Args:
        masks: ``(B, H, W)`` binary masks.

    Returns:
        ``(B, 4)`` float boxes; all zeros for an empty mask.
    """
    masks = _check_masks(masks, "masks")
    _, h, w = masks.shape
    cols = masks.any(dim=1)  # (B, W): columns holding the object
    rows = masks.any(dim=2)  # (B, H)
    xs = torch.arange(w, device=masks.device)
    ys = torch.arange(h, device=masks.device)
    x1 = torch.where(cols, xs, w).amin(dim=1)
    x2 = torch.where(cols, xs, -1).amax(dim=1)
    y1 = torch.where(rows, ys, h).amin(dim=1)
    y2 = torch.where(rows, ys, -1).amax(dim=1)
    boxes = torch.stack([x1, y1, x2, y2], dim=1).float()  # (B, 4)
    return torch.where(masks.flatten(1).any(dim=1, keepdim=True), boxes, torch.zeros_like(boxes))


def sample_box_points(
    masks: Tensor,
    *,
    noise: float = 0.1,
    noise_bound: float = 20.0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """A box prompt around each mask, as SAM2's two corner points (``sample_box_points``).

    Each corner coordinate moves by ``u · min(noise · box side, noise_bound)`` with ``u`` uniform in ``[-1, 1)``
    (one draw per coordinate), and the box is clamped to the image. An empty mask gets a negative click on a
    uniformly drawn pixel and a padding point instead (label -1, ignored by SAM2's prompt encoder).

    Args:
        masks: ``(B, H, W)`` binary masks.
        noise: the noise as a fraction of the box's width and height (0: the exact extent).
        noise_bound: the noise's bound in pixels.
        generator: the random stream.

    Returns:
        ``points (B, 2, 2)`` float ``(x, y)`` and ``labels (B, 2)`` int32: 2 for the top-left corner, 3 for the
        bottom-right one (or 0 and -1 for an empty mask).
    """
    masks = _check_masks(masks, "masks")
    b, h, w = masks.shape
    boxes = mask_to_box(masks)  # (B, 4)
    if noise > 0:
        bound = torch.tensor(float(noise_bound), device=masks.device)
        max_dx = torch.minimum((boxes[:, 2] - boxes[:, 0]) * noise, bound)
        max_dy = torch.minimum((boxes[:, 3] - boxes[:, 1]) * noise, bound)
        # SAM2 draws (B, 1, 4): the same values, in the same order, as (B, 4)
        draw = 2 * torch.rand(b, 4, generator=generator, device=masks.device) - 1
        boxes = boxes + draw * torch.stack([max_dx, max_dy, max_dx, max_dy], dim=1)
        limit = torch.tensor([w - 1, h - 1, w - 1, h - 1], dtype=boxes.dtype, device=boxes.device)
        boxes = torch.minimum(boxes.clamp_min(0), limit)
    points = boxes.view(b, 2, 2)
    labels = torch.tensor([2, 3], dtype=torch.int32, device=masks.device).repeat(b, 1)  # (B, 2)
    empty = ~masks.flatten(1).any(dim=1)  # (B,)
    if empty.any():
        click, click_label = sample_error_points(masks[empty], None, generator=generator)  # negative clicks
        padded = torch.cat([click, torch.zeros_like(click)], dim=1)  # (n, 2, 2)
        points = points.clone()
        points[empty] = padded
        labels[empty] = torch.cat([click_label, torch.full_like(click_label, -1)], dim=1)
    return points, labels


def sample_error_points(
    gt: Tensor,
    pred: Tensor | None,
    *,
    method: PointSampling = "uniform",
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """One corrective click per track from the error between a prediction and the ground truth (``get_next_point``).

    A missed pixel (false negative) gives a positive click, a false pixel (false positive) a negative one:

    * ``"uniform"`` (training, ``sample_random_points_from_errors``): a pixel drawn uniformly from the whole error
      region, so the larger of the two kinds of error is the likelier; an exact prediction gives a negative click on
      the background.
    * ``"center"`` (evaluation, ``sample_one_point_from_error_center``, RITM's clicker): the pixel farthest from the
      boundary of its error region (Euclidean distance, the image border counting as boundary), from the
      false-negative region when its farthest pixel is strictly farther than the false-positive region's.

    Args:
        gt: ``(B, H, W)`` binary ground truth.
        pred: ``(B, H, W)`` binary prediction, or None for an empty one (the first click: positive, inside the
            object; on an empty ground truth, negative).
        method: ``"uniform"`` or ``"center"``.
        generator: the random stream of ``"uniform"``.

    Returns:
        ``points (B, 1, 2)`` float ``(x, y)`` and ``labels (B, 1)`` int32 (1 positive, 0 negative).
    """
    gt = _check_masks(gt, "gt")
    pred = torch.zeros_like(gt) if pred is None else _check_masks(pred, "pred")
    if pred.shape != gt.shape:
        raise ShapeError(f"pred {tuple(pred.shape)} and gt {tuple(gt.shape)} must have the same shape")
    b, h, w = gt.shape
    false_pos = ~gt & pred
    false_neg = gt & ~pred
    if method == "uniform":
        exact = (gt == pred).flatten(1).all(dim=1)[:, None, None]  # (B, 1, 1)
        full = gt.flatten(1).all(dim=1)[:, None, None]
        # As SAM2: independent noise on a negative and a positive channel, masked, and the largest entry wins; the
        # draw has SAM2's shape (B, 1, H, W, 2), so a seeded generator gives SAM2's clicks.
        keys = torch.rand(b, 1, h, w, 2, generator=generator, device=gt.device)[:, 0]  # (B, H, W, 2)
        keys[..., 0] *= false_pos | (exact & ~gt)
        keys[..., 1] *= false_neg | (exact & full)
        index = keys.flatten(1).argmax(dim=1)  # (B,)
        labels = (index % 2).to(torch.int32)
        pixel = index // 2
        points = torch.stack([pixel % w, pixel // w], dim=1).float()
        return points[:, None], labels[:, None]
    if method == "center":
        from scipy.ndimage import distance_transform_edt  # deferred: scipy is only needed here

        points = torch.zeros(b, 1, 2)
        labels = torch.ones(b, 1, dtype=torch.int32)
        for i, (fn, fp) in enumerate(zip(false_neg.cpu().numpy(), false_pos.cpu().numpy())):
            # Padding by one background pixel makes the image border a boundary (SAM2 pads likewise).
            fn_dist = distance_transform_edt(np.pad(fn, 1))[1:-1, 1:-1].reshape(-1)
            fp_dist = distance_transform_edt(np.pad(fp, 1))[1:-1, 1:-1].reshape(-1)
            fn_best, fp_best = int(fn_dist.argmax()), int(fp_dist.argmax())
            positive = fn_dist[fn_best] > fp_dist[fp_best]
            index = fn_best if positive else fp_best
            points[i, 0, 0], points[i, 0, 1] = index % w, index // w
            labels[i, 0] = int(positive)
        return points.to(gt.device), labels.to(gt.device)
    raise ValueError(f"point sampling method must be 'uniform' or 'center', got {method!r}")
