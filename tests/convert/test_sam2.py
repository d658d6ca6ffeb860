"""``avseg convert sam2``: upstream SAM2 names and shapes in, a folder the SAM2 layer loads out.

The reference is ``sam2_tiny_upstream_keys.tsv`` beside this file: the state-dict keys and shapes of the official
``sam2`` package's tiny models and the transformers ``Sam2VideoModel`` key each tensor belongs to (its header says
where each column comes from and how the pairing was checked by running both models). It is written independently of
avseg's converter, so the tests check the key map rather than restate it: a rule that sends a tensor to the wrong
key, even one of the same shape, or drops it, fails :func:`test_every_upstream_tensor_lands_on_its_transformers_key`.

:func:`upstream_state_dict` writes the same names for other shapes (the test-tiny model of the command tests) from
the module structure of ``sam2/modeling/{backbones/hieradet.py, backbones/image_encoder.py, sam/prompt_encoder.py,
sam/mask_decoder.py, sam/transformer.py, memory_attention.py, memory_encoder.py, sam2_base.py}``;
:func:`test_generator_writes_the_upstream_names_and_shapes` holds it to the reference at the tiny shapes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import Sam2VideoConfig, Sam2VideoModel

from avseg.cli import main
from avseg.convert.sam2 import convert, convert_state_dict, detect_variant, load_upstream, upstream_to_avseg_key
from avseg.errors import CheckpointError
from avseg.layers.sam2 import Sam2LayerConfig, Sam2Prompt, build_sam2, tiny_sam2_config
from avseg.layers.sam2.config import HIERA_SHAPES, hf_video_config_kwargs

TINY = HIERA_SHAPES["tiny"]  # sam2{,.1}_hiera_t.yaml: embed 96, stages [1, 2, 7, 2]
REFERENCE = Path(__file__).with_name("sam2_tiny_upstream_keys.tsv")


def _reference(sam21: bool) -> list[tuple[str, tuple[int, ...], list[str]]]:
    """Rows of the reference table for SAM2.1 or SAM2 tiny: (upstream key, shape, transformers targets)."""
    rows = []
    for line in REFERENCE.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        key, shape, targets, version = line.split("\t")
        assert version in ("sam2", "sam2.1"), line
        if version == "sam2" or sam21:
            rows.append((key, tuple(int(n) for n in shape.split("x")), targets.split(",")))
    return rows


def _target(name: str) -> tuple[str, int | None]:
    """``"KEY[i]"`` -> (KEY, i): row i of KEY; ``"KEY"`` -> (KEY, None)."""
    if name.endswith("]"):
        key, row = name[:-1].split("[")
        return key, int(row)
    return name, None


def upstream_state_dict(
    *,
    embed: int = 96,
    stages: tuple[int, ...] = (1, 2, 7, 2),
    bkg: tuple[int, int] = (7, 7),
    window0: int = 8,
    dim: int = 256,
    mlp_dim: int = 2048,
    iou_hidden: int = 256,
    memory_layers: int = 4,
    memory_ff: int = 2048,
    fuser_layers: int = 2,
    fuser_hidden: int | None = None,
    sam21: bool = True,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A random state dict with the names and shapes of upstream ``SAM2Base`` (``use_high_res_features_in_sam``,
    ``pred_obj_scores_mlp``, ``use_mlp_for_obj_ptr_proj``; SAM2.1 adds ``no_obj_embed_spatial`` and
    ``obj_ptr_tpos_proj``)."""
    generator = torch.Generator().manual_seed(seed)
    shapes: dict[str, tuple[int, ...]] = {}

    def linear(name: str, out: int, inp: int) -> None:
        shapes[f"{name}.weight"] = (out, inp)
        shapes[f"{name}.bias"] = (out,)

    def norm(name: str, channels: int) -> None:
        shapes[f"{name}.weight"] = (channels,)
        shapes[f"{name}.bias"] = (channels,)

    def conv(name: str, out: int, inp: int, kernel: int) -> None:
        shapes[f"{name}.weight"] = (out, inp, kernel, kernel)
        shapes[f"{name}.bias"] = (out,)

    def mlp(name: str, sizes: list[int]) -> None:  # sam2_utils.MLP: layers.{k} Linear(sizes[k] -> sizes[k+1])
        for k in range(len(sizes) - 1):
            linear(f"{name}.layers.{k}", sizes[k + 1], sizes[k])

    def attention(name: str, internal: int, kv_in: int | None = None) -> None:
        linear(f"{name}.q_proj", internal, dim)
        linear(f"{name}.k_proj", internal, kv_in or dim)
        linear(f"{name}.v_proj", internal, kv_in or dim)
        linear(f"{name}.out_proj", dim, internal)

    # Hiera trunk: dims double and the first block of a stage projects from the previous width
    trunk = "image_encoder.trunk"
    conv(f"{trunk}.patch_embed.proj", embed, 3, 7)
    shapes[f"{trunk}.pos_embed"] = (1, embed, *bkg)
    shapes[f"{trunk}.pos_embed_window"] = (1, embed, window0, window0)
    width, block, widths = embed, 0, []
    for stage, count in enumerate(stages):
        out = embed * 2**stage
        widths.append(out)
        for _ in range(count):
            norm(f"{trunk}.blocks.{block}.norm1", width)
            linear(f"{trunk}.blocks.{block}.attn.qkv", 3 * out, width)
            linear(f"{trunk}.blocks.{block}.attn.proj", out, out)
            norm(f"{trunk}.blocks.{block}.norm2", out)
            mlp(f"{trunk}.blocks.{block}.mlp", [out, 4 * out, out])
            if width != out:
                linear(f"{trunk}.blocks.{block}.proj", out, width)
            width, block = out, block + 1
    for i, channels in enumerate(reversed(widths)):  # FpnNeck: convs.{i}.conv over backbone_channel_list
        conv(f"image_encoder.neck.convs.{i}.conv", dim, channels, 1)

    # prompt encoder
    pe = "sam_prompt_encoder"
    shapes[f"{pe}.pe_layer.positional_encoding_gaussian_matrix"] = (2, dim // 2)
    for i in range(4):
        shapes[f"{pe}.point_embeddings.{i}.weight"] = (1, dim)
    shapes[f"{pe}.not_a_point_embed.weight"] = (1, dim)
    shapes[f"{pe}.no_mask_embed.weight"] = (1, dim)
    conv(f"{pe}.mask_downscaling.0", 4, 1, 2)
    norm(f"{pe}.mask_downscaling.1", 4)
    conv(f"{pe}.mask_downscaling.3", 16, 4, 2)
    norm(f"{pe}.mask_downscaling.4", 16)
    conv(f"{pe}.mask_downscaling.6", dim, 16, 1)

    # mask decoder
    md = "sam_mask_decoder"
    for i in range(2):
        layer = f"{md}.transformer.layers.{i}"
        attention(f"{layer}.self_attn", dim)
        attention(f"{layer}.cross_attn_token_to_image", dim // 2)
        attention(f"{layer}.cross_attn_image_to_token", dim // 2)
        for n in range(1, 5):
            norm(f"{layer}.norm{n}", dim)
        mlp(f"{layer}.mlp", [dim, mlp_dim, dim])
    attention(f"{md}.transformer.final_attn_token_to_image", dim // 2)
    norm(f"{md}.transformer.norm_final_attn", dim)
    shapes[f"{md}.iou_token.weight"] = (1, dim)
    shapes[f"{md}.mask_tokens.weight"] = (4, dim)
    shapes[f"{md}.obj_score_token.weight"] = (1, dim)
    shapes[f"{md}.output_upscaling.0.weight"] = (dim, dim // 4, 2, 2)  # ConvTranspose2d: (in, out, k, k)
    shapes[f"{md}.output_upscaling.0.bias"] = (dim // 4,)
    norm(f"{md}.output_upscaling.1", dim // 4)
    shapes[f"{md}.output_upscaling.3.weight"] = (dim // 4, dim // 8, 2, 2)
    shapes[f"{md}.output_upscaling.3.bias"] = (dim // 8,)
    conv(f"{md}.conv_s0", dim // 8, dim, 1)
    conv(f"{md}.conv_s1", dim // 4, dim, 1)
    for i in range(4):
        mlp(f"{md}.output_hypernetworks_mlps.{i}", [dim, dim, dim, dim // 8])
    mlp(f"{md}.iou_prediction_head", [dim, iou_hidden, iou_hidden, 4])
    mlp(f"{md}.pred_obj_score_head", [dim, dim, dim, 1])

    # memory attention (RoPE attention; cross-attention keys/values are 64-d memories)
    for i in range(memory_layers):
        layer = f"memory_attention.layers.{i}"
        attention(f"{layer}.self_attn", dim)
        attention(f"{layer}.cross_attn_image", dim, kv_in=64)
        linear(f"{layer}.linear1", memory_ff, dim)
        linear(f"{layer}.linear2", dim, memory_ff)
        for n in range(1, 4):
            norm(f"{layer}.norm{n}", dim)
    norm("memory_attention.norm", dim)

    # memory encoder: MaskDownSampler (kernel 3, stride 2, total stride 16) as one Sequential, then the fuser
    channels = 1
    for k in range(4):
        conv(f"memory_encoder.mask_downsampler.encoder.{3 * k}", channels * 4, channels, 3)
        norm(f"memory_encoder.mask_downsampler.encoder.{3 * k + 1}", channels * 4)
        channels *= 4
    conv("memory_encoder.mask_downsampler.encoder.12", dim, channels, 1)
    conv("memory_encoder.pix_feat_proj", dim, dim, 1)
    for i in range(fuser_layers):
        layer = f"memory_encoder.fuser.layers.{i}"
        shapes[f"{layer}.dwconv.weight"] = (dim, 1, 7, 7)
        shapes[f"{layer}.dwconv.bias"] = (dim,)
        norm(f"{layer}.norm", dim)
        linear(f"{layer}.pwconv1", fuser_hidden or 4 * dim, dim)
        linear(f"{layer}.pwconv2", dim, fuser_hidden or 4 * dim)
        shapes[f"{layer}.gamma"] = (dim,)
    conv("memory_encoder.out_proj", 64, dim, 1)

    # SAM2Base parameters
    shapes["maskmem_tpos_enc"] = (7, 1, 1, 64)
    shapes["no_mem_embed"] = (1, 1, dim)
    shapes["no_mem_pos_enc"] = (1, 1, dim)
    shapes["no_obj_ptr"] = (1, dim)
    conv("mask_downsample", 1, 1, 4)
    mlp("obj_ptr_proj", [dim, dim, dim, dim])
    if sam21:
        shapes["no_obj_embed_spatial"] = (1, 64)
        linear("obj_ptr_tpos_proj", 64, dim)
    return {name: 0.05 * torch.randn(shape, generator=generator) for name, shape in shapes.items()}


def _expected(variant: str) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        config = Sam2VideoConfig(**hf_video_config_kwargs(Sam2LayerConfig(variant=variant)))
        return Sam2VideoModel(config).state_dict()


@pytest.mark.parametrize("sam21", [True, False])
def test_reference_fills_the_transformers_model_exactly(sam21):
    """The table's targets are the keys and shapes of transformers' model for the variant, each filled once."""
    expected = _expected("sam2.1-hiera-tiny" if sam21 else "sam2-hiera-tiny")
    filled: dict[str, list[tuple[int | None, tuple[int, ...]]]] = {}
    for _key, shape, targets in _reference(sam21):
        for name in targets:
            key, row = _target(name)
            filled.setdefault(key, []).append((row, shape))
    assert set(filled) == set(expected)
    for key, parts in filled.items():
        rows = sorted(row for row, _ in parts if row is not None)
        if rows:  # one upstream tensor per row
            assert rows == list(range(len(parts))), key
            assert expected[key].shape == (len(parts), *parts[0][1][1:]), key
        else:
            assert len(parts) == 1 and expected[key].shape == parts[0][1], key


@pytest.mark.parametrize("sam21", [True, False])
def test_generator_writes_the_upstream_names_and_shapes(sam21):
    generated = {key: tuple(value.shape) for key, value in upstream_state_dict(sam21=sam21).items()}
    assert generated == {key: shape for key, shape, _ in _reference(sam21)}


@pytest.mark.parametrize("sam21", [True, False])
def test_every_upstream_tensor_lands_on_its_transformers_key(sam21):
    generator = torch.Generator().manual_seed(1)
    reference = _reference(sam21)
    # distinct random values, so that two same-shape tensors swapped by a wrong rule are told apart
    upstream = {key: torch.randn(shape, generator=generator) for key, shape, _ in reference}
    variant = "sam2.1-hiera-tiny" if sam21 else "sam2-hiera-tiny"
    assert detect_variant(upstream) == variant

    converted = convert_state_dict(upstream)
    expected = _expected(variant)
    assert sorted(set(expected) - set(converted)) == []  # transformers keys left unfilled
    assert sorted(set(converted) - set(expected)) == []  # names transformers does not have
    assert [k for k, v in expected.items() if converted[k].shape != v.shape] == []
    wrong = []
    for key, _, targets in reference:
        for name in targets:
            target, row = _target(name)
            value = converted[target] if row is None else converted[target][row : row + 1]
            if not torch.equal(value, upstream[key]):
                wrong.append(f"{key} -> {name}")
    assert wrong == [], f"{len(wrong)} upstream tensors are not where transformers expects them: {wrong[:10]}"


@pytest.mark.parametrize(
    ("upstream", "avseg"),
    [
        ("image_encoder.trunk.blocks.3.mlp.layers.1.weight", "vision_encoder.backbone.blocks.3.mlp.proj_out.weight"),
        ("image_encoder.neck.convs.2.conv.bias", "vision_encoder.neck.convs.2.bias"),
        (
            "sam_mask_decoder.transformer.layers.1.cross_attn_image_to_token.out_proj.weight",
            "mask_decoder.transformer.layers.1.cross_attn_image_to_token.o_proj.weight",
        ),
        ("sam_mask_decoder.iou_prediction_head.layers.1.bias", "mask_decoder.iou_prediction_head.layers.0.bias"),
        ("sam_mask_decoder.output_upscaling.1.weight", "mask_decoder.upscale_layer_norm.weight"),
        ("memory_encoder.mask_downsampler.encoder.10.bias", "memory_encoder.mask_downsampler.layers.3.layer_norm.bias"),
        ("memory_encoder.mask_downsampler.encoder.12.weight", "memory_encoder.mask_downsampler.final_conv.weight"),
        ("memory_encoder.fuser.layers.1.gamma", "memory_encoder.memory_fuser.layers.1.scale"),
        ("memory_attention.norm.weight", "memory_attention.layer_norm.weight"),
        ("obj_ptr_proj.layers.2.weight", "object_pointer_proj.proj_out.weight"),
        ("maskmem_tpos_enc", "memory_temporal_positional_encoding"),
        ("sam_prompt_encoder.mask_downscaling.4.bias", "prompt_encoder.mask_embed.layer_norm2.bias"),
    ],
)
def test_individual_keys(upstream, avseg):
    assert upstream_to_avseg_key(upstream) == avseg


def test_unknown_keys_are_reported():
    upstream = upstream_state_dict()
    upstream["sam_mask_decoder.extra_head.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="extra_head"):
        convert_state_dict(upstream)


def _tiny_upstream() -> dict[str, torch.Tensor]:
    """The upstream names with the shapes of avseg's test-tiny SAM2 (see HIERA_SHAPES["test"])."""
    test = HIERA_SHAPES["test"]
    return upstream_state_dict(
        embed=test["hidden_size"],
        stages=tuple(test["blocks_per_stage"]),
        bkg=tuple(test["window_positional_embedding_background_size"]),
        window0=test["window_size_per_stage"][0],
        dim=128,
        mlp_dim=128,
        iou_hidden=64,
        memory_layers=2,
        memory_ff=128,
        fuser_layers=1,
        fuser_hidden=128,
    )


@pytest.mark.parametrize("prefix", ["", "v_model.", "grounding_encoder.sam2_model."])
def test_command_writes_a_folder_the_layer_loads(tmp_path, prefix, capsys, monkeypatch):
    import avseg.progress

    monkeypatch.setattr(avseg.progress, "LOG_INTERVAL_S", 0.0)  # every phase prints its line
    upstream = _tiny_upstream()
    checkpoint = tmp_path / "sam2_tiny.pt"
    wrapped = {f"{prefix}{k}": v for k, v in upstream.items()}
    if prefix:  # a bigger model: other modules beside SAM2 must be ignored
        wrapped["t_model.embeddings.weight"] = torch.zeros(3, 2)
    torch.save({"model": wrapped}, checkpoint)
    out = tmp_path / "converted"
    assert main(["convert", "sam2", str(checkpoint), str(out), "--variant", "test-tiny", "--json"]) == 0
    captured = capsys.readouterr()
    record = json.loads((out / "conversion.json").read_text())
    assert record["variant"] == "test-tiny" and len(record["sha256"]) == 64
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    from safetensors.torch import load_file

    written, n = load_file(str(out / "model.safetensors")), len(upstream)
    assert json.loads(captured.out) == {  # --json: the summary is the only thing on stdout
        "source": str(checkpoint),
        "destination": str(out),
        "preset": None,
        "tensors": len(written),
        "parameters": sum(t.numel() for t in written.values() if t.is_floating_point()),
        "dropped": {},
        "variant": "test-tiny",
    }
    lines = captured.err.splitlines()
    for phase in ("reading sam2_tiny.pt: 1/1 files (100%)", f"mapping tensors: {n}/{n} tensors (100%)"):
        assert any(line.startswith(phase) for line in lines), (phase, lines)
    assert any(line.startswith("writing converted: 1/1 files (100%)") for line in lines), lines
    assert main(["convert", "sam2", str(checkpoint), str(tmp_path / "again"), "--variant", "test-tiny", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out.startswith(f"{checkpoint}: test-tiny, {len(written)} tensors")

    layer = build_sam2(tiny_sam2_config(64, weights=str(out)), pretrained=True)
    model = layer.model
    assert torch.equal(model.mask_decoder.iou_token.weight, upstream["sam_mask_decoder.iou_token.weight"])
    assert torch.equal(
        model.memory_encoder.mask_downsampler.final_conv.weight,
        upstream["memory_encoder.mask_downsampler.encoder.12.weight"],
    )
    assert torch.equal(
        model.vision_encoder.backbone.blocks[1].proj.weight, upstream["image_encoder.trunk.blocks.1.proj.weight"]
    )
    with torch.no_grad():
        video = torch.randn(1, 3, 3, 64, 64)
        track = layer.propagate(video, prompts={0: Sam2Prompt(points=torch.tensor([[[20.0, 20.0]]]))})
    assert torch.isfinite(track.object_score_logits).all()


def test_command_errors_name_the_file(tmp_path, capsys):
    missing = tmp_path / "none.pt"
    assert main(["convert", "sam2", str(missing), str(tmp_path / "out")]) == 2
    assert "none.pt" in capsys.readouterr().err

    not_sam2 = tmp_path / "other.pt"
    torch.save({"model": {"backbone.weight": torch.zeros(2)}}, not_sam2)
    assert main(["convert", "sam2", str(not_sam2), str(tmp_path / "out")]) == 2
    assert "other.pt" in capsys.readouterr().err

    upstream = _tiny_upstream()
    unknown = tmp_path / "unknown_shape.pt"
    torch.save(upstream, unknown)  # a bare state dict is accepted too; this shape is no released variant
    assert main(["convert", "sam2", str(unknown), str(tmp_path / "out")]) == 2
    assert "--variant" in capsys.readouterr().err

    wrong_version = tmp_path / "sam21.pt"
    torch.save(upstream, wrong_version)
    with pytest.raises(CheckpointError, match="disagrees"):
        convert(wrong_version, tmp_path / "out", variant="sam2-hiera-tiny")


def test_load_upstream_reads_weights_only(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"model": _tiny_upstream(), "optimizer": {"step": 3}}, path)
    state = load_upstream(path)
    assert "image_encoder.trunk.patch_embed.proj.weight" in state and "optimizer" not in state


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_the_sam2_of_an_avseg_checkpoint_exports_to_a_folder_the_layer_loads(tmp_path, dtype, capsys):
    import dataclasses

    from safetensors.torch import load_file

    from avseg.checkpoint import save_checkpoint
    from avseg.models import create_model

    torch.manual_seed(0)
    model = create_model("sam2-tiny")
    save_checkpoint(tmp_path / "ckpt", model, preset="sam2-tiny")
    out = tmp_path / "exported"
    assert main(["convert", "sam2", str(tmp_path / "ckpt"), str(out), "--dtype", dtype]) == 0
    record = json.loads((out / "conversion.json").read_text())
    assert record["preset"] == "sam2-tiny" and record["dtype"] == dtype and record["image_size"] == 128
    stored = load_file(str(out / "model.safetensors"))
    assert {t.dtype for t in stored.values()} == {getattr(torch, dtype)}
    layer = build_sam2(dataclasses.replace(model.sam2.config, weights=str(out)), pretrained=True)
    ours, theirs = model.sam2.model.state_dict(), layer.model.state_dict()
    assert set(ours) == set(theirs)
    for key, value in ours.items():  # float16 rounds each weight to 11 significant bits
        expected = value.to(getattr(torch, dtype)).float()
        assert torch.equal(theirs[key].float(), expected), key
    capsys.readouterr()
    # --variant belongs to .pt files
    assert main(["convert", "sam2", str(tmp_path / "ckpt"), str(tmp_path / "other"), "--variant", "test-tiny"]) == 2
    assert "--variant applies to .pt files" in capsys.readouterr().err
