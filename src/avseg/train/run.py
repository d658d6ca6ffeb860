"""One path from a preset to a training run, shared by ``avseg train`` and ``avseg demo``.

:func:`build_run_config` merges, lowest first: ``TrainConfig``/``DataConfig`` defaults; the model preset's own
recipe (:class:`avseg.recipe.TrainRecipe`: optimiser, schedule, batch size, clipping, the size frames are read at,
and its epochs when no layer gives ``max_steps`` or ``max_epochs``); a config file; the caller's defaults (options
left at their default value, applied only where nothing above set the key); the caller's explicit settings (options
given, a time budget); and dotted overrides. :func:`prepare_trainer` then builds the model, the reader, the
augmentation and the datasets from that one :class:`RunConfig` and returns the
:class:`~avseg.train.trainer.Trainer`, which writes the run config next to the checkpoints.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from avseg.config import apply_overrides, config_from_dict, config_to_dict, load_config_file, parse_overrides
from avseg.recipe import TrainRecipe
from avseg.train.config import RunConfig, TrainConfig

__all__ = ["build_run_config", "prepare_trainer", "preset_recipe"]

_SECTIONS = ("model", "train", "data")


def _resolve_train_key(path: list[str]) -> list[str]:
    """Let ``train.lr`` stand for ``train.optim.lr`` when the name belongs to exactly one sub-config."""
    if len(path) != 1:
        return path
    from dataclasses import fields

    from avseg.train.config import OptimConfig, ScheduleConfig

    if path[0] in {f.name for f in fields(TrainConfig)}:
        return path
    owners = [
        sec
        for sec, cls in (("optim", OptimConfig), ("schedule", ScheduleConfig))
        if path[0] in {f.name for f in fields(cls)}
    ]
    return [owners[0], path[0]] if len(owners) == 1 else path


def _set_dotted(target: dict[str, Any], path: list[str], value: Any, key: str, *, keep: bool = False) -> None:
    """Set ``target[path[0]][path[1]]...`` to ``value`` (``keep``: only where nothing is set yet)."""
    node = target
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"override {key!r}: {part!r} is not a config section")
        node = child
    if keep:
        node.setdefault(path[-1], value)
    else:
        node[path[-1]] = value


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``top``, recursively for nested sections."""
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def preset_recipe(model: str, model_overrides: dict[str, Any] | None = None) -> TrainRecipe | None:
    """The registered preset's own recipe (the lowest layer of a run config), read after ``model_overrides`` so that
    ``model.recipe.optim.lr=...`` changes it. None for an unregistered name (building the model names it later) or a
    config without a recipe. An unknown override key is named as ``--overrides`` spells it (``model.decoder.dim``)."""
    from avseg.models.registry import get_entry, list_models

    if model not in list_models():
        return None
    config = get_entry(model).config()
    if model_overrides:
        config = apply_overrides(config, model_overrides, prefix="model.")
    recipe = getattr(config, "recipe", None)
    return recipe if isinstance(recipe, TrainRecipe) else None


def build_run_config(
    *,
    data: Path,
    model: str | None,
    config: Path | None,
    overrides: list[str] | None = None,
    explicit: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
) -> RunConfig:
    """Merge the preset's recipe, a config file, command-line options and dotted overrides into a validated
    :class:`RunConfig` (precedence in that order, lowest first; see the module docstring).

    Args:
        data: dataset root (always taken from the command line).
        model: model preset (None keeps the file's).
        config: optional YAML/JSON run config file.
        overrides: ``section.key=value`` strings (``train.optim.lr=1e-4``, ``train.lr=1e-4``, ``model.num_classes=71``,
            ``data.options.null_masks=zeros``), applied last.
        explicit: dotted keys given on the command line (``{"train.max_steps": 10}``); they replace the file's values.
        defaults: dotted keys of options left at their defaults (``{"train.seed": 0}``,
            ``{"train.schedule.fit_to_budget": True}``); applied only where neither the preset's recipe nor the file
            sets the key.
    """
    run: dict[str, Any] = load_config_file(config) if config is not None else {}
    for section in ("model_overrides", "data", "train"):
        run.setdefault(section, {})
        if not isinstance(run[section], dict):
            raise ValueError(f"{config}: section {section!r} must be a mapping")
    if model is not None:
        run["model"] = model
    run["data"]["root"] = str(data)
    overrides_by_key = parse_overrides(overrides or [])
    recipe = None
    if run.get("model"):
        model_overrides = {
            **run["model_overrides"],
            **{k.partition(".")[2]: v for k, v in overrides_by_key.items() if k.startswith("model.")},
        }
        recipe = preset_recipe(run["model"], model_overrides)
    if recipe is not None:
        # The recipe's length applies only when no layer above gives one (a file's max_steps alone must not be cut
        # short by the recipe's epochs), so it is added last.
        run["train"] = _merge(recipe.train_config(), run["train"])
        run["data"] = _merge(recipe.data_config(), run["data"])
    for key, value in (defaults or {}).items():
        _set_dotted(run, key.split("."), value, key, keep=True)
    for key, value in (explicit or {}).items():
        _set_dotted(run, key.split("."), value, key)
    for key, value in overrides_by_key.items():
        section, _, rest = key.partition(".")
        if section not in _SECTIONS or not rest:
            raise ValueError(f"override {key!r} must start with one of {[s + '.' for s in _SECTIONS]}")
        if section == "model":
            run["model_overrides"][rest] = value
        elif section == "train":
            _set_dotted(run["train"], _resolve_train_key(rest.split(".")), value, key)
        else:
            _set_dotted(run["data"], rest.split("."), value, key)
    if run["train"].get("max_steps") is None and run["train"].get("max_epochs") is None and recipe is not None:
        run["train"]["max_epochs"] = recipe.epochs
    if not run.get("model"):
        raise ValueError("no model: pass --model NAME (see avseg.models.list_models()) or a config file with 'model:'")
    return config_from_dict(RunConfig, run)


def prepare_trainer(run_cfg: RunConfig, out: Path, *, clock_start: float | None = None, quiet: bool = False) -> Any:
    """Build the model, data and :class:`~avseg.train.trainer.Trainer` of a run, all from ``run_cfg``.

    The model is built after seeding (the same initial weights on every rank and in every run with this seed); the
    training split gets the preset's augmentation (:meth:`avseg.models.base.AVSModel.train_transform`, with
    ``data.hflip``); validation reads ``train.val_split`` (its first ``data.val_items`` items when set) without
    augmentation and scores it with ``data.metric_preset`` or the format's official preset, against the ground truth
    that preset names (a preset that scores at the resolution on disk gets a reader that keeps it), so that a
    validation score is what ``avseg eval`` reports.

    ``quiet`` hides progress for this run only: ``OUT/run_config.yaml`` keeps ``train.progress_bar`` as the config
    says, so passing it back to ``--config`` shows progress again.
    """
    from avseg.data.base import AVSDataset
    from avseg.data.benchmarks import default_metric_preset
    from avseg.data.readers import get_reader
    from avseg.metrics.presets import get_preset
    from avseg.models.registry import create_model
    from avseg.train.trainer import Trainer, seed_everything

    cfg, data_cfg = run_cfg.train, run_cfg.data
    if quiet:
        cfg = dataclasses.replace(cfg, progress_bar=False)
    seed_everything(cfg.seed)
    net = create_model(run_cfg.model, **run_cfg.model_overrides)
    reader = get_reader(data_cfg.format, Path(data_cfg.root), image_size=data_cfg.image_size, **data_cfg.options)
    train_ds = reader.dataset(data_cfg.train_split, transform=net.train_transform(hflip=data_cfg.hflip))
    metric_preset = data_cfg.metric_preset or default_metric_preset(data_cfg.format, net.num_mask_channels)
    val_ds = None
    if cfg.val_split is not None:
        val_reader = reader
        if get_preset(metric_preset).gt_source == "native":
            options = {**data_cfg.options, "native_masks": True}
            val_reader = get_reader(data_cfg.format, Path(data_cfg.root), image_size=data_cfg.image_size, **options)
        val_ds = val_reader.dataset(cfg.val_split)
        if data_cfg.val_items is not None:
            val_ds = AVSDataset(val_ds.reader, val_ds.records[: data_cfg.val_items], transform=val_ds.transform)
    return Trainer(
        net,
        train_ds,
        cfg,
        out,
        val_dataset=val_ds,
        metric_preset=metric_preset,
        preset=run_cfg.model,
        run_config=config_to_dict(run_cfg),
        clock_start=clock_start,
    )
