"""The SynthAV protocol: train tiny presets for a fixed number of steps, then score them with and without their sound.

The demo trains for a time budget, so its figures move with the machine's load. This protocol trains each preset for
the same number of optimiser steps on the same SynthAV data, with the demo's settings otherwise (its recipe defaults,
frame size, flips, validation subset and seed), and evaluates the best checkpoint with the official Ref-AVS preset:

- test_s and test_u J&F, test_n S;
- the J&F drop when the soundtracks are shuffled across videos, on the audio-dependent expressions (every expression
  that needs the audio) and on the audio-only ones (expressions that only the audio resolves), for test_s and test_u.

Wall time is printed and recorded as information only. Example (the table in docs/benchmarks.md)::

    python benchmarks/synthav.py --model tpavi-tiny avsegformer-tiny auralsam2-tiny --steps 600 --out runs/synthav-steps

Writes ``OUT/synthav/`` (the data, generated once; ``--data`` uses an existing Ref-AVS-layout SynthAV instead),
``OUT/runs/NAME/`` (each training run; it must not hold a finished run of another length), ``OUT/synthav_steps.json``
and ``OUT/synthav_steps.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from datetime import date
from pathlib import Path
from typing import Any

SPLITS = ("test_s", "test_u", "test_n")
SUBSETS = {"audio": "audio-dependent", "cues:audio": "audio-only"}


def _drops(normal: Any, shuffled: Any) -> dict[str, float]:
    """J&F lost on each audio subset when the soundtracks are shuffled (NaN when the split has no such subset)."""
    from avseg.evaluate import audio_drops

    drops = audio_drops(normal, shuffled)
    return {key: drops.get(key, math.nan) for key in SUBSETS}


def run_preset(model: str, data: Path, run_dir: Path, steps: int, size: int, seed: int) -> dict[str, Any]:
    """Train ``model`` for ``steps`` steps with the demo's settings and score it; returns one table row."""
    from avseg.data.readers import get_reader
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
        for key, drop in _drops(result, shuffled).items():
            row[f"{split} drop[{key}]"] = drop
    row["train s"] = round(trained - start, 1)
    row["eval s"] = round(time.monotonic() - trained, 1)
    return row


def markdown(rows: list[dict[str, Any]]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        cells = (f"{row[k]:.3f}" if isinstance(row[k], float) else str(row[k]) for k in keys)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", required=True, help="presets to train (e.g. tpavi-tiny auralsam2-tiny)")
    parser.add_argument("--steps", type=int, required=True, help="optimiser steps per preset")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=None, help="an existing SynthAV refavs folder (default: generate)")
    parser.add_argument("--videos", type=int, default=500, help="SynthAV videos when generating (the demo's 500)")
    parser.add_argument("--size", type=int, default=128, help="SynthAV frame size (the demo's 128)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be at least 1")

    data = args.data
    if data is None:
        from avseg.data.synthav.commands import synth

        root = args.out / "synthav"
        if not (root / "manifest.json").is_file():
            synth(root, videos=args.videos, seed=args.seed, size=args.size, frames=10, workers=2)
        data = root / "refavs"
    rows = []
    for model in args.model:
        rows.append(run_preset(model, data, args.out / "runs" / model, args.steps, args.size, args.seed))
        print(f"[synthav] {rows[-1]}", flush=True)
    table = markdown(rows)
    machine = f"{platform.machine()}, {platform.processor() or 'cpu'}, python {platform.python_version()}"
    record = {"args": {k: str(v) for k, v in vars(args).items()}, "machine": machine, "date": str(date.today())}
    (args.out / "synthav_steps.json").write_text(json.dumps({**record, "rows": rows}, indent=2))
    (args.out / "synthav_steps.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
