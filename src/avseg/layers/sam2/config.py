"""Configuration of the SAM2 layer: which SAM2 (size, version, weights), at what resolution, and what trains.

The eight released models (SAM 2 and SAM 2.1, Hiera tiny / small / base-plus / large) differ only in the Hiera
trunk (:data:`HIERA_SHAPES`, from the official ``sam2/configs/sam2{,.1}/*.yaml``) and in two SAM 2.1 switches:
a projected temporal position encoding on object pointers (``obj_ptr_tpos_proj``) and a learned "object absent"
embedding added to the spatial memory (``no_obj_embed_spatial``). Everything else (256-d prompt encoder and mask
decoder, 4 memory-attention layers, 7 memory slots, 16 object pointers) is shared. ``"test-tiny"`` is a random
shape for tests: 128-d, one or two blocks per stage, about 1.5 M parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "CPU_SAM2_WEIGHTS",
    "HIERA_SHAPES",
    "SAM2_PARTS",
    "Sam2LayerConfig",
    "Sam2Variant",
    "check_reading_size",
    "cpu_sam2_config",
    "hf_video_config_kwargs",
    "hiera_trunk_overrides",
    "merge_dicts",
    "tiny_sam2_config",
]

Sam2Variant = Literal[
    "sam2-hiera-tiny",
    "sam2-hiera-small",
    "sam2-hiera-base-plus",
    "sam2-hiera-large",
    "sam2.1-hiera-tiny",
    "sam2.1-hiera-small",
    "sam2.1-hiera-base-plus",
    "sam2.1-hiera-large",
    "test-tiny",
]

SAM2_PARTS: tuple[str, ...] = ("image_encoder", "prompt_encoder", "mask_decoder", "memory")
"""Parts of SAM2 that ``Sam2LayerConfig.trainable`` can name. ``memory`` is the memory attention, the memory
encoder, the object-pointer projections and the memory embeddings."""

# transformers Sam2HieraDetConfig keyword arguments of each trunk (official yaml: embed_dim, num_heads, stages,
# global_att_blocks, window_pos_embed_bkg_spatial_size, window_spec). The neck reads the stage widths in reverse.
HIERA_SHAPES: dict[str, dict[str, Any]] = {
    "tiny": {
        "hidden_size": 96,
        "embed_dim_per_stage": [96, 192, 384, 768],
        "num_attention_heads_per_stage": [1, 2, 4, 8],
        "blocks_per_stage": [1, 2, 7, 2],
        "global_attention_blocks": [5, 7, 9],
        "window_positional_embedding_background_size": [7, 7],
        "window_size_per_stage": [8, 4, 14, 7],
    },
    "small": {
        "hidden_size": 96,
        "embed_dim_per_stage": [96, 192, 384, 768],
        "num_attention_heads_per_stage": [1, 2, 4, 8],
        "blocks_per_stage": [1, 2, 11, 2],
        "global_attention_blocks": [7, 10, 13],
        "window_positional_embedding_background_size": [7, 7],
        "window_size_per_stage": [8, 4, 14, 7],
    },
    "base-plus": {
        "hidden_size": 112,
        "embed_dim_per_stage": [112, 224, 448, 896],
        "num_attention_heads_per_stage": [2, 4, 8, 16],
        "blocks_per_stage": [2, 3, 16, 3],
        "global_attention_blocks": [12, 16, 20],
        "window_positional_embedding_background_size": [14, 14],
        "window_size_per_stage": [8, 4, 14, 7],
    },
    "large": {
        "hidden_size": 144,
        "embed_dim_per_stage": [144, 288, 576, 1152],
        "num_attention_heads_per_stage": [2, 4, 8, 16],
        "blocks_per_stage": [2, 6, 36, 4],
        "global_attention_blocks": [23, 33, 43],
        "window_positional_embedding_background_size": [7, 7],
        "window_size_per_stage": [8, 4, 16, 8],
    },
    # Random test shape with every code path of the real models (4 stages, windowed and global attention). Memory
    # attention reads 64-d memories and transformers' video model splits each C-d object pointer into C/64 memory
    # tokens (it fails for C = 64), so the model width is 128.
    "test": {
        "hidden_size": 16,
        "embed_dim_per_stage": [16, 32, 64, 128],
        "num_attention_heads_per_stage": [1, 1, 2, 2],
        "blocks_per_stage": [1, 1, 2, 1],
        "global_attention_blocks": [3],
        "window_positional_embedding_background_size": [4, 4],
        "window_size_per_stage": [4, 4, 2, 2],
    },
}

# Everything but the trunk, for the test shape (the released models use transformers' defaults).
_TEST_HEADS: dict[str, Any] = {
    "fpn_hidden_size": 128,
    "mask_decoder": {"hidden_size": 128, "mlp_dim": 128, "num_attention_heads": 2, "iou_head_hidden_dim": 64},
    "memory_attention_hidden_size": 128,
    "memory_attention_num_layers": 2,
    "memory_attention_feed_forward_hidden_size": 128,
    "memory_encoder_hidden_size": 128,
    "mask_downsampler_embed_dim": 128,
    "memory_fuser_embed_dim": 128,
    "memory_fuser_intermediate_dim": 128,
    "memory_fuser_num_layers": 1,
}


@dataclass
class Sam2LayerConfig:
    """Which SAM2 to build and how it is used.

    Attributes:
        variant: the released model whose shape to build (``"sam2.1-hiera-large"`` …), or ``"test-tiny"``.
        weights: where ``pretrained=True`` builds read weights: a Hugging Face hub id (default
            ``facebook/<variant>``), a folder in Hugging Face format, a folder written by
            ``avseg convert sam2 IN OUT_DIR`` (the official ``.pt`` files, the AuralSAM2 / Sa2VA SAM2 weights, or the
            SAM2 of an avseg checkpoint), or a packaged asset ``avseg:<name>`` (:mod:`avseg.assets`).
        image_size: square input size (multiple of 32). The released models use 1024; smaller sizes interpolate the
            trunk's position embedding, as SAM2 does.
        trainable: the parts (of :data:`SAM2_PARTS`) that train; the others are frozen: no gradients to their
            weights and always in eval mode (gradients still flow *through* them to trainable inputs such as
            decoder hooks). Empty: all of SAM2 frozen (AuralSAM2).
        memory_dtype: dtype of stored memory features. SAM2's video predictor (and transformers) store bfloat16;
            ``"float32"`` is SAM2's training path.
        in_checkpoint: keep frozen SAM2 weights in avseg checkpoints. False leaves them out (they are rebuilt from
            ``weights``, which ``test-tiny`` must then name); trainable parts are always saved.
        hf_config: overrides of transformers ``Sam2VideoConfig`` keyword arguments (nested dicts for
            ``vision_config`` / ``prompt_encoder_config`` / ``mask_decoder_config``), applied last.
        random_init: how a build with random weights initialises its linear, convolution and embedding layers:
            ``"sam2"``, PyTorch's module defaults, as SAM2's own code builds them, or ``"transformers"``, transformers'
            normal(0, 0.02). transformers' init scales every layer's output down, so that a random SAM2's masks are
            nearly constant (logits of standard deviation about 5e-4 at the tiny shape) and a tracked frame's mask
            differs between two prompted objects by about 1e-7: the memory path then gets almost no gradient and a
            SAM2 trained from scratch learns to ignore it (``docs/benchmarks.md``). Pretrained builds ignore it.
        lr: the learning rate of SAM2's trainable parts (the models' parameter groups apply it; the recipe's
            schedule scales it like every group's); None (every preset): the recipe's. The papers fine-tune SAM2 at
            their recipe's small learning rate, while the CPU recipes use a larger one for the layers they train from
            scratch; ``model.sam2.lr=1e-4`` trains SAM2 at the papers' rate beside them (measured on
            ``sam2love-tiny`` in ``docs/benchmarks.md``: a small gain, no change in what it grounds).
    """

    variant: Sam2Variant = "sam2.1-hiera-base-plus"
    weights: str | None = None
    image_size: int = 1024
    trainable: tuple[str, ...] = ()
    memory_dtype: Literal["bfloat16", "float32"] = "bfloat16"
    in_checkpoint: bool = True
    hf_config: dict[str, Any] = field(default_factory=dict)
    random_init: Literal["sam2", "transformers"] = "sam2"
    lr: float | None = None

    def __post_init__(self) -> None:
        if self.variant not in Sam2Variant.__args__:  # type: ignore[attr-defined]
            raise ValueError(f"sam2.variant must be one of {list(Sam2Variant.__args__)}, got {self.variant!r}")  # type: ignore[attr-defined]
        if self.image_size <= 0 or self.image_size % 32:
            raise ValueError(f"sam2.image_size must be a positive multiple of 32, got {self.image_size}")
        self.trainable = tuple(self.trainable)
        unknown = [p for p in self.trainable if p not in SAM2_PARTS]
        if unknown:
            raise ValueError(f"sam2.trainable names unknown parts {unknown}; choose from {list(SAM2_PARTS)}")
        if self.memory_dtype not in ("bfloat16", "float32"):
            raise ValueError(f"sam2.memory_dtype must be 'bfloat16' or 'float32', got {self.memory_dtype!r}")
        if not self.in_checkpoint and self.variant == "test-tiny" and not self.weights:
            raise ValueError("sam2.in_checkpoint=False needs sam2.weights to rebuild SAM2 from (test-tiny has none)")
        self.hf_config = dict(self.hf_config)
        if self.random_init not in ("sam2", "transformers"):
            raise ValueError(f"sam2.random_init must be 'sam2' or 'transformers', got {self.random_init!r}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"sam2.lr must be > 0 or None, got {self.lr}")

    @property
    def default_weights(self) -> str:
        """``weights`` (a packaged ``avseg:<name>`` resolved to its folder), or the variant's official hub id."""
        from avseg.assets import resolve_weights

        if not self.weights and self.variant == "test-tiny":
            raise ValueError("the test-tiny SAM2 shape has no released weights; set sam2.weights to a folder")
        return resolve_weights(self.weights) if self.weights else f"facebook/{self.variant}"


def hiera_trunk_overrides(**trunk: Any) -> dict[str, Any]:
    """``Sam2LayerConfig.hf_config`` that replaces entries of the Hiera trunk (keys as in :data:`HIERA_SHAPES`).

    A new ``embed_dim_per_stage`` also sets what must agree with it: the patch embedding's width (``hidden_size``,
    the first stage's width in every released trunk, unless given) and the FPN neck's channel list (the stage widths
    in reverse), without which the neck's 1×1 convs would not fit the trunk.
    """
    unknown = sorted(set(trunk) - set(HIERA_SHAPES["test"]))
    if unknown:
        raise ValueError(f"unknown Hiera trunk keys {unknown}; choose from {sorted(HIERA_SHAPES['test'])}")
    backbone = dict(trunk)
    vision: dict[str, Any] = {"backbone_config": backbone}
    if "embed_dim_per_stage" in trunk:
        backbone.setdefault("hidden_size", trunk["embed_dim_per_stage"][0])
        vision["backbone_channel_list"] = list(reversed(trunk["embed_dim_per_stage"]))
    return {"vision_config": vision}


def tiny_sam2_config(image_size: int = 64, **overrides: Any) -> Sam2LayerConfig:
    """The random ``test-tiny`` SAM2 (128-d, about 1.5 M parameters) at ``image_size`` (builds in about 0.1 s)."""
    return Sam2LayerConfig(variant="test-tiny", image_size=image_size, **overrides)


CPU_SAM2_WEIGHTS = "avseg:sam2-tiny-synthav"
"""The packaged SynthAV-trained SAM2 of :func:`cpu_sam2_config`'s shape (:mod:`avseg.assets`)."""


def cpu_sam2_config(*, trainable: tuple[str, ...] = (), weights: str | None = None) -> Sam2LayerConfig:
    """The SAM2 of the CPU presets (``sam2-tiny``, ``auralsam2-tiny``, ``sam2love-tiny``): the 128-d test shape at
    128 px with its Hiera trunk twice as wide (stages of 32/64/128/256 channels: on 2 cores a step costs little more,
    small ops being bound by per-op overhead, and it learns more per step), memories in float32.

    Args:
        trainable: the parts that train.
        weights: :data:`CPU_SAM2_WEIGHTS` for the packaged SynthAV-trained weights (they load offline, with or
            without ``pretrained``), None for random ones.
    """
    return tiny_sam2_config(
        image_size=128,
        weights=weights,
        trainable=trainable,
        memory_dtype="float32",
        hf_config=hiera_trunk_overrides(
            embed_dim_per_stage=[32, 64, 128, 256], num_attention_heads_per_stage=[1, 2, 2, 4]
        ),
    )


def check_reading_size(recipe_image_size: int | None, sam2: Sam2LayerConfig) -> None:
    """Refuse a recipe that reads frames at another size than SAM2's input: SAM2 resizes whatever it is given, so
    reading frames at another size only costs a resample (and, upwards, detail that is not there).

    Raises:
        ValueError: naming both sizes.
    """
    if recipe_image_size is not None and recipe_image_size != sam2.image_size:
        raise ValueError(
            f"recipe.image_size {recipe_image_size} must equal sam2.image_size {sam2.image_size} "
            "(frames are read at the size SAM2 sees), or be null to read them as stored"
        )


def merge_dicts(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``extra``, recursively for nested dicts."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge_dicts(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def hf_video_config_kwargs(config: Sam2LayerConfig) -> dict[str, Any]:
    """Keyword arguments of transformers ``Sam2VideoConfig`` for ``config`` (sizes follow ``image_size``).

    For pretrained builds these are applied on top of the checkpoint's own config; the shape entries must then agree
    with the checkpoint (they do for the variant it was released as).
    """
    size = config.image_size
    test = config.variant == "test-tiny"
    trunk = HIERA_SHAPES["test" if test else config.variant.split("-hiera-")[1]]
    heads = _TEST_HEADS if test else {}
    hidden = heads.get("fpn_hidden_size", 256)
    sam21 = not config.variant.startswith("sam2-")
    kwargs: dict[str, Any] = {
        "vision_config": {
            "model_type": "sam2_vision_model",
            "backbone_config": {"model_type": "sam2_hiera_det_model", "image_size": [size, size], **trunk},
            "backbone_channel_list": list(reversed(trunk["embed_dim_per_stage"])),
            "backbone_feature_sizes": [[size // s, size // s] for s in (4, 8, 16)],
            "fpn_hidden_size": hidden,
        },
        "prompt_encoder_config": {"hidden_size": hidden, "image_size": size, "patch_size": 16},
        "mask_decoder_config": heads.get("mask_decoder", {}),
        "image_size": size,
        "memory_attention_rope_feat_sizes": [size // 16, size // 16],
        "enable_temporal_pos_encoding_for_object_pointers": sam21,
        "enable_occlusion_spatial_embedding": sam21,
        **{k: v for k, v in heads.items() if k not in ("fpn_hidden_size", "mask_decoder")},
    }
    return merge_dicts(kwargs, config.hf_config)
