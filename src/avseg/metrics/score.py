"""``avseg score``: score saved predictions against ground truth with a named metric preset.

Inputs are two ``.npz`` archives. The prediction file holds ``logits``: float ``(N, T, H, W)`` mask logits, or
``(N, T, K, H, W)`` class logits for the semantic presets; every value must be finite (a NaN or ±inf is refused with
its position, as thresholding would silently score it as background). The ground-truth file holds ``masks``: uint8
(or bool) ``(N, T, H, W)`` binary masks (0/1 or 0/255) for the binary presets, class labels for the semantic ones,
and optionally ``valid`` (bool ``(N, T)``, False for padded frames) and ``ids`` (``N`` strings). The ``N``
videos/expressions are scored in the order stored, which matters for a ``batch:K`` grouping.

The ground truth is the file's: a preset's ``gt_source`` (native or input size) says which masks evaluation reads, and
here the user chooses by what they save. Logits must have the masks' size unless the preset resizes both
(``refavs``: 256, ``avss``: 224). The ``avss`` preset zeroes the logits of frames whose ``valid`` is False, as the
official models do.
"""

import json as _json
import math
import zipfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from avseg.errors import MetadataError, MissingFileError, ShapeError
from avseg.metrics.accumulator import MetricAccumulator
from avseg.metrics.presets import get_preset, parse_group

__all__ = ["load_npz_arrays", "score"]

_CHUNK = 16  # videos per update: bounds memory; the grouping does not depend on it


_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip's first local file header, or an empty zip's end record
_NPY_MAGIC = b"\x93NUMPY"


def _not_npz_reason(path: Path) -> str | None:
    """Why ``path`` is not an ``.npz`` archive, judged from its first bytes; None when it starts like a zip file."""
    with open(path, "rb") as handle:
        head = handle.read(6)
    if not head:
        return "is empty, not an .npz archive"
    if head.startswith(_NPY_MAGIC):
        return "holds a single .npy array, not an .npz archive with named arrays (save it with np.savez)"
    if head[:4] not in _ZIP_MAGIC:
        return "is not an .npz archive (an .npz is a zip file of .npy arrays; this file is not a zip file)"
    return None


def _holds_objects(archive: np.lib.npyio.NpzFile, key: str) -> bool:
    """Whether the member ``key`` is an object (pickled) array, read from its .npy header alone."""
    try:
        with archive.zip.open(f"{key}.npy") as member:
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                _, _, dtype = np.lib.format.read_array_header_1_0(member)
            else:
                _, _, dtype = np.lib.format.read_array_header_2_0(member)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return False
    return bool(dtype.hasobject)


def load_npz_arrays(path: Path, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Read named arrays from an ``.npz`` archive without unpickling anything.

    Args:
        path: the archive.
        required: keys that must be present.
        optional: keys read when present.

    Returns:
        ``{key: array}`` for the required keys and the optional keys found.

    Raises:
        MissingFileError: ``path`` does not exist.
        MetadataError: not an ``.npz`` archive (not a zip file, or a single ``.npy``), a corrupt archive, a required
            key is missing, or an array holds Python objects (which only pickle could read).
    """
    path = Path(path)
    if path.is_dir():
        raise MetadataError(path, "is a folder, not an .npz archive")
    if not path.is_file():
        raise MissingFileError(path, "npz archive")
    reason = _not_npz_reason(path)
    if reason is not None:
        raise MetadataError(path, reason)
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise MetadataError(path, f"corrupt .npz archive: {err}") from err
    with archive:
        keys = set(archive.files)
        missing = [key for key in required if key not in keys]
        if missing:
            raise MetadataError(path, f"missing key {missing[0]!r} (keys present: {sorted(keys) or 'none'})")
        out = {}
        for key in (*required, *(k for k in optional if k in keys)):
            try:
                out[key] = archive[key]
            except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
                if _holds_objects(archive, key):
                    # numpy's own message suggests allow_pickle=True; avseg never unpickles an input.
                    raise MetadataError(
                        path,
                        f"key {key!r} holds Python objects (dtype=object), which only pickle could read; avseg does "
                        "not unpickle inputs: save it as a numeric array (e.g. np.asarray(x, dtype=np.float32))",
                    ) from None
                raise MetadataError(path, f"key {key!r} is corrupt: {err}") from err
    return out


def _validate(
    pred_path: Path, gt_path: Path, logits: np.ndarray, masks: np.ndarray, semantic: bool, resize: int | None
) -> None:
    if not np.issubdtype(logits.dtype, np.floating):
        raise ShapeError(f"{pred_path}: key 'logits' must be a float array, got dtype {logits.dtype}")
    want = 5 if semantic else 4
    axes = "(N, T, K, H, W)" if semantic else "(N, T, H, W)"
    if logits.ndim != want:
        raise ShapeError(f"{pred_path}: key 'logits' must have shape {axes} for this preset, got {logits.shape}")
    if masks.dtype not in (np.uint8, np.bool_):
        raise ShapeError(f"{gt_path}: key 'masks' must be uint8 (or bool), got dtype {masks.dtype}")
    if masks.ndim != 4:
        raise ShapeError(f"{gt_path}: key 'masks' must have shape (N, T, H, W), got {masks.shape}")
    if logits.shape[:2] != masks.shape[:2]:
        raise ShapeError(
            f"{pred_path} key 'logits' {logits.shape} and {gt_path} key 'masks' {masks.shape} disagree on (N, T)"
        )
    if resize is None and logits.shape[-2:] != masks.shape[-2:]:
        # Evaluation resizes a model's logits to the ground truth; saved predictions are expected at the size of
        # the masks saved beside them, so a mismatch here is more likely a mix-up of files than a choice.
        raise ShapeError(
            f"{pred_path} key 'logits' is {logits.shape[-2:]} pixels but {gt_path} key 'masks' is "
            f"{masks.shape[-2:]}; this preset scores at the resolution given by the ground truth, so save the logits "
            "at the masks' size"
        )


def _where(index: tuple[int, ...], semantic: bool, ids: np.ndarray | None) -> str:
    """Name an element of an ``(N, T, [K,] H, W)`` array the way a user looks for it: video (and id), frame, pixel."""
    n, t, y, x = index[0], index[1], index[-2], index[-1]
    video = f"video {n}" + (f" (id {str(ids[n])!r})" if ids is not None else "")
    klass = f", class {index[2]}" if semantic else ""
    return f"index {index}: {video}, frame {t}{klass}, pixel (y={y}, x={x})"


def _check_finite(path: Path, logits: np.ndarray, semantic: bool, ids: np.ndarray | None) -> None:
    """Refuse NaN and ±inf logits: thresholding them scores NaN as background, which looks like a real result."""
    bad, first = 0, None
    for start in range(0, logits.shape[0], _CHUNK):  # chunked: a mask the size of every logit would double memory
        chunk = ~np.isfinite(logits[start : start + _CHUNK])
        count = int(np.count_nonzero(chunk))
        if count and first is None:
            at = np.argwhere(chunk)[0]
            first = (int(at[0]) + start, *(int(i) for i in at[1:]))
        bad += count
    if bad:
        value = logits[first]
        raise ShapeError(
            f"{path}: key 'logits' has {bad} non-finite value(s) (NaN or ±inf) out of {logits.size}; the first is "
            f"{value} at {_where(first, semantic, ids)}. Scores of such predictions would be meaningless; check the "
            "model output before saving it"
        )


def _check_binary(path: Path, masks: np.ndarray, preset: str, ids: np.ndarray | None) -> None:
    """Refuse values other than 0, 1 (and 255) in binary ground truth: class-label maps would be scored as ``> 0``."""
    if masks.dtype == np.bool_:
        return
    bad, first = 0, None
    for start in range(0, masks.shape[0], _CHUNK):
        chunk = masks[start : start + _CHUNK]
        other = (chunk != 0) & (chunk != 1) & (chunk != 255)
        count = int(np.count_nonzero(other))
        if count and first is None:
            at = np.argwhere(other)[0]
            first = (int(at[0]) + start, *(int(i) for i in at[1:]))
        bad += count
    if bad:
        raise ShapeError(
            f"{path}: key 'masks' must be binary (0 and 1, or 0 and 255) for preset {preset!r}, but {bad} "
            f"value(s) are neither; the first is {int(masks[first])} at {_where(first, False, ids)}. Class-label "
            "masks need a semantic preset (avss, avss_corrected)"
        )


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _jsonable(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.6f}"


def _summary_lines(result: dict[str, Any], show_s: bool) -> list[str]:
    st = result["settings"]
    counts = result["counts"]
    lines = []
    if st["task"] == "semantic":
        padded = "dropped"
        if st["include_invalid_frames"]:
            padded = "scored(logits zeroed)" if st["zero_padded_logits"] else "scored"
        resize = f" resize={st['resize']}(gt {st['gt_resize_mode']}, logits bilinear)" if st["resize"] else ""
        lines.append(
            f"preset={st['preset']} group={st['group']} resolution={st['resolution']}{resize} "
            f"threshold=argmax(softmax) F=per_class(beta2={st['beta2']}) padded_frames={padded}"
            f" unseen_classes={st['unseen_classes']} no_bg_index={st['no_bg_index']}"
        )
        lines.append(
            f"videos={counts['videos']} frames={counts['frames']} scored_frames={counts['scored_frames']} "
            f"classes_seen={counts['classes_seen']}/{counts['classes']}"
        )
        lines += [f"J    {_fmt(result['J'])}", f"F    {_fmt(result['F'])}", f"J&F  {_fmt(result['J&F'])}"]
        lines.append(f"mIoU_noBg {_fmt(result['miou_no_bg'])}  F_noBg {_fmt(result['fscore_no_bg'])}")
        other = "corrected" if st["preset"] != "avss_corrected" else "official"
        lines.append(f"{other}: mIoU {_fmt(result[other]['miou'])}  F {_fmt(result[other]['fscore'])}")
        return lines
    f_desc = (
        f"beta_sweep_max(beta2={st['beta2']}, {st['num_thresholds']} thresholds)"
        if st["f_mode"] == "beta_sweep_max"
        else f"boundary(bound_th={st['bound_th']})"
    )
    resize = f" resize={st['resize']}(gt {st['gt_resize_mode']}, logits bilinear)" if st["resize"] else ""
    lines.append(
        f"preset={st['preset']} group={st['group']} resolution={st['resolution']}{resize} "
        f"threshold={st['threshold']} empty_gt={st['empty_gt']} F={f_desc}"
    )
    lines.append(
        f"videos={counts['videos']} groups={counts['groups']} frames={counts['frames']} "
        f"empty_gt_frames={counts['empty_gt_frames']}"
    )
    lines += [f"J    {_fmt(result['J'])}", f"F    {_fmt(result['F'])}", f"J&F  {_fmt(result['J&F'])}"]
    if show_s:
        reduction = "pooled over the split" if st["null_s_reduction"] == "pooled" else "mean over groups"
        lines.append(f"S    {_fmt(result['S'])}  ({st['null_s']} at s_threshold={st['s_threshold']}, {reduction})")
    lines.append(
        f"batch-independent: miou_per_frame={_fmt(result['miou_per_frame'])} "
        f"miou_dataset={_fmt(result['miou_dataset'])} F@{st['fixed_threshold']} per_frame="
        f"{_fmt(result['F_fixed_per_frame'])} dataset={_fmt(result['F_fixed_dataset'])}"
    )
    return lines


def score(
    *,
    pred: Path,
    gt: Path,
    preset: str = "avsbench",
    group: Optional[str] = None,  # noqa: UP045 (the CLI builder reads typing.Optional)
    json: bool = False,
    null: bool = False,
) -> int:
    """Score saved predictions (.npz) against ground truth (.npz) with a benchmark's official metric preset.

    Args:
        pred: .npz with key ``logits``: finite float (N, T, H, W) mask logits, or (N, T, K, H, W) class logits for
            avss.
        gt: .npz with key ``masks``: uint8 (N, T, H, W) binary masks (0/1 or 0/255) or class labels; optional
            ``valid`` bool (N, T) (False = padded frame) and ``ids`` (N,) strings.
        preset: metric preset: avsbench, refavs, avss, avss_corrected, davis, simtoken_compat or auralsam2_compat.
        group: evaluation grouping: video, expression, batch:K or ddp:R:K (default: the preset's own).
        json: print the full result (per-video values, settings) as JSON instead of the summary.
        null: also print the null-split S (printed anyway when every ground-truth frame is empty).

    Returns:
        0 on success.
    """
    metric = get_preset(preset)
    grouping = parse_group(group) if group is not None else None
    pred, gt = Path(pred), Path(gt)
    semantic = metric.task == "semantic"
    logits = load_npz_arrays(pred, ("logits",))["logits"]
    truth = load_npz_arrays(gt, ("masks",), ("valid", "ids"))
    masks = truth["masks"]
    _validate(pred, gt, logits, masks, semantic, metric.resize)
    n, t = masks.shape[:2]
    valid = truth.get("valid")
    if valid is not None and (valid.dtype != np.bool_ or valid.shape != (n, t)):
        raise ShapeError(f"{gt}: key 'valid' must be a bool array of shape {(n, t)}, got {valid.dtype} {valid.shape}")
    ids = truth.get("ids")
    if ids is not None and (ids.dtype.kind not in "U" or ids.shape != (n,)):
        raise ShapeError(f"{gt}: key 'ids' must be {n} strings, got dtype {ids.dtype} shape {ids.shape}")
    _check_finite(pred, logits, semantic, ids)
    if not semantic:
        _check_binary(gt, masks, metric.name, ids)
    acc = MetricAccumulator(metric, group=grouping)
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        acc.update(
            torch.from_numpy(np.ascontiguousarray(logits[start:stop])),
            torch.from_numpy(np.ascontiguousarray(masks[start:stop])),
            valid=None if valid is None else torch.from_numpy(valid[start:stop].copy()),
            ids=None if ids is None else [str(x) for x in ids[start:stop]],
        )
    result = acc.compute()
    if json:
        print(_json.dumps(_jsonable(result), indent=2))
    else:
        show_s = not semantic and (null or result["counts"]["empty_gt_frames"] == result["counts"]["frames"])
        print("\n".join(_summary_lines(result, show_s)))
    return 0
