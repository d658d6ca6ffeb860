"""SAM2-LOVE: text, audio and video fused into one ``[seg]`` token that prompts SAM2 on the first frame.

Paper: Y. Wang et al., "SAM2-LOVE: Segment Anything Model 2 in Language-aided Audio-Visual Scenes", CVPR 2025.
Repository: ``VoyageWang/SAM2LOVE`` (a README and an architecture figure; no code, no weights; the README credits
EVF-SAM, SAM2 and Ref-AVS). This file is avseg's implementation from the paper's description (Apache-2.0); SAM2 comes
from transformers through :mod:`avseg.layers.sam2`. ``docs/sam2love.md`` lists every assumption made where the paper
is silent and the configuration key that changes it.

**Encoders (frozen).** VGGish gives one 128-d audio token per second (``T`` tokens for a clip of ``T`` one-second
frames); an ImageNet ViT reads every frame and gives its patch tokens and its global ``[cls]``; DistilRoBERTa gives
the expression's tokens. Each goes through its own ``Linear → ReLU → Linear`` into the fusion width ``D`` (the
``[cls]`` through the visual one).

**Fusion.** ``L`` bidirectional pre-norm transformer blocks (multi-head self-attention, layer norm, MLP; no rotary or
other position encoding; paper ``L = 6``) run once per frame ``i`` on

    ``[seg] ; F̂_A ; [aud] ; F̂_T ; [vis] ; [his]^i ; F̂_V^i``

where ``[aud]`` and ``[vis]`` are learned modality tokens. **Token propagation**: frames are processed in order and
the output at position 0 (the ``[seg]`` tokens) of frame ``i`` is the ``[seg]`` input of frame ``i + 1``; the audio and
text tokens are the same for every frame, the visual tokens change. **Token accumulation**: ``[his]^i`` holds the
projected ``[cls]`` of frames ``0 … i``, so the sequence grows by one token per frame.

**Prompting SAM2.** The ``[seg]`` after the last frame goes through a projector (``Linear → ReLU → Linear``) into a
sparse prompt token of SAM2's mask decoder on the **first** frame, which SAM2 decodes without memory; SAM2's memory
then tracks the object through the other frames. Training supervises the first frame only with ``1.0·BCE +
1.0·Dice``; the fusion, ``[seg]``, the projections, the projector and SAM2's prompt encoder and mask decoder train,
the three encoders and SAM2's image encoder and memory stay frozen.

**avseg additions.** *Null expressions* (the paper leaves them as future work): SAM2's object score is trained with
BCE to say "absent" on the items a dataset marks null (``null.object_score``), and, as SAM2 always does, a frame whose
object score is negative gets an empty mask. An optional grounding loss (``loss.grounding_weight``, off in the
presets) scores the ``[seg]`` of every frame against that frame's fused patch tokens, supervised by the ground-truth
mask. Padded frames are skipped by the fusion (the ``[seg]`` passes them unchanged), padded text tokens and the audio
of clips without sound are masked out of the attention. The ablations
of the paper are configuration: ``fusion.accumulate_cls``, ``fusion.depth``, ``fusion.num_seg_tokens``,
``fusion.readout`` (learned token or mean of the sequence), ``sam2.trainable`` (Table 6), ``vision`` / ``text`` (CLIP).
``supervision = "all"`` tracks and supervises every frame in training (the tiny preset, whose SAM2 memory starts from
random weights and must learn to track).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avseg.data.types import AVSBatch
from avseg.layers.audio import AudioEncoder, AudioEncoderConfig, tiny_logmel_audio
from avseg.layers.frozen import Frozen
from avseg.layers.losses import soft_dice_loss
from avseg.layers.sam2 import (
    CPU_SAM2_WEIGHTS,
    Sam2LayerConfig,
    Sam2Prompt,
    build_sam2,
    check_reading_size,
    cpu_sam2_config,
    upsample_masks,
)
from avseg.layers.text import TextConfig, distilroberta_encoder, frozen_text_encoder, minilm_encoder
from avseg.layers.vit import ViTEncoderConfig, build_vit_encoder, imagenet_vit_b16, tiny_vit
from avseg.models.base import AVSModel, AVSOutput, TextInput
from avseg.models.registry import register_model
from avseg.recipe import OptimConfig, ScheduleConfig, TrainRecipe

__all__ = [
    "SAM2LOVE",
    "FusionConfig",
    "FusionOutput",
    "NullConfig",
    "PromptConfig",
    "Sam2LoveConfig",
    "Sam2LoveLossConfig",
    "TokenFusion",
    "TrackingConfig",
    "paper_recipe",
]


# -- configs ---------------------------------------------------------------------------------------------------------


@dataclass
class FusionConfig:
    """The fusion transformer and its tokens.

    Attributes:
        dim: the shared width ``D`` every modality is projected to (not given in the paper; 1024 assumed).
        depth: number of blocks ``L`` (paper 6; ablations 1 / 6 / 12).
        heads: attention heads (not given; 16, i.e. 64 channels per head, assumed).
        mlp_ratio: MLP hidden width as a multiple of ``dim`` (not given; 4 assumed).
        dropout: dropout in attention and MLP (not given; 0 assumed).
        num_seg_tokens: ``[seg]`` tokens at the head of the sequence, all propagated from frame to frame (paper 1;
            Table 4 uses 4 and 8).
        prompt_tokens: which propagated ``[seg]`` tokens prompt SAM2: ``"first"`` (the others act as registers) or
            ``"all"`` (one sparse prompt token each).
        accumulate_cls: token accumulation: the projected ``[cls]`` of every frame seen so far enters the sequence
            as ``[his]`` (paper: on; off is the ablation, the sequence then keeps the same length on every frame).
        readout: what prompts SAM2 after the last frame: ``"token"`` the propagated ``[seg]`` (paper) or ``"mean"``
            the mean of the last frame's whole output sequence (Table 5's alternative).
    """

    dim: int = 1024
    depth: int = 6
    heads: int = 16
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    num_seg_tokens: int = 1
    prompt_tokens: Literal["first", "all"] = "first"
    accumulate_cls: bool = True
    readout: Literal["token", "mean"] = "token"

    def __post_init__(self) -> None:
        if self.dim < 1 or self.heads < 1 or self.dim % self.heads:
            raise ValueError(f"fusion.dim ({self.dim}) must be a positive multiple of fusion.heads ({self.heads})")
        if self.depth < 1:
            raise ValueError(f"fusion.depth must be >= 1, got {self.depth}")
        if self.num_seg_tokens < 1:
            raise ValueError(f"fusion.num_seg_tokens must be >= 1, got {self.num_seg_tokens}")
        if not self.mlp_ratio > 0 or not 0.0 <= self.dropout < 1.0:
            raise ValueError(
                f"fusion.mlp_ratio must be > 0 and dropout in [0, 1), got {self.mlp_ratio} and {self.dropout}"
            )
        if self.prompt_tokens not in ("first", "all"):
            raise ValueError(f"fusion.prompt_tokens must be 'first' or 'all', got {self.prompt_tokens!r}")
        if self.readout not in ("token", "mean"):
            raise ValueError(f"fusion.readout must be 'token' or 'mean', got {self.readout!r}")


@dataclass
class PromptConfig:
    """How the fused token reaches SAM2 on the first frame.

    Attributes:
        sparse_mode: ``"replace"``: the projected ``[seg]`` tokens are the decoder's only prompt tokens (EVF-SAM's
            use of SAM's prompt encoder, which the SAM2-LOVE README credits; assumed); ``"append"``: they follow
            SAM2's padding point, as SAM2 does without clicks.
    """

    sparse_mode: Literal["append", "replace"] = "replace"

    def __post_init__(self) -> None:
        if self.sparse_mode not in ("append", "replace"):
            raise ValueError(f"prompt.sparse_mode must be 'append' or 'replace', got {self.sparse_mode!r}")


@dataclass
class TrackingConfig:
    """How SAM2's memory carries the prompted frame through the clip. The prompted frame is always decoded with
    SAM2's single-mask output, the one the losses supervise.

    Attributes:
        multimask_output: on the tracked frames, decode three candidates and keep the best predicted IoU (True), one
            mask (False), or follow SAM2's config (None: three, ``multimask_output_for_tracking``).
        binarize_memory_masks: in eval mode, binarise the masks SAM2's memory encoder reads on every frame (True),
            never (False), or on frames prompted with clicks or masks only (None, SAM2's video predictor).
    """

    multimask_output: bool | None = None
    binarize_memory_masks: bool | None = None


@dataclass
class NullConfig:
    """Expressions that refer to nothing in the clip (Ref-AVS ``null`` items, ``batch.is_null``).

    Attributes:
        object_score: train SAM2's object score to say "absent" (BCE target 0) on null items, so that SAM2 empties
            their masks (avseg). False: null items train like any other item (empty masks under BCE + Dice) and give
            the object score no target, as in the paper.
    """

    object_score: bool = True


@dataclass
class Sam2LoveLossConfig:
    """Loss weights.

    Attributes:
        bce_weight, dice_weight: the paper's ``1.0·BCE + 1.0·Dice`` on the supervised masks (per-pixel mean BCE,
            soft Dice with smoothing 1, both averaged over supervised frames).
        object_weight: BCE on SAM2's object-score logit (target: the frame's ground truth has foreground and the
            item is not null), on the supervised frames (avseg; 0 switches it off).
        grounding_weight: BCE between the fusion's grounding logits (the ``[seg]`` of each frame scored against that
            frame's patch tokens) and the fraction of each patch the ground-truth mask covers, on every labelled
            frame (avseg, not in the paper; 0, the paper's setting, builds no grounding head). It gives the fused
            token a direct reason to depend on the expression: through SAM2's decoder alone it can settle on one
            prompt for every expression.
    """

    bce_weight: float = 1.0
    dice_weight: float = 1.0
    object_weight: float = 1.0
    grounding_weight: float = 0.0

    def __post_init__(self) -> None:
        for name in ("bce_weight", "dice_weight", "object_weight", "grounding_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"loss.{name} must be >= 0, got {getattr(self, name)}")


def paper_recipe() -> TrainRecipe:
    """The paper's optimisation: AdamW lr 1e-4 without weight decay, DeepSpeed's WarmupDecayLR with 100 warm-up
    steps, batch 8 with 2 accumulation steps, frames at SAM2's 1024 px."""
    return TrainRecipe(
        optim=OptimConfig(name="adamw", lr=1e-4, weight_decay=0.0),
        schedule=ScheduleConfig(kind="warmup_decay", warmup_steps=100),
        batch_size=8,
        grad_accum_steps=2,
        epochs=10,
        image_size=1024,
        notes=(
            "paper: AdamW 1e-4, weight decay 0, WarmupDecayLR (100 warm-up steps), batch 8 x gradient accumulation 2, "
            "DeepSpeed ZeRO-2 on 2 A100; the number of epochs is not given (10 "
            "assumed)"
        ),
    )


def _paper_sam2() -> Sam2LayerConfig:
    """SAM2.0 Hiera-L (EVF-SAM2's SAM2; the paper does not name its variant), prompt encoder and mask decoder
    trained; the frozen parts are rebuilt from the hub weights, not stored in checkpoints."""
    return Sam2LayerConfig(
        variant="sam2-hiera-large",
        weights="facebook/sam2-hiera-large",
        image_size=1024,
        trainable=("prompt_encoder", "mask_decoder"),
        in_checkpoint=False,
    )


@dataclass
class Sam2LoveConfig:
    """A whole SAM2-LOVE model.

    Attributes:
        pretrained: load the pretrained weights the sub-configs name (SAM2, ViT, text encoder, VGGish); False builds
            random weights offline (tests, parameter counts).
        sam2: the SAM2 layer (variant, weights, input size, trainable parts: Table 6's ablation).
        vision: the per-frame image transformer (ImageNet ViT; CLIP's vision tower in the ablation).
        audio: the per-second audio features (VGGish).
        text: the expression's encoder (DistilRoBERTa); None encoder: no text branch.
        fusion: the fusion transformer and its tokens.
        prompt: how the fused token enters SAM2's decoder.
        tracking: SAM2's memory propagation.
        null: null expressions.
        loss: loss weights.
        supervision: ``"first"``: training decodes and supervises the prompted first frame only (paper);
            ``"all"``: training tracks the clip through SAM2's memory and supervises every tracked frame.
        train_frames: with ``supervision = "all"``, track the first frame plus ``train_frames - 1`` frames drawn
            among the labelled ones in training (None: every frame). The fusion always reads the whole clip.
        recipe: training recipe.
    """

    pretrained: bool = True
    sam2: Sam2LayerConfig = field(default_factory=_paper_sam2)
    vision: ViTEncoderConfig = field(default_factory=imagenet_vit_b16)
    audio: AudioEncoderConfig = field(
        default_factory=lambda: AudioEncoderConfig(encoder="vggish", vggish_weights="vggish-10086976.pth")
    )
    text: TextConfig = field(default_factory=lambda: TextConfig(encoder=distilroberta_encoder()))
    fusion: FusionConfig = field(default_factory=FusionConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    null: NullConfig = field(default_factory=NullConfig)
    loss: Sam2LoveLossConfig = field(default_factory=Sam2LoveLossConfig)
    supervision: Literal["first", "all"] = "first"
    train_frames: int | None = None
    recipe: TrainRecipe = field(default_factory=paper_recipe)

    def __post_init__(self) -> None:
        if self.supervision not in ("first", "all"):
            raise ValueError(f"supervision must be 'first' or 'all', got {self.supervision!r}")
        if self.train_frames is not None:
            if self.supervision != "all":
                raise ValueError("train_frames needs supervision='all' (supervision='first' decodes frame 0 only)")
            if self.train_frames < 1:
                raise ValueError(f"train_frames must be >= 1 or None, got {self.train_frames}")
        check_reading_size(self.recipe.image_size, self.sam2)

    @property
    def input_size(self) -> int:
        """The square size SAM2 sees (``sam2.image_size``); the ViT reads ``vision.image_size``."""
        return self.sam2.image_size


# -- the fusion transformer ------------------------------------------------------------------------------------------


def _projection(in_dim: int, out_dim: int) -> nn.Sequential:
    """``Linear → ReLU → Linear``: each modality's projection into the fusion width, and the projector into SAM2."""
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.ReLU(), nn.Linear(out_dim, out_dim))


class SelfAttention(nn.Module):
    """Multi-head self-attention over a padded sequence."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, pad: Tensor) -> Tensor:
        """``x (B, N, D)``, ``pad (B, N)`` True on padding (never attended to) → ``(B, N, D)``."""
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # 3 × (B, h, N, d/h)
        allowed = ~pad[:, None, None, :]  # (B, 1, 1, N)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=self.dropout * self.training)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))  # (B, h, N, d/h) -> (B, N, D)


class FusionBlock(nn.Module):
    """A pre-norm transformer block: ``x + MSA(LN(x))``, then ``x + MLP(LN(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim), nn.Dropout(dropout)
        )

    def forward(self, x: Tensor, pad: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x), pad)
        return x + self.mlp(self.norm2(x))


@dataclass
class FusionOutput:
    """What the fusion hands to SAM2, and its per-frame trace.

    Attributes:
        prompt: ``(B, n', D)`` the tokens that prompt SAM2 (the final ``[seg]`` tokens, or the mean of the last
            frame's sequence).
        seg_inputs: ``(B, T, n, D)`` the ``[seg]`` tokens that entered the fusion on each frame.
        seg_outputs: ``(B, T, n, D)`` the ``[seg]`` tokens each frame passed on (its output at positions ``0 … n-1``;
            the input, unchanged, on a padded frame).
        lengths: ``(T,)`` the sequence length of each frame.
        grounding_logits: ``(B, T, P)`` per frame, how strongly the ``[seg]`` that frame passes on points at each of
            its patch tokens (the grounding loss's input), or None when the fusion has no grounding head.
    """

    prompt: Tensor
    seg_inputs: Tensor
    seg_outputs: Tensor
    lengths: Tensor
    grounding_logits: Tensor | None = None


class TokenFusion(nn.Module):
    """The modality projections, the learned tokens and the fusion transformer with token propagation.

    Args:
        config: the fusion.
        audio_dim: width of the audio features.
        text_dim: width of the text encoder's tokens (None: no text branch).
        vision_dim: width of the image transformer's tokens.
        grounding: add the grounding head: a linear query from the ``[seg]`` scored against every output patch token
            of the same frame (for ``loss.grounding_weight``).
    """

    def __init__(
        self, config: FusionConfig, *, audio_dim: int, text_dim: int | None, vision_dim: int, grounding: bool = False
    ) -> None:
        super().__init__()
        self.config = config
        d = config.dim
        self.audio_proj = _projection(audio_dim, d)
        self.text_proj = _projection(text_dim, d) if text_dim is not None else None
        self.vision_proj = _projection(vision_dim, d)
        self.seg = nn.Parameter(torch.randn(config.num_seg_tokens, d) * 0.02)
        self.aud = nn.Parameter(torch.randn(1, d) * 0.02)
        self.vis = nn.Parameter(torch.randn(1, d) * 0.02)
        self.blocks = nn.ModuleList(
            FusionBlock(d, config.heads, config.mlp_ratio, config.dropout) for _ in range(config.depth)
        )
        # The propagated [seg] is the normalised output, so it keeps its scale however many frames it crosses.
        self.norm = nn.LayerNorm(d)
        self.grounding = nn.Linear(d, d) if grounding else None

    def forward(
        self,
        *,
        audio: Tensor,
        audio_valid: Tensor,
        text: Tensor | None,
        text_valid: Tensor | None,
        patches: Tensor,
        cls: Tensor,
        frame_valid: Tensor,
    ) -> FusionOutput:
        """Fuse a clip frame by frame.

        Args:
            audio: ``(B, T, A)`` one feature per second.
            audio_valid: ``(B, T)`` bool, False on audio tokens to ignore (padded frames, clips without sound).
            text: ``(B, K, E)`` expression tokens, or None.
            text_valid: ``(B, K)`` bool, False on padding and for clips without an expression.
            patches: ``(B, T, P, V)`` patch tokens of every frame.
            cls: ``(B, T, V)`` the ``[cls]`` of every frame.
            frame_valid: ``(B, T)`` bool, False on padded frames.

        Returns:
            The prompt tokens and the per-frame trace.
        """
        cfg = self.config
        b, t = frame_valid.shape
        n = cfg.num_seg_tokens
        false = frame_valid.new_zeros(b, 1)  # (B, 1) bool: a token that is never padding
        context = [self.audio_proj(audio), self.aud.expand(b, 1, -1)]  # (B, T, D), (B, 1, D)
        context_pad = [~audio_valid, false]
        if text is not None and self.text_proj is not None:
            assert text_valid is not None
            context += [self.text_proj(text)]  # (B, K, D)
            context_pad += [~text_valid]
        context += [self.vis.expand(b, 1, -1)]
        context_pad += [false]
        fixed, fixed_pad = torch.cat(context, dim=1), torch.cat(context_pad, dim=1)  # (B, T + 1 + K + 1, D)
        visual = self.vision_proj(patches)  # (B, T, P, D)
        history = self.vision_proj(cls)  # (B, T, D)
        p = visual.shape[2]

        seg = self.seg.expand(b, n, -1)  # (B, n, D)
        summary = seg.new_zeros(b, 1, seg.shape[-1])  # the last valid frame's mean output ("mean" readout)
        seg_inputs, seg_outputs, lengths, grounding = [], [], [], []
        for i in range(t):
            valid = frame_valid[:, i]  # (B,)
            parts, pads = [seg, fixed], [false.expand(b, n), fixed_pad]
            if cfg.accumulate_cls:
                parts.append(history[:, : i + 1])  # [his]^i = [cls]^0 … [cls]^i, (B, i + 1, D)
                pads.append(~frame_valid[:, : i + 1])
            parts.append(visual[:, i])  # (B, P, D)
            pads.append((~valid)[:, None].expand(b, p))
            x, pad = torch.cat(parts, dim=1), torch.cat(pads, dim=1)  # (B, N_i, D), (B, N_i)
            for block in self.blocks:
                x = block(x, pad)
            x = self.norm(x)
            seg_inputs.append(seg)
            # A padded frame is not part of the clip: the [seg] crosses it unchanged.
            seg = torch.where(valid[:, None, None], x[:, :n], seg)
            seg_outputs.append(seg)
            lengths.append(x.shape[1])
            if self.grounding is not None:
                query = self.grounding(x[:, 0])  # (B, D), the first [seg] of this frame
                grounding.append(torch.einsum("bd,bpd->bp", query, x[:, -p:]) / x.shape[-1] ** 0.5)  # (B, P)
            if cfg.readout == "mean":
                keep = (~pad).to(x.dtype).unsqueeze(-1)  # (B, N_i, 1)
                mean = (x * keep).sum(1, keepdim=True) / keep.sum(1, keepdim=True)  # (B, 1, D)
                summary = torch.where(valid[:, None, None], mean, summary)
        if cfg.readout == "mean":
            prompt = summary
        else:
            prompt = seg[:, :1] if cfg.prompt_tokens == "first" else seg
        return FusionOutput(
            prompt=prompt,
            seg_inputs=torch.stack(seg_inputs, dim=1),
            seg_outputs=torch.stack(seg_outputs, dim=1),
            lengths=torch.tensor(lengths),
            grounding_logits=torch.stack(grounding, dim=1) if grounding else None,
        )


# -- the model -------------------------------------------------------------------------------------------------------


class SAM2LOVE(AVSModel):
    """SAM2-LOVE on avseg's model contract (binary masks: Ref-AVS).

    ``forward(batch)`` returns :class:`~avseg.models.base.AVSOutput` with ``mask_logits (B, T, 1, H, W)`` (SAM2's
    mask, upsampled to the batch's frame size; empty where the object score is negative), ``object_logits (B, T)``
    and ``aux``:

    * ``"low_res_masks"``: ``(B, T', S/4, S/4)`` SAM2's masks (``S`` = SAM2 input size; in training the decoder's
      raw masks, not emptied by the object score, so that the mask losses reach every frame);
    * ``"seg_inputs"`` / ``"seg_outputs"``: ``(B, T, n, D)`` the ``[seg]`` tokens entering and leaving the fusion on
      each frame of the whole clip; ``"sequence_lengths"``: ``(T,)`` the fusion's sequence length per frame;
    * ``"prompt_tokens"``: ``(B, n', C)`` the sparse prompt given to SAM2.

    In training with ``supervision = "first"`` only frame 0 is decoded (``computed_frames``; ``T' = 1``), with
    ``"all"`` the tracked frames are; in eval mode every frame is tracked from the prompted frame 0.
    """

    family = "sam2love"
    config_class = Sam2LoveConfig

    def __init__(self, config: Sam2LoveConfig) -> None:
        super().__init__(config)
        cfg = config
        self.sam2 = build_sam2(cfg.sam2, pretrained=cfg.pretrained)
        self.audio_encoder = AudioEncoder(cfg.audio, pretrained=cfg.pretrained)
        self.text_encoder: Frozen | None = None
        text_dim = None
        if cfg.text.encoder is not None:
            self.text_encoder = frozen_text_encoder(cfg.text.encoder, pretrained=cfg.pretrained)
            text_dim = self.text_encoder.module.hidden_size
        self.vision_encoder = build_vit_encoder(cfg.vision, pretrained=cfg.pretrained)
        vit = self.vision_encoder.module if isinstance(self.vision_encoder, Frozen) else self.vision_encoder
        self.fusion = TokenFusion(
            cfg.fusion,
            audio_dim=cfg.audio.dim,
            text_dim=text_dim,
            vision_dim=vit.hidden_size,
            grounding=cfg.loss.grounding_weight > 0,
        )
        self.projector = nn.Sequential(
            nn.Linear(cfg.fusion.dim, cfg.fusion.dim), nn.ReLU(), nn.Linear(cfg.fusion.dim, self.sam2.hidden_size)
        )

    @property
    def text_input(self) -> TextInput:
        """``"optional"`` with a text encoder (a clip without an expression gives the fusion no text tokens)."""
        return "optional" if self.config.text.encoder is not None else "none"

    def draw_training_frames(self, batch: AVSBatch, count: int | None) -> Tensor | None:
        """In training: frame 0 alone (``supervision = "first"``), or frame 0 plus ``count - 1`` frames drawn among
        the labelled ones (``"all"``; None: every frame). None in eval mode."""
        if not self.training:
            return None
        if self.config.supervision == "first":
            return torch.zeros(1, dtype=torch.long)
        t = batch.frames.shape[1]
        if count is None or count >= t:
            return None
        labelled = (batch.label_valid & batch.frame_valid).any(0).cpu()  # (T,)
        others = torch.nonzero(labelled[1:]).flatten() + 1
        if len(others) == 0:
            others = torch.arange(1, t)
        drawn = others[torch.randperm(len(others))[: count - 1]]
        return torch.cat([torch.zeros(1, dtype=torch.long), drawn]).sort().values

    # -- fusion ------------------------------------------------------------------------------------------------------

    def _text_tokens(self, texts: list[str | None], device: torch.device) -> tuple[Tensor | None, Tensor | None]:
        """``(B, K, E)`` token features and ``(B, K)`` validity of the expressions; ``(None, None)`` without any."""
        if self.text_encoder is None or all(s is None for s in texts):
            return None, None
        present = [i for i, s in enumerate(texts) if s is not None]
        tokens, mask = self.text_encoder([texts[i] for i in present])  # (n, K, E), (n, K)
        out = tokens.new_zeros(len(texts), tokens.shape[1], tokens.shape[2])
        valid = torch.zeros(len(texts), tokens.shape[1], dtype=torch.bool, device=tokens.device)
        out[present], valid[present] = tokens, mask
        return out.to(device), valid.to(device)

    def fuse(self, batch: AVSBatch) -> FusionOutput:
        """Encode the whole clip and fuse it frame by frame (the fusion's output before the projector)."""
        b, t = batch.frames.shape[:2]
        device = self.projector[0].weight.device
        frame_valid = batch.frame_valid.to(device)  # (B, T)
        audio = self.audio_encoder(batch).to(device)  # (B, T, A)
        audio_valid = frame_valid & batch.has_audio.to(device)[:, None]
        text, text_valid = self._text_tokens(batch.text, device)  # (B, K, E), (B, K)
        patches, cls = self.vision_encoder(batch.frames.flatten(0, 1).to(device), frame_valid.flatten())
        return self.fusion(
            audio=audio,
            audio_valid=audio_valid,
            text=text,
            text_valid=text_valid,
            patches=patches.view(b, t, *patches.shape[1:]),  # (B*T, P, V) -> (B, T, P, V)
            cls=cls.view(b, t, -1),  # (B*T, V) -> (B, T, V)
            frame_valid=frame_valid,
        )

    # -- forward -----------------------------------------------------------------------------------------------------

    def forward_frames(self, batch: AVSBatch, frames: Tensor | None) -> AVSOutput:
        """Fuse the whole clip into the ``[seg]`` prompt, prompt SAM2 on frame 0 (the first of ``frames``) and track
        the other frames through SAM2's memory.

        Args:
            batch: frames ``(B, T, 3, H, W)`` uint8, audio examples ``(B, T, 1, 96, 64)`` (or embeddings), ``text``.
            frames: ``(T',)`` the frames SAM2 runs on, frame 0 first (None: all).

        Returns:
            The output of those frames; see the class docstring.
        """
        b, _, _, h, w = batch.frames.shape
        fused = self.fuse(batch)
        tokens = self.projector(fused.prompt)  # (B, n', C)
        prompt = Sam2Prompt(sparse_embeddings=tokens, sparse_mode=self.config.prompt.sparse_mode)
        clip = batch if frames is None else batch.select_frames(frames)
        t = clip.frames.shape[1]
        images = self.sam2.resize(self.normalize_frames(clip))  # (B*T', 3, S, S); padded frames 0 (mean grey)
        if self.training and self.config.supervision == "first":
            # The paper's training: the prompted frame alone, decoded without memory (as SAM2 decodes a conditioning
            # frame), its raw single mask supervised.
            decoded = self.sam2.decode(self.sam2.encode_frames(images), prompt, multimask_output=False)
            low, objects = decoded.mask_logits[:, None, 0], decoded.object_score_logits  # (B, 1, S/4, S/4), (B, 1)
        else:
            low, objects = self._track(images, b, t, prompt)  # (B, T', S/4, S/4), (B, T')
        output = AVSOutput(
            mask_logits=upsample_masks(low, (h, w))[:, :, None],  # (B, T', 1, H, W)
            object_logits=objects,
            aux={
                "low_res_masks": low,
                "seg_inputs": fused.seg_inputs,
                "seg_outputs": fused.seg_outputs,
                "sequence_lengths": fused.lengths,
                "prompt_tokens": tokens,
            },
        )
        if fused.grounding_logits is not None:
            output.aux["grounding_logits"] = fused.grounding_logits
        return output

    def _track(self, images: Tensor, b: int, t: int, prompt: Sam2Prompt) -> tuple[Tensor, Tensor]:
        """SAM2 on ``t`` frames of ``b`` clips (``images (B*T, 3, S, S)``, b-major): frame 0 decoded from ``prompt``
        without memory (single mask), every later frame from its features conditioned on the memory, in order.

        In training the returned masks are the decoder's raw masks: SAM2 empties the mask of a frame whose object
        score is not positive (what it stores in memory and what evaluation outputs), which would cut the mask's
        gradient; a second decoder pass on the same memory-conditioned features gives them uncut.

        Returns:
            ``masks (B, T, S/4, S/4)`` (in eval mode -1024 where the object score is not positive) and
            ``object_logits (B, T)``.
        """
        cfg = self.config.tracking
        features = self.sam2.encode_frames(images, chunk_size=8)
        bank = self.sam2.memory_bank(t)
        masks, scores = [], []
        for frame in range(t):
            feats = features.select([k * t + frame for k in range(b)])
            first = frame == 0
            step = self.sam2.track_step(
                feats,
                bank,
                frame,
                prompt=prompt if first else None,
                conditioning=first,
                multimask_output=False if first else cfg.multimask_output,
            )
            self.sam2.remember(feats, bank, step, conditioning=first, binarize=cfg.binarize_memory_masks)
            # Tracking forward, frame f + 1 reads tracked frames back to f + 1 - window: older ones can go.
            bank.forget([frame - bank.read_window])
            if self.training:
                raw = self.sam2.decode(
                    feats,
                    prompt if first else None,
                    image_embeddings=step.image_embeddings,
                    multimask_output=False,
                )
                masks.append(raw.mask_logits[:, 0])  # (B, S/4, S/4)
            else:
                masks.append(step.masks[:, 0])  # (B, S/4, S/4)
            scores.append(step.object_score_logits)  # (B,)
        return torch.stack(masks, dim=1), torch.stack(scores, dim=1)

    # -- losses ------------------------------------------------------------------------------------------------------

    def losses(self, batch: AVSBatch, output: AVSOutput) -> dict[str, Tensor]:
        """``bce_weight·BCE + dice_weight·Dice`` on the computed labelled frames, plus ``object_weight`` × BCE on the
        object score; ``"loss"`` is the weighted total. With ``null.object_score`` off, null items give the object
        score no target."""
        cfg = self.config.loss
        device = output.mask_logits.device
        masks = output.select_computed(batch.masks.to(device)) > 0  # (B, T', H, W)
        labelled = output.select_computed((batch.label_valid & batch.frame_valid).to(device))  # (B, T')
        logits = output.select_computed(output.mask_logits)[:, :, 0]  # (B, T', H, W)
        assert output.object_logits is not None
        objects = output.select_computed(output.object_logits)  # (B, T')
        is_null = batch.is_null.to(device)[:, None].expand_as(labelled)  # (B, T')
        zero = output.mask_logits.sum() * 0.0  # keeps the graph connected for distributed training
        out: dict[str, Tensor] = {}
        if labelled.any():
            chosen, target = logits[labelled], masks[labelled].to(logits.dtype)  # (n, H, W)
            out["bce"] = F.binary_cross_entropy_with_logits(chosen, target)
            out["dice"] = soft_dice_loss(chosen, target)
        else:
            out["bce"] = out["dice"] = zero
        scored = labelled if self.config.null.object_score else labelled & ~is_null
        if scored.any():
            present = masks.flatten(2).any(-1) & ~is_null  # (B, T')
            out["object"] = F.binary_cross_entropy_with_logits(objects[scored], present[scored].to(objects.dtype))
        else:
            out["object"] = zero
        out["loss"] = cfg.bce_weight * out["bce"] + cfg.dice_weight * out["dice"] + cfg.object_weight * out["object"]
        if "grounding_logits" in output.aux:
            out["grounding"] = self._grounding_loss(batch, output.aux["grounding_logits"])
            out["loss"] = out["loss"] + cfg.grounding_weight * out["grounding"]
        return out

    @staticmethod
    def _grounding_loss(batch: AVSBatch, logits: Tensor) -> Tensor:
        """BCE between ``logits (B, T, P)`` and the fraction of each of the ``g × g = P`` patches that the ground-truth
        mask covers, on every labelled frame of the clip (the fusion reads them all, whichever frames SAM2 ran on)."""
        grid = round(logits.shape[-1] ** 0.5)  # a ViT's patch grid is square
        labelled = (batch.label_valid & batch.frame_valid).to(logits.device)  # (B, T)
        if not labelled.any():
            return logits.sum() * 0.0
        masks = (batch.masks.to(logits.device)[labelled] > 0).to(logits.dtype)  # (n, H, W)
        covered = F.adaptive_avg_pool2d(masks[:, None], grid).flatten(1)  # (n, P)
        return F.binary_cross_entropy_with_logits(logits[labelled], covered)


# -- presets ---------------------------------------------------------------------------------------------------------


@register_model("sam2love-l-refavs", SAM2LOVE, tasks=("refavs",))
def sam2love_l_refavs() -> Sam2LoveConfig:
    """SAM2-LOVE, SAM2 Hiera-l (image encoder and memory frozen), ViT-B/16 + DistilRoBERTa + VGGish, Ref-AVS."""
    return Sam2LoveConfig()


def _tiny_sam2() -> Sam2LayerConfig:
    """The tiny preset's SAM2: the packaged SynthAV-trained tiny SAM2 (``avseg:sam2-tiny-synthav``, the 128-px shape
    of ``sam2-tiny``), its prompt encoder and mask decoder trained and the rest frozen, as the paper trains SAM2."""
    return cpu_sam2_config(weights=CPU_SAM2_WEIGHTS, trainable=("prompt_encoder", "mask_decoder"))


@register_model("sam2love-tiny", SAM2LOVE, tasks=("refavs",))
def sam2love_tiny() -> Sam2LoveConfig:
    """Tiny SAM2-LOVE for CPU demos and tests: the packaged SynthAV-trained tiny SAM2, tiny ViT and log-mel CNN, and
    MiniLM, every encoder frozen as the paper freezes its encoders.

    SAM2 is ``avseg:sam2-tiny-synthav`` (:mod:`avseg.assets`), trained as the paper trains SAM2: prompt encoder and
    mask decoder only, the first frame alone supervised; its memory tracks the rest. No ImageNet ViT or VGGish is
    available offline, so their stand-ins are pretrained on SynthAV labels of another seed (``avseg data
    pretrain-encoders``): the ViT (2 layers, 64-d, 64-px frames, ``avseg:vit-tiny-synthav``) on the class and colour
    under each patch, the audio CNN (``avseg:logmel-cnn-synthav``) on which classes sound each second. The fusion is
    128-d with 2 blocks of 4 heads. The recipe is avseg's CPU recipe (cosine, 8 clips per step, frames at 128 px) at
    AdamW 3e-4 rather than its usual 3e-3: at 3e-3 (and 1e-3) the fused ``[seg]`` settles within a few hundred steps
    on one prompt for every clip and expression (the projector's ReLU units stop firing) and did not leave it in runs
    of up to 3000 steps; at 3e-4 it keeps following the expression (``benchmarks/prompt_path.py``).
    """
    return Sam2LoveConfig(
        pretrained=False,
        sam2=_tiny_sam2(),
        vision=tiny_vit(weights="avseg:vit-tiny-synthav", frozen=True),
        audio=tiny_logmel_audio(weights="avseg:logmel-cnn-synthav"),
        text=TextConfig(encoder=minilm_encoder()),
        fusion=FusionConfig(dim=128, depth=2, heads=4, mlp_ratio=2.0),
        recipe=TrainRecipe(
            optim=OptimConfig(name="adamw", lr=3e-4, weight_decay=1e-4),
            schedule=ScheduleConfig(kind="cosine", warmup_steps=30),
            batch_size=8,
            epochs=20,
            clip_grad_norm=1.0,
            image_size=128,
            notes=(
                "avseg's CPU recipe for SynthAV at lr 3e-4 (at 3e-3 the fused [seg] collapses to one prompt); frames "
                "read at SAM2's 128 px"
            ),
        ),
    )
