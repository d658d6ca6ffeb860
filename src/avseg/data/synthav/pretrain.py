"""``avseg data pretrain-encoders``: tiny stand-ins for the frozen foundation encoders, pretrained on SynthAV labels.

The papers' models read frames with an ImageNet or CLIP image transformer and sounds with VGGish (or BEATs), all
pretrained on large labelled data and frozen. None of those weights can be had offline, and a randomly initialised
encoder that stays frozen carries nothing, so the CPU presets used to train theirs from scratch with the model. This
command gives them the papers' setting at SynthAV's scale: each encoder is pretrained once on labels of a SynthAV of
its own seed, the way its real counterpart was pretrained on labelled images or clips, then frozen in the presets.

* **Image transformer** (the tiny ViT of ``sam2love-tiny``): every patch token is classified into the class and the
  colour of the object covering most of the patch (or background), from the patch token alone, so the class and
  colour of what lies under each patch are in the token (like a segmentation-pretrained backbone's patch features).
* **Log-mel CNN** (:class:`~avseg.layers.audio.LogMelCNN`, the tiny presets' audio encoder): multi-label tagging of
  which classes sound in each one-second example, as VGGish was trained to tag YouTube clips.

Only training-split scenes are read: the held-out class of ``test_u`` (``heart``) is never seen, so the unseen split
stays unseen. Each encoder is written as a folder with fp16 ``model.safetensors`` and ``config.json``, the form of a
packaged asset (:mod:`avseg.assets`), and ``pretrain.json`` records the settings and the held-out accuracies.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avseg.data.synthav.audio import SAMPLE_RATE, mix_scene
from avseg.data.synthav.scene import CLASSES, COLOURS, HELD_OUT_CLASS, generate_scene, render_scene, split_for_index
from avseg.data.synthav.writers import GENERATOR_VERSION
from avseg.fileio import atomic_file, atomic_write_text, check_output_dir

__all__ = [
    "EncoderPretraining",
    "patch_targets",
    "pretrain_encoders",
    "sounding_targets",
]

CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in CLASSES)
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)

_BACKGROUND_WEIGHT = 0.1  # background patches outnumber object patches about 10 to 1; weigh them down


@dataclass
class EncoderPretraining:
    """Settings of :func:`pretrain_encoders`.

    Attributes:
        videos: SynthAV video indices drawn (``0 .. videos - 1``); about 60% are training scenes, the rest give the
            held-out (``val``) accuracies.
        seed: SynthAV seed; keep it away from the seed of any SynthAV the encoders are evaluated on (the demo's is 0).
        size: frame side of the scenes in pixels.
        vit_steps, audio_steps: AdamW steps of each encoder.
        batch_size: frames (ViT) or one-second examples (CNN) per step.
        lr: peak learning rate (cosine decay to 0 after 5% warm-up).
    """

    videos: int = 3400
    seed: int = 1
    size: int = 128
    vit_steps: int = 8000
    audio_steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3


def patch_targets(scene_labels: np.ndarray, scene_objects: Any, grid: int) -> np.ndarray:
    """Class and colour of the object covering most of each patch.

    Args:
        scene_labels: ``(T, S, S)`` uint8 label map of :func:`~avseg.data.synthav.render_scene` (0 background,
            ``fid + 1`` an object).
        scene_objects: the scene's objects.
        grid: patches per side (``S`` must be a multiple).

    Returns:
        ``(T, grid, grid, 2)`` int64: class index ``1 + CLASS_NAMES.index`` and colour index
        ``1 + COLOUR_NAMES.index``, 0 where the background covers most of the patch.
    """
    t, size = scene_labels.shape[0], scene_labels.shape[1]
    if size % grid:
        raise ValueError(f"frame side {size} is not a multiple of the patch grid {grid}")
    cell = size // grid
    classes = np.zeros(256, np.int64)
    colours = np.zeros(256, np.int64)
    for obj in scene_objects:
        classes[obj.fid + 1] = CLASS_NAMES.index(obj.cls) + 1
        colours[obj.fid + 1] = COLOUR_NAMES.index(obj.colour) + 1
    cells = scene_labels.reshape(t, grid, cell, grid, cell).transpose(0, 1, 3, 2, 4).reshape(-1, cell * cell)
    counts = np.zeros((cells.shape[0], 256), np.int64)
    np.add.at(counts, (np.arange(cells.shape[0])[:, None], cells.astype(np.int64)), 1)
    majority = counts.argmax(1).reshape(t, grid, grid)  # ties go to the lower id: background first
    return np.stack([classes[majority], colours[majority]], axis=-1)


def sounding_targets(scene_objects: Any, num_frames: int) -> np.ndarray:
    """``(T, K)`` float32: 1 where an object of class ``k`` sounds in second ``t``."""
    targets = np.zeros((num_frames, len(CLASS_NAMES)), np.float32)
    for obj in scene_objects:
        k = CLASS_NAMES.index(obj.cls)
        targets[:, k] = np.maximum(targets[:, k], obj.sounding.astype(np.float32))
    return targets


@dataclass
class _Split:
    frames: Tensor  # (N, 3, S, S) uint8
    patches: Tensor  # (N, G, G, 2) int64
    examples: Tensor  # (N, 1, 96, 64) float32, one per frame (second)
    sounding: Tensor  # (N, K) float32


def _scenes(settings: EncoderPretraining, split: str, grid: int) -> _Split:
    from avseg.audio.logmel import pad_or_trim_examples, waveform_to_examples

    frames, patches, examples, sounding = [], [], [], []
    for index in range(settings.videos):
        if split_for_index(index) != split:
            continue
        scene = generate_scene(settings.seed, index, size=settings.size)
        assert all(o.cls != HELD_OUT_CLASS for o in scene.objects)  # only test_u scenes hold it
        pixels, labels = render_scene(scene)
        frames.append(torch.from_numpy(pixels).permute(0, 3, 1, 2))
        patches.append(torch.from_numpy(patch_targets(labels, scene.objects, grid)))
        wave = mix_scene(scene)
        examples.append(pad_or_trim_examples(waveform_to_examples(wave, SAMPLE_RATE), scene.num_frames))
        sounding.append(torch.from_numpy(sounding_targets(scene.objects, scene.num_frames)))
    if not frames:
        raise ValueError(f"--videos {settings.videos} draws no {split} scene; use at least 10")
    return _Split(torch.cat(frames), torch.cat(patches), torch.cat(examples), torch.cat(sounding))


def _cosine(step: int, total: int) -> float:
    warmup = max(1, total // 20)
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _train(
    title: str, params: list[nn.Parameter], loss_of: Any, steps: int, lr: float, generator: torch.Generator
) -> float:
    """AdamW on ``loss_of(generator)`` for ``steps`` steps (cosine after a 5% warm-up); returns the seconds taken."""
    print(title, file=sys.stderr)
    started = time.time()
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: _cosine(s, steps))
    for step in range(steps):
        loss = loss_of(generator)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % 500 == 0 or step == steps - 1:
            print(f"  step {step + 1}/{steps}: loss {loss.item():.4f}", file=sys.stderr, flush=True)
    return time.time() - started


def _patch_accuracy(logits: Tensor, targets: Tensor) -> dict[str, float]:
    """Accuracy of class and colour on object patches (background excluded), and of object vs background."""
    k = len(CLASS_NAMES) + 1
    cls_pred, colour_pred = logits[..., :k].argmax(-1), logits[..., k:].argmax(-1)
    on_object = targets[..., 0] > 0
    return {
        "class": float((cls_pred == targets[..., 0])[on_object].float().mean()),
        "colour": float((colour_pred == targets[..., 1])[on_object].float().mean()),
        "object_vs_background": float(((cls_pred > 0) == on_object).float().mean()),
    }


def _save_half(module: nn.Module, folder: Path) -> None:
    from safetensors.torch import save_file

    tensors = {
        name: (t.detach().half() if t.is_floating_point() else t.detach()).contiguous()
        for name, t in module.state_dict().items()
    }
    with atomic_file(folder / "model.safetensors") as tmp:
        save_file(tensors, str(tmp))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def pretrain_encoders(out: Path, settings: EncoderPretraining) -> dict[str, Any]:
    """Pretrain the tiny ViT and log-mel CNN (see the module docstring) and write ``out/vit-tiny-synthav`` and
    ``out/logmel-cnn-synthav``; returns the record written to each folder's ``pretrain.json``."""
    from avseg.layers.audio import LogMelCNN, tiny_logmel_audio
    from avseg.layers.vit import TINY_VIT, ViTEncoder, tiny_vit

    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    vit_config = tiny_vit(frozen=False)
    grid = TINY_VIT["image_size"] // TINY_VIT["patch_size"]
    started = time.time()
    train, val = _scenes(settings, "train", grid), _scenes(settings, "val", grid)
    print(
        f"SynthAV seed {settings.seed}: {len(train.frames)} training and {len(val.frames)} held-out frames "
        f"({time.time() - started:.0f} s)",
        file=sys.stderr,
    )
    k_cls, k_colour = len(CLASS_NAMES) + 1, len(COLOUR_NAMES) + 1

    vit = ViTEncoder(vit_config, pretrained=False)
    vit_head = nn.Linear(vit.hidden_size, k_cls + k_colour)
    weight_cls = torch.tensor([_BACKGROUND_WEIGHT] + [1.0] * (k_cls - 1))
    weight_colour = torch.tensor([_BACKGROUND_WEIGHT] + [1.0] * (k_colour - 1))

    def vit_loss(gen: torch.Generator) -> Tensor:
        pick = torch.randint(len(train.frames), (settings.batch_size,), generator=gen)
        frames, targets = train.frames[pick], train.patches[pick]  # (B, 3, S, S), (B, G, G, 2)
        if torch.rand((), generator=gen) < 0.5:  # a mirrored scene is still a scene: same labels, mirrored
            frames, targets = frames.flip(-1), targets.flip(2)
        tokens, _ = vit(frames)  # (B, G*G, D)
        logits = vit_head(tokens)  # (B, G*G, k_cls + k_colour)
        flat = targets.view(-1, 2)
        return F.cross_entropy(logits[..., :k_cls].reshape(-1, k_cls), flat[:, 0], weight=weight_cls) + F.cross_entropy(
            logits[..., k_cls:].reshape(-1, k_colour), flat[:, 1], weight=weight_colour
        )

    vit_params = [*vit.parameters(), *vit_head.parameters()]
    title = "image transformer: patch class and colour"
    vit_seconds = _train(title, vit_params, vit_loss, settings.vit_steps, settings.lr, generator)
    vit.eval()
    with torch.no_grad():
        logits = torch.cat([vit_head(vit(chunk)[0]) for chunk in val.frames.split(256)])
    vit_accuracy = _patch_accuracy(logits.view(*val.patches.shape[:3], -1), val.patches)

    audio_config = tiny_logmel_audio()
    cnn = LogMelCNN(pool=audio_config.logmel_pool, channels=audio_config.logmel_channels, out_dim=audio_config.dim)
    cnn_shape = {
        "pool": list(audio_config.logmel_pool),
        "channels": list(audio_config.logmel_channels),
        "out_dim": audio_config.dim,
    }
    audio_head = nn.Linear(audio_config.dim, len(CLASS_NAMES))

    def audio_loss(gen: torch.Generator) -> Tensor:
        pick = torch.randint(len(train.examples), (settings.batch_size,), generator=gen)
        return F.binary_cross_entropy_with_logits(audio_head(cnn(train.examples[pick])), train.sounding[pick])

    cnn_params = [*cnn.parameters(), *audio_head.parameters()]
    title = "log-mel CNN: which classes sound in each second"
    audio_seconds = _train(title, cnn_params, audio_loss, settings.audio_steps, settings.lr, generator)
    cnn.eval()
    with torch.no_grad():
        tags = audio_head(cnn(val.examples)) > 0  # (N, K)
    audio_accuracy = {
        "tags": float((tags == (val.sounding > 0)).float().mean()),
        "seconds_all_tags_right": float((tags == (val.sounding > 0)).all(1).float().mean()),
    }

    record = {
        "settings": asdict(settings),
        "generator": GENERATOR_VERSION,
        "training_frames": len(train.frames),
        "held_out_frames": len(val.frames),
        "vit": {"config": TINY_VIT, "held_out_accuracy": vit_accuracy, "seconds": round(vit_seconds, 1)},
        "logmel_cnn": {
            "config": cnn_shape,
            "held_out_accuracy": audio_accuracy,
            "seconds": round(audio_seconds, 1),
        },
        "torch": torch.__version__,
    }
    vit_dir, cnn_dir = out / "vit-tiny-synthav", out / "logmel-cnn-synthav"
    for folder in (vit_dir, cnn_dir):
        folder.mkdir(parents=True, exist_ok=True)
        _write_json(folder / "pretrain.json", record)
    atomic_write_text(vit_dir / "config.json", vit.model.config.to_json_string(use_diff=True))
    _save_half(vit.model, vit_dir)
    _write_json(cnn_dir / "config.json", cnn_shape)
    _save_half(cnn, cnn_dir)
    return record


def pretrain_encoders_command(
    out: Path,
    *,
    videos: int = 3400,
    seed: int = 1,
    vit_steps: int = 8000,
    audio_steps: int = 1000,
) -> int:
    """Pretrain the tiny presets' image transformer and log-mel CNN on SynthAV labels.

    Writes each encoder as a folder in the form of a packaged asset (``avseg:vit-tiny-synthav`` and
    ``avseg:logmel-cnn-synthav`` were made by this command with its defaults).

    Args:
        out: folder to write ``vit-tiny-synthav/`` and ``logmel-cnn-synthav/`` into (created).
        videos: SynthAV video indices to draw; about 60% are training scenes.
        seed: SynthAV seed (not the seed of a SynthAV you evaluate on; the demo uses 0).
        vit_steps: AdamW steps of the image transformer (64 frames each).
        audio_steps: AdamW steps of the log-mel CNN (64 one-second examples each).
    """
    check_output_dir(out, arg="OUT")
    for name, value in (("--videos", videos), ("--vit-steps", vit_steps), ("--audio-steps", audio_steps)):
        if value < 1:
            raise ValueError(f"{name} must be positive, got {value}")
    settings = EncoderPretraining(videos=videos, seed=seed, vit_steps=vit_steps, audio_steps=audio_steps)
    record = pretrain_encoders(out, settings)
    vit, audio = record["vit"]["held_out_accuracy"], record["logmel_cnn"]["held_out_accuracy"]
    print(
        f"wrote {out / 'vit-tiny-synthav'} (held-out patches: class {vit['class']:.3f}, colour {vit['colour']:.3f}) "
        f"and {out / 'logmel-cnn-synthav'} (held-out seconds with every tag right: "
        f"{audio['seconds_all_tags_right']:.3f})"
    )
    return 0
