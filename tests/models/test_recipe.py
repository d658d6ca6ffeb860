"""The training recipe (avseg.recipe) and every preset's recipe."""

from __future__ import annotations

import pytest

from avseg.config import config_from_dict, config_to_dict
from avseg.models import get_entry, list_models
from avseg.models.auralsam2 import AuralSAM2Config
from avseg.recipe import OptimConfig, ScheduleConfig, TrainRecipe, upgrade_recipe
from avseg.train.config import TrainConfig
from avseg.train.run import build_run_config


@pytest.mark.parametrize("name", list_models())
def test_every_preset_recipe_is_a_valid_train_config(name: str) -> None:
    recipe = get_entry(name).config().recipe
    assert isinstance(recipe, TrainRecipe)
    train = config_from_dict(TrainConfig, {**recipe.train_config(), "seed": 0, "max_epochs": recipe.epochs})
    assert train.optim == recipe.optim
    assert (train.schedule.kind, train.schedule.warmup_steps) == (recipe.schedule.kind, recipe.schedule.warmup_steps)
    assert (train.batch_size, train.clip_grad_norm) == (recipe.batch_size, recipe.clip_grad_norm)


@pytest.mark.parametrize("name", ["tpavi-r50-s4", "avsegformer-pvt-avss", "auralsam2-l-refavs", "tpavi-tiny"])
def test_a_run_takes_the_presets_recipe_and_reading_size(tmp_path, name: str) -> None:
    """The recipe is the lowest layer of a run: optimiser, schedule, batch, length and the size frames are read at."""
    recipe = get_entry(name).config().recipe
    run = build_run_config(data=tmp_path, model=name, config=None, defaults={"train.seed": 0})
    assert run.train.optim == recipe.optim and run.train.schedule.kind == recipe.schedule.kind
    assert (run.train.batch_size, run.train.max_epochs) == (recipe.batch_size, recipe.epochs)
    assert run.data.image_size == recipe.image_size
    assert not run.train.schedule.fit_to_budget  # a run setting, never the recipe's
    budget = build_run_config(
        data=tmp_path,
        model=name,
        config=None,
        defaults={"train.seed": 0, "train.schedule.fit_to_budget": True},
        explicit={"data.image_size": 64},
    )
    assert budget.train.schedule.fit_to_budget and budget.data.image_size == 64


def test_reading_sizes_are_the_official_loaders() -> None:
    sizes = {name: get_entry(name).config().recipe.image_size for name in ("tpavi-r50-s4", "avsegformer-pvt-s4")}
    assert sizes == {"tpavi-r50-s4": 224, "avsegformer-pvt-s4": 512}
    assert get_entry("avsegformer-pvt-avss").config().recipe.image_size == 224
    assert get_entry("auralsam2-l-refavs").config().recipe.image_size == 1024
    assert get_entry("tpavi-tiny").config().recipe.image_size is None  # SynthAV is read as stored


def test_auralsam2_reads_frames_at_sam2s_size() -> None:
    config = AuralSAM2Config()
    assert config.input_size == config.sam2.image_size == config.recipe.image_size == 1024
    with pytest.raises(ValueError, match=r"recipe\.image_size 512 must equal sam2\.image_size 1024"):
        get_entry("auralsam2-l-refavs").config(**{"recipe.image_size": 512})


def test_auralsam2_config_defaults_to_the_released_recipe() -> None:
    recipe = AuralSAM2Config().recipe
    assert (recipe.optim.name, recipe.optim.lr, recipe.optim.weight_decay) == ("adamw", 1e-4, 0.05)
    assert recipe.schedule.kind == "poly"


def _recipe(**changes):
    fields = {
        "optim": OptimConfig(name="adam", lr=1e-4, weight_decay=0.0),
        "schedule": ScheduleConfig(kind="constant"),
        "batch_size": 4,
        "epochs": 15,
    }
    return TrainRecipe(**{**fields, **changes})


@pytest.mark.parametrize(
    ("field", "value"),
    [("batch_size", 0), ("epochs", 0), ("image_size", 0), ("clip_grad_norm", 0.0)],
)
def test_invalid_recipes_are_refused_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"recipe.{field}"):
        _recipe(**{field: value})


def test_the_schedule_budget_is_a_run_setting() -> None:
    with pytest.raises(ValueError, match="fit_to_budget is a run setting"):
        _recipe(schedule=ScheduleConfig(kind="cosine", fit_to_budget=True))
    assert "fit_to_budget" not in _recipe().train_config()["schedule"]


def test_recipes_stored_by_avseg_0_1_are_upgraded() -> None:
    old = {
        "optimizer": "adamw",
        "lr": 3e-3,
        "weight_decay": 1e-4,
        "batch_size": 8,
        "epochs": 20,
        "schedule": "cosine",
        "warmup_steps": 30,
        "clip_grad_norm": 1.0,
        "num_frames": 10,
        "image_size": 128,
        "augment": None,
        "notes": "x",
        "demo_minutes": 6.0,
    }
    recipe = config_from_dict(TrainRecipe, upgrade_recipe(old))
    assert recipe.optim == OptimConfig(name="adamw", lr=3e-3, weight_decay=1e-4)
    assert (recipe.schedule.kind, recipe.schedule.warmup_steps, recipe.image_size) == ("cosine", 30, 128)
    current = config_to_dict(recipe)
    assert upgrade_recipe(current) == current


@pytest.mark.parametrize("preset, steps", [("sam2love-l-refavs", 2), ("sa2va-1b", 4), ("simtoken-7b", 2)])
def test_paper_recipes_carry_their_gradient_accumulation_into_the_run(preset, steps, tmp_path):
    from avseg.train.run import build_run_config

    run = build_run_config(data=tmp_path, model=preset, config=None, explicit={"train.seed": 0})
    assert run.train.grad_accum_steps == steps
    run = build_run_config(
        data=tmp_path, model=preset, config=None, explicit={"train.seed": 0, "train.grad_accum_steps": 1}
    )
    assert run.train.grad_accum_steps == 1  # the run's own setting still wins
