"""Tests of the EEMC converter (avseg.convert.eemc) on state dicts with the released names at tiny shapes.

The released names are written here from a reading of ``GeWu-Lab/Ref-AVS@82eb688``: ``models/avs_model.py``
(``REFAVS_Model_Base``: ``model_v``, ``audio_proj``, ``text_proj``, ``prompt_proj`` as ``Linear-ReLU-Linear``,
``mha_A_T``, ``mha_V_T``, ``mha_mm`` as ``nn.MultiheadAttention``), ``models/local/mask2former/model_m2f.py``
(``avs_adapt`` inside each pixel-decoder ``self_attn``, ``ref_avs_attn`` on the transformer module) and
``refavs_transformer.py`` (``query_embedding``, ``key_embedding``, ``value_embedding``, ``out_projection``,
``beta_source_pool``, ``beta_source_attn``); ``run_refavs.py`` saves ``model.state_dict()``.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from avseg.checkpoint import read_checkpoint_config
from avseg.convert.eemc import FROZEN_MASK2FORMER, convert, convert_checkpoint
from avseg.data.types import random_batch
from avseg.errors import CheckpointError, UsageError
from avseg.models.eemc import TINY_MASK2FORMER
from avseg.models.registry import load_model

D, HIDDEN, TEXT, AUDIO, C, LAYERS = 128, 256, 384, 128, 32, 2  # eemc-tiny: fusion, projections, MiniLM, decoder


@pytest.fixture(scope="module")
def mask2former_folder(tmp_path_factory):
    """A plain transformers Mask2Former of eemc-tiny's shape, saved as a local "pretrained" source."""
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation

    torch.manual_seed(3)
    folder = tmp_path_factory.mktemp("m2f")
    Mask2FormerForUniversalSegmentation(Mask2FormerConfig(**TINY_MASK2FORMER)).save_pretrained(folder)
    return folder


@pytest.fixture
def no_vggish_file(monkeypatch):
    """The converted config reads VGGish from ``vggish-10086976.pth`` (not in checkpoints): a stand-in module here."""
    monkeypatch.setattr("avseg.layers.audio.load_vggish", lambda weights, *a, **k: nn.Linear(1, 1))


def released_state(seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Random tensors under REFAVS_Model_Base's state-dict names, and where each learned one must land in avseg."""
    g = torch.Generator().manual_seed(seed)
    shapes: dict[str, tuple[int, ...]] = {}
    expected: dict[str, str] = {}
    for name, (i, o) in {"audio_proj": (AUDIO, D), "text_proj": (TEXT, D), "prompt_proj": (D, C)}.items():
        for idx, (a, b) in (("0", (i, HIDDEN)), ("2", (HIDDEN, o))):
            shapes[f"{name}.{idx}.weight"], shapes[f"{name}.{idx}.bias"] = (b, a), (b,)
            expected[f"{name}.{idx}.weight"] = f"fusion.{name}.{idx}.weight"
            expected[f"{name}.{idx}.bias"] = f"fusion.{name}.{idx}.bias"
    for name, ours in (("mha_A_T", "attn_audio_text"), ("mha_V_T", "attn_visual_text"), ("mha_mm", "attn_multimodal")):
        part = {
            "in_proj_weight": (3 * D, D),
            "in_proj_bias": (3 * D,),
            "out_proj.weight": (D, D),
            "out_proj.bias": (D,),
        }
        for suffix, shape in part.items():
            shapes[f"{name}.{suffix}"] = shape
            expected[f"{name}.{suffix}"] = f"fusion.{ours}.{suffix}"
    pd = "model.pixel_level_module.decoder.encoder.layers"
    for i in range(LAYERS):
        for idx, shape in (("0", (C // 4, C)), ("2", (C, C // 4))):
            for kind, s in (("weight", shape), ("bias", shape[:1])):
                key = f"{pd}.{i}.self_attn.avs_adapt.{idx}.{kind}"
                shapes[f"model_v.{key}"] = s
                expected[f"model_v.{key}"] = f"mask2former.model.{key}"
    tm = "model.transformer_module.ref_avs_attn"
    for theirs, ours in (("query_embedding", "q_proj"), ("key_embedding", "k_proj"), ("value_embedding", "v_proj"),
                         ("out_projection", "out_proj")):  # fmt: skip
        for kind, s in (("weight", (C, C)), ("bias", (C,))):
            shapes[f"model_v.{tm}.{theirs}.{kind}"] = s
            expected[f"model_v.{tm}.{theirs}.{kind}"] = f"mask2former.model.{tm}.{ours}.{kind}"
    for theirs, ours in (("beta_source_attn", "attn_gate"), ("beta_source_pool", "pool_gate")):
        shapes[f"model_v.{tm}.{theirs}"] = (1,)
        expected[f"model_v.{tm}.{theirs}"] = f"mask2former.model.{tm}.{ours}"
    # A few of the frozen Mask2Former's own tensors (transformers 4.30 names), which the conversion leaves out.
    frozen = {
        "model_v.model.pixel_level_module.encoder.embeddings.patch_embeddings.projection.weight": (16, 3, 4, 4),
        "model_v.model.pixel_level_module.encoder.encoder.layers.0.blocks.0.attention.self.query.weight": (16, 16),
        "model_v.model.transformer_module.queries_features.weight": (8, C),
        "model_v.class_predictor.weight": (4, C),
        "model_v.criterion.empty_weight": (4,),
    }
    state = {k: torch.randn(s, generator=g) for k, s in {**shapes, **frozen}.items()}
    return state, expected


def test_converted_release_loads_strictly_with_every_tensor_in_place(tmp_path, mask2former_folder, no_vggish_file):
    released, expected = released_state()
    torch.save(released, tmp_path / "ckpt_best_miou.pth")
    out, report = convert_checkpoint(
        tmp_path / "ckpt_best_miou.pth", tmp_path / "converted", preset="eemc-tiny", mask2former=str(mask2former_folder)
    )
    assert report.converted == len(expected) and len(report.dropped[FROZEN_MASK2FORMER]) == 5 and not report.unknown
    config = read_checkpoint_config(out)["config"]
    assert config["pretrained"] and config["mask2former"]["weights"] == str(mask2former_folder)
    assert config["fusion"]["token_layout"] == "released" and config["audio"]["encoder"] == "vggish"
    assert config["trainable"] == ["audio_proj", "text_proj", "prompt_proj", "avs_adapt", "ref_avs_attn"]

    model = load_model(out).eval()  # strict: every stored key filled, none left over; the rest from the sources
    own = model.state_dict()
    assert set(own) == set(expected.values())
    wrong = [k for k, v in expected.items() if not torch.equal(own[v], released[k])]
    assert not wrong, wrong[:5]
    from transformers import Mask2FormerForUniversalSegmentation

    source = Mask2FormerForUniversalSegmentation.from_pretrained(mask2former_folder)
    torch.testing.assert_close(model.mask2former.model.class_predictor.weight, source.class_predictor.weight)
    batch = random_batch(1, 2, 64, texts=["the violin"])
    batch.audio_embeddings = torch.randn(1, 2, 128)
    with torch.no_grad():
        assert torch.isfinite(model(batch).mask_logits).all()


def test_unknown_and_missing_keys_are_refused_by_name(tmp_path, mask2former_folder):
    released, _ = released_state()
    torch.save({**released, "mha_extra.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"no avseg name: mha_extra\.weight"):
        convert_checkpoint(
            tmp_path / "extra.pth", tmp_path / "a", preset="eemc-tiny", mask2former=str(mask2former_folder)
        )
    del released["mha_mm.in_proj_bias"]
    torch.save(released, tmp_path / "short.pth")
    with pytest.raises(CheckpointError, match=r"missing: fusion\.attn_multimodal\.in_proj_bias"):
        convert_checkpoint(
            tmp_path / "short.pth", tmp_path / "b", preset="eemc-tiny", mask2former=str(mask2former_folder)
        )
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_frozen_mask2former_needs_a_source_and_the_summary_is_json(tmp_path, mask2former_folder, capsys):
    released, expected = released_state()
    torch.save(released, tmp_path / "r.pth")
    with pytest.raises(UsageError, match="--mask2former"):
        convert_checkpoint(tmp_path / "r.pth", tmp_path / "x", preset="eemc-tiny")
    with pytest.raises(UsageError, match="not an EEMC preset"):
        convert_checkpoint(tmp_path / "r.pth", tmp_path / "x", preset="tpavi-tiny")
    folder = str(mask2former_folder)
    assert (
        convert(tmp_path / "r.pth", tmp_path / "y", preset="eemc-tiny", mask2former=folder, json=True, quiet=True) == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["tensors"] == len(expected) and summary["dropped"] == {FROZEN_MASK2FORMER: 5}
