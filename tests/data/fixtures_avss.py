"""Writers of a tiny AVSBench-semantic tree with every quirk the reader handles (importable by other tests).

The tree (``write_avss_tree``):

- v1s (S4 clips, 5 frames): two train clips with only ``labels_rgb/0.png``, one test clip with 5 masks;
- v1m (MS3 clips, 5 frames): one train and one val clip, 5 masks each;
- v2 (10 frames): one clip per split with 10 masks; the val clip's frame 3 has one pixel whose colour is in no
  palette entry (it must read as background, with a warning);
- a duplicated metadata row (v2 train), extra metadata columns, frame sizes that differ between clips;
- audio: wav files at 22 050 Hz lasting 5 s (v1) or 10 s (v2);
- ``label2idx.json`` with 71 entries numbered from 1 (``"background": 1``), as the public copy of the file does;
- ``mask_size`` writes every colour mask at that size instead of its clip's frame size.

Colours are written from a hand-made table (``COLOURS``, worked out by hand from the bit-shift rule) so that the tests
check the reader's palette against values it did not produce.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile
from PIL import Image

AUDIO_RATE = 22_050

# Palette entries computed by hand: index bits (b0, b1, b2) -> top bit of (R, G, B), (b3, b4, b5) -> next bit, ...
COLOURS: dict[int, tuple[int, int, int]] = {
    0: (0, 0, 0),
    1: (128, 0, 0),
    2: (0, 128, 0),
    3: (128, 128, 0),
    4: (0, 0, 128),
    5: (128, 0, 128),
    6: (0, 128, 128),
    7: (128, 128, 128),
    8: (64, 0, 0),
    9: (192, 0, 0),
    70: (32, 128, 128),
}
OFF_PALETTE = (1, 2, 3)
OFF_PALETTE_AT = ("v2", "v2_clipB", 3, (0, 0))  # label, uid, frame, (y, x)

# (uid, label, split, (H, W), classes of the two boxes)
CLIPS: list[tuple[str, str, str, tuple[int, int], tuple[int, int]]] = [
    ("s4_clipA", "v1s", "train", (24, 32), (1, 0)),
    ("s4_clipB", "v1s", "train", (20, 28), (2, 0)),
    ("s4_clipC", "v1s", "test", (24, 32), (3, 0)),
    ("ms3_clipA", "v1m", "train", (24, 32), (4, 5)),
    ("ms3_clipB", "v1m", "val", (22, 30), (8, 9)),
    ("v2_clipA", "v2", "train", (30, 40), (70, 6)),
    ("v2_clipB", "v2", "val", (30, 40), (7, 1)),
    ("v2_clipC", "v2", "test", (26, 36), (9, 70)),
]
NUM_FRAMES = {"v1s": 5, "v1m": 5, "v2": 10}


@dataclass
class AVSSFixture:
    """What the writer put on disk, for assertions."""

    root: Path
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    """split -> {"items", "videos", "null_items", "labelled_frames"} with every subset selected."""
    duplicates: dict[str, int] = field(default_factory=lambda: {"train": 1})


def write_wav(path: Path, seconds: float, rate: int = AUDIO_RATE, freq: float = 440.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(round(seconds * rate)) / rate
    soundfile.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate, subtype="PCM_16")


def write_frames(folder: Path, h: int, w: int, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image = np.broadcast_to(rng.integers(0, 255, size=3), (h, w, 3)).astype(np.uint8).copy()
        image[:, : w // 2] = 255 - image[:, : w // 2]
        Image.fromarray(image).save(folder / f"{i}.jpg", quality=95)


def label_map(h: int, w: int, classes: tuple[int, int], frame: int) -> np.ndarray:
    """Class indices of one frame: two boxes (class 0 = none) that move with the frame index."""
    labels = np.zeros((h, w), dtype=np.uint8)
    labels[2:9, frame + 1 : frame + 10] = classes[0]
    if classes[1]:
        labels[h - 8 : h - 2, w - 12 - frame : w - 3 - frame] = classes[1]
    return labels


def expected_labels(uid: str, frame: int, mask_size: tuple[int, int] | None = None) -> np.ndarray:
    """The class map the reader must return for ``uid``'s ``frame`` (the off-palette pixel reads as 0)."""
    clip = next(c for c in CLIPS if c[0] == uid)
    (h, w), classes = mask_size or clip[3], clip[4]
    labels = label_map(h, w, classes, frame)
    if (clip[1], uid, frame) == OFF_PALETTE_AT[:3]:
        labels[OFF_PALETTE_AT[3]] = 0
    return labels


def write_avss_tree(root: Path, *, mask_size: tuple[int, int] | None = None) -> AVSSFixture:
    """Write the tiny AVSBench-semantic tree under ``root`` (created) and return what to expect."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / "metadata.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["vid", "uid", "s_min", "s_sec", "a_obj", "split", "label"])
        for uid, label, split, _, _ in CLIPS:
            writer.writerow([uid.split("_")[-1], uid, 0, 0, "thing", split, label])
        writer.writerow(["clipA", "v2_clipA", 0, 0, "thing", "train", "v2"])  # duplicated row
    names = ["background"] + [f"class_{i:02d}" for i in range(1, 71)]
    (root / "label2idx.json").write_text(json.dumps({n: i + 1 for i, n in enumerate(names)}), encoding="utf-8")

    for seed, (uid, label, split, (h, w), classes) in enumerate(CLIPS):
        clip = root / label / uid
        n = NUM_FRAMES[label]
        write_frames(clip / "frames", h, w, n, seed)
        write_wav(clip / "audio.wav", float(n), freq=200.0 + 50 * seed)
        n_masks = 1 if (label == "v1s" and split == "train") else n
        mh, mw = mask_size or (h, w)
        for i in range(n_masks):
            rgb = np.zeros((mh, mw, 3), dtype=np.uint8)
            labels = label_map(mh, mw, classes, i)
            for c in np.unique(labels):
                rgb[labels == c] = COLOURS[int(c)]
            if (label, uid, i) == OFF_PALETTE_AT[:3]:
                rgb[OFF_PALETTE_AT[3]] = OFF_PALETTE
            path = clip / "labels_rgb" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgb).save(path)

    counts = {
        "train": {"items": 4, "videos": 4, "null_items": 0, "labelled_frames": 1 + 1 + 5 + 10},
        "val": {"items": 2, "videos": 2, "null_items": 0, "labelled_frames": 5 + 10},
        "test": {"items": 2, "videos": 2, "null_items": 0, "labelled_frames": 5 + 10},
    }
    return AVSSFixture(root=root, counts=counts)
