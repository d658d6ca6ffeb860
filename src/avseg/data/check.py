"""``avseg data check``: validate a benchmark tree and tell the user what is wrong with their copy.

The benchmarks cannot be downloaded from code (AVSBench and Ref-AVS are distributed by request or from mirrors), so
this command is how a user learns whether a tree is complete: it indexes every split, counts videos, expressions (or
clips), null expressions and labelled frames, and lists every missing or unreadable file with its path.
"""

from __future__ import annotations

import json as jsonlib
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from avseg.data.base import CheckReport, EmptyDatasetError
from avseg.data.benchmarks import DatasetFormat
from avseg.data.readers import get_reader
from avseg.progress import Progress

__all__ = ["check", "format_report"]

MAX_LISTED = 50


def format_report(report: CheckReport, max_listed: int = MAX_LISTED) -> str:
    """Render a check report as a table plus the list of problems."""
    lines = [f"{report.format} dataset at {report.root}"]
    header = f"{'split':<12} {'videos':>8} {report.item_name:>12} {'null':>8} {'labelled frames':>16}"
    lines += [header, "-" * len(header)]
    for split, c in report.splits.items():
        lines.append(f"{split:<12} {c.videos:>8} {c.items:>12} {c.null_items:>8} {c.labelled_frames:>16}")
    for note in report.notes:
        lines.append(f"note: {note}")
    for title, rows in (("missing", report.missing), ("unreadable", report.unreadable)):
        if rows:
            lines.append(f"{len(rows)} {title} file(s):")
            lines += [f"  {path}  ({what})" for path, what in rows[:max_listed]]
            if len(rows) > max_listed:
                lines.append(f"  ... and {len(rows) - max_listed} more (use --json for the full list)")
    lines.append("OK: no missing or unreadable files" if report.ok else "FAILED: the tree has problems listed above")
    return "\n".join(lines)


def _split_progress(unit: str, enabled: bool) -> Callable[[Iterable[Any]], Iterator[Any]]:
    """The reader's record wrapper: each split's files checked, counted per record (an expression or a clip)."""

    def wrap(records: Iterable[Any]) -> Iterator[Any]:
        records = list(records)
        split = getattr(records[0], "split", "") if records else ""
        with Progress(f"checking {split}".rstrip(), len(records), unit, enabled=enabled) as bar:
            for record in records:
                yield record
                bar.update()

    return wrap


def check(
    root: Path,
    *,
    format: DatasetFormat,
    json: bool = False,
    deep: bool = False,
    subset: str | None = None,
    quiet: bool = False,
) -> int:
    """Validate a dataset tree and report counts and missing files.

    Prints, per split, the number of videos, expressions (or clips), null expressions and labelled frames, then
    every missing or unreadable file with its path. Warnings the reader raises while indexing (dropped TODO rows,
    duplicate uids) are listed as notes. Exit status 1 when any file is missing or unreadable, and when the tree
    holds no sample at all (a metadata file with a header but no rows, no split folder): then one line names the
    root and the metadata file. Progress (each split's files checked, the rate and the ETA) goes to stderr.

    Args:
        root: the dataset folder (e.g. the folder holding Ref-AVS's metadata.csv, media/ and gt_mask/).
        format: the benchmark layout.
        json: print the report as one JSON document on stdout (every problem listed) instead of a table.
        deep: fully decode every image and audio file (slow); by default images are checked from their headers.
        subset: AVSBench-object only: s4 or ms3 (needed when the root holds both).
        quiet: show no progress (warnings, errors and the report are still printed).
    """
    if subset is not None and format != "avs-object":
        raise ValueError(f"--subset applies to --format avs-object only, not {format!r}")
    options = {"subset": subset} if format == "avs-object" else {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            reader = get_reader(format, root, **options)
            unit = reader.item_name.removesuffix("s")  # "expression", "clip"
            report = reader.check(deep=deep, progress=_split_progress(unit, not quiet))
            # A table of zero splits followed by "OK" reads as success; training on it would fail later.
            empty = None if any(counts.items for counts in report.splits.values()) else reader.empty_error()
        except EmptyDatasetError as err:
            empty = err
    if empty is not None:
        if json:
            print(jsonlib.dumps({"root": str(root), "format": format, "ok": False, "error": str(empty)}, indent=2))
        print(f"avseg: error: {empty}", file=sys.stderr)
        sys.stdout.flush()
        return 1
    report.notes.extend(dict.fromkeys(str(w.message) for w in caught))
    if json:
        print(jsonlib.dumps(report.to_dict(), indent=2))
    else:
        print(format_report(report))
    sys.stdout.flush()
    return 0 if report.ok else 1
