"""EEMC: the Ref-AVS baseline. Audio, visual and text cues fused into prompt features for a Mask2Former.

Paper: Y. Wang et al., "Ref-AVS: Refer and Segment Objects in Audio-Visual Scenes", ECCV 2024 (the Ref-AVSBench
benchmark and its baseline, "Expression Enhancing with Multimodal Cues"). Code: ``GeWu-Lab/Ref-AVS`` at ``82eb688``
(``models/avs_model.py::REFAVS_Model_Base``, ``models/local/mask2former/{model_m2f,refavs_transformer,
image_processor_m2f}.py``, ``configs/config.py``, ``run_refavs.py``, ``scripts/train.py``). This file is avseg's
implementation (Apache-2.0) written from that code; Mask2Former comes from transformers, which is subclassed at two
seams and never copied. ``docs/eemc.md`` lists where avseg differs from the released code.

**Encoders.** A Mask2Former (Swin-B, ADE20K semantic) reads every frame at 384 px; the last Swin stage gives a
``1024``-d ``12×12`` map per frame, the visual cues. VGGish gives one 128-d audio vector per second, DistilRoBERTa the
expression's 25 tokens (padded to 25, the padding read like the rest). Audio and text go through ``Linear → ReLU →
Linear`` (hidden 2048) into the fusion width ``D = 1024``; the visual cues are already ``D``-wide.

**Cue fusion.** Text joins each modality in a multi-head self-attention (``D``, 8 heads): ``[A ; T]`` (audio–text)
and ``[V ; T]`` (visual–text, all frames of the clip in one sequence). The audio and visual halves go through the
*cached memory* ``x·(β+1) − cumsum(x)/t`` along the token axis (β = 1: each token minus the running mean of the tokens
before it and itself, doubled), the text halves are averaged with the text: ``cues_T = (T + T_A + T_V) / 3``. Per
frame ``f`` the sequence ``[cues_A ; tag_A ; cues_V(f) ; tag_V ; cues_T]`` (``tag_A`` a token of zeros, ``tag_V`` of
ones) goes through the multimodal attention, then through ``Linear → ReLU → Linear`` (1024 → 2048 → 256) into the
frame's prompt features.

**Mask2Former seams.** (1) *avs_adapt*: each deformable-attention layer of the pixel decoder passes its output through
``Linear(256, 64) → ReLU → Linear(64, 256)``. (2) *ref_avs_attn*: before the transformer decoder, the 100 content
queries attend to the frame's prompt features (4 heads) and become ``q + σ(β_attn)·attn(q, P) + σ(β_pool)·mean(P)``.

**Mask.** The frozen ADE20K classifier scores each query on class 0 against "no object" (a two-way softmax); the
frame's logit map is the score-weighted sum of the query mask logits, upsampled to 384 px then to 256 px, and trained
with BCE on 256×256 maps. Only the audio, text and prompt projections, the adapters and ``ref_avs_attn`` train; the
three attentions keep their random initialisation, as in the released code.

**Token layout.** ``fusion.token_layout = "released"`` reproduces two quirks of the released tensor handling that a
converted checkpoint was trained with: the visual tokens are the encoder map reinterpreted without a permute (each
"token" holds ``D`` consecutive values of the channel-major ``(C, 12, 12)`` map of one frame), and the multimodal
attention runs along the batch axis (token ``n`` of each clip attends to token ``n`` of the other clips of the batch,
so a clip's prediction depends on its batch mates). ``"corrected"`` uses one token per position of the map and
attends along the sequence, which is what the released code's comments and shapes intend.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avseg.data.types import AVSBatch
from avseg.errors import UsageError
from avseg.layers.audio import AudioEncoder, AudioEncoderConfig, tiny_logmel_audio
from avseg.layers.frozen import Frozen, leave_out_frozen_keys
from avseg.layers.text import (
    MINILM_PACKAGE,
    TextConfig,
    TextEncoderConfig,
    distilroberta_encoder,
    frozen_text_encoder,
)
from avseg.metrics.protocols import REFAVS_OFFICIAL, protocol_table
from avseg.models.base import AVSModel, AVSOutput, TextInput
from avseg.models.registry import register_model
from avseg.recipe import OptimConfig, ScheduleConfig, TrainRecipe

__all__ = [
    "ADE_SWIN_BASE",
    "EEMC",
    "RELEASED_TRAINABLE",
    "CueFusion",
    "CueFusionConfig",
    "EEMCConfig",
    "Mask2FormerLayerConfig",
    "PromptedMask2Former",
    "QueryPromptAttention",
    "cached_memory",
    "paper_recipe",
    "trains",
]

MASK2FORMER_ADE_SWIN_BASE = "facebook/mask2former-swin-base-ade-semantic"

# transformers Mask2FormerConfig keyword arguments of facebook/mask2former-swin-base-ade-semantic (Swin-B with
# 12x12 windows at 384 px, 150 ADE20K classes; the rest are Mask2FormerConfig's defaults, which are that
# checkpoint's), for random-weight builds without the hub.
ADE_SWIN_BASE: dict[str, Any] = {
    "backbone_config": {
        "model_type": "swin",
        "image_size": 384,
        "embed_dim": 128,
        "depths": [2, 2, 18, 2],
        "num_heads": [4, 8, 16, 32],
        "window_size": 12,
        "out_features": ["stage1", "stage2", "stage3", "stage4"],
    },
    "num_labels": 150,
    "feature_size": 256,
    "mask_feature_size": 256,
    "hidden_dim": 256,
    "encoder_feedforward_dim": 1024,
    "encoder_layers": 6,
    "decoder_layers": 10,
    "num_attention_heads": 8,
    "dim_feedforward": 2048,
    "num_queries": 100,
}

RELEASED_TRAINABLE: tuple[str, ...] = ("audio_proj", "text_proj", "prompt_proj", "avs_adapt", "ref_avs_attn")
"""Name fragments of the parameters the released code trains (``configs/config.py --train_params``): a parameter
trains when its name contains one of them."""


# -- configs ---------------------------------------------------------------------------------------------------------


@dataclass
class Mask2FormerLayerConfig:
    """The Mask2Former and its two EEMC seams.

    Attributes:
        weights: hub id or local folder of a transformers ``Mask2FormerForUniversalSegmentation``; read when the model
            is built with ``pretrained``. Its weights stay frozen (except the seams) and are left out of checkpoints.
        hf_config: ``Mask2FormerConfig`` keyword arguments (``backbone_config`` a dict with ``model_type``) for a
            random-weight build; a pretrained build reads the folder's own config.
        image_size: the square size frames are resized to (the released image processor's 384).
        object_class: the class whose score against "no object" weighs each query's mask (the released code takes
            class 0 of the classifier, "wall" in ADE20K).
        adapter_reduction: ``avs_adapt`` hidden width = ``feature_size / adapter_reduction`` (released 4).
        query_heads: heads of ``ref_avs_attn`` (released 4).
    """

    weights: str | None = MASK2FORMER_ADE_SWIN_BASE
    hf_config: dict[str, Any] = field(default_factory=lambda: dict(ADE_SWIN_BASE))
    image_size: int = 384
    object_class: int = 0
    adapter_reduction: int = 4
    query_heads: int = 4

    def __post_init__(self) -> None:
        if self.image_size < 32 or self.image_size % 32:
            raise ValueError(f"mask2former.image_size must be a positive multiple of 32, got {self.image_size}")
        if self.adapter_reduction < 1 or self.query_heads < 1:
            raise ValueError(
                f"mask2former.adapter_reduction and query_heads must be >= 1, got {self.adapter_reduction} and "
                f"{self.query_heads}"
            )
        if self.object_class < 0:
            raise ValueError(f"mask2former.object_class must be >= 0, got {self.object_class}")
        self.hf_config = dict(self.hf_config)


@dataclass
class CueFusionConfig:
    """The cue fusion.

    Attributes:
        dim: the fusion width ``D``; it must equal the channels of the last backbone stage (1024 for Swin-B), which
            enter the fusion without a projection.
        heads: heads of the three multi-head attentions (8).
        hidden: hidden width of the ``Linear → ReLU → Linear`` projections (2048).
        memory_beta: β of the cached memory ``x·(β+1) − cumsum(x)/t`` (1).
        token_layout: ``"released"`` (channel-major visual tokens, multimodal attention along the batch axis) or
            ``"corrected"`` (spatial tokens, attention along the sequence); see the module docstring.
    """

    dim: int = 1024
    heads: int = 8
    hidden: int = 2048
    memory_beta: float = 1.0
    token_layout: Literal["released", "corrected"] = "released"

    def __post_init__(self) -> None:
        if self.dim < 1 or self.heads < 1 or self.dim % self.heads:
            raise ValueError(f"fusion.dim ({self.dim}) must be a positive multiple of fusion.heads ({self.heads})")
        if self.hidden < 1:
            raise ValueError(f"fusion.hidden must be >= 1, got {self.hidden}")
        if self.token_layout not in ("released", "corrected"):
            raise ValueError(f"fusion.token_layout must be 'released' or 'corrected', got {self.token_layout!r}")


def paper_recipe() -> TrainRecipe:
    """The released recipe: ``torch.optim.AdamW`` at lr 1e-4 with torch's defaults (weight decay 0.01), no schedule,
    batch 2, 50 epochs, frames at the image processor's 384 px."""
    return TrainRecipe(
        optim=OptimConfig(name="adamw", lr=1e-4, weight_decay=0.01),
        schedule=ScheduleConfig(kind="constant"),
        batch_size=2,
        epochs=50,
        image_size=384,
        notes=(
            "released code (configs/config.py, run_refavs.py): AdamW lr 1e-4 (torch defaults otherwise), no "
            "scheduler, train batch 2, 50 epochs, best checkpoint by val mIoU (train.select_metric), no augmentation"
        ),
    )


@dataclass
class EEMCConfig:
    """A whole EEMC model.

    Attributes:
        pretrained: load the pretrained weights the sub-configs name (Mask2Former, text encoder, VGGish); False builds
            random weights offline (tests, parameter counts).
        mask2former: the segmenter and its seams.
        audio: per-second audio features (VGGish).
        text: the expression's encoder (DistilRoBERTa, 25 tokens, padded to 25); EEMC needs one.
        fusion: the cue fusion.
        trainable: name fragments of the parameters that train (:data:`RELEASED_TRAINABLE`); every other parameter is
            frozen, the three fusion attentions included.
        loss_size: the square size of the maps the BCE compares (256).
        train_frames: in training, run this many frames of each clip (None: every frame, as released).
        recipe: training recipe.
    """

    pretrained: bool = True
    mask2former: Mask2FormerLayerConfig = field(default_factory=Mask2FormerLayerConfig)
    audio: AudioEncoderConfig = field(
        default_factory=lambda: AudioEncoderConfig(encoder="vggish", vggish_weights="vggish-10086976.pth")
    )
    text: TextConfig = field(
        default_factory=lambda: TextConfig(encoder=distilroberta_encoder(max_tokens=25, padding="max_tokens"))
    )
    fusion: CueFusionConfig = field(default_factory=CueFusionConfig)
    trainable: tuple[str, ...] = RELEASED_TRAINABLE
    loss_size: int = 256
    train_frames: int | None = None
    recipe: TrainRecipe = field(default_factory=paper_recipe)

    def __post_init__(self) -> None:
        self.trainable = tuple(self.trainable)
        if self.text.encoder is None:
            raise ValueError("EEMC reads the expression: text.encoder must name a text encoder")
        if self.loss_size < 1:
            raise ValueError(f"loss_size must be >= 1, got {self.loss_size}")
        if self.train_frames is not None and self.train_frames < 1:
            raise ValueError(f"train_frames must be >= 1 or None, got {self.train_frames}")

    @property
    def input_size(self) -> int:
        """The square size the Mask2Former sees."""
        return self.mask2former.image_size


# -- Mask2Former with its two seams ----------------------------------------------------------------------------------


def _projection(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """``Linear → ReLU → Linear``: the audio, text and prompt projections, and ``avs_adapt``."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))


class QueryPromptAttention(nn.Module):
    """``ref_avs_attn``: Mask2Former's content queries read the frame's prompt features.

    ``q' = q + σ(β_attn)·out(softmax(Q Kᵀ/√d) V) + σ(β_pool)·mean(P)``, queries from ``q``, keys and values from the
    prompts ``P``; both gates start at σ(1).
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"ref_avs_attn: width {dim} is not a multiple of {heads} heads")
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.attn_gate = nn.Parameter(torch.ones(1))
        self.pool_gate = nn.Parameter(torch.ones(1))

    def forward(self, queries: Tensor, prompts: Tensor) -> Tensor:
        """``queries (Q, N, C)`` (sequence first, as Mask2Former's decoder takes them), ``prompts (N, P, C)`` →
        ``(Q, N, C)``."""
        q_len, n, c = queries.shape
        h = self.heads
        q = self.q_proj(queries.transpose(0, 1)).view(n, q_len, h, c // h).transpose(1, 2)  # (N, h, Q, c/h)
        k = self.k_proj(prompts).view(n, -1, h, c // h).transpose(1, 2)  # (N, h, P, c/h)
        v = self.v_proj(prompts).view(n, -1, h, c // h).transpose(1, 2)
        attended = F.scaled_dot_product_attention(q, k, v)  # (N, h, Q, c/h)
        out = self.out_proj(attended.transpose(1, 2).reshape(n, q_len, c))  # (N, Q, C)
        pooled = prompts.mean(dim=1)  # (N, C)
        return queries + self.attn_gate.sigmoid() * out.transpose(0, 1) + self.pool_gate.sigmoid() * pooled[None]


@functools.cache
def _seam_classes() -> tuple[type, type]:
    """The two transformers subclasses, defined on first use (transformers is imported lazily)."""
    from transformers.models.mask2former import modeling_mask2former as m2f

    class AdaptedDeformableAttention(m2f.Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention):
        """The pixel decoder's deformable attention with ``avs_adapt`` on its output (after ``output_proj``)."""

        def __init__(self, embed_dim: int, num_heads: int, n_levels: int, n_points: int, reduction: int) -> None:
            super().__init__(embed_dim, num_heads, n_levels, n_points)
            self.avs_adapt = _projection(embed_dim, embed_dim // reduction, embed_dim)

        def forward(self, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
            output, weights = super().forward(*args, **kwargs)
            return self.avs_adapt(output), weights

    class PromptedTransformerModule(m2f.Mask2FormerTransformerModule):
        """Mask2Former's transformer module whose content queries read prompt features (``ref_avs_attn``) on their
        way into the decoder; without prompts it is the plain module."""

        def __init__(self, in_features: int, config: Any, query_heads: int) -> None:
            super().__init__(in_features=in_features, config=config)
            self.ref_avs_attn = QueryPromptAttention(config.hidden_dim, query_heads)
            self._prompts: Tensor | None = None
            self.decoder.register_forward_pre_hook(self._prompt_queries, with_kwargs=True)

        def _prompt_queries(self, decoder: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            if self._prompts is None:
                return None
            return args, {**kwargs, "inputs_embeds": self.ref_avs_attn(kwargs["inputs_embeds"], self._prompts)}

        def forward(self, *args: Any, prompts: Tensor | None = None, **kwargs: Any) -> Any:
            """Mask2Former's transformer module; ``prompts (N, P, C)`` for the ``N`` images, or None."""
            self._prompts = prompts
            try:
                return super().forward(*args, **kwargs)
            finally:
                self._prompts = None

    return AdaptedDeformableAttention, PromptedTransformerModule


def _replace(old: nn.Module, new: nn.Module) -> nn.Module:
    """``new`` holding ``old``'s tensors (its extra parts keep their initialisation)."""
    result = new.load_state_dict(old.state_dict(), strict=False, assign=True)
    if result.unexpected_keys:
        raise RuntimeError(f"{type(new).__name__} lacks {result.unexpected_keys}")
    return new


class PromptedMask2Former(nn.Module):
    """A transformers ``Mask2FormerForUniversalSegmentation`` (``.model``) with EEMC's seams.

    The parameters for whose names (``model.…``) ``trains`` says True train; the rest are frozen. The module always runs
    in eval mode (Swin's stochastic depth stays off: the backbone is frozen). With ``pretrained`` the frozen tensors
    are left out of checkpoints (they come from ``config.weights``).

    Shapes: ``N`` images, ``S`` = ``config.image_size``, ``C`` = the decoder width (``hidden_dim``), ``Q`` queries.
    """

    def __init__(self, config: Mask2FormerLayerConfig, *, pretrained: bool, trains: Callable[[str], bool]) -> None:
        super().__init__()
        from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation

        self.config = config
        if pretrained:
            if config.weights is None:
                raise ValueError("mask2former.weights is None: name a hub id or folder, or build with pretrained=False")
            model = Mask2FormerForUniversalSegmentation.from_pretrained(config.weights)
        else:
            model = Mask2FormerForUniversalSegmentation(Mask2FormerConfig(**config.hf_config))
        adapted, prompted = _seam_classes()
        for layer in model.model.pixel_level_module.decoder.encoder.layers:
            old = layer.self_attn
            layer.self_attn = _replace(
                old, adapted(old.d_model, old.n_heads, old.n_levels, old.n_points, config.adapter_reduction)
            )
        hf = model.config
        if not 0 <= config.object_class < hf.num_labels:
            raise ValueError(f"mask2former.object_class {config.object_class} is not one of {hf.num_labels} classes")
        old = model.model.transformer_module
        model.model.transformer_module = _replace(
            old, prompted(in_features=hf.feature_size, config=hf, query_heads=config.query_heads)
        )
        self.model = model
        self.hidden_size: int = int(hf.hidden_dim)
        self.visual_channels: int = int(model.model.pixel_level_module.encoder.num_features[-1])
        for name, p in self.named_parameters():
            p.requires_grad_(trains(name))
        if pretrained:
            self.leave_out_frozen()
        self.train(False)

    def leave_out_frozen(self) -> None:
        """Leave the frozen tensors out of ``state_dict()`` and keep them on ``load_state_dict()`` (they are rebuilt
        from ``config.weights``): what a pretrained build does, and what a converted checkpoint holds."""
        leave_out_frozen_keys(self)

    def train(self, mode: bool = True) -> PromptedMask2Former:
        """Stay in eval mode (no stochastic depth in the frozen backbone, no decoder layer drop)."""
        return super().train(False)

    def encode(self, images: Tensor) -> Any:
        """The backbone and the pixel decoder: ``images (N, 3, S, S)`` → transformers' pixel-level output
        (``encoder_last_hidden_state (N, V, S/32, S/32)``, ``decoder_hidden_states``, ``decoder_last_hidden_state
        (N, C, S/4, S/4)``)."""
        return self.model.model.pixel_level_module(pixel_values=images)

    def decode(self, pixel: Any, prompts: Tensor | None, object_class: int) -> Tensor:
        """The transformer decoder with the prompts, then the binary map.

        Args:
            pixel: :meth:`encode`'s output.
            prompts: ``(N, P, C)`` prompt features per image, or None (plain Mask2Former queries).
            object_class: the class scored against "no object".

        Returns:
            ``(N, S/4, S/4)`` logits: the query masks weighted by the two-way softmax of each query's
            ``object_class`` and "no object" class logits.
        """
        decoded = self.model.model.transformer_module(
            multi_scale_features=pixel.decoder_hidden_states,
            mask_features=pixel.decoder_last_hidden_state,
            prompts=prompts,
            output_hidden_states=True,
        )
        queries = decoded.intermediate_hidden_states[-1].transpose(0, 1)  # (Q, N, C) -> (N, Q, C)
        classes = self.model.class_predictor(queries)  # (N, Q, classes + 1)
        pair = torch.stack([classes[..., object_class], classes[..., -1]], dim=-1)  # (N, Q, 2)
        weights = pair.softmax(dim=-1)[..., 0]  # (N, Q)
        masks = decoded.masks_queries_logits[-1]  # (N, Q, S/4, S/4)
        return torch.einsum("nq,nqhw->nhw", weights, masks)


# -- the cue fusion --------------------------------------------------------------------------------------------------


def cached_memory(x: Tensor, beta: float) -> Tensor:
    """``x (B, N, D)`` → ``x·(β+1) − cumsum(x)/t`` along the token axis (``t = 1 … N``)."""
    steps = torch.arange(1, x.shape[1] + 1, device=x.device, dtype=x.dtype).view(1, -1, 1)
    return x * (beta + 1) - x.cumsum(dim=1) / steps


@dataclass
class FusionOutput:
    """The cue fusion's results.

    Attributes:
        prompts: ``(B, T, N, C)`` prompt features per frame.
        tokens: ``(B, T, N, D)`` the multimodal sequences before the attention, ``N = A + 1 + G + 1 + L`` (audio
            tokens, tag, the frame's ``G`` visual tokens, tag, text tokens).
    """

    prompts: Tensor
    tokens: Tensor


class CueFusion(nn.Module):
    """Audio, visual and text cues → per-frame prompt features.

    Args:
        config: the fusion.
        audio_dim, text_dim: widths of the audio features and text tokens.
        prompt_dim: the Mask2Former decoder width ``C``.
    """

    def __init__(self, config: CueFusionConfig, *, audio_dim: int, text_dim: int, prompt_dim: int) -> None:
        super().__init__()
        self.config = config
        d = config.dim
        self.audio_proj = _projection(audio_dim, config.hidden, d)
        self.text_proj = _projection(text_dim, config.hidden, d)
        self.prompt_proj = _projection(d, config.hidden, prompt_dim)
        self.attn_audio_text = nn.MultiheadAttention(d, config.heads, batch_first=True)
        self.attn_visual_text = nn.MultiheadAttention(d, config.heads, batch_first=True)
        self.attn_multimodal = nn.MultiheadAttention(d, config.heads, batch_first=True)

    @staticmethod
    def _self_attention(attn: nn.MultiheadAttention, x: Tensor) -> Tensor:
        return attn(x, x, x, need_weights=False)[0]

    def forward(self, audio: Tensor, text: Tensor, visual: Tensor) -> FusionOutput:
        """Fuse one batch of clips.

        Args:
            audio: ``(B, A, audio_dim)`` per-second audio features.
            text: ``(B, L, text_dim)`` expression tokens.
            visual: ``(B, T, G, D)`` visual tokens per frame.

        Returns:
            The per-frame prompts and the sequences that made them.
        """
        cfg = self.config
        b, t, g, d = visual.shape
        a = self.audio_proj(audio)  # (B, A, D)
        txt = self.text_proj(text)  # (B, L, D)
        v = visual.reshape(b, t * g, d)  # every frame in one sequence
        n_a, n_v = a.shape[1], v.shape[1]
        audio_text = self._self_attention(self.attn_audio_text, torch.cat([a, txt], dim=1))  # (B, A + L, D)
        visual_text = self._self_attention(self.attn_visual_text, torch.cat([v, txt], dim=1))  # (B, T*G + L, D)
        cues_a = cached_memory(audio_text[:, :n_a], cfg.memory_beta)  # (B, A, D)
        cues_v = cached_memory(visual_text[:, :n_v], cfg.memory_beta).view(b, t, g, d)
        cues_t = (txt + audio_text[:, n_a:] + visual_text[:, n_v:]) / 3.0  # (B, L, D)
        tag_a = a.new_zeros(b, t, 1, d)
        tag_v = a.new_ones(b, t, 1, d)
        tokens = torch.cat(
            [cues_a[:, None].expand(b, t, -1, d), tag_a, cues_v, tag_v, cues_t[:, None].expand(b, t, -1, d)], dim=2
        )  # (B, T, N, D)
        if cfg.token_layout == "released":
            # The released code hands (B, N, D) to a sequence-first attention: it attends across the clips.
            across = tokens.permute(1, 2, 0, 3).reshape(-1, b, d)  # (T*N, B, D): B is the sequence
            mixed = self._self_attention(self.attn_multimodal, across).view(t, -1, b, d)  # (T, N, B, D)
            fused = mixed.permute(2, 0, 1, 3)  # (B, T, N, D)
        else:
            fused = self._self_attention(self.attn_multimodal, tokens.flatten(0, 1)).view(tokens.shape)
        return FusionOutput(prompts=self.prompt_proj(fused), tokens=tokens)


# -- the model -------------------------------------------------------------------------------------------------------


def trains(name: str, trainable: tuple[str, ...]) -> bool:
    """Whether the EEMC parameter ``name`` (``fusion.audio_proj.0.weight``) trains: it contains a fragment of
    ``trainable``, as the released ``--train_params`` test does."""
    return any(fragment in name for fragment in trainable)


class EEMC(AVSModel):
    """EEMC on avseg's model contract (binary masks: Ref-AVS).

    ``forward(batch)`` returns :class:`~avseg.models.base.AVSOutput` with ``mask_logits (B, T, 1, H, W)`` (the
    ``loss_size`` map upsampled to the batch's frame size) and ``aux``:

    * ``"loss_logits"``: ``(B, T', loss_size, loss_size)`` the maps the BCE reads;
    * ``"prompts"``: ``(B, T', N, C)`` the prompt features given to the Mask2Former;
    * ``"tokens"``: ``(B, T', N, D)`` the multimodal sequences ``[cues_A ; tag_A ; cues_V ; tag_V ; cues_T]``.
    """

    family = "eemc"
    config_class = EEMCConfig
    official_protocols = protocol_table(refavs=REFAVS_OFFICIAL)

    def __init__(self, config: EEMCConfig) -> None:
        super().__init__(config)
        cfg = config
        assert cfg.text.encoder is not None  # checked by the config
        self.mask2former = PromptedMask2Former(
            cfg.mask2former, pretrained=cfg.pretrained, trains=lambda name: self.trains(f"mask2former.{name}")
        )
        if self.mask2former.visual_channels != cfg.fusion.dim:
            raise ValueError(
                f"fusion.dim {cfg.fusion.dim} must equal the last backbone stage's {self.mask2former.visual_channels} "
                "channels (they enter the fusion without a projection)"
            )
        self.audio_encoder = AudioEncoder(cfg.audio, pretrained=cfg.pretrained)
        self.text_encoder: Frozen = frozen_text_encoder(cfg.text.encoder, pretrained=cfg.pretrained)
        self.fusion = CueFusion(
            cfg.fusion,
            audio_dim=cfg.audio.dim,
            text_dim=self.text_encoder.module.hidden_size,
            prompt_dim=self.mask2former.hidden_size,
        )
        for name, p in self.named_parameters():
            if not name.startswith(("mask2former.", "text_encoder.", "audio_encoder.vggish.")):
                p.requires_grad_(self.trains(name))

    def trains(self, name: str) -> bool:
        """Whether the parameter ``name`` trains: its name contains a fragment of ``config.trainable``."""
        return trains(name, self.config.trainable)

    @property
    def text_input(self) -> TextInput:
        return "required"

    def visual_tokens(self, encoded: Tensor, b: int) -> Tensor:
        """``encoded (B*T, D, g, g)`` (the last backbone stage) → ``(B, T, g*g, D)`` visual tokens per frame."""
        n, d, gh, gw = encoded.shape
        if self.config.fusion.token_layout == "released":
            # The released reshape without a permute: D consecutive values of the channel-major map per "token".
            return encoded.contiguous().view(b, n // b, gh * gw, d)
        return encoded.flatten(2).transpose(1, 2).reshape(b, n // b, gh * gw, d)

    def forward_frames(self, batch: AVSBatch, frames: Tensor | None) -> AVSOutput:
        """Encode the frames, fuse the cues, prompt the decoder.

        Args:
            batch: frames ``(B, T, 3, H, W)`` uint8, audio examples ``(B, T, 1, 96, 64)`` (or embeddings), ``text``
                (every clip needs an expression).
            frames: ``(T',)`` the frames to run (None: all); their visual tokens alone enter the fusion.

        Returns:
            The output of those frames; see the class docstring.
        """
        cfg = self.config
        b, _, _, h, w = batch.frames.shape
        if any(text is None for text in batch.text):
            raise UsageError("EEMC needs a referring expression for every clip (batch.text holds None)")
        size = (cfg.mask2former.image_size, cfg.mask2former.image_size)
        images = self.normalize_frames(batch, frames, size=size)  # (B*T', 3, S, S)
        t = images.shape[0] // b
        pixel = self.mask2former.encode(images)
        device = images.device
        audio = self.audio_encoder(batch).to(device)  # (B, T, A)
        text, _ = self.text_encoder([str(s) for s in batch.text])  # (B, L, E), padding read too (as released)
        visual = self.visual_tokens(pixel.encoder_last_hidden_state, b)  # (B, T', G, D)
        fused = self.fusion(audio, text.to(device), visual)
        low = self.mask2former.decode(pixel, fused.prompts.flatten(0, 1), cfg.mask2former.object_class)  # (B*T', s, s)
        # As the released post-processing: to the network's input size, then to the loss size.
        full = F.interpolate(low[:, None], size=size, mode="bilinear", align_corners=False)
        loss_logits = F.interpolate(full, size=(cfg.loss_size, cfg.loss_size), mode="bilinear", align_corners=False)
        logits = F.interpolate(loss_logits, size=(h, w), mode="bilinear", align_corners=False)  # (B*T', 1, H, W)
        return AVSOutput(
            mask_logits=logits.view(b, t, 1, h, w),
            aux={
                "loss_logits": loss_logits.view(b, t, cfg.loss_size, cfg.loss_size),
                "prompts": fused.prompts,
                "tokens": fused.tokens,
            },
        )

    def losses(self, batch: AVSBatch, output: AVSOutput) -> dict[str, Tensor]:
        """BCE with logits on the ``loss_size`` maps of the computed labelled frames, the ground truth resized
        bilinearly and taken as foreground where above 0 (the released ``cv2.resize(mask, (256, 256))`` then ``> 0``).
        ``"loss"`` equals ``"bce"``."""
        logits = output.aux["loss_logits"]  # (B, T', s, s)
        device = logits.device
        masks = output.select_computed(batch.masks.to(device)).float()  # (B, T', H, W)
        labelled = output.select_computed((batch.label_valid & batch.frame_valid).to(device))  # (B, T')
        if not labelled.any():
            return {"bce": logits.sum() * 0.0, "loss": logits.sum() * 0.0}
        chosen = masks[labelled][:, None]  # (n, 1, H, W)
        if tuple(chosen.shape[-2:]) != tuple(logits.shape[-2:]):
            chosen = F.interpolate(chosen, size=logits.shape[-2:], mode="bilinear", align_corners=False)
        target = (chosen[:, 0] > 0).to(logits.dtype)  # (n, s, s)
        bce = F.binary_cross_entropy_with_logits(logits[labelled], target)
        return {"bce": bce, "loss": bce}


# -- presets ---------------------------------------------------------------------------------------------------------


@register_model("eemc-refavs", EEMC, tasks=("refavs",))
def eemc_refavs() -> EEMCConfig:
    """EEMC as released: Mask2Former Swin-B (ADE20K) + DistilRoBERTa + VGGish, projections, adapters and query
    attention trained, Ref-AVS."""
    return EEMCConfig()


# A Swin of 16-128 channels on 64-px frames (a 2x2 last stage) under a 32-wide Mask2Former with 8 queries.
TINY_MASK2FORMER: dict[str, Any] = {
    "backbone_config": {
        "model_type": "swin",
        "image_size": 64,
        "embed_dim": 16,
        "depths": [1, 1, 1, 1],
        "num_heads": [1, 2, 4, 8],
        "window_size": 4,
        "out_features": ["stage1", "stage2", "stage3", "stage4"],
    },
    "num_labels": 3,
    "feature_size": 32,
    "mask_feature_size": 32,
    "hidden_dim": 32,
    "encoder_feedforward_dim": 64,
    "encoder_layers": 2,
    "decoder_layers": 3,
    "num_attention_heads": 4,
    "dim_feedforward": 64,
    "num_queries": 8,
}


@register_model("eemc-tiny", EEMC, tasks=("refavs",))
def eemc_tiny() -> EEMCConfig:
    """Tiny EEMC for CPU demos and tests: a random 64-px Mask2Former, a log-mel CNN, frozen MiniLM.

    No pretrained Mask2Former or VGGish is available offline, so, unlike the released model, the whole Mask2Former
    and the audio CNN train with the released trainable parts (a random frozen segmenter would carry nothing); the
    three fusion attentions stay frozen at their random initialisation, as released. The fusion is 128-d (the tiny
    Swin's last stage) with 8 heads and 256-wide projections; the BCE compares 64×64 maps; a training step runs 4
    frames of each clip. The recipe is avseg's CPU recipe (AdamW 3e-3, cosine, 8 clips per step).
    """
    return EEMCConfig(
        pretrained=False,
        mask2former=Mask2FormerLayerConfig(weights=None, hf_config=TINY_MASK2FORMER, image_size=64, query_heads=4),
        audio=tiny_logmel_audio(),
        text=TextConfig(
            encoder=TextEncoderConfig(source=MINILM_PACKAGE, pretrained=True, max_tokens=16, padding="max_tokens")
        ),
        fusion=CueFusionConfig(dim=128, heads=8, hidden=256),
        trainable=(*RELEASED_TRAINABLE, "mask2former.model", "audio_encoder.cnn"),
        loss_size=64,
        train_frames=4,
        recipe=TrainRecipe(
            optim=OptimConfig(name="adamw", lr=3e-3, weight_decay=1e-4),
            schedule=ScheduleConfig(kind="cosine", warmup_steps=30),
            batch_size=8,
            epochs=20,
            clip_grad_norm=1.0,
            notes="avseg's CPU recipe for SynthAV; frames read as stored",
        ),
    )
