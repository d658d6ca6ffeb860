"""Tests of the AuralSAM2 checkpoint converter (avseg.convert.auralsam2) on state dicts with the released names.

The released names and shapes below are written from a reading of the released ``AuralFuser`` (``aural_fuser.py``,
``architecture.yaml``) at ``yyliu01/AuralSAM2@64a16dd``, independently of avseg's modules.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from avseg.convert.auralsam2 import convert_checkpoint, convert_state_dict, released_overrides
from avseg.errors import CheckpointError
from avseg.models.auralsam2_fuser import AuralFuser, FuserConfig, ProjectorConfig


def released_shapes(
    *,
    dim: int = 256,
    depths: tuple[int, int, int] = (3, 6, 12),
    mlp: int = 4,
    sr: int = 4,
    text: int | None = 768,
    text_hidden: int = 1024,
    projector: str = "layer",
    proj_dim: int = 128,
    vgg: bool = True,
) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the released ``AuralFuser.state_dict()`` (Ref-AVS code with ``projector="layer"``, AVS
    code with ``projector="batch"``)."""
    inner, hidden = dim // 2, dim * mlp
    shapes: dict[str, tuple[int, ...]] = {}

    def lin(name, o, i, bias=True):
        shapes[f"{name}.weight"] = (o, i)
        if bias:
            shapes[f"{name}.bias"] = (o,)

    def conv(name, o, i, *k):
        shapes[f"{name}.weight"] = (o, i, *k)
        shapes[f"{name}.bias"] = (o,)

    def norm(name, c, batch=False):
        shapes[f"{name}.weight"] = shapes[f"{name}.bias"] = (c,)
        if batch:
            shapes[f"{name}.running_mean"] = shapes[f"{name}.running_var"] = (c,)
            shapes[f"{name}.num_batches_tracked"] = ()

    if vgg:
        for idx, (o, i) in zip(
            (0, 3, 6, 8, 11, 13), ((64, 1), (128, 64), (256, 128), (256, 256), (512, 256), (512, 512))
        ):
            conv(f"vgg.features.{idx}", o, i, 3, 3)
        for idx, (o, i) in zip((0, 2, 4), ((4096, 12288), (4096, 4096), (128, 4096))):
            lin(f"vgg.embeddings.{idx}", o, i)
    for i, k in enumerate((4, 2, 1)):
        conv(f"patch_embeds.{i}", dim, dim, k, k)
    for i, depth in enumerate(depths):
        for j in range(depth):
            p = f"f_blocks.{i}.{j}"
            norm(f"{p}.norm1", dim)
            lin(f"{p}.attn.q", dim, dim)
            lin(f"{p}.attn.kv", 2 * dim, dim)
            lin(f"{p}.attn.proj", dim, dim)
            conv(f"{p}.attn.sr", dim, dim, sr, sr)
            norm(f"{p}.attn.norm", dim)
            norm(f"{p}.norm2", dim)
            lin(f"{p}.mlp.fc1", hidden, dim)
            conv(f"{p}.mlp.dwconv.dwconv", hidden, 1, 3, 3)
            lin(f"{p}.mlp.fc2", dim, hidden)
    for i in range(3):
        for j in range(3):
            p = f"a_blocks.{i}.{j}"
            norm(f"{p}.norm1", dim)
            lin(f"{p}.attn.q", dim, dim)
            lin(f"{p}.attn.kv", 2 * dim, dim)
            lin(f"{p}.attn.proj", dim, dim)
            conv(f"{p}.attn.sr", dim, dim, sr, sr)  # built, never used
            norm(f"{p}.attn.norm", dim)  # built, never used
            norm(f"{p}.norm2", dim)
            lin(f"{p}.mlp.fc1", hidden, dim)
            conv(f"{p}.mlp.dwconv.dwconv", hidden, 1, 3, 3)  # built, never used
            lin(f"{p}.mlp.fc2", dim, hidden)
    for i in range(3):
        p = f"fusion_modules.{i}"
        conv(f"{p}.align_channel", dim, dim, 1)
        conv(f"{p}.align_channel_back", 128, dim, 1)  # built, never used
        norm(f"{p}.norm_layer", dim)
        conv(f"{p}.g", inner, dim, 1, 1, 1)  # built, never used
        conv(f"{p}.W_z.0", dim, inner, 1, 1, 1)
        norm(f"{p}.W_z.1", dim, batch=True)
        conv(f"{p}.W_z2.0", dim, inner, 1)
        norm(f"{p}.W_z2.1", dim, batch=True)
        norm(f"{p}.norm_layer2", dim)
        for name in ("q_frame", "k_frame", "v_frame"):
            conv(f"{p}.{name}", inner, dim, 1, 1, 1)
        for name in ("q_audio", "k_audio", "v_audio"):
            conv(f"{p}.{name}", inner, dim, 1)
    for i in range(2):
        conv(f"smooth_convs.{i}", dim, dim, 1, 1)
    if projector == "layer":
        for head in ("train_proj_v1", "train_proj_a1"):
            lin(f"{head}.proj.0", proj_dim, dim)
            norm(f"{head}.proj.2", proj_dim)
            lin(f"{head}.proj.3", proj_dim, proj_dim)
    else:
        conv("train_proj_v1.proj.0", proj_dim, dim, 1, 1)
        norm("train_proj_v1.proj.1", proj_dim, batch=True)
        conv("train_proj_v1.proj.2", proj_dim, proj_dim, 1, 1)
        conv("train_proj_a1.proj.0", proj_dim, dim, 1)
        norm("train_proj_a1.proj.1", proj_dim, batch=True)
        conv("train_proj_a1.proj.2", proj_dim, proj_dim, 1)
    if text is not None:
        lin("text_proj.0", text_hidden, text)
        lin("text_proj.2", dim, text_hidden)
    return shapes


def random_state(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        k: torch.randint(0, 5, s, generator=g) if k.endswith("num_batches_tracked") else torch.randn(s, generator=g)
        for k, s in shapes.items()
    }


TINY = dict(dim=16, depths=(1, 2, 1), mlp=2, sr=2, text=12, text_hidden=20, proj_dim=8, vgg=False)


def tiny_released_fuser(projector: str = "layer") -> AuralFuser:
    cfg = FuserConfig(
        dim=16,
        depths=(1, 2, 1),
        audio_depth=3,
        heads=2,
        mlp_ratio=2,
        sr_ratio=2,
        audio_dim=16,
        text_dim=12 if projector == "layer" else None,
        text_hidden=20,
        fusion_layout="released",
    )
    proj = ProjectorConfig(layers=2, dim=8, norm=projector, source="residual" if projector == "layer" else "fused")  # type: ignore[arg-type]
    return AuralFuser(cfg, proj)


def test_key_map_loads_strictly_and_places_every_tensor():
    official = random_state(released_shapes(**TINY))
    state, report = convert_state_dict(official)
    assert not report.unknown
    fuser = tiny_released_fuser()
    own = {k[len("fuser.") :]: v for k, v in state.items()}
    fuser.load_state_dict(own, strict=True)
    sd = fuser.state_dict()
    torch.testing.assert_close(
        sd["fusion.1.frame_q.weight"], official["fusion_modules.1.q_frame.weight"][:, :, 0, 0, 0]
    )
    torch.testing.assert_close(
        sd["fusion.2.audio_align.weight"], official["fusion_modules.2.align_channel.weight"][..., 0]
    )
    torch.testing.assert_close(sd["fusion.0.frame_out.1.running_var"], official["fusion_modules.0.W_z.1.running_var"])
    torch.testing.assert_close(sd["fusion.0.audio_norm.bias"], official["fusion_modules.0.norm_layer2.bias"])
    torch.testing.assert_close(
        sd["visual_blocks.1.1.mlp.dwconv.weight"], official["f_blocks.1.1.mlp.dwconv.dwconv.weight"]
    )
    torch.testing.assert_close(sd["visual_blocks.2.0.attn.sr.weight"], official["f_blocks.2.0.attn.sr.weight"])
    torch.testing.assert_close(sd["audio_blocks.2.1.mlp.fc2.bias"], official["a_blocks.2.1.mlp.fc2.bias"])
    torch.testing.assert_close(sd["patch_embeds.2.weight"], official["patch_embeds.2.weight"])  # a 1x1 conv stays
    torch.testing.assert_close(sd["visual_projector.layers.3.weight"], official["train_proj_v1.proj.3.weight"])
    torch.testing.assert_close(sd["text_proj.2.weight"], official["text_proj.2.weight"])
    unused = sum(len(v) for r, v in report.dropped.items() if "never called" in r)
    assert unused == 3 * (2 + 2) + 9 * (2 + 2 + 2)  # g, align_channel_back; a_blocks sr, norm, dwconv
    assert report.converted == len(fuser.state_dict())


def test_avs_projector_and_overrides():
    shapes = released_shapes(**{**TINY, "text": None}, projector="batch")
    state, _ = convert_state_dict(random_state(shapes))
    assert released_overrides(state) == {
        "fuser.fusion_layout": "released",
        "fuser.fusion_affinity": "dot",
        "prompts.shift_query_pe": True,
        "projector.layers": 2,
        "projector.dim": 8,
        "projector.norm": "batch",
        "projector.source": "fused",
    }
    fuser = tiny_released_fuser("batch")
    fuser.load_state_dict({k[len("fuser.") :]: v for k, v in state.items()}, strict=True)
    ref_state, _ = convert_state_dict(random_state(released_shapes(**TINY)))
    ref = released_overrides(ref_state)
    assert ref["projector.norm"] == "layer"
    # With a text projection: every expression padded and cut to 25 tokens, as the released _encode_text does.
    assert ref["text.encoder.padding"] == "max_tokens" and ref["text.encoder.max_tokens"] == 25


def test_prefixes_vggish_and_the_authors_legacy_layouts():
    w = torch.randn(8, 16, 1, 1, 1)
    state, report = convert_state_dict(
        {
            "module.aural_fuser.fusion_modules.0.q_frame.weight": w,
            "aural_fuser.training_layers.8.k_audio.bias": torch.randn(8),  # legacy: index 8 = fusion_modules.1
            "audio_prompter.train_f_block3.0.norm1.weight": torch.randn(16),  # legacy flat name = f_blocks.2
            "v_model.sam_mask_decoder.iou_token.weight": torch.randn(1, 16),
            "vgg.embeddings.4.bias": torch.randn(128),
            "aural_fuser.finetuning_layers.0.features.0.bias": torch.randn(64),  # legacy VGGish
        }
    )
    torch.testing.assert_close(state["fuser.fusion.0.frame_q.weight"], w[:, :, 0, 0, 0])
    assert "fuser.fusion.1.audio_k.bias" in state and "fuser.visual_blocks.2.0.norm1.weight" in state
    assert len(state) == 3 and sum(len(v) for v in report.dropped.values()) == 3
    kept, _ = convert_state_dict({"vgg.embeddings.4.bias": torch.randn(128)}, keep_vggish=True)
    assert list(kept) == ["audio_encoder.vggish.module.embeddings.4.bias"]


def test_unknown_keys_and_bad_shapes_are_reported(tmp_path):
    src = tmp_path / "odd.pth"
    torch.save({"fusion_modules.0.mystery.weight": torch.zeros(2), "patch_embeds.0.weight": torch.zeros(1)}, src)
    with pytest.raises(CheckpointError, match=r"fusion_modules\.0\.mystery\.weight"):
        convert_checkpoint(src, tmp_path / "out")
    torch.save(random_state(released_shapes(**TINY)), src)  # tiny shapes do not fit the paper preset
    with pytest.raises(CheckpointError, match="shape-mismatched: fuser"):
        convert_checkpoint(src, tmp_path / "out", preset="auralsam2-l-refavs")


@pytest.mark.slow
def test_cli_converts_a_full_size_refavs_checkpoint(tmp_path, capsys):
    from avseg.cli import main

    shapes = released_shapes()  # the released Ref-AVS fuser: 256 channels, depths 3/6/12, VGGish included
    official = {
        k: torch.zeros(s, dtype=torch.long) if k.endswith("num_batches_tracked") else torch.empty(s).normal_()
        for k, s in shapes.items()
    }
    src = tmp_path / "auralsam2_refavs_best.pth"
    torch.save(official, src)
    assert main(["convert", "auralsam2", str(src), str(tmp_path / "ck")]) == 0
    assert "tensors converted" in capsys.readouterr().out
    meta = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert meta["family"] == "auralsam2" and meta["preset"] == "auralsam2-l-refavs"
    cfg = meta["config"]
    assert cfg["fuser"]["fusion_layout"] == "released" and cfg["projector"]["layers"] == 2
    assert cfg["fuser"]["fusion_affinity"] == "dot" and cfg["text"]["encoder"]["padding"] == "max_tokens"
    assert cfg["projector"]["dim"] == 128 and cfg["sam2"]["variant"] == "sam2-hiera-large"
    weights = load_file(str(tmp_path / "ck" / "model.safetensors"))
    assert all(k.startswith("fuser.") for k in weights)  # fuser-only: SAM2, VGGish and the text encoder are sources
    from avseg.config import config_from_dict
    from avseg.models.auralsam2 import AuralSAM2Config

    model_cfg = config_from_dict(AuralSAM2Config, cfg)
    with torch.device("meta"):
        fuser = AuralFuser(model_cfg.fuser, model_cfg.projector)
    fuser.load_state_dict({k[len("fuser.") :]: v for k, v in weights.items()}, strict=True, assign=True)
    trainable = sum(p.numel() for p in fuser.parameters())
    vgg = sum(torch.Size(s).numel() for k, s in shapes.items() if k.startswith("vgg."))
    unused = sum(
        torch.Size(s).numel()
        for k, s in shapes.items()
        if ".g." in k
        or "align_channel_back" in k
        or (k.startswith("a_blocks") and (".sr." in k or "attn.norm" in k or "dwconv" in k))
    )
    buffers = sum(torch.Size(s).numel() for k, s in shapes.items() if "running_" in k or "num_batches" in k)
    assert trainable == sum(torch.Size(s).numel() for s in shapes.values()) - vgg - unused - buffers


def test_converted_config_keeps_the_preset_and_optionally_the_vggish_copy():
    from avseg.convert.auralsam2 import converted_config

    state, _ = convert_state_dict(random_state(released_shapes(**TINY)))
    cfg = converted_config(state, "auralsam2-b+-refavs")
    assert cfg.sam2.variant == "sam2-hiera-base-plus" and cfg.fuser.fusion_layout == "released"
    assert cfg.prompts.shift_query_pe and cfg.audio.vggish_weights == "vggish-10086976.pth"
    assert (cfg.text.encoder.padding, cfg.text.encoder.max_tokens) == ("max_tokens", 25)
    kept = converted_config(state, "auralsam2-b+-refavs", keep_vggish=True)
    assert kept.audio.vggish_weights is None  # the checkpoint's own VGGish tensors are then loaded
    # A paper variant supplies SAM2 and the text encoder; the released structure replaces its paper forms.
    paper = converted_config(state, "auralsam2-l-refavs-paper")
    assert paper.fuser.fusion_affinity == "dot" and paper.text.encoder.padding == "max_tokens"
    # A preset without text takes no text settings; the text projection is then reported as not fitting it.
    avs = converted_config(state, "auralsam2-l-avs")
    assert avs.text.encoder is None and avs.fuser.fusion_layout == "released"
