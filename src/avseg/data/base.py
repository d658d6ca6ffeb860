"""The layers shared by every benchmark reader: index records, decoding helpers, the reader base class, the check
report, and a torch ``Dataset`` over a reader.

A reader works in three layers:

1. **Index**: :meth:`BenchmarkReader.index` parses the metadata of one split into :class:`ClipRecord` objects (paths
   only; nothing is decoded). Metadata quirks are handled here, with a :class:`~avseg.errors.DatasetWarning`.
2. **Decoding**: :meth:`BenchmarkReader.load` turns a record into an :class:`~avseg.data.types.AVSSample` with the
   helpers below (frames, masks, audio), resizing to ``image_size`` when asked. Masks are decoded once, at the size
   stored on disk, by the benchmark's official rule (:func:`stack_native_masks`); ``masks`` is that ground truth
   brought to the frame size, and a reader built with ``native_masks=True`` also returns it untouched as
   ``native_masks``, for metrics that score at the official resolution.
3. **Checking**: :meth:`BenchmarkReader.check` walks every record of every split and reports counts and the files
   that are missing or unreadable, so that users learn what is wrong with their copy of a dataset.

Roots are always passed in; no reader knows a default path.
"""

from __future__ import annotations

import csv
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from avseg.data.types import AUDIO_SAMPLE_RATE, AVSSample
from avseg.errors import AudioPaddedWarning, AVSegError, DatasetWarning, MetadataError, MissingFileError, UsageError
from avseg.media.image import read_mask, read_rgb

__all__ = [
    "AVSDataset",
    "BenchmarkReader",
    "CheckReport",
    "ClipRecord",
    "EmptyDatasetError",
    "SplitCounts",
    "load_audio_features",
    "load_frames",
    "resize_frames",
    "resize_masks",
    "sample_from_record",
    "stack_native_masks",
    "to_size",
]

ImageSize = int | tuple[int, int] | None


class EmptyDatasetError(MetadataError):
    """A dataset tree whose metadata yields no split, or no sample in any split.

    Attributes:
        root: the dataset folder.
        path: the metadata file the splits are read from (or, for layouts with one file per split, its pattern).
    """

    def __init__(self, root: str | Path, metadata: str | Path, message: str) -> None:
        self.root = Path(root)
        self.path = Path(metadata)
        self.reason = message
        AVSegError.__init__(self, message)


class _MissingPath(MissingFileError):
    """A :class:`MissingFileError` with a full message of its own, for a path that is missing for a reason the
    default ``"<what> not found"`` would misstate."""

    def __init__(self, path: str | Path, message: str) -> None:
        self.path = Path(path)
        super(MissingFileError, self).__init__(message)


def to_size(image_size: ImageSize) -> tuple[int, int] | None:
    """Normalise an ``image_size`` argument (an int means a square) to ``(H, W)`` or None."""
    if image_size is None:
        return None
    if isinstance(image_size, int):
        size = (image_size, image_size)
    else:
        size = tuple(int(v) for v in image_size)
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"image_size must be a positive int or (H, W), got {image_size!r}")
    return size  # type: ignore[return-value]


@dataclass(frozen=True)
class ClipRecord:
    """One indexed clip or expression: what to read, nothing decoded.

    Attributes:
        dataset: reader format (``refavs``, ``avs-object``, ``avss``, ``rvos``).
        split: split name as written in the metadata.
        video_id: the clip's id.
        frame_paths: one path per real frame, in temporal order.
        mask_refs: one entry per real frame: a mask path, a reader-specific key (RVOS RLE), or None when the frame has
            no label (an unlabelled frame, or every frame of a null expression whose masks are known to be empty).
        audio_path: the soundtrack file, or None when the benchmark has no audio (RVOS).
        num_frames: clip length after padding (AVSS pads v1 clips to 10); ``>= len(frame_paths)``.
        uid, text, object_id: expression fields for referring tasks.
        is_null: a Ref-AVS null expression (its target is absent; ground truth is all zeros).
        modalities: cues the expression needs, when the metadata says (SynthAV).
        extra: reader-specific values (category, label set, RLE keys, ...).
    """

    dataset: str
    split: str
    video_id: str
    frame_paths: tuple[Path, ...]
    mask_refs: tuple[Any, ...]
    audio_path: Path | None
    num_frames: int
    uid: str | None = None
    text: str | None = None
    object_id: str | None = None
    is_null: bool = False
    modalities: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def labelled(self) -> tuple[bool, ...]:
        """Per real frame: does it carry ground truth? Null expressions count as labelled (their GT is empty)."""
        return tuple(self.is_null or ref is not None for ref in self.mask_refs)

    def files(self) -> list[tuple[Path, str]]:
        """Every file this record needs, with what it is (``frame``, ``mask``, ``audio``), for the checker."""
        out = [(p, "frame") for p in self.frame_paths]
        out += [(m, "mask") for m in self.mask_refs if isinstance(m, Path)]
        if self.audio_path is not None:
            out.append((self.audio_path, "audio"))
        return out


def resize_frames(frames: Tensor, size: tuple[int, int] | None) -> Tensor:
    """Bilinear (antialiased) resize of ``uint8`` ``(T, 3, H, W)`` frames to ``size``; None keeps them."""
    if size is None or tuple(frames.shape[-2:]) == size:
        return frames
    out = F.interpolate(frames.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    return out.round().clamp(0, 255).to(torch.uint8)


def resize_masks(masks: Tensor, size: tuple[int, int] | None) -> Tensor:
    """Nearest-neighbour resize of ``uint8`` ``(T, H, W)`` masks (class indices survive); None keeps them."""
    if size is None or tuple(masks.shape[-2:]) == size:
        return masks
    return F.interpolate(masks[:, None].float(), size=size, mode="nearest-exact")[:, 0].to(torch.uint8)


def load_frames(paths: Sequence[Path]) -> Tensor:
    """Decode frames to ``uint8`` ``(T, 3, H, W)``; all must share one size (else a ShapeError naming the file)."""
    arrays = [read_rgb(p) for p in paths]
    first = arrays[0].shape
    for p, a in zip(paths, arrays):
        if a.shape != first:
            from avseg.errors import CorruptMediaError

            raise CorruptMediaError(p, f"frame size {a.shape[:2]} differs from the clip's first frame {first[:2]}")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def load_binary_masks(refs: Sequence[Path | None], size_hw: tuple[int, int], num_frames: int) -> Tensor:
    """Read binary masks (pixel > 0 is foreground) to ``uint8`` ``(num_frames, H, W)``; None refs give zeros."""
    masks = torch.zeros((num_frames, *size_hw), dtype=torch.uint8)
    for i, ref in enumerate(refs):
        if ref is None:
            continue
        m = read_mask(ref)
        if m.shape != size_hw:
            # Masks stored at another resolution than the frames: bring them to the frame grid, nearest.
            m = resize_masks(torch.from_numpy(m)[None], size_hw)[0].numpy()
        masks[i] = torch.from_numpy((m > 0).astype(np.uint8))
    return masks


def stack_native_masks(
    masks: Sequence[np.ndarray | None],
    num_frames: int,
    *,
    default_size: tuple[int, int],
    sources: Sequence[object] | None = None,
) -> Tensor:
    """Stack per-frame ground truth decoded at the size stored on disk into one clip tensor.

    The clip's grid is the size of its first decoded mask (``default_size``, normally the frames' size on disk, when
    no frame has one). A mask of another size than that first one is brought to it (nearest) with a
    :class:`~avseg.errors.DatasetWarning` naming it, since one tensor cannot hold two resolutions.

    Args:
        masks: one entry per real frame: ``uint8`` ``(H0, W0)`` labels (0/1 or class indices), or None for a frame
            without ground truth.
        num_frames: ``T``; frames past ``len(masks)`` (padding) are zeros.
        default_size: ``(H0, W0)`` when no frame has a mask.
        sources: per frame, what the mask was read from (a path, an RLE key), for the warning.

    Returns:
        ``uint8`` ``(T, H0, W0)``; frames without a mask hold zeros.
    """
    decoded = [(i, m) for i, m in enumerate(masks) if m is not None]
    size = tuple(decoded[0][1].shape) if decoded else tuple(default_size)
    out = torch.zeros((num_frames, *size), dtype=torch.uint8)
    for i, m in decoded:
        tensor = torch.from_numpy(np.ascontiguousarray(m, dtype=np.uint8))
        if tuple(tensor.shape) != size:
            where = sources[i] if sources is not None else f"frame {i}"
            warnings.warn(
                f"{where}: mask size {tuple(tensor.shape)} differs from {size}, the size of the clip's first mask; "
                "it was resized (nearest) to that size",
                DatasetWarning,
                stacklevel=3,
            )
            tensor = resize_masks(tensor[None], size)[0]  # type: ignore[arg-type]
        out[i] = tensor
    return out


def load_audio_features(
    audio_path: Path | None,
    num_frames: int,
    *,
    seconds_per_frame: float = 1.0,
    pad_mode: str = "repeat_last",
    valid_frames: int | None = None,
) -> tuple[Tensor, Tensor, bool]:
    """Read a clip's soundtrack and compute its VGGish log-mel examples, one per frame.

    Args:
        audio_path: wav (or any container) path; None means the benchmark has no audio (silence, no warning).
        num_frames: ``T``, the number of examples to return.
        seconds_per_frame: clip seconds per frame (1 at the usual 1 frame/s).
        pad_mode: ``repeat_last`` (AVSBench preprocessing) or ``zero`` (AVSS) for clips shorter than ``T`` examples.
        valid_frames: number of real frames (AVSS pads clips to 10); examples beyond it are zeroed, as AVSS
            multiplies audio features by the real-frame flags.

    Returns:
        ``audio_wave`` float32 ``(N,)`` at 16 kHz, ``audio_examples`` float32 ``(T, 1, 96, 64)``, and whether audio
        was present.
    """
    from avseg.audio.logmel import pad_or_trim_examples, waveform_to_examples
    from avseg.media.audio import fit_audio_length, read_audio

    real = num_frames if valid_frames is None else valid_frames
    expected = round(real * seconds_per_frame * AUDIO_SAMPLE_RATE)
    if audio_path is None:
        wave = np.zeros(expected, dtype=np.float32)
        raw = wave
        has_audio = False
    else:
        if not Path(audio_path).is_file():
            raise MissingFileError(audio_path, "audio")
        raw, _ = read_audio(audio_path, AUDIO_SAMPLE_RATE)
        raw = raw[:expected]
        wave = fit_audio_length(raw, expected, source=audio_path, sample_rate=AUDIO_SAMPLE_RATE)
        has_audio = True
    wave_t = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    with warnings.catch_warnings():
        # An all-silent clip (no audio) legitimately has examples; only genuinely short audio should warn.
        if not has_audio:
            warnings.simplefilter("ignore", AudioPaddedWarning)
        # Examples come from the unpadded wave: AVSBench repeats the last real example (repeat_last) and AVSS appends
        # zero examples (zero); computing them on the silence-padded wave would give neither.
        examples = waveform_to_examples(np.ascontiguousarray(raw, dtype=np.float32), AUDIO_SAMPLE_RATE)
        examples = pad_or_trim_examples(examples, real, mode=pad_mode)  # type: ignore[arg-type]
    if real < num_frames:
        examples = torch.cat([examples, examples.new_zeros((num_frames - real, *examples.shape[1:]))])
    return wave_t, examples.float(), has_audio


def sample_from_record(record: ClipRecord, **fields: Any) -> AVSSample:
    """An :class:`AVSSample` whose identifiers (video id, split, dataset, text, uid, object id, null flag, modalities)
    come from ``record``; ``fields`` gives the decoded tensors and anything else (and may override an identifier)."""
    ids = {
        "video_id": record.video_id,
        "split": record.split,
        "dataset": record.dataset,
        "text": record.text,
        "uid": record.uid,
        "object_id": record.object_id,
        "is_null": record.is_null,
        "modalities": record.modalities,
    }
    return AVSSample(**{**ids, **fields})


@dataclass
class SplitCounts:
    """Per-split counts printed by ``avseg data check``."""

    videos: int = 0
    items: int = 0
    """Expressions (Ref-AVS, RVOS) or clips (AVSBench)."""
    null_items: int = 0
    labelled_frames: int = 0


@dataclass
class CheckReport:
    """What :meth:`BenchmarkReader.check` found: counts per split and problems with their paths."""

    root: Path
    format: str
    item_name: str
    splits: dict[str, SplitCounts] = field(default_factory=dict)
    missing: list[tuple[Path, str]] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unreadable

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "format": self.format,
            "item_name": self.item_name,
            "ok": self.ok,
            "splits": {k: vars(v) for k, v in self.splits.items()},
            "missing": [{"path": str(p), "what": w} for p, w in self.missing],
            "unreadable": [{"path": str(p), "reason": r} for p, r in self.unreadable],
            "notes": list(self.notes),
        }


def _probe_file(path: Path, what: str, deep: bool) -> str | None:
    """None if the file looks usable, else the reason. Images are opened (header only unless ``deep``)."""
    if path.suffix.lower() in (".jpg", ".jpeg", ".png"):
        try:
            with Image.open(path) as im:
                if deep:
                    im.load()
                else:
                    im.verify()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            return f"cannot decode {what}: {err}"
        return None
    if path.stat().st_size == 0:
        return f"empty {what} file"
    if deep and what == "audio":
        from avseg.media.audio import read_audio

        try:
            read_audio(path, AUDIO_SAMPLE_RATE)
        except AVSegError as err:
            return str(err).removeprefix(f"{path}: ")
    return None


class BenchmarkReader(ABC):
    """Base class of the benchmark readers. Subclasses implement :meth:`splits`, :meth:`index` and :meth:`load`.

    Args:
        root: the dataset folder (layout per benchmark, see each reader's docstring).
        image_size: resize frames and masks to this size (int = square); None keeps the size on disk.
        native_masks: also return each sample's ground truth at the resolution stored on disk, read by the
            benchmark's official rule, as ``AVSSample.native_masks`` ``uint8`` ``(T, H0, W0)`` (zeros on unlabelled
            and padded frames). Off by default: it costs one more tensor per sample and is needed only to score at
            the official resolution.
    """

    format: ClassVar[str]
    item_name: ClassVar[str] = "expressions"

    def __init__(self, root: str | Path, *, image_size: ImageSize = None, native_masks: bool = False) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise UsageError(f"{self.root}: is a file, not a {self.format} dataset folder")
        if not self.root.is_dir():
            raise MissingFileError(self.root, f"{self.format} dataset root folder")
        self.image_size = to_size(image_size)
        if not isinstance(native_masks, bool):
            raise UsageError(f"native_masks must be True or False, got {native_masks!r}")
        self.native_masks = native_masks

    def splits(self) -> list[str]:
        """Split names present in the metadata, in a stable order."""
        return list(self._parse())

    def index(self, split: str) -> list[ClipRecord]:
        """Records of one split (raises ValueError naming the known splits for an unknown one)."""
        records = self._parse()
        if split not in records:
            raise self._unknown_split(split)
        return list(records[split])

    def _parse(self) -> dict[str, list[ClipRecord]]:
        """Every split's records, parsed once and cached by the subclass. Readers that index splits lazily override
        :meth:`splits` and :meth:`index` instead."""
        raise NotImplementedError(f"{type(self).__name__} must implement _parse() or override splits() and index()")

    @abstractmethod
    def load(self, record: ClipRecord) -> AVSSample:
        """Decode one record."""

    def dataset(self, split: str, transform: Callable[[AVSSample], AVSSample] | None = None) -> AVSDataset:
        """A torch ``Dataset`` over one split."""
        return AVSDataset(self, self.index(split), transform=transform)

    def metadata_source(self) -> str:
        """The metadata file the splits are read from (a pattern for layouts with one file per split), for
        messages."""
        return str(self.root)

    def _why_empty(self) -> str:
        """Why the metadata yields no sample, in words about the file (readers that can tell say more)."""
        return f"it lists no {self.item_name}"

    def empty_error(self, split: str | None = None) -> EmptyDatasetError:
        """The error for a tree whose metadata yields no sample: names the root, the metadata file and why.

        Args:
            split: the split that was asked for, if any (the message then starts with it).
        """
        source, why = self.metadata_source(), self._why_empty()
        if split is None:
            message = f"{self.root}: empty {self.format} dataset: {source} yields no {self.item_name} ({why})"
        else:
            message = f"split {split!r} not in {source} (no splits found: {why})"
        return EmptyDatasetError(self.root, source, message)

    def _unknown_split(self, split: str) -> ValueError:
        known = self.splits()
        if not known:
            return self.empty_error(split)
        return UsageError(f"unknown split {split!r} in {self.metadata_source()}; known splits: {known}")

    def check(self, *, deep: bool = False, progress: Callable[[Iterable], Iterable] | None = None) -> CheckReport:
        """Index every split and look for missing or unreadable files.

        Args:
            deep: fully decode every image and audio file (slow); otherwise images are verified from their headers
                and other files must exist and be non-empty.
            progress: optional wrapper around the record iterator (e.g. ``tqdm``).
        """
        report = CheckReport(root=self.root, format=self.format, item_name=self.item_name)
        seen: set[Path] = set()
        for split in self.splits():
            records = self.index(split)
            counts = SplitCounts(videos=len({r.video_id for r in records}), items=len(records))
            counts.null_items = sum(r.is_null for r in records)
            counts.labelled_frames = sum(sum(r.labelled) for r in records)
            report.splits[split] = counts
            for record in progress(records) if progress else records:
                for path, what in record.files():
                    if path in seen:
                        continue
                    seen.add(path)
                    if not path.is_file():
                        report.missing.append((path, what))
                        continue
                    reason = _probe_file(path, what, deep)
                    if reason is not None:
                        report.unreadable.append((path, reason))
        return report


def read_metadata_csv(path: Path, required: Sequence[str]) -> list[tuple[int, dict[str, str]]]:
    """Read a metadata CSV with a header row into ``(row number, {column: value})`` pairs.

    Row numbers count data rows from 1 (the header is row 0), the way a spreadsheet user would count them after the
    header. Blank lines are skipped (pandas skips them too). Extra columns are kept in the dicts and ignored by the
    callers.

    Args:
        path: the CSV file (UTF-8, an optional BOM is accepted).
        required: columns that must be in the header.

    Raises:
        MissingFileError: the file does not exist.
        MetadataError: not UTF-8 text, no header, a required column is missing, or a row has a different number of
            fields than the header (the message names the row and its line).
    """
    if path.is_dir():
        raise MetadataError(path, "is a folder, not a metadata CSV file")
    if not path.is_file():
        raise MissingFileError(path, "metadata CSV")
    rows: list[tuple[int, dict[str, str]]] = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise MetadataError(path, "empty file (no header row)")
            header = [h.strip() for h in header]
            missing = [c for c in required if c not in header]
            if missing:
                raise MetadataError(path, f"missing column(s) {missing}; header is {header}")
            number = 0
            for fields in reader:
                if not fields or all(not v.strip() for v in fields):
                    continue
                number += 1
                if len(fields) != len(header):
                    raise MetadataError(
                        path,
                        f"row {number} (line {reader.line_num}): expected {len(header)} fields as in the header, "
                        f"got {len(fields)}",
                    )
                rows.append((number, dict(zip(header, fields))))
    except UnicodeDecodeError as err:
        raise MetadataError(path, f"not UTF-8 text: {err}") from err
    except csv.Error as err:
        raise MetadataError(path, f"malformed CSV: {err}") from err
    return rows


class MetadataCSVReader(BenchmarkReader):
    """A reader whose splits all come from one ``root/metadata.csv`` (Ref-AVS, AVSBench-semantic): the path, the
    parsed-records cache and the empty-file diagnosis live here; subclasses parse the rows (``_parse``)."""

    required_columns: ClassVar[tuple[str, ...]] = ()

    def __init__(self, root: str | Path, *, image_size: ImageSize = None, native_masks: bool = False) -> None:
        super().__init__(root, image_size=image_size, native_masks=native_masks)
        self.metadata_path = self.root / "metadata.csv"
        self._records: dict[str, list[Any]] | None = None

    def metadata_source(self) -> str:
        """``root/metadata.csv``, the file every split is read from."""
        return str(self.metadata_path)

    def metadata_rows(self) -> list[tuple[int, dict[str, str]]]:
        """The rows of ``metadata.csv`` (:func:`read_metadata_csv` with :attr:`required_columns`)."""
        return read_metadata_csv(self.metadata_path, self.required_columns)

    def _why_empty(self) -> str:
        rows = self.metadata_rows()
        if not rows:
            return "the file has a header but no rows"
        return self._why_rows_yield_nothing(rows)

    def _why_rows_yield_nothing(self, rows: list[tuple[int, dict[str, str]]]) -> str:
        """Why rows that exist give no sample (the reader's filter); the default says nothing more."""
        return super()._why_empty()


class AVSDataset(torch.utils.data.Dataset):
    """A map-style dataset over indexed records; decoding happens in ``__getitem__`` (worker processes)."""

    def __init__(
        self,
        reader: BenchmarkReader,
        records: Sequence[ClipRecord],
        transform: Callable[[AVSSample], AVSSample] | None = None,
    ) -> None:
        self.reader = reader
        self.records = list(records)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> AVSSample:
        sample = self.reader.load(self.records[i])
        return self.transform(sample) if self.transform is not None else sample
