"""The model registry: named presets → configs → models.

Each model file registers its presets at the bottom with :func:`register_model`: a function returning the preset's
config. ``create_model("tpavi-tiny", **overrides)`` builds the config, applies overrides (dotted keys; a ``None``
value sets the field to None, e.g. ``{"text.encoder": None}`` removes the text branch), and instantiates the model
class. The registry dicts are
the only module-level mutable state; they are filled when the model modules are imported and never changed
afterwards. Importing this module imports the ``avseg.models`` package first (Python imports a package before its
modules), and the package's ``__init__`` imports every model file, so the registry is always complete.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from avseg.checkpoint import (
    CONFIG_FILE,
    load_weights,
    read_checkpoint_config,
    resolve_checkpoint,
    sam2_weights_config,
)
from avseg.config import apply_overrides, config_from_dict
from avseg.data.benchmarks import BENCHMARKS
from avseg.errors import MetadataError

if TYPE_CHECKING:  # the contract is only named here: models.base reaches avseg.hub, which reads this registry
    from avseg.models.base import AVSModel

__all__ = [
    "ModelEntry",
    "create_model",
    "get_entry",
    "list_models",
    "load_model",
    "model_class",
    "register_model",
    "register_sam2_weights_builder",
]


@dataclass(frozen=True)
class ModelEntry:
    """A registered preset."""

    name: str
    model_cls: type[AVSModel]
    config_fn: Callable[[], Any]
    tasks: tuple[str, ...]
    description: str

    def config(self, **overrides: Any) -> Any:
        """The preset's config with dotted-key overrides applied (every value, None included, is applied)."""
        cfg = self.config_fn()
        return apply_overrides(cfg, overrides) if overrides else cfg


_PRESETS: dict[str, ModelEntry] = {}
_FAMILIES: dict[str, type[AVSModel]] = {}
_SAM2_WEIGHTS_BUILDERS: list[Callable[[Path, str], AVSModel]] = []


def register_sam2_weights_builder(build: Callable[[Path, str], AVSModel]) -> Callable[[Path, str], AVSModel]:
    """Decorator registering how :func:`load_model` builds a model on a SAM2 weights folder
    (:func:`avseg.checkpoint.sam2_weights_config`): ``build(folder, source)``, ``source`` as the user gave it.
    ``avseg.models.sam2_vos`` registers the one there is."""
    if _SAM2_WEIGHTS_BUILDERS:
        raise ValueError("a SAM2 weights builder is already registered")
    _SAM2_WEIGHTS_BUILDERS.append(build)
    return build


def register_model(
    name: str, model_cls: type[AVSModel], *, tasks: tuple[str, ...], description: str = ""
) -> Callable[[Callable[[], Any]], Callable[[], Any]]:
    """Decorator registering a preset: ``@register_model("tpavi-tiny", TPAVI, tasks=("s4", "ms3", "refavs"))``; the
    tasks are benchmark names of :data:`avseg.data.benchmarks.BENCHMARKS`."""

    unknown = sorted(set(tasks) - set(BENCHMARKS))
    if unknown:
        raise ValueError(f"model preset {name!r}: unknown tasks {unknown}; tasks are benchmarks: {sorted(BENCHMARKS)}")

    def decorate(config_fn: Callable[[], Any]) -> Callable[[], Any]:
        if name in _PRESETS:
            raise ValueError(f"model preset {name!r} registered twice")
        doc = description or (config_fn.__doc__ or "").strip().split("\n")[0]
        _PRESETS[name] = ModelEntry(name, model_cls, config_fn, tasks, doc)
        _FAMILIES.setdefault(model_cls.family, model_cls)
        return config_fn

    return decorate


def get_entry(name: str) -> ModelEntry:
    if name not in _PRESETS:
        raise ValueError(f"unknown model {name!r}; registered: {sorted(_PRESETS)}")
    return _PRESETS[name]


def model_class(family: str) -> type[AVSModel]:
    """The model class of an architecture family (as stored in checkpoints)."""
    if family not in _FAMILIES:
        raise ValueError(f"unknown model family {family!r}; registered: {sorted(_FAMILIES)}")
    return _FAMILIES[family]


def list_models(pattern: str = "*") -> list[str]:
    """Registered preset names matching a glob pattern, sorted."""
    return sorted(n for n in _PRESETS if fnmatch.fnmatch(n, pattern))


def create_model(name: str, checkpoint: str | None = None, **overrides: Any) -> AVSModel:
    """Build a registered model with random (or preset-declared pretrained) weights, optionally from a checkpoint.

    Args:
        name: preset name (see :func:`list_models`).
        checkpoint: an avseg checkpoint whose weights are loaded strictly (its config must match the preset's
            architecture; use :func:`load_model` to rebuild a model from the checkpoint alone).
        **overrides: dotted config keys, e.g. ``num_classes=71`` or ``**{"decoder.dim": 64}``.
    """
    entry = get_entry(name)
    model = entry.model_cls(entry.config(**overrides))
    model.preset, model.tasks = name, entry.tasks
    if checkpoint is not None:
        load_weights(model, checkpoint)
    return model


def load_model(path: str | Path, *, pointer: str = "latest", fallback: str | None = None) -> AVSModel:
    """Rebuild a model from a checkpoint alone (family and config from its ``config.json``), weights loaded strictly.

    A SAM2 weights folder (a folder ``avseg convert sam2`` wrote, Meta's Hub repository such as
    ``facebook/sam2.1-hiera-large``, or the packaged ``avseg:sam2-tiny-synthav``) gives the ``sam2-*`` preset of its
    shape with those weights, ready to track objects from prompts.

    Args:
        path: a checkpoint folder, or a training run folder (then ``{pointer}.json`` names the checkpoint), a Hub id,
            ``avseg:<asset>``, or a SAM2 weights folder.
        pointer: ``latest`` or ``best``.
        fallback: the pointer to use when ``pointer`` is missing (see :func:`avseg.checkpoint.resolve_checkpoint`).
    """
    folder = resolve_checkpoint(path, pointer, fallback=fallback)
    if _SAM2_WEIGHTS_BUILDERS and sam2_weights_config(folder) is not None:
        return _SAM2_WEIGHTS_BUILDERS[0](folder, str(path))
    data = read_checkpoint_config(folder)
    cls = model_class(data["family"])
    try:
        config = config_from_dict(cls.config_class, cls.upgrade_config(data["config"]))
    except ValueError as err:
        raise MetadataError(folder / CONFIG_FILE, f"config does not fit {cls.__name__}: {err}") from err
    model = cls(config)
    load_weights(model, folder)
    model.preset = data.get("preset")
    model.tasks = _PRESETS[model.preset].tasks if model.preset in _PRESETS else ()
    return model
