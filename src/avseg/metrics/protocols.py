"""Evaluation protocols: the metric preset, grouping and data-reading options behind a published number.

A metric preset (:mod:`avseg.metrics.presets`) fixes *how* a frame and a group are scored; a published number also
depends on how the official script fed the data: its test batch size (the F takes an oracle threshold per batch),
its number of GPUs (a ``DistributedSampler`` repeats items and regroups them), whether its loader kept duplicate
metadata rows, and which ground truth it read. An :class:`EvalProtocol` pins all of that for one model family on one
benchmark, with the official files it was read from.

``avseg eval --protocol default`` (the default) scores every benchmark batch-independently: one group per video or
expression, duplicate rows dropped, the ground truth the preset names. ``--protocol official`` uses the protocol
the model's class declares for the benchmark (:attr:`avseg.models.base.AVSModel.official_protocols`), which
reproduces the grouping of the script behind the published number:

    family       benchmark  preset            grouping  reader options           official script
    tpavi        s4, ms3    avsbench          batch:4   -                        AVSBench avs_s4|avs_ms3/test.sh
    tpavi        avss       avss              batch:4   -                        AVSBench avss/test.sh
    tpavi        refavs     refavs            batch:4   keep_duplicate_rows      Ref-AVS run_refavs.py + test()
    avsegformer  s4, ms3    avsbench          batch:2   -                        AVSegFormer config/{s4,ms3}
    avsegformer  avss       avss              batch:4   -                        AVSegFormer config/avss
    avsegformer  refavs     refavs            batch:4   keep_duplicate_rows      Ref-AVS run_refavs.py + test()
    auralsam2    s4, ms3    auralsam2_compat  ddp:4:1   -                        AuralSAM2 avs.code main.py
    auralsam2    refavs     auralsam2_compat  ddp:4:4   keep_duplicate_rows      AuralSAM2 ref-avs.code main.py
    eemc         refavs     refavs            batch:4   keep_duplicate_rows      Ref-AVS run_refavs.py + test()
    sam2         vos        davis_semi        video     -                        davis2017-evaluation (semi-sup.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from avseg.errors import UsageError
from avseg.metrics.presets import MetricPreset, get_preset, parse_group

__all__ = [
    "AURALSAM2_AVS",
    "AURALSAM2_REFAVS",
    "AVSBENCH_AVSS_TEST_SH",
    "AVSBENCH_TEST_SH",
    "AVSEGFORMER_AVS",
    "AVSEGFORMER_AVSS",
    "DAVIS2017_SEMI",
    "REFAVS_OFFICIAL",
    "EvalProtocol",
    "ProtocolKind",
    "default_protocol",
    "official_protocol",
    "protocol_table",
]

ProtocolKind = Literal["default", "official"]

# Options a protocol may ask of a reader; the ground-truth option follows from the preset instead.
_READER_OPTIONS = ("keep_duplicate_rows",)


@dataclass(frozen=True)
class EvalProtocol:
    """How one published number was evaluated.

    Attributes:
        name: a short label (``"AVSBench test.sh"``).
        preset: metric preset name.
        group: grouping (``video``, ``expression``, ``batch:K``, ``ddp:R:K``; see
            :func:`avseg.metrics.presets.parse_group`).
        reader_options: options the reader is built with (``{"keep_duplicate_rows": True}`` for Ref-AVS loaders
            that keep every CSV row); the native ground truth (``native_masks=True``) is asked for whenever the
            preset's ``gt_source`` is ``"native"``.
        source: the official files the settings were read from.
        notes: what is emulated and what is not.
    """

    name: str
    preset: str
    group: str
    reader_options: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""
    notes: str = ""

    def __post_init__(self) -> None:
        get_preset(self.preset)
        parse_group(self.group)
        unknown = sorted(set(self.reader_options) - set(_READER_OPTIONS))
        if unknown:
            raise ValueError(f"EvalProtocol {self.name!r}: unknown reader options {unknown}; known: {_READER_OPTIONS}")
        object.__setattr__(self, "reader_options", MappingProxyType(dict(self.reader_options)))

    def __hash__(self) -> int:
        return hash((self.name, self.preset, self.group, tuple(sorted(self.reader_options.items())), self.source))

    @property
    def metric_preset(self) -> MetricPreset:
        """The :class:`MetricPreset` named by :attr:`preset`."""
        return get_preset(self.preset)

    @property
    def native_masks(self) -> bool:
        """Whether the reader must supply the ground truth at its resolution on disk."""
        return self.metric_preset.gt_source == "native"

    def to_dict(self) -> dict[str, Any]:
        """The protocol as a JSON-serialisable dict."""
        return {
            "name": self.name,
            "preset": self.preset,
            "group": self.group,
            "reader_options": dict(self.reader_options),
            "native_masks": self.native_masks,
            "source": self.source,
            "notes": self.notes,
        }


AVSBENCH_TEST_SH = EvalProtocol(
    name="AVSBench test.sh",
    preset="avsbench",
    group="batch:4",
    source=(
        "OpenNLPLab/AVSBench avs_scripts/avs_s4/test.sh and avs_ms3/test.sh (--test_batch_size 4); test.py: "
        "DataLoader(shuffle=False), mask_iou and Eval_Fmeasure per batch, AverageMeter over batches"
    ),
    notes="Batches of 4 consecutive test clips (20 frames), not test.py's argparse default (1 clip).",
)

AVSBENCH_AVSS_TEST_SH = EvalProtocol(
    name="AVSBench avss/test.sh",
    preset="avss",
    group="batch:4",
    source=(
        "OpenNLPLab/AVSBench avs_scripts/avss/test.sh (--test_batch_size 4); test.py with "
        "utils/compute_color_metrics.py; model/*_AVSModel.py multiplies its output by vid_temporal_mask_flag"
    ),
    notes=(
        "The per-class sums run over every frame of the split, so the batch size does not change the score; it is "
        "recorded as the script ran. test.py unpacks 3 values from calc_color_miou_fscore, which returns 4."
    ),
)

AVSEGFORMER_AVS = EvalProtocol(
    name="AVSegFormer S4/MS3 config",
    preset="avsbench",
    group="batch:2",
    source=(
        "vvvb-github/AVSegFormer config/s4/*.py and config/ms3/*.py (dataset.test.batch_size=2); scripts/s4/test.py "
        "and scripts/ms3/test.py: mask_iou and Eval_Fmeasure per batch, AverageMeter over batches"
    ),
    notes="Batches of 2 consecutive test clips (10 frames), scored at 224x224.",
)

AVSEGFORMER_AVSS = EvalProtocol(
    name="AVSegFormer AVSS config",
    preset="avss",
    group="batch:4",
    source=(
        "vvvb-github/AVSegFormer config/avss/*.py (dataset.test.batch_size=4); scripts/avss/test.py with "
        "utils/compute_color_metrics.py; model/AVSegFormer.py multiplies its prediction by vid_temporal_mask_flag"
    ),
    notes="The batch size does not change the semantic score; it is recorded as the script ran.",
)

REFAVS_OFFICIAL = EvalProtocol(
    name="Ref-AVS test loop",
    preset="refavs",
    group="batch:4",
    reader_options={"keep_duplicate_rows": True},
    source=(
        "GeWu-Lab/Ref-AVS run_refavs.py (DataLoader(batch_size=4, shuffle=False) per test split), "
        "scripts/train.py::test, datasets/dataset_refavs.py (every metadata.csv row of the split, cv2 GT resized "
        "to 256x256), utils/metric/utility.py"
    ),
    notes=(
        "Batches of 4 consecutive CSV rows, duplicate uids kept as the pandas loader keeps them; J and F per batch "
        "averaged over batches; on test_n only S (per-batch sqrt, mean over batches) is reported."
    ),
)

AURALSAM2_AVS = EvalProtocol(
    name="AuralSAM2 AVS (4 GPUs)",
    preset="auralsam2_compat",
    group="ddp:4:1",
    source=(
        "yyliu01/AuralSAM2 avs.code/v1s.code/main.py and v1m.code/main.py (DistributedSampler(shuffle=False), "
        "DataLoader(batch_size=1)); trainer/train.py::Trainer.valid (all_gather_object of each rank's (sum, count), "
        "sum of sums / sum of counts); docs/before_start.md: 4 GPUs by default"
    ),
    notes=(
        "One clip per GPU and batch, 4 GPUs: the sampler pads the clip list to a multiple of 4 with clips from its "
        "start, which then count twice; every batch weighs the same. AuralSAM2 reads S4/MS3 from the "
        "AVSBench-semantic tree (v1s/v1m, its own metadata order); avseg reads the chosen layout, so the padding "
        "duplicates the first clips of avseg's order (unverified against theirs)."
    ),
)

AURALSAM2_REFAVS = EvalProtocol(
    name="AuralSAM2 Ref-AVS (4 GPUs)",
    preset="auralsam2_compat",
    group="ddp:4:4",
    reader_options={"keep_duplicate_rows": True},
    source=(
        "yyliu01/AuralSAM2 ref-avs.code/main.py::_test_loader and inference.py (DistributedSampler(shuffle=False), "
        "DataLoader(batch_size=4)); trainer/train.py::Trainer.valid and valid_null (all_gather_object of each "
        "rank's running sums); dataloader/dataset.py::AV.organise_files (every CSV row); docs/before_start.md: "
        "4 GPUs by default"
    ),
    notes=(
        "4 expressions per GPU and batch, 4 GPUs: J and F are means over every batch of every rank, the null S is "
        "sum fg / sum pixels over every batch (no sqrt), all including the expressions the sampler repeats."
    ),
)


DAVIS2017_SEMI = EvalProtocol(
    name="DAVIS 2017 semi-supervised",
    preset="davis_semi",
    group="video",
    source=(
        "davisvideochallenge/davis2017-evaluation evaluation_method.py --task semi-supervised and "
        "davis2017/evaluation.py::DAVISEvaluation.evaluate (all_gt_masks[:, 1:-1]: first and last frame not "
        "scored; J and boundary F per object, J&F = (mean J + mean F) / 2 over objects); facebookresearch/sam2 "
        "tools/vos_inference.py (the first annotated frame's mask is the prompt) and sav_dataset/utils/"
        "sav_benchmark.py (skip_first_and_last=True)"
    ),
    notes=(
        "One object per item, prompted on its first annotated frame; the conditioning and last frames are not "
        "scored, nor frames before an object's first frame. Items are independent, so batching does not change "
        "the score."
    ),
)


def protocol_table(**by_benchmark: EvalProtocol) -> Mapping[str, EvalProtocol]:
    """A read-only ``{benchmark: protocol}`` table, as model classes declare it in ``official_protocols``.

    Example:
        >>> sorted(protocol_table(s4=AVSBENCH_TEST_SH, ms3=AVSBENCH_TEST_SH))
        ['ms3', 's4']
    """
    return MappingProxyType(dict(by_benchmark))


def default_protocol(preset: str, *, text: bool) -> EvalProtocol:
    """avseg's batch-independent protocol: ``preset`` with one group per expression (``text``) or per video.

    Duplicate metadata rows are read once. The ground truth is the one the preset names.

    Example:
        >>> default_protocol("refavs", text=True).group
        'expression'
    """
    return EvalProtocol(
        name="default",
        preset=preset,
        group="expression" if text else "video",
        source="avseg",
        notes="One group per expression or video: the score does not depend on any batch size or GPU count.",
    )


def official_protocol(model: Any, benchmark: str) -> EvalProtocol:
    """The protocol the model's class declares for ``benchmark`` (``official_protocols``).

    Args:
        model: an :class:`~avseg.models.base.AVSModel` (or its class).
        benchmark: a benchmark name (``s4``, ``ms3``, ``avss``, ``refavs``, ``rvos``).

    Raises:
        UsageError: no protocol is declared; the message lists the benchmarks that have one.
    """
    declared: Mapping[str, EvalProtocol] = getattr(model, "official_protocols", {}) or {}
    family = getattr(model, "family", type(model).__name__)
    if benchmark not in declared:
        exists = ", ".join(sorted(declared)) or "none"
        raise UsageError(
            f"--protocol official: no published evaluation protocol for {family} on {benchmark} (official protocols "
            f"of {family}: {exists}); use --protocol default"
        )
    return declared[benchmark]
