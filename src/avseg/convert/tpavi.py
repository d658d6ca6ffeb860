"""Convert TPAVI checkpoints of the AVSBench code to avseg checkpoints: ``avseg convert tpavi IN OUT --vggish FILE``.

The AVSBench scripts (``OpenNLPLab/AVSBench`` at ``f7414af``, ``avs_scripts/{avs_s4,avs_ms3,avss}/train.py``) save
``torch.save(model.module.state_dict())`` of ``Pred_endecoder`` (``model/ResNet_AVSModel.py`` or
``model/PVT_AVSModel.py``): the image backbone (``resnet.*``, the two-branch ``B2_ResNet``, or ``encoder_backbone.*``,
the PVT authors' ``pvt_v2_b5``), the four ``Classifier_Module`` projections ``conv1``..``conv4``, the TPAVI blocks
``tpavi_b{n}``, the fusion blocks ``path1``..``path4`` and ``output_conv``. The authors released the AVSS weights
(the repository's README); the S4 and MS3 ones were not kept, so those are checkpoints users train with the same
code. A file saved from the ``DataParallel`` wrapper (``module.`` prefix) is accepted too.

VGGish is not in these files: the scripts run it as a separate frozen ``audio_extractor`` loaded from
``vggish-10086976.pth``. The converter reads that file (``--vggish``) and stores its weights in the avseg checkpoint,
so that the converted model is self-contained. Both files are read with ``torch.load(weights_only=True)``: no pickled
code runs. Every key is mapped to :class:`avseg.models.tpavi.TPAVI` built from the preset (the paper presets are the
released settings), every shape is checked, and nothing is written unless every avseg weight is filled.

Key map (``{n}`` counts from 1 upstream, ``{k}``, ``{j}`` from 0 on both sides; ``*`` is the rest of the name;
``P`` = ``backbone.model.encoder.layers.{i-1}``, ``R`` = ``backbone.model.encoder.stages.{l-1}.layers.{j}``):

- ``conv{n}.conv2d_list.{k}.*`` → ``aspp.{n-1}.conv2d_list.{k}.*`` (the four dilated 3×3 convolutions);
- ``tpavi_b{n}.{align_channel,g,theta,phi,norm_layer,W_z.0,W_z.1}.*`` → ``tpavi.{n-1}.*`` (same sub-names; ``W_z.1``
  is a BatchNorm3d with its running statistics);
- ``path{n}.resConfUnit{1,2}.conv{1,2}.*`` → ``decoder.path{n}.resConfUnit{1,2}.conv{1,2}.*``;
- ``output_conv.{0,2,4}.*`` → ``decoder.output_conv.{0,2,4}.*``;
- ResNet-50 (``B2_ResNet``): ``resnet.conv1.*``, ``resnet.bn1.*`` → ``backbone.model.embedder.embedder.
  {convolution,normalization}.*``; ``resnet.layer{l}[_1].{j}.{conv,bn}{c}.*`` → ``R.layer.{c-1}.{convolution,
  normalization}.*``; ``resnet.layer{l}[_1].{j}.downsample.{0,1}.*`` → ``R.shortcut.{convolution,normalization}.*``;
- PVT-v2-b5: ``encoder_backbone.patch_embed{i}.{proj,norm}.*`` → ``P.patch_embedding.{proj,layer_norm}.*``;
  ``encoder_backbone.block{i}.{j}.X.*`` → ``P.blocks.{j}.Y.*`` with the renaming of :mod:`avseg.convert.avsegformer`
  (``norm1`` → ``layer_norm_1``, ``attn.q`` → ``attention.query``, ``attn.sr`` → ``attention.spatial_reduction``,
  ``mlp.fc1`` → ``mlp.dense1``, ...); ``attn.kv`` (``2C`` rows) is split into ``attention.key`` (rows ``0..C-1``) and
  ``attention.value`` (rows ``C..2C-1``), because the released attention reshapes ``kv`` to ``(2, heads, d)``;
  ``encoder_backbone.norm{i}.*`` → ``P.layer_norm.*``;
- ``vggish-10086976.pth``: ``{features,embeddings}.*`` → ``audio_encoder.vggish.module.{features,embeddings}.*``.

The backbone rules are those of :mod:`avseg.convert.avsegformer`, whose released backbones are AVSBench's files.
Dropped, with the reason reported: ``resnet.layer{3,4}_2.*`` (the second branch of ``B2_ResNet``, which
``Pred_endecoder.forward`` never runs), ``path4.resConfUnit1.*`` (built, never called: the top fusion block has no
skip input, so avseg's has no such unit) and, for a checkpoint converted with ``tpavi.audio_attention=false`` (trained
with ``--tpavi_vv_flag`` alone), ``tpavi_b{n}.align_channel.*`` (built by ``TPAVIModule`` whether or not audio is
attended to). Any other key is an error, as is any avseg key left unfilled or any shape that differs.

The structure is read from the keys: the backbone (``resnet.*`` or ``encoder_backbone.*``), the number of mask
channels (``output_conv.4``: 1, or 71 for AVSS), the stages with a TPAVI block (``--tpavi_stages``) and whether the
audio projection has a bias (S4/MS3 yes, AVSS no). ``--tpavi_vv_flag`` leaves no trace in the weights: pass
``--overrides tpavi.visual_attention=true`` for a checkpoint trained with it. S4 and MS3 share one architecture, so
an MS3 checkpoint converts under the default S4 preset as well; ``--preset tpavi-{r50,pvt}-ms3`` records MS3's
training settings with it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

from avseg.convert import (
    conversion_phase,
    conversion_summary,
    print_conversion,
    read_released_state,
    tensor_values,
)

# The AVSBench backbones are the ones AVSegFormer's released code copied: one key map serves both converters.
from avseg.convert.avsegformer import PVT_RULES, RESNET_RULES, map_released_key
from avseg.errors import CheckpointError, MissingFileError, UsageError

__all__ = ["convert", "convert_state_dict", "infer_released_config"]

Replacement = str | Callable[[re.Match[str]], str]

_HEAD_RULES: tuple[tuple[str, Replacement], ...] = (
    (r"^conv([1-4])\.conv2d_list\.(\d+)\.(weight|bias)$", lambda m: f"aspp.{int(m[1]) - 1}.conv2d_list.{m[2]}.{m[3]}"),
    (
        r"^tpavi_b([1-4])\.(align_channel|g|theta|phi|norm_layer|W_z\.[01])\.(.+)$",
        lambda m: f"tpavi.{int(m[1]) - 1}.{m[2]}.{m[3]}",
    ),
    (r"^path([1-4])\.(resConfUnit[12]\.conv[12]\.(?:weight|bias))$", r"decoder.path\1.\2"),
    (r"^output_conv\.([024])\.(weight|bias)$", r"decoder.output_conv.\1.\2"),
)
_VGGISH_RULE = (r"^(features|embeddings)\.(\d+)\.(weight|bias)$", r"audio_encoder.vggish.module.\1.\2.\3")

_DROPPED: tuple[tuple[str, str], ...] = (
    (r"^resnet\.layer[34]_2\.", "second branch of B2_ResNet (never run by Pred_endecoder)"),
    (r"^path4\.resConfUnit1\.", "resConfUnit1 of the top fusion block (built, never called)"),
)
_AUDIO_PROJECTION = (r"^tpavi_b[1-4]\.align_channel\.", "audio projection of TPAVI blocks without audio attention")

_BACKBONE_PREFIX = {"resnet": "resnet.", "pvt_v2": "encoder_backbone."}


def _backbone_kind(keys: list[str]) -> str:
    if any(k.startswith("encoder_backbone.") for k in keys):
        return "pvt_v2"
    if any(k.startswith("resnet.") for k in keys):
        return "resnet"
    raise ValueError("no resnet.* (ResNet-50) or encoder_backbone.* (PVT-v2-b5) keys: not an AVSBench TPAVI model")


def convert_state_dict(
    state: Mapping[str, Tensor], *, vggish: Mapping[str, Tensor] | None = None, audio_attention: bool = True
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Map a released state dict (and VGGish's) to avseg names; a pure function: no model is built.

    Args:
        state: the released ``Pred_endecoder`` state dict (a leading ``module.`` from ``DataParallel`` is removed).
        vggish: the state dict of ``vggish-10086976.pth`` (``features.*``, ``embeddings.*``), or None.
        audio_attention: the converted model attends to audio (``tpavi_va_flag``); False drops the audio projections.

    Returns:
        ``(converted, dropped)``: avseg names → tensors, and released names that were dropped → why.

    Raises:
        ValueError: a key that no rule maps and no rule drops (the message lists them), or no backbone keys.
    """
    state = {k.removeprefix("module."): v for k, v in state.items()}
    kind = _backbone_kind(list(state))
    prefix = _BACKBONE_PREFIX[kind]
    dropping = _DROPPED if audio_attention else (*_DROPPED, _AUDIO_PROJECTION)
    backbone_rules = PVT_RULES if kind == "pvt_v2" else RESNET_RULES
    converted: dict[str, Tensor] = {}
    dropped: dict[str, str] = {}
    unknown: list[str] = []
    for name, tensor in state.items():
        reason = next((why for pattern, why in dropping if re.search(pattern, name)), None)
        if reason is not None:
            dropped[name] = reason
            continue
        if name.startswith(prefix):
            # The backbone rules are written for AVSegFormer's "backbone." prefix.
            name_, rules = "backbone." + name.removeprefix(prefix), backbone_rules
        else:
            name_, rules = name, _HEAD_RULES
        mapped = map_released_key(name_, tensor, rules, kind)
        if mapped is None:
            unknown.append(name)
        else:
            converted.update(mapped)
    for name, tensor in (vggish or {}).items():
        new, hits = re.subn(*_VGGISH_RULE, name)
        if hits:
            converted[new] = tensor
        else:
            unknown.append(f"VGGish {name}")
    if unknown:
        shown = ", ".join(unknown[:10]) + (f", ... ({len(unknown)} in all)" if len(unknown) > 10 else "")
        raise ValueError(f"keys of no known TPAVI module: {shown}")
    return converted, dropped


def infer_released_config(state: Mapping[str, Tensor], preset: str | None = None) -> tuple[str, Any]:
    """The avseg preset and config that a released state dict fits.

    Args:
        state: the released state dict.
        preset: an avseg preset to start from; by default ``tpavi-{pvt,r50}-{s4,avss}`` from the backbone keys and the
            number of mask channels (S4 and MS3 share one architecture; only their training settings differ).

    Returns:
        ``(preset, config)``: the preset's config with the TPAVI stages and the audio projection's bias read from the
        keys, VGGish stored in the checkpoint (``audio.vggish_weights`` null) and nothing downloaded
        (``pretrained`` false: every weight comes from the converted files).

    Raises:
        ValueError: a preset with avseg's text branch, conditional kernel or position encoding (released TPAVI has
            none), or with another backbone or number of mask channels than the checkpoint.
    """
    from avseg.models.registry import get_entry

    state = {k.removeprefix("module."): v for k, v in state.items()}
    kind = _backbone_kind(list(state))
    head = state.get("output_conv.4.weight")
    classes = int(head.shape[0]) if head is not None else 1
    if preset is None:
        preset = f"tpavi-{'pvt' if kind == 'pvt_v2' else 'r50'}-{'avss' if classes > 1 else 's4'}"
    cfg = get_entry(preset).config(pretrained=False)
    additions = [
        name
        for name, on in (
            ("text branch", cfg.text.encoder is not None),
            ("conditional kernel", cfg.kernel.enabled),
            ("position encoding", cfg.tpavi.position_encoding),
        )
        if on
    ]
    if additions:
        raise ValueError(f"preset {preset!r} has avseg's {', '.join(additions)}; released TPAVI checkpoints have none")
    if cfg.backbone.kind != kind:
        raise ValueError(f"preset {preset!r} has a {cfg.backbone.kind} backbone, the checkpoint a {kind} one")
    if cfg.num_classes != classes:
        raise ValueError(f"preset {preset!r} predicts {cfg.num_classes} mask channel(s), the checkpoint {classes}")
    stages = tuple(sorted({int(m[1]) - 1 for k in state if (m := re.match(r"^tpavi_b([1-4])\.", k))}))
    align_bias = any(re.match(r"^tpavi_b[1-4]\.align_channel\.bias$", k) for k in state)
    # The masked audio-visual loss reads the stages that have a block; with none, the released code cannot run it.
    kl_stages = tuple(s for s in cfg.loss.av_kl_stages if s in stages)
    loss = replace(cfg.loss, av_kl_stages=kl_stages) if kl_stages else replace(cfg.loss, av_kl_weight=0.0)
    return preset, replace(
        cfg,
        audio=replace(cfg.audio, encoder="vggish", vggish_weights=None),
        tpavi=replace(cfg.tpavi, stages=stages, align_bias=align_bias),
        loss=loss,
    )


def _fit_report(converted: Mapping[str, Tensor], expected: Mapping[str, Tensor]) -> str | None:
    """None if ``converted`` fills ``expected`` exactly (names and shapes), else what is missing, extra or misshapen."""
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    mismatched = [
        f"{k} {tuple(converted[k].shape)} vs {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(converted))
        if converted[k].shape != expected[k].shape
    ]
    parts = [
        f"{title}: " + ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
        for title, items in (("missing", missing), ("unexpected", unexpected), ("shape-mismatched", mismatched))
        if items
    ]
    return "; ".join(parts) or None


def convert(
    input: Path,
    out: Path,
    *,
    vggish: Optional[Path] = None,  # noqa: UP045 - the CLI generator reads Optional[...]
    preset: Optional[str] = None,  # noqa: UP045
    overrides: Optional[list[str]] = None,  # noqa: UP045
    overwrite: bool = False,
    quiet: bool = False,
    json: bool = False,
) -> int:
    """Convert a TPAVI checkpoint of the AVSBench code (.pth) to an avseg checkpoint folder.

    The key map is documented in avseg.convert.tpavi and docs/models.md. Both files are read with
    torch.load(weights_only=True); every avseg weight must be filled with the right shape, and every released key must
    be mapped or dropped for a stated reason, or nothing is written. The backbone, the number of classes, the TPAVI
    stages and the audio projection's bias are read from the keys; the VGGish weights are stored in the checkpoint.

    Args:
        input: the .pth file the AVSBench scripts save (the released AVSS weights, or S4/MS3 weights trained with the
            official code).
        out: the avseg checkpoint folder to write (config.json + model.safetensors).
        vggish: vggish-10086976.pth, the VGGish weights the AVSBench scripts load beside the model (required unless
            the checkpoint has no TPAVI block that attends to audio).
        preset: avseg preset to start from (default: tpavi-{pvt,r50}-{s4,avss}, inferred from the keys; S4 and MS3
            share the architecture, tpavi-{pvt,r50}-ms3 records MS3's training settings).
        overrides: dotted model-config overrides for checkpoints trained with other flags, e.g.
            tpavi.visual_attention=true (--tpavi_vv_flag).
        overwrite: replace an existing checkpoint at OUT.
        quiet: show no progress (warnings, errors and the summary are still printed).
        json: print the summary (source, destination, preset, tensors, parameters, dropped keys, TPAVI stages) as one
            JSON document on stdout instead of text.

    Returns:
        0 on success.
    """
    from avseg.audio.vggish import load_vggish
    from avseg.checkpoint import CheckpointExistsError, save_checkpoint
    from avseg.config import apply_overrides, parse_overrides
    from avseg.fileio import check_output_dir
    from avseg.models.tpavi import TPAVI

    input, out = Path(input), Path(out)
    vggish = Path(vggish) if vggish is not None else None
    if not input.is_file():
        raise MissingFileError(input, "TPAVI checkpoint")
    check_output_dir(out, arg="OUT", inputs=[input] + ([vggish] if vggish is not None else []))
    if out.exists() and not overwrite:
        raise CheckpointExistsError(f"{out}: already exists (pass --overwrite to replace it)")
    with conversion_phase(f"reading {input.name}", enabled=not quiet):
        state = read_released_state(input, "TPAVI checkpoint")
        digest = hashlib.sha256(input.read_bytes()).hexdigest()
    try:
        preset, cfg = infer_released_config(state, preset)
        if overrides:
            cfg = apply_overrides(cfg, parse_overrides(overrides))
    except ValueError as err:
        raise CheckpointError(input, str(err)) from err
    needs_vggish = bool(cfg.tpavi.stages) and cfg.tpavi.audio_attention
    if needs_vggish and vggish is None:
        raise UsageError(
            f"{input}: its TPAVI blocks attend to audio, and VGGish is not in the file: pass --vggish "
            "vggish-10086976.pth (the weights the AVSBench scripts load)"
        )
    vggish_state = None
    if needs_vggish and vggish is not None:
        with conversion_phase(f"reading {vggish.name}", enabled=not quiet):
            vggish_state = load_vggish(vggish).state_dict()
    with conversion_phase("mapping tensors", enabled=not quiet, total=len(state), unit="tensor"):
        try:
            audio_attention = cfg.tpavi.audio_attention
            converted, dropped = convert_state_dict(state, vggish=vggish_state, audio_attention=audio_attention)
        except ValueError as err:
            raise CheckpointError(input, str(err)) from err
        with torch.device("meta"):  # the shapes only: the converted tensors become the weights
            model = TPAVI(cfg)
        problems = _fit_report(converted, model.state_dict())
        if problems is not None:
            raise CheckpointError(input, f"does not fit {preset}: {problems} (see --preset, --overrides)")
        model.load_state_dict(converted, strict=True, assign=True)
    reasons: dict[str, int] = {}
    for why in dropped.values():
        reasons[why] = reasons.get(why, 0) + 1
    meta = {
        "converted_from": input.name,
        "sha256": digest,
        "vggish_from": vggish.name if vggish_state is not None else None,
        "dropped": reasons,
        "converter": "avseg.convert.tpavi",
    }
    with conversion_phase(f"writing {out.name}", enabled=not quiet):
        save_checkpoint(out, model, preset=preset, meta=meta, overwrite=overwrite)
    params = tensor_values(converted.values())
    stages = ",".join(str(s) for s in cfg.tpavi.stages) or "none"
    summary = conversion_summary(
        input,
        out,
        preset=preset,
        tensors=len(converted),
        parameters=params,
        dropped=reasons,
        tpavi_stages=list(cfg.tpavi.stages),
    )
    lines = [
        f"{input}: {len(converted)} tensors ({params / 1e6:.2f} M values) -> {out} [{preset}, TPAVI stages {stages}]"
    ]
    lines += [f"  dropped {count} key(s): {why}" for why, count in reasons.items()]
    print_conversion(summary, lines, json=json)
    return 0
