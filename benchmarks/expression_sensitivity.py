"""Does a trained model follow the expression? Compare its masks for different expressions of the same video.

For every video of a Ref-AVS-layout (or, with ``--format rvos``, RVOS-layout) split with at least two non-null
expressions, the model segments the clip once
per expression (same frames, same soundtrack); for every pair of those expressions, the fraction of labelled pixels
where the two predicted masks disagree is set against the fraction where the two ground-truth masks disagree. A model
that reads the expression disagrees about as much as the ground truth does; one that segments the same objects
whatever it is told disagrees nowhere (ratio near 0). Example (the AuralSAM2 figures of docs/benchmarks.md)::

    avseg demo --model auralsam2-tiny --work-dir runs/demo-auralsam2
    python benchmarks/expression_sensitivity.py --checkpoint runs/demo-auralsam2/run \\
        --data runs/demo-auralsam2/synthav/refavs --split val --videos 30 --image-size 128

Prints one JSON record.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="a run folder or checkpoint")
    parser.add_argument("--data", type=Path, required=True, help="a Ref-AVS- or RVOS-layout dataset root")
    parser.add_argument("--format", choices=("refavs", "rvos"), default="refavs", help="the dataset's layout")
    parser.add_argument("--split", default="val")
    parser.add_argument("--videos", type=int, default=40, help="videos to use (those with >= 2 expressions)")
    parser.add_argument("--expressions", type=int, default=4, help="expressions per video at most")
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="reader frame size (default: the size the checkpoint was trained at)",
    )
    args = parser.parse_args()

    from avseg.checkpoint import read_training_data
    from avseg.data.readers import get_reader
    from avseg.data.types import collate
    from avseg.models import load_model

    model = load_model(args.checkpoint).eval()
    size = args.image_size or read_training_data(args.checkpoint).image_size or model.input_size
    reader = get_reader(args.format, args.data, image_size=size)
    dataset = reader.dataset(args.split)
    by_video: dict[str, list[int]] = {}
    for index, record in enumerate(dataset.records):
        if not record.is_null:
            by_video.setdefault(record.video_id, []).append(index)
    groups = [ids[: args.expressions] for ids in by_video.values() if len(ids) >= 2][: args.videos]
    if not groups:
        raise SystemExit(f"{args.data} split {args.split}: no video has two non-null expressions")
    predicted, truth, pairs = 0.0, 0.0, 0
    for ids in groups:
        batch = collate([dataset[i] for i in ids])
        with torch.no_grad():
            masks = model(batch).mask_logits[:, :, 0] > 0  # (E, T, H, W)
        target = batch.masks > 0
        valid = batch.label_valid[:, :, None, None].expand_as(target)  # (E, T, H, W)
        for a in range(len(ids)):
            for b in range(a + 1, len(ids)):
                both = valid[a] & valid[b]
                count = both.sum().clamp_min(1).item()
                predicted += ((masks[a] ^ masks[b]) & both).sum().item() / count
                truth += ((target[a] ^ target[b]) & both).sum().item() / count
                pairs += 1
    record = {
        "checkpoint": str(args.checkpoint),
        "split": args.split,
        "videos": len(groups),
        "pairs": pairs,
        "predicted_disagreement": predicted / pairs,
        "ground_truth_disagreement": truth / pairs,
        "ratio": (predicted / truth) if truth else None,
        "machine": {"cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads()},
    }
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
