"""Tests of the Sa2VA converter (avseg.convert.sa2va) on folders with the released names at sa2va-tiny's shapes.

The released names and shapes are written here from a reading of ``magic-research/Sa2VA@d01bf3f``
(``projects/llava_sam2/hf/models/modeling_sa2va_chat.py::Sa2VAChatModel.__init__``, ``modeling_intern_vit.py``
``InternVisionEmbeddings/InternAttention/InternMLP/InternVisionEncoderLayer``, ``hf/convert_to_hf.py`` renaming
``.gamma`` to ``.g_weight``) and of transformers' ``Qwen2ForCausalLM``; where each tensor must land is written from
transformers' ``models/internvl/convert_internvl_weights_to_hf.py`` (vision renames, ``qkv`` split into rows
``[:D]``, ``[D:2D]``, ``[-D:]``, ``mlp1.{0,1,3}``), independently of avseg's rule table. The SAM2 part uses the
upstream SAM2 generator of ``test_sam2.py``, whose map that file checks.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import save_file

from avseg.checkpoint import load_weights, read_checkpoint_config
from avseg.cli import main
from avseg.convert.sa2va import convert_checkpoint, convert_state_dict
from avseg.convert.sam2 import convert_state_dict as sam2_convert
from avseg.errors import CheckpointError, MissingFileError
from avseg.models.registry import create_model, get_entry, load_model
from tests.convert.test_sam2 import upstream_state_dict

D, D_MLP, LAYERS, PATCH, SIZE = 64, 128, 2, 8, 64  # the tiny InternViT
H, H_MLP, HEADS, KV_HEADS, VOCAB = (
    128,
    256,
    4,
    2,
    30526,
)  # the tiny Qwen2 (vocabulary: the MiniLM tokenizer + [SEG] etc.)
C = 128  # the tiny SAM2's prompt width


def released_config(*, qkv_bias: bool, arch: str = "Qwen2ForCausalLM") -> dict:
    """A ``Sa2VAChatConfig.to_dict()`` of sa2va-tiny's shape (the keys the release's config.json holds)."""
    return {
        "architectures": ["Sa2VAChatModel"],
        "vision_config": {
            "hidden_size": D,
            "intermediate_size": D_MLP,
            "num_attention_heads": 2,
            "num_hidden_layers": LAYERS,
            "image_size": SIZE,
            "patch_size": PATCH,
            "qkv_bias": qkv_bias,
            "qk_normalization": False,
            "norm_type": "layer_norm",
            "layer_norm_eps": 1e-6,
            "hidden_act": "gelu",
            "initializer_factor": 0.1,
        },
        "llm_config": {
            "architectures": [arch],
            "hidden_size": H,
            "intermediate_size": H_MLP,
            "num_attention_heads": HEADS,
            "num_hidden_layers": 2,
            "num_key_value_heads": KV_HEADS,
            "max_position_embeddings": 1024,
            "rms_norm_eps": 1e-6,
            "tie_word_embeddings": True,
            "vocab_size": VOCAB,
        },
        "downsample_ratio": 0.5,
        "select_layer": -1,
        "ps_version": "v2",
        "force_image_size": SIZE,
        "template": "internvl2_5",
    }


def released_state(*, qkv_bias: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under the released names (InternViT, ``mlp1``, Qwen2, SAM2, ``text_hidden_fcs``); the tied
    ``lm_head`` is left out, as a tied checkpoint may."""
    shapes: dict[str, tuple[int, ...]] = {
        "vision_model.embeddings.class_embedding": (1, 1, D),
        "vision_model.embeddings.position_embedding": (1, (SIZE // PATCH) ** 2 + 1, D),
        "vision_model.embeddings.patch_embedding.weight": (D, 3, PATCH, PATCH),
        "vision_model.embeddings.patch_embedding.bias": (D,),
    }
    for i in range(LAYERS):
        layer = f"vision_model.encoder.layers.{i}"
        shapes[f"{layer}.attn.qkv.weight"] = (3 * D, D)
        if qkv_bias:
            shapes[f"{layer}.attn.qkv.bias"] = (3 * D,)
        shapes.update({f"{layer}.attn.proj.weight": (D, D), f"{layer}.attn.proj.bias": (D,)})
        shapes.update({f"{layer}.mlp.fc1.weight": (D_MLP, D), f"{layer}.mlp.fc1.bias": (D_MLP,)})
        shapes.update({f"{layer}.mlp.fc2.weight": (D, D_MLP), f"{layer}.mlp.fc2.bias": (D,)})
        for norm in ("norm1", "norm2"):
            shapes.update({f"{layer}.{norm}.weight": (D,), f"{layer}.{norm}.bias": (D,)})
        shapes.update({f"{layer}.ls1": (D,), f"{layer}.ls2": (D,)})
    shapes.update({"mlp1.0.weight": (4 * D,), "mlp1.0.bias": (4 * D,)})  # LayerNorm over the 2x2 pixel shuffle
    shapes.update({"mlp1.1.weight": (H, 4 * D), "mlp1.1.bias": (H,), "mlp1.3.weight": (H, H), "mlp1.3.bias": (H,)})
    head_dim = H // HEADS
    shapes["language_model.model.embed_tokens.weight"] = (VOCAB, H)
    for i in range(2):
        layer = f"language_model.model.layers.{i}"
        shapes.update({f"{layer}.self_attn.q_proj.weight": (H, H), f"{layer}.self_attn.q_proj.bias": (H,)})
        for name in ("k_proj", "v_proj"):
            shapes[f"{layer}.self_attn.{name}.weight"] = (KV_HEADS * head_dim, H)
            shapes[f"{layer}.self_attn.{name}.bias"] = (KV_HEADS * head_dim,)
        shapes[f"{layer}.self_attn.o_proj.weight"] = (H, H)
        shapes.update({f"{layer}.mlp.gate_proj.weight": (H_MLP, H), f"{layer}.mlp.up_proj.weight": (H_MLP, H)})
        shapes[f"{layer}.mlp.down_proj.weight"] = (H, H_MLP)
        shapes.update({f"{layer}.input_layernorm.weight": (H,), f"{layer}.post_attention_layernorm.weight": (H,)})
    shapes["language_model.model.norm.weight"] = (H,)
    shapes.update({"text_hidden_fcs.0.weight": (H, H), "text_hidden_fcs.0.bias": (H,)})
    shapes.update({"text_hidden_fcs.2.weight": (C, H), "text_hidden_fcs.2.bias": (C,)})
    generator = torch.Generator().manual_seed(seed)
    state = {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}
    for name, value in tiny_sam2_upstream().items():
        state["grounding_encoder.sam2_model." + name.replace(".gamma", ".g_weight")] = value
    return state


def tiny_sam2_upstream() -> dict[str, torch.Tensor]:
    """Upstream SAM2 names at the shape of sa2va-tiny's SAM2 (the test trunk at widths 32/64/128/256, SAM2.1)."""
    return upstream_state_dict(
        embed=32,
        stages=(1, 1, 2, 1),
        bkg=(4, 4),
        window0=4,
        dim=C,
        mlp_dim=128,
        iou_hidden=64,
        memory_layers=2,
        memory_ff=128,
        fuser_layers=1,
        fuser_hidden=128,
        seed=1,
    )


def expected_avseg(released: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Where each released tensor must land in avseg's Sa2VA (transformers' InternVL names)."""
    vt, lm = "mllm.model.model.vision_tower.", "mllm.model.model.language_model."
    out = {
        vt + "embeddings.cls_token": released["vision_model.embeddings.class_embedding"],
        vt + "embeddings.position_embeddings": released["vision_model.embeddings.position_embedding"],
    }
    for p in ("weight", "bias"):
        out[f"{vt}embeddings.patch_embeddings.projection.{p}"] = released[
            f"vision_model.embeddings.patch_embedding.{p}"
        ]
        for i in range(LAYERS):
            src, dst = f"vision_model.encoder.layers.{i}.", f"{vt}encoder.layer.{i}."
            if f"{src}attn.qkv.{p}" in released:
                qkv = released[f"{src}attn.qkv.{p}"]
                out[f"{dst}attention.q_proj.{p}"] = qkv[:D]
                out[f"{dst}attention.k_proj.{p}"] = qkv[D : 2 * D]
                out[f"{dst}attention.v_proj.{p}"] = qkv[-D:]
            out[f"{dst}attention.projection_layer.{p}"] = released[f"{src}attn.proj.{p}"]
            for fc in ("fc1", "fc2"):
                out[f"{dst}mlp.{fc}.{p}"] = released[f"{src}mlp.{fc}.{p}"]
            out[f"{dst}layernorm_before.{p}"] = released[f"{src}norm1.{p}"]
            out[f"{dst}layernorm_after.{p}"] = released[f"{src}norm2.{p}"]
        for n, name in (("0", "layer_norm"), ("1", "linear_1"), ("3", "linear_2")):
            out[f"mllm.model.model.multi_modal_projector.{name}.{p}"] = released[f"mlp1.{n}.{p}"]
        for n in ("0", "2"):
            out[f"seg_projector.{n}.{p}"] = released[f"text_hidden_fcs.{n}.{p}"]
    for i in range(LAYERS):
        for n in ("1", "2"):
            out[f"{vt}encoder.layer.{i}.lambda_{n}"] = released[f"vision_model.encoder.layers.{i}.ls{n}"]
    for name, value in released.items():
        if name.startswith("language_model.model."):
            out[lm + name[len("language_model.model.") :]] = value
    out["mllm.model.lm_head.weight"] = released["language_model.model.embed_tokens.weight"]  # tied
    for name, value in sam2_convert(tiny_sam2_upstream()).items():
        out["sam2.model." + name] = value
    return out


def write_release(folder, state: dict[str, torch.Tensor], config: dict, shards: int = 1) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    if shards == 1:
        save_file(state, str(folder / "model.safetensors"))
        return
    names = sorted(state)
    weight_map = {}
    for k in range(shards):
        file = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: state[n] for n in names[k::shards]}
        save_file(part, str(folder / file))
        weight_map.update({n: file for n in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def tiny_target(qkv_bias: bool):
    """sa2va-tiny without LoRA (the release is merged), with the release's vision attention bias."""
    hf_config = copy.deepcopy(get_entry("sa2va-tiny").config().mllm.hf_config)
    hf_config["vision_config"]["attention_bias"] = qkv_bias
    return create_model("sa2va-tiny", **{"mllm.lora.rank": 0, "mllm.hf_config": hf_config})


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_converted_release_loads_strictly_with_every_tensor_in_place(tmp_path, qkv_bias, capsys, monkeypatch):
    from safetensors.torch import load_file

    import avseg.progress
    from avseg.checkpoint import WEIGHTS_FILE

    released = released_state(qkv_bias=qkv_bias)
    write_release(tmp_path / "release", released, released_config(qkv_bias=qkv_bias))
    out = tmp_path / "converted"
    argv = ["convert", "sa2va", str(tmp_path / "release"), str(out), "--preset", "sa2va-tiny", "--dtype", "float32"]
    monkeypatch.setattr(avseg.progress, "LOG_INTERVAL_S", 0.0)  # every phase prints its line
    assert main([*argv, "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "tensors converted" in captured.out and captured.err == ""  # --quiet: no progress
    written = load_file(str(out / WEIGHTS_FILE))
    assert main([*argv, "--overwrite", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {  # --json: the summary is the only thing on stdout
        "source": str(tmp_path / "release"),
        "destination": str(out),
        "preset": "sa2va-tiny",
        "tensors": len(written),
        "parameters": sum(t.numel() for t in written.values() if t.is_floating_point()),
        "dropped": {},
    }
    n = len(released)
    for phase in ("reading release: 1/1 files (100%)", f"mapping tensors: {n}/{n} tensors", "writing converted: 1/1"):
        assert any(line.startswith(phase) for line in captured.err.splitlines()), (phase, captured.err)

    model = load_weights(tiny_target(qkv_bias), out)  # strict: every key present, none left over
    own = model.state_dict()
    expected = expected_avseg(released)
    assert set(expected) == set(own)
    wrong = [k for k, v in expected.items() if not torch.equal(own[k], v)]
    assert not wrong, wrong[:5]
    q = own["mllm.model.model.vision_tower.encoder.layer.1.attention.q_proj.weight"]
    assert q.shape == (D, D) and torch.equal(q, released["vision_model.encoder.layers.1.attn.qkv.weight"][:D])
    scale = own["sam2.model.memory_encoder.memory_fuser.layers.0.scale"]
    assert torch.equal(scale, released["grounding_encoder.sam2_model.memory_encoder.fuser.layers.0.g_weight"])

    config = read_checkpoint_config(out)["config"]
    assert config["mllm"]["lora"]["rank"] == 0 and config["pretrained"] is False
    assert config["sam2"]["in_checkpoint"] is True
    assert config["mllm"]["hf_config"]["vision_config"]["attention_bias"] is qkv_bias
    rebuilt = load_model(out)  # from the checkpoint alone
    assert torch.equal(rebuilt.state_dict()["seg_projector.2.weight"], released["text_hidden_fcs.2.weight"])


def test_sharded_release_converts_the_same(tmp_path):
    released = released_state(qkv_bias=True, seed=3)
    write_release(tmp_path / "release", released, released_config(qkv_bias=True), shards=3)
    out, report = convert_checkpoint(tmp_path / "release", tmp_path / "converted", preset="sa2va-tiny")
    assert report.converted == len(released) and not report.unknown
    model = load_weights(tiny_target(True), out)
    own = model.state_dict()
    for key, value in expected_avseg(released).items():  # stored as bfloat16, the release's dtype
        assert torch.equal(own[key], value.to(torch.bfloat16).float()), key


def test_unmapped_key_is_reported(tmp_path):
    released = released_state(qkv_bias=False)
    released["vision_model.encoder.layers.0.attn.extra.weight"] = torch.zeros(2)
    released["grounding_encoder.sam2_model.unknown_head.weight"] = torch.zeros(2)
    _, report = convert_state_dict(released)
    assert report.unknown == [
        "vision_model.encoder.layers.0.attn.extra.weight",
        "grounding_encoder.sam2_model.unknown_head.weight",
    ]
    write_release(tmp_path / "release", released, released_config(qkv_bias=False))
    with pytest.raises(CheckpointError, match="no avseg name") as caught:
        convert_checkpoint(tmp_path / "release", tmp_path / "converted", preset="sa2va-tiny")
    assert all(key in str(caught.value) for key in report.unknown)
    assert not (tmp_path / "converted").exists()


def test_missing_key_errors_by_name_and_file(tmp_path, capsys):
    released = released_state(qkv_bias=False)
    del released["language_model.model.norm.weight"]
    write_release(tmp_path / "release", released, released_config(qkv_bias=False))
    assert main(["convert", "sa2va", str(tmp_path / "release"), str(tmp_path / "out"), "--preset", "sa2va-tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("avseg: error:") and "\n" not in err
    assert "mllm.model.model.language_model.norm.weight" in err and "model.safetensors" in err

    # a tensor the index places in a shard that lacks it: the key and the shard are named
    sharded = tmp_path / "sharded"
    write_release(sharded, released_state(qkv_bias=False), released_config(qkv_bias=False), shards=2)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    index["weight_map"]["language_model.model.extra.weight"] = "model-00002-of-00002.safetensors"
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"model-00002-of-00002\.safetensors.*language_model\.model\.extra"):
        convert_checkpoint(sharded, tmp_path / "out2", preset="sa2va-tiny")
    (sharded / "model-00001-of-00002.safetensors").unlink()
    with pytest.raises(MissingFileError, match="model-00001-of-00002"):
        convert_checkpoint(sharded, tmp_path / "out2", preset="sa2va-tiny")


def test_internlm2_release_is_refused_in_one_line(tmp_path, capsys):
    config = released_config(qkv_bias=True, arch="InternLM2ForCausalLM")
    write_release(tmp_path / "release", {"mlp1.1.bias": torch.zeros(2)}, config)
    assert main(["convert", "sa2va", str(tmp_path / "release"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "InternLM2ForCausalLM" in err and "config.json" in err
