"""The SAM2 layer: batched frame encoding, hookable mask decoding and memory propagation over transformers' SAM2.

:class:`Sam2Layer` holds a transformers ``Sam2VideoModel`` (``layer.model``) and uses its submodules directly. It
replaces transformers' video API (an inference session, one frame and one object per call, under
``torch.inference_mode``) by the calls the SAM2-based methods need:

* :meth:`Sam2Layer.encode_frames`: all frames of a batch of clips through the image encoder in one call (or a few
  chunks), returning the FPN levels at strides 4, 8 and 16 and their position encodings (:class:`Sam2Features`).
* :meth:`Sam2Layer.decode`: the prompt encoder and mask decoder on ``B`` frames, with custom sparse prompt tokens and
  residual hooks (see :mod:`avseg.layers.sam2.decoder`).
* :meth:`Sam2Layer.propagate` / :meth:`Sam2Layer.propagate_iter`: SAM2's memory tracking through a clip from any set
  of conditioning frames, ``B`` tracks at once, differentiable when gradients are enabled, with a memory bank that
  keeps only what SAM2 can still read (:mod:`avseg.layers.sam2.memory`).
* :meth:`Sam2Layer.track_step` / :meth:`Sam2Layer.remember` (with :meth:`Sam2Layer.memory_bank`): the per-frame
  step that ``propagate`` loops over, public for callers that prompt frames as they go (corrective clicks on a
  tracked frame, SAM2's training loop).

The per-frame tracking step follows transformers' ``Sam2VideoModel`` (``_run_single_frame_inference``,
``_prepare_memory_conditioned_features``, ``_single_frame_forward``, ``_encode_new_memory``), which follows upstream
``SAM2Base``; ``tests/layers/test_sam2.py`` checks that plain point prompts give transformers' own video propagation
(max abs difference 1e-5). Differences, all deliberate:

* transformers' video path runs one object and batch size 1; here ``B`` tracks share each call.
* Memory features are stored in ``memory_dtype`` (bfloat16 like transformers and SAM2's predictor, or float32 like
  SAM2's training code).
* The object pointer of a mask-prompted frame is decoded with a single mask output, as upstream SAM2 does
  (transformers uses multimask output there).
* Train/eval switches (object pointers of future conditioning frames, mask binarisation for memory, dropout) follow
  whether the memory part is in training mode, i.e. ``layer.training and "memory" in config.trainable``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avseg.errors import CheckpointError, ShapeError, UsageError
from avseg.layers.frozen import leave_out_frozen_keys
from avseg.layers.sam2.config import SAM2_PARTS, Sam2LayerConfig, hf_video_config_kwargs, merge_dicts
from avseg.layers.sam2.decoder import (
    NO_OBJECT_SCORE,
    DecoderHooks,
    Sam2DecoderOutput,
    Sam2Prompt,
    choose_outputs,
    run_mask_decoder,
)
from avseg.layers.sam2.memory import FrameMemory, MemoryBank, last_reads
from avseg.layers.sam2.outputs import Sam2Features, Sam2FrameOutput, Sam2TrackOutput

if TYPE_CHECKING:
    from transformers import Sam2VideoModel

__all__ = ["Sam2Layer", "Sam2StepOutput", "build_sam2"]

FrameLoader = Callable[[list[int]], Tensor]
"""``indices -> (B, len(indices), 3, S, S)`` normalised frames, for videos too long to hold in memory."""
HookSource = Sequence["DecoderHooks | None"] | Callable[[int], "DecoderHooks | None"]


@dataclass
class Sam2StepOutput(Sam2FrameOutput):
    """One decoder pass of :meth:`Sam2Layer.track_step` on one frame of ``B`` tracks: the frame's output (the fields
    of :class:`Sam2FrameOutput`) and what a corrective pass, SAM2's loss and :meth:`Sam2Layer.remember` read.

    Attributes:
        mask_logits: ``(B, M, S/4, S/4)`` the pass's candidate masks as SAM2 outputs them (``M`` = 3 with multimask
            output, else 1), set to -1024 where the object score is negative; a mask prompt's mask (``M`` = 1).
        iou_pred: ``(B, M)`` their predicted IoUs (1 for a mask prompt).
        image_embeddings: ``(B, C, S/16, S/16)`` the features the pass decoded from (memory-conditioned, or with
            SAM2's no-memory embedding on a conditioning frame); None for a mask prompt.
        prompted: the frame was prompted with clicks, a box or a mask (SAM2 then binarises, in eval mode, the mask
            it stores in memory).
        prompt_masks: ``(B, 1, S, S)`` a mask prompt as logits ±10 at the input size, which the memory encoder reads
            instead of the upsampled ``masks``; None otherwise.
    """

    mask_logits: Tensor
    iou_pred: Tensor
    image_embeddings: Tensor | None
    prompted: bool
    prompt_masks: Tensor | None = None

    def frame_output(self) -> Sam2FrameOutput:
        """The frame's output alone, without the tensors only a further pass or the memory encoder needs."""
        return Sam2FrameOutput(**{f.name: getattr(self, f.name) for f in fields(Sam2FrameOutput)})


class _FeatureSource:
    """Features of frame ``t`` for all ``B`` tracks, computed chunk by chunk in processing order and then dropped."""

    def __init__(
        self,
        layer: Sam2Layer,
        *,
        frames: Tensor | FrameLoader | None,
        features: Sam2Features | None,
        batch: int,
        num_frames: int,
        order: list[int],
        chunk_size: int,
    ) -> None:
        self.layer, self.frames, self.features = layer, frames, features
        self.batch, self.num_frames, self.order, self.chunk_size = batch, num_frames, order, chunk_size
        self.position = {frame: i for i, frame in enumerate(order)}
        self.cache: dict[int, Sam2Features] = {}

    def get(self, frame: int) -> Sam2Features:
        if self.features is not None:  # b-major: track b, frame t at b*T + t
            return self.features.select([b * self.num_frames + frame for b in range(self.batch)])
        if frame not in self.cache:
            start = self.position[frame]
            chunk = self.order[start : start + self.chunk_size]
            if callable(self.frames) and not isinstance(self.frames, Tensor):
                pixels = self.frames(list(chunk))
            else:
                pixels = self.frames[:, chunk]  # type: ignore[index]
            if pixels.ndim != 5 or pixels.shape[:2] != (self.batch, len(chunk)):
                raise ShapeError(
                    f"frames for indices {chunk} must be (B={self.batch}, {len(chunk)}, 3, S, S), "
                    f"got {tuple(pixels.shape)}"
                )
            encoded = self.layer.encode_frames(pixels.flatten(0, 1))  # (B*n, …), b-major
            for j, t in enumerate(chunk):
                self.cache[t] = encoded.select([b * len(chunk) + j for b in range(self.batch)])
        return self.cache.pop(frame)


class Sam2Layer(nn.Module):
    """SAM2 / SAM2.1 as a layer: encode frames, decode prompts with hooks, propagate through memory.

    Build it with :func:`build_sam2`. Shapes: ``B`` tracks, ``T`` frames, ``S`` = ``image_size``, ``C`` =
    ``hidden_size``.

    Args:
        model: a transformers ``Sam2VideoModel``.
        config: the layer config (frozen parts, memory dtype, checkpointing).
    """

    def __init__(self, model: Sam2VideoModel, config: Sam2LayerConfig) -> None:
        super().__init__()
        self.model = model
        self.config = config
        hf = model.config
        self.image_size: int = int(hf.image_size)
        self.hidden_size: int = int(hf.vision_config.fpn_hidden_size)
        self.feature_sizes = tuple((self.image_size // s, self.image_size // s) for s in (4, 8, 16))
        self.num_mask_tokens: int = model.mask_decoder.num_mask_tokens
        self.num_multimask_outputs: int = model.mask_decoder.num_multimask_outputs
        self.decoder_depth: int = len(model.mask_decoder.transformer.layers)
        self.num_hook_points: int = self.decoder_depth + 1
        for part in SAM2_PARTS:
            if part not in config.trainable:
                for module in self._part_modules(part):
                    module.requires_grad_(False)
        if not config.in_checkpoint:
            names = self.model.state_dict(keep_vars=True)
            leave_out_frozen_keys(self, [name for name in names if self._part_of(name) not in config.trainable])
        self.train(False)

    # -- parts ---------------------------------------------------------------------------------------------------

    def _part_modules(self, part: str) -> list[nn.Module]:
        m = self.model
        if part == "image_encoder":
            return [m.vision_encoder]
        if part == "prompt_encoder":
            return [m.prompt_encoder, m.shared_image_embedding]
        if part == "mask_decoder":
            return [m.mask_decoder]
        loose = nn.ParameterList(
            [
                p
                for p in (
                    m.no_memory_embedding,
                    m.no_memory_positional_encoding,
                    m.memory_temporal_positional_encoding,
                    m.no_object_pointer,
                    m.occlusion_spatial_embedding_parameter,
                )
                if p is not None
            ]
        )
        return [
            m.memory_attention,
            m.memory_encoder,
            m.object_pointer_proj,
            m.temporal_positional_encoding_projection_layer,
            m.mask_downsample,
            loose,
        ]

    @staticmethod
    def _part_of(name: str) -> str:
        """The part (of ``SAM2_PARTS``) a transformers state-dict key belongs to."""
        head = name.split(".")[0]
        if head == "vision_encoder":
            return "image_encoder"
        if head in ("prompt_encoder", "shared_image_embedding"):
            return "prompt_encoder"
        if head == "mask_decoder":
            return "mask_decoder"
        return "memory"

    def train(self, mode: bool = True) -> Sam2Layer:
        """Set training mode; frozen parts stay in eval mode (no dropout, SAM2's inference switches)."""
        self.training = mode
        self.model.training = mode and "memory" in self.config.trainable
        for part in SAM2_PARTS:
            for module in self._part_modules(part):
                module.train(mode and part in self.config.trainable)
        return self

    @property
    def own_lr(self) -> float | None:
        """The trainable parts' learning rate (``config.lr``; None: the recipe's), which the models' parameter
        groups apply (:meth:`avseg.models.base.AVSModel.own_learning_rates`)."""
        return self.config.lr

    @property
    def memory_training(self) -> bool:
        """Whether the memory runs in training mode (dropout, all conditioning pointers, soft memory masks)."""
        return self.training and "memory" in self.config.trainable

    # -- encoding ------------------------------------------------------------------------------------------------

    def resize(self, frames: Tensor) -> Tensor:
        """Resize normalised ``(N, 3, H, W)`` frames to the model input ``(N, 3, S, S)`` (bilinear, antialiased)."""
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ShapeError(f"frames must be (N, 3, H, W), got {tuple(frames.shape)}")
        if frames.shape[-2:] == (self.image_size, self.image_size):
            return frames
        size = (self.image_size, self.image_size)
        return F.interpolate(frames.float(), size=size, mode="bilinear", align_corners=False, antialias=True)

    def encode_frames(self, pixel_values: Tensor, *, chunk_size: int | None = None) -> Sam2Features:
        """Run the image encoder on ``N`` frames at once.

        Args:
            pixel_values: ``(N, 3, S, S)`` ImageNet-normalised frames (other sizes are resized); for clips, ``N =
                B*T`` in b-major order.
            chunk_size: encode at most this many frames per call (None: all in one call).

        Returns:
            The FPN levels at strides 4, 8, 16 and their position encodings. A frozen encoder runs without
            gradients.
        """
        pixel_values = self.resize(pixel_values)
        chunks = [pixel_values] if not chunk_size else list(pixel_values.split(chunk_size))
        trainable = "image_encoder" in self.config.trainable
        fpn_parts: list[list[Tensor]] = [[], [], []]
        pos: tuple[Tensor, ...] = ()
        with torch.set_grad_enabled(torch.is_grad_enabled() and trainable):
            for chunk in chunks:
                out = self.model.vision_encoder(chunk, return_dict=True)
                for level, feature in enumerate(out.fpn_hidden_states):  # strides 4, 8, 16
                    fpn_parts[level].append(feature)
                pos = tuple(p[:1] for p in out.fpn_position_encoding)
        fpn = tuple(torch.cat(parts) if len(parts) > 1 else parts[0] for parts in fpn_parts)
        count = pixel_values.shape[0]
        return Sam2Features(
            fpn=fpn,  # type: ignore[arg-type]
            pos=tuple(p.expand(count, *p.shape[1:]) for p in pos),  # type: ignore[arg-type]
        )

    # -- decoding ------------------------------------------------------------------------------------------------

    def _embed_prompt(
        self, prompt: Sam2Prompt | None, batch: int, reference: Tensor, *, dense_masks: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """SAM's prompt encoder: ``sparse (B, 1, n, C)`` and ``dense (B, C, h, w)`` embeddings."""
        if prompt is not None and prompt.batch_size not in (None, batch):
            raise ShapeError(f"prompt batch size {prompt.batch_size} does not match {batch} frames")
        device = reference.device
        clicks = prompt.click_inputs() if prompt is not None else None
        if clicks is None:  # SAM2 pads with one empty point (label -1)
            coords = torch.zeros(batch, 1, 1, 2, dtype=reference.dtype, device=device)
            labels = -torch.ones(batch, 1, 1, dtype=torch.int32, device=device)
        else:
            coords, labels = clicks[0][:, None].to(device), clicks[1][:, None].to(device)  # (B, 1, P, 2), (B, 1, P)
        encoder = self.model.prompt_encoder
        if dense_masks is not None and dense_masks.shape[-2:] != encoder.mask_input_size:
            dense_masks = F.interpolate(
                dense_masks.float(), size=encoder.mask_input_size, mode="bilinear", align_corners=False, antialias=True
            )
        sparse, dense = encoder(input_points=coords, input_labels=labels, input_boxes=None, input_masks=dense_masks)
        if prompt is not None and prompt.sparse_embeddings is not None:
            custom = prompt.sparse_embeddings[:, None].to(device=device, dtype=sparse.dtype)  # (B, 1, N, C)
            if custom.shape[-1] != self.hidden_size:
                raise ShapeError(f"sparse_embeddings must have {self.hidden_size} channels, got {custom.shape[-1]}")
            sparse = custom if prompt.sparse_mode == "replace" else torch.cat([sparse, custom], dim=2)
        return sparse, dense

    def _run_decoder(
        self,
        features: Sam2Features,
        image_embeddings: Tensor,
        prompt: Sam2Prompt | None,
        hooks: DecoderHooks | None,
        *,
        dense_masks: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """All ``K`` decoder outputs for ``B`` frames (see :func:`run_mask_decoder`)."""
        batch = image_embeddings.shape[0]
        decoder = self.model.mask_decoder
        sparse, dense = self._embed_prompt(prompt, batch, image_embeddings, dense_masks=dense_masks)
        image_pe = self.model.get_image_wide_positional_embeddings()  # (1, C, h, w)
        return run_mask_decoder(
            decoder,
            image_embeddings=image_embeddings,
            image_positional_embeddings=image_pe.expand(batch, -1, -1, -1),
            sparse_embeddings=sparse,
            dense_embeddings=dense,
            high_resolution_features=(decoder.conv_s0(features.fpn[0]), decoder.conv_s1(features.fpn[1])),
            hooks=hooks,
        )

    def decode(
        self,
        features: Sam2Features,
        prompt: Sam2Prompt | None = None,
        *,
        image_embeddings: Tensor | None = None,
        hooks: DecoderHooks | None = None,
        multimask_output: bool = True,
    ) -> Sam2DecoderOutput:
        """Decode masks on ``B`` frames (one per prompt), as SAM2's image predictor does.

        Args:
            features: the frames' features (``N = B``).
            prompt: clicks, boxes, a dense mask prompt and/or custom sparse tokens for the ``B`` frames.
            image_embeddings: ``(B, C, S/16, S/16)`` features to decode from, e.g. memory-conditioned ones; default:
                the stride-16 level plus SAM2's no-memory embedding (single-image mode).
            hooks: residuals added inside the two-way transformer.
            multimask_output: three masks (True) or one (False; in eval mode SAM2 falls back to the best of the
                three when the single mask is unstable).

        Returns:
            Raw decoder outputs (no object-score suppression).
        """
        if image_embeddings is None:
            image_embeddings = features.fpn[2] + self.model.no_memory_embedding.view(1, -1, 1, 1)
        if image_embeddings.shape[0] != features.num_frames:
            raise ShapeError(f"image_embeddings batch {image_embeddings.shape[0]} != {features.num_frames} frames")
        dense_masks = prompt.masks.float() if prompt is not None and prompt.masks is not None else None
        masks, iou, scores, tokens = self._run_decoder(
            features, image_embeddings, prompt, hooks, dense_masks=dense_masks
        )
        masks, iou, tokens = choose_outputs(
            self.model.mask_decoder, masks, iou, tokens, multimask_output=multimask_output
        )
        return Sam2DecoderOutput(mask_logits=masks, iou_pred=iou, object_score_logits=scores, mask_tokens=tokens)

    # -- one tracking step ---------------------------------------------------------------------------------------

    def _pointer(self, token: Tensor, is_object: Tensor) -> Tensor:
        """Object pointer ``(B, C)`` from a decoder output token, replaced by the no-object pointer when absent."""
        pointer = self.model.object_pointer_proj(token)
        present = is_object.to(pointer.dtype)  # (B, 1)
        return present * pointer + (1 - present) * self.model.no_object_pointer

    def _sam_heads(
        self,
        features: Sam2Features,
        pix: Tensor,
        prompt: Sam2Prompt | None,
        hooks: DecoderHooks | None,
        *,
        multimask_output: bool,
        dense_masks: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """transformers' ``_single_frame_forward`` on given features: masks, tracked mask, pointer."""
        masks_all, iou_all, scores, tokens_all = self._run_decoder(
            features, pix, prompt, hooks, dense_masks=dense_masks
        )
        masks, iou, tokens = choose_outputs(
            self.model.mask_decoder, masks_all, iou_all, tokens_all, multimask_output=multimask_output
        )
        is_object = scores > 0  # (B, 1)
        absent = ~is_object[:, :, None, None]
        masks = torch.where(absent, NO_OBJECT_SCORE, masks)  # SAM2: a hard object / no-object choice
        rows = torch.arange(masks.shape[0], device=masks.device)
        if multimask_output:
            best = iou.argmax(dim=-1)  # (B,)
            tracked, token = masks[rows, best].unsqueeze(1), tokens[rows, best]
        else:
            tracked, token = masks, tokens[:, 0]
        return {
            "masks": tracked,  # (B, 1, S/4, S/4)
            "mask_logits": masks,  # (B, M, S/4, S/4)
            "iou_pred": iou,  # (B, M)
            "multimask_logits": torch.where(absent, NO_OBJECT_SCORE, masks_all[:, 1:]),  # (B, 3, S/4, S/4)
            "multimask_iou": iou_all[:, 1:],  # (B, 3)
            "object_score_logits": scores,  # (B, 1)
            "object_pointer": self._pointer(token, is_object),  # (B, C)
        }

    def _mask_as_output(self, features: Sam2Features, masks: Tensor) -> dict[str, Tensor]:
        """A mask prompt becomes the frame's output (SAM2's ``_use_mask_as_output``): logits ±10, IoU 1, and a
        pointer decoded from the mask."""
        size = (self.image_size, self.image_size)
        masks = masks.float()
        if masks.shape[-2:] != size:  # as transformers' processor: resize, then binarise
            masks = F.interpolate(masks, size=size, mode="bilinear", align_corners=False, antialias=True) >= 0.5
            masks = masks.float()
        high = masks * 20.0 - 10.0  # (B, 1, S, S)
        low = F.interpolate(
            high, size=self.model.prompt_encoder.mask_input_size, mode="bilinear", align_corners=False, antialias=True
        )
        decoded = self._sam_heads(
            features,
            features.fpn[2],  # the raw stride-16 level, as upstream (no no-memory embedding)
            None,
            None,
            multimask_output=False,
            dense_masks=self.model.mask_downsample(masks),
        )
        is_object = masks.flatten(1).gt(0).any(dim=1, keepdim=True)  # (B, 1)
        present = is_object.to(high.dtype)
        pointer = present * decoded["object_pointer"] + (1 - present) * self.model.no_object_pointer
        batch = masks.shape[0]
        return {
            "masks": low,
            "mask_logits": low,
            "iou_pred": low.new_ones(batch, 1),
            "multimask_logits": low.expand(batch, self.num_multimask_outputs, *low.shape[-2:]),
            "multimask_iou": low.new_ones(batch, self.num_multimask_outputs),
            "object_score_logits": 20.0 * present - 10.0,
            "object_pointer": pointer,
            "high_res_masks": high,
        }

    def _condition_on_memory(self, features: Sam2Features, bank: MemoryBank, frame: int, *, reverse: bool) -> Tensor:
        """Memory attention of the stride-16 features to the bank: ``(B, C, h, w)``."""
        fpn, pos = features.fpn[2], features.pos[2]
        batch, channels, height, width = fpn.shape
        model = self.model
        memories: list[Tensor] = []
        memory_pos: list[Tensor] = []
        for offset, memory in bank.memories(frame, reverse=reverse):
            memories.append(memory.features.to(fpn.dtype))
            memory_pos.append(memory.pos + model.memory_temporal_positional_encoding[offset - 1])
        offsets, pointers = bank.pointers(frame, reverse=reverse, only_past_cond=not self.memory_training)
        num_pointer_tokens = 0
        if pointers:
            mem_dim = model.mem_dim
            stacked = torch.stack(pointers, dim=0)  # (P, B, C)
            if model.config.enable_temporal_pos_encoding_for_object_pointers:
                diffs = torch.tensor(offsets, device=fpn.device, dtype=torch.float32)
                sine = _sine_1d(diffs / float(bank.max_object_pointers - 1), channels).to(stacked.dtype)
                pointer_pos = model.temporal_positional_encoding_projection_layer(sine)  # (P, mem_dim)
                pointer_pos = pointer_pos.unsqueeze(1).expand(-1, batch, mem_dim)
            else:
                pointer_pos = stacked.new_zeros(len(offsets), batch, mem_dim)
            if mem_dim < channels:  # a C-d pointer becomes C/mem_dim memory tokens
                splits = channels // mem_dim
                stacked = stacked.reshape(-1, batch, splits, mem_dim).permute(0, 2, 1, 3).flatten(0, 1)
                pointer_pos = pointer_pos.repeat_interleave(splits, dim=0)
            memories.append(stacked)
            memory_pos.append(pointer_pos)
            num_pointer_tokens = stacked.shape[0]
        conditioned = model.memory_attention(
            current_vision_features=fpn.flatten(2).permute(2, 0, 1),  # (h*w, B, C)
            memory=torch.cat(memories, dim=0),  # (M, B, mem_dim)
            current_vision_position_embeddings=pos.flatten(2).permute(2, 0, 1),
            memory_posision_embeddings=torch.cat(memory_pos, dim=0),
            num_object_pointer_tokens=num_pointer_tokens,
        )  # (1, B, h*w, C)
        return conditioned[0].transpose(1, 2).reshape(batch, channels, height, width)

    def _encode_memory(
        self, features: Sam2Features, high_res_masks: Tensor, scores: Tensor, *, binarize: bool
    ) -> tuple[Tensor, Tensor]:
        """The memory encoder on the frame's raw stride-16 features and its tracked mask ``(B, 1, S, S)``."""
        model, config = self.model, self.model.config
        size = tuple(4 * s for s in model.prompt_encoder.mask_input_size)
        if high_res_masks.shape[-2:] != size:
            high_res_masks = F.interpolate(
                high_res_masks.float(), size=size, mode="bilinear", align_corners=False, antialias=True
            )
        if binarize:
            mask = (high_res_masks > 0).to(high_res_masks.dtype)
        else:
            mask = torch.sigmoid(high_res_masks)
        mask = mask * config.sigmoid_scale_for_mem_enc + config.sigmoid_bias_for_mem_enc
        memory, memory_pos = model.memory_encoder(features.fpn[2], mask)  # (B, 64, h, w) each
        if model.occlusion_spatial_embedding_parameter is not None:  # SAM2.1: mark frames without the object
            absent = 1 - (scores > 0).float()  # (B, 1)
            memory = memory + absent[..., None, None] * model.occlusion_spatial_embedding_parameter[..., None, None]
        dtype = torch.bfloat16 if self.config.memory_dtype == "bfloat16" else memory.dtype
        memory = memory.to(dtype).flatten(2).permute(2, 0, 1)  # (h*w, B, 64)
        memory_pos = memory_pos.to(high_res_masks.dtype).flatten(2).permute(2, 0, 1)
        return memory, memory_pos

    def _use_multimask(self, is_conditioning: bool, prompt: Sam2Prompt | None) -> bool:
        """SAM2's rule: multimask output for 0-1 clicks, on conditioning frames and (by config) tracked frames."""
        config = self.model.config
        clicks = prompt.num_clicks if prompt is not None else 0
        return bool(
            config.multimask_output_in_sam
            and (is_conditioning or config.multimask_output_for_tracking)
            and config.multimask_min_pt_num <= clicks <= config.multimask_max_pt_num
        )

    def memory_bank(self, num_frames: int) -> MemoryBank:
        """An empty memory bank for ``B`` tracks through a ``num_frames``-frame video, sized as SAM2 sizes it
        (``num_maskmem`` memories, ``min(num_frames, max_object_pointers_in_encoder)`` pointers, the closest
        ``max_cond_frame_num`` conditioning frames)."""
        if num_frames < 1:
            raise UsageError(f"num_frames must be >= 1, got {num_frames}")
        config = self.model.config
        return MemoryBank(
            num_maskmem=config.num_maskmem,
            max_object_pointers=min(num_frames, config.max_object_pointers_in_encoder),
            max_cond_frames=config.max_cond_frame_num,
        )

    def track_step(
        self,
        features: Sam2Features,
        bank: MemoryBank,
        frame: int,
        *,
        prompt: Sam2Prompt | None = None,
        conditioning: bool = False,
        previous_masks: Tensor | None = None,
        image_embeddings: Tensor | None = None,
        reverse: bool = False,
        hooks: DecoderHooks | None = None,
        multimask_output: bool | None = None,
    ) -> Sam2StepOutput:
        """One decoder pass on one frame of ``B`` tracks, as SAM2's ``track_step`` (the memory is not updated: see
        :meth:`remember`).

        A conditioning frame is decoded from its prompt alone (SAM2's no-memory embedding); any other frame from
        its features conditioned on ``bank`` by memory attention, with or without a prompt. Corrective clicks on a
        frame already decoded are a second pass with all the clicks so far, the first pass's ``masks`` as
        ``previous_masks`` and its ``image_embeddings`` (so memory attention does not run again), as SAM2's training
        loop and interactive predictor do; :meth:`remember` then stores the final pass.

        Args:
            features: the frame's features (``N = B``).
            bank: the memory read by a frame that is not a conditioning frame (see :meth:`memory_bank`).
            frame: the frame's index in the video (memory reads are relative to it).
            prompt: clicks and/or a box (``points (B, P, 2)`` in pixels of the ``S × S`` input, ``point_labels (B,
                P)``, ``boxes (B, 4)``), custom ``sparse_embeddings``, or ``masks (B, 1, H, W)``: a mask prompt is the
                frame's output (logits ±10, SAM2's ``add_new_mask``) and cannot be combined with clicks or
                ``previous_masks``.
            conditioning: decode without memory (SAM2's ``is_init_cond_frame``: a frame prompted before tracking);
                it also selects SAM2's multimask rule for conditioning frames.
            previous_masks: ``(B, 1, S/4, S/4)`` mask logits of an earlier pass on this frame, fed to the decoder
                with the clicks as a dense prompt (SAM2's ``prev_sam_mask_logits``; SAM2's interactive predictor
                clamps them to ±32 first, its training loop does not).
            image_embeddings: ``(B, C, S/16, S/16)`` features to decode from instead of conditioning on ``bank``
                (an earlier pass's ``image_embeddings``).
            reverse: the frame is tracked backwards (it reads the frames after it).
            hooks: residuals added inside the mask decoder.
            multimask_output: three candidates (True) or one (False); None: SAM2's rule (three for 0-1 clicks, on
                conditioning frames and, by the model config, on tracked ones).

        Returns:
            The pass (:class:`Sam2StepOutput`): ``masks (B, 1, S/4, S/4)``, ``mask_logits (B, M, S/4, S/4)``,
            ``iou_pred (B, M)``, ``object_score_logits (B,)``, ``object_pointer (B, C)``, ``image_embeddings``.
            Differentiable when gradients are enabled.
        """
        batch = features.num_frames
        has_mask = prompt is not None and prompt.masks is not None
        if has_mask and (prompt.num_clicks or prompt.sparse_embeddings is not None or previous_masks is not None):
            raise UsageError(
                f"frame {frame}: a mask prompt is the frame's output; it cannot be combined with clicks, boxes, "
                "sparse_embeddings or previous_masks"
            )
        if previous_masks is not None and (previous_masks.ndim != 4 or previous_masks.shape[:2] != (batch, 1)):
            raise ShapeError(f"previous_masks must be (B={batch}, 1, S/4, S/4), got {tuple(previous_masks.shape)}")
        prompted = prompt is not None and (prompt.num_clicks > 0 or has_mask)
        if has_mask:
            out = self._mask_as_output(features, prompt.masks)  # type: ignore[union-attr]
            pix, prompt_masks = None, out.pop("high_res_masks")
        else:
            if image_embeddings is not None:
                pix = image_embeddings
                if pix.shape != features.fpn[2].shape:
                    raise ShapeError(
                        f"image_embeddings must be {tuple(features.fpn[2].shape)} like the stride-16 features, got "
                        f"{tuple(pix.shape)}"
                    )
            elif conditioning:
                pix = features.fpn[2] + self.model.no_memory_embedding.view(1, -1, 1, 1)
            else:
                if not bank.cond and not bank.tracked:
                    raise UsageError(
                        f"frame {frame} is not a conditioning frame and the memory bank is empty: decode a "
                        "conditioning frame first (conditioning=True) and remember it"
                    )
                pix = self._condition_on_memory(features, bank, frame, reverse=reverse)
            multimask = self._use_multimask(conditioning, prompt) if multimask_output is None else multimask_output
            out = self._sam_heads(features, pix, prompt, hooks, multimask_output=multimask, dense_masks=previous_masks)
            prompt_masks = None
        return Sam2StepOutput(
            frame_idx=frame,
            masks=out["masks"],
            multimask_logits=out["multimask_logits"],
            multimask_iou=out["multimask_iou"],
            object_score_logits=out["object_score_logits"][:, 0],
            object_pointer=out["object_pointer"],
            mask_logits=out["mask_logits"],
            iou_pred=out["iou_pred"],
            image_embeddings=pix,
            prompted=prompted,
            prompt_masks=prompt_masks,
        )

    def remember(
        self,
        features: Sam2Features,
        bank: MemoryBank,
        step: Sam2StepOutput,
        *,
        conditioning: bool,
        binarize: bool | None = None,
    ) -> FrameMemory:
        """Encode a frame's final pass into memory (SAM2's memory encoder) and add it to ``bank``.

        Args:
            features: the frame's features (``N = B``), those given to :meth:`track_step`.
            bank: the memory bank.
            step: the frame's final pass.
            conditioning: store it as a conditioning memory (read by every later frame; SAM2 stores there the
                frames prompted before tracking and, in training, a tracked frame that received corrective clicks)
                or as a tracked one (read by the next frames only). It replaces the frame's earlier memory.
            binarize: in eval mode, binarise the mask given to the memory encoder (True) or not (False); None:
                SAM2's rule, on frames prompted with clicks, a box or a mask. Never in memory training.

        Returns:
            What was stored: ``features (h*w, B, 64)``, ``pos (h*w, B, 64)``, ``pointer (B, C)``.
        """
        if step.prompt_masks is not None:
            high_res = step.prompt_masks
        else:
            size = (self.image_size, self.image_size)
            high_res = F.interpolate(step.masks.float(), size=size, mode="bilinear", align_corners=False)
        binarize = not self.memory_training and (step.prompted if binarize is None else binarize)
        scores = step.object_score_logits[:, None]  # (B, 1)
        memory, memory_pos = self._encode_memory(features, high_res, scores, binarize=binarize)
        stored = FrameMemory(features=memory, pos=memory_pos, pointer=step.object_pointer)
        bank.add(step.frame_idx, stored, conditioning=conditioning)
        return stored

    # -- propagation ---------------------------------------------------------------------------------------------

    def propagate_iter(
        self,
        frames: Tensor | FrameLoader | None = None,
        *,
        num_frames: int | None = None,
        batch_size: int | None = None,
        features: Sam2Features | None = None,
        prompts: Mapping[int, Sam2Prompt],
        hooks: HookSource | None = None,
        order: Literal["bidirectional", "ascending"] = "bidirectional",
        chunk_size: int = 8,
        multimask_output: bool | None = None,
        binarize_memory_masks: bool | None = None,
    ) -> Iterator[Sam2FrameOutput]:
        """Track ``B`` objects through ``T`` frames with SAM2's memory, one frame at a time (processing order).

        Args:
            frames: ``(B, T, 3, S, S)`` normalised frames, or a loader ``indices -> (B, n, 3, S, S)`` (long videos;
                needs ``num_frames`` and ``batch_size``). Not needed when ``features`` is given.
            num_frames: ``T`` (taken from ``frames`` when it is a tensor).
            batch_size: ``B`` (taken from ``frames`` when it is a tensor; else from ``features`` and ``T``).
            features: precomputed features of the ``B*T`` frames (b-major), e.g. those given to a fuser.
            prompts: conditioning frame -> prompt for the ``B`` tracks; at least one. ``Sam2Prompt()`` conditions a
                frame without any prompt (the hooks carry the signal).
            hooks: decoder hooks per frame: a sequence indexed by frame, or a function of the frame index.
            order: ``"bidirectional"`` (SAM2's video predictor: the conditioning frames, then forward from the
                earliest to the last frame, then backward to frame 0) or ``"ascending"`` (SAM2's training loop and
                AuralSAM2: the conditioning frames, then all other frames in increasing order, tracking forward).
            chunk_size: frames per image-encoder call when encoding from ``frames``.
            multimask_output: force multimask output on every frame (None: SAM2's rule).
            binarize_memory_masks: in eval mode, binarise the mask given to the memory encoder on every frame (True;
                AuralSAM2's released code), never (False), or on frames prompted with clicks or masks (None, SAM2).

        Yields:
            One :class:`Sam2FrameOutput` per frame, in processing order. The memory bank keeps only what later
            frames can read, so memory use does not grow with ``T``.
        """
        batch, total = self._clip_shape(frames, num_frames, batch_size, features)
        cond = sorted(prompts)
        if not cond:
            raise ValueError("propagate needs at least one conditioning frame in prompts")
        if cond[0] < 0 or cond[-1] >= total:
            raise ValueError(f"conditioning frames {cond} outside a clip of {total} frames")
        if order == "ascending":
            plan = [(t, False) for t in range(total) if t not in prompts]
        elif order == "bidirectional":
            plan = [(t, False) for t in range(cond[0] + 1, total) if t not in prompts]
            plan += [(t, True) for t in range(cond[0] - 1, -1, -1)]
        else:
            raise ValueError(f"order must be 'bidirectional' or 'ascending', got {order!r}")
        if isinstance(hooks, Sequence) and len(hooks) != total:
            raise ShapeError(f"hooks must have one entry per frame ({total}), got {len(hooks)}")
        bank = self.memory_bank(total)
        last = last_reads(plan, bank.read_window, total)
        source = _FeatureSource(
            self,
            frames=frames,
            features=features,
            batch=batch,
            num_frames=total,
            order=cond + [t for t, _ in plan],
            chunk_size=max(1, chunk_size),
        )

        def hooks_for(frame: int) -> DecoderHooks | None:
            if hooks is None:
                return None
            return hooks[frame] if isinstance(hooks, Sequence) else hooks(frame)

        for frame in cond:
            feats = source.get(frame)
            step = self.track_step(
                feats,
                bank,
                frame,
                prompt=prompts[frame],
                conditioning=True,
                hooks=hooks_for(frame),
                multimask_output=multimask_output,
            )
            self.remember(feats, bank, step, conditioning=True, binarize=binarize_memory_masks)
            yield step.frame_output()
        for index, (frame, reverse) in enumerate(plan):
            feats = source.get(frame)
            step = self.track_step(
                feats, bank, frame, reverse=reverse, hooks=hooks_for(frame), multimask_output=multimask_output
            )
            self.remember(feats, bank, step, conditioning=False, binarize=binarize_memory_masks)
            bank.forget([t for t in list(bank.tracked) if last.get(t, -1) <= index])
            yield step.frame_output()

    def propagate(
        self,
        frames: Tensor | FrameLoader | None = None,
        *,
        num_frames: int | None = None,
        batch_size: int | None = None,
        features: Sam2Features | None = None,
        prompts: Mapping[int, Sam2Prompt],
        hooks: HookSource | None = None,
        order: Literal["bidirectional", "ascending"] = "bidirectional",
        chunk_size: int = 8,
        multimask_output: bool | None = None,
        binarize_memory_masks: bool | None = None,
    ) -> Sam2TrackOutput:
        """:meth:`propagate_iter` on a whole clip, stacked in frame order (same arguments).

        Returns:
            ``masks (B, T, 1, S/4, S/4)``, ``multimask_logits (B, T, 3, S/4, S/4)``, ``multimask_iou (B, T, 3)``,
            ``object_score_logits (B, T)``. Differentiable when gradients are enabled.
        """
        frame_outputs = self.propagate_iter(
            frames,
            num_frames=num_frames,
            batch_size=batch_size,
            features=features,
            prompts=prompts,
            hooks=hooks,
            order=order,
            chunk_size=chunk_size,
            multimask_output=multimask_output,
            binarize_memory_masks=binarize_memory_masks,
        )
        outputs = {out.frame_idx: out for out in frame_outputs}
        ordered = [outputs[t] for t in range(len(outputs))]
        return Sam2TrackOutput(
            masks=torch.stack([o.masks for o in ordered], dim=1),
            multimask_logits=torch.stack([o.multimask_logits for o in ordered], dim=1),
            multimask_iou=torch.stack([o.multimask_iou for o in ordered], dim=1),
            object_score_logits=torch.stack([o.object_score_logits for o in ordered], dim=1),
        )

    def _clip_shape(
        self,
        frames: Tensor | FrameLoader | None,
        num_frames: int | None,
        batch_size: int | None,
        features: Sam2Features | None,
    ) -> tuple[int, int]:
        if isinstance(frames, Tensor):
            if frames.ndim != 5 or frames.shape[2] != 3:
                raise ShapeError(f"frames must be (B, T, 3, S, S), got {tuple(frames.shape)}")
            return frames.shape[0], frames.shape[1]
        if frames is None and features is None:
            raise ValueError("propagate needs frames or features")
        if num_frames is None:
            raise ValueError("propagate needs num_frames (T) when frames is not a (B, T, 3, S, S) tensor")
        if features is not None:
            if features.num_frames % num_frames:
                raise ShapeError(f"{features.num_frames} feature frames are not B x {num_frames} frames")
            batch = features.num_frames // num_frames
            if batch_size not in (None, batch):
                raise ShapeError(f"batch_size {batch_size} != {batch} tracks in features")
            return batch, num_frames
        if batch_size is None:
            raise ValueError("propagate needs batch_size (B) with a frame loader")
        return batch_size, num_frames


def _sine_1d(positions: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """1-D sine/cosine encoding ``(P, dim)`` of positions ``(P,)`` (SAM2's ``get_1d_sine_pe``)."""
    half = dim // 2
    dim_t = torch.arange(half, dtype=torch.float32, device=positions.device)
    dim_t = temperature ** (2 * (dim_t // 2) / half)
    angles = positions.unsqueeze(-1) / dim_t
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def share_positional_encoding(model: nn.Module) -> None:
    """Give the prompt encoder the image's random Fourier matrix, as SAM2 has one (``pe_layer``).

    SAM2 encodes a click's coordinates and the image grid's positions with one Gaussian matrix, so that a click token
    and the image tokens at its location share a position code in the decoder's attention. transformers keeps two
    buffers (``shared_image_embedding`` and ``prompt_encoder.shared_embedding``), equal in converted checkpoints but
    drawn independently in a random build, where a click's code then matches no image position. Random builds copy
    the image's matrix into the prompt encoder; loaded weights keep theirs.
    """
    source = model.shared_image_embedding.positional_embedding
    with torch.no_grad():
        model.prompt_encoder.shared_embedding.positional_embedding.copy_(source)


def reset_to_module_defaults(model: nn.Module) -> int:
    """Re-initialise every linear, convolution and embedding layer of ``model`` with PyTorch's defaults (SAM2's own
    modules keep them); other parameters (norms, learned tokens and position tables) keep their values. Returns the
    number of layers reset."""
    count = 0
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d, nn.Embedding)):
            module.reset_parameters()
            count += 1
    return count


def build_sam2(config: Sam2LayerConfig, *, pretrained: bool = False) -> Sam2Layer:
    """Build the SAM2 layer a config describes.

    Args:
        config: the layer config.
        pretrained: load ``config.weights`` (default ``facebook/<variant>``; a hub id needs network or cache, a folder
            works offline). False: random weights of the variant's shape, offline. Packaged weights
            (``weights="avseg:<name>"``, :mod:`avseg.assets`) load either way: they belong to the preset that names
            them, are small and need no network.

    Returns:
        The layer, in eval mode, with the non-trainable parts frozen.
    """
    from safetensors import SafetensorError
    from transformers import Sam2VideoConfig, Sam2VideoModel  # deferred: transformers is heavy

    from avseg.assets import is_packaged

    kwargs = hf_video_config_kwargs(config)
    if pretrained or is_packaged(config.weights):
        source = config.default_weights
        hf_config = Sam2VideoConfig.from_pretrained(source).to_dict()
        for key in ("image_size", "memory_attention_rope_feat_sizes"):
            hf_config[key] = kwargs[key]
        hf_config["prompt_encoder_config"]["image_size"] = kwargs["image_size"]
        vision = hf_config["vision_config"]
        vision["backbone_feature_sizes"] = kwargs["vision_config"]["backbone_feature_sizes"]
        vision["backbone_config"]["image_size"] = kwargs["vision_config"]["backbone_config"]["image_size"]
        merged = merge_dicts(hf_config, config.hf_config)
        try:
            model = Sam2VideoModel.from_pretrained(source, config=Sam2VideoConfig.from_dict(merged))
        except SafetensorError as err:
            # A truncated or corrupt download: name the file rather than surface the parser's traceback.
            raise CheckpointError(source, f"cannot read the SAM2 weights in its model.safetensors: {err}") from err
    else:
        try:
            hf_config = Sam2VideoConfig(**kwargs)
        except (TypeError, ValueError) as err:
            raise ValueError(f"sam2 config {config} gives an invalid transformers Sam2VideoConfig: {err}") from err
        model = Sam2VideoModel(hf_config)
        if config.random_init == "sam2":
            reset_to_module_defaults(model)
        share_positional_encoding(model)
    if math.prod(model.config.memory_attention_rope_feat_sizes) != (config.image_size // 16) ** 2:
        raise ValueError(f"sam2.hf_config sets rope sizes that do not match image_size {config.image_size}")
    return Sam2Layer(model.float(), config)
