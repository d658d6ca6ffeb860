"""Training throughput of the promptable SAM2 presets (``sam2-tiny``, ``sam2-hiera-*``, ``sam2.1-hiera-*``).

Clips per second of full training steps (forward with SAM2's prompt simulation, the multi-step loss, backward,
gradient clipping and the recipe's AdamW step over the model's parameter groups) on a random batch of square objects,
with random SAM2 weights built from the config (no download), and the peak memory. No data loading: the reader's cost
is measured by ``benchmarks/synthav.py``. Examples (docs/benchmarks.md)::

    HF_HUB_OFFLINE=1 python benchmarks/sam2_train.py --model sam2-tiny
    HF_HUB_OFFLINE=1 python benchmarks/sam2_train.py --model sam2-hiera-t --steps 1
    python benchmarks/sam2_train.py --model sam2.1-hiera-b+ --device cuda --dtype bfloat16

Defaults come from the preset: clips per step = its recipe's ``batch_size``, frames per clip = ``train_frames`` (8),
frame size = SAM2's input size. The prompt simulation draws a different plan each step (masks on half of the steps,
else clicks or boxes with up to 2 x 7 corrective decoder passes); each step is seeded (``--seed`` + step), so runs
repeat, and the record lists the decoder passes of each timed step. ``--prompts mask`` or ``clicks`` fixes the kind
(``clicks``: SAM2's point-prompted steps, the expensive ones).

Prints one JSON record: seconds of each timed step, median s/step, clips/s and frames/s at the median, peak memory
(CPU: the process's maximum resident set size, which includes building the model, reported beside the RSS after
building; GPU: ``torch.cuda.max_memory_allocated``), threads, load average before and after, device and versions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any


def _max_rss_mib() -> float:
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # Linux reports KiB, macOS bytes


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sam2-tiny", help="a SAM2 VOS preset (sam2-tiny, sam2[.1]-hiera-{t,s,b+,l})")
    parser.add_argument("--clips", type=int, default=None, help="clips per step (default: the recipe's batch_size)")
    parser.add_argument("--frames", type=int, default=None, help="frames per clip (default: train_frames)")
    parser.add_argument("--size", type=int, default=None, help="frame size (default: SAM2's input size)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--prompts", choices=["simulated", "mask", "clicks"], default="simulated")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, …")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="autocast dtype")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overrides", nargs="*", default=[], help="model config overrides (key=value, YAML values)")
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 0:
        parser.error(f"--steps must be >= 1 and --warmup >= 0, got {args.steps} and {args.warmup}")
    load_before = os.getloadavg()

    import torch

    from avseg.config import parse_overrides
    from avseg.data.types import random_batch
    from avseg.models import create_model
    from avseg.models.sam2_vos import SAM2VOS
    from avseg.train.optim import build_optimizer

    device = torch.device(args.device)
    overrides: dict[str, Any] = {"pretrained": False, **parse_overrides(args.overrides)}
    if args.prompts != "simulated":
        overrides["prompts.prob_point_input"] = 1.0 if args.prompts == "clicks" else 0.0
    torch.manual_seed(args.seed)
    model = create_model(args.model, **overrides)
    if not isinstance(model, SAM2VOS):
        parser.error(f"--model {args.model} is not a SAM2 VOS preset")
    model.to(device).train()
    recipe = model.config.recipe
    if recipe is None:
        parser.error(f"--model {args.model} has no training recipe")
    clips = args.clips or recipe.batch_size
    frames = args.frames or model.config.train_frames or 8
    size = args.size or model.sam2.image_size
    optimizer = build_optimizer(model, recipe.optim)
    clip_norm = recipe.clip_grad_norm
    batch = random_batch(clips, frames, size, masks="square", seed=args.seed).to(device)
    rss_built = _max_rss_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    times: list[float] = []
    passes: list[int] = []
    for step in range(args.warmup + args.steps):
        torch.manual_seed(args.seed + step)  # the prompt plan of this step
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16"):
            output = model(batch)
            loss = model.losses(batch, output)["loss"]
        loss.backward()
        if clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
            passes.append(sum(len(frame_passes) for frame_passes in output.aux["steps"]))
        del output, loss

    median = statistics.median(times)
    record: dict[str, Any] = {
        "model": args.model,
        "overrides": args.overrides,
        "prompts": args.prompts,
        "clips_per_step": clips,
        "frames_per_clip": frames,
        "frame_size": size,
        "sam2_input_size": model.sam2.image_size,
        "trainable_parameters_m": round(model.num_parameters(trainable_only=True) / 1e6, 2),
        "device": str(device),
        "dtype": args.dtype,
        "warmup_steps": args.warmup,
        "step_seconds": [round(t, 3) for t in times],
        "decoder_passes_per_step": passes,
        "median_step_seconds": round(median, 3),
        "clips_per_second": round(clips / median, 4),
        "frames_per_second": round(clips * frames / median, 3),
        "threads": torch.get_num_threads(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": f"{_cpu_name()}, {os.cpu_count()} cores",
    }
    if device.type == "cuda":
        record["peak_memory_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        record["peak_memory_kind"] = "cuda_max_allocated"
        record["gpu"] = torch.cuda.get_device_name(device)
    else:
        record["peak_memory_mib"] = round(_max_rss_mib(), 1)
        record["peak_memory_kind"] = "max_rss"
        record["rss_after_build_mib"] = round(rss_built, 1)
    print(json.dumps(record))


if __name__ == "__main__":
    main()
