"""Converters from the authors' released checkpoints to avseg checkpoints (``avseg convert <method> IN OUT``).

Each converter is a pure key map (upstream name → avseg name) plus the command that applies it, loads nothing
through unrestricted pickle, and reports every unmapped key.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from avseg.errors import CheckpointError

__all__ = ["load_fitting_state"]


def load_fitting_state(
    holder: nn.Module,
    state: Mapping[str, Tensor],
    *,
    src: str | Path,
    preset: str,
    dtype: torch.dtype | None = None,
    sources: str = "",
    hint: str = "",
) -> None:
    """Load converted tensors into ``holder`` strictly, or raise one :class:`~avseg.errors.CheckpointError` naming
    ``src`` and the missing, unexpected and shape-mismatched keys (the first eight of each).

    Args:
        holder: the model (or the part of it a checkpoint stores) built from the converted config.
        state: avseg name → tensor.
        src: the released file or folder, named in the error.
        preset: the preset the config came from, named in the error.
        dtype: cast every tensor to it (None: to the dtype of the parameter it replaces).
        sources: the files the tensors came from, named after the keys (e.g. the shards of a release).
        hint: what the user can change, appended to the error (e.g. ``"see --preset, --overrides"``).
    """
    own = holder.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [
        f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if tuple(own[k].shape) != tuple(state[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("shape-mismatched", mismatched)):
            if keys:
                more = f", ... ({len(keys)} in all)" if len(keys) > 8 else ""
                parts.append(f"{title}: " + ", ".join(keys[:8]) + more)
        where = f" (read from {sources})" if sources else ""
        advice = f" ({hint})" if hint else ""
        raise CheckpointError(src, f"does not fit preset {preset!r}{where}: " + "; ".join(parts) + advice)
    holder.load_state_dict(
        {k: v.to(dtype if dtype is not None else own[k].dtype) for k, v in state.items()}, strict=True, assign=True
    )
