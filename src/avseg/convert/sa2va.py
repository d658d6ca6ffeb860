"""Convert the released Sa2VA checkpoints to avseg checkpoints (``avseg convert sa2va IN OUT``).

The released models (``ByteDance/Sa2VA-{1B,4B,8B,26B}`` on the Hugging Face Hub) are ``trust_remote_code`` folders of
``Sa2VAChatModel`` (``projects/llava_sam2/hf/models/modeling_sa2va_chat.py`` of ``magic-research/Sa2VA``): a
``config.json`` and ``model.safetensors`` or shards ``model-0000x-of-0000y.safetensors`` with
``model.safetensors.index.json``. The weights are InternVL2.5 in InternVL's own (remote-code) names, the SAM2 of
``grounding_encoder`` in ``facebookresearch/sam2``'s names, and the ``[SEG]`` projection ``text_hidden_fcs``. The
LoRA adapters were merged before the release (``convert_to_hf.py`` calls ``_merge_lora``), so the converted model
has none: its config sets ``mllm.lora.rank = 0``.

Which releases convert: those with a Qwen2 language model, which transformers' ``InternVLForConditionalGeneration``
reads natively: Sa2VA-1B (Qwen2.5-0.5B) and Sa2VA-4B (Qwen2.5-3B). Sa2VA-8B and -26B use InternLM2.5, which
transformers has no class for; they are refused with one line.

Key map (released → avseg; ``D`` the vision width). The MLLM's names follow transformers' own InternVL conversion
(``models/internvl/convert_internvl_weights_to_hf.py``):

============================================================ ==========================================================
released                                                     avseg
============================================================ ==========================================================
``vision_model.embeddings.class_embedding``                  ``mllm.model.model.vision_tower.embeddings.cls_token``
``vision_model.embeddings.position_embedding``               ``….vision_tower.embeddings.position_embeddings``
``vision_model.embeddings.patch_embedding.*``                ``….vision_tower.embeddings.patch_embeddings.projection.*``
``vision_model.encoder.layers.{i}.attn.qkv.*`` ``(3D, …)``   ``….encoder.layer.{i}.attention.{q,k,v}_proj.*`` (rows
                                                             ``[0, D)``, ``[D, 2D)``, ``[2D, 3D)``)
``vision_model.encoder.layers.{i}.attn.proj.*``              ``….encoder.layer.{i}.attention.projection_layer.*``
``vision_model.encoder.layers.{i}.attn.{q,k}_norm.*``        ``….encoder.layer.{i}.attention.{q,k}_norm.*``
``vision_model.encoder.layers.{i}.mlp.{fc1,fc2}.*``          ``….encoder.layer.{i}.mlp.{fc1,fc2}.*``
``vision_model.encoder.layers.{i}.norm{1,2}.*``              ``….encoder.layer.{i}.layernorm_{before,after}.*``
``vision_model.encoder.layers.{i}.ls{1,2}``                  ``….encoder.layer.{i}.lambda_{1,2}``
``mlp1.{0,1,3}.*``                                           ``mllm.model.model.multi_modal_projector.``
                                                             ``{layer_norm,linear_1,linear_2}.*``
``language_model.model.*``                                   ``mllm.model.model.language_model.*``
``language_model.lm_head.weight``                            ``mllm.model.lm_head.weight`` (with tied embeddings, the
                                                             input embedding when the file leaves it out)
``grounding_encoder.sam2_model.*``                           ``sam2.model.*`` (:mod:`avseg.convert.sam2`'s map; the
                                                             release stores the memory fuser's ``gamma`` as
                                                             ``g_weight``)
``text_hidden_fcs.{0,2}.*``                                  ``seg_projector.{0,2}.*``
============================================================ ==========================================================

The converted checkpoint holds every weight (MLLM, SAM2, projection), so its config builds the model without
pretrained sources (``pretrained = False``, ``sam2.in_checkpoint = True``); the MLLM's shape is read from the
release's ``config.json`` (``mllm.hf_config``). The tokenizer is the preset's (InternVL2.5's, to which avseg adds
Sa2VA's special tokens in Sa2VA's order); the conversion checks that its length is the embedding's. A released key
with no avseg name, or an avseg weight that no released key fills, is an error that names it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from avseg.convert import ConversionReport, conversion_phase, converter_preset, load_fitting_state
from avseg.convert.sam2 import convert_state_dict as convert_sam2_state_dict
from avseg.convert.sam2 import upstream_to_avseg_key as sam2_avseg_key
from avseg.errors import CheckpointError, MissingFileError, UsageError

__all__ = [
    "SUPPORTED_LLMS",
    "convert",
    "convert_checkpoint",
    "convert_state_dict",
    "hf_config_from_released",
    "load_released",
    "released_overrides",
]

SUPPORTED_LLMS = ("Qwen2ForCausalLM",)
"""Language models of released Sa2VA checkpoints that transformers' InternVL reads (``llm_config.architectures``)."""

_SAM2 = "grounding_encoder.sam2_model."
_VISION = "mllm.model.model.vision_tower."
_LAYER = r"vision_model\.encoder\.layers\.(\d+)\."
_P = r"(weight|bias)"
_PROJECTOR = {"0": "layer_norm", "1": "linear_1", "3": "linear_2"}
_NORMS = {"1": "layernorm_before", "2": "layernorm_after"}
# The sam2 map renames these two itself (one table of four rows; one tensor into two names), so they are known keys.
_SAM2_SPECIAL = re.compile(
    r"sam_prompt_encoder\.(pe_layer\.positional_encoding_gaussian_matrix|point_embeddings\.\d+\.weight)"
)

_Rule = tuple[str, "str | Callable[[re.Match[str]], str]"]

KEY_RULES: tuple[_Rule, ...] = (
    (r"vision_model\.embeddings\.class_embedding", _VISION + "embeddings.cls_token"),
    (r"vision_model\.embeddings\.position_embedding", _VISION + "embeddings.position_embeddings"),
    (rf"vision_model\.embeddings\.patch_embedding\.{_P}", _VISION + r"embeddings.patch_embeddings.projection.\1"),
    (rf"{_LAYER}attn\.proj\.{_P}", _VISION + r"encoder.layer.\1.attention.projection_layer.\2"),
    (rf"{_LAYER}attn\.(q_norm|k_norm)\.{_P}", _VISION + r"encoder.layer.\1.attention.\2.\3"),
    (rf"{_LAYER}mlp\.(fc1|fc2)\.{_P}", _VISION + r"encoder.layer.\1.mlp.\2.\3"),
    (rf"{_LAYER}norm([12])\.{_P}", lambda m: f"{_VISION}encoder.layer.{m[1]}.{_NORMS[m[2]]}.{m[3]}"),
    (rf"{_LAYER}ls([12])", _VISION + r"encoder.layer.\1.lambda_\2"),
    (rf"mlp1\.([013])\.{_P}", lambda m: f"mllm.model.model.multi_modal_projector.{_PROJECTOR[m[1]]}.{m[2]}"),
    (r"language_model\.model\.(.+)", r"mllm.model.model.language_model.\1"),
    (r"language_model\.lm_head\.weight", "mllm.model.lm_head.weight"),
    (rf"text_hidden_fcs\.([02])\.{_P}", r"seg_projector.\1.\2"),
)
"""Ordered ``(released regex, avseg name)`` rules for everything but the fused vision ``qkv`` and SAM2."""

_COMPILED = tuple((re.compile(pattern), target) for pattern, target in KEY_RULES)
_QKV = re.compile(rf"{_LAYER}attn\.qkv\.{_P}")
_DROPPED = re.compile(r".*\.rotary_emb\.inv_freq")  # older transformers saved the RoPE table; it is recomputed


def _avseg_key(key: str) -> str | None:
    for pattern, target in _COMPILED:
        match = pattern.fullmatch(key)
        if match:
            return target(match) if callable(target) else match.expand(target)
    return None


def convert_state_dict(released: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], ConversionReport]:
    """Map released Sa2VA tensors to avseg names (a pure function; see the module docstring).

    Args:
        released: the tensors of the released safetensors files, under their released names.

    Returns:
        The avseg-named tensors and the report (``unknown``: released keys with no avseg name).

    Raises:
        ValueError: a fused ``qkv`` whose first axis is not a multiple of 3, or two keys mapping to one name.
    """
    out: dict[str, Tensor] = {}
    sam2: dict[str, Tensor] = {}
    report = ConversionReport()

    def put(target: str, value: Tensor, source: str) -> None:
        if target in out:
            raise ValueError(f"released keys map twice to {target!r} (second: {source!r})")
        out[target] = value

    for key, value in released.items():
        if key.startswith(_SAM2):
            name = key[len(_SAM2) :]
            # convert_to_hf.py renames the memory fuser's ``.gamma`` to ``.g_weight`` (transformers' loader would
            # otherwise rename a ``gamma`` to ``weight``); sam2's own name is ``gamma``.
            name = re.sub(r"\.g_weight$", ".gamma", name)
            if sam2_avseg_key(name) is None and not _SAM2_SPECIAL.fullmatch(name):
                report.unknown.append(key)
            else:
                sam2[name] = value
            continue
        qkv = _QKV.fullmatch(key)
        if qkv:
            if value.shape[0] % 3:
                raise ValueError(f"{key}: a fused qkv needs 3*D rows, got shape {tuple(value.shape)}")
            # (3D, D) or (3D,) -> q, k, v of (D, D) or (D,): InternViT's qkv Linear stacks them in this order
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                put(f"{_VISION}encoder.layer.{qkv[1]}.attention.{name}.{qkv[2]}", part.clone(), key)
            report.converted += 1
            continue
        target = _avseg_key(key)
        if target is None:
            if _DROPPED.fullmatch(key):
                report.drop("RoPE frequencies (recomputed)", key)
            else:
                report.unknown.append(key)
            continue
        put(target, value, key)
        report.converted += 1
    if sam2:
        for name, value in convert_sam2_state_dict(sam2).items():
            put(f"sam2.model.{name}", value, _SAM2 + name)
        report.converted += len(sam2)
    return out, report


# -- the release's config ------------------------------------------------------------------------------------------


def _square(value: Any) -> list[int]:
    return [int(value), int(value)] if isinstance(value, int) else [int(v) for v in value]


def hf_config_from_released(released: Mapping[str, Any]) -> dict[str, Any]:
    """The transformers ``InternVLConfig`` keyword arguments (avseg's ``mllm.hf_config``) of a released
    ``Sa2VAChatConfig`` (its ``config.json``), as transformers' InternVL conversion derives them: ``qkv_bias`` →
    ``attention_bias``, ``qk_normalization`` → ``use_qk_norm``, ``select_layer`` → ``vision_feature_layer``.

    Raises:
        ValueError: a language model other than :data:`SUPPORTED_LLMS`, or a pixel shuffle other than InternVL's
            ``v2`` (the one transformers implements).
    """
    vision, llm = dict(released.get("vision_config") or {}), dict(released.get("llm_config") or {})
    arch = (llm.get("architectures") or ["?"])[0]
    if arch not in SUPPORTED_LLMS:
        raise ValueError(
            f"its language model is {arch}, which transformers has no class for; only releases with a Qwen2 "
            "language model convert (Sa2VA-1B, Sa2VA-4B; not Sa2VA-8B/-26B, which use InternLM2.5)"
        )
    if released.get("ps_version", "v2") != "v2":
        raise ValueError(f"ps_version {released['ps_version']!r}: transformers' InternVL implements pixel shuffle v2")
    image_size = released.get("force_image_size") or vision["image_size"]
    vision_config = {
        "hidden_size": vision["hidden_size"],
        "num_hidden_layers": vision["num_hidden_layers"],
        "num_attention_heads": vision["num_attention_heads"],
        "intermediate_size": vision["intermediate_size"],
        "image_size": _square(image_size),
        "patch_size": _square(vision["patch_size"]),
        "attention_bias": bool(vision.get("qkv_bias", False)),
        "use_qk_norm": bool(vision.get("qk_normalization", False)),
        "norm_type": vision.get("norm_type", "layer_norm"),
        "layer_norm_eps": vision.get("layer_norm_eps", 1e-6),
        "hidden_act": vision.get("hidden_act", "gelu"),
    }
    text_config = {"model_type": "qwen2"}
    for key in (
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "intermediate_size",
        "hidden_act",
        "max_position_embeddings",
        "rms_norm_eps",
        "rope_theta",
        "tie_word_embeddings",
        "vocab_size",
    ):
        if llm.get(key) is not None:
            text_config[key] = llm[key]
    return {
        "vision_config": vision_config,
        "text_config": text_config,
        "downsample_ratio": released.get("downsample_ratio", 0.5),
        "vision_feature_layer": released.get("select_layer", -1),
        "projector_hidden_act": "gelu",
    }


def released_overrides(released: Mapping[str, Any]) -> dict[str, Any]:
    """avseg config overrides for a converted release: its MLLM shape, no LoRA (the release is merged), and every
    weight in the checkpoint (no pretrained sources, no SAM2 weights folder)."""
    hf_config = hf_config_from_released(released)
    return {
        "pretrained": False,
        "mllm.pretrained": False,
        "mllm.hf_config": hf_config,
        "mllm.image_size": hf_config["vision_config"]["image_size"][0],
        "mllm.lora.rank": 0,
        "sam2.in_checkpoint": True,
        "sam2.weights": None,
    }


# -- files ---------------------------------------------------------------------------------------------------------


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise MissingFileError(path, what)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(path, f"cannot read {what}: {err}") from err
    if not isinstance(data, dict):
        raise CheckpointError(path, f"{what} is not a JSON object")
    return data


def load_released(
    folder: str | Path, *, progress: bool = False
) -> tuple[dict[str, Tensor], dict[str, Any], list[Path]]:
    """Read a released Sa2VA folder: its tensors (safetensors only, no pickle), its ``config.json`` and the weight
    files read (``progress``: counted on stderr).

    Raises:
        MissingFileError: no folder, no ``config.json``, no weights, or a shard the index names is absent.
        CheckpointError: an unreadable file, or a tensor the index places in a shard that lacks it (named).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFileError(folder, "released Sa2VA folder (config.json and model*.safetensors)")
    config = _read_json(folder / "config.json", "Sa2VA config.json")
    index_file = folder / "model.safetensors.index.json"
    if index_file.is_file():
        weight_map = _read_json(index_file, "safetensors index").get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(index_file, "has no weight_map")
        files = [folder / name for name in sorted(set(weight_map.values()))]
    elif (folder / "model.safetensors").is_file():
        weight_map, files = None, [folder / "model.safetensors"]
    else:
        raise MissingFileError(folder / "model.safetensors", "Sa2VA weights (or model.safetensors.index.json)")
    tensors: dict[str, Tensor] = {}
    with conversion_phase(f"reading {folder.name}", enabled=progress, total=len(files)) as bar:
        for file in files:
            if not file.is_file():
                raise MissingFileError(file, f"weight shard named in {index_file.name}")
            try:
                tensors.update(load_file(str(file), device="cpu"))
            except (SafetensorError, OSError) as err:
                raise CheckpointError(file, f"cannot read: {err}") from err
            bar.update()
    if weight_map is not None:
        for key, name in weight_map.items():
            if key not in tensors:
                raise CheckpointError(folder / name, f"has no tensor {key!r} (listed in {index_file.name})")
    return tensors, config, files


def convert_checkpoint(
    src: str | Path,
    dst: str | Path,
    *,
    preset: str = "sa2va-1b",
    dtype: Literal["bfloat16", "float32"] = "bfloat16",
    overwrite: bool = False,
    progress: bool = False,
) -> tuple[Path, ConversionReport]:
    """Convert a released Sa2VA folder into an avseg checkpoint folder (every key checked, strictly).

    Args:
        src: the released folder (``config.json``, ``model.safetensors`` or shards with their index).
        dst: the avseg checkpoint folder to write.
        preset: the avseg ``sa2va`` preset whose settings (tokenizer, SAM2 shape, clips, recipe) to keep.
        dtype: dtype of the stored weights (the release's bfloat16 keeps the file half the size; the model loads
            them into its float32 parameters either way).
        overwrite: replace an existing ``dst``.
        progress: show the phases (reading, mapping, writing) on stderr.

    Raises:
        CheckpointError: an unsupported release (one line naming its language model), released keys with no avseg
            name, or tensors that do not fit the model (missing, unexpected or mis-shaped keys are named).
    """
    src, dst = Path(src), Path(dst)
    entry = converter_preset(preset, family="sa2va", method="a Sa2VA", dst=dst, overwrite=overwrite)
    released, released_config, files = load_released(src, progress=progress)
    config_file = src / "config.json"
    try:
        overrides = released_overrides(released_config)
    except (KeyError, ValueError) as err:
        what = f"missing {err}" if isinstance(err, KeyError) else str(err)
        raise CheckpointError(config_file, f"cannot convert: {what}") from err
    with conversion_phase("mapping tensors", enabled=progress, total=len(released), unit="tensor"):
        try:
            state, report = convert_state_dict(released)
        except ValueError as err:
            raise CheckpointError(src, str(err)) from err
        report.refuse_unknown(src)

        config = entry.config(**overrides)
        with torch.device("meta"):  # shapes and names only: nothing is allocated until the tensors are assigned
            model = entry.model_cls(config)
        head, embed = "mllm.model.lm_head.weight", "mllm.model.model.language_model.embed_tokens.weight"
        if config.mllm.hf_config["text_config"].get("tie_word_embeddings"):
            if head not in state and embed in state:
                state[head] = state[embed]
            elif head in state and embed in state and not torch.equal(state[head], state[embed]):
                raise CheckpointError(config_file, "llm_config ties the word embeddings but lm_head differs from them")
        names = ", ".join(f.name for f in files)
        load_fitting_state(model, state, src=src, preset=preset, dtype=getattr(torch, dtype), sources=names)
    out = report.save(dst, model, state, src=src, preset=preset, overwrite=overwrite, progress=progress)
    return out, report


def convert(
    input: Path,
    output: Path,
    *,
    preset: str = "sa2va-1b",
    dtype: Literal["bfloat16", "float32"] = "bfloat16",
    overwrite: bool = False,
    quiet: bool = False,
    json: bool = False,
) -> int:
    """Convert a released Sa2VA model folder (ByteDance/Sa2VA-1B or -4B) into an avseg checkpoint folder.

    Args:
        input: the downloaded release: config.json and model.safetensors, or model-0000x-of-0000y.safetensors with
            model.safetensors.index.json.
        output: the avseg checkpoint folder to write.
        preset: avseg Sa2VA preset that supplies the tokenizer, SAM2 shape, clip and training settings.
        dtype: dtype of the stored weights (bfloat16 as released, or float32).
        overwrite: replace an existing output folder.
        quiet: show no progress (warnings, errors and the summary are still printed).
        json: print the summary (source, destination, preset, tensors, parameters, dropped keys) as one JSON
            document on stdout instead of text.

    Returns:
        0 on success.
    """
    if dtype not in ("bfloat16", "float32"):
        raise UsageError(f"--dtype must be bfloat16 or float32, got {dtype!r}")
    out, report = convert_checkpoint(input, output, preset=preset, dtype=dtype, overwrite=overwrite, progress=not quiet)
    report.print_summary(input, out, json=json)
    return 0
