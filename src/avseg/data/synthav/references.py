"""Reference predictions on SynthAV: what rules that read no expression (or only part of one) score.

A trained model's J&F means little without its floor. On SynthAV a model that segments every shape in the video, and
never reads the expression, already scores test_s J&F of about 0.49; one that masks every shape that ever sounds,
about 0.58. These rules re-render each scene from the manifest (same seed, size and frame count, so their label maps
are the ones the layouts were written from) and are scored by the same metric preset as a model:

- ``no_object``: an empty mask (what Null S rewards);
- ``every_object``: every shape of the video;
- ``sounding_objects``: every shape that sounds in at least one second;
- ``largest_object``: the shape with the most visible pixels over the clip;
- ``random_object``: one shape per expression, drawn with a seed fixed by the expression's id;
- ``visual_oracle``: the referred shape when the expression needs only vision (colour, shape, size, position); for an
  expression that needs the sound, every shape of the colour or class it names (every shape when it names neither):
  about the ceiling of a model that grounds every visual word and ignores the sound.

:func:`score_references` scores them per split and per expression template (``avseg data references ROOT``);
``benchmarks/synthav.py --references`` prints them beside the trained presets. Scoring takes as long as evaluating a
model (about 0.02 s per expression and rule on 2 cores at SynthAV's 128 px, scored at the preset's 256 px).
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avseg.data.synthav.scene import Scene, generate_scene, render_scene
from avseg.errors import MetadataError, MissingFileError
from avseg.metrics.accumulator import MetricAccumulator
from avseg.progress import Progress

__all__ = [
    "REFERENCE_RULES",
    "ReferenceScores",
    "manifest_scene",
    "read_manifest",
    "reference_mask",
    "score_references",
    "template_means",
    "template_of",
]

REFERENCE_RULES: dict[str, str] = {
    "no_object": "an empty mask",
    "every_object": "every shape of the video",
    "sounding_objects": "every shape that sounds in at least one second",
    "largest_object": "the shape with the most visible pixels over the clip",
    "random_object": "one shape, drawn per expression",
    "visual_oracle": "the referred shape for vision-only expressions, else every shape of the colour or class named",
}

# Logits of a hard mask: far enough from any threshold that bilinear resizing only moves the boundary.
_HARD_LOGIT = 10.0


def _release_freed_heap() -> None:
    """Give freed heap memory back to the system (glibc only; elsewhere nothing).

    Each update leaves a few small statistics tensors between the large temporaries of the resize and the F sweep,
    which keeps glibc from returning the freed space: six accumulators over the demo's test splits grew the process to
    8.7 GB without this, 1.6 GB with it."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _expression_seed(uid: str) -> int:
    """A seed fixed by the expression id (Python's ``hash`` of a string changes between runs)."""
    return int.from_bytes(hashlib.sha256(uid.encode()).digest()[:8], "little")


def reference_mask(rule: str, scene: Scene, labels: np.ndarray, expression: dict[str, Any], uid: str) -> np.ndarray:
    """The mask one rule predicts for one expression.

    Args:
        rule: a key of :data:`REFERENCE_RULES`.
        scene: the expression's scene (:func:`avseg.data.synthav.generate_scene`).
        labels: ``(T, S, S)`` uint8 label map of the scene (:func:`avseg.data.synthav.render_scene`): ``fid + 1``
            on each shape's visible pixels, 0 elsewhere.
        expression: the expression's manifest record (``modalities``, ``params``: the colour / shape / side it names,
            ``target``: ``{"fid": ...}`` or None for a null expression).
        uid: the expression id (seeds ``random_object``).

    Returns:
        ``(T, S, S)`` bool mask.
    """
    if rule not in REFERENCE_RULES:
        raise ValueError(f"unknown reference rule {rule!r}; known: {', '.join(REFERENCE_RULES)}")
    fids = [o.fid for o in scene.objects]
    if rule == "no_object" or not fids:
        return np.zeros(labels.shape, dtype=bool)
    if rule == "every_object":
        return labels > 0
    if rule == "sounding_objects":
        return np.isin(labels, [o.fid + 1 for o in scene.objects if o.voiced])
    if rule == "largest_object":
        areas = [(labels == fid + 1).sum() for fid in fids]
        return labels == fids[int(np.argmax(areas))] + 1
    if rule == "random_object":
        fid = fids[np.random.default_rng(_expression_seed(uid)).integers(len(fids))]
        return labels == fid + 1
    # visual_oracle
    if expression["modalities"] != "visual":
        # What vision alone leaves: the shapes of the named colour or class ("the red object making a sound").
        params = expression.get("params") or {}
        allowed = [
            o.fid + 1
            for o in scene.objects
            if params.get("colour", o.colour) == o.colour and params.get("shape", o.cls) == o.cls
        ]
        return np.isin(labels, allowed)
    target = expression["target"]
    return labels == target["fid"] + 1 if target is not None else np.zeros(labels.shape, dtype=bool)


@dataclass
class ReferenceScores:
    """Scores of the reference rules on one SynthAV.

    Attributes:
        splits: ``{split: {rule: metrics}}`` with the preset's ``J``, ``F``, ``J&F`` and ``S``, as
            :meth:`avseg.metrics.MetricAccumulator.compute` returns them.
        templates: ``{split: {template: {rule: J&F}}}``: per expression template, the mean over its expressions of
            ``(J + F) / 2``, each expression scored on its own (null expressions are grouped under ``null``).
        counts: ``{split: {template: expressions}}``.
    """

    splits: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    templates: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)


def _read_rows(refavs: Path) -> list[dict[str, str]]:
    path = refavs / "metadata.csv"
    if not path.is_file():
        raise MissingFileError(path, "Ref-AVS metadata of a SynthAV")
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def read_manifest(root: Path) -> dict[str, Any]:
    """The ``manifest.json`` of a SynthAV root (MissingFileError / MetadataError naming it when absent or malformed)."""
    path = root / "manifest.json"
    if not path.is_file():
        raise MissingFileError(path, "SynthAV manifest (the root that `avseg data synth` wrote)")
    try:
        manifest = json.loads(path.read_text())
        for key in ("seed", "size", "frames", "expressions", "video_info"):
            manifest[key]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise MetadataError(path, f"not a SynthAV manifest ({type(e).__name__}: {e})") from None
    return manifest


def manifest_scene(manifest: dict[str, Any], vid: str) -> Scene:
    """The scene of video ``vid``, generated again from the manifest's seed, size and frame count (and the video's
    split, which an extra training video does not take from its index)."""
    info = manifest["video_info"][vid]
    return generate_scene(
        manifest["seed"], info["index"], size=manifest["size"], num_frames=manifest["frames"], split=info.get("split")
    )


def template_of(expression: dict[str, Any]) -> str:
    """The template name under which an expression is reported (``null`` for null expressions)."""
    return "null" if expression.get("null_kind") else str(expression["template"])


def template_means(items: Iterable[dict[str, Any]], expressions: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Mean ``(J + F) / 2`` per expression template of scored items.

    Args:
        items: per-expression scores with ``uid``, ``J`` and ``F`` (:attr:`avseg.evaluate.EvalResult.items`).
        expressions: the manifest's ``expressions``.

    Returns:
        ``{template: mean}``, templates sorted by name; null expressions under ``null``.
    """
    groups: dict[str, list[float]] = defaultdict(list)
    for item in items:
        uid = item["uid"]
        if uid not in expressions:
            raise KeyError(f"expression {uid!r} is not in the SynthAV manifest")
        groups[template_of(expressions[uid])].append((item["J"] + item["F"]) / 2)
    return {t: float(np.mean(v)) for t, v in sorted(groups.items())}


def score_references(
    root: str | Path,
    splits: Sequence[str] = ("test_s", "test_u", "test_n"),
    rules: Iterable[str] = tuple(REFERENCE_RULES),
    *,
    preset: str = "refavs",
    group: str | None = None,
    progress: bool = False,
) -> ReferenceScores:
    """Score the reference rules on the Ref-AVS expressions of a SynthAV.

    Every metadata row of each split is scored once per rule with ``preset``, in metadata order, as
    :func:`avseg.evaluate.evaluate_split` scores a model with the same preset and grouping; its ground truth is the
    rendered label map of the referred shape (all zeros for null expressions), identical to the PNGs in
    ``refavs/gt_mask``.

    Args:
        root: the SynthAV root (``manifest.json`` and ``refavs/``).
        splits: the splits to score.
        rules: keys of :data:`REFERENCE_RULES`.
        preset: the metric preset.
        group: grouping override (``expression``, ``batch:K``); None keeps the preset's (Ref-AVS: ``batch:4``).
        progress: show each split's progress on stderr (expressions scored, rate, ETA).

    Returns:
        The scores.

    Raises:
        MissingFileError: no manifest or no Ref-AVS metadata.
        MetadataError: a malformed manifest, a split without rows, or a row that the manifest does not know.
    """
    root = Path(root)
    rules = list(rules)
    for rule in rules:
        if rule not in REFERENCE_RULES:
            raise ValueError(f"unknown reference rule {rule!r}; known: {', '.join(REFERENCE_RULES)}")
    manifest = read_manifest(root)
    rows = _read_rows(root / "refavs")
    expressions = manifest["expressions"]
    out = ReferenceScores()
    for split in splits:
        split_rows = [row for row in rows if row["split"] == split]
        if not split_rows:
            raise MetadataError(root / "refavs" / "metadata.csv", f"no rows of split {split!r}")
        accumulators = {rule: MetricAccumulator(preset, group=group) for rule in rules}
        rendered: dict[str, tuple[Scene, np.ndarray]] = {}
        with Progress(f"references {split}", len(split_rows), "expression", enabled=progress) as bar:
            for row in split_rows:
                uid = row["uid"]
                if uid not in expressions:
                    raise MetadataError(root / "manifest.json", f"no expression {uid!r} (metadata.csv names it)")
                expression = expressions[uid]
                vid = expression["vid"]
                if vid not in rendered:
                    scene = manifest_scene(manifest, vid)
                    rendered = {vid: (scene, render_scene(scene)[1])}  # rows come grouped by video: keep one
                scene, labels = rendered[vid]
                target = expression["target"]
                truth = labels == target["fid"] + 1 if target is not None else np.zeros(labels.shape, dtype=bool)
                truth_t = torch.from_numpy(truth).to(torch.uint8)[None]  # (1, T, S, S)
                for rule in rules:
                    mask = torch.from_numpy(reference_mask(rule, scene, labels, expression, uid))
                    logits = (mask.float() * 2 - 1)[None] * _HARD_LOGIT  # (1, T, S, S)
                    accumulators[rule].update(logits, truth_t, ids=[uid])
                bar.update()
                if bar.count % 32 == 0:
                    _release_freed_heap()
        out.splits[split] = {}
        out.templates[split] = {}
        for rule, accumulator in accumulators.items():
            result = accumulator.compute()
            # Each expression on its own, as avseg eval's per-item scores.
            items = [{"uid": item["id"], "J": item["J"], "F": item["F"]} for item in result.pop("per_video")]
            for template, mean in template_means(items, expressions).items():
                out.templates[split].setdefault(template, {})[rule] = mean
            out.splits[split][rule] = result
        out.counts[split] = dict(sorted(Counter(template_of(expressions[row["uid"]]) for row in split_rows).items()))
    return out
