"""The SynthAV protocol: train tiny presets for a fixed number of steps, then score them with and without their sound.

The demo trains for a time budget, so its figures move with the machine's load. This protocol trains each preset for
the same number of optimiser steps on the same SynthAV data, with the demo's settings otherwise (its recipe defaults,
frame size, flips, validation subset and seed), and evaluates the best checkpoint with the official Ref-AVS preset:

- test_s and test_u J&F, test_n S;
- the J&F drop when the soundtracks are shuffled across videos, on the audio-dependent expressions (every expression
  that needs the audio) and on the audio-only ones (expressions that only the audio resolves), for test_s and test_u.

With ``--references`` the table also holds rules that read no expression, or only its visual words, scored the same
way (:mod:`avseg.data.synthav.references`: every shape, every sounding shape, the largest, a random one, the
visual oracle), so a trained preset can be read against what it would get without grounding the expression; a
second table breaks test_s down by expression template for every row.

Wall time is printed and recorded as information only. Example (the table in docs/benchmarks.md)::

    python benchmarks/synthav.py --model tpavi-tiny avsegformer-tiny auralsam2-tiny --steps 600 \
        --out runs/synthav-steps --references

Writes ``OUT/synthav/`` (the data, generated once; ``--data`` uses an existing Ref-AVS-layout SynthAV instead),
``OUT/runs/NAME/`` (each training run; it must not hold a finished run of another length), ``OUT/synthav_steps.json``,
``OUT/synthav_steps.md`` and ``OUT/synthav_templates.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

from avseg.data.synthav.references import template_of

SPLITS = ("test_s", "test_u", "test_n")
SUBSETS = {"audio": "audio-dependent", "cues:audio": "audio-only"}


def _drops(normal: Any, shuffled: Any) -> dict[str, float]:
    """J&F lost on each audio subset when the soundtracks are shuffled (NaN when the split has no such subset)."""
    from avseg.evaluate import audio_drops

    drops = audio_drops(normal, shuffled)
    return {key: drops.get(key, math.nan) for key in SUBSETS}


def run_preset(
    model: str,
    data: Path,
    run_dir: Path,
    steps: int,
    size: int,
    seed: int,
    expressions: dict[str, Any],
    overrides: list[str] | None = None,
) -> tuple[dict[str, Any], dict[str, float]]:
    """Train ``model`` for ``steps`` steps with the demo's settings (then ``overrides``, ``section.key=value`` strings
    as ``avseg train --overrides`` takes them) and score it.

    Returns:
        One table row, and test_s J&F per expression template.
    """
    from avseg.data.readers import get_reader
    from avseg.data.synthav.references import template_means
    from avseg.demo import demo_run_config
    from avseg.evaluate import evaluate_split
    from avseg.models import load_model
    from avseg.train.run import prepare_trainer

    run_cfg = demo_run_config(
        data,
        model,
        size=size,
        seed=seed,
        # DEMO_TRAIN's max_epochs (200) stays as a cap that no step count used here reaches.
        length={"train.max_steps": steps, "train.progress_bar": False},
        overrides=overrides or [],
    )
    start = time.monotonic()
    summary = prepare_trainer(run_cfg, run_dir).fit()
    trained = time.monotonic()
    best = load_model(run_dir, pointer="best")
    reader = get_reader("refavs", data, image_size=size, native_masks=True)
    row: dict[str, Any] = {"model": model, "steps": summary.steps}
    for split in SPLITS:
        result = evaluate_split(best, reader.dataset(split), preset="refavs", progress=False)
        if split == "test_n":
            row["test_n S"] = result.metrics["S"]
            continue
        shuffled = evaluate_split(
            best, reader.dataset(split), preset="refavs", audio="shuffle", audio_seed=seed, progress=False
        )
        row[f"{split} J&F"] = result.metrics["J&F"]
        if split == "test_s":
            templates = template_means(result.items, expressions)
        for key, drop in _drops(result, shuffled).items():
            row[f"{split} drop[{key}]"] = drop
    row["train s"] = round(trained - start, 1)
    row["eval s"] = round(time.monotonic() - trained, 1)
    return row, templates


def reference_rows(root: Path) -> tuple[list[dict[str, Any]], dict[str, dict[str, float]]]:
    """Rows of the reference rules in the table's columns (no drops: they do not listen), and their templates."""
    from avseg.data.synthav.references import score_references

    scores = score_references(root, SPLITS)
    rows, templates = [], {}
    for rule in scores.splits["test_s"]:
        name = f"({rule})"
        row: dict[str, Any] = {"model": name, "steps": 0}
        for split in SPLITS:
            metrics = scores.splits[split][rule]
            if split == "test_n":
                row["test_n S"] = metrics["S"]
                continue
            row[f"{split} J&F"] = metrics["J&F"]
            for key in SUBSETS:
                row[f"{split} drop[{key}]"] = math.nan
        row["train s"] = row["eval s"] = math.nan
        rows.append(row)
        templates[name] = {t: by_rule[rule] for t, by_rule in scores.templates["test_s"].items()}
    return rows, templates


def markdown(rows: list[dict[str, Any]]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        cells = (_cell(row.get(k, math.nan)) for k in keys)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def template_table(templates: dict[str, dict[str, float]], counts: dict[str, int]) -> str:
    """test_s J&F per template (columns, with their expression counts) for every row."""
    names = list(counts)
    lines = ["| model | " + " | ".join(f"{t} ({counts[t]})" for t in names) + " |", "|" + "---|" * (len(names) + 1)]
    for model, by_template in templates.items():
        lines.append(f"| {model} | " + " | ".join(_cell(by_template.get(t, math.nan)) for t in names) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="*", default=[], help="presets to train (e.g. tpavi-tiny auralsam2-tiny)")
    parser.add_argument("--steps", type=int, default=300, help="optimiser steps per preset")
    parser.add_argument(
        "--references", action="store_true", help="also score the reference rules (avseg.data.synthav.references)"
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=None, help="an existing SynthAV refavs folder (default: generate)")
    parser.add_argument("--videos", type=int, default=500, help="SynthAV videos when generating (the demo's 500)")
    parser.add_argument(
        "--extra-train-videos",
        type=int,
        default=0,
        help="more training videos when generating (avseg data synth --extra-train-videos): the same val and test "
        "splits as without them",
    )
    parser.add_argument("--size", type=int, default=128, help="SynthAV frame size (the demo's 128)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--overrides",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="settings for every preset's run, as avseg "
        "train --overrides takes them (e.g. model.sam2.lr=1e-4); recorded in the JSON",
    )
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    if not args.model and not args.references:
        parser.error("give --model, --references or both")
    from avseg.config import apply_overrides, parse_overrides
    from avseg.models import get_entry

    # Checked before any data is generated or run trained: the presets exist and take the model overrides.
    try:
        entries = [get_entry(model) for model in args.model]
    except ValueError as error:
        parser.error(f"--model: {error}")
    try:
        overrides = parse_overrides(args.overrides)
        model_overrides = {k.partition(".")[2]: v for k, v in overrides.items() if k.startswith("model.")}
        for entry in entries:
            apply_overrides(entry.config(), model_overrides, prefix="model.")
    except ValueError as error:
        parser.error(f"--overrides: {error}")

    data = args.data
    if data is None:
        from avseg.data.synthav.commands import synth
        from avseg.data.synthav.writers import generation_settings

        root = args.out / "synthav"
        wanted = {"videos": args.videos, "extra_train_videos": args.extra_train_videos, "seed": args.seed}
        wanted |= {"size": args.size, "frames": 10}
        if (root / "manifest.json").is_file():
            found = generation_settings(json.loads((root / "manifest.json").read_text()))
            if found != wanted:
                parser.error(f"{root} holds SynthAV generated with {found}, not {wanted}: use another --out")
        else:
            synth(
                root,
                videos=args.videos,
                seed=args.seed,
                size=args.size,
                frames=10,
                workers=2,
                extra_train_videos=args.extra_train_videos,
            )
        data = root / "refavs"
    root = data.parent
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        parser.error(f"{manifest_path}: missing; --data must be the refavs folder of a SynthAV root")
    expressions = json.loads(manifest_path.read_text())["expressions"]
    rows, templates = [], {}
    for model in args.model:
        row, templates[model] = run_preset(
            model, data, args.out / "runs" / model, args.steps, args.size, args.seed, expressions, args.overrides
        )
        rows.append(row)
        print(f"[synthav] {row}", flush=True)
    if args.references:
        more_rows, more_templates = reference_rows(root)
        rows += more_rows
        templates.update(more_templates)
    counts = Counter(template_of(e) for e in expressions.values() if e["split"] == "test_s")
    table = markdown(rows)
    by_template = template_table(templates, dict(sorted(counts.items())))
    machine = f"{platform.machine()}, {platform.processor() or 'cpu'}, python {platform.python_version()}"
    record = {"args": {k: str(v) for k, v in vars(args).items()}, "machine": machine, "date": str(date.today())}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "synthav_steps.json").write_text(
        json.dumps({**record, "rows": rows, "test_s templates": templates}, indent=2)
    )
    (args.out / "synthav_steps.md").write_text(table)
    (args.out / "synthav_templates.md").write_text(by_template)
    print(table)
    print(by_template)


if __name__ == "__main__":
    main()
