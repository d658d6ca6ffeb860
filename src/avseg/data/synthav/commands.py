"""``avseg data synth``: generate the SynthAV benchmark in the Ref-AVS, AVSS, RVOS and VOS layouts;
``avseg data references``: score rules that do not read the expression on its Ref-AVS layout."""

from __future__ import annotations

import json as jsonlib
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from avseg.data.synthav.scene import SPLITS, Split
from avseg.data.synthav.writers import (
    DEFAULT_LAYOUTS,
    LAYOUTS,
    VideoResult,
    check_layouts,
    generate_video,
    write_tables,
)
from avseg.fileio import check_output_dir
from avseg.progress import Progress

__all__ = ["references", "synth"]

_OUR_ENTRIES = {*LAYOUTS, "manifest.json"}


def _prepare(out: Path) -> None:
    """Make ``out`` ready: refuse a folder holding anything SynthAV did not write; clear an earlier SynthAV tree."""
    check_output_dir(out, arg="OUT")
    out.mkdir(parents=True, exist_ok=True)
    foreign = sorted(p.name for p in out.iterdir() if p.name not in _OUR_ENTRIES and not p.name.startswith("."))
    if foreign:
        raise ValueError(
            f"output folder {out} holds files SynthAV did not write ({', '.join(foreign[:5])}); "
            "choose an empty or new folder"
        )
    # The manifest goes first, so that an interrupted regeneration never looks complete; temporary files left by an
    # interrupted run go too.
    (out / "manifest.json").unlink(missing_ok=True)
    for stale in out.glob(".manifest.json.*.tmp"):
        stale.unlink()
    for name in LAYOUTS:
        if (out / name).exists():
            shutil.rmtree(out / name)


def _one(args: tuple[Path, int, int, int, int, tuple[str, ...], Split | None]) -> VideoResult:
    return generate_video(*args)


def synth(
    out: Path,
    videos: int = 200,
    seed: int = 0,
    size: int = 224,
    frames: int = 10,
    workers: int = 2,
    layouts: tuple[str, ...] = DEFAULT_LAYOUTS,
    extra_train_videos: int = 0,
    quiet: bool = False,
) -> int:
    """Generate SynthAV, a synthetic audio-visual benchmark, in the Ref-AVS, AVSS and RVOS layouts.

    Every video shows 1-4 coloured shapes moving over a textured background; each shape class has its own sound and
    the soundtrack mixes the objects sounding in each second. From the same scenes it writes ``OUT/refavs`` (referring
    expressions with the modalities they need, null expressions included), ``OUT/avss`` (v2 clips with masks of the
    sounding objects), ``OUT/rvos`` (the visual-only expressions), with ``--layouts ... vos`` also ``OUT/vos``
    (semi-supervised VOS in the YouTube-VOS layout: every object of every video, annotated on every frame, read with
    ``--format vos``), and ``OUT/manifest.json`` (settings, classes and sounds, per-layout counts as
    ``avseg data check`` reports them, and every expression's template and target). The same seed always gives
    identical files, and a layout's files do not depend on which other layouts are written. The Ref-AVS and AVSS
    readers expect 10 frames per clip. Progress (videos written in every layout, videos/s, ETA) goes to stderr.

    Args:
        out: output folder (created; an earlier SynthAV output there is replaced; other content is refused).
        videos: number of videos (splits cycle train, val, test_s, test_u, test_n, then 5 x train, so N >= 5 has
            every split).
        seed: generator seed; video i depends only on (seed, i).
        size: frame side in pixels (frames and masks are square).
        frames: frames per video, one per second of audio.
        workers: worker processes (1 runs in this process).
        layouts: the layouts to write, among refavs, avss, rvos and vos (e.g. --layouts refavs avss rvos vos).
        extra_train_videos: more training videos after the cycled ones (indices VIDEOS to VIDEOS + N - 1, all in
            train): a larger training split with the same validation and test splits, and the same first VIDEOS
            videos, as without it.
        quiet: show no progress (warnings, errors and the final summary are still printed).
    """
    for name, value, least in (
        ("videos", videos, 1),
        ("size", size, 32),
        ("frames", frames, 1),
        ("workers", workers, 1),
        ("extra-train-videos", extra_train_videos, 0),
    ):
        if value < least:
            raise ValueError(f"--{name} must be >= {least}, got {value}")
    layouts = check_layouts(layouts)
    fixed = [name for name in layouts if name in ("refavs", "avss")]
    if frames != 10 and fixed:
        readers = f"{' and '.join(fixed)} reader{'s expect' if len(fixed) > 1 else ' expects'}"
        print(f"warning: --frames {frames}: the {readers} 10 frames per clip", file=sys.stderr)
    out = Path(out)
    _prepare(out)
    start = time.perf_counter()
    total = videos + extra_train_videos
    jobs = [(out, seed, i, size, frames, layouts, None if i < videos else "train") for i in range(total)]
    results: list[VideoResult] = []
    # Every video is written in all layouts by one job, so one phase counts them; the tables and the manifest that
    # follow take a moment only.
    with Progress("generating SynthAV", total, "video", enabled=not quiet) as bar:
        if workers == 1 or total == 1:
            for result in map(_one, jobs):
                results.append(result)
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                # Small chunks: the bar moves (and a slow video delays no more than its chunk) at little cost.
                for result in pool.map(_one, jobs, chunksize=max(1, min(4, total // (4 * workers)))):
                    results.append(result)
                    bar.update()
    manifest = write_tables(
        out, results, seed=seed, size=size, num_frames=frames, layouts=layouts, extra_train_videos=extra_train_videos
    )
    elapsed = time.perf_counter() - start

    extra = f" (+{extra_train_videos} extra training videos)" if extra_train_videos else ""
    print(
        f"SynthAV {manifest['generator']['version']}: {videos} videos{extra}, seed {seed}, {size}x{size}, "
        f"{frames} frames"
    )
    print(f"written to {out} in {elapsed:.1f} s")
    header = f"{'layout':<8} {'split':<8} {'videos':>7} {'items':>7} {'null':>6} {'labelled frames':>16}"
    print(header)
    print("-" * len(header))
    for layout, entry in manifest["layouts"].items():
        for split in SPLITS:
            c = entry["splits"].get(split)
            if c is not None:
                print(
                    f"{layout:<8} {split:<8} {c['videos']:>7} {c['items']:>7} {c['null_items']:>6} "
                    f"{c['labelled_frames']:>16}"
                )
    others = f" (and {', '.join(layouts[1:])})" if len(layouts) > 1 else ""
    print(f"check with: avseg data check {out / layouts[0]} --format {layouts[0]}{others}")
    return 0


def references(
    root: Path,
    split: str = "test_s,test_u,test_n",
    group: str | None = None,
    json: bool = False,
    quiet: bool = False,
) -> int:
    """Score rules that do not read the expression on a SynthAV's Ref-AVS expressions: the floor of a trained model.

    Each rule masks, for every expression, what it would without grounding it: nothing, every shape of the video,
    every shape that sounds, the largest, a random one, and the visual oracle (the referred shape when the expression
    needs only vision, else every shape of the colour or class it names). They are scored with the official Ref-AVS
    preset and grouping, as `avseg demo` and `avseg eval` score a model, from the scenes re-rendered from the manifest.
    Prints J&F (S for null splits) per rule and split, then test_s J&F per expression template when test_s is among
    the splits. About as long as evaluating a model on the same splits (a few minutes on 2 cores for the demo's
    SynthAV).

    Args:
        root: a SynthAV root that `avseg data synth` wrote (manifest.json and refavs/).
        split: split name(s), comma-separated.
        group: grouping override (expression, batch:K); default: the preset's (batch:4).
        json: print the scores as one JSON document on stdout instead of tables.
        quiet: show no progress.
    """
    from avseg.data.synthav.references import REFERENCE_RULES, score_references

    splits = [s.strip() for s in split.split(",") if s.strip()]
    if not splits:
        raise ValueError("--split must name at least one split")
    scores = score_references(root, splits, group=group, progress=not quiet)
    if json:
        record = {
            "root": str(root),
            "rules": REFERENCE_RULES,
            "splits": {
                sp: {rule: {k: m[k] for k in ("J", "F", "J&F", "S")} for rule, m in by_rule.items()}
                for sp, by_rule in scores.splits.items()
            },
            "templates": scores.templates,
            "counts": scores.counts,
        }
        print(jsonlib.dumps(record, indent=2))
        return 0
    null = {sp: all(t == "null" for t in scores.counts[sp]) for sp in splits}
    print("| rule | predicts | " + " | ".join(f"{sp} {'S' if null[sp] else 'J&F'}" for sp in splits) + " |")
    print("|---|---|" + "---|" * len(splits))
    for rule, what in REFERENCE_RULES.items():
        cells = [f"{scores.splits[sp][rule]['S' if null[sp] else 'J&F']:.4f}" for sp in splits]
        print(f"| {rule} | {what} | " + " | ".join(cells) + " |")
    if "test_s" in scores.templates:
        templates = scores.templates["test_s"]
        print("\ntest_s, mean (J + F) / 2 per expression template (expressions in brackets):\n")
        print("| template | " + " | ".join(REFERENCE_RULES) + " |")
        print("|---|" + "---|" * len(REFERENCE_RULES))
        for template, by_rule in templates.items():
            cells = [f"{by_rule[rule]:.3f}" for rule in REFERENCE_RULES]
            print(f"| {template} ({scores.counts['test_s'][template]}) | " + " | ".join(cells) + " |")
    return 0
