"""Prompts for promptable models (SAM2): which object(s) to track, given on one frame of the user's video.

``avseg predict`` takes them as strings and a file, in the video's own pixel coordinates (``x`` to the right, ``y``
down, ``0 <= x < W``, ``0 <= y < H``):

- ``--points "x,y[,label];..."``: clicks on one object; label 1 (the default) marks the object, 0 the background.
- ``--box "x0,y0,x1,y1"``: the object's box (``x0 < x1``, ``y0 < y1``, inside ``[0, W] x [0, H]``); with
  ``--points`` the box comes first and the clicks refine it, as in SAM2's predictor.
- ``--mask PATH.png``: the object's mask, a PNG of the video's size. A binary mask (one non-zero value: 0/1, 0/255)
  is one object. A palette or grey PNG with several values (a DAVIS annotation) holds one object per value, 0 being
  background and 255 DAVIS's void label; the output masks then keep those ids.
- ``--prompt-frame N``: the sampled frame the prompt is on (0, the first, by default).

:func:`parse_prompts` checks the syntax before anything loads; :meth:`VideoPrompts.check` checks the coordinates and
the mask's size against the video once its size is known, before any frame is decoded.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from avseg.errors import UsageError
from avseg.media.image import read_mask

if TYPE_CHECKING:
    from avseg.models.base import AVSModel

__all__ = ["ObjectPrompt", "VideoPrompts", "is_promptable", "parse_box", "parse_points", "parse_prompts"]

VOID_ID = 255
"""DAVIS's void label in a multi-object mask: not an object."""

_NUMBER = r"\s*[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?\s*"


def is_promptable(model: AVSModel) -> bool:
    """Whether ``model`` tracks objects given by prompts (:meth:`avseg.models.sam2_vos.SAM2VOS.track`)."""
    from avseg.models.sam2_vos import SAM2VOS

    return isinstance(model, SAM2VOS)


@dataclass(frozen=True)
class ObjectPrompt:
    """The prompt of one object, in the video's pixel coordinates.

    Attributes:
        object_id: the id the object's pixels get in multi-object masks (1 for a single object).
        points: ``(P, 2)`` float ``(x, y)`` clicks, or None.
        labels: ``(P,)`` int, 1 positive and 0 negative, or None.
        box: ``(x0, y0, x1, y1)``, or None.
        mask: ``(H, W)`` bool, or None.
    """

    object_id: int = 1
    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    box: tuple[float, float, float, float] | None = None
    mask: np.ndarray | None = None

    def clicks(self) -> tuple[np.ndarray, np.ndarray]:
        """The box corners (labels 2 and 3, SAM2's box encoding) followed by the clicks: ``(P, 2)`` and ``(P,)``."""
        points = [] if self.box is None else [self.box[:2], self.box[2:]]
        labels = [] if self.box is None else [2, 3]
        if self.points is not None and self.labels is not None:
            points += [tuple(p) for p in self.points.tolist()]
            labels += [int(v) for v in self.labels.tolist()]
        return np.asarray(points, dtype=np.float32).reshape(-1, 2), np.asarray(labels, dtype=np.int64)


@dataclass(frozen=True)
class VideoPrompts:
    """The objects to track and the sampled frame they are given on.

    Attributes:
        frame: index of the prompted frame among the sampled frames.
        objects: one :class:`ObjectPrompt` per object; all clicks and boxes, or all masks.
        source: how the prompt was given (``--points ...``), for messages and the settings record.
    """

    frame: int
    objects: tuple[ObjectPrompt, ...]
    source: str = ""

    @property
    def kind(self) -> str:
        """``"mask"`` or ``"points"`` (clicks and boxes)."""
        return "mask" if self.objects[0].mask is not None else "points"

    @property
    def object_ids(self) -> list[int]:
        return [o.object_id for o in self.objects]

    def check(self, height: int, width: int, *, what: str = "the video") -> None:
        """Refuse points or a box outside a ``height x width`` frame, or a mask of another size (UsageError)."""
        for obj in self.objects:
            if obj.mask is not None and tuple(obj.mask.shape) != (height, width):
                h, w = obj.mask.shape
                raise UsageError(f"{self.source}: the mask is {w}x{h} but {what} is {width}x{height} (W x H)")
            for x, y in [] if obj.points is None else obj.points.tolist():
                if not (0 <= x < width and 0 <= y < height):
                    raise UsageError(
                        f"{self.source}: point ({x:g}, {y:g}) is outside {what} ({width}x{height}: 0 <= x < {width}, "
                        f"0 <= y < {height})"
                    )
            if obj.box is not None:
                x0, y0, x1, y1 = obj.box
                if min(x0, y0) < 0 or x1 > width or y1 > height:
                    raise UsageError(
                        f"{self.source}: box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) reaches outside {what} ({width}x{height})"
                    )

    def check_frame(self, num_frames: int, *, estimated: bool = False) -> None:
        """Refuse a prompt frame beyond the ``num_frames`` sampled frames (UsageError); ``estimated``: the count is
        the container's or the duration's, before decoding."""
        if not 0 <= self.frame < num_frames:
            about = "about " if estimated else ""
            raise UsageError(
                f"--prompt-frame {self.frame}: the video has {about}{num_frames} sampled frame(s) "
                f"(0..{num_frames - 1}); a higher --fps samples more"
            )

    def record(self) -> dict[str, Any]:
        """JSON-ready description for the settings file."""
        objects = []
        for obj in self.objects:
            entry: dict[str, Any] = {"object_id": obj.object_id}
            if obj.points is not None and obj.labels is not None:
                entry["points"] = [[float(x), float(y), int(v)] for (x, y), v in zip(obj.points.tolist(), obj.labels)]
            if obj.box is not None:
                entry["box"] = [float(v) for v in obj.box]
            if obj.mask is not None:
                entry["mask_pixels"] = int(obj.mask.sum())
            objects.append(entry)
        return {"frame": self.frame, "kind": self.kind, "given": self.source, "objects": objects}


def parse_points(text: str, *, arg: str = "--points") -> tuple[np.ndarray, np.ndarray]:
    """Parse ``"x,y[,label];..."`` into ``(P, 2)`` float points and ``(P,)`` labels (1 when omitted).

    Example:
        >>> points, labels = parse_points("10,20; 30.5,4,0")
        >>> points.tolist(), labels.tolist()
        ([[10.0, 20.0], [30.5, 4.0]], [1, 0])
    """
    items = [p for p in text.split(";") if p.strip()]
    if not items:
        raise UsageError(f'{arg} {text!r}: no point; expected "x,y[,label];..." (label 1 positive, 0 negative)')
    points, labels = [], []
    for item in items:
        fields = item.split(",")
        if len(fields) not in (2, 3) or not all(re.fullmatch(_NUMBER, f) for f in fields):
            raise UsageError(
                f'{arg} {text!r}: cannot read {item.strip()!r}; expected "x,y[,label];..." with numbers, e.g. '
                '"120,80;200,40,0"'
            )
        x, y = float(fields[0]), float(fields[1])
        label = float(fields[2]) if len(fields) == 3 else 1.0
        if label not in (0.0, 1.0):
            raise UsageError(f"{arg} {text!r}: label {fields[2].strip()} of {item.strip()!r} must be 1 or 0")
        if not (math.isfinite(x) and math.isfinite(y)):
            raise UsageError(f"{arg} {text!r}: {item.strip()!r} is not a finite point")
        points.append((x, y))
        labels.append(int(label))
    return np.asarray(points, dtype=np.float32), np.asarray(labels, dtype=np.int64)


def parse_box(text: str, *, arg: str = "--box") -> tuple[float, float, float, float]:
    """Parse ``"x0,y0,x1,y1"`` (top-left and bottom-right corners).

    Example:
        >>> parse_box("4, 8, 40, 30")
        (4.0, 8.0, 40.0, 30.0)
    """
    fields = text.split(",")
    if len(fields) != 4 or not all(re.fullmatch(_NUMBER, f) for f in fields):
        raise UsageError(f'{arg} {text!r}: expected "x0,y0,x1,y1" (four numbers, top-left then bottom-right)')
    x0, y0, x1, y1 = (float(f) for f in fields)
    if not (x0 < x1 and y0 < y1):
        raise UsageError(f"{arg} {text!r}: the box needs x0 < x1 and y0 < y1")
    return x0, y0, x1, y1


def _mask_objects(path: Path) -> tuple[ObjectPrompt, ...]:
    """The objects of a mask PNG (see the module docstring)."""
    array = read_mask(path)  # (H, W): palette indices as stored, grey values, or 0/1
    values = [int(v) for v in np.unique(array) if v != 0]
    if not values:
        raise UsageError(f"--mask {path}: the mask is empty (no non-zero pixel)")
    if len(values) == 1:
        return (ObjectPrompt(object_id=1, mask=array > 0),)
    ids = [v for v in values if v != VOID_ID]
    return tuple(ObjectPrompt(object_id=v, mask=array == v) for v in ids)


def parse_prompts(
    points: str | None = None, box: str | None = None, mask: str | Path | None = None, frame: int | None = None
) -> VideoPrompts | None:
    """The prompts of the ``predict`` options, or None when none is given (syntax and files checked here).

    Raises:
        UsageError: malformed ``points`` or ``box``, a mask with clicks or a box, an unreadable or empty mask, a
            negative frame, or a frame without a prompt.
        MissingFileError: the mask file does not exist.
    """
    given = [f"--{name}" for name, value in (("points", points), ("box", box), ("mask", mask)) if value is not None]
    if not given:
        if frame is not None:
            raise UsageError(f"--prompt-frame {frame}: give the prompt too (--points, --box or --mask)")
        return None
    if frame is not None and frame < 0:
        raise UsageError(f"--prompt-frame {frame}: must be >= 0 (a sampled frame of the video)")
    frame = frame or 0
    if mask is not None:
        if points is not None or box is not None:
            raise UsageError(f"{' and '.join(given)}: a mask prompt stands alone; give --mask, or --points/--box")
        return VideoPrompts(frame=frame, objects=_mask_objects(Path(mask)), source=f"--mask {mask}")
    clicks = parse_points(points) if points is not None else (None, None)
    source = " ".join(f"{name} {value}" for name, value in (("--points", points), ("--box", box)) if value)
    obj = ObjectPrompt(points=clicks[0], labels=clicks[1], box=parse_box(box) if box is not None else None)
    return VideoPrompts(frame=frame, objects=(obj,), source=source)
