"""The one trainer for every avseg model, on Hugging Face Accelerate.

The trainer owns device, precision, distribution, data order, logging, validation and checkpoints; a model takes part
only through the contract (``forward``, ``losses``, ``param_groups``, ``on_epoch_start``; ``avseg.models.base``).

Engine. An ``accelerate.Accelerator`` places the model, wraps it in DDP when the script runs under ``torchrun``
(gloo on CPU, NCCL on GPUs), applies mixed precision (``bf16``/``fp16`` autocast, a gradient scaler for fp16) and
gradient accumulation (``no_sync`` on the micro-batches that do not step). FSDP and DeepSpeed ZeRO-2 are
Accelerate configuration, not code: write a config with ``accelerate config`` (or pass ``--use_fsdp`` /
``--use_deepspeed --zero_stage 2``) and start ``accelerate launch --config_file CFG -m avseg train ...``; with
DeepSpeed, keep ``gradient_accumulation_steps`` and ``mixed_precision`` of that file equal to the run config. Those
engines shard optimiser state, which these checkpoints do not gather: weights are saved, exact resume is guaranteed
for single-process and DDP runs only. ``accelerate launch --cpu --num_processes 2`` silently runs one process;
``train_summary.json`` records the world size that actually ran.

Data order. Epoch ``e`` visits a permutation drawn from ``(seed, e)``, cut to a whole number of optimiser steps and
dealt round-robin to the ranks (:class:`EpochBatchSampler`), so the order depends on nothing but the seed, the epoch
and the world size, and a resumed run can start inside an epoch by skipping the batches already consumed.

Exact resume. A checkpoint holds the weights and, in ``training_state.pt``: optimiser, scheduler and gradient-scaler
states, step, epoch, position inside the epoch, samples seen, the best validation value and where it is, and for
every rank its torch/CUDA/numpy/python RNG states and its partial loss-logging window. Validation runs inside a
saved-and-restored RNG context, so it never shifts training randomness. Resuming therefore replays the same batches,
dropout masks and learning rates, and gives the same final weights and metrics as an uninterrupted run (on the same
world size and hardware; per-sample randomness inside DataLoader workers is the one exception, see
:class:`EpochBatchSampler`).

Outputs under ``OUT`` (:class:`~avseg.train.run_folder.RunFolder`): ``checkpoints/step-XXXXXXX/`` (``avseg.checkpoint``
folders), ``checkpoints/latest.json`` and ``checkpoints/best.json`` pointers, ``metrics.jsonl`` (one JSON object per
event), ``run_config.yaml``, ``train_summary.json`` and optionally ``tensorboard/``. Files are replaced atomically and
get the mode the umask gives new files.

Time budget. ``max_minutes`` is kept by a :class:`~avseg.train.budget.TimeBudget`: the run stops when one more step
would leave no time for the final validation and checkpoint, and with ``schedule.fit_to_budget`` the learning-rate
schedule ends at the step the budget is estimated to allow, re-estimated as the run goes.

Progress. Rank 0 shows a tqdm bar on a terminal and, when its output goes to a log, a plain line at most every 30
seconds and around each validation (:class:`~avseg.train.progress.ProgressDisplay`). Under a time budget the bar
counts to the step the budget is estimated to allow.
"""

from __future__ import annotations

import gc
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from avseg.checkpoint import load_training_state, load_weights, save_checkpoint
from avseg.config import config_to_dict
from avseg.data.types import AVSBatch, AVSSample, collate
from avseg.errors import AVSegError, AVSegWarning, MissingDependencyError
from avseg.optional import has_package
from avseg.train.budget import REFIT_EVERY, TimeBudget
from avseg.train.config import TrainConfig, check_val_split
from avseg.train.determinism import (
    EpochBatchSampler,
    capture_rng_state,
    derive_seed,
    parameter_digest,
    preserved_rng,
    restore_rng_state,
    seed_everything,
)
from avseg.train.optim import build_optimizer, build_scheduler, group_lrs, schedule_of, trainable_names
from avseg.train.progress import ProgressDisplay
from avseg.train.run_folder import TIMING_KEYS, RunFolder

__all__ = [
    "TIMING_KEYS",
    "EpochBatchSampler",
    "Evaluator",
    "ProgressDisplay",
    "TrainSummary",
    "Trainer",
    "TrainingError",
    "budget_shortfall",
    "check_training_dependencies",
    "default_evaluator",
    "seed_everything",
]

Evaluator = Callable[[torch.nn.Module, Dataset], Mapping[str, float]]
"""``evaluator(model, dataset) -> {"J": .., "F": .., ...}``: scores a model (in eval mode, no grad) on a dataset."""


class TrainingError(AVSegError):
    """Training cannot go on (a non-finite loss, a dataset too small for one step, an unusable resume point)."""


def check_training_dependencies(purpose: str = "training") -> None:
    """Check, before any work, that the packages the trainer imports when it starts are installed.

    Raises:
        MissingDependencyError: ``accelerate`` (a core dependency) is missing; ``purpose`` says what needs it.
    """
    if not has_package("accelerate"):
        raise MissingDependencyError("accelerate", None, purpose)


def default_evaluator(
    preset: str, *, batch_size: int, device: Any, num_workers: int = 0, progress: bool = False
) -> Evaluator:
    """The evaluator ``avseg train`` uses: :func:`avseg.evaluate.evaluate_split` with a metric preset, returning its
    summary (``{"J": .., "F": .., "J&F": .., ...}``). Imported when first called. ``progress`` shows a short bar
    per validation (for a terminal)."""

    def evaluate(model: torch.nn.Module, dataset: Dataset) -> Mapping[str, float]:
        from avseg.evaluate import evaluate_split

        result = evaluate_split(
            model,
            dataset,
            preset=preset,
            batch_size=batch_size,
            device=device,
            num_workers=num_workers,
            progress=progress,
        )
        return dict(result.summary)

    return evaluate


def budget_shortfall(summary: TrainSummary, *, min_fraction: float = 0.25, min_steps: int = 100) -> str | None:
    """A one-line warning when a time budget stopped a run far short of the length its recipe plans, else None.

    Far short means fewer than ``min_fraction`` of the planned steps, or fewer than ``min_steps`` steps: such a model
    is barely trained, and its scores say little about the recipe. Runs that reached their planned length, or that
    stopped for another reason than ``max_minutes``, never warn.

    Args:
        summary: a finished run's summary (``planned_steps`` is the length before the budget shortened it).
        min_fraction: warn below this fraction of the planned steps (0 disables this rule).
        min_steps: warn below this many steps.
    """
    planned = summary.planned_steps
    if summary.stopped_reason != "max_minutes" or planned is None or summary.steps >= planned:
        return None
    if summary.steps >= min_fraction * planned and summary.steps >= min_steps:
        return None
    share = summary.steps / planned
    percent = f"{share:.1%}" if share >= 0.001 else f"{share:.2g}"
    return (
        f"the time budget allowed {summary.steps:,} optimiser steps, {percent} of the {planned:,} the recipe plans "
        "(max_steps/max_epochs): the model is far from trained"
    )


# --------------------------------------------------------------------------------------------------------------------
# Small records


@dataclass
class _Progress:
    """Where training stands; saved in every checkpoint."""

    step: int = 0
    epoch: int = 0
    epoch_step: int = 0
    samples_seen: int = 0
    best_value: float | None = None
    best_step: int | None = None
    best_checkpoint: str | None = None


@dataclass
class _Window:
    """Losses summed since the last train event (per rank; saved so a resumed run logs the same averages)."""

    sums: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    samples: int = 0
    seconds: float = 0.0

    def add(self, losses: Mapping[str, float], samples: int, seconds: float) -> None:
        for key, value in losses.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.steps += 1
        self.samples += samples
        self.seconds += seconds


@dataclass
class TrainSummary:
    """What ``train_summary.json`` records (and :meth:`Trainer.fit` returns)."""

    steps: int
    total_steps: int
    steps_per_epoch: int
    epochs: float
    samples_seen: int
    samples_per_s: float
    wall_time_s: float
    train_time_s: float
    val_time_s: float
    world_size: int
    device: str
    mixed_precision: str
    stopped_reason: str
    peak_memory_mib: float | None
    """The largest peak over the ranks: max RSS on CPU, ``torch.cuda.max_memory_allocated`` on GPU."""
    peak_memory_kind: str
    best: dict[str, Any] | None
    final_metrics: dict[str, float] | None
    last_checkpoint: str | None
    resumed_from: str | None
    seed: int
    param_digests: list[str]
    """Per rank: :func:`parameter_digest` of the final parameters (all equal when DDP kept the ranks in sync)."""
    ranks_in_sync: bool
    planned_steps: int | None = None
    """The steps ``max_steps``/``max_epochs`` ask for, before a time budget shortened the run (None in summaries
    written by older versions)."""


def peak_memory(device: torch.device) -> tuple[float | None, str]:
    """Peak memory in MiB: ``torch.cuda.max_memory_allocated`` on GPU, the process's max RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    try:
        import resource
    except ImportError:  # not on Unix
        return None, "unavailable"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return (rss / 2**20 if sys.platform == "darwin" else rss / 2**10), "max_rss"


def _dataset_splits(dataset: Dataset) -> set[str]:
    records = getattr(dataset, "records", None) or []
    return {r.split for r in records if isinstance(getattr(r, "split", None), str)}


def _num_clips(dataset: Dataset) -> int:
    """The dataset's length; 0 for one without (its validation time is then known after the first validation)."""
    try:
        return len(dataset)  # type: ignore[arg-type]
    except TypeError:
        return 0


# --------------------------------------------------------------------------------------------------------------------
# The trainer


class Trainer:
    """Trains one model on one dataset, with periodic validation, checkpoints and exact resume.

    A trainer runs once: build it, call :meth:`fit`. Under ``torchrun`` every rank builds the same trainer; rank 0
    alone writes files, validates (the other ranks wait) and shows the progress bar.

    Args:
        model: the model (an ``AVSModel``), on CPU, already seeded and built; not yet wrapped.
        train_dataset: a dataset of :class:`~avseg.data.types.AVSSample`.
        cfg: the trainer config.
        out_dir: the run folder (created).
        val_dataset: the validation split (``cfg.val_split`` names it); None disables validation.
        evaluator: ``evaluator(model, dataset) -> {metric: value}``; default :func:`default_evaluator` with
            ``metric_preset`` on the trainer's device.
        metric_preset: metric preset of the default evaluator (``refavs``, ``avsbench``, ``avss``, ``davis``).
        preset: the registry name the model was built from (stored in checkpoints).
        run_config: the whole run config, written to ``OUT/run_config.yaml`` (default: ``{"train": cfg}``).
        collate_fn: batches samples (default :func:`~avseg.data.types.collate`).
        clock_start: ``time.monotonic()`` at which the ``max_minutes`` budget started (default: when :meth:`fit`
            starts), so that a command can count its own setup time.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        train_dataset: Dataset,
        cfg: TrainConfig,
        out_dir: str | Path,
        *,
        val_dataset: Dataset | None = None,
        evaluator: Evaluator | None = None,
        metric_preset: str | None = None,
        preset: str | None = None,
        run_config: Mapping[str, Any] | None = None,
        collate_fn: Callable[[Sequence[AVSSample]], AVSBatch] = collate,
        clock_start: float | None = None,
    ) -> None:
        if not isinstance(cfg, TrainConfig):
            raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
        if val_dataset is not None:
            if cfg.val_split is None:
                raise ValueError("a validation dataset was given but train.val_split is None; name its split")
            for split in sorted(_dataset_splits(val_dataset)):
                check_val_split(split, "validation dataset split")
            if evaluator is None and metric_preset is None:
                raise ValueError("validation needs an evaluator or a metric_preset for the default evaluator")
        self.model = model
        self.train_dataset = train_dataset
        self._data_meta: dict[str, Any] | None = None
        self.val_dataset = val_dataset
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.run = RunFolder(self.out_dir)
        self.evaluator = evaluator
        self.metric_preset = metric_preset
        self.preset = preset
        self.run_config = dict(run_config) if run_config is not None else {"train": config_to_dict(cfg)}
        self.collate_fn = collate_fn
        self.clock_start = clock_start
        self.already_complete = False
        """Set by :meth:`fit` when the resumed run had already reached its length (nothing was changed)."""
        self._used = False

    # -- public entry point ------------------------------------------------------------------------------------------

    def fit(self, resume: bool | str | Path = False) -> TrainSummary:
        """Train until ``max_steps``/``max_epochs`` or the ``max_minutes`` budget, then validate and checkpoint.

        Resuming a run that has already reached its length (its last checkpoint is at ``max_steps``/``max_epochs``
        and ``OUT/train_summary.json`` describes it) changes nothing: the recorded summary is returned and
        :attr:`already_complete` is set.

        Args:
            resume: False starts a new run (refused if ``OUT`` already holds checkpoints); True continues from
                ``OUT/checkpoints/latest.json``; a path continues from that checkpoint.

        Returns:
            The summary also written to ``OUT/train_summary.json``.

        Raises:
            TrainingError: among others when the ``max_minutes`` budget is used up before the first optimiser step
                (then no checkpoint is written: a model that never stepped is not a trained one).
        """
        if self._used:
            raise RuntimeError("a Trainer runs once; build a new one to train again")
        self._used = True
        start = self.clock_start if self.clock_start is not None else time.monotonic()
        acc = self._make_accelerator()
        self._display: ProgressDisplay | None = None
        self._tb = None
        ok = False
        try:
            summary = self._fit(acc, resume, start)
            ok = True
            return summary
        finally:
            self._teardown(acc, ok)

    # -- setup -------------------------------------------------------------------------------------------------------

    def _make_accelerator(self) -> Any:
        from datetime import timedelta

        check_training_dependencies()
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

        cfg = self.cfg
        if cfg.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("train.device='cuda' but no CUDA device is available")
        use_cpu = cfg.device == "cpu" or not torch.cuda.is_available()
        precision = cfg.mixed_precision
        if precision == "auto":
            precision = "bf16" if not use_cpu and torch.cuda.is_bf16_supported() else "no"
        if precision == "fp16" and use_cpu:
            raise ValueError("train.mixed_precision='fp16' needs a CUDA device; use 'bf16' or 'no' on CPU")
        return Accelerator(
            cpu=use_cpu,
            mixed_precision=precision,
            gradient_accumulation_steps=cfg.grad_accum_steps,
            # The scheduler follows optimiser steps; Accelerate would otherwise step it once per process.
            step_scheduler_with_optimizer=False,
            kwargs_handlers=[
                DistributedDataParallelKwargs(find_unused_parameters=cfg.find_unused_parameters),
                # Rank 0 validates alone while the others wait in a collective: allow long validations.
                InitProcessGroupKwargs(timeout=timedelta(hours=4)),
            ],
        )

    def _make_budget(self, start: float) -> TimeBudget:
        cfg = self.cfg
        return TimeBudget(
            limit_s=None if cfg.max_minutes is None else cfg.max_minutes * 60.0,
            start=start,
            # Read from this module at fit time, so that one clock (a virtual one in tests) times the whole run.
            clock=time.monotonic,
            samples_per_step=cfg.batch_size * cfg.grad_accum_steps,
            val_samples=None if self.val_dataset is None else _num_clips(self.val_dataset),
            val_every=cfg.val_every,
            checkpoint_every=cfg.checkpoint_every,
            checkpoint_bytes=sum(p.numel() * p.element_size() for p in self.model.parameters()),
        )

    def _teardown(self, acc: Any, ok: bool) -> None:
        if self._display is not None:
            self._display.close()
        if self._tb is not None:
            self._tb.close()
        # DDP reducers (and their pending gloo work) must be destroyed while the process group still exists: a
        # reducer collected at interpreter exit can abort the process ("terminate called without an active
        # exception"). Drop every reference to the wrapped model and optimiser first, Accelerate's included.
        self.wrapped = self.model
        self.optimizer = self.raw_optimizer = self.scheduler = None
        acc.free_memory()
        gc.collect()
        if ok and acc.num_processes > 1:
            acc.wait_for_everyone()
        acc.end_training()  # destroys the process group; gloo/DeepSpeed may abort at exit otherwise
        from accelerate.state import AcceleratorState, GradientState

        # Accelerate keeps its state in process-wide singletons; clearing them lets one process train again
        # (tests, notebooks) with other precision or device settings. This is what Accelerate's own tests do.
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()

    def _fit(self, acc: Any, resume: bool | str | Path, start: float) -> TrainSummary:
        cfg = self.cfg
        self.acc = acc
        self.rank, self.world = acc.process_index, acc.num_processes
        self.is_main = acc.is_main_process
        unwrapped = self.model

        state, resumed_from = self._resume_state(resume, unwrapped)
        spe = len(self.train_dataset) // (cfg.batch_size * cfg.grad_accum_steps * self.world)  # type: ignore[arg-type]
        if spe < 1:
            raise TrainingError(
                f"the training split has {len(self.train_dataset)} samples, fewer than one optimiser step needs "  # type: ignore[arg-type]
                f"(batch_size {cfg.batch_size} x grad_accum_steps {cfg.grad_accum_steps} x {self.world} processes)"
            )
        limits = [n for n in (cfg.max_steps, cfg.max_epochs * spe if cfg.max_epochs else None) if n is not None]
        self.steps_per_epoch, self.total_steps = spe, min(limits)
        self._configured_steps = self.total_steps  # before any fit_to_budget shortening
        self.length_reason = (
            "max_steps" if cfg.max_steps is not None and cfg.max_steps == self.total_steps else "max_epochs"
        )

        self.progress = _Progress(**state["progress"]) if state else _Progress()
        if state is not None and self.progress.step >= self.total_steps:
            recorded = self._recorded_summary()
            if recorded is not None:
                # Nothing to train: leave the run's files as they are (a new summary would describe an invocation
                # that did nothing).
                self.already_complete = True
                return recorded
        if state is None:
            seed_everything(derive_seed(cfg.seed, 1, self.rank))
        # The optimiser of a checkpoint belongs to the epoch whose hook last ran (at an epoch boundary, the one that
        # just ended); rebuild that one, and let the loop switch to the next epoch as the uninterrupted run did.
        self._hooked_epoch = int(state.get("hooked_epoch", self.progress.epoch)) if state else self.progress.epoch
        unwrapped.on_epoch_start(self._hooked_epoch)
        self._trainable = trainable_names(unwrapped)
        raw_optimizer = build_optimizer(unwrapped, cfg.optim)
        self.scheduler = build_scheduler(raw_optimizer, cfg.schedule, self.total_steps)
        self.wrapped, self.optimizer = acc.prepare(unwrapped, raw_optimizer)
        self.raw_optimizer = raw_optimizer
        self.window = _Window()
        if state:
            self._load_state(state)
        self.budget = self._make_budget(start)
        self._train_s = self._val_s = 0.0
        if self.budget.limited and self._out_of_time():
            raise self._no_step_error()  # before any file is written

        self._prepare_outputs(resumed=state is not None)
        if state is not None:
            self._event({"event": "resume", "step": self.progress.step, "checkpoint": resumed_from})
        self._last_val_step: int | None = None
        self._last_ckpt_step = self.progress.step if state is not None else None  # the resumed checkpoint
        self._last_metrics: dict[str, float] | None = None
        self._session_samples = self._session_steps = 0
        reason = self._loop()
        if self._session_steps == 0 and reason == "max_minutes":
            raise self._no_step_error()
        return self._finish(reason, resumed_from)

    def _no_step_error(self) -> TrainingError:
        minutes = self.cfg.max_minutes
        return TrainingError(
            f"the time budget train.max_minutes={minutes:g} ({minutes * 60:.3g} s) was used up "  # type: ignore[operator]
            f"({self.budget.elapsed():.1f} s elapsed) before the first optimiser step: nothing was trained and no "
            "checkpoint was written; give a larger budget"
        )

    def _recorded_summary(self) -> TrainSummary | None:
        """``OUT/train_summary.json`` when it describes the checkpoint being resumed (rank 0 reads it)."""
        data = self._broadcast(self.run.read_summary() if self.is_main else None)
        if data is None or data.get("steps") != self.progress.step:
            return None
        known = {f.name for f in fields(TrainSummary)}
        try:
            return TrainSummary(**{key: value for key, value in data.items() if key in known})
        except TypeError:  # a summary without some required field: not one this trainer wrote
            return None

    def _resume_state(self, resume: bool | str | Path, model: torch.nn.Module) -> tuple[dict | None, str | None]:
        if resume is False:
            self.run.check_new()
            return None, None
        folder = self.run.resume_point(None if resume is True else resume)
        state = load_training_state(folder)
        if state is None or "progress" not in state:
            raise TrainingError(f"{folder}: checkpoint has no training state to resume from")
        load_weights(model, folder)
        saved_world = int(state.get("world_size", 1))
        if saved_world != self.world:
            warnings.warn(
                f"{folder}: saved with {saved_world} process(es), resumed with {self.world}; the data order and "
                "randomness will differ from an uninterrupted run",
                AVSegWarning,
                stacklevel=4,
            )
        return state, str(folder)

    def _load_state(self, state: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler") is not None and self.acc.scaler is not None:
            self.acc.scaler.load_state_dict(state["scaler"])
        schedule = schedule_of(self.scheduler)
        if schedule.total_steps != self.total_steps:
            warnings.warn(
                f"the run now has {self.total_steps} steps, the checkpoint's learning-rate schedule "
                f"{schedule.total_steps}; the checkpoint's schedule is kept",
                AVSegWarning,
                stacklevel=4,
            )
        per_rank = state.get("per_rank") or []
        if len(per_rank) == self.world:
            mine = per_rank[self.rank]
            restore_rng_state(mine["rng"])
            self.window = _Window(**mine["window"])
        else:
            seed_everything(derive_seed(self.cfg.seed, 2, self.progress.step, self.rank))

    def _prepare_outputs(self, resumed: bool) -> None:
        if self.is_main:
            self.run.start(self.run_config, resumed_step=self.progress.step if resumed else None)
            if resumed:
                self._drop_abandoned_checkpoints()
            if self.cfg.tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except ImportError:
                    warnings.warn(
                        "train.tensorboard is on but the tensorboard package is missing (pip install tensorboard); "
                        "metrics go to metrics.jsonl only",
                        AVSegWarning,
                        stacklevel=4,
                    )
                else:
                    self._tb = SummaryWriter(str(self.run.tensorboard))
            if self.cfg.progress_bar:
                # Under a time budget the run's end is not known before the step time is measured.
                total = None if self.budget.limited else self.total_steps
                self._display = ProgressDisplay(total, self.progress.step, clock=self.budget.clock)
        self._barrier()

    def _drop_abandoned_checkpoints(self) -> None:
        """Resuming from step k abandons checkpoints after k (from a run cut between writing a checkpoint and its
        pointer, or when resuming from an older checkpoint): remove them, and point ``best.json`` at the restored
        best, so pruning and best selection see this run's history only."""
        p = self.progress
        later = [folder.name for step, folder in self.run.step_checkpoints() if step > p.step]
        if later:
            warnings.warn(
                f"resuming from step {p.step}: removing later checkpoints {later}",
                AVSegWarning,
                stacklevel=5,
            )
            self.run.remove_checkpoints_after(p.step)
        if p.best_checkpoint and (self.run.checkpoints / p.best_checkpoint).is_dir():
            info = {"step": p.best_step, "metric": self.cfg.select_metric, "value": p.best_value}
            self.run.point_best(self.run.checkpoints / p.best_checkpoint, info | {"split": self.cfg.val_split})
        else:
            self.run.clear_best()

    # -- the loop ----------------------------------------------------------------------------------------------------

    def _loop(self) -> str:
        cfg, p = self.cfg, self.progress
        batches: Iterator[AVSBatch] | None = None
        while True:
            if p.step >= self.total_steps:
                return self._stop(self.length_reason)
            if self.budget.limited and self._out_of_time():
                return self._stop("max_minutes")
            if batches is None:
                if p.epoch != self._hooked_epoch:
                    self.model.on_epoch_start(p.epoch)
                    self._hooked_epoch = p.epoch
                    self._sync_trainable()
                batches = iter(self._loader(p.epoch, p.epoch_step * cfg.grad_accum_steps))
            started = self.budget.clock()
            losses = self._train_step([next(batches) for _ in range(cfg.grad_accum_steps)])
            seconds = self.budget.clock() - started
            self._train_s += seconds
            self.budget.record_step(seconds)
            step_epoch = p.epoch
            samples = cfg.batch_size * cfg.grad_accum_steps * self.world
            p.step += 1
            p.epoch_step += 1
            p.samples_seen += samples
            self._session_samples += samples
            self._session_steps += 1
            self.window.add(losses, samples, seconds)
            end_of_epoch = p.epoch_step == self.steps_per_epoch
            if end_of_epoch:
                p.epoch, p.epoch_step, batches = p.epoch + 1, 0, None
            if self._display is not None:
                self._display.update(p.step, loss=f"{losses['loss']:.4f}", epoch=step_epoch)
            if p.step % cfg.log_every == 0:
                self._log_train(step_epoch)
            if p.step >= self.total_steps:
                continue  # the final validation and checkpoint follow the loop
            new_best = False
            validated = self._periodic(cfg.val_every, end_of_epoch) and self.val_dataset is not None
            if validated:
                new_best = self._validate(step_epoch)
            if cfg.schedule.fit_to_budget and self.budget.refit_due(
                p.step, schedule_of(self.scheduler).warmup_steps, validated
            ):
                self._fit_schedule_to_budget()
            elif self._display_due(validated):
                self._display.set_total(self.budget.reachable_step(p.step, self._configured_steps))  # type: ignore[union-attr]
            if self._periodic(cfg.checkpoint_every, end_of_epoch) or new_best:
                self._checkpoint(step_epoch, new_best)

    def _stop(self, reason: str) -> str:
        if self._display is not None:
            self._display.set_total(self.progress.step)  # where the run actually ends: the bar ends full
        return reason

    def _periodic(self, every: int | None, end_of_epoch: bool) -> bool:
        return end_of_epoch if every is None else self.progress.step % every == 0

    def _loader(self, epoch: int, start_batch: int) -> DataLoader:
        cfg = self.cfg
        sampler = EpochBatchSampler(
            len(self.train_dataset),  # type: ignore[arg-type]
            batch_size=cfg.batch_size,
            batches_per_rank=self.steps_per_epoch * cfg.grad_accum_steps,
            seed=cfg.seed,
            epoch=epoch,
            rank=self.rank,
            world_size=self.world,
            start_batch=start_batch,
        )
        # An explicit generator: worker seeds come from (seed, epoch, rank), never from the global RNG, which
        # therefore advances only with the model's own randomness.
        generator = torch.Generator().manual_seed(derive_seed(cfg.seed, 3, epoch, self.rank))
        return DataLoader(
            self.train_dataset,
            batch_sampler=sampler,
            collate_fn=self.collate_fn,
            num_workers=cfg.num_workers,
            pin_memory=self.acc.device.type == "cuda",
            generator=generator,
        )

    def _train_step(self, micro_batches: Sequence[AVSBatch]) -> dict[str, float]:
        acc, cfg = self.acc, self.cfg
        self.wrapped.train()
        totals: dict[str, float] = {}
        # Each optimiser step consumes exactly grad_accum_steps micro-batches, so Accelerate's counter syncs on the
        # last one; resetting it keeps that true after a rebuilt optimiser or a resume.
        acc.step = 0
        for batch in micro_batches:
            batch = batch.to(acc.device)
            with acc.accumulate(self.wrapped):
                with acc.autocast():
                    output = self.wrapped(batch)
                    losses = self.model.losses(batch, output)
                loss = losses["loss"]
                if not torch.isfinite(loss.detach()).all():
                    raise TrainingError(
                        f"non-finite loss {float(loss):.4g} at step {self.progress.step + 1} "
                        f"(rank {self.rank}, videos {batch.video_id})"
                    )
                acc.backward(loss)
                if acc.sync_gradients:
                    if cfg.clip_grad_norm is not None:
                        norm = acc.clip_grad_norm_(self.wrapped.parameters(), cfg.clip_grad_norm)
                        totals["grad_norm"] = float(norm)
                    self.optimizer.step()
                    if not acc.optimizer_step_was_skipped:
                        self.scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
            for key, value in losses.items():
                if torch.is_tensor(value) and value.numel() == 1:
                    totals[key] = totals.get(key, 0.0) + float(value.detach()) / cfg.grad_accum_steps
        return totals

    def _sync_trainable(self) -> None:
        """After ``on_epoch_start``: if the set of trainable parameters changed, rebuild the optimiser (keeping the
        state of parameters that stay), the scheduler (at the current step) and, under DDP, the model wrapper."""
        unwrapped = self.model
        names = trainable_names(unwrapped)
        if names == self._trainable:
            return
        self._trainable = names
        old = self.raw_optimizer
        new = build_optimizer(unwrapped, self.cfg.optim)
        for group in new.param_groups:
            for param in group["params"]:
                if param in old.state:
                    new.state[param] = old.state[param]
        self.scheduler = build_scheduler(new, schedule_of(self.scheduler), 0, start_step=self.progress.step)
        # Accelerate keeps a reference to every model and optimiser it prepared, and acts on all of them: under fp16
        # it unscales the gradients of, and asks "was the step skipped?" of, every optimiser it holds; under DDP its
        # model list holds the old wrapper, whose reducer hooks the same parameters and must be gone before a new
        # wrapper registers its own (DDP registers the parameters that require grad when it wraps the model).
        # free_memory() is Accelerate's public way to forget them all (it also collects the garbage); the model and
        # the new optimiser are then prepared again: a new DDP wrapper, or in a single process the same model.
        self.wrapped = self.optimizer = None
        self.acc.free_memory()
        self.wrapped = self.acc.prepare_model(unwrapped)
        self.raw_optimizer = new
        self.optimizer = self.acc.prepare_optimizer(new)

    # -- time budget -------------------------------------------------------------------------------------------------

    def _out_of_time(self) -> bool:
        """Whether one more step, plus the validation and checkpoint that close the run, would exceed the budget.
        Rank 0 decides and broadcasts, so all ranks stop at the same step."""
        stop = self.is_main and not self.budget.next_step_fits(self.progress.step + 1)
        return bool(self._broadcast(stop))

    def _display_due(self, validated: bool) -> bool:
        """Whether to re-estimate, for the progress display only, where a time-budgeted run will end: from the
        second step on (the first is kept out of the step time), every few steps and after every validation, until
        ``fit_to_budget`` fixes the run's length."""
        if self._display is None or not self.budget.limited or self.budget.fitted or self.budget.step_s is None:
            return False
        return self._display.total is None or validated or self.progress.step % REFIT_EVERY == 0

    def _fit_schedule_to_budget(self) -> None:
        """Set the run's (and the schedule's) last step to the one the remaining time allows (rank 0 decides)."""
        p = self.progress
        total = self.budget.reachable_step(p.step, self._configured_steps) if self.is_main else self.total_steps
        total = int(self._broadcast(total))
        self.budget.fitted = True
        if total != self.total_steps:
            self.total_steps = total
            schedule_of(self.scheduler).refit(total)
            self.length_reason = "max_minutes"
        if self._display is not None:
            self._display.set_total(self.total_steps)

    # -- validation, checkpoints, logging ----------------------------------------------------------------------------

    def _validate(self, epoch: int) -> bool:
        """Score the model on the validation split (rank 0), log it, and tell whether it is the best so far."""
        started = self.budget.clock()
        metrics = None
        self._barrier()
        if self.is_main:
            evaluator = self.evaluator or default_evaluator(
                self.metric_preset,  # type: ignore[arg-type]
                batch_size=self.cfg.val_batch_size or self.cfg.batch_size,
                device=self.acc.device,
                num_workers=self.cfg.num_workers,
                progress=self._display is not None and self._display.tty,
            )
            if self._display is not None:
                try:
                    clips = f" ({len(self.val_dataset)} clips)"  # type: ignore[arg-type]
                except TypeError:
                    clips = ""
                self._display.phase(f"validating on {self.cfg.val_split}{clips}")
            was_training = self.model.training
            self.model.eval()
            try:
                with preserved_rng(), torch.no_grad():
                    metrics = {k: float(v) for k, v in evaluator(self.model, self.val_dataset).items()}
            finally:
                self.model.train(was_training)
        metrics = self._broadcast(metrics)
        seconds = self.budget.clock() - started
        self._val_s += seconds
        self.budget.record_validation(seconds)
        self._last_val_step, self._last_metrics = self.progress.step, metrics
        p, cfg = self.progress, self.cfg
        if cfg.select_metric not in metrics:
            raise TrainingError(
                f"train.select_metric={cfg.select_metric!r} is not among the validation metrics {sorted(metrics)}"
            )
        value = metrics[cfg.select_metric]
        better = math.isfinite(value) and (
            p.best_value is None or (value > p.best_value if cfg.select_mode == "max" else value < p.best_value)
        )
        if better:
            p.best_value, p.best_step = value, p.step
        if self._display is not None:
            best = " (best so far)" if better else ""
            self._display.note(
                f"validation at step {p.step}: {cfg.select_metric} {value:.4f}{best} on {cfg.val_split} in "
                f"{seconds:.1f} s"
            )
        event = {"event": "val", "step": p.step, "epoch": epoch, "split": cfg.val_split, "metrics": metrics}
        self._event({**event, "is_best": better, "seconds": round(seconds, 4), "elapsed_s": self._elapsed()})
        if self._tb is not None:
            for key, v in metrics.items():
                self._tb.add_scalar(f"val/{key}", v, p.step)
        return better

    def _checkpoint(self, epoch: int, is_best: bool) -> None:
        """Save ``step-XXXXXXX`` (rank 0; every rank contributes its RNG state), move the pointers, prune."""
        started = self.budget.clock()
        p = self.progress
        target = self.run.checkpoint(p.step)
        if is_best:
            p.best_checkpoint = target.name
        mine = {"rng": capture_rng_state(), "window": asdict(self.window)}
        per_rank = self._gather(mine)
        if self.is_main:
            training_state = {
                "progress": asdict(p),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.acc.scaler.state_dict() if self.acc.scaler is not None else None,
                "per_rank": per_rank,
                "hooked_epoch": self._hooked_epoch,
                "world_size": self.world,
                "train_config": config_to_dict(self.cfg),
            }
            meta = {
                "step": p.step,
                "epoch": epoch,
                "seed": self.cfg.seed,
                "val_split": self.cfg.val_split,
                # What the model was trained on: eval and predict read frames at this size and clip length, and
                # the format tells whether the model needs text.
                "data": self._data_record(),
                "metrics": self._last_metrics if self._last_val_step == p.step else None,
            }
            folder = save_checkpoint(
                target, self.model, preset=self.preset, training_state=training_state, meta=meta, overwrite=True
            )
            self.run.point_latest(folder, p.step)
            if is_best:
                info = {
                    "step": p.step,
                    "metric": self.cfg.select_metric,
                    "value": p.best_value,
                    "split": self.cfg.val_split,
                }
                self.run.point_best(folder, info)
            self.run.prune(self.cfg.keep_last, keep=p.best_checkpoint)
            self._event({"event": "checkpoint", "step": p.step, "path": str(folder), "is_best": is_best})
        self._barrier()
        self._last_ckpt_step = p.step
        self.budget.record_checkpoint(self.budget.clock() - started)

    def _log_train(self, epoch: int) -> None:
        w = self.window
        keys = sorted(w.sums)
        values = torch.tensor([w.sums[k] / max(1, w.steps) for k in keys], dtype=torch.float64)
        if self.world > 1:
            dist.all_reduce(values)
            values /= self.world
        losses = {k: float(v) for k, v in zip(keys, values)}
        lrs = group_lrs(self.optimizer)
        event = {
            "event": "train",
            "step": self.progress.step,
            "epoch": epoch,
            "loss": losses.get("loss"),
            "losses": losses,
            "lr": lrs,
            "samples_per_s": round(w.samples / w.seconds, 3) if w.seconds > 0 else None,
            "elapsed_s": self._elapsed(),
        }
        self._event(event)
        if self._tb is not None:
            for key, v in losses.items():
                self._tb.add_scalar(f"train/{key}", v, self.progress.step)
            for key, v in lrs.items():
                self._tb.add_scalar(f"lr/{key}", v, self.progress.step)
        self.window = _Window()

    def _event(self, event: Mapping[str, Any]) -> None:
        if self.is_main:
            self.run.append_event(event)

    def _elapsed(self) -> float:
        return round(self.budget.elapsed(), 3)

    # -- the end -----------------------------------------------------------------------------------------------------

    def _finish(self, reason: str, resumed_from: str | None) -> TrainSummary:
        p = self.progress
        epoch = p.epoch if p.epoch_step else max(0, p.epoch - 1)
        if self.window.steps:
            self._log_train(epoch)
        new_best = False
        if self.val_dataset is not None and self._last_val_step != p.step:
            new_best = self._validate(epoch)
        if self._last_ckpt_step != p.step or new_best:
            self._checkpoint(epoch, new_best)
        digests = self._gather(parameter_digest(self.model.named_parameters()))
        memory, memory_kind = peak_memory(self.acc.device)
        per_rank_memory = [m for m in self._gather(memory) if m is not None]
        memory = max(per_rank_memory) if per_rank_memory else None  # the largest process
        best = None
        if p.best_value is not None:
            best = {"metric": self.cfg.select_metric, "value": p.best_value, "step": p.best_step}
            best |= {"checkpoint": p.best_checkpoint, "split": self.cfg.val_split}
        summary = TrainSummary(
            steps=p.step,
            total_steps=self.total_steps,
            steps_per_epoch=self.steps_per_epoch,
            epochs=round(p.step / self.steps_per_epoch, 4),
            samples_seen=p.samples_seen,
            samples_per_s=round(self._session_samples / self._train_s, 3) if self._train_s > 0 else 0.0,
            wall_time_s=self._elapsed(),
            train_time_s=round(self._train_s, 3),
            val_time_s=round(self._val_s, 3),
            world_size=self.world,
            device=str(self.acc.device),
            mixed_precision=str(self.acc.mixed_precision),
            stopped_reason=reason,
            peak_memory_mib=None if memory is None else round(memory, 1),
            peak_memory_kind=memory_kind,
            best=best,
            final_metrics=self._last_metrics,
            last_checkpoint=str(self.run.checkpoint(p.step)),
            resumed_from=resumed_from,
            seed=self.cfg.seed,
            param_digests=digests,
            ranks_in_sync=len(set(digests)) == 1,
            planned_steps=self._configured_steps,
        )
        if self.is_main:
            self.run.write_summary(asdict(summary))
        return summary

    # -- collectives (no-ops in a single process) --------------------------------------------------------------------

    def _distributed(self) -> bool:
        return self.world > 1 and dist.is_available() and dist.is_initialized()

    def _barrier(self) -> None:
        if self._distributed():
            dist.barrier()

    def _broadcast(self, obj: Any) -> Any:
        if not self._distributed():
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def _data_record(self) -> dict[str, Any]:
        """The training data as checkpoints record it (``meta.data``): the format, the size frames were read at (the
        first training clip's, so a run that read frames as stored records the size they had) and the clip length.
        Computed once."""
        if self._data_meta is None:
            data = self.run_config.get("data") or {}
            record: dict[str, Any] = {"format": data.get("format"), "image_size": data.get("image_size")}
            # The first clip as the reader decodes it, without the training transform: a transform draws random
            # numbers, and taking them here would change the run's random stream (and break exact resumption).
            reader, records = getattr(self.train_dataset, "reader", None), getattr(self.train_dataset, "records", None)
            frames = reader.load(records[0]).frames if reader is not None and records else None  # (T, 3, H, W)
            if frames is not None and frames.ndim == 4:
                h, w = int(frames.shape[-2]), int(frames.shape[-1])
                record["image_size"] = h if h == w else [h, w]
                record["num_frames"] = int(frames.shape[0])
            self._data_meta = record
        return self._data_meta

    def _gather(self, obj: Any) -> list[Any]:
        if not self._distributed():
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out
