"""``avseg bench``: frames per second and peak memory of a model on a random batch.

The batch is the model contract's input (:func:`avseg.data.types.random_batch`: uint8 frames at the given size,
log-mel audio examples, an expression for models that read one), so a figure includes the model's own resizing and its
audio and text encoders, not data loading, decoding or metrics. The model has random weights built offline from its
preset (``pretrained=False``), or the weights of a checkpoint; speed does not depend on the weights' values. Model
config overrides (``model.KEY=VALUE``, as ``avseg train --overrides`` spells them) time a variant of a preset, e.g.
a narrower trunk.

Timing: ``warmup`` untimed runs, then ``runs`` timed ones, each one batch (inference: ``model.eval()`` under
``torch.no_grad()``; ``train=True``: a training step, forward, losses, backward and an AdamW step). On CUDA the device
is synchronised before and after each run.

Memory: on CUDA, ``torch.cuda.max_memory_allocated`` over the warm-up and timed runs (reset once the model is on the
device, so the weights count); on CPU, the maximum resident set size of the whole process so far
(``getrusage(RUSAGE_SELF).ru_maxrss``), which cannot be reset: it includes everything the process did before the
runs, so bench one model per process for a clean figure (``avseg bench`` does).
"""

from __future__ import annotations

import datetime
import json as jsonlib
import math
import os
import platform
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from time import perf_counter
from typing import Any, Literal, Optional

import torch

from avseg import __version__
from avseg.errors import ShapeError, UsageError
from avseg.fileio import atomic_write_text, check_output_file
from avseg.progress import Progress

__all__ = ["BenchResult", "bench", "bench_command", "peak_memory"]

BENCH_TEXT = "the object making the loudest sound"
"""The expression given to models that read one."""


@dataclass(frozen=True)
class BenchResult:
    """One benchmark: what ran, the seconds of each timed run, and the machine.

    Attributes:
        model: the preset name, or the checkpoint folder when the model came from one without a preset.
        overrides: the preset's config overrides (``{"model.sam2.lr": 1e-4}``), as given.
        checkpoint: the checkpoint folder whose weights were loaded (None: random weights).
        mode: ``inference`` or ``train``.
        device: where it ran (``cpu``, ``cuda:0``).
        image_size: frame size of the batch (square).
        frames: frames per clip.
        batch_size: clips per batch.
        warmup: untimed runs before the timed ones.
        seconds: seconds per batch of each timed run, in order.
        min_s, median_s, max_s: the fastest, median and slowest of ``seconds``.
        frames_per_s: ``frames * batch_size / median_s``.
        peak_memory_bytes: see ``memory_kind``; None where it cannot be measured.
        memory_kind: ``cuda_max_allocated`` (tensors allocated on the device by this run) or ``process_max_rss``
            (the process's maximum resident set size so far, everything it did before included).
        parameters: the model's parameter count.
        machine: torch and Python versions, platform, device name, CPU threads, the avseg version and the date.
    """

    model: str
    overrides: dict[str, Any]
    checkpoint: str | None
    mode: Literal["inference", "train"]
    device: str
    image_size: int
    frames: int
    batch_size: int
    warmup: int
    seconds: list[float]
    min_s: float
    median_s: float
    max_s: float
    frames_per_s: float
    peak_memory_bytes: int | None
    memory_kind: Literal["cuda_max_allocated", "process_max_rss"]
    parameters: int
    machine: dict[str, Any]

    @property
    def runs(self) -> int:
        return len(self.seconds)

    def to_dict(self) -> dict[str, Any]:
        """The result as JSON-serialisable data (the keys of ``avseg bench --json-out``), ``runs`` included."""
        return {**asdict(self), "runs": self.runs}


def peak_memory(device: torch.device) -> tuple[int | None, Literal["cuda_max_allocated", "process_max_rss"]]:
    """The peak memory ``bench`` reports for ``device``, in bytes, and what it measures (see :class:`BenchResult`)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    try:
        import resource
    except ImportError:  # Windows has no getrusage
        return None, "process_max_rss"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    return int(rss if sys.platform == "darwin" else rss * 1024), "process_max_rss"


def _cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo`` on Linux; ``platform.processor()`` is often just ``x86_64`` there)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _machine(device: torch.device) -> dict[str, Any]:
    return {
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "avseg": __version__,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def _positive(value: int, arg: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UsageError(f"{arg} {value!r}: must be an integer >= {minimum}")
    return value


def _model_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``model.KEY=VALUE`` strings → ``{"KEY": value}`` (values read as ``avseg train --overrides`` reads them)."""
    from avseg.config import parse_overrides

    try:
        parsed = parse_overrides(items)
    except ValueError as err:
        raise UsageError(f"--overrides: {err}") from None
    out = {}
    for key, value in parsed.items():
        section, _, rest = key.partition(".")
        if section != "model" or not rest:
            raise UsageError(f"--overrides {key!r}: avseg bench takes the model's config keys, model.KEY=VALUE")
        out[rest] = value
    return out


def _build(model: str | None, checkpoint: str | Path | None, changes: dict[str, Any]) -> tuple[Any, str]:
    """The model (random weights from its preset with ``changes`` applied, or a checkpoint's) and its name in the
    result."""
    from avseg.config import apply_overrides
    from avseg.models.registry import create_model, get_entry, load_model

    if model is None and checkpoint is None:
        raise UsageError("give --model PRESET (random weights) or --checkpoint DIR")
    if changes and model is None:
        raise UsageError("--overrides change a preset's config: give --model PRESET")
    if model is not None:
        try:
            entry = get_entry(model)
        except ValueError as err:
            raise UsageError(f"--model {model!r}: {err}") from None
        try:
            config = apply_overrides(entry.config(), changes, prefix="model.") if changes else entry.config()
        except (ValueError, TypeError) as err:
            raise UsageError(f"--overrides: {err}") from None
        # Random weights built offline: a preset that would download pretrained parts builds them at random instead
        # (unless the overrides ask for model.pretrained=true).
        offline = {"pretrained": False} if hasattr(config, "pretrained") else {}
        net = create_model(model, checkpoint=None if checkpoint is None else str(checkpoint), **{**offline, **changes})
        return net, model
    net = load_model(checkpoint)
    return net, net.preset or str(checkpoint)


def _default_size(net: Any, checkpoint: str | Path | None) -> int:
    """The size the model was trained at: a checkpoint's recorded size, else its recipe's, else its input size."""
    if checkpoint is not None:
        from avseg.checkpoint import read_training_data

        recorded = read_training_data(checkpoint).image_size
        if isinstance(recorded, int):
            return recorded
    recipe = net.recipe
    if recipe is not None and recipe.image_size is not None:
        return int(recipe.image_size)
    return int(net.input_size or 224)


def bench(
    model: str | None = None,
    *,
    checkpoint: str | Path | None = None,
    image_size: int | None = None,
    frames: int = 5,
    batch_size: int = 1,
    device: str | torch.device = "auto",
    warmup: int = 2,
    runs: int = 5,
    train: bool = False,
    overrides: Sequence[str] = (),
    progress: bool = False,
) -> BenchResult:
    """Time a model on a random batch and measure its peak memory.

    Args:
        model: a registered preset (random weights), or None with ``checkpoint``.
        checkpoint: a checkpoint folder, run folder or Hub id: the model is rebuilt from it (with ``model``: its
            weights are loaded into that preset).
        image_size: frame size of the batch (default: the size the model trains at).
        frames: frames per clip.
        batch_size: clips per batch.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        warmup: untimed runs first (the first runs allocate memory and pick kernels).
        runs: timed runs.
        train: time a training step (forward, losses, backward, AdamW step) instead of inference.
        overrides: ``model.KEY=VALUE`` changes to the preset's config (``model.sam2.hf_config={}``); needs ``model``.
        progress: count the runs (warm-up included) on stderr (:class:`~avseg.progress.Progress`).

    Raises:
        UsageError: a count below 1 (``warmup`` below 0), an unknown preset, a bad override, or an image size the
            model cannot run.
    """
    from avseg.data.types import random_batch
    from avseg.device import resolve_device

    for value, arg in ((frames, "--frames"), (batch_size, "--batch-size"), (runs, "--runs")):
        _positive(value, arg)
    _positive(warmup, "--warmup", minimum=0)
    if image_size is not None:
        _positive(image_size, "--image-size", minimum=8)
    torch_device = resolve_device(device)
    changes = _model_overrides(overrides)
    net, name = _build(model, checkpoint, changes)
    size = image_size if image_size is not None else _default_size(net, checkpoint)
    texts = [BENCH_TEXT] * batch_size if net.text_input != "none" else None
    batch = random_batch(batch_size, frames, size, texts=texts, classes=net.num_mask_channels, masks="square")
    batch = batch.to(torch_device)
    net = net.to(torch_device).train(train)
    optimizer = torch.optim.AdamW(list(net.trainable_parameters()), lr=1e-5) if train else None
    if optimizer is not None and not optimizer.param_groups[0]["params"]:
        raise UsageError(f"--train: {name} has no trainable parameter")

    def step() -> None:
        if optimizer is None:
            with torch.no_grad():
                net(batch)
            return
        loss = net.losses(batch, net(batch))["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync() -> None:
        if torch_device.type == "cuda":
            torch.cuda.synchronize(torch_device)

    if torch_device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(torch_device)
    seconds = []
    with Progress(f"benchmarking {name}", warmup + runs, "run", enabled=progress) as bar:
        for i in range(warmup + runs):
            sync()
            start = perf_counter()
            try:
                step()
            except ShapeError as err:
                raise UsageError(f"--image-size {size}: {name} cannot run {size}x{size} frames ({err})") from None
            sync()
            elapsed = perf_counter() - start
            if i >= warmup:
                seconds.append(elapsed)
            bar.update()
    memory, kind = peak_memory(torch_device)
    median = statistics.median(seconds)
    return BenchResult(
        model=name,
        overrides={f"model.{key}": value for key, value in changes.items()},
        checkpoint=None if checkpoint is None else str(checkpoint),
        mode="train" if train else "inference",
        device=str(torch_device),
        image_size=size,
        frames=frames,
        batch_size=batch_size,
        warmup=warmup,
        seconds=seconds,
        min_s=min(seconds),
        median_s=median,
        max_s=max(seconds),
        frames_per_s=frames * batch_size / median if median > 0 else math.inf,
        peak_memory_bytes=memory,
        memory_kind=kind,
        parameters=net.num_parameters(),
        machine=_machine(torch_device),
    )


def format_result(result: BenchResult) -> str:
    """The lines ``avseg bench`` prints."""
    m = result.machine
    threads = f"{m['threads']} thread{'s' if m['threads'] != 1 else ''}"
    where = f"{result.device} ({m['device_name']}, {threads}, torch {m['torch']})"
    memory = "not measured on this platform"
    if result.peak_memory_bytes is not None:
        what = "CUDA max allocated" if result.memory_kind == "cuda_max_allocated" else "process maximum RSS"
        memory = f"{result.peak_memory_bytes / 2**20:.1f} MiB ({what})"
    variant = "".join(f" {key}={value}" for key, value in result.overrides.items())
    return "\n".join(
        [
            f"{result.model}{variant}, {result.mode} on {where}",
            f"batch: {result.batch_size} x {result.frames} frames at {result.image_size} px; "
            f"{result.warmup} warm-up + {result.runs} timed runs; {result.parameters / 1e6:.2f} M parameters",
            f"seconds per batch: min {result.min_s:.4f}  median {result.median_s:.4f}  max {result.max_s:.4f}",
            f"frames/s: {result.frames_per_s:.1f} (median run)",
            f"peak memory: {memory}",
        ]
    )


def bench_command(
    *,
    model: str | None = None,
    checkpoint: Path | None = None,
    image_size: int | None = None,
    frames: int = 5,
    batch_size: int = 1,
    device: str = "auto",
    warmup: int = 2,
    runs: int = 5,
    train: bool = False,
    overrides: Optional[list[str]] = None,  # noqa: UP045
    json_out: Path | None = None,
    quiet: bool = False,
    json: bool = False,
) -> int:
    """Measure frames/s and peak memory of a model on a random batch.

    The model has random weights built offline from its preset (--model), or a checkpoint's weights (--checkpoint: a
    folder, a run folder or a Hugging Face Hub id). After --warmup untimed runs, --runs timed runs of one batch each
    give the min, median and max seconds per batch and frames/s (frames x batch / median). Peak memory: on CUDA the
    maximum allocated by the runs; on CPU the process's maximum resident set size (everything the process held,
    model building included). Inference runs in eval mode without gradients; --train times a training step.

    Args:
        model: registered preset (random weights); see avseg models.
        checkpoint: a checkpoint folder, training run folder or Hub id org/name (with --model: its weights loaded
            into that preset).
        image_size: frame size of the random batch (default: the size the model trains at).
        frames: frames per clip.
        batch_size: clips per batch.
        device: auto, cpu, cuda, cuda:1, ...
        warmup: untimed runs before the timed ones.
        runs: timed runs (min, median and max are over these).
        train: time a training step (forward, losses, backward, AdamW step) instead of inference.
        overrides: changes to the preset's config, as avseg train spells them, e.g. --overrides
            model.sam2.hf_config={} (needs --model).
        json_out: also write the result as JSON (timings, memory, machine: torch version, device name, threads,
            date) to this file.
        quiet: show no progress (warnings, errors and the result are still printed).
        json: print the result (the content of the --json-out file) as one JSON document on stdout instead of text.
    """
    if json_out is not None:
        # The result must not replace a file of the checkpoint it reads (config.json, a pointer).
        folders = [Path(checkpoint), Path(checkpoint) / "checkpoints"] if checkpoint is not None else []
        inputs = [f for folder in folders if folder.is_dir() for f in folder.iterdir() if f.is_file()]
        check_output_file(json_out, arg="--json-out", inputs=inputs)
    result = bench(
        model,
        checkpoint=checkpoint,
        image_size=image_size,
        frames=frames,
        batch_size=batch_size,
        device=device,
        warmup=warmup,
        runs=runs,
        train=train,
        overrides=overrides or (),
        progress=not quiet,
    )
    text = jsonlib.dumps(result.to_dict(), indent=2) + "\n"
    if json:
        print(text, end="")
    else:
        print(format_result(result))
    if json_out is not None:
        atomic_write_text(json_out, text)
        print(f"wrote {json_out}", file=sys.stderr if json else sys.stdout)  # --json: stdout holds the JSON only
    return 0
