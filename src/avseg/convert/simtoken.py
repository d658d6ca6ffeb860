"""Convert the released SimToken checkpoint to an avseg checkpoint (``avseg convert simtoken IN OUT``).

The release (``DianJin-HFUT/SimToken``, "Download our pretrained Simtoken" in its README) is the file ``train.py``
writes with ``torch.save(model.state_dict(), f"{args.name}.pth")``: a pickled state dict of the whole peft
``PeftModelForCausalLM`` around ``Simtoken_ForCausalLM`` (``models/avs_model.py``), LoRA not merged. Every key starts
with ``base_model.model.``; the LoRA adapters carry peft's own names, which changed between versions: ``lora_A.weight``
(peft 0.2), ``lora_A.default.weight`` (0.3 on), and the adapted layer's weight is ``q_proj.weight`` (before 0.7) or
``q_proj.base_layer.weight`` (0.7 on); all of them are read. A state dict without adapters (merged, or saved without
peft) converts too, with the prefix or without it. The file is read with ``torch.load(weights_only=True)`` only
(a ``.safetensors`` file of the same keys is read as such).

Key map (released, without ``base_model.model.`` → avseg; ``LM = mllm.model.model.language_model``, ``VT =
mllm.model.model.vision_tower``; SAM's names follow transformers' ``models/sam/convert_sam_to_hf.py``):

=============================================================== =======================================================
released                                                        avseg
=============================================================== =======================================================
``model.embed_tokens.weight`` ``(V, H)``                        ``LM.embed_tokens.weight`` (rows moved to avseg's
                                                                token ids, see below)
``model.layers.{i}.*``                                          ``LM.layers.{i}.*``
``model.layers.{i}.self_attn.{q,v}_proj.lora_{A,B}[.default]``  ``LM.layers.{i}.self_attn.{q,v}_proj.lora_{A,B}.``
``.weight``                                                     ``default.weight``
``model.layers.{i}.self_attn.{q,v}_proj[.base_layer].weight``   ``LM.layers.{i}.self_attn.{q,v}_proj.base_layer.``
                                                                ``weight``
``model.norm.weight``                                           ``LM.norm.weight``
``lm_head.weight`` ``(V, H)``                                   ``mllm.model.lm_head.weight`` (rows moved likewise)
``model.vision_tower.vision_tower.vision_model.*``              ``VT.*`` (transformers' ``CLIPVisionModel``)
``model.mm_projector.*``                                        ``mllm.model.model.multi_modal_projector.*``
``audio_feature_layer.*``                                       ``audio_projector.*``
``model.text_hidden_fcs.0.{0,2}.*``                             ``seg_projector.{0,2}.*``
``model.visual_model.image_encoder.patch_embed.proj.*``         ``sam.vision_encoder.patch_embed.projection.*``
``model.visual_model.image_encoder.blocks.{i}.norm{1,2}.*``     ``sam.vision_encoder.layers.{i}.layer_norm{1,2}.*``
``model.visual_model.image_encoder.blocks.{i}.{attn,mlp}.*``    ``sam.vision_encoder.layers.{i}.{attn,mlp}.*`` (the
                                                                fused ``attn.qkv`` stays fused, as transformers' SAM
                                                                has it)
``model.visual_model.image_encoder.neck.{0,1,2,3}.*``           ``sam.vision_encoder.neck.{conv1,layer_norm1,conv2,``
                                                                ``layer_norm2}.*``
``model.visual_model.image_encoder.pos_embed``                  ``sam.vision_encoder.pos_embed``
``model.visual_model.prompt_encoder.pe_layer.``                 ``sam.prompt_encoder.shared_embedding.``
``positional_encoding_gaussian_matrix``                         ``positional_embedding`` and ``sam.shared_image_``
                                                                ``embedding.positional_embedding`` (one tensor, two
                                                                names)
``model.visual_model.prompt_encoder.point_embeddings.{k}.*``    ``sam.prompt_encoder.point_embed.{k}.*``
``model.visual_model.prompt_encoder.mask_downscaling.``         ``sam.prompt_encoder.mask_embed.{conv1,layer_norm1,``
``{0,1,3,4,6}.*``                                               ``conv2,layer_norm2,conv3}.*``
``model.visual_model.prompt_encoder.{no_mask,not_a_point}``     ``sam.prompt_encoder.{no_mask,not_a_point}_embed.*``
``_embed.*``
``model.visual_model.mask_decoder.transformer.layers.{i}.``     ``sam.mask_decoder.transformer.layers.{i}.``
``norm{1..4}.*`` / ``transformer.norm_final_attn.*``            ``layer_norm{1..4}.*`` / ``….layer_norm_final_attn.*``
``model.visual_model.mask_decoder.output_upscaling.{0,1,3}.*``  ``sam.mask_decoder.{upscale_conv1,``
                                                                ``upscale_layer_norm,upscale_conv2}.*``
``model.visual_model.mask_decoder.{iou_prediction_head,``       ``sam.mask_decoder.{…}.{proj_in, layers.{j-1},``
``output_hypernetworks_mlps.{k}}.layers.{j}.*``                 ``proj_out}.*`` (first, middle, last layer)
``model.visual_model.mask_decoder.*`` (the rest)                ``sam.mask_decoder.*``
=============================================================== =======================================================

Dropped, with a reason in the report: ``rotary_emb.inv_freq`` and CLIP's ``embeddings.position_ids`` (buffers older
transformers saved; they are recomputed) and SAM's ``pixel_mean`` / ``pixel_std`` (avseg's normalisation is
``segmenter.pixel_mean`` / ``pixel_std``). Chat-UniVi's clustering modules (``ctm*``, ``block*``) hold no weights.

**Vocabulary.** The release's tokenizer is Chat-UniVi's with ``[SEG]`` added last (``train.py``:
``tokenizer.add_tokens("[SEG]")`` then ``resize_token_embeddings``), so its last embedding row is ``[SEG]``. avseg's
tokenizer may add more tokens (the ``<image>`` placeholder) before ``[SEG]``: the shared rows keep their ids, the
``[SEG]`` row moves to avseg's ``[SEG]`` id, and a token the release never had gets the mean of the release's other
rows (the report counts them).

**Config.** The converted checkpoint holds the MLLM, SAM and both projections, so its config builds them without
pretrained sources (``mllm.pretrained = False``, ``segmenter.sam_weights = None``) and with SAM's shape read from the
weights (``segmenter.sam_hf_config``: widths, depths, global-attention layers, window, heads from the relative position
tables). The video is compressed as the weights were trained (``compression.mode = "released"``: Chat-UniVi's
clustering, target frame 5). LoRA keeps the release's rank and adapted layers (read from the weights) with
``train.py``'s alpha 16 and dropout 0.05 (``mllm.lora.*``); a release without adapters gets ``mllm.lora.rank = 0``. The
release read precomputed 128-d VGGish embeddings (``save_audio_feats.py``), so the audio encoder is VGGish, whose
weights are read from ``audio.vggish_weights`` when the model is built (``pretrained = True``) and are not in the
checkpoint. A released key with no avseg name, or an avseg weight that no released key fills, is an error that names it.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from avseg.convert import ConversionReport, conversion_phase, converter_preset, load_fitting_state, read_released_state
from avseg.errors import CheckpointError, UsageError

__all__ = [
    "RELEASED_LORA_ALPHA",
    "RELEASED_LORA_DROPOUT",
    "convert",
    "convert_checkpoint",
    "convert_state_dict",
    "load_released",
    "lora_overrides",
    "move_vocabulary",
    "released_overrides",
    "sam_hf_config",
]

RELEASED_LORA_ALPHA = 16.0
"""``lora_alpha`` of the release (``train.py``); the weights do not record it, and it scales every adapter."""
RELEASED_LORA_DROPOUT = 0.05
"""``lora_dropout`` of the release (``train.py``)."""
VGGISH_WEIGHTS = "vggish-10086976.pth"

_PEFT = "base_model.model."
_LM = "mllm.model.model.language_model."
_VISION = "mllm.model.model.vision_tower."
_P = r"(weight|bias)"
_NECK = {"0": "conv1", "1": "layer_norm1", "2": "conv2", "3": "layer_norm2"}
_MASK_EMBED = {"0": "conv1", "1": "layer_norm1", "3": "conv2", "4": "layer_norm2", "6": "conv3"}
_UPSCALE = {"0": "upscale_conv1", "1": "upscale_layer_norm", "3": "upscale_conv2"}
_IMAGE = r"model\.visual_model\.image_encoder\."
_PROMPT = r"model\.visual_model\.prompt_encoder\."
_DECODER = r"model\.visual_model\.mask_decoder\."
_PE = "model.visual_model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"

_Rule = tuple[str, "str | Callable[[re.Match[str]], str]"]

KEY_RULES: tuple[_Rule, ...] = (
    (r"model\.embed_tokens\.weight", _LM + "embed_tokens.weight"),
    (r"model\.norm\.weight", _LM + "norm.weight"),
    (r"lm_head\.weight", "mllm.model.lm_head.weight"),
    (r"model\.vision_tower\.vision_tower\.vision_model\.(.+)", _VISION + r"\1"),
    (rf"model\.mm_projector\.{_P}", r"mllm.model.model.multi_modal_projector.\1"),
    (rf"audio_feature_layer\.{_P}", r"audio_projector.\1"),
    (rf"model\.text_hidden_fcs\.0\.([02])\.{_P}", r"seg_projector.\1.\2"),
    # SAM v1 (segment-anything names) -> transformers' SamModel
    (_IMAGE + "pos_embed", "sam.vision_encoder.pos_embed"),
    (rf"{_IMAGE}patch_embed\.proj\.{_P}", r"sam.vision_encoder.patch_embed.projection.\1"),
    (rf"{_IMAGE}blocks\.(\d+)\.norm([12])\.{_P}", r"sam.vision_encoder.layers.\1.layer_norm\2.\3"),
    (rf"{_IMAGE}blocks\.(\d+)\.(attn|mlp)\.(.+)", r"sam.vision_encoder.layers.\1.\2.\3"),
    (rf"{_IMAGE}neck\.([0-3])\.{_P}", lambda m: f"sam.vision_encoder.neck.{_NECK[m[1]]}.{m[2]}"),
    (rf"{_PROMPT}point_embeddings\.(\d+)\.weight", r"sam.prompt_encoder.point_embed.\1.weight"),
    (rf"{_PROMPT}(no_mask_embed|not_a_point_embed)\.weight", r"sam.prompt_encoder.\1.weight"),
    (
        rf"{_PROMPT}mask_downscaling\.([01346])\.{_P}",
        lambda m: f"sam.prompt_encoder.mask_embed.{_MASK_EMBED[m[1]]}.{m[2]}",
    ),
    (
        rf"{_DECODER}transformer\.layers\.(\d+)\.norm([1-4])\.{_P}",
        r"sam.mask_decoder.transformer.layers.\1.layer_norm\2.\3",
    ),
    (rf"{_DECODER}transformer\.norm_final_attn\.{_P}", r"sam.mask_decoder.transformer.layer_norm_final_attn.\1"),
    (rf"{_DECODER}output_upscaling\.([013])\.{_P}", lambda m: f"sam.mask_decoder.{_UPSCALE[m[1]]}.{m[2]}"),
    (rf"{_DECODER}(iou_token|mask_tokens)\.weight", r"sam.mask_decoder.\1.weight"),
    (
        rf"{_DECODER}(transformer\.(?:layers\.\d+\.)?\w+\.(?:[qkv]_proj|out_proj|lin1|lin2)\.{_P})",
        r"sam.mask_decoder.\1",
    ),
)
"""Ordered ``(released regex, avseg name)`` rules (names without ``base_model.model.``) for everything but the
language model's layers, SAM's small MLPs and the positional table (see :func:`convert_state_dict`)."""

_COMPILED = tuple((re.compile(pattern), target) for pattern, target in KEY_RULES)
_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")
_LORA = re.compile(r"(.+)\.lora_([AB])(?:\.default)?\.weight")
_MLP = re.compile(rf"{_DECODER}(iou_prediction_head|output_hypernetworks_mlps\.\d+)\.layers\.(\d+)\.{_P}")
_DROPPED = (
    (re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq"), "RoPE frequencies (recomputed)"),
    (re.compile(r"model\.vision_tower\..*embeddings\.position_ids"), "CLIP position ids (recomputed)"),
    (re.compile(r"model\.visual_model\.pixel_(mean|std)"), "SAM input normalisation (segmenter.pixel_mean/std)"),
)


def _rule_target(key: str) -> str | None:
    for pattern, target in _COMPILED:
        match = pattern.fullmatch(key)
        if match:
            return target(match) if callable(target) else match.expand(target)
    return None


def convert_state_dict(released: Mapping[str, Any]) -> tuple[dict[str, Tensor], ConversionReport]:
    """Map a released SimToken state dict to avseg names (a pure function; see the module docstring).

    Args:
        released: the tensors of the released file, under their released names (with or without peft's
            ``base_model.model.`` prefix).

    Returns:
        The avseg-named tensors (the embedding rows still in the release's order) and the report (``unknown``:
        released keys with no avseg name, non-tensors included).

    Raises:
        ValueError: two released keys mapping to one avseg name.
    """
    names = {key: key[len(_PEFT) :] if key.startswith(_PEFT) else key for key in released}
    # peft before 0.7 keeps an adapted layer's own weight as ``q_proj.weight``; avseg's peft names it ``base_layer``
    adapted = {m[1] for name in names.values() if (m := _LORA.fullmatch(name))}
    depths: dict[str, int] = {}  # SAM's small MLPs: the last layer is proj_out, whatever the depth
    for name in names.values():
        if m := _MLP.fullmatch(name):
            depths[m[1]] = max(depths.get(m[1], 0), int(m[2]))
    out: dict[str, Tensor] = {}
    report = ConversionReport()

    def put(target: str, value: Tensor, source: str) -> None:
        if target in out:
            raise ValueError(f"released keys map twice to {target!r} (second: {source!r})")
        out[target] = value

    for key, name in names.items():
        value = released[key]
        if not isinstance(value, Tensor):
            report.unknown.append(key)
            continue
        reason = next((why for pattern, why in _DROPPED if pattern.fullmatch(name)), None)
        if reason is not None:
            report.drop(reason, key)
            continue
        if name == _PE:
            put("sam.prompt_encoder.shared_embedding.positional_embedding", value, key)
            put("sam.shared_image_embedding.positional_embedding", value, key)
            report.converted += 1
            continue
        target: str | None
        if layer := _LAYER.fullmatch(name):
            rest = layer[2]
            if lora := _LORA.fullmatch(rest):
                rest = f"{lora[1]}.lora_{lora[2]}.default.weight"
            elif rest.endswith(".weight") and name[: -len(".weight")] in adapted:
                rest = rest[: -len(".weight")] + ".base_layer.weight"
            target = f"{_LM}layers.{layer[1]}.{rest}"
        elif mlp := _MLP.fullmatch(name):
            j, last = int(mlp[2]), depths[mlp[1]]
            part = "proj_in" if j == 0 else "proj_out" if j == last else f"layers.{j - 1}"
            target = f"sam.mask_decoder.{mlp[1]}.{part}.{mlp[3]}"
        else:
            target = _rule_target(name)
        if target is None:
            report.unknown.append(key)
            continue
        put(target, value, key)
        report.converted += 1
    return out, report


# -- what the weights say about the config --------------------------------------------------------------------------


def lora_overrides(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """``mllm.lora.*`` overrides for avseg-named weights: the adapters' rank and adapted layers (their names), with
    the release's alpha and dropout; rank 0 when there are no adapters.

    Raises:
        ValueError: adapters of different ranks.
    """
    suffix = ".lora_A.default.weight"
    adapters = {k[: -len(suffix)]: v for k, v in state.items() if k.startswith(_LM) and k.endswith(suffix)}
    if not adapters:
        return {"mllm.lora.rank": 0}
    ranks = sorted({int(v.shape[0]) for v in adapters.values()})
    if len(ranks) > 1:
        raise ValueError(f"LoRA adapters of ranks {ranks}; avseg gives every adapter one rank")
    return {
        "mllm.lora.rank": ranks[0],
        "mllm.lora.alpha": RELEASED_LORA_ALPHA,
        "mllm.lora.dropout": RELEASED_LORA_DROPOUT,
        "mllm.lora.target_modules": sorted({name.rsplit(".", 1)[1] for name in adapters}),
    }


def _count(state: Mapping[str, Tensor], pattern: str) -> list[int]:
    found = {int(m[1]) for key in state if (m := re.fullmatch(pattern, key))}
    return sorted(found)


def sam_hf_config(state: Mapping[str, Tensor], base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """transformers ``SamConfig`` keyword arguments (avseg's ``segmenter.sam_hf_config``) of avseg-named SAM weights:
    ``base`` with every size the weights determine replaced (the mask decoder's head count, which no shape shows,
    stays ``base``'s or transformers' default of 8, SAM's).

    The image encoder's global-attention layers are those whose relative-position tables span the whole feature grid
    (``2 · S/p − 1`` rows; windowed layers have ``2 · window − 1``), and its head count is the width over the tables'
    head width.

    Raises:
        KeyError: a SAM weight the shapes are read from is absent (named).
    """
    ve, pe, md = "sam.vision_encoder.", "sam.prompt_encoder.", "sam.mask_decoder."
    patch = state[ve + "patch_embed.projection.weight"]  # (D, 3, p, p)
    width, patch_size = int(patch.shape[0]), int(patch.shape[-1])
    grid = int(state[ve + "pos_embed"].shape[1])  # (1, S/p, S/p, D)
    layers = _count(state, r"sam\.vision_encoder\.layers\.(\d+)\.attn\.rel_pos_h")
    rows = [int(state[f"{ve}layers.{i}.attn.rel_pos_h"].shape[0]) for i in layers]
    head_width = int(state[f"{ve}layers.{layers[0]}.attn.rel_pos_h"].shape[1]) if layers else 0
    vision: dict[str, Any] = {
        "hidden_size": width,
        "num_channels": int(patch.shape[1]),
        "patch_size": patch_size,
        "image_size": grid * patch_size,
        "num_hidden_layers": len(_count(state, r"sam\.vision_encoder\.layers\.(\d+)\.layer_norm1\.weight")),
        "mlp_dim": int(state[ve + "layers.0.mlp.lin1.weight"].shape[0]),
        "output_channels": int(state[ve + "neck.conv1.weight"].shape[0]),
        "qkv_bias": ve + "layers.0.attn.qkv.bias" in state,
        "global_attn_indexes": [i for i, n in zip(layers, rows) if n == 2 * grid - 1],
        "num_pos_feats": int(state["sam.shared_image_embedding.positional_embedding"].shape[1]),
    }
    if head_width:
        vision["num_attention_heads"] = width // head_width
    windows = [n for n in rows if n != 2 * grid - 1]
    if windows:
        vision["window_size"] = (windows[0] + 1) // 2
    prompt = {
        "hidden_size": int(state[pe + "no_mask_embed.weight"].shape[1]),
        "image_size": grid * patch_size,
        "patch_size": patch_size,
        "mask_input_channels": int(state[pe + "mask_embed.conv2.weight"].shape[0]),
        "num_point_embeddings": len(_count(state, r"sam\.prompt_encoder\.point_embed\.(\d+)\.weight")),
    }
    hidden = int(state[md + "iou_token.weight"].shape[1])
    decoder = {
        "hidden_size": hidden,
        "mlp_dim": int(state[md + "transformer.layers.0.mlp.lin1.weight"].shape[0]),
        "num_hidden_layers": len(_count(state, r"sam\.mask_decoder\.transformer\.layers\.(\d+)\.layer_norm1\.weight")),
        "attention_downsample_rate": hidden
        // int(state[md + "transformer.final_attn_token_to_image.q_proj.weight"].shape[0]),
        "num_multimask_outputs": int(state[md + "mask_tokens.weight"].shape[0]) - 1,
        "iou_head_depth": len(_count(state, r"sam\.mask_decoder\.iou_prediction_head\.layers\.(\d+)\.weight")) + 2,
        "iou_head_hidden_dim": int(state[md + "iou_prediction_head.proj_in.weight"].shape[0]),
    }
    out = copy.deepcopy(dict(base or {}))
    for name, derived in (
        ("vision_config", vision),
        ("prompt_encoder_config", prompt),
        ("mask_decoder_config", decoder),
    ):
        out[name] = {**dict(out.get(name) or {}), **derived}
    return out


def move_vocabulary(weight: Tensor, *, seg_token_id: int, size: int) -> tuple[Tensor, int]:
    """Embedding rows ``(V, H)`` in the release's token order (Chat-UniVi's tokens, then ``[SEG]`` last) → ``(size,
    H)`` in avseg's: shared ids keep their rows, ``[SEG]``'s row moves to ``seg_token_id``, and tokens the release
    never had get the mean of its other rows.

    Returns:
        The rows and how many of them were filled with the mean.

    Raises:
        ValueError: avseg's ``[SEG]`` id among the release's shared ids, or a vocabulary smaller than the release's.
    """
    rows = int(weight.shape[0])
    if size < rows or not rows - 1 <= seg_token_id < size:
        raise ValueError(
            f"the release's {rows}-token vocabulary (its [SEG] last, id {rows - 1}) does not fit avseg's tokenizer of "
            f"{size} tokens with [SEG] at id {seg_token_id}"
        )
    shared = weight[: rows - 1]
    out = shared.float().mean(dim=0).to(weight.dtype).expand(size, -1).clone()  # (size, H)
    out[: rows - 1] = shared
    out[seg_token_id] = weight[rows - 1]
    return out, size - rows


def released_overrides(state: Mapping[str, Tensor], preset: Any) -> dict[str, Any]:
    """avseg config overrides for converted (avseg-named) weights on the config ``preset``: the MLLM and SAM built
    without pretrained sources (the checkpoint holds them), SAM's shape and LoRA read from the weights, VGGish audio
    (read from ``audio.vggish_weights``, the preset's or ``vggish-10086976.pth``) and the released token compression
    (``compression.mode = "released"``).

    Raises:
        KeyError, ValueError: weights SAM's shape or LoRA cannot be read from.
    """
    sam = sam_hf_config(state, preset.segmenter.sam_hf_config)
    return {
        "pretrained": True,  # VGGish only: everything else is built without sources below
        "mllm.pretrained": False,
        **lora_overrides(state),
        "audio.encoder": "vggish",
        "audio.two_channel": False,
        "audio.vggish_weights": preset.audio.vggish_weights or VGGISH_WEIGHTS,
        "segmenter.kind": "sam",
        "segmenter.sam2": None,
        "segmenter.propagate": False,
        "segmenter.sam_weights": None,
        "segmenter.sam_hf_config": sam,
        "segmenter.sam_image_size": sam["vision_config"]["image_size"],
        "compression.mode": "released",  # the tokens the weights were trained on: Chat-UniVi clusters, frame 5
    }


# -- files ---------------------------------------------------------------------------------------------------------


def load_released(path: str | Path) -> dict[str, Any]:
    """Read the released file: a ``.safetensors`` file, or a ``torch.save`` pickle (``.pth``, ``.bin``, ``.pt``) read
    with ``torch.load(weights_only=True)`` only (memory-mapped when the file allows it: the release is ~30 GB).

    Raises:
        MissingFileError: no such file.
        CheckpointError: a file that cannot be read that way, or that holds no state dict.
    """
    return read_released_state(path, "released SimToken checkpoint (.pth)", mmap=True)


class _CheckpointedPart(nn.Module):
    """What a converted SimToken checkpoint holds, under :class:`~avseg.models.simtoken.SimToken`'s attribute names:
    the MLLM, the audio projection, SAM and the ``[SEG]`` projection (VGGish is read from its file, not stored)."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        from avseg.layers.mllm import MLLM, seg_prompt_head
        from avseg.models.simtoken import SimToken, build_sam

        self.family = SimToken.family
        self.config = config
        self.mllm = MLLM(config.mllm, pretrained=False)
        self.audio_projector = nn.Linear(config.audio.dim, self.mllm.hidden_size)
        self.sam = build_sam(config.segmenter, pretrained=False)
        self.seg_projector = seg_prompt_head(self.mllm.hidden_size, self.sam.config.mask_decoder_config.hidden_size)


def convert_checkpoint(
    src: str | Path,
    dst: str | Path,
    *,
    preset: str = "simtoken-7b",
    dtype: Literal["float32", "bfloat16"] = "float32",
    overwrite: bool = False,
    progress: bool = False,
) -> tuple[Path, ConversionReport]:
    """Convert the released SimToken file into an avseg checkpoint folder (every key checked, strictly).

    Args:
        src: the released ``.pth`` (or a ``.safetensors`` file of the same keys).
        dst: the avseg checkpoint folder to write.
        preset: the avseg ``simtoken`` preset whose settings (MLLM shape, tokenizer, compression, losses, recipe) to
            keep.
        dtype: dtype of the stored weights (float32 as released; bfloat16 halves the file).
        overwrite: replace an existing ``dst``.
        progress: show the phases (reading, mapping, writing) on stderr.

    Raises:
        CheckpointError: released keys with no avseg name, or tensors that do not fit the model (missing,
            unexpected or mis-shaped keys are named).
    """
    src, dst = Path(src), Path(dst)
    entry = converter_preset(preset, family="simtoken", method="a SimToken", dst=dst, overwrite=overwrite)
    with conversion_phase(f"reading {src.name}", enabled=progress):
        released = load_released(src)
    # With a memory-mapped release, mapping is where the tensors are read (and cast) from disk.
    with conversion_phase("mapping tensors", enabled=progress, total=len(released), unit="tensor"):
        try:
            state, report = convert_state_dict(released)
        except ValueError as err:
            raise CheckpointError(src, str(err)) from err
        report.refuse_unknown(src)
        try:
            overrides = released_overrides(state, entry.config())
        except KeyError as err:
            raise CheckpointError(src, f"no released tensor for the model's {err.args[0]!r} (SAM's shape)") from err
        except ValueError as err:
            raise CheckpointError(src, str(err)) from err
        config = entry.config(**overrides)
        with torch.device("meta"):  # names and shapes only: nothing is allocated until the tensors are assigned
            holder = _CheckpointedPart(config)
        mllm, added = holder.mllm, 0
        for key in (_LM + "embed_tokens.weight", "mllm.model.lm_head.weight"):
            if key in state:
                try:
                    state[key], added = move_vocabulary(
                        state[key], seg_token_id=mllm.seg_token_id, size=len(mllm.tokenizer)
                    )
                except ValueError as err:
                    raise CheckpointError(src, f"{key}: {err}") from err
        load_fitting_state(holder, state, src=src, preset=preset, dtype=getattr(torch, dtype))
    summary = report.summary() + (f", {added} token rows new to the release (mean-initialised)" if added else "")
    out = report.save(dst, holder, state, src=src, preset=preset, overwrite=overwrite, progress=progress, note=summary)
    return out, report


def convert(
    input: Path,
    output: Path,
    *,
    preset: str = "simtoken-7b",
    dtype: Literal["float32", "bfloat16"] = "float32",
    overwrite: bool = False,
    quiet: bool = False,
    json: bool = False,
) -> int:
    """Convert the released SimToken checkpoint (.pth) into an avseg checkpoint folder.

    Args:
        input: the authors' checkpoint, the state dict train.py saves (read with torch.load(weights_only=True)), or
            a .safetensors file of the same keys.
        output: the avseg checkpoint folder to write.
        preset: avseg SimToken preset that supplies the MLLM shape, tokenizer, compression and training settings.
        dtype: dtype of the stored weights (float32 as released, or bfloat16).
        overwrite: replace an existing output folder.
        quiet: show no progress (warnings, errors and the summary are still printed).
        json: print the summary (source, destination, preset, tensors, parameters, dropped keys) as one JSON
            document on stdout instead of text.

    Returns:
        0 on success.
    """
    if dtype not in ("float32", "bfloat16"):
        raise UsageError(f"--dtype must be float32 or bfloat16, got {dtype!r}")
    out, report = convert_checkpoint(input, output, preset=preset, dtype=dtype, overwrite=overwrite, progress=not quiet)
    report.print_summary(input, out, json=json)
    return 0
