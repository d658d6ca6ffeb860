"""Convert the authors' released AVSegFormer checkpoints to avseg checkpoints: ``avseg convert avsegformer IN OUT``.

The released checkpoints (``vvvb-github/AVSegFormer`` README, Google Drive) are ``torch.save(model.state_dict())`` of
the mmcv-era model: ``backbone.*`` (the PVT authors' ``pvt_v2_b5``, whose names timm later renamed, or AVSBench's
two-branch ``B2_ResNet``), ``vggish.*``, ``audio_proj.*`` and ``head.*`` (``AVSegHead``). This module maps every key
to :class:`avseg.models.avsegformer.AVSegFormer` built with :func:`~avseg.models.avsegformer.released_config`, checks
every shape, and writes a self-describing avseg checkpoint (``config.json`` + ``model.safetensors``). The file is read
with ``torch.load(weights_only=True)``: no pickled code runs.

Key map (``{i}`` counts from 1 upstream, ``{k}``, ``{j}`` from 0 on both sides; ``*`` is the rest of the name;
``P`` = ``backbone.model.encoder.layers.{i-1}``, ``R`` = ``backbone.model.encoder.stages.{l-1}.layers.{j}``):

- ``head.transformer.encoder.layers.*`` → ``encoder.layers.*`` (same sub-names: ``self_attn.{sampling_offsets,
  attention_weights,value_proj,output_proj}``, ``norm1``, ``linear1``, ``linear2``, ``norm2``);
- ``head.transformer.decoder.layers.*`` → ``decoder.layers.*`` (``self_attn``, ``cross_attn`` as torch
  ``MultiheadAttention``, ``norm1-3``, ``linear1``, ``linear2``);
- ``head.query_generator.*`` → ``query_generator.*`` (``query``, ``layers.{k}.{self_attn,cross_attn,ffn.{0,2},
  norm1-3}``);
- ``head.learnable_query.weight`` → ``learnable_query.weight``; ``head.level_embed`` → ``level_embed``;
- ``head.in_proj.{k}.{0,1}.*`` → ``in_proj.{k}.{0,1}.*`` (1×1 conv, GroupNorm);
- ``head.lateral_conv.*``, ``head.out_conv.*`` → ``lateral_conv.*``, ``out_conv.*``;
- ``head.fusion_block.{q_proj,kv_proj,proj}.*`` → ``mixer.{q_proj,kv_proj,proj}.*``;
- ``head.mlp.layers.{k}.*`` → ``query_mlp.layers.{k}.*``;
- ``head.fc.{0,2,4}.*`` → ``output.conv{1,2,3}.*``;
- ``head.fpn.up{i}.1.*`` → ``reformer.up.{i-1}.*`` and ``head.attn_fc.{0,2,4}.*`` → ``reformer.output.conv{1,2,3}.*``
  (built and saved by the released code, unused by its forward);
- ``audio_proj.*`` → ``audio_proj.*``;
- ``vggish.{features,embeddings}.*`` → ``audio_encoder.vggish.module.{features,embeddings}.*`` (kept in the
  checkpoint: the converted config has ``audio.vggish_weights`` null);
- PVT-v2: ``backbone.patch_embed{i}.{proj,norm}.*`` → ``P.patch_embedding.{proj,layer_norm}.*``;
  ``backbone.block{i}.{j}.X.*`` → ``P.blocks.{j}.Y.*`` with X → Y: ``norm1`` → ``layer_norm_1``, ``norm2`` →
  ``layer_norm_2``, ``attn.q`` → ``attention.query``, ``attn.proj`` → ``attention.proj``, ``attn.sr`` →
  ``attention.spatial_reduction``, ``attn.norm`` → ``attention.layer_norm``, ``mlp.fc1`` → ``mlp.dense1``,
  ``mlp.dwconv.dwconv`` → ``mlp.dwconv.dwconv``, ``mlp.fc2`` → ``mlp.dense2``; ``attn.kv`` (``2C`` rows) is split
  into ``attention.key`` (rows ``0..C-1``) and ``attention.value`` (rows ``C..2C-1``), because the released attention
  reshapes ``kv`` to ``(2, heads, d)``; ``backbone.norm{i}.*`` → ``P.layer_norm.*``;
- ResNet-50 (``B2_ResNet``): ``backbone.conv1.*``, ``backbone.bn1.*`` → ``backbone.model.embedder.embedder.
  {convolution,normalization}.*``; ``backbone.layer{l}[_1].{j}.{conv,bn}{c}.*`` → ``R.layer.{c-1}.{convolution,
  normalization}.*``; ``backbone.layer{l}[_1].{j}.downsample.{0,1}.*`` → ``R.shortcut.{convolution,normalization}.*``.

timm's PVT-v2 names (``patch_embed.*``, ``stages.{s}.{downsample,blocks.{j},norm}.*``, ``mlp.dwconv.*``) are first
brought back to the PVT authors' names (the inverse of timm's ``_checkpoint_filter_fn``). Dropped, with the reason
reported: ``backbone.layer{3,4}_2.*`` (the second branch of ``B2_ResNet``, which ``AVSegFormer`` never runs),
``vggish.pproc.*`` (AudioSet PCA; AVSBench does not post-process), ``backbone.head.*`` / ``backbone.fc.*`` (ImageNet
classifiers). Any other key is an error, as is any avseg key left unfilled or any shape that differs.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

from avseg.convert import (
    conversion_phase,
    conversion_summary,
    load_fitting_state,
    print_conversion,
    read_released_state,
    tensor_values,
)
from avseg.errors import CheckpointError, MissingFileError

__all__ = ["convert", "convert_state_dict", "infer_released_config", "normalise_timm_pvt"]

Replacement = str | Callable[[re.Match[str]], str]

_HEAD_RULES: tuple[tuple[str, Replacement], ...] = (
    (r"^head\.transformer\.encoder\.layers\.(.+)$", r"encoder.layers.\1"),
    (r"^head\.transformer\.decoder\.layers\.(.+)$", r"decoder.layers.\1"),
    (r"^head\.query_generator\.(.+)$", r"query_generator.\1"),
    (r"^head\.learnable_query\.weight$", "learnable_query.weight"),
    (r"^head\.level_embed$", "level_embed"),
    (r"^head\.in_proj\.(\d+)\.([01])\.(weight|bias)$", r"in_proj.\1.\2.\3"),
    (r"^head\.(lateral_conv|out_conv)\.(\d+)\.(weight|bias)$", r"\1.\2.\3"),
    (r"^head\.fusion_block\.(q_proj|kv_proj|proj)\.(weight|bias)$", r"mixer.\1.\2"),
    (r"^head\.mlp\.layers\.(\d+)\.(weight|bias)$", r"query_mlp.layers.\1.\2"),
    (r"^head\.fc\.([024])\.(weight|bias)$", lambda m: f"output.conv{int(m[1]) // 2 + 1}.{m[2]}"),
    (r"^head\.attn_fc\.([024])\.(weight|bias)$", lambda m: f"reformer.output.conv{int(m[1]) // 2 + 1}.{m[2]}"),
    (r"^head\.fpn\.up([123])\.1\.(weight|bias)$", lambda m: f"reformer.up.{int(m[1]) - 1}.{m[2]}"),
    (r"^audio_proj\.(weight|bias)$", r"audio_proj.\1"),
    (r"^vggish\.(features|embeddings)\.(\d+)\.(weight|bias)$", r"audio_encoder.vggish.module.\1.\2.\3"),
)

# The backbone rules below are shared with the TPAVI converter (the two released codes build the same PVT-v2-b5 and
# B2_ResNet backbones under the prefix ``backbone.``).
PVT_ENCODER = "backbone.model.encoder.layers"
_PVT_BLOCK_PARTS = {
    "norm1": "layer_norm_1",
    "norm2": "layer_norm_2",
    "attn.q": "attention.query",
    "attn.proj": "attention.proj",
    "attn.sr": "attention.spatial_reduction",
    "attn.norm": "attention.layer_norm",
    "mlp.fc1": "mlp.dense1",
    "mlp.dwconv.dwconv": "mlp.dwconv.dwconv",
    "mlp.fc2": "mlp.dense2",
}
PVT_RULES: tuple[tuple[str, Replacement], ...] = (
    (
        r"^backbone\.patch_embed(\d)\.(proj|norm)\.(weight|bias)$",
        lambda m: f"{PVT_ENCODER}.{int(m[1]) - 1}.patch_embedding.{'proj' if m[2] == 'proj' else 'layer_norm'}.{m[3]}",
    ),
    (
        r"^backbone\.block(\d)\.(\d+)\.(" + "|".join(re.escape(k) for k in _PVT_BLOCK_PARTS) + r")\.(weight|bias)$",
        lambda m: f"{PVT_ENCODER}.{int(m[1]) - 1}.blocks.{m[2]}.{_PVT_BLOCK_PARTS[m[3]]}.{m[4]}",
    ),
    (r"^backbone\.norm(\d)\.(weight|bias)$", lambda m: f"{PVT_ENCODER}.{int(m[1]) - 1}.layer_norm.{m[2]}"),
)
PVT_KV = re.compile(r"^backbone\.block(\d)\.(\d+)\.attn\.kv\.(weight|bias)$")

_RESNET = "backbone.model"
_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
RESNET_RULES: tuple[tuple[str, Replacement], ...] = (
    (r"^backbone\.conv1\.weight$", f"{_RESNET}.embedder.embedder.convolution.weight"),
    (rf"^backbone\.bn1\.{_BN}$", rf"{_RESNET}.embedder.embedder.normalization.\1"),
    (
        r"^backbone\.layer([1-4])(?:_1)?\.(\d+)\.conv([1-3])\.weight$",
        lambda m: f"{_RESNET}.encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.layer.{int(m[3]) - 1}.convolution.weight",
    ),
    (
        rf"^backbone\.layer([1-4])(?:_1)?\.(\d+)\.bn([1-3])\.{_BN}$",
        lambda m: f"{_RESNET}.encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.layer.{int(m[3]) - 1}.normalization.{m[4]}",
    ),
    (
        r"^backbone\.layer([1-4])(?:_1)?\.(\d+)\.downsample\.0\.weight$",
        lambda m: f"{_RESNET}.encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.shortcut.convolution.weight",
    ),
    (
        rf"^backbone\.layer([1-4])(?:_1)?\.(\d+)\.downsample\.1\.{_BN}$",
        lambda m: f"{_RESNET}.encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.shortcut.normalization.{m[3]}",
    ),
)

_DROPPED: tuple[tuple[str, str], ...] = (
    (r"^backbone\.layer[34]_2\.", "second branch of B2_ResNet (never run by AVSegFormer)"),
    (r"^vggish\.pproc\.", "AudioSet PCA parameters (AVSBench does not post-process VGGish)"),
    (r"^backbone\.(head|fc)\.", "ImageNet classifier of the backbone"),
)


def normalise_timm_pvt(name: str) -> str:
    """Bring a timm PVT-v2 backbone key back to the PVT authors' name (the inverse of timm's checkpoint filter)."""
    name = re.sub(r"^backbone\.patch_embed\.", "backbone.patch_embed1.", name)
    name = re.sub(r"^backbone\.stages\.(\d)\.downsample\.", lambda m: f"backbone.patch_embed{int(m[1]) + 1}.", name)
    name = re.sub(r"^backbone\.stages\.(\d)\.blocks\.(\d+)\.", lambda m: f"backbone.block{int(m[1]) + 1}.{m[2]}.", name)
    name = re.sub(r"^backbone\.stages\.(\d)\.norm\.", lambda m: f"backbone.norm{int(m[1]) + 1}.", name)
    return re.sub(r"\.mlp\.dwconv\.(weight|bias)$", r".mlp.dwconv.dwconv.\1", name)


def _backbone_kind(keys: list[str]) -> str:
    if any(k.startswith(("backbone.patch_embed", "backbone.block1.", "backbone.stages.")) for k in keys):
        return "pvt_v2"
    if any(k.startswith("backbone.layer1.") for k in keys):
        return "resnet"
    raise ValueError("no backbone.patch_embed*/block*/stages.* (PVT-v2) or backbone.layer1.* (ResNet) keys")


def map_released_key(
    name: str, tensor: Tensor, rules: Sequence[tuple[str, Replacement]], kind: str
) -> dict[str, Tensor] | None:
    """The avseg weights one released key becomes: the first of ``rules`` that matches renames it, and a PVT-v2
    ``attn.kv`` weight is split into key and value (also used by the TPAVI converter). None: no rule matches."""
    kv = PVT_KV.match(name) if kind == "pvt_v2" else None
    if kv is not None:
        # The released attention reshapes kv to (B, N, 2, heads, d): the first C outputs are keys, the rest values.
        half = tensor.shape[0] // 2
        block = f"{PVT_ENCODER}.{int(kv[1]) - 1}.blocks.{kv[2]}.attention"
        return {f"{block}.key.{kv[3]}": tensor[:half], f"{block}.value.{kv[3]}": tensor[half:]}
    for pattern, replacement in rules:
        new, hits = re.subn(pattern, replacement, name)
        if hits:
            return {new: tensor}
    return None


def convert_state_dict(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Map a released state dict to avseg names (a pure function: no model is built, any tensor type works).

    Args:
        state: the released ``model.state_dict()`` (a leading ``module.`` from ``DataParallel`` is removed).

    Returns:
        ``(converted, dropped)``: avseg names → tensors, and released names that were dropped → why.

    Raises:
        ValueError: a key that no rule maps and no rule drops (the message lists them), or no backbone keys.
    """
    state = {k.removeprefix("module."): v for k, v in state.items()}
    kind = _backbone_kind(list(state))
    rules = _HEAD_RULES + (PVT_RULES if kind == "pvt_v2" else RESNET_RULES)
    converted: dict[str, Tensor] = {}
    dropped: dict[str, str] = {}
    unknown: list[str] = []
    for raw, tensor in state.items():
        name = normalise_timm_pvt(raw) if kind == "pvt_v2" else raw
        reason = next((why for pattern, why in _DROPPED if re.search(pattern, name)), None)
        if reason is not None:
            dropped[raw] = reason
            continue
        mapped = map_released_key(name, tensor, rules, kind)
        if mapped is None:
            unknown.append(raw)
        else:
            converted.update(mapped)
    if unknown:
        shown = ", ".join(unknown[:10]) + (f", ... ({len(unknown)} in all)" if len(unknown) > 10 else "")
        raise ValueError(f"keys of no known AVSegFormer module: {shown}")
    return converted, dropped


def infer_released_config(state: Mapping[str, Tensor], preset: str | None = None) -> tuple[str, Any]:
    """The avseg preset and config that a released state dict fits.

    Args:
        state: the released state dict.
        preset: an avseg preset to start from; by default ``avsegformer-{pvt,r50}-{s4,avss}`` from the backbone keys
            and the number of mask channels (S4 and MS3 share one architecture; only their recipes differ).

    Returns:
        ``(preset, config)``: :func:`~avseg.models.avsegformer.released_config` of the preset, with the query
        generator, mixer and reformer switched on or off as the state dict's keys say, VGGish stored in the checkpoint
        and no pretrained download.
    """
    from dataclasses import replace

    from avseg.models.avsegformer import released_config
    from avseg.models.registry import get_entry

    keys = [k.removeprefix("module.") for k in state]
    kind = _backbone_kind(keys)
    fc = next((state[k] for k in state if k.removeprefix("module.") == "head.fc.4.weight"), None)
    classes = int(fc.shape[0]) if fc is not None else 1
    if preset is None:
        preset = f"avsegformer-{'pvt' if kind == 'pvt_v2' else 'r50'}-{'avss' if classes > 1 else 's4'}"
    cfg = get_entry(preset).config(pretrained=False)
    if cfg.text.encoder is not None or cfg.text.clip_audio:
        raise ValueError(f"preset {preset!r} has avseg's text branch; released AVSegFormer checkpoints have none")
    if cfg.backbone.kind != kind:
        raise ValueError(f"preset {preset!r} has a {cfg.backbone.kind} backbone, the checkpoint a {kind} one")
    cfg = released_config(cfg)
    has = {p: any(k.startswith(p) for k in keys) for p in ("head.query_generator.", "head.fusion_block.", "head.fpn.")}
    return preset, replace(
        cfg,
        audio=replace(cfg.audio, encoder="vggish", vggish_weights=None),
        queries=replace(cfg.queries, generator="attention" if has["head.query_generator."] else "audio"),
        mixer=replace(cfg.mixer, kind="channel" if has["head.fusion_block."] else "none"),
        loss=replace(cfg.loss, keep_reformer=has["head.fpn."]),
    )


def convert(
    input: Path,
    out: Path,
    *,
    preset: Optional[str] = None,  # noqa: UP045 - the CLI generator reads Optional[...]
    overrides: Optional[list[str]] = None,  # noqa: UP045
    overwrite: bool = False,
    quiet: bool = False,
    json: bool = False,
) -> int:
    """Convert a released AVSegFormer checkpoint (.pth) to an avseg checkpoint folder.

    The key map is documented in avseg.convert.avsegformer and docs/avsegformer.md. The checkpoint is read with
    torch.load(weights_only=True); every avseg weight must be filled with the right shape, and every released key
    must be mapped or dropped for a stated reason, or nothing is written. The converted model computes as the released
    code does (released_config: attention query generator, gated mixer, conv output head, mix loss); VGGish weights
    are stored in the checkpoint.

    Args:
        input: the released .pth file (e.g. the S4, MS3 or AVSS checkpoints of the AVSegFormer README).
        out: the avseg checkpoint folder to write (config.json + model.safetensors).
        preset: avseg preset to start from (default: avsegformer-{pvt,r50}-{s4,avss}, inferred from the keys; S4 and
            MS3 share the architecture).
        overrides: dotted model-config overrides for checkpoints trained with other settings, e.g.
            queries.num_queries=100.
        overwrite: replace an existing checkpoint at OUT.
        quiet: show no progress (warnings, errors and the summary are still printed).
        json: print the summary (source, destination, preset, tensors, parameters, dropped keys) as one JSON
            document on stdout instead of text.

    Returns:
        0 on success.
    """
    from avseg.checkpoint import save_checkpoint
    from avseg.config import apply_overrides, parse_overrides
    from avseg.models.avsegformer import AVSegFormer

    input, out = Path(input), Path(out)
    if not input.is_file():
        raise MissingFileError(input, "released AVSegFormer checkpoint")
    if out.exists() and not overwrite:
        raise ValueError(f"{out}: already exists (pass --overwrite to replace it)")
    with conversion_phase(f"reading {input.name}", enabled=not quiet):
        state = read_released_state(input, "released AVSegFormer checkpoint (.pth)")
        digest = hashlib.sha256(input.read_bytes()).hexdigest()
    with conversion_phase("mapping tensors", enabled=not quiet, total=len(state), unit="tensor"):
        try:
            converted, dropped = convert_state_dict(state)
            preset, cfg = infer_released_config(state, preset)
            if overrides:
                cfg = apply_overrides(cfg, parse_overrides(overrides))
        except ValueError as err:
            raise CheckpointError(input, str(err)) from err
        with torch.device("meta"):  # the shapes only: the converted tensors become the weights
            model = AVSegFormer(cfg)
        hint = "released settings; see --preset, --overrides"
        load_fitting_state(model, converted, src=input, preset=preset, hint=hint)
    reasons: dict[str, int] = {}
    for why in dropped.values():
        reasons[why] = reasons.get(why, 0) + 1
    meta = {
        "converted_from": input.name,
        "sha256": digest,
        "dropped": reasons,
        "converter": "avseg.convert.avsegformer",
    }
    with conversion_phase(f"writing {out.name}", enabled=not quiet):
        save_checkpoint(out, model, preset=preset, meta=meta, overwrite=overwrite)
    params = tensor_values(converted.values())
    summary = conversion_summary(input, out, preset=preset, tensors=len(converted), parameters=params, dropped=reasons)
    lines = [f"{input}: {len(converted)} tensors ({params / 1e6:.2f} M values) -> {out} [{preset}, released settings]"]
    lines += [f"  dropped {count} key(s): {why}" for why, count in reasons.items()]
    print_conversion(summary, lines, json=json)
    return 0
