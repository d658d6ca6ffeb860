"""Converters from the authors' released checkpoints to avseg checkpoints (``avseg convert <method> IN OUT``).

Each converter is a pure key map (upstream name → avseg name) plus the command that applies it, loads nothing
through unrestricted pickle, and reports every unmapped key.

Every ``avseg convert`` command shows the phases that take time (reading the released file, mapping its tensors,
writing the checkpoint) on stderr (:func:`conversion_phase`), none with ``--quiet``, and ends with the same summary
(:func:`conversion_summary`): a few lines, or with ``--json`` one JSON document on stdout.
"""

from __future__ import annotations

import contextlib
import json as jsonlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from avseg.errors import CheckpointError, MissingFileError
from avseg.progress import Progress

__all__ = [
    "ConversionReport",
    "conversion_phase",
    "conversion_summary",
    "converter_preset",
    "load_fitting_state",
    "print_conversion",
    "read_released_state",
    "tensor_values",
]


@contextlib.contextmanager
def conversion_phase(desc: str, *, enabled: bool, total: int = 1, unit: str = "file") -> Iterator[Progress]:
    """One phase of a conversion (``"reading release.pth"``), shown on stderr while it runs (:class:`Progress`).

    A phase the converter cannot count inside (one ``torch.load``, one file written) is one unit, counted done when
    the ``with`` block ends without error.

    Args:
        desc: what the phase does.
        enabled: show it (False under ``--quiet``).
        total: units of the phase (files read, tensors mapped).
        unit: the singular name of a unit.
    """
    with Progress(desc, total, unit, enabled=enabled) as bar:
        yield bar
        if bar.count < total:
            bar.update(total - bar.count)


def tensor_values(tensors: Iterable[Tensor]) -> int:
    """The number of floating-point values among ``tensors``: the weights (integer buffers such as position ids are
    left out)."""
    return sum(t.numel() for t in tensors if t.is_floating_point())


def conversion_summary(
    source: str | Path,
    destination: str | Path,
    *,
    preset: str | None,
    tensors: int,
    parameters: int,
    dropped: Mapping[str, int],
    **extra: Any,
) -> dict[str, Any]:
    """What a conversion did, as ``avseg convert ... --json`` prints it.

    Conversions are strict (every weight of the avseg model filled, with its shape), so nothing is ever missing from
    a converted checkpoint; the released keys left out are counted per reason in ``dropped``.

    Args:
        source: the released file or folder.
        destination: the avseg checkpoint (or layer) folder written.
        preset: the avseg preset the checkpoint loads as (None for a SAM2 layer folder made from a .pt file).
        tensors: the tensors written.
        parameters: their floating-point values (:func:`tensor_values`).
        dropped: released keys left out, per reason.
        extra: converter-specific entries (the TPAVI stages, the SAM2 variant).
    """
    return {
        "source": str(source),
        "destination": str(destination),
        "preset": preset,
        "tensors": tensors,
        "parameters": parameters,
        "dropped": dict(dropped),
        **extra,
    }


def print_conversion(summary: Mapping[str, Any], lines: Iterable[str], *, json: bool) -> None:
    """End a conversion: ``summary`` as one JSON document on stdout with ``json``, else ``lines``."""
    if json:
        print(jsonlib.dumps(dict(summary), indent=2))
    else:
        for line in lines:
            print(line)


@dataclass
class ConversionReport:
    """What a conversion did: counts per outcome and the keys it dropped or could not place."""

    converted: int = 0
    dropped: dict[str, list[str]] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)
    preset: str | None = None
    """The preset the checkpoint was written for (once written)."""
    tensors: int = 0
    """Tensors written (once written)."""
    parameters: int = 0
    """Floating-point values written (:func:`tensor_values`; once written)."""
    note: str | None = None
    """The summary recorded in the checkpoint when it differs from :meth:`summary` (once written)."""

    def drop(self, reason: str, key: str) -> None:
        self.dropped.setdefault(reason, []).append(key)

    def written(self, preset: str, state: Mapping[str, Tensor]) -> None:
        """Record what the checkpoint holds: ``state`` written for ``preset``."""
        self.preset, self.tensors, self.parameters = preset, len(state), tensor_values(state.values())

    def summary(self) -> str:
        parts = [f"{self.converted} tensors converted"]
        parts += [f"{len(keys)} dropped ({reason})" for reason, keys in self.dropped.items()]
        if self.unknown:
            parts.append(f"{len(self.unknown)} unknown")
        return ", ".join(parts)

    def refuse_unknown(self, src: str | Path) -> None:
        """Raise :class:`~avseg.errors.CheckpointError` naming (up to ten of) the released keys no rule placed."""
        if self.unknown:
            more = f", ... ({len(self.unknown)} in all)" if len(self.unknown) > 10 else ""
            raise CheckpointError(src, f"released keys with no avseg name: {', '.join(self.unknown[:10])}{more}")

    def save(
        self,
        dst: str | Path,
        model: nn.Module,
        state: Mapping[str, Tensor],
        *,
        src: str | Path,
        preset: str,
        overwrite: bool,
        progress: bool,
        note: str | None = None,
    ) -> Path:
        """Write ``model`` (holding the converted ``state``) as the avseg checkpoint ``dst`` for ``preset``, atomically,
        recording the source and ``note`` (default :meth:`summary`) in its metadata; returns the folder."""
        from avseg.checkpoint import save_checkpoint  # deferred: the checkpoint module imports the model registry

        with conversion_phase(f"writing {Path(dst).name}", enabled=progress):
            out = save_checkpoint(
                dst,
                model,
                preset=preset,
                overwrite=overwrite,
                meta={"converted_from": str(src), "conversion": note or self.summary()},
            )
        self.written(preset, state)
        self.note = note
        return out

    def print_summary(self, src: str | Path, dst: str | Path, *, json: bool) -> None:
        """End the ``avseg convert`` command: the summary as JSON (:func:`conversion_summary`) with ``json``, else a
        line (the recorded note, or :meth:`summary`) and one line per reason keys were dropped."""
        dropped = {reason: len(keys) for reason, keys in self.dropped.items()}
        summary = conversion_summary(
            src, dst, preset=self.preset, tensors=self.tensors, parameters=self.parameters, dropped=dropped
        )
        lines = [f"{src} -> {dst}: {self.note or self.summary()}"]
        lines += [f"  dropped ({reason}): {len(keys)} keys, e.g. {keys[0]}" for reason, keys in self.dropped.items()]
        print_conversion(summary, lines, json=json)


def converter_preset(preset: str, *, family: str, method: str, dst: str | Path, overwrite: bool) -> Any:
    """Check a converter's output and ``--preset`` before any weight is read: ``dst`` must not exist unless
    ``overwrite``, and ``preset`` must be a registered preset of ``family``; returns its registry entry.

    Raises:
        CheckpointExistsError: ``dst`` exists and ``overwrite`` is off.
        UsageError: an unknown preset, or one of another family (``method`` names the expected one in the message).
    """
    from avseg.checkpoint import CheckpointExistsError
    from avseg.errors import UsageError
    from avseg.models.registry import get_entry

    if Path(dst).exists() and not overwrite:  # released weights can be tens of gigabytes: fail before reading them
        raise CheckpointExistsError(f"{dst}: already exists (pass --overwrite to replace it)")
    try:
        entry = get_entry(preset)
    except ValueError as err:
        raise UsageError(f"--preset: {err}") from err
    if getattr(entry.model_cls, "family", None) != family:
        raise UsageError(f"--preset {preset!r} is not {method} preset")
    return entry


def read_released_state(
    path: str | Path, what: str, *, wrappers: tuple[str, ...] = ("state_dict", "model"), mmap: bool = False
) -> dict[str, Tensor]:
    """Read a released checkpoint's state dict without running pickled code.

    A ``.safetensors`` file is read as such; anything else with ``torch.load(weights_only=True)``, which rebuilds
    tensors and plain containers only. A state dict that the training script saved inside a dict (``{"state_dict":
    ...}``, ``{"model": ...}``) is unwrapped, the ``wrappers`` keys tried in order (nested wrappers too).

    Args:
        path: the released file.
        what: what it is, for the messages (``"released EEMC checkpoint (.pth)"``).
        wrappers: keys under which the state dict may sit.
        mmap: memory-map a zip-format ``torch.save`` file instead of reading it whole (multi-GB releases).

    Raises:
        MissingFileError: no such file.
        CheckpointError: a file that cannot be read that way, or that holds no mapping of names to tensors (the
            message names the file and gives the reader's first line).
    """
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(path, what)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path), device="cpu"))
        except (SafetensorError, OSError) as err:
            raise CheckpointError(path, f"cannot read as safetensors: {err}") from err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except Exception as err:  # unpickling errors come in many types; none may execute code with weights_only
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(path, f"cannot read with torch.load(weights_only=True): {first}") from err
    for key in wrappers:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        found = type(obj).__name__ if not isinstance(obj, Mapping) else "a mapping holding non-tensors"
        raise CheckpointError(path, f"expected a state dict (a mapping of names to tensors), got {found}")
    return dict(obj)


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
