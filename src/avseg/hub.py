"""Sharing models on the Hugging Face Hub: a Hub model repository is an avseg checkpoint folder plus a model card.

A repository holds exactly what :func:`avseg.checkpoint.save_checkpoint` writes for a model, and a card::

    org/name/
      config.json          family, preset, the model config and what training recorded (``meta``)
      model.safetensors    the weights (no pickle)
      README.md            the model card: YAML header (license, tags, library_name, pipeline_tag) and a body

so :func:`from_pretrained` is "download the snapshot, then :func:`avseg.models.load_model`", and any command that
takes ``--checkpoint`` (``avseg eval``, ``avseg predict``) also takes a Hub id:
:func:`avseg.checkpoint.resolve_checkpoint` turns a path that does not exist locally and reads ``org/name`` into the
downloaded snapshot. Only ``config.json``,
``model.safetensors`` and ``README.md`` are ever downloaded or uploaded; optimizer state (``training_state.pt``, a
pickle) never leaves the machine and is never fetched.

Downloads go through ``huggingface_hub`` and its cache (``HF_HOME``, ``HF_HUB_CACHE``); with ``HF_HUB_OFFLINE=1`` a
repository is read from that cache only.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from avseg.checkpoint import (
    CARD_FILE,
    CONFIG_FILE,
    HUB_FILES,
    WEIGHTS_FILE,
    HubError,
    HubNotFoundError,
    hub_checkpoint,
    is_hub_id,
    read_checkpoint_config,
    resolve_checkpoint,
    save_checkpoint,
)
from avseg.errors import MissingFileError, UsageError
from avseg.fileio import atomic_write_text
from avseg.optional import require

if TYPE_CHECKING:
    from avseg.models.base import AVSModel

__all__ = [
    "CARD_FILE",
    "HUB_FILES",
    "HubError",
    "HubNotFoundError",
    "from_pretrained",
    "hub_checkpoint",
    "is_hub_id",
    "model_card",
    "push_to_hub",
    "save_pretrained",
]

# The Hub has no audio-visual or video segmentation task; frames in, one mask per frame out is image segmentation.
_PIPELINE_TAG = "image-segmentation"
_TASK_TAGS = {
    "s4": "audio-visual-segmentation",
    "ms3": "audio-visual-segmentation",
    "avss": "audio-visual-semantic-segmentation",
    "refavs": "referring-audio-visual-segmentation",
    "rvos": "referring-video-object-segmentation",
    "vos": "video-object-segmentation",
}
_TASK_NAMES = {
    "s4": "AVSBench S4 (single sound source)",
    "ms3": "AVSBench MS3 (multiple sound sources)",
    "avss": "AVSBench-semantic (71 classes)",
    "refavs": "Ref-AVSBench (referring audio-visual segmentation)",
    "rvos": "referring video object segmentation",
    "vos": "semi-supervised video object segmentation (DAVIS 2017 protocol)",
}


def from_pretrained(
    source: str | Path,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
    pointer: str = "latest",
) -> AVSModel:
    """A model from the Hugging Face Hub (``"org/name"``) or from a local folder (a Hub-layout folder written by
    :func:`save_pretrained`, any avseg checkpoint folder, or a training run folder), with its weights loaded strictly
    from safetensors.

    A local path that exists wins over a Hub id of the same spelling.

    Args:
        source: a Hub model id or a local folder.
        revision: Hub branch, tag or commit (Hub ids only).
        cache_dir: Hugging Face cache folder (Hub ids only).
        token: Hub token (Hub ids only).
        pointer: for a training run folder, the checkpoint to load (``latest`` or ``best``).

    Example:
        >>> from avseg.models import from_pretrained  # doctest: +SKIP
        >>> model = from_pretrained("org/tpavi-tiny-synthav")  # doctest: +SKIP
    """
    from avseg.models.registry import load_model

    path = Path(source)
    if not path.exists() and is_hub_id(source):
        path = hub_checkpoint(str(source), revision=revision, cache_dir=cache_dir, token=token)
    return load_model(path, pointer=pointer)


def save_pretrained(
    model: AVSModel,
    folder: str | Path,
    *,
    license: str = "unknown",
    meta: Mapping[str, Any] | None = None,
    results: str | Path | None = None,
    repo_id: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` as a Hub-layout folder: an avseg checkpoint (``config.json``, ``model.safetensors``) and its
    model card (``README.md``, :func:`model_card`).

    Args:
        model: the model.
        folder: destination folder (refused if it exists, unless ``overwrite``).
        license: the license of the weights, as a Hub license id (``apache-2.0``, ``mit``, ``cc-by-nc-4.0``, ...).
            ``unknown`` by default: weights trained on a dataset, or converted from the authors' release, carry their
            terms, which avseg cannot know.
        meta: facts recorded in the checkpoint (``data``, ``metrics``, ... as ``avseg train`` writes them).
        results: an ``avseg eval --json-out`` file whose per-split scores and protocol go into the card.
        repo_id: the Hub id the card's loading examples use (default: the folder's name under ``org/``).
        overwrite: replace an existing folder.

    Returns:
        ``folder``.
    """
    folder = save_checkpoint(folder, model, preset=model.preset, meta=dict(meta or {}), overwrite=overwrite)
    card = model_card(
        read_checkpoint_config(folder), repo_id=repo_id or f"org/{folder.name}", license=license, results=results
    )
    atomic_write_text(folder / CARD_FILE, card)
    return folder


def push_to_hub(
    source: AVSModel | str | Path,
    repo_id: str,
    *,
    license: str = "unknown",
    results: str | Path | None = None,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    pointer: str = "best",
) -> str:
    """Upload a model, or a checkpoint folder, to the Hugging Face Hub model repository ``repo_id`` (created if it
    does not exist): ``config.json``, ``model.safetensors`` and a generated ``README.md`` model card. A checkpoint's
    training state (optimizer, RNG: a pickle) is never uploaded.

    Args:
        source: an :class:`~avseg.models.base.AVSModel`, an avseg checkpoint folder, or a training run folder (its
            ``pointer`` checkpoint; its recorded training data and validation scores go into the card).
        repo_id: ``org/name`` on the Hub.
        license: the weights' license as a Hub license id (see :func:`save_pretrained`).
        results: an ``avseg eval --json-out`` file whose per-split scores and protocol go into the card.
        private: create the repository private (None: the Hub's default); an existing repository keeps its setting.
        token: a Hub token with write access (default: the logged-in one, ``HF_TOKEN``).
        revision: the branch to commit to (default: main).
        commit_message: the commit message (default: ``Upload <preset> with avseg <version>``).
        pointer: for a training run folder, ``best`` (falling back to ``latest``) or ``latest``.

    Returns:
        the URL of the commit.

    Raises:
        UsageError: ``repo_id`` is not ``org/name``.
        HubError: the Hub refused the repository or the upload (the message names ``repo_id``).
    """
    from avseg import __version__

    if not is_hub_id(repo_id):
        raise UsageError(f"repo_id {repo_id!r}: a Hub model id is 'org/name' (letters, digits, '-', '_', '.')")
    hub = require("huggingface_hub", "uploading a model to the Hugging Face Hub")
    from huggingface_hub import errors

    with tempfile.TemporaryDirectory(prefix="avseg-hub-") as tmp:
        staging = Path(tmp) / "repo"
        if isinstance(source, (str, Path)):
            folder = resolve_checkpoint(source, pointer, fallback="latest" if pointer == "best" else None)
            staging.mkdir()
            for name in (CONFIG_FILE, WEIGHTS_FILE):
                if not (folder / name).is_file():
                    raise MissingFileError(folder / name, "checkpoint file")
                shutil.copyfile(folder / name, staging / name)
            card = model_card(read_checkpoint_config(folder), repo_id=repo_id, license=license, results=results)
            atomic_write_text(staging / CARD_FILE, card)
        else:
            save_pretrained(source, staging, license=license, results=results, repo_id=repo_id)
        stored = read_checkpoint_config(staging)
        preset = stored.get("preset") or stored["family"]
        api = hub.HfApi(token=token)
        try:
            api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
            commit = api.upload_folder(
                repo_id=repo_id,
                repo_type="model",
                folder_path=staging,
                revision=revision,
                allow_patterns=list(HUB_FILES),
                commit_message=commit_message or f"Upload {preset} with avseg {__version__}",
            )
        except (errors.HfHubHTTPError, errors.LocalTokenNotFoundError, errors.OfflineModeIsEnabled) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise HubError(f"{repo_id}: upload to the Hugging Face Hub failed: {reason}") from err
    return str(commit)


# --------------------------------------------------------------------------------------------------------------------
# The model card


def model_card(
    description: Mapping[str, Any], *, repo_id: str, license: str = "unknown", results: str | Path | None = None
) -> str:
    """The ``README.md`` of a Hub repository: a YAML header the Hub reads (``license``, ``library_name: avseg``,
    ``pipeline_tag``, ``tags``) and a body giving the preset, the tasks, the training data and the recorded scores
    with the protocol they were measured under, and how to load the model.

    Args:
        description: a checkpoint's parsed ``config.json`` (:func:`avseg.checkpoint.read_checkpoint_config`).
        repo_id: the Hub id used in the loading examples.
        license: the weights' license (Hub license id).
        results: an ``avseg eval --json-out`` file to report beside the validation scores the checkpoint records.
    """
    from avseg.models.registry import get_entry, list_models

    family = str(description["family"])
    preset = description.get("preset")
    meta = description.get("meta") or {}
    entry = get_entry(preset) if preset in list_models() else None
    tasks = list(entry.tasks) if entry is not None else []
    tags = [
        "avseg",
        family,
        *([preset] if preset else []),
        *dict.fromkeys(_TASK_TAGS[t] for t in tasks if t in _TASK_TAGS),
    ]
    header = {"license": license, "library_name": "avseg", "pipeline_tag": _PIPELINE_TAG, "tags": tags}
    lines = ["---", yaml.safe_dump(header, sort_keys=False).strip(), "---", "", f"# {repo_id}", ""]
    built = f"preset `{preset}`" if preset else "a config of its own (no registered preset)"
    lines += [
        f"An [avseg](https://github.com/avseg/avseg) model of the **{family}** family, {built}, stored as an avseg "
        f"checkpoint: `{CONFIG_FILE}` (architecture, config and what training recorded) and `{WEIGHTS_FILE}` (the "
        f"weights). Written by avseg {description.get('avseg_version', '?')}.",
        "",
    ]
    if entry is not None and entry.description:
        lines += [f"Preset: {entry.description}", ""]
    lines += ["## Task", ""]
    if tasks:
        lines += [f"- `{t}`: {_TASK_NAMES.get(t, t)}" for t in tasks] + [""]
    else:
        lines += ["Not recorded (the preset is not registered in this avseg).", ""]
    lines += ["## Training data", "", *_training_lines(meta), "", "## Metrics", "", *_metric_lines(meta, results), ""]
    lines += [
        "## How to load",
        "",
        "```python",
        "from avseg.models import from_pretrained",
        "",
        f'model = from_pretrained("{repo_id}")  # weights from safetensors, loaded strictly',
        "```",
        "",
        "```bash",
        f"avseg eval --checkpoint {repo_id} --data DATA --format FORMAT --split SPLIT",
        f"avseg predict VIDEO --checkpoint {repo_id} --out overlay.mp4",
        "```",
        "",
        f"- License of the weights: `{license}`.",
    ]
    return "\n".join(lines) + "\n"


def _training_lines(meta: Mapping[str, Any]) -> list[str]:
    data = meta.get("data") or {}
    lines = []
    if isinstance(data, Mapping) and data.get("format"):
        size = data.get("image_size")
        size_text = f"{size[0]}x{size[1]}" if isinstance(size, list) else f"{size}x{size}" if size else "as stored"
        lines.append(
            f"- Dataset format `{data['format']}`, frames read at {size_text} px"
            + (f", {data['num_frames']} frames per clip" if data.get("num_frames") else "")
            + "."
        )
    if meta.get("step") is not None:
        epoch = f" (epoch {meta['epoch']})" if meta.get("epoch") is not None else ""
        seed = f", seed {meta['seed']}" if meta.get("seed") is not None else ""
        lines.append(f"- Trained with `avseg train` for {meta['step']} steps{epoch}{seed}.")
    if meta.get("converted_from"):
        lines.append(f"- Converted from the authors' release `{Path(str(meta['converted_from'])).name}`.")
    return lines or ["Not recorded in the checkpoint."]


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "—"


def _metric_lines(meta: Mapping[str, Any], results: str | Path | None) -> list[str]:
    """A table of J, F and J&F (or mIoU) per recorded evaluation, each row naming its protocol."""
    rows = []
    metrics = meta.get("metrics")
    if isinstance(metrics, Mapping) and metrics:
        data = meta.get("data") or {}
        fmt = data.get("format") if isinstance(data, Mapping) else None
        protocol = "`avseg train` validation"
        if fmt:
            from avseg.data.benchmarks import FORMAT_READERS, default_metric_preset

            if fmt in FORMAT_READERS:
                protocol += f": metric preset `{default_metric_preset(fmt)}` of the `{fmt}` format, its own grouping"
        step = f" at step {meta['step']}" if meta.get("step") is not None else ""
        rows.append((f"{meta.get('val_split') or 'validation'}{step}", metrics, protocol))
    if results is not None:
        rows += _result_rows(Path(results))
    if not rows:
        return ["No evaluation results are recorded with these weights."]
    keys = [k for k in ("J", "F", "J&F", "mIoU", "S") if any(k in m for _, m, _ in rows)]
    lines = ["| split | " + " | ".join(keys) + " | protocol |", "|---|" + "---|" * len(keys) + "---|"]
    for split, values, protocol in rows:
        lines.append(f"| {split} | " + " | ".join(_fmt(values.get(k)) for k in keys) + f" | {protocol} |")
    return lines


def _result_rows(path: Path) -> list[tuple[str, Mapping[str, Any], str]]:
    """Per split of an ``avseg eval --json-out`` file: its summary and the protocol it records."""
    from avseg.errors import MetadataError

    if not path.is_file():
        raise MissingFileError(path, "evaluation results (avseg eval --json-out)")
    try:
        splits = json.loads(path.read_text())["splits"]
        rows = []
        for name, split in splits.items():
            settings = split.get("settings") or {}
            proto = settings.get("protocol") or {}
            described = (
                f"`avseg eval --protocol {proto.get('kind', '?')}`: preset `{proto.get('preset')}`, "
                f"grouping `{proto.get('group')}`"
            )
            if proto.get("kind") == "official" and proto.get("name"):
                described += f" ({proto['name']})"
            if settings.get("data"):
                described += f", data `{Path(str(settings['data'])).name}` ({settings.get('format')})"
            rows.append((str(name), split["summary"], described))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
        raise MetadataError(path, f"not an avseg eval --json-out file: {err!r}") from err
    return rows
