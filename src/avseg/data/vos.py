"""Semi-supervised video object segmentation (DAVIS 2017, YouTube-VOS, MOSE): one sample per object of a video,
for training and evaluating promptable (mask-conditioned) models.

Provenance: ``davisvideochallenge/davis2017-evaluation`` ``davis2017/davis.py::DAVIS`` (layout, splits, void label,
objects of the first frame), ``facebookresearch/sam2`` ``training/dataset/vos_raw_dataset.py::PNGRawDataset`` and
``vos_segment_loader.py::PalettisedPNGSegmentLoader`` (palette indices are object ids), ``tools/vos_inference.py``
(the first annotated frame conditions the propagation).

Two layouts are detected under ``root`` (DAVIS first, when ``ImageSets/2017`` holds a split list)::

    DAVIS 2017                                   YouTube-VOS 2018/2019, MOSE
    root/                                        root/
      ImageSets/2017/{split}.txt                   {split}/meta.json
      JPEGImages/{res}/{video}/{00000}.jpg         {split}/JPEGImages/{video}/{frame}.jpg
      Annotations/{res}/{video}/{00000}.png        {split}/Annotations/{video}/{frame}.png

``{res}`` is ``480p`` (default) or ``Full-Resolution`` (``resolution``). A split list holds one video per line.
``meta.json`` is ``{"videos": {video: {"objects": {id: {"category": str, "frames": [frame, ...]}}}}}`` (MOSE omits
``category``); an object's ``frames`` are the annotated frames it appears in. Annotation PNGs are palette (or
grayscale) images whose pixel value is the object id: they are read as indices, never converted to RGB.

One sample is one ``(video, object)`` pair:

- ``frames``: every frame of the video (``.jpg`` files of its folder, sorted by name), or ``max_frames`` of them;
  ``frame_names`` their stems; ``orig_size`` their ``(H, W)`` on disk.
- ``masks``: 1 where the annotation equals the object id, 0 elsewhere (other objects, background, and the DAVIS void
  label 255, which the official evaluation also sets to background).
- ``label_valid``: the frames whose annotation is ground truth for this object. In fully annotated splits, every frame
  with an annotation (listed in ``meta.json`` or present on disk; every frame for DAVIS); frames without one (the
  YouTube-VOS ``all_frames`` variant annotates every 5th frame) are unlabelled. In first-frame-only splits
  (DAVIS ``test-dev``, ``test-challenge``; YouTube-VOS and MOSE ``valid``, ``test``) only the object's first annotated
  frame: the later annotations of those splits show only the objects that first appear there.
- ``object_id``: the id as a string (``"3"``); ``uid``: ``"{video}/{object_id}"``; ``text`` None.
- ``meta["first_frame"]``: position (in this sample's frames) of the object's first annotated frame, the frame a
  first-frame-mask evaluation conditions on; ``meta["first_frame_name"]`` its stem; ``meta["category"]`` the
  YouTube-VOS category (None for DAVIS and MOSE); ``meta["layout"]`` ``"davis"`` or ``"youtube-vos"``.
- ``native_masks`` (with ``native_masks=True``): the same binary masks at the resolution of the annotation PNGs, as
  the official DAVIS evaluation compares them (the size of the sample's first annotation; zeros on unlabelled
  frames). ``masks`` is this ground truth brought to the frames' size on disk, then to ``image_size`` (nearest).
- No audio: ``has_audio`` is False and the audio fields hold silence.

Quirks and the rules avseg applies:

- **Which objects.** YouTube-VOS and MOSE list them in ``meta.json``; ids need not be contiguous. DAVIS has no object
  list: the objects are the ids present in the video's first annotation (0 background and 255 void excluded), as the
  official evaluation takes the objects of the first frame (it counts ``1..max``, the same set for the released
  data, whose first-frame ids are contiguous; avseg keeps only the ids present, so ids 1 and 3 give two objects).
- **Objects that enter late** (YouTube-VOS): the first annotated frame is the earliest frame listed for the object
  in ``meta.json``; earlier frames are part of the sample, with ``label_valid`` True in fully annotated splits (the
  object is known to be absent there).
- **Long videos.** The whole video is loaded. ``max_frames`` keeps at most that many frames, spread uniformly from the
  object's first annotated frame to the last frame of the video (both kept; earlier frames are dropped, since a
  first-frame-mask model propagates forward from the conditioning frame), so ``meta["first_frame"]`` is then 0.
- **Missing files.** A video whose frame folder (or, for DAVIS, whose first annotation, which defines its objects)
  is missing or unreadable is skipped with one :class:`~avseg.errors.DatasetWarning` per split; ``check()`` lists it
  with its path, as it lists every missing annotation of a fully annotated split, every frame listed in ``meta.json``
  without its image, and every object of ``meta.json`` absent from its first annotated frame. Loading a record whose
  annotation is missing raises :class:`~avseg.errors.MissingFileError` naming the file.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from avseg.data.base import (
    BenchmarkReader,
    CheckReport,
    ClipRecord,
    ImageSize,
    load_audio_features,
    load_frames,
    resize_frames,
    resize_masks,
    sample_from_record,
    stack_native_masks,
)
from avseg.data.palette import VOID_ID, object_ids, object_index, object_mask
from avseg.data.rvos import subsample_indices
from avseg.data.types import AVSSample
from avseg.errors import AVSegError, CorruptMediaError, DatasetWarning, MetadataError, MissingFileError, UsageError
from avseg.media.image import read_mask

__all__ = ["DAVIS_RESOLUTIONS", "FIRST_FRAME_ONLY_SPLITS", "VOID_ID", "VOSReader"]

DAVIS_RESOLUTIONS = ("480p", "Full-Resolution")
FIRST_FRAME_ONLY_SPLITS: dict[str, frozenset[str]] = {
    "davis": frozenset({"test-dev", "test-challenge"}),
    "youtube-vos": frozenset({"valid", "test"}),
}
"""Per layout, the splits whose annotations give each object on its first frame only."""

_SPLIT_ORDER = {
    "davis": ("train", "val", "test-dev", "test-challenge"),
    "youtube-vos": ("train", "val", "valid", "test"),
}
_FRAME_SUFFIXES = (".jpg", ".jpeg")

Layout = Literal["davis", "youtube-vos"]


@dataclass(frozen=True)
class _Problem:
    """What indexing found wrong with a file, for :meth:`VOSReader.check` (``kind``: missing, unreadable or note)."""

    kind: Literal["missing", "unreadable", "note"]
    path: Path
    what: str
    skips_video: bool = False


def _split_order(names: Iterable[str], layout: str) -> list[str]:
    names = set(names)
    known = [s for s in _SPLIT_ORDER[layout] if s in names]
    return known + sorted(names - set(known))


def _frame_files(folder: Path) -> list[Path]:
    """The ``.jpg`` frames of a video folder, sorted by name."""
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in _FRAME_SUFFIXES), key=lambda p: p.name)


def _read_meta(path: Path) -> dict[str, Any]:
    """The ``videos`` object of a YouTube-VOS ``meta.json``."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise MetadataError(path, f"invalid JSON: {err}") from None
    except UnicodeDecodeError as err:
        raise MetadataError(path, f"not UTF-8 text: {err}") from None
    videos = data.get("videos") if isinstance(data, dict) else None
    if not isinstance(videos, dict):
        raise MetadataError(path, "expected a top-level object with a 'videos' object")
    return videos


class VOSReader(BenchmarkReader):
    """DAVIS 2017 and YouTube-VOS / MOSE trees, one record per object of a video (layout in the module docstring).

    Args:
        root: the dataset folder (holding ``ImageSets/`` for DAVIS, or one folder per split with a ``meta.json``).
        image_size: resize frames (bilinear) and masks (nearest) to this size; None keeps the size on disk.
        native_masks: also return each sample's ground truth at the resolution of its annotation PNGs
            (``AVSSample.native_masks``), for scoring at the resolution the official evaluation scores at.
        max_frames: keep at most this many frames per object, uniformly spread from its first annotated frame to the
            end of the video; None keeps every frame of the video.
        resolution: DAVIS frame and annotation folder, ``480p`` or ``Full-Resolution`` (DAVIS layout only).
    """

    format: ClassVar[str] = "vos"
    item_name: ClassVar[str] = "objects"

    def __init__(
        self,
        root: str | Path,
        *,
        image_size: ImageSize = None,
        native_masks: bool = False,
        max_frames: int | None = None,
        resolution: Literal["480p", "Full-Resolution"] = "480p",
    ) -> None:
        super().__init__(root, image_size=image_size, native_masks=native_masks)
        if max_frames is not None and (isinstance(max_frames, bool) or max_frames < 1):
            raise ValueError(f"max_frames must be a positive int or None, got {max_frames!r}")
        if resolution not in DAVIS_RESOLUTIONS:
            raise UsageError(f"resolution must be one of {list(DAVIS_RESOLUTIONS)}, got {resolution!r}")
        self.max_frames = max_frames
        self.resolution = resolution
        lists = sorted(p for p in (self.root / "ImageSets" / "2017").glob("*.txt") if p.is_file())
        metas = sorted(p for p in self.root.glob("*/meta.json") if p.is_file())
        self._sources: dict[str, Path] = {}
        if lists:
            layout: Layout = "davis"
            self._sources = {p.stem: p for p in lists}
        elif metas:
            layout = "youtube-vos"
            self._sources = {p.parent.name: p for p in metas}
        else:
            raise self.empty_error()
        self.layout = layout
        if self.layout != "davis" and resolution != "480p":
            raise UsageError(
                f"resolution {resolution!r} applies to DAVIS trees only; {self.root} is a YouTube-VOS tree"
            )
        self._splits = _split_order(self._sources, self.layout)
        self._records: dict[str, list[ClipRecord]] = {}
        self._problems: dict[str, list[_Problem]] = {}

    # ----------------------------------------------------------------------------------------------- metadata

    def splits(self) -> list[str]:
        """The split lists (DAVIS) or split folders with a ``meta.json`` (YouTube-VOS), in the usual order."""
        return list(self._splits)

    def metadata_source(self) -> str:
        """The split files: ``ImageSets/2017/{split}.txt`` (DAVIS) or ``{split}/meta.json`` (YouTube-VOS)."""
        if not self._sources:
            return f"{self.root / 'ImageSets' / '2017' / '*.txt'} or {self.root / '*' / 'meta.json'}"
        return ", ".join(str(self._sources[s]) for s in self._splits)

    def _why_empty(self) -> str:
        if not self._sources:
            return (
                "no DAVIS split list (ImageSets/2017/{split}.txt) and no YouTube-VOS split folder ({split}/meta.json)"
            )
        return "they list no video with an object"

    def first_frame_only(self, split: str) -> bool:
        """Whether the split annotates each object on its first frame only (see the module docstring)."""
        return split in FIRST_FRAME_ONLY_SPLITS[self.layout]

    def index(self, split: str) -> list[ClipRecord]:
        """Records of one split: one per object, videos in file order, objects by id (DAVIS) or file order."""
        if split not in self._splits:
            raise self._unknown_split(split)
        if split not in self._records:
            problems: list[_Problem] = []
            if self.layout == "davis":
                records = self._parse_davis(split, problems)
            else:
                records = self._parse_youtube(split, problems)
            skipped = [p for p in problems if p.skips_video and p.kind != "note"]
            if skipped:
                warnings.warn(
                    f"{self._sources[split]}: skipped {len(skipped)} video(s) whose frames or first annotation are "
                    f"missing or unreadable, e.g. {skipped[0].path} ({skipped[0].what}); avseg data check lists them",
                    DatasetWarning,
                    stacklevel=2,
                )
            self._records[split], self._problems[split] = records, problems
        return self._records[split]

    def _video_frames(self, folder: Path, source: Path, problems: list[_Problem]) -> list[Path] | None:
        """The sorted frames of a video, or None (and a problem naming the folder) when there are none."""
        if not folder.is_dir():
            problems.append(_Problem("missing", folder, f"frame folder of a video listed in {source}", True))
            return None
        frames = _frame_files(folder)
        if not frames:
            problems.append(_Problem("missing", folder, f"frames (no .jpg in the folder of a video in {source})", True))
            return None
        return frames

    def _records_of(
        self,
        split: str,
        video: str,
        frames: list[Path],
        objects: list[tuple[int, int, list[Path | None], dict[str, Any]]],
    ) -> list[ClipRecord]:
        """One record per object: ``(id, first frame position, per-frame annotation or None, extra)``."""
        records = []
        stems = [p.stem for p in frames]
        for oid, first, refs, extra in objects:
            if self.max_frames is None:
                keep = list(range(len(frames)))
            else:
                keep = [first + i for i in subsample_indices(len(frames) - first, self.max_frames)]
            records.append(
                ClipRecord(
                    dataset=self.format,
                    split=split,
                    video_id=video,
                    frame_paths=tuple(frames[i] for i in keep),
                    mask_refs=tuple(refs[i] for i in keep),
                    audio_path=None,
                    num_frames=len(keep),
                    uid=f"{video}/{oid}",
                    object_id=str(oid),
                    extra={
                        "layout": self.layout,
                        "object_index": oid,
                        "first_frame": keep.index(first),
                        "first_frame_name": stems[first],
                        "frame_names": tuple(stems[i] for i in keep),
                        "video_num_frames": len(frames),
                        **extra,
                    },
                )
            )
        return records

    def _parse_davis(self, split: str, problems: list[_Problem]) -> list[ClipRecord]:
        source = self._sources[split]
        try:
            lines = source.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as err:
            raise MetadataError(source, f"not UTF-8 text: {err}") from None
        # sam2's PNGRawDataset strips an extension from each line; DAVIS lists carry none, but converted lists may.
        videos = list(dict.fromkeys(Path(line.strip()).stem for line in lines if line.strip()))
        images = self.root / "JPEGImages" / self.resolution
        annotations = self.root / "Annotations" / self.resolution
        first_only = self.first_frame_only(split)
        records: list[ClipRecord] = []
        for video in videos:
            frames = self._video_frames(images / video, source, problems)
            if frames is None:
                continue
            pngs = [annotations / video / f"{p.stem}.png" for p in frames]
            try:
                ids = object_ids(read_mask(pngs[0]))
            except MissingFileError:
                problems.append(_Problem("missing", pngs[0], "mask (the first annotation, defining the objects)", True))
                continue
            except CorruptMediaError as err:
                problems.append(_Problem("unreadable", pngs[0], err.reason, True))
                continue
            if not ids:
                problems.append(
                    _Problem("note", pngs[0], f"video {video!r}: its first annotation holds no object", True)
                )
                continue
            refs: list[Path | None] = [pngs[0], *([None] * (len(frames) - 1))] if first_only else list(pngs)
            records += self._records_of(split, video, frames, [(oid, 0, refs, {"category": None}) for oid in ids])
        return records

    def _parse_youtube(self, split: str, problems: list[_Problem]) -> list[ClipRecord]:
        source = self._sources[split]
        videos = _read_meta(source)
        images, annotations = self.root / split / "JPEGImages", self.root / split / "Annotations"
        first_only = self.first_frame_only(split)
        records: list[ClipRecord] = []
        for video, entry in videos.items():
            where = f"videos/{video}"
            objects = entry.get("objects") if isinstance(entry, dict) else None
            if not isinstance(objects, dict):
                raise MetadataError(source, f"{where}/objects: expected an object keyed by object id")
            listed: dict[int, tuple[list[str], str | None]] = {}
            for key, obj in objects.items():
                oid = object_index(key, source, f"{where}/objects")
                names = obj.get("frames") if isinstance(obj, dict) else None
                if not isinstance(names, list) or not names or not all(isinstance(n, str | int) for n in names):
                    raise MetadataError(source, f"{where}/objects/{key}/frames: expected a non-empty list of frames")
                category = obj.get("category")
                listed[oid] = ([str(n) for n in names], None if category is None else str(category))
            frames = self._video_frames(images / video, source, problems)
            if frames is None:
                continue
            position = {p.stem: i for i, p in enumerate(frames)}
            for name in sorted({n for names, _ in listed.values() for n in names} - set(position)):
                problems.append(_Problem("missing", images / video / f"{name}.jpg", f"frame listed in {source}"))
            annotated = {n for names, _ in listed.values() for n in names}
            folder = annotations / video
            if folder.is_dir():
                annotated |= {p.stem for p in folder.glob("*.png")}
            per_object = []
            for oid, (names, category) in listed.items():
                present = sorted(n for n in names if n in position)
                if not present:
                    continue  # every listed frame lacks its image; each is reported above
                first = position[present[0]]
                if first_only:
                    refs: list[Path | None] = [
                        folder / f"{frames[first].stem}.png" if i == first else None for i in range(len(frames))
                    ]
                else:
                    refs = [folder / f"{p.stem}.png" if p.stem in annotated else None for p in frames]
                per_object.append((oid, first, refs, {"category": category}))
            records += self._records_of(split, video, frames, per_object)
        return records

    # ----------------------------------------------------------------------------------------------- decoding

    def load(self, record: ClipRecord) -> AVSSample:
        """Decode one object of a video.

        Returns:
            A sample with ``T`` = the video's frames (or ``max_frames``): ``frames`` ``uint8`` ``(T, 3, H, W)``,
            ``masks`` ``uint8`` ``(T, H, W)`` in {0, 1}, ``label_valid`` on annotated frames, ``native_masks``
            ``uint8`` ``(T, H0, W0)`` at the annotations' size when the reader was built with ``native_masks=True``,
            silent audio, and ``meta["first_frame"]`` (see the module docstring).

        Raises:
            MissingFileError, CorruptMediaError: a frame or annotation is missing or unreadable (named).
        """
        frames = load_frames(record.frame_paths)  # (T, 3, H, W)
        size_hw = (int(frames.shape[-2]), int(frames.shape[-1]))
        oid = record.extra["object_index"]
        decoded: list[np.ndarray | None] = [None] * record.num_frames
        for t, ref in enumerate(record.mask_refs):
            if ref is not None:
                decoded[t] = object_mask(read_mask(ref), [oid])  # palette indices are object ids
        native = stack_native_masks(decoded, record.num_frames, default_size=size_hw, sources=record.mask_refs)
        masks = resize_masks(native, size_hw)  # (T, H, W): the annotations brought to the frames' grid
        first = record.extra["first_frame"]
        if record.mask_refs[first] is not None and not bool(masks[first].any()):
            warnings.warn(
                f"{record.mask_refs[first]}: object {oid} of video {record.video_id!r} is absent from its first "
                "annotated frame, the frame a first-frame-mask evaluation conditions on",
                DatasetWarning,
                stacklevel=2,
            )
        wave, examples, _ = load_audio_features(None, record.num_frames)
        return sample_from_record(
            record,
            frames=resize_frames(frames, self.image_size),
            masks=resize_masks(masks, self.image_size),
            frame_valid=torch.ones(record.num_frames, dtype=torch.bool),
            label_valid=torch.tensor(record.labelled, dtype=torch.bool),
            audio_wave=wave,
            audio_examples=examples,
            has_audio=False,
            frame_names=record.extra["frame_names"],
            orig_size=size_hw,
            native_masks=native if self.native_masks else None,
            meta={
                "first_frame": first,
                "first_frame_name": record.extra["first_frame_name"],
                "category": record.extra["category"],
                "layout": record.extra["layout"],
            },
        )

    # ----------------------------------------------------------------------------------------------- checking

    def check(self, *, deep: bool = False, progress: Callable[[Iterable], Iterable] | None = None) -> CheckReport:
        """The generic file check, plus what indexing found (videos without frames or first annotation, frames listed
        in ``meta.json`` without an image) and, for YouTube-VOS trees, objects of ``meta.json`` absent from the
        annotation of their first annotated frame (each such annotation is decoded)."""
        report = super().check(deep=deep, progress=progress)
        for split in self.splits():
            for problem in self._problems.get(split, []):
                if problem.kind == "note":
                    report.notes.append(f"{problem.path}: {problem.what}")
                else:
                    (report.missing if problem.kind == "missing" else report.unreadable).append(
                        (problem.path, problem.what)
                    )
        if self.layout == "youtube-vos":
            self._check_objects(report)
        return report

    def _check_objects(self, report: CheckReport) -> None:
        ids_of: dict[Path, list[int] | None] = {}

        def ids(path: Path) -> list[int] | None:
            if path not in ids_of:
                try:
                    ids_of[path] = object_ids(read_mask(path))
                except AVSegError:
                    ids_of[path] = None  # missing or unreadable: the generic check lists it
            return ids_of[path]

        for split in self.splits():
            for record in self.index(split):
                first = record.mask_refs[record.extra["first_frame"]]
                oid = record.extra["object_index"]
                found = ids(first)
                if found is None or oid in found:
                    continue
                later = [r for r in record.mask_refs if r is not None and r != first and oid in (ids(r) or [])]
                if later:
                    where = f"; it first appears in {later[0].name}"
                elif self.first_frame_only(split):
                    where = ""
                else:
                    where = "; it is in no annotation of the video"
                what = f"object {oid} listed in {self._sources[split]}: absent from its first annotated frame{where}"
                report.missing.append((first, what))
