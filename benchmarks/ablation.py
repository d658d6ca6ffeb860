"""Ablation table: train one preset several times with config switches, evaluate each run, print a markdown table.

Every variant is trained by ``avseg train`` (the preset's recipe, the same seed, the same time or step budget) and
evaluated by ``avseg eval``'s functions on the test splits with true soundtracks, then on the audio-dependent test_s
expressions with the soundtracks shuffled across videos. Example (the AVSegFormer table of docs/benchmarks.md)::

    avseg data synth runs/synthav --videos 500 --size 128
    python benchmarks/ablation.py --model avsegformer-tiny --data runs/synthav/refavs \\
        --out runs/ablation-avsegformer --minutes 4 --image-size 128 --splits test_s,test_n \\
        --variant full \\
        --variant no-mixer model.mixer.kind=none \\
        --variant no-learnable-queries model.queries.learnable=false \\
        --variant no-intermediate-loss model.loss.intermediate_weight=0 \\
        --common train.val_every=100000 data.hflip=0.5

Writes ``OUT/NAME/`` (each run; it must not hold a training run yet), ``OUT/ablation.json`` and ``OUT/ablation.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path


def _row(name: str, overrides: list[str], results: dict, shuffled: dict, steps: int) -> dict:
    test_s, test_n = results.get("test_s"), results.get("test_n")
    audio = test_s.subsets.get("audio", {}) if test_s else {}
    audio_shuffled = shuffled["test_s"].subsets.get("audio", {}) if "test_s" in shuffled else {}
    drop = audio.get("J&F", float("nan")) - audio_shuffled.get("J&F", float("nan"))
    return {
        "variant": name,
        "overrides": overrides,
        "steps": steps,
        **{f"{split} J&F": results[split].metrics.get("J&F") for split in results if split != "test_n"},
        "test_n S": test_n.metrics.get("S") if test_n else None,
        "audio J&F true": audio.get("J&F"),
        "audio J&F shuffled": audio_shuffled.get("J&F"),
        "audio drop": drop,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--format", default="refavs")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=None, help="training budget per variant")
    parser.add_argument("--steps", type=int, default=None, help="or a step budget per variant")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--splits", default="test_s,test_u,test_n")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--variant",
        nargs="+",
        action="append",
        required=True,
        metavar=("NAME", "OVERRIDE"),
        help="a variant name and its dotted overrides (none for the full model); repeat for each variant",
    )
    parser.add_argument("--common", nargs="*", default=[], help="overrides applied to every variant")
    args = parser.parse_args()
    if args.minutes is None and args.steps is None:
        parser.error("give --minutes or --steps")

    from avseg.data.benchmarks import default_metric_preset
    from avseg.data.readers import get_reader
    from avseg.evaluate import evaluate_split
    from avseg.models import load_model
    from avseg.train.commands import train

    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    splits = [s for s in args.splits.split(",") if s]
    for name, *overrides in args.variant:
        run_dir = args.out / name
        start = time.monotonic()
        train(
            data=args.data,
            format=args.format,
            out=run_dir,
            model=args.model,
            max_minutes=args.minutes,
            max_steps=args.steps,
            seed=args.seed,
            image_size=args.image_size,
            overrides=[*args.common, *overrides, "train.progress_bar=false"],
        )
        model = load_model(run_dir, pointer="best")
        reader = get_reader(args.format, args.data, image_size=args.image_size, native_masks=True)
        preset = default_metric_preset(args.format, getattr(model, "num_mask_channels", 1))
        results = {s: evaluate_split(model, reader.dataset(s), preset=preset) for s in splits}
        shuffled = {}
        if "test_s" in splits:
            shuffled["test_s"] = evaluate_split(model, reader.dataset("test_s"), preset=preset, audio="shuffle")
        steps = json.loads((run_dir / "train_summary.json").read_text())["steps"]
        rows.append(_row(name, overrides, results, shuffled, steps))
        print(f"[ablation] {name}: {rows[-1]} ({time.monotonic() - start:.0f} s)", flush=True)

    keys = [k for k in rows[0] if k not in ("overrides",)]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        cells = [f"{row[k]:.3f}" if isinstance(row[k], float) else str(row[k]) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    machine = f"{platform.machine()}, {platform.processor() or 'cpu'}, python {platform.python_version()}"
    (args.out / "ablation.json").write_text(
        json.dumps(
            {"args": vars(args) | {"data": str(args.data), "out": str(args.out)}, "machine": machine, "rows": rows},
            indent=2,
        )
    )
    (args.out / "ablation.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
