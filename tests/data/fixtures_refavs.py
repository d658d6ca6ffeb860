"""Writers of a tiny Ref-AVSBench tree with every quirk the reader handles (importable by other tests).

The tree (``write_refavs_tree``):

- videos ``-1HyqEM_VwM_137000_147000`` (32x24, a real-looking vid with a leading dash and underscores),
  ``abcDEF12345_0_10000`` (40x30) and ``zzVal_5000_15000`` (36x20): frames of different sizes between videos;
- train: 3 normal expressions (two objects of the first video, one of the second), a duplicate of one uid, and a
  ``null_c`` expression; val: one normal and one ``null_m``; test_s: one normal plus a duplicate; test_n: one
  ``null_c`` and one ``null_m`` expression; two ``TODO`` rows (one with an unparsable fid, which must not matter);
- each null uid has its own ``media/null_x-{vid}`` folder and all-zero masks under ``gt_mask/null_x-{vid}/fid_0``;
- masks use gray values 255 (first object), 1 and 128 (second object), so only ``> 0`` gives the right binary mask;
- audio: 10-s wav files at 22 050 Hz (the reader resamples to 16 kHz);
- ``mask_size`` writes every mask at that size instead of its video's frame size.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile
from PIL import Image

AUDIO_RATE = 22_050
VID_A = "-1HyqEM_VwM_137000_147000"
VID_B = "abcDEF12345_0_10000"
VID_C = "zzVal_5000_15000"
SIZES_HW = {VID_A: (24, 32), VID_B: (30, 40), VID_C: (20, 36)}

# (vid, uid, split, fid, exp, modalities); the duplicates and TODO rows are the quirks.
ROWS: list[tuple[str, str, str, str, str, str]] = [
    (VID_A, f"{VID_A}_piano_1", "train", "0", "the piano being played", "audio"),
    (VID_A, f"{VID_A}_guitar_2", "train", "1", 'the guitar, "strummed" loudly', "audio+visual"),
    (VID_B, f"{VID_B}_dog_1", "train", "0", "the barking dog", "visual"),
    (VID_B, f"{VID_B}_dog_1", "train", "0", "the barking dog (duplicate row)", "visual"),
    (VID_A, f"null_c-{VID_A}_null_1", "train", "0", "the trumpet that is not there", "audio"),
    (VID_C, f"{VID_C}_cat_1", "val", "0", "the cat on the left", ""),
    (VID_C, f"null_m-{VID_C}_null_1", "val", "0", "the singing bird", "audio"),
    (VID_B, f"{VID_B}_dog_2", "test_s", "1", "the second dog", "visual"),
    (VID_B, f"{VID_B}_dog_2", "test_s", "1", "the second dog again", "visual"),
    (VID_B, f"null_c-{VID_B}_null_1", "test_n", "0", "the violin", "audio"),
    (VID_B, f"null_m-{VID_B}_null_2", "test_n", "0", "the drum", "audio"),
    (VID_A, f"{VID_A}_todo_1", "TODO", "?", "dropped before validation", ""),
    (VID_C, f"{VID_C}_todo_2", "TODO", "0", "dropped", ""),
]

# Object masks that exist: (media folder, fid) -> gray value of the foreground.
OBJECTS = {(VID_A, 0): 255, (VID_A, 1): 1, (VID_B, 0): 255, (VID_B, 1): 128, (VID_C, 0): 255}
NULL_FOLDERS = {
    f"null_c-{VID_A}": VID_A,
    f"null_m-{VID_C}": VID_C,
    f"null_c-{VID_B}": VID_B,
    f"null_m-{VID_B}": VID_B,
}


@dataclass
class RefAVSFixture:
    """What the writer put on disk, for assertions."""

    root: Path
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    """split -> {"items", "videos", "null_items", "labelled_frames"} after TODO and duplicate removal."""
    dropped_todo: int = 2
    duplicates: dict[str, int] = field(default_factory=lambda: {"train": 1, "test_s": 1})


def object_mask(h: int, w: int, fid: int, frame: int, value: int) -> np.ndarray:
    """A gray ``(h, w)`` mask whose box moves one pixel per frame; ``value`` marks the foreground."""
    mask = np.zeros((h, w), dtype=np.uint8)
    top = 2 + 3 * fid
    mask[top : top + 6, frame + 1 : frame + 9] = value
    return mask


def write_wav(path: Path, seconds: float, rate: int = AUDIO_RATE, freq: float = 440.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(round(seconds * rate)) / rate
    soundfile.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate, subtype="PCM_16")


def write_frames(folder: Path, h: int, w: int, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        base = rng.integers(0, 255, size=3)
        image = np.broadcast_to(base, (h, w, 3)).astype(np.uint8).copy()
        image[: h // 2] = 255 - image[: h // 2]
        Image.fromarray(image).save(folder / f"{i}.jpg", quality=95)


def write_refavs_tree(
    root: Path, *, modalities: bool = True, extra_column: bool = True, mask_size: tuple[int, int] | None = None
) -> RefAVSFixture:
    """Write the tiny Ref-AVS tree under ``root`` (created) and return what to expect.

    Args:
        root: destination folder.
        modalities: add avseg's optional ``modalities`` column (SynthAV writes it; real files do not).
        extra_column: add an unrelated extra column, which the reader must ignore.
        mask_size: ``(H, W)`` of every mask (default: its video's frame size).
    """
    root.mkdir(parents=True, exist_ok=True)
    header = ["vid", "uid", "split", "fid", "exp"] + (["modalities"] if modalities else [])
    header += ["source"] if extra_column else []
    with (root / "metadata.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for vid, uid, split, fid, exp, mods in ROWS:
            row = [vid, uid, split, fid, exp] + ([mods] if modalities else [])
            writer.writerow(row + (["youtube"] if extra_column else []))

    for seed, folder in enumerate([VID_A, VID_B, VID_C, *NULL_FOLDERS]):
        h, w = SIZES_HW[NULL_FOLDERS.get(folder, folder)]
        write_frames(root / "media" / folder / "frames", h, w, 10, seed)
        write_wav(root / "media" / folder / "audio.wav", 10.0, freq=220.0 * (seed + 1))
    for (folder, fid), value in OBJECTS.items():
        h, w = mask_size or SIZES_HW[folder]
        for i in range(10):
            path = root / "gt_mask" / folder / f"fid_{fid}" / f"0000{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(object_mask(h, w, fid, i, value)).save(path)
    for folder, vid in NULL_FOLDERS.items():
        h, w = mask_size or SIZES_HW[vid]
        for i in range(10):
            path = root / "gt_mask" / folder / "fid_0" / f"0000{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.zeros((h, w), dtype=np.uint8)).save(path)

    counts = {
        "train": {"items": 4, "videos": 2, "null_items": 1, "labelled_frames": 40},
        "val": {"items": 2, "videos": 1, "null_items": 1, "labelled_frames": 20},
        "test_s": {"items": 1, "videos": 1, "null_items": 0, "labelled_frames": 10},
        "test_n": {"items": 2, "videos": 1, "null_items": 2, "labelled_frames": 20},
    }
    return RefAVSFixture(root=root, counts=counts)
