"""Image backbones as four-level feature pyramids (strides 4, 8, 16, 32), built from Hugging Face transformers.

AVSBench's TPAVI and AVSegFormer both read the four stages of a ResNet-50 or a PVT-v2-b5. Both networks come from
transformers (``ResNetModel``, ``PvtV2Model``), which build from a config offline, so a preset can be instantiated
with random weights anywhere, and load pretrained weights from a hub id or a local folder when asked.

Pretrained weights used by the presets:

* ResNet-50: ``microsoft/resnet-50`` (ResNet v1.5, the torchvision layout: stride in the 3×3 convolution). AVSBench
  used torchvision's ``resnet50-19c8e357.pth``; same architecture, different ImageNet training run.
* PVT-v2-b5: ``OpenGVLab/pvt_v2_b5`` (the PVT authors' ImageNet-1k weights converted to transformers), the weights
  AVSBench loads from ``pvt_v2_b5.pth``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from torch import Tensor, nn

from avseg.errors import ShapeError

__all__ = [
    "PVT_V2_B5",
    "RESNET50",
    "BackboneConfig",
    "BackboneKind",
    "FeaturePyramid",
    "build_backbone",
    "paper_backbone",
]

BackboneKind = Literal["resnet", "pvt_v2"]

# transformers config keyword arguments of the two paper backbones (so that a random-weight build has their shape).
RESNET50: dict[str, Any] = {
    "embedding_size": 64,
    "hidden_sizes": [256, 512, 1024, 2048],
    "depths": [3, 4, 6, 3],
    "layer_type": "bottleneck",
    "downsample_in_first_stage": False,
}
PVT_V2_B5: dict[str, Any] = {
    "depths": [3, 6, 40, 3],
    "hidden_sizes": [64, 128, 320, 512],
    "num_attention_heads": [1, 2, 5, 8],
    "mlp_ratios": [4, 4, 4, 4],
    "sr_ratios": [8, 4, 2, 1],
    "patch_sizes": [7, 3, 3, 3],
    "strides": [4, 2, 2, 2],
    "qkv_bias": True,
    "drop_path_rate": 0.1,  # AVSBench's pvt_v2_b5(): drop_rate 0.0, drop_path_rate 0.1
}


@dataclass
class BackboneConfig:
    """Which image backbone, of what shape, and where its pretrained weights come from.

    Attributes:
        kind: ``"resnet"`` (transformers ``ResNetModel``) or ``"pvt_v2"`` (``PvtV2Model``).
        weights: Hugging Face hub id or local folder of pretrained weights (``microsoft/resnet-50``,
            ``OpenGVLab/pvt_v2_b5``); read only when the model is built with ``pretrained=True``.
        hf_config: keyword arguments of ``ResNetConfig`` / ``PvtV2Config``. A random-weight build uses them as the
            whole config (so they must describe the full shape); a pretrained build passes them to
            ``from_pretrained`` as overrides (they must agree with the checkpoint's shape).
        frozen: keep the backbone's weights (and batch-norm statistics) fixed during training.
    """

    kind: BackboneKind = "resnet"
    weights: str | None = None
    hf_config: dict[str, Any] = field(default_factory=dict)
    frozen: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("resnet", "pvt_v2"):
            raise ValueError(f"backbone.kind must be 'resnet' or 'pvt_v2', got {self.kind!r}")
        self.hf_config = dict(self.hf_config)


def paper_backbone(kind: BackboneKind) -> BackboneConfig:
    """A fresh config of one of the two backbones the AVS papers use: ResNet-50 (``microsoft/resnet-50``) or
    PVT-v2-b5 (``OpenGVLab/pvt_v2_b5``), with their shapes for random-weight builds."""
    if kind == "resnet":
        return BackboneConfig(kind="resnet", weights="microsoft/resnet-50", hf_config=RESNET50)
    if kind == "pvt_v2":
        return BackboneConfig(kind="pvt_v2", weights="OpenGVLab/pvt_v2_b5", hf_config=PVT_V2_B5)
    raise ValueError(f"paper_backbone: kind must be 'resnet' or 'pvt_v2', got {kind!r}")


def tiny_resnet_backbone() -> BackboneConfig:
    """A four-stage ResNet of basic blocks, 16-128 channels, one block per stage, with random weights: the backbone
    of the CPU presets (``tpavi-tiny``, ``avsegformer-tiny``)."""
    return BackboneConfig(
        kind="resnet",
        hf_config={
            "embedding_size": 16,
            "hidden_sizes": [16, 32, 64, 128],
            "depths": [1, 1, 1, 1],
            "layer_type": "basic",
        },
    )


class FeaturePyramid(nn.Module):
    """A transformers backbone returning its four stage outputs.

    Attributes:
        model: the transformers model (``ResNetModel`` or ``PvtV2Model``).
        channels: channels of the four levels (e.g. ``(256, 512, 1024, 2048)`` for ResNet-50, ``(64, 128, 320,
            512)`` for PVT-v2-b5).
        strides: ``(4, 8, 16, 32)``.
    """

    strides: tuple[int, int, int, int] = (4, 8, 16, 32)

    def __init__(self, model: nn.Module, kind: BackboneKind, *, frozen: bool = False) -> None:
        super().__init__()
        self.model = model
        self.kind = kind
        sizes = tuple(int(c) for c in model.config.hidden_sizes)
        if len(sizes) != 4:
            raise ValueError(f"a feature pyramid needs a 4-stage backbone, got hidden_sizes {list(sizes)}")
        self.channels: tuple[int, int, int, int] = sizes  # type: ignore[assignment]
        self.frozen = frozen
        if frozen:
            self.model.requires_grad_(False)

    def train(self, mode: bool = True) -> FeaturePyramid:
        # A frozen backbone keeps its batch-norm statistics too.
        return super().train(mode and not self.frozen)

    def forward(self, images: Tensor) -> list[Tensor]:
        """Run the backbone.

        Args:
            images: ``(N, 3, H, W)`` normalised images; ``H`` and ``W`` should be multiples of 32.

        Returns:
            Four maps ``(N, C_i, H / s_i, W / s_i)`` for strides ``s_i`` = 4, 8, 16, 32 (sizes rounded up for sizes
            that are not multiples of the stride).
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ShapeError(f"backbone input must be (N, 3, H, W), got {tuple(images.shape)}")
        out = self.model(pixel_values=images, output_hidden_states=True)
        # ResNet: hidden_states = (stem, stage1..4); PVT-v2: (stage1..4). Either way the last four are the pyramid.
        return list(out.hidden_states[-4:])


def build_backbone(config: BackboneConfig, *, pretrained: bool) -> FeaturePyramid:
    """Build the backbone a config describes.

    Args:
        config: the backbone config.
        pretrained: load ``config.weights`` with ``from_pretrained`` (network or cache needed for a hub id); otherwise
            random weights from ``config.hf_config`` (works offline, and under ``torch.device("meta")``).

    Returns:
        The feature pyramid.

    Raises:
        ValueError: ``pretrained`` without ``config.weights``, or a config transformers rejects.
    """
    from transformers import PvtV2Config, PvtV2Model, ResNetConfig, ResNetModel  # deferred: transformers is heavy

    config_cls, model_cls = (ResNetConfig, ResNetModel) if config.kind == "resnet" else (PvtV2Config, PvtV2Model)
    if pretrained:
        if not config.weights:
            raise ValueError(f"backbone.weights must name a hub id or folder to build a pretrained {config.kind}")
        model = model_cls.from_pretrained(config.weights, **config.hf_config)
    else:
        try:
            hf_config = config_cls(**config.hf_config)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"backbone.hf_config {config.hf_config} is not a valid {config_cls.__name__}: {err}"
            ) from err
        model = model_cls(hf_config)
    return FeaturePyramid(model, config.kind, frozen=config.frozen)
