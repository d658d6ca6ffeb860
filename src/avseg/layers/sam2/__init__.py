"""SAM2 / SAM2.1 as one layer shared by the SAM2-based methods (SAM2-LOVE, AuralSAM2, SVAC).

Built on transformers' SAM2 video model (``Sam2VideoModel``; no vendored SAM2 code, no torchvision):

* :mod:`~avseg.layers.sam2.config`: :class:`Sam2LayerConfig` (variant, weights, resolution, trainable parts) and
  :func:`tiny_sam2_config` for tests, :func:`hiera_trunk_overrides` for custom trunks;
* :mod:`~avseg.layers.sam2.decoder`: prompts (:class:`Sam2Prompt`, with custom sparse tokens), the hookable mask
  decoder (:class:`DecoderHooks`), mask selection (:func:`select_mask`);
* :mod:`~avseg.layers.sam2.memory`: SAM2's memory bank, bounded for long videos;
* :mod:`~avseg.layers.sam2.outputs`: :class:`Sam2Features` (encoded frames) and the tracking outputs;
* :mod:`~avseg.layers.sam2.layer`: :class:`Sam2Layer` (batched encoding, decoding, propagation) and
  :func:`build_sam2`.

Official checkpoints (``sam2{,.1}_hiera_*.pt``) convert with ``avseg convert sam2 IN.pt OUT_DIR``
(:mod:`avseg.convert.sam2`). ``docs/sam2.md`` documents the API, the hooks, memory use and the key map.
"""

from avseg.layers.sam2.config import (
    CPU_SAM2_WEIGHTS,
    SAM2_PARTS,
    Sam2LayerConfig,
    Sam2Variant,
    check_reading_size,
    cpu_sam2_config,
    hiera_trunk_overrides,
    tiny_sam2_config,
)
from avseg.layers.sam2.decoder import (
    NO_OBJECT_SCORE,
    DecoderHooks,
    Sam2DecoderOutput,
    Sam2Prompt,
    select_mask,
    upsample_masks,
)
from avseg.layers.sam2.layer import Sam2Layer, Sam2StepOutput, build_sam2
from avseg.layers.sam2.outputs import Sam2Features, Sam2FrameOutput, Sam2TrackOutput

__all__ = [
    "CPU_SAM2_WEIGHTS",
    "NO_OBJECT_SCORE",
    "SAM2_PARTS",
    "DecoderHooks",
    "Sam2DecoderOutput",
    "Sam2Features",
    "Sam2FrameOutput",
    "Sam2Layer",
    "Sam2LayerConfig",
    "Sam2Prompt",
    "Sam2StepOutput",
    "Sam2TrackOutput",
    "Sam2Variant",
    "build_sam2",
    "check_reading_size",
    "cpu_sam2_config",
    "hiera_trunk_overrides",
    "select_mask",
    "tiny_sam2_config",
    "upsample_masks",
]
