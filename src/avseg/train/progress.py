"""Training progress for a person: a tqdm bar on a terminal, a few plain lines in a log."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["ProgressDisplay"]


def _duration(seconds: float) -> str:
    """``1:02:03`` or ``2:03``."""
    minutes, secs = divmod(round(max(0.0, seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ProgressDisplay:
    """Training progress for a person: a tqdm bar on a terminal, plain lines in a log.

    On a terminal the bar shows the step, steps/s, the elapsed time and the ETA, with the loss and the epoch beside
    them. When the output is not a terminal (a log file, a CI job), a bar would write a carriage-return update ten
    times a second into one endless line; instead a line such as ``train: step 120/800 (15%), loss 0.4312, epoch 2,
    2.10 steps/s, elapsed 0:57, ETA 5:20`` is written when training starts, at most every ``interval`` seconds after
    that, around each validation and at the end.

    Args:
        total: the step the run will reach; None while it is not known (a time budget not yet estimated).
        initial: steps already done (a resumed run).
        desc: the bar's label and the lines' prefix.
        stream: where to write (default: ``sys.stderr`` at construction).
        tty: draw a bar (default: whether ``stream`` is a terminal).
        interval: least seconds between two log lines while training steps run.
        clock: monotonic seconds, for the rate, the elapsed time and the interval (the trainer passes its own).
    """

    def __init__(
        self,
        total: int | None,
        initial: int = 0,
        *,
        desc: str = "train",
        stream: Any = None,
        tty: bool | None = None,
        interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        if tty is None:
            isatty = getattr(self.stream, "isatty", None)
            tty = bool(isatty()) if callable(isatty) else False
        self.tty = tty
        self.desc = desc
        self.total = total
        self.step = self._first = initial
        self.interval = interval
        self.postfix: dict[str, str] = {}
        self._clock = clock
        self._started = clock()
        self._last_line: float | None = None
        self._last_status_step: int | None = None
        self._bar: Any = None
        if tty:
            from tqdm import tqdm

            # unit "step": the rate reads steps/s, as in the log lines; tqdm adds the ETA once the total is known.
            self._bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True, file=self.stream)

    def set_total(self, total: int | None) -> None:
        """The run will reach ``total`` steps (a time budget's re-made estimate, or the step it stopped at)."""
        if total == self.total:
            return
        self.total = total
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

    def update(self, step: int, **postfix: Any) -> None:
        """Training reached ``step``; ``postfix`` (loss, epoch) is shown beside the count."""
        self.postfix = {key: str(value) for key, value in postfix.items()}
        if self._bar is not None:
            self._bar.set_postfix(self.postfix, refresh=False)
            self._bar.update(step - self.step)
        self.step = step
        if self._bar is None:
            now = self._clock()
            if self._last_line is None or now - self._last_line >= self.interval:
                self._status_line(now)

    def phase(self, text: str) -> None:
        """Something other than training steps runs now (``validating on val (25 clips)``): shown in place of the
        loss on a terminal, as a line in a log."""
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=True)
        else:
            self._line(f"step {self._count()}: {text}")

    def note(self, text: str) -> None:
        """A line that stays (a validation's result): above the bar on a terminal."""
        if self._bar is not None:
            self._bar.write(f"{self.desc}: {text}", file=self.stream)
            self._bar.set_postfix(self.postfix)
        else:
            self._line(text)

    def close(self) -> None:
        """End the bar; in a log, write the last count unless the last count line showed it."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._last_status_step != self.step:
            self._status_line(self._clock())

    def _count(self) -> str:
        if not self.total:
            return f"{self.step}"
        return f"{self.step}/{self.total} ({100.0 * self.step / self.total:.0f}%)"

    def _status(self, now: float) -> str:
        done, elapsed = self.step - self._first, now - self._started
        rate = done / elapsed if done > 0 and elapsed > 0 else None
        parts = [f"step {self._count()}", *(f"{key} {value}" for key, value in self.postfix.items())]
        if rate is not None:
            parts.append(f"{rate:.2f} steps/s")
        parts.append(f"elapsed {_duration(elapsed)}")
        if rate is not None and self.total and self.step < self.total:
            parts.append(f"ETA {_duration((self.total - self.step) / rate)}")
        elif not self.total:
            parts.append("ETA once the time budget is estimated")
        return ", ".join(parts)

    def _status_line(self, now: float) -> None:
        self._line(self._status(now))
        self._last_status_step = self.step

    def _line(self, text: str) -> None:
        print(f"{self.desc}: {text}", file=self.stream, flush=True)
        self._last_line = self._clock()
