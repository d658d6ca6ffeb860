"""Self-describing, strictly loaded, atomically written checkpoints.

A checkpoint is a folder::

    ckpt/
      config.json          {"format": 1, "avseg_version": ..., "family": "tpavi", "preset": "tpavi-tiny",
                            "config": {...the model config...}, "meta": {...}}
      model.safetensors    the model weights (no pickle)
      training_state.pt    optional: optimizer/scheduler/step/RNG state, read with torch.load(weights_only=True)

It is written into a temporary sibling folder and renamed into place, so a crash never leaves a half-written
checkpoint under the final name. Weights load strictly: missing and unexpected keys are reported in one error that
names the checkpoint. A training run folder holds many checkpoints plus ``latest.json`` / ``best.json`` pointers
(see :func:`write_pointer`); every function here accepts such a run folder and follows ``latest.json``.

This module reads and writes files and knows no model class: :func:`avseg.models.load_model` rebuilds a model from
``config.json`` alone, so a checkpoint needs no side files.

Wherever a checkpoint is expected, a *SAM2 weights folder* is accepted too: transformers' ``Sam2VideoModel`` format
(``config.json`` with ``model_type`` ``sam2_video``), as ``avseg convert sam2`` writes it, Meta's Hub repositories
(``facebook/sam2.1-hiera-large``) hold it, and the packaged ``avseg:sam2-tiny-synthav`` is
(:func:`sam2_weights_config`); :func:`avseg.models.load_model` builds the matching ``sam2-*`` preset on it, ready to
track without training.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from avseg import __version__
from avseg.assets import ASSET_PREFIX, asset_path
from avseg.config import config_to_dict
from avseg.errors import AVSegError, AVSegWarning, CheckpointError, MetadataError, MissingFileError, UsageError
from avseg.fileio import atomic_dir, atomic_write_text, current_umask
from avseg.optional import require

__all__ = [
    "CARD_FILE",
    "HUB_FILES",
    "CheckpointError",
    "CheckpointExistsError",
    "CheckpointPointerWarning",
    "HubError",
    "HubNotFoundError",
    "NotACheckpointError",
    "TrainingData",
    "has_pointer",
    "hub_checkpoint",
    "is_hub_id",
    "load_training_state",
    "load_weights",
    "read_checkpoint_config",
    "read_training_data",
    "resolve_checkpoint",
    "sam2_weights_config",
    "save_checkpoint",
    "write_pointer",
]

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "training_state.pt"


class NotACheckpointError(CheckpointError, MissingFileError):
    """A path that exists but is not a checkpoint folder or training run (no ``config.json``, no pointer), or a
    pointer naming a folder that is not a checkpoint. Also a :class:`~avseg.errors.MissingFileError`: the files
    that make a checkpoint are missing."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        AVSegError.__init__(self, f"{self.path}: {reason}")


class CheckpointPointerWarning(AVSegWarning):
    """A run folder lacked the pointer asked for (``best.json``) and another one (``latest.json``) was used."""


class CheckpointExistsError(UsageError, FileExistsError):
    """``save_checkpoint`` was asked to write over an existing path without ``overwrite=True``."""


def write_pointer(run_dir: str | Path, name: str, target: str | Path, info: dict[str, Any] | None = None) -> None:
    """Atomically point ``run_dir/{name}.json`` (e.g. ``latest``, ``best``) at a checkpoint folder inside it."""
    run_dir = Path(run_dir)
    payload = {"checkpoint": Path(target).name, **(info or {})}
    atomic_write_text(run_dir / f"{name}.json", json.dumps(payload, indent=2))


def has_pointer(folder: Path, pointer: str) -> bool:
    """Whether the run folder ``folder`` has a ``pointer`` (``"best"``/``"latest"``) file, at its top or in
    ``checkpoints/``."""
    return (folder / f"{pointer}.json").is_file() or (folder / "checkpoints" / f"{pointer}.json").is_file()


def _pointers(folder: Path) -> list[str]:
    """Names of the pointer files (``*.json`` other than ``config.json``) in ``folder`` and ``folder/checkpoints``."""
    found = []
    for where in (folder, folder / "checkpoints"):
        if where.is_dir():
            found += [str(p.relative_to(folder)) for p in sorted(where.glob("*.json")) if p.name != CONFIG_FILE]
    return found


# -- Hugging Face Hub ids (avseg.hub shares models; resolving an id to its downloaded snapshot lives here, where every
# --checkpoint is resolved) -----------------------------------------------------------------------------------------

CARD_FILE = "README.md"
HUB_FILES = (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE)
"""The files a Hub repository of an avseg model holds; nothing else is downloaded or uploaded."""

# The Hub's repository-name rule: letters, digits, '-', '_', '.', no '--' or '..', not starting or ending with '-'/'.'.
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_HUB_ID = re.compile(rf"^{_NAME}/{_NAME}$")


class HubError(AVSegError):
    """A Hugging Face Hub repository that cannot be read or written (gated, no avseg model in it, upload refused);
    the message names the repository."""


class HubNotFoundError(HubError, MissingFileError):
    """A Hub id that cannot be found: not in the local cache while ``HF_HUB_OFFLINE`` is set, or no such repository
    (or revision) on the Hub. Also a :class:`~avseg.errors.MissingFileError`, like a local checkpoint folder that does
    not exist."""

    def __init__(self, repo_id: str, reason: str) -> None:
        self.path = Path(repo_id)
        AVSegError.__init__(self, f"{repo_id}: {reason}")


def is_hub_id(source: str | Path) -> bool:
    """Whether ``source`` reads as a Hub model id ``org/name`` (two path components, the Hub's name rules). Callers
    try the local path first: a folder ``org/name`` that exists is always the local one."""
    text = source.as_posix() if isinstance(source, Path) else str(source)
    return bool(_HUB_ID.match(text)) and ".." not in text and "--" not in text


def _offline() -> bool:
    from huggingface_hub import constants

    # huggingface_hub reads HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) once, when it is imported: ask it, not os.environ.
    return bool(constants.HF_HUB_OFFLINE)


def hub_checkpoint(
    repo_id: str, *, revision: str | None = None, cache_dir: str | Path | None = None, token: str | bool | None = None
) -> Path:
    """The local snapshot of the Hub model ``repo_id`` (downloaded into the Hugging Face cache unless it is there):
    a checkpoint folder for :func:`avseg.models.load_model`.

    Only ``config.json``, ``model.safetensors`` and ``README.md`` are fetched, whatever else the repository holds.

    Args:
        repo_id: ``org/name``.
        revision: a branch, tag or commit (default: the main branch).
        cache_dir: the cache folder (default: huggingface_hub's, ``HF_HUB_CACHE``).
        token: a Hub token for private or gated repositories (default: the logged-in one, ``HF_TOKEN``).

    Raises:
        HubNotFoundError: not cached while ``HF_HUB_OFFLINE`` is set, or no such repository or revision.
        HubError: the repository is gated, cannot be reached, or holds no avseg model.
    """
    hub = require("huggingface_hub", "loading a model from the Hugging Face Hub")
    from huggingface_hub import errors

    at = f" (revision {revision})" if revision else ""
    try:
        folder = hub.snapshot_download(
            repo_id,
            repo_type="model",
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            allow_patterns=list(HUB_FILES),
            library_name="avseg",
        )
    except errors.GatedRepoError as err:
        raise HubError(
            f"{repo_id}: gated repository{at}; accept its terms on the Hub and log in (hf auth login)"
        ) from err
    except errors.RepositoryNotFoundError as err:
        raise HubNotFoundError(
            repo_id,
            "neither a local checkpoint folder nor a model repository on the Hugging Face Hub (a private one needs a "
            "token: hf auth login, or HF_TOKEN)",
        ) from err
    except errors.RevisionNotFoundError as err:
        raise HubNotFoundError(repo_id, f"the Hugging Face Hub repository has no revision {revision!r}") from err
    except errors.LocalEntryNotFoundError as err:
        if _offline():
            raise HubNotFoundError(
                repo_id,
                f"neither a local checkpoint folder nor a Hugging Face Hub model in the local cache{at}, and "
                "HF_HUB_OFFLINE is set, so it cannot be downloaded (unset HF_HUB_OFFLINE to download it)",
            ) from err
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise HubError(
            f"{repo_id}: cannot download from the Hugging Face Hub and not in the local cache ({reason})"
        ) from err
    except errors.HfHubHTTPError as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise HubError(f"{repo_id}: the Hugging Face Hub refused the download{at}: {reason}") from err
    folder = Path(folder)
    missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if not (folder / name).is_file()]
    if missing:
        raise HubError(f"{repo_id}: the Hub repository{at} holds no avseg model (no {' and no '.join(missing)})")
    return folder


def resolve_checkpoint(path: str | Path, pointer: str = "latest", *, fallback: str | None = None) -> Path:
    """The checkpoint folder for ``path``: itself if it holds ``config.json``, else the one ``{pointer}.json`` names
    (in ``path`` or, for a training run folder, in ``path/checkpoints``).

    With ``fallback`` (e.g. ``pointer="best", fallback="latest"``: a run trained without validation has no
    ``best.json``), a missing ``{pointer}.json`` is replaced by ``{fallback}.json`` with a
    :class:`CheckpointPointerWarning`. ``avseg eval`` and ``avseg predict`` both resolve this way.

    A ``path`` that does not exist locally and reads ``org/name`` is a Hugging Face Hub model id: its snapshot is
    downloaded (or read from the cache) and returned (:func:`hub_checkpoint`). ``avseg:<name>`` is a packaged asset's
    folder (:mod:`avseg.assets`).

    Raises:
        MissingFileError: ``path`` does not exist (for a Hub id: :class:`HubNotFoundError`, not in the cache
            while ``HF_HUB_OFFLINE`` is set, or no such repository).
        HubError: a Hub id whose repository cannot be read or holds no avseg model.
        NotACheckpointError: ``path`` exists but is a file, or a folder with neither ``config.json`` nor
            ``{pointer}.json``, or the pointer names a folder that is not a checkpoint.
        MetadataError: the pointer file is not valid JSON naming a checkpoint.
    """
    if str(path).startswith(ASSET_PREFIX):
        name = str(path)
        path = asset_path(name.removeprefix(ASSET_PREFIX))
        if sam2_weights_config(path) is None:  # the packaged encoders: parts of a model, not one
            raise NotACheckpointError(
                path,
                f"{name} is a packaged encoder, not a model to run; name it in a model's config (see its ASSET.md)",
            )
    path = Path(path)
    if (path / CONFIG_FILE).is_file():
        return path
    if not path.exists():
        if is_hub_id(path):
            return resolve_checkpoint(hub_checkpoint(path.as_posix()), pointer, fallback=fallback)
        raise MissingFileError(path, "checkpoint")
    if not path.is_dir():
        hint = f"; give its folder {path.parent}" if path.name in (CONFIG_FILE, WEIGHTS_FILE, STATE_FILE) else ""
        raise NotACheckpointError(path, f"is a file, not a checkpoint folder or training run{hint}")
    run = path
    if not (path / f"{pointer}.json").is_file() and (path / "checkpoints" / f"{pointer}.json").is_file():
        path = path / "checkpoints"
    pointer_file = path / f"{pointer}.json"
    if pointer_file.is_file():
        try:
            name = json.loads(pointer_file.read_text())["checkpoint"]
            target = path / name
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise MetadataError(pointer_file, f"malformed checkpoint pointer: {err}") from err
        if not target.is_dir():
            raise NotACheckpointError(pointer_file, f"names checkpoint {name!r}, but {target} does not exist")
        if not (target / CONFIG_FILE).is_file():
            raise NotACheckpointError(
                target, f"is not a checkpoint folder (no {CONFIG_FILE}), yet {pointer_file} points at it"
            )
        return target
    if fallback is not None and fallback != pointer and has_pointer(run, fallback):
        warnings.warn(f"{run}: has no {pointer}.json; using {fallback}.json", CheckpointPointerWarning, stacklevel=2)
        return resolve_checkpoint(run, fallback)
    others = _pointers(run)
    listed = f" (pointers present: {', '.join(others)})" if others else ""
    raise NotACheckpointError(
        run, f"is not a checkpoint folder or training run: no {CONFIG_FILE} and no {pointer}.json{listed}"
    )


@dataclass(frozen=True)
class TrainingData:
    """What a checkpoint's model was trained on, as its trainer recorded it; None where it says nothing.

    Attributes:
        format: the dataset format (``refavs``, ``avs-object``, ``avss``, ``rvos``).
        image_size: the size frames were read at: an int for a square, ``(h, w)`` otherwise.
        num_frames: frames per training clip.
        fps: frames sampled per second of video.
    """

    format: str | None = None
    image_size: int | tuple[int, int] | None = None
    num_frames: int | None = None
    fps: float | None = None


SAM2_MODEL_TYPES = ("sam2_video", "sam2")
"""``model_type`` of a transformers SAM2 ``config.json`` (video model, image model)."""


def sam2_weights_config(folder: str | Path) -> dict[str, Any] | None:
    """The transformers config of a SAM2 weights folder, or None when ``folder`` is something else.

    A SAM2 weights folder holds ``config.json`` with a SAM2 ``model_type`` and no avseg ``family``, and
    ``model.safetensors``; ``avseg convert sam2`` adds ``conversion.json`` (source, variant, preset).
    """
    file = Path(folder) / CONFIG_FILE
    if not file.is_file() or not (Path(folder) / WEIGHTS_FILE).is_file():
        return None
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, OSError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or "family" in data or data.get("model_type") not in SAM2_MODEL_TYPES:
        return None
    return data


def read_training_data(checkpoint: str | Path) -> TrainingData:
    """What the checkpoint at ``checkpoint`` (a checkpoint folder, or a run folder: its latest) was trained on.

    Reads ``meta.data`` of its ``config.json``; the format falls back to ``meta.data_format``. A key of the wrong type
    raises :class:`~avseg.errors.MetadataError` naming the file and the key. A SAM2 weights folder
    (:func:`sam2_weights_config`) records nothing but its task, ``vos``.
    """
    folder = resolve_checkpoint(checkpoint)
    if sam2_weights_config(folder) is not None:
        return TrainingData(format="vos")
    meta = read_checkpoint_config(folder).get("meta") or {}
    data = meta.get("data") or {}
    file = folder / CONFIG_FILE
    if not isinstance(data, dict):
        raise MetadataError(file, f"meta.data must be an object, got {data!r}")
    fmt = data.get("format", meta.get("data_format"))
    if fmt is not None and not isinstance(fmt, str):
        raise MetadataError(file, f"meta.data.format must be a string, got {fmt!r}")
    return TrainingData(
        format=fmt,
        image_size=_recorded_size(data, file),
        num_frames=_recorded(data, "num_frames", int, file),
        fps=_recorded(data, "fps", float, file),
    )


def _recorded_size(data: dict[str, Any], file: Path) -> int | tuple[int, int] | None:
    """``meta.data.image_size``: a positive int, or ``[h, w]`` for frames that were not square."""
    value = data.get("image_size")
    if isinstance(value, list | tuple) and len(value) == 2:
        h, w = (_recorded({"image_size": v}, "image_size", int, file) for v in value)
        return (h, w) if h != w else h
    return _recorded(data, "image_size", int, file)


def _recorded(data: dict[str, Any], key: str, kind: type, file: Path) -> Any:
    value = data.get(key)
    if value is None:
        return None
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not (math.isfinite(value) and value > 0) or (kind is int and value != int(value)):
        raise MetadataError(file, f"meta.data.{key} must be a positive {kind.__name__} or null, got {value!r}")
    return kind(value)


def _tensors_for_saving(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU contiguous tensors; tensors sharing storage (tied weights) are cloned, as safetensors refuses aliases."""
    out, seen = {}, set()
    for key, value in state.items():
        t = value.detach().to("cpu").contiguous()
        ptr = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)) if t.numel() else None
        if ptr is not None and ptr in seen:
            t = t.clone()
        elif ptr is not None:
            seen.add(ptr)
        out[key] = t
    return out


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    *,
    preset: str | None = None,
    training_state: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` (an :class:`~avseg.models.base.AVSModel`) as a checkpoint folder at ``path``, atomically.

    Args:
        path: destination folder.
        model: the model; its ``config`` and ``family`` are stored so :func:`load_model` can rebuild it.
        preset: registry name the model was built from (informational).
        training_state: optimizer/scheduler/step/RNG state (tensors, numbers, strings, lists, dicts only).
        meta: extra JSON-serialisable facts (metrics, data, seed).
        overwrite: replace an existing checkpoint at ``path`` (the old one is removed only after the new one is in
            place).

    Returns:
        ``path``. The folder and its files get the modes the umask gives (0755 and 0644 under umask 022).

    Raises:
        CheckpointExistsError: ``path`` exists and ``overwrite`` is False (a ``UsageError`` and a
            ``FileExistsError``, naming the path).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        what = "a checkpoint" if (path / CONFIG_FILE).is_file() else "a file or folder"
        raise CheckpointExistsError(f"{path}: {what} already exists there (pass overwrite=True to replace it)")
    family = getattr(model, "family", None)
    config = getattr(model, "config", None)
    if family is None or config is None:
        raise TypeError(f"save_checkpoint needs an AVSModel with .family and .config, got {type(model).__name__}")
    # atomic_dir writes into a temporary sibling and swaps it in (the old folder goes only once the new one is in
    # place), with the modes the umask asks for: mkdtemp alone would leave a 0700 folder of 0600 files.
    with atomic_dir(path, overwrite=overwrite) as tmp:
        save_file(_tensors_for_saving(model.state_dict()), str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        if training_state is not None:
            torch.save(training_state, tmp / STATE_FILE)
        description = {
            "format": FORMAT_VERSION,
            "avseg_version": __version__,
            "family": family,
            "preset": preset,
            "config": config_to_dict(config),
            "meta": meta or {},
        }
        (tmp / CONFIG_FILE).write_text(json.dumps(description, indent=2))
        # safetensors writes its file 0600 whatever the umask; give every file the mode open() would.
        mode = 0o666 & ~current_umask()
        for file in tmp.iterdir():
            os.chmod(file, mode)
    return path


def read_checkpoint_config(path: str | Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a checkpoint (or of the latest one in a run folder)."""
    folder = resolve_checkpoint(path)
    file = folder / CONFIG_FILE
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise MetadataError(file, f"malformed checkpoint config: {err}") from err
    for key in ("family", "config"):
        if key not in data:
            raise MetadataError(file, f"checkpoint config lacks {key!r}")
    if int(data.get("format", 0)) > FORMAT_VERSION:
        raise CheckpointError(file, f"checkpoint format {data['format']} is newer than this avseg ({__version__})")
    return data


def load_weights(model: nn.Module, path: str | Path, *, strict: bool = True) -> nn.Module:
    """Load a checkpoint's weights into ``model``; with ``strict`` any missing/unexpected key or shape mismatch raises
    :class:`CheckpointError` listing them and naming the file."""
    folder = resolve_checkpoint(path)
    file = folder / WEIGHTS_FILE
    if not file.is_file():
        raise MissingFileError(file, "checkpoint weights")
    try:
        state = load_file(str(file), device="cpu")
    except (SafetensorError, OSError) as err:
        raise CheckpointError(file, f"cannot read weights: {err}") from err
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if strict and (missing or unexpected or mismatched):
        parts = []
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("shape-mismatched", mismatched)):
            if keys:
                shown = ", ".join(keys[:10]) + (f", ... ({len(keys)} in all)" if len(keys) > 10 else "")
                parts.append(f"{title} keys: {shown}")
        raise CheckpointError(file, f"weights do not fit {type(model).__name__}: " + "; ".join(parts))
    state = {k: v for k, v in state.items() if k in own and k not in mismatched}
    model.load_state_dict(state, strict=strict)
    return model


def load_training_state(path: str | Path) -> dict[str, Any] | None:
    """The training state of a checkpoint (``None`` if it has none), loaded with ``weights_only=True``."""
    file = resolve_checkpoint(path) / STATE_FILE
    if not file.is_file():
        return None
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types; none may execute code with weights_only
        raise CheckpointError(file, f"cannot read training state: {_load_failure(file, err)}") from err


def _load_failure(file: Path, err: BaseException) -> str:
    """avseg's one-line reason for a failed ``torch.load(weights_only=True)`` of ``file``.

    torch's own text goes on for lines and advises ``weights_only=False``, which would run the file's pickled code;
    checkpoints must load without that, so only what is wrong with the file is reported.
    """
    try:
        with open(file, "rb") as handle:
            head = handle.read(4)
    except OSError as open_err:
        return f"cannot open it ({open_err.strerror or open_err})"
    if not head.startswith(b"PK") and not head.startswith(b"\x80"):  # a zip archive, or a legacy pickle
        return "not a PyTorch file (torch.save writes a zip archive; this file is not one)"
    text = str(err)
    refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if refused:
        return (
            f"it pickles {refused.group(1)}, which is not plain data (tensors, numbers, strings, lists, dicts); "
            "avseg does not run pickled code, so this file cannot be loaded"
        )
    detail = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    if detail:
        return f"not a plain-data PyTorch file ({detail.group(1).strip()})"
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return f"not a readable PyTorch file ({first})"
