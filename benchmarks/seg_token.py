"""Does an MLLM segmenter's ``[SEG]`` token depend on the expression? Where along its path the expression is lost.

In Sa2VA, SVAC and SimToken the MLLM reads a clip's frames and the expression, and the hidden state of its ``[SEG]``
token goes through the projector (``Linear → ReLU → Linear``) into the SAM decoder's prompt. For every non-null
expression of a split, this script runs the model's MLLM the way inference does (Sa2VA and SVAC: the frames they
sample, the answer read after the question) and measures, at three points of that path (the language model's last
hidden state at ``[SEG]``, the projector's hidden ReLU layer, the projected prompt token):

- ``spread``: the standard deviation across items over the mean norm (how much the token varies at all);
- ``within_video``: the same over the expressions of one video (with SVAC, the ``[SEG]`` of one clip of it), averaged
  over videos (what changing only the expression changes; the frames are the same);

and the fraction of the projector's hidden units that fire on at least one item (``units_alive``) and on an average
item (``units_firing``). Give a checkpoint (a run folder means its latest) with ``--checkpoint``, or a preset's
random initial weights with ``--preset`` (and ``--seed``). Examples (docs/benchmarks.md, Sa2VA and SVAC section)::

    avseg train --data avseg-demo/synthav/rvos --format rvos --model sa2va-tiny --out runs/sa2va --max-steps 300 \\
        --seed 0
    python benchmarks/seg_token.py --checkpoint runs/sa2va/checkpoints/step-0000300 --data avseg-demo/synthav/rvos
    python benchmarks/seg_token.py --preset sa2va-tiny --data avseg-demo/synthav/rvos

Prints one JSON record.
"""

from __future__ import annotations

import argparse
import json
import platform
from datetime import date
from pathlib import Path

import torch
from torch import Tensor

POINTS = ("hidden", "projector_relu", "prompt")


def relative_spread(rows: Tensor) -> float:
    """``(N, D)`` → the norm of the per-dimension standard deviation over the mean row norm."""
    return float(rows.std(0).norm() / rows.norm(dim=1).mean())


def within_group_spread(rows: Tensor, groups: list[str]) -> float:
    """The mean over groups of two or more rows of their standard deviation's norm, over the mean row norm of all."""
    members: dict[str, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    spreads = [rows[ids].std(0).norm() for ids in members.values() if len(ids) > 1]
    if not spreads:
        raise SystemExit("no video has two non-null expressions: within-video spread is undefined")
    return float(torch.stack(spreads).mean() / rows.norm(dim=1).mean())


@torch.no_grad()
def seg_token_path(model: torch.nn.Module, dataset, chunk: int = 16) -> tuple[dict[str, Tensor], list[str]]:
    """``{point: (N, D)}`` at each of :data:`POINTS` for every item of ``dataset``, one row per ``[SEG]`` (SVAC has
    one per clip), and each row's group: its video and the index of its ``[SEG]`` in the answer."""
    from avseg.data.types import collate
    from avseg.models.sa2va import Sa2VA

    model.eval()
    seen: dict[str, list[Tensor]] = {point: [] for point in POINTS}

    def record(module: torch.nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        seen["hidden"].append(inputs[0].flatten(0, -2))  # (B·n, H)
        seen["projector_relu"].append(module[:2](inputs[0]).flatten(0, -2))
        seen["prompt"].append(output.flatten(0, -2))

    groups: list[str] = []
    hook = model.seg_projector.register_forward_hook(record)
    try:
        for start in range(0, len(dataset), chunk):
            indices = range(start, min(start + chunk, len(dataset)))
            batch = collate([dataset[i] for i in indices])
            if isinstance(model, Sa2VA):
                model.read_seg_tokens(batch, model.inference_frames(batch))
            else:
                model.read_seg_tokens(batch)
            per_item = seen["hidden"][-1].shape[0] // len(indices)
            groups += [f"{dataset.records[i].video_id}/{k}" for i in indices for k in range(per_item)]
    finally:
        hook.remove()
    return {point: torch.cat(rows) for point, rows in seen.items()}, groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="a run folder or checkpoint (sa2va, svac or simtoken)")
    source.add_argument("--preset", help="a preset, measured at its random initial weights")
    parser.add_argument("--data", type=Path, required=True, help="an RVOS- (or, with --format refavs, Ref-AVS-) root")
    parser.add_argument("--format", choices=("rvos", "refavs"), default="rvos", help="the dataset's layout")
    parser.add_argument("--split", default="val")
    parser.add_argument("--seed", type=int, default=0, help="with --preset: the seed of the initial weights")
    parser.add_argument("--overrides", nargs="*", default=[], help="with --preset: model settings (mllm.trainable=[])")
    parser.add_argument("--image-size", type=int, default=None, help="reader frame size (default: the model's)")
    args = parser.parse_args()
    if args.checkpoint is not None and args.overrides:
        parser.error("--overrides applies to --preset only (a checkpoint keeps the settings it was trained with)")

    from avseg.checkpoint import read_training_data
    from avseg.config import parse_overrides
    from avseg.data.base import AVSDataset
    from avseg.data.readers import get_reader
    from avseg.models import create_model, load_model
    from avseg.train.trainer import seed_everything

    if args.checkpoint is not None:
        model = load_model(args.checkpoint)
        size = args.image_size or read_training_data(args.checkpoint).image_size or model.input_size
    else:
        seed_everything(args.seed)
        model = create_model(args.preset, **parse_overrides(args.overrides))
        size = args.image_size or model.input_size
    if not hasattr(model, "seg_projector"):
        raise SystemExit(f"{type(model).__name__} has no [SEG] projector: this script measures MLLM + SAM models")
    dataset = get_reader(args.format, args.data, image_size=size).dataset(args.split)
    dataset = AVSDataset(dataset.reader, [r for r in dataset.records if not r.is_null])
    # SVAC's [SEG] of clip k is compared with the other expressions' [SEG] of the same clip.
    path, videos = seg_token_path(model, dataset)
    figures: dict[str, float] = {}
    for point in POINTS:
        figures[f"{point}_spread"] = round(relative_spread(path[point]), 4)
        figures[f"{point}_within_video"] = round(within_group_spread(path[point], videos), 4)
    fires = path["projector_relu"] > 0
    figures["units_alive"] = round(float(fires.any(0).float().mean()), 3)
    figures["units_firing"] = round(float(fires.float().mean()), 3)
    record = {
        "benchmark": "seg_token",
        "date": date.today().isoformat(),
        "source": str(args.checkpoint) if args.checkpoint is not None else f"{args.preset} (seed {args.seed})",
        "data": str(args.data),
        "split": args.split,
        "expressions": len(dataset.records),
        **figures,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
    }
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
