"""Reader for Ref-AVSBench (Ref-AVS, ECCV 2024): one sample per referring expression.

On-disk layout (``GeWu-Lab/Ref-AVS``, ``data/metadata.csv`` and ``datasets/dataset_refavs.py``)::

    REFAVS/
    ├── metadata.csv                          # columns vid,uid,split,fid,exp (extra columns are ignored)
    ├── media/{folder}/frames/{0..9}.jpg      # 10 frames per 10-s clip, original resolution
    ├── media/{folder}/audio.wav              # sample rate not documented; avseg resamples to 16 kHz
    └── gt_mask/{folder}/fid_{fid}/{00000..00009}.png   # binary masks (grey level > 0 = foreground)

``folder`` is ``uid.rsplit('_', 2)[0]``, as the official loader (``REFAVS.__getitem__``) and SimToken derive it. For a
normal row ``uid = {vid}_{category}_{k}`` and the folder is ``vid``; for a null row (below) it is the null folder.

CSV columns: ``vid`` (YouTube id + ``_{start_ms}_{end_ms}``), ``uid`` (expression id), ``split``, ``fid`` (object
index: selects ``gt_mask/{folder}/fid_{fid}``), ``exp`` (the expression). avseg also reads an optional column
``modalities`` (values such as ``audio``, ``visual``, ``audio+visual``), an avseg extension written by SynthAV;
real Ref-AVS files do not have it and their records get ``modalities = ()``.

Quirks and the rules avseg applies:

- **Rows with split ``TODO``** (25 in the release) are not part of any split: they are dropped and one
  :class:`~avseg.errors.DatasetWarning` gives their count. They are dropped before their other fields are
  validated.
- **Duplicate uids within a split** (the release has test_s 2288 rows / 2287 uids and test_u 1656 / 1646): by
  default the first row is kept, later ones are dropped, and one DatasetWarning gives the count per split. The
  official loader (``REFAVS.__init__``: ``metadata[metadata['split'] == split]``) keeps every row in CSV order, so
  its test_s/test_u lengths are 1 and 10 larger, and since the official metrics are averaged over batches of 4
  expressions, dropping a row shifts every later batch. ``keep_duplicate_rows=True`` keeps every row in CSV order,
  as the official loader does (no warning then).
- **Null expressions** have uids ``null_c-{vid}_null_{k}`` or ``null_m-{vid}_null_{k}`` (``fid = 0``, the ``vid``
  column holds the plain vid). Their target is absent: ``is_null = True`` and the ground truth is all zeros. Because
  the folder comes from the uid, they read their media from ``media/null_c-{vid}`` (or ``null_m-``), not from
  ``media/{vid}``. They occur in train (608), val (72) and test_n (all 1028 rows). What ``c`` and ``m`` mean is not
  documented anywhere; the letter is kept in ``extra["null_kind"]``.
- **Null masks.** The official loader opens ``gt_mask/null_x-{vid}/fid_0/0000{i}.png`` for null rows like any other
  row (it would crash without them), so a complete copy has them. With ``null_masks="read"`` (default) avseg lists
  them as mask files, so ``check()`` reports a copy that lacks them, and ``load()`` reads them and verifies that they
  are empty: foreground in a null mask gets a DatasetWarning naming the file, and the mask is zeroed (a null
  expression has no target by definition; the official null metric ``S`` ignores the GT anyway). With
  ``null_masks="zeros"`` null records list no mask file and ``load()`` returns zeros without touching the disk.
- **Media folder vs. vid.** For normal rows the uid-derived folder should equal ``vid``; rows where it does not are
  kept (the folder wins, as in the official loader) and counted in one DatasetWarning.
- **Frames are fixed to 10** (``frame_n`` "Fixed to 10" in the official config); masks ``0000{i}.png`` for
  ``i = 0..9`` are ``00000.png``..``00009.png``.
- **Masks as the official code reads them.** ``REFAVS.__getitem__`` reads each mask with ``cv2.imread(path)``
  (3-channel BGR: a grey PNG is replicated, a palette PNG gives its colours, alpha is dropped), resizes it to
  256x256 with ``cv2.resize`` (default ``INTER_LINEAR``, on uint8), converts it with ``cv2.COLOR_BGR2GRAY`` and
  keeps ``> 0``; ``scripts/train.py::test`` scores those 256x256 targets. avseg reads the colours with PIL
  (``convert('RGB')``, the same values as cv2 for 8-bit PNGs) and applies OpenCV's fixed-point grey conversion,
  ``(9798 R + 19235 G + 3735 B + 2**14) >> 15``, so a pixel is foreground exactly when cv2 would give it a grey
  level > 0 (for grey masks: any value > 0; a pure-blue value below 5 reads as 0, as in cv2). ``masks`` is that
  binary mask brought to the frames' size and ``image_size`` (nearest).
- **Resolution.** Frames and masks are stored at their original resolution, which differs between videos: pass
  ``image_size`` to resize (bilinear frames, nearest masks) before batching. With ``native_masks=True`` a sample also
  carries the ground truth at the stored resolution as the official code holds it before resizing: the grey levels
  (``native_masks``, ``uint8`` ``(10, H0, W0)``, 0 = background; null expressions all 0). The 256x256 rule belongs
  to the metric preset (``refavs``), which needs the levels, not a binary mask: cv2's uint8 bilinear resize rounds,
  so a 256x256 pixel whose bilinear interpolation of the stored levels is ``v`` comes out > 0 when ``v >= 0.5``.
  For 0/255 masks that is a foreground weight of at least 1/510, close to but not the same as thresholding the
  interpolated 0/1 mask at > 0; for 0/1-stored masks it is a weight of at least 0.5. Compared with ``cv2.resize`` +
  ``cv2.cvtColor`` on random masks at sizes from 48x80 to 1080x1920, the rule ``bilinear(levels) >= 0.5``
  (half-pixel centres, no antialiasing; :func:`avseg.metrics.binary.resize_mask`) matched every pixel for 0/255
  masks and all but one for 0/128 masks, and missed up to about 30 pixels per frame for 0/1 masks (OpenCV's
  vectorised fixed-point sums); thresholding the interpolated binary mask at > 0 missed up to about 50 pixels per
  frame for 0/255 masks and most boundary pixels for 0/1 masks. (avseg converts to grey before resizing, cv2 after;
  the two orders agree exactly for grey masks.)
- **Audio.** The official code embeds the whole ``audio.wav`` with towhee VGGish (10 x 128); avseg computes the VGGish
  log-mel examples from the wav (resampled to 16 kHz), one per frame, repeating the last example when the clip is
  short (:func:`~avseg.data.base.load_audio_features`, ``pad_mode="repeat_last"``).

Splits are returned in the order train, val, test_s, test_u, test_n, then any others alphabetically. Video counts
(``SplitCounts.videos``) count distinct ``vid`` values, so a null folder does not count as an extra video.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch

from avseg.data.base import (
    ClipRecord,
    ImageSize,
    MetadataCSVReader,
    load_audio_features,
    load_frames,
    resize_frames,
    resize_masks,
    sample_from_record,
    stack_native_masks,
)
from avseg.data.types import AVSSample
from avseg.errors import DatasetWarning, MetadataError
from avseg.media.image import read_rgb

__all__ = [
    "REFAVS_NUM_FRAMES",
    "REFAVS_SPLIT_ORDER",
    "RefAVSReader",
    "media_folder_name",
    "null_kind",
    "read_gray_mask",
]

REFAVS_NUM_FRAMES = 10
REFAVS_SPLIT_ORDER = ("train", "val", "test_s", "test_u", "test_n")
_DROPPED_SPLIT = "TODO"
_NULL_UID = re.compile(r"^null_(?P<kind>[a-z]+)-.+_null_\d+$")


def media_folder_name(uid: str) -> str:
    """The ``media/`` and ``gt_mask/`` folder of an expression: ``uid.rsplit('_', 2)[0]`` (official loader)."""
    return uid.rsplit("_", 2)[0]


def null_kind(uid: str) -> str | None:
    """``"c"`` or ``"m"`` for a null-expression uid (``null_c-{vid}_null_{k}``), None for a normal uid."""
    match = _NULL_UID.match(uid)
    return match.group("kind") if match else None


def read_gray_mask(path: Path) -> np.ndarray:
    """A mask's grey levels as the official loader sees them: colours converted by OpenCV's ``BGR2GRAY`` rule.

    Returns:
        ``uint8`` ``(H, W)`` grey levels, ``(9798 R + 19235 G + 3735 B + 2**14) >> 15`` (OpenCV's fixed-point
        ``cv2.cvtColor(..., cv2.COLOR_BGR2GRAY)`` on 8-bit data); foreground is ``> 0``.

    Raises:
        MissingFileError, CorruptMediaError: the file is missing or cannot be decoded.
    """
    rgb = read_rgb(path).astype(np.int32)
    gray = (9798 * rgb[..., 0] + 19235 * rgb[..., 1] + 3735 * rgb[..., 2] + (1 << 14)) >> 15
    return gray.astype(np.uint8)


def _split_order(names: set[str]) -> list[str]:
    known = [s for s in REFAVS_SPLIT_ORDER if s in names]
    return known + sorted(names - set(known))


class RefAVSReader(MetadataCSVReader):
    """Ref-AVSBench: one record per expression, 10 frames, binary masks; see the module docstring for the layout.

    Args:
        root: the Ref-AVS folder holding ``metadata.csv``, ``media/`` and ``gt_mask/``.
        image_size: resize frames (bilinear) and masks (nearest) to this size; None keeps the size on disk, which
            differs between videos.
        null_masks: ``"read"`` lists the null expressions' ``gt_mask/null_x-{vid}/fid_0`` files (required by
            ``check()``, read and verified empty by ``load()``), as the official loader does; ``"zeros"`` expects no
            files and returns zero masks.
        num_frames: frames per clip (10 in Ref-AVSBench, "fixed"; SynthAV can be generated with other lengths).
        keep_duplicate_rows: keep every row of a split in CSV order, repeated uids included, as the official loader
            does (its evaluation batches follow that order); False keeps the first row of each uid and warns.
        native_masks: also return the masks' grey levels at their stored resolution as ``native_masks``
            ``(10, H0, W0)`` (module docstring).
    """

    format: ClassVar[str] = "refavs"
    item_name: ClassVar[str] = "expressions"
    required_columns = ("vid", "uid", "split", "fid", "exp")

    def __init__(
        self,
        root: str | Path,
        *,
        image_size: ImageSize = None,
        null_masks: Literal["read", "zeros"] = "read",
        num_frames: int = REFAVS_NUM_FRAMES,
        keep_duplicate_rows: bool = False,
        native_masks: bool = False,
    ) -> None:
        super().__init__(root, image_size=image_size, native_masks=native_masks)
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        self.num_frames = int(num_frames)
        if null_masks not in ("read", "zeros"):
            raise ValueError(f"null_masks must be 'read' or 'zeros', got {null_masks!r}")
        self.null_masks = null_masks
        self.keep_duplicate_rows = bool(keep_duplicate_rows)

    # ------------------------------------------------------------------ index

    def _why_rows_yield_nothing(self, rows: list[tuple[int, dict[str, str]]]) -> str:
        if all(row["split"].strip() == _DROPPED_SPLIT for _, row in rows):
            return f"all {len(rows)} row(s) have split {_DROPPED_SPLIT!r}, which is not part of any split"
        return super()._why_rows_yield_nothing(rows)

    def _parse(self) -> dict[str, list[ClipRecord]]:
        """Parse ``metadata.csv`` once; warnings about dropped rows are emitted here, once per reader."""
        if self._records is not None:
            return self._records
        path = self.metadata_path
        rows = self.metadata_rows()
        by_split: dict[str, list[ClipRecord]] = {}
        seen: dict[str, set[str]] = {}
        dropped_todo = 0
        duplicates: Counter[str] = Counter()
        folder_mismatch: list[str] = []
        for number, row in rows:
            split = row["split"].strip()
            if not split:
                raise MetadataError(path, f"row {number}: empty split")
            if split == _DROPPED_SPLIT:
                dropped_todo += 1
                continue
            vid = row["vid"].strip()
            uid = row["uid"].strip()
            if not vid:
                raise MetadataError(path, f"row {number}: empty vid")
            if not uid:
                raise MetadataError(path, f"row {number}: empty uid")
            try:
                fid = int(row["fid"].strip())
            except ValueError:
                raise MetadataError(path, f"row {number}: fid {row['fid']!r} is not an integer") from None
            if uid.count("_") < 2 or not media_folder_name(uid):
                raise MetadataError(path, f"row {number}: uid {uid!r} is not of the form {{vid}}_{{category}}_{{k}}")
            if uid in seen.setdefault(split, set()) and not self.keep_duplicate_rows:
                duplicates[split] += 1
                continue
            seen[split].add(uid)
            kind = null_kind(uid)
            folder = media_folder_name(uid)
            if kind is None and folder != vid:
                folder_mismatch.append(uid)
            by_split.setdefault(split, []).append(self._record(split, vid, uid, fid, row, folder, kind, number))

        if dropped_todo:
            warnings.warn(
                f"{path}: dropped {dropped_todo} row(s) with split {_DROPPED_SPLIT!r} (not part of any split)",
                DatasetWarning,
                stacklevel=3,
            )
        if duplicates:
            detail = ", ".join(f"{s}: {n}" for s, n in duplicates.items())
            warnings.warn(
                f"{path}: dropped {sum(duplicates.values())} row(s) whose uid repeats an earlier row of the same "
                f"split ({detail}); the first row of each uid is kept",
                DatasetWarning,
                stacklevel=3,
            )
        if folder_mismatch:
            warnings.warn(
                f"{path}: {len(folder_mismatch)} row(s) have a uid whose folder (uid.rsplit('_', 2)[0]) differs from "
                f"their vid column, e.g. {folder_mismatch[0]!r}; media and masks are read from the uid's folder, as "
                "the official loader does",
                DatasetWarning,
                stacklevel=3,
            )
        self._records = {s: by_split[s] for s in _split_order(set(by_split))}
        return self._records

    def _record(
        self, split: str, vid: str, uid: str, fid: int, row: dict[str, str], folder: str, kind: str | None, number: int
    ) -> ClipRecord:
        media = self.root / "media" / folder
        mask_dir = self.root / "gt_mask" / folder / f"fid_{fid}"
        frame_paths = tuple(media / "frames" / f"{i}.jpg" for i in range(self.num_frames))
        if kind is not None and self.null_masks == "zeros":
            mask_refs: tuple[Path | None, ...] = (None,) * self.num_frames
        else:
            # "0000{i}.png" in the official loader; identical to a 5-digit index for i < 10.
            mask_refs = tuple(mask_dir / f"{i:05d}.png" for i in range(self.num_frames))
        modalities = tuple(m.strip().lower() for m in row.get("modalities", "").split("+") if m.strip())
        extra: dict[str, object] = {"media_dir": folder, "fid": fid, "row": number}
        if kind is not None:
            extra["null_kind"] = kind
        return ClipRecord(
            dataset=self.format,
            split=split,
            video_id=vid,
            frame_paths=frame_paths,
            mask_refs=mask_refs,
            audio_path=media / "audio.wav",
            num_frames=self.num_frames,
            uid=uid,
            text=row["exp"],
            object_id=str(fid),
            is_null=kind is not None,
            modalities=modalities,
            extra=extra,
        )

    # ------------------------------------------------------------------ decoding

    def load(self, record: ClipRecord) -> AVSSample:
        """Decode one expression.

        Returns:
            A sample with ``T = 10``: ``frames`` ``uint8`` ``(10, 3, H, W)``, ``masks`` ``uint8`` ``(10, H, W)`` in
            {0, 1} (all zero for null expressions), ``frame_valid`` and ``label_valid`` all True, ``text`` = the
            expression, ``object_id`` = ``str(fid)``, ``audio_examples`` ``(10, 1, 96, 64)``. ``H, W`` is
            ``image_size`` when set, else the size on disk (``orig_size``). With ``native_masks``: ``native_masks``
            ``uint8`` ``(10, H0, W0)``, the grey levels at the masks' stored size (module docstring).

        Raises:
            MissingFileError, CorruptMediaError: a frame, mask or the audio file is missing or unreadable (named).
        """
        frames = load_frames(record.frame_paths)  # (10, 3, H, W)
        size_hw = (int(frames.shape[-2]), int(frames.shape[-1]))
        grays = [None if ref is None else read_gray_mask(ref) for ref in record.mask_refs]
        native = stack_native_masks(grays, record.num_frames, default_size=size_hw, sources=record.mask_refs)
        if record.is_null and bool(native.any()):
            frame = int(native.flatten(1).any(1).nonzero()[0])
            warnings.warn(
                f"{record.mask_refs[frame]}: null expression {record.uid!r} has foreground in its ground-truth mask; "
                "the mask is set to zeros (a null expression has no target)",
                DatasetWarning,
                stacklevel=2,
            )
            native.zero_()
        frames = resize_frames(frames, self.image_size)
        binary = (native > 0).to(torch.uint8)
        masks = resize_masks(resize_masks(binary, size_hw), self.image_size)  # (10, H, W)
        meta = dict(record.extra)
        wave, examples, has_audio = load_audio_features(record.audio_path, record.num_frames, pad_mode="repeat_last")
        valid = torch.ones(record.num_frames, dtype=torch.bool)
        return sample_from_record(
            record,
            frames=frames,
            masks=masks,
            frame_valid=valid,
            label_valid=valid.clone(),
            audio_wave=wave,
            audio_examples=examples,
            has_audio=has_audio,
            frame_names=tuple(p.stem for p in record.frame_paths),
            orig_size=size_hw,
            native_masks=native if self.native_masks else None,
            meta=meta,
        )
