"""Small pretrained weights shipped inside the package, named ``avseg:<name>`` where a weights source is expected.

Each asset is a folder with the weights (fp16 safetensors), the config to rebuild the module, and ``ASSET.md``
saying what it is, the exact commands that reproduce it and the figure it reaches. :data:`ASSETS` records the
SHA-256 of each weights file; ``tests/test_assets.py`` checks it.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from types import MappingProxyType

from avseg.errors import UsageError

__all__ = ["ASSETS", "ASSET_PREFIX", "asset_path", "is_packaged", "resolve_weights"]

ASSET_PREFIX = "avseg:"
"""Prefix of a packaged asset in a ``weights`` setting (``avseg:sam2-tiny-synthav``)."""

ASSETS: Mapping[str, str] = MappingProxyType(
    {
        "sam2-tiny-synthav": "e3eadaef40ed274ef4de3e8026839328dbaed9425c8dcbab3d0cdc8b4a6b57d8",
        "vit-tiny-synthav": "7f8a5502774d260fd903f2fbde65321c3b229f4a15e83960e7ab82befeafb221",
        "logmel-cnn-synthav": "314c2e3c23141ab532dbd02176ae0941b5977e96c7dab224edea997084c3c009",
    }
)
"""Asset name → SHA-256 of its ``model.safetensors``."""


def asset_path(name: str) -> Path:
    """The folder of the packaged asset ``name``.

    Raises:
        UsageError: no such asset (the message lists the assets).
    """
    if name not in ASSETS:
        raise UsageError(f"unknown packaged weights {ASSET_PREFIX}{name}; available: {sorted(ASSETS) or 'none'}")
    return Path(str(resources.files("avseg") / "assets" / name))


def resolve_weights(source: str) -> str:
    """A weights source with ``avseg:<name>`` replaced by the packaged folder; other sources unchanged."""
    if is_packaged(source):
        return str(asset_path(source.removeprefix(ASSET_PREFIX)))
    return source


def is_packaged(source: str | None) -> bool:
    """Whether the weights setting ``source`` names a packaged asset. Layers read packaged weights whether or not the
    model is built pretrained (they are small and offline); hub ids and folders only when it is."""
    return bool(source) and str(source).startswith(ASSET_PREFIX)
