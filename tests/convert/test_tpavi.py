"""The TPAVI checkpoint converter (avseg.convert.tpavi) on state dicts with the names and shapes of the AVSBench code.

``official_state`` writes the key list of ``Pred_endecoder.state_dict()`` from a reading of the official code
(``avs_scripts/{avs_s4,avs_ms3,avss}/model/{ResNet,PVT}_AVSModel.py``, ``TPAVI.py``, ``resnet.py``, ``pvt.py`` at
``f7414af``) and ``vggish_state`` that of ``vggish-10086976.pth`` (``torchvggish/vggish.py``), independently of the
converter's rules. At paper scale they are built on the meta device (names and shapes only). ``official_forward``
re-implements ``Pred_endecoder.forward`` (ResNet branch, TPAVI in "dot" mode, fusion blocks, output head) from that
code, to check that the converted weights compute what the official model computes.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from avseg.checkpoint import read_checkpoint_config
from avseg.cli import main
from avseg.config import apply_overrides
from avseg.convert.tpavi import convert, convert_state_dict, infer_released_config
from avseg.data.types import random_batch
from avseg.errors import CheckpointError, UsageError
from avseg.models import load_model
from avseg.models.tpavi import TPAVI
from tests.convert.test_avsegformer import PVT_B5, Maker, add_conv, add_linear, add_norm, meta, pvt_backbone
from tests.convert.test_avsegformer import resnet_backbone as avsegformer_resnet_backbone

DILATIONS = (3, 6, 12, 18)


def resnet_backbone(s: dict, make: Maker, stem: int, planes: list[int], blocks: list[int]) -> None:
    """``B2_ResNet`` under ``resnet.`` (layer1, layer2, layer{3,4}_{1,2}; the same module as AVSegFormer's copy)."""
    part: dict[str, torch.Tensor] = {}
    avsegformer_resnet_backbone(part, make, stem, planes, blocks)
    s.update({"resnet." + k.removeprefix("backbone."): v for k, v in part.items()})


def pvt_b5(s: dict, make: Maker, dims: list[int], depths: list[int], sr: list[int]) -> None:
    """``pvt_v2_b5`` under ``encoder_backbone.`` (the PVT authors' names; no classifier head)."""
    part: dict[str, torch.Tensor] = {}
    pvt_backbone(part, make, dims, depths, sr)
    s.update({"encoder_backbone." + k.removeprefix("backbone."): v for k, v in part.items()})


def official_state(
    backbone: str,
    make: Maker,
    *,
    classes: int = 1,
    stages: tuple[int, ...] = (0, 1, 2, 3),
    align_bias: bool = True,
    c: int = 256,
    head: tuple[int, int] = (128, 32),
    channels: list[int] | None = None,
    backbone_fn=None,
) -> dict[str, torch.Tensor]:
    """``Pred_endecoder(channel=c, tpavi_stages=stages).state_dict()``; AVSS: ``classes=71, align_bias=False``."""
    s: dict[str, torch.Tensor] = {}
    if backbone_fn is not None:
        backbone_fn(s)
    elif backbone == "pvt":
        pvt_b5(s, make, PVT_B5["dims"], PVT_B5["depths"], PVT_B5["sr"])
    else:
        resnet_backbone(s, make, 64, [64, 128, 256, 512], [3, 4, 6, 3])
    channels = channels or (PVT_B5["dims"] if backbone == "pvt" else [256, 512, 1024, 2048])
    for n, cin in enumerate(channels, start=1):  # Classifier_Module(dilations 3, 6, 12, 18, NoLabels=c)
        for k in range(len(DILATIONS)):
            add_conv(s, f"conv{n}.conv2d_list.{k}", cin, c, 3, make)
    for n in (1, 2, 3, 4):  # FeatureFusionBlock: two ResidualConvUnits each, path4's first one included
        for u in (1, 2):
            for v in (1, 2):
                add_conv(s, f"path{n}.resConfUnit{u}.conv{v}", c, c, 3, make)
    inter = c // 2
    for i in stages:  # TPAVIModule(in_channels=c, mode="dot"): Conv3d 1x1x1 g, theta, phi; W_z = Conv3d + BN3d
        b = f"tpavi_b{i + 1}"
        add_linear(s, f"{b}.align_channel", 128, c, make, bias=align_bias)
        add_norm(s, f"{b}.norm_layer", c, make)
        for name in ("g", "theta", "phi"):
            s[f"{b}.{name}.weight"], s[f"{b}.{name}.bias"] = make(inter, c, 1, 1, 1), make(inter)
        s[f"{b}.W_z.0.weight"], s[f"{b}.W_z.0.bias"] = make(c, inter, 1, 1, 1), make(c)
        add_norm(s, f"{b}.W_z.1", c, make, bn=True)
    add_conv(s, "output_conv.0", c, head[0], 3, make)
    add_conv(s, "output_conv.2", head[0], head[1], 3, make)
    add_conv(s, "output_conv.4", head[1], classes, 1, make)
    return s


def vggish_state(make: Maker) -> dict[str, torch.Tensor]:
    """``vggish-10086976.pth``: ``features`` convs at 0, 3, 6, 8, 11, 13 and ``embeddings`` linears at 0, 2, 4."""
    s: dict[str, torch.Tensor] = {}
    for idx, (a, b) in zip((0, 3, 6, 8, 11, 13), [(1, 64), (64, 128), (128, 256), (256, 256), (256, 512), (512, 512)]):
        add_conv(s, f"features.{idx}", a, b, 3, make)
    for idx, (a, b) in zip((0, 2, 4), [(512 * 24, 4096), (4096, 4096), (4096, 128)]):
        add_linear(s, f"embeddings.{idx}", a, b, make)
    return s


def zero_storage(*shape: int) -> torch.Tensor:
    """A tensor of zeros that stores one element (VGGish at its real size costs nothing to build or torch.save)."""
    return torch.zeros(()).expand(*shape)


def expected_state(state: dict[str, torch.Tensor], preset: str | None = None) -> dict[str, torch.Tensor]:
    _, cfg = infer_released_config(state, preset)
    with torch.device("meta"):
        return TPAVI(cfg).state_dict()


@pytest.mark.parametrize(("backbone", "classes"), [("pvt", 1), ("pvt", 71), ("r50", 1), ("r50", 71)])
def test_paper_scale_released_names_map_onto_every_avseg_weight(backbone: str, classes: int) -> None:
    avss = classes > 1
    state = official_state(backbone, meta, classes=classes, align_bias=not avss)  # AVSS: align_channel without bias
    converted, dropped = convert_state_dict(state, vggish=vggish_state(meta))
    preset, cfg = infer_released_config(state)
    assert preset == f"tpavi-{backbone}-{'avss' if avss else 's4'}"
    assert cfg.pretrained is False and cfg.audio.vggish_weights is None and cfg.tpavi.align_bias is not avss
    target = expected_state(state)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in target.items()}
    unused_unit = {k for k in state if k.startswith("path4.resConfUnit1.")}
    assert len(unused_unit) == 4
    if backbone == "r50":  # layer3_2 (6 blocks) and layer4_2 (3 blocks): 3 convs + 3 batch norms (5 keys) per block,
        # plus the downsample conv + batch norm of each first block
        second_branch = {k for k in state if "_2." in k}
        assert len(second_branch) == (6 + 3) * 18 + 2 * 6
        assert set(dropped) == second_branch | unused_unit
    else:
        assert set(dropped) == unused_unit
    # Values travel unchanged (the PVT kv split aside): spot checks by identity of the tensors.
    assert converted["tpavi.3.W_z.1.running_var"] is state["tpavi_b4.W_z.1.running_var"]
    assert converted["aspp.0.conv2d_list.3.weight"] is state["conv1.conv2d_list.3.weight"]
    assert converted["decoder.output_conv.4.weight"] is state["output_conv.4.weight"]


def test_structure_is_read_from_the_keys() -> None:
    # A DataParallel file, TPAVI on stages 1-3 only (--tpavi_stages 1 2 3), converted as MS3.
    state = {f"module.{k}": v for k, v in official_state("r50", meta, stages=(1, 2, 3)).items()}
    preset, cfg = infer_released_config(state, "tpavi-r50-ms3")
    assert preset == "tpavi-r50-ms3" and cfg.tpavi.stages == (1, 2, 3) and cfg.loss.av_kl_stages == (1, 2, 3)
    converted, _ = convert_state_dict(state, vggish=vggish_state(meta))
    assert set(converted) == set(expected_state(state, "tpavi-r50-ms3"))
    assert not any(k.startswith("tpavi.0.") for k in converted)
    # Without audio attention (--tpavi_vv_flag alone) the audio projections are dropped and no VGGish is needed.
    _, cfg = infer_released_config(state)  # S4: the masked audio-visual loss of MS3 needs audio attention
    vv = dataclasses.replace(cfg, tpavi=dataclasses.replace(cfg.tpavi, audio_attention=False, visual_attention=True))
    converted, dropped = convert_state_dict(state, audio_attention=False)
    with torch.device("meta"):
        assert set(converted) == set(TPAVI(vv).state_dict())
    assert sum("align_channel" in k for k in dropped) == 3 * 2


def test_unknown_keys_and_foreign_state_dicts_are_refused() -> None:
    state = official_state("pvt", meta)
    with pytest.raises(ValueError, match=r"tpavi_b1\.something\.weight"):
        convert_state_dict({**state, "tpavi_b1.something.weight": meta(3)})
    with pytest.raises(ValueError, match=r"VGGish pproc\.pca_means"):
        convert_state_dict(state, vggish={**vggish_state(meta), "pproc.pca_means": meta(128)})
    with pytest.raises(ValueError, match="not an AVSBench TPAVI model"):
        convert_state_dict({"backbone.patch_embed1.proj.weight": meta(3)})
    with pytest.raises(ValueError, match="text branch, conditional kernel, position encoding"):
        infer_released_config(state, preset="tpavi-pvt-refavs")
    with pytest.raises(ValueError, match="resnet backbone"):
        infer_released_config(state, preset="tpavi-r50-s4")
    with pytest.raises(ValueError, match="predicts 1 mask channel"):
        infer_released_config(official_state("pvt", meta, classes=71), preset="tpavi-pvt-s4")


# -- the converted weights compute the official forward ----------------------------------------------------------------

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # the AVSBench loaders' Normalize


def batch_norm(s: dict, p: str, x: torch.Tensor) -> torch.Tensor:
    return F.batch_norm(x, s[f"{p}.running_mean"], s[f"{p}.running_var"], s[f"{p}.weight"], s[f"{p}.bias"])


def official_resnet(s: dict, x: torch.Tensor) -> list[torch.Tensor]:
    """``conv1, bn1, relu, maxpool, layer1, layer2, layer3_1, layer4_1`` of ``B2_ResNet`` (torchvision bottlenecks,
    stride in the 3×3 convolution), as ``Pred_endecoder.forward`` calls them."""
    x = F.relu(batch_norm(s, "resnet.bn1", F.conv2d(x, s["resnet.conv1.weight"], stride=2, padding=3)))
    x = F.max_pool2d(x, 3, stride=2, padding=1)
    maps = []
    for layer, stride in (("layer1", 1), ("layer2", 2), ("layer3_1", 2), ("layer4_1", 2)):
        j = 0
        while f"resnet.{layer}.{j}.conv1.weight" in s:
            p, st = f"resnet.{layer}.{j}", stride if j == 0 else 1
            out = F.relu(batch_norm(s, f"{p}.bn1", F.conv2d(x, s[f"{p}.conv1.weight"])))
            out = F.relu(batch_norm(s, f"{p}.bn2", F.conv2d(out, s[f"{p}.conv2.weight"], stride=st, padding=1)))
            out = batch_norm(s, f"{p}.bn3", F.conv2d(out, s[f"{p}.conv3.weight"]))
            if f"{p}.downsample.0.weight" in s:
                x = batch_norm(s, f"{p}.downsample.1", F.conv2d(x, s[f"{p}.downsample.0.weight"], stride=st))
            x = F.relu(out + x)
            j += 1
        maps.append(x)
    return maps


def official_tpavi(s: dict, b: str, x: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
    """``TPAVIModule.forward(x (n, C, T, H, W), audio (n, T, 128))`` in "dot" mode, with the full affinity matrix."""
    n, c, t, h, w = x.shape
    a = F.linear(audio, s[f"{b}.align_channel.weight"], s.get(f"{b}.align_channel.bias"))  # (n, T, C)
    a = a.permute(0, 2, 1)[..., None, None].repeat(1, 1, 1, h, w)  # (n, C, T, H, W)
    g = F.conv3d(x, s[f"{b}.g.weight"], s[f"{b}.g.bias"]).flatten(2).permute(0, 2, 1)  # (n, THW, C')
    theta = F.conv3d(x, s[f"{b}.theta.weight"], s[f"{b}.theta.bias"]).flatten(2).permute(0, 2, 1)  # (n, THW, C')
    phi = F.conv3d(a, s[f"{b}.phi.weight"], s[f"{b}.phi.bias"]).flatten(2)  # (n, C', THW)
    f = theta @ phi  # (n, THW, THW)
    y = (f / f.shape[-1]) @ g  # (n, THW, C')
    y = y.permute(0, 2, 1).reshape(n, -1, t, h, w)
    wy = batch_norm(s, f"{b}.W_z.1", F.conv3d(y, s[f"{b}.W_z.0.weight"], s[f"{b}.W_z.0.bias"]))
    z = F.layer_norm((wy + x).permute(0, 2, 3, 4, 1), (c,), s[f"{b}.norm_layer.weight"], s[f"{b}.norm_layer.bias"])
    return z.permute(0, 4, 1, 2, 3)


def official_fusion(s: dict, p: str, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
    """``FeatureFusionBlock.forward(x[, skip])``: ×2 bilinear upsampling with aligned corners."""

    def unit(u: str, v: torch.Tensor) -> torch.Tensor:
        v = F.relu(v)  # ResidualConvUnit's in-place ReLU also rectifies its input, which is then the skip
        out = F.relu(F.conv2d(v, s[f"{u}.conv1.weight"], s[f"{u}.conv1.bias"], padding=1))
        return F.conv2d(out, s[f"{u}.conv2.weight"], s[f"{u}.conv2.bias"], padding=1) + v

    if skip is not None:
        x = x + unit(f"{p}.resConfUnit1", skip)
    x = unit(f"{p}.resConfUnit2", x)
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


def official_forward(s: dict, images: torch.Tensor, audio: torch.Tensor, stages: tuple[int, ...]) -> torch.Tensor:
    """``Pred_endecoder.forward(images (B*T, 3, H, W), audio (B*T, 128))`` → ``(B*T, K, H, W)``; all frames real
    (the AVSS model's frame flags are then all 1)."""
    maps = []
    for n, m in enumerate(official_resnet(s, images), start=1):  # Classifier_Module
        p = f"conv{n}.conv2d_list"
        maps.append(
            sum(
                F.conv2d(m, s[f"{p}.{k}.weight"], s[f"{p}.{k}.bias"], padding=d, dilation=d)
                for k, d in enumerate(DILATIONS)
            )
        )
    for i in stages:
        bt, c, h, w = maps[i].shape
        x = maps[i].reshape(-1, 5, c, h, w).permute(0, 2, 1, 3, 4)  # pre_reshape_for_tpavi: clips of 5 frames
        z = official_tpavi(s, f"tpavi_b{i + 1}", x, audio.view(-1, 5, audio.shape[-1]))
        maps[i] = z.permute(0, 2, 1, 3, 4).reshape(bt, c, h, w)
    x = official_fusion(s, "path4", maps[3])
    x = official_fusion(s, "path3", x, maps[2])
    x = official_fusion(s, "path2", x, maps[1])
    x = official_fusion(s, "path1", x, maps[0])
    x = F.conv2d(x, s["output_conv.0.weight"], s["output_conv.0.bias"], padding=1)
    x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    x = F.relu(F.conv2d(x, s["output_conv.2.weight"], s["output_conv.2.bias"], padding=1))
    return F.conv2d(x, s["output_conv.4.weight"], s["output_conv.4.bias"])


SMALL_STEM, SMALL_PLANES, SMALL_BLOCKS = 8, [4, 8, 16, 32], [1, 2, 1, 1]
SMALL_OVERRIDES = {
    "input_size": 64,
    "decoder.channels": 16,
    "decoder.head_channels": [8, 4],
    "backbone.hf_config": {
        "embedding_size": 8,
        "hidden_sizes": [16, 32, 64, 128],
        "depths": [1, 2, 1, 1],
        "layer_type": "bottleneck",
        "downsample_in_first_stage": False,
    },
}


def small_state(make: Maker, *, classes: int, align_bias: bool) -> dict[str, torch.Tensor]:
    return official_state(
        "r50",
        make,
        classes=classes,
        align_bias=align_bias,
        c=16,
        head=(8, 4),
        channels=[4 * p for p in SMALL_PLANES],
        backbone_fn=lambda s: resnet_backbone(s, make, SMALL_STEM, SMALL_PLANES, SMALL_BLOCKS),
    )


@pytest.mark.parametrize(("preset", "b", "t"), [("tpavi-r50-s4", 2, 5), ("tpavi-r50-avss", 1, 10)])
def test_converted_weights_compute_the_official_forward(preset: str, b: int, t: int, monkeypatch) -> None:
    """S4 (two clips of 5 frames) and AVSS (71 classes, no audio bias, a 10-frame clip cut into two 5-frame clips)."""
    import avseg.layers.audio
    from avseg.audio.vggish import VGGish

    def meta_vggish(weights: object = None) -> VGGish:  # its 72 M random weights would be replaced anyway
        with torch.device("meta"):
            return VGGish()

    monkeypatch.setattr(avseg.layers.audio, "load_vggish", meta_vggish)
    torch.manual_seed(0)
    avss = preset.endswith("avss")
    state = small_state(lambda *shape: torch.randn(*shape) * 0.2, classes=71 if avss else 1, align_bias=not avss)
    for k in [k for k in state if k.endswith("running_var")]:
        state[k] = state[k].abs() + 0.5
    converted, _ = convert_state_dict(state, vggish=vggish_state(zero_storage))
    _, cfg = infer_released_config(state, preset)
    model = TPAVI(apply_overrides(cfg, SMALL_OVERRIDES)).eval()
    model.load_state_dict(converted, strict=True, assign=True)
    batch = dataclasses.replace(random_batch(b=b, t=t, size=64), audio_embeddings=torch.randn(b, t, 128))
    with torch.no_grad():
        got = model(batch).aux["logits"]  # (B*T, K, 64, 64)
        x = batch.frames.flatten(0, 1).float() / 255
        x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        ref = official_forward(state, x, batch.audio_embeddings.flatten(0, 1), (0, 1, 2, 3))
    assert ref.shape == got.shape == (b * t, 71 if avss else 1, 64, 64)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


# -- the command, end to end -----------------------------------------------------------------------------------------


def test_a_missing_vggish_file_is_reported_before_anything_is_built(tmp_path) -> None:
    path = tmp_path / "S4_res50_best.pth"
    torch.save(small_state(lambda *shape: torch.zeros(shape), classes=1, align_bias=True), path)
    with pytest.raises(UsageError, match="--vggish"):
        convert(path, tmp_path / "out")
    assert main(["convert", "tpavi", str(path), str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_convert_command_writes_a_checkpoint_that_load_model_rebuilds(tmp_path, capsys) -> None:
    """A small PVT model saved through DataParallel (``module.`` prefix); VGGish at its real size, zero-storage."""
    torch.manual_seed(0)

    def small(*shape: int) -> torch.Tensor:
        return torch.randn(*shape) * 0.1

    dims, depths, sr = [8, 16, 24, 32], [1, 1, 1, 1], [8, 4, 2, 1]
    state = official_state(
        "pvt", small, c=16, head=(8, 4), channels=dims, backbone_fn=lambda s: pvt_b5(s, small, dims, depths, sr)
    )
    path, vggish = tmp_path / "S4_pvt_best.pth", tmp_path / "vggish-10086976.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)
    torch.save(vggish_state(zero_storage), vggish)
    overrides = [
        "input_size=64",
        "decoder.channels=16",
        "decoder.head_channels=[8, 4]",
        "backbone.hf_config={depths: [1, 1, 1, 1], hidden_sizes: [8, 16, 24, 32], num_attention_heads: [1, 2, 3, 4], "
        "mlp_ratios: [4, 4, 4, 4], sr_ratios: [8, 4, 2, 1], patch_sizes: [7, 3, 3, 3], strides: [4, 2, 2, 2], "
        "qkv_bias: true}",
    ]
    out = tmp_path / "converted"
    argv = ["convert", "tpavi", str(path), str(out), "--vggish", str(vggish), "--overrides", *overrides]
    assert main([*argv, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)  # --json: the summary is the only thing on stdout
    info = read_checkpoint_config(out)
    assert info["preset"] == "tpavi-pvt-s4" and info["family"] == "tpavi"
    assert info["meta"]["dropped"] == {"resConfUnit1 of the top fusion block (built, never called)": 4}
    assert info["config"]["pretrained"] is False and info["config"]["audio"]["vggish_weights"] is None
    model = load_model(out).eval()
    weights = model.state_dict()
    assert summary == {
        "source": str(path),
        "destination": str(out),
        "preset": "tpavi-pvt-s4",
        "tensors": len(weights),
        "parameters": sum(t.numel() for t in weights.values() if t.is_floating_point()),
        "dropped": {"resConfUnit1 of the top fusion block (built, never called)": 4},
        "tpavi_stages": list(model.config.tpavi.stages),
    }
    torch.testing.assert_close(model.tpavi["2"].theta.weight, state["tpavi_b3.theta.weight"])
    kv = state["encoder_backbone.block2.0.attn.kv.weight"]
    torch.testing.assert_close(model.backbone.model.encoder.layers[1].blocks[0].attention.value.weight, kv[16:])
    with torch.no_grad():
        logits = model(random_batch(b=1, t=5, masks="empty")).mask_logits
    assert logits.shape == (1, 5, 1, 64, 64) and torch.isfinite(logits).all()
    # A second run refuses to overwrite; a mismatching architecture is reported with the offending shapes and
    # nothing is written.
    assert main(argv) == 2
    with pytest.raises(CheckpointError, match=r"shape-mismatched: .*aspp\.0\.conv2d_list\.0\.weight"):
        convert(path, tmp_path / "other", vggish=vggish, overrides=[o for o in overrides if "channels" not in o])
    assert not (tmp_path / "other").exists()
