"""Where does ``sam2love-tiny`` lose the expression? Its prompt path against a token that follows the expression.

SAM2-LOVE prompts SAM2's mask decoder with one fused ``[seg]`` token. This script trains the preset's pipeline (the
demo's recipe and trainer; SAM2's prompt encoder and mask decoder at ``--sam2-lr``) on the vision-only expressions of
a SynthAV (no null expressions, no flips, no object-score loss: only the masks teach it), once per prompt head:

- ``fused``: the preset's fusion, ``[seg]`` and projector;
- ``sentence``: no fusion: ``Linear(E, 384) → GELU → Linear(384, C)`` on the masked mean of the frozen MiniLM token
  features (the token of ``benchmarks/token_grounding.py``'s decoder head), straight into SAM2's prompt.

It then scores frame 0 (the prompted frame, which SAM2 decodes without memory) of the val split's vision-only
expressions: the mean IoU per template at the frame size; the fraction of pixels that change when each expression's
prompt token is swapped with another expression's (a decoder that ignores its prompt changes none); before and after
training, how much the prompt token varies across expressions (standard deviation across items over the mean norm)
and the fraction of the ``fused`` projector's hidden ReLU units that fire on at least one item (a unit that never
fires passes nothing that depends on the item). Examples (docs/benchmarks.md, SAM2-LOVE section)::

    python benchmarks/prompt_path.py --data avseg-demo/synthav/refavs --out runs/prompt-path --steps 400
    python benchmarks/prompt_path.py --data avseg-demo/synthav/refavs --out runs/prompt-path-3e-3 --steps 400 \
        --overrides train.lr=3e-3

Writes ``OUT/data/`` (the filtered metadata, linking the frames and masks of ``--data``), ``OUT/HEAD/`` (each
training run), ``OUT/prompt_path.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import time
from collections import defaultdict
from datetime import date
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from avseg.data.refavs import null_kind
from avseg.data.synthav.references import read_manifest
from avseg.layers.sam2.decoder import Sam2Prompt
from avseg.layers.text import masked_mean
from avseg.models.registry import register_model
from avseg.models.sam2love import SAM2LOVE, FusionOutput, sam2love_tiny

PRESETS = {"fused": "sam2love-tiny", "sentence": "sam2love-tiny-sentence-prompt"}
TEMPLATES = ("v_colour", "v_shape", "v_colour_shape", "v_side", "v_biggest", "v_smallest")


class SentencePromptLOVE(SAM2LOVE):
    """``sam2love-tiny`` with its fusion bypassed: the prompt is an MLP of the expression's sentence embedding."""

    family = "sam2love_sentence_prompt"

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        assert self.text_encoder is not None
        width = self.text_encoder.module.hidden_size
        self.sentence = nn.Sequential(nn.Linear(width, 384), nn.GELU(), nn.Linear(384, self.sam2.hidden_size))
        self.projector = nn.Sequential(nn.Identity())  # the sentence MLP already ends at SAM2's width

    def fuse(self, batch: Any) -> FusionOutput:
        device = self.sentence[0].weight.device
        tokens, valid = self._text_tokens(batch.text, device)  # (B, K, E), (B, K)
        prompt = self.sentence(masked_mean(tokens, valid))[:, None]  # (B, 1, C)
        b, t = batch.frames.shape[:2]
        unused = prompt.new_zeros(b, t, 1, prompt.shape[-1])
        return FusionOutput(
            prompt=prompt, seg_inputs=unused, seg_outputs=unused, lengths=torch.zeros(t, dtype=torch.long)
        )


register_model(PRESETS["sentence"], SentencePromptLOVE, tasks=("refavs",))(sam2love_tiny)


def vision_only(data: Path, out: Path) -> Path:
    """``out/refavs``: the metadata of ``data`` whose training rows keep only non-null vision-only expressions (the
    other splits whole), with links to its frames and masks."""
    root = out / "refavs"
    root.mkdir(parents=True, exist_ok=True)
    for name in ("media", "gt_mask"):
        link = root / name
        if not link.exists():
            link.symlink_to((data / name).resolve(), target_is_directory=True)
    with open(data / "metadata.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    keep = [r for r in rows if r["split"] != "train" or (r["modalities"] == "visual" and null_kind(r["uid"]) is None)]
    with open(root / "metadata.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(keep)
    return root


@torch.no_grad()
def prompt_tokens(model: SAM2LOVE, batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(B, n', C)`` the prompt the model gives SAM2 for each expression, and ``(B, n', W)`` the hidden layer of its
    ``Linear → ReLU → Linear`` projector (None for a head without one)."""
    fused = model.fuse(batch).prompt
    if len(model.projector) == 3 and isinstance(model.projector[1], nn.ReLU):
        hidden = model.projector[:2](fused)
        return model.projector[2:](hidden), hidden
    return model.projector(fused), None


@torch.no_grad()
def frame0_masks(model: SAM2LOVE, batch: Any, tokens: torch.Tensor) -> torch.Tensor:
    """``(B, H, W)`` bool: SAM2's mask on frame 0 prompted with ``tokens`` (eval mode, no memory)."""
    images = model.sam2.resize(model.normalize_frames(batch, torch.zeros(1, dtype=torch.long)))
    prompt = Sam2Prompt(sparse_embeddings=tokens, sparse_mode=model.config.prompt.sparse_mode)
    logits = model.sam2.decode(model.sam2.encode_frames(images), prompt, multimask_output=False).mask_logits
    return F.interpolate(logits[:, :1], size=batch.frames.shape[-2:], mode="bilinear")[:, 0] > 0


def score(model: SAM2LOVE, dataset: Any, templates: dict[str, str], chunk: int = 32) -> dict[str, Any]:
    """Frame-0 IoU per template, the pixels a swapped prompt changes, and the prompt's spread across items."""
    from avseg.data.types import collate

    model.eval()
    ious: dict[str, list[float]] = defaultdict(list)
    changed, pixels, tokens_seen, hidden_seen = 0.0, 0, [], []
    for start in range(0, len(dataset), chunk):
        indices = range(start, min(start + chunk, len(dataset)))
        batch = collate([dataset[i] for i in indices])
        tokens, hidden = prompt_tokens(model, batch)
        tokens_seen.append(tokens[:, 0])
        if hidden is not None:
            hidden_seen.append(hidden[:, 0])
        masks = frame0_masks(model, batch, tokens)  # (B, H, W)
        swapped = frame0_masks(model, batch, tokens.roll(1, 0))
        truth = batch.masks[:, 0] > 0
        inter, union = (masks & truth).flatten(1).sum(1), (masks | truth).flatten(1).sum(1).clamp(min=1)
        for i, value in zip(indices, (inter / union).tolist(), strict=True):
            ious[templates[dataset.records[i].uid]].append(value)
        changed += float((masks ^ swapped).sum())
        pixels += masks.numel()
    every = torch.cat(tokens_seen)
    out: dict[str, Any] = {t: round(sum(v) / len(v), 3) for t, v in sorted(ious.items())}
    out["all"] = round(sum(sum(v) for v in ious.values()) / sum(len(v) for v in ious.values()), 3)
    out["swap_changed"] = round(changed / pixels, 4)
    out["token_spread"] = round(float(every.std(0).norm() / every.norm(dim=1).mean()), 3)
    # A ReLU unit that is zero on every item passes nothing that depends on the item.
    out["projector_units_alive"] = (
        round(float((torch.cat(hidden_seen) > 0).any(0).float().mean()), 3) if hidden_seen else None
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a SynthAV refavs folder (its root has manifest.json)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--heads", nargs="+", choices=sorted(PRESETS), default=["fused", "sentence"])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--sam2-lr", type=float, default=1e-4, help="SAM2's prompt encoder and mask decoder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overrides", nargs="*", default=[], help="more settings, as avseg train --overrides")
    args = parser.parse_args()

    from avseg.config import parse_overrides
    from avseg.data.base import AVSDataset
    from avseg.data.readers import get_reader
    from avseg.demo import demo_run_config
    from avseg.models import create_model, load_model
    from avseg.train.run import prepare_trainer
    from avseg.train.trainer import seed_everything

    manifest = read_manifest(args.data.parent)
    templates = {uid: e["template"] for uid, e in manifest["expressions"].items()}
    data = vision_only(args.data, args.out / "data")
    val = get_reader("refavs", data, image_size=manifest["size"]).dataset("val")
    val = AVSDataset(val.reader, [r for r in val.records if r.modalities == ("visual",) and not r.is_null])
    settings = ["data.hflip=0", "model.loss.object_weight=0", f"model.sam2.lr={args.sam2_lr}", *args.overrides]
    model_overrides = {
        key[len("model.") :]: v for key, v in parse_overrides(settings).items() if key.startswith("model.")
    }
    rows = []
    for head in args.heads:
        seed_everything(args.seed)
        before = score(create_model(PRESETS[head], **model_overrides), val, templates)
        run_cfg = demo_run_config(
            data,
            PRESETS[head],
            size=manifest["size"],
            seed=args.seed,
            length={"train.max_steps": args.steps, "train.val_every": 10**9, "train.progress_bar": False},
            overrides=settings,
        )
        start = time.monotonic()
        prepare_trainer(run_cfg, args.out / head).fit()
        seconds = round(time.monotonic() - start)
        after = score(load_model(args.out / head), val, templates)
        init = {f"init_{key}": before[key] for key in ("token_spread", "projector_units_alive")}
        rows.append({"head": head, **init, **after, "train_s": seconds})
        print(json.dumps(rows[-1]), flush=True)
    record = {
        "benchmark": "prompt_path",
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "data": str(args.data),
        "steps": args.steps,
        "settings": settings,
        "val_expressions": len(val.records),
        "rows": rows,
    }
    (args.out / "prompt_path.json").write_text(json.dumps(record, indent=2))
    columns = [
        "init_token_spread",
        *[t for t in TEMPLATES if t in rows[0]],
        "all",
        "swap_changed",
        "token_spread",
        "init_projector_units_alive",
        "projector_units_alive",
    ]
    print("| head | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for row in rows:
        print(f"| {row['head']} | " + " | ".join(str(row[c]) for c in columns) + " |")


if __name__ == "__main__":
    main()
