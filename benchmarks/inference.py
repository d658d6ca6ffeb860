"""Inference frames/s of registered presets on random weights and a synthetic clip (no download, no dataset).

Run: ``python benchmarks/inference.py --model avsegformer-tiny --size 224 --frames 10 [--threads 2] [--device cpu]``.
Prints one markdown row per preset: frames/s of ``model(batch)`` under ``torch.inference_mode`` (median of
``--repeats`` timed clips after ``--warmup`` untimed ones), the input size, and the machine.

The clip is the model contract's batch (uint8 frames at ``--size``, log-mel audio examples, an expression), so the
figure includes the model's own resizing, audio encoder and text encoder, not data loading or metric computation.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", required=True, help="registered preset name(s)")
    parser.add_argument("--size", type=int, default=224, help="frame size of the synthetic clip")
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--text", default="the object making the loudest sound")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import torch

    from avseg.data.types import random_batch
    from avseg.models import create_model, get_entry

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    machine = f"{platform.machine()} {platform.processor() or ''}".strip() + f", {torch.get_num_threads()} threads"
    if device.type == "cuda":
        machine = torch.cuda.get_device_name(device)
    print(f"machine: {machine}; clip: {args.frames} frames at {args.size} px")
    print("| preset | frames/s | seconds per clip (median) | clips timed |")
    print("|---|---|---|---|")
    for name in args.model:
        overrides = {"pretrained": False} if hasattr(get_entry(name).config(), "pretrained") else {}
        torch.manual_seed(0)
        model = create_model(name, **overrides).eval().to(device)
        batch = random_batch(1, args.frames, args.size, texts=[args.text], masks="empty").to(device)
        times = []
        with torch.inference_mode():
            for i in range(args.warmup + args.repeats):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                model(batch)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if i >= args.warmup:
                    times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        print(f"| {name} | {args.frames / seconds:.1f} | {seconds:.3f} | {len(times)} |", flush=True)


if __name__ == "__main__":
    main()
