"""The masks folder of ``avseg predict`` remembers how its masks were made, so that an interrupted run resumes.

``avseg predict`` writes each mask PNG atomically as soon as its clip has run, so a PNG that exists is complete. Beside
them it keeps ``.avseg-predict.json``, written atomically before the first mask: the settings that decide the masks
(video, checkpoint, rate, frame rule, clip length, threshold, audio rule, text, prompt, model input size) and, once
known, the mask kind. Running the same command again reads that record: with the same settings, sampled frames whose
PNG exists are read back instead of segmented (a clip whose frames all have one is not run); with other settings the
run is refused, naming what differs, since mixing masks of two settings would silently give a result neither would.
``restart=True`` (``--restart``) starts over in the same folder. A folder with PNGs but no record (another tool's, or
an older avseg's) is written over as before: nothing in it is trusted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from avseg.data.benchmarks import AVSS_NUM_CLASSES
from avseg.errors import UsageError
from avseg.fileio import atomic_write_text
from avseg.media.image import read_mask
from avseg.viz import write_mask_png

__all__ = ["RECORD_NAME", "MaskFolder"]

RECORD_NAME = ".avseg-predict.json"
"""The settings record of a masks folder."""

# What the model found rather than what the user asked for: filled in by the first run, not compared.
_FOUND = ("kind", "num_classes")


class MaskFolder:
    """The mask PNGs of one ``avseg predict`` run and the record that lets a later run resume them.

    Args:
        folder: the masks folder (created when missing).
        settings: JSON-ready settings that decide the masks (compared with a record already there).
        restart: ignore (and replace) an earlier run's record and masks instead of resuming them.
        arg: the option that named the folder, for messages.

    Raises:
        UsageError: the folder holds the masks of a run with other settings (and ``restart`` is False).
    """

    def __init__(self, folder: Path, settings: dict[str, Any], *, restart: bool = False, arg: str = "--masks-dir"):
        self.folder = Path(folder)
        self.record_path = self.folder / RECORD_NAME
        self.settings = json.loads(json.dumps(settings))  # as it reads back from the file
        self.kind: Literal["binary", "semantic"] | None = None
        self.num_classes = 0
        self.resuming = False
        earlier = self._earlier() if not restart else None
        if earlier is not None:
            changed = [
                key
                for key in sorted(set(self.settings) | set(earlier) - set(_FOUND))
                if key not in _FOUND and earlier.get(key) != self.settings.get(key)
            ]
            if changed:
                detail = "; ".join(
                    f"{key} {_show(earlier.get(key))} there, {_show(self.settings.get(key))} now" for key in changed
                )
                raise UsageError(
                    f"{arg} {self.folder}: holds the masks of an earlier run with other settings ({detail}); "
                    "run again with --restart to replace them, or give another --masks-dir"
                )
            self.resuming = True
            self.kind = earlier.get("kind")
            self.num_classes = int(earlier.get("num_classes") or 0)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._save()

    def _earlier(self) -> dict[str, Any] | None:
        if not self.record_path.is_file():
            return None
        try:
            record = json.loads(self.record_path.read_text())
        except (OSError, ValueError) as err:
            raise UsageError(
                f"{self.record_path}: cannot read the settings of the earlier run ({err}); run again with --restart"
            ) from err
        return record if isinstance(record, dict) else None

    def _save(self) -> None:
        found = {"kind": self.kind, "num_classes": self.num_classes or None}
        atomic_write_text(self.record_path, json.dumps({**self.settings, **found}, indent=2))

    def path(self, index: int) -> Path:
        """``{index:05d}.png``: the mask of sampled frame ``index``."""
        return self.folder / f"{index:05d}.png"

    def finished(self, index: int) -> Tensor | None:
        """The mask an earlier run with these settings wrote for sampled frame ``index`` (``uint8 (H, W)``: 0/1,
        or the ids a palette PNG holds), else None."""
        if not self.resuming or self.kind is None:
            return None
        path = self.path(index)
        if not path.is_file():
            return None
        stored = np.array(read_mask(path))  # writable, for torch
        return torch.from_numpy((stored > 0).astype(np.uint8) if self.kind == "binary" else stored)

    def write(self, index: int, mask: Tensor, kind: Literal["binary", "semantic"], num_classes: int) -> Path:
        """Write the PNG of sampled frame ``index`` (atomically; the record learns the mask kind first)."""
        if self.kind != kind or self.num_classes != num_classes:
            self.kind, self.num_classes = kind, num_classes
            self._save()
        # The AVSS palette also for fewer classes.
        return write_mask_png(self.path(index), mask, kind=kind, num_classes=max(num_classes, AVSS_NUM_CLASSES))


def _show(value: Any) -> str:
    return "none" if value is None else json.dumps(value)
