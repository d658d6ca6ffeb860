"""``avseg train``: build a run config from a file, options and overrides, then train with the one trainer.

Precedence, lowest first: ``TrainConfig``/``DataConfig`` defaults, the model preset's own training recipe
(``config.recipe``: optimiser, learning rate, weight decay, schedule, warmup, batch size, clipping, and its epochs
when no layer gives ``max_steps`` or ``max_epochs``; see :class:`avseg.recipe.TrainRecipe`), the ``--config``
file, command-line options, ``--overrides``. Options left at their default value (``--format refavs``, ``--seed 0``,
``--val-split val``, ``--train-split train``, ``--device auto``) do not replace a value the config file sets. With
``--max-minutes``, the learning-rate schedule is fitted to the time budget (``train.schedule.fit_to_budget``) unless
the file or an override says otherwise.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

from avseg.data.benchmarks import DatasetFormat
from avseg.errors import UsageError
from avseg.fileio import check_output_dir
from avseg.train.run import build_run_config, prepare_trainer

__all__ = ["check_run_folder", "train"]


def check_run_folder(out: Path, *, resume: bool, arg: str = "--out") -> Path:
    """Check, before any model or data work, that ``out`` can hold this run: a folder (or a path to create) that
    holds no run yet, or, with ``resume``, one that does.

    Raises:
        UsageError: naming ``arg``, the path and the fix.
    """
    out = check_output_dir(out, arg=arg)
    latest = out / "checkpoints" / "latest.json"
    if latest.exists() and not resume:
        raise UsageError(
            f"{arg} {out}: already holds a training run ({latest}); pass --resume to continue it, or choose a new "
            "folder"
        )
    if resume and not latest.exists():
        raise UsageError(f"{arg} {out}: holds no training run to resume (no {latest}); drop --resume to start one")
    return out


def train(
    *,
    data: Path,
    format: DatasetFormat = "refavs",
    out: Path = Path("runs/train"),
    model: Optional[str] = None,  # noqa: UP045 - the CLI generator reads Optional[...]
    config: Optional[Path] = None,  # noqa: UP045
    overrides: Optional[list[str]] = None,  # noqa: UP045
    max_steps: Optional[int] = None,  # noqa: UP045
    max_minutes: Optional[float] = None,  # noqa: UP045
    device: str = "auto",
    seed: int = 0,
    resume: bool = False,
    batch_size: Optional[int] = None,  # noqa: UP045
    image_size: Optional[int] = None,  # noqa: UP045
    val_split: Optional[str] = "val",  # noqa: UP045
    train_split: str = "train",
    quiet: bool = False,
) -> int:
    """Train a registered model on a benchmark split.

    Trains with the preset's own recipe (optimiser, learning rate, schedule, batch, epochs; avseg models show it)
    unless a --config file, an option or an override says otherwise. Validates on another split (never a test split)
    and keeps the best checkpoint. Runs on one process, or on several
    under ``torchrun --nproc_per_node N -m avseg train ...`` (DDP; gloo on CPU). Writes OUT/checkpoints/step-XXXXXXX/
    with latest.json and best.json pointers, OUT/metrics.jsonl, OUT/run_config.yaml (reusable with --config) and
    OUT/train_summary.json. Options left at their defaults do not replace values of a --config file; --overrides
    apply last. FSDP or DeepSpeed ZeRO-2: ``accelerate launch --config_file CFG -m avseg train ...``. Progress goes
    to stderr: a bar on a terminal, else a line at most every 30 s and around each validation (step, loss, epoch,
    steps/s, elapsed time, ETA).

    Args:
        data: dataset root folder.
        format: dataset format.
        out: run folder (must not hold a run already, unless --resume).
        model: registered model preset (e.g. tpavi-tiny); required unless the config file names one.
        config: YAML/JSON run config (sections model, model_overrides, data, train; see OUT/run_config.yaml).
        overrides: dotted config overrides, e.g. --overrides train.optim.lr=1e-4 train.max_epochs=5 model.num_classes=71
            (train.lr is short for train.optim.lr).
        max_steps: stop after this many optimiser steps.
        max_minutes: wall-clock budget in minutes, setup, final validation and checkpoint included; the
            learning-rate schedule is fitted to it (train.schedule.fit_to_budget=false keeps the full schedule).
            A budget used up before the first optimiser step is an error (exit status 2) that writes no checkpoint;
            one that allows fewer than 25% of the recipe's steps, or fewer than 100, ends with a warning.
        device: auto (CUDA when available), cpu or cuda.
        seed: seed of model initialisation, data order and all randomness.
        resume: continue the run in OUT from its latest checkpoint (same final weights as an uninterrupted run); a
            run that has already reached its length is left as it is.
        batch_size: samples per batch and process.
        image_size: resize frames and masks to this square size.
        val_split: validation split for best-checkpoint selection (never a test split); "none" disables validation.
        train_split: split to train on.
        quiet: show no progress bar and no periodic progress lines (as train.progress_bar=false, but for this run
            only: OUT/run_config.yaml keeps the config's setting); warnings, errors and the final summary are still
            printed.
    """
    clock_start = time.monotonic()
    # Everything that can be checked without the model or the data is checked first: a mistake costs one line now,
    # not a traceback after the data is indexed.
    out = check_run_folder(Path(out), resume=resume)
    from avseg.device import resolve_device
    from avseg.train.trainer import budget_shortfall, check_training_dependencies

    check_training_dependencies("avseg train")
    if val_split is not None and val_split.strip().lower() in ("", "none", "null"):
        val_split = None
    given = {
        "train.max_steps": max_steps,
        "train.max_minutes": max_minutes,
        "train.batch_size": batch_size,
        "data.image_size": image_size,
    }
    explicit = {key: value for key, value in given.items() if value is not None}
    defaults: dict[str, Any] = {}
    for key, value, default in (
        ("data.format", format, "refavs"),
        ("data.train_split", train_split, "train"),
        ("train.seed", seed, 0),
        ("train.device", device, "auto"),
        ("train.val_split", val_split, "val"),
    ):
        (explicit if value != default else defaults)[key] = value
    if max_minutes is not None:
        defaults["train.schedule.fit_to_budget"] = True
    run_cfg = build_run_config(
        data=data, model=model, config=config, overrides=overrides, explicit=explicit, defaults=defaults
    )
    resolve_device(run_cfg.train.device, arg="--device" if device != "auto" else "train.device")

    trainer = prepare_trainer(run_cfg, out, clock_start=clock_start, quiet=quiet)
    summary = trainer.fit(resume=resume)
    if trainer.already_complete:
        if int(os.environ.get("RANK", "0")) == 0:
            print(
                f"avseg train: the run in {out} is already complete ({summary.steps} of {trainer.total_steps} steps); "
                "nothing to do (give a longer --max-steps or train.max_epochs to train further)"
            )
        return 0
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"avseg train: {run_cfg.model} on {run_cfg.data.format}:{run_cfg.data.train_split}, {summary.steps} steps "
            f"({summary.stopped_reason}) in {summary.wall_time_s:.1f} s on {summary.world_size} process(es) "
            f"[{summary.device}, precision {summary.mixed_precision}], {summary.samples_per_s:.1f} samples/s"
        )
        if summary.best is not None:
            b = summary.best
            print(f"  best {b['metric']} = {b['value']:.4f} at step {b['step']} on {b['split']}: {b['checkpoint']}")
        elif summary.final_metrics:
            print(f"  final metrics: {summary.final_metrics}")
        print(f"  run folder: {out} (checkpoints/, metrics.jsonl, train_summary.json)")
        shortfall = budget_shortfall(summary)
        if shortfall is not None:
            print(f"avseg: warning: {shortfall}; give a larger --max-minutes", file=sys.stderr)
    return 0
