"""EEMC: the released cue fusion, the two Mask2Former seams and the mask head against computations written here from
the released code (GeWu-Lab/Ref-AVS models/avs_model.py, models/local/mask2former/*), the trainable parts, the loss,
and the paper preset's size."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from avseg.data.types import random_batch
from avseg.errors import UsageError
from avseg.models import create_model, get_entry
from avseg.models.eemc import EEMC, RELEASED_TRAINABLE, CueFusion, CueFusionConfig, cached_memory

TEXTS = ["the guitar on the left", "the dog barking"]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return create_model("eemc-tiny").eval()


def released_memory(feat_mm: torch.Tensor, beta: float) -> torch.Tensor:
    """process_with_cached_memory: sequence-first ``(N, B, D)``, a cumulative mean over the sequence."""
    feat_beta = feat_mm * (beta + 1)
    cached = torch.cumsum(feat_mm, dim=0)
    return feat_beta - cached / torch.arange(1, feat_mm.shape[0] + 1).view(-1, 1, 1)


def test_cached_memory_is_each_token_doubled_minus_the_mean_up_to_it():
    x = torch.randn(2, 7, 5)
    loop = torch.stack([2 * x[:, i] - x[:, : i + 1].mean(dim=1) for i in range(7)], dim=1)
    torch.testing.assert_close(cached_memory(x, 1.0), loop)
    torch.testing.assert_close(cached_memory(x, 0.5), released_memory(x.transpose(0, 1), 0.5).transpose(0, 1))


def sequence_first(attn: nn.MultiheadAttention) -> nn.MultiheadAttention:
    """The same weights in a sequence-first attention, as the released code builds them."""
    plain = nn.MultiheadAttention(attn.embed_dim, attn.num_heads)
    plain.load_state_dict(attn.state_dict())
    return plain


def released_prompts(fusion, feat_aud, feat_text, encoded, bsz, frame_n):
    """REFAVS_Model_Base.forward from the projections to prompt_proj, on the released shapes and views."""
    dim = fusion.config.dim
    grid = encoded.shape[-1] * encoded.shape[-2]
    mha_a_t, mha_v_t, mha_mm = (
        sequence_first(m) for m in (fusion.attn_audio_text, fusion.attn_visual_text, fusion.attn_multimodal)
    )
    feat_aud = fusion.audio_proj(feat_aud).view(bsz, feat_aud.shape[-2], dim)
    feat_text = fusion.text_proj(feat_text).view(bsz, feat_text.shape[-2], dim)
    feat_vis = encoded.view(bsz, dim, grid, frame_n).view(bsz, -1, dim)
    t_a = torch.concat((feat_aud, feat_text), dim=1).permute(1, 0, 2)
    t_v = torch.concat((feat_vis, feat_text), dim=1).permute(1, 0, 2)
    t_a, _ = mha_a_t(t_a, t_a, t_a)
    t_v, _ = mha_v_t(t_v, t_v, t_v)
    part_a, part_t_a = t_a[: feat_aud.shape[1]], t_a[feat_aud.shape[1] :]
    part_v, part_t_v = t_v[: feat_vis.shape[1]], t_v[feat_vis.shape[1] :]
    cues_a = released_memory(part_a, 1).permute(1, 0, 2)
    cues_v = released_memory(part_v, 1).permute(1, 0, 2)
    cues_t = (feat_text + part_t_a.permute(1, 0, 2) + part_t_v.permute(1, 0, 2)) / torch.tensor(3.0)
    tag_a = torch.full([bsz, 1, dim], 0)
    tag_v = torch.full([bsz, 1, dim], 1)
    cues_v = cues_v.view(bsz, frame_n, grid, dim)
    out = []
    for f in range(frame_n):
        cues_mm = torch.concat([cues_a, tag_a, cues_v[:, f], tag_v, cues_t], dim=1)
        cues_mm, _ = mha_mm(cues_mm, cues_mm, cues_mm)
        out.append(cues_mm)
    out = torch.stack(out).permute(1, 0, 2, 3).contiguous().view(bsz * frame_n, out[0].shape[-2], dim)
    return fusion.prompt_proj(out)


def test_the_released_fusion_is_reproduced_view_for_view(tiny):
    torch.manual_seed(1)
    b, t, a, n_text, d = 3, 4, 10, 25, tiny.config.fusion.dim
    audio, text = torch.randn(b, a, 128), torch.randn(b, n_text, tiny.text_encoder.module.hidden_size)
    encoded = torch.randn(b * t, d, 2, 2)  # the last Swin stage of every frame, b-major
    with torch.no_grad():
        out = tiny.fusion(audio, text, tiny.visual_tokens(encoded, b))
        expected = released_prompts(tiny.fusion, audio, text, encoded, b, t)
    assert out.prompts.shape == (b, t, a + 1 + 4 + 1 + n_text, tiny.mask2former.hidden_size)
    torch.testing.assert_close(out.prompts.flatten(0, 1), expected, rtol=1e-4, atol=1e-5)


def test_the_token_sequence_is_audio_tag_frame_tag_text(tiny):
    torch.manual_seed(2)
    b, t, a, n_text, g, d = 2, 3, 5, 6, 4, tiny.config.fusion.dim
    audio, text = torch.randn(b, a, 128), torch.randn(b, n_text, tiny.text_encoder.module.hidden_size)
    visual = torch.randn(b, t, g, d)
    fusion = tiny.fusion
    with torch.no_grad():
        tokens = fusion(audio, text, visual).tokens  # (B, T, N, D)
        pa, pt = fusion.audio_proj(audio), fusion.text_proj(text)
        at = fusion.attn_audio_text(*(torch.cat([pa, pt], 1),) * 3)[0]
        vt = fusion.attn_visual_text(*(torch.cat([visual.flatten(1, 2), pt], 1),) * 3)[0]
    cues_v = cached_memory(vt[:, : t * g], 1.0).view(b, t, g, d)
    for f in range(t):
        torch.testing.assert_close(tokens[:, f, :a], cached_memory(at[:, :a], 1.0))
        assert (tokens[:, f, a] == 0).all() and (tokens[:, f, a + 1 + g] == 1).all()
        torch.testing.assert_close(tokens[:, f, a + 1 : a + 1 + g], cues_v[:, f])
        torch.testing.assert_close(tokens[:, f, a + 2 + g :], (pt + at[:, a:] + vt[:, t * g :]) / 3)


def test_the_released_layout_mixes_clips_and_the_corrected_one_does_not(tiny):
    torch.manual_seed(0)
    d = 128
    audio, text, visual = torch.randn(2, 3, 128), torch.randn(2, 4, 384), torch.randn(2, 2, 4, d)
    other = visual.clone()
    other[1] += 1.0  # only the second clip changes
    for layout in ("released", "corrected"):
        fusion = CueFusion(
            CueFusionConfig(dim=d, heads=8, hidden=256, token_layout=layout), audio_dim=128, text_dim=384, prompt_dim=32
        ).eval()
        with torch.no_grad():
            first = fusion(audio, text, visual).prompts[0]
            again = fusion(audio, text, other).prompts[0]
        assert torch.equal(first, again) == (layout == "corrected"), layout
    encoded = torch.arange(2 * 2 * d * 4, dtype=torch.float32).view(4, d, 2, 2)  # (B*T, D, g, g)
    chunks = tiny.visual_tokens(encoded, 2)  # the preset's released layout
    torch.testing.assert_close(chunks[1, 0, 0], encoded[2].flatten()[:d])  # D consecutive channel-major values
    tiny.config.fusion.token_layout = "corrected"
    try:
        spatial = tiny.visual_tokens(encoded, 2)
    finally:
        tiny.config.fusion.token_layout = "released"
    torch.testing.assert_close(spatial[1, 0, 3], encoded[2, :, 1, 1])  # clip 1, frame 0, bottom-right position


def released_ref_avs_attn(module, target, source):
    """REF_AVS_Transformer.forward (models/local/mask2former/refavs_transformer.py)."""
    seq_len_tgt, bsz, dim = target.size()
    heads = module.heads
    head_dim = dim // heads
    q = module.q_proj(target.permute(1, 0, 2)).view(bsz, seq_len_tgt, heads, head_dim).permute(0, 2, 1, 3)
    k = module.k_proj(source).view(bsz, source.shape[1], heads, head_dim).permute(0, 2, 3, 1)
    v = module.v_proj(source).view(bsz, source.shape[1], heads, head_dim).permute(0, 2, 1, 3)
    weights = F.softmax(torch.matmul(q, k) * head_dim**-0.5, dim=-1)
    attended = torch.matmul(weights, v).permute(0, 2, 1, 3).reshape(bsz, seq_len_tgt, -1)
    output = torch.sigmoid(module.attn_gate) * module.out_proj(attended)
    pool = torch.sigmoid(module.pool_gate) * torch.mean(source, dim=1).view(1, bsz, dim)
    return target + output.permute(1, 0, 2) + pool


def test_the_decoder_queries_read_the_prompts_and_the_pixel_decoder_is_adapted(tiny):
    m2f = tiny.mask2former
    transformer = m2f.model.model.transformer_module
    seen: dict[str, list] = {"queries": [], "adapted": [], "projected": []}
    hooks = [
        transformer.decoder.register_forward_pre_hook(
            lambda mod, args, kwargs: seen["queries"].append(kwargs["inputs_embeds"]), with_kwargs=True
        )
    ]
    attn = m2f.model.model.pixel_level_module.decoder.encoder.layers[0].self_attn
    hooks.append(attn.register_forward_hook(lambda mod, args, out: seen["adapted"].append(out[0])))
    hooks.append(attn.output_proj.register_forward_hook(lambda mod, args, out: seen["projected"].append(out)))
    images, prompts = torch.randn(2, 3, 64, 64), torch.randn(2, 7, m2f.hidden_size)
    with torch.no_grad():
        pixel = m2f.encode(images)
        m2f.decode(pixel, prompts, 0)
        m2f.decode(pixel, None, 0)
    for hook in hooks:
        hook.remove()
    plain = transformer.queries_features.weight[:, None].expand(-1, 2, -1)  # (Q, N, C)
    with torch.no_grad():
        torch.testing.assert_close(seen["queries"][0], released_ref_avs_attn(transformer.ref_avs_attn, plain, prompts))
        torch.testing.assert_close(seen["adapted"][0], attn.avs_adapt(seen["projected"][0]))
    torch.testing.assert_close(seen["queries"][1], plain)  # without prompts, Mask2Former's own queries


def test_the_mask_is_the_released_binary_post_processing(tiny):
    """Without prompts, the map equals Mask2FormerImageProcessorForRefAVS.post_process_semantic_segmentation (the
    AVS_BINARY branch) on transformers' own forward."""
    m2f = tiny.mask2former
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = m2f.decode(m2f.encode(images), None, 0)
        outputs = m2f.model(pixel_values=images)
    q = outputs.class_queries_logits.shape[1]
    pair = torch.concat(
        [outputs.class_queries_logits[:, :, 0].view(2, q, 1), outputs.class_queries_logits[:, :, -1].view(2, q, 1)],
        dim=-1,
    )
    masks = F.interpolate(outputs.masks_queries_logits, size=(64, 64), mode="bilinear", align_corners=False)
    segmentation = torch.einsum("bqc, bqhw -> bchw", pair.softmax(dim=-1)[..., :-1], masks)
    resized = F.interpolate(segmentation, size=(256, 256), mode="bilinear", align_corners=False)
    mine = F.interpolate(ours[:, None], size=(64, 64), mode="bilinear", align_corners=False)
    mine = F.interpolate(mine, size=(256, 256), mode="bilinear", align_corners=False)
    torch.testing.assert_close(mine, resized, rtol=1e-4, atol=1e-5)


def test_forward_shapes_and_bce_on_loss_size_maps(tiny):
    batch = random_batch(1, 2, 256, texts=TEXTS[:1])
    tiny.config.loss_size = 256  # the paper preset's maps (the tiny preset compares 64-px ones)
    try:
        tiny.train()
        out = tiny(batch)
        losses = tiny.losses(batch, out)
        small = random_batch(1, 2, 32, texts=TEXTS[:1], masks="square")
        resized = tiny.losses(small, tiny(small))
    finally:
        tiny.config.loss_size = 64
        tiny.eval()
    assert out.mask_logits.shape == (1, 2, 1, 256, 256)
    assert out.aux["loss_logits"].shape == (1, 2, 256, 256)
    assert out.aux["prompts"].shape == (1, 2, 2 + 1 + 4 + 1 + 16, 32)  # audio, tag, 2x2 frame, tag, 16 text tokens
    expected = F.binary_cross_entropy_with_logits(out.aux["loss_logits"], batch.masks.float())
    torch.testing.assert_close(losses["loss"], expected)
    torch.testing.assert_close(losses["bce"], expected)
    assert torch.isfinite(resized["loss"])  # a 32-px ground truth is resized to the 256-px maps


def test_only_the_released_parts_train_and_the_attentions_stay_frozen(tiny):
    cfg = get_entry("eemc-refavs").config(pretrained=False)
    assert (
        cfg.trainable == RELEASED_TRAINABLE == ("audio_proj", "text_proj", "prompt_proj", "avs_adapt", "ref_avs_attn")
    )
    with torch.device("meta"):
        net = EEMC(cfg)
    trained = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trained and all(any(f in n for f in RELEASED_TRAINABLE) for n in trained)
    assert sum("avs_adapt" in n for n in trained) == 6 * 4  # two linears per pixel-decoder layer
    assert not any(n.startswith(("fusion.attn_", "text_encoder.", "audio_encoder.")) for n in trained)
    assert not any("class_predictor" in n or ".swin." in n for n in trained)
    assert not any(p.requires_grad for n, p in tiny.named_parameters() if n.startswith("fusion.attn_"))
    assert tiny.text_encoder.module.config.padding == "max_tokens"
    tiny.train()
    assert not tiny.mask2former.training  # Swin's stochastic depth stays off
    tiny.eval()


def test_every_clip_needs_an_expression(tiny):
    with pytest.raises(UsageError, match="referring expression"):
        tiny(random_batch(2, 2, 64, texts=[TEXTS[0], None]))


def test_the_paper_preset_builds_on_meta_with_the_released_sizes():
    cfg = get_entry("eemc-refavs").config(pretrained=False)
    assert cfg.mask2former.weights == "facebook/mask2former-swin-base-ade-semantic"
    assert (cfg.mask2former.image_size, cfg.loss_size, cfg.fusion.dim, cfg.fusion.heads) == (384, 256, 1024, 8)
    assert (cfg.text.encoder.source, cfg.text.encoder.max_tokens, cfg.text.encoder.padding) == (
        "distilbert/distilroberta-base",
        25,
        "max_tokens",
    )
    recipe = cfg.recipe
    assert (recipe.optim.name, recipe.optim.lr, recipe.batch_size, recipe.epochs) == ("adamw", 1e-4, 2, 50)
    assert recipe.schedule.kind == "constant" and cfg.audio.encoder == "vggish"
    with torch.device("meta"):
        net = EEMC(cfg)

    def count(module: nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    lin = lambda i, o, bias=True: i * o + (o if bias else 0)  # noqa: E731
    ln = lambda c: 2 * c  # noqa: E731
    # The released REFAVS_Model_Base: three Linear-ReLU-Linear projections and three MultiheadAttention(1024, 8).
    fusion = lin(128, 2048) + lin(2048, 1024) + lin(768, 2048) + lin(2048, 1024) + lin(1024, 2048) + lin(2048, 256)
    fusion += 3 * (lin(1024, 3 * 1024) + lin(1024, 1024))
    assert count(net.fusion) == fusion == 21_254_400
    # model_m2f.py: avs_adapt Linear(256, 64)-ReLU-Linear(64, 256) in each of the 6 deformable layers;
    # refavs_transformer.py: four Linear(256, 256) and two gates.
    adapters, query_attn = 6 * (lin(256, 64) + lin(64, 256)), 4 * lin(256, 256) + 2
    # Swin-B (embed 128, depths 2-2-18-2, heads 4-8-16-32, 12x12 windows: 23^2 relative-bias rows per head).
    block = lambda c, h: 2 * ln(c) + lin(c, 3 * c) + lin(c, c) + 23 * 23 * h + lin(c, 4 * c) + lin(4 * c, c)  # noqa: E731
    swin = lin(3 * 16, 128) + ln(128)  # 4x4 patch embedding and its norm
    for c, h, depth in ((128, 4, 2), (256, 8, 2), (512, 16, 18), (1024, 32, 2)):
        swin += depth * block(c, h) + ln(c)  # blocks and the stage's output norm
        swin += ln(4 * c) + lin(4 * c, 2 * c, bias=False) if c < 1024 else 0  # patch merging
    swin += ln(1024)  # transformers' SwinModel keeps its final norm inside the backbone (unused there)
    deform_layer = lin(256, 8 * 3 * 4 * 2) + lin(256, 8 * 3 * 4) + 2 * lin(256, 256) + lin(256, 1024) + lin(1024, 256)
    pixel_decoder = sum(lin(c, 256) + 512 for c in (1024, 512, 256)) + 3 * 256  # input projections + GN, levels
    pixel_decoder += 6 * (deform_layer + 2 * ln(256)) + lin(256, 256)  # encoder, mask projection
    pixel_decoder += lin(128, 256, bias=False) + 512 + 9 * lin(256, 256, bias=False) + 512  # FPN adapter and layer
    decoder_layer = 2 * (lin(256, 3 * 256) + lin(256, 256)) + lin(256, 2048) + lin(2048, 256) + 3 * ln(256)
    transformer = 2 * 100 * 256 + 3 * 256 + 9 * decoder_layer + ln(256) + 3 * lin(256, 256)  # queries, 9 layers
    mask2former = swin + pixel_decoder + transformer + lin(256, 151)  # + the ADE20K classifier (150 + no object)
    assert count(net.mask2former) == mask2former + adapters + query_attn == 107_385_937
    assert count(net.text_encoder) == 82_118_400  # DistilRoBERTa-base
    assert count(net.audio_encoder) == 72_141_184  # VGGish
    trained = fusion - 3 * (lin(1024, 3 * 1024) + lin(1024, 1024)) + adapters + query_attn
    assert net.num_parameters(trainable_only=True) == trained == 9_120_898
    assert net.num_parameters() == 282_899_921
