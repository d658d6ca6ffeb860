"""A thin accumulator over the pure metric functions: feed batches of videos, get every number with its settings.

Usage (evaluation loops, SynthAV, ``avseg score``)::

    acc = MetricAccumulator("avsbench")                 # or "refavs", "avss", "davis", a MetricPreset, ...
    for batch in loader:
        out = model(batch)                                # AVSOutput.mask_logits: (B, T, H, W) or (B, T, K, H, W)
        acc.update(out.mask_logits, batch.masks, valid=batch.valid, ids=batch.ids)
    result = acc.compute()                                # {"J": ..., "F": ..., "J&F": ..., "settings": {...}, ...}

``update`` brings the logits to the ground truth given (bilinear), or both to the preset's fixed size, turns each
batch into small per-frame statistics at once (on the device of the logits) and keeps them on the CPU, one record per
video/expression in the order given. Items whose ground truth differs in size (native resolutions) are passed in
separate ``update`` calls. ``compute`` forms the evaluation groups from those records, so a ``batch:K`` grouping
spans ``update`` calls and does not depend on the loader's batch size. See :mod:`avseg.metrics.presets` for why the
grouping is recorded with every result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from avseg import __version__
from avseg.errors import ShapeError
from avseg.metrics.binary import (
    binarize,
    fmeasure_curve,
    fmeasure_from_counts,
    fmeasure_pooled,
    fmeasure_sweep_max,
    frame_iou_stats,
    resize_logits,
    resize_mask,
)
from avseg.metrics.davis import db_eval_boundary
from avseg.metrics.presets import Grouping, MetricPreset, get_preset, group_indices, parse_group
from avseg.metrics.semantic import SemanticScores, SemanticStats, avss_scores, semantic_frame_stats

__all__ = ["MetricAccumulator", "scored_frames"]


@dataclass
class _Item:
    """Per-frame statistics of one video/expression (CPU tensors, first axis = frames kept)."""

    id: str
    size: tuple[int, int]  # scored at
    gt_size: tuple[int, int]  # ground truth as given
    dropped: int = 0  # invalid frames left out (binary presets)
    unscored: int = 0  # valid frames the protocol leaves out: before the first frame, and the end frames
    stats: dict[str, torch.Tensor] = field(default_factory=dict)


def _cat(items: Sequence[_Item], key: str) -> torch.Tensor:
    return torch.cat([item.stats[key] for item in items])


def _weighted_mean(values: Sequence[float], weights: Sequence[float]) -> float:
    pairs = [(v, w) for v, w in zip(values, weights) if not math.isnan(v) and w > 0]
    if not pairs:
        return float("nan")
    return sum(v * w for v, w in pairs) / sum(w for _, w in pairs)


def _float(x: torch.Tensor | float) -> float:
    return float(x.item()) if isinstance(x, torch.Tensor) else float(x)


def scored_frames(valid: torch.Tensor, first_frame: Sequence[int] | None, *, skip_end_frames: bool) -> torch.Tensor:
    """The frames a binary preset scores: valid frames from each item's first frame on, less the first and the last
    of those with ``skip_end_frames`` (the semi-supervised DAVIS protocol; see :mod:`avseg.metrics.presets`).

    Args:
        valid: ``(B, T)`` bool, the labelled frames.
        first_frame: per item, the frame the object is given on (its conditioning frame); None: 0 for every item.
        skip_end_frames: leave out the first and the last of each item's remaining frames.

    Returns:
        ``(B, T)`` bool.

    Example:
        >>> import torch
        >>> valid = torch.tensor([[True, True, True, True, True], [True, False, True, True, True]])
        >>> scored_frames(valid, [0, 1], skip_end_frames=True).int().tolist()  # item 1: labelled 2, 3, 4 from 1 on
        [[0, 1, 1, 1, 0], [0, 0, 0, 1, 0]]
    """
    b, t = valid.shape
    if first_frame is not None and len(first_frame) != b:
        raise ShapeError(f"first_frame has {len(first_frame)} entries for a batch of {b}")
    scored = valid.clone()
    for i, first in enumerate(first_frame or []):
        if not 0 <= int(first) < t:
            raise ShapeError(f"first_frame {int(first)} of item {i} is outside its {t} frames")
        scored[i, : int(first)] = False
    if skip_end_frames:
        for i in range(b):
            kept = torch.nonzero(scored[i]).flatten()
            if len(kept):
                scored[i, kept[0]] = False
                scored[i, kept[-1]] = False
    return scored


def _resize_gt(masks: torch.Tensor, size: tuple[int, int], mode: str, semantic: bool) -> torch.Tensor:
    """Ground truth ``(B, T, H, W)`` at ``size``: binary masks as :func:`resize_mask` (``nearest_exact``: pixel
    centres, like PIL's ``Image.NEAREST``), class labels by nearest neighbours (never blended)."""
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks if semantic else (masks > 0).to(torch.uint8)
    if not semantic and mode != "nearest_exact":
        return resize_mask(masks, size, mode=mode)  # type: ignore[arg-type]
    interp = "nearest-exact" if mode == "nearest_exact" else "nearest"
    out = torch.nn.functional.interpolate(masks.float(), size=size, mode=interp)  # (B, T, H', W'): T as channels
    return out.to(masks.dtype) if semantic else (out > 0).to(torch.uint8)


class MetricAccumulator:
    """Collects per-frame statistics over an evaluation run and reduces them as a :class:`MetricPreset` prescribes.

    Args:
        preset: a preset name (see :func:`avseg.metrics.presets.list_presets`) or a :class:`MetricPreset`.
        group: grouping override (``"video"``, ``"expression"``, ``"batch:K"``); None uses the preset's default.

    Example:
        >>> import torch
        >>> acc = MetricAccumulator("avsbench")
        >>> logits = torch.full((1, 2, 4, 4), -9.0)
        >>> logits[0, 0, :2, :2] = 9.0  # frame 0 predicts the 2x2 object exactly; frame 1 predicts nothing
        >>> masks = torch.zeros(1, 2, 4, 4, dtype=torch.uint8)
        >>> masks[0, 0, :2, :2] = 1  # frame 1 has empty ground truth
        >>> acc.update(logits, masks, ids=["vid0"])
        >>> result = acc.compute()
        >>> round(result["J"], 6), round(result["F"], 6), result["settings"]["group"]
        (1.0, 1.0, 'video')
    """

    def __init__(self, preset: str | MetricPreset = "avsbench", *, group: str | Grouping | None = None) -> None:
        self.preset = get_preset(preset)
        self.grouping = parse_group(group if group is not None else self.preset.group)
        self._items: list[_Item] = []
        self._num_classes: int | None = None

    def reset(self) -> None:
        """Forget every update."""
        self._items = []
        self._num_classes = None

    def __len__(self) -> int:
        """Number of videos/expressions seen so far."""
        return len(self._items)

    # ------------------------------------------------------------------------------------------------ update
    def update(
        self,
        logits: torch.Tensor,
        masks: torch.Tensor,
        *,
        valid: torch.Tensor | None = None,
        frame_valid: torch.Tensor | None = None,
        ids: Sequence[str] | None = None,
        first_frame: Sequence[int] | None = None,
    ) -> None:
        """Add a batch of videos/expressions.

        The logits are brought to the ground truth, never the reverse: with ``preset.resize = S`` both go to
        ``S×S`` (logits bilinear, ground truth by ``preset.gt_resize_mode``); otherwise the logits are resized
        bilinearly to the ground truth's ``H', W'`` when they differ.

        Args:
            logits: ``(B, T, H, W)`` mask logits for binary presets or ``(B, T, K, H, W)`` class logits for semantic
                presets (float; any device).
            masks: ``(B, T, H', W')`` ground truth: binary masks (``> 0`` is foreground) or class labels.
            valid: optional ``(B, T)`` bool, False for padded or unlabelled frames. Binary presets and
                ``avss_corrected`` drop those frames; the official ``avss`` preset scores them anyway.
            frame_valid: optional ``(B, T)`` bool, False for padded frames (default: ``valid``); a preset with
                ``zero_padded_logits`` sets the logits of those frames to 0 before scoring.
            ids: optional ``B`` video/expression ids for the per-video results (default: running numbers).
            first_frame: optional, per item, the frame its object is given on (semi-supervised VOS:
                ``meta["first_frame"]``). Binary presets leave out the frames before it and, with
                ``skip_end_frames``, the first and the last of the remaining valid frames (:func:`scored_frames`).
        """
        semantic = self.preset.task == "semantic"
        want = 5 if semantic else 4
        axes = "(B, T, K, H, W)" if semantic else "(B, T, H, W)"
        if not isinstance(logits, torch.Tensor) or logits.dim() != want:
            got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ShapeError(f"logits must have shape {axes} for preset {self.preset.name!r}, got {got}")
        if not logits.is_floating_point():
            raise ShapeError(f"logits must be a floating tensor, got {logits.dtype}")
        if not isinstance(masks, torch.Tensor) or masks.dim() != 4:
            got = tuple(masks.shape) if isinstance(masks, torch.Tensor) else type(masks).__name__
            raise ShapeError(f"masks must have shape (B, T, H, W), got {got}")
        if masks.is_floating_point() or masks.is_complex():
            raise ShapeError(f"masks must be bool or integer, got {masks.dtype}")
        b, t = logits.shape[:2]
        if tuple(masks.shape[:2]) != (b, t):
            raise ShapeError(f"masks {tuple(masks.shape)} and logits {tuple(logits.shape)} disagree on (B, T)")
        for name, flag in (("valid", valid), ("frame_valid", frame_valid)):
            if flag is not None and (tuple(flag.shape) != (b, t) or flag.dtype != torch.bool):
                raise ShapeError(
                    f"{name} must be a bool tensor of shape {(b, t)}, got {flag.dtype} {tuple(flag.shape)}"
                )
        if valid is None:
            valid = torch.ones(b, t, dtype=torch.bool)
        if frame_valid is None:
            frame_valid = valid
        if ids is None:
            ids = [str(len(self._items) + i) for i in range(b)]
        elif len(ids) != b:
            raise ShapeError(f"ids has {len(ids)} entries for a batch of {b}")
        masks = masks.to(logits.device)
        if self.preset.zero_padded_logits:
            keep = frame_valid.to(logits.device).view(b, t, *([1] * (logits.dim() - 2)))
            logits = logits * keep  # the official models multiply their output by the frame-validity flag
        gt_size = (int(masks.shape[-2]), int(masks.shape[-1]))
        size = (self.preset.resize, self.preset.resize) if self.preset.resize is not None else gt_size
        logits = resize_logits(logits, size)
        masks = _resize_gt(masks, size, self.preset.gt_resize_mode, semantic)
        with torch.no_grad():
            per_frame = self._semantic_stats(logits, masks) if semantic else self._binary_stats(logits, masks)
        valid_cpu = valid.cpu()
        scored = scored_frames(valid_cpu, first_frame, skip_end_frames=self.preset.skip_end_frames)
        for i in range(b):
            stats = {key: value[i] for key, value in per_frame.items()}
            dropped = unscored = 0
            if not semantic:  # binary presets drop invalid and unscored frames outright
                stats = {key: value[scored[i]] for key, value in stats.items()}
                dropped = int((~valid_cpu[i]).sum())
                unscored = int((valid_cpu[i] & ~scored[i]).sum())
            kept = t - dropped - unscored
            stats["valid"] = valid_cpu[i].clone() if semantic else torch.ones(kept, dtype=torch.bool)
            self._items.append(_Item(str(ids[i]), size, gt_size, dropped, unscored, stats))

    def add_scored(self, source: MetricAccumulator, index: int) -> None:
        """Add the video/expression ``source`` scored at position ``index`` (negative counts from the end), without
        scoring it again: evaluation adds each expression to its split's overall score and to the score of each
        subset it belongs to (audio-dependent, audio-only, ...), and the per-frame statistics (an F-measure curve
        over 255 thresholds per frame) are the costly part.

        Raises:
            ValueError: the two accumulators use different presets (their statistics would not be comparable).
        """
        if source.preset != self.preset:
            raise ValueError(
                f"add_scored: the source accumulator uses preset {source.preset.name!r}, this one {self.preset.name!r}"
            )
        self._items.append(source._items[index])
        if source._num_classes is not None:
            self._num_classes = source._num_classes

    def _binary_stats(self, logits: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
        p = self.preset
        iou = frame_iou_stats(logits, masks, threshold=p.threshold, empty_gt=p.empty_gt, eps=p.iou_eps)
        fixed = binarize(logits, threshold=p.fixed_threshold)
        gt = masks > 0
        out = {
            "iou": iou.iou,
            "counted": iou.counted,
            "inter": iou.inter,
            "union": iou.union,
            "gt_area": iou.gt_area,
            "tp": (fixed & gt).sum(dim=(-2, -1)),
            "fp": (fixed & ~gt).sum(dim=(-2, -1)),
            "fn": (~fixed & gt).sum(dim=(-2, -1)),
            "fg": binarize(logits, threshold=p.s_threshold).sum(dim=(-2, -1)),
            "pixels": torch.full(iou.inter.shape, iou.num_pixels, dtype=torch.int64),
        }
        if p.f_mode == "beta_sweep_max":
            curves = fmeasure_curve(logits, masks, num_thresholds=p.num_thresholds, beta2=p.beta2)
            out["curves"] = curves.curves
        else:  # boundary
            pred = binarize(logits, threshold=p.threshold)
            out["fb"] = db_eval_boundary(masks, pred, bound_th=p.bound_th)
        return {key: value.cpu() for key, value in out.items()}

    def _semantic_stats(self, logits: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
        b, t, k, h, w = logits.shape
        if self._num_classes is not None and k != self._num_classes:
            raise ShapeError(f"logits have {k} classes, earlier updates had {self._num_classes}")
        self._num_classes = k
        stats = semantic_frame_stats(logits.reshape(b * t, k, h, w), masks.reshape(b * t, h, w))
        return {name: value.reshape(b, t, k).cpu() for name, value in stats._asdict().items()}

    # ----------------------------------------------------------------------------------------------- compute
    def compute(self) -> dict[str, Any]:
        """Reduce everything seen so far.

        Returns:
            a JSON-ready dict. Binary presets: ``J``, ``F``, ``J&F`` (``(J + F) / 2``) under the preset's grouping,
            ``S`` (null-split score) and ``fg_ratio`` (pooled predicted-foreground fraction), the batch-independent
            ``miou_per_frame``, ``miou_dataset`` (``Σi/Σu``), ``F_fixed_per_frame`` and ``F_fixed_dataset`` (F at
            ``fixed_threshold``), ``counts``, ``per_video`` and ``settings``. Semantic presets: ``J``/``F`` are the
            preset's mIoU/F, plus ``miou_no_bg``, ``fscore_no_bg``, ``per_class``, the ``official`` and
            ``corrected`` variants side by side, ``counts``, ``per_video`` and ``settings``. NaN marks a value with
            nothing to average.
        """
        if not self._items:
            raise ValueError("no frames to score: no data was added before computing the metrics")
        out = self._compute_semantic() if self.preset.task == "semantic" else self._compute_binary()
        out["settings"] = self._settings()
        return out

    def _group_value(self, items: Sequence[_Item]) -> tuple[float, float, float, int]:
        p = self.preset
        counted = _cat(items, "counted")
        iou = _cat(items, "iou")
        frames = int(counted.shape[0])
        if frames == 0:
            return float("nan"), float("nan"), float("nan"), 0
        j = _float(iou[counted].mean()) if bool(counted.any()) else float("nan")
        if p.f_mode == "beta_sweep_max":
            f = _float(fmeasure_sweep_max(_cat(items, "curves"), _cat(items, "gt_area") > 0))
        else:
            f = _float(_cat(items, "fb").mean())
        ratio = _float(_cat(items, "fg").sum()) / _float(_cat(items, "pixels").sum())
        s = math.sqrt(ratio) if p.null_s == "sqrt_ratio" else ratio
        return j, f, s, frames

    def _compute_binary(self) -> dict[str, Any]:
        p = self.preset
        groups = [[self._items[i] for i in g] for g in group_indices(len(self._items), self.grouping)]
        values = [self._group_value(g) for g in groups]
        weights = [float(n) if p.group_weighting == "frames" else (1.0 if n else 0.0) for *_, n in values]
        j = _weighted_mean([v[0] for v in values], weights)
        f = _weighted_mean([v[1] for v in values], weights)
        fg = _float(_cat(self._items, "fg").sum())
        pixels = _float(_cat(self._items, "pixels").sum())
        fg_ratio = fg / pixels if pixels else float("nan")
        if p.null_s_reduction == "pooled":
            # Over every group's frames: the items a ``ddp`` grouping repeats count again, as in the gathered sums.
            members = [item for g in groups for item in g]
            pooled_pixels = _float(_cat(members, "pixels").sum())
            ratio = _float(_cat(members, "fg").sum()) / pooled_pixels if pooled_pixels else float("nan")
            s = math.sqrt(ratio) if p.null_s == "sqrt_ratio" else ratio
        else:
            s = _weighted_mean([v[2] for v in values], weights)
        counted = _cat(self._items, "counted")
        iou = _cat(self._items, "iou")
        union = _float(_cat(self._items, "union").sum())
        tp, fp, fn = (_cat(self._items, key).double() for key in ("tp", "fp", "fn"))
        f_frame = fmeasure_from_counts(tp, fp, fn, beta2=p.beta2)
        has_gt = (tp + fn) > 0
        gt_area = _cat(self._items, "gt_area")
        per_video = []
        for item in self._items:
            vj, vf, vs, vn = self._group_value([item])
            per_video.append(
                {
                    "id": item.id,
                    "frames": vn,
                    "empty_gt_frames": int((item.stats["gt_area"] == 0).sum()),
                    "J": vj,
                    "F": vf,
                    "S": vs,
                }
            )
        return {
            "J": j,
            "F": f,
            "J&F": (j + f) / 2,
            "S": s,
            "fg_ratio": fg_ratio,
            "miou_per_frame": _float(iou[counted].mean()) if bool(counted.any()) else float("nan"),
            "miou_dataset": _float(_cat(self._items, "inter").sum()) / union if union else float("nan"),
            "F_fixed_per_frame": _float(f_frame[has_gt].mean()) if bool(has_gt.any()) else float("nan"),
            "F_fixed_dataset": _float(fmeasure_pooled(tp, fp, fn, beta2=p.beta2)),
            "counts": {
                "videos": len(self._items),
                "groups": sum(1 for *_, n in values if n),
                "group_members": sum(len(g) for g in groups),
                "frames": int(counted.shape[0]),
                "j_frames": int(counted.sum()),
                "empty_gt_frames": int((gt_area == 0).sum()),
                "invalid_frames_dropped": sum(item.dropped for item in self._items),
                "unscored_frames": sum(item.unscored for item in self._items),
            },
            "per_video": per_video,
        }

    def _compute_semantic(self) -> dict[str, Any]:
        p = self.preset
        stats = SemanticStats(*(_cat(self._items, key).reshape(-1, self._num_classes) for key in SemanticStats._fields))
        valid = _cat(self._items, "valid").reshape(-1)
        switches = {
            "include_invalid_frames": p.include_invalid_frames,
            "unseen_classes": p.unseen_classes,
            "no_bg_index": p.no_bg_index,
        }
        head = avss_scores(stats, valid=valid, beta2=p.beta2, **switches)
        official = avss_scores(
            stats, valid=valid, beta2=p.beta2, include_invalid_frames=True, unseen_classes="zero", no_bg_index=-1
        )
        corrected = avss_scores(
            stats, valid=valid, beta2=p.beta2, include_invalid_frames=False, unseen_classes="drop", no_bg_index=0
        )
        per_video = []
        for item in self._items:
            item_stats = SemanticStats(*(item.stats[key] for key in SemanticStats._fields))
            video = avss_scores(
                item_stats,
                valid=item.stats["valid"],
                beta2=p.beta2,
                include_invalid_frames=p.include_invalid_frames,
                unseen_classes="drop",
                no_bg_index=p.no_bg_index,
            )
            per_video.append({"id": item.id, "frames": video.frames, "J": video.miou, "F": video.fscore})
        return {
            "J": head.miou,
            "F": head.fscore,
            "J&F": (head.miou + head.fscore) / 2,
            "miou": head.miou,
            "fscore": head.fscore,
            "miou_no_bg": head.miou_no_bg,
            "fscore_no_bg": head.fscore_no_bg,
            "per_class": {
                "miou": head.miou_per_class.tolist(),
                "fscore": head.fscore_per_class.tolist(),
                "count": [int(c) for c in head.class_count.tolist()],
            },
            "official": _summary(official),
            "corrected": _summary(corrected),
            "counts": {
                "videos": len(self._items),
                "frames": int(valid.shape[0]),
                "valid_frames": int(valid.sum()),
                "scored_frames": head.frames,
                "classes": int(self._num_classes or 0),
                "classes_seen": int((head.class_count > 0).sum()),
            },
            "per_video": per_video,
        }

    def _settings(self) -> dict[str, Any]:
        sizes = sorted({item.size for item in self._items})
        gt_sizes = sorted({item.gt_size for item in self._items})
        settings = self.preset.to_dict()
        settings = {"preset": settings.pop("name"), **settings}
        # Keep only the knobs that shaped this result, so that the record reads unambiguously.
        if self.preset.task == "semantic":
            drop = [
                "skip_end_frames",
                "threshold",
                "s_threshold",
                "empty_gt",
                "iou_eps",
                "num_thresholds",
                "bound_th",
                "fixed_threshold",
                "null_s",
                "null_s_reduction",
                "group_weighting",
            ]
        else:
            drop = ["include_invalid_frames", "zero_padded_logits", "unseen_classes", "no_bg_index"]
            drop.append("bound_th" if self.preset.f_mode == "beta_sweep_max" else "num_thresholds")
        if self.preset.resize is None:
            drop.append("gt_resize_mode")
        for key in drop:
            settings.pop(key)
        settings["group"] = str(self.grouping)
        settings["resolution"] = _sizes(sizes)
        settings["gt_resolution"] = _sizes(gt_sizes)
        settings["from_logits"] = True
        settings["avseg_version"] = __version__
        return settings


def _sizes(sizes: Sequence[tuple[int, int]]) -> str | list[str]:
    """``"HxW"`` for one size, a list of them for several."""
    return f"{sizes[0][0]}x{sizes[0][1]}" if len(sizes) == 1 else [f"{h}x{w}" for h, w in sizes]


def _summary(scores: SemanticScores) -> dict[str, float]:
    return {
        "miou": scores.miou,
        "fscore": scores.fscore,
        "miou_no_bg": scores.miou_no_bg,
        "fscore_no_bg": scores.fscore_no_bg,
        "frames": scores.frames,
    }
