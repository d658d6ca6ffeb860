"""Segmentation metrics: pure functions, named presets that reproduce each benchmark's official evaluation, and a
thin accumulator.

- :mod:`avseg.metrics.binary`: AVSBench/Ref-AVS J (``mask_iou``), the 255-threshold F sweep, batch-independent F,
  null-split S, per-frame and dataset IoU.
- :mod:`avseg.metrics.semantic`: AVSS mIoU/F, official and corrected.
- :mod:`avseg.metrics.davis`: DAVIS J and boundary F for RVOS.
- :mod:`avseg.metrics.revos`: ReVOS's R2-VOS accuracy A and robustness R, and its summary by expression type.
- :mod:`avseg.metrics.presets`: :class:`MetricPreset`, ``get_preset``, ``list_presets``, grouping.
- :mod:`avseg.metrics.accumulator`: :class:`MetricAccumulator` for evaluation loops.
- :mod:`avseg.metrics.score`: the ``avseg score`` command.
"""

from avseg.metrics.accumulator import MetricAccumulator
from avseg.metrics.binary import (
    EmptyGT,
    FMeasureCurves,
    FrameF,
    FrameIoU,
    binarize,
    eval_fmeasure,
    fmeasure_at_threshold,
    fmeasure_curve,
    fmeasure_from_counts,
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
from avseg.metrics.davis import boundary_radius, davis_jf, db_eval_boundary, db_eval_iou, seg2bmap
from avseg.metrics.presets import (
    Grouping,
    MetricPreset,
    distributed_indices,
    get_preset,
    group_indices,
    group_ranges,
    list_presets,
    parse_group,
)
from avseg.metrics.revos import r2vos_accuracy, r2vos_robustness, revos_scores
from avseg.metrics.score import score
from avseg.metrics.semantic import (
    SemanticScores,
    SemanticStats,
    avss_corrected,
    avss_official,
    avss_scores,
    semantic_frame_stats,
)

__all__ = [
    "EmptyGT",
    "FMeasureCurves",
    "FrameF",
    "FrameIoU",
    "Grouping",
    "MetricAccumulator",
    "MetricPreset",
    "SemanticScores",
    "SemanticStats",
    "avss_corrected",
    "avss_official",
    "avss_scores",
    "binarize",
    "boundary_radius",
    "davis_jf",
    "db_eval_boundary",
    "db_eval_iou",
    "distributed_indices",
    "eval_fmeasure",
    "fmeasure_at_threshold",
    "fmeasure_curve",
    "fmeasure_from_counts",
    "fmeasure_pooled",
    "fmeasure_sweep_max",
    "frame_iou_stats",
    "get_preset",
    "group_indices",
    "group_ranges",
    "list_presets",
    "mask_iou",
    "miou_dataset",
    "miou_per_frame",
    "null_s",
    "parse_group",
    "r2vos_accuracy",
    "r2vos_robustness",
    "resize_logits",
    "resize_mask",
    "revos_scores",
    "score",
    "seg2bmap",
    "semantic_frame_stats",
]
