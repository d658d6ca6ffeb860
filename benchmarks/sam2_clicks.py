"""How well a SAM2 segments an object from one click or its box, on the frame it is prompted on.

Run: ``python benchmarks/sam2_clicks.py --weights avseg:sam2-tiny-synthav --data runs/synthav-vos/vos --split val``.
Prints one JSON record (and writes it to ``--out`` when given).

`avseg eval --format vos --vos-prompt points|box` scores the *tracked* frames (the ``davis_semi`` protocol leaves the
prompted frame out). This script scores the prompted frame itself: every object of the split on its first annotated
frame, prompted as ``avseg eval`` prompts it (one click at the pixel farthest from the object's boundary, or the
object's exact box), decoded by SAM2's image path (no memory, three candidate masks). It reports the mean J of the
candidate SAM2's IoU head picks, as SAM2's predictor returns it, and of the best candidate (an upper bound on the IoU
head's choice).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from datetime import date

import torch
import torch.nn.functional as F

from avseg.data.readers import get_reader
from avseg.layers.sam2 import build_sam2
from avseg.layers.sam2.config import cpu_sam2_config
from avseg.layers.sam2.decoder import Sam2Prompt
from avseg.layers.sam2.prompts import sample_box_points, sample_error_points
from avseg.models.base import IMAGENET_MEAN, IMAGENET_STD


def jaccard(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """``(..., H, W)`` bool → ``(...)`` IoU; 1 where both are empty."""
    inter = (pred & gt).flatten(-2).sum(-1).float()
    union = (pred | gt).flatten(-2).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--weights",
        default="avseg:sam2-tiny-synthav",
        help="a SAM2 of the CPU presets' shape: avseg:sam2-tiny-synthav, or a folder from `avseg convert sam2` "
        "of a sam2-tiny run",
    )
    parser.add_argument("--data", required=True, help="a VOS-layout root (DAVIS 2017 / SynthAV's vos layout)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    layer = build_sam2(cpu_sam2_config(weights=args.weights), pretrained=True).eval()
    size = layer.image_size
    dataset = get_reader("vos", args.data, image_size=size).dataset(args.split)
    frames, masks = [], []
    for i in range(len(dataset)):
        sample = dataset[i]
        first = int(sample.meta.get("first_frame", 0))
        frames.append(sample.frames[first])
        masks.append(sample.masks[first] > 0)
    scores: dict[str, dict[str, list[float]]] = {p: {"iou_head": [], "best": []} for p in ("click", "box")}
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        for start in range(0, len(frames), args.batch):
            images = torch.stack(frames[start : start + args.batch]).float() / 255
            gt = torch.stack(masks[start : start + args.batch])  # (B, S, S)
            features = layer.encode_frames((images - mean) / std)
            for kind in ("click", "box"):
                if kind == "click":
                    points, labels = sample_error_points(gt, None, method="center")
                else:
                    points, labels = sample_box_points(gt, noise=0.0, generator=torch.Generator().manual_seed(0))
                out = layer.decode(features, Sam2Prompt(points=points, point_labels=labels), multimask_output=True)
                candidates = F.interpolate(out.mask_logits, size=gt.shape[-2:], mode="bilinear") > 0  # (B, 3, S, S)
                per_candidate = jaccard(candidates, gt[:, None])  # (B, 3)
                chosen = per_candidate.gather(1, out.iou_pred.argmax(1, keepdim=True))[:, 0]
                scores[kind]["iou_head"] += chosen.tolist()
                scores[kind]["best"] += per_candidate.max(1).values.tolist()
    record = {
        "weights": args.weights,
        "data": args.data,
        "split": args.split,
        "objects": len(frames),
        "J": {k: {which: round(sum(v) / len(v), 4) for which, v in d.items()} for k, d in scores.items()},
        "machine": {"cpu": platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__},
        "date": date.today().isoformat(),
    }
    text = json.dumps(record, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return record


if __name__ == "__main__":
    main()
