"""Tiny AVSBench-object v1 trees (S4 and MS3) with every layout quirk, for reader and CLI tests.

- S4: ``s4_meta_data.csv`` with name / start-time / category / split columns; train clips with only ``{name}_1.png``
  masks, val/test clips with five; one clip whose wav is 3.5 s long (fewer than five 0.96 s log-mel examples).
- MS3: ``ms3_meta_data.csv`` with name / split; frames named ``{name}.mp4_{k}.png`` directly under
  ``visual_frames/{name}/``; palette masks whose foreground is index 255 (binary targets for the official loader),
  or, with ``ms3_storage="objects"``, several palette indices 1..3 (one per sounding object).

Frames are ``H x W`` RGB PNGs, masks are a rectangle per frame whose position depends on the clip and frame, so a
test can compare the decoded masks with :func:`expected_mask`. ``mask_size`` writes the masks at another size than
the frames (both subsets), as a copy whose masks were kept at another resolution would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile

from avseg.media.image import write_png

SIZE = (24, 32)
SAMPLE_RATE = 16_000

# (name, start_time, category, split)
S4_ROWS = [
    ("s4clipA", 0, "dog_barking", "train"),
    ("s4clipB", 1, "helicopter", "train"),
    ("s4clipC", 0, "dog_barking", "val"),
    ("s4clipD", 2, "playing_piano", "test"),
]
S4_SHORT_AUDIO = "s4clipB"
"""This clip's wav is 3.5 s long: 3 complete examples, so examples 4 and 5 repeat the third."""

# (name, split)
MS3_ROWS = [
    ("ms3clipA", "train"),
    ("ms3clipB", "val"),
    ("ms3clipC", "test"),
]

PALETTE = np.array([[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]], dtype=np.uint8)
WHITE_AT_255 = np.zeros((256, 3), dtype=np.uint8)
WHITE_AT_255[255] = 255


@dataclass
class AVSObjectTree:
    """What a fixture writer made: the ``avsbench_data`` root and the arrays it wrote."""

    root: Path
    frames: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    """``(name, k)`` -> ``(H, W, 3)`` frame, k = 1..5."""
    masks: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    """``(name, k)`` -> ``(H, W)`` binary mask for the frames whose mask file was written."""
    waves: dict[str, np.ndarray] = field(default_factory=dict)


def expected_mask(clip_index: int, k: int, size: tuple[int, int] = SIZE) -> np.ndarray:
    """The binary ``(H, W)`` mask written for frame ``k`` (1..5) of the clip at ``clip_index``: a moving rectangle."""
    h, w = size
    m = np.zeros(size, dtype=np.uint8)
    top = (2 * clip_index + k) % (h - 6)
    left = (3 * clip_index + 2 * k) % (w - 8)
    m[top : top + 6, left : left + 8] = 1
    return m


def _frame(clip_index: int, k: int, size: tuple[int, int]) -> np.ndarray:
    rng = np.random.default_rng(1000 * clip_index + k)
    return rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)


def _wave(clip_index: int, seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    # A different tone per second, so consecutive log-mel examples differ.
    freq = 300.0 + 150.0 * clip_index + 200.0 * np.floor(t)
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_s4_tree(
    base: Path,
    size: tuple[int, int] = SIZE,
    *,
    with_ms3: bool = False,
    mask_size: tuple[int, int] | None = None,
) -> AVSObjectTree:
    """Write ``base/avsbench_data/Single-source`` (and, with ``with_ms3``, ``Multi-sources`` too)."""
    root = base / "avsbench_data"
    sub = root / "Single-source"
    data = sub / "s4_data"
    tree = AVSObjectTree(root=root)
    sub.mkdir(parents=True, exist_ok=True)
    lines = ["name,start_time,category,split"] + [f"{n},{s},{c},{sp}" for n, s, c, sp in S4_ROWS]
    (sub / "s4_meta_data.csv").write_text("\n".join(lines) + "\n")
    for i, (name, _, category, split) in enumerate(S4_ROWS):
        rel = Path(split, category, name)
        n_masks = 1 if split == "train" else 5
        for k in range(1, 6):
            frame = _frame(i, k, size)
            write_png(data / "visual_frames" / rel / f"{name}_{k}.png", frame)
            tree.frames[(name, k)] = frame
            if k <= n_masks:
                m = expected_mask(i, k, mask_size or size)
                write_png(data / "gt_masks" / rel / f"{name}_{k}.png", m * 255)  # 0/255 binary PNG, as S4 ships
                tree.masks[(name, k)] = m
        seconds = 3.5 if name == S4_SHORT_AUDIO else 5.0
        wave = _wave(i, seconds)
        wav = data / "audio_wav" / split / category / f"{name}.wav"
        wav.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(wav, wave, SAMPLE_RATE, subtype="FLOAT")
        tree.waves[name] = wave
    if with_ms3:
        ms3 = write_ms3_tree(base, size, mask_size=mask_size)
        tree.frames.update(ms3.frames)
        tree.masks.update(ms3.masks)
        tree.waves.update(ms3.waves)
    return tree


def write_ms3_tree(
    base: Path,
    size: tuple[int, int] = SIZE,
    *,
    mask_size: tuple[int, int] | None = None,
    ms3_storage: Literal["binary", "objects"] = "binary",
) -> AVSObjectTree:
    """Write ``base/avsbench_data/Multi-sources``: ``.mp4_`` frame names and palette masks (foreground index 255, or
    indices 1..3 with ``ms3_storage="objects"``)."""
    root = base / "avsbench_data"
    sub = root / "Multi-sources"
    data = sub / "ms3_data"
    tree = AVSObjectTree(root=root)
    sub.mkdir(parents=True, exist_ok=True)
    lines = ["name,split"] + [f"{n},{sp}" for n, sp in MS3_ROWS]
    (sub / "ms3_meta_data.csv").write_text("\n".join(lines) + "\n")
    for j, (name, split) in enumerate(MS3_ROWS):
        i = 10 + j  # clip index for expected_mask / frames, distinct from the S4 clips
        for k in range(1, 6):
            frame = _frame(i, k, size)
            write_png(data / "visual_frames" / name / f"{name}.mp4_{k}.png", frame)
            tree.frames[(name, k)] = frame
            m = expected_mask(i, k, mask_size or size)
            path = data / "gt_masks" / split / name / f"{name}_{k}.png"
            if ms3_storage == "objects":
                # Foreground in several palette indices (one per sounding object); index 0 is background.
                indices = m * (1 + (np.arange(m.shape[1])[None, :] % 3)).astype(np.uint8)
                write_png(path, indices.astype(np.uint8), palette=PALETTE)
            else:
                write_png(path, m * 255, palette=WHITE_AT_255)
            tree.masks[(name, k)] = m
        wave = _wave(i, 5.0)
        wav = data / "audio_wav" / split / f"{name}.wav"
        wav.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(wav, wave, SAMPLE_RATE, subtype="FLOAT")
        tree.waves[name] = wave
    return tree


def ms3_clip_index(name: str) -> int:
    """The ``clip_index`` that :func:`expected_mask` used for an MS3 clip."""
    return 10 + [n for n, _ in MS3_ROWS].index(name)


def s4_clip_index(name: str) -> int:
    """The ``clip_index`` that :func:`expected_mask` used for an S4 clip."""
    return [r[0] for r in S4_ROWS].index(name)
