"""SAM2 layer benchmark: clip propagation speed against transformers' own video model, and memory on long videos.

Run: ``OMP_NUM_THREADS=1 python benchmarks/sam2_layer.py [--variant sam2.1-hiera-tiny] [--image-size 256]
[--frames 16] [--long-frames 600] [--out benchmarks/results/sam2_layer.json]``. Prints one JSON record.

* ``speed``: one clip of ``--frames`` frames, one object clicked on frame 0, propagated forward by (a) the avseg layer
  (all frames through the image encoder in chunks of ``--chunk-size``, then SAM2's memory tracking) and (b)
  transformers' ``Sam2VideoModel`` as its documentation uses it (an inference session, ``propagate_in_video_iterator``,
  one frame per image-encoder call), on the same random weights and frames, in one process, best of ``--repeats``.
  Also reports the largest difference between the two mask outputs (they compute the same thing).
* ``long``: ``--long-frames`` frames streamed from a frame loader through ``propagate_iter`` in a fresh process; peak
  resident memory (``VmHWM``) against the same process after building the model, and the largest memory bank.
  ``--compare-long`` also runs transformers' session on the same long video in another fresh process (the session
  holds the whole video and keeps every frame's outputs).

Weights are random (nothing is downloaded); speed and memory do not depend on their values.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import torch


def machine() -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


def _rss_mb() -> float:
    """Current resident set size in MiB (Linux /proc)."""
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    """Peak resident set size of this process image in MiB (``VmHWM``; unlike ``ru_maxrss`` it is not inherited
    from the parent across fork and exec)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _layer(variant: str, image_size: int):
    from avseg.layers.sam2 import Sam2LayerConfig, build_sam2

    torch.manual_seed(0)
    return build_sam2(Sam2LayerConfig(variant=variant, image_size=image_size))


def _frames(count: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _transformers_propagate(model, video: torch.Tensor, point: tuple[float, float]) -> dict[int, torch.Tensor]:
    from transformers.models.sam2_video.modeling_sam2_video import Sam2VideoInferenceSession

    size = video.shape[-1]
    session = Sam2VideoInferenceSession(video=video, video_height=size, video_width=size, dtype=torch.float32)
    index = session.obj_id_to_idx(1)
    session.add_point_inputs(
        index, 0, {"point_coords": torch.tensor([[[point]]]), "point_labels": torch.ones(1, 1, 1, dtype=torch.int32)}
    )
    session.obj_with_new_inputs = [1]
    masks = {}
    with torch.inference_mode():
        masks[0] = model(session, frame_idx=0).pred_masks
        for out in model.propagate_in_video_iterator(session):
            masks[out.frame_idx] = out.pred_masks
    return masks


def bench_speed(args: argparse.Namespace) -> dict:
    from avseg.layers.sam2 import Sam2Prompt

    layer = _layer(args.variant, args.image_size)
    video = _frames(args.frames, args.image_size)
    point = (args.image_size * 0.4, args.image_size * 0.6)
    prompts = {0: Sam2Prompt(points=torch.tensor([[point]]))}

    def ours() -> torch.Tensor:
        with torch.no_grad():
            return layer.propagate(video[None], prompts=prompts, chunk_size=args.chunk_size).masks[0]

    def theirs() -> torch.Tensor:
        masks = _transformers_propagate(layer.model, video, point)
        return torch.stack([masks[t][0] for t in range(args.frames)])

    # warm-up on the real shapes, then alternate to share any background load fairly. On a shared machine the
    # process CPU time (one thread) is the steadier measure; wall time is reported beside it.
    ours_out, theirs_out = ours(), theirs()
    wall: dict[str, list[float]] = {"avseg": [], "transformers": []}
    cpu: dict[str, list[float]] = {"avseg": [], "transformers": []}
    for _ in range(args.repeats):
        for name, fn in (("avseg", ours), ("transformers", theirs)):
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    best_wall = {name: min(values) for name, values in wall.items()}
    best_cpu = {name: min(values) for name, values in cpu.items()}
    return {
        "variant": args.variant,
        "image_size": args.image_size,
        "frames": args.frames,
        "chunk_size": args.chunk_size,
        "repeats": args.repeats,
        "avseg_frames_per_s": round(args.frames / best_wall["avseg"], 3),
        "transformers_frames_per_s": round(args.frames / best_wall["transformers"], 3),
        "speedup_wall": round(best_wall["transformers"] / best_wall["avseg"], 3),
        "avseg_frames_per_cpu_s": round(args.frames / best_cpu["avseg"], 3),
        "transformers_frames_per_cpu_s": round(args.frames / best_cpu["transformers"], 3),
        "speedup_cpu_time": round(best_cpu["transformers"] / best_cpu["avseg"], 3),
        "wall_seconds": {name: [round(t, 3) for t in values] for name, values in wall.items()},
        "cpu_seconds": {name: [round(t, 3) for t in values] for name, values in cpu.items()},
        "max_abs_mask_diff": float((ours_out - theirs_out).abs().max()),
    }


def _long_setup(args: argparse.Namespace):
    layer = _layer(args.variant, args.long_image_size)
    size = args.long_image_size

    def loader(indices: list[int]) -> torch.Tensor:  # frames made on demand, as a video decoder would
        return torch.stack([_frames(1, size, seed=i)[0] for i in indices])[None]

    return layer, size, loader


def bench_long(args: argparse.Namespace) -> dict:
    """Runs in its own process (``--part long``) so that the peak memory is this part's own."""
    from avseg.layers.sam2 import Sam2Prompt
    from avseg.layers.sam2 import layer as layer_module

    layer, size, loader = _long_setup(args)
    bank_bytes = [0]
    bank_frames = [0]

    class MeasuredBank(layer_module.MemoryBank):
        def add(self, frame, memory, *, conditioning):
            super().add(frame, memory, conditioning=conditioning)
            bank_bytes[0] = max(bank_bytes[0], self.nbytes())
            bank_frames[0] = max(bank_frames[0], len(self.cond) + len(self.tracked))

    layer_module.MemoryBank = MeasuredBank
    prompts = {0: Sam2Prompt(points=torch.tensor([[[size * 0.4, size * 0.6]]]))}
    baseline = _rss_mb()
    start = time.perf_counter()
    kept = []
    with torch.no_grad():
        for out in layer.propagate_iter(
            loader, num_frames=args.long_frames, batch_size=1, prompts=prompts, chunk_size=args.chunk_size
        ):
            kept.append((out.masks[0, 0] > 0).to(torch.bool))  # what an application keeps: the binary low-res mask
    seconds = time.perf_counter() - start
    return {
        "implementation": "avseg propagate_iter, frames from a loader",
        "variant": args.variant,
        "image_size": size,
        "frames": args.long_frames,
        "chunk_size": args.chunk_size,
        "seconds": round(seconds, 1),
        "frames_per_s": round(args.long_frames / seconds, 3),
        "rss_after_build_mb": round(baseline, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "peak_growth_mb": round(_peak_rss_mb() - baseline, 1),
        "memory_bank_max_mb": round(bank_bytes[0] / 2**20, 2),
        "memory_bank_max_frames": bank_frames[0],
    }


def bench_long_transformers(args: argparse.Namespace) -> dict:
    """transformers' session on the same long video (``--part long-transformers``, its own process): the session
    holds the whole video and keeps every frame's outputs."""
    layer, size, loader = _long_setup(args)
    baseline = _rss_mb()
    video = torch.cat([loader([i])[0] for i in range(args.long_frames)])
    start = time.perf_counter()
    _transformers_propagate(layer.model, video, (size * 0.4, size * 0.6))
    seconds = time.perf_counter() - start
    return {
        "implementation": "transformers Sam2VideoModel session, propagate_in_video_iterator",
        "image_size": size,
        "frames": args.long_frames,
        "seconds": round(seconds, 1),
        "frames_per_s": round(args.long_frames / seconds, 3),
        "rss_after_build_mb": round(baseline, 1),
        "video_tensor_mb": round(video.numel() * video.element_size() / 2**20, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "peak_growth_mb": round(_peak_rss_mb() - baseline, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="sam2.1-hiera-tiny")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--chunk-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--long-frames", type=int, default=600)
    parser.add_argument("--long-image-size", type=int, default=128)
    parser.add_argument("--compare-long", action="store_true")
    parser.add_argument("--part", choices=["all", "speed", "long", "long-transformers"], default="all")
    parser.add_argument("--out", default=None, help="also write the JSON record here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    if args.part == "long":
        print(json.dumps(bench_long(args)))
        return
    if args.part == "long-transformers":
        print(json.dumps(bench_long_transformers(args)))
        return
    record: dict = {"machine": machine(), "speed": bench_speed(args)}
    if args.part == "all":
        parts = ["long", "long-transformers"] if args.compare_long else ["long"]
        for part in parts:  # each in a fresh process, so that peak memory is this part's own
            child = [sys.executable, __file__, "--part", part, *_forward(args)]
            result = subprocess.run(child, capture_output=True, text=True, check=True)
            record[part.replace("-", "_")] = json.loads(result.stdout.strip().splitlines()[-1])
    text = json.dumps(record, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")


def _forward(args: argparse.Namespace) -> list[str]:
    sizes = ["--long-frames", str(args.long_frames), "--long-image-size", str(args.long_image_size)]
    return ["--variant", args.variant, "--chunk-size", str(args.chunk_size), *sizes]


if __name__ == "__main__":
    main()
