"""Turning a ``--device`` string into a ``torch.device`` that exists on this machine, or one clear error."""

from __future__ import annotations

import torch

from avseg.errors import UsageError

__all__ = ["resolve_device"]


def resolve_device(device: str | torch.device = "auto", *, arg: str = "--device") -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cpu``, ``cuda``, ``cuda:N`` and ``mps`` are checked.

    Raises:
        UsageError: for a string torch does not know (``banana``), or a device this machine does not have (``cuda``
            on a CPU-only torch, ``cuda:3`` on a one-GPU machine); the message names ``arg``.
    """
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError):
        raise UsageError(f"{arg} {device!r}: not a device; use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"{arg} {device!r}: this torch build or machine has no CUDA device; use cpu or auto")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise UsageError(f"{arg} {device!r}: only {torch.cuda.device_count()} CUDA device(s) on this machine")
    elif resolved.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise UsageError(f"{arg} {device!r}: MPS is not available on this machine; use cpu or auto")
    elif resolved.type != "cpu":
        raise UsageError(f"{arg} {device!r}: unsupported device type {resolved.type!r}; use auto, cpu or cuda")
    return resolved
