"""A tiny RVOS tree (MeViS / Sa2VA JSON layout) with every quirk the reader handles, for reader and CLI tests.

``root/``:

- ``train/``: ``vidA`` (3 frames) with an expression over two ``anno_id`` (union of masks) and one whose object is
  absent on the middle frame (a ``null`` RLE); ``vidB`` lists its 4 frames out of order and has an int ``obj_id``
  and a ReVOS ``type_id``.
- ``valid/``: no ``mask_dict.json`` (no public ground truth); expressions have neither ``anno_id`` nor ``obj_id``.
- ``ytvos/``: Ref-YouTube-VOS style, no ``anno_id``; masks keyed ``"{vid}/{obj_id}"``.

:func:`write_revos_tree` writes a ReVOS split apart (``mask_dict_foreground.json`` and ``type_id`` 0/1/2).

RLEs are written with :func:`avseg.data.rle.encode` (itself tested against pycocotools in ``test_rle.py``), at
``mask_size`` (default: the frames' size ``SIZE``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from avseg.data import rle
from avseg.media.image import write_jpeg, write_png
from tests.data.fixtures_vos import PALETTE, boxes

SIZE = (12, 16)


@dataclass
class RVOSTree:
    """The root and what was written: per-split sorted frame ids, per-key mask lists, and the expressions."""

    root: Path
    mask_size: tuple[int, int] = SIZE
    """``(H, W)`` of every written RLE."""
    frame_ids: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    """``(split, vid)`` -> frame ids in sorted order."""
    masks: dict[tuple[str, str], list[np.ndarray | None]] = field(default_factory=dict)
    """``(split, mask_dict key)`` -> per sorted frame, the ``(H, W)`` binary mask or None (null RLE)."""
    expressions: dict[str, dict[str, Any]] = field(default_factory=dict)
    """``split`` -> the ``videos`` object written to its meta_expressions.json."""
    foreground: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    """``(split, vid)`` -> ``(T, H, W)`` uint8, per sorted frame the number of objects written to
    ``mask_dict_foreground.json`` covering each pixel (zeros for a null entry)."""


def box(top: int, left: int, height: int, width: int, size: tuple[int, int] = SIZE) -> np.ndarray:
    """A binary ``(H, W)`` mask with one filled rectangle."""
    m = np.zeros(size, dtype=np.uint8)
    m[top : top + height, left : left + width] = 1
    return m


def _write_frames(split_dir: Path, vid: str, frame_ids: list[str], seed: int) -> None:
    rng = np.random.default_rng(seed)
    for fid in frame_ids:
        write_jpeg(split_dir / "JPEGImages" / vid / f"{fid}.jpg", rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8))


def _write_split(tree: RVOSTree, split: str, videos: dict[str, Any], masks: dict[str, list] | None) -> None:
    split_dir = tree.root / split
    split_dir.mkdir(parents=True, exist_ok=True)
    (split_dir / "meta_expressions.json").write_text(json.dumps({"videos": videos}, indent=1))
    tree.expressions[split] = videos
    for seed, (vid, video) in enumerate(videos.items()):
        tree.frame_ids[(split, vid)] = sorted(video["frames"])
        _write_frames(split_dir, vid, video["frames"], seed)
    if masks is not None:
        encoded = {key: [None if m is None else rle.encode(m) for m in ms] for key, ms in masks.items()}
        (split_dir / "mask_dict.json").write_text(json.dumps(encoded))
        for key, ms in masks.items():
            tree.masks[(split, key)] = ms


def write_rvos_tree(base: Path, *, mask_size: tuple[int, int] = SIZE) -> RVOSTree:
    """Write the tree under ``base/rvos`` (masks at ``mask_size``, at least 12x16) and return what was written."""
    tree = RVOSTree(root=base / "rvos", mask_size=mask_size)

    def at(top: int, left: int, height: int, width: int) -> np.ndarray:
        return box(top, left, height, width, mask_size)

    train_videos = {
        "vidA": {
            "frames": ["00000", "00005", "00010"],
            "expressions": {
                "0": {"exp": "the two dogs", "anno_id": [0, 1], "obj_id": [0, 1]},
                "1": {"exp": "the cat leaving the room", "anno_id": [2], "obj_id": [2]},
            },
        },
        "vidB": {
            # Out of order on purpose: mask lists follow the sorted order 00000, 00005, 00010, 00015.
            "frames": ["00015", "00000", "00005", "00010"],
            "expressions": {"0": {"exp": "a bird flying away", "anno_id": [3], "obj_id": 5, "type_id": 1}},
        },
    }
    train_masks = {
        "0": [at(0, 0, 4, 4), at(1, 1, 4, 4), at(2, 2, 4, 4)],
        "1": [at(6, 8, 5, 6), at(6, 9, 5, 6), at(0, 0, 4, 4)],  # overlaps key "0" on the last frame
        "2": [at(3, 3, 3, 3), None, at(5, 5, 3, 3)],  # absent on the middle frame
        "3": [at(0, 0, 2, 2), at(0, 4, 2, 2), at(0, 8, 2, 2), at(0, 12, 2, 2)],
    }
    _write_split(tree, "train", train_videos, train_masks)

    valid_videos = {
        "vidC": {"frames": ["00000", "00001"], "expressions": {"0": {"exp": "the left car"}, "1": {"exp": "a tree"}}}
    }
    _write_split(tree, "valid", valid_videos, None)

    ytvos_videos = {
        "vidD": {
            "frames": ["00000", "00005"],
            "expressions": {"0": {"exp": "a person surfing", "obj_id": "1"}, "1": {"exp": "a wave", "obj_id": "2"}},
        }
    }
    ytvos_masks = {"vidD/1": [at(1, 1, 3, 5), at(2, 2, 3, 5)], "vidD/2": [None, at(8, 0, 4, 16)]}
    _write_split(tree, "ytvos", ytvos_videos, ytvos_masks)
    return tree


def write_revos_tree(base: Path) -> RVOSTree:
    """Write a ReVOS-layout split ``base/revos/valid`` and return what was written.

    ``vidA`` (3 frames) has objects 0 and 1, which overlap, and object 2; its expressions are of ``type_id`` 0
    (object 0; object 2), 1 (object 1) and 2 (objects 0 and 1). ``UVO/vidB`` (2 frames, a ``vid`` with a slash) has
    object 3 under a reasoning expression (``type_id`` 1). ``mask_dict_foreground.json`` stores ``vidA``'s first
    frame as one RLE per object (summed: 2 on the overlap), its second as one RLE of the union (as VISA's
    ``generate_foreground_mask.py`` writes it) and its third as null; ``UVO/vidB`` has one RLE per frame.
    """
    tree = RVOSTree(root=base / "revos")
    videos = {
        "vidA": {
            "frames": ["00000", "00005", "00010"],
            "expressions": {
                "0": {"exp": "the left dog", "anno_id": [0], "obj_id": [0], "type_id": 0},
                "1": {"exp": "the animal that is chased", "anno_id": [1], "obj_id": [1], "type_id": 1},
                "2": {"exp": "the dogs", "anno_id": [0, 1], "obj_id": [0, 1], "type_id": 2},
                "3": {"exp": "the ball", "anno_id": [2], "obj_id": [2], "type_id": 0},
            },
        },
        "UVO/vidB": {
            "frames": ["00000", "00001"],
            "expressions": {"0": {"exp": "what carries the rider?", "anno_id": [3], "obj_id": [3], "type_id": 1}},
        },
    }
    masks = {
        "0": [box(0, 0, 6, 6), box(1, 1, 6, 6), box(2, 2, 6, 6)],
        "1": [box(3, 3, 6, 6), box(3, 4, 6, 6), None],
        "2": [box(9, 12, 2, 2), None, box(8, 10, 3, 3)],
        "3": [box(2, 4, 8, 8), box(3, 5, 8, 8)],
    }
    _write_split(tree, "valid", videos, masks)
    objects = {"vidA": ["0", "1", "2"], "UVO/vidB": ["3"]}
    stored: dict[str, dict[str, list[Any]]] = {}
    for vid, keys in objects.items():
        per_frame = [[masks[k][t] for k in keys if masks[k][t] is not None] for t in range(len(masks[keys[0]]))]
        counts = np.stack([np.sum(ms, axis=0, dtype=np.uint8) for ms in per_frame])  # (T, H, W)
        if vid == "vidA":
            entries = [[rle.encode(m) for m in per_frame[0]], rle.encode((counts[1] > 0).astype(np.uint8)), None]
            counts[1] = counts[1] > 0
            counts[2] = 0
        else:
            entries = [rle.encode(c) for c in counts]
        stored[vid] = {"masks_rle": entries}
        tree.foreground[("valid", vid)] = counts
    (tree.root / "valid" / "mask_dict_foreground.json").write_text(json.dumps(stored))
    return tree


def union(tree: RVOSTree, split: str, keys: list[str], frame_positions: list[int]) -> np.ndarray:
    """Reference union of the written masks of ``keys`` at the given sorted-frame positions: ``(T, H, W)`` uint8."""
    out = np.zeros((len(frame_positions), *tree.mask_size), dtype=np.uint8)
    for key in keys:
        for t, pos in enumerate(frame_positions):
            m = tree.masks[(split, key)][pos]
            if m is not None:
                out[t] = np.maximum(out[t], m)
    return out


# ----------------------------------------------------------------------------------- original (palette) layout

PALETTE_SIZE = (24, 32)
"""``(H, W)`` of ``vidQ``'s annotation PNGs: twice its frames' size, for the native-resolution masks."""


@dataclass
class PaletteTree:
    """A Ref-YouTube-VOS / converted Ref-DAVIS17 tree: what was written, for independent references."""

    root: Path
    annotations: dict[tuple[str, str], dict[str, np.ndarray]] = field(default_factory=dict)
    """``(split, vid)`` -> ``{frame id: (H, W) uint8 palette index array}`` for the frames with a PNG."""
    frame_ids: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    """``(split, vid)`` -> frame ids in sorted order."""


def write_palette_tree(base: Path) -> PaletteTree:
    """Write ``base/ref-ytvos`` in the original layout (``meta_expressions/{split}/``, palette ``Annotations``):

    - ``train``: ``vidP`` (frames listed out of order; PNGs on 00000, 00005, 00015 but not 00010; object 1 on every
      PNG, object 2 absent from 00005, object 3 only on 00015, a void 255 strip) with expressions on objects 1, 2,
      ``["1", "3"]`` and 3; ``vidQ`` (2 frames, object 1, PNGs at ``PALETTE_SIZE``).
    - ``valid``: ``vidR``, no ``Annotations`` folder (no public ground truth).
    """
    tree = PaletteTree(root=base / "ref-ytvos")
    vid_p = {
        "00000": boxes(SIZE, (1, 0, 0, 4, 4), (2, 6, 8, 4, 6)),
        "00005": boxes(SIZE, (1, 1, 1, 4, 4)),
        "00015": boxes(SIZE, (1, 2, 2, 4, 4), (2, 6, 9, 4, 6), (3, 8, 0, 3, 5)),
    }
    vid_p["00015"][-1, :] = 255
    vid_q = {f: np.kron(boxes(SIZE, (1, 3, 3 + i, 5, 5)), np.ones((2, 2), np.uint8)) for i, f in enumerate(["0", "1"])}
    splits = {
        "train": {
            "vidP": (
                ["00015", "00000", "00005", "00010"],
                {
                    "0": {"exp": "the left dog", "obj_id": "1"},
                    "1": {"exp": "a cat that leaves", "obj_id": "2"},
                    "2": {"exp": "dog and ball", "obj_id": ["1", "3"]},
                    "3": {"exp": "a ball thrown late", "obj_id": "3"},
                },
                vid_p,
            ),
            "vidQ": (["0", "1"], {"0": {"exp": "a horse", "obj_id": "1"}}, vid_q),
        },
        "valid": {"vidR": (["00000", "00005"], {"0": {"exp": "a boat", "obj_id": "1"}}, None)},
    }
    for split, videos in splits.items():
        meta = {"videos": {}}
        for seed, (vid, (frames, expressions, pngs)) in enumerate(videos.items()):
            meta["videos"][vid] = {"expressions": expressions, "frames": frames}
            _write_frames(tree.root / split, vid, frames, seed)
            tree.frame_ids[(split, vid)] = sorted(frames)
            if pngs is not None:
                for fid, array in pngs.items():
                    write_png(tree.root / split / "Annotations" / vid / f"{fid}.png", array, PALETTE)
                tree.annotations[(split, vid)] = pngs
        path = tree.root / "meta_expressions" / split / "meta_expressions.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(meta, indent=1))
    return tree
