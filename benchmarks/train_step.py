"""Seconds per training step of a preset (forward, losses, backward, AdamW step) on a random batch, no data loading.

It separates the model's cost from the reader's and shows whether a change of width costs time: on 2 CPU cores a tiny
model is bound by per-operation overhead, so a wider layer can be nearly free. Example (docs/benchmarks.md)::

    python benchmarks/train_step.py --model auralsam2-tiny --clips 8 --frames 10 --size 128 \\
        --overrides 'sam2.hf_config={}'

``--overrides`` are model config overrides (``key=value``, YAML values). The first ``--warmup`` steps are not timed;
the median of the next ``--steps`` is printed.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--clips", type=int, default=8, help="clips per step")
    parser.add_argument("--frames", type=int, default=10, help="frames per clip")
    parser.add_argument("--size", type=int, default=128, help="frame size (square)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--overrides", nargs="*", default=[])
    args = parser.parse_args()

    import torch

    from avseg.config import parse_overrides
    from avseg.data.types import random_batch
    from avseg.models import create_model

    torch.manual_seed(0)
    model = create_model(args.model, **parse_overrides(args.overrides))
    model.train()
    batch = random_batch(
        args.clips, args.frames, args.size, texts=["the red circle"] * args.clips, masks="square", seed=0
    )
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    times = []
    for step in range(args.warmup + args.steps):
        start = time.perf_counter()
        loss = model.losses(batch, model(batch))["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    trainable = model.num_parameters(trainable_only=True)
    print(
        f"{args.model} {' '.join(args.overrides) or '(preset)'}: {statistics.median(times):.3f} s/step "
        f"(median of {args.steps}; {args.clips} clips x {args.frames} frames at {args.size} px; "
        f"{trainable / 1e6:.2f} M trainable; {torch.get_num_threads()} threads; {platform.processor() or 'cpu'})"
    )


if __name__ == "__main__":
    main()
