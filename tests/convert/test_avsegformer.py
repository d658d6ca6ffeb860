"""The AVSegFormer checkpoint converter (avseg.convert.avsegformer) on state dicts with the released names and shapes.

``official_state`` writes the key list of a released checkpoint from a reading of the released code
(``model/AVSegFormer.py``, ``model/head/AVSegHead.py``, ``model/utils/*``, ``model/backbone/{pvt,resnet}.py``,
``model/vggish/vggish.py`` at ``7083cb6``), independently of the converter's rules. At paper scale it is built on the
meta device (names and shapes only); the end-to-end command test uses small widths and real tensors.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from avseg.checkpoint import read_checkpoint_config
from avseg.cli import main
from avseg.convert.avsegformer import convert_state_dict, infer_released_config, normalise_timm_pvt
from avseg.data.types import random_batch
from avseg.errors import CheckpointError
from avseg.models import load_model
from avseg.models.avsegformer import AVSegFormer

Maker = Callable[..., torch.Tensor]

PVT_B5 = {"dims": [64, 128, 320, 512], "depths": [3, 6, 40, 3], "heads": [1, 2, 5, 8], "sr": [8, 4, 2, 1]}


def add_linear(s: dict, name: str, cin: int, cout: int, make: Maker, bias: bool = True) -> None:
    s[f"{name}.weight"] = make(cout, cin)
    if bias:
        s[f"{name}.bias"] = make(cout)


def add_conv(s: dict, name: str, cin: int, cout: int, k: int, make: Maker, bias: bool = True) -> None:
    s[f"{name}.weight"] = make(cout, cin, k, k)
    if bias:
        s[f"{name}.bias"] = make(cout)


def add_norm(s: dict, name: str, c: int, make: Maker, bn: bool = False) -> None:
    s[f"{name}.weight"], s[f"{name}.bias"] = make(c), make(c)
    if bn:
        s[f"{name}.running_mean"], s[f"{name}.running_var"] = make(c), make(c).abs() + 0.5  # variances are positive
        s[f"{name}.num_batches_tracked"] = torch.zeros((), dtype=torch.long, device=make(1).device)


def add_mha(s: dict, name: str, d: int, make: Maker, bias: bool = True) -> None:
    s[f"{name}.in_proj_weight"] = make(3 * d, d)
    if bias:
        s[f"{name}.in_proj_bias"] = make(3 * d)
    add_linear(s, f"{name}.out_proj", d, d, make, bias)


def pvt_backbone(s: dict, make: Maker, dims: list[int], depths: list[int], sr: list[int]) -> None:
    """``PyramidVisionTransformerV2`` of the released ``model/backbone/pvt.py`` (qkv_bias=True, mlp ratio 4)."""
    cin = 3
    for i, (c, depth, r) in enumerate(zip(dims, depths, sr), start=1):
        add_conv(s, f"backbone.patch_embed{i}.proj", cin, c, 7 if i == 1 else 3, make)
        add_norm(s, f"backbone.patch_embed{i}.norm", c, make)
        for j in range(depth):
            b = f"backbone.block{i}.{j}"
            add_norm(s, f"{b}.norm1", c, make)
            add_linear(s, f"{b}.attn.q", c, c, make)
            add_linear(s, f"{b}.attn.kv", c, 2 * c, make)
            add_linear(s, f"{b}.attn.proj", c, c, make)
            if r > 1:
                add_conv(s, f"{b}.attn.sr", c, c, r, make)
                add_norm(s, f"{b}.attn.norm", c, make)
            add_norm(s, f"{b}.norm2", c, make)
            add_linear(s, f"{b}.mlp.fc1", c, 4 * c, make)
            s[f"{b}.mlp.dwconv.dwconv.weight"], s[f"{b}.mlp.dwconv.dwconv.bias"] = make(4 * c, 1, 3, 3), make(4 * c)
            add_linear(s, f"{b}.mlp.fc2", 4 * c, c, make)
        add_norm(s, f"backbone.norm{i}", c, make)
        cin = c


def resnet_backbone(s: dict, make: Maker, stem: int, planes: list[int], blocks: list[int]) -> None:
    """``B2_ResNet`` of the released ``model/backbone/resnet.py``: layer1, layer2, layer{3,4}_{1,2} (bottlenecks)."""
    add_conv(s, "backbone.conv1", 3, stem, 7, make, bias=False)
    add_norm(s, "backbone.bn1", stem, make, bn=True)

    def layer(name: str, inplanes: int, p: int, n: int) -> int:
        for j in range(n):
            b = f"backbone.{name}.{j}"
            add_conv(s, f"{b}.conv1", inplanes, p, 1, make, bias=False)
            add_norm(s, f"{b}.bn1", p, make, bn=True)
            add_conv(s, f"{b}.conv2", p, p, 3, make, bias=False)
            add_norm(s, f"{b}.bn2", p, make, bn=True)
            add_conv(s, f"{b}.conv3", p, 4 * p, 1, make, bias=False)
            add_norm(s, f"{b}.bn3", 4 * p, make, bn=True)
            if j == 0:
                add_conv(s, f"{b}.downsample.0", inplanes, 4 * p, 1, make, bias=False)
                add_norm(s, f"{b}.downsample.1", 4 * p, make, bn=True)
            inplanes = 4 * p
        return inplanes

    c = layer("layer1", stem, planes[0], blocks[0])
    c = layer("layer2", c, planes[1], blocks[1])
    c3 = layer("layer3_1", c, planes[2], blocks[2])
    layer("layer4_1", c3, planes[3], blocks[3])
    c3 = layer("layer3_2", c, planes[2], blocks[2])  # the unused second branch starts from layer2's output too
    layer("layer4_2", c3, planes[3], blocks[3])


def official_state(
    backbone: str,
    make: Maker,
    *,
    classes: int = 1,
    d: int = 256,
    queries: int = 300,
    ffn: int = 2048,
    layers: int = 6,
    heads: int = 8,
    points: int = 4,
    gen_ffn: int = 1024,
    mlp_hidden: int = 2048,
    conv: tuple[int, int] = (128, 32),
    channels: list[int] | None = None,
    backbone_fn: Callable[[dict], None] | None = None,
) -> dict[str, torch.Tensor]:
    s: dict[str, torch.Tensor] = {}
    if backbone_fn is not None:
        backbone_fn(s)
    elif backbone == "pvt":
        pvt_backbone(s, make, PVT_B5["dims"], PVT_B5["depths"], PVT_B5["sr"])
    else:
        resnet_backbone(s, make, 64, [64, 128, 256, 512], [3, 4, 6, 3])
    channels = channels or (PVT_B5["dims"] if backbone == "pvt" else [256, 512, 1024, 2048])
    # VGGish (features at 0, 3, 6, 8, 11, 13; embeddings at 0, 2, 4) and the audio projection.
    for idx, (a, b) in zip((0, 3, 6, 8, 11, 13), [(1, 64), (64, 128), (128, 256), (256, 256), (256, 512), (512, 512)]):
        add_conv(s, f"vggish.features.{idx}", a, b, 3, make)
    for idx, (a, b) in zip((0, 2, 4), [(512 * 24, 4096), (4096, 4096), (4096, 128)]):
        add_linear(s, f"vggish.embeddings.{idx}", a, b, make)
    add_linear(s, "audio_proj", 128, d, make)
    # AVSegHead.
    h = "head"
    s[f"{h}.level_embed"] = make(3, d)
    s[f"{h}.learnable_query.weight"] = make(queries, d)
    s[f"{h}.query_generator.query.weight"] = make(queries, d)
    for k in range(6):
        g = f"{h}.query_generator.layers.{k}"
        add_mha(s, f"{g}.self_attn", d, make, bias=False)
        add_mha(s, f"{g}.cross_attn", d, make, bias=False)
        add_linear(s, f"{g}.ffn.0", d, gen_ffn, make)
        add_linear(s, f"{g}.ffn.2", gen_ffn, d, make)
        for n in (1, 2, 3):
            add_norm(s, f"{g}.norm{n}", d, make)
    for k in range(layers):
        e = f"{h}.transformer.encoder.layers.{k}"
        add_linear(s, f"{e}.self_attn.sampling_offsets", d, heads * 3 * points * 2, make)
        add_linear(s, f"{e}.self_attn.attention_weights", d, heads * 3 * points, make)
        add_linear(s, f"{e}.self_attn.value_proj", d, d, make)
        add_linear(s, f"{e}.self_attn.output_proj", d, d, make)
        add_norm(s, f"{e}.norm1", d, make)
        add_linear(s, f"{e}.linear1", d, ffn, make)
        add_linear(s, f"{e}.linear2", ffn, d, make)
        add_norm(s, f"{e}.norm2", d, make)
    for k in range(layers):
        dl = f"{h}.transformer.decoder.layers.{k}"
        add_mha(s, f"{dl}.self_attn", d, make)
        add_norm(s, f"{dl}.norm1", d, make)
        add_mha(s, f"{dl}.cross_attn", d, make)
        add_norm(s, f"{dl}.norm2", d, make)
        add_linear(s, f"{dl}.linear1", d, ffn, make)
        add_linear(s, f"{dl}.linear2", ffn, d, make)
        add_norm(s, f"{dl}.norm3", d, make)
    for k, c in enumerate(channels):
        add_conv(s, f"{h}.in_proj.{k}.0", c, d, 1, make)
        add_norm(s, f"{h}.in_proj.{k}.1", d, make)
    for k, (a, b) in enumerate([(queries, mlp_hidden), (mlp_hidden, mlp_hidden), (mlp_hidden, d)]):
        add_conv(s, f"{h}.mlp.layers.{k}", a, b, 1, make)
    add_linear(s, f"{h}.fusion_block.q_proj", d, d, make, bias=False)
    add_linear(s, f"{h}.fusion_block.kv_proj", d, 2 * d, make, bias=False)
    add_linear(s, f"{h}.fusion_block.proj", d, d, make)
    add_conv(s, f"{h}.lateral_conv.0", d, d, 1, make)
    add_norm(s, f"{h}.lateral_conv.1", d, make)
    add_conv(s, f"{h}.out_conv.0", d, d, 3, make)
    add_norm(s, f"{h}.out_conv.1", d, make)
    for n in (1, 2, 3):
        add_conv(s, f"{h}.fpn.up{n}.1", d, d, 3, make)
    for head in ("attn_fc", "fc"):
        add_conv(s, f"{h}.{head}.0", d, conv[0], 3, make)
        add_conv(s, f"{h}.{head}.2", conv[0], conv[1], 3, make)
        add_conv(s, f"{h}.{head}.4", conv[1], classes, 1, make, bias=False)
    return s


def meta(*shape: int) -> torch.Tensor:
    return torch.empty(*shape, device="meta")


def expected_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    _, cfg = infer_released_config(state)
    with torch.device("meta"):
        return AVSegFormer(cfg).state_dict()


@pytest.mark.parametrize(("backbone", "classes"), [("pvt", 1), ("pvt", 71), ("r50", 1), ("r50", 71)])
def test_paper_scale_released_names_map_onto_every_avseg_weight(backbone: str, classes: int) -> None:
    state = official_state(backbone, meta, classes=classes)
    converted, dropped = convert_state_dict(state)
    preset, _ = infer_released_config(state)
    assert preset == f"avsegformer-{backbone}-{'avss' if classes > 1 else 's4'}"
    target = expected_state(state)
    assert set(converted) == set(target)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in target.items()}
    if backbone == "r50":  # the second B2_ResNet branch: layer3_2 (6 blocks) and layer4_2 (3 blocks)
        # 3 convs + 3 batch norms (5 keys) per block, plus the downsample conv + batch norm of each first block.
        assert set(dropped) == {k for k in state if "_2." in k} and len(dropped) == (6 + 3) * 18 + 2 * 6
    else:
        assert dropped == {}
    # Values travel unchanged (the kv split aside): spot checks by identity of the tensors.
    assert (
        converted["decoder.layers.5.cross_attn.in_proj_weight"]
        is state["head.transformer.decoder.layers.5.cross_attn.in_proj_weight"]
    )
    assert converted["output.conv3.weight"] is state["head.fc.4.weight"]
    assert converted["reformer.up.2.weight"] is state["head.fpn.up3.1.weight"]


def test_timm_pvt_names_give_the_same_conversion() -> None:
    state = official_state("pvt", meta)
    timm = {}
    for k, v in state.items():  # timm's _checkpoint_filter_fn, written out
        t = k.replace("backbone.patch_embed1", "backbone.patch_embed")
        for i in (2, 3, 4):
            t = t.replace(f"backbone.patch_embed{i}", f"backbone.stages.{i - 1}.downsample")
        t = t.replace("dwconv.dwconv", "dwconv")
        for i in (1, 2, 3, 4):
            t = t.replace(f"backbone.block{i}.", f"backbone.stages.{i - 1}.blocks.")
            t = t.replace(f"backbone.norm{i}.", f"backbone.stages.{i - 1}.norm.")
        timm[t] = v
    assert "backbone.stages.2.blocks.39.mlp.dwconv.weight" in timm
    assert normalise_timm_pvt("backbone.stages.2.blocks.39.mlp.dwconv.weight") == (
        "backbone.block3.39.mlp.dwconv.dwconv.weight"
    )
    a, _ = convert_state_dict(state)
    b, _ = convert_state_dict(timm)
    assert set(a) == set(b) and all(a[k].shape == b[k].shape for k in a)


def test_unknown_keys_and_foreign_state_dicts_are_refused() -> None:
    state = official_state("r50", meta)
    state["head.something_new.weight"] = meta(3)
    with pytest.raises(ValueError, match=r"head\.something_new\.weight"):
        convert_state_dict(state)
    with pytest.raises(ValueError, match="no backbone"):
        convert_state_dict({"head.level_embed": meta(3, 256)})
    with pytest.raises(ValueError, match="text branch"):
        infer_released_config(official_state("pvt", meta), preset="avsegformer-pvt-refavs")
    with pytest.raises(ValueError, match="resnet backbone"):
        infer_released_config(official_state("pvt", meta), preset="avsegformer-r50-s4")


# -- the PVT key map computes what the released PVT computes ---------------------------------------------------------


def released_pvt_stage(s: dict, x: torch.Tensor, i: int, c: int, heads: int, sr: int, depth: int) -> torch.Tensor:
    """One stage of the released ``PyramidVisionTransformerV2.forward_features``, written from its code."""
    p = f"backbone.patch_embed{i}"
    k = 7 if i == 1 else 3
    x = F.conv2d(x, s[f"{p}.proj.weight"], s[f"{p}.proj.bias"], stride=4 if i == 1 else 2, padding=k // 2)
    b, _, hh, ww = x.shape
    # The released patch-embedding and spatial-reduction norms keep LayerNorm's default eps (1e-5), the block norms
    # use 1e-6; transformers uses 1e-6 everywhere, a difference far below the tolerance of this test.
    x = F.layer_norm(x.flatten(2).transpose(1, 2), (c,), s[f"{p}.norm.weight"], s[f"{p}.norm.bias"])
    for j in range(depth):
        q = f"backbone.block{i}.{j}"
        y = F.layer_norm(x, (c,), s[f"{q}.norm1.weight"], s[f"{q}.norm1.bias"], eps=1e-6)
        query = (
            F.linear(y, s[f"{q}.attn.q.weight"], s[f"{q}.attn.q.bias"]).view(b, -1, heads, c // heads).transpose(1, 2)
        )
        src = y
        if sr > 1:
            src = F.conv2d(
                y.transpose(1, 2).reshape(b, c, hh, ww), s[f"{q}.attn.sr.weight"], s[f"{q}.attn.sr.bias"], stride=sr
            )
            src = F.layer_norm(
                src.flatten(2).transpose(1, 2), (c,), s[f"{q}.attn.norm.weight"], s[f"{q}.attn.norm.bias"]
            )
        kv = F.linear(src, s[f"{q}.attn.kv.weight"], s[f"{q}.attn.kv.bias"])
        kv = kv.reshape(b, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
        attn = (query @ kv[0].transpose(-2, -1) * (c // heads) ** -0.5).softmax(-1)
        out = (attn @ kv[1]).transpose(1, 2).reshape(b, -1, c)
        x = x + F.linear(out, s[f"{q}.attn.proj.weight"], s[f"{q}.attn.proj.bias"])
        y = F.layer_norm(x, (c,), s[f"{q}.norm2.weight"], s[f"{q}.norm2.bias"], eps=1e-6)
        y = F.linear(y, s[f"{q}.mlp.fc1.weight"], s[f"{q}.mlp.fc1.bias"])
        y = y.transpose(1, 2).view(b, -1, hh, ww)
        y = F.conv2d(
            y, s[f"{q}.mlp.dwconv.dwconv.weight"], s[f"{q}.mlp.dwconv.dwconv.bias"], padding=1, groups=y.shape[1]
        )
        y = F.gelu(y.flatten(2).transpose(1, 2))
        x = x + F.linear(y, s[f"{q}.mlp.fc2.weight"], s[f"{q}.mlp.fc2.bias"])
    x = F.layer_norm(x, (c,), s[f"backbone.norm{i}.weight"], s[f"backbone.norm{i}.bias"], eps=1e-6)
    return x.reshape(b, hh, ww, c).permute(0, 3, 1, 2)


def test_converted_pvt_weights_compute_the_released_pvt() -> None:
    from transformers import PvtV2Config, PvtV2Model

    torch.manual_seed(0)
    dims, depths, heads, sr = [8, 16, 24, 32], [1, 2, 1, 1], [1, 2, 3, 4], [8, 4, 2, 1]
    state: dict[str, torch.Tensor] = {}
    pvt_backbone(state, lambda *shape: torch.randn(*shape) * 0.2, dims, depths, sr)
    converted, _ = convert_state_dict({**state, "head.level_embed": torch.zeros(3, 8)})
    config = PvtV2Config(depths=depths, hidden_sizes=dims, num_attention_heads=heads, sr_ratios=sr, mlp_ratios=[4] * 4)
    model = PvtV2Model(config).eval()
    prefix = "backbone.model."
    model.load_state_dict({k.removeprefix(prefix): v for k, v in converted.items() if k.startswith(prefix)})
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        got = model(pixel_values=x, output_hidden_states=True).hidden_states
    ref = x
    for i in range(4):
        ref = released_pvt_stage(state, ref, i + 1, dims[i], heads[i], sr[i], depths[i])
        torch.testing.assert_close(got[i], ref, rtol=1e-4, atol=1e-4)


# -- the command, end to end -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_convert_command_writes_a_checkpoint_that_load_model_rebuilds(tmp_path, capsys) -> None:
    """A small released-format checkpoint (ResNet layout at small widths; VGGish at its real size, zero-storage)."""
    torch.manual_seed(0)

    def small(*shape: int) -> torch.Tensor:
        if math.prod(shape) > 4_000_000:  # VGGish's big matrices: a stride-0 view saves one element to disk
            return torch.zeros(()).expand(*shape)
        return torch.randn(*shape) * 0.1

    planes = [4, 8, 16, 32]
    state = official_state(
        "r50",
        small,
        d=32,
        queries=8,
        ffn=64,
        heads=4,
        gen_ffn=32,
        mlp_hidden=16,
        conv=(8, 4),
        channels=[4 * p for p in planes],
        backbone_fn=lambda s: resnet_backbone(s, small, 8, planes, [1, 2, 1, 1]),
    )
    path = tmp_path / "AVSegFormer_res50_s4.pth"
    torch.save(state, path)
    overrides = [
        "input_size=64",
        "transformer.dim=32",
        "transformer.heads=4",
        "transformer.ffn_dim=64",
        "transformer.group_norm_groups=8",
        "queries.num_queries=8",
        "queries.generator_ffn_dim=32",
        "head.mlp_hidden=16",
        "head.conv_channels=[8, 4]",
        "backbone.hf_config={embedding_size: 8, hidden_sizes: [16, 32, 64, 128], depths: [1, 2, 1, 1], "
        "layer_type: bottleneck, downsample_in_first_stage: false}",
    ]
    out = tmp_path / "converted"
    assert main(["convert", "avsegformer", str(path), str(out), "--overrides", *overrides, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)  # --json: the summary is the only thing on stdout
    info = read_checkpoint_config(out)
    assert info["preset"] == "avsegformer-r50-s4" and info["meta"]["dropped"]
    weights = load_model(out).state_dict()
    assert summary == {
        "source": str(path),
        "destination": str(out),
        "preset": "avsegformer-r50-s4",
        "tensors": len(weights),
        "parameters": sum(t.numel() for t in weights.values() if t.is_floating_point()),
        "dropped": info["meta"]["dropped"],
    }
    assert info["config"]["queries"]["generator"] == "attention" and info["config"]["mixer"]["combine"] == "gate"
    model = load_model(out).eval()
    torch.testing.assert_close(
        model.backbone.model.encoder.stages[2].layers[0].layer[0].convolution.weight,
        state["backbone.layer3_1.0.conv1.weight"],
    )
    torch.testing.assert_close(model.mixer.kv_proj.weight, state["head.fusion_block.kv_proj.weight"])
    with torch.no_grad():
        logits = model(random_batch(b=1, t=2, masks="empty")).mask_logits
    assert logits.shape == (1, 2, 1, 64, 64) and torch.isfinite(logits).all()
    # A second run refuses to overwrite; a mismatching architecture is reported with the offending shapes.
    assert main(["convert", "avsegformer", str(path), str(out), "--overrides", *overrides]) == 2
    with pytest.raises(CheckpointError, match=r"shape-mismatched: .*learnable_query"):
        from avseg.convert.avsegformer import convert

        convert(path, tmp_path / "other", overrides=[o for o in overrides if not o.startswith("queries.num")])
