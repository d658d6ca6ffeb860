"""Per-frame image transformers giving patch tokens and the global ``[cls]`` token, built from transformers.

SAM2-LOVE reads every frame with a frozen ImageNet ViT and keeps both its patch tokens (the frame's visual tokens) and
its ``[cls]`` (a summary accumulated over the frames seen so far); its ablation swaps in CLIP's vision tower. Both come
from transformers (``ViTModel``, ``CLIPVisionModel``), which build from a config offline, so a preset can be
instantiated with random weights anywhere (tests, parameter counts, the meta device) and load pretrained weights from
a hub id or a local folder when asked.

Pretrained weights named by the presets:

* ViT-B/16: ``google/vit-base-patch16-224`` (ImageNet-21k pre-training, ImageNet-1k fine-tuning at 224 px; inputs
  scaled to ``[-1, 1]``: mean and std 0.5).
* CLIP ViT-B/16: ``openai/clip-vit-base-patch16`` (its vision tower; CLIP's own mean and std).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avseg.errors import ShapeError
from avseg.layers.frozen import Frozen

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "CLIP_VIT_B16",
    "TINY_VIT",
    "VIT_B16",
    "ViTEncoder",
    "ViTEncoderConfig",
    "build_vit_encoder",
    "clip_vit_b16",
    "imagenet_vit_b16",
    "tiny_vit",
]

ViTKind = Literal["vit", "clip"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# transformers config keyword arguments of the two pretrained encoders, for random-weight builds without the hub.
VIT_B16: dict[str, Any] = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "image_size": 224,
    "patch_size": 16,
    "qkv_bias": True,
}
TINY_VIT: dict[str, Any] = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 128,
    "image_size": 64,
    "patch_size": 8,
}
"""The tiny presets' image transformer: 2 layers, 64-d, 2 heads, 64-px frames, 8-px patches (64 patch tokens)."""
CLIP_VIT_B16: dict[str, Any] = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "image_size": 224,
    "patch_size": 16,
    "projection_dim": 512,
}


@dataclass
class ViTEncoderConfig:
    """Which image transformer reads the frames, at what size, and whether it trains.

    Attributes:
        kind: ``"vit"`` (transformers ``ViTModel``) or ``"clip"`` (``CLIPVisionModel``, CLIP's vision tower).
        weights: hub id or local folder of pretrained weights, read only when the model is built pretrained; or a
            packaged asset (``avseg:vit-tiny-synthav``), always read.
        hf_config: ``ViTConfig`` / ``CLIPVisionConfig`` keyword arguments: the whole config of a random-weight build,
            overrides of the checkpoint's config for a pretrained one.
        image_size: frames are resized to this square size (the position embeddings are interpolated when it differs
            from the config's ``image_size``).
        pixel_mean, pixel_std: per-channel normalisation of ``[0, 1]`` pixels the weights expect.
        frozen: no gradients and always in eval mode (SAM2-LOVE freezes its encoders).
    """

    kind: ViTKind = "vit"
    weights: str | None = None
    hf_config: dict[str, Any] = field(default_factory=dict)
    image_size: int = 224
    pixel_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    pixel_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    frozen: bool = True

    def __post_init__(self) -> None:
        if self.kind not in ("vit", "clip"):
            raise ValueError(f"vision.kind must be 'vit' or 'clip', got {self.kind!r}")
        if self.image_size < 1:
            raise ValueError(f"vision.image_size must be positive, got {self.image_size}")
        self.pixel_mean = tuple(float(v) for v in self.pixel_mean)  # type: ignore[assignment]
        self.pixel_std = tuple(float(v) for v in self.pixel_std)  # type: ignore[assignment]
        if len(self.pixel_mean) != 3 or len(self.pixel_std) != 3:
            raise ValueError(f"vision.pixel_mean and pixel_std need 3 values, got {self.pixel_mean}, {self.pixel_std}")
        self.hf_config = dict(self.hf_config)


def imagenet_vit_b16(*, frozen: bool = True) -> ViTEncoderConfig:
    """A fresh config of ViT-B/16 (``google/vit-base-patch16-224``) at 224 px, with its shape for random builds."""
    return ViTEncoderConfig(kind="vit", weights="google/vit-base-patch16-224", hf_config=VIT_B16, frozen=frozen)


def tiny_vit(*, weights: str | None = None, frozen: bool) -> ViTEncoderConfig:
    """A fresh config of the tiny presets' image transformer (:data:`TINY_VIT`) at 64 px, with ImageNet's mean and
    std; ``weights="avseg:vit-tiny-synthav"`` gives the packaged one pretrained on SynthAV labels."""
    return ViTEncoderConfig(
        kind="vit",
        weights=weights,
        hf_config=TINY_VIT,
        image_size=TINY_VIT["image_size"],
        pixel_mean=(0.485, 0.456, 0.406),
        pixel_std=(0.229, 0.224, 0.225),
        frozen=frozen,
    )


def clip_vit_b16(*, frozen: bool = True) -> ViTEncoderConfig:
    """A fresh config of CLIP's ViT-B/16 vision tower (``openai/clip-vit-base-patch16``) at 224 px."""
    return ViTEncoderConfig(
        kind="clip",
        weights="openai/clip-vit-base-patch16",
        hf_config=CLIP_VIT_B16,
        pixel_mean=CLIP_MEAN,
        pixel_std=CLIP_STD,
        frozen=frozen,
    )


class ViTEncoder(nn.Module):
    """An image transformer on ``N`` frames: ``uint8`` pixels in, patch tokens and ``[cls]`` out.

    Attributes:
        model: the transformers model.
        hidden_size: width ``D`` of the tokens.
        num_patches: ``P``, patch tokens per frame at ``config.image_size``.
        loaded: the weights were read from ``config.weights`` (not random).
    """

    def __init__(self, config: ViTEncoderConfig, *, pretrained: bool) -> None:
        super().__init__()
        from transformers import CLIPVisionConfig, CLIPVisionModel, ViTConfig, ViTModel  # deferred: heavy

        self.config = config
        if config.kind == "vit":
            config_cls: Any = ViTConfig
            build: Any = lambda c: ViTModel(c, add_pooling_layer=False)  # noqa: E731
            load: Any = lambda src, **kw: ViTModel.from_pretrained(src, add_pooling_layer=False, **kw)  # noqa: E731
        else:
            config_cls, build, load = CLIPVisionConfig, CLIPVisionModel, CLIPVisionModel.from_pretrained
        from avseg.assets import is_packaged, resolve_weights

        self.loaded = pretrained or is_packaged(config.weights)
        if self.loaded:
            if not config.weights:
                raise ValueError(f"vision.weights must name a hub id or folder to build a pretrained {config.kind}")
            # fp32 whatever the stored dtype (packaged weights are fp16).
            self.model = load(resolve_weights(config.weights), dtype=torch.float32, **config.hf_config)
        else:
            try:
                hf_config = config_cls(**config.hf_config)
            except (TypeError, ValueError) as err:
                name = config_cls.__name__
                raise ValueError(f"vision.hf_config {config.hf_config} is not a valid {name}: {err}") from err
            self.model = build(hf_config)
        self.hidden_size = int(self.model.config.hidden_size)
        self.num_patches = (config.image_size // int(self.model.config.patch_size)) ** 2
        self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.pixel_std).view(1, 3, 1, 1) * 255.0, persistent=False)

    def forward(self, frames: Tensor, valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Encode frames.

        Args:
            frames: ``(N, 3, H, W)`` pixels in ``[0, 255]`` (``uint8`` or float).
            valid: ``(N,)`` bool; frames marked False (clip padding) enter as zeros after normalisation.

        Returns:
            ``patches (N, P, D)`` and ``cls (N, D)``: the last layer's tokens (after the final layer norm; CLIP's
            ``post_layernorm`` is applied to every token for the same reason).
        """
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ShapeError(f"vision encoder input must be (N, 3, H, W), got {tuple(frames.shape)}")
        x = frames.float()
        size = (self.config.image_size, self.config.image_size)
        if tuple(x.shape[-2:]) != size:
            # Resizing before normalising gives the same numbers (both are affine per channel) for less work.
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        x = (x - self.pixel_mean) / self.pixel_std  # (N, 3, s, s)
        if valid is not None:
            x = x.masked_fill(~valid.to(x.device).view(-1, 1, 1, 1), 0.0)
        out = self.model(pixel_values=x, interpolate_pos_encoding=True)
        tokens = out.last_hidden_state  # (N, 1 + P, D)
        if self.config.kind == "clip":
            tokens = self.model.vision_model.post_layernorm(tokens)
        return tokens[:, 1:], tokens[:, 0]


def build_vit_encoder(config: ViTEncoderConfig, *, pretrained: bool) -> nn.Module:
    """The encoder of ``config``: a :class:`ViTEncoder`, wrapped in :class:`~avseg.layers.frozen.Frozen` (reachable
    as ``.module``) when ``config.frozen``. A frozen pretrained encoder is rebuilt from ``config.weights`` and left out
    of checkpoints (packaged ones too); random or trained weights travel in them."""
    encoder = ViTEncoder(config, pretrained=pretrained)
    return Frozen(encoder, in_checkpoint=not encoder.loaded) if config.frozen else encoder
