"""How a model is fed: what its checkpoint says it was trained on, and the sampling settings that follow from it.

The trainer records the data a checkpoint was trained on in the ``meta`` block of its ``config.json``::

    "meta": {"data": {"format": "refavs", "image_size": 224, "num_frames": 10}, ...}

:func:`read_training_data` reads that block (and ``meta.data_format``, written by earlier trainers, for the format);
:func:`sampling_settings` turns it into the frame size, clip length and frame rate to predict with: an explicit
setting first, then what the checkpoint records, then the preset's defaults (``recipe.image_size``, the clip length
of the benchmark it was trained on), then :data:`DEFAULT_CLIP_LEN` and :data:`DEFAULT_FPS`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from avseg.checkpoint import TrainingData, read_training_data
from avseg.data.base import to_size
from avseg.data.benchmarks import FORMAT_READERS, benchmarks_of_format

if TYPE_CHECKING:
    from avseg.models.base import AVSModel

__all__ = [
    "DEFAULT_CLIP_LEN",
    "DEFAULT_FPS",
    "SamplingSettings",
    "TrainingData",
    "model_name",
    "positive_float",
    "positive_int",
    "read_training_data",
    "sampling_settings",
]

DEFAULT_CLIP_LEN = 10
"""Clip length used when neither the checkpoint nor the preset's recipe gives one (AVSS and Ref-AVS clips are 10
frames)."""
DEFAULT_FPS = 1.0
"""Sampling rate used when the checkpoint records none (AVSBench and Ref-AVS are sampled at 1 frame/s)."""


@dataclass(frozen=True)
class SamplingSettings:
    """How video is cut for a model.

    Attributes:
        image_size: ``(h, w)`` the frames are resized to.
        clip_len: frames per forward clip.
        fps: frames sampled per second.
    """

    image_size: tuple[int, int]
    clip_len: int
    fps: float


def sampling_settings(
    model: AVSModel,
    training: TrainingData | None = None,
    *,
    image_size: int | tuple[int, int] | None = None,
    clip_len: int | None = None,
    fps: float | None = None,
) -> SamplingSettings:
    """The sampling settings to run ``model`` with (module docstring for the order).

    Args:
        model: the model; its recipe (``model.recipe``) and input size (``model.input_size``) are the fallbacks.
        training: what its checkpoint records (:func:`read_training_data`).
        image_size: explicit frame size, int (square) or ``(h, w)``.
        clip_len: explicit clip length.
        fps: explicit sampling rate.
    """
    training = training or TrainingData()
    recipe = model.recipe
    size = _first(image_size, training.image_size, recipe.image_size if recipe else None, model.input_size)
    if size is None:
        raise ValueError(
            f"model {model_name(model)}: its checkpoint records no frame size (meta.data.image_size) and it has no "
            "recipe or input size; pass image_size= (the size it was trained with)"
        )
    length = _first(clip_len, training.num_frames, _benchmark_frames(training.format), DEFAULT_CLIP_LEN)
    rate = _first(fps, training.fps, DEFAULT_FPS)
    return SamplingSettings(
        image_size=to_size(size),  # type: ignore[arg-type]
        clip_len=positive_int(length, "clip_len"),
        fps=positive_float(rate, "fps"),
    )


def _benchmark_frames(format: str | None) -> int | None:
    """Frames per clip of the official protocol of the benchmark format a model was trained on (None: unknown)."""
    if format not in FORMAT_READERS:
        return None
    return benchmarks_of_format(format)[0].frames


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def model_name(model: AVSModel) -> str:
    """The preset name of a model, else its class and family, for messages."""
    preset = getattr(model, "preset", None)  # set by the registry's create_model / load_model
    return str(preset) if preset else f"{type(model).__name__} ({getattr(model, 'family', '?')})"


def positive_int(value: Any, name: str) -> int:
    """``value`` as an int, or ValueError naming ``name`` unless it is a positive integer."""
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def positive_float(value: Any, name: str) -> float:
    """``value`` as a float, or ValueError naming ``name`` unless it is finite and positive."""
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be positive, got {value}")
    return value
