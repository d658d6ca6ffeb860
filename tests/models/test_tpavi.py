"""Tests of TPAVI (avseg.models.tpavi) and the shared layers it uses (backbones, frozen wrapper, text encoder)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from avseg.checkpoint import save_checkpoint
from avseg.data.types import random_batch
from avseg.models import create_model, get_entry, list_models, load_model
from avseg.models.tpavi import TPAVI, TPAVIBlock, masked_av_kl_loss

PAPER_PRESETS = [
    "tpavi-r50-s4",
    "tpavi-pvt-s4",
    "tpavi-r50-ms3",
    "tpavi-pvt-ms3",
    "tpavi-r50-avss",
    "tpavi-pvt-avss",
    "tpavi-r50-refavs",
    "tpavi-pvt-refavs",
]


@pytest.fixture(scope="module")
def tiny() -> TPAVI:
    torch.manual_seed(0)
    return create_model("tpavi-tiny")


# -- independent parameter counts ------------------------------------------------------------------------------------


def conv(cin: int, cout: int, k: int, bias: bool = True) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def linear(cin: int, cout: int, bias: bool = True) -> int:
    return cin * cout + (cout if bias else 0)


def resnet50_count() -> int:
    # torchvision's ResNet-50 has 25,557,032 parameters, of which the 2048→1000 classifier holds 2,049,000.
    return 25_557_032 - linear(2048, 1000)


def pvt_v2_b5_count() -> int:
    dims, depths, srs, heads_ratio = [64, 128, 320, 512], [3, 6, 40, 3], [8, 4, 2, 1], 4
    total, cin = 0, 3
    for i, (c, d, sr) in enumerate(zip(dims, depths, srs)):
        k = 7 if i == 0 else 3
        total += conv(cin, c, k) + 2 * c  # overlapping patch embedding + its LayerNorm
        hidden = heads_ratio * c
        block = 2 * c  # norm1
        block += linear(c, c) + linear(c, 2 * c) + linear(c, c)  # q, kv, proj
        if sr > 1:
            block += conv(c, c, sr) + 2 * c  # spatial-reduction conv + LayerNorm
        block += 2 * c  # norm2
        block += linear(c, hidden) + (hidden * 9 + hidden) + linear(hidden, c)  # fc1, depthwise 3x3, fc2
        total += d * block + 2 * c  # blocks + stage LayerNorm
        cin = c
    return total


def vggish_count() -> int:
    convs = [(1, 64), (64, 128), (128, 256), (256, 256), (256, 512), (512, 512)]
    return sum(conv(a, b, 3) for a, b in convs) + linear(512 * 6 * 4, 4096) + linear(4096, 4096) + linear(4096, 128)


def distilroberta_count() -> int:
    d, ffn = 768, 3072
    emb = 50265 * d + 514 * d + 1 * d + 2 * d
    layer = 4 * linear(d, d) + 2 * d + linear(d, ffn) + linear(ffn, d) + 2 * d
    return emb + 6 * layer + linear(d, d)  # + pooler


def tpavi_head_count(backbone_channels: list[int], classes: int, *, text: bool, align_bias: bool) -> int:
    c, ci = 256, 128
    aspp = sum(4 * conv(cin, c, 3) for cin in backbone_channels)
    fusion = (4 * 2 - 1) * 2 * conv(c, c, 3)  # 4 blocks of 2 units of 2 convs; the top block has no skip unit
    head = conv(c, 128, 3) + conv(128, 32, 3) + conv(32, classes, 1)
    block = linear(128, c, align_bias) + 3 * linear(c, ci) + linear(ci, c) + 2 * c + 2 * c  # W_z BN, LayerNorm
    total = aspp + fusion + head + 4 * block
    if text:
        total += 4 * linear(256, 4 * c)  # FiLM per block
        total += 4 * linear(3 * 5, c)  # position encodings
        total += linear(768, 256) + linear(256, 256) + 2 * 256  # sentence MLP + LayerNorm
        d = 256  # conditional kernel: audio projection, bidirectional GRU, MLP to a (C + 1)-kernel
        gru = 2 * 3 * (d * d + d * d + 2 * d)
        total += linear(128, d) + gru + linear(256 + d + 4 * d, d) + linear(d, classes * (c + 1))
    return total


@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_paper_presets_build_offline_with_independently_counted_parameters(name: str) -> None:
    with torch.device("meta"):
        model = create_model(name, pretrained=False)
    cfg = model.config
    assert cfg.input_size == 224 and cfg.tpavi.stages == (0, 1, 2, 3) and cfg.recipe.optim.lr == 1e-4
    resnet = cfg.backbone.kind == "resnet"
    channels = [256, 512, 1024, 2048] if resnet else [64, 128, 320, 512]
    refavs = name.endswith("refavs")
    classes = 71 if name.endswith("avss") else 1
    expected = (resnet50_count() if resnet else pvt_v2_b5_count()) + vggish_count()
    expected += tpavi_head_count(channels, classes, text=refavs, align_bias=not name.endswith("avss"))
    if refavs:
        expected += distilroberta_count()
    assert model.num_parameters() == expected
    # VGGish and the text encoder are frozen; everything else trains.
    frozen = vggish_count() + (distilroberta_count() if refavs else 0)
    assert model.num_parameters(trainable_only=True) == expected - frozen
    assert model.decoder.output_conv[-1].out_channels == classes


def test_paper_preset_recipes_follow_the_official_scripts() -> None:
    s4, ms3, avss = (get_entry(n).config() for n in ("tpavi-r50-s4", "tpavi-pvt-ms3", "tpavi-pvt-avss"))
    assert (s4.recipe.epochs, ms3.recipe.epochs, avss.recipe.epochs) == (15, 30, 60)
    assert s4.loss.av_kl_weight == 0.0 and ms3.loss.av_kl_weight == avss.loss.av_kl_weight == 0.5
    assert avss.num_classes == 71 and not avss.tpavi.align_bias and ms3.tpavi.align_bias
    assert all(
        c.recipe.optim.name == "adam" and c.recipe.optim.weight_decay == 0 and c.recipe.batch_size == 4
        for c in (s4, ms3, avss)
    )
    assert s4.backbone.weights == "microsoft/resnet-50" and ms3.backbone.weights == "OpenGVLab/pvt_v2_b5"


def test_registry_lists_every_preset() -> None:
    assert set(list_models("tpavi-*")) == {*PAPER_PRESETS, "tpavi-tiny"}


def test_invalid_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        create_model("tpavi-tiny", input_size=100)
    with pytest.raises(ValueError, match="av_kl_stages"):
        get_entry("tpavi-tiny").config(**{"loss.av_kl_weight": 0.5, "tpavi.stages": [0, 1]})
    with pytest.raises(ValueError, match="dice"):
        get_entry("tpavi-tiny").config(num_classes=71)


# -- the TPAVI block -------------------------------------------------------------------------------------------------


def dense_tpavi(block: TPAVIBlock, x: torch.Tensor, audio: torch.Tensor | None) -> torch.Tensor:
    """The official computation: broadcast audio keys, the full (THW)x(THW) affinity per head, division by N."""
    b, c, t, h, w = x.shape
    if audio is not None:
        keys = block.align_channel(audio).permute(0, 2, 1)[..., None, None].repeat(1, 1, 1, h, w)  # (B, C, T, H, W)
    else:
        keys = x
    heads, d = block.heads, block.inter_channels // block.heads
    g = block.g(x).view(b, heads, d, -1).transpose(-1, -2)  # (B, heads, THW, d)
    theta = block.theta(x).view(b, heads, d, -1).transpose(-1, -2)  # (B, heads, THW, d)
    phi = block.phi(keys).view(b, heads, d, -1)  # (B, heads, d, THW)
    f = theta @ phi / phi.shape[-1]  # (B, heads, THW, THW)
    y = (f @ g).transpose(-1, -2).reshape(b, block.inter_channels, t, h, w)
    z = x + block.W_z(y)
    return F.layer_norm(z.permute(0, 2, 3, 4, 1), (c,), block.norm_layer.weight, block.norm_layer.bias).permute(
        0, 4, 1, 2, 3
    )


def randomise(block: TPAVIBlock) -> TPAVIBlock:
    torch.manual_seed(1)
    for p in block.parameters():
        torch.nn.init.normal_(p, 0.0, 0.3)
    return block.eval()


@pytest.mark.parametrize(("visual", "heads"), [(False, 1), (True, 1), (False, 2)])
def test_tpavi_block_matches_the_dense_official_computation(visual: bool, heads: int) -> None:
    block = randomise(TPAVIBlock(channels=8, inter_channels=4, heads=heads, visual_attention=visual))
    x, audio = torch.randn(2, 8, 3, 4, 5), torch.randn(2, 3, 128)
    valid = torch.ones(2, 3, dtype=torch.bool)
    z, projected = block(x, audio, valid)
    expected = dense_tpavi(block, x, audio)
    if visual:
        expected = (expected + dense_tpavi(block, x, None)) / 2
    torch.testing.assert_close(z, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(projected, block.align_channel(audio))


def test_tpavi_block_ignores_padded_frames() -> None:
    block = randomise(TPAVIBlock(channels=8, inter_channels=4))
    x, audio = torch.randn(1, 8, 4, 3, 3), torch.randn(1, 4, 128)
    valid = torch.tensor([[True, True, False, False]])
    z, _ = block(x, audio, valid)
    # The valid frames see exactly what a 2-frame clip would: padded frames add no keys and do not count in N.
    expected = dense_tpavi(block, x[:, :, :2], audio[:, :2])
    torch.testing.assert_close(z[:, :, :2], expected, rtol=1e-4, atol=1e-5)
    x2 = x.clone()
    x2[:, :, 2:] = torch.randn_like(x2[:, :, 2:])
    torch.testing.assert_close(block(x2, audio, valid)[0][:, :, :2], z[:, :, :2])


def test_tpavi_block_is_layernorm_at_initialisation() -> None:
    torch.manual_seed(0)
    block = TPAVIBlock(channels=8, inter_channels=4, text_dim=6).eval()
    x, audio = torch.randn(2, 8, 3, 4, 4), torch.randn(2, 3, 128)
    z, _ = block(x, audio, torch.ones(2, 3, dtype=torch.bool), torch.randn(2, 6), torch.ones(2, dtype=torch.bool))
    # Official init: the BatchNorm after W_z is zero, so the residual branch vanishes; the text FiLM starts at zero.
    assert torch.count_nonzero(block.W_z[1].weight) == 0
    expected = F.layer_norm(x.permute(0, 2, 3, 4, 1), (8,)).permute(0, 4, 1, 2, 3)
    torch.testing.assert_close(z, expected, rtol=1e-5, atol=1e-5)


# -- the tiny preset end to end --------------------------------------------------------------------------------------


def test_tiny_forward_gives_mask_logits_at_the_batch_size(tiny: TPAVI) -> None:
    batch = random_batch(b=2, t=3, size=80, texts=["the red circle", "the object on the left"])
    with torch.no_grad():
        out = tiny.eval()(batch)
    assert out.mask_logits.shape == (2, 3, 1, 80, 80)
    assert out.aux["logits"].shape == (6, 1, 96, 96)  # the preset's input size
    assert set(out.aux["audio_features"]) == {0, 1, 2, 3}
    assert torch.isfinite(out.mask_logits).all()


def test_tiny_backward_reaches_trainable_parameters_only(tiny: TPAVI) -> None:
    model = copy.deepcopy(tiny).train()
    batch = random_batch(b=2, t=2, size=64, texts=["the silent square on the right", None])
    model.losses(batch, model(batch))["loss"].backward()
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith("text_branch.encoder.") for n in frozen)
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        else:
            assert p.grad is None, name
    # The text encoder stays in eval mode (no dropout) while the model trains.
    assert model.training and not model.text_branch.encoder.module.training


def test_frozen_vggish_gets_no_gradient_and_precomputed_embeddings_replace_it() -> None:
    torch.manual_seed(0)
    model = create_model("tpavi-tiny", **{"audio.encoder": "vggish", "text.encoder": None}).train()
    vggish = model.audio_encoder.vggish
    assert vggish is not None and not any(p.requires_grad for p in vggish.parameters())
    batch = random_batch(b=1, t=2, size=64)
    model.losses(batch, model(batch))["loss"].backward()
    assert all(p.grad is None for p in vggish.parameters())
    # With embeddings in the batch, VGGish is not run: the audio features are the embeddings (has_audio masks them).
    batch.audio_embeddings = torch.randn(1, 2, 128)
    batch.has_audio = torch.tensor([True])
    torch.testing.assert_close(model.audio_encoder(batch), batch.audio_embeddings)
    batch.has_audio = torch.tensor([False])
    assert torch.count_nonzero(model.audio_encoder(batch)) == 0


def test_avss_variant_predicts_71_classes() -> None:
    model = create_model("tpavi-tiny", num_classes=71, **{"loss.dice_weight": 0.0, "text.encoder": None})
    batch = random_batch(b=1, t=2, size=64, classes=71)
    out = model(batch)
    assert out.mask_logits.shape == (1, 2, 71, 64, 64)
    losses = model.losses(batch, out)
    assert set(losses) == {"ce", "loss"} and torch.isfinite(losses["loss"])


def test_text_branch_is_skipped_when_no_sample_has_text(tiny: TPAVI, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    encoder = tiny.text_branch.encoder.module
    original = type(encoder).forward

    def spy(self, texts):  # type: ignore[no-untyped-def]
        seen.append(list(texts))
        return original(self, texts)

    monkeypatch.setattr(type(encoder), "forward", spy)
    with torch.no_grad():
        tiny.eval()(random_batch(b=2, t=1, size=64))
        assert seen == []
        tiny(random_batch(b=2, t=1, size=64, texts=[None, "the loudest object"]))
    assert seen == [["the loudest object"]]


def test_text_changes_the_prediction_once_film_is_trained(tiny: TPAVI) -> None:
    model = copy.deepcopy(tiny).eval()
    for block in model.tpavi.values():
        torch.nn.init.normal_(block.film.weight, 0.0, 0.5)
    a = random_batch(b=1, t=1, size=64, texts=["the red circle"])
    b = random_batch(b=1, t=1, size=64, texts=["the blue square"])
    none = random_batch(b=1, t=1, size=64)
    with torch.no_grad():
        la, lb, ln = (model(x).mask_logits for x in (a, b, none))
        baseline = tiny.eval()(none).mask_logits  # the fixture's FiLM layers are still zero
    assert not torch.allclose(la, lb)
    torch.testing.assert_close(ln, baseline)  # no text: no modulation, whatever FiLM learned


def test_minilm_tokenizer_knows_the_words(tiny: TPAVI) -> None:
    ids = tiny.text_branch.encoder.module.tokenizer(["the silent square on the right"])["input_ids"][0]
    unk = tiny.text_branch.encoder.module.tokenizer.unk_token_id
    assert len(ids) > 4 and unk not in ids  # the transformers v5 vocab_file= gotcha would give only [UNK]s


# -- losses ----------------------------------------------------------------------------------------------------------


def test_s4_loss_ignores_unlabelled_frames(tiny: TPAVI) -> None:
    model = copy.deepcopy(tiny).eval()
    batch = random_batch(b=2, t=3, size=64)
    batch.label_valid[:, 1:] = False  # S4 training: only the first frame is labelled
    with torch.no_grad():
        out = model(batch)
        base = model.losses(batch, out)["loss"]
        changed = copy.copy(batch)
        changed.masks = batch.masks.clone()
        changed.masks[:, 1:] = 1 - changed.masks[:, 1:]
        torch.testing.assert_close(model.losses(changed, out)["loss"], base)
        changed.masks[:, 0] = 1 - changed.masks[:, 0]
        assert not torch.isclose(model.losses(changed, out)["loss"], base)


def test_bce_is_the_mean_over_labelled_pixels(tiny: TPAVI) -> None:
    model = copy.deepcopy(tiny).eval()
    model.config = copy.deepcopy(model.config)
    model.config.loss.dice_weight = 0.0
    batch = random_batch(b=1, t=2, size=32)
    batch.label_valid[0, 1] = False
    with torch.no_grad():
        out = model(batch)
        p = out.mask_logits[0, 0, 0].sigmoid()
        y = batch.masks[0, 0].float()
        expected = -(y * p.log() + (1 - y) * (1 - p).log()).mean()
        torch.testing.assert_close(model.losses(batch, out)["loss"], expected, rtol=1e-4, atol=1e-5)
        batch.label_valid[:] = False
        assert model.losses(batch, out)["loss"] == 0


def reference_av_kl(logits, maps, audio, stages, reduction):  # type: ignore[no-untyped-def]
    """Per-frame loop written from the official A_MaskedV_SimmLoss (kl_flag, avg pooling, no threshold)."""
    total = 0.0
    for s in stages:
        frame_losses = []
        for n in range(logits.shape[0]):
            v = maps[s][n].clamp_min(0)  # (C, h, w)
            m = F.adaptive_avg_pool2d(logits[n : n + 1], v.shape[-2:])[0].sigmoid()  # (1, h, w)
            vis = (v * m).mean((-2, -1))
            a = audio[s].flatten(0, 1)[n]
            p, q = a.softmax(-1), vis.softmax(-1)
            frame_losses.append((p * (p.log() - q.log())).sum())
        loss = sum(frame_losses)
        total += loss if reduction == "sum" else loss / len(frame_losses)
    return total / len(stages)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_masked_av_kl_matches_a_per_frame_reference(reduction: str) -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, 1, 16, 16)
    maps = [torch.randn(4, 6, 16 // 2**i, 16 // 2**i) for i in range(4)]
    audio = {s: torch.randn(2, 2, 6) for s in range(4)}
    valid = torch.ones(2, 2, dtype=torch.bool)
    got = masked_av_kl_loss(logits, maps, audio, (0, 2, 3), valid, reduction)  # type: ignore[arg-type]
    torch.testing.assert_close(got, torch.as_tensor(reference_av_kl(logits, maps, audio, (0, 2, 3), reduction)))


def test_ms3_loss_adds_the_weighted_av_kl_term() -> None:
    torch.manual_seed(0)
    model = create_model("tpavi-tiny", **{"loss.av_kl_weight": 0.5, "text.encoder": None}).eval()
    batch = random_batch(b=1, t=2, size=64)
    with torch.no_grad():
        losses = model.losses(batch, model(batch))
    assert losses["av_kl"] > 0
    torch.testing.assert_close(losses["loss"], losses["bce"] + losses["dice"] + 0.5 * losses["av_kl"])


def test_a_short_overfit_run_drives_the_loss_down(tiny: TPAVI) -> None:
    torch.manual_seed(0)
    model = copy.deepcopy(tiny).train()
    model.config = copy.deepcopy(model.config)
    model.config.input_size = 64  # the smallest size the four strides allow, to keep the test fast
    batch = random_batch(b=2, t=1, size=64, texts=["the red circle", None])
    # A learnable target: a square whose position depends on the sample.
    batch.masks.zero_()
    batch.masks[0, :, 8:30, 8:30] = 1
    batch.masks[1, :, 30:60, 20:50] = 1
    opt = torch.optim.Adam(model.param_groups(3e-3, 0.0))
    first = last = math.inf
    for step in range(30):
        loss = model.losses(batch, model(batch))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = loss.item() if step == 0 else first
        last = loss.item()
    assert last < 0.5 * first


# -- checkpoints -----------------------------------------------------------------------------------------------------


def test_checkpoint_leaves_out_the_pretrained_text_encoder_and_reloads_strictly(tiny: TPAVI, tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = copy.deepcopy(tiny).eval()
    torch.nn.init.normal_(model.tpavi["1"].W_z[1].weight)  # something learned, so that a reload must restore it
    keys = model.state_dict().keys()
    assert not any(k.startswith("text_branch.encoder.") for k in keys)
    assert any(k.startswith("text_branch.proj.") for k in keys)
    path = save_checkpoint(tmp_path / "ckpt", model, preset="tpavi-tiny")
    loaded = load_model(path).eval()
    batch = random_batch(b=1, t=2, size=64, texts=["the loudest object"])
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch).mask_logits, model(batch).mask_logits)


def test_conditional_kernel_starts_at_zero_and_depends_on_text_and_audio() -> None:
    torch.manual_seed(0)
    model = create_model("tpavi-tiny", **{"kernel.enabled": True, "text.pooling": "attention"}).eval()
    batch = random_batch(b=2, t=3, size=64, texts=["the loudest object", None])
    audio = torch.randn(2, 3, 128)
    valid = torch.ones(2, 3, dtype=torch.bool)
    sentence, has_text = model.text_branch(batch.text, torch.device("cpu"))
    kernel = model.kernel(audio, valid, sentence, has_text)
    assert kernel.shape == (6, 1, model.config.decoder.channels + 1)
    assert torch.count_nonzero(kernel) == 0  # zero-initialised last layer: no effect on a new model
    torch.nn.init.normal_(model.kernel.mlp[-1].weight)
    k1 = model.kernel(audio, valid, sentence, has_text)
    k2 = model.kernel(audio.flip(1), valid, sentence, has_text)  # same seconds, other order: "first" differs
    k3 = model.kernel(audio, valid, torch.randn_like(sentence), has_text)
    assert not torch.allclose(k1, k2) and not torch.allclose(k1[:3], k3[:3])
    torch.testing.assert_close(k1[3:], k3[3:])  # the second sample has no expression: its sentence is ignored


def test_train_frames_runs_the_visual_path_on_a_frame_sample_and_the_loss_skips_the_rest() -> None:
    torch.manual_seed(0)
    model = create_model("tpavi-tiny", train_frames=2).train()
    batch = random_batch(b=2, t=5, size=64, texts=["the red circle", None])
    out = model(batch)
    computed = out.computed_frames  # (B, T)
    assert computed.shape == (2, 5) and computed.sum(1).tolist() == [2, 2]
    assert out.aux["logits"].shape[0] == 2 * 2  # the visual path ran on B * train_frames frames
    assert (out.mask_logits[~computed] == 0).all() and (out.mask_logits[computed] != 0).any()
    base = model.losses(batch, out)["loss"]
    # Flipping the targets of frames outside the sample leaves the loss unchanged; flipping a sampled frame does not.
    changed = copy.copy(batch)
    changed.masks = batch.masks.clone()
    changed.masks[~computed] = 1 - changed.masks[~computed]
    torch.testing.assert_close(model.losses(changed, out)["loss"], base)
    changed.masks[computed] = 1 - changed.masks[computed]
    assert not torch.isclose(model.losses(changed, out)["loss"], base)
    # Evaluation runs every frame.
    with torch.no_grad():
        assert model.eval()(batch).computed_frames.all()


# -- AVSS: padded clips ----------------------------------------------------------------------------------------------


def official_avss_av_kl(pred_masks, a_fea_list, v_map_list, gt_temporal_mask_flag, count_stages):  # type: ignore[no-untyped-def]
    """AVSS ``A_MaskedV_SimmLoss`` with ``kl_flag`` (no feature normalisation, average pooling, no threshold), written
    from the official code: foreground = argmax class != 0 (``bg_idx``), and per stage the KL of each of the ``B*10``
    frames is weighted by ``gt_temporal_mask_flag`` and divided by the flag's sum over the batch."""
    fg = (pred_masks.softmax(1).argmax(1).unsqueeze(1) != 0).float()  # (B*10, 1, H, W)
    total = 0.0
    for stage in count_stages:
        a_fea, v_map = a_fea_list[stage].reshape(-1, a_fea_list[stage].shape[-1]), v_map_list[stage]  # (B*10, C)
        pooled = torch.nn.AdaptiveAvgPool2d(v_map.shape[-2:])(fg)
        masked_v_fea = torch.mul(v_map, pooled).mean(-1).mean(-1)  # (B*10, C)
        loss = F.kl_div(masked_v_fea.softmax(dim=-1).log(), a_fea.softmax(dim=-1), reduction="none").sum(-1)
        total += torch.sum(loss * gt_temporal_mask_flag) / torch.sum(gt_temporal_mask_flag)
    return total / len(count_stages)


def avss_batch():  # type: ignore[no-untyped-def]
    """Clip 0 as an AVSS v1s training clip (5 real frames, frame 0 labelled, 5 padded black frames); clip 1 as v2."""
    batch = random_batch(b=2, t=10, size=64, classes=71)
    batch.frame_valid[0, 5:] = False
    batch.frames[0, 5:] = 0
    batch.audio_examples[0, 5:] = 0
    batch.label_valid[0, 1:] = False
    batch.masks[0, 1:] = 0
    return batch


@pytest.mark.parametrize("frames", ["labelled", "real"])
def test_avss_av_kl_matches_the_official_loss_on_a_padded_v1s_clip(frames: str) -> None:
    torch.manual_seed(0)
    overrides = {"loss.dice_weight": 0.0, "loss.av_kl_weight": 0.5, "loss.av_kl_reduction": "mean"}
    overrides |= {"loss.av_kl_frames": frames, "text.encoder": None, "kernel.enabled": False}
    model = create_model("tpavi-tiny", num_classes=71, train_frames=None, **overrides).eval()
    batch = avss_batch()
    with torch.no_grad():
        out = model(batch)
        got = model.losses(batch, out)["av_kl"]
    # The official decoder's in-place ReLU leaves the stage features rectified when the loss reads them.
    maps = [m.clamp_min(0) for m in out.aux["stage_features"]]
    audio = out.aux["audio_features"]
    flag = (batch.label_valid if frames == "labelled" else batch.frame_valid).flatten().float()  # (B*10,)
    expected = official_avss_av_kl(out.aux["logits"], audio, maps, flag, (0, 1, 2, 3))
    torch.testing.assert_close(got, torch.as_tensor(expected))
    if frames == "labelled":  # official: 11 labelled frames count, not the 15 real ones
        other = official_avss_av_kl(out.aux["logits"], audio, maps, batch.frame_valid.flatten().float(), (0, 1, 2, 3))
        assert not torch.isclose(got, torch.as_tensor(other))


def test_avss_presets_follow_the_official_loss_and_ms3_sums_over_its_labelled_frames() -> None:
    for name in ("tpavi-r50-avss", "tpavi-pvt-avss"):
        cfg = get_entry(name).config()
        loss = cfg.loss
        assert (loss.av_kl_frames, loss.av_kl_reduction, loss.av_kl_stages) == ("labelled", "mean", (0, 1, 2, 3))
        assert cfg.tpavi.temporal_window == 5  # pre_reshape_for_tpavi: reshape(-1, 5, C, H, W)
    for name in ("tpavi-r50-ms3", "tpavi-pvt-ms3"):
        loss = get_entry(name).config().loss
        assert (loss.av_kl_frames, loss.av_kl_reduction) == ("labelled", "sum")
    with pytest.raises(ValueError, match="av_kl_frames"):
        get_entry("tpavi-tiny").config(**{"loss.av_kl_frames": "all"})


def test_real_frames_do_not_depend_on_the_pixels_stored_in_padded_frames() -> None:
    torch.manual_seed(0)
    model = create_model("tpavi-tiny", train_frames=None, **{"text.encoder": None}).train()
    batch = avss_batch()
    batch.masks.clamp_(max=1)
    grey = copy.copy(batch)
    grey.frames = batch.frames.clone()
    grey.frames[0, 5:] = 128  # other pixel values in the padded frames
    # Training mode: the backbone's batch norm pools statistics over every frame of the batch, padding included.
    out_black, out_grey = model(batch).mask_logits, model(grey).mask_logits
    real = batch.frame_valid
    torch.testing.assert_close(out_grey[real], out_black[real])


@pytest.mark.parametrize(("visual", "heads"), [(False, 1), (True, 2)])
def test_temporal_windows_attend_as_the_official_avss_code_on_its_short_clips(visual: bool, heads: int) -> None:
    block = randomise(TPAVIBlock(channels=8, inter_channels=4, heads=heads, visual_attention=visual))
    x, audio = torch.randn(2, 8, 6, 3, 4), torch.randn(2, 6, 128)
    valid = torch.ones(2, 6, dtype=torch.bool)
    window = torch.arange(6) // 3  # two windows of 3 frames, as the official code cuts 10 frames into 2 × 5
    z, _ = block(x, audio, valid, window=window)

    def dense(xs: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        out = dense_tpavi(block, xs, a)
        return (out + dense_tpavi(block, xs, None)) / 2 if visual else out

    # Official: reshape (B*T, ...) to (B*T/w, w, ...) and run the block on each short clip.
    short = x.view(2, 8, 2, 3, 3, 4).permute(0, 2, 1, 3, 4, 5).reshape(4, 8, 3, 3, 4)  # (B*2, C, 3, h, w)
    expected = dense(short, audio.reshape(4, 3, 128)).view(2, 2, 8, 3, 3, 4).permute(0, 2, 1, 3, 4, 5).flatten(2, 3)
    torch.testing.assert_close(z, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(z, block(x, audio, valid)[0], rtol=1e-4, atol=1e-5)  # not the whole-clip attention


def test_with_temporal_windows_the_first_five_frames_of_a_ten_frame_clip_are_a_five_frame_clip() -> None:
    torch.manual_seed(0)
    overrides = {"text.encoder": None, "kernel.enabled": False, "tpavi.position_encoding": False}
    model = create_model("tpavi-tiny", train_frames=None, **overrides, **{"tpavi.temporal_window": 5}).eval()
    for block in model.tpavi.values():
        torch.nn.init.normal_(block.W_z[1].weight)  # a trained block: the attention reaches the output
    batch = random_batch(b=1, t=10, size=64)
    first = batch.select_frames(torch.arange(5))
    with torch.no_grad():
        whole = model(batch).mask_logits  # (1, 10, 1, 64, 64)
        model.config.tpavi.temporal_window = None
        across = model(batch).mask_logits
    model.config.tpavi.temporal_window = 5
    with torch.no_grad():
        short = model(first).mask_logits  # (1, 5, 1, 64, 64)
    torch.testing.assert_close(whole[:, :5], short, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(whole[:, :5], across[:, :5], rtol=1e-4, atol=1e-4)
