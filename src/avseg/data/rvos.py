"""Referring video object segmentation (MeViS, ReVOS, Ref-YouTube-VOS) from ``meta_expressions.json`` and
``mask_dict.json``, the files Sa2VA trains and evaluates on.

Provenance: ``magic-research/Sa2VA`` ``projects/llava_sam2/datasets/ReVOS_Dataset.py::json_file_preprocess`` and
``decode_mask``, ``MeVIS_Dataset.py``, ``RefYoutubeVOS_Dataset.py`` (MeViS and ReVOS files as released by their
authors; Ref-YouTube-VOS with a mask file Sa2VA converts).

On-disk layout (``root`` holds one folder per split; every folder with a ``meta_expressions.json`` is a split)::

    root/
      train/                         # any split name: train, valid_u, valid, ...
        meta_expressions.json        # {"videos": {vid: {"frames": [frame_id, ...],
                                     #                   "expressions": {exp_id: {"exp": str,
                                     #                                            "anno_id": [int, ...],   # optional
                                     #                                            "obj_id": [int, ...] | int | str}}}}}
        mask_dict.json               # {str(anno_id): [RLE | null, ...] (one entry per frame of the video)}; optional
        JPEGImages/{vid}/{frame_id}.jpg

An RLE is a COCO dict ``{"size": [H, W], "counts": str}`` (decoded by :mod:`avseg.data.rle`). MeViS ships this
layout as is (``train``, ``valid_u``, ``valid``). For ReVOS (one ``meta_expressions_{train,valid}_.json`` and one
``mask_dict.json`` beside a shared ``JPEGImages``) and Ref-YouTube-VOS (``meta_expressions/{split}/`` apart from
``{split}/JPEGImages``) make one folder per split with links to those files under the names above; ``vid`` may
contain slashes (ReVOS ``UVO/all/...``), which become sub-folders of ``JPEGImages``.

Quirks and the rules avseg applies:

- **Frame order.** Sa2VA sorts each video's frame ids (``sorted(vid_express_data["frames"])``) and indexes every
  ``mask_dict`` list with positions in that sorted list; avseg does the same. A video whose JSON lists frames in
  another order is read sorted, and a :class:`~avseg.errors.DatasetWarning` counts such videos.
- **Several objects per expression** (MeViS ``anno_id: [3, 7]``): the target is the union of their masks, as
  Sa2VA's ``decode_mask`` ORs the decoded masks of all ``anno_id`` of the expression.
- **Null RLE entries** (``null`` at a frame where the object is absent) give an empty mask on that frame, which is
  still ground truth (``label_valid`` True): the object is known to be absent.
- **No ``anno_id``** (Ref-YouTube-VOS). Sa2VA keys the masks of such files by a running counter over all
  expressions in file order (``anno_count``) and ships them in a pickle (``mask_dict.pkl``), which avseg does not open
  (unpickling runs arbitrary code) and whose keys depend on dictionary order. avseg instead looks the masks up by
  object: the keys ``"{vid}/{obj_id}"`` of ``mask_dict.json`` (a file one writes, for example, from the
  Ref-YouTube-VOS palette annotations). An expression that has neither an ``anno_id`` nor such a key raises a
  :class:`~avseg.errors.MetadataError` naming the file and the key when it is loaded, and ``check()`` lists it.
- **Splits without ground truth** (MeViS ``valid``, Ref-YouTube-VOS ``valid``: no ``mask_dict.json``) load with empty
  masks and ``label_valid`` all False, without an error; ``check()`` adds a note.
- **No audio.** RVOS is text-only: ``has_audio`` is False and the audio fields hold silence (no warning).
- **Resolution.** The MeViS and ReVOS evaluation scripts (``eval_queue`` in their ``eval_mevis.py`` /
  ``eval_revos.py``, reused by Sa2VA) decode the ground-truth RLEs of ``mask_dict.json`` with pycocotools at the size
  each RLE records and compare predictions of that size with them (``db_eval_iou``). avseg decodes each
  RLE at its own size; ``masks`` is brought to the frames' size on disk and then to ``image_size`` (nearest), and with
  ``native_masks=True`` the union at the RLE size is returned as ``native_masks`` (the size of the expression's first
  RLE; frames where the object is absent, and the frames of splits without ground truth, hold zeros; an expression
  without any RLE uses the frames' size).
- **Long videos.** ``max_frames`` keeps at most that many frames per video, uniformly spread over the whole video
  (positions ``floor(i * (n - 1) / (k - 1) + 0.5)``, ``i = 0..k-1``, so the first and last frames are kept).
  ``frame_names`` are the kept frame ids, so predictions can be written under the original names.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

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
from avseg.data.types import AVSSample
from avseg.errors import DatasetWarning, MetadataError, MissingFileError

__all__ = ["RVOSReader", "subsample_indices"]

EXPRESSIONS_FILE = "meta_expressions.json"
MASKS_FILE = "mask_dict.json"
FRAMES_DIR = "JPEGImages"


class _NoSplitFolders(EmptyDatasetError, MissingFileError):
    """An RVOS root without any ``<split>/meta_expressions.json``: an empty dataset, and (as it always was) a
    :class:`~avseg.errors.MissingFileError`, since the expression files are missing."""


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


class RVOSReader(BenchmarkReader):
    """Reader of RVOS benchmarks in the MeViS / Sa2VA JSON layout (layout and quirks in the module docstring).

    Args:
        root: folder holding one sub-folder per split.
        image_size: resize frames (bilinear) and masks (nearest) to this size; None keeps the stored size.
        max_frames: keep at most this many frames per video, uniformly spaced; None keeps every frame.
        native_masks: also return the masks at the size their RLEs record as ``native_masks`` ``(T, H0, W0)``.
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
        self._splits = sorted(p.parent.name for p in self.root.glob(f"*/{EXPRESSIONS_FILE}") if p.is_file())
        if not self._splits:
            empty = self.empty_error()
            raise _NoSplitFolders(empty.root, empty.path, str(empty))
        self._records: dict[str, list[ClipRecord]] = {}
        self._mask_dicts: dict[str, dict[str, Any]] = {}

    def splits(self) -> list[str]:
        """Sub-folders of ``root`` that hold a ``meta_expressions.json``, sorted by name."""
        return list(self._splits)

    def metadata_source(self) -> str:
        """The splits' ``meta_expressions.json`` files (``root/*/meta_expressions.json`` when there are none)."""
        if not self._splits:
            return str(self.root / "*" / EXPRESSIONS_FILE)
        return ", ".join(str(self.root / split / EXPRESSIONS_FILE) for split in self._splits)

    def _why_empty(self) -> str:
        if not self._splits:
            return f"no sub-folder of {self.root} holds a {EXPRESSIONS_FILE} (one folder per split, e.g. train/)"
        return "their 'videos' objects list no expressions"

    def has_masks(self, split: str) -> bool:
        """Whether the split ships ground truth (a ``mask_dict.json``)."""
        return (self.root / split / MASKS_FILE).is_file()

    # ----------------------------------------------------------------------------------------------- metadata

    def index(self, split: str) -> list[ClipRecord]:
        """Records of one split: one per expression, videos and expressions in file order."""
        if split not in self._splits:
            raise self._unknown_split(split)
        if split not in self._records:
            self._records[split] = self._parse_expressions(split)
        return self._records[split]

    def _parse_expressions(self, split: str) -> list[ClipRecord]:
        path = self.root / split / EXPRESSIONS_FILE
        data = _load_json(path, "RVOS expressions file")
        videos = data.get("videos") if isinstance(data, dict) else None
        if not isinstance(videos, dict):
            raise MetadataError(path, "expected a top-level object with a 'videos' object")
        labelled = self.has_masks(split)
        frames_dir = self.root / split / FRAMES_DIR
        records: list[ClipRecord] = []
        unsorted_videos = 0
        for vid, video in videos.items():
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
            unsorted_videos += ordered != frame_ids
            keep = subsample_indices(len(ordered), self.max_frames)
            frame_paths = tuple(frames_dir / vid / f"{ordered[i]}.jpg" for i in keep)
            expressions = video.get("expressions")
            if not isinstance(expressions, dict):
                raise MetadataError(path, f"{where}/expressions: expected an object, got {type(expressions).__name__}")
            for exp_id, exp in expressions.items():
                records.append(
                    self._expression_record(split, path, vid, str(exp_id), exp, ordered, keep, frame_paths, labelled)
                )
        if unsorted_videos:
            warnings.warn(
                f"{path}: {unsorted_videos} video(s) list their frames out of order; avseg sorts frame ids and reads "
                "mask_dict lists in that sorted order, as Sa2VA does",
                DatasetWarning,
                stacklevel=3,
            )
        return records

    def _expression_record(
        self,
        split: str,
        path: Path,
        vid: str,
        exp_id: str,
        exp: Any,
        frame_ids: list[str],
        keep: list[int],
        frame_paths: tuple[Path, ...],
        labelled: bool,
    ) -> ClipRecord:
        where = f"videos/{vid}/expressions/{exp_id}"
        if not isinstance(exp, dict):
            raise MetadataError(path, f"{where}: expected an object, got {type(exp).__name__}")
        text = exp.get("exp")
        if not isinstance(text, str):
            raise MetadataError(path, f"{where}: missing or non-string 'exp' (the expression text)")
        anno_ids = _ids(exp["anno_id"], f"{where}/anno_id", path) if exp.get("anno_id") is not None else []
        obj_ids = _ids(exp["obj_id"], f"{where}/obj_id", path) if exp.get("obj_id") is not None else []
        if anno_ids:
            mask_keys, key_source = anno_ids, "anno_id"
        else:
            # Ref-YouTube-VOS style: no anno_id; masks are looked up per object (module docstring).
            mask_keys, key_source = [f"{vid}/{o}" for o in obj_ids], "obj_id"
        if labelled and not mask_keys:
            raise MetadataError(path, f"{where}: has neither 'anno_id' nor 'obj_id', so its masks cannot be found")
        return ClipRecord(
            dataset=self.format,
            split=split,
            video_id=vid,
            frame_paths=frame_paths,
            mask_refs=tuple(keep) if labelled else (None,) * len(keep),
            audio_path=None,
            num_frames=len(keep),
            uid=f"{vid}/{exp_id}",
            text=text,
            object_id=",".join(obj_ids or anno_ids) or None,
            extra={
                "exp_id": exp_id,
                "anno_ids": anno_ids,
                "obj_ids": obj_ids,
                "mask_keys": mask_keys,
                "mask_key_source": key_source,
                "frame_ids": tuple(frame_ids[i] for i in keep),
                "video_num_frames": len(frame_ids),
            },
        )

    def _mask_dict(self, split: str) -> dict[str, Any]:
        if split not in self._mask_dicts:
            path = self.root / split / MASKS_FILE
            data = _load_json(path, "RVOS mask file")
            if not isinstance(data, dict):
                raise MetadataError(path, f"expected a top-level object keyed by anno_id, got {type(data).__name__}")
            self._mask_dicts[split] = data
        return self._mask_dicts[split]

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

    # ----------------------------------------------------------------------------------------------- decoding

    def _decode_masks(self, record: ClipRecord, frame_size: tuple[int, int]) -> torch.Tensor:
        """The union of the expression's masks at the size its RLEs record: ``uint8`` ``(T, H0, W0)``."""
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

    def load(self, record: ClipRecord) -> AVSSample:
        """Decode one expression: the kept frames, the union of its objects' masks, silent audio."""
        frames = load_frames(record.frame_paths)  # (T, 3, H, W)
        orig_size = (int(frames.shape[-2]), int(frames.shape[-1]))
        native = self._decode_masks(record, orig_size)  # (T, H0, W0)
        wave, examples, _ = load_audio_features(None, record.num_frames)
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
            meta={
                "exp_id": record.extra["exp_id"],
                "anno_ids": list(record.extra["anno_ids"]),
                "obj_ids": list(record.extra["obj_ids"]),
            },
        )

    # ----------------------------------------------------------------------------------------------- checking

    def check(self, *, deep: bool = False, progress: Callable[[Iterable], Iterable] | None = None) -> CheckReport:
        """The generic file check, plus the masks: missing keys, wrong list lengths and RLEs that do not decode.

        Every RLE referenced by an expression is parsed (size, characters, run lengths summing to ``H * W``);
        ``deep`` decodes it to pixels as well. Findings name ``mask_dict.json`` and the key.
        """
        report = super().check(deep=deep, progress=progress)
        for split in self.splits():
            path = self.root / split / MASKS_FILE
            if not path.is_file():
                report.notes.append(f"split {split!r}: no {MASKS_FILE} (no ground truth); expressions load unlabelled")
                continue
            try:
                self._mask_dict(split)
            except MetadataError as err:
                report.unreadable.append((path, err.reason))
                continue
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
                        if entry is None:
                            continue
                        try:
                            if deep:
                                rle.decode(entry)
                            else:
                                rle.parse_counts(entry)
                        except ValueError as err:
                            report.unreadable.append((path, f"key {key!r}, frame {pos}: bad RLE: {err}"))
        return report
