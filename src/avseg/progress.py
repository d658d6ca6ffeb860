"""Progress of the long phases a person waits for (decoding, segmenting, writing, generating, converting) on stderr."""

from __future__ import annotations

import contextlib
import contextvars
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["LOG_INTERVAL_S", "Listener", "Progress", "report_to"]

Listener = Callable[[str, int, "int | None"], None]
"""Called as ``listener(desc, count, total)`` when a phase starts and after each update (a web page's progress bar)."""

_LISTENER: contextvars.ContextVar[Listener | None] = contextvars.ContextVar("avseg_progress_listener", default=None)

LOG_INTERVAL_S = 15.0
"""Seconds between two progress lines when stderr is not a terminal (a log file, CI): often enough to see that a long
run moves, rarely enough that an hour-long phase writes 240 lines, not one per frame."""


@contextlib.contextmanager
def report_to(listener: Listener) -> Iterator[None]:
    """Send the progress of every phase started inside the ``with`` block, in this thread or task, to ``listener``.

    This is how a program that embeds avseg shows its progress (``avseg app`` drives its page's bar with it), whether
    or not anything is printed: :class:`Progress` calls the listener even when disabled (``--quiet``).
    """
    token = _LISTENER.set(listener)
    try:
        yield
    finally:
        _LISTENER.reset(token)


class Progress:
    """Progress of one long phase on stderr, with its total.

    On a terminal: a ``tqdm`` bar (with its rate and ETA), removed when the phase ends. Otherwise (a log file, a CI
    job), where a bar's carriage returns would pile up into one unreadable line: a plain line ``desc: done/total
    units (pct%), N s, R units/s, ETA M s`` at most every :data:`LOG_INTERVAL_S` seconds (the ETA while units remain
    and the total is known), and a last one when a phase that lasted that long ends; a short phase prints nothing.
    Disabled, it only counts.

    Args:
        desc: what the phase does (``"decoding clip.mp4"``).
        total: units the phase will count, when known.
        unit: the singular name of a unit (``"frame"``).
        enabled: show anything at all.
        clock: seconds, monotonic (a virtual clock in tests).
    """

    def __init__(
        self,
        desc: str,
        total: int | None,
        unit: str,
        *,
        enabled: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.desc, self.total, self.unit = desc, total, unit
        self.count = 0
        self._clock = clock
        self._start = self._last = clock()
        self._printed: int | None = None  # count shown by the last line
        self._bar = None
        self._listener = _LISTENER.get()
        if self._listener is not None:
            self._listener(desc, 0, total)
        self._lines = enabled and not _is_terminal(sys.stderr)
        if enabled and not self._lines:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units done."""
        self.count += n
        if self._listener is not None:
            self._listener(self.desc, self.count, self.total)
        if self._bar is not None:
            self._bar.update(n)
        elif self._lines:
            now = self._clock()
            if now - self._last >= LOG_INTERVAL_S:
                self._last = now
                self._print(now)

    def close(self) -> None:
        """End the phase: remove the bar, or print the last count of a phase long enough to have printed lines."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._lines:
            now = self._clock()
            if now - self._start >= LOG_INTERVAL_S and self._printed != self.count:
                self._print(now)
            self._lines = False

    def _print(self, now: float) -> None:
        elapsed = now - self._start
        done = f"{self.count}/{self.total}" if self.total else str(self.count)
        share = f" ({100 * self.count / self.total:.0f}%)" if self.total else ""
        line = f"{self.desc}: {done} {self.unit}s{share}, {elapsed:.0f} s"
        if elapsed > 0 and self.count > 0:
            rate = self.count / elapsed
            line += f", {rate:.0f}" if rate >= 10 else f", {rate:.2g}"
            line += f" {self.unit}s/s"
            if self.total and self.count < self.total:
                line += f", ETA {(self.total - self.count) / rate:.0f} s"
        print(line, file=sys.stderr, flush=True)
        self._printed = self.count


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
