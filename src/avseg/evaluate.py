"""The evaluation engine: run any registered model over a split and score it with a named metric preset.

``evaluate_split`` drives one split: it batches the reader's samples, runs the model under ``torch.no_grad``, feeds a
:class:`~avseg.metrics.accumulator.MetricAccumulator`, and returns an :class:`EvalResult` with the split metrics, the
metrics of each modality subset (SynthAV records which cues an expression needs, so the audio-dependent expressions
can be scored apart), and per-expression / per-video values. ``audio="shuffle"`` (or ``silence``, ``noise:SNR_DB``,
``offset:SECONDS``; :mod:`avseg.audio.variants`) changes every soundtrack first: the gap between the true and the
changed score (:func:`audio_drops`) shows whether a model listens.

``evaluate`` (the ``avseg eval`` command) runs several splits and writes a JSON file and a markdown table; for
Ref-AVS it adds the paper's summary rows (Seen = test_s, Unseen = test_u, Mix = their mean, Null = S on test_n).

ReVOS: when the items carry their video's foreground (``meta["foreground"]``, which the RVOS reader reads from a
split's ``mask_dict_foreground.json``), each item also gets ReVOS's accuracy ``A`` and robustness ``R``
(:mod:`avseg.metrics.revos`), the means over the frames J scores of the per-frame values on the prediction binarised as
J binarises it, and the split's metrics get ``revos``: the summary of VISA's ``eval_revos.py`` (referring, reason and
overall rows of J, F, A, R, JF; :func:`~avseg.metrics.revos.revos_scores`). As in ``eval_revos.py`` they are scored at
the ground truth's resolution on disk, so only a binary preset that scores there without a fixed resize gives them
(``davis``, the RVOS default); with another one ``settings["revos_not_scored"]`` says why they are missing.

Evaluation resolution: the model sees frames at its configured ``image_size``. The ground truth is the one the metric
preset names (``gt_source``): ``"native"`` presets score against the masks at their resolution on disk, read as the
official loader reads them (the reader's ``native_masks``), ``"input"`` presets against the masks at the model's input
size. The logits are resized to that ground truth (bilinear), then the preset's fixed size applies (``refavs``: both
to 256x256, the ground truth bilinearly then ``> 0``, as the official Ref-AVS loader does). ``settings["gt_source"]``
and ``settings["gt_resolution"]`` record where the ground truth came from and its size, ``settings["resolution"]``
the size it was scored at.

Protocols: ``evaluate_command`` (``avseg eval``) scores with an :class:`~avseg.metrics.protocols.EvalProtocol`. The
default one is batch-independent (one group per video or expression); ``--protocol official`` reproduces the
grouping and reading options of the script behind the model's published numbers. Every result records the protocol.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from avseg.audio.variants import (
    TRUE_AUDIO,
    AudioShuffleWarning,
    AudioVariant,
    AudioVariantDataset,
    audio_donors,
    parse_audio_variant,
    parse_audio_variants,
    shuffled_donors,
)
from avseg.checkpoint import read_training_data
from avseg.data.base import AVSDataset
from avseg.data.benchmarks import (
    FORMAT_READERS,
    DatasetFormat,
    benchmarks_of_format,
    default_metric_preset,
    format_has_text,
)
from avseg.data.types import collate
from avseg.device import resolve_device
from avseg.errors import ShapeError, UsageError
from avseg.fileio import atomic_write_text, check_output_dir, check_output_file
from avseg.metrics.accumulator import MetricAccumulator, scored_frames
from avseg.metrics.binary import binarize, resize_logits
from avseg.metrics.presets import MetricPreset, get_preset
from avseg.metrics.protocols import EvalProtocol, ProtocolKind, default_protocol, official_protocol
from avseg.metrics.revos import r2vos_accuracy, r2vos_robustness, revos_scores
from avseg.progress import Progress

__all__ = [
    "AudioShuffleWarning",
    "AudioShuffledDataset",
    "EvalResult",
    "audio_drops",
    "evaluate_split",
    "format_audio_markdown",
    "format_markdown",
    "markdown_path",
    "per_video_means",
    "results_json",
    "results_report",
    "shuffled_donors",
]


class AudioShuffledDataset(AudioVariantDataset):
    """``dataset`` under the ``shuffle`` soundtrack variant (:class:`~avseg.audio.variants.AudioVariantDataset`):
    sample ``i`` carries the soundtrack of sample :attr:`permutation` ``[i]``, from another video whenever no video
    holds more than half of the samples (:func:`~avseg.audio.variants.shuffled_donors`)."""

    def __init__(self, dataset: AVSDataset, seed: int = 0) -> None:
        super().__init__(dataset, "shuffle", seed)


@dataclass
class EvalResult:
    """Scores of one split.

    Attributes:
        split: split name.
        metrics: the accumulator's result over all items (``J``, ``F``, ``J&F``, ``S``, batch-independent variants,
            ``counts``, ``settings``), without the per-video list; for items with their video's foreground (ReVOS),
            also ``revos``: ``{"referring" | "reason" | "overall": {"J", "F", "A", "R", "JF"}}``
            (:func:`~avseg.metrics.revos.revos_scores`).
        subsets: the same metrics per modality subset, when the dataset records modalities: ``audio`` (every
            expression that needs audio), ``no_audio``, and ``cues:audio``, ``cues:visual``, ``cues:audio+visual``.
        items: per expression, clip or object (VOS): ids, modalities, ``J``, ``F``, ``S``, frames scored; with the
            video's foreground (ReVOS) also ``A``, ``R`` and the expression's ``type_id``.
        videos: per video, the mean ``J``, ``F`` and ``J&F`` of its items (for VOS, of its objects, as DAVIS reports
            a sequence), over the items with a score.
        settings: preset, grouping, resolution, thresholds, audio variant, model and data facts.
    """

    split: str
    metrics: dict[str, Any]
    subsets: dict[str, dict[str, Any]] = field(default_factory=dict)
    items: list[dict[str, Any]] = field(default_factory=list)
    videos: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def summary(self) -> dict[str, float]:
        """The headline numbers: ``J``, ``F``, ``J&F``, ``S`` and ``J&F`` of each subset (``J&F[audio]``)."""
        out = {k: self.metrics[k] for k in ("J", "F", "J&F", "S") if k in self.metrics}
        for name, sub in self.subsets.items():
            out[f"J&F[{name}]"] = sub["J&F"]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "summary": self.summary,
            "metrics": self.metrics,
            "subsets": self.subsets,
            "items": self.items,
            "videos": self.videos,
            "settings": self.settings,
        }


def _subset_keys(modalities: tuple[str, ...]) -> list[str]:
    """Subsets an expression belongs to: ``audio`` (needs audio) or ``no_audio``, and ``cues:<modalities>``."""
    if not modalities:
        return []
    return ["audio" if "audio" in modalities else "no_audio", "cues:" + "+".join(sorted(modalities))]


def _strip(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k != "per_video"}


def per_video_means(items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per video (in order of first appearance), the mean ``J`` and ``F`` of its items that have a score, and
    ``J&F = (J + F) / 2``; a video none of whose items has a score gets NaN.

    Example:
        >>> items = [{"video_id": "a", "J": 0.5, "F": 1.0}, {"video_id": "a", "J": 1.0, "F": 0.0}]
        >>> per_video_means(items)
        [{'video_id': 'a', 'items': 2, 'J': 0.75, 'F': 0.5, 'J&F': 0.625}]
    """
    by_video: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for item in items:
        by_video[item["video_id"]].append(item)
    out = []
    for video, members in by_video.items():
        means = {}
        for key in ("J", "F"):
            values = [float(m[key]) for m in members if key in m and not np.isnan(m[key])]
            means[key] = float(np.mean(values)) if values else float("nan")
        out.append({"video_id": video, "items": len(members), **means, "J&F": (means["J"] + means["F"]) / 2})
    return out


def _check_reader_options(dataset: Dataset, protocol: EvalProtocol) -> None:
    """Refuse a dataset whose reader was built without an option the protocol needs (e.g. duplicate rows kept):
    its items, and so its groups, would differ from the official ones."""
    reader = getattr(dataset, "reader", None)
    for option, wanted in protocol.reader_options.items():
        if reader is not None and hasattr(reader, option) and getattr(reader, option) != wanted:
            raise UsageError(
                f"protocol {protocol.name!r} reads the data with {option}={wanted!r}, but the dataset's reader has "
                f"{option}={getattr(reader, option)!r}; build it with get_reader(format, root, {option}={wanted!r})"
            )


def _revos_unscorable(metric: MetricPreset) -> str | None:
    """Why ``metric`` cannot give ReVOS's A and R, or None when it can: they are scored on binary masks at the ground
    truth's resolution on disk (``eval_revos.py``), where the video's foreground is."""
    if metric.task == "binary" and metric.gt_source == "native" and metric.resize is None:
        return None
    return (
        f"metric preset {metric.name!r} does not score binary masks at the ground truth's resolution on disk, where "
        "ReVOS's A and R are scored (eval_revos.py); use a preset that does, such as 'davis'"
    )


def _revos_item(
    item_id: str,
    logits: torch.Tensor,
    truth: torch.Tensor,
    foreground: torch.Tensor,
    scored: torch.Tensor,
    metric: MetricPreset,
) -> tuple[float, float]:
    """ReVOS's A and R of one item: the means over its scored frames of the per-frame values, on the prediction
    binarised as the accumulator binarises it for J (logits resized bilinearly to the ground truth, then
    ``sigmoid > threshold``).

    Args:
        item_id: the item, for messages.
        logits: ``(T, h, w)`` mask logits.
        truth: ``(T, H0, W0)`` ground truth at its resolution on disk.
        foreground: ``(T', H0, W0)`` the video's object count per pixel on the item's ``T' <= T`` real frames.
        scored: ``(T,)`` bool, the frames J scores.

    Returns:
        ``(A, R)``; NaN for an item without a scored frame.
    """
    same_grid = foreground.dim() == 3 and tuple(foreground.shape[-2:]) == tuple(truth.shape[-2:])
    if not same_grid or bool(scored[foreground.shape[0] :].any()):
        raise ShapeError(
            f"item {item_id!r}: meta['foreground'] must be (T, H0, W0) over the item's scored frames at the ground "
            f"truth's size {tuple(truth.shape[-2:])}, got {tuple(foreground.shape)}"
        )
    frames = torch.nonzero(scored.cpu()).flatten()
    if not len(frames):
        return float("nan"), float("nan")
    size = (int(truth.shape[-2]), int(truth.shape[-1]))
    pred = binarize(resize_logits(logits[frames.to(logits.device)], size), threshold=metric.threshold)
    gt = truth.to(pred.device)[frames.to(pred.device)] > 0
    fg = foreground.to(pred.device)[frames.to(pred.device)]
    return float(r2vos_accuracy(gt, pred).mean()), float(r2vos_robustness(gt, pred, fg).mean())


def _native_masks(batch: Any, metric: MetricPreset) -> list[torch.Tensor]:
    """The per-item native ground truth ``(T, H0, W0)`` of a batch, for a preset that scores against it."""
    native = batch.native_masks
    if native is None or any(m is None for m in native):
        raise UsageError(
            f"metric preset {metric.name!r} scores against the ground truth at its resolution on disk, but the "
            "dataset carries none: build the reader with native_masks=True (get_reader(format, root, "
            "native_masks=True)), or use a preset whose gt_source is 'input'"
        )
    return native


@torch.no_grad()
def evaluate_split(
    model: torch.nn.Module,
    dataset: AVSDataset,
    *,
    preset: str | MetricPreset | None = None,
    group: str | None = None,
    protocol: EvalProtocol | None = None,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    audio: AudioVariant | str = TRUE_AUDIO,
    audio_seed: int = 0,
    on_batch: Callable[[Any, Any], None] | None = None,
    progress: bool = True,
    split: str | None = None,
) -> EvalResult:
    """Run ``model`` over ``dataset`` and score it.

    The ground truth is the one the preset names: a ``"native"`` preset needs a reader built with
    ``native_masks=True`` and scores each item at its own resolution on disk; an ``"input"`` preset scores the masks
    at the model's input size.

    Args:
        model: an :class:`~avseg.models.base.AVSModel`.
        dataset: a reader's dataset for one split (``reader.dataset(split)``).
        preset: metric preset name or :class:`~avseg.metrics.presets.MetricPreset`
            (:func:`avseg.data.benchmarks.default_metric_preset` gives a format's official one); None with a
            ``protocol``.
        group: grouping override (``video``, ``batch:K``, ``ddp:R:K``); None keeps the preset's (or the protocol's).
        protocol: an evaluation protocol (:mod:`avseg.metrics.protocols`), giving the preset and grouping (then
            ``preset`` and ``group`` stay None); its reader options are checked against the dataset's reader.
        batch_size: inference batch size. It does not change the scores (grouping is the metric's, not the loader's),
            except for a model whose predictions depend on their batch mates: EEMC with its released token layout,
            evaluated with batches of 4 as released.
        device: where the model runs (``auto``, ``cpu``, ``cuda``, ``cuda:N`` or a ``torch.device``).
        num_workers: DataLoader workers.
        audio: the soundtrack variant every item is scored with (``true``, ``shuffle``, ``silence``,
            ``noise:SNR_DB``, ``offset:SECONDS``; see :mod:`avseg.audio.variants`); items without audio are left as
            they are, and ``settings["items_without_audio"]`` counts them.
        audio_seed: seed of the shuffle and of the noise.
        on_batch: called with ``(batch, output)`` after each batch (used to save masks and overlays).
        progress: show the progress on stderr (:class:`~avseg.progress.Progress`): the items of the split done, their
            rate and the ETA, as a bar on a terminal, else as a line at most every 15 s.
        split: the split name used in messages and in the result (default: the split of the dataset's records).

    ReVOS: when the items carry their video's foreground (``meta["foreground"]``, the RVOS reader's for a split with
    ``mask_dict_foreground.json``), each item gets ``A`` and ``R`` and ``metrics["revos"]`` the ReVOS summary (module
    docstring); a preset that does not score at the ground truth's resolution on disk gives neither, and
    ``settings["revos_not_scored"]`` says so.

    Raises:
        UsageError: when the split has no labelled frame to score (no items, or none with a ground-truth mask), when
            a native preset gets no native masks, when preset and protocol are both given or neither is, when the
            preset's task (binary or semantic) does not fit the model's outputs, or when some items carry their
            video's foreground and others do not.
    """
    if protocol is not None:
        if preset is not None or group is not None:
            raise UsageError(f"evaluate_split: protocol {protocol.name!r} sets the preset and grouping; pass neither")
        _check_reader_options(dataset, protocol)
        preset, group = protocol.preset, protocol.group
    elif preset is None:
        raise UsageError("evaluate_split: give a metric preset or an evaluation protocol")
    metric = get_preset(preset)
    binary = getattr(model, "num_mask_channels", 1) == 1
    if binary != (metric.task == "binary"):
        channels = getattr(model, "num_mask_channels", 1)
        raise UsageError(
            f"metric preset {metric.name!r} is for {metric.task} masks but the model predicts {channels} mask "
            "channel(s)"
        )
    variant = audio if isinstance(audio, AudioVariant) else parse_audio_variant(audio, arg="audio")
    device = resolve_device(device, arg="device")
    split_name = split if split is not None else (dataset.records[0].split if dataset.records else "")
    source: Dataset = dataset if variant == TRUE_AUDIO else AudioVariantDataset(dataset, variant, audio_seed)
    was_training = model.training
    model.eval().to(device)
    loader = DataLoader(source, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate)
    overall = MetricAccumulator(metric, group=group)
    subsets: dict[str, MetricAccumulator] = {}
    items: list[dict[str, Any]] = []
    # ReVOS: per item, (A, R, type_id) when it carries its video's foreground, else None.
    revos: list[tuple[float, float, int | None] | None] = []
    revos_reason = _revos_unscorable(metric)
    labelled = without_audio = 0
    desc = f"eval {split_name}".rstrip() + ("" if variant == TRUE_AUDIO else f" audio={variant.spec}")
    bar = Progress(desc, len(source), "item", enabled=progress)
    try:
        for batch in loader:
            batch = batch.to(device)
            output = model(batch)
            logits = output.mask_logits[:, :, 0] if binary else output.mask_logits  # (B, T, H, W) | (B, T, K, H, W)
            logits = logits.float()
            ids = [u or v for u, v in zip(batch.uid, batch.video_id)]
            valid, frame_valid = batch.label_valid, batch.frame_valid
            # Semi-supervised VOS: the frame each object is given on; earlier frames are not scored.
            first = [int(m.get("first_frame", 0)) for m in batch.meta]
            labelled += int(valid.sum())
            without_audio += int((~batch.has_audio).sum())
            if metric.gt_source == "native":
                # Items differ in native size: one update each (groups span updates).
                truth = [m[None] for m in _native_masks(batch, metric)]  # B x (1, T, H0, W0)
            else:
                truth = [batch.masks[i : i + 1] for i in range(batch.batch_size)]  # B x (1, T, H, W)
                overall.update(logits, batch.masks, valid=valid, frame_valid=frame_valid, ids=ids, first_frame=first)
            for i, mods in enumerate(batch.modalities):
                one = {
                    "valid": valid[i : i + 1],
                    "frame_valid": frame_valid[i : i + 1],
                    "ids": ids[i : i + 1],
                    "first_frame": first[i : i + 1],
                }
                if metric.gt_source == "native":
                    overall.update(logits[i : i + 1], truth[i], **one)
                # The item as `overall` scored it: last for native ground truth, else i-th of this batch's B.
                scored_at = -1 if metric.gt_source == "native" else i - batch.batch_size
                for key in _subset_keys(mods):
                    acc = subsets.setdefault(key, MetricAccumulator(metric, group=group))
                    acc.add_scored(overall, scored_at)
                items.append(
                    {
                        "id": ids[i],
                        "video_id": batch.video_id[i],
                        "uid": batch.uid[i],
                        "text": batch.text[i],
                        "is_null": bool(batch.is_null[i]),
                        "modalities": list(mods),
                    }
                )
                foreground = batch.meta[i].get("foreground")
                if foreground is None:
                    revos.append(None)
                elif revos_reason is not None:
                    revos.append((float("nan"), float("nan"), batch.meta[i].get("type_id")))
                else:
                    skip_end = metric.skip_end_frames
                    scored = scored_frames(valid[i : i + 1].cpu(), first[i : i + 1], skip_end_frames=skip_end)[0]
                    a, r = _revos_item(ids[i], logits[i], truth[i][0], foreground, scored, metric)
                    revos.append((a, r, batch.meta[i].get("type_id")))
            if on_batch is not None:
                on_batch(batch, output)
            bar.update(batch.batch_size)
    finally:
        bar.close()
        if was_training:
            model.train()
    if not labelled:
        what = f"{len(items)} item(s), none with a ground-truth mask" if items else "the split has no items"
        raise UsageError(f"no labelled frames to score in split {split_name!r} ({what})")
    with_foreground = sum(x is not None for x in revos)
    if with_foreground not in (0, len(items)):
        raise UsageError(
            f"split {split_name!r}: {with_foreground} of {len(items)} items carry their video's foreground "
            "(meta['foreground'], read from the split's mask_dict_foreground.json) and the others do not; ReVOS's A "
            "and R need it for every item: give it to all of them or to none"
        )
    result = overall.compute()
    if metric.task == "binary" and not result["counts"]["frames"]:
        counts = result["counts"]
        raise UsageError(
            f"no frames left to score in split {split_name!r}: metric preset {metric.name!r} leaves out "
            f"{counts['unscored_frames']} labelled frame(s) (before each item's first frame"
            f"{', and its first and last scored frame' if metric.skip_end_frames else ''}) and none remain"
        )
    for item, scores in zip(items, result["per_video"]):
        item.update({k: scores[k] for k in ("J", "F", "S", "frames") if k in scores})
    metrics = _strip(result)
    settings = dict(result["settings"])
    settings.update(
        {
            "audio": variant.spec,
            "audio_seed": audio_seed if variant.kind in ("shuffle", "noise") else None,
            "audio_shuffle_same_video": source.same_video if variant.kind == "shuffle" else None,  # type: ignore[attr-defined]
            "items_without_audio": without_audio,
            "gt_source": _GT_SOURCES[metric.gt_source],
            "num_items": len(items),
            "protocol": protocol.to_dict() if protocol is not None else None,
        }
    )
    if with_foreground and revos_reason is not None:
        settings["revos_not_scored"] = f"ReVOS's A and R: {revos_reason}"
    elif with_foreground:
        for item, (a, r, type_id) in zip(items, [x for x in revos if x is not None]):
            item.update({"A": a, "R": r, "type_id": type_id})
        columns = {key: [item[key] for item in items] for key in ("J", "F", "A", "R", "type_id")}
        metrics["revos"] = revos_scores(columns["J"], columns["F"], columns["A"], columns["R"], columns["type_id"])
    return EvalResult(
        split=split_name,
        metrics=metrics,
        subsets={k: _strip(acc.compute()) for k, acc in sorted(subsets.items())},
        items=items,
        videos=per_video_means(items),
        settings=settings,
    )


_GT_SOURCES = {
    "native": "native: the reader's native_masks, at the resolution on disk",
    "input": "input: the reader's masks, at the model's input size",
}


def _fmt(x: Any) -> str:
    return "—" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.4f}"


def refavs_summary(results: dict[str, EvalResult]) -> dict[str, dict[str, float]]:
    """The Ref-AVS paper rows from per-split results: Seen (test_s), Unseen (test_u), Mix (their mean), Null S."""
    rows: dict[str, dict[str, float]] = {}
    for name, split in (("Seen", "test_s"), ("Unseen", "test_u")):
        if split in results:
            m = results[split].metrics
            rows[name] = {"J": m["J"], "F": m["F"], "J&F": m["J&F"]}
    if "Seen" in rows and "Unseen" in rows:
        rows["Mix"] = {k: (rows["Seen"][k] + rows["Unseen"][k]) / 2 for k in ("J", "F", "J&F")}
    if "test_n" in results:
        rows["Null"] = {"S": results["test_n"].metrics["S"]}
    return rows


def format_markdown(
    results: dict[str, EvalResult],
    title: str = "Evaluation",
    *,
    refavs_rows: bool = True,
    reference: dict[str, EvalResult] | None = None,
    footer: bool = True,
) -> str:
    """A markdown table: one row per split (and per modality subset), then the Ref-AVS summary rows if any
    (``refavs_rows=False`` leaves them out: other layouts may name their splits test_s / test_u too). With
    ``reference`` (per split, e.g. the scores with the true soundtracks), a ``drop`` column gives each row's
    ``J&F(reference) - J&F`` (:func:`audio_drops`). ``footer=False`` leaves out the protocol and metric lines."""
    head, rule = "| split | subset | items | J | F | J&F | S |", "|---|---|---|---|---|---|---|"
    if reference is not None:
        head, rule = head + " drop |", rule + "---|"
    lines = [f"## {title}", "", head, rule]
    for split, res in results.items():
        drops = audio_drops(reference[split], res) if reference is not None and split in reference else {}
        tail = {name: "" if reference is None else f" {_fmt(drops.get(name))} |" for name in ("all", *res.subsets)}
        m = res.metrics
        lines.append(
            f"| {split} | all | {len(res.items)} | {_fmt(m['J'])} | {_fmt(m['F'])} | {_fmt(m['J&F'])} | "
            f"{_fmt(m.get('S'))} |{tail['all']}"
        )
        for name, sub in res.subsets.items():
            n = sub["counts"]["videos"]
            lines.append(
                f"| {split} | {name} | {n} | {_fmt(sub['J'])} | {_fmt(sub['F'])} | {_fmt(sub['J&F'])} | "
                f"{_fmt(sub.get('S'))} |{tail[name]}"
            )
    rows = refavs_summary(results) if refavs_rows else {}
    if rows:
        lines += ["", "| Ref-AVS | J | F | J&F | Null S |", "|---|---|---|---|---|"]
        for name, row in rows.items():
            lines.append(
                f"| {name} | {_fmt(row.get('J'))} | {_fmt(row.get('F'))} | {_fmt(row.get('J&F'))} | "
                f"{_fmt(row.get('S'))} |"
            )
    revos = {split: res.metrics["revos"] for split, res in results.items() if "revos" in res.metrics}
    if revos:
        lines += ["", "| split | ReVOS | J | F | J&F | A | R |", "|---|---|---|---|---|---|---|"]
        for split, groups in revos.items():
            for name, row in groups.items():
                lines.append(
                    f"| {split} | {name} | {_fmt(row['J'])} | {_fmt(row['F'])} | {_fmt(row['JF'])} | "
                    f"{_fmt(row['A'])} | {_fmt(row['R'])} |"
                )
        lines += [
            "",
            "ReVOS rows as eval_revos.py reports them: each expression's scores rounded to 0.01 %, averaged per "
            "type (referring, reason), overall = the mean of the two.",
        ]
    if any("revos_not_scored" in res.settings for res in results.values()):
        lines += [""] + [
            f"{split}: {res.settings['revos_not_scored']}."
            for split, res in results.items()
            if "revos_not_scored" in res.settings
        ]
    if results and footer:
        s = next(iter(results.values())).settings
        protocol = s.get("protocol") or {}
        lines += [""]
        if protocol:
            options = ", ".join(f"{k}={v}" for k, v in protocol.get("reader_options", {}).items()) or "none"
            lines.append(
                f"Protocol `{protocol.get('kind', protocol.get('name'))}` ({protocol.get('name')}; source: "
                f"{protocol.get('source')}; reader options: {options})."
            )
        lines.append(
            f"Metric preset `{s.get('preset')}`, grouping `{s.get('group')}`, ground truth {s.get('gt_source')} "
            f"({s.get('gt_resolution')}), scored at {s.get('resolution')}, threshold {s.get('threshold', 'argmax')}."
        )
    return "\n".join(lines) + "\n"


def audio_drops(true: EvalResult, changed: EvalResult) -> dict[str, float]:
    """``J&F(true) - J&F(changed)``: the J&F a model loses when its soundtracks change, over all items (``all``) and
    on each subset both results have (``audio``: the expressions that need the audio, ``cues:audio``: those only the
    audio resolves, ...). NaN where a J&F is NaN (e.g. a split of null expressions).

    Example:
        >>> true = EvalResult("s", {"J&F": 0.75}, {"audio": {"J&F": 0.5}})
        >>> audio_drops(true, EvalResult("s", {"J&F": 0.5}, {"audio": {"J&F": 0.125}}))
        {'all': 0.25, 'audio': 0.375}
    """
    out = {"all": float(true.metrics["J&F"]) - float(changed.metrics["J&F"])}
    for name, sub in true.subsets.items():
        if name in changed.subsets:
            out[name] = float(sub["J&F"]) - float(changed.subsets[name]["J&F"])
    return out


def format_audio_markdown(by_variant: dict[str, dict[str, EvalResult]], *, refavs_rows: bool = True) -> str:
    """The audio-robustness tables of ``avseg eval --audio``: for each variant other than ``true``, its scores with a
    ``drop`` column (:func:`format_markdown`), then one summary table of J&F and drop per variant.

    Args:
        by_variant: per split, per variant spec (``true`` first), the split's result.
        refavs_rows: add the Ref-AVS summary rows to each variant's table.
    """
    splits = list(by_variant)
    specs = list(dict.fromkeys(spec for split in splits for spec in by_variant[split]))
    true = {split: by_variant[split]["true"] for split in splits}
    blocks = []
    for spec in specs[1:]:
        changed = {split: by_variant[split][spec] for split in splits}
        blocks.append(
            format_markdown(
                changed, title=f"Audio {spec}", refavs_rows=refavs_rows, reference=true, footer=False
            ).rstrip("\n")
        )
    head = "| split | subset | items | J&F true |" + "".join(f" J&F {s} | drop {s} |" for s in specs[1:])
    lines = ["## Does the model listen? (drop = J&F(true) - J&F(variant))", "", head, "|---" * head.count(" |") + "|"]
    for split in splits:
        t = true[split]
        for name in ("all", *t.subsets):
            m = t.metrics if name == "all" else t.subsets[name]
            n = len(t.items) if name == "all" else m["counts"]["videos"]
            row = f"| {split} | {name} | {n} | {_fmt(m['J&F'])} |"
            for spec in specs[1:]:
                res = by_variant[split][spec]
                other = res.metrics if name == "all" else res.subsets.get(name, {})
                row += f" {_fmt(other.get('J&F'))} | {_fmt(audio_drops(t, res).get(name))} |"
            lines.append(row)
    without = ", ".join(f"{split} {true[split].settings.get('items_without_audio', 0)}" for split in splits)
    lines += ["", f"Items without a soundtrack, left as they are under every variant: {without}."]
    seeds = {r.settings.get("audio_seed") for per in by_variant.values() for r in per.values()} - {None}
    if seeds:
        lines.append(f"Seed of the shuffle and the noise: {', '.join(map(str, sorted(seeds)))}.")
    return "\n\n".join([*blocks, "\n".join(lines)]) + "\n"


def audio_report(by_variant: dict[str, dict[str, EvalResult]], seed: int) -> dict[str, Any]:
    """The ``audio`` section of the ``--json-out`` report: the variants, their seed, per split and variant the
    summary, metrics, subsets and settings, the drops against ``true`` (:func:`audio_drops`) and the items left
    unchanged for want of a soundtrack."""
    specs = list(dict.fromkeys(spec for per in by_variant.values() for spec in per))
    return {
        "variants": specs,
        "seed": seed,
        "splits": {
            split: {
                spec: {"summary": r.summary, "metrics": r.metrics, "subsets": r.subsets, "settings": r.settings}
                for spec, r in per.items()
            }
            for split, per in by_variant.items()
        },
        "drops": {
            split: {spec: audio_drops(per["true"], r) for spec, r in per.items() if spec != "true"}
            for split, per in by_variant.items()
        },
        "items_without_audio": {
            split: per["true"].settings["items_without_audio"] for split, per in by_variant.items()
        },
    }


def markdown_path(json_path: Path, *, arg: str = "--json-out") -> Path:
    """The markdown table written beside a JSON report: ``r.json`` → ``r.md``.

    Raises:
        UsageError: when ``json_path`` does not end in ``.json`` (then the two files could share one name, e.g.
            ``results.md``, and the table would replace the JSON).
    """
    json_path = Path(json_path)
    if json_path.suffix.lower() != ".json":
        raise UsageError(
            f"{arg} {json_path}: must end in .json (the markdown table is written beside it, with .md in place of "
            ".json)"
        )
    return json_path.with_suffix(".md")


def results_report(
    results: dict[str, EvalResult],
    extra: dict[str, Any] | None = None,
    *,
    refavs_rows: bool = True,
    audio: dict[str, dict[str, EvalResult]] | None = None,
    audio_seed: int = 0,
) -> dict[str, Any]:
    """The full results of an evaluation, as ``avseg eval --json`` prints them and ``--json-out`` writes them: per
    split :meth:`EvalResult.to_dict` under ``splits``; with ``refavs_rows`` the Ref-AVS summary under ``refavs``
    (:func:`refavs_summary`); with ``audio`` (per split, per variant spec, the results of ``avseg eval --audio``,
    seeded with ``audio_seed``) the ``audio`` section (:func:`audio_report`); then ``extra``."""
    return {
        "splits": {k: v.to_dict() for k, v in results.items()},
        **({"refavs": refavs_summary(results)} if refavs_rows else {}),
        **({"audio": audio_report(audio, audio_seed)} if audio else {}),
        **(extra or {}),
    }


def results_json(report: dict[str, Any]) -> str:
    """A :func:`results_report` as JSON text (NaN, for a metric without frames to score, written as ``NaN``, which
    Python's ``json`` reads back)."""
    return json.dumps(report, indent=2, default=float)


def write_results(
    results: dict[str, EvalResult],
    path: Path,
    extra: dict[str, Any] | None = None,
    *,
    refavs_rows: bool = True,
    audio: dict[str, dict[str, EvalResult]] | None = None,
    audio_seed: int = 0,
) -> Path:
    """Write the JSON report (:func:`results_report`) at ``path`` (which must end in ``.json``) and the markdown
    table beside it (:func:`markdown_path`), each atomically; ``refavs_rows``: include the Ref-AVS summary. ``audio``
    adds the ``audio`` section and the audio tables (:func:`format_audio_markdown`). Returns the table's path.
    """
    path = Path(path)
    table = markdown_path(path)
    payload = results_report(results, extra, refavs_rows=refavs_rows, audio=audio, audio_seed=audio_seed)
    text = format_markdown(results, refavs_rows=refavs_rows)
    if audio:
        text += "\n" + format_audio_markdown(audio, refavs_rows=refavs_rows)
    atomic_write_text(path, results_json(payload))
    atomic_write_text(table, text)
    return table


def split_names(value: Sequence[str]) -> list[str]:
    """Accept ``["test_s", "test_u"]`` or ``["test_s,test_u"]``."""
    return [s for v in value for s in v.split(",") if s]


def _mask_writer(out_dir: Path, split: str, overlays: int, semantic: bool) -> Callable[[Any, Any], None]:
    """An ``on_batch`` callback writing PNG masks at the original resolution, and overlay videos for the first
    ``overlays`` items (frames at 1 fps with the item's soundtrack)."""
    import torch.nn.functional as F

    from avseg.media.image import write_png

    written = {"overlays": 0}

    def on_batch(batch: Any, output: Any) -> None:
        for i in range(batch.batch_size):
            item_id = batch.uid[i] or batch.video_id[i]
            folder = out_dir / split / item_id.replace("/", "_")
            t_real = int(batch.frame_valid[i].sum())
            logits = output.mask_logits[i, :t_real].float()  # (T, K, h, w)
            size = batch.orig_size[i] or tuple(logits.shape[-2:])
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
            if semantic:
                from avseg.data.avss import avss_palette

                labels = logits.argmax(dim=1).to(torch.uint8).cpu().numpy()
                for t in range(t_real):
                    write_png(folder / f"{t:05d}.png", labels[t], palette=avss_palette())
            else:
                masks = (logits[:, 0].sigmoid() > 0.5).cpu().numpy()
                for t in range(t_real):
                    write_png(folder / f"{t:05d}.png", masks[t].astype(np.uint8) * 255)
            if written["overlays"] < overlays:
                from avseg.viz import write_overlay_video

                pred = output.mask_logits[i, :t_real].float()
                pred = pred.argmax(dim=1) if semantic else (pred[:, 0] > 0)
                write_overlay_video(
                    out_dir / split / "overlays" / f"{item_id.replace('/', '_')}.mp4",
                    batch.frames[i, :t_real].cpu(),
                    pred.cpu(),
                    fps=1.0,
                    audio=batch.audio_wave[i].cpu().numpy(),
                )
                written["overlays"] += 1

    return on_batch


def _files_in(*folders: Path) -> list[Path]:
    """The files directly inside ``folders`` (checkpoint, pointer and metadata files no output may replace)."""
    return [p for folder in folders if folder.is_dir() for p in folder.iterdir() if p.is_file()]


def _same_path(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def _benchmark_name(format: str, data: Path, image_size: int | None) -> str:
    """The benchmark a dataset root holds: the format's only one, or the subset its reader finds (avs-object: S4 or
    MS3)."""
    from avseg.data.readers import get_reader

    candidates = benchmarks_of_format(format)
    if len(candidates) == 1:
        return candidates[0].name
    subset = getattr(get_reader(format, data, image_size=image_size), "subset", None)
    names = [b.name for b in candidates]
    if subset not in names:
        raise UsageError(f"--data {data}: cannot tell which of {names} the {format} tree holds")
    return str(subset)


def evaluate_command(
    *,
    checkpoint: Path,
    data: Path,
    format: DatasetFormat = "refavs",
    split: str = "test_s",
    protocol: ProtocolKind = "default",
    preset: str | None = None,
    group: str | None = None,
    batch_size: int = 4,
    device: str = "auto",
    image_size: int | None = None,
    pointer: Literal["best", "latest"] = "best",
    save_masks: Path | None = None,
    overlays: int = 0,
    json_out: Path | None = None,
    audio: Sequence[str] | None = None,
    audio_seed: int = 0,
    vos_prompt: Literal["mask", "box", "points"] | None = None,
    answer_mode: Literal["read", "generate"] | None = None,
    num_workers: int = 0,
    quiet: bool = False,
    json: bool = False,
) -> int:
    """Evaluate a checkpoint on one or more splits of a benchmark and print a table.

    Writes per-expression, per-video and per-split metrics (for Ref-AVS also Seen, Unseen, Mix and Null S; for
    SynthAV also the audio-dependent subset) as JSON plus a markdown table beside it when --json-out is given, and
    PNG masks and overlay videos when --save-masks is given. The default protocol scores each video or expression as
    its own group (batch-independent); --protocol official reproduces the grouping, reading options and ground truth
    of the official script behind the model family's published numbers. Both files record the protocol. Output
    paths and the device are checked before anything is loaded. A checkpoint that needs a referring expression (a
    Ref-AVS or RVOS model) is refused on data without text (avs-object, avss). Each split (and soundtrack variant)
    shows its progress on stderr: items done, items/s and the ETA.

    Semi-supervised VOS (--format vos, DAVIS 2017 / YouTube-VOS layouts): a promptable model (sam2-*) is given each
    object on its first annotated frame (--vos-prompt: its ground-truth mask, box or clicks) and tracks it; J and
    boundary F are scored per object without that frame and the last one (davis_semi, as davis2017-evaluation's
    semi-supervised task does), J&F = (mean J + mean F) / 2 over objects, and the JSON lists every object and the
    mean of each video's objects.

    ReVOS (--format rvos on a split folder with mask_dict_foreground.json linked in beside mask_dict.json): each
    expression also gets ReVOS's accuracy A and robustness R, and the table and the JSON (metrics.revos) the
    referring, reason and overall rows of J, F, J&F, A and R as ReVOS's evaluation script reports them.

    Args:
        checkpoint: a checkpoint folder, or a training run folder (then --pointer chooses best or latest).
        data: the dataset root.
        format: the benchmark layout of --data.
        split: split name(s), comma-separated (e.g. test_s,test_u,test_n).
        protocol: default (one group per video or expression, duplicate metadata rows read once) or official (the
            preset, grouping and reading options of the script behind the model family's published numbers, e.g.
            batches of 4 for TPAVI on S4; refused for a model and benchmark without one).
        preset: metric preset of the default protocol (default: the benchmark's official one: refavs, avsbench, avss,
            davis).
        group: grouping of the default protocol: video, expression, batch:K or ddp:R:K (the official F depends on
            it).
        batch_size: inference batch size; the scores do not depend on it, except for EEMC with its released token
            layout, whose predictions depend on their batch mates (evaluate it with 4, as released).
        device: auto, cpu, cuda, cuda:1, ...
        image_size: model input size (default: the model config's image_size).
        pointer: which checkpoint of a run folder to evaluate.
        save_masks: folder for PNG masks (original resolution) and overlay videos.
        overlays: number of overlay videos per split (needs --save-masks).
        json_out: write the full results to this JSON file, which must end in .json; the markdown table is written
            beside it with .md in place of .json (r.json and r.md).
        audio: soundtrack variants to score (does the model listen?): true, shuffle (each item hears another
            video's soundtrack, each soundtrack used once), silence, noise:SNR_DB (white noise at that SNR),
            offset:SECONDS (the soundtrack that much later, padded with silence); several at once, e.g. --audio true
            shuffle noise:0. Prints and writes J&F per variant and its drop from true (added when missing), over all
            items and on the audio-dependent expressions where the data marks them; items without audio are left as
            they are and counted. See docs/audio-robustness.md.
        audio_seed: seed of the shuffle and of the noise.
        vos_prompt: how a promptable (sam2) model is given each object on its first annotated frame: its
            ground-truth mask, its box, or clicks at the centre of the object and of the errors (default: the
            checkpoint's eval_prompt, mask unless its config says otherwise); recorded in the results.
        answer_mode: how an MLLM segmenter (sa2va-*, svac-*) finds its [SEG] tokens: read them from the answer it
            was trained on, or generate its answer and read the [SEG] tokens it writes, as the released Sa2VA code
            does (frames whose [SEG] it does not write stay empty); default: the checkpoint's (read unless its
            config says otherwise); recorded in the results.
        num_workers: data-loading worker processes.
        quiet: show no progress (warnings, errors and the results are still printed).
        json: print the full results (the content of the --json-out file) as one JSON document on stdout instead of
            the table; the other messages go to stderr.
    """
    from avseg.checkpoint import resolve_checkpoint
    from avseg.data.readers import get_reader
    from avseg.models import load_model
    from avseg.models.base import requires_text, set_answer_mode, set_run_option
    from avseg.predict.prompts import is_promptable

    if overlays and save_masks is None:
        raise UsageError("--overlays needs --save-masks DIR")
    if protocol == "official" and (preset is not None or group is not None):
        given = " and ".join(f"--{name} {value}" for name, value in (("preset", preset), ("group", group)) if value)
        raise UsageError(f"--protocol official fixes the metric preset and grouping; drop {given} or use the default")
    variants = parse_audio_variants(audio) if audio is not None else [TRUE_AUDIO]
    folder = resolve_checkpoint(checkpoint, pointer, fallback="latest" if pointer == "best" else "best")
    # Every output is checked before the model or the data is loaded: a bad path is one line now, not a traceback
    # after the whole evaluation.
    inputs = _files_in(Path(checkpoint), Path(checkpoint) / "checkpoints", folder, Path(data))
    table = None
    if json_out is not None:
        table = markdown_path(json_out)
        check_output_file(json_out, arg="--json-out", inputs=inputs)
        check_output_file(table, arg="--json-out", inputs=inputs)
    if save_masks is not None:
        check_output_dir(save_masks, arg="--save-masks", inputs=[Path(data), folder, Path(checkpoint)])
        for path in (json_out, table):
            if path is not None and _same_path(path, save_masks):
                raise UsageError(f"--json-out {json_out}: {path} is also the --save-masks folder; choose another name")
    torch_device = resolve_device(device)
    model = load_model(folder)
    if vos_prompt is not None:
        only = "is given no first-frame prompt (only promptable VOS models such as sam2-* are)"
        model = set_run_option(model, "--vos-prompt", "eval_prompt", vos_prompt, folder, only=only)
    if answer_mode is not None:
        model = set_answer_mode(model, answer_mode, folder)
    trained = read_training_data(folder)
    reason = requires_text(model, trained.format)
    if reason is not None and not format_has_text(format):
        text_formats = [f for f in FORMAT_READERS if format_has_text(f)]
        raise UsageError(
            f"{folder}: this checkpoint needs a referring expression ({reason}), but --format {format} data has no "
            f"text; evaluate it on {' or '.join(text_formats)} data"
        )
    # Frames are read at the size the model was trained at (its checkpoint records it), unless --image-size says
    # otherwise; a checkpoint that records none falls back to its preset's recipe.
    size = image_size or trained.image_size or (model.recipe.image_size if model.recipe is not None else None)
    num_classes = getattr(model, "num_mask_channels", 1)
    benchmark = _benchmark_name(format, data, size)
    if protocol == "official":
        chosen = official_protocol(model, benchmark)
    else:
        chosen = default_protocol(preset or default_metric_preset(format, num_classes), text=format_has_text(format))
        if group is not None:
            chosen = replace(chosen, group=group)
    options: dict[str, Any] = dict(chosen.reader_options)
    if chosen.native_masks:
        options["native_masks"] = True  # the preset scores against the ground truth at its resolution on disk
    reader = get_reader(format, data, image_size=size, **options)
    datasets = {name: reader.dataset(name) for name in split_names([split])}
    if any(v.kind == "shuffle" for v in variants):
        for name, dataset in datasets.items():  # a split that cannot be shuffled fails now, before any evaluation
            records = dataset.records
            audio_donors([r.video_id for r in records], [r.audio_path is not None for r in records], split=name)
    results: dict[str, EvalResult] = {}
    by_variant: dict[str, dict[str, EvalResult]] = {}
    for split_name, dataset in datasets.items():
        callback = None
        if save_masks is not None:
            callback = _mask_writer(save_masks, split_name, overlays, semantic=num_classes > 1)
        for variant in variants:
            result = evaluate_split(
                model,
                dataset,
                protocol=chosen,
                batch_size=batch_size,
                device=torch_device,
                num_workers=num_workers,
                audio=variant,
                audio_seed=audio_seed,
                on_batch=callback if variant == TRUE_AUDIO else None,  # masks and overlays of the true soundtracks
                progress=not quiet,
                split=split_name,
            )
            result.settings.update(
                {
                    "checkpoint": str(folder),
                    "preset_model": getattr(model, "preset", None),
                    "data": str(data),
                    "format": format,
                    "benchmark": benchmark,
                    "image_size": size,
                    "vos_prompt": getattr(model.config, "eval_prompt", None) if is_promptable(model) else None,
                    "answer_mode": getattr(model.config, "answer_mode", None),
                    "protocol": {"kind": protocol, **chosen.to_dict()},
                }
            )
            by_variant.setdefault(split_name, {})[variant.spec] = result
        results[split_name] = by_variant[split_name]["true"]
    title = f"{getattr(model, 'preset', None) or model.family} on {data}"
    audio_results = by_variant if audio is not None else None
    if json:
        report = results_report(results, refavs_rows=format == "refavs", audio=audio_results, audio_seed=audio_seed)
        print(results_json(report))
    else:
        print(format_markdown(results, title=title, refavs_rows=format == "refavs"))
        if audio_results:
            print(format_audio_markdown(audio_results, refavs_rows=format == "refavs"))
    notes = sys.stderr if json else sys.stdout  # --json: stdout holds the JSON document only
    if json_out is not None:
        table = write_results(
            results, json_out, refavs_rows=format == "refavs", audio=audio_results, audio_seed=audio_seed
        )
        print(f"wrote {json_out} and {table}", file=notes)
    if save_masks is not None:
        print(f"masks written under {save_masks}", file=notes)
    return 0
