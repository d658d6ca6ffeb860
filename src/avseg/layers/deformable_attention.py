"""Multi-scale deformable attention (Deformable DETR) in plain PyTorch: no compiled CUDA op.

Paper: X. Zhu, W. Su, L. Lu, B. Li, X. Wang, J. Dai, "Deformable DETR: Deformable Transformers for End-to-End Object
Detection", ICLR 2021. AVSegFormer (and Mask2Former, DINO, ...) ship the authors' CUDA kernel
(``ops/modules/ms_deform_attn.py`` + ``ops/src/cuda/*``), which must be compiled against one CUDA toolkit and has no
usable CPU path; this module computes the same function with :func:`torch.nn.functional.grid_sample`, so it runs on
any device, under autograd, and in ``torch.compile``.

Each query looks at ``P`` sampling points per head and per level around its reference point; the offsets and the
attention weights of those ``L * P`` points are linear functions of the query::

    out_q = W_o · concat_h  Σ_l Σ_p  A[q, h, l, p] · V_l,h( ref_q,l + Δ[q, h, l, p] / (W_l, H_l) )

``V_l,h(x, y)`` is the value map of level ``l`` (head ``h``) read by bilinear interpolation at normalised coordinates
``(x, y)`` in ``[0, 1]`` (pixel centres at ``(i + 0.5) / W``), zero outside the map, which is what the CUDA kernel
does (``h_im = y · H - 0.5``) and what ``grid_sample(..., align_corners=False, padding_mode="zeros")`` does with
``grid = 2 · (x, y) - 1``. ``A`` is a softmax over the ``L * P`` points of a head.

Parameter names (``sampling_offsets``, ``attention_weights``, ``value_proj``, ``output_proj``) and their
initialisation follow the reference implementation, so released Deformable-DETR-style weights load as they are.
``tests/layers/test_deformable_attention.py`` checks this module against a slow loop that interpolates every sample by
hand.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avseg.errors import ShapeError

__all__ = ["MultiScaleDeformableAttention", "deformable_sample", "level_reference_points"]


def deformable_sample(
    value: Tensor, spatial_shapes: Sequence[tuple[int, int]], locations: Tensor, weights: Tensor
) -> Tensor:
    """The core of multi-scale deformable attention: weighted bilinear samples of multi-level value maps.

    Args:
        value: ``(N, S, heads, d)`` values of all levels, flattened level after level (``S = Σ H_l W_l``).
        spatial_shapes: ``L`` pairs ``(H_l, W_l)``.
        locations: ``(N, Lq, heads, L, P, 2)`` sampling points as normalised ``(x, y)`` in ``[0, 1]``.
        weights: ``(N, Lq, heads, L, P)`` attention weights (softmax over ``L * P`` already applied).

    Returns:
        ``(N, Lq, heads * d)``.
    """
    n, s, heads, d = value.shape
    _, lq, _, levels, points, _ = locations.shape
    sizes = [h * w for h, w in spatial_shapes]
    if sum(sizes) != s or len(sizes) != levels:
        raise ShapeError(f"value has {s} positions but spatial_shapes {list(spatial_shapes)} give {sum(sizes)}")
    grids = 2 * locations - 1  # grid_sample wants [-1, 1]
    sampled = []
    for level, (v, (h, w)) in enumerate(zip(value.split(sizes, dim=1), spatial_shapes)):
        v = v.permute(0, 2, 3, 1).reshape(n * heads, d, h, w)  # (N*heads, d, H_l, W_l)
        grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)  # (N*heads, Lq, P, 2)
        sampled.append(F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
    stacked = torch.stack(sampled, dim=-2).flatten(-2)  # (N*heads, d, Lq, L*P)
    attn = weights.transpose(1, 2).reshape(n * heads, 1, lq, levels * points)  # (N*heads, 1, Lq, L*P)
    out = (stacked * attn).sum(-1)  # (N*heads, d, Lq)
    return out.view(n, heads * d, lq).transpose(1, 2)  # (N, Lq, heads*d)


def level_reference_points(
    spatial_shapes: Sequence[tuple[int, int]], *, device: torch.device | None = None, dtype: torch.dtype | None = None
) -> Tensor:
    """Reference points of an encoder whose queries are the pixels themselves: ``(1, S, L, 2)``.

    Every pixel of every level refers to its own centre ``((j + 0.5) / W_l, (i + 0.5) / H_l)``, the same normalised
    point on all ``L`` levels (Deformable DETR's ``get_reference_points`` with all valid ratios 1: avseg pads no
    frame).
    """
    points = []
    for h, w in spatial_shapes:
        ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) / h
        xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) / w
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([xx.flatten(), yy.flatten()], dim=-1))  # (H*W, 2) as (x, y)
    ref = torch.cat(points, dim=0)  # (S, 2)
    return ref[None, :, None, :].expand(1, ref.shape[0], len(spatial_shapes), 2)


class MultiScaleDeformableAttention(nn.Module):
    """Multi-scale deformable attention.

    Args:
        dim: model width ``D`` (divisible by ``heads``).
        levels: number of feature levels ``L``.
        heads: attention heads.
        points: sampling points ``P`` per head and level.
    """

    def __init__(self, *, dim: int = 256, levels: int = 4, heads: int = 8, points: int = 4) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"deformable attention: dim {dim} must be divisible by heads {heads}")
        self.dim, self.levels, self.heads, self.points = dim, levels, heads, points
        self.sampling_offsets = nn.Linear(dim, heads * levels * points * 2)
        self.attention_weights = nn.Linear(dim, heads * levels * points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR's initialisation: zero offset weights, and biases that start head ``h``'s points on a ray
        in direction ``2πh / heads``, point ``p`` at distance ``p + 1`` pixels of each level; uniform attention."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.heads, dtype=torch.float32) * (2.0 * math.pi / self.heads)
        rays = torch.stack([angles.cos(), angles.sin()], -1)  # (heads, 2)
        rays = rays / rays.abs().max(-1, keepdim=True).values  # on the unit square, as the reference does
        grid = rays[:, None, None, :].repeat(1, self.levels, self.points, 1)  # (heads, L, P, 2)
        grid = grid * torch.arange(1, self.points + 1, dtype=torch.float32)[None, None, :, None]
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        value: Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
        padding_mask: Tensor | None = None,
    ) -> Tensor:
        """Attend.

        Args:
            query: ``(N, Lq, D)`` (with its position embedding already added).
            reference_points: ``(N or 1, Lq, L, 2)`` normalised ``(x, y)`` in ``[0, 1]`` per level.
            value: ``(N, S, D)`` the flattened levels (``S = Σ H_l W_l``), without position embedding.
            spatial_shapes: ``L`` pairs ``(H_l, W_l)``.
            padding_mask: optional ``(N, S)`` bool, True at padded positions (their values are zeroed).

        Returns:
            ``(N, Lq, D)``.
        """
        n, lq, _ = query.shape
        if len(spatial_shapes) != self.levels:
            raise ShapeError(f"deformable attention built for {self.levels} levels got {len(spatial_shapes)}")
        if reference_points.shape[-2:] != (self.levels, 2):
            raise ShapeError(f"reference_points must be (N, Lq, {self.levels}, 2), got {tuple(reference_points.shape)}")
        v = self.value_proj(value)  # (N, S, D)
        if padding_mask is not None:
            v = v.masked_fill(padding_mask[..., None], 0.0)
        v = v.view(n, v.shape[1], self.heads, self.dim // self.heads)  # (N, S, heads, d)
        offsets = self.sampling_offsets(query).view(n, lq, self.heads, self.levels, self.points, 2)
        weights = self.attention_weights(query).view(n, lq, self.heads, self.levels * self.points)
        weights = weights.softmax(-1).view(n, lq, self.heads, self.levels, self.points)
        # Offsets are in pixels of each level: divide by (W_l, H_l) to get normalised coordinates.
        normaliser = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=query.dtype, device=query.device)
        locations = reference_points[:, :, None, :, None, :] + offsets / normaliser[None, None, None, :, None, :]
        out = deformable_sample(v, spatial_shapes, locations, weights)  # (N, Lq, D)
        return self.output_proj(out)
