"""Convert Meta's SAM2 / SAM2.1 checkpoints to the folder avseg's SAM2 layer loads (``avseg convert sam2 IN OUT``).

Input: an official ``sam2_hiera_{tiny,small,base_plus,large}.pt`` or ``sam2.1_hiera_*.pt`` (``{"model": state_dict}``
with the upstream module names of ``facebookresearch/sam2``), or any file holding those names under a prefix, as
the SAM2 weights inside AuralSAM2 (``v_model.``) and Sa2VA (``grounding_encoder.sam2_model.``) checkpoints do; the
prefix is found automatically. The file is read with ``torch.load(weights_only=True)``: no unrestricted pickle.

Output: a Hugging Face-format folder (``config.json`` of transformers' ``Sam2VideoConfig``, ``model.safetensors``
with transformers' ``Sam2VideoModel`` names, and ``conversion.json`` recording the source and its SHA-256). Use it
as ``Sam2LayerConfig(variant=…, weights="OUT_DIR")`` with ``build_sam2(config, pretrained=True)``; transformers'
``Sam2VideoModel.from_pretrained("OUT_DIR")`` reads it too.

Key map (upstream → avseg, i.e. transformers ``Sam2VideoModel``; ``docs/sam2.md`` has it as a table). Everywhere:
attention ``out_proj`` → ``o_proj``; ``norm{n}`` → ``layer_norm{n}``; three-layer MLPs ``layers.{0,1,2}`` →
``{proj_in,layers.0,proj_out}``; two-layer MLPs ``layers.{0,1}`` → ``{proj_in,proj_out}``. Then by module:

* ``image_encoder.trunk.`` → ``vision_encoder.backbone.`` (``patch_embed.proj`` → ``patch_embed.projection``;
  ``pos_embed``, ``pos_embed_window``, ``blocks.{i}.{attn.qkv,attn.proj,proj}`` keep their names);
  ``image_encoder.neck.convs.{i}.conv`` → ``vision_encoder.neck.convs.{i}``.
* ``sam_prompt_encoder.`` → ``prompt_encoder.``: ``pe_layer.positional_encoding_gaussian_matrix`` →
  ``shared_embedding.positional_embedding`` (and a copy as the top-level ``shared_image_embedding.
  positional_embedding``); ``point_embeddings.{0..3}.weight`` → the rows of ``point_embed.weight``;
  ``mask_downscaling.{0,1,3,4,6}`` → ``mask_embed.{conv1,layer_norm1,conv2,layer_norm2,conv3}``;
  ``not_a_point_embed``, ``no_mask_embed`` keep their names.
* ``sam_mask_decoder.`` → ``mask_decoder.``: ``transformer.norm_final_attn`` → ``transformer.layer_norm_final_attn``;
  ``output_upscaling.{0,1,3}`` → ``{upscale_conv1,upscale_layer_norm,upscale_conv2}``;
  ``output_hypernetworks_mlps.{i}``, ``iou_prediction_head``, ``pred_obj_score_head`` (three-layer MLPs); tokens,
  ``conv_s0``, ``conv_s1`` and the attention modules keep their names.
* ``memory_attention.`` keeps its names (``norm`` → ``layer_norm``).
* ``memory_encoder.``: ``mask_downsampler.encoder.{0,3,6,9}`` → ``mask_downsampler.layers.{0..3}.conv``,
  ``encoder.{1,4,7,10}`` → ``layers.{0..3}.layer_norm``, ``encoder.12`` → ``final_conv``; ``pix_feat_proj`` →
  ``feature_projection``; ``fuser.layers.{i}.{dwconv,norm,pwconv1,pwconv2,gamma}`` →
  ``memory_fuser.layers.{i}.{depthwise_conv,layer_norm,pointwise_conv1,pointwise_conv2,scale}``; ``out_proj`` →
  ``projection``.
* Top level: ``maskmem_tpos_enc`` → ``memory_temporal_positional_encoding``; ``no_mem_embed`` →
  ``no_memory_embedding``; ``no_mem_pos_enc`` → ``no_memory_positional_encoding``; ``no_obj_ptr`` →
  ``no_object_pointer``; ``no_obj_embed_spatial`` (SAM2.1) → ``occlusion_spatial_embedding_parameter``;
  ``mask_downsample`` keeps its name; ``obj_ptr_proj`` (three-layer MLP) → ``object_pointer_proj``;
  ``obj_ptr_tpos_proj`` (SAM2.1) → ``temporal_positional_encoding_projection_layer``.

Every tensor keeps its shape. A key the map does not know, or a model key no upstream key fills, is an error.

The input may also be an avseg checkpoint (or training run) folder of any model built on the SAM2 layer, e.g. a
``sam2-tiny`` fine-tuned with ``avseg train``: its SAM2 (already in transformers' names) is written to the same
folder format, so that another model can load it through ``sam2.weights``; ``--dtype float16`` halves the file.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from avseg.convert import (
    conversion_phase,
    conversion_summary,
    print_conversion,
    read_released_state,
    tensor_values,
)
from avseg.errors import CheckpointError, UsageError

__all__ = ["KEY_RULES", "convert", "convert_state_dict", "detect_variant", "load_upstream", "upstream_to_avseg_key"]

_MLP3 = {"0": "proj_in", "1": "layers.0", "2": "proj_out"}
_MLP2 = {"0": "proj_in", "1": "proj_out"}
_MASK_EMBED = {"0": "conv1", "1": "layer_norm1", "3": "conv2", "4": "layer_norm2", "6": "conv3"}
_UPSCALING = {"0": "upscale_conv1", "1": "upscale_layer_norm", "3": "upscale_conv2"}
_DOWNSAMPLER = {
    **{str(3 * i): f"layers.{i}.conv" for i in range(4)},
    **{str(3 * i + 1): f"layers.{i}.layer_norm" for i in range(4)},
    "12": "final_conv",
}
_FUSER = {"dwconv": "depthwise_conv", "norm": "layer_norm", "pwconv1": "pointwise_conv1", "pwconv2": "pointwise_conv2"}
_ATTN = r"(q_proj|k_proj|v_proj|out_proj)"
_P = r"(weight|bias)"

Rule = tuple[str, "str | Callable[[re.Match[str]], str]"]


def _attn(name: str) -> str:
    return "o_proj" if name == "out_proj" else name


KEY_RULES: tuple[Rule, ...] = (
    # Hiera trunk
    (rf"image_encoder\.trunk\.patch_embed\.proj\.{_P}", r"vision_encoder.backbone.patch_embed.projection.\1"),
    (r"image_encoder\.trunk\.(pos_embed|pos_embed_window)", r"vision_encoder.backbone.\1"),
    (rf"image_encoder\.trunk\.blocks\.(\d+)\.norm([12])\.{_P}", r"vision_encoder.backbone.blocks.\1.layer_norm\2.\3"),
    (rf"image_encoder\.trunk\.blocks\.(\d+)\.attn\.(qkv|proj)\.{_P}", r"vision_encoder.backbone.blocks.\1.attn.\2.\3"),
    (
        rf"image_encoder\.trunk\.blocks\.(\d+)\.mlp\.layers\.([01])\.{_P}",
        lambda m: f"vision_encoder.backbone.blocks.{m[1]}.mlp.{_MLP2[m[2]]}.{m[3]}",
    ),
    (rf"image_encoder\.trunk\.blocks\.(\d+)\.proj\.{_P}", r"vision_encoder.backbone.blocks.\1.proj.\2"),
    # FPN neck
    (rf"image_encoder\.neck\.convs\.(\d+)\.conv\.{_P}", r"vision_encoder.neck.convs.\1.\2"),
    # prompt encoder (pe_layer and point_embeddings are handled in convert_state_dict)
    (r"sam_prompt_encoder\.(not_a_point_embed|no_mask_embed)\.weight", r"prompt_encoder.\1.weight"),
    (
        rf"sam_prompt_encoder\.mask_downscaling\.([01346])\.{_P}",
        lambda m: f"prompt_encoder.mask_embed.{_MASK_EMBED[m[1]]}.{m[2]}",
    ),
    # mask decoder
    (r"sam_mask_decoder\.(iou_token|mask_tokens|obj_score_token)\.weight", r"mask_decoder.\1.weight"),
    (
        rf"sam_mask_decoder\.transformer\.layers\.(\d+)\.(self_attn|cross_attn_token_to_image|cross_attn_image_to_token)"
        rf"\.{_ATTN}\.{_P}",
        lambda m: f"mask_decoder.transformer.layers.{m[1]}.{m[2]}.{_attn(m[3])}.{m[4]}",
    ),
    (
        rf"sam_mask_decoder\.transformer\.layers\.(\d+)\.norm([1-4])\.{_P}",
        r"mask_decoder.transformer.layers.\1.layer_norm\2.\3",
    ),
    (
        rf"sam_mask_decoder\.transformer\.layers\.(\d+)\.mlp\.layers\.([01])\.{_P}",
        lambda m: f"mask_decoder.transformer.layers.{m[1]}.mlp.{_MLP2[m[2]]}.{m[3]}",
    ),
    (
        rf"sam_mask_decoder\.transformer\.final_attn_token_to_image\.{_ATTN}\.{_P}",
        lambda m: f"mask_decoder.transformer.final_attn_token_to_image.{_attn(m[1])}.{m[2]}",
    ),
    (rf"sam_mask_decoder\.transformer\.norm_final_attn\.{_P}", r"mask_decoder.transformer.layer_norm_final_attn.\1"),
    (
        rf"sam_mask_decoder\.output_upscaling\.([013])\.{_P}",
        lambda m: f"mask_decoder.{_UPSCALING[m[1]]}.{m[2]}",
    ),
    (rf"sam_mask_decoder\.(conv_s0|conv_s1)\.{_P}", r"mask_decoder.\1.\2"),
    (
        rf"sam_mask_decoder\.(output_hypernetworks_mlps\.\d+|iou_prediction_head|pred_obj_score_head)"
        rf"\.layers\.([012])\.{_P}",
        lambda m: f"mask_decoder.{m[1]}.{_MLP3[m[2]]}.{m[3]}",
    ),
    # memory attention
    (
        rf"memory_attention\.layers\.(\d+)\.(self_attn|cross_attn_image)\.{_ATTN}\.{_P}",
        lambda m: f"memory_attention.layers.{m[1]}.{m[2]}.{_attn(m[3])}.{m[4]}",
    ),
    (rf"memory_attention\.layers\.(\d+)\.(linear[12])\.{_P}", r"memory_attention.layers.\1.\2.\3"),
    (rf"memory_attention\.layers\.(\d+)\.norm([123])\.{_P}", r"memory_attention.layers.\1.layer_norm\2.\3"),
    (rf"memory_attention\.norm\.{_P}", r"memory_attention.layer_norm.\1"),
    # memory encoder
    (
        rf"memory_encoder\.mask_downsampler\.encoder\.(0|1|3|4|6|7|9|10|12)\.{_P}",
        lambda m: f"memory_encoder.mask_downsampler.{_DOWNSAMPLER[m[1]]}.{m[2]}",
    ),
    (rf"memory_encoder\.pix_feat_proj\.{_P}", r"memory_encoder.feature_projection.\1"),
    (
        rf"memory_encoder\.fuser\.layers\.(\d+)\.(dwconv|norm|pwconv1|pwconv2)\.{_P}",
        lambda m: f"memory_encoder.memory_fuser.layers.{m[1]}.{_FUSER[m[2]]}.{m[3]}",
    ),
    (r"memory_encoder\.fuser\.layers\.(\d+)\.gamma", r"memory_encoder.memory_fuser.layers.\1.scale"),
    (rf"memory_encoder\.out_proj\.{_P}", r"memory_encoder.projection.\1"),
    # memory embeddings and object pointers
    (r"maskmem_tpos_enc", "memory_temporal_positional_encoding"),
    (r"no_mem_embed", "no_memory_embedding"),
    (r"no_mem_pos_enc", "no_memory_positional_encoding"),
    (r"no_obj_ptr", "no_object_pointer"),
    (r"no_obj_embed_spatial", "occlusion_spatial_embedding_parameter"),
    (rf"mask_downsample\.{_P}", r"mask_downsample.\1"),
    (rf"obj_ptr_proj\.layers\.([012])\.{_P}", lambda m: f"object_pointer_proj.{_MLP3[m[1]]}.{m[2]}"),
    (rf"obj_ptr_tpos_proj\.{_P}", r"temporal_positional_encoding_projection_layer.\1"),
)
"""Ordered ``(upstream regex, avseg name)`` rules; each upstream key must fully match exactly one."""

_COMPILED = tuple((re.compile(pattern), target) for pattern, target in KEY_RULES)
_PE = "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
_POINT = re.compile(r"sam_prompt_encoder\.point_embeddings\.(\d+)\.weight")
_ROOT = "image_encoder.trunk.patch_embed.proj.weight"

# (embed dim, number of Hiera blocks) -> size name of the released trunks
_TRUNKS = {(96, 12): "tiny", (96, 16): "small", (112, 24): "base-plus", (144, 48): "large"}


def upstream_to_avseg_key(key: str) -> str | None:
    """The avseg (transformers) name of one upstream key of the rule table, or None if no rule matches."""
    for pattern, target in _COMPILED:
        match = pattern.fullmatch(key)
        if match:
            return target(match) if callable(target) else match.expand(target)
    return None


def convert_state_dict(upstream: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename an upstream SAM2 state dict to transformers' ``Sam2VideoModel`` names.

    Args:
        upstream: upstream keys (no prefix) and tensors.

    Returns:
        The renamed state dict (same tensors; the prompt encoder's four point embeddings become one ``(4, C)``
        table and its Gaussian matrix is also the image-wide positional embedding).

    Raises:
        ValueError: keys that no rule maps (listed), or two keys mapping to one name.
    """
    out: dict[str, Tensor] = {}
    points: dict[int, Tensor] = {}
    unknown: list[str] = []
    for key, value in upstream.items():
        if key == _PE:
            out["prompt_encoder.shared_embedding.positional_embedding"] = value
            out["shared_image_embedding.positional_embedding"] = value.clone()
            continue
        point = _POINT.fullmatch(key)
        if point:
            points[int(point[1])] = value
            continue
        target = upstream_to_avseg_key(key)
        if target is None:
            unknown.append(key)
        elif target in out:
            raise ValueError(f"upstream keys map twice to {target!r} (second: {key!r})")
        else:
            out[target] = value
    if unknown:
        raise ValueError(f"{len(unknown)} upstream SAM2 keys have no avseg name: {sorted(unknown)[:20]}")
    if points:
        if sorted(points) != list(range(len(points))):
            raise ValueError(f"point_embeddings indices {sorted(points)} are not 0..{len(points) - 1}")
        out["prompt_encoder.point_embed.weight"] = torch.cat([points[i] for i in range(len(points))], dim=0)
    return out


def _strip_prefix(state: Mapping[str, Any], path: Path) -> dict[str, Tensor]:
    """The upstream SAM2 sub-dict of ``state``: keys under the prefix that precedes ``image_encoder.trunk…``."""
    prefixes = [key[: -len(_ROOT)] for key in state if key.endswith(_ROOT)]
    if len(prefixes) != 1:
        found = "no" if not prefixes else f"{len(prefixes)} ({prefixes})"
        raise CheckpointError(path, f"expected one SAM2 image encoder ('…{_ROOT}'), found {found}")
    prefix = prefixes[0]
    sub = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
    # the prefix holds only the SAM2 model (a training wrapper may add other modules beside it, not inside it)
    return {key: value for key, value in sub.items() if isinstance(value, Tensor)}


def load_upstream(path: str | Path) -> dict[str, Tensor]:
    """Read an upstream SAM2 checkpoint (``{"model": state_dict}``, a bare state dict, or a bigger model's state dict
    holding SAM2 under a prefix) with ``weights_only=True``; returns the SAM2 keys without prefix."""
    path = Path(path)
    data = read_released_state(path, "SAM2 checkpoint", wrappers=("model", "state_dict", "module"))
    return _strip_prefix(data, path)


def detect_variant(state: Mapping[str, Tensor]) -> str | None:
    """The released variant (``"sam2.1-hiera-large"`` …) an upstream state dict has the shape of, or None."""
    embed = state[_ROOT].shape[0]
    blocks = {int(m[1]) for key in state if (m := re.match(r"image_encoder\.trunk\.blocks\.(\d+)\.", key))}
    size = _TRUNKS.get((embed, len(blocks)))
    if size is None:
        return None
    version = "sam2.1" if "no_obj_embed_spatial" in state else "sam2"
    return f"{version}-hiera-{size}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_folder(out_dir: Path, tensors: Mapping[str, Tensor], hf_config: Any, record: Mapping[str, Any]) -> None:
    """Write ``model.safetensors``, ``config.json`` and ``conversion.json`` into ``out_dir``, each atomically."""
    import tempfile

    from safetensors.torch import save_file

    from avseg.fileio import atomic_file, atomic_write_bytes, atomic_write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_file(out_dir / "model.safetensors") as tmp:
        save_file(dict(tensors), str(tmp), metadata={"format": "pt"})
    with tempfile.TemporaryDirectory() as staging:
        hf_config.save_pretrained(staging)
        atomic_write_bytes(out_dir / "config.json", (Path(staging) / "config.json").read_bytes())
    atomic_write_text(out_dir / "conversion.json", json.dumps(dict(record), indent=2) + "\n")


def _export_checkpoint(folder: Path, out_dir: Path, dtype: torch.dtype, *, quiet: bool, json: bool) -> int:
    """Write the SAM2 layer of an avseg checkpoint (or run folder) as a layer folder (see the module docstring)."""
    from avseg.checkpoint import WEIGHTS_FILE, resolve_checkpoint
    from avseg.models import load_model

    checkpoint = resolve_checkpoint(folder, "best", fallback="latest")
    with conversion_phase(f"reading {checkpoint.name}", enabled=not quiet):
        model = load_model(checkpoint)
    layer = getattr(model, "sam2", None)
    if layer is None or not hasattr(layer, "model"):
        raise CheckpointError(checkpoint, f"a {model.family} model has no SAM2 layer to export")
    tensors = {key: value.detach().to(dtype).contiguous().clone() for key, value in layer.model.state_dict().items()}
    record = {
        "source": str(checkpoint),
        "sha256": _sha256(checkpoint / WEIGHTS_FILE),
        "preset": getattr(model, "preset", None),
        "variant": layer.config.variant,
        "image_size": layer.config.image_size,
        "dtype": str(dtype).removeprefix("torch."),
        "tensors": len(tensors),
    }
    with conversion_phase(f"writing {out_dir.name}", enabled=not quiet):
        _write_folder(out_dir, tensors, layer.model.config, record)
    summary = conversion_summary(
        checkpoint,
        out_dir,
        preset=record["preset"],
        tensors=len(tensors),
        parameters=tensor_values(tensors.values()),
        dropped={},
        variant=record["variant"],
    )
    line = f"{checkpoint}: SAM2 of {record['preset'] or model.family}, {len(tensors)} tensors -> {out_dir}"
    print_conversion(summary, [line], json=json)
    return 0


def convert(
    input: Path,
    out_dir: Path,
    *,
    variant: Literal[
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
    | None = None,
    dtype: Literal["float32", "float16"] = "float32",
    quiet: bool = False,
    json: bool = False,
) -> int:
    """Convert an official SAM2/SAM2.1 checkpoint (.pt), or the SAM2 of an avseg checkpoint, to the folder avseg's
    SAM2 layer loads.

    The output folder holds config.json and model.safetensors in transformers' Sam2VideoModel format and
    conversion.json (source, SHA-256, variant). Load it with Sam2LayerConfig(variant=..., weights=OUT_DIR).

    Args:
        input: sam2_hiera_*.pt / sam2.1_hiera_*.pt, a checkpoint holding SAM2 under a prefix (AuralSAM2, Sa2VA), or
            an avseg checkpoint or training run folder of a model built on the SAM2 layer (e.g. a fine-tuned
            sam2-tiny; a run folder's best checkpoint, else its latest).
        out_dir: folder to write (created; existing files of the same names are replaced, each atomically).
        variant: the model shape of a .pt file; default: detected from the trunk's width and depth and the SAM2.1
            keys (an avseg checkpoint records its own).
        dtype: dtype of the written weights (float16 halves the file; the layer computes in float32 either way).
        quiet: show no progress (warnings, errors and the summary are still printed).
        json: print the summary (source, destination, preset (null for a .pt file), variant, tensors, parameters) as
            one JSON document on stdout instead of text.

    Returns:
        0 on success.
    """
    from transformers import Sam2VideoConfig, Sam2VideoModel

    from avseg.fileio import check_output_dir
    from avseg.layers.sam2.config import Sam2LayerConfig, hf_video_config_kwargs

    input, out_dir = Path(input), Path(out_dir)
    if dtype not in ("float32", "float16"):
        raise UsageError(f"--dtype must be float32 or float16, got {dtype!r}")
    check_output_dir(out_dir, arg="OUT_DIR", inputs=[input])
    if input.is_dir():
        if variant is not None:
            raise UsageError("--variant applies to .pt files; an avseg checkpoint records its SAM2 variant")
        return _export_checkpoint(input, out_dir, getattr(torch, dtype), quiet=quiet, json=json)
    with conversion_phase(f"reading {input.name}", enabled=not quiet):
        upstream = load_upstream(input)
        digest = _sha256(input)
    detected = detect_variant(upstream)
    variant = variant or detected  # type: ignore[assignment]
    if variant is None:
        raise CheckpointError(input, "the SAM2 trunk matches no released variant; pass --variant")
    sam21 = "no_obj_embed_spatial" in upstream
    if variant != "test-tiny" and variant.startswith("sam2.1") != sam21:
        raise CheckpointError(input, f"--variant {variant} disagrees with the file (SAM2.1 keys present: {sam21})")
    with conversion_phase("mapping tensors", enabled=not quiet, total=len(upstream), unit="tensor"):
        try:
            state = convert_state_dict(upstream)
        except ValueError as err:
            raise CheckpointError(input, str(err)) from err

        hf_config = Sam2VideoConfig(**hf_video_config_kwargs(Sam2LayerConfig(variant=variant)))
        if variant == "test-tiny":  # the test shape follows the file's SAM2 version
            hf_config.enable_temporal_pos_encoding_for_object_pointers = sam21
            hf_config.enable_occlusion_spatial_embedding = sam21
        with torch.device("meta"):
            expected = Sam2VideoModel(hf_config).state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise CheckpointError(
                input, f"does not fit {variant}: missing {missing[:10]}, unexpected {unexpected[:10]}"
            )
        wrong = [
            f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items() if v.shape != state[k].shape
        ]
        if wrong:
            raise CheckpointError(input, f"shapes do not fit {variant}: {wrong[:10]}")
        tensors = {key: value.detach().to(getattr(torch, dtype)).contiguous().clone() for key, value in state.items()}

    record = {"source": input.name, "sha256": digest, "variant": variant, "tensors": len(tensors)}
    with conversion_phase(f"writing {out_dir.name}", enabled=not quiet):
        _write_folder(out_dir, tensors, hf_config, record)
    summary = conversion_summary(
        input,
        out_dir,
        preset=None,
        tensors=len(tensors),
        parameters=tensor_values(tensors.values()),
        dropped={},
        variant=variant,
    )
    print_conversion(summary, [f"{input}: {variant}, {len(tensors)} tensors -> {out_dir}"], json=json)
    return 0
