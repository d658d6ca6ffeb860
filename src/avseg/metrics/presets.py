"""Named metric presets whose defaults reproduce each benchmark's official evaluation, and evaluation grouping.

A :class:`MetricPreset` pins every choice that changes a reported number: the binarisation threshold, the rule for
empty ground truth, the F variant, β², the evaluation resolution and how the ground truth is resized, the null-split S
and the grouping of videos into evaluation groups. ``get_preset(name)`` returns one of the registered presets;
``dataclasses.replace(preset, ...)`` derives variants.

Why grouping is a parameter
---------------------------
The official AVSBench/Ref-AVS F (``Eval_Fmeasure``) averages the per-frame precision/recall curves of **one test
batch** and takes the **maximum over the 255 thresholds** of that average: an oracle threshold chosen per batch. The
final F is the mean of these batch maxima, so it changes with the test batch size and order (4 videos in AVSBench's
``test.sh``, 1 in the ``avs_s4/test.py`` argparse default, 4 expressions in Ref-AVS, 2 in AVSegFormer). J is a mean
of per-batch frame means, so a short last batch weighs as much as a full one, and Ref-AVS's S is a mean of per-batch
square roots. To reproduce a published number the grouping must therefore be fixed and reported:

- ``"video"`` (or ``"expression"``): one video / one referring expression, with all its frames, per group;
- ``"batch:K"``: ``K`` consecutive videos per group in the order they are given, the last partial group included and
  weighted like the others (the official ``AverageMeter`` is a plain mean over batches).

Batch-independent numbers are reported next to the legacy ones (per-frame mean IoU, dataset IoU ``Σi/Σu``, F at a
fixed threshold per frame and pooled over the dataset).

Presets; "S" is the null-split score:

    preset             J threshold  empty GT  F                   group       resize  S
    avsbench           0.5          tn_ratio  beta_sweep_max      video       -       sqrt_ratio (not official)
    refavs             0.4          tn_ratio  beta_sweep_max      batch:4     256     sqrt_ratio at 0.5, group mean
    avss               argmax       -         per_class (b2 0.3)  video       -       -
    avss_corrected     argmax       -         per_class (b2 0.3)  video       -       -
    davis              0.5          one       boundary (0.008)    expression  -       -
    simtoken_compat    0.4          tn_ratio  beta_sweep_max      expression  -       sqrt_ratio, frame-weighted
    auralsam2_compat   0.5          tn_ratio  beta_sweep_max      batch:4     -       ratio pooled over the split
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Any, Literal

__all__ = [
    "Grouping",
    "MetricPreset",
    "get_preset",
    "group_ranges",
    "list_presets",
    "parse_group",
]


@dataclass(frozen=True)
class Grouping:
    """How consecutive videos/expressions are gathered into evaluation groups.

    Attributes:
        kind: ``"video"``, ``"expression"`` (one item per group) or ``"batch"`` (``size`` items per group).
        size: items per group.
    """

    kind: Literal["video", "expression", "batch"]
    size: int

    def __str__(self) -> str:
        return f"batch:{self.size}" if self.kind == "batch" else self.kind


def parse_group(spec: str | Grouping) -> Grouping:
    """Parse a grouping string.

    Args:
        spec: ``"video"``, ``"expression"`` or ``"batch:K"`` with ``K >= 1`` (a :class:`Grouping` passes through).

    Returns:
        :class:`Grouping`.

    Example:
        >>> parse_group("batch:4")
        Grouping(kind='batch', size=4)
        >>> str(parse_group("video"))
        'video'
    """
    if isinstance(spec, Grouping):
        return spec
    text = str(spec).strip()
    if text in ("video", "expression"):
        return Grouping(text, 1)  # type: ignore[arg-type]
    match = re.fullmatch(r"batch:(\d+)", text)
    if match and int(match.group(1)) >= 1:
        return Grouping("batch", int(match.group(1)))
    raise ValueError(f"group must be 'video', 'expression' or 'batch:K' with K >= 1, got {spec!r}")


def group_ranges(num_items: int, grouping: str | Grouping) -> list[range]:
    """Split ``num_items`` consecutive items into groups; the last group may be shorter.

    Args:
        num_items: number of videos/expressions, in evaluation order.
        grouping: a grouping string or :class:`Grouping`.

    Returns:
        one ``range`` of item indices per group.

    Example:
        >>> group_ranges(5, "batch:2")
        [range(0, 2), range(2, 4), range(4, 5)]
    """
    size = parse_group(grouping).size
    return [range(start, min(start + size, num_items)) for start in range(0, num_items, size)]


@dataclass(frozen=True)
class MetricPreset:
    """Every setting that changes a reported segmentation score.

    Attributes:
        name: registry name.
        task: ``"binary"`` (one logit map per frame) or ``"semantic"`` (``K`` class logits per frame).
        threshold: J binarisation, ``sigmoid(logit) > threshold`` (strict).
        s_threshold: binarisation of the null-split S.
        empty_gt: J rule for empty ground truth (see :data:`avseg.metrics.binary.EmptyGT`).
        iou_eps: added to the union in J (``1e-7`` in ``mask_iou``; 0 for DAVIS).
        f_mode: ``"beta_sweep_max"`` (official AVS F), ``"boundary"`` (DAVIS) or ``"per_class"`` (AVSS).
        beta2: β² of the F-measures (0.3 for AVS benchmarks).
        num_thresholds: thresholds of the F sweep (255).
        bound_th: DAVIS boundary tolerance (fraction of the diagonal).
        fixed_threshold: threshold of the batch-independent F reported next to the official one.
        resize: score at ``resize × resize`` (predictions bilinear, ground truth by ``gt_resize_mode``); None scores
            at the resolution given.
        gt_resize_mode: ``"bilinear_gt0"`` (Ref-AVS: bilinear then ``> 0``) or ``"nearest"``.
        null_s: ``"sqrt_ratio"`` (Ref-AVS) or ``"ratio"`` (AuralSAM2).
        null_s_reduction: ``"group_mean"`` (S per group, then mean) or ``"pooled"`` (one ratio over the split).
        group: default grouping, see :func:`parse_group`.
        group_weighting: ``"equal"`` (every group weighs the same) or ``"frames"`` (weighted by frame count).
        include_invalid_frames: semantic only: score frames marked invalid (padding) too.
        unseen_classes: semantic only: ``"zero"`` keeps never-seen classes as 0 in the mean, ``"drop"`` omits them.
        no_bg_index: semantic only: class index removed for the no-background means.
        notes: provenance and unverified points.
    """

    name: str
    task: Literal["binary", "semantic"] = "binary"
    threshold: float = 0.5
    s_threshold: float = 0.5
    empty_gt: Literal["tn_ratio", "one", "skip", "zero"] = "tn_ratio"
    iou_eps: float = 1e-7
    f_mode: Literal["beta_sweep_max", "boundary", "per_class"] = "beta_sweep_max"
    beta2: float = 0.3
    num_thresholds: int = 255
    bound_th: float = 0.008
    fixed_threshold: float = 0.5
    resize: int | None = None
    gt_resize_mode: Literal["bilinear_gt0", "nearest"] = "bilinear_gt0"
    null_s: Literal["sqrt_ratio", "ratio"] = "sqrt_ratio"
    null_s_reduction: Literal["group_mean", "pooled"] = "group_mean"
    group: str = "video"
    group_weighting: Literal["equal", "frames"] = "equal"
    include_invalid_frames: bool = True
    unseen_classes: Literal["zero", "drop"] = "zero"
    no_bg_index: int = -1
    notes: str = ""

    def __post_init__(self) -> None:
        checks: dict[str, tuple[Any, tuple[Any, ...]]] = {
            "task": (self.task, ("binary", "semantic")),
            "empty_gt": (self.empty_gt, ("tn_ratio", "one", "skip", "zero")),
            "f_mode": (self.f_mode, ("beta_sweep_max", "boundary", "per_class")),
            "gt_resize_mode": (self.gt_resize_mode, ("bilinear_gt0", "nearest")),
            "null_s": (self.null_s, ("sqrt_ratio", "ratio")),
            "null_s_reduction": (self.null_s_reduction, ("group_mean", "pooled")),
            "group_weighting": (self.group_weighting, ("equal", "frames")),
            "unseen_classes": (self.unseen_classes, ("zero", "drop")),
        }
        for field, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"MetricPreset {self.name!r}: {field} must be one of {allowed}, got {value!r}")
        for field in ("threshold", "s_threshold", "fixed_threshold"):
            value = getattr(self, field)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"MetricPreset {self.name!r}: {field} must be in [0, 1), got {value}")
        if (self.task == "semantic") != (self.f_mode == "per_class"):
            raise ValueError(f"MetricPreset {self.name!r}: f_mode 'per_class' goes with task 'semantic' and only then")
        if self.num_thresholds < 1 or self.beta2 <= 0:
            raise ValueError(
                f"MetricPreset {self.name!r}: bad num_thresholds={self.num_thresholds} or beta2={self.beta2}"
            )
        if self.resize is not None and self.resize < 1:
            raise ValueError(f"MetricPreset {self.name!r}: resize must be a positive int or None, got {self.resize}")
        parse_group(self.group)

    def to_dict(self) -> dict[str, Any]:
        """The preset as a JSON-serialisable dict (without ``notes``)."""
        out = asdict(self)
        out.pop("notes")
        return out


_PRESETS: MappingProxyType[str, MetricPreset] = MappingProxyType(
    {
        "avsbench": MetricPreset(
            name="avsbench",
            group="video",
            notes=(
                "Official AVSBench S4/MS3 (OpenNLPLab/AVSBench avs_s4/utils/utility.py mask_iou + Eval_Fmeasure): "
                "sigmoid > 0.5, true-negative rule for empty GT, 255-threshold beta^2=0.3 sweep, max per group. "
                "group 'video' is the avs_s4/test.py argparse default (test_batch_size 1); 'batch:4' reproduces "
                "test.sh. Scored at the resolution given (224x224 for the TPAVI data). S is not part of AVSBench."
            ),
        ),
        "refavs": MetricPreset(
            name="refavs",
            threshold=0.4,
            s_threshold=0.5,
            resize=256,
            gt_resize_mode="bilinear_gt0",
            group="batch:4",
            notes=(
                "Official Ref-AVS (GeWu-Lab/Ref-AVS utils/metric/utility.py, scripts/train.py::test): J at "
                "sigmoid > 0.4 with the true-negative rule, F as AVSBench, both per test batch of 4 expressions x 10 "
                "frames and averaged over batches; S = sqrt(fg / (N_frames*H*W)) per batch at sigmoid > 0.5, mean "
                "over batches. Everything at 256x256: GT bilinear-resized then > 0 (cv2.resize); predictions, "
                "which the EEMC model already outputs at 256x256, are bilinear-resized here when given at another "
                "size. Use group 'expression' for a batch-independent per-expression variant."
            ),
        ),
        "avss": MetricPreset(
            name="avss",
            task="semantic",
            f_mode="per_class",
            group="video",
            include_invalid_frames=True,
            unseen_classes="zero",
            no_bg_index=-1,
            notes=(
                "Official AVSBench-semantic (avss/utils/compute_color_metrics.py + avss/test.py): argmax+1, "
                "per-class IoU/F averaged over frames where the class is in pred or GT, summed over all frames with "
                "padded frames included, never-seen classes kept as 0 in the mean over all classes, noBg drops the "
                "last index. Grouping does not change these numbers (no per-group max)."
            ),
        ),
        "avss_corrected": MetricPreset(
            name="avss_corrected",
            task="semantic",
            f_mode="per_class",
            group="video",
            include_invalid_frames=False,
            unseen_classes="drop",
            no_bg_index=0,
            notes="AVSS with only valid (real, labelled) frames, never-seen classes dropped, background = index 0.",
        ),
        "davis": MetricPreset(
            name="davis",
            empty_gt="one",
            iou_eps=0.0,
            f_mode="boundary",
            bound_th=0.008,
            group="expression",
            notes=(
                "DAVIS-2017 J&F as used by Sa2VA for RVOS (davis2017-evaluation metrics.py): J = 1 for empty/empty, "
                "boundary F with bound_th 0.008, per-expression means over all frames, mean over expressions; "
                "predictions sigmoid > 0.5 at the GT's native resolution."
            ),
        ),
        "simtoken_compat": MetricPreset(
            name="simtoken_compat",
            threshold=0.4,
            s_threshold=0.5,
            group="expression",
            group_weighting="frames",
            notes=(
                "SimToken (train.py::valuate): mask_iou at 0.4 and Eval_Fmeasure per sample, weighted by "
                "num_seg*T, at the original GT resolution; S per expression (sqrt formula) averaged. Unverified: "
                "SimToken's utils/utility.py was not read; if its Eval_Fmeasure indexes the [num_seg, T, H, W] "
                "prediction by expression, its F curve pools all T frames of an expression into one curve instead "
                "of averaging per-frame curves as here."
            ),
        ),
        "auralsam2_compat": MetricPreset(
            name="auralsam2_compat",
            threshold=0.5,
            s_threshold=0.5,
            group="batch:4",
            null_s="ratio",
            null_s_reduction="pooled",
            notes=(
                "AuralSAM2 ref-avs.code (trainer/train.py, utils/foreground_{fscore,s}.py): F = Eval_Fmeasure per "
                "batch of 4 expressions, averaged over batches (pooled over DDP ranks); S = sum fg / sum pixels over "
                "the whole split without sqrt. J uses logits > 0 (= sigmoid > 0.5 up to float rounding) through "
                "utils/foreground_iou.py, which is not in the public snapshot read: its empty-GT rule and per-frame "
                "vs pooled IoU are unverified (tn_ratio and per-frame mean assumed). AuralSAM2 scores at the SAM "
                "input size (1024x1024): pass predictions and masks at that size."
            ),
        ),
    }
)

_ALIASES = MappingProxyType({"avsbench_official": "avsbench", "refavs_official": "refavs"})


def list_presets() -> list[str]:
    """Names of the registered presets, sorted.

    Example:
        >>> list_presets()
        ['auralsam2_compat', 'avsbench', 'avss', 'avss_corrected', 'davis', 'refavs', 'simtoken_compat']
    """
    return sorted(_PRESETS)


def get_preset(name: str | MetricPreset) -> MetricPreset:
    """Look up a preset by name (``avsbench_official`` and ``refavs_official`` are accepted as aliases).

    Args:
        name: a registered name, or a :class:`MetricPreset` (returned unchanged).

    Returns:
        the frozen :class:`MetricPreset`.

    Example:
        >>> get_preset("refavs").threshold, get_preset("refavs").resize
        (0.4, 256)
    """
    if isinstance(name, MetricPreset):
        return name
    key = _ALIASES.get(name, name)
    if key not in _PRESETS:
        raise ValueError(f"unknown metric preset {name!r}; available: {', '.join(list_presets())}")
    return _PRESETS[key]
