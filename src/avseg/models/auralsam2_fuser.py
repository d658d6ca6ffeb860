"""The AuralFuser of AuralSAM2: audio (and text) prompts for a frozen SAM2, computed outside SAM2.

This file holds the fuser and its contrastive objective; :mod:`avseg.models.auralsam2` wires them to SAM2 and
documents the method (paper, released code, avseg's choices). Here, bottom-up:

* :class:`SinePositionEncoding2d` / :func:`sine_position_encoding_1d`: the fixed sine encodings the fuser adds;
* :class:`PyramidBlock`: a PVT-v2 block (self-attention whose keys are spatially reduced, MLP with a depthwise conv)
  on the visual tokens of one frame; :class:`TokenBlock`: a plain transformer block on the audio(+text) tokens;
* :class:`CrossModalFusion`: the TPAVI-derived two-way fusion of the clip's visual positions and its audio(+text)
  tokens (dot-product affinities normalised by the number of visual positions as released, or the paper's softmax
  attention; compressed to ``fusion_dim``, zero-initialised batch-normed residual branches), which updates both;
* :class:`Projector`: the heads that embed pixels and audio for AudioCon;
* :class:`AuralFuser`: three levels (SAM2's stride-4/8/16 maps brought to the stride-16 grid), each
  ``patch embedding → [+ previous level, 1×1 smoothing] → + sine PE → PVT blocks ‖ token blocks → fusion``, giving one
  dense prompt (a map) and one sparse prompt (a vector per frame) per level;
* :func:`audiocon_loss`: AudioCon, the supervised InfoNCE that pulls hard and easy pixel samples of the sounding
  object toward their clip's audio embeddings.

Shapes: ``B`` clips, ``T`` frames per clip, ``N = B*T``, ``C`` the fuser width (SAM2's ``d_model``, 256),
``h × w`` the stride-16 grid (64×64 at 1024 px), ``L`` audio(+text) tokens per clip (``T`` seconds plus the
expression's tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avseg.errors import ShapeError

__all__ = [
    "AuralFuser",
    "CrossModalFusion",
    "FuserConfig",
    "FuserOutput",
    "ProjectorConfig",
    "PyramidBlock",
    "SinePositionEncoding2d",
    "TokenBlock",
    "audiocon_loss",
    "sample_audiocon_pixels",
    "sine_position_encoding_1d",
    "supervised_info_nce",
]


# -- configs ---------------------------------------------------------------------------------------------------------


@dataclass
class ProjectorConfig:
    """The AudioCon projection heads (one for pixels, shared by the three levels; one for audio).

    The paper describes a 3-layer projector to 64 dimensions; the released code builds 2 layers to 128 dimensions
    (``ProjectionHead``: ``Linear-GELU-LayerNorm-Linear`` in the Ref-AVS code, ``1×1 conv-BatchNorm-1×1 conv`` in
    the AVS code). The defaults are the released Ref-AVS head.

    Attributes:
        layers: linear layers (2 released, 3 in the paper).
        dim: output width (128 released, 64 in the paper).
        norm: ``"layer"``: hidden layers are ``Linear, GELU, LayerNorm`` (released Ref-AVS code); ``"batch"``:
            ``Linear(=1×1 conv), BatchNorm`` without activation (released AVS code).
        source: which visual features are embedded: ``"residual"`` the fusion's cross-modal residual branch
            (released Ref-AVS code, ``x_attn``) or ``"fused"`` the level's fused tokens (released AVS code).
    """

    layers: int = 2
    dim: int = 128
    norm: Literal["layer", "batch"] = "layer"
    source: Literal["residual", "fused"] = "residual"

    def __post_init__(self) -> None:
        if self.layers < 1:
            raise ValueError(f"projector.layers must be >= 1, got {self.layers}")
        if self.dim < 1:
            raise ValueError(f"projector.dim must be >= 1, got {self.dim}")
        if self.norm not in ("layer", "batch"):
            raise ValueError(f"projector.norm must be 'layer' or 'batch', got {self.norm!r}")
        if self.source not in ("residual", "fused"):
            raise ValueError(f"projector.source must be 'residual' or 'fused', got {self.source!r}")


@dataclass
class FuserConfig:
    """The AuralFuser (released ``architecture.yaml`` values by default).

    Attributes:
        dim: token width; must equal SAM2's ``d_model`` (and its FPN width), because the outputs are added to SAM2's
            image embedding and mask tokens.
        patch_sizes: kernel = stride of the patch embedding of each level (4, 2, 1 bring strides 4, 8, 16 to 16).
        depths: PVT blocks per level on the visual tokens.
        audio_depth: transformer blocks per level on the audio(+text) tokens.
        heads: attention heads of both kinds of block.
        mlp_ratio: MLP hidden width as a multiple of ``dim``.
        sr_ratio: spatial reduction of the PVT blocks' keys and values (conv with kernel = stride = ``sr_ratio``).
        dropout: dropout on attention weights and after the projections / MLP layers (``drop = attn_drop``).
        qkv_bias: bias of the query/key/value projections.
        fusion_dim: compressed width of the cross-modal fusion (None: ``dim // 2``, 128 as released).
        audio_dim: width of the audio features entering the fuser (256: VGGish on two channels); a linear
            projection to ``dim`` is added when they differ.
        text_dim: width of the text encoder's token features (768 for DistilRoBERTa); None: no text branch.
        text_hidden: hidden width of the text projection ``text_dim → text_hidden → dim`` (1024 released).
        fusion_layout: ``"released"`` reproduces the released code's raw ``reshape``/``view`` of channel-first
            tensors inside the fusion (rows of 128 spatial values of one channel act as "positions"), needed for the
            authors' checkpoints to give their outputs; it attends to every token, padding included, as released
            (the text encoder must then pad to a fixed length). ``"per_position"`` is the method as described (one
            row per visual position and per token) and leaves padded frames and tokens out.
        fusion_affinity: how the fusion weighs one modality's entries for the other. ``"dot"`` (the released code,
            TPAVI's "dot" mode): plain dot products divided by the number of visual positions, no softmax;
            ``"softmax"`` (the paper's supplement, Eq. 10): ``softmax(q·kᵀ/√D)·v`` with ``D = fusion_dim``, each
            visual position over the tokens and each token over the clip's visual positions (``"per_position"``
            layout only).
        audio_position: ``"constant"``: the released code adds the 1-D sine encoding of position 0 (a constant
            ``[0, 1, 0, 1, ...]`` vector) to every audio(+text) token; ``"temporal"`` (avseg): each audio token gets
            the encoding of its second in the video (``audio_seconds``, so that a clip cut to some of its frames in
            training keeps its timing), and text tokens none (their encoder already ordered them).
        residual_init: the value the batch-norm weight of each fusion residual branch starts at. 0 as released:
            the fusion block is the identity at initialisation, which suits a fuser trained for 80 epochs on a
            pretrained SAM2 but leaves a short CPU run almost blind to the expression (avseg measured the weights
            at about 0.045 after 486 steps); avseg's tiny preset starts them at 1.
    """

    dim: int = 256
    patch_sizes: tuple[int, int, int] = (4, 2, 1)
    depths: tuple[int, int, int] = (3, 6, 12)
    audio_depth: int = 3
    heads: int = 4
    mlp_ratio: float = 4.0
    sr_ratio: int = 4
    dropout: float = 0.1
    qkv_bias: bool = True
    fusion_dim: int | None = None
    audio_dim: int = 256
    text_dim: int | None = None
    text_hidden: int = 1024
    fusion_layout: Literal["released", "per_position"] = "per_position"
    fusion_affinity: Literal["dot", "softmax"] = "dot"
    audio_position: Literal["constant", "temporal"] = "constant"
    residual_init: float = 0.0

    def __post_init__(self) -> None:
        self.patch_sizes = tuple(int(p) for p in self.patch_sizes)  # type: ignore[assignment]
        self.depths = tuple(int(d) for d in self.depths)  # type: ignore[assignment]
        if len(self.patch_sizes) != 3 or len(self.depths) != 3:
            raise ValueError(f"fuser.patch_sizes and fuser.depths need 3 levels, got {self.patch_sizes}, {self.depths}")
        if min(self.patch_sizes) < 1 or min(self.depths) < 0 or self.audio_depth < 0:
            raise ValueError(f"fuser: bad patch_sizes {self.patch_sizes} / depths {self.depths} / audio_depth")
        if self.dim < 2 or self.dim % 2 or self.dim % self.heads:
            raise ValueError(f"fuser.dim {self.dim} must be even and divisible by fuser.heads {self.heads}")
        if self.sr_ratio < 1 or not 0.0 <= self.dropout < 1.0 or self.mlp_ratio <= 0:
            raise ValueError(f"fuser: bad sr_ratio {self.sr_ratio} / dropout {self.dropout} / mlp_ratio")
        if self.fusion_dim is not None and self.fusion_dim < 1:
            raise ValueError(f"fuser.fusion_dim must be >= 1, got {self.fusion_dim}")
        if self.fusion_layout not in ("released", "per_position"):
            raise ValueError(f"fuser.fusion_layout must be 'released' or 'per_position', got {self.fusion_layout!r}")
        if self.fusion_affinity not in ("dot", "softmax"):
            raise ValueError(f"fuser.fusion_affinity must be 'dot' or 'softmax', got {self.fusion_affinity!r}")
        if self.fusion_affinity == "softmax" and self.fusion_layout == "released":
            raise ValueError(
                "fuser.fusion_affinity 'softmax' (the paper's attention) is defined over visual positions; "
                "use fuser.fusion_layout 'per_position' (the released layout's rows are not positions)"
            )
        if self.audio_position not in ("constant", "temporal"):
            raise ValueError(f"fuser.audio_position must be 'constant' or 'temporal', got {self.audio_position!r}")
        if not math.isfinite(self.residual_init):
            raise ValueError(f"fuser.residual_init must be a finite number, got {self.residual_init}")

    @property
    def inner_dim(self) -> int:
        return self.fusion_dim if self.fusion_dim is not None else self.dim // 2


# -- position encodings ----------------------------------------------------------------------------------------------


class SinePositionEncoding2d(nn.Module):
    """The DETR/SAM2 sine encoding of a ``h × w`` grid: ``dim/2`` channels for y, then ``dim/2`` for x.

    Coordinates run over ``1..h`` (``1..w``), are normalised to ``(0, 2π]`` and encoded with frequencies
    ``temperature^(2⌊k/2⌋ / (dim/2))``, sines on even and cosines on odd channels (SAM2's ``PositionEmbeddingSine``
    with ``normalize=True``).
    """

    def __init__(self, dim: int, temperature: float = 10000.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"sine position encoding needs an even width, got {dim}")
        self.half = dim // 2
        self.temperature = temperature

    def forward(self, h: int, w: int, device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
        """``(h*w, dim)`` encodings in row-major (y, x) order, matching ``map.flatten(2).transpose(1, 2)``."""
        scale, eps = 2 * math.pi, 1e-6
        y = torch.arange(1, h + 1, device=device, dtype=torch.float32)
        x = torch.arange(1, w + 1, device=device, dtype=torch.float32)
        y = y / (y[-1] + eps) * scale
        x = x / (x[-1] + eps) * scale
        k = torch.arange(self.half, device=device, dtype=torch.float32)
        freq = self.temperature ** (2 * torch.div(k, 2, rounding_mode="floor") / self.half)  # (dim/2,)

        def encode(v: Tensor) -> Tensor:
            angles = v[:, None] / freq  # (n, dim/2)
            return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=2).flatten(1)  # (n, dim/2)

        pos_y = encode(y)[:, None, :].expand(h, w, self.half)  # (h, w, dim/2)
        pos_x = encode(x)[None, :, :].expand(h, w, self.half)  # (h, w, dim/2)
        return torch.cat((pos_y, pos_x), dim=-1).reshape(h * w, 2 * self.half).to(dtype)  # (h*w, dim)


def sine_position_encoding_1d(
    length: int, dim: int, device: torch.device | None = None, *, positions: Tensor | None = None
) -> Tensor:
    """``(length, dim)`` transformer sine encoding: ``sin(p / 10000^(2i/dim))`` on even, ``cos`` on odd channels,
    at positions ``0 .. length-1`` or at the given ``positions (length,)``."""
    if dim % 2:
        raise ValueError(f"sine position encoding needs an even width, got {dim}")
    if positions is None:
        positions = torch.arange(length, device=device)
    elif positions.shape != (length,):
        raise ShapeError(f"positions must be ({length},), got {tuple(positions.shape)}")
    position = positions.to(device=device, dtype=torch.float32)[:, None]  # (length, 1)
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, device=device)
    pe[:, 0::2] = torch.sin(position * freq)
    pe[:, 1::2] = torch.cos(position * freq)
    return pe


# -- blocks ----------------------------------------------------------------------------------------------------------


def _init_weights(module: nn.Module) -> None:
    """The PVT initialisation the released blocks use: truncated normal (std 0.02) linears with zero bias, unit
    LayerNorms, He-normal convolutions over fan-out."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class SpatialReductionAttention(nn.Module):
    """PVT attention: queries at every position, keys and values from a ``sr × sr``-strided conv of the map."""

    def __init__(self, dim: int, heads: int, *, sr_ratio: int, qkv_bias: bool, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.attn_drop = dropout
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)
        self.sr: nn.Conv2d | None = None
        self.norm: nn.LayerNorm | None = None
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        n, hw, c = x.shape  # (N, h*w, C)
        q = self.q(x).view(n, hw, self.heads, -1).transpose(1, 2)  # (N, heads, h*w, C/heads)
        src = x
        if self.sr is not None and self.norm is not None:
            reduced = self.sr(x.transpose(1, 2).reshape(n, c, h, w))  # (N, C, h/sr, w/sr)
            src = self.norm(reduced.flatten(2).transpose(1, 2))  # (N, h*w/sr², C)
        k, v = self.kv(src).view(n, src.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)  # 2 × (N, heads, m, d)
        drop = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)  # (N, heads, h*w, C/heads)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(n, hw, c)))


class ConvMlp(nn.Module):
    """PVT-v2 MLP: ``fc1 → 3×3 depthwise conv → GELU → fc2`` (dropout after the activation and after ``fc2``)."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, kernel_size=3, padding=1, groups=hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        n = x.shape[0]
        y = self.fc1(x)  # (N, h*w, D)
        y = self.dwconv(y.transpose(1, 2).reshape(n, -1, h, w)).flatten(2).transpose(1, 2)  # (N, h*w, D)
        return self.drop(self.fc2(self.drop(F.gelu(y))))


class PyramidBlock(nn.Module):
    """One PVT-v2 block on the visual tokens of a frame: ``x + SRA(LN(x))``, then ``x + ConvMlp(LN(x))``."""

    def __init__(self, cfg: FuserConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim)
        self.attn = SpatialReductionAttention(
            cfg.dim, cfg.heads, sr_ratio=cfg.sr_ratio, qkv_bias=cfg.qkv_bias, dropout=cfg.dropout
        )
        self.norm2 = nn.LayerNorm(cfg.dim)
        self.mlp = ConvMlp(cfg.dim, int(cfg.dim * cfg.mlp_ratio), cfg.dropout)
        self.apply(_init_weights)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        x = x + self.attn(self.norm1(x), h, w)  # (N, h*w, C)
        return x + self.mlp(self.norm2(x), h, w)


class TokenAttention(nn.Module):
    """Multi-head self-attention over a clip's audio(+text) tokens, with an optional key padding mask."""

    def __init__(self, dim: int, heads: int, *, qkv_bias: bool, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.attn_drop = dropout
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, valid: Tensor | None) -> Tensor:
        b, n, c = x.shape  # (B, L, C)
        q = self.q(x).view(b, n, self.heads, -1).transpose(1, 2)  # (B, heads, L, d)
        k, v = self.kv(x).view(b, n, 2, self.heads, -1).permute(2, 0, 3, 1, 4)  # 2 × (B, heads, L, d)
        mask = valid[:, None, None, :] if valid is not None else None  # (B, 1, 1, L) True = attend
        drop = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)  # (B, heads, L, d)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))


class TokenMlp(nn.Module):
    """``fc1 → GELU → fc2`` with dropout (the released ``OneDMlp`` builds a depthwise conv it never calls)."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class TokenBlock(nn.Module):
    """A pre-norm transformer block on a clip's audio(+text) tokens (the released ``OneDBlock``)."""

    def __init__(self, cfg: FuserConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim)
        self.attn = TokenAttention(cfg.dim, cfg.heads, qkv_bias=cfg.qkv_bias, dropout=cfg.dropout)
        self.norm2 = nn.LayerNorm(cfg.dim)
        self.mlp = TokenMlp(cfg.dim, int(cfg.dim * cfg.mlp_ratio), cfg.dropout)
        self.apply(_init_weights)

    def forward(self, x: Tensor, valid: Tensor | None) -> Tensor:
        x = x + self.attn(self.norm1(x), valid)  # (B, L, C)
        return x + self.mlp(self.norm2(x))


def _weighted_softmax(logits: Tensor, weights: Tensor) -> Tensor:
    """Softmax of ``logits (B, M, K)`` over ``K`` with each entry's exponential scaled by ``weights (B, K)``
    (0 leaves an entry out); a row with no weighted entry is all zeros."""
    w = weights[:, None, :]  # (B, 1, K)
    logits = logits.masked_fill(w <= 0, float("-inf"))
    top = logits.amax(dim=-1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top)).detach()
    e = torch.exp(logits - top) * w  # (B, M, K)
    return e / e.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(e.dtype).tiny)


class CrossModalFusion(nn.Module):
    """The two-way, TPAVI-derived fusion of a clip's visual positions and its audio(+text) tokens.

    With ``P = T·h·w`` visual positions ``X`` and ``L`` tokens ``A`` (after a 1×1 alignment), compressed queries,
    keys and values of width ``D = fusion_dim`` give, per clip::

        X' = LN(X + BN(W_v · (Q_x K_aᵀ / P) V_a)),     A' = LN(A + BN(W_a · (Q_a K_xᵀ / P) V_x))

    With ``affinity="dot"`` (released) the affinities are plain dot products normalised by the number of visual
    positions (TPAVI's "dot" mode, no softmax). With ``affinity="softmax"`` (the paper's supplement, Eq. 10) they
    are ``softmax(Q Kᵀ/√D)``: each visual position's weights over the clip's tokens, and each token's over the clip's
    visual positions, sum to one::

        X' = LN(X + BN(W_v · softmax(Q_x K_aᵀ/√D) V_a)),     A' = LN(A + BN(W_a · softmax(Q_a K_xᵀ/√D) V_x))

    Every visual position of every frame sees every token of the clip and vice versa. Both batch norms start at zero
    as released (``residual_init``), so the block is ``(LN(X), LN(A))`` at initialisation. Padded tokens
    (``token_valid`` False) and padded frames (``frame_valid`` False) are left out of the sums and softmaxes.

    ``layout="released"`` reproduces the released code's raw ``reshape`` of channel-first ``(T, D, h, w)`` maps to
    ``(P, D)`` rows (and the matching ``view`` back), which does not pair a row with a position; it exists so that the
    authors' checkpoints give their outputs (padding masks are then not applied, as released).
    """

    def __init__(
        self,
        *,
        dim: int,
        inner_dim: int,
        layout: Literal["released", "per_position"],
        affinity: Literal["dot", "softmax"] = "dot",
        residual_init: float = 0.0,
    ) -> None:
        super().__init__()
        if affinity == "softmax" and layout == "released":
            raise ValueError("the softmax affinity needs the per_position layout")
        self.inner = inner_dim
        self.layout = layout
        self.affinity = affinity
        self.audio_align = nn.Linear(dim, dim)
        self.frame_q = nn.Linear(dim, inner_dim)
        self.frame_k = nn.Linear(dim, inner_dim)
        self.frame_v = nn.Linear(dim, inner_dim)
        self.audio_q = nn.Linear(dim, inner_dim)
        self.audio_k = nn.Linear(dim, inner_dim)
        self.audio_v = nn.Linear(dim, inner_dim)
        # A 1×1 conv + BatchNorm3d over (T, C, 1, h, w), as released, is a linear layer + BatchNorm1d over positions.
        self.frame_out = nn.Sequential(nn.Linear(inner_dim, dim), nn.BatchNorm1d(dim))
        self.audio_out = nn.Sequential(nn.Linear(inner_dim, dim), nn.BatchNorm1d(dim))
        for bn in (self.frame_out[1], self.audio_out[1]):
            nn.init.constant_(bn.weight, residual_init)
            nn.init.zeros_(bn.bias)
        self.frame_norm = nn.LayerNorm(dim)
        self.audio_norm = nn.LayerNorm(dim)
        # The released 1×1 convs keep PyTorch's default conv initialisation, which nn.Linear shares.

    def _rows(self, y: Tensor, b: int, t: int, hw: int) -> Tensor:
        """Per-frame features ``(B*T, h*w, D)`` → the ``(B, P, D)`` rows the affinities are computed on."""
        if self.layout == "per_position":
            return y.reshape(b, t * hw, self.inner)
        # Released: the channel-first (T, D, 1, h, w) conv output reshaped to (-1, D) as raw memory.
        return y.transpose(1, 2).reshape(b, t * hw, self.inner)

    def _unrows(self, y: Tensor, b: int, t: int, hw: int) -> Tensor:
        """Inverse of :meth:`_rows` for the attended values: ``(B, P, D)`` → ``(B*T, h*w, D)``."""
        if self.layout == "per_position":
            return y.reshape(b * t, hw, self.inner)
        # Released: permute(0, 2, 1).contiguous().view(T, D, 1, h, w).
        return y.transpose(1, 2).reshape(b * t, self.inner, hw).transpose(1, 2)

    def _dot(
        self,
        fq: Tensor,
        fk: Tensor,
        fv: Tensor,
        aq: Tensor,
        ak: Tensor,
        av: Tensor,
        frame_valid: Tensor,
        token_valid: Tensor,
        token_scale: Tensor | None,
        hw: int,
    ) -> tuple[Tensor, Tensor]:
        """The released affinities: ``(Q_x K_aᵀ / P) V_a`` ``(B, P, D)`` and ``(Q_a K_xᵀ / P) V_x`` ``(B, L, D)``."""
        b, positions = fq.shape[0], fq.shape[1]
        if token_scale is not None:
            av = av * token_scale.to(av.dtype)[None, :, None]
        if self.layout == "per_position":
            frame_weight = frame_valid.to(fq.dtype).repeat_interleave(hw, dim=1)[..., None]  # (B, P, 1)
            token_weight = token_valid.to(fq.dtype)[..., None]  # (B, L, 1)
            av = av * token_weight  # padded tokens add nothing to the visual update
            fv = fv * frame_weight  # padded frames add nothing to the audio update
            count = (frame_valid.to(fq.dtype).sum(1) * hw).clamp_min(1.0).view(b, 1, 1)  # (B, 1, 1)
        else:
            count = torch.full((b, 1, 1), float(positions), dtype=fq.dtype, device=fq.device)
        # Both products are associated so that no (P, L) or (L, P) matrix is materialised when P is large.
        frame_attn = fq @ ((ak.transpose(1, 2) @ av) / count)  # (B, P, D)
        audio_attn = (aq @ (fk.transpose(1, 2) @ fv)) / count  # (B, L, D)
        return frame_attn, audio_attn

    def forward(
        self,
        x: Tensor,
        audio: Tensor,
        *,
        frame_valid: Tensor,
        token_valid: Tensor,
        token_scale: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Fuse one level.

        Args:
            x: ``(B*T, h*w, C)`` visual tokens.
            audio: ``(B, L, C)`` audio(+text) tokens.
            frame_valid: ``(B, T)`` bool, real frames.
            token_valid: ``(B, L)`` bool, real tokens.
            token_scale: optional ``(L,)`` factor on each token's share of the visual update (default 1): it scales
                the token's term of the sum (``"dot"``) or its exponentiated affinity (``"softmax"``), as if the token
                were repeated that many times.

        Returns:
            ``x' (B*T, h*w, C)``, ``audio' (B, L, C)`` and the visual residual branch ``(B*T, h*w, C)`` (the
            batch-normed cross-modal term, before it is added; AudioCon embeds it in the released Ref-AVS code).
        """
        b, length, c = audio.shape
        n, hw, _ = x.shape
        t = n // b
        a = self.audio_align(audio)  # (B, L, C)
        fq = self._rows(self.frame_q(x), b, t, hw)  # (B, P, D)
        fk = self._rows(self.frame_k(x), b, t, hw)
        fv = self._rows(self.frame_v(x), b, t, hw)
        aq, ak, av = self.audio_q(a), self.audio_k(a), self.audio_v(a)  # (B, L, D) each
        if self.affinity == "softmax":
            token_weight = token_valid.to(x.dtype)  # (B, L)
            if token_scale is not None:
                token_weight = token_weight * token_scale.to(x.dtype)[None]
            frame_weight = frame_valid.to(x.dtype).repeat_interleave(hw, dim=1)  # (B, P)
            scale = self.inner**-0.5
            frame_attn = _weighted_softmax(fq @ ak.transpose(1, 2) * scale, token_weight) @ av  # (B, P, D)
            audio_attn = _weighted_softmax(aq @ fk.transpose(1, 2) * scale, frame_weight) @ fv  # (B, L, D)
        else:
            frame_attn, audio_attn = self._dot(fq, fk, fv, aq, ak, av, frame_valid, token_valid, token_scale, hw)
        frame_res = self.frame_out[0](self._unrows(frame_attn, b, t, hw))  # (B*T, h*w, C)
        frame_res = self.frame_out[1](frame_res.reshape(n * hw, c)).view(n, hw, c)
        if self.layout == "released":
            # Released: permute(0, 2, 1).contiguous().view(L, D): rows mix channels of consecutive tokens.
            audio_attn = audio_attn.transpose(1, 2).reshape(b, length, self.inner)
        audio_res = self.audio_out[0](audio_attn)  # (B, L, C)
        audio_res = self.audio_out[1](audio_res.reshape(b * length, c)).view(b, length, c)
        x_out = self.frame_norm(x + frame_res)  # (B*T, h*w, C)
        a_out = self.audio_norm(a + audio_res)  # (B, L, C)
        return x_out, a_out, frame_res


class Projector(nn.Module):
    """A projection head for AudioCon: hidden layers then a linear layer, output L2-normalised over the last axis.

    Hidden layers are ``Linear, GELU, LayerNorm`` (``norm="layer"``) or ``Linear, BatchNorm`` (``norm="batch"``),
    so that with two layers the parameter names match the released heads (``layers.0``, ``layers.2`` / ``.3``).
    """

    def __init__(self, dim_in: int, cfg: ProjectorConfig) -> None:
        super().__init__()
        parts: list[nn.Module] = []
        width = dim_in
        for _ in range(cfg.layers - 1):
            if cfg.norm == "layer":
                parts += [nn.Linear(width, cfg.dim), nn.GELU(), nn.LayerNorm(cfg.dim)]
            else:
                parts += [nn.Linear(width, cfg.dim), nn.BatchNorm1d(cfg.dim)]
            width = cfg.dim
        parts.append(nn.Linear(width, cfg.dim))
        self.layers = nn.Sequential(*parts)

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        y = self.layers(x.reshape(-1, x.shape[-1]))  # (M, dim): BatchNorm1d needs 2-D input
        return F.normalize(y, dim=-1).view(*lead, -1)


# -- the fuser -------------------------------------------------------------------------------------------------------


@dataclass
class FuserOutput:
    """What :class:`AuralFuser` returns (lists run over the three levels, stride-4 branch first).

    Attributes:
        dense: per level, ``(B*T, h*w, C)`` maps added to SAM2's image tokens (the "dense prompts").
        sparse: per level, ``(B, T, C)`` one vector per frame added to SAM2's mask tokens (the "sparse prompts":
            the fused audio tokens of the ``T`` seconds; text tokens are not injected).
        pixel_embeddings: per level, ``(B*T, P, h, w)`` L2-normalised AudioCon pixel embeddings, or None when the
            fuser has no projectors.
        audio_embeddings: per level, ``(B, T, P)`` L2-normalised AudioCon audio embeddings, or None.
        grid: ``(h, w)``.
    """

    dense: list[Tensor]
    sparse: list[Tensor]
    pixel_embeddings: list[Tensor] | None
    audio_embeddings: list[Tensor] | None
    grid: tuple[int, int]


class AuralFuser(nn.Module):
    """Audio(+text) prompts for SAM2 from SAM2's own feature pyramid.

    Args:
        cfg: the fuser config.
        projector: the AudioCon heads' config, or None to build none (inference-only fusers).
    """

    def __init__(self, cfg: FuserConfig, projector: ProjectorConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        c = cfg.dim
        self.patch_embeds = nn.ModuleList(nn.Conv2d(c, c, kernel_size=p, stride=p) for p in cfg.patch_sizes)
        self.smooth_convs = nn.ModuleList(nn.Conv2d(c, c, kernel_size=1) for _ in range(2))
        self.visual_blocks = nn.ModuleList(nn.ModuleList(PyramidBlock(cfg) for _ in range(d)) for d in cfg.depths)
        self.audio_blocks = nn.ModuleList(
            nn.ModuleList(TokenBlock(cfg) for _ in range(cfg.audio_depth)) for _ in range(3)
        )
        self.fusion = nn.ModuleList(
            CrossModalFusion(
                dim=c,
                inner_dim=cfg.inner_dim,
                layout=cfg.fusion_layout,
                affinity=cfg.fusion_affinity,
                residual_init=cfg.residual_init,
            )
            for _ in range(3)
        )
        self.audio_proj = nn.Linear(cfg.audio_dim, c) if cfg.audio_dim != c else None
        self.text_proj: nn.Sequential | None = None
        if cfg.text_dim is not None:
            self.text_proj = nn.Sequential(
                nn.Linear(cfg.text_dim, cfg.text_hidden), nn.GELU(), nn.Linear(cfg.text_hidden, c)
            )
        self.position = SinePositionEncoding2d(c)
        self.projector = projector
        self.visual_projector = Projector(c, projector) if projector is not None else None
        self.audio_projector = Projector(c, projector) if projector is not None else None

    def forward(
        self,
        features: list[Tensor],
        audio: Tensor,
        *,
        frame_valid: Tensor,
        text: Tensor | None = None,
        text_valid: Tensor | None = None,
        audio_seconds: Tensor | None = None,
        clip_frames: int | None = None,
    ) -> FuserOutput:
        """Compute the prompts of a batch of clips.

        Args:
            features: SAM2's FPN maps at strides 4, 8, 16, each ``(B*T, C, S/s, S/s)``.
            audio: ``(B, T, audio_dim)`` per-second audio features.
            frame_valid: ``(B, T)`` bool, real frames.
            text: optional ``(B, K, text_dim)`` token features of the expressions (appended to the audio tokens).
            text_valid: ``(B, K)`` bool, real text tokens (required with ``text``).
            audio_seconds: ``(T,)`` the second of the video each audio token comes from (default ``0 .. T-1``), for
                ``audio_position = "temporal"``.
            clip_frames: when the batch holds ``T`` frames drawn from clips of ``clip_frames`` (training on drawn
                frames), the text tokens' share of the visual update is scaled by ``T / clip_frames``. The fusion
                divides its sums over tokens by the number of visual positions ``P``, which is in proportion to the
                number of audio tokens but not to the fixed number of text tokens; without this the text would weigh
                ``clip_frames / T`` times more in training than on the whole clip at evaluation.

        Returns:
            The prompts and AudioCon embeddings (:class:`FuserOutput`).
        """
        cfg = self.cfg
        if len(features) != 3:
            raise ShapeError(f"AuralFuser needs 3 feature maps (strides 4, 8, 16), got {len(features)}")
        b, t, _ = audio.shape
        if features[0].shape[0] != b * t or features[0].shape[1] != cfg.dim:
            raise ShapeError(
                f"AuralFuser: features[0] must be ({b * t}, {cfg.dim}, h, w) for audio {tuple(audio.shape)}, "
                f"got {tuple(features[0].shape)}"
            )
        tokens = self.audio_proj(audio) if self.audio_proj is not None else audio  # (B, T, C)
        token_valid = frame_valid
        if text is not None and self.text_proj is not None:
            if text_valid is None:
                raise ValueError("AuralFuser: text needs text_valid")
            tokens = torch.cat([tokens, self.text_proj(text)], dim=1)  # (B, T+K, C)
            token_valid = torch.cat([frame_valid, text_valid], dim=1)  # (B, T+K)
        length = tokens.shape[1]
        token_scale = None
        if clip_frames is not None and clip_frames != t and length > t:
            if clip_frames < t:
                raise ValueError(f"AuralFuser: clip_frames {clip_frames} < the {t} frames of the batch")
            token_scale = torch.ones(length, device=tokens.device)
            token_scale[t:] = t / clip_frames  # (L,): text tokens as on the whole clip
        if cfg.audio_position == "constant":
            apos = sine_position_encoding_1d(1, cfg.dim, tokens.device)[None]  # (1, 1, C): [0, 1, 0, 1, ...]
        else:
            seconds = sine_position_encoding_1d(t, cfg.dim, tokens.device, positions=audio_seconds)  # (T, C)
            apos = F.pad(seconds, (0, 0, 0, length - t))[None]  # (1, L, C): text tokens get none
        apos = apos.to(tokens.dtype)
        # The released fusion and token blocks attend over every token, padding included (the released text encoder
        # pads every expression to 25 tokens, so what they see does not depend on the batch); masks are avseg's.
        mask = None if cfg.fusion_layout == "released" else token_valid

        dense: list[Tensor] = []
        sparse: list[Tensor] = []
        residuals: list[Tensor] = []
        grid: tuple[int, int] = (0, 0)
        previous: Tensor | None = None
        d = tokens
        for i in range(3):
            m = self.patch_embeds[i](features[i])  # (N, C, h, w)
            n, c, h, w = m.shape
            if grid != (0, 0) and (h, w) != grid:
                raise ShapeError(f"AuralFuser: level {i} reaches a {h}x{w} grid, level 0 reached {grid}")
            grid = (h, w)
            pos = self.position(h, w, m.device, m.dtype)[None]  # (1, h*w, C)
            x = m.flatten(2).transpose(1, 2)  # (N, h*w, C)
            if previous is not None:
                x = x + previous
                x = self.smooth_convs[i - 1](x.transpose(1, 2).reshape(n, c, h, w)).flatten(2).transpose(1, 2)
            x = x + pos
            d = d + apos
            for block in self.visual_blocks[i]:
                x = block(x, h, w)  # (N, h*w, C)
            for block in self.audio_blocks[i]:
                d = block(d, mask)  # (B, L, C)
            x, d, res = self.fusion[i](
                x + pos, d + apos, frame_valid=frame_valid, token_valid=token_valid, token_scale=token_scale
            )
            previous = x
            dense.append(x)
            sparse.append(d[:, :t])  # (B, T, C): the seconds' tokens only
            residuals.append(res)

        pixel_emb = audio_emb = None
        if self.visual_projector is not None and self.audio_projector is not None and self.projector is not None:
            source = residuals if self.projector.source == "residual" else dense
            h, w = grid
            pixel_emb = [
                self.visual_projector(s).transpose(1, 2).reshape(b * t, -1, h, w) for s in source
            ]  # 3 × (N, P, h, w)
            audio_emb = [self.audio_projector(s) for s in sparse]  # 3 × (B, T, P)
        return FuserOutput(
            dense=dense, sparse=sparse, pixel_embeddings=pixel_emb, audio_embeddings=audio_emb, grid=grid
        )


# -- AudioCon --------------------------------------------------------------------------------------------------------


def sample_audiocon_pixels(
    target: Tensor, prediction: Tensor, limit: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Choose the pixels of one frame that AudioCon contrasts.

    For each class present in ``target``, up to ``limit`` "hard" pixels (predicted wrongly) and up to ``limit``
    "easy" pixels (predicted rightly) are drawn at random; when one kind has fewer than ``limit``, the other fills
    in, so that a class contributes ``min(2·limit, its pixel count)`` samples, half hard and half easy when it can.

    Args:
        target: ``(M,)`` integer class of each pixel (0 = background).
        prediction: ``(M,)`` predicted class of each pixel.
        limit: ``N``, the per-kind sample limit (64 for Ref-AVS, 128 for AVS in the released code).
        generator: random generator (None: the global one).

    Returns:
        ``indices (n,)`` into the ``M`` pixels and their ``labels (n,)``.
    """
    chosen, labels = [], []
    for cls in torch.unique(target):
        is_cls = target == cls
        hard = torch.nonzero(is_cls & (prediction != cls)).flatten()
        easy = torch.nonzero(is_cls & (prediction == cls)).flatten()
        n_hard, n_easy = min(limit, hard.numel()), min(limit, easy.numel())
        if n_hard + n_easy < 2 * limit:  # top up the scarcer kind's share from the other kind
            if hard.numel() > n_hard:
                n_hard = min(hard.numel(), 2 * limit - n_easy)
            elif easy.numel() > n_easy:
                n_easy = min(easy.numel(), 2 * limit - n_hard)
        for pool, count in ((hard, n_hard), (easy, n_easy)):
            if count:
                pick = pool[torch.randperm(pool.numel(), generator=generator, device=pool.device)[:count]]
                chosen.append(pick)
                labels.append(target[pick])
    if not chosen:
        empty = target.new_zeros(0, dtype=torch.long)
        return empty, empty
    return torch.cat(chosen).long(), torch.cat(labels).long()


def supervised_info_nce(
    anchors: Tensor, anchor_labels: Tensor, prototypes: Tensor, prototype_labels: Tensor, temperature: float
) -> Tensor:
    """Supervised InfoNCE with visual anchors and audio prototypes (ContrastiveSeg style, as AudioCon uses it).

    Every anchor is contrasted with ``[anchors; prototypes]``. Its positives are the *prototypes* with its label (so
    that what pulls a pixel toward its class is the sound, not other pixels); its negatives are every anchor and
    prototype with another label. For one positive ``p``: ``-log(exp(s_p) / (exp(s_p) + Σ_neg exp(s_n)))`` with
    ``s = a·c / τ``, averaged over the anchor's positives; anchors without a positive count as 0 in the mean over
    anchors (as released).

    Args:
        anchors: ``(n, P)`` L2-normalised pixel embeddings.
        anchor_labels: ``(n,)``.
        prototypes: ``(m, P)`` L2-normalised audio embeddings.
        prototype_labels: ``(m,)``.
        temperature: ``τ`` (0.1).
    """
    contrast = torch.cat([anchors, prototypes])  # (n+m, P)
    labels = torch.cat([anchor_labels, prototype_labels])  # (n+m,)
    logits = anchors @ contrast.T / temperature  # (n, n+m)
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    same = anchor_labels[:, None] == labels[None, :]  # (n, n+m)
    negatives = (torch.exp(logits) * (~same)).sum(1, keepdim=True)  # (n, 1)
    log_prob = logits - torch.log(torch.exp(logits) + negatives)  # (n, n+m)
    positive = same.clone()
    positive[:, : anchors.shape[0]] = False  # visual–visual pairs are never positives
    count = positive.sum(1).clamp_min(1)
    return -((log_prob * positive).sum(1) / count).mean()


def audiocon_loss(
    pixel_embeddings: list[Tensor],
    audio_embeddings: list[Tensor],
    target: Tensor,
    prediction: Tensor,
    *,
    labelled: Tensor,
    sample_limit: int = 64,
    total_limit: int = 15240,
    temperature: float = 0.1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """AudioCon: pull the pixels of the sounding object toward the clip's audio embeddings.

    Per labelled frame and per fuser level, pixels are sampled with :func:`sample_audiocon_pixels` on the
    ``h × w`` grid (ground truth resized with nearest neighbours, prediction = logits > 0 resized bilinearly). Each
    frame and level contributes one audio prototype per foreground class present (label = that class) or, for a
    frame without foreground (silent or not referred), one prototype with label 0. Labels are offset by the clip
    index, so that positives never cross clips. All samples of the batch enter one
    :func:`supervised_info_nce` (at most ``total_limit`` anchors).

    Args:
        pixel_embeddings: per level ``(B*T, P, h, w)``.
        audio_embeddings: per level ``(B, T, P)``.
        target: ``(B, T, H, W)`` integer masks.
        prediction: ``(B, T, H', W')`` mask logits of the chosen output (any resolution).
        labelled: ``(B, T)`` bool, frames with a ground-truth mask.
        sample_limit: ``N``, per-class samples of each kind (hard / easy).
        total_limit: cap on the anchors (a random subset is kept).
        temperature: InfoNCE temperature.
        generator: random generator for the sampling.

    Returns:
        A scalar; 0 (connected to the graph) when nothing was sampled.
    """
    t = target.shape[1]
    h, w = pixel_embeddings[0].shape[-2:]
    gt = F.interpolate(target.flatten(0, 1)[:, None].float(), size=(h, w), mode="nearest")[:, 0].long()  # (N, h, w)
    pred = F.interpolate(prediction.flatten(0, 1)[:, None].float(), size=(h, w), mode="bilinear", align_corners=False)
    pred = (pred[:, 0] > 0).long()  # (N, h, w)
    if gt.max() > 1:  # semantic targets: a predicted foreground pixel counts as the frame's class there
        pred = pred * gt.clamp_min(1)
    anchors, anchor_labels, protos, proto_labels = [], [], [], []
    for frame in torch.nonzero(labelled.flatten()).flatten().tolist():
        clip = frame // t
        offset = clip * 1000
        classes = torch.unique(gt[frame])
        foreground = classes[classes > 0]
        for level in range(len(pixel_embeddings)):
            emb = pixel_embeddings[level][frame].flatten(1).T  # (h*w, P)
            idx, lab = sample_audiocon_pixels(gt[frame].flatten(), pred[frame].flatten(), sample_limit, generator)
            if idx.numel():
                anchors.append(emb[idx])
                anchor_labels.append(lab + offset)
            audio = audio_embeddings[level][clip, frame % t]  # (P,)
            proto_classes = foreground if foreground.numel() else classes.new_zeros(1)
            for cls in proto_classes.tolist():
                protos.append(audio[None])
                proto_labels.append(torch.tensor([cls + offset], device=audio.device))
    zero = sum(e.sum() for e in pixel_embeddings) * 0.0 + sum(e.sum() for e in audio_embeddings) * 0.0
    if not anchors or not protos:
        return zero
    a = torch.cat(anchors)
    al = torch.cat(anchor_labels)
    if a.shape[0] > total_limit:
        keep = torch.randperm(a.shape[0], generator=generator, device=a.device)[:total_limit]
        a, al = a[keep], al[keep]
    return supervised_info_nce(a, al, torch.cat(protos), torch.cat(proto_labels), temperature) + zero
