"""Multi-scale deformable attention (avseg.layers.deformable_attention) against a slow, hand-interpolated reference."""

from __future__ import annotations

import math

import pytest
import torch

from avseg.errors import ShapeError
from avseg.layers.deformable_attention import MultiScaleDeformableAttention, deformable_sample, level_reference_points


def bilinear_reference(value: torch.Tensor, h: int, w: int, x: float, y: float) -> torch.Tensor:
    """Read ``value (H*W, d)`` at normalised ``(x, y)`` as the CUDA kernel does: pixel centres at ``(i + 0.5) / W``,
    the four neighbours of ``(x W - 0.5, y H - 0.5)``, zero outside the map."""
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = torch.zeros(value.shape[-1], dtype=value.dtype)
    for yy, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
        for xx, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                out += wy * wx * value[yy * w + xx]
    return out


def slow_deformable_sample(value, shapes, locations, weights):  # type: ignore[no-untyped-def]
    """One loop iteration per (sample, query, head, level, point)."""
    n, _, heads, d = value.shape
    _, lq, _, _, points, _ = locations.shape
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    out = torch.zeros(n, lq, heads * d, dtype=value.dtype)
    for b in range(n):
        for q in range(lq):
            for head in range(heads):
                acc = torch.zeros(d, dtype=value.dtype)
                for lvl, (h, w) in enumerate(shapes):
                    level_value = value[b, starts[lvl] : starts[lvl + 1], head]  # (H*W, d)
                    for p in range(points):
                        x, y = locations[b, q, head, lvl, p].tolist()
                        acc += weights[b, q, head, lvl, p] * bilinear_reference(level_value, h, w, x, y)
                out[b, q, head * d : (head + 1) * d] = acc
    return out


SHAPES = [(6, 5), (3, 3), (2, 1)]


def test_grid_sample_core_matches_the_slow_loop() -> None:
    g = torch.Generator().manual_seed(0)
    n, lq, heads, d, points = 2, 5, 2, 3, 3
    s = sum(h * w for h, w in SHAPES)
    value = torch.randn(n, s, heads, d, generator=g, dtype=torch.float64)
    # Points inside, on the border and outside the maps (-0.2 .. 1.2) exercise the zero padding.
    locations = torch.rand(n, lq, heads, len(SHAPES), points, 2, generator=g, dtype=torch.float64) * 1.4 - 0.2
    weights = torch.rand(n, lq, heads, len(SHAPES), points, generator=g, dtype=torch.float64)
    got = deformable_sample(value, SHAPES, locations, weights)
    expected = slow_deformable_sample(value, SHAPES, locations, weights)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_module_matches_the_reference_formula_with_trained_weights() -> None:
    torch.manual_seed(0)
    attn = MultiScaleDeformableAttention(dim=8, levels=3, heads=2, points=2).double()
    for p in attn.parameters():  # leave the zero initialisation: offsets and weights must depend on the query
        torch.nn.init.normal_(p, 0.0, 0.5)
    n, s = 2, sum(h * w for h, w in SHAPES)
    query = torch.randn(n, 4, 8, dtype=torch.float64)
    ref = torch.rand(n, 4, 3, 2, dtype=torch.float64)
    value = torch.randn(n, s, 8, dtype=torch.float64)
    got = attn(query, ref, value, SHAPES)

    # The reference computation, written out: projections, per-level pixel offsets, softmax over L*P, slow sampling.
    v = attn.value_proj(value).view(n, s, 2, 4)
    offsets = attn.sampling_offsets(query).view(n, 4, 2, 3, 2, 2)
    w = attn.attention_weights(query).view(n, 4, 2, 6).softmax(-1).view(n, 4, 2, 3, 2)
    locations = torch.empty_like(offsets)
    for lvl, (h, wd) in enumerate(SHAPES):
        locations[:, :, :, lvl, :, 0] = ref[:, :, None, lvl, None, 0] + offsets[:, :, :, lvl, :, 0] / wd
        locations[:, :, :, lvl, :, 1] = ref[:, :, None, lvl, None, 1] + offsets[:, :, :, lvl, :, 1] / h
    expected = attn.output_proj(slow_deformable_sample(v, SHAPES, locations, w))
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


def test_gradients_reach_values_offsets_and_weights() -> None:
    torch.manual_seed(0)
    attn = MultiScaleDeformableAttention(dim=8, levels=3, heads=2, points=2)
    torch.nn.init.normal_(attn.sampling_offsets.weight, 0.0, 0.1)
    s = sum(h * w for h, w in SHAPES)
    query = torch.randn(1, 4, 8)
    value = torch.randn(1, s, 8, requires_grad=True)
    attn(query, level_reference_points(SHAPES)[:, :4], value, SHAPES).square().sum().backward()
    assert value.grad is not None and value.grad.abs().sum() > 0
    for p in (attn.sampling_offsets.weight, attn.attention_weights.weight, attn.value_proj.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_initialisation_follows_deformable_detr() -> None:
    attn = MultiScaleDeformableAttention(dim=16, levels=2, heads=4, points=3)
    bias = attn.sampling_offsets.bias.view(4, 2, 3, 2)
    # Head 0 looks right (+x), head 1 down (+y), head 2 left, head 3 up; point p at distance p + 1, on every level.
    torch.testing.assert_close(bias[0, 1, 2], torch.tensor([3.0, 0.0]))
    torch.testing.assert_close(bias[1, 0, 0], torch.tensor([0.0, 1.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(bias[2, 0, 1], torch.tensor([-2.0, 0.0]), atol=1e-6, rtol=0)
    assert torch.count_nonzero(attn.sampling_offsets.weight) == 0
    assert torch.count_nonzero(attn.attention_weights.weight) == 0 == torch.count_nonzero(attn.attention_weights.bias)


def test_padding_mask_zeroes_values_and_shapes_are_checked() -> None:
    torch.manual_seed(0)
    attn = MultiScaleDeformableAttention(dim=8, levels=3, heads=2, points=2)
    s = sum(h * w for h, w in SHAPES)
    query, value = torch.randn(1, 3, 8), torch.randn(1, s, 8)
    ref = torch.rand(1, 3, 3, 2)
    everything_padded = attn(query, ref, value, SHAPES, torch.ones(1, s, dtype=torch.bool))
    torch.testing.assert_close(everything_padded, attn.output_proj.bias.expand(1, 3, 8))
    with pytest.raises(ShapeError, match="3 levels"):
        attn(query, ref, value, SHAPES[:2])
    with pytest.raises(ShapeError, match="spatial_shapes"):
        deformable_sample(
            torch.zeros(1, s + 1, 2, 4), SHAPES, torch.zeros(1, 3, 2, 3, 2, 2), torch.zeros(1, 3, 2, 3, 2)
        )


def test_encoder_reference_points_are_pixel_centres() -> None:
    ref = level_reference_points([(2, 4), (1, 2)])
    assert ref.shape == (1, 10, 2, 2)
    torch.testing.assert_close(ref[0, 0, 0], torch.tensor([0.125, 0.25]))  # first pixel of level 0: (x, y)
    torch.testing.assert_close(ref[0, 7, 1], torch.tensor([0.875, 0.75]))  # last pixel of level 0, on level 1 too
    torch.testing.assert_close(ref[0, 9, 0], torch.tensor([0.75, 0.5]))  # second pixel of level 1
