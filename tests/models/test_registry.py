"""Registry-wide contract tests: every `*-tiny` preset on a SynthAV batch (timm's test_models, for avseg)."""

import pytest
import torch

from avseg.checkpoint import save_checkpoint
from avseg.config import config_from_dict, config_to_dict
from avseg.data.refavs import RefAVSReader
from avseg.data.synthav.commands import synth
from avseg.data.types import collate
from avseg.models import create_model, get_entry, list_models, load_model
from avseg.models.base import AVSModel, AVSOutput

TINY = list_models("*-tiny")


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthav")
    synth(root, videos=6, seed=1, size=64, frames=10, workers=1)
    reader = RefAVSReader(root / "refavs", image_size=64)
    dataset = reader.dataset("train")
    return collate([dataset[i] for i in range(2)])


def test_registry_lists_tiny_presets():
    assert "tpavi-tiny" in TINY
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        create_model("nope")


@pytest.mark.parametrize("name", list_models())
def test_every_preset_config_round_trips_through_a_plain_dict(name):
    cfg = get_entry(name).config()
    assert config_from_dict(type(cfg), config_to_dict(cfg)) == cfg


def test_a_none_override_is_applied_not_dropped():
    # {"text.encoder": None} must remove the text branch: dropping None values once left it in place silently
    assert get_entry("tpavi-tiny").config().text.encoder is not None
    assert get_entry("tpavi-tiny").config(**{"text.encoder": None}).text.encoder is None
    assert create_model("tpavi-tiny", **{"text.encoder": None}).text_branch is None


@pytest.mark.parametrize("name", TINY)
def test_tiny_forward_backward_checkpoint_and_fit(name, batch, tmp_path):
    torch.manual_seed(0)
    model = create_model(name)
    assert isinstance(model, AVSModel) and get_entry(name).model_cls is type(model)
    model.train()
    out = model(batch)
    assert isinstance(out, AVSOutput)
    b, t, _, h, w = batch.frames.shape
    assert out.mask_logits.shape == (b, t, model.num_mask_channels, h, w)
    losses = model.losses(batch, out)
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)

    # Checkpoint round trip: identical outputs in eval mode.
    model.eval()
    with torch.no_grad():
        before = model(batch).mask_logits
    ckpt = save_checkpoint(tmp_path / "ck", model, preset=name)
    again = load_model(ckpt).eval()
    with torch.no_grad():
        after = again(batch).mask_logits
    torch.testing.assert_close(after, before, rtol=0, atol=0)

    # It can fit one small batch: the loss falls substantially in a few steps.
    model.train()
    opt = torch.optim.AdamW(model.param_groups(lr=3e-3, weight_decay=0.0))
    first = None
    for _ in range(12):
        loss = model.losses(batch, model(batch))["loss"]
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.8 * first


def test_checkpoints_of_avseg_0_1_load(tmp_path):
    """Configs stored by avseg 0.1 (a flat recipe; AuralSAM2's tracking.train_frames and augment) are upgraded."""
    import json

    from avseg.config import config_from_dict, config_to_dict
    from avseg.models.auralsam2 import AuralSAM2, AuralSAM2Config

    model = create_model("tpavi-tiny")
    folder = save_checkpoint(tmp_path / "ck", model, preset="tpavi-tiny")
    stored = json.loads((folder / "config.json").read_text())
    recipe = stored["config"]["recipe"]
    stored["config"]["recipe"] = {
        "optimizer": recipe["optim"]["name"],
        "lr": recipe["optim"]["lr"],
        "weight_decay": recipe["optim"]["weight_decay"],
        "batch_size": recipe["batch_size"],
        "epochs": recipe["epochs"],
        "schedule": recipe["schedule"]["kind"],
        "warmup_steps": recipe["schedule"]["warmup_steps"],
        "clip_grad_norm": recipe["clip_grad_norm"],
        "num_frames": 10,
        "image_size": 224,
        "augment": None,
        "notes": recipe["notes"],
        "demo_minutes": None,
    }
    (folder / "config.json").write_text(json.dumps(stored))
    loaded = load_model(folder)
    assert loaded.config.recipe.optim == model.config.recipe.optim and loaded.config.recipe.image_size == 224

    current = config_to_dict(get_entry("auralsam2-l-refavs").config())
    old = {k: v for k, v in current.items() if k != "train_frames"}
    old["tracking"] = {**current["tracking"], "train_frames": 4}
    old["augment"] = {"enabled": True, **current["recipe"]["augment"]}
    old["recipe"] = {k: v for k, v in current["recipe"].items() if k != "augment"}
    upgraded = config_from_dict(AuralSAM2Config, AuralSAM2.upgrade_config(old))
    assert (
        upgraded.train_frames == 4
        and upgraded.recipe.augment == get_entry("auralsam2-l-refavs").config().recipe.augment
    )
    old["augment"]["enabled"] = False
    assert config_from_dict(AuralSAM2Config, AuralSAM2.upgrade_config(old)).recipe.augment is None
