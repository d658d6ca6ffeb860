"""Tests of the AuralFuser and AudioCon (avseg.models.auralsam2_fuser), without SAM2."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from avseg.models.auralsam2_fuser import (
    AuralFuser,
    CrossModalFusion,
    FuserConfig,
    ProjectorConfig,
    SinePositionEncoding2d,
    audiocon_loss,
    sample_audiocon_pixels,
    sine_position_encoding_1d,
    supervised_info_nce,
)


def tiny_fuser_config(**changes) -> FuserConfig:
    options = dict(dim=16, depths=(1, 2, 1), audio_depth=1, heads=2, sr_ratio=2, audio_dim=12, dropout=0.0)
    options.update(changes)
    return FuserConfig(**options)


def pyramid(n: int, dim: int, size: int = 32, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, dim, size // s, size // s, generator=g) for s in (1, 2, 4)]


def test_sine_encodings_match_the_closed_form():
    pe = SinePositionEncoding2d(8)(3, 4, torch.device("cpu"))  # (12, 8): 4 channels for y, 4 for x
    assert pe.shape == (12, 8)
    for y in range(3):
        for x in range(4):
            ny, nx = (y + 1) / 3 * 2 * math.pi, (x + 1) / 4 * 2 * math.pi
            expected = []
            for v in (ny, nx):
                for k in range(4):
                    angle = v / 10000 ** (2 * (k // 2) / 4)
                    expected.append(math.sin(angle) if k % 2 == 0 else math.cos(angle))
            torch.testing.assert_close(pe[y * 4 + x], torch.tensor(expected), atol=1e-5, rtol=0)
    one = sine_position_encoding_1d(1, 6)
    torch.testing.assert_close(one, torch.tensor([[0.0, 1.0, 0.0, 1.0, 0.0, 1.0]]))  # the released constant
    three = sine_position_encoding_1d(3, 4)
    assert three[2, 0].item() == pytest.approx(math.sin(2.0)) and three[2, 3].item() == pytest.approx(math.cos(0.02))


def test_config_validation_names_the_bad_value():
    with pytest.raises(ValueError, match=r"divisible by fuser\.heads"):
        FuserConfig(dim=30, heads=4)
    with pytest.raises(ValueError, match="fusion_layout"):
        FuserConfig(fusion_layout="rows")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fusion_affinity"):
        FuserConfig(fusion_affinity="cosine")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="per_position"):
        FuserConfig(fusion_layout="released", fusion_affinity="softmax")
    with pytest.raises(ValueError, match=r"projector\.layers"):
        ProjectorConfig(layers=0)


def test_fuser_shapes_text_tokens_and_grid():
    torch.manual_seed(0)
    cfg = tiny_fuser_config(text_dim=10, text_hidden=20)
    fuser = AuralFuser(cfg, ProjectorConfig(layers=3, dim=8)).eval()
    b, t = 2, 3
    out = fuser(
        pyramid(b * t, 16),
        torch.randn(b, t, 12),
        frame_valid=torch.ones(b, t, dtype=torch.bool),
        text=torch.randn(b, 5, 10),
        text_valid=torch.ones(b, 5, dtype=torch.bool),
    )
    assert out.grid == (8, 8)
    assert [d.shape for d in out.dense] == [(b * t, 64, 16)] * 3
    assert [s.shape for s in out.sparse] == [(b, t, 16)] * 3
    assert [p.shape for p in out.pixel_embeddings] == [(b * t, 8, 8, 8)] * 3
    torch.testing.assert_close(out.pixel_embeddings[1].norm(dim=1), torch.ones(b * t, 8, 8))
    torch.testing.assert_close(out.audio_embeddings[2].norm(dim=-1), torch.ones(b, t))
    with pytest.raises(ValueError, match="features"):
        fuser(pyramid(b * t + 1, 16), torch.randn(b, t, 12), frame_valid=torch.ones(b, t, dtype=torch.bool))


def test_text_changes_the_audio_prompts():
    torch.manual_seed(0)
    fuser = AuralFuser(tiny_fuser_config(text_dim=10, text_hidden=20)).eval()
    for m in fuser.fusion:  # make the cross-modal residuals non-zero, as after training
        for bn in (m.frame_out[1], m.audio_out[1]):
            torch.nn.init.ones_(bn.weight)
    feats, audio, valid = pyramid(2, 16), torch.randn(1, 2, 12), torch.ones(1, 2, dtype=torch.bool)
    a = fuser(feats, audio, frame_valid=valid, text=torch.randn(1, 4, 10), text_valid=torch.ones(1, 4, dtype=bool))
    b = fuser(feats, audio, frame_valid=valid, text=torch.randn(1, 4, 10), text_valid=torch.ones(1, 4, dtype=bool))
    assert not torch.allclose(a.sparse[2], b.sparse[2]) and not torch.allclose(a.dense[2], b.dense[2])


def test_fusion_is_layer_norm_at_initialisation():
    fusion = CrossModalFusion(dim=8, inner_dim=4, layout="per_position").train()
    x, audio = torch.randn(6, 5, 8), torch.randn(2, 4, 8)
    x_out, a_out, res = fusion(
        x, audio, frame_valid=torch.ones(2, 3, dtype=torch.bool), token_valid=torch.ones(2, 4, dtype=torch.bool)
    )
    torch.testing.assert_close(x_out, F.layer_norm(x, (8,)))
    torch.testing.assert_close(a_out, F.layer_norm(fusion.audio_align(audio), (8,)))
    assert res.abs().max().item() == 0.0


def test_residual_init_lets_the_expression_reach_the_visual_tokens_from_the_start():
    torch.manual_seed(0)
    feats, audio, valid = pyramid(2, 16), torch.randn(1, 2, 12), torch.ones(1, 2, dtype=torch.bool)
    texts = [torch.randn(1, 4, 10, generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    text_valid = torch.ones(1, 4, dtype=torch.bool)
    for init, changes in ((0.0, False), (1.0, True)):
        torch.manual_seed(0)
        fuser = AuralFuser(tiny_fuser_config(text_dim=10, text_hidden=20, residual_init=init)).train()
        assert all(m.frame_out[1].weight.eq(init).all() for m in fuser.fusion)
        a, b = (fuser(feats, audio, frame_valid=valid, text=t, text_valid=text_valid) for t in texts)
        assert (not torch.allclose(a.dense[0], b.dense[0])) is changes
    with pytest.raises(ValueError, match="residual_init"):
        tiny_fuser_config(residual_init=float("nan"))


def _randomise_batch_norms(module: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(3)
    for bn in module.modules():
        if isinstance(bn, torch.nn.BatchNorm1d):
            bn.weight.data = torch.rand(bn.num_features, generator=g) + 0.5
            bn.bias.data = torch.randn(bn.num_features, generator=g)
            bn.running_mean = torch.randn(bn.num_features, generator=g)
            bn.running_var = torch.rand(bn.num_features, generator=g) + 0.5


def test_per_position_fusion_matches_explicit_sums():
    torch.manual_seed(0)
    fusion = CrossModalFusion(dim=6, inner_dim=4, layout="per_position")
    _randomise_batch_norms(fusion)
    fusion.eval()
    t, hw, length = 2, 3, 4
    x, audio = torch.randn(t, hw, 6), torch.randn(1, length, 6)
    ones_f, ones_t = torch.ones(1, t, dtype=torch.bool), torch.ones(1, length, dtype=torch.bool)
    x_out, a_out, _ = fusion(x, audio, frame_valid=ones_f, token_valid=ones_t)
    a = fusion.audio_align(audio[0])  # (L, C)
    positions = x.reshape(t * hw, 6)
    q, k, v = fusion.frame_q(positions), fusion.frame_k(positions), fusion.frame_v(positions)
    qa, ka, va = fusion.audio_q(a), fusion.audio_k(a), fusion.audio_v(a)
    p = t * hw
    frame_rows = []
    for i in range(p):
        y = sum((q[i] @ ka[j]) / p * va[j] for j in range(length))
        frame_rows.append(positions[i] + fusion.frame_out(y[None])[0])
    audio_rows = []
    for j in range(length):
        y = sum((qa[j] @ k[i]) / p * v[i] for i in range(p))
        audio_rows.append(a[j] + fusion.audio_out(y[None])[0])
    expected_x = F.layer_norm(torch.stack(frame_rows), (6,), fusion.frame_norm.weight, fusion.frame_norm.bias)
    expected_a = F.layer_norm(torch.stack(audio_rows), (6,), fusion.audio_norm.weight, fusion.audio_norm.bias)
    torch.testing.assert_close(x_out.reshape(p, 6), expected_x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a_out[0], expected_a, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_softmax_affinity_is_the_papers_attention():
    torch.manual_seed(0)
    fusion = CrossModalFusion(dim=6, inner_dim=4, layout="per_position", affinity="softmax")
    _randomise_batch_norms(fusion)
    fusion.eval()
    t, hw, length = 2, 3, 4
    x, audio = torch.randn(t, hw, 6), torch.randn(1, length, 6)
    ones_f, ones_t = torch.ones(1, t, dtype=torch.bool), torch.ones(1, length, dtype=torch.bool)
    x_out, a_out, _ = fusion(x, audio, frame_valid=ones_f, token_valid=ones_t)
    # Eq. 10 of the paper's supplement, entry by entry: softmax(q·kᵀ/√d)·v with d = 4, one modality's queries over
    # the other's keys.
    a = fusion.audio_align(audio[0])  # (L, C)
    positions = x.reshape(t * hw, 6)
    q, k, v = fusion.frame_q(positions), fusion.frame_k(positions), fusion.frame_v(positions)
    qa, ka, va = fusion.audio_q(a), fusion.audio_k(a), fusion.audio_v(a)
    p = t * hw
    frame_rows = []
    for i in range(p):
        e = [math.exp(float(q[i] @ ka[j]) / 2.0) for j in range(length)]
        y = sum(e[j] / sum(e) * va[j] for j in range(length))
        frame_rows.append(positions[i] + fusion.frame_out(y[None])[0])
    audio_rows = []
    for j in range(length):
        e = [math.exp(float(qa[j] @ k[i]) / 2.0) for i in range(p)]
        y = sum(e[i] / sum(e) * v[i] for i in range(p))
        audio_rows.append(a[j] + fusion.audio_out(y[None])[0])
    expected_x = F.layer_norm(torch.stack(frame_rows), (6,), fusion.frame_norm.weight, fusion.frame_norm.bias)
    expected_a = F.layer_norm(torch.stack(audio_rows), (6,), fusion.audio_norm.weight, fusion.audio_norm.bias)
    torch.testing.assert_close(x_out.reshape(p, 6), expected_x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a_out[0], expected_a, atol=1e-5, rtol=1e-5)
    # The released form (dot products over the number of positions, no softmax) is another function of the same
    # weights.
    fusion.affinity = "dot"
    x_dot, a_dot, _ = fusion(x, audio, frame_valid=ones_f, token_valid=ones_t)
    assert not torch.allclose(x_dot, x_out, atol=1e-3) and not torch.allclose(a_dot, a_out, atol=1e-3)


def _released_fusion_reference(fusion: CrossModalFusion, x: torch.Tensor, audio: torch.Tensor, h: int, w: int):
    """The released ``TPAVIModuleDIY.forward`` for one clip, written from a reading of it with conv layers."""
    inner = fusion.inner

    def conv3d(lin, inp):
        return F.conv3d(inp, lin.weight[:, :, None, None, None], lin.bias)

    def conv1d(lin, inp):
        return F.conv1d(inp, lin.weight[:, :, None], lin.bias)

    frame = x.permute(0, 2, 1).reshape(x.shape[0], x.shape[2], h, w).unsqueeze(2)  # (T, C, 1, h, w)
    aud = conv1d(fusion.audio_align, audio.unsqueeze(-1))  # (L, C, 1)
    t = frame.shape[0]
    q_frame = conv3d(fusion.frame_q, frame).reshape(1, -1, inner)
    k_frame = conv3d(fusion.frame_k, frame).reshape(1, -1, inner)
    v_frame = conv3d(fusion.frame_v, frame).reshape(1, -1, inner)
    q_audio = conv1d(fusion.audio_q, aud).reshape(1, -1, inner)
    k_audio = conv1d(fusion.audio_k, aud).reshape(1, -1, inner)
    v_audio = conv1d(fusion.audio_v, aud).reshape(1, -1, inner)
    f = q_frame @ k_audio.mT
    frame_attn = (f / f.size(1)) @ v_audio
    frame_attn = frame_attn.permute(0, 2, 1).contiguous().view(t, inner, 1, h, w)
    bn3 = fusion.frame_out[1]
    frame_attn = F.batch_norm(
        conv3d(fusion.frame_out[0], frame_attn), bn3.running_mean, bn3.running_var, bn3.weight, bn3.bias, False
    )
    frame = (frame_attn + frame).permute(0, 2, 3, 4, 1)
    frame = fusion.frame_norm(frame).permute(0, 4, 1, 2, 3).squeeze(2).flatten(2).permute(0, 2, 1)
    a = q_audio @ k_frame.mT
    audio_attn = ((a / a.size(-1)) @ v_frame).permute(0, 2, 1).contiguous().view(audio.shape[0], inner).unsqueeze(-1)
    bn1 = fusion.audio_out[1]
    audio_attn = F.batch_norm(
        conv1d(fusion.audio_out[0], audio_attn), bn1.running_mean, bn1.running_var, bn1.weight, bn1.bias, False
    )
    out_audio = fusion.audio_norm((audio_attn + aud).squeeze(-1))
    return frame, out_audio, frame_attn.squeeze(2).flatten(2).transpose(1, 2)


def test_released_layout_reproduces_the_released_block():
    torch.manual_seed(0)
    fusion = CrossModalFusion(dim=8, inner_dim=4, layout="released")
    _randomise_batch_norms(fusion)
    fusion.eval()
    t, h, w, length = 3, 2, 4, 5
    x, audio = torch.randn(t, h * w, 8), torch.randn(length, 8)
    x_out, a_out, res = fusion(
        x,
        audio[None],
        frame_valid=torch.ones(1, t, dtype=torch.bool),
        token_valid=torch.ones(1, length, dtype=torch.bool),
    )
    ref_x, ref_a, ref_res = _released_fusion_reference(fusion, x, audio, h, w)
    torch.testing.assert_close(x_out, ref_x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a_out[0], ref_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(res, ref_res, atol=1e-5, rtol=1e-5)
    # The released layout is not the per-position computation: the two disagree on the same weights.
    fusion.layout = "per_position"
    x_pp, _, _ = fusion(
        x, audio[None], frame_valid=torch.ones(1, t, dtype=torch.bool), token_valid=torch.ones(1, length, dtype=bool)
    )
    assert not torch.allclose(x_pp, x_out, atol=1e-3)


@pytest.mark.parametrize("affinity", ["dot", "softmax"])
def _sam2_sine_encoding(c: int, h: int, w: int) -> torch.Tensor:
    """SAM2's ``PositionEmbeddingSine(num_pos_feats=c, normalize=True)`` of an ``h × w`` map → ``(h*w, c)``."""
    half = c // 2
    y = torch.ones(h, w).cumsum(0)
    x = torch.ones(h, w).cumsum(1)
    y = y / (y[-1:, :] + 1e-6) * 2 * math.pi
    x = x / (x[:, -1:] + 1e-6) * 2 * math.pi
    dim_t = 10000 ** (2 * torch.div(torch.arange(half), 2, rounding_mode="floor") / half)
    px, py = x[..., None] / dim_t, y[..., None] / dim_t
    px = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), dim=3).flatten(2)
    py = torch.stack((py[..., 0::2].sin(), py[..., 1::2].cos()), dim=3).flatten(2)
    return torch.cat((py, px), dim=2).reshape(h * w, c)


def _heads(lin: torch.nn.Linear, x: torch.Tensor, heads: int) -> torch.Tensor:
    n, m, c = x.shape
    return F.linear(x, lin.weight, lin.bias).reshape(n, m, heads, c // heads).permute(0, 2, 1, 3)


def _released_attention(attn, x: torch.Tensor, kv_source: torch.Tensor, heads: int) -> torch.Tensor:
    """``Attention`` / ``OneDAttention``: softmax(q kᵀ · d^-1/2) v over all keys, then ``proj``."""
    n, m, c = x.shape
    q = _heads(attn.q, x, heads)
    kv = F.linear(kv_source, attn.kv.weight, attn.kv.bias).reshape(n, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
    weights = (q @ kv[0].transpose(-2, -1) * (c // heads) ** -0.5).softmax(dim=-1)
    return attn.proj((weights @ kv[1]).transpose(1, 2).reshape(n, m, c))


def _released_pvt_block(block, x: torch.Tensor, h: int, w: int, heads: int) -> torch.Tensor:
    """The released ``Block`` (PVT-v2): spatially reduced attention, then ``fc1 → DWConv → GELU → fc2``."""
    n, _, c = x.shape
    y = block.norm1(x)
    src = block.attn.norm(block.attn.sr(y.permute(0, 2, 1).reshape(n, c, h, w)).reshape(n, c, -1).permute(0, 2, 1))
    x = x + _released_attention(block.attn, y, src, heads)
    y = block.mlp.fc1(block.norm2(x))
    y = block.mlp.dwconv(y.transpose(1, 2).reshape(n, -1, h, w)).flatten(2).transpose(1, 2)
    return x + block.mlp.fc2(F.gelu(y))


def _released_token_block(block, d: torch.Tensor, heads: int) -> torch.Tensor:
    """The released ``OneDBlock`` on a clip's ``(L, C)`` tokens (unsqueezed to one batch): no mask, no dwconv."""
    x = d[None]
    y = block.norm1(x)
    x = x + _released_attention(block.attn, y, y, heads)
    return (x + block.mlp.fc2(F.gelu(block.mlp.fc1(block.norm2(x)))))[0]


def _released_refavs_fuser_reference(fuser, fpn, audio, text_features, heads):
    """The released Ref-AVS ``AuralFuser.forward`` for one clip, written from a reading of it (``aural_fuser.py``),
    on avseg's module weights: ``d = cat([audio (T, C), text_proj(text).squeeze()])`` (T + 25 tokens), the constant
    1-D encoding of position 0 on every token, three levels of patch embedding, smoothing, sine encoding, PVT and
    token blocks and the released fusion. Returns the fused maps ``(T, h*w, C)`` and the first ``T`` rows of ``d``
    per level (what the released decoder reads, ``av_a_feats[i][frame]``)."""
    t, c = audio.shape
    d = torch.cat([audio, fuser.text_proj(text_features).squeeze()])  # (T + 25, C)
    fix = torch.zeros(c)
    fix[1::2] = 1.0  # positionalencoding1d(C, 1): sin(0), cos(0), ...
    feats, dense, sparse = None, [], []
    for i in range(3):
        x = fuser.patch_embeds[i](fpn[i])
        h, w = x.shape[-2:]
        x_pos = _sam2_sine_encoding(c, h, w)[None]
        x = x.flatten(2).permute(0, 2, 1)
        if i > 0:
            x = x + feats
            x = fuser.smooth_convs[i - 1](x.permute(0, 2, 1).reshape(t, c, h, w)).flatten(2).permute(0, 2, 1)
        x = x + x_pos
        d = d + fix
        for block in fuser.visual_blocks[i]:
            x = _released_pvt_block(block, x, h, w, heads)
        for block in fuser.audio_blocks[i]:
            d = _released_token_block(block, d, heads)
        x, d, _ = _released_fusion_reference(fuser.fusion[i], x + x_pos, d + fix, h, w)
        feats = x
        dense.append(x)
        sparse.append(d[:t])
    return dense, sparse


@torch.no_grad()
def test_released_refavs_fuser_with_25_padded_text_tokens_matches_the_released_forward():
    from avseg.layers.text import MINILM_PACKAGE, TextEncoder, TextEncoderConfig

    torch.manual_seed(0)
    heads, t = 2, 3
    cfg = tiny_fuser_config(audio_dim=16, text_dim=8, text_hidden=20, fusion_layout="released", residual_init=1.0)
    fuser = AuralFuser(cfg).eval()
    _randomise_batch_norms(fuser)
    bert = {"model_type": "bert", "vocab_size": 30522, "hidden_size": 8, "num_hidden_layers": 1}
    bert.update(num_attention_heads=2, intermediate_size=16)
    text_config = TextEncoderConfig(source=MINILM_PACKAGE, pretrained=False, hf_config=bert, padding="max_tokens")
    encoder = TextEncoder(text_config, pretrained=False).eval()
    texts = ["the dog", "the woman on the left who sings while the man plays the piano"]
    fpn = pyramid(2 * t, 16, seed=2)
    audio = torch.randn(2, t, 16)
    tokens, valid = encoder(texts)  # (2, 25, 8): both expressions padded to 25, as released
    assert tokens.shape[1] == 25 and not valid.all()
    out = fuser(fpn, audio, frame_valid=torch.ones(2, t, dtype=torch.bool), text=tokens, text_valid=valid)
    for clip, text in enumerate(texts):
        # The released AVmodel._encode_text: one expression per forward, padded and cut to 25, with the mask.
        enc = encoder.tokenizer(*[text], max_length=25, padding="max_length", truncation=True, return_tensors="pt")
        text_features = encoder.model(**enc).last_hidden_state  # (1, 25, 8)
        frames = slice(clip * t, (clip + 1) * t)
        dense, sparse = _released_refavs_fuser_reference(
            fuser, [f[frames] for f in fpn], audio[clip], text_features, heads
        )
        for level in range(3):
            torch.testing.assert_close(out.dense[level][frames], dense[level], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(out.sparse[level][clip], sparse[level], atol=1e-4, rtol=1e-4)
    # Padded only to the batch's longest expression, the short expression alone gets 4 tokens instead of 25: the
    # released layout reads padding unmasked, so its output would depend on the expressions batched with it.
    encoder.config.padding = "longest"
    short, short_valid = encoder(texts[:1])
    alone = fuser(
        [f[:t] for f in fpn],
        audio[:1],
        frame_valid=torch.ones(1, t, dtype=torch.bool),
        text=short,
        text_valid=short_valid,
    )
    assert not torch.allclose(alone.dense[2], out.dense[2][:t], atol=1e-3)


@pytest.mark.parametrize("affinity", ["dot", "softmax"])
def test_padded_frames_and_tokens_do_not_change_real_outputs(affinity):
    torch.manual_seed(0)
    fuser = AuralFuser(tiny_fuser_config(text_dim=6, text_hidden=8, fusion_affinity=affinity)).eval()
    for m in fuser.fusion:
        for bn in (m.frame_out[1], m.audio_out[1]):
            torch.nn.init.ones_(bn.weight)
    feats, audio = pyramid(3, 16, seed=1), torch.randn(1, 3, 12)
    text = torch.randn(1, 4, 6)
    full = fuser(
        [f[:2] for f in feats],
        audio[:, :2],
        frame_valid=torch.ones(1, 2, dtype=torch.bool),
        text=text[:, :3],
        text_valid=torch.ones(1, 3, dtype=torch.bool),
    )
    padded = fuser(
        feats,
        audio,
        frame_valid=torch.tensor([[True, True, False]]),
        text=text,
        text_valid=torch.tensor([[True, True, True, False]]),
    )
    torch.testing.assert_close(padded.dense[2][:2], full.dense[2], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded.sparse[2][:, :2], full.sparse[2], atol=1e-5, rtol=1e-5)


def test_projector_parameter_names_follow_the_released_heads():
    fuser = AuralFuser(tiny_fuser_config(), ProjectorConfig(layers=2, dim=8, norm="layer"))
    names = {k for k in fuser.state_dict() if k.startswith("visual_projector.")}
    assert names == {f"visual_projector.layers.{i}.{p}" for i in (0, 2, 3) for p in ("weight", "bias")}
    fuser = AuralFuser(tiny_fuser_config(), ProjectorConfig(layers=2, dim=8, norm="batch", source="fused"))
    names = {k for k in fuser.state_dict() if k.startswith("audio_projector.")}
    assert "audio_projector.layers.1.running_mean" in names and "audio_projector.layers.2.weight" in names


def test_pixel_sampling_balances_hard_and_easy_samples():
    target = torch.zeros(100, dtype=torch.long)
    target[:30] = 1
    prediction = target.clone()
    prediction[:5] = 0  # 5 hard foreground pixels, 25 easy
    prediction[30:70] = 1  # 40 hard background pixels, 30 easy
    idx, labels = sample_audiocon_pixels(target, prediction, limit=8, generator=torch.Generator().manual_seed(0))
    fg, bg = idx[labels == 1], idx[labels == 0]
    assert (target[idx] == labels).all()
    assert len(fg) == 16 and (fg < 5).sum() == 5  # all 5 hard ones, topped up with 11 easy ones
    assert len(bg) == 16 and ((bg >= 30) & (bg < 70)).sum() == 8  # 8 hard, 8 easy
    assert len(set(idx.tolist())) == len(idx)
    idx, labels = sample_audiocon_pixels(torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long), 8)
    assert sorted(idx.tolist()) == [0, 1, 2] and labels.tolist() == [0, 0, 0]


def test_supervised_info_nce_matches_a_naive_loop():
    torch.manual_seed(0)
    anchors = F.normalize(torch.randn(6, 4), dim=1)
    labels = torch.tensor([1, 1, 0, 0, 1, 2])
    protos = F.normalize(torch.randn(3, 4), dim=1)
    proto_labels = torch.tensor([1, 0, 1])
    tau = 0.1
    contrast = torch.cat([anchors, protos])
    contrast_labels = torch.cat([labels, proto_labels])
    per_anchor = []
    for i in range(6):
        s = contrast @ anchors[i] / tau
        neg = sum(torch.exp(s[j]) for j in range(9) if contrast_labels[j] != labels[i])
        terms = [-(s[j] - torch.log(torch.exp(s[j]) + neg)) for j in range(6, 9) if proto_labels[j - 6] == labels[i]]
        per_anchor.append(sum(terms) / len(terms) if terms else torch.tensor(0.0))
    expected = torch.stack(per_anchor).mean()
    torch.testing.assert_close(supervised_info_nce(anchors, labels, protos, proto_labels, tau), expected)


def test_audiocon_prefers_pixels_that_agree_with_their_audio():
    torch.manual_seed(0)
    b, t, h, w, p = 1, 2, 4, 4, 8
    target = torch.zeros(b, t, 16, 16, dtype=torch.long)
    target[:, :, :8, :8] = 1
    audio = F.normalize(torch.randn(b, t, p), dim=-1)
    background = F.normalize(torch.randn(p), dim=0)
    fg = F.interpolate(target.flatten(0, 1)[:, None].float(), size=(h, w), mode="nearest")  # (T, 1, h, w)
    aligned = fg * audio[0][:, :, None, None] + (1 - fg) * background[None, :, None, None]  # (T, P, h, w)
    scrambled = F.normalize(torch.randn(t, p, h, w), dim=1)
    labelled = torch.ones(b, t, dtype=torch.bool)
    pred = torch.randn(b, t, 8, 8)
    good = audiocon_loss([aligned] * 3, [audio] * 3, target, pred, labelled=labelled, sample_limit=4)
    bad = audiocon_loss([scrambled] * 3, [audio] * 3, target, pred, labelled=labelled, sample_limit=4)
    assert good.item() < bad.item()
    none = audiocon_loss([scrambled], [audio], target, pred, labelled=torch.zeros(b, t, dtype=torch.bool))
    assert none.item() == 0.0


def test_audiocon_gradients_reach_the_fuser():
    torch.manual_seed(0)
    fuser = AuralFuser(tiny_fuser_config(), ProjectorConfig(layers=2, dim=8)).train()
    b, t = 1, 2
    out = fuser(pyramid(b * t, 16), torch.randn(b, t, 12), frame_valid=torch.ones(b, t, dtype=torch.bool))
    target = torch.zeros(b, t, 32, 32, dtype=torch.long)
    target[..., 4:20, 4:20] = 1
    loss = audiocon_loss(
        out.pixel_embeddings,
        out.audio_embeddings,
        target,
        torch.randn(b, t, 8, 8),
        labelled=torch.ones(b, t, dtype=bool),
    )
    loss.backward()
    assert torch.isfinite(loss)
    assert fuser.audio_projector.layers[0].weight.grad.abs().sum() > 0
    assert fuser.audio_blocks[0][0].attn.q.weight.grad.abs().sum() > 0


def test_temporal_positions_follow_the_seconds():
    picked = sine_position_encoding_1d(3, 8, positions=torch.tensor([0, 2, 5]))
    torch.testing.assert_close(picked, sine_position_encoding_1d(6, 8)[[0, 2, 5]])
    with pytest.raises(ValueError, match=r"\(3,\)"):
        sine_position_encoding_1d(3, 8, positions=torch.arange(4))
    torch.manual_seed(0)
    fuser = AuralFuser(tiny_fuser_config(text_dim=10, text_hidden=20, audio_position="temporal")).eval()
    b, t = 2, 3
    text_valid = torch.tensor([[True] * 4, [True, True, False, False]])
    inputs = dict(frame_valid=torch.ones(b, t, dtype=torch.bool), text=torch.randn(b, 4, 10), text_valid=text_valid)
    feats, audio = pyramid(b * t, 16), torch.randn(b, t, 12)
    default = fuser(feats, audio, **inputs)
    same = fuser(feats, audio, audio_seconds=torch.arange(t), **inputs)
    later = fuser(feats, audio, audio_seconds=torch.arange(t) + 4, **inputs)  # the same frames, later in the video
    torch.testing.assert_close(default.sparse[2], same.sparse[2])
    assert not torch.allclose(default.sparse[2], later.sparse[2])


@pytest.mark.parametrize("affinity", ["dot", "softmax"])
def test_drawn_frames_weigh_the_text_as_the_whole_clip_does(affinity):
    # A 4-frame clip made of frames (0, 1, 0, 1) fuses each frame as its 2 drawn frames do once the text's share is
    # scaled by 2/4: the fusion's sums over positions and tokens then differ by the same factor 2 (dot), or each
    # audio token counts twice in the softmax over tokens (softmax). (No token blocks: their attention would see
    # the repeated audio tokens.)
    torch.manual_seed(0)
    cfg = tiny_fuser_config(
        text_dim=10,
        text_hidden=20,
        audio_depth=0,
        audio_position="temporal",
        residual_init=1.0,
        fusion_affinity=affinity,
    )
    fuser = AuralFuser(cfg).eval()
    _randomise_batch_norms(fuser)
    feats, audio = pyramid(2, 16), torch.randn(1, 2, 12)
    text = dict(text=torch.randn(1, 4, 10), text_valid=torch.ones(1, 4, dtype=torch.bool))
    whole = fuser(
        [torch.cat([f, f]) for f in feats],
        torch.cat([audio, audio], dim=1),
        frame_valid=torch.ones(1, 4, dtype=torch.bool),
        audio_seconds=torch.tensor([0, 1, 0, 1]),
        **text,
    )
    drawn = fuser(feats, audio, frame_valid=torch.ones(1, 2, dtype=torch.bool), clip_frames=4, **text)
    unscaled = fuser(feats, audio, frame_valid=torch.ones(1, 2, dtype=torch.bool), **text)
    torch.testing.assert_close(drawn.dense[2], whole.dense[2][:2])
    assert not torch.allclose(unscaled.dense[2], whole.dense[2][:2], atol=1e-4)
    with pytest.raises(ValueError, match="clip_frames"):
        fuser(feats, audio, frame_valid=torch.ones(1, 2, dtype=torch.bool), clip_frames=1, **text)
