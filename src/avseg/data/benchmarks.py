"""The benchmarks avseg reads and scores, in one table.

A *benchmark* is what a paper reports on (S4, MS3, AVSS, Ref-AVS, RVOS, semi-supervised VOS); a *format* is the
on-disk layout a reader understands (``avs-object`` holds both S4 and MS3). Every other module asks this table: the
readers (:func:`avseg.data.readers.get_reader`), ``avseg data check``, the training and evaluation commands (the
official metric preset of a format), the model registry (a preset's ``tasks`` are benchmark names) and
``avseg predict`` and ``avseg eval`` (whether the data carries referring expressions).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, get_args

__all__ = [
    "AVSS_NUM_CLASSES",
    "BENCHMARKS",
    "FORMAT_READERS",
    "Benchmark",
    "BenchmarkName",
    "DatasetFormat",
    "benchmarks_of_format",
    "default_metric_preset",
    "format_has_text",
    "get_benchmark",
]

DatasetFormat = Literal["refavs", "avs-object", "avss", "rvos", "vos"]
"""The reader formats, as ``--format`` takes them."""

BenchmarkName = Literal["s4", "ms3", "avss", "refavs", "rvos", "vos"]
"""The benchmarks, as model presets name them in ``tasks``."""

AVSS_NUM_CLASSES = 71
"""AVSBench-semantic: 70 sounding-object classes plus background (index 0)."""

FORMAT_READERS: Mapping[str, str] = MappingProxyType(
    {
        "refavs": "avseg.data.refavs:RefAVSReader",
        "avs-object": "avseg.data.avs_object:AVSObjectReader",
        "avss": "avseg.data.avss:AVSSReader",
        "rvos": "avseg.data.rvos:RVOSReader",
        "vos": "avseg.data.vos:VOSReader",
    }
)
"""Each format's reader class as ``module:Class``, imported only when asked for."""


@dataclass(frozen=True)
class Benchmark:
    """One benchmark.

    Attributes:
        name: its name in model presets' ``tasks`` (``s4``).
        format: the reader format that holds it (``avs-object``).
        reader_options: options that select it within the format (``{"subset": "s4"}``).
        metric_preset: the official metric preset (:mod:`avseg.metrics.presets`).
        text: whether its items carry a referring expression.
        frames: frames per clip of the official protocol (None: the whole video).
        num_classes: mask channels (1 for binary masks, 71 for AVSS).
    """

    name: str
    format: str
    metric_preset: str
    text: bool
    frames: int | None
    num_classes: int = 1
    reader_options: Mapping[str, Any] = field(default_factory=dict)


BENCHMARKS: Mapping[str, Benchmark] = MappingProxyType(
    {
        b.name: b
        for b in (
            Benchmark("s4", "avs-object", "avsbench", text=False, frames=5, reader_options={"subset": "s4"}),
            Benchmark("ms3", "avs-object", "avsbench", text=False, frames=5, reader_options={"subset": "ms3"}),
            Benchmark("avss", "avss", "avss", text=False, frames=10, num_classes=AVSS_NUM_CLASSES),
            Benchmark("refavs", "refavs", "refavs", text=True, frames=10),
            Benchmark("rvos", "rvos", "davis", text=True, frames=None),
            Benchmark("vos", "vos", "davis_semi", text=False, frames=None),
        )
    }
)


def get_benchmark(name: str) -> Benchmark:
    """The benchmark called ``name`` (ValueError listing the known ones)."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {sorted(BENCHMARKS)}")
    return BENCHMARKS[name]


def _check_format(format: str) -> str:
    if format not in FORMAT_READERS:
        raise ValueError(f"unknown dataset format {format!r}; known: {sorted(FORMAT_READERS)}")
    return format


def benchmarks_of_format(format: str) -> tuple[Benchmark, ...]:
    """The benchmarks a reader format holds (``avs-object`` → S4 and MS3)."""
    _check_format(format)
    return tuple(b for b in BENCHMARKS.values() if b.format == format)


def format_has_text(format: str) -> bool:
    """Whether the items of a reader format carry referring expressions."""
    return any(b.text for b in benchmarks_of_format(format))


def default_metric_preset(format: str, num_classes: int = 1) -> str:
    """The official metric preset of a reader format; a binary model (``num_classes == 1``) on the AVSS layout is
    scored with the binary AVSBench J and F."""
    if format == "avss" and num_classes == 1:
        return "avsbench"
    return benchmarks_of_format(format)[0].metric_preset


# The Literal types feed the generated CLI's choices; they must list exactly the table's names.
assert set(get_args(DatasetFormat)) == set(FORMAT_READERS), "DatasetFormat and FORMAT_READERS disagree"
assert set(get_args(BenchmarkName)) == set(BENCHMARKS), "BenchmarkName and BENCHMARKS disagree"
