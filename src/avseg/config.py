"""Typed dataclass configs: to and from plain dicts, YAML/JSON files, and dotted command-line overrides.

Model and training configs are nested dataclasses (``TPAVIConfig(backbone=BackboneConfig(...), ...)``) whose
``__post_init__`` validates early. This module turns them into plain dicts (for checkpoints and YAML files) and back,
strictly: an unknown key is an error naming the key, never silently ignored, so that a typo in a config file or an
override (``decoder.dim=64``) cannot go unnoticed.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

__all__ = [
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "load_config_file",
    "parse_overrides",
    "save_config_file",
]

C = TypeVar("C")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass config as a JSON/YAML-serialisable dict (tuples become lists, Paths strings)."""
    if not dataclasses.is_dataclass(cfg):
        raise TypeError(f"expected a dataclass config, got {type(cfg).__name__}")

    def convert(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: convert(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [convert(v) for v in value]
        if isinstance(value, dict):
            return {str(k): convert(v) for k, v in value.items()}
        if isinstance(value, Path):
            return str(value)
        return value

    return convert(cfg)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Convert a plain value to the annotated type ``tp`` (dataclasses recursively), or raise ValueError."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, where)
            except (TypeError, ValueError) as err:
                errors.append(str(err))
        raise ValueError(f"{where}: {value!r} matches none of {tp}: {'; '.join(errors)}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ValueError(f"{where}: {value!r} is not one of {list(get_args(tp))}")
        return value
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return config_from_dict(tp, value, _where=where)
    if origin in (tuple, list, Sequence):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ValueError(f"{where}: expected {len(args)} items, got {len(value)}")
            items = [_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value))]
        else:
            inner = args[0] if args else Any
            items = [_coerce(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is Path:
        return Path(value)
    return value


def config_from_dict(cls: type[C], data: Mapping[str, Any], *, _where: str = "") -> C:
    """Build the dataclass ``cls`` from a dict, recursively and strictly (unknown keys raise ValueError)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - known)
    if unknown:
        prefix = f"{_where}." if _where else ""
        raise ValueError(
            f"unknown config key(s) {[prefix + k for k in unknown]} for {cls.__name__}; known: {sorted(known)}"
        )
    kwargs = {}
    for name, value in data.items():
        where = f"{_where}.{name}" if _where else name
        kwargs[name] = _coerce(hints[name], value, where)
    return cls(**kwargs)


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """Parse ``key.sub=value`` strings; values are read as YAML scalars/lists (``3``, ``1e-4``, ``true``, ``[1,2]``)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r} must look like key.sub=value")
        out[key.strip()] = _parse_scalar(raw)
    return out


def _parse_scalar(raw: str) -> Any:
    if not raw.strip():
        return ""
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        # YAML 1.1 reads "1e-4" (no dot) as a string; users mean a number.
        try:
            return float(value)
        except ValueError:
            return value
    return value


def apply_overrides(cfg: C, overrides: Mapping[str, Any], *, prefix: str = "") -> C:
    """A copy of ``cfg`` with dotted-key overrides applied (``{"decoder.dim": 64}``); validated again.

    ``prefix`` is how the user spells the keys' section (``"model."`` for ``--overrides model.decoder.dim=64``); error
    messages name each key with it, so that they quote what the user typed.
    """
    data = config_to_dict(cfg)
    for key, value in overrides.items():
        node = data
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            if not isinstance(node, dict) or part not in node:
                section = prefix + ".".join(parts[: depth + 1])
                raise ValueError(f"override {prefix + key!r}: no config section {section!r}")
            node = node[part]
        if not isinstance(node, dict) or parts[-1] not in node:
            raise ValueError(f"override {prefix + key!r}: unknown key for {type(cfg).__name__}")
        node[parts[-1]] = value
    return config_from_dict(type(cfg), data)


def save_config_file(cfg: Any, path: str | Path) -> None:
    """Write a config as YAML (``.yaml``/``.yml``) or JSON (anything else)."""
    path = Path(path)
    data = config_to_dict(cfg)
    text = yaml.safe_dump(data, sort_keys=False) if path.suffix in (".yaml", ".yml") else json.dumps(data, indent=2)
    path.write_text(text)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a dict (validated when passed to :func:`config_from_dict`)."""
    path = Path(path)
    if not path.is_file():
        from avseg.errors import MissingFileError

        raise MissingFileError(path, "config file")
    try:
        data = yaml.safe_load(path.read_text())  # JSON is YAML
    except yaml.YAMLError as err:
        from avseg.errors import MetadataError

        raise MetadataError(path, f"cannot parse config: {err}") from err
    if not isinstance(data, dict):
        from avseg.errors import MetadataError

        raise MetadataError(path, "a config file must hold a mapping at the top level")
    return data
