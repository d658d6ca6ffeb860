"""The wall-clock side of a training run: its clock, the ``max_minutes`` deadline, and what it will still allow.

The trainer measures every optimiser step, validation and checkpoint and reports them here; :class:`TimeBudget`
turns those measurements into the three decisions a time-budgeted run needs:

- whether one more step, with the validation and checkpoint it may trigger, still leaves time for the final validation
  and checkpoint (:meth:`TimeBudget.next_step_fits`);
- the step the remaining time reaches (:meth:`TimeBudget.reachable_step`), which ``schedule.fit_to_budget`` makes the
  end of the learning-rate schedule, and which the progress display counts to;
- when to (re-)estimate that step (:meth:`TimeBudget.refit_due`): the machine may slow down or speed up during a run.

Only durations are measured, so the clock is any monotonic ``() -> seconds`` function; tests pass a virtual one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["TimeBudget"]

STEP_EMA_WEIGHT = 0.2
"""Weight of the newest step time in the step-time estimate (an exponential moving average)."""
MARGIN = 0.97
"""Share of the estimated reachable steps that is planned, so that a fitted schedule ends before the hard stop."""
FIRST_REFIT_STEP = 20
"""The earliest step of the first estimate: enough steps for the step time to be measured."""
REFIT_EVERY = 25
"""Steps between two estimates (also after every validation)."""
CHECKPOINT_BYTES_PER_S = 200e6
"""A conservative write speed for the checkpoint estimate before the first checkpoint is timed."""
CHECKPOINT_FIXED_S = 0.2
"""The fixed cost of a checkpoint (folders, pointers, RNG states) in that estimate."""


@dataclass
class TimeBudget:
    """The clock of a run, its optional deadline, and the step, validation and checkpoint times measured so far.

    Attributes:
        limit_s: seconds the run may take from ``start`` (``train.max_minutes * 60``); None: no deadline (the clock
            still times the run).
        start: ``clock()`` when the budget started (a command may start it before its own setup).
        clock: monotonic seconds.
        samples_per_step: samples one optimiser step takes on one process (``batch_size * grad_accum_steps``); the
            validation estimate before the first validation prices a validation clip like a training sample.
        val_samples: clips of one validation; None when the run does not validate.
        val_every: steps between periodic validations (None: validation at epoch ends, not priced per step).
        checkpoint_every: steps between periodic checkpoints (None: likewise).
        checkpoint_bytes: bytes of the trained weights; a checkpoint writes them and two Adam moments.
        first_step_s: the first step of this invocation (a resumed run starts a new one), kept out of the step
            time: it pays one-off costs (lazy initialisation, the first batches) that would inflate every estimate.
        step_s: the step time, an exponential moving average of the steps after the first.
        last_val_s: the last validation's duration.
        last_checkpoint_s: the last checkpoint's duration.
        fitted: whether the reachable step was estimated for the schedule since this invocation started.
    """

    limit_s: float | None
    start: float
    clock: Callable[[], float] = time.monotonic
    samples_per_step: int = 1
    val_samples: int | None = None
    val_every: int | None = None
    checkpoint_every: int | None = None
    checkpoint_bytes: int = 0
    first_step_s: float | None = None
    step_s: float | None = None
    last_val_s: float | None = None
    last_checkpoint_s: float | None = None
    fitted: bool = False

    # -- the clock ---------------------------------------------------------------------------------------------------

    @property
    def limited(self) -> bool:
        """Whether the run has a deadline."""
        return self.limit_s is not None

    def elapsed(self) -> float:
        """Seconds since :attr:`start`."""
        return self.clock() - self.start

    # -- measurements ------------------------------------------------------------------------------------------------

    def record_step(self, seconds: float) -> None:
        """An optimiser step took ``seconds``."""
        if self.first_step_s is None:
            self.first_step_s = seconds
        elif self.step_s is None:
            self.step_s = seconds
        else:
            self.step_s = (1.0 - STEP_EMA_WEIGHT) * self.step_s + STEP_EMA_WEIGHT * seconds

    def record_validation(self, seconds: float) -> None:
        """A validation took ``seconds``."""
        self.last_val_s = seconds

    def record_checkpoint(self, seconds: float) -> None:
        """A checkpoint took ``seconds``."""
        self.last_checkpoint_s = seconds

    def validation_estimate(self) -> float:
        """Seconds of one validation: the last one's, else a training step's time per sample times the clips (data
        loading dominates small models); 0 without validation. Needs a step time or a timed validation."""
        if self.val_samples is None:
            return 0.0
        if self.last_val_s is not None:
            return self.last_val_s
        if self.step_s is None:
            raise ValueError("no step time measured yet: a validation cannot be estimated")
        return self.step_s / self.samples_per_step * self.val_samples

    def checkpoint_estimate(self) -> float:
        """Seconds of one checkpoint: the last one's, else weights plus two Adam moments at a conservative speed."""
        if self.last_checkpoint_s is not None:
            return self.last_checkpoint_s
        return CHECKPOINT_FIXED_S + 3 * self.checkpoint_bytes / CHECKPOINT_BYTES_PER_S

    # -- decisions ---------------------------------------------------------------------------------------------------

    def next_step_fits(self, next_step: int) -> bool:
        """Whether step ``next_step``, with the periodic validation and checkpoint it triggers, plus the validation
        and checkpoint that close the run, end before the deadline. Before a step time is measured: whether time is
        left at all. Always true without a deadline."""
        if self.limit_s is None:
            return True
        elapsed = self.elapsed()
        if self.step_s is None:
            return elapsed < self.limit_s
        reserve = self.validation_estimate() + self.checkpoint_estimate()
        periodic = 0.0
        if self.val_every is not None and next_step % self.val_every == 0:
            periodic += self.validation_estimate()
        if self.checkpoint_every is not None and next_step % self.checkpoint_every == 0:
            periodic += self.checkpoint_estimate()
        return elapsed + self.step_s + periodic + reserve <= self.limit_s

    def reachable_step(self, step: int, planned: int) -> int:
        """The step the remaining time reaches, from ``step`` on, after the final validation and checkpoint, with the
        periodic validations priced in and a margin of ``1 - MARGIN``; between ``step`` and ``planned`` (the length
        the recipe asks for). Needs a deadline."""
        if self.limit_s is None:
            raise ValueError("reachable_step needs a deadline (limit_s)")
        remaining = self.limit_s - self.elapsed() - self.validation_estimate() - self.checkpoint_estimate()
        steps = remaining / self.step_s if self.step_s else 0.0
        if self.val_every is not None and self.val_samples is not None and self.step_s:
            # Each periodic validation costs about this many training steps.
            steps = steps / (1.0 + self.validation_estimate() / (self.val_every * self.step_s))
        steps *= MARGIN
        return max(step, min(planned, step + int(steps)))

    def refit_due(self, step: int, warmup_steps: int, validated: bool) -> bool:
        """Whether to estimate the reachable step for the schedule after ``step``: first at the end of the warmup (at
        least :data:`FIRST_REFIT_STEP`), then every :data:`REFIT_EVERY` steps and after every validation (the
        machine may slow down or speed up). Never before this invocation has measured a step time: a resumed run
        estimates as soon as it has one."""
        if self.limit_s is None or self.step_s is None:
            return False
        first = max(FIRST_REFIT_STEP, warmup_steps)
        if step < first:
            return False
        return not self.fitted or validated or (step - first) % REFIT_EVERY == 0
