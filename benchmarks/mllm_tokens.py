"""Tokens an MLLM segmenter's language model prefills per video: SVAC's ASTC against Sa2VA's uncompressed frames.

Run: ``python benchmarks/mllm_tokens.py --frames 20 [--time]``. For each preset (default: ``sa2va-tiny``,
``svac-tiny``, ``sa2va-1b``, ``sa2va-4b``, ``svac-4b``) the preset's clip layout is stretched to ``--frames`` frames
(Sa2VA: one clip of ``--frames`` frames; SVAC: its ``N`` clips of ``--frames / N`` frames each, anchor + composite), and
the script prints one markdown row: images the MLLM reads, image tokens (the tokens of every image, with InternVL's
``<img>``/``</img>`` around each), and, for presets whose tokenizer is available offline (the tiny ones), the whole
prompt including the question and answer. The ratio column compares each preset with the Sa2VA preset of the same
size. Counts come from the configs (no weights are built for the paper-size presets). With ``--time`` the tiny
presets also run ``model(batch)`` on a random clip of ``--frames`` frames in eval mode (median of 3 after 1 warm-up;
wall time, machine-dependent).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from dataclasses import replace

PAIRS = {"svac-tiny": "sa2va-tiny", "svac-4b": "sa2va-4b"}


def stretched(config, frames: int):
    """The preset's config with its clip layout covering ``frames`` frames."""
    clips = config.clips
    per_clip = max(frames // clips.num_clips, 1)
    grid = clips.grid
    if clips.compress and grid is not None and grid[0] * grid[1] < per_clip - 1:
        grid = None
    return replace(config, clips=replace(clips, clip_length=per_clip, grid=grid))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", default=["sa2va-tiny", "svac-tiny", "sa2va-1b", "sa2va-4b", "svac-4b"])
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--time", action="store_true", help="also time the tiny presets' forward pass on CPU")
    args = parser.parse_args()

    import torch
    import transformers

    from avseg.data.types import random_batch
    from avseg.layers.mllm import MLLM_FAMILIES, tokens_per_image
    from avseg.models import get_entry
    from avseg.models.sa2va import Sa2VA

    rows = {}
    for name in args.model:
        cfg = stretched(get_entry(name).config(), args.frames)
        hf = dict(cfg.mllm.hf_config)
        config_cls = getattr(transformers, MLLM_FAMILIES[cfg.mllm.family][1])
        wrapped = cfg.mllm.family != "llava"  # an opening and a closing token around each image
        per_image = tokens_per_image(cfg.mllm.family, config_cls(**hf), cfg.mllm.image_size) + 2 * wrapped
        images = cfg.clips.images_per_video
        row = {"images": images, "image_tokens": images * per_image, "prompt": None, "seconds": None}
        if not cfg.pretrained:  # the tiny presets: a real tokenizer is at hand
            model = Sa2VA(cfg).eval()
            question = model.question("the red circle on the left", images)
            row["prompt"] = int(model.mllm.tokenize([question], [model.answer_text()]).input_ids.shape[1])
            if args.time:
                batch = random_batch(1, args.frames, 128, texts=["the red circle on the left"])
                times = []
                with torch.inference_mode():
                    for _ in range(4):
                        start = time.perf_counter()
                        model(batch)
                        times.append(time.perf_counter() - start)
                row["seconds"] = statistics.median(times[1:])
        rows[name] = row

    print(f"{args.frames} frames per video; {platform.processor() or platform.machine()}, torch {torch.__version__}")
    print()
    print("| preset | images | image tokens | prompt tokens | vs Sa2VA | s / video (CPU) |")
    print("|---|---|---|---|---|---|")
    for name, row in rows.items():
        base = rows.get(PAIRS.get(name, ""))
        ratio = f"{base['image_tokens'] / row['image_tokens']:.1f}x fewer" if base else "—"
        prompt = str(row["prompt"]) if row["prompt"] is not None else "—"
        seconds = f"{row['seconds']:.2f}" if row["seconds"] is not None else "—"
        print(f"| `{name}` | {row['images']} | {row['image_tokens']} | {prompt} | {ratio} | {seconds} |")


if __name__ == "__main__":
    main()
