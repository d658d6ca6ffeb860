"""``avseg models``: the registry as a table, or as JSON."""

from __future__ import annotations

import json as jsonlib
import sys
from typing import Any

from avseg.models.registry import get_entry, list_models

__all__ = ["models"]


def _row(name: str, verbose: bool) -> dict[str, Any]:
    entry = get_entry(name)
    row: dict[str, Any] = {
        "preset": name,
        "family": entry.model_cls.family,
        "tasks": list(entry.tasks),
        "description": entry.description,
    }
    if verbose:
        from avseg.config import config_to_dict

        row["config"] = config_to_dict(entry.config())
    return row


def models(pattern: str = "*", verbose: bool = False, json: bool = False) -> int:
    """List registered models and presets.

    Args:
        pattern: glob over preset names, e.g. 'tpavi-*'.
        verbose: also print each preset's config.
        json: print the presets as one JSON document on stdout (a list of objects with preset, family, tasks and
            description, and config with --verbose) instead of a table.
    """
    names = list_models(pattern)
    if not names:
        if json:
            print("[]")
        print(f"no registered model matches {pattern!r}", file=sys.stderr if json else sys.stdout)
        return 1
    rows = [_row(name, verbose) for name in names]
    if json:
        print(jsonlib.dumps(rows, indent=2, default=str))
        return 0
    width = max(len(n) for n in names)
    print(f"{'preset':<{width}}  {'family':<12} {'tasks':<20} description")
    for row in rows:
        print(f"{row['preset']:<{width}}  {row['family']:<12} {','.join(row['tasks']):<20} {row['description']}")
        for key, value in row.get("config", {}).items():
            print(f"{'':<{width}}    {key}: {value}")
    return 0
