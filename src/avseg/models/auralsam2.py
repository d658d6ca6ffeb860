"""AuralSAM2: audio (and text) prompts for a frozen SAM2, produced by a fuser outside it.

Paper: Y. Liu et al., "AuralSAM2: Enabling SAM2 Hear Through Pyramid Audio-Visual Feature Prompting", arXiv
2506.01015. Released code: https://github.com/yyliu01/AuralSAM2 at ``64a16dd`` (``ref-avs.code/`` and
``avs.code/{v1s,v1m,v2}.code/``: ``model/{mymodel,aural_fuser}.py``, ``loss/training/*.py``,
``model/visual/sam2/{organised_sam2_train.py, modeling/sam/transformer.py}``, ``configs/``). This file and
:mod:`avseg.models.auralsam2_fuser` are written anew from the paper's description and a reading of that code, and are
part of avseg (Apache-2.0); no code of the repository or of SAM2 is copied (SAM2 comes from transformers through
:mod:`avseg.layers.sam2`).

**Method.** SAM2 stays frozen. Its image encoder gives every frame an FPN at strides 4, 8 and 16 (``d_model = 256``
channels). The **AuralFuser** (:class:`~avseg.models.auralsam2_fuser.AuralFuser`) brings the three maps to the
stride-16 grid with patch embeddings (kernel = stride = 4, 2, 1), and, level by level, adds a sine position encoding
(and, from level 2 on, the previous level's fused map, smoothed by a 1×1 conv), refines the visual tokens with PVT
blocks (depths 3/6/12, 4 heads, MLP ratio 4, spatial reduction 4, dropout 0.1) and the audio tokens (VGGish per
second; with a referring expression, its 25 DistilRoBERTa tokens projected 768→1024→256 are appended) with 3
transformer blocks, then fuses the two with a TPAVI-derived two-way block (dot-product affinities, width 128,
zero-initialised residual branches) that updates both. Each level yields a **dense prompt** (the fused map) and a
**sparse prompt** (the fused audio token of each second). They enter SAM2's mask decoder in reverse level order
(stride-16 branch first) through residual hooks (:class:`~avseg.layers.sam2.DecoderHooks`): before each of the two
two-way blocks and before the final token-to-image attention, the dense prompt is added to the image tokens and the
sparse prompt to the four mask-output tokens. No point, box or mask prompt is used: one conditioning frame (the
middle one) is decoded from the hooks alone and the other frames are tracked through SAM2's memory, in increasing
order, with multi-mask output; the output mask is the candidate with the highest predicted IoU.

**Losses.** SAM2's multi-mask loss per frame (focal 20 : dice 1 : IoU 1 (L1, all candidates) : object score 1;
focal and dice only on the best candidate by ``20·focal + dice`` and only on frames with foreground), summed over a
clip's frames, plus **AudioCon** (weight 1): per labelled frame and fuser level, up to ``N`` hard (mispredicted) and
``N`` easy pixels per class (1:1, the scarcer kind topped up by the other) are embedded by a projector, and a
supervised InfoNCE (τ = 0.1) pulls them toward the clip's audio embeddings of their class (audio prototypes: the
foreground class of a frame with foreground, else 0) and away from samples of other classes.

**Released code vs paper** (see also ``docs/auralsam2.md``). The full-size presets follow the released code where
the two disagree; their ``-paper`` variants (``auralsam2-l-refavs-paper``, ...) take the paper's values instead:

* The fusion block reshapes channel-first ``(T, 128, 1, h, w)`` tensors to ``(-1, 128)`` rows and views the result
  back, so its "positions" are runs of 128 spatial values of one channel, and its audio update mixes the channels of
  consecutive tokens. ``fuser.fusion_layout = "released"`` reproduces this (needed to run the authors' checkpoints);
  avseg's presets use ``"per_position"``, the block as described.
* The fusion's affinities are dot products divided by the number of visual positions, without softmax (TPAVI's
  "dot" mode; ``fuser.fusion_affinity = "dot"``, the presets); the paper's supplement (Eq. 10) writes
  ``softmax(q·kᵀ/√d)·v`` (``"softmax"``, the ``-paper`` variants).
* The audio tokens get the 1-D sine encoding of position 0, a constant ``[0, 1, 0, 1, …]`` vector
  (``fuser.audio_position = "constant"``, kept by default).
* The decoder adds the first sparse prompt to the mask tokens in place, so it also shifts their positional
  embedding in every later attention (``prompts.shift_query_pe``, on for converted checkpoints only).
* Every expression is padded (right, with ``<pad>``) and truncated to 25 DistilRoBERTa tokens, the encoder gets
  the attention mask, and the fuser attends to all 25 token features, the pad positions' included, without a mask.
  ``text.encoder.padding = "max_tokens"`` reproduces the padding (required with the released layout, and set for
  converted checkpoints); avseg's ``"per_position"`` layout masks padding, so the presets pad to the batch's
  longest expression (``"longest"``) and give the same result.
* AudioCon in the released code compares raw logits with the 0/1 ground truth (so nearly every pixel is "hard"),
  takes the labels of the sampled pixels from the wrong indices, and L2-normalises the Ref-AVS pixel embeddings over
  positions instead of channels. avseg implements the loss as described (prediction = logits > 0, per-pixel
  labels, per-pixel normalisation). The paper describes a 3-layer projector to 64-d; the released one is 2 layers
  to 128-d (Ref-AVS: ``Linear-GELU-LN-Linear`` on the fusion's residual branch; AVS: ``1×1 conv-BN-1×1 conv`` on
  the fused maps), which the presets use (``projector``). The paper samples 512 pixels per scale and frame; the
  released code up to 64 (Ref-AVS) / 128 (AVS) hard and as many easy pixels per class, which the presets use
  (``loss.audiocon_samples``); on a binary mask, 128 per class and kind make the paper's 512, the ``-paper``
  value.
* Ref-AVS conditions on the middle frame; the AVS code conditions on the middle frame in training and on the first
  at evaluation (``tracking``).
* Hyper-parameters come from argparse, not ``config.py``: AdamW lr 1e-4 (weight decay 0.05, none on norm layers),
  poly 0.9, batch 1 clip per GPU on 4 GPUs, 50 epochs (Ref-AVS), 140 (v1s, v1m), 90 (v2); bf16 autocast; grayscale
  probability 0.05 in the augmentation. The paper states weight decay 0.01 and grayscale probability 0.1 (the
  ``-paper`` variants). Checkpoints were selected on the test splits.

**avseg additions.** Padded frames and text tokens are masked out of the fusion (``"per_position"`` layout); the
fuser width follows SAM2's ``d_model`` so that tiny SAM2 configs work; the audio encoder can be a small trainable
log-mel CNN (``audio.encoder``) for CPU presets; SAM2 parts can be trained (``sam2.trainable``) when its weights are
random (the tiny preset), and then decoding SAM2's single mask instead of three candidates
(``tracking.multimask_output``) helps it learn; in training the tiny preset tracks only a few frames drawn from each
clip (``train_frames``: more clips per step for the same compute), with audio tokens positioned by their second
in the video (``fuser.audio_position = "temporal"``); :meth:`AuralSAM2.segment_with_prompts` combines the audio
prompts with user points and boxes in one decoder pass (the paper's prompt-engineering use, Table 6). The released
clip-consistent augmentation (flip, affine, colour jitter, grayscale) is the full-size presets' data transform
(``recipe.augment``, :class:`~avseg.data.augment.ClipAugment`), which also mirrors "left" and "right" in the
expression of a flipped clip.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avseg.audio.vggish import EMBEDDING_SIZE
from avseg.data.augment import ClipAugmentConfig
from avseg.data.types import AVSBatch
from avseg.errors import UsageError
from avseg.layers.audio import AudioEncoder, AudioEncoderConfig, tiny_logmel_audio
from avseg.layers.frozen import Frozen
from avseg.layers.losses import sam_multimask_losses
from avseg.layers.sam2 import (
    CPU_SAM2_WEIGHTS,
    DecoderHooks,
    Sam2LayerConfig,
    Sam2Prompt,
    build_sam2,
    check_reading_size,
    cpu_sam2_config,
    select_mask,
    upsample_masks,
)
from avseg.layers.text import (
    TextConfig,
    distilroberta_encoder,
    frozen_text_encoder,
    minilm_encoder,
)
from avseg.metrics.protocols import AURALSAM2_AVS, AURALSAM2_REFAVS, protocol_table
from avseg.models.auralsam2_fuser import AuralFuser, FuserConfig, ProjectorConfig, audiocon_loss
from avseg.models.base import AVSModel, AVSOutput, TextInput, optimiser_groups
from avseg.models.registry import register_model
from avseg.recipe import OptimConfig, ScheduleConfig, TrainRecipe

__all__ = [
    "AuralSAM2",
    "AuralSAM2Config",
    "AuralSAM2LossConfig",
    "PromptConfig",
    "TrackingConfig",
    "released_recipe",
]


# -- configs ---------------------------------------------------------------------------------------------------------


@dataclass
class PromptConfig:
    """Which fuser outputs reach SAM2 (the paper's ablations switch them off).

    Attributes:
        dense: add the fused maps to SAM2's image tokens.
        sparse: add the fused audio vectors to SAM2's mask-output tokens.
        shift_query_pe: reproduce the released decoder's in-place addition, which also shifts the mask tokens'
            positional embedding by the first sparse prompt in every later attention (needed for the authors'
            checkpoints; see :class:`~avseg.layers.sam2.DecoderHooks`).
    """

    dense: bool = True
    sparse: bool = True
    shift_query_pe: bool = False


@dataclass
class TrackingConfig:
    """How a clip goes through SAM2's memory.

    Attributes:
        train_conditioning: the frame decoded without memory during training (``"middle"`` = ``T // 2``).
        eval_conditioning: the same at evaluation (the released AVS code uses the first frame there).
        select: which candidate mask is output: ``"first"``, ``"iou"`` (highest predicted IoU, released default) or
            ``"iou_occ"`` (also empty where the object score is negative).
        binarize_memory_masks: in eval mode, binarise the masks SAM2's memory encoder reads on every frame (True, the
            released code), never (False), or only on prompted frames (None, SAM2's video predictor).
        multimask_output: decode three candidates on every frame (released); False decodes SAM2's single mask (avseg,
            for SAM2s trained from random weights, which learn one output faster than three plus an IoU ranking).

    With ``train_frames`` set on the model, training tracks only the drawn frames and the conditioning frame is the
    middle (or first) of those.
    """

    train_conditioning: Literal["first", "middle"] = "middle"
    eval_conditioning: Literal["first", "middle"] = "middle"
    select: Literal["first", "iou", "iou_occ"] = "iou"
    binarize_memory_masks: bool | None = True
    multimask_output: bool = True


@dataclass
class AuralSAM2LossConfig:
    """AuralSAM2's loss weights (released ``sam2_training_config.yaml`` and ``ContrastLoss`` defaults).

    Attributes:
        focal_weight, dice_weight, iou_weight, object_weight: SAM2's multi-mask loss (20, 1, 1, 1).
        frame_reduction: ``"sum"`` over a clip's labelled frames, averaged over clips (released: one clip per GPU,
            losses summed over its frames) or ``"mean"`` over all labelled frames.
        audiocon_weight: weight of AudioCon (1; 0 disables it and its projectors' gradients).
        audiocon_samples: ``N``, hard and easy samples per class, frame and level (64 Ref-AVS, 128 AVS).
        audiocon_total: cap on the anchors of one batch (15240).
        temperature: AudioCon's InfoNCE temperature (0.1).
        mask_size: square size at which candidate masks and targets are compared (None: the batch's frame size; the
            released code compares at SAM2's input size, 1024, which its frames have).
    """

    focal_weight: float = 20.0
    dice_weight: float = 1.0
    iou_weight: float = 1.0
    object_weight: float = 1.0
    frame_reduction: Literal["sum", "mean"] = "sum"
    audiocon_weight: float = 1.0
    audiocon_samples: int = 64
    audiocon_total: int = 15240
    temperature: float = 0.1
    mask_size: int | None = None

    def __post_init__(self) -> None:
        if self.mask_size is not None and self.mask_size < 1:
            raise ValueError(f"loss.mask_size must be positive, got {self.mask_size}")
        for name in ("focal_weight", "dice_weight", "iou_weight", "object_weight", "audiocon_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"loss.{name} must be >= 0, got {getattr(self, name)}")
        if self.frame_reduction not in ("sum", "mean"):
            raise ValueError(f"loss.frame_reduction must be 'sum' or 'mean', got {self.frame_reduction!r}")
        if self.audiocon_samples < 1 or self.audiocon_total < 1 or not self.temperature > 0:
            raise ValueError("loss.audiocon_samples, audiocon_total and temperature must be positive")


def released_recipe() -> TrainRecipe:
    """The released training defaults: AdamW 1e-4 (weight decay 0.05, none on norm layers), poly 0.9, no clipping,
    1 clip per GPU on 4 GPUs, 10 frames at SAM2's 1024 px."""
    return TrainRecipe(
        optim=OptimConfig(name="adamw", lr=1e-4, weight_decay=0.05),
        schedule=ScheduleConfig(kind="poly", power=0.9),
        batch_size=4,
        epochs=50,
        image_size=1024,
        notes="released defaults (4 GPUs x 1 clip)",
    )


@dataclass
class AuralSAM2Config:
    """A whole AuralSAM2 model.

    Attributes:
        pretrained: load pretrained SAM2 / text encoder weights where their configs name them; False builds random
            weights offline (tests, parameter counts).
        sam2: the SAM2 layer (variant, weights, input size, trainable parts).
        fuser: the AuralFuser (``dim`` must equal SAM2's hidden size, ``audio_dim`` the audio features' width and
            ``text_dim`` the text encoder's width).
        projector: AudioCon's projection heads (None: none; AudioCon then needs ``loss.audiocon_weight = 0``).
        audio: the audio features.
        text: the referring-expression branch.
        prompts: which fuser outputs are injected (ablations).
        tracking: conditioning frame and output selection.
        loss: loss weights.
        recipe: training recipe (with the released augmentation in the full-size presets, ``recipe.augment``).
        train_frames: in training, track only this many frames of each clip, drawn at random among the labelled
            ones and kept in temporal order (avseg, CPU presets; None: every frame, as released). Evaluation always
            tracks every frame. The fusion divides its sums over tokens by the number of visual positions, which
            shrinks with the drawn frames while the number of text tokens does not, so the fuser scales the text
            tokens' share by ``T'/T`` (``clip_frames``) to keep it what it is on the whole clip at evaluation.
    """

    pretrained: bool = True
    sam2: Sam2LayerConfig = field(default_factory=Sam2LayerConfig)
    fuser: FuserConfig = field(default_factory=FuserConfig)
    projector: ProjectorConfig | None = field(default_factory=ProjectorConfig)
    audio: AudioEncoderConfig = field(default_factory=lambda: AudioEncoderConfig(two_channel=True))
    text: TextConfig = field(default_factory=TextConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    loss: AuralSAM2LossConfig = field(default_factory=AuralSAM2LossConfig)
    recipe: TrainRecipe = field(default_factory=lambda: released_recipe())
    train_frames: int | None = None

    def __post_init__(self) -> None:
        if self.train_frames is not None and self.train_frames < 1:
            raise ValueError(f"train_frames must be >= 1 or None, got {self.train_frames}")
        if self.fuser.audio_dim != self.audio.dim:
            raise ValueError(f"fuser.audio_dim {self.fuser.audio_dim} must equal the audio width {self.audio.dim}")
        if (self.fuser.text_dim is None) != (self.text.encoder is None):
            raise ValueError("fuser.text_dim must be set exactly when text.encoder is (the text encoder's width)")
        encoder = self.text.encoder
        if self.fuser.fusion_layout == "released" and encoder is not None and encoder.padding != "max_tokens":
            # Unmasked padding padded to the batch's longest expression would make a clip's masks depend on the
            # other expressions of its batch.
            raise ValueError(
                "fuser.fusion_layout 'released' attends to every text token, padding included, so expressions must "
                "be padded to a fixed length: set text.encoder.padding to 'max_tokens' (the released code pads to 25)"
            )
        if self.projector is None and self.loss.audiocon_weight > 0:
            raise ValueError("loss.audiocon_weight > 0 needs a projector")
        check_reading_size(self.recipe.image_size, self.sam2)

    @property
    def input_size(self) -> int:
        """The square size the network sees: SAM2's input size (``sam2.image_size``)."""
        return self.sam2.image_size


# -- the model -------------------------------------------------------------------------------------------------------


class AuralSAM2(AVSModel):
    """AuralSAM2 on avseg's model contract (binary masks: AVSBench S4/MS3, Ref-AVS).

    ``forward(batch)`` returns :class:`~avseg.models.base.AVSOutput` with ``mask_logits (B, T, 1, H, W)`` (the
    selected candidate, upsampled to the batch's frame size), ``object_logits (B, T)`` (SAM2's object score),
    ``iou_pred (B, T, 3)`` and ``aux``:

    * ``"multimask_logits"``: ``(B, T, 3, S/4, S/4)`` SAM2's three candidates (``S`` = SAM2 input size);
    * ``"candidates"``: what the loss supervises: the three candidates, or ``(B, T, 1, S/4, S/4)`` SAM2's single
      mask with ``tracking.multimask_output = False`` (``iou_pred`` is then None);
    * ``"selected_logits"``: ``(B, T, S/4, S/4)`` the mask SAM2 tracked (highest predicted IoU), for AudioCon;
    * ``"pixel_embeddings"`` / ``"audio_embeddings"``: per fuser level, AudioCon's embeddings.

    In training with ``train_frames`` set, only the drawn frames are tracked (``computed_frames``): every ``aux``
    tensor above then has ``T'`` frames, ``mask_logits``, ``object_logits`` and ``iou_pred`` are zero on the others,
    and :meth:`losses` reads only the tracked frames.
    """

    family = "auralsam2"
    config_class = AuralSAM2Config
    official_protocols = protocol_table(s4=AURALSAM2_AVS, ms3=AURALSAM2_AVS, refavs=AURALSAM2_REFAVS)

    @classmethod
    def upgrade_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        """Checkpoints of avseg 0.1 kept ``tracking.train_frames`` and an ``augment`` section (with ``enabled``) that
        ran inside ``forward``; both moved: ``train_frames`` to the top level, the augmentation into the recipe.
        Converted checkpoints without ``text.encoder.padding`` get the released padding (``"max_tokens"``)."""
        config = dict(super().upgrade_config(config))
        tracking = config.get("tracking")
        if isinstance(tracking, dict) and "train_frames" in tracking:
            tracking = dict(tracking)
            config.setdefault("train_frames", tracking.pop("train_frames"))
            config["tracking"] = tracking
        augment = config.pop("augment", None)
        if isinstance(augment, dict) and isinstance(config.get("recipe"), dict):
            enabled = augment.pop("enabled", False)
            config["recipe"] = {**config["recipe"], "augment": augment if enabled else None}
        # Converted checkpoints from before text.encoder.padding existed ran the released layout on expressions padded
        # to the batch's longest; they are read with the released padding, which they were trained with.
        fuser, text = config.get("fuser"), config.get("text")
        encoder = text.get("encoder") if isinstance(text, dict) else None
        released = isinstance(fuser, dict) and fuser.get("fusion_layout") == "released"
        if released and isinstance(encoder, dict) and "padding" not in encoder:
            config["text"] = {**text, "encoder": {**encoder, "padding": "max_tokens"}}
        return config

    def __init__(self, config: AuralSAM2Config) -> None:
        super().__init__(config)
        cfg = config
        self.sam2 = build_sam2(cfg.sam2, pretrained=cfg.pretrained)
        if self.sam2.hidden_size != cfg.fuser.dim:
            raise ValueError(f"fuser.dim {cfg.fuser.dim} must equal SAM2's hidden size {self.sam2.hidden_size}")
        self.audio_encoder = AudioEncoder(cfg.audio, pretrained=cfg.pretrained)
        self.text_encoder: Frozen | None = None
        if cfg.text.encoder is not None:
            self.text_encoder = frozen_text_encoder(cfg.text.encoder, pretrained=cfg.pretrained)
            width = self.text_encoder.module.hidden_size
            if width != cfg.fuser.text_dim:
                raise ValueError(f"fuser.text_dim {cfg.fuser.text_dim} != text encoder width {width}")
        self.fuser = AuralFuser(cfg.fuser, cfg.projector)

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW groups as released: weight decay on every trainable parameter except those of norm layers; SAM2's
        trainable parts, if any, at ``sam2.lr`` when it is set (groups ``decay@LR``, ``no_decay@LR``)."""
        norms = (nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm)
        own_lr = self.own_learning_rates()
        groups: dict[tuple[bool, float | None], list[nn.Parameter]] = {}
        for module_name, module in self.named_modules():
            for name, p in module.named_parameters(recurse=False):
                if p.requires_grad:
                    part_lr = own_lr.get(f"{module_name}.{name}" if module_name else name)
                    groups.setdefault((not isinstance(module, norms), part_lr), []).append(p)
        return optimiser_groups(groups, lr, weight_decay)

    # -- inputs ------------------------------------------------------------------------------------------------------

    def _text_tokens(self, texts: list[str | None], device: torch.device) -> tuple[Tensor | None, Tensor | None]:
        """``(B, K, D)`` token features and ``(B, K)`` validity of the expressions; ``(None, None)`` without any."""
        if self.text_encoder is None or all(s is None for s in texts):
            return None, None
        present = [i for i, s in enumerate(texts) if s is not None]
        if self.config.fuser.fusion_layout == "released" and len(present) != len(texts):
            # The released layout reads text tokens without a mask: a clip without an expression would get the
            # zero-filled slots of the others' tokens, and its masks would depend on its batch.
            missing = [i for i, s in enumerate(texts) if s is None]
            raise UsageError(
                f"fuser.fusion_layout 'released' needs an expression for every clip of a batch or for none; clips "
                f"{missing} of this batch have none"
            )
        tokens, mask = self.text_encoder([texts[i] for i in present])  # (n, K, D), (n, K)
        out = tokens.new_zeros(len(texts), tokens.shape[1], tokens.shape[2])
        valid = torch.zeros(len(texts), tokens.shape[1], dtype=torch.bool, device=tokens.device)
        out[present], valid[present] = tokens, mask
        return out.to(device), valid.to(device)

    def _conditioning_frame(self, t: int) -> int:
        rule = self.config.tracking.train_conditioning if self.training else self.config.tracking.eval_conditioning
        return t // 2 if rule == "middle" else 0

    # -- forward -----------------------------------------------------------------------------------------------------

    @property
    def text_input(self) -> TextInput:
        """``"optional"`` with a text encoder (``config.text.encoder``): a sample whose expression is None gives the
        fuser no text tokens; else ``"none"``."""
        return "optional" if self.config.text.encoder is not None else "none"

    def forward_frames(self, batch: AVSBatch, frames: Tensor | None) -> AVSOutput:
        """Segment frames ``frames (T',)`` of every clip (None: all) with the audio (and text) prompts alone; the
        drawn frames are tracked as a clip of their own, their audio tokens at their seconds.

        Args:
            batch: frames ``(B, T, 3, H, W)`` uint8, audio examples ``(B, T, 1, 96, 64)`` (or embeddings), ``text``.
            frames: the frames to track.

        Returns:
            The output of those frames; see the class docstring.
        """
        if frames is None:
            return self._run(batch, None, use_audio=True)
        sub = batch.select_frames(frames)
        return self._run(sub, None, use_audio=True, frame_index=frames, clip_frames=batch.num_frames)

    def segment_with_prompts(
        self, batch: AVSBatch, prompts: Mapping[int, Sam2Prompt], *, use_audio: bool = True
    ) -> AVSOutput:
        """Segment with user points/boxes *and* the audio prompts in one decoder pass (the paper's Table 6 use).

        The prompted frames become SAM2's conditioning frames; on every frame the fuser's dense and sparse prompts
        enter the mask decoder through the hooks as usual, so a click or a box refines what the sound selected.

        Args:
            batch: the clips (``B`` tracks).
            prompts: frame index → :class:`~avseg.layers.sam2.Sam2Prompt` with ``points (B, P, 2)`` /
                ``point_labels (B, P)`` / ``boxes (B, 4)`` in pixels of the batch's ``W × H`` frames (rescaled to
                SAM2's input size here).
            use_audio: False runs SAM2 with the user prompts alone (the "SAM2, point/box prompts" baseline).

        Returns:
            The output, as :meth:`forward`.
        """
        if not prompts:
            raise ValueError("segment_with_prompts needs at least one prompted frame")
        t = batch.frames.shape[1]
        if any(not 0 <= i < t for i in prompts):
            raise ValueError(f"prompt frames {sorted(prompts)} must lie in 0..{t - 1}")
        return self._run(batch, prompts, use_audio=use_audio)

    def _scaled_prompts(self, prompts: Mapping[int, Sam2Prompt], h: int, w: int) -> dict[int, Sam2Prompt]:
        s = float(self.sam2.image_size)
        scale = torch.tensor([s / w, s / h])
        out = {}
        for i, p in prompts.items():
            points = p.points * scale.to(p.points) if p.points is not None else None
            boxes = p.boxes * scale.repeat(2).to(p.boxes) if p.boxes is not None else None
            out[int(i)] = replace(p, points=points, boxes=boxes)
        return out

    def _run(
        self,
        batch: AVSBatch,
        prompts: Mapping[int, Sam2Prompt] | None,
        *,
        use_audio: bool,
        frame_index: Tensor | None = None,
        clip_frames: int | None = None,
    ) -> AVSOutput:
        """Segment ``batch`` (its frames are frames ``frame_index`` of clips of ``clip_frames``, default all)."""
        cfg = self.config
        b, t, _, h, w = batch.frames.shape
        images = self.sam2.resize(self.normalize_frames(batch))  # (N, 3, S, S); padded frames 0 (mean grey)
        feats = self.sam2.encode_frames(images)  # fpn: (N, C, S/4), (N, C, S/8), (N, C, S/16)

        hooks: list[DecoderHooks | None] = [None] * t
        fused = None
        if use_audio:
            audio = self.audio_encoder(batch).to(images.dtype)  # (B, T, A)
            text, text_valid = self._text_tokens(batch.text, images.device)  # (B, K, D), (B, K)
            valid = batch.frame_valid.to(images.device)
            seconds = frame_index if frame_index is not None else torch.arange(t)
            fused = self.fuser(
                list(feats.fpn),
                audio,
                frame_valid=valid,
                text=text,
                text_valid=text_valid,
                audio_seconds=seconds.to(images.device),
                clip_frames=clip_frames,
            )
            hooks = self._hooks(fused.dense, fused.sparse, b, t, fused.grid)

        if prompts is None:
            prompt_map = {self._conditioning_frame(t): Sam2Prompt()}
            multimask: bool | None = cfg.tracking.multimask_output  # AuralSAM2 decodes three candidates
        else:
            prompt_map = self._scaled_prompts(prompts, h, w)
            multimask = None  # SAM2's rule: one mask for a box or several clicks
        track = self.sam2.propagate(
            features=feats,
            num_frames=t,
            batch_size=b,
            prompts=prompt_map,
            hooks=hooks,
            order="ascending",
            multimask_output=multimask,
            binarize_memory_masks=cfg.tracking.binarize_memory_masks,
        )
        multimask = bool(prompts is None and cfg.tracking.multimask_output)
        if multimask:
            iou, objects = track.multimask_iou, track.object_score_logits
            selected = select_mask(track.multimask_logits, iou, objects, cfg.tracking.select)  # (B, T, 1, S/4, S/4)
        else:
            selected = track.masks  # single-mask frames have no three candidates to choose from
        full = upsample_masks(selected[:, :, 0], (h, w))  # (B, T, H, W)
        aux: dict[str, Any] = {
            "multimask_logits": track.multimask_logits,
            "selected_logits": track.masks[:, :, 0],
            # What the loss supervises: the three candidates, or SAM2's single mask (whose IoU is not predicted).
            "candidates": track.multimask_logits if multimask else track.masks,
        }
        if fused is not None:
            aux["pixel_embeddings"] = fused.pixel_embeddings
            aux["audio_embeddings"] = fused.audio_embeddings
        output = AVSOutput(
            mask_logits=full[:, :, None],
            object_logits=track.object_score_logits,
            iou_pred=track.multimask_iou if multimask else None,
            aux=aux,
        )
        return self.check_output(batch, output)

    def _hooks(
        self, dense: list[Tensor], sparse: list[Tensor], b: int, t: int, grid: tuple[int, int]
    ) -> list[DecoderHooks | None]:
        """Per-frame decoder hooks: fuser levels in reverse order (stride-16 branch first), one per hook point."""
        cfg = self.config.prompts
        if not (cfg.dense or cfg.sparse):
            return [None] * t
        points = self.sam2.num_hook_points
        if points != 3:
            raise ValueError(f"AuralSAM2 needs a SAM2 decoder with 3 hook points (2 two-way blocks), got {points}")
        h, w = grid
        maps = [d.view(b, t, h, w, -1).permute(0, 1, 4, 2, 3) for d in reversed(dense)]  # 3 × (B, T, C, h, w)
        vectors = list(reversed(sparse))  # 3 × (B, T, C)
        hooks: list[DecoderHooks | None] = []
        for i in range(t):
            hooks.append(
                DecoderHooks(
                    image=[m[:, i] for m in maps] if cfg.dense else None,
                    mask_tokens=[v[:, i] for v in vectors] if cfg.sparse else None,
                    shift_query_pe=cfg.shift_query_pe,
                )
            )
        return hooks

    # -- losses ------------------------------------------------------------------------------------------------------

    def losses(self, batch: AVSBatch, output: AVSOutput) -> dict[str, Tensor]:
        """SAM2's multi-mask loss on labelled frames + AudioCon; ``"loss"`` is the weighted total."""
        cfg = self.config.loss
        # The tensors in aux hold the tracked frames only (T' of T): everything is read on those frames.
        masks = output.select_computed(batch.masks.to(output.mask_logits.device))  # (B, T', H, W)
        labelled = output.select_computed((batch.label_valid & batch.frame_valid).to(masks.device))  # (B, T')
        b = masks.shape[0]
        candidates = output.aux["candidates"][labelled]  # (n, M, S/4, S/4), M = 3 or 1
        out: dict[str, Tensor] = {}
        if candidates.shape[0] == 0:
            zero = output.mask_logits.sum() * 0.0  # keeps the graph connected for distributed training
            terms = {k: zero[None] for k in ("focal", "dice", "iou", "object")}
        else:
            target = masks[labelled] > 0  # (n, H, W)
            if cfg.mask_size is not None and tuple(target.shape[-2:]) != (cfg.mask_size, cfg.mask_size):
                size = (cfg.mask_size, cfg.mask_size)
                target = F.interpolate(target[:, None].float(), size=size, mode="nearest")[:, 0] > 0  # (n, s, s)
            logits = upsample_masks(candidates, tuple(target.shape[-2:]))  # (n, M, H, W)
            assert output.object_logits is not None
            iou_pred = output.select_computed(output.iou_pred)[labelled] if output.iou_pred is not None else None
            terms = sam_multimask_losses(
                logits,
                iou_pred if iou_pred is not None else logits.new_zeros(logits.shape[:2]),  # (n, M)
                output.select_computed(output.object_logits)[labelled],
                target,
                focal_weight=cfg.focal_weight,
                dice_weight=cfg.dice_weight,
            )
            if iou_pred is None:  # SAM2's single-mask output carries no IoU prediction to supervise
                terms["iou"] = terms["iou"] * 0.0
        denominator = float(b) if cfg.frame_reduction == "sum" else float(max(candidates.shape[0], 1))
        total = output.mask_logits.new_zeros(())
        for key, weight in (
            ("focal", cfg.focal_weight),
            ("dice", cfg.dice_weight),
            ("iou", cfg.iou_weight),
            ("object", cfg.object_weight),
        ):
            out[key] = terms[key].sum() / denominator
            total = total + weight * out[key]
        if cfg.audiocon_weight > 0 and "pixel_embeddings" in output.aux:
            con = audiocon_loss(
                output.aux["pixel_embeddings"],
                output.aux["audio_embeddings"],
                masks.long(),
                output.aux["selected_logits"],
                labelled=labelled,
                sample_limit=cfg.audiocon_samples,
                total_limit=cfg.audiocon_total,
                temperature=cfg.temperature,
            )
            out["audiocon"] = con
            total = total + cfg.audiocon_weight * con
        out["loss"] = total
        return out


# -- presets ---------------------------------------------------------------------------------------------------------

_RELEASED = "yyliu01/AuralSAM2 64a16dd scripts/run_{task}_train.sh (4 GPUs x 1 clip, argparse lr 1e-4)"
_SAM2 = {
    "b+": ("sam2-hiera-base-plus", "facebook/sam2-hiera-base-plus"),
    "l": ("sam2-hiera-large", "facebook/sam2-hiera-large"),
}


# The paper's 512 AudioCon samples per scale and frame: on a binary mask, 2 classes x (hard + easy) x 128.
_PAPER_AUDIOCON_SAMPLES = 512 // 4


def _full(size: str, task: Literal["avs", "refavs"], values: Literal["released", "paper"]) -> AuralSAM2Config:
    """A full-size preset on SAM2 ``size``: the released code's values, or the paper's where the two disagree."""
    variant, weights = _SAM2[size]
    refavs = task == "refavs"
    paper = values == "paper"
    text = TextConfig(encoder=distilroberta_encoder()) if refavs else TextConfig()
    notes = _RELEASED.format(task="ref" if refavs else "avs") + (
        "; 50 epochs" if refavs else "; 140 epochs (v1s, v1m), 90 (v2)"
    )
    if paper:
        notes += "; the paper's weight decay 0.01 and grayscale probability 0.1"
    return AuralSAM2Config(
        sam2=Sam2LayerConfig(variant=variant, weights=weights, image_size=1024, in_checkpoint=False),
        # released: dot products over the number of positions (TPAVI); paper (supplement, Eq. 10): softmax attention
        fuser=FuserConfig(text_dim=768 if refavs else None, fusion_affinity="softmax" if paper else "dot"),
        # released ProjectionHead: 2 layers to 128-d; paper: 3 layers to 64-d
        projector=ProjectorConfig(
            layers=3 if paper else 2,
            dim=64 if paper else 128,
            norm="layer" if refavs else "batch",
            source="residual" if refavs else "fused",
        ),
        audio=AudioEncoderConfig(encoder="vggish", vggish_weights="vggish-10086976.pth", two_channel=True),
        text=text,
        tracking=TrackingConfig(
            train_conditioning="middle", eval_conditioning="middle" if refavs else "first", select="iou"
        ),
        loss=AuralSAM2LossConfig(audiocon_samples=_PAPER_AUDIOCON_SAMPLES if paper else 64 if refavs else 128),
        recipe=TrainRecipe(
            optim=OptimConfig(name="adamw", lr=1e-4, weight_decay=0.01 if paper else 0.05),
            schedule=ScheduleConfig(kind="poly", power=0.9),
            batch_size=4,
            epochs=50 if refavs else 140,
            image_size=1024,
            # sam2_training_config.yaml: flip 0.5, affine, colour jitter, grayscale 0.05 (0.1 in the paper)
            augment=ClipAugmentConfig(grayscale=0.1 if paper else 0.05),
            notes=notes + "; checkpoints selected on the test splits in the released code",
        ),
    )


@register_model("auralsam2-b+-avs", AuralSAM2, tasks=("s4", "ms3"))
def auralsam2_bplus_avs() -> AuralSAM2Config:
    """AuralSAM2, SAM2 Hiera-b+ (frozen), AVSBench S4/MS3: audio prompts from the AuralFuser, AudioCon."""
    return _full("b+", "avs", "released")


@register_model("auralsam2-l-avs", AuralSAM2, tasks=("s4", "ms3"))
def auralsam2_l_avs() -> AuralSAM2Config:
    """AuralSAM2, SAM2 Hiera-l (frozen), AVSBench S4/MS3: audio prompts from the AuralFuser, AudioCon."""
    return _full("l", "avs", "released")


@register_model("auralsam2-b+-refavs", AuralSAM2, tasks=("refavs",))
def auralsam2_bplus_refavs() -> AuralSAM2Config:
    """AuralSAM2, SAM2 Hiera-b+ (frozen), Ref-AVS: audio + DistilRoBERTa text tokens in the AuralFuser."""
    return _full("b+", "refavs", "released")


@register_model("auralsam2-l-refavs", AuralSAM2, tasks=("refavs",))
def auralsam2_l_refavs() -> AuralSAM2Config:
    """AuralSAM2, SAM2 Hiera-l (frozen), Ref-AVS: audio + DistilRoBERTa text tokens in the AuralFuser."""
    return _full("l", "refavs", "released")


@register_model("auralsam2-b+-avs-paper", AuralSAM2, tasks=("s4", "ms3"))
def auralsam2_bplus_avs_paper() -> AuralSAM2Config:
    """AuralSAM2, SAM2 Hiera-b+, AVSBench S4/MS3, with the paper's values where it and the released code disagree:
    softmax fusion, 3-layer 64-d projector, 512 AudioCon samples per scale and frame, weight decay 0.01, grayscale 0.1.
    """
    return _full("b+", "avs", "paper")


@register_model("auralsam2-l-avs-paper", AuralSAM2, tasks=("s4", "ms3"))
def auralsam2_l_avs_paper() -> AuralSAM2Config:
    """AuralSAM2, SAM2 Hiera-l, AVSBench S4/MS3, with the paper's values where it and the released code disagree:
    softmax fusion, 3-layer 64-d projector, 512 AudioCon samples per scale and frame, weight decay 0.01, grayscale 0.1.
    """
    return _full("l", "avs", "paper")


@register_model("auralsam2-b+-refavs-paper", AuralSAM2, tasks=("refavs",))
def auralsam2_bplus_refavs_paper() -> AuralSAM2Config:
    """AuralSAM2, SAM2 Hiera-b+, Ref-AVS, with the paper's values where it and the released code disagree: softmax
    fusion, 3-layer 64-d projector, 512 AudioCon samples per scale and frame, weight decay 0.01, grayscale 0.1."""
    return _full("b+", "refavs", "paper")


@register_model("auralsam2-l-refavs-paper", AuralSAM2, tasks=("refavs",))
def auralsam2_l_refavs_paper() -> AuralSAM2Config:
    """AuralSAM2, SAM2 Hiera-l, Ref-AVS, with the paper's values where it and the released code disagree: softmax
    fusion, 3-layer 64-d projector, 512 AudioCon samples per scale and frame, weight decay 0.01, grayscale 0.1."""
    return _full("l", "refavs", "paper")


@register_model("auralsam2-tiny", AuralSAM2, tasks=("s4", "ms3", "refavs"))
def auralsam2_tiny() -> AuralSAM2Config:
    """Tiny AuralSAM2 for CPU demos and tests: the packaged SynthAV-trained tiny SAM2, frozen as the paper freezes
    SAM2; a small fuser, log-mel CNN and frozen MiniLM.

    SAM2 is ``avseg:sam2-tiny-synthav`` (:mod:`avseg.assets`): the ``sam2-tiny`` shape (the layer's 128-d test shape
    at 128 px with its Hiera trunk twice as wide) trained with SAM2's own promptable recipe on SynthAV videos of
    another seed than the demo's (its card gives the command and the VOS score). As in the paper, only the fuser
    (and the tiny audio CNN) trains; the decoder keeps SAM2's three candidates ranked by its IoU head and the
    released loss weights. The fuser follows the 128-d width with one block per level and its residual branches start
    at 1, not 0 (``fuser.residual_init``): with the released zero start the fused maps carry almost nothing of the
    expression within a CPU budget. In training, 4 of each clip's 10 frames are tracked (``train_frames``), 8 clips
    per step. The demo trains it for 6 minutes, because tracking all 10 frames of each test clip makes its
    evaluation slow. The SynthAV measurements behind the input size, the residual start and the trunk width are in
    ``docs/benchmarks.md``.
    """
    return AuralSAM2Config(
        pretrained=False,
        sam2=cpu_sam2_config(weights=CPU_SAM2_WEIGHTS),  # frozen
        fuser=FuserConfig(
            dim=128,
            depths=(1, 1, 1),
            audio_depth=1,
            heads=4,
            mlp_ratio=2.0,
            sr_ratio=2,
            dropout=0.0,
            audio_dim=EMBEDDING_SIZE,
            text_dim=384,
            text_hidden=128,
            audio_position="temporal",
            residual_init=1.0,
        ),
        projector=ProjectorConfig(layers=3, dim=32),
        audio=tiny_logmel_audio(),
        text=TextConfig(encoder=minilm_encoder()),
        loss=AuralSAM2LossConfig(audiocon_samples=4, mask_size=64),
        train_frames=4,
        recipe=TrainRecipe(
            optim=OptimConfig(name="adamw", lr=3e-3, weight_decay=1e-4),
            schedule=ScheduleConfig(kind="cosine", warmup_steps=30),
            batch_size=8,
            epochs=20,
            clip_grad_norm=1.0,
            image_size=128,
            notes="avseg's CPU recipe for SynthAV (fuser only); frames at SAM2's 128 px, 4 of 10 frames tracked",
        ),
    )
