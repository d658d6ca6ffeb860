"""Referring video object segmentation (MeViS, ReVOS, Ref-YouTube-VOS, Ref-DAVIS17): one sample per expression, its
masks read from Sa2VA's ``mask_dict.json`` (COCO RLE) or from palette annotation PNGs.

Provenance: ``magic-research/Sa2VA`` ``projects/llava_sam2/datasets/ReVOS_Dataset.py::json_file_preprocess`` and
``decode_mask``, ``MeVIS_Dataset.py``, ``RefYoutubeVOS_Dataset.py`` (MeViS and ReVOS files as released by their
authors); ``wjn922/ReferFormer`` ``datasets/ytvos.py::YTVOSDataset`` (Ref-YouTube-VOS: ``sorted(frames)``, the mask
of an expression is ``Annotations/{vid}/{frame}.png == int(obj_id)``) and ``tools/data/convert_davis_to_ytvos.py``
(Ref-DAVIS17, below).

Two layouts are read, told apart by where the expression files are; a split may not appear in both::

    Sa2VA / MeViS layout                          original Ref-YouTube-VOS layout (also Ref-DAVIS17, converted)
    root/                                         root/
      {split}/meta_expressions.json                 meta_expressions/{split}/meta_expressions.json
      {split}/mask_dict.json       (optional)       {split}/Annotations/{vid}/{frame}.png   (optional)
      {split}/mask_dict_foreground.json (optional, ReVOS)
      {split}/JPEGImages/{vid}/{frame}.jpg          {split}/JPEGImages/{vid}/{frame}.jpg

``meta_expressions.json`` is ``{"videos": {vid: {"frames": [frame_id, ...], "expressions": {exp_id: {"exp": str,
"anno_id": [int, ...] (optional), "obj_id": [int, ...] | int | str, "type_id": int (ReVOS, optional)}}}}}``. The
split's ground truth is, in this order: ``{split}/mask_dict.json`` (``{str(anno_id): [RLE | null, ...]}``, one entry
per frame; an RLE is a COCO dict ``{"size": [H, W], "counts": str}`` decoded by :mod:`avseg.data.rle`), else the
palette PNGs of ``{split}/Annotations/`` (pixel value = object id, as in :mod:`avseg.data.palette`), else none. Either
ground truth may sit in either layout (``{split}/Annotations`` beside a ``{split}/meta_expressions.json`` works too).

- **MeViS** ships the Sa2VA layout as is (``train``, ``valid_u``, ``valid``). For **ReVOS** (one
  ``meta_expressions_{train,valid}_.json``, one ``mask_dict.json`` and one ``mask_dict_foreground.json`` beside a
  shared ``JPEGImages``) make one folder per split with links to those files under the names above; ``vid`` may
  contain slashes (ReVOS ``UVO/all/...``), which become sub-folders of ``JPEGImages``. ``mask_dict_foreground.json``
  (``{vid: {"masks_rle": [RLE | [RLE, ...] | null, ...]}}``, one entry per frame of the video, in the same
  sorted frame order as ``mask_dict.json``) holds the video's annotated objects, which ReVOS's robustness R needs
  (:mod:`avseg.metrics.revos`): when the file is present, each sample carries its video's foreground on the kept
  frames as ``meta["foreground"]``, ``uint8`` ``(T, H0, W0)`` on the grid of ``native_masks``, the number of objects
  covering each pixel (the decoded RLEs of a frame summed, as VISA's ``eval_revos.py`` does; a ``null`` entry gives
  zeros). A foreground stored at another size than the expression's ground truth is brought to it (nearest) with a
  :class:`~avseg.errors.DatasetWarning`. ``avseg eval`` then adds ReVOS's A, R and summary
  (:func:`avseg.evaluate.evaluate_split`).
- **Ref-YouTube-VOS** is read in its original layout (``meta_expressions/{train,valid,test}/``, ``train/Annotations``;
  ``valid`` has no public annotations and loads unlabelled). ``obj_id`` is a string palette index (``"1"``).
- **Ref-DAVIS17**, as ReferFormer's ``tools/data/convert_davis_to_ytvos.py`` converts it (read in ReferFormer
  ``06fc218``; its ``docs/data.md`` tells users to run it), *is* this Ref-YouTube-VOS layout: the script moves
  ``DAVIS/JPEGImages/480p/{vid}`` and ``DAVIS/Annotations_unsupervised/480p/{vid}`` into ``{train,valid}/JPEGImages``
  and ``{train,valid}/Annotations`` (videos from ``ImageSets/2017/{train,val}.txt``) and writes
  ``meta_expressions/{train,valid}/meta_expressions.json`` with string ``obj_id`` from 1, four consecutive exp ids
  per object (annotator 1 first-frame, annotator 1 full-video, annotator 2 first-frame, annotator 2 full-video) and
  the sorted stems of the frame folder as ``frames``. Point avseg at the folder holding ``train/``, ``valid/`` and
  ``meta_expressions/``. The ids are those of DAVIS 2017's **unsupervised** annotations
  (``Annotations_unsupervised``), which the semi-supervised ``Annotations/480p`` do not share. The unconverted DAVIS
  tree (``ImageSets/2017``, ``JPEGImages/480p``) with the text files ``Davis17_annot*.txt`` is not read.

Quirks and the rules avseg applies:

- **Frame order.** Sa2VA sorts each video's frame ids (``sorted(vid_express_data["frames"])``) and indexes every
  ``mask_dict`` list with positions in that sorted list; ReferFormer sorts them too. avseg does the same. A video whose
  JSON lists frames in another order is read sorted, and for ``mask_dict`` splits a
  :class:`~avseg.errors.DatasetWarning` counts such videos.
- **Several objects per expression** (MeViS ``anno_id: [3, 7]``, or a list of ``obj_id`` over palette PNGs): the
  target is the union of their masks, as Sa2VA's ``decode_mask`` ORs the decoded masks of all ``anno_id``.
- **Absent objects are ground truth.** A ``null`` RLE, or an annotation PNG without the object's id, gives an empty
  mask on that frame with ``label_valid`` True: the object is known to be absent.
- **Frames without an annotation PNG** (as in YouTube-VOS's ``all_frames`` download, annotated every 5th frame) have
  ``label_valid`` False. The PNGs must annotate every object on the frame: YouTube-VOS ``valid`` first-appearance
  annotations, which show only the objects that enter on that frame, are not ground truth for an expression.
- **Palette ids.** ``obj_id`` must be an integer 1..254 (a palette index). A video of a split with ``Annotations/``
  but without ``Annotations/{vid}/`` loads with a :class:`~avseg.errors.MissingFileError` naming that folder and the
  expression; an ``obj_id`` that is in none of the video's annotations raises a :class:`~avseg.errors.MetadataError`
  naming ``meta_expressions.json`` and the key. ``check()`` lists both.
- **No ``anno_id``** with a ``mask_dict.json`` (Ref-YouTube-VOS as Sa2VA ships it). Sa2VA keys the masks of such files
  by a running counter over all expressions in file order (``anno_count``) and ships them in a pickle
  (``mask_dict.pkl``), which avseg does not open (unpickling runs arbitrary code) and whose keys depend on dictionary
  order. avseg instead looks the masks up by object: the keys ``"{vid}/{obj_id}"`` of ``mask_dict.json``; or read the
  original layout above, which needs no mask file. An expression that has neither an ``anno_id`` nor such a key raises
  a :class:`~avseg.errors.MetadataError` naming the file and the key when it is loaded, and ``check()`` lists it.
- **Splits without ground truth** (MeViS ``valid``, Ref-YouTube-VOS ``valid``: no ``mask_dict.json`` and no
  ``Annotations/``) load with empty masks and ``label_valid`` all False, without an error; ``check()`` adds a note.
- **Expression types** (ReVOS ``type_id``: 0 referring, 1 reasoning, 2 excluded from the reported means) are returned
  as ``meta["type_id"]`` (None when absent), for :func:`avseg.metrics.revos.revos_scores`.
- **No audio.** RVOS is text-only: ``has_audio`` is False and the audio fields hold silence (no warning).
- **Resolution.** The MeViS and ReVOS evaluation scripts (``eval_queue`` in their ``eval_mevis.py`` /
  ``eval_revos.py``, reused by Sa2VA) decode the ground-truth RLEs of ``mask_dict.json`` with pycocotools at the size
  each RLE records and compare predictions of that size with them (``db_eval_iou``). avseg decodes each
  RLE (or PNG) at its own size; ``masks`` is brought to the frames' size on disk and then to ``image_size``
  (nearest), and with ``native_masks=True`` the union at the RLE (or PNG) size is returned as ``native_masks`` (the
  size of the expression's first mask; frames without ground truth hold zeros; an expression without any mask uses
  the frames' size).
- **Long videos.** ``max_frames`` keeps at most that many frames per video, uniformly spread over the whole video
  (positions ``floor(i * (n - 1) / (k - 1) + 0.5)``, ``i = 0..k-1``, so the first and last frames are kept).
  ``frame_names`` are the kept frame ids, so predictions can be written under the original names.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from avseg.data import rle
from avseg.data.base import (
    BenchmarkReader,
    CheckReport,
    ClipRecord,
    EmptyDatasetError,
    ImageSize,
    load_audio_features,
    load_frames,
    resize_frames,
    resize_masks,
    sample_from_record,
    stack_native_masks,
)
from avseg.data.palette import object_ids, object_index, object_mask
from avseg.data.types import AVSSample
from avseg.errors import AVSegError, DatasetWarning, MetadataError, MissingFileError
from avseg.media.image import read_mask

__all__ = ["GroundTruth", "RVOSReader", "subsample_indices"]

EXPRESSIONS_FILE = "meta_expressions.json"
EXPRESSIONS_DIR = "meta_expressions"
"""The folder of the original Ref-YouTube-VOS layout: ``root/meta_expressions/{split}/meta_expressions.json``."""
MASKS_FILE = "mask_dict.json"
FOREGROUND_FILE = "mask_dict_foreground.json"
"""ReVOS's per-video foreground (all annotated objects of each frame), beside ``mask_dict.json``."""
FRAMES_DIR = "JPEGImages"
ANNOTATIONS_DIR = "Annotations"

GroundTruth = Literal["mask_dict", "annotations"]
"""Where a split's masks are read from: ``{split}/mask_dict.json`` (RLE) or ``{split}/Annotations/`` (palette PNGs)."""

_UNSUPERVISED_HINT = (
    "Ref-DAVIS17 obj_ids are the ids of DAVIS 2017's Annotations_unsupervised, not of the semi-supervised Annotations"
)


class _NoSplitFolders(EmptyDatasetError, MissingFileError):
    """An RVOS root without any expression file: an empty dataset, and (as it always was) a
    :class:`~avseg.errors.MissingFileError`, since the expression files are missing."""


@dataclass(frozen=True)
class _Video:
    """One video of an expression file, as every record of its expressions shares it."""

    vid: str
    frame_ids: list[str]
    """All frame ids, sorted."""
    keep: list[int]
    """Positions (in ``frame_ids``) of the frames a record holds."""
    frame_paths: tuple[Path, ...]
    annotations: Path | None
    """``{split}/Annotations/{vid}`` in a split whose ground truth is palette PNGs, else None."""
    annotated: frozenset[str] | None
    """Stems of the PNGs in ``annotations``; None when that folder is missing."""


def subsample_indices(num_frames: int, max_frames: int | None) -> list[int]:
    """Positions of at most ``max_frames`` frames spread uniformly over ``num_frames`` (first and last kept)."""
    if max_frames is None or num_frames <= max_frames:
        return list(range(num_frames))
    if max_frames == 1:
        return [0]
    step = (num_frames - 1) / (max_frames - 1)
    # floor(x + 0.5) rather than round(): banker's rounding could map two positions one apart to the same frame.
    return [math.floor(i * step + 0.5) for i in range(max_frames)]


def _ids(value: Any, where: str, path: Path) -> list[str]:
    """``anno_id`` / ``obj_id`` values (an int, a string or a list of those) as strings."""
    items = value if isinstance(value, list) else [value]
    out = []
    for v in items:
        if isinstance(v, bool) or not isinstance(v, int | str) or (isinstance(v, str) and not v.strip()):
            raise MetadataError(path, f"{where}: expected an int, a string or a list of those, got {value!r}")
        out.append(str(v).strip())
    return out


def _load_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise MissingFileError(path, what)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise MetadataError(path, f"invalid JSON: {err}") from None
    except UnicodeDecodeError as err:
        raise MetadataError(path, f"not UTF-8 text: {err}") from None


def _check_rle(entry: Any, deep: bool, report: CheckReport, path: Path, where: str) -> None:
    """Record an RLE that does not parse (or, with ``deep``, decode) as unreadable, at ``where`` in ``path``."""
    try:
        if deep:
            rle.decode(entry)
        else:
            rle.parse_counts(entry)
    except ValueError as err:
        report.unreadable.append((path, f"{where}: bad RLE: {err}"))


def _foreground_objects(entry: Any) -> list[Any]:
    """The RLEs of one frame of ``mask_dict_foreground.json``: one (the union of the video's objects, as VISA's
    ``generate_foreground_mask.py`` writes it), a list (one per object), or none (``null``)."""
    if entry is None:
        return []
    return entry if isinstance(entry, list) else [entry]


def _load_json_object(path: Path, what: str, keyed_by: str) -> dict[str, Any]:
    """A JSON file whose top level must be an object (MetadataError naming the file otherwise)."""
    data = _load_json(path, what)
    if not isinstance(data, dict):
        raise MetadataError(path, f"expected a top-level object keyed by {keyed_by}, got {type(data).__name__}")
    return data


def _expression_files(root: Path) -> dict[str, Path]:
    """Split -> expression file, from both layouts (module docstring); a split in both is refused."""
    inside = {p.parent.name: p for p in root.glob(f"*/{EXPRESSIONS_FILE}") if p.is_file()}
    apart = {p.parent.name: p for p in (root / EXPRESSIONS_DIR).glob(f"*/{EXPRESSIONS_FILE}") if p.is_file()}
    both = sorted(inside.keys() & apart.keys())
    if both:
        split = both[0]
        raise MetadataError(
            apart[split], f"split {split!r} also has {inside[split]}; keep one expression file per split"
        )
    return {**inside, **apart}


class RVOSReader(BenchmarkReader):
    """Reader of RVOS benchmarks: the MeViS / Sa2VA JSON layout and the original Ref-YouTube-VOS layout with palette
    annotations (layouts and quirks in the module docstring).

    Args:
        root: folder holding one sub-folder per split (and, for the original layout, ``meta_expressions/``).
        image_size: resize frames (bilinear) and masks (nearest) to this size; None keeps the stored size.
        max_frames: keep at most this many frames per video, uniformly spaced; None keeps every frame.
        native_masks: also return the masks at the size their RLEs (or PNGs) record as ``native_masks``
            ``(T, H0, W0)``.
    """

    format = "rvos"
    item_name = "expressions"

    def __init__(
        self,
        root: str | Path,
        *,
        image_size: ImageSize = None,
        max_frames: int | None = None,
        native_masks: bool = False,
    ) -> None:
        super().__init__(root, image_size=image_size, native_masks=native_masks)
        if max_frames is not None and (isinstance(max_frames, bool) or max_frames < 1):
            raise ValueError(f"max_frames must be a positive int or None, got {max_frames!r}")
        self.max_frames = max_frames
        self._expression_paths = _expression_files(self.root)
        self._splits = sorted(self._expression_paths)
        if not self._splits:
            empty = self.empty_error()
            raise _NoSplitFolders(empty.root, empty.path, str(empty))
        self._records: dict[str, list[ClipRecord]] = {}
        self._mask_dicts: dict[str, dict[str, Any]] = {}
        self._foreground_dicts: dict[str, dict[str, Any] | None] = {}
        # The last decoded foreground: a video's expressions come one after another, and all share it.
        self._last_foreground: tuple[tuple[Any, ...], torch.Tensor] | None = None
        self._annotation_ids: dict[Path, frozenset[int]] = {}

    def splits(self) -> list[str]:
        """The splits that have an expression file (``{split}/meta_expressions.json`` or
        ``meta_expressions/{split}/meta_expressions.json``), sorted by name."""
        return list(self._splits)

    def metadata_source(self) -> str:
        """The splits' expression files (``root/*/meta_expressions.json`` when there are none)."""
        if not self._splits:
            return str(self.root / "*" / EXPRESSIONS_FILE)
        return ", ".join(str(self._expression_paths[split]) for split in self._splits)

    def _why_empty(self) -> str:
        if not self._splits:
            return f"no sub-folder of {self.root} holds a {EXPRESSIONS_FILE} (one folder per split, e.g. train/)"
        return "their 'videos' objects list no expressions"

    def ground_truth(self, split: str) -> GroundTruth | None:
        """Where the split's masks come from: ``mask_dict`` when ``{split}/mask_dict.json`` exists, else
        ``annotations`` when ``{split}/Annotations/`` does, else None (no ground truth)."""
        folder = self.root / split
        if (folder / MASKS_FILE).is_file():
            return "mask_dict"
        if (folder / ANNOTATIONS_DIR).is_dir():
            return "annotations"
        return None

    def has_masks(self, split: str) -> bool:
        """Whether the split ships ground truth (a ``mask_dict.json`` or an ``Annotations/`` folder)."""
        return self.ground_truth(split) is not None

    def has_foreground(self, split: str) -> bool:
        """Whether the split ships ReVOS's video foreground, ``{split}/mask_dict_foreground.json`` (then samples carry
        ``meta["foreground"]``)."""
        return (self.root / split / FOREGROUND_FILE).is_file()

    # ----------------------------------------------------------------------------------------------- metadata

    def index(self, split: str) -> list[ClipRecord]:
        """Records of one split: one per expression, videos and expressions in file order."""
        if split not in self._splits:
            raise self._unknown_split(split)
        if split not in self._records:
            self._records[split] = self._parse_expressions(split)
        return self._records[split]

    def _video(self, split: str, path: Path, vid: str, video: Any, ground_truth: GroundTruth | None) -> _Video:
        where = f"videos/{vid}"
        if not isinstance(video, dict):
            raise MetadataError(path, f"{where}: expected an object, got {type(video).__name__}")
        frame_list = video.get("frames")
        if not isinstance(frame_list, list) or not frame_list:
            raise MetadataError(path, f"{where}/frames: expected a non-empty list of frame ids, got {frame_list!r}")
        for i, fid in enumerate(frame_list):
            if isinstance(fid, bool) or not isinstance(fid, str | int):
                raise MetadataError(path, f"{where}/frames[{i}]: frame id must be a string, got {fid!r}")
        frame_ids = [str(f) for f in frame_list]
        if len(set(frame_ids)) != len(frame_ids):
            dup = next(f for f in frame_ids if frame_ids.count(f) > 1)
            raise MetadataError(path, f"{where}/frames: frame id {dup!r} is listed twice")
        ordered = sorted(frame_ids)
        keep = subsample_indices(len(ordered), self.max_frames)
        frames_dir = self.root / split / FRAMES_DIR / vid
        annotations = annotated = None
        if ground_truth == "annotations":
            annotations = self.root / split / ANNOTATIONS_DIR / vid
            if annotations.is_dir():
                annotated = frozenset(p.stem for p in annotations.glob("*.png"))
        return _Video(
            vid=vid,
            frame_ids=ordered,
            keep=keep,
            frame_paths=tuple(frames_dir / f"{ordered[i]}.jpg" for i in keep),
            annotations=annotations,
            annotated=annotated,
        )

    def _parse_expressions(self, split: str) -> list[ClipRecord]:
        path = self._expression_paths[split]
        data = _load_json(path, "RVOS expressions file")
        videos = data.get("videos") if isinstance(data, dict) else None
        if not isinstance(videos, dict):
            raise MetadataError(path, "expected a top-level object with a 'videos' object")
        ground_truth = self.ground_truth(split)
        records: list[ClipRecord] = []
        unsorted_videos = 0
        for vid, entry in videos.items():
            video = self._video(split, path, vid, entry, ground_truth)
            unsorted_videos += video.frame_ids != [str(f) for f in entry["frames"]]
            expressions = entry.get("expressions")
            if not isinstance(expressions, dict):
                raise MetadataError(
                    path, f"videos/{vid}/expressions: expected an object, got {type(expressions).__name__}"
                )
            for exp_id, exp in expressions.items():
                records.append(self._expression_record(split, path, video, str(exp_id), exp, ground_truth))
        if unsorted_videos and ground_truth == "mask_dict":
            warnings.warn(
                f"{path}: {unsorted_videos} video(s) list their frames out of order; avseg sorts frame ids and reads "
                "mask_dict lists in that sorted order, as Sa2VA does",
                DatasetWarning,
                stacklevel=3,
            )
        return records

    def _expression_record(
        self, split: str, path: Path, video: _Video, exp_id: str, exp: Any, ground_truth: GroundTruth | None
    ) -> ClipRecord:
        vid = video.vid
        where = f"videos/{vid}/expressions/{exp_id}"
        if not isinstance(exp, dict):
            raise MetadataError(path, f"{where}: expected an object, got {type(exp).__name__}")
        text = exp.get("exp")
        if not isinstance(text, str):
            raise MetadataError(path, f"{where}: missing or non-string 'exp' (the expression text)")
        type_id = exp.get("type_id")
        if type_id is not None and (isinstance(type_id, bool) or not isinstance(type_id, int)):
            raise MetadataError(path, f"{where}/type_id: expected an int, got {type_id!r}")
        anno_ids = _ids(exp["anno_id"], f"{where}/anno_id", path) if exp.get("anno_id") is not None else []
        obj_ids = _ids(exp["obj_id"], f"{where}/obj_id", path) if exp.get("obj_id") is not None else []
        extra: dict[str, Any] = {
            "exp_id": exp_id,
            "anno_ids": anno_ids,
            "obj_ids": obj_ids,
            "type_id": type_id,
            "ground_truth": ground_truth,
            "expressions_file": path,
            "frame_ids": tuple(video.frame_ids[i] for i in video.keep),
            "frame_positions": tuple(video.keep),
            "video_num_frames": len(video.frame_ids),
            "mask_keys": [],
            "mask_key_source": None,
            "palette_ids": [],
            "annotations": video.annotations,
        }
        mask_refs: tuple[Any, ...] = (None,) * len(video.keep)
        if ground_truth == "mask_dict":
            if anno_ids:
                extra["mask_keys"], extra["mask_key_source"] = anno_ids, "anno_id"
            else:
                # Ref-YouTube-VOS as Sa2VA ships it: no anno_id; masks are looked up per object (module docstring).
                extra["mask_keys"], extra["mask_key_source"] = [f"{vid}/{o}" for o in obj_ids], "obj_id"
            if not extra["mask_keys"]:
                raise MetadataError(path, f"{where}: has neither 'anno_id' nor 'obj_id', so its masks cannot be found")
            mask_refs = tuple(video.keep)
        elif ground_truth == "annotations":
            if not obj_ids:
                raise MetadataError(
                    path, f"{where}: has no 'obj_id', the palette index of its object in {ANNOTATIONS_DIR}/{vid}/"
                )
            extra["palette_ids"] = [object_index(o, path, f"{where}/obj_id") for o in obj_ids]
            if video.annotated is not None:
                mask_refs = tuple(
                    video.annotations / f"{fid}.png" if fid in video.annotated else None  # type: ignore[operator]
                    for fid in extra["frame_ids"]
                )
        return ClipRecord(
            dataset=self.format,
            split=split,
            video_id=vid,
            frame_paths=video.frame_paths,
            mask_refs=mask_refs,
            audio_path=None,
            num_frames=len(video.keep),
            uid=f"{vid}/{exp_id}",
            text=text,
            object_id=",".join(obj_ids or anno_ids) or None,
            extra=extra,
        )

    def _mask_dict(self, split: str) -> dict[str, Any]:
        if split not in self._mask_dicts:
            self._mask_dicts[split] = _load_json_object(self.root / split / MASKS_FILE, "RVOS mask file", "anno_id")
        return self._mask_dicts[split]

    def _foreground_dict(self, split: str) -> dict[str, Any] | None:
        """The split's ``mask_dict_foreground.json``, loaded once; None when the split has none."""
        if split not in self._foreground_dicts:
            data = None
            if self.has_foreground(split):
                data = _load_json_object(self.root / split / FOREGROUND_FILE, "ReVOS foreground file", "video")
            self._foreground_dicts[split] = data
        return self._foreground_dicts[split]

    def _foreground_entries(self, record: ClipRecord) -> list[Any]:
        """The per-frame foreground entries of the record's video, checked against its frame count."""
        path = self.root / record.split / FOREGROUND_FILE
        data = self._foreground_dict(record.split) or {}
        vid = record.video_id
        if vid not in data:
            raise MetadataError(path, f"key {vid!r} (the video of expression {record.uid!r}) not found")
        entries = data[vid].get("masks_rle") if isinstance(data[vid], dict) else None
        if not isinstance(entries, list):
            raise MetadataError(path, f"key {vid!r}: expected an object with a 'masks_rle' list of per-frame RLEs")
        n = record.extra["video_num_frames"]
        if len(entries) != n:
            raise MetadataError(path, f"key {vid!r}/masks_rle: {len(entries)} masks for the {n} frames of the video")
        return entries

    def _missing_key_reason(self, record: ClipRecord, key: str) -> str:
        owner = f"{record.extra['mask_key_source']} of expression {record.uid!r}"
        if record.extra["mask_key_source"] == "obj_id":
            return (
                f"key {key!r} ({owner}) not found; the expression has no anno_id, so avseg looks masks up as "
                "'{vid}/{obj_id}' (Sa2VA's Ref-YouTube-VOS running-counter keys depend on file order and are not "
                "guessed): add anno_id to meta_expressions.json or key the masks by '{vid}/{obj_id}'"
            )
        return f"key {key!r} ({owner}) not found"

    def _mask_entries(self, record: ClipRecord, key: str) -> list[Any]:
        """The per-frame RLE list of one key, checked against the video's frame count."""
        path = self.root / record.split / MASKS_FILE
        masks = self._mask_dict(record.split)
        if key not in masks:
            raise MetadataError(path, self._missing_key_reason(record, key))
        entries = masks[key]
        n = record.extra["video_num_frames"]
        if not isinstance(entries, list):
            raise MetadataError(path, f"key {key!r}: expected a list of per-frame RLEs, got {type(entries).__name__}")
        if len(entries) != n:
            raise MetadataError(
                path, f"key {key!r}: {len(entries)} masks for the {n} frames of video {record.video_id!r}"
            )
        return entries

    def _ids_in_annotations(
        self, folder: Path, wanted: Iterable[int], *, skip_unreadable: bool = False
    ) -> frozenset[int]:
        """Object ids found in the PNGs of an annotation folder, scanned in name order; the scan stops once every id
        of ``wanted`` is found (a complete scan is cached). Unreadable PNGs raise unless ``skip_unreadable``."""
        if folder in self._annotation_ids:
            return self._annotation_ids[folder]
        wanted, found = set(wanted), set()
        for png in sorted(folder.glob("*.png")):
            try:
                found.update(object_ids(read_mask(png)))
            except AVSegError:
                if not skip_unreadable:
                    raise
                continue  # check(): the generic file check lists the unreadable PNGs that records reference
            if wanted <= found:
                return frozenset(found)
        self._annotation_ids[folder] = frozenset(found)
        return self._annotation_ids[folder]

    def _absent_object_reason(self, record: ClipRecord, oid: int, present: Iterable[int]) -> str:
        return (
            f"videos/{record.video_id}/expressions/{record.extra['exp_id']}/obj_id: object {oid} appears in no "
            f"annotation of {record.extra['annotations']} (ids there: {sorted(present)}); {_UNSUPERVISED_HINT}"
        )

    # ----------------------------------------------------------------------------------------------- decoding

    def _decode_masks(self, record: ClipRecord, frame_size: tuple[int, int]) -> torch.Tensor:
        """The union of the expression's masks at the size their RLEs or PNGs record: ``uint8`` ``(T, H0, W0)``."""
        if record.extra["ground_truth"] == "annotations":
            return self._decode_annotations(record, frame_size)
        t_len = record.num_frames
        if not any(ref is not None for ref in record.mask_refs):
            return torch.zeros((t_len, *frame_size), dtype=torch.uint8)
        path = self.root / record.split / MASKS_FILE
        union: list[np.ndarray | None] = [None] * t_len
        sources: list[str] = [f"{path}: frame {pos}" for pos in record.mask_refs]
        for key in record.extra["mask_keys"]:
            entries = self._mask_entries(record, key)
            for t, pos in enumerate(record.mask_refs):
                entry = entries[pos]
                if entry is None:
                    continue  # the object is absent from this frame
                try:
                    m = rle.decode(entry)
                except ValueError as err:
                    fid = record.extra["frame_ids"][t]
                    raise MetadataError(path, f"key {key!r}, frame {pos} ({fid}): bad RLE: {err}") from None
                previous = union[t]
                if previous is None:
                    union[t], sources[t] = m, f"{path}: key {key!r}, frame {pos}"
                    continue
                if m.shape != previous.shape:
                    # Objects of one frame must share a grid to be united; the first object's RLE sets it.
                    m = resize_masks(torch.from_numpy(m)[None], previous.shape)[0].numpy()  # type: ignore[arg-type]
                union[t] = previous | m
        return stack_native_masks(union, t_len, default_size=frame_size, sources=sources)

    def _decode_annotations(self, record: ClipRecord, frame_size: tuple[int, int]) -> torch.Tensor:
        """The union of the expression's objects in its palette PNGs: ``uint8`` ``(T, H0, W0)``."""
        folder: Path = record.extra["annotations"]
        expressions_file = record.extra["expressions_file"]
        if not folder.is_dir():
            where = f"videos/{record.video_id}/expressions/{record.extra['exp_id']}"
            raise MissingFileError(folder, f"annotation folder of the video of {where} in {expressions_file}")
        ids = record.extra["palette_ids"]
        unseen = set(ids)
        decoded: list[np.ndarray | None] = [None] * record.num_frames
        for t, ref in enumerate(record.mask_refs):
            if ref is None:
                continue
            png = read_mask(ref)
            decoded[t] = object_mask(png, ids)
            unseen -= {i for i in unseen if (png == i).any()}
        if unseen:
            # Absent from every kept frame: legitimate only if some other annotation of the video holds the object.
            present = self._ids_in_annotations(folder, unseen)
            absent = sorted(unseen - present)
            if absent:
                raise MetadataError(expressions_file, self._absent_object_reason(record, absent[0], present))
        return stack_native_masks(decoded, record.num_frames, default_size=frame_size, sources=record.mask_refs)

    def _decode_foreground(self, record: ClipRecord, size: tuple[int, int]) -> torch.Tensor:
        """The video's foreground on the record's frames, on the ``size`` grid of its native masks: ``uint8``
        ``(T, H0, W0)``, the number of objects covering each pixel."""
        key = (record.split, record.video_id, record.extra["frame_positions"], tuple(size))
        if self._last_foreground is not None and self._last_foreground[0] == key:
            return self._last_foreground[1]
        path = self.root / record.split / FOREGROUND_FILE
        entries = self._foreground_entries(record)
        counts: list[np.ndarray | None] = []
        sources: list[str] = []
        for t, pos in enumerate(record.extra["frame_positions"]):
            entry = entries[pos]
            where = f"key {record.video_id!r}, frame {pos} ({record.extra['frame_ids'][t]})"
            sources.append(f"{path}: {where}")
            count = None
            for one in _foreground_objects(entry):  # summed, as eval_revos.py sums a frame's decoded masks
                try:
                    m = rle.decode(one)
                except ValueError as err:
                    raise MetadataError(path, f"{where}: bad RLE: {err}") from None
                if count is not None and m.shape != count.shape:
                    raise MetadataError(path, f"{where}: RLEs of sizes {count.shape} and {m.shape} on one frame")
                count = m if count is None else count + m
            counts.append(count)
        foreground = stack_native_masks(counts, record.num_frames, default_size=size, sources=sources)
        if tuple(foreground.shape[-2:]) != tuple(size):
            warnings.warn(
                f"{path}: key {record.video_id!r}: foreground size {tuple(foreground.shape[-2:])} differs from "
                f"{tuple(size)}, the size of the ground truth of expression {record.uid!r}; it was resized (nearest)",
                DatasetWarning,
                stacklevel=2,
            )
            foreground = resize_masks(foreground, size)
        self._last_foreground = (key, foreground)
        return foreground

    def load(self, record: ClipRecord) -> AVSSample:
        """Decode one expression: the kept frames, the union of its objects' masks, silent audio, and the video's
        foreground (``meta["foreground"]``) when the split ships one."""
        frames = load_frames(record.frame_paths)  # (T, 3, H, W)
        orig_size = (int(frames.shape[-2]), int(frames.shape[-1]))
        native = self._decode_masks(record, orig_size)  # (T, H0, W0)
        wave, examples, _ = load_audio_features(None, record.num_frames)
        meta: dict[str, Any] = {
            "exp_id": record.extra["exp_id"],
            "anno_ids": list(record.extra["anno_ids"]),
            "obj_ids": list(record.extra["obj_ids"]),
            "type_id": record.extra["type_id"],
        }
        if self._foreground_dict(record.split) is not None:
            meta["foreground"] = self._decode_foreground(record, (int(native.shape[-2]), int(native.shape[-1])))
        return sample_from_record(
            record,
            frames=resize_frames(frames, self.image_size),
            masks=resize_masks(resize_masks(native, orig_size), self.image_size),  # (T, H, W)
            frame_valid=torch.ones(record.num_frames, dtype=torch.bool),
            label_valid=torch.tensor(record.labelled, dtype=torch.bool),
            audio_wave=wave,
            audio_examples=examples,
            has_audio=False,
            frame_names=record.extra["frame_ids"],
            orig_size=orig_size,
            native_masks=native if self.native_masks else None,
            meta=meta,
        )

    # ----------------------------------------------------------------------------------------------- checking

    def check(self, *, deep: bool = False, progress: Callable[[Iterable], Iterable] | None = None) -> CheckReport:
        """The generic file check, plus the ground truth.

        ``mask_dict`` splits: missing keys, wrong list lengths and RLEs that do not decode; every RLE referenced by an
        expression is parsed (size, characters, run lengths summing to ``H * W``), and ``deep`` decodes it to pixels
        as well; findings name ``mask_dict.json`` and the key. ``annotations`` splits: videos without an annotation
        folder, and ``obj_id`` values found in none of the video's PNGs (findings name ``meta_expressions.json`` and
        the key); the PNGs of a video are decoded until every id its expressions name is found. A split with a
        ``mask_dict_foreground.json``: every video of the split has an entry with one RLE (or a list of RLEs, or
        null) per frame, each parsed as above (``deep`` decodes them); findings name that file and the video.
        """
        report = super().check(deep=deep, progress=progress)
        for split in self.splits():
            ground_truth = self.ground_truth(split)
            if ground_truth is None:
                report.notes.append(
                    f"split {split!r}: no {MASKS_FILE} and no {ANNOTATIONS_DIR}/ folder (no ground truth); "
                    "expressions load unlabelled"
                )
            elif ground_truth == "annotations":
                self._check_annotations(split, report)
            else:
                if (self.root / split / ANNOTATIONS_DIR).is_dir():
                    report.notes.append(
                        f"split {split!r}: masks are read from {MASKS_FILE}; its {ANNOTATIONS_DIR}/ folder is not read"
                    )
                self._check_mask_dict(split, report, deep)
            if self.has_foreground(split):
                self._check_foreground(split, report, deep)
        return report

    def _check_annotations(self, split: str, report: CheckReport) -> None:
        path = self._expression_paths[split]
        per_video: dict[Path, list[ClipRecord]] = {}
        for record in self.index(split):
            per_video.setdefault(record.extra["annotations"], []).append(record)
        for folder, records in per_video.items():
            if not folder.is_dir():
                report.missing.append((folder, f"annotation folder of video {records[0].video_id!r} listed in {path}"))
                continue
            wanted = {oid for r in records for oid in r.extra["palette_ids"]}
            present = self._ids_in_annotations(folder, wanted, skip_unreadable=True)
            for record in records:
                for oid in record.extra["palette_ids"]:
                    if oid not in present:
                        report.missing.append((path, self._absent_object_reason(record, oid, present)))

    def _check_mask_dict(self, split: str, report: CheckReport, deep: bool) -> None:
        path = self.root / split / MASKS_FILE
        try:
            self._mask_dict(split)
        except MetadataError as err:
            report.unreadable.append((path, err.reason))
            return
        done: set[str] = set()
        for record in self.index(split):
            for key in record.extra["mask_keys"]:
                if key in done:
                    continue
                done.add(key)
                try:
                    entries = self._mask_entries(record, key)
                except MetadataError as err:
                    if key not in self._mask_dict(split):
                        report.missing.append((path, err.reason))
                    else:
                        report.unreadable.append((path, err.reason))
                    continue
                for pos, entry in enumerate(entries):
                    if entry is not None:
                        _check_rle(entry, deep, report, path, f"key {key!r}, frame {pos}")

    def _check_foreground(self, split: str, report: CheckReport, deep: bool) -> None:
        path = self.root / split / FOREGROUND_FILE
        try:
            data = self._foreground_dict(split) or {}
        except MetadataError as err:
            report.unreadable.append((path, err.reason))
            return
        first_of_video: dict[str, ClipRecord] = {}
        for record in self.index(split):
            first_of_video.setdefault(record.video_id, record)
        for vid, record in first_of_video.items():
            try:
                entries = self._foreground_entries(record)
            except MetadataError as err:
                (report.missing if vid not in data else report.unreadable).append((path, err.reason))
                continue
            for pos, entry in enumerate(entries):
                for one in _foreground_objects(entry):
                    _check_rle(one, deep, report, path, f"key {vid!r}, frame {pos}")
