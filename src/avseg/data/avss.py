"""Reader for AVSBench-semantic (AVSS): subsets v1s, v1m and v2, with 71-class colour masks.

The subset names are not the AVSBench-object names, which users confuse (GAVS#2): **v1s** holds the S4
("Single-source") clips, **v1m** the MS3 ("Multi-sources") clips, and **v2** the newly collected 10-s clips; in this
layout all three carry *semantic* labels (71 classes: 70 sounding-object categories + background). AuralSAM2 uses this
tree for its S4 (= v1s), MS3 (= v1m) and v2 settings.

On-disk layout (``OpenNLPLab/AVSBench``, ``avs_scripts/avss/{config,color_dataloader}.py``; the same loader is in
``vvvb-github/AVSegFormer``, ``dataloader/v2_dataset.py``)::

    AVSBench-semantic/
    ├── metadata.csv                         # columns used: uid, label (v1s|v1m|v2), split (train|val|test)
    ├── label2idx.json                       # 71 entries, class name -> index (public copy: "background": 1)
    └── {label}/{uid}/
        ├── frames/{0..N-1}.jpg              # N = 5 for v1s/v1m, 10 for v2
        ├── audio.wav                        # sample rate not documented; avseg resamples to 16 kHz
        └── labels_rgb/{i}.png               # colour masks; v1s train has only 0.png

Quirks and the rules avseg applies:

- **Colour masks.** Labels are stored as RGB colours from the PASCAL-VOC bit-shift palette over 71 indices
  (``color_dataloader.py::get_v2_pallete``, the same in AVSegFormer ``dataloader/v2_dataset.py``): index ``j``'s
  bits 0, 1, 2 go to the top bit of R, G, B, bits 3, 4, 5 to the next bit, and so on, so 0 = black,
  1 = (128, 0, 0), 2 = (0, 128, 0), 3 = (128, 128, 0), 4 = (0, 0, 128). The official loader opens each mask with
  ``Image.open(path).convert('RGB')`` (``load_color_mask_in_PIL_to_Tensor``) and decodes pixels by exact colour
  match (``color_mask_to_label``), so the label of a pixel is the palette position of its colour: black is label 0
  (background). AVSBench takes the argmax of the per-class match maps, so a colour that matches no palette entry
  silently becomes 0 (background). avseg does the same but counts such pixels and emits one
  :class:`~avseg.errors.DatasetWarning` per file that has any, because JPEG-compressed or bilinearly resized masks
  would otherwise lose their labels without a word.
- **Padding to T = 10.** Every clip is padded to ``num_frames`` (10) with zero frames and zero labels, as the
  official loader does. ``frame_valid`` (the official ``vid_temporal_mask_flag``) marks the real frames: v1s/v1m the
  first 5, v2 all 10. Audio examples of padded frames are zero (``pad_mode="zero"``, ``valid_frames=N``), as AVSS
  multiplies audio features by that flag.
- **Supervised frames.** ``label_valid`` marks frames with a ground-truth mask file: v1s train only frame 0 (only
  ``0.png`` exists), v1s val/test the 5 real frames, v1m the 5 real frames, v2 all 10. The official
  ``gt_temporal_mask_flag`` is ``[1, 0, ..., 0]`` for v1s in *every* split, but it only weights the training loss;
  at val/test the official loader reads the 5 v1s masks (it asserts there are 5) and the official metric scores every
  frame, padded ones included, without looking at the flag. avseg's flag therefore says which frames have ground
  truth, and the metric decides which frames to score.
- **Frame and mask counts** come from the subset (5 or 10 frames; 1 mask for v1s train), not from listing the
  folders as the official loader does, so a missing file is reported by ``check()`` and named by ``load()``
  instead of silently shortening the clip.
- **Resolution.** Frames and masks are read at the size on disk; a mask whose size differs from its frames is
  brought to the frame grid (nearest). ``image_size`` resizes both (bilinear frames, nearest labels). The official
  loader centre-crops 224 for training and, for val/test, resizes the colour mask to 224x224 with PIL ``NEAREST``
  before decoding it (``resize_img``), so scores are computed at 224x224; that is a transform choice, not done
  here. With ``native_masks=True`` the label maps at their stored size are returned as ``native_masks``
  (``(10, H0, W0)``, zeros on unlabelled and padded frames); PIL ``NEAREST`` picks the same source pixels on a label
  map as on the colour mask, so resizing these labels with it gives the official 224x224 targets (torch's
  ``nearest-exact`` agrees with PIL at most sizes, its ``nearest`` does not).
- **Duplicate rows** (same label and uid within a split) are kept once, with one DatasetWarning giving the count.
- ``label2idx.json`` is only needed for class names (:meth:`AVSSReader.class_names`); labels never depend on it.
  The official code reads it twice: ``get_v2_pallete`` only asserts that it has 71 entries (one per palette
  colour), and ``V2Dataset.classes`` returns its keys in file order. The AVSBench repositories do not ship the file;
  the public copy in ``YenanLiu/DDESeg`` (an AVSS method; 70 classes in alphabetical order after background)
  numbers the classes from 1: ``"background": 1``,
  ``"accordion": 2``, ..., ``"woman": 71``, in file order; since background pixels are black (palette position 0),
  a file value ``v`` is label ``v - 1``. avseg accepts files numbered 0..70 or 1..71 and orders the names by value.
  Consequence for the official metric (``avss/test.py``): ``miou_noBg = mean(miou_pc[:-1])`` drops label 70 (the last
  class, ``"woman"`` in that copy), not background (label 0), so "noBg" scores still include background.
  ``check()`` reports the file when it is missing or does not hold 71 entries numbered 0..70 or 1..71.

Splits are returned in the order train, val, test, then any others alphabetically.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch

from avseg.data.base import (
    CheckReport,
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
from avseg.data.benchmarks import AVSS_NUM_CLASSES
from avseg.data.types import AVSSample
from avseg.errors import DatasetWarning, MetadataError, MissingFileError, ShapeError
from avseg.media.image import read_rgb

__all__ = [
    "AVSS_NUM_CLASSES",
    "AVSS_SUBSETS",
    "AVSSReader",
    "avss_palette",
    "color_mask_to_label",
    "label_to_color",
    "read_color_mask",
]

AVSS_SUBSETS = ("v1s", "v1m", "v2")
AVSS_SPLIT_ORDER = ("train", "val", "test")
Subset = Literal["v1s", "v1m", "v2"]
_SUBSET_FRAMES = {"v1s": 5, "v1m": 5, "v2": 10}


# ---------------------------------------------------------------------- palette


def avss_palette(num_classes: int = AVSS_NUM_CLASSES) -> np.ndarray:
    """The AVSBench unified colour palette (PASCAL-VOC bit-shift construction, AVSBench ``get_v2_pallete``).

    Bits 0, 1, 2 of index ``j`` set bit 7 of R, G, B; bits 3, 4, 5 set bit 6; and so on.

    Args:
        num_classes: number of palette entries (71 for AVSBench-semantic, background included).

    Returns:
        ``uint8`` ``(num_classes, 3)`` RGB colours; row 0 is black (background).
    """
    if not 1 <= num_classes <= 256:
        raise ValueError(f"num_classes must be in 1..256 (labels are uint8), got {num_classes}")
    palette = np.zeros((num_classes, 3), dtype=np.uint8)
    for j in range(num_classes):
        lab, shift = j, 7
        while lab > 0:
            for channel in range(3):
                palette[j, channel] |= ((lab >> channel) & 1) << shift
            lab >>= 3
            shift -= 1
    return palette


def _rgb_keys(rgb: np.ndarray) -> np.ndarray:
    """Pack ``(..., 3)`` uint8 colours into int32 keys ``R << 16 | G << 8 | B``."""
    rgb = rgb.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _match_colours(rgb: np.ndarray, palette: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels for each pixel and a boolean map of the pixels whose colour is not in the palette."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ShapeError(f"color mask must be uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
    palette = np.asarray(palette, dtype=np.uint8)
    pal_keys = _rgb_keys(palette)
    # A stable sort keeps the lowest index first among equal colours, as AVSBench's argmax over matches does.
    order = np.argsort(pal_keys, kind="stable")
    sorted_keys = pal_keys[order]
    keys = _rgb_keys(rgb)
    pos = np.searchsorted(sorted_keys, keys).clip(max=len(sorted_keys) - 1)
    found = sorted_keys[pos] == keys
    labels = np.where(found, order[pos], 0).astype(np.uint8)
    return labels, ~found


def color_mask_to_label(rgb: np.ndarray, palette: np.ndarray | None = None) -> np.ndarray:
    """Decode an RGB colour mask to class indices by exact colour match (AVSBench ``color_mask_to_label``).

    A colour that is in no palette entry becomes 0 (background), exactly as AVSBench's argmax over all-False match
    maps does. Use :func:`read_color_mask` to be warned about such pixels when reading a file.

    Args:
        rgb: ``uint8`` ``(H, W, 3)`` colour mask.
        palette: ``(K, 3)`` colours (default: :func:`avss_palette` with 71 entries).

    Returns:
        ``uint8`` ``(H, W)`` class indices in ``0..K-1``.
    """
    labels, _ = _match_colours(rgb, avss_palette() if palette is None else palette)
    return labels


def label_to_color(labels: np.ndarray, palette: np.ndarray | None = None) -> np.ndarray:
    """Encode class indices as palette colours (the inverse of :func:`color_mask_to_label`).

    Args:
        labels: integer ``(H, W)`` (or any shape) class indices.
        palette: ``(K, 3)`` colours (default: :func:`avss_palette` with 71 entries).

    Returns:
        ``uint8`` ``(*labels.shape, 3)`` RGB.
    """
    palette = avss_palette() if palette is None else np.asarray(palette, dtype=np.uint8)
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ShapeError(f"labels must be an integer array, got {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= len(palette)):
        bad = labels[(labels < 0) | (labels >= len(palette))].flat[0]
        raise ValueError(f"label {int(bad)} is outside the palette's 0..{len(palette) - 1}")
    return palette[labels]


def read_color_mask(path: Path, palette: np.ndarray | None = None) -> np.ndarray:
    """Read a colour-mask file to ``uint8`` ``(H, W)`` class indices, warning about colours outside the palette.

    Args:
        path: PNG colour mask (any mode Pillow converts to RGB).
        palette: ``(K, 3)`` colours (default: the 71-entry AVSS palette).

    Raises:
        MissingFileError, CorruptMediaError: the file is missing or cannot be decoded.
    """
    rgb = read_rgb(path)
    labels, unknown = _match_colours(rgb, avss_palette() if palette is None else palette)
    count = int(unknown.sum())
    if count:
        y, x = np.argwhere(unknown)[0]
        example = tuple(int(v) for v in rgb[y, x])
        warnings.warn(
            f"{path}: {count} pixel(s) have colours outside the AVSS palette (e.g. {example} at y={y}, x={x}); "
            "they were read as background (0), as AVSBench does. JPEG-compressed or resized colour masks cause this",
            DatasetWarning,
            stacklevel=2,
        )
    return labels


# ---------------------------------------------------------------------- reader


def _split_order(names: set[str]) -> list[str]:
    known = [s for s in AVSS_SPLIT_ORDER if s in names]
    return known + sorted(names - set(known))


class AVSSReader(MetadataCSVReader):
    """AVSBench-semantic: one record per clip, padded to 10 frames, 71-class masks; see the module docstring.

    Args:
        root: the AVSBench-semantic folder holding ``metadata.csv``, ``label2idx.json`` and ``v1s/ v1m/ v2/``.
        image_size: resize frames (bilinear) and label maps (nearest) to this size; None keeps the size on disk.
        subsets: which label subsets to index: ``v1s`` (≈ AVSBench-object S4 clips), ``v1m`` (≈ MS3 clips), ``v2``.
        num_frames: length every clip is padded to (10 in AVSBench; at least the longest selected subset).
        native_masks: also return the label maps at their stored size as ``native_masks`` ``(T, H0, W0)``.
    """

    format: ClassVar[str] = "avss"
    item_name: ClassVar[str] = "clips"
    required_columns = ("uid", "label", "split")

    def __init__(
        self,
        root: str | Path,
        *,
        image_size: ImageSize = None,
        subsets: Sequence[Subset] = AVSS_SUBSETS,
        num_frames: int = 10,
        native_masks: bool = False,
    ) -> None:
        super().__init__(root, image_size=image_size, native_masks=native_masks)
        if isinstance(subsets, str):
            subsets = (subsets,)  # type: ignore[assignment]
        bad = [s for s in subsets if s not in AVSS_SUBSETS]
        if bad or not subsets:
            raise ValueError(f"subsets must be a non-empty selection of {AVSS_SUBSETS}, got {tuple(subsets)!r}")
        self.subsets = tuple(s for s in AVSS_SUBSETS if s in subsets)
        longest = max(_SUBSET_FRAMES[s] for s in self.subsets)
        if num_frames < longest:
            raise ValueError(f"num_frames={num_frames} is shorter than the {longest}-frame clips of {self.subsets}")
        self.num_frames = int(num_frames)
        self.label2idx_path = self.root / "label2idx.json"
        self.palette = avss_palette(AVSS_NUM_CLASSES)

    # ------------------------------------------------------------------ index

    def _why_rows_yield_nothing(self, rows: list[tuple[int, dict[str, str]]]) -> str:
        return f"none of its {len(rows)} row(s) has a label in the selected subsets {list(self.subsets)}"

    def _parse(self) -> dict[str, list[ClipRecord]]:
        """Parse ``metadata.csv`` once (every row is validated, then filtered by ``subsets``)."""
        if self._records is not None:
            return self._records
        path = self.metadata_path
        by_split: dict[str, list[ClipRecord]] = {}
        seen: set[tuple[str, str, str]] = set()
        duplicates: Counter[str] = Counter()
        for number, row in self.metadata_rows():
            uid, label, split = row["uid"].strip(), row["label"].strip(), row["split"].strip()
            if not uid:
                raise MetadataError(path, f"row {number}: empty uid")
            if not split:
                raise MetadataError(path, f"row {number}: empty split")
            if label not in AVSS_SUBSETS:
                raise MetadataError(path, f"row {number}: label {label!r} is not one of {AVSS_SUBSETS}")
            if label not in self.subsets:
                continue
            if (split, label, uid) in seen:
                duplicates[split] += 1
                continue
            seen.add((split, label, uid))
            by_split.setdefault(split, []).append(self._record(split, label, uid, number))
        if duplicates:
            detail = ", ".join(f"{s}: {n}" for s, n in duplicates.items())
            warnings.warn(
                f"{path}: dropped {sum(duplicates.values())} row(s) repeating the label and uid of an earlier row "
                f"of the same split ({detail})",
                DatasetWarning,
                stacklevel=3,
            )
        self._records = {s: by_split[s] for s in _split_order(set(by_split))}
        return self._records

    def _record(self, split: str, label: str, uid: str, number: int) -> ClipRecord:
        clip = self.root / label / uid
        real = _SUBSET_FRAMES[label]
        frame_paths = tuple(clip / "frames" / f"{i}.jpg" for i in range(real))
        masks = [clip / "labels_rgb" / f"{i}.png" for i in range(real)]
        if label == "v1s" and split == "train":
            # AVSBench-object S4 training clips are annotated on their first frame only.
            mask_refs: tuple[Path | None, ...] = (masks[0],) + (None,) * (real - 1)
        else:
            mask_refs = tuple(masks)
        return ClipRecord(
            dataset=self.format,
            split=split,
            video_id=uid,
            frame_paths=frame_paths,
            mask_refs=mask_refs,
            audio_path=clip / "audio.wav",
            num_frames=self.num_frames,
            extra={"label": label, "row": number},
        )

    def class_names(self) -> list[str]:
        """Class names by label (``names[0]`` is background) from ``label2idx.json``.

        The file maps the 71 names to distinct integers numbered either 0..70 or 1..71 (public copies use 1..71, with
        ``"background": 1``); a name's label is its value minus the first value (see the module docstring).

        Raises:
            MissingFileError: the file is missing.
            MetadataError: it is not a JSON object mapping 71 names to the distinct integers 0..70 or 1..71.
        """
        path = self.label2idx_path
        if not path.is_file():
            raise MissingFileError(path, "AVSS label2idx.json")
        try:
            mapping = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise MetadataError(path, f"not valid JSON: {err}") from err
        if not isinstance(mapping, dict):
            raise MetadataError(path, f"expected an object of name -> index, got {type(mapping).__name__}")
        for name, idx in mapping.items():
            if not isinstance(idx, int) or isinstance(idx, bool):
                raise MetadataError(path, f"key {name!r}: index {idx!r} is not an integer")
        indices = sorted(mapping.values())
        first = indices[0] if indices else 0
        if first not in (0, 1) or indices != list(range(first, first + AVSS_NUM_CLASSES)):
            span = f"{indices[0]}..{indices[-1]}" if indices else "none"
            raise MetadataError(
                path,
                f"expected {AVSS_NUM_CLASSES} distinct indices 0..{AVSS_NUM_CLASSES - 1} or 1..{AVSS_NUM_CLASSES}, "
                f"got {len(mapping)} entries ({len(set(indices))} distinct, range {span})",
            )
        return [name for name, _ in sorted(mapping.items(), key=lambda kv: kv[1])]

    def check(self, *, deep: bool = False, progress: Callable[[Iterable], Iterable] | None = None) -> CheckReport:
        """The generic file check, plus ``label2idx.json`` (missing, or not 71 distinct indices).

        With ``deep``, every colour mask is also decoded and masks with colours outside the palette (which would be
        read as background) are listed in ``report.notes`` with their pixel counts.
        """
        report = super().check(deep=deep, progress=progress)
        if deep:
            unreadable = {p for p, _ in report.unreadable}
            for split in report.splits:
                for record in self.index(split):
                    for ref in record.mask_refs:
                        if ref is None or ref in unreadable or not ref.is_file():
                            continue
                        _, unknown = _match_colours(read_rgb(ref), self.palette)
                        if unknown.any():
                            report.notes.append(
                                f"{ref}: {int(unknown.sum())} pixel(s) have colours outside the AVSS palette "
                                "(read as background)"
                            )
        try:
            self.class_names()
        except MissingFileError:
            report.missing.append((self.label2idx_path, "label2idx"))
        except MetadataError as err:
            report.unreadable.append((self.label2idx_path, err.reason))
        return report

    # ------------------------------------------------------------------ decoding

    def load(self, record: ClipRecord) -> AVSSample:
        """Decode one clip, padded to ``num_frames``.

        Returns:
            A sample with ``T = num_frames``: ``frames`` ``uint8`` ``(T, 3, H, W)`` (zeros after the ``N`` real
            frames), ``masks`` ``uint8`` ``(T, H, W)`` class indices 0..70 (zeros where unlabelled or padded),
            ``frame_valid`` True on the ``N`` real frames, ``label_valid`` True on frames with a mask file,
            ``audio_examples`` ``(T, 1, 96, 64)`` (zeros after ``N``), ``meta["label"]`` the subset. ``frame_names``
            names the ``N`` real frames only.

        Raises:
            MissingFileError, CorruptMediaError: a frame, mask or the audio file is missing or unreadable (named).
        """
        t = record.num_frames
        real = len(record.frame_paths)
        frames = load_frames(record.frame_paths)  # (N, 3, H, W)
        h, w = int(frames.shape[-2]), int(frames.shape[-1])
        labels = [None if ref is None else read_color_mask(ref, self.palette) for ref in record.mask_refs]
        native = stack_native_masks(labels, t, default_size=(h, w), sources=record.mask_refs)  # (T, H0, W0)
        frames = torch.cat([frames, frames.new_zeros((t - real, 3, h, w))])  # (T, 3, H, W), zero padding
        frames = resize_frames(frames, self.image_size)
        masks = resize_masks(resize_masks(native, (h, w)), self.image_size)
        frame_valid = torch.arange(t) < real
        label_valid = torch.zeros(t, dtype=torch.bool)
        label_valid[: len(record.mask_refs)] = torch.tensor([ref is not None for ref in record.mask_refs])
        wave, examples, has_audio = load_audio_features(record.audio_path, t, pad_mode="zero", valid_frames=real)
        return sample_from_record(
            record,
            frames=frames,
            masks=masks,
            frame_valid=frame_valid,
            label_valid=label_valid,
            audio_wave=wave,
            audio_examples=examples,
            has_audio=has_audio,
            frame_names=tuple(p.stem for p in record.frame_paths),
            orig_size=(h, w),
            native_masks=native if self.native_masks else None,
            meta=dict(record.extra),
        )
