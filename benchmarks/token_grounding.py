"""Can SAM2's mask decoder pick an object from a prompt token? A probe on the packaged tiny SAM2's frozen features.

Run: ``python benchmarks/token_grounding.py --data runs/synthav`` (a SynthAV root: the folder with ``manifest.json``
that ``avseg data synth`` or ``avseg demo`` wrote). Prints a markdown table and one JSON record (written to ``--out``
when given).

Every SAM2-based tiny preset (``auralsam2-tiny``, ``sam2love-tiny``, ``sa2va-tiny``, ``svac-tiny``,
``simtoken-tiny``) turns the expression into a token that prompts SAM2's mask decoder. This script isolates that last
step on SynthAV's vision-only expressions (colour, shape, colour + shape, position), on single frames, with the image
encoder frozen and its features computed once:

- ``every_object``: the mask of every shape, no training (what a model that ignores the token gets);
- ``decoder``: the token prompts SAM2's prompt encoder and mask decoder (appended after SAM2's padding point, as
  Sa2VA does), which train with the token's MLP;
- ``linear``: no SAM2 decoder: the mask logits are the dot product of the token with a 1x1 projection of the
  stride-4 features (the finest level the decoder also reads), so the token can only select pixels by what those
  features hold.

Each head gets two tokens: ``minilm``, the frozen MiniLM sentence embedding (masked mean of its token features), and
``oracle``, a one-hot code of the colour, shape and side the expression names (what a perfect language model could
give). Both go through the same trainable MLP. Training: ``--steps`` AdamW steps of 16 (expression, frame) pairs at
lr 1e-3 (SAM2's prompt encoder and mask decoder at ``--decoder-lr``, 1e-3 unless given), BCE + Dice, on ``--frames``
frames of every training video; scored on frame 0 of each val video, mean IoU per template. Run for several
``--seeds``: figures are means and standard deviations over seeds.

It also probes the stride-16 features (the image embedding SAM2's decoder attends to) with a linear classifier: can
they tell the colour, and the class, of the shape under each cell's centre? ``--heads`` with no head runs only the
probe.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avseg.data.synthav.references import manifest_scene, read_manifest
from avseg.data.synthav.scene import render_scene
from avseg.layers.sam2 import build_sam2
from avseg.layers.sam2.config import CPU_SAM2_WEIGHTS, cpu_sam2_config
from avseg.layers.sam2.decoder import Sam2Prompt
from avseg.layers.sam2.outputs import Sam2Features
from avseg.layers.text import TextEncoder, TextEncoderConfig, masked_mean
from avseg.models.base import IMAGENET_MEAN, IMAGENET_STD

TEMPLATES = ("v_colour", "v_shape", "v_colour_shape", "v_side")
HEADS = ("decoder", "linear")
TOKENS = ("minilm", "oracle")
STRIDE = 16  # the stride of SAM2's lowest-resolution level, the image embedding its decoder attends to


class Pairs:
    """Frames of one split (features computed once) and the (expression, frame) pairs scored on them.

    Attributes:
        features: the frozen SAM2 features of every frame, ``N`` frames.
        cell_colour, cell_class: the colour and class index of the shape under the centre pixel of each cell of
            SAM2's stride-16 grid (-1 on the background), ``(N, G, G)`` with ``G`` SAM2's input size / 16, for the
            probe of :func:`cell_probe`.
        frame: ``(P,)`` frame index of each pair; ``target`` ``(P, S, S)`` the referred shape's mask;
        every: ``(P, S, S)`` every shape's mask; ``tokens`` per kind, ``(P, D)``; ``template`` per pair.
    """

    def __init__(self, manifest: dict[str, Any], split: str, frames: list[int], sam2: Any, text: TextEncoder) -> None:
        expressions = [
            e for e in manifest["expressions"].values() if e["split"] == split and e["template"] in TEMPLATES
        ]
        expressions = [e for e in expressions if e["target"] is not None]
        videos = sorted({e["vid"] for e in expressions})
        colours = sorted(manifest["colours"])
        classes = [c["name"] for c in manifest["classes"]]
        images, labels, index, cell_colour, cell_class = [], [], {}, [], []
        grid = sam2.image_size // STRIDE  # SAM2's stride-16 grid, whatever the frames' size
        size = manifest["size"]
        grid_y = grid_x = ((torch.arange(grid) + 0.5) * size / grid).long()  # each cell's centre, in frame pixels
        for vid in videos:
            rgb, label = render_scene(manifest_scene(manifest, vid))
            objects = manifest["video_info"][vid]["objects"]
            # label value fid + 1 -> the shape's colour / class index; 0 (background) -> -1
            to_colour = torch.tensor([-1] + [colours.index(o["colour"]) for o in objects])
            to_class = torch.tensor([-1] + [classes.index(o["class"]) for o in objects])
            for t in frames:
                index[vid, t] = len(images)
                images.append(torch.from_numpy(rgb[t]).permute(2, 0, 1))
                labels.append(torch.from_numpy(label[t].astype(np.int64)))
                centres = labels[-1][grid_y[:, None], grid_x[None, :]]
                cell_colour.append(to_colour[centres])
                cell_class.append(to_class[centres])
        self.cell_colour, self.cell_class = torch.stack(cell_colour), torch.stack(cell_class)
        pixels = torch.stack(images).float() / 255
        mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
        with torch.no_grad():
            self.features: Sam2Features = sam2.encode_frames((pixels - mean) / std, chunk_size=32)
            words, mask = text([e["text"] for e in expressions])
            sentences = masked_mean(words, mask)  # (E, 384)
        oracle = oracle_codes(manifest, expressions)
        pairs = [(i, index[e["vid"], t]) for i, e in enumerate(expressions) for t in frames]
        which = torch.tensor([i for i, _ in pairs])
        self.frame = torch.tensor([f for _, f in pairs])
        label_maps = torch.stack(labels)[self.frame]  # (P, S, S)
        fids = torch.tensor([expressions[i]["target"]["fid"] + 1 for i, _ in pairs])
        self.target = (label_maps == fids[:, None, None]).float()
        self.every = (label_maps > 0).float()
        self.tokens = {"minilm": sentences[which], "oracle": oracle[which]}
        self.template = [expressions[i]["template"] for i, _ in pairs]

    def __len__(self) -> int:
        return len(self.frame)


def oracle_codes(manifest: dict[str, Any], expressions: list[dict[str, Any]]) -> Tensor:
    """``(E, K)`` one-hot codes of the colour, shape and side each expression names (zeros for what it leaves out)."""
    sides = sorted({e["params"]["side"] for e in manifest["expressions"].values() if "side" in e["params"]})
    words = (
        [("colour", c) for c in sorted(manifest["colours"])]
        + [("shape", c["name"]) for c in manifest["classes"]]
        + [("side", s) for s in sides]
    )
    codes = torch.zeros(len(expressions), len(words))
    for i, e in enumerate(expressions):
        for j, (key, value) in enumerate(words):
            codes[i, j] = float(e["params"].get(key) == value)
    return codes


def cell_probe(train: Pairs, val: Pairs, *, seed: int) -> dict[str, float]:
    """Accuracy of a linear probe (softmax regression, 300 Adam steps) that reads the colour, and the class, of the
    shape under each stride-16 cell's centre from SAM2's stride-16 features: is what the decoder would need there?"""
    torch.manual_seed(seed)

    def cells(pairs: Pairs) -> tuple[Tensor, Tensor, Tensor]:
        keep = pairs.cell_colour >= 0
        return pairs.features.fpn[2].permute(0, 2, 3, 1)[keep], pairs.cell_colour[keep], pairs.cell_class[keep]

    x_train, colour_train, class_train = cells(train)
    x_val, colour_val, class_val = cells(val)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_val = (x_train - mean) / std, (x_val - mean) / std
    out = {}
    for name, y_train, y_val in (("colour", colour_train, colour_val), ("class", class_train, class_val)):
        probe = nn.Linear(x_train.shape[1], int(max(y_train.max(), y_val.max())) + 1)
        optimiser = torch.optim.Adam(probe.parameters(), lr=1e-2)
        for _ in range(300):
            optimiser.zero_grad()
            F.cross_entropy(probe(x_train), y_train).backward()
            optimiser.step()
        with torch.no_grad():
            out[name] = round(float((probe(x_val).argmax(1) == y_val).float().mean()), 3)
        # the most frequent class of the training cells: what a probe that reads nothing gets
        out[f"{name}_majority"] = round(float((y_val == y_train.bincount().argmax()).float().mean()), 3)
    out["cells"] = [len(x_train), len(x_val)]
    return out


def iou(pred: Tensor, gt: Tensor) -> Tensor:
    """``(P, H, W)`` binary → ``(P,)`` IoU."""
    inter = (pred * gt).flatten(1).sum(1)
    union = ((pred + gt) > 0).float().flatten(1).sum(1)
    return inter / union.clamp_min(1)


def per_template(values: Tensor, templates: list[str]) -> dict[str, float]:
    out = {t: float(values[[k for k, x in enumerate(templates) if x == t]].mean()) for t in TEMPLATES}
    out["all"] = float(values.mean())
    return out


def train_head(
    head: str,
    token: str,
    train: Pairs,
    val: Pairs,
    sam2: Any,
    *,
    steps: int,
    seed: int,
    decoder_lr: float = 1e-3,
    linear_width: int | None = None,
) -> dict:
    """Train one head on ``train`` and score it on ``val``: mean IoU per template on both (SAM2's prompt encoder
    and mask decoder, for the ``decoder`` head, at ``decoder_lr``; the rest at 1e-3). The ``linear`` head projects
    the features to ``linear_width`` channels (default: SAM2's width)."""
    torch.manual_seed(seed)
    dim = train.tokens[token].shape[1]
    width = sam2.hidden_size if head == "decoder" or linear_width is None else linear_width
    mlp = nn.Sequential(nn.Linear(dim, 384), nn.GELU(), nn.Linear(384, width))
    params, sam2_params = list(mlp.parameters()), []
    if head == "decoder":
        layer = copy.deepcopy(sam2)
        for p in layer.parameters():
            p.requires_grad_(False)
        for part in (layer.model.mask_decoder, layer.model.prompt_encoder):
            for p in part.parameters():
                p.requires_grad_(True)
                sam2_params.append(p)
    else:
        project = nn.Conv2d(train.features.fpn[0].shape[1], width, 1)
        params += list(project.parameters())
    groups = [{"params": params}] + ([{"params": sam2_params, "lr": decoder_lr}] if sam2_params else [])
    optimiser = torch.optim.AdamW(groups, lr=1e-3, weight_decay=0.0)

    def logits(pairs: Pairs, rows: Tensor) -> Tensor:
        features = pairs.features.select(pairs.frame[rows])
        prompt = mlp(pairs.tokens[token][rows])  # (B, C)
        if head == "decoder":
            out = layer.decode(
                features, Sam2Prompt(sparse_embeddings=prompt[:, None]), multimask_output=False
            ).mask_logits[:, 0]
        else:
            out = torch.einsum("bc,bchw->bhw", prompt, project(features.fpn[0]))
        return F.interpolate(out[:, None], size=pairs.target.shape[-2:], mode="bilinear")[:, 0]

    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        rows = torch.randint(len(train), (16,), generator=generator)
        logit, gt = logits(train, rows), train.target[rows]
        prob = logit.sigmoid()
        dice = 1 - (2 * (prob * gt).flatten(1).sum(1) + 1) / (prob.flatten(1).sum(1) + gt.flatten(1).sum(1) + 1)
        loss = F.binary_cross_entropy_with_logits(logit, gt) + dice.mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    scores = {}
    with torch.no_grad():
        if head == "decoder":
            layer.eval()
        for name, pairs in (("train", train), ("val", val)):
            rows = torch.arange(len(pairs))
            pred = torch.cat([(logits(pairs, r) > 0).float() for r in rows.split(256)])
            scores[name] = per_template(iou(pred, pairs.target), pairs.template)
    return scores


def summarise(runs: list[dict]) -> dict[str, dict[str, list[float]]]:
    """Mean and standard deviation over seeds of every (split, template) figure."""
    out: dict[str, dict[str, list[float]]] = {}
    for split in ("train", "val"):
        out[split] = {}
        for key in runs[0][split]:
            values = np.array([r[split][key] for r in runs])
            out[split][key] = [round(float(values.mean()), 3), round(float(values.std()), 3)]
    return out


def markdown(record: dict) -> str:
    lines = [
        "| head | token | " + " | ".join(TEMPLATES) + " | all (val) | all (train) |",
        "|---|---|" + "---|" * (len(TEMPLATES) + 2),
    ]
    for row in record["rows"]:
        val, trn = row["val"], row["train"]

        def cell(x: list[float]) -> str:
            return f"{x[0]:.3f}" if x[1] == 0 else f"{x[0]:.3f} ± {x[1]:.3f}"

        lines.append(
            f"| {row['head']} | {row['token']} | "
            + " | ".join(cell(val[t]) for t in TEMPLATES)
            + f" | {cell(val['all'])} | {cell(trn['all'])} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a SynthAV root (the folder with manifest.json)")
    parser.add_argument("--weights", default=CPU_SAM2_WEIGHTS, help="SAM2 weights of the CPU presets' shape")
    parser.add_argument(
        "--image-size", type=int, default=128, help="SAM2's input size (frames are resized to it; the CPU presets' 128)"
    )
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument(
        "--decoder-lr", type=float, default=1e-3, help="lr of SAM2's prompt encoder and mask decoder (decoder head)"
    )
    parser.add_argument(
        "--linear-width",
        type=int,
        default=None,
        help="channels of the linear head's projection (default: SAM2's "
        "width; its mask decoder's final mask features have width / 8)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--frames", type=int, nargs="+", default=[0, 3, 6, 9], help="frames of each training video")
    parser.add_argument("--heads", nargs="*", default=list(HEADS), choices=HEADS, help="none: the probe only")
    parser.add_argument("--tokens", nargs="+", default=list(TOKENS), choices=TOKENS)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    start = time.monotonic()
    manifest = read_manifest(args.data)
    sam2_config = dataclasses.replace(cpu_sam2_config(weights=args.weights), image_size=args.image_size)
    sam2 = build_sam2(sam2_config, pretrained=True).eval()
    text = TextEncoder(TextEncoderConfig(), pretrained=True).eval()
    train, val = Pairs(manifest, "train", args.frames, sam2, text), Pairs(manifest, "val", [0], sam2, text)
    every = {
        split: per_template(iou(pairs.every, pairs.target), pairs.template)
        for split, pairs in (("train", train), ("val", val))
    }
    probe = cell_probe(train, val, seed=args.seeds[0])
    rows = [
        {
            "head": "every_object",
            "token": "—",
            **{s: {k: [round(v, 3), 0.0] for k, v in every[s].items()} for s in every},
        }
    ]
    for head in args.heads:
        for token in args.tokens:
            runs = [
                train_head(
                    head,
                    token,
                    train,
                    val,
                    sam2,
                    steps=args.steps,
                    seed=s,
                    decoder_lr=args.decoder_lr,
                    linear_width=args.linear_width,
                )
                for s in args.seeds
            ]
            rows.append({"head": head, "token": token, **summarise(runs)})
            print(f"{head}/{token}: val mIoU {rows[-1]['val']['all']}", flush=True)
    record = {
        "benchmark": "token_grounding",
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "weights": args.weights,
        "image_size": args.image_size,
        "data": str(args.data),
        "steps": args.steps,
        "decoder_lr": args.decoder_lr,
        "linear_width": args.linear_width,
        "seeds": args.seeds,
        "train_pairs": len(train),
        "val_pairs": len(val),
        "rows": rows,
        "cell_probe": probe,
        "wall_s": round(time.monotonic() - start, 1),
    }
    print(markdown(record))
    print(
        f"cell probe on SAM2's stride-16 features ({probe['cells'][0]} / {probe['cells'][1]} shape cells): colour "
        f"{probe['colour']:.3f} (majority {probe['colour_majority']:.3f}), class {probe['class']:.3f} (majority "
        f"{probe['class_majority']:.3f})"
    )
    print(json.dumps(record))
    if args.out is not None:
        args.out.write_text(json.dumps(record, indent=2) + "\n")
    return record


if __name__ == "__main__":
    main()
