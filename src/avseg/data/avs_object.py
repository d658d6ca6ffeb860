"""AVSBench-object v1 (S4 "Single-source" and MS3 "Multi-sources") in the layout of the official TPAVI scripts.

Provenance: ``OpenNLPLab/AVSBench@4d4c901`` ``avs_scripts/avs_s4/dataloader.py::S4Dataset``,
``avs_scripts/avs_ms3/dataloader.py::MS3Dataset`` and ``preprocess_scripts/preprocess_{s4,ms3}.py``.

On-disk layout (``root`` is the ``avsbench_data`` folder, or one of its two subset folders)::

    avsbench_data/
      Single-source/                                  # S4
        s4_meta_data.csv                              # one row per clip: name, start time, category, split
        s4_data/
          visual_frames/{split}/{category}/{name}/{name}_{1..5}.png
          gt_masks/{split}/{category}/{name}/{name}_{1..5}.png    # train: only {name}_1.png
          audio_wav/{split}/{category}/{name}.wav                 # 16 kHz
          audio_log_mel/{split}/{category}/{name}.pkl             # not read (see below)
      Multi-sources/                                  # MS3
        ms3_meta_data.csv                             # one row per clip: name, split
        ms3_data/
          visual_frames/{name}/{name}.mp4_{1..5}.png              # no split/category folders, ".mp4_" infix
          gt_masks/{split}/{name}/{name}_{1..5}.png               # 5 masks in every split, palette PNGs
          audio_wav/{split}/{name}.wav
          audio_log_mel/{split}/{name}.pkl                        # not read

Quirks and the rules avseg applies:

- **Which subset.** ``subset="s4"`` or ``"ms3"`` picks one. With ``subset=None`` the reader looks at ``root``: a root
  that is itself a subset folder (holds ``s4_meta_data.csv``/``s4_data`` or ``ms3_meta_data.csv``/``ms3_data``) is
  that subset; otherwise ``root/Single-source`` and ``root/Multi-sources`` are looked for, and when both exist the
  subset must be named (a ValueError says so). One reader reads one subset: S4 and MS3 share split names, so mixing
  them would make ``train`` ambiguous.
- **CSV columns.** The official loaders select rows with ``df["split"] == split`` (both subsets) and S4 preprocessing
  selects ``df["category"] == item``, so a header row with ``split`` (and, for S4, ``category``) is required. The
  clip name is read from a ``name`` column when the header has one, else from the first column, as the official
  loaders do (``df_one_video[0]``); a missing S4 ``category`` header falls back to the third column
  (``df_one_video[2]``). The S4 start-time column (second) is not used and its header name is not relied on. MS3 has
  no category; a ``category`` column, if present, is passed on. Blank lines are skipped; a row repeating an earlier
  ``(split, name)`` is dropped with a :class:`~avseg.errors.DatasetWarning` giving the count.
- **S4 training labels.** The official S4 loader reads ``mask_num = 1 if split == "train" else 5`` masks: training
  clips label only their first frame. avseg follows the split name: ``train`` clips reference ``{name}_1.png`` only
  and ``label_valid`` is ``[1, 0, 0, 0, 0]``; every other split references all five. MS3 labels all five frames in
  every split.
- **MS3 frame names** carry the source file's extension, ``{name}.mp4_{k}.png`` (preprocessing names frames after
  ``video_name`` including ``.mp4``), and live outside any split folder; masks do not have the infix.
- **S4 masks** are read as ``avs_s4/dataloader.py::S4Dataset.__getitem__`` reads them:
  ``load_image_in_PIL_to_Tensor(path, mode='1')``, i.e. ``Image.open(path).convert('1')`` followed by
  ``transforms.ToTensor()`` (0/1 floats for a mode ``'1'`` image), which ``avs_s4/test.py`` feeds to
  ``utils/utility.py::mask_iou`` as they are. avseg calls PIL's conversion itself, so the result is the official one
  whatever the storage: 0/255 masks give their foreground exactly, while grey pixels (anti-aliased or resized PNGs)
  go through PIL's default Floyd-Steinberg dithering rather than a ``> 0`` test (a grey pixel becomes foreground or
  not depending on the error diffused from its neighbours), and palette or RGB masks are first reduced to their
  luminance. A mask whose brightest pixel is below 255 (0/1 storage, a dark palette colour) is dithered as a whole,
  so its official reading is a speckle or nothing: the reader emits one :class:`~avseg.errors.DatasetWarning` naming
  the first such file.
- **MS3 masks** are read as ``avs_ms3/dataloader.py::MS3Dataset.__getitem__`` reads them:
  ``Image.open(path).convert('P')`` followed by ``transforms.ToTensor()``, which divides the palette index of a
  ``'P'`` image by 255, and ``avs_ms3/test.py`` scores these values with ``utils/utility.py::mask_iou``
  (``pred * target``, ``max(pred, target)``). The official metric therefore sees a binary target only when the
  stored indices are 0 and 255: a grey 0/255 PNG keeps its values through ``convert('P')``, and a mode ``'1'`` PNG
  becomes 0/255. Any other storage (0/1 or one palette index per object, grey edges, RGB masks mapped through PIL's
  web palette) gives fractional targets such as 1/255, for which the official IoU is meaningless. avseg reads every
  nonzero index as foreground, which equals the official target for 0/255 storage and is the intended mask
  otherwise, and emits one DatasetWarning naming the first file whose values are not 0/255.
- **Resolution.** The official loaders score masks at the size stored on disk (224x224 after preprocessing), the
  frames' size. avseg decodes each mask at its stored size; ``masks`` is brought to the frames' size and then to
  ``image_size`` (nearest), and with ``native_masks=True`` the decoded masks are returned as they are in
  ``native_masks`` (unlabelled S4 training frames as zeros).
- **Audio.** ``audio_log_mel/*.pkl`` are pickled torch tensors; unpickling runs arbitrary code, so avseg never opens
  them and recomputes the ``(5, 1, 96, 64)`` VGGish log-mel examples from ``audio_wav`` instead. Clips with fewer than
  five complete 0.96 s examples repeat the last example, as ``preprocess_s4.py::extract_one_log_mel`` does
  (``pad_mode="repeat_last"``); the waveform itself is padded with silence.
- **Frames.** Five frames per clip at one frame per second (preprocessing keeps the last frame of each second and
  resizes to 224x224). ``frame_names`` are ``{name}_{k}`` for both subsets, the names the official test scripts give
  saved predictions.
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from avseg.data.base import (
    BenchmarkReader,
    CheckReport,
    ClipRecord,
    ImageSize,
    _MissingPath,
    load_audio_features,
    load_frames,
    resize_frames,
    resize_masks,
    sample_from_record,
    stack_native_masks,
)
from avseg.data.types import AVSSample
from avseg.errors import DatasetWarning, MetadataError, MissingFileError
from avseg.media.image import _open as open_image

__all__ = ["AVSObjectReader", "Subset", "read_ms3_mask", "read_s4_mask"]

Subset = Literal["s4", "ms3"]

NUM_FRAMES = 5
"""Frames (and audio seconds) per AVSBench-object clip."""

_SPLIT_ORDER = ("train", "val", "test")


@dataclass(frozen=True)
class _Layout:
    folder: str
    csv_name: str
    data_dir: str
    title: str


_LAYOUTS: dict[str, _Layout] = {
    "s4": _Layout("Single-source", "s4_meta_data.csv", "s4_data", "S4"),
    "ms3": _Layout("Multi-sources", "ms3_meta_data.csv", "ms3_data", "MS3"),
}


@dataclass(frozen=True)
class _Row:
    line: int
    name: str
    split: str
    category: str | None


def _is_subset_folder(path: Path, layout: _Layout) -> bool:
    return (path / layout.csv_name).is_file() or (path / layout.data_dir).is_dir()


def read_s4_mask(path: Path) -> tuple[np.ndarray, bool]:
    """Read an S4 mask as the official loader does: PIL's mode ``'1'`` conversion (see the module docstring).

    Returns:
        ``uint8`` ``(H, W)`` 0/1 mask, and whether the stored mask has foreground but no pixel at full brightness
        (255), which PIL's dithering turns into a speckle.

    Raises:
        MissingFileError, CorruptMediaError: the file is missing or cannot be decoded.
    """
    image = open_image(path, "mask")
    luminance = np.asarray(image.convert("L"))
    brightest = int(luminance.max()) if luminance.size else 0
    return np.asarray(image.convert("1"), dtype=np.uint8), 0 < brightest < 255


def read_ms3_mask(path: Path) -> tuple[np.ndarray, bool]:
    """Read an MS3 mask through PIL's mode ``'P'`` conversion, as the official loader does (module docstring).

    Returns:
        ``uint8`` ``(H, W)`` 0/1 mask (every nonzero index is foreground), and whether any index is neither 0 nor
        255, i.e. whether the official ``ToTensor`` would give fractional targets.

    Raises:
        MissingFileError, CorruptMediaError: the file is missing or cannot be decoded.
    """
    indices = np.asarray(open_image(path, "mask").convert("P"))
    fractional = bool(((indices != 0) & (indices != 255)).any())
    return (indices > 0).astype(np.uint8), fractional


class AVSObjectReader(BenchmarkReader):
    """Reader of AVSBench-object v1, S4 or MS3 (layout and quirks in the module docstring).

    Args:
        root: the ``avsbench_data`` folder, or its ``Single-source`` / ``Multi-sources`` folder.
        image_size: resize frames (bilinear) and masks (nearest) to this size; None keeps the stored size.
        subset: ``"s4"`` or ``"ms3"``; None picks the only subset present under ``root``.
        native_masks: also return the masks at their stored size, read by the official rule, as
            ``native_masks`` ``(5, H0, W0)``.
    """

    format = "avs-object"
    item_name = "clips"

    def __init__(
        self,
        root: str | Path,
        *,
        image_size: ImageSize = None,
        subset: Subset | None = None,
        native_masks: bool = False,
    ) -> None:
        super().__init__(root, image_size=image_size, native_masks=native_masks)
        if subset is not None and subset not in _LAYOUTS:
            raise ValueError(f"subset must be 's4', 'ms3' or None, got {subset!r}")
        self.subset: Subset = self._resolve_subset(subset)
        self.layout = _LAYOUTS[self.subset]
        self.subset_root = self.root if _is_subset_folder(self.root, self.layout) else self.root / self.layout.folder
        self.csv_path = self.subset_root / self.layout.csv_name
        self.data_root = self.subset_root / self.layout.data_dir
        self._rows: dict[str, list[_Row]] | None = None
        self._warned_storage = False

    def _resolve_subset(self, subset: Subset | None) -> Subset:
        present = [
            key
            for key, layout in _LAYOUTS.items()
            if _is_subset_folder(self.root, layout) or (self.root / layout.folder).is_dir()
        ]
        if subset is not None:
            if subset not in present:
                layout = _LAYOUTS[subset]
                raise MissingFileError(
                    self.root / layout.folder, f"AVSBench-object {layout.title} folder (holding {layout.csv_name})"
                )
            return subset
        if not present:
            raise _MissingPath(
                self.root,
                f"{self.root}: is not an AVSBench-object folder: it holds neither Single-source/ (S4) nor "
                "Multi-sources/ (MS3), nor s4_meta_data.csv or ms3_meta_data.csv",
            )
        if len(present) > 1:
            raise ValueError(
                f"{self.root} holds both AVSBench-object subsets (Single-source/ and Multi-sources/); "
                "pass subset='s4' or subset='ms3'"
            )
        return present[0]  # type: ignore[return-value]

    # ----------------------------------------------------------------------------------------------- metadata

    def metadata_source(self) -> str:
        """The subset's metadata CSV (``s4_meta_data.csv`` or ``ms3_meta_data.csv``)."""
        return str(self.csv_path)

    def _why_empty(self) -> str:
        # Every data row becomes a record, so a CSV that yields none has a header and nothing else.
        return "the file has a header but no rows"

    def _parse_csv(self) -> dict[str, list[_Row]]:
        if self._rows is not None:
            return self._rows
        path = self.csv_path
        if path.is_dir():
            raise MetadataError(path, "is a folder, not a metadata CSV file")
        if not path.is_file():
            raise MissingFileError(path, f"AVSBench-object {self.layout.title} metadata CSV")
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:
                lines = list(csv.reader(f))
        except (UnicodeDecodeError, csv.Error) as err:
            raise MetadataError(path, f"cannot parse CSV: {err}") from None
        # Row numbers are 1-based file lines (the header is row 1); quoted multi-line fields do not occur here.
        numbered = [(i + 1, [v.strip() for v in row]) for i, row in enumerate(lines) if any(v.strip() for v in row)]
        if not numbered:
            raise MetadataError(path, "empty file (expected a header row with a 'split' column)")
        header_line, header = numbered[0]
        columns = [h.lower() for h in header]
        if "split" not in columns:
            raise MetadataError(path, f"row {header_line}: header {header} has no 'split' column")
        split_col = columns.index("split")
        name_col = columns.index("name") if "name" in columns else 0
        if "category" in columns:
            category_col: int | None = columns.index("category")
        elif self.subset == "s4":
            category_col = 2  # official S4 loader: df_one_video[2]
        else:
            category_col = None
        needed = max(c for c in (split_col, name_col, category_col) if c is not None) + 1

        rows: dict[str, list[_Row]] = {}
        seen: set[tuple[str, str]] = set()
        duplicates = 0
        for line, values in numbered[1:]:
            if len(values) < needed:
                raise MetadataError(path, f"row {line}: {len(values)} field(s), expected at least {needed}: {values}")
            name, split = values[name_col], values[split_col]
            category = values[category_col] if category_col is not None else None
            if not name:
                raise MetadataError(path, f"row {line}: empty clip name (column {name_col + 1})")
            if not split:
                raise MetadataError(path, f"row {line}: empty split for clip {name!r}")
            if category_col is not None and self.subset == "s4" and not category:
                raise MetadataError(path, f"row {line}: empty category for clip {name!r}")
            if (split, name) in seen:
                duplicates += 1
                continue
            seen.add((split, name))
            rows.setdefault(split, []).append(_Row(line, name, split, category or None))
        if duplicates:
            warnings.warn(
                f"{path}: dropped {duplicates} row(s) repeating an earlier (split, name); the first one is kept",
                DatasetWarning,
                stacklevel=3,
            )
        known = [s for s in _SPLIT_ORDER if s in rows]
        self._rows = {s: rows[s] for s in known + [s for s in rows if s not in known]}
        return self._rows

    def splits(self) -> list[str]:
        """Split names found in the CSV: ``train``, ``val``, ``test`` first, then any other in order of appearance."""
        return list(self._parse_csv())

    def _record(self, row: _Row) -> ClipRecord:
        data, name, split = self.data_root, row.name, row.split
        steps = range(1, NUM_FRAMES + 1)
        if self.subset == "s4":
            rel = Path(split, row.category or "", name)
            frames = tuple(data / "visual_frames" / rel / f"{name}_{k}.png" for k in steps)
            labelled = 1 if split == "train" else NUM_FRAMES  # official S4 loader: mask_num
            masks = tuple(data / "gt_masks" / rel / f"{name}_{k}.png" if k <= labelled else None for k in steps)
            audio = data / "audio_wav" / split / (row.category or "") / f"{name}.wav"
        else:
            frames = tuple(data / "visual_frames" / name / f"{name}.mp4_{k}.png" for k in steps)
            masks = tuple(data / "gt_masks" / split / name / f"{name}_{k}.png" for k in steps)
            audio = data / "audio_wav" / split / f"{name}.wav"
        extra = {"subset": self.subset, "csv_row": row.line}
        if row.category is not None:
            extra["category"] = row.category
        return ClipRecord(
            dataset=self.format,
            split=split,
            video_id=name,
            frame_paths=frames,
            mask_refs=masks,
            audio_path=audio,
            num_frames=NUM_FRAMES,
            extra=extra,
        )

    def index(self, split: str) -> list[ClipRecord]:
        """Records of one split, in CSV order."""
        rows = self._parse_csv()
        if split not in rows:
            raise self._unknown_split(split)
        return [self._record(row) for row in rows[split]]

    # ----------------------------------------------------------------------------------------------- decoding

    def _read_mask(self, path: Path) -> np.ndarray:
        """One mask by the subset's official rule, warning once per reader about storage that rule misreads."""
        if self.subset == "s4":
            mask, odd = read_s4_mask(path)
            why = (
                "its brightest pixel is below 255, so PIL's mode '1' conversion (the official S4 reading, applied "
                "here too) dithers the whole object into a speckle or nothing; S4 masks are expected as 0/255"
            )
        else:
            mask, odd = read_ms3_mask(path)
            why = (
                "its palette indices are not only 0 and 255, so the official MS3 loader (convert('P'), ToTensor) "
                "would feed fractional targets (index / 255) to the metric; avseg reads every nonzero index as "
                "foreground"
            )
        if odd and not self._warned_storage:
            self._warned_storage = True
            warnings.warn(f"{path}: {why} (further masks like it are not reported)", DatasetWarning, stacklevel=3)
        return mask

    def load(self, record: ClipRecord) -> AVSSample:
        """Decode one clip: 5 frames, binary masks (unlabelled frames are zeros), 16 kHz audio and log-mel examples."""
        frames = load_frames(record.frame_paths)  # (5, 3, H, W)
        orig_size = (int(frames.shape[-2]), int(frames.shape[-1]))
        decoded = [None if ref is None else self._read_mask(ref) for ref in record.mask_refs]
        # (5, H0, W0) at the stored size; unlabelled frames are zeros
        native = stack_native_masks(decoded, record.num_frames, default_size=orig_size, sources=record.mask_refs)
        frames = resize_frames(frames, self.image_size)
        masks = resize_masks(resize_masks(native, orig_size), self.image_size)
        wave, examples, has_audio = load_audio_features(record.audio_path, record.num_frames, pad_mode="repeat_last")
        meta = {"subset": record.extra["subset"]}
        if "category" in record.extra:
            meta["category"] = record.extra["category"]
        return sample_from_record(
            record,
            frames=frames,
            masks=masks,
            frame_valid=torch.ones(record.num_frames, dtype=torch.bool),
            label_valid=torch.tensor(record.labelled, dtype=torch.bool),
            audio_wave=wave,
            audio_examples=examples,
            has_audio=has_audio,
            frame_names=tuple(f"{record.video_id}_{k}" for k in range(1, record.num_frames + 1)),
            orig_size=orig_size,
            native_masks=native if self.native_masks else None,
            meta=meta,
        )

    def check(self, *, deep: bool = False, progress: Callable[[Iterable], Iterable] | None = None) -> CheckReport:
        """The generic check, plus a note on the S4 training labels (only the first frame of each clip)."""
        report = super().check(deep=deep, progress=progress)
        report.notes.append(f"subset {self.layout.title} read from {self.subset_root}")
        if self.subset == "s4" and "train" in report.splits:
            report.notes.append("S4 train clips label only their first frame ({name}_1.png), as the official loader")
        return report
