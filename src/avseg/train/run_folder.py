"""The folder of a training run, ``OUT``: where each file lives, and how each is started, resumed and replaced.

::

    OUT/
      checkpoints/step-XXXXXXX/   avseg.checkpoint folders (weights, config.json, training_state.pt)
      checkpoints/latest.json     pointer to the last checkpoint; its presence means "OUT holds a run"
      checkpoints/best.json       pointer to the best checkpoint on the validation split
      metrics.jsonl               one JSON object per event (train, val, checkpoint, resume)
      run_config.yaml             the effective run config (accepted back by ``avseg train --config``)
      train_summary.json          what the last `avseg train` invocation did (:class:`avseg.train.trainer.TrainSummary`)
      tensorboard/                optional

Whole files are replaced atomically with :mod:`avseg.fileio` (they get the mode the umask gives new files); events
are appended to ``metrics.jsonl`` one line at a time. In a distributed run, rank 0 alone uses a :class:`RunFolder`.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avseg.checkpoint import resolve_checkpoint, write_pointer
from avseg.fileio import atomic_write_text

__all__ = ["CHECKPOINT_PATTERN", "TIMING_KEYS", "RunFolder"]

CHECKPOINT_PATTERN = re.compile(r"^step-(\d{7,})$")
# Timing fields differ between otherwise identical runs; everything else in metrics.jsonl is reproducible.
TIMING_KEYS = ("elapsed_s", "samples_per_s", "seconds")


@dataclass(frozen=True)
class RunFolder:
    """The paths of one run folder and the file operations the trainer performs on it.

    Attributes:
        root: the run folder (``OUT``).
    """

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # -- paths -------------------------------------------------------------------------------------------------------

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def latest_pointer(self) -> Path:
        return self.checkpoints / "latest.json"

    @property
    def best_pointer(self) -> Path:
        return self.checkpoints / "best.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.root / "train_summary.json"

    @property
    def run_config(self) -> Path:
        return self.root / "run_config.yaml"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    def checkpoint(self, step: int) -> Path:
        """The folder of the checkpoint at optimiser step ``step``."""
        return self.checkpoints / f"step-{step:07d}"

    # -- an existing run ---------------------------------------------------------------------------------------------

    def holds_run(self) -> bool:
        """Whether a run has written a checkpoint here (``checkpoints/latest.json`` exists)."""
        return self.latest_pointer.exists()

    def check_new(self) -> None:
        """Refuse to start a new run over an existing one.

        Raises:
            FileExistsError: the folder holds a run.
        """
        if self.holds_run():
            raise FileExistsError(
                f"{self.root} already holds a training run ({self.latest_pointer}); "
                "resume it (--resume) or choose another output folder"
            )

    def resume_point(self, resume: str | Path | None = None) -> Path:
        """The checkpoint folder to resume from: ``resume`` (a checkpoint or a run folder), or the one
        ``checkpoints/latest.json`` names when None (see :func:`avseg.checkpoint.resolve_checkpoint`)."""
        return resolve_checkpoint(self.checkpoints if resume is None else Path(resume))

    def step_checkpoints(self) -> list[tuple[int, Path]]:
        """``(step, folder)`` of every ``step-XXXXXXX`` checkpoint, by step."""
        return sorted(
            (int(m.group(1)), d)
            for d in self.checkpoints.iterdir()
            if d.is_dir() and (m := CHECKPOINT_PATTERN.match(d.name))
        )

    def read_summary(self) -> dict[str, Any] | None:
        """``train_summary.json`` as a dict; None when it is missing or unreadable."""
        try:
            data = json.loads(self.summary.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    # -- starting (or resuming) a run ----------------------------------------------------------------------------------

    def start(self, run_config: Mapping[str, Any], *, resumed_step: int | None) -> None:
        """Create ``checkpoints/``; start ``metrics.jsonl`` empty for a new run, or keep the events up to
        ``resumed_step`` of a resumed one; write ``run_config.yaml``."""
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        if resumed_step is None:
            atomic_write_text(self.metrics, "")
        elif self.metrics.exists():
            self.keep_events_until(resumed_step)
        self.write_run_config(run_config)

    def keep_events_until(self, step: int) -> None:
        """Drop the events after ``step`` from ``metrics.jsonl`` (a resumed run replays them), and a last line cut
        by an interruption."""
        kept = []
        for line in self.metrics.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:
                continue  # a line cut by the interruption
        atomic_write_text(self.metrics, "".join(k + "\n" for k in kept))

    def write_run_config(self, run_config: Mapping[str, Any]) -> None:
        import yaml

        atomic_write_text(self.run_config, yaml.safe_dump(dict(run_config), sort_keys=False))

    # -- during and after an invocation --------------------------------------------------------------------------------

    def append_event(self, event: Mapping[str, Any]) -> None:
        """Append one event to ``metrics.jsonl``."""
        with self.metrics.open("a") as f:
            f.write(json.dumps(event) + "\n")

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        """Replace ``train_summary.json``: a failed write leaves the previous summary whole."""
        atomic_write_text(self.summary, json.dumps(dict(summary), indent=2))

    def point_latest(self, folder: Path, step: int) -> None:
        write_pointer(self.checkpoints, "latest", folder, {"step": step})

    def point_best(self, folder: Path, info: Mapping[str, Any]) -> None:
        write_pointer(self.checkpoints, "best", folder, dict(info))

    def clear_best(self) -> None:
        """Remove ``best.json``, if any."""
        self.best_pointer.unlink(missing_ok=True)

    def remove_checkpoints_after(self, step: int) -> list[str]:
        """Remove the checkpoints after ``step``; returns their names."""
        later = [folder for s, folder in self.step_checkpoints() if s > step]
        for folder in later:
            shutil.rmtree(folder, ignore_errors=True)
        return [folder.name for folder in later]

    def prune(self, keep_last: int, keep: str | None = None) -> None:
        """Remove all checkpoints but the last ``keep_last`` and the one named ``keep`` (the best)."""
        found = self.step_checkpoints()
        kept = {folder.name for _, folder in found[-keep_last:]}
        if keep:
            kept.add(keep)
        for _, folder in found:
            if folder.name not in kept:
                shutil.rmtree(folder, ignore_errors=True)
