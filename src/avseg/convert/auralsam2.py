"""Convert the authors' AuralSAM2 fuser checkpoints to avseg checkpoints (``avseg convert auralsam2 IN OUT``).

The released checkpoints (``auralsam2_avs_{v1s,v1m,v2}.pth``, ``auralsam2_refavs_best.pth`` on the Hugging Face Hub
under ``yyliu01/AuralSAM2``) are plain ``state_dict``\\ s of the ``AuralFuser`` module (``torch.save(
aural_fuser.state_dict())`` in ``main.py``), keys without prefix; the authors' inference also accepts whole-model
dicts with ``aural_fuser.`` / ``v_model.`` / ``t_model.`` keys, and their tool ``tools/remap_aural_ckpt_keys.py``
documents two older layouts (``training_layers.{i}`` and ``train_f_*``) that are first brought to the current names.

Key map (released name → avseg name; ``C = 256`` channels, ``D = 128`` fusion width; weights of 1×1 convolutions
lose their trailing unit axes, because avseg uses linear layers for them):

============================================== =============================================================
released                                       avseg
============================================== =============================================================
``patch_embeds.{i}.*``                         ``fuser.patch_embeds.{i}.*``
``smooth_convs.{i}.*``                         ``fuser.smooth_convs.{i}.*``
``f_blocks.{i}.{j}.{norm1,norm2}.*``           ``fuser.visual_blocks.{i}.{j}.{norm1,norm2}.*``
``f_blocks.{i}.{j}.attn.{q,kv,proj,sr,norm}.*`` ``fuser.visual_blocks.{i}.{j}.attn.{q,kv,proj,sr,norm}.*``
``f_blocks.{i}.{j}.mlp.{fc1,fc2}.*``           ``fuser.visual_blocks.{i}.{j}.mlp.{fc1,fc2}.*``
``f_blocks.{i}.{j}.mlp.dwconv.dwconv.*``       ``fuser.visual_blocks.{i}.{j}.mlp.dwconv.*``
``a_blocks.{i}.{j}.{norm1,norm2}.*``           ``fuser.audio_blocks.{i}.{j}.{norm1,norm2}.*``
``a_blocks.{i}.{j}.attn.{q,kv,proj}.*``        ``fuser.audio_blocks.{i}.{j}.attn.{q,kv,proj}.*``
``a_blocks.{i}.{j}.mlp.{fc1,fc2}.*``           ``fuser.audio_blocks.{i}.{j}.mlp.{fc1,fc2}.*``
``fusion_modules.{i}.align_channel.*``         ``fuser.fusion.{i}.audio_align.*`` (Conv1d → Linear)
``fusion_modules.{i}.{q,k,v}_frame.*``         ``fuser.fusion.{i}.frame_{q,k,v}.*`` (Conv3d → Linear)
``fusion_modules.{i}.{q,k,v}_audio.*``         ``fuser.fusion.{i}.audio_{q,k,v}.*`` (Conv1d → Linear)
``fusion_modules.{i}.W_z.{0,1}.*``             ``fuser.fusion.{i}.frame_out.{0,1}.*`` (Conv3d → Linear, BN3d → BN1d)
``fusion_modules.{i}.W_z2.{0,1}.*``            ``fuser.fusion.{i}.audio_out.{0,1}.*`` (Conv1d → Linear)
``fusion_modules.{i}.norm_layer.*``            ``fuser.fusion.{i}.frame_norm.*``
``fusion_modules.{i}.norm_layer2.*``           ``fuser.fusion.{i}.audio_norm.*``
``train_proj_v1.proj.{k}.*``                   ``fuser.visual_projector.layers.{k}.*`` (AVS: 1×1 convs → Linear)
``train_proj_a1.proj.{k}.*``                   ``fuser.audio_projector.layers.{k}.*``
``text_proj.{0,2}.*``                          ``fuser.text_proj.{0,2}.*``
``vgg.{features,embeddings}.*``                ``audio_encoder.vggish.module.*`` (only with ``keep_vggish``)
============================================== =============================================================

Dropped, because the released modules build them but never call them: ``fusion_modules.{i}.g.*``,
``fusion_modules.{i}.align_channel_back.*``, ``a_blocks.{i}.{j}.attn.{sr,norm}.*``, ``a_blocks.{i}.{j}.mlp.dwconv.*``.
Also dropped: ``vgg.*`` by default (VGGish is frozen in training, so these are the public ``vggish-10086976.pth``
weights, which the preset names), ``vgg.pproc.*`` (post-processing is off), and the ``v_model.*`` / ``t_model.*``
weights of whole-model dicts (the public SAM2 and DistilRoBERTa weights, rebuilt from the preset's sources).

The converted model uses the released structure (``fuser.fusion_layout = "released"``, ``fuser.fusion_affinity =
"dot"``, ``prompts.shift_query_pe = True``, the released projector read from the weights and, with a text projection,
expressions padded to 25 tokens: ``text.encoder.padding = "max_tokens"``) on the preset's SAM2; every other key is
reported, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn

from avseg.convert import (
    ConversionReport,
    conversion_phase,
    load_fitting_state,
    read_released_state,
)

__all__ = [
    "convert",
    "convert_checkpoint",
    "convert_state_dict",
    "converted_config",
    "released_overrides",
]

# The authors' own remap table for their older layouts (tools/remap_aural_ckpt_keys.py), to current names.
_LEGACY_TRAINING_LAYERS = {
    0: "patch_embeds.0",
    1: "patch_embeds.1",
    2: "patch_embeds.2",
    3: "f_blocks.0",
    4: "a_blocks.0",
    5: "fusion_modules.0",
    6: "f_blocks.1",
    7: "a_blocks.1",
    8: "fusion_modules.1",
    9: "f_blocks.2",
    10: "a_blocks.2",
    11: "fusion_modules.2",
    12: "smooth_convs.0",
    13: "smooth_convs.1",
    14: "train_proj_v1",
    15: "train_proj_a1",
    16: "text_proj",
}
_LEGACY_FLAT = (
    ("train_f_patch_embed1", "patch_embeds.0"),
    ("train_f_patch_embed2", "patch_embeds.1"),
    ("train_f_patch_embed3", "patch_embeds.2"),
    ("train_f_a_block1", "fusion_modules.0"),
    ("train_f_a_block2", "fusion_modules.1"),
    ("train_f_a_block3", "fusion_modules.2"),
    ("train_f_block1", "f_blocks.0"),
    ("train_f_block2", "f_blocks.1"),
    ("train_f_block3", "f_blocks.2"),
    ("train_a_block1", "a_blocks.0"),
    ("train_a_block2", "a_blocks.1"),
    ("train_a_block3", "a_blocks.2"),
    ("train_smooth1", "smooth_convs.0"),
    ("train_smooth2", "smooth_convs.1"),
)

_FUSION_NAMES = {
    "align_channel": "audio_align",
    "q_frame": "frame_q",
    "k_frame": "frame_k",
    "v_frame": "frame_v",
    "q_audio": "audio_q",
    "k_audio": "audio_k",
    "v_audio": "audio_v",
    "W_z": "frame_out",
    "W_z2": "audio_out",
    "norm_layer": "frame_norm",
    "norm_layer2": "audio_norm",
}
_FUSION_UNUSED = ("g", "align_channel_back")


def _current_name(key: str) -> str | None:
    """Strip wrapper prefixes and bring the authors' older layouts to the current released names (None: not fuser)."""
    for prefix in ("module.", "aural_fuser.", "audio_prompter."):
        if key.startswith(prefix):
            key = key[len(prefix) :]
    match = re.match(r"^training_layers\.(\d+)\.(.+)$", key)
    if match:
        target = _LEGACY_TRAINING_LAYERS.get(int(match.group(1)))
        return f"{target}.{match.group(2)}" if target is not None else None
    match = re.match(r"^finetuning_layers\.0\.(.+)$", key)
    if match:
        return f"vgg.{match.group(1)}"
    for old, new in _LEGACY_FLAT:
        key = key.replace(old, new)
    return key


def _linear(value: Tensor) -> Tensor:
    """A 1×1 convolution weight ``(out, in, 1[, 1[, 1]])`` as a linear weight ``(out, in)``; others unchanged."""
    if value.ndim > 2 and all(s == 1 for s in value.shape[2:]):
        return value.reshape(value.shape[0], value.shape[1])
    return value


def _map_key(key: str, keep_vggish: bool) -> tuple[str | None, str]:
    """``(avseg key or None, reason)`` for a current released key."""
    if key.startswith(("v_model.", "t_model.")):
        return None, "SAM2 / text encoder weights (rebuilt from the preset)"
    if key.startswith("vgg."):
        if key.startswith("vgg.pproc."):
            return None, "VGGish post-processing (off)"
        if not keep_vggish:
            return None, "frozen VGGish (the preset's vggish_weights)"
        return "audio_encoder.vggish.module." + key[len("vgg.") :], ""
    if re.match(r"^(patch_embeds|smooth_convs)\.\d+\.(weight|bias)$", key):
        return "fuser." + key, ""
    match = re.match(r"^f_blocks\.(\d+)\.(\d+)\.(.+)$", key)
    if match:
        rest = match.group(3).replace("mlp.dwconv.dwconv.", "mlp.dwconv.")
        return f"fuser.visual_blocks.{match.group(1)}.{match.group(2)}.{rest}", ""
    match = re.match(r"^a_blocks\.(\d+)\.(\d+)\.(.+)$", key)
    if match:
        rest = match.group(3)
        if rest.startswith(("attn.sr.", "attn.norm.", "mlp.dwconv.")):
            return None, "built but never called in the released code"
        return f"fuser.audio_blocks.{match.group(1)}.{match.group(2)}.{rest}", ""
    match = re.match(r"^fusion_modules\.(\d+)\.([A-Za-z_0-9]+?)\.(.+)$", key)
    if match:
        name, rest = match.group(2), match.group(3)
        if name in _FUSION_UNUSED:
            return None, "built but never called in the released code"
        if name in _FUSION_NAMES:
            return f"fuser.fusion.{match.group(1)}.{_FUSION_NAMES[name]}.{rest}", ""
        return None, "unknown"
    match = re.match(r"^train_proj_(v1|a1)\.proj\.(.+)$", key)
    if match:
        head = "visual_projector" if match.group(1) == "v1" else "audio_projector"
        return f"fuser.{head}.layers.{match.group(2)}", ""
    if re.match(r"^text_proj\.\d+\.(weight|bias)$", key):
        return "fuser." + key, ""
    return None, "unknown"


def _squeezes(target: str) -> bool:
    """Whether avseg holds this released 1×1 convolution as a linear layer (fusion blocks and projectors)."""
    return target.startswith(("fuser.fusion.", "fuser.visual_projector.", "fuser.audio_projector."))


def convert_state_dict(
    state: Mapping[str, Tensor], *, keep_vggish: bool = False
) -> tuple[dict[str, Tensor], ConversionReport]:
    """Map a released AuralFuser state dict to avseg names (a pure function; see the module docstring).

    Args:
        state: the released tensors.
        keep_vggish: keep the ``vgg.*`` weights (as ``audio_encoder.vggish.module.*``).

    Returns:
        The avseg-named tensors and the report (dropped and unknown keys).
    """
    out: dict[str, Tensor] = {}
    report = ConversionReport()
    for raw, value in state.items():
        if not isinstance(value, Tensor):
            report.unknown.append(raw)
            continue
        key = _current_name(raw)
        if key is None:
            report.drop("legacy layer without a current name", raw)
            continue
        target, reason = _map_key(key, keep_vggish)
        if target is None:
            if reason == "unknown":
                report.unknown.append(raw)
            else:
                report.drop(reason, raw)
            continue
        if target in out:
            report.drop("duplicate after renaming", raw)
            continue
        out[target] = _linear(value) if _squeezes(target) else value
        report.converted += 1
    return out, report


def released_overrides(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """Config overrides that give an avseg AuralSAM2 the released structure of this (avseg-named) state dict.

    The fusion uses the released layout and affinities and the decoder hooks the released in-place update; the
    projector's depth, width, norm and input are read from its weights (Ref-AVS: ``Linear-GELU-LN-Linear`` on the
    fusion's residual branch; AVS: ``conv-BN-conv`` on the fused maps). With a text projection, expressions are
    padded and truncated to 25 tokens, as the released ``_encode_text`` does, because the released fusion reads the
    padded positions too.
    """
    overrides: dict[str, Any] = {
        "fuser.fusion_layout": "released",
        "fuser.fusion_affinity": "dot",
        "prompts.shift_query_pe": True,
    }
    if any(k.startswith("fuser.text_proj.") for k in state):
        overrides.update({"text.encoder.padding": "max_tokens", "text.encoder.max_tokens": 25})
    proj = sorted(
        int(m.group(1))
        for k in state
        if (m := re.match(r"^fuser\.visual_projector\.layers\.(\d+)\.weight$", k)) and state[k].ndim == 2
    )
    if proj:
        batch_norm = any(k.startswith("fuser.visual_projector.layers.") and "running_mean" in k for k in state)
        step = 2 if batch_norm else 3
        overrides.update(
            {
                "projector.layers": len(proj),
                "projector.dim": int(state[f"fuser.visual_projector.layers.{proj[-1]}.weight"].shape[0]),
                "projector.norm": "batch" if batch_norm else "layer",
                "projector.source": "fused" if batch_norm else "residual",
            }
        )
        if proj != list(range(0, step * (len(proj) - 1) + 1, step)):
            raise ValueError(f"unexpected projector layout: linear layers at {proj}")
    return overrides


def _guess_preset(state: Mapping[str, Tensor]) -> str:
    return "auralsam2-l-refavs" if any(k.startswith("fuser.text_proj.") for k in state) else "auralsam2-l-avs"


def converted_config(state: Mapping[str, Tensor], preset: str, *, keep_vggish: bool = False) -> Any:
    """The avseg config of a converted checkpoint: ``preset`` with :func:`released_overrides` (and, with
    ``keep_vggish``, no VGGish weights file, so that the checkpoint's VGGish tensors are the ones used)."""
    from avseg.models.registry import get_entry

    overrides = released_overrides(state)
    if get_entry(preset).config().text.encoder is None:
        # A preset without text cannot take the text settings; the text projection is then reported as unexpected.
        overrides = {k: v for k, v in overrides.items() if not k.startswith("text.")}
    config = get_entry(preset).config(**overrides)
    if keep_vggish:  # None overrides are dropped by the registry, so this one is applied directly
        config = dataclasses.replace(config, audio=dataclasses.replace(config.audio, vggish_weights=None))
    return config


class _CheckpointedPart(nn.Module):
    """What an AuralSAM2 checkpoint of a paper preset holds, under the model's attribute names: the fuser (and the
    VGGish weights when they travel with it). SAM2 and the text encoder are rebuilt from the preset's pretrained
    sources and are not checkpointed, so they are not built here (on the meta device, nothing is allocated until
    the converted tensors are assigned)."""

    def __init__(self, config: Any, *, with_vggish: bool) -> None:
        super().__init__()
        from avseg.audio.vggish import VGGish
        from avseg.models.auralsam2 import AuralSAM2
        from avseg.models.auralsam2_fuser import AuralFuser

        self.family = AuralSAM2.family
        self.config = config
        with torch.device("meta"):
            self.fuser = AuralFuser(config.fuser, config.projector)
            if with_vggish:
                self.audio_encoder = nn.Module()
                self.audio_encoder.vggish = nn.Module()
                self.audio_encoder.vggish.module = VGGish()


def convert_checkpoint(
    src: str | Path,
    dst: str | Path,
    *,
    preset: str | None = None,
    keep_vggish: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> tuple[Path, ConversionReport]:
    """Convert a released fuser checkpoint file into an avseg checkpoint folder (fuser-only, strictly checked).

    Args:
        src: the released ``.pth`` (a plain state dict; read with ``weights_only=True``).
        dst: the avseg checkpoint folder to write.
        preset: the avseg preset whose SAM2, audio and text settings to use (default: ``auralsam2-l-refavs`` when
            the file has a text projection, else ``auralsam2-l-avs``: the released code uses SAM2.0 Hiera-L).
        keep_vggish: store the file's VGGish weights in the checkpoint instead of reading the preset's VGGish file.
        overwrite: replace an existing ``dst``.
        progress: show the phases (reading, mapping, writing) on stderr.

    Raises:
        CheckpointError: unreadable file, unknown keys, or tensors that do not fit the model (missing, unexpected or
            mis-shaped keys are all listed).
    """

    src = Path(src)
    with conversion_phase(f"reading {src.name}", enabled=progress):
        raw = read_released_state(src, "AuralSAM2 checkpoint", wrappers=("state_dict",))
    with conversion_phase("mapping tensors", enabled=progress, total=len(raw), unit="tensor"):
        state, report = convert_state_dict(raw, keep_vggish=keep_vggish)
        report.refuse_unknown(src)
        name = preset or _guess_preset(state)
        config = converted_config(state, name, keep_vggish=keep_vggish)
        holder = _CheckpointedPart(config, with_vggish=keep_vggish)
        load_fitting_state(holder, state, src=src, preset=name)
    out = report.save(dst, holder, state, src=src, preset=name, overwrite=overwrite, progress=progress)
    return out, report


def convert(
    input: Path,
    output: Path,
    *,
    preset: Optional[str] = None,  # noqa: UP045 - the CLI generator reads Optional[...]
    keep_vggish: bool = False,
    overwrite: bool = False,
    quiet: bool = False,
    json: bool = False,
) -> int:
    """Convert a released AuralSAM2 fuser checkpoint (.pth) into an avseg checkpoint folder.

    Args:
        input: the authors' checkpoint, e.g. auralsam2_refavs_best.pth (a state dict of the AuralFuser).
        output: the avseg checkpoint folder to write.
        preset: avseg preset that supplies SAM2, audio and text settings (default: auralsam2-l-refavs for files with
            a text projection, auralsam2-l-avs otherwise).
        keep_vggish: store the file's VGGish weights in the checkpoint instead of using the preset's VGGish file.
        overwrite: replace an existing output folder.
        quiet: show no progress (warnings, errors and the summary are still printed).
        json: print the summary (source, destination, preset, tensors, parameters, dropped keys) as one JSON
            document on stdout instead of text.

    Returns:
        0 on success.
    """
    out, report = convert_checkpoint(
        input, output, preset=preset, keep_vggish=keep_vggish, overwrite=overwrite, progress=not quiet
    )
    report.print_summary(input, out, json=json)
    return 0
