"""Tests of the SimToken converter (avseg.convert.simtoken) on state dicts with the released names at tiny shapes.

The released names and shapes are written here from a reading of ``DianJin-HFUT/SimToken@6975001``: ``train.py``
(``get_peft_model`` with LoRA r 8 on the LLaMA ``q_proj``/``v_proj``, ``resize_token_embeddings`` after adding
``[SEG]``, ``torch.save(model.state_dict())``), ``models/avs_model.py`` (``Simtoken_ForCausalLM.audio_feature_layer``,
``Simtoken_MetaModel.visual_model`` / ``text_hidden_fcs``), ``ChatUniVi/model/arch.py`` (``vision_tower``,
``mm_projector``), ``ChatUniVi/model/multimodal_encoder/clip_encoder.py`` (a ``CLIPVisionModel`` at
``vision_tower.vision_tower``) and ``models/segment_anything/modeling/*.py``; the trained-parameter list of
``yongrenzi/Simtoken_v2`` (``result_ckpt/model_param.txt``) confirms the peft 0.2 names (``lora_A.weight``) and the
``[32001, 4096]`` embeddings. Where each tensor must land is written from transformers' ``SamModel``, ``LlavaModel`` and
``models/sam/convert_sam_to_hf.py`` (``KEYS_TO_MODIFY_MAPPING``, the hypernetwork MLP renames), independently of
avseg's rule table.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from torch import nn

from avseg.checkpoint import load_weights, read_checkpoint_config
from avseg.cli import main
from avseg.convert.simtoken import convert_checkpoint, convert_state_dict
from avseg.errors import CheckpointError
from avseg.models.registry import create_model, load_model

H, H_MLP, LAYERS = 128, 256, 2  # the tiny LLaMA of simtoken-tiny
D, D_MLP, PATCH, SIZE = 64, 128, 8, 64  # its CLIP vision tower
BASE_VOCAB = 30522  # the MiniLM WordPiece tokenizer; the release adds [SEG] after it
E, E_HEADS, E_MLP, GRID, WINDOW = 32, 2, 64, 4, 2  # a tiny SAM image encoder: 64 px, 16-px patches, layer 1 global
C, C_MLP, NECK, MASK_IN = 16, 32, 16, 4  # its prompt width, decoder MLP, neck channels, mask-input channels
P = "base_model.model."  # peft's PeftModelForCausalLM prefix


def released_state(style: str = "peft0.2", seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under the names ``torch.save(peft_model.state_dict())`` gives ``Simtoken_ForCausalLM``.

    ``style``: ``"peft0.2"`` (``q_proj.weight``, ``lora_A.weight``), ``"peft0.7"`` (``q_proj.base_layer.weight``,
    ``lora_A.default.weight``) or ``"merged"`` (no adapters, no peft prefix).
    """
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (BASE_VOCAB + 1, H)}
    for i in range(LAYERS):
        layer = f"model.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            adapted = name in ("q_proj", "v_proj") and style != "merged"
            base = ".base_layer" if adapted and style == "peft0.7" else ""
            shapes[f"{layer}self_attn.{name}{base}.weight"] = (H, H)
            if adapted:
                default = ".default" if style == "peft0.7" else ""
                shapes[f"{layer}self_attn.{name}.lora_A{default}.weight"] = (4, H)
                shapes[f"{layer}self_attn.{name}.lora_B{default}.weight"] = (H, 4)
        shapes.update({f"{layer}mlp.gate_proj.weight": (H_MLP, H), f"{layer}mlp.up_proj.weight": (H_MLP, H)})
        shapes.update({f"{layer}mlp.down_proj.weight": (H, H_MLP), f"{layer}input_layernorm.weight": (H,)})
        shapes[f"{layer}post_attention_layernorm.weight"] = (H,)
    shapes.update({"model.norm.weight": (H,), "lm_head.weight": (BASE_VOCAB + 1, H)})
    clip = "model.vision_tower.vision_tower.vision_model."
    shapes.update({clip + "embeddings.class_embedding": (D,), clip + "embeddings.patch_embedding.weight": (D, 3, 8, 8)})
    shapes[clip + "embeddings.position_embedding.weight"] = ((SIZE // PATCH) ** 2 + 1, D)
    for norm in ("pre_layrnorm", "post_layernorm"):
        shapes.update({f"{clip}{norm}.weight": (D,), f"{clip}{norm}.bias": (D,)})
    for i in range(2):
        layer = f"{clip}encoder.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes.update({f"{layer}self_attn.{name}.weight": (D, D), f"{layer}self_attn.{name}.bias": (D,)})
        for name, shape in (("mlp.fc1", (D_MLP, D)), ("mlp.fc2", (D, D_MLP))):
            shapes.update({f"{layer}{name}.weight": shape, f"{layer}{name}.bias": shape[:1]})
        for norm in ("layer_norm1", "layer_norm2"):
            shapes.update({f"{layer}{norm}.weight": (D,), f"{layer}{norm}.bias": (D,)})
    shapes.update({"model.mm_projector.weight": (H, D), "model.mm_projector.bias": (H,)})
    shapes.update({"audio_feature_layer.weight": (H, 128), "audio_feature_layer.bias": (H,)})
    shapes.update({"model.text_hidden_fcs.0.0.weight": (H, H), "model.text_hidden_fcs.0.0.bias": (H,)})
    shapes.update({"model.text_hidden_fcs.0.2.weight": (C, H), "model.text_hidden_fcs.0.2.bias": (C,)})
    shapes.update(sam_v1_shapes("model.visual_model."))
    generator = torch.Generator().manual_seed(seed)
    state = {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}
    if style == "merged":
        return state
    return {P + name: value for name, value in state.items()}


def sam_v1_shapes(prefix: str) -> dict[str, tuple[int, ...]]:
    """segment-anything's ``Sam`` names (``ImageEncoderViT``, ``PromptEncoder``, ``MaskDecoder``) at a tiny size."""
    ie, pe, md = prefix + "image_encoder.", prefix + "prompt_encoder.", prefix + "mask_decoder."
    shapes: dict[str, tuple[int, ...]] = {ie + "pos_embed": (1, GRID, GRID, E)}
    shapes.update({ie + "patch_embed.proj.weight": (E, 3, 16, 16), ie + "patch_embed.proj.bias": (E,)})
    for i, span in ((0, WINDOW), (1, GRID)):  # block 1 attends globally: its tables span the grid
        block = f"{ie}blocks.{i}."
        shapes.update({block + "norm1.weight": (E,), block + "norm1.bias": (E,)})
        shapes.update({block + "attn.qkv.weight": (3 * E, E), block + "attn.qkv.bias": (3 * E,)})
        shapes.update({block + "attn.proj.weight": (E, E), block + "attn.proj.bias": (E,)})
        shapes.update({block + "attn.rel_pos_h": (2 * span - 1, E // E_HEADS)})
        shapes.update({block + "attn.rel_pos_w": (2 * span - 1, E // E_HEADS)})
        shapes.update({block + "norm2.weight": (E,), block + "norm2.bias": (E,)})
        shapes.update({block + "mlp.lin1.weight": (E_MLP, E), block + "mlp.lin1.bias": (E_MLP,)})
        shapes.update({block + "mlp.lin2.weight": (E, E_MLP), block + "mlp.lin2.bias": (E,)})
    shapes.update({ie + "neck.0.weight": (NECK, E, 1, 1), ie + "neck.1.weight": (NECK,), ie + "neck.1.bias": (NECK,)})
    shapes.update(
        {ie + "neck.2.weight": (NECK, NECK, 3, 3), ie + "neck.3.weight": (NECK,), ie + "neck.3.bias": (NECK,)}
    )
    shapes[pe + "pe_layer.positional_encoding_gaussian_matrix"] = (2, C // 2)
    shapes.update({f"{pe}point_embeddings.{k}.weight": (1, C) for k in range(4)})
    shapes.update({pe + "not_a_point_embed.weight": (1, C), pe + "no_mask_embed.weight": (1, C)})
    q = MASK_IN // 4
    for n, shape in (("0", (q, 1, 2, 2)), ("3", (MASK_IN, q, 2, 2)), ("6", (C, MASK_IN, 1, 1))):
        shapes.update({f"{pe}mask_downscaling.{n}.weight": shape, f"{pe}mask_downscaling.{n}.bias": shape[:1]})
    for n, width in (("1", q), ("4", MASK_IN)):
        shapes.update({f"{pe}mask_downscaling.{n}.weight": (width,), f"{pe}mask_downscaling.{n}.bias": (width,)})

    def attention(name: str, inner: int) -> None:
        for proj in ("q_proj", "k_proj", "v_proj"):
            shapes.update({f"{name}.{proj}.weight": (inner, C), f"{name}.{proj}.bias": (inner,)})
        shapes.update({f"{name}.out_proj.weight": (C, inner), f"{name}.out_proj.bias": (C,)})

    for i in range(2):
        layer = f"{md}transformer.layers.{i}."
        attention(layer + "self_attn", C)
        attention(layer + "cross_attn_token_to_image", C // 2)
        attention(layer + "cross_attn_image_to_token", C // 2)
        for n in range(1, 5):
            shapes.update({f"{layer}norm{n}.weight": (C,), f"{layer}norm{n}.bias": (C,)})
        shapes.update({layer + "mlp.lin1.weight": (C_MLP, C), layer + "mlp.lin1.bias": (C_MLP,)})
        shapes.update({layer + "mlp.lin2.weight": (C, C_MLP), layer + "mlp.lin2.bias": (C,)})
    attention(md + "transformer.final_attn_token_to_image", C // 2)
    shapes.update({md + "transformer.norm_final_attn.weight": (C,), md + "transformer.norm_final_attn.bias": (C,)})
    shapes.update({md + "iou_token.weight": (1, C), md + "mask_tokens.weight": (4, C)})
    shapes.update({md + "output_upscaling.0.weight": (C, C // 4, 2, 2), md + "output_upscaling.0.bias": (C // 4,)})
    shapes.update({md + "output_upscaling.1.weight": (C // 4,), md + "output_upscaling.1.bias": (C // 4,)})
    shapes.update({md + "output_upscaling.3.weight": (C // 4, C // 8, 2, 2), md + "output_upscaling.3.bias": (C // 8,)})
    for mlp, out in [(f"output_hypernetworks_mlps.{k}", C // 8) for k in range(4)] + [("iou_prediction_head", 4)]:
        for j, rows in enumerate((C, C, out)):
            shapes.update({f"{md}{mlp}.layers.{j}.weight": (rows, C), f"{md}{mlp}.layers.{j}.bias": (rows,)})
    return shapes


def expected_avseg(released: dict[str, torch.Tensor], seg_id: int, vocab: int) -> dict[str, torch.Tensor]:
    """Where each released tensor must land in avseg's SimToken (transformers' LLaVA, CLIP and SAM names)."""
    plain = {k.removeprefix(P): v for k, v in released.items()}
    lm, vt = "mllm.model.model.language_model.", "mllm.model.model.vision_tower."
    out: dict[str, torch.Tensor] = {}
    adapted = {m[1] for k in plain if (m := re.fullmatch(r"(.+)\.lora_A(\.default)?\.weight", k))}
    for name, value in plain.items():
        if lora := re.fullmatch(r"model\.(layers\..+)\.(lora_[AB])(\.default)?\.weight", name):
            out[f"{lm}{lora[1]}.{lora[2]}.default.weight"] = value
        elif base := re.fullmatch(r"model\.(layers\..+?)(\.base_layer)?\.weight", name):
            adapter = base[2] or f"model.{base[1]}" in adapted  # peft 0.2 keeps the adapted weight's own name
            out[f"{lm}{base[1]}{'.base_layer' if adapter else ''}.weight"] = value
        elif name.startswith("model.vision_tower.vision_tower.vision_model."):
            out[vt + name.removeprefix("model.vision_tower.vision_tower.vision_model.")] = value
    out[lm + "norm.weight"] = plain["model.norm.weight"]
    for key, name in (
        (lm + "embed_tokens.weight", "model.embed_tokens.weight"),
        ("mllm.model.lm_head.weight", "lm_head.weight"),
    ):
        rows = plain[name]
        table = rows[:BASE_VOCAB].mean(0).expand(vocab, -1).clone()  # tokens the release lacks: the mean row
        table[:BASE_VOCAB] = rows[:BASE_VOCAB]
        table[seg_id] = rows[BASE_VOCAB]  # the release's [SEG] is its last row
        out[key] = table
    for p in ("weight", "bias"):
        out[f"mllm.model.model.multi_modal_projector.{p}"] = plain[f"model.mm_projector.{p}"]
        out[f"audio_projector.{p}"] = plain[f"audio_feature_layer.{p}"]
        for n in ("0", "2"):
            out[f"seg_projector.{n}.{p}"] = plain[f"model.text_hidden_fcs.0.{n}.{p}"]
    sam = {k.removeprefix("model.visual_model."): v for k, v in plain.items() if k.startswith("model.visual_model.")}
    renames = (  # transformers' KEYS_TO_MODIFY_MAPPING, in its order
        ("iou_prediction_head.layers.0", "iou_prediction_head.proj_in"),
        ("iou_prediction_head.layers.1", "iou_prediction_head.layers.0"),
        ("iou_prediction_head.layers.2", "iou_prediction_head.proj_out"),
        ("mask_decoder.output_upscaling.0", "mask_decoder.upscale_conv1"),
        ("mask_decoder.output_upscaling.1", "mask_decoder.upscale_layer_norm"),
        ("mask_decoder.output_upscaling.3", "mask_decoder.upscale_conv2"),
        ("mask_downscaling.0", "mask_embed.conv1"),
        ("mask_downscaling.1", "mask_embed.layer_norm1"),
        ("mask_downscaling.3", "mask_embed.conv2"),
        ("mask_downscaling.4", "mask_embed.layer_norm2"),
        ("mask_downscaling.6", "mask_embed.conv3"),
        ("point_embeddings", "point_embed"),
        ("pe_layer.positional_encoding_gaussian_matrix", "shared_embedding.positional_embedding"),
        ("image_encoder", "vision_encoder"),
        ("neck.0", "neck.conv1"),
        ("neck.1", "neck.layer_norm1"),
        ("neck.2", "neck.conv2"),
        ("neck.3", "neck.layer_norm2"),
        ("patch_embed.proj", "patch_embed.projection"),
        (".norm", ".layer_norm"),
        ("blocks", "layers"),
    )
    for name, value in sam.items():
        for old, new in renames:
            name = name.replace(old, new) if old in name else name
        if ".output_hypernetworks_mlps." in name:
            name = name.replace("layers.0", "proj_in").replace("layers.1", "layers.0").replace("layers.2", "proj_out")
        out["sam." + name] = value
    out["sam.shared_image_embedding.positional_embedding"] = out[
        "sam.prompt_encoder.shared_embedding.positional_embedding"
    ]
    return out


def tiny_sam_config() -> dict:
    """The tiny SAM of :func:`sam_v1_shapes` as ``SamConfig`` keyword arguments."""
    return {
        "vision_config": {
            "hidden_size": E,
            "num_hidden_layers": 2,
            "num_attention_heads": E_HEADS,
            "image_size": GRID * 16,
            "patch_size": 16,
            "mlp_dim": E_MLP,
            "output_channels": NECK,
            "global_attn_indexes": [1],
            "window_size": WINDOW,
            "num_pos_feats": C // 2,
        },
        "prompt_encoder_config": {
            "hidden_size": C,
            "image_size": GRID * 16,
            "patch_size": 16,
            "mask_input_channels": MASK_IN,
        },
        "mask_decoder_config": {"hidden_size": C, "mlp_dim": C_MLP, "num_attention_heads": 2, "iou_head_hidden_dim": C},
    }


@pytest.fixture
def no_vggish_file(monkeypatch):
    """The converted config reads VGGish from ``vggish-10086976.pth`` (not in checkpoints): a stand-in module here."""
    monkeypatch.setattr("avseg.layers.audio.load_vggish", lambda weights, *a, **k: nn.Linear(1, 1))


def tiny_target(lora: bool):
    """simtoken-tiny with the release's structure: SAM v1, VGGish audio, LoRA r 4 on q/v (or none)."""
    overrides = {
        "pretrained": True,
        "mllm.pretrained": False,
        "mllm.lora.rank": 4 if lora else 0,
        "mllm.lora.target_modules": ["q_proj", "v_proj"],
        "audio.encoder": "vggish",
        "audio.vggish_weights": "vggish-10086976.pth",
        "segmenter.kind": "sam",
        "segmenter.sam2": None,
        "segmenter.sam_weights": None,
        "segmenter.sam_hf_config": tiny_sam_config(),
        "segmenter.sam_image_size": GRID * 16,
    }
    return create_model("simtoken-tiny", **overrides)


@pytest.mark.parametrize("style", ["peft0.2", "peft0.7", "merged"])
def test_converted_release_loads_strictly_with_every_tensor_in_place(tmp_path, style, capsys, no_vggish_file):
    released = released_state(style)
    torch.save(released, tmp_path / "simtoken.pth")
    out = tmp_path / "converted"
    argv = ["convert", "simtoken", str(tmp_path / "simtoken.pth"), str(out), "--preset", "simtoken-tiny"]
    assert main([*argv, "--json"]) == 0
    from safetensors.torch import load_file

    from avseg.checkpoint import WEIGHTS_FILE

    written = load_file(str(out / WEIGHTS_FILE))
    assert json.loads(capsys.readouterr().out) == {  # --json: the summary is the only thing on stdout
        "source": str(tmp_path / "simtoken.pth"),
        "destination": str(out),
        "preset": "simtoken-tiny",
        "tensors": len(written),
        "parameters": sum(t.numel() for t in written.values() if t.is_floating_point()),
        "dropped": {},
    }

    model = load_weights(tiny_target(lora=style != "merged"), out)  # strict: every key present, none left over
    own = model.state_dict()
    seg_id, vocab = model.mllm.seg_token_id, len(model.mllm.tokenizer)
    assert seg_id != BASE_VOCAB and vocab == BASE_VOCAB + 2  # avseg adds <image> before [SEG]: the rows must move
    expected = expected_avseg(released, seg_id, vocab)
    assert set(expected) == set(own)
    wrong = [k for k, v in expected.items() if not torch.equal(own[k], v)]
    assert not wrong, wrong[:5]
    qkv = own["sam.vision_encoder.layers.1.attn.qkv.weight"]  # transformers' SAM keeps the fused qkv: rows unmoved
    assert qkv.shape == (3 * E, E) and torch.equal(qkv, released_state(style)[_name(style, "image_encoder", 1)])

    config = read_checkpoint_config(out)["config"]
    assert config["mllm"]["lora"]["rank"] == (0 if style == "merged" else 4)
    if style != "merged":
        assert config["mllm"]["lora"]["target_modules"] == ["q_proj", "v_proj"]
        assert config["mllm"]["lora"]["alpha"] == 16.0  # train.py's lora_alpha
    sam = config["segmenter"]["sam_hf_config"]["vision_config"]
    assert (sam["global_attn_indexes"], sam["window_size"], sam["num_attention_heads"]) == ([1], WINDOW, E_HEADS)
    assert config["segmenter"]["sam_weights"] is None and config["mllm"]["pretrained"] is False
    assert config["compression"]["mode"] == "released"
    rebuilt = load_model(out)  # from the checkpoint alone
    assert torch.equal(rebuilt.state_dict()["audio_projector.weight"], released_state(style)[_name(style, "audio")])


def _name(style: str, what: str, block: int = 0) -> str:
    prefix = "" if style == "merged" else P
    if what == "audio":
        return prefix + "audio_feature_layer.weight"
    return f"{prefix}model.visual_model.image_encoder.blocks.{block}.attn.qkv.weight"


def test_dropped_buffers_and_unmapped_keys_are_reported(tmp_path):
    released = released_state()
    released[P + "model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.zeros(16)
    released[P + "model.vision_tower.vision_tower.vision_model.embeddings.position_ids"] = torch.zeros(1, 65)
    released[P + "model.visual_model.mask_decoder.extra_head.weight"] = torch.zeros(2)
    released[P + "model.ctm0.weight"] = torch.zeros(2)
    _, report = convert_state_dict(released)
    assert report.unknown == [P + "model.visual_model.mask_decoder.extra_head.weight", P + "model.ctm0.weight"]
    assert sum(len(keys) for keys in report.dropped.values()) == 2
    torch.save(released, tmp_path / "simtoken.pth")
    with pytest.raises(CheckpointError, match="no avseg name") as caught:
        convert_checkpoint(tmp_path / "simtoken.pth", tmp_path / "converted", preset="simtoken-tiny")
    assert all(key in str(caught.value) for key in report.unknown)
    assert not (tmp_path / "converted").exists()


def test_missing_key_is_refused_by_name(tmp_path, capsys):
    released = released_state()
    del released[P + "model.layers.1.post_attention_layernorm.weight"]
    torch.save(released, tmp_path / "simtoken.pth")
    argv = ["convert", "simtoken", str(tmp_path / "simtoken.pth"), str(tmp_path / "out"), "--preset", "simtoken-tiny"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("avseg: error:") and "\n" not in err
    assert "mllm.model.model.language_model.layers.1.post_attention_layernorm.weight" in err and "simtoken.pth" in err
    assert not (tmp_path / "out").exists()


class _Opaque:
    """Not a tensor type: ``torch.load(weights_only=True)`` refuses to rebuild it."""


def test_pickle_beyond_weights_only_is_refused_in_one_line(tmp_path, capsys):
    torch.save({"model.norm.weight": torch.zeros(2), "extra": _Opaque()}, tmp_path / "simtoken.pth")
    argv = ["convert", "simtoken", str(tmp_path / "simtoken.pth"), str(tmp_path / "out"), "--preset", "simtoken-tiny"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "weights_only=True" in err and "simtoken.pth" in err
