"""Tests of AVSegFormer (avseg.models.avsegformer): presets, components against written-out formulas, losses, text."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from avseg.data.types import random_batch
from avseg.layers.losses import squared_dice_loss
from avseg.models import create_model, get_entry, list_models
from avseg.models.avsegformer import (
    AudioVisualMixer,
    AVSegFormer,
    HeadConfig,
    QueryMaskReformer,
    released_config,
    sine_position_encoding,
)
from tests.models.test_tpavi import distilroberta_count, pvt_v2_b5_count, resnet50_count, vggish_count

S = get_entry("avsegformer-tiny").config().input_size  # the tiny preset's input size
PAPER_PRESETS = [f"avsegformer-{bb}-{task}" for bb in ("pvt", "r50") for task in ("s4", "ms3", "avss", "refavs")]


@pytest.fixture(scope="module")
def tiny() -> AVSegFormer:
    torch.manual_seed(0)
    return create_model("avsegformer-tiny").eval()


def without_text(model: AVSegFormer) -> AVSegFormer:
    """A copy whose config and text modules say "no text branch" (the tiny weights otherwise unchanged)."""
    model = copy.deepcopy(model)
    model.text = None
    return model


# -- presets and parameter counts ------------------------------------------------------------------------------------


def conv(cin: int, cout: int, k: int, bias: bool = True) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def linear(cin: int, cout: int, bias: bool = True) -> int:
    return cin * cout + (cout if bias else 0)


def mha(d: int, bias: bool = True) -> int:
    return 3 * d * d + d * d + (4 * d if bias else 0)


def head_count(channels: list[int], classes: int, *, text: bool) -> int:
    """The paper head, counted from the method description: D 256, 300 queries, 6+6 layers, FFN 2048."""
    d, nq, ffn = 256, 300, 2048
    total = linear(128, d)  # audio projection
    total += sum(conv(c, d, 1) + 2 * d for c in channels)  # input projections + GroupNorm
    total += 3 * d  # level embeddings
    msda = linear(d, 8 * 3 * 4 * 2) + linear(d, 8 * 3 * 4) + 2 * linear(d, d)
    total += 6 * (msda + linear(d, ffn) + linear(ffn, d) + 2 * 2 * d)  # encoder
    total += nq * d  # learnable queries
    total += 6 * (2 * mha(d) + linear(d, ffn) + linear(ffn, d) + 3 * 2 * d)  # decoder
    total += conv(d, d, 1) + 2 * d + conv(d, d, 3) + 2 * d  # lateral conv, out conv (+ GroupNorms)
    total += linear(d, d, False) + linear(d, 2 * d, False) + linear(d, d)  # channel mixer
    total += conv(nq, 2048, 1) + conv(2048, 2048, 1) + conv(2048, d, 1)  # MLP over the query axis
    total += conv(d, classes, 1)  # linear mask output
    total += 3 * conv(d, d, 3) + conv(d, classes, 1)  # intermediate-mask reformer (FPN + its output)
    if text:
        total += linear(768, d) + 2 * d + 3 * d  # token projection + LayerNorm, token-type embeddings
        total += conv(d, d, 1)  # projection of the position embeddings onto the mask feature
    return total


@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_paper_presets_build_offline_with_independently_counted_parameters(name: str) -> None:
    with torch.device("meta"):
        model = create_model(name, pretrained=False)
    cfg = model.config
    resnet = cfg.backbone.kind == "resnet"
    refavs, avss = name.endswith("refavs"), name.endswith("avss")
    channels = [256, 512, 1024, 2048] if resnet else [64, 128, 320, 512]
    backbone = resnet50_count() if resnet else pvt_v2_b5_count()
    head = head_count(channels, 71 if avss else 1, text=refavs)
    frozen = vggish_count() + (distilroberta_count() if refavs else 0)
    assert model.num_parameters() == backbone + head + frozen
    # Before its unfreeze epoch the backbone does not train (S4 5 epochs, MS3 10, AVSS none).
    trainable = head + (backbone if avss else 0)
    assert model.num_parameters(trainable_only=True) == trainable
    assert model.output.linear.out_channels == (71 if avss else 1)


def test_paper_preset_recipes_follow_the_released_configs() -> None:
    s4, ms3, avss = (
        get_entry(n).config() for n in ("avsegformer-pvt-s4", "avsegformer-r50-ms3", "avsegformer-pvt-avss")
    )
    assert (s4.input_size, ms3.input_size, avss.input_size) == (512, 512, 224)
    # frames and masks are read at the network's size, as the released loaders resize them
    assert (s4.recipe.image_size, ms3.recipe.image_size, avss.recipe.image_size) == (512, 512, 224)
    assert (s4.recipe.epochs, ms3.recipe.epochs, avss.recipe.epochs) == (30, 60, 30)
    assert (s4.recipe.batch_size, ms3.recipe.batch_size, avss.recipe.batch_size) == (2, 2, 4)
    assert (s4.backbone_freeze_epochs, ms3.backbone_freeze_epochs, avss.backbone_freeze_epochs) == (5, 10, 0)
    assert all(
        (c.recipe.optim.name, c.recipe.optim.lr, c.recipe.schedule.kind) == ("adamw", 2e-5, "constant")
        for c in (s4, ms3, avss)
    )
    t = s4.transformer
    assert (t.dim, t.heads, t.encoder_layers, t.decoder_layers, t.ffn_dim, t.dropout, t.points) == (
        256,
        8,
        6,
        6,
        2048,
        0.1,
        4,
    )
    assert s4.queries.num_queries == 300 and s4.queries.learnable and s4.queries.generator == "audio"
    assert s4.loss.dice_weight == 1.0 and s4.loss.intermediate_weight == 0.1 and s4.loss.mix_weight == 0.0
    assert avss.num_classes == 71 and avss.loss.dice_weight == 0 and avss.loss.ce_weight == 1.0
    assert s4.audio.encoder == "vggish" and s4.backbone.weights == "OpenGVLab/pvt_v2_b5"


def test_released_config_switches_every_difference() -> None:
    cfg = released_config(get_entry("avsegformer-pvt-avss").config())
    assert cfg.queries.generator == "attention" and cfg.queries.generator_layers == 6
    assert cfg.queries.generator_ffn_dim == 1024 and cfg.mixer.combine == "gate" and cfg.head.output == "conv"
    assert cfg.loss.intermediate_weight == 0 and cfg.loss.mix_weight == 0.1 and cfg.loss.reformer
    assert cfg.num_classes == 71  # everything else is kept


def test_registry_lists_every_preset() -> None:
    assert set(list_models("avsegformer-*")) == {*PAPER_PRESETS, "avsegformer-tiny"}


def test_invalid_configs_are_refused() -> None:
    entry = get_entry("avsegformer-tiny")
    with pytest.raises(ValueError, match="multiple of 32"):
        entry.config(input_size=100)
    with pytest.raises(ValueError, match="binary masks"):
        entry.config(num_classes=71)
    with pytest.raises(ValueError, match="group_norm_groups"):
        entry.config(**{"transformer.group_norm_groups": 24})
    with pytest.raises(ValueError, match=r"queries\.generator"):
        entry.config(**{"queries.generator": "repeat"})


@pytest.mark.slow
def test_a_paper_preset_runs_forward_and_backward_at_a_small_size() -> None:
    torch.manual_seed(0)
    model = create_model("avsegformer-r50-s4", pretrained=False, input_size=64).train()
    batch = random_batch(b=1, t=2, size=64)
    out = model(batch)
    assert out.mask_logits.shape == (1, 2, 1, 64, 64) and len(out.aux["intermediate"]) == 6
    model.losses(batch, out)["loss"].backward()
    # The backbone is frozen for the first 5 epochs: it gets no gradient; the head does.
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.learnable_query.weight.grad is not None and model.encoder.layers[0].linear1.weight.grad is not None


# -- components ------------------------------------------------------------------------------------------------------


def test_sine_position_encoding_matches_the_mmdet_formula() -> None:
    h, w, feats = 3, 5, 8
    mask = torch.zeros(1, h, w)
    y, x = (1 - mask).cumsum(1), (1 - mask).cumsum(2)  # 1-based rows and columns, not normalised
    dim_t = 10000 ** (2 * (torch.arange(feats) // 2) / feats)
    pos_x, pos_y = x[..., None] / dim_t, y[..., None] / dim_t
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).view(1, h, w, -1)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).view(1, h, w, -1)
    expected = torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)[0]
    torch.testing.assert_close(sine_position_encoding(h, w, 2 * feats), expected)


@pytest.mark.parametrize("combine", ["residual", "gate"])
def test_channel_mixer_matches_the_written_out_attention(combine: str) -> None:
    torch.manual_seed(0)
    mixer = AudioVisualMixer(dim=8, heads=2, combine=combine)  # type: ignore[arg-type]
    feature, audio = torch.randn(2, 8, 3, 4), torch.randn(2, 1, 8)
    tokens = feature.flatten(2).transpose(1, 2)  # (N, 12, 8)
    q = mixer.q_proj(audio).view(2, 1, 2, 4).transpose(1, 2)
    k, v = mixer.kv_proj(tokens).view(2, 12, 2, 2, 4).permute(2, 0, 3, 1, 4)
    attn = (q @ k.transpose(-2, -1) / math.sqrt(4)).softmax(-1)  # over the 12 positions
    w = mixer.proj((attn @ v).transpose(1, 2).reshape(2, 8))[:, :, None, None]
    expected = feature + feature * w if combine == "residual" else feature * w.sigmoid()
    torch.testing.assert_close(mixer(feature, audio), expected)


def test_reformer_mixes_attention_maps_by_query_outputs() -> None:
    torch.manual_seed(0)
    reformer = QueryMaskReformer(dim=4, num_classes=1, config=HeadConfig(output="linear"))
    shapes = [(4, 4), (2, 2), (1, 1)]
    query, weights = torch.randn(2, 3, 4), torch.rand(2, 3, 21).softmax(-1)
    out = reformer(query, weights, shapes, (32, 32))
    assert out.shape == (2, 1, 32, 32)
    # Only the 1/32 map flows through every conv; one query with all its attention on the 1/32 position of
    # sample 0 and zero output elsewhere changes sample 0 alone.
    weights2 = weights.clone()
    weights2[0, 0] = 0
    weights2[0, 0, 20] = 1
    out2 = reformer(query, weights2, shapes, (32, 32))
    assert not torch.allclose(out2[0], out[0]) and torch.allclose(out2[1], out[1])


def test_audio_queries_repeat_the_audio_token_and_the_generator_path_runs(tiny: AVSegFormer) -> None:
    model = without_text(tiny)
    batch = random_batch(b=1, t=2, size=64)
    captured = {}
    original = model.decoder.forward

    def spy(query, *args):  # type: ignore[no-untyped-def]
        captured["query"] = query
        return original(query, *args)

    model.decoder.forward = spy  # type: ignore[method-assign]
    with torch.no_grad():
        model(batch)
        nq = model.config.queries.num_queries
        queries = captured["query"][:, :nq] - model.learnable_query.weight  # the audio queries alone
        torch.testing.assert_close(queries, queries[:, :1].expand_as(queries))  # one audio token, repeated
        audio = model.audio_proj(model.audio_encoder(batch)).flatten(0, 1)
        torch.testing.assert_close(queries[:, 0], audio)
    generator = create_model("avsegformer-tiny", **{"queries.generator": "attention", "text.encoder": None}).eval()
    with torch.no_grad():
        assert generator(batch).mask_logits.shape == (1, 2, 1, 64, 64)
    assert generator.query_generator is not None and len(generator.query_generator.layers) == 6


def test_ablation_switches_build_and_run() -> None:
    batch = random_batch(b=1, t=2, size=64, texts=["the red circle"])
    for overrides in (
        {"mixer.kind": "none"},
        {"mixer.kind": "cross_attention"},
        {"queries.learnable": False},
        {"loss.intermediate_weight": 0.0},
        {"head.output": "conv"},
    ):
        torch.manual_seed(0)
        model = create_model("avsegformer-tiny", **overrides).train()
        out = model(batch)
        losses = model.losses(batch, out)
        assert torch.isfinite(losses["loss"]), overrides
        intermediate = overrides.get("loss.intermediate_weight", 0.1) > 0
        assert ("intermediate" in losses) == intermediate
        assert (model.reformer is not None) == intermediate  # no intermediate loss, no reformer


def test_backbone_trains_from_its_unfreeze_epoch() -> None:
    model = create_model("avsegformer-tiny", backbone_freeze_epochs=2, **{"text.encoder": None})
    assert not any(p.requires_grad for p in model.backbone.parameters())
    model.on_epoch_start(1)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    model.on_epoch_start(2)
    assert all(p.requires_grad for p in model.backbone.parameters())


# -- outputs and losses ----------------------------------------------------------------------------------------------


def test_tiny_forward_gives_masks_at_the_batch_size_and_intermediates_in_training(tiny: AVSegFormer) -> None:
    batch = random_batch(b=2, t=3, size=80, texts=["the red circle", "the object on the left"])
    with torch.no_grad():
        out = tiny.eval()(batch)
    assert out.mask_logits.shape == (2, 3, 1, 80, 80) and torch.isfinite(out.mask_logits).all()
    assert out.aux["logits"].shape == (6, 1, S, S) and out.aux["intermediate"] == []
    assert out.aux["mask_feature"].shape == (6, 64, S // 4, S // 4)
    model = copy.deepcopy(tiny).train()
    inter = model(batch).aux["intermediate"]
    assert len(inter) == 2 and inter[0].shape == (2 * tiny.config.train_frames, 1, S, S)  # frames drawn per clip


def test_losses_follow_their_definitions(tiny: AVSegFormer) -> None:
    model = copy.deepcopy(tiny).train()
    batch = random_batch(b=2, t=2, size=S, texts=["the blue square", None])  # the preset's input size
    batch.label_valid[:, 1] = False  # S4-style: only the first frame has a label
    torch.manual_seed(0)
    out = model(batch)
    losses = model.losses(batch, out)
    logits = out.mask_logits[:, 0, 0]  # labelled frames only
    target = batch.masks[:, 0].float()
    torch.testing.assert_close(losses["dice"], squared_dice_loss(logits, target))
    torch.testing.assert_close(losses["bce"], F.binary_cross_entropy_with_logits(logits, target))
    inter = 0.0
    for m in out.aux["intermediate"]:
        first = m.view(2, 2, S, S)[:, 0]
        inter += squared_dice_loss(first, target) + F.binary_cross_entropy_with_logits(first, target)
    torch.testing.assert_close(losses["intermediate"], 0.1 * inter)
    torch.testing.assert_close(losses["loss"], losses["dice"] + losses["bce"] + losses["intermediate"])
    # Unlabelled frames do not count.
    changed = copy.copy(batch)
    changed.masks = batch.masks.clone()
    changed.masks[:, 1] = 1 - changed.masks[:, 1]
    torch.testing.assert_close(model.losses(changed, out)["loss"], losses["loss"])
    batch.label_valid[:] = False
    assert model.losses(batch, out)["loss"] == 0


def test_losses_are_taken_at_the_input_size_on_nearest_resized_masks(tiny: AVSegFormer) -> None:
    model = copy.deepcopy(tiny).eval()
    batch = random_batch(b=1, t=2, size=S // 2)
    with torch.no_grad():
        out = model(batch)
        losses = model.losses(batch, out)
    target = batch.masks[0].repeat_interleave(2, -1).repeat_interleave(2, -2).float()  # S/2 → S, nearest
    logits = out.aux["logits"][:, 0]  # (2, S, S)
    torch.testing.assert_close(losses["dice"], squared_dice_loss(logits, target))


def test_train_frames_runs_on_a_subset_of_labelled_frames(tiny: AVSegFormer) -> None:
    model = copy.deepcopy(tiny).train()
    model.config = copy.deepcopy(model.config)
    model.config.train_frames = 2
    batch = random_batch(b=2, t=5, size=64, texts=["the red circle", None])
    batch.label_valid[:, 3:] = False
    torch.manual_seed(0)
    out = model(batch)
    computed = out.computed_frames
    assert computed.sum(1).tolist() == [2, 2] and not computed[:, 3:].any()  # drawn among labelled frames only
    assert out.aux["logits"].shape[0] == 4 and (out.mask_logits[~computed] == 0).all()
    losses = model.losses(batch, out)
    logits = out.aux["logits"][:, 0]
    target = F.interpolate(batch.masks[computed][:, None].float(), size=(S, S), mode="nearest")[:, 0]
    torch.testing.assert_close(losses["dice"], squared_dice_loss(logits, target))
    with torch.no_grad():
        assert model.eval()(batch).computed_frames.all()  # evaluation runs every frame


def test_mix_loss_is_the_dice_of_the_channel_mean(tiny: AVSegFormer) -> None:
    model = copy.deepcopy(tiny).eval()
    model.config = released_config(copy.deepcopy(model.config))
    batch = random_batch(b=1, t=2, size=S)
    with torch.no_grad():
        out = model(batch)
        losses = model.losses(batch, out)
    mean = F.interpolate(out.aux["mask_feature"].mean(1, keepdim=True), size=(S, S), mode="bilinear")[:, 0]
    torch.testing.assert_close(losses["mix"], 0.1 * squared_dice_loss(mean, batch.masks[0].float()))
    assert "intermediate" not in losses


def test_avss_uses_cross_entropy_on_labelled_frames_and_the_released_dice_on_binarised_masks() -> None:
    torch.manual_seed(0)
    overrides = {"num_classes": 71, "loss.dice_weight": 0.0, "loss.bce_weight": 0.0, "text.encoder": None}
    model = create_model("avsegformer-tiny", **overrides).eval()
    batch = random_batch(b=1, t=2, size=S, classes=71)
    batch.label_valid[0, 1] = False
    with torch.no_grad():
        out = model(batch)
        losses = model.losses(batch, out)
    assert out.mask_logits.shape == (1, 2, 71, S, S)
    torch.testing.assert_close(losses["ce"], F.cross_entropy(out.mask_logits[0, :1], batch.masks[0, :1].long()))
    model.config = released_config(copy.deepcopy(model.config))
    with torch.no_grad():
        mix = model.losses(batch, out)["mix"]
    mean = F.interpolate(out.aux["mask_feature"][:1].mean(1, keepdim=True), size=(S, S), mode="bilinear")[:, 0]
    torch.testing.assert_close(mix, 0.1 * squared_dice_loss(mean, (batch.masks[0, :1] > 0).float()))


def test_empty_targets_get_a_gradient_through_bce(tiny: AVSegFormer) -> None:
    model = copy.deepcopy(tiny).train()
    batch = random_batch(b=1, t=2, size=64, texts=["the green star"])
    batch.masks.zero_()  # a null expression
    out = model(batch)
    grad = torch.autograd.grad(model.losses(batch, out)["loss"], out.aux["logits"])[0]
    assert grad.abs().sum() > 0


# -- text and clip audio ---------------------------------------------------------------------------------------------


def test_text_encoder_is_frozen_and_left_out_of_the_checkpoint(tiny: AVSegFormer) -> None:
    model = copy.deepcopy(tiny).train()
    assert not model.text.encoder.module.training  # type: ignore[union-attr]
    assert not any(p.requires_grad for p in model.text.encoder.parameters())  # type: ignore[union-attr]
    assert not any(k.startswith("text.encoder.") for k in model.state_dict())
    assert all(p.requires_grad for p in model.text.proj.parameters())  # type: ignore[union-attr]


def test_a_sample_without_text_is_computed_as_if_no_sample_had_text(tiny: AVSegFormer) -> None:
    batch = random_batch(b=2, t=2, size=64, texts=["the loudest object", None])
    alone = random_batch(b=2, t=2, size=64)
    with torch.no_grad():
        mixed = tiny(batch).mask_logits
        plain = tiny(alone).mask_logits
    torch.testing.assert_close(mixed[1], plain[1], rtol=1e-4, atol=1e-5)  # padded text tokens are masked out
    assert not torch.allclose(mixed[0], plain[0])  # the expression changes the other sample's masks


def test_expressions_change_the_prediction(tiny: AVSegFormer) -> None:
    a = random_batch(b=1, t=1, size=64, texts=["the red circle"])
    b = random_batch(b=1, t=1, size=64, texts=["the object that sounds first"])
    with torch.no_grad():
        assert not torch.allclose(tiny(a).mask_logits, tiny(b).mask_logits)


def test_clip_audio_tokens_of_padded_frames_are_ignored(tiny: AVSegFormer) -> None:
    model = without_text(tiny)
    batch = random_batch(b=1, t=3, size=64)
    batch.frame_valid[0, 2] = False
    other = copy.copy(batch)
    other.audio_examples = batch.audio_examples.clone()
    other.audio_examples[0, 2] = torch.randn(1, 96, 64)
    with torch.no_grad():
        a, b = model(batch).mask_logits, model(other).mask_logits
    torch.testing.assert_close(a[:, :2], b[:, :2], rtol=1e-4, atol=1e-5)
    # A valid second's audio reaches every frame of the clip (clip-level audio tokens).
    other.audio_examples[0, 1] = torch.randn(1, 96, 64)
    with torch.no_grad():
        c = model(other).mask_logits
    assert not torch.allclose(a[:, 0], c[:, 0])


def test_position_paths_start_closed_and_open_with_training(tiny: AVSegFormer) -> None:
    batch = random_batch(b=1, t=2, size=64, texts=["the object on the left"])
    plain = copy.deepcopy(tiny)
    plain.config = copy.deepcopy(plain.config)
    plain.config.text.positions = False  # no position on the decoder keys either
    model = copy.deepcopy(tiny)
    with torch.no_grad():
        a, b = model(batch).mask_logits, plain(batch).mask_logits
        assert not torch.allclose(a, b)  # the keys carry positions from the start
        model.config = plain.config
        torch.testing.assert_close(model(batch).mask_logits, b)  # the mask-feature projection starts at zero
    assert torch.count_nonzero(tiny.position_proj.weight) == 0  # type: ignore[union-attr]


def test_summary_adds_the_expression_and_the_clip_to_the_audio_token(tiny: AVSegFormer) -> None:
    model = copy.deepcopy(tiny)
    model.config = copy.deepcopy(model.config)
    model.config.text.summary = True
    batch = random_batch(b=2, t=3, size=64, texts=["the silent red square", None])
    batch.frame_valid[1, 2] = False
    seen = {}
    original = model.mixer.forward  # type: ignore[union-attr]

    def spy(feature, audio):  # type: ignore[no-untyped-def]
        seen["audio"] = audio
        return original(feature, audio)

    model.mixer.forward = spy  # type: ignore[method-assign, union-attr]
    with torch.no_grad():
        model(batch)
        audio = model.audio_proj(model.audio_encoder(batch))  # (B, T, D)
        words, pad = model.text(batch.text, torch.device("cpu"))  # type: ignore[misc]
        sentence = (words * (~pad)[..., None]).sum(1) / (~pad).sum(1).clamp_min(1)[:, None]
        clip = torch.stack([audio[0].mean(0), audio[1, :2].mean(0)])  # padded seconds left out
        expected = audio + (sentence + clip)[:, None]  # the second sample has no text: its sentence is zero
    torch.testing.assert_close(seen["audio"][:, 0], expected.flatten(0, 1), rtol=1e-4, atol=1e-5)


def test_real_frames_do_not_depend_on_the_pixels_stored_in_padded_frames() -> None:
    torch.manual_seed(0)
    overrides = {"text.encoder": None, "transformer.dropout": 0.0}
    model = create_model("avsegformer-tiny", train_frames=None, **overrides).train()
    batch = random_batch(b=2, t=4, size=S)
    batch.frame_valid[0, 2:] = False  # clip 0: two real frames, then padding stored as black frames
    batch.frames[0, 2:] = 0
    grey = copy.copy(batch)
    grey.frames = batch.frames.clone()
    grey.frames[0, 2:] = 128
    # The official loaders pad after normalising (zero tensors), so what the padded frames hold must not matter;
    # in training the backbone's batch norm pools statistics over every frame, padding included.
    real = batch.frame_valid
    torch.testing.assert_close(model(grey).mask_logits[real], model(batch).mask_logits[real])
