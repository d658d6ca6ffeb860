"""TimeBudget on a fake clock: the first step kept out of the step time, the reserve for the final validation and
checkpoint, the reachable step with its margin, and when the schedule is re-estimated."""

from __future__ import annotations

import pytest

from avseg.train.budget import TimeBudget


class FakeClock:
    def __init__(self, now: float = 500.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def budget(clock: FakeClock, limit_s: float | None = 100.0, **kw) -> TimeBudget:
    return TimeBudget(limit_s=limit_s, start=clock.now, clock=clock, **kw)


def test_without_a_deadline_every_step_fits_and_the_clock_still_times():
    clock = FakeClock()
    b = budget(clock, limit_s=None)
    clock.now += 1e6
    assert not b.limited and b.elapsed() == 1e6
    assert b.next_step_fits(1)
    b.record_step(1.0)
    b.record_step(1.0)
    assert not b.refit_due(20, 0, validated=True)
    with pytest.raises(ValueError, match="deadline"):
        b.reachable_step(20, 100)


def test_the_first_step_is_kept_out_of_the_step_time():
    b = budget(FakeClock())
    b.record_step(30.0)  # lazy initialisation, the first batches
    assert b.first_step_s == 30.0 and b.step_s is None
    b.record_step(1.0)
    assert b.step_s == 1.0
    b.record_step(2.0)
    assert b.step_s == pytest.approx(0.8 * 1.0 + 0.2 * 2.0)


def test_a_step_fits_when_the_final_validation_and_checkpoint_still_do():
    clock = FakeClock()
    # 4 samples per step, 8 validation clips: before the first validation, one validation ~ 2 steps.
    b = budget(clock, samples_per_step=4, val_samples=8, val_every=10, checkpoint_every=5, checkpoint_bytes=0)
    clock.now += 99.5
    assert b.next_step_fits(1)  # no step time yet: any time left will do
    clock.now += 0.5
    assert not b.next_step_fits(1)
    b = budget(clock, samples_per_step=4, val_samples=8, val_every=10, checkpoint_every=5, checkpoint_bytes=0)
    b.record_step(3.0)
    b.record_step(1.0)
    assert b.validation_estimate() == 2.0 and b.checkpoint_estimate() == pytest.approx(0.2)
    clock.now += 96.0
    assert b.next_step_fits(3)  # 96 + 1 (step) + 2 (final validation) + 0.2 (final checkpoint) = 99.2
    assert not b.next_step_fits(10)  # plus a periodic validation and checkpoint: 101.4
    assert b.next_step_fits(5)  # plus a periodic checkpoint only: 99.4
    b.record_validation(5.0)  # validations turn out slower than estimated
    assert not b.next_step_fits(3)  # 96 + 1 + 5 + 0.2


def test_without_validation_only_the_checkpoint_is_reserved():
    clock = FakeClock()
    b = budget(clock, val_every=10, checkpoint_bytes=200_000_000)
    assert b.validation_estimate() == 0.0
    assert b.checkpoint_estimate() == pytest.approx(0.2 + 3.0)  # weights and two Adam moments at 200 MB/s
    b.record_checkpoint(0.5)
    assert b.checkpoint_estimate() == 0.5
    b.record_step(1.0)
    b.record_step(1.0)
    clock.now += 98.4
    assert b.next_step_fits(10)  # 98.4 + 1 (step) + 0.5 (final checkpoint); a validation step costs nothing extra
    clock.now += 0.2
    assert not b.next_step_fits(11)


def test_the_reachable_step_prices_validations_and_keeps_a_margin():
    clock = FakeClock()
    b = budget(clock, samples_per_step=2, val_samples=4, val_every=20)
    b.record_step(9.0)
    b.record_step(0.5)
    b.record_validation(2.0)
    b.record_checkpoint(1.0)
    clock.now += 10.0
    # 100 - 10 elapsed - 2 final validation - 1 final checkpoint = 87 s: 174 steps; a validation every 20 steps costs
    # 2 s = 4 steps, so 174 / 1.2 = 145 steps, of which 97% are planned: 140.
    assert b.reachable_step(50, 100_000) == 50 + 140
    assert b.reachable_step(50, 120) == 120  # never past the recipe's length
    clock.now += 1000.0
    assert b.reachable_step(50, 100_000) == 50  # nothing left: the run ends where it is


def test_the_schedule_is_estimated_after_the_warmup_then_every_25_steps_and_after_validations():
    b = budget(FakeClock())
    b.record_step(1.0)
    b.record_step(1.0)
    assert not b.refit_due(19, 5, validated=True)  # at least 20 steps measured
    assert b.refit_due(20, 5, validated=False)
    b.fitted = True
    assert [s for s in range(21, 100) if b.refit_due(s, 5, validated=False)] == [45, 70, 95]
    assert b.refit_due(52, 5, validated=True)
    b = budget(FakeClock())
    b.record_step(1.0)
    b.record_step(1.0)
    assert not b.refit_due(20, 30, validated=False) and b.refit_due(30, 30, validated=False)  # a longer warmup


def test_a_resumed_session_estimates_as_soon_as_it_has_timed_a_step():
    b = budget(FakeClock())
    assert not b.refit_due(45, 5, validated=True)  # the session's first step: nothing measured yet
    b.record_step(3.0)
    assert not b.refit_due(45, 5, validated=False)
    b.record_step(1.0)
    assert b.refit_due(46, 5, validated=False)  # not a multiple of 25 after the warmup, but never estimated yet
