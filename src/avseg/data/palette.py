"""Palette annotation PNGs whose pixel values are object ids, as DAVIS 2017, YouTube-VOS, MOSE, Ref-YouTube-VOS and
Ref-DAVIS17 store them; shared by the VOS reader (:mod:`avseg.data.vos`) and the RVOS reader (:mod:`avseg.data.rvos`).

The PNGs are read as indices (:func:`avseg.media.image.read_mask`), never converted to RGB: index 0 is background,
255 the DAVIS void label, and every other index one object (sam2's ``PalettisedPNGSegmentLoader``, ReferFormer's
``datasets/ytvos.py`` ``mask == obj_id``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from avseg.errors import MetadataError

__all__ = ["VOID_ID", "object_ids", "object_index", "object_mask"]

VOID_ID = 255
"""DAVIS's void label: not an object (the official evaluation sets it to background)."""


def object_ids(png: np.ndarray) -> list[int]:
    """The object ids of one annotation (its values without background 0 and void 255), ascending."""
    return [int(v) for v in np.unique(png) if v not in (0, VOID_ID)]


def object_index(key: Any, path: Path, where: str) -> int:
    """An object id of a metadata file (``"3"`` or ``3``) as the palette index it stands for (1..254).

    Raises:
        MetadataError: the id is not an integer 1..254; the message names ``path`` and the key ``where``.
    """
    try:
        value = int(str(key).strip())
    except ValueError:
        value = -1
    if isinstance(key, bool) or not 1 <= value < VOID_ID:
        raise MetadataError(path, f"{where}: object id {key!r} must be an integer 1..254 (its palette index)")
    return value


def object_mask(png: np.ndarray, ids: Sequence[int]) -> np.ndarray:
    """``uint8`` ``(H, W)`` mask, 1 where the annotation holds one of ``ids`` (the union of those objects)."""
    return np.isin(png, np.asarray(ids, dtype=np.int64)).astype(np.uint8)
