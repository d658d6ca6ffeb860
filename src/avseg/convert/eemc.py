"""Convert the released EEMC checkpoint (the Ref-AVS baseline) to an avseg checkpoint (``avseg convert eemc IN OUT``).

The release (``GeWu-Lab/Ref-AVS``, the checkpoint its README links) is the file ``run_refavs.py`` writes with
``torch.save(model.state_dict(), f"{args.save_ckpt}/ckpt_best_miou.pth")``: the state dict of ``REFAVS_Model_Base``
(``models/avs_model.py``), whose Mask2Former sits under ``model_v.`` (``Mask2FormerForRefAVS``, transformers 4.30).
It is read with ``torch.load(weights_only=True)`` only (a ``.safetensors`` file of the same keys is read as such).

The released training changes only the parameters named by ``--train_params`` (``audio_proj``, ``text_proj``,
``prompt_proj``, ``avs_adapt``, ``ref_avs_attn``); the rest of the Mask2Former is the frozen
``facebook/mask2former-swin-base-ade-semantic``, which avseg rebuilds from ``mask2former.weights`` and leaves out of
checkpoints, as for any pretrained EEMC. The three attentions are frozen too, but at a random initialisation that
nothing else could rebuild: they are converted.

Key map (released → avseg; ``PD = mask2former.model.model.pixel_level_module.decoder.encoder.layers``, ``TM =
mask2former.model.model.transformer_module``):

========================================================================  ============================================
released                                                                  avseg
========================================================================  ============================================
``audio_proj.{0,2}.*``, ``text_proj.{0,2}.*``, ``prompt_proj.{0,2}.*``    ``fusion.{audio,text,prompt}_proj.{0,2}.*``
``mha_A_T.*``, ``mha_V_T.*``, ``mha_mm.*`` (``in_proj_weight``,          ``fusion.attn_audio_text.*``,
``in_proj_bias``, ``out_proj.{weight,bias}``)                             ``fusion.attn_visual_text.*``,
                                                                          ``fusion.attn_multimodal.*``
``model_v.model.pixel_level_module.decoder.encoder.layers.{i}.``          ``PD.{i}.self_attn.avs_adapt.{0,2}.*``
``self_attn.avs_adapt.{0,2}.*``
``model_v.model.transformer_module.ref_avs_attn.``                        ``TM.ref_avs_attn.{q,k,v,out}_proj.*``
``{query,key,value}_embedding.*`` / ``out_projection.*``
``model_v.model.transformer_module.ref_avs_attn.beta_source_attn``        ``TM.ref_avs_attn.attn_gate``
``model_v.model.transformer_module.ref_avs_attn.beta_source_pool``        ``TM.ref_avs_attn.pool_gate``
``model_v.*`` (the rest: Swin, pixel decoder, transformer decoder,        dropped (rebuilt from ``mask2former.weights``)
classifier, ``criterion.empty_weight``)
========================================================================  ============================================

**Config.** The preset's, built with its pretrained sources (``pretrained = True``), the released trainable parts,
VGGish audio (``audio.vggish_weights``, the preset's or ``vggish-10086976.pth``) and the released token layout
(``fusion.token_layout = "released"``: the weights were trained on it). The text encoder is the preset's: the
release's DistilRoBERTa for ``eemc-refavs``. A released key with no avseg name, or an avseg weight that no released
key fills, is an error that names it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from avseg.convert import ConversionReport, conversion_phase, converter_preset, load_fitting_state, read_released_state
from avseg.errors import UsageError

__all__ = ["convert", "convert_checkpoint", "convert_state_dict", "load_released", "released_overrides"]

VGGISH_WEIGHTS = "vggish-10086976.pth"
FROZEN_MASK2FORMER = "frozen Mask2Former (rebuilt from mask2former.weights)"

_P = r"(weight|bias)"
_ADAPT = r"model_v\.model\.pixel_level_module\.decoder\.encoder\.layers\.(\d+)\.self_attn\.avs_adapt\.([02])\."
_QUERY = r"model_v\.model\.transformer_module\.ref_avs_attn\."
_AVSEG_ADAPT = "mask2former.model.model.pixel_level_module.decoder.encoder.layers.{}.self_attn.avs_adapt.{}.{}"
_AVSEG_QUERY = "mask2former.model.model.transformer_module.ref_avs_attn."
_PROJ = {
    "query_embedding": "q_proj",
    "key_embedding": "k_proj",
    "value_embedding": "v_proj",
    "out_projection": "out_proj",
}
_ATTN = {"mha_A_T": "attn_audio_text", "mha_V_T": "attn_visual_text", "mha_mm": "attn_multimodal"}

KEY_RULES: tuple[tuple[re.Pattern[str], Any], ...] = (
    (re.compile(rf"(audio_proj|text_proj|prompt_proj)\.([02])\.{_P}"), lambda m: f"fusion.{m[1]}.{m[2]}.{m[3]}"),
    (
        re.compile(r"(mha_A_T|mha_V_T|mha_mm)\.(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)"),
        lambda m: f"fusion.{_ATTN[m[1]]}.{m[2]}",
    ),
    (re.compile(rf"{_ADAPT}{_P}"), lambda m: _AVSEG_ADAPT.format(m[1], m[2], m[3])),
    (
        re.compile(rf"{_QUERY}(query_embedding|key_embedding|value_embedding|out_projection)\.{_P}"),
        lambda m: f"{_AVSEG_QUERY}{_PROJ[m[1]]}.{m[2]}",
    ),
    (re.compile(rf"{_QUERY}beta_source_attn"), lambda m: f"{_AVSEG_QUERY}attn_gate"),
    (re.compile(rf"{_QUERY}beta_source_pool"), lambda m: f"{_AVSEG_QUERY}pool_gate"),
)
"""``(released regex, avseg name)`` rules; the first that matches the whole key applies."""


def convert_state_dict(released: Mapping[str, Any]) -> tuple[dict[str, Tensor], ConversionReport]:
    """Map a released EEMC state dict to avseg names (a pure function; see the module docstring).

    Returns:
        The avseg-named tensors and the report (``dropped``: the frozen Mask2Former keys; ``unknown``: keys with no
        avseg name, non-tensors included).
    """
    out: dict[str, Tensor] = {}
    report = ConversionReport()
    for key, value in released.items():
        if not isinstance(value, Tensor):
            report.unknown.append(key)
            continue
        target = next((rule(m) for pattern, rule in KEY_RULES if (m := pattern.fullmatch(key))), None)
        if target is not None:
            out[target] = value
            report.converted += 1
        elif key.startswith("model_v."):
            report.drop(FROZEN_MASK2FORMER, key)
        else:
            report.unknown.append(key)
    return out, report


def released_overrides(preset: Any, mask2former: str | None = None) -> dict[str, Any]:
    """avseg config overrides that make the preset ``preset`` (an ``EEMCConfig``) hold a converted release: pretrained
    sources (the frozen Mask2Former from ``mask2former`` or the preset's ``mask2former.weights``), the released
    trainable parts, VGGish audio and the released token layout.

    Raises:
        UsageError: no source for the frozen Mask2Former.
    """
    from avseg.models.eemc import RELEASED_TRAINABLE

    weights = mask2former if mask2former is not None else preset.mask2former.weights
    if weights is None:
        raise UsageError(
            "--mask2former: the frozen Mask2Former has no source (the preset names none); pass the hub id or folder "
            "the release was trained from (facebook/mask2former-swin-base-ade-semantic)"
        )
    return {
        "pretrained": True,
        "mask2former.weights": str(weights),
        "trainable": list(RELEASED_TRAINABLE),
        "audio.encoder": "vggish",
        "audio.two_channel": False,
        "audio.vggish_weights": preset.audio.vggish_weights or VGGISH_WEIGHTS,
        "fusion.token_layout": "released",
    }


def load_released(path: str | Path) -> dict[str, Any]:
    """Read the released file: ``.safetensors``, or a ``torch.save`` pickle read with ``torch.load(weights_only=True)``.

    Raises:
        MissingFileError: no such file.
        CheckpointError: a file that cannot be read that way, or that holds no state dict.
    """
    return read_released_state(path, "released EEMC checkpoint (.pth)")


class _CheckpointedPart(nn.Module):
    """What a converted EEMC checkpoint holds, under :class:`~avseg.models.eemc.EEMC`'s attribute names: the fusion
    and the Mask2Former's trained seams (the frozen Mask2Former, the text encoder and VGGish come from their
    sources). Built on the meta device: names and shapes only."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        from avseg.layers.text import TextEncoder
        from avseg.models.eemc import EEMC, CueFusion, PromptedMask2Former, trains

        self.family = EEMC.family
        self.config = config
        with torch.device("meta"):
            self.mask2former = PromptedMask2Former(
                config.mask2former,
                pretrained=False,
                trains=lambda name: trains(f"mask2former.{name}", config.trainable),
            )
            text_dim = TextEncoder(config.text.encoder, pretrained=False).hidden_size
            self.fusion = CueFusion(
                config.fusion, audio_dim=config.audio.dim, text_dim=text_dim, prompt_dim=self.mask2former.hidden_size
            )
        self.mask2former.leave_out_frozen()


def convert_checkpoint(
    src: str | Path,
    dst: str | Path,
    *,
    preset: str = "eemc-refavs",
    mask2former: str | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> tuple[Path, ConversionReport]:
    """Convert the released EEMC file into an avseg checkpoint folder (every key checked, strictly).

    Args:
        src: the released ``.pth`` (or a ``.safetensors`` file of the same keys).
        dst: the avseg checkpoint folder to write.
        preset: the avseg ``eemc`` preset whose shape, text encoder, loss and recipe to keep.
        mask2former: hub id or folder of the frozen Mask2Former (None: the preset's ``mask2former.weights``).
        overwrite: replace an existing ``dst``.
        progress: show the phases on stderr.

    Raises:
        CheckpointError: released keys with no avseg name, or tensors that do not fit the model (missing,
            unexpected or mis-shaped keys are named).
    """
    src, dst = Path(src), Path(dst)
    entry = converter_preset(preset, family="eemc", method="an EEMC", dst=dst, overwrite=overwrite)
    config = entry.config(**released_overrides(entry.config(), mask2former))
    with conversion_phase(f"reading {src.name}", enabled=progress):
        released = load_released(src)
    with conversion_phase("mapping tensors", enabled=progress, total=len(released), unit="tensor"):
        state, report = convert_state_dict(released)
        report.refuse_unknown(src)
        holder = _CheckpointedPart(config)
        load_fitting_state(holder, state, src=src, preset=preset, hint="see --preset")
    out = report.save(dst, holder, state, src=src, preset=preset, overwrite=overwrite, progress=progress)
    return out, report


def convert(
    input: Path,
    output: Path,
    *,
    preset: str = "eemc-refavs",
    mask2former: str | None = None,
    overwrite: bool = False,
    quiet: bool = False,
    json: bool = False,
) -> int:
    """Convert the released EEMC checkpoint (.pth) into an avseg checkpoint folder.

    Args:
        input: the authors' checkpoint, the state dict run_refavs.py saves (read with torch.load(weights_only=True)),
            or a .safetensors file of the same keys.
        output: the avseg checkpoint folder to write.
        preset: avseg EEMC preset that supplies the shape, text encoder and training settings.
        mask2former: hub id or folder of the frozen Mask2Former the release was trained from (default: the preset's,
            facebook/mask2former-swin-base-ade-semantic); read when the converted model is loaded.
        overwrite: replace an existing output folder.
        quiet: show no progress (warnings, errors and the summary are still printed).
        json: print the summary (source, destination, preset, tensors, parameters, dropped keys) as one JSON
            document on stdout instead of text.

    Returns:
        0 on success.
    """
    out, report = convert_checkpoint(
        input, output, preset=preset, mask2former=mask2former, overwrite=overwrite, progress=not quiet
    )
    report.print_summary(input, out, json=json)
    return 0
