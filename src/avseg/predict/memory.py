"""A guard against decoding more frames than memory holds: refused with a message, not killed half-way."""

from __future__ import annotations

from avseg.errors import AVSegError

__all__ = ["available_memory", "check_memory"]


def available_memory() -> int | None:
    """Bytes the kernel says can be allocated without swapping (Linux ``MemAvailable``); None elsewhere."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_memory(needed: int, what: str, advice: str) -> None:
    """Raise :class:`~avseg.errors.AVSegError` when ``needed`` bytes exceed 80% of :func:`available_memory`.

    Args:
        needed: bytes the work will hold at once.
        what: the work, for the message (``"6 sampled frames of clip.mp4"``).
        advice: how to need less (``"a lower --fps"``).
    """
    available = available_memory()
    if available is not None and needed > 0.8 * available:
        raise AVSegError(
            f"{what}: about {needed / 2**30:.1f} GiB of memory needed (frames at full resolution), only "
            f"{available / 2**30:.1f} GiB available; use {advice}, or cut the video into parts"
        )
