"""Readers by format name (``refavs``, ``avs-object``, ``avss``, ``rvos``), from the table in
:mod:`avseg.data.benchmarks`; a reader class is imported when first asked for."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from avseg.data.base import BenchmarkReader
from avseg.data.benchmarks import FORMAT_READERS, DatasetFormat

__all__ = ["DatasetFormat", "get_reader", "reader_class"]


def reader_class(format: str) -> type[BenchmarkReader]:
    """The reader class of a format (ValueError listing the formats for an unknown one)."""
    if format not in FORMAT_READERS:
        raise ValueError(f"unknown dataset format {format!r}; known: {sorted(FORMAT_READERS)}")
    module, _, name = FORMAT_READERS[format].partition(":")
    return getattr(importlib.import_module(module), name)


def get_reader(format: str, root: str | Path, **options: Any) -> BenchmarkReader:
    """Build the reader of ``format`` over ``root``; ``None`` options are dropped so reader defaults apply."""
    return reader_class(format)(root, **{k: v for k, v in options.items() if v is not None})
