"""Named metric presets whose defaults reproduce each benchmark's official evaluation, and evaluation grouping.

A :class:`MetricPreset` pins every choice that changes a reported number: the binarisation threshold, the rule for
empty ground truth, the F variant, β², where the ground truth is read from and at what resolution it is scored, the
null-split S, the treatment of padded frames and the grouping of videos into evaluation groups. ``get_preset(name)``
returns one of the registered presets; ``dataclasses.replace(preset, ...)`` derives variants. Which preset *and*
grouping reproduce a published number of a given model is an evaluation protocol
(:mod:`avseg.metrics.protocols`).

Resolution
----------
``gt_source`` says which ground truth a preset scores against: ``"native"``, the masks at their resolution on disk as
the official loader reads them (a reader built with ``native_masks=True`` supplies them), or ``"input"``, the masks
at the model's input size. Predictions are brought to the ground truth, never the other way round: with
``resize=None`` the logits are resized bilinearly to the ground truth's size; with ``resize=S`` the logits are
resized bilinearly to ``S×S`` and the ground truth by ``gt_resize_mode``.

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
  weighted like the others (the official ``AverageMeter`` is a plain mean over batches);
- ``"ddp:R:K"``: the batches ``R`` processes see under PyTorch's ``DistributedSampler(shuffle=False)`` with a
  per-process batch of ``K`` (see :func:`group_indices`); every batch of every process is one group, all weighted
  alike, because the multi-GPU scripts that use it (AuralSAM2) gather each process's running ``(sum, count)`` and
  divide the sums. Groups may then repeat items.

Batch-independent numbers are reported next to the legacy ones (per-frame mean IoU, dataset IoU ``Σi/Σu``, F at a
fixed threshold per frame and pooled over the dataset).

Presets; "S" is the null-split score, "GT" where the ground truth is read from and the size it is scored at:

    preset             J threshold  empty GT  F                   group       GT                         S
    avsbench           0.5          tn_ratio  beta_sweep_max      video       native                     sqrt_ratio
    refavs             0.4          tn_ratio  beta_sweep_max      batch:4     native -> 256 (bilinear>0) sqrt_ratio
    avss               argmax       -         per_class (b2 0.3)  video       native -> 224 (nearest)    -
    avss_corrected     argmax       -         per_class (b2 0.3)  video       native -> 224 (nearest)    -
    davis              0.5          one       boundary (0.008)    expression  native                     -
    davis_semi         0.5          one       boundary (0.008)    video       native                     -
    simtoken_compat    0.4          tn_ratio  beta_sweep_max      expression  native                     sqrt_ratio
    auralsam2_compat   0.5          tn_ratio  beta_sweep_max      batch:4     input                      ratio, pooled

``avss`` also zeroes the logits of padded frames (``zero_padded_logits``), as the official models do.

Semi-supervised VOS (``davis_semi``, ``skip_end_frames``): the object is given on its first frame, so that frame is
not scored. ``davis2017-evaluation`` (``davis2017/evaluation.py::DAVISEvaluation.evaluate``, semi-supervised task)
scores every object on ``all_gt_masks[:, 1:-1]``: the first and the last frame of the sequence are left out, and
``evaluation_method.py`` reports ``J&F = (mean J + mean F) / 2`` over all objects (SAM2's ``sav_benchmark.py`` skips
the same two frames of each object). avseg takes them relative to each item: its scored frames are its labelled
frames from its first frame (``first_frame``, the conditioning frame) on, and of those the first and the last are
left out; frames before an item's first frame are never scored (the object was not given yet).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Any, Literal

__all__ = [
    "Grouping",
    "MetricPreset",
    "distributed_indices",
    "get_preset",
    "group_indices",
    "group_ranges",
    "list_presets",
    "parse_group",
]


@dataclass(frozen=True)
class Grouping:
    """How videos/expressions are gathered into evaluation groups.

    Attributes:
        kind: ``"video"``, ``"expression"`` (one item per group), ``"batch"`` (``size`` consecutive items per group)
            or ``"ddp"`` (``DistributedSampler`` batches of ``size`` items on each of ``replicas`` processes).
        size: items per group (per process and batch for ``"ddp"``).
        replicas: processes of the ``"ddp"`` emulation (1 otherwise).
    """

    kind: Literal["video", "expression", "batch", "ddp"]
    size: int
    replicas: int = 1

    def __str__(self) -> str:
        if self.kind == "batch":
            return f"batch:{self.size}"
        if self.kind == "ddp":
            return f"ddp:{self.replicas}:{self.size}"
        return self.kind


def parse_group(spec: str | Grouping) -> Grouping:
    """Parse a grouping string.

    Args:
        spec: ``"video"``, ``"expression"``, ``"batch:K"`` with ``K >= 1``, or ``"ddp:R:K"`` (``R >= 1`` processes,
            ``K >= 1`` items per process batch); a :class:`Grouping` passes through.

    Returns:
        :class:`Grouping`.

    Example:
        >>> parse_group("batch:4")
        Grouping(kind='batch', size=4, replicas=1)
        >>> str(parse_group("video")), str(parse_group("ddp:4:1"))
        ('video', 'ddp:4:1')
    """
    if isinstance(spec, Grouping):
        return spec
    text = str(spec).strip()
    if text in ("video", "expression"):
        return Grouping(text, 1)  # type: ignore[arg-type]
    match = re.fullmatch(r"batch:(\d+)", text)
    if match and int(match.group(1)) >= 1:
        return Grouping("batch", int(match.group(1)))
    match = re.fullmatch(r"ddp:(\d+):(\d+)", text)
    if match and int(match.group(1)) >= 1 and int(match.group(2)) >= 1:
        return Grouping("ddp", int(match.group(2)), int(match.group(1)))
    raise ValueError(
        f"group must be 'video', 'expression', 'batch:K' with K >= 1 or 'ddp:R:K' with R, K >= 1, got {spec!r}"
    )


def distributed_indices(num_items: int, replicas: int, rank: int) -> list[int]:
    """The item indices process ``rank`` of ``replicas`` receives from ``DistributedSampler(shuffle=False)``.

    PyTorch's sampler (``drop_last=False``) pads the index list ``0..N-1`` to a multiple of ``replicas`` by appending
    items from its start (the whole list again as often as needed when ``replicas > N``) and gives process ``rank``
    the indices ``rank, rank + R, rank + 2R, ...`` of the padded list.

    Args:
        num_items: the dataset's length ``N``.
        replicas: number of processes ``R``.
        rank: this process, ``0 <= rank < R``.

    Returns:
        ``ceil(N / R)`` item indices, in the order the process's loader reads them.

    Example:
        >>> [distributed_indices(5, 4, r) for r in range(4)]
        [[0, 4], [1, 0], [2, 1], [3, 2]]
    """
    if num_items < 1 or replicas < 1 or not 0 <= rank < replicas:
        raise ValueError(
            f"need num_items >= 1, replicas >= 1 and 0 <= rank < replicas, got {num_items}, {replicas}, {rank}"
        )
    total = math.ceil(num_items / replicas) * replicas
    padded = [i % num_items for i in range(total)]  # appending from the start, repeated when R > N
    return padded[rank:total:replicas]


def group_indices(num_items: int, grouping: str | Grouping) -> list[list[int]]:
    """The item indices of every evaluation group, in the order the groups are formed.

    ``video``/``expression``/``batch:K`` cut the items, in the order given, into consecutive groups (the last one may
    be shorter). ``ddp:R:K`` emulates ``R`` processes each running a ``DataLoader(batch_size=K)`` over its
    :func:`distributed_indices`: the groups are process 0's batches, then process 1's, and so on. The order does not
    change a result (every group weighs the same), but an item may appear in two groups, since the sampler repeats
    items to give every process the same number.

    Args:
        num_items: number of videos/expressions, in evaluation order.
        grouping: a grouping string or :class:`Grouping`.

    Returns:
        one list of item indices per group.

    Example:
        >>> group_indices(5, "batch:2")
        [[0, 1], [2, 3], [4]]
        >>> group_indices(5, "ddp:4:1")
        [[0], [4], [1], [0], [2], [1], [3], [2]]
    """
    grouping = parse_group(grouping)
    if num_items == 0:
        return []
    if grouping.kind == "ddp":
        groups = []
        for rank in range(grouping.replicas):
            mine = distributed_indices(num_items, grouping.replicas, rank)
            groups += [mine[start : start + grouping.size] for start in range(0, len(mine), grouping.size)]
        return groups
    size = grouping.size
    return [list(range(start, min(start + size, num_items))) for start in range(0, num_items, size)]


def group_ranges(num_items: int, grouping: str | Grouping) -> list[range]:
    """Split ``num_items`` consecutive items into groups; the last group may be shorter.

    The groupings whose groups are runs of consecutive items (all but ``ddp:R:K``, whose groups
    :func:`group_indices` gives).

    Args:
        num_items: number of videos/expressions, in evaluation order.
        grouping: a grouping string or :class:`Grouping`.

    Returns:
        one ``range`` of item indices per group.

    Example:
        >>> group_ranges(5, "batch:2")
        [range(0, 2), range(2, 4), range(4, 5)]
    """
    grouping = parse_group(grouping)
    if grouping.kind == "ddp":
        raise ValueError(f"group {str(grouping)!r} does not form runs of consecutive items; use group_indices")
    return [range(g[0], g[-1] + 1) for g in group_indices(num_items, grouping)]


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
        gt_source: which ground truth is scored: ``"native"`` (the masks at their resolution on disk, read as the
            official loader reads them: a reader's ``native_masks``) or ``"input"`` (the masks at the model's input
            size). Predictions are resized to the ground truth (bilinear on logits), never the reverse.
        resize: score at ``resize × resize`` (logits bilinear, ground truth by ``gt_resize_mode``); None scores at
            the ground truth's resolution.
        gt_resize_mode: ``"bilinear_gt0"`` (Ref-AVS: ``cv2.resize`` bilinear then ``> 0``), ``"nearest"``
            (``floor(dst·scale)``, ``cv2.INTER_NEAREST``) or ``"nearest_exact"`` (pixel centres, PIL's
            ``Image.NEAREST`` as the AVSS loader uses it). Semantic presets take a nearest mode.
        null_s: ``"sqrt_ratio"`` (Ref-AVS) or ``"ratio"`` (AuralSAM2).
        null_s_reduction: ``"group_mean"`` (S per group, then mean) or ``"pooled"`` (one ratio over every group's
            frames: the whole split, plus the repeated items of a ``ddp`` grouping).
        group: default grouping, see :func:`parse_group`.
        group_weighting: ``"equal"`` (every group weighs the same) or ``"frames"`` (weighted by frame count).
        include_invalid_frames: semantic only: score frames marked invalid (padding) too.
        zero_padded_logits: semantic only: multiply the logits by the frame-validity flag before scoring, as the
            official AVSS models (TPAVI, AVSegFormer) multiply their output by ``vid_temporal_mask_flag``: a padded
            frame then has all-zero logits, its argmax is class 0 (background), which matches its all-zero label.
        unseen_classes: semantic only: ``"zero"`` keeps never-seen classes as 0 in the mean, ``"drop"`` omits them.
        no_bg_index: semantic only: class index removed for the no-background means.
        skip_end_frames: binary only: leave out each item's first and last scored frame (the semi-supervised
            DAVIS protocol, where the first one is the conditioning frame whose ground truth the model was given).
        notes: provenance, what evaluation does with the preset, and unverified points.
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
    gt_source: Literal["native", "input"] = "native"
    resize: int | None = None
    gt_resize_mode: Literal["bilinear_gt0", "nearest", "nearest_exact"] = "bilinear_gt0"
    null_s: Literal["sqrt_ratio", "ratio"] = "sqrt_ratio"
    null_s_reduction: Literal["group_mean", "pooled"] = "group_mean"
    group: str = "video"
    group_weighting: Literal["equal", "frames"] = "equal"
    include_invalid_frames: bool = True
    zero_padded_logits: bool = False
    unseen_classes: Literal["zero", "drop"] = "zero"
    no_bg_index: int = -1
    skip_end_frames: bool = False
    notes: str = ""

    def __post_init__(self) -> None:
        checks: dict[str, tuple[Any, tuple[Any, ...]]] = {
            "task": (self.task, ("binary", "semantic")),
            "empty_gt": (self.empty_gt, ("tn_ratio", "one", "skip", "zero")),
            "f_mode": (self.f_mode, ("beta_sweep_max", "boundary", "per_class")),
            "gt_source": (self.gt_source, ("native", "input")),
            "gt_resize_mode": (self.gt_resize_mode, ("bilinear_gt0", "nearest", "nearest_exact")),
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
        if self.task == "semantic" and self.gt_resize_mode == "bilinear_gt0":
            raise ValueError(
                f"MetricPreset {self.name!r}: class labels cannot be resized bilinearly; gt_resize_mode must be "
                "'nearest' or 'nearest_exact' for a semantic preset"
            )
        if self.zero_padded_logits and self.task != "semantic":
            raise ValueError(
                f"MetricPreset {self.name!r}: zero_padded_logits is for semantic presets (binary presets drop padded "
                "frames)"
            )
        if self.skip_end_frames and self.task != "binary":
            raise ValueError(f"MetricPreset {self.name!r}: skip_end_frames is for binary presets (one object per item)")
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
                "Eval scores against the native ground truth (the reader's native_masks; the TPAVI data stores "
                "frames and masks at 224x224) with the logits bilinear-resized to its size, no further resize. "
                "Group 'video' is the avs_s4/test.py argparse default (test_batch_size 1); test.sh uses 'batch:4' "
                "(see the evaluation protocols). S is not part of AVSBench."
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
                "over batches. Eval reads the native ground truth (the reader's native_masks, as "
                "datasets/dataset_refavs.py reads the PNG), resizes it to 256x256 bilinearly then > 0 (cv2.resize "
                "default), and bilinear-resizes the logits to 256x256. Use group 'expression' for a "
                "batch-independent per-expression variant."
            ),
        ),
        "avss": MetricPreset(
            name="avss",
            task="semantic",
            f_mode="per_class",
            resize=224,
            gt_resize_mode="nearest_exact",
            group="video",
            include_invalid_frames=True,
            zero_padded_logits=True,
            unseen_classes="zero",
            no_bg_index=-1,
            notes=(
                "Official AVSBench-semantic (avss/utils/compute_color_metrics.py + avss/test.py): argmax+1, "
                "per-class IoU/F averaged over frames where the class is in pred or GT, summed over all frames with "
                "padded frames included, never-seen classes kept as 0 in the mean over all classes, noBg drops the "
                "last index. Eval reads the native ground truth (the reader's native_masks), resizes it to 224x224 "
                "with PIL-style nearest neighbours (color_dataloader.py resize_img on val/test), bilinear-resizes the "
                "logits to 224x224, and multiplies the logits by the frame-validity flag first, as the official "
                "TPAVI (model/*_AVSModel.py, pred * vid_temporal_mask_flag) and AVSegFormer (model/AVSegFormer.py, "
                "mul_temporal_mask) do: padded frames score as free background hits. Grouping does not change these "
                "numbers (no per-group max)."
            ),
        ),
        "avss_corrected": MetricPreset(
            name="avss_corrected",
            task="semantic",
            f_mode="per_class",
            resize=224,
            gt_resize_mode="nearest_exact",
            group="video",
            include_invalid_frames=False,
            unseen_classes="drop",
            no_bg_index=0,
            notes=(
                "AVSS with only valid (real, labelled) frames, never-seen classes dropped, background = index 0. "
                "Eval reads and resizes the ground truth as 'avss' does (native, 224x224 nearest) and leaves the "
                "logits of padded frames as the model gave them (those frames are not scored)."
            ),
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
                "boundary F with bound_th 0.008 of the image diagonal, per-expression means over all frames, mean "
                "over expressions. Eval scores at the native ground truth's resolution (the reader's native_masks, "
                "no resize: resizing would change the boundary tolerance), with the logits bilinear-resized to it "
                "and binarised at sigmoid > 0.5."
            ),
        ),
        "davis_semi": MetricPreset(
            name="davis_semi",
            empty_gt="one",
            iou_eps=0.0,
            f_mode="boundary",
            bound_th=0.008,
            group="video",
            skip_end_frames=True,
            notes=(
                "DAVIS 2017 semi-supervised (davis2017-evaluation davis2017/evaluation.py::DAVISEvaluation.evaluate "
                "and evaluation_method.py): 'davis' per object, on the frames all_gt_masks[:, 1:-1] - the first "
                "(conditioning) and the last frame are not scored - J and F the per-object means, J&F = (mean J + "
                "mean F) / 2 over all objects. Eval passes each item's first_frame: its scored frames are its "
                "labelled frames from there on, less the first and the last; scored at the native ground truth's "
                "resolution (the reader's native_masks) with the logits bilinear-resized to it, sigmoid > 0.5."
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
                "num_seg*T; S per expression (sqrt formula) averaged. Eval scores at the native ground truth's "
                "resolution (the reader's native_masks), with the logits bilinear-resized to it. Unverified: "
                "SimToken's utils/utility.py was not read; if its Eval_Fmeasure indexes the [num_seg, T, H, W] "
                "prediction by expression, its F curve pools all T frames of an expression into one curve instead "
                "of averaging per-frame curves as here."
            ),
        ),
        "auralsam2_compat": MetricPreset(
            name="auralsam2_compat",
            threshold=0.5,
            s_threshold=0.5,
            gt_source="input",
            group="batch:4",
            null_s="ratio",
            null_s_reduction="pooled",
            notes=(
                "AuralSAM2 (ref-avs.code/trainer/train.py, utils/foreground_{fscore,s}.py): J on logits > 0 "
                "(= sigmoid > 0.5) as a per-batch frame mean with the true-negative rule, F = Eval_Fmeasure per "
                "batch, both averaged over the batches of every DDP rank; S = sum fg / sum pixels over every batch "
                "of the split, without sqrt. Unverified: ref-avs.code/utils/foreground_iou.py is not in the public "
                "snapshot read; its AVS copy (avs.code/v2.code/utils/foreground_iou.py) is assumed. Eval scores "
                "against the masks at the model's input size (AuralSAM2 scores at the SAM input size, 1024x1024, "
                "to which its loader resizes the labels), with the logits bilinear-resized to that size."
            ),
        ),
    }
)

_ALIASES = MappingProxyType({"avsbench_official": "avsbench", "refavs_official": "refavs"})


def list_presets() -> list[str]:
    """Names of the registered presets, sorted.

    Example:
        >>> list_presets()
        ['auralsam2_compat', 'avsbench', 'avss', 'avss_corrected', 'davis', 'davis_semi', 'refavs', 'simtoken_compat']
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
