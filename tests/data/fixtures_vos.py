"""Tiny DAVIS 2017 and YouTube-VOS trees with the quirks the VOS reader handles, for reader and CLI tests.

``base/davis/`` (frames ``12x16`` in ``480p``, ``24x32`` in ``Full-Resolution``; every video at both resolutions):

- ``train``: ``bear`` (4 frames, object ids 1 and 3, a void 255 strip, object 3 gone on the last frame) and
  ``dogs`` (3 frames, object 1).
- ``val``: ``cars`` (3 frames, objects 1 and 2).
- ``test-dev``: ``swans`` (3 frames, only the first frame annotated: objects 1 and 2).

``base/ytvos/`` (frames ``12x16``):

- ``train``: ``vidA`` (frames 00000, 00005, 00010; objects 1 "dog" and 3 "cat", object 3 entering at 00005) and
  ``vidB`` (frames 00000..00005 as in the ``all_frames`` variant, annotated on 00000 and 00005 only; object 2 without
  a category, as MOSE writes it).
- ``valid``: ``vidC`` (frames 00000, 00005, 00010; object 1 annotated on 00000 only, object 2 entering at 00005 and
  annotated there only, with object 1 shown as background although it is still there).

Annotations are palette PNGs (the DAVIS / PASCAL palette) whose indices are the object ids; the tree is clean, and
tests that need a broken tree break a copy of it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from avseg.data.avss import avss_palette
from avseg.media.image import write_jpeg, write_png

SIZE = (12, 16)
FULL_SIZE = (24, 32)
PALETTE = avss_palette(256)


@dataclass
class VOSTree:
    """The roots and what was written: per ``(split, video)``, the annotation index arrays by frame stem."""

    davis: Path
    ytvos: Path
    frames: dict[tuple[str, str, str], list[str]] = field(default_factory=dict)
    """``(layout, split, video)`` -> frame stems in sorted order (layout ``davis``, ``davis-full`` or ``ytvos``)."""
    annotations: dict[tuple[str, str, str], dict[str, np.ndarray]] = field(default_factory=dict)
    """``(layout, split, video)`` -> ``{frame stem: (H, W) uint8 index array}`` for the frames with a PNG."""


def boxes(size: tuple[int, int], *items: tuple[int, int, int, int, int]) -> np.ndarray:
    """An index array with rectangles ``(id, top, left, height, width)`` painted in order."""
    out = np.zeros(size, dtype=np.uint8)
    for value, top, left, height, width in items:
        out[top : top + height, left : left + width] = value
    return out


def _scale(a: np.ndarray, factor: int) -> np.ndarray:
    return np.kron(a, np.ones((factor, factor), dtype=np.uint8))


def _write_video(
    tree: VOSTree,
    key: tuple[str, str, str],
    frame_dir: Path,
    ann_dir: Path,
    stems: list[str],
    annotations: dict[str, np.ndarray],
    size: tuple[int, int],
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    for stem in stems:
        write_jpeg(frame_dir / f"{stem}.jpg", rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    for stem, array in annotations.items():
        write_png(ann_dir / f"{stem}.png", array, PALETTE)
    tree.frames[key] = list(stems)
    tree.annotations[key] = dict(annotations)


def _davis_videos() -> dict[str, dict[str, tuple[list[str], dict[str, np.ndarray]]]]:
    """split -> video -> (frame stems, annotations at 480p)."""
    stems4 = [f"{i:05d}" for i in range(4)]
    stems3 = stems4[:3]
    bear = {}
    for i, stem in enumerate(stems4):
        items = [(1, 2, 1 + i, 4, 4)] + ([(3, 6, 9, 4, 5)] if i < 3 else [])
        a = boxes(SIZE, *items)
        a[-1, :] = 255  # void strip along the bottom edge
        bear[stem] = a
    dogs = {stem: boxes(SIZE, (1, 1 + i, 2, 5, 6)) for i, stem in enumerate(stems3)}
    cars = {stem: boxes(SIZE, (1, 0, 0, 4, 4), (2, 5, 5 + i, 5, 5)) for i, stem in enumerate(stems3)}
    swans = {stems3[0]: boxes(SIZE, (1, 1, 1, 3, 3), (2, 6, 8, 4, 4))}
    return {
        "train": {"bear": (stems4, bear), "dogs": (stems3, dogs)},
        "val": {"cars": (stems3, cars)},
        "test-dev": {"swans": (stems3, swans)},
    }


def _ytvos_splits() -> dict[str, dict[str, tuple[list[str], dict[str, np.ndarray], dict]]]:
    """split -> video -> (frame stems, annotations, meta.json objects)."""
    sparse = ["00000", "00005", "00010"]
    vid_a = {
        "00000": boxes(SIZE, (1, 1, 1, 4, 4)),
        "00005": boxes(SIZE, (1, 1, 2, 4, 4), (3, 6, 8, 4, 6)),
        "00010": boxes(SIZE, (1, 1, 3, 4, 4), (3, 7, 9, 4, 6)),
    }
    dense = [f"{i:05d}" for i in range(6)]
    vid_b = {"00000": boxes(SIZE, (2, 2, 2, 6, 6)), "00005": boxes(SIZE, (2, 3, 4, 6, 6))}
    vid_c = {"00000": boxes(SIZE, (1, 0, 0, 5, 5)), "00005": boxes(SIZE, (2, 6, 10, 5, 5))}
    return {
        "train": {
            "vidA": (
                sparse,
                vid_a,
                {"1": {"category": "dog", "frames": sparse}, "3": {"category": "cat", "frames": sparse[1:]}},
            ),
            "vidB": (dense, vid_b, {"2": {"frames": ["00000", "00005"]}}),
        },
        "valid": {
            "vidC": (
                sparse,
                vid_c,
                {"1": {"category": "person", "frames": sparse}, "2": {"category": "bike", "frames": sparse[1:]}},
            )
        },
    }


def write_vos_tree(base: Path) -> VOSTree:
    """Write both trees under ``base`` and return what was written."""
    tree = VOSTree(davis=base / "davis", ytvos=base / "ytvos")
    seed = 0
    for split, videos in _davis_videos().items():
        lists = tree.davis / "ImageSets" / "2017"
        lists.mkdir(parents=True, exist_ok=True)
        (lists / f"{split}.txt").write_text("".join(f"{v}\n" for v in videos))
        for video, (stems, written) in videos.items():
            for res, layout, size, factor in (
                ("480p", "davis", SIZE, 1),
                ("Full-Resolution", "davis-full", FULL_SIZE, 2),
            ):
                scaled = {stem: _scale(a, factor) for stem, a in written.items()}
                frame_dir = tree.davis / "JPEGImages" / res / video
                ann_dir = tree.davis / "Annotations" / res / video
                _write_video(tree, (layout, split, video), frame_dir, ann_dir, stems, scaled, size, seed)
                seed += 1
    for split, videos in _ytvos_splits().items():
        meta = {"videos": {}}
        for video, (stems, written, objects) in videos.items():
            frame_dir = tree.ytvos / split / "JPEGImages" / video
            ann_dir = tree.ytvos / split / "Annotations" / video
            _write_video(tree, ("ytvos", split, video), frame_dir, ann_dir, stems, written, SIZE, seed)
            seed += 1
            meta["videos"][video] = {"objects": objects}
        (tree.ytvos / split / "meta.json").write_text(json.dumps(meta, indent=1))
    return tree
