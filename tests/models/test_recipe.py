"""Tests of the shared training recipe (avseg.models.recipe) and of every preset's recipe."""

from __future__ import annotations

import pytest

from avseg.config import config_from_dict
from avseg.models import get_entry, list_models
from avseg.models.auralsam2 import AuralSAM2Config
from avseg.models.recipe import TrainRecipe
from avseg.train.config import TrainConfig


@pytest.mark.parametrize("name", list_models())
def test_every_preset_recipe_is_a_valid_train_config(name: str) -> None:
    recipe = get_entry(name).config().recipe
    assert isinstance(recipe, TrainRecipe)
    train = config_from_dict(TrainConfig, {**recipe.train_config(), "seed": 0, "max_epochs": recipe.epochs})
    assert (train.optim.name, train.optim.lr, train.optim.weight_decay) == (
        recipe.optimizer,
        recipe.lr,
        recipe.weight_decay,
    )
    assert (train.schedule.kind, train.batch_size, train.clip_grad_norm) == (
        recipe.schedule,
        recipe.batch_size,
        recipe.clip_grad_norm,
    )


def test_auralsam2_config_defaults_to_the_released_recipe() -> None:
    recipe = AuralSAM2Config().recipe
    assert (recipe.optimizer, recipe.lr, recipe.weight_decay, recipe.schedule) == ("adamw", 1e-4, 0.05, "poly")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("optimizer", "sgd"),
        ("schedule", "step"),
        ("lr", 0.0),
        ("weight_decay", -1.0),
        ("batch_size", 0),
        ("demo_minutes", 0.0),
    ],
)
def test_invalid_recipes_are_refused_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"recipe.{field}"):
        TrainRecipe(**{field: value})
