"""SAM2's prompt encoder and mask decoder, with the seams the SAM2-based methods need.

transformers' ``Sam2VideoMaskDecoder.forward`` runs the two-way transformer in one call, so a residual cannot be
added between its blocks. :func:`run_mask_decoder` therefore re-states that forward pass (about 40 lines): it calls
the decoder's own tokens, two-way blocks, final attention, upscaling convolutions, hypernetwork MLPs and heads, in
transformers' order, and adds the optional :class:`DecoderHooks` residuals between the blocks. Nothing else is
re-implemented; ``tests/layers/test_sam2.py`` checks that the result equals transformers' own decoder (no hooks)
and that zero-valued hooks change nothing.

Seams:

* **Custom sparse prompt tokens** (:attr:`Sam2Prompt.sparse_embeddings`, ``(B, N, C)``): SAM2-LOVE's projected
  ``[seg]`` token and Sa2VA/SVAC's ``[SEG]`` embeddings. Appended after the point embeddings (Sa2VA's
  ``language_embd`` concat, which keeps SAM2's padding point when there are no clicks) or used alone.
* **Residual hooks** (:class:`DecoderHooks`): AuralSAM2's fuser adds a dense map to the image tokens and a vector to
  the four mask tokens before each two-way block and before the final token-to-image attention
  (``AuralSAM2:ref-avs.code/model/visual/sam2/modeling/sam/transformer.py::TwoWayTransformer.forward``).
* **Mask selection** (:func:`select_mask`): AuralSAM2's three evaluation modes over the multimask outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avseg.errors import ShapeError

__all__ = [
    "NO_OBJECT_SCORE",
    "DecoderHooks",
    "Sam2DecoderOutput",
    "Sam2Prompt",
    "run_mask_decoder",
    "select_mask",
    "upsample_masks",
]

NO_OBJECT_SCORE = -1024.0
"""Logit SAM2 writes into every mask of a frame whose object score is negative (``NO_OBJ_SCORE`` upstream)."""


@dataclass
class Sam2Prompt:
    """Prompts of ``B`` tracks on one frame. Every field is optional; ``Sam2Prompt()`` is "no prompt".

    Attributes:
        points: ``(B, P, 2)`` click coordinates ``(x, y)`` in pixels of the ``S × S`` model input.
        point_labels: ``(B, P)`` integer labels: 1 positive, 0 negative, -1 padding (default: all 1).
        boxes: ``(B, 4)`` boxes ``(x1, y1, x2, y2)`` in pixels; SAM2 encodes a box as its two corners (labels 2
            and 3) placed before the clicks.
        masks: ``(B, 1, H, W)`` binary masks. :meth:`Sam2Layer.decode` embeds them as SAM's dense mask prompt;
            :meth:`Sam2Layer.propagate` uses them as the frame's output (SAM2's ``add_new_mask``).
        sparse_embeddings: ``(B, N, C)`` custom prompt tokens (a ``[seg]`` / ``[SEG]`` embedding).
        sparse_mode: ``"append"`` puts the custom tokens after the point/box embeddings (with no clicks, after
            SAM2's padding point, as Sa2VA does); ``"replace"`` makes them the only sparse tokens (no clicks then).
    """

    points: Tensor | None = None
    point_labels: Tensor | None = None
    boxes: Tensor | None = None
    masks: Tensor | None = None
    sparse_embeddings: Tensor | None = None
    sparse_mode: Literal["append", "replace"] = "append"

    def __post_init__(self) -> None:
        if self.sparse_mode not in ("append", "replace"):
            raise ValueError(f"sparse_mode must be 'append' or 'replace', got {self.sparse_mode!r}")
        if self.points is not None and (self.points.ndim != 3 or self.points.shape[-1] != 2):
            raise ShapeError(f"prompt points must be (B, P, 2), got {tuple(self.points.shape)}")
        if self.point_labels is not None and self.points is None:
            raise ValueError("prompt point_labels given without points")
        if self.boxes is not None and (self.boxes.ndim != 2 or self.boxes.shape[-1] != 4):
            raise ShapeError(f"prompt boxes must be (B, 4), got {tuple(self.boxes.shape)}")
        if self.masks is not None and self.masks.ndim != 4:
            raise ShapeError(f"prompt masks must be (B, 1, H, W), got {tuple(self.masks.shape)}")
        if self.sparse_embeddings is not None and self.sparse_embeddings.ndim != 3:
            raise ShapeError(f"prompt sparse_embeddings must be (B, N, C), got {tuple(self.sparse_embeddings.shape)}")
        if self.sparse_mode == "replace" and (self.sparse_embeddings is None or self.num_clicks):
            raise ValueError("sparse_mode='replace' needs sparse_embeddings and no points or boxes")

    @property
    def num_clicks(self) -> int:
        """Number of point prompts SAM2 counts (a box is two), which decides multimask output."""
        clicks = 0 if self.points is None else self.points.shape[1]
        return clicks + (2 if self.boxes is not None else 0)

    @property
    def batch_size(self) -> int | None:
        for value in (self.points, self.boxes, self.masks, self.sparse_embeddings):
            if value is not None:
                return value.shape[0]
        return None

    def click_inputs(self) -> tuple[Tensor, Tensor] | None:
        """Points and labels with box corners first: ``(B, P', 2)`` float and ``(B, P')`` int32, or None."""
        coords, labels = [], []
        if self.boxes is not None:
            coords.append(self.boxes.reshape(-1, 2, 2).float())
            labels.append(torch.tensor([2, 3], dtype=torch.int32, device=self.boxes.device).expand(len(self.boxes), 2))
        if self.points is not None:
            coords.append(self.points.float())
            if self.point_labels is None:
                labels.append(torch.ones(self.points.shape[:2], dtype=torch.int32, device=self.points.device))
            else:
                labels.append(self.point_labels.to(torch.int32))
        if not coords:
            return None
        return torch.cat(coords, dim=1), torch.cat(labels, dim=1)


@dataclass
class DecoderHooks:
    """Residuals added inside the mask decoder's two-way transformer (AuralSAM2's fuser seam).

    Entry ``i < decoder_depth`` of each list is added right before two-way block ``i``; entry ``decoder_depth`` right
    before the final token-to-image attention (and it stays in the image tokens used for upscaling and in the
    tokens read by the heads, as in AuralSAM2). ``None`` entries (or lists) are skipped; zero-valued residuals leave
    the output exactly unchanged.

    Attributes:
        image: ``decoder_depth + 1`` maps ``(B, C, H/16, W/16)`` added to the image tokens.
        mask_tokens: ``decoder_depth + 1`` residuals added to the four mask tokens (tokens 2:6 of
            ``[object score, IoU, 4 × mask, prompts…]``): ``(B, C)`` (the same vector for all four) or ``(B, 4, C)``.
        shift_query_pe: AuralSAM2's released code adds ``mask_tokens[0]`` *in place* to the token tensor that is also
            the query positional embedding of every later attention; True reproduces that side effect (needed to
            match its checkpoints), False (default) adds the residual to the tokens only.
    """

    image: Sequence[Tensor | None] | None = None
    mask_tokens: Sequence[Tensor | None] | None = None
    shift_query_pe: bool = False

    def residuals(self, index: int) -> tuple[Tensor | None, Tensor | None]:
        image = self.image[index] if self.image is not None else None
        tokens = self.mask_tokens[index] if self.mask_tokens is not None else None
        return image, tokens


@dataclass
class Sam2DecoderOutput:
    """What the mask decoder returns for ``B`` prompts.

    Attributes:
        mask_logits: ``(B, M, S/4, S/4)`` low-resolution mask logits; ``M`` = 3 with multimask output, else 1.
            Raw decoder output (no object-score suppression).
        iou_pred: ``(B, M)`` predicted IoUs.
        object_score_logits: ``(B, 1)`` object-presence logits.
        mask_tokens: ``(B, M, C)`` output tokens of those masks (the source of SAM2's object pointer).
    """

    mask_logits: Tensor
    iou_pred: Tensor
    object_score_logits: Tensor
    mask_tokens: Tensor


def _check_hook(value: Tensor, shape: tuple[int, ...], what: str) -> None:
    if tuple(value.shape) != shape:
        raise ShapeError(f"decoder hook {what} must have shape {shape}, got {tuple(value.shape)}")


def _add_residuals(
    hooks: DecoderHooks | None, index: int, queries: Tensor, keys: Tensor, size: tuple[int, int], num_masks: int
) -> tuple[Tensor, Tensor]:
    """Add hook ``index`` to ``queries (B, 1, n, C)`` (mask tokens 2:2+num_masks) and ``keys (B, 1, h*w, C)``."""
    if hooks is None:
        return queries, keys
    image, tokens = hooks.residuals(index)
    batch, _, _, channels = keys.shape
    if image is not None:
        _check_hook(image, (batch, channels, *size), f"image[{index}]")
        keys = keys + image.flatten(2).transpose(1, 2).unsqueeze(1)  # (B, 1, h*w, C)
    if tokens is not None:
        if tokens.ndim == 2:
            _check_hook(tokens, (batch, channels), f"mask_tokens[{index}]")
            tokens = tokens.unsqueeze(1)  # (B, 1, C): the same vector for every mask token
        else:
            _check_hook(tokens, (batch, num_masks, channels), f"mask_tokens[{index}]")
        shifted = queries[:, :, 2 : 2 + num_masks] + tokens.unsqueeze(1)  # (B, 1, 4, C)
        queries = torch.cat([queries[:, :, :2], shifted, queries[:, :, 2 + num_masks :]], dim=2)
    return queries, keys


def run_mask_decoder(
    decoder: nn.Module,
    *,
    image_embeddings: Tensor,
    image_positional_embeddings: Tensor,
    sparse_embeddings: Tensor,
    dense_embeddings: Tensor,
    high_resolution_features: tuple[Tensor, Tensor],
    hooks: DecoderHooks | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """transformers ``Sam2VideoMaskDecoder.forward`` with residual hooks, for all mask tokens.

    Args:
        decoder: the transformers mask decoder (``model.mask_decoder``).
        image_embeddings: ``(B, C, h, w)`` stride-16 features (memory-conditioned, or plus the no-memory embedding).
        image_positional_embeddings: ``(B, C, h, w)`` the decoder's image-wide positional embedding.
        sparse_embeddings: ``(B, 1, n, C)`` prompt tokens (``n`` may be 0).
        dense_embeddings: ``(B, C, h, w)`` dense prompt (mask embedding or SAM's no-mask embedding).
        high_resolution_features: ``(B, C/8, 4h, 4w)`` and ``(B, C/4, 2h, 2w)``: ``conv_s0`` / ``conv_s1`` of the
            stride-4 and stride-8 FPN levels.
        hooks: optional residuals (see :class:`DecoderHooks`).

    Returns:
        ``masks (B, K, 4h, 4w)``, ``iou_pred (B, K)``, ``object_score_logits (B, 1)``, ``mask_tokens (B, K, C)`` for
        all ``K = num_multimask_outputs + 1`` mask tokens (token 0 is the single-mask output).
    """
    batch, channels, height, width = image_embeddings.shape
    num_masks = decoder.num_mask_tokens
    transformer = decoder.transformer
    if hooks is not None:
        for name, entries in (("image", hooks.image), ("mask_tokens", hooks.mask_tokens)):
            if entries is not None and len(entries) != len(transformer.layers) + 1:
                raise ShapeError(
                    f"decoder hooks.{name} needs {len(transformer.layers) + 1} entries (one per two-way block and "
                    f"one before the final attention), got {len(entries)}"
                )
    output_tokens = torch.cat(
        [decoder.obj_score_token.weight, decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0
    )  # (2 + K, C)
    tokens = output_tokens.repeat(batch, 1, 1, 1)  # (B, 1, 2 + K, C)
    if sparse_embeddings.shape[2]:
        tokens = torch.cat([tokens, sparse_embeddings], dim=2)  # (B, 1, 2 + K + n, C)
    point_embeddings = tokens.to(decoder.iou_token.weight.dtype)
    image_embeddings = image_embeddings + dense_embeddings

    # Sam2VideoTwoWayTransformer.forward, with the residuals. (B, C, h, w) -> (B, 1, h*w, C)
    keys = image_embeddings.flatten(2).transpose(1, 2).unsqueeze(1)
    key_pe = image_positional_embeddings.flatten(2).transpose(1, 2).unsqueeze(1)
    queries = query_pe = point_embeddings
    for index, block in enumerate(transformer.layers):
        queries, keys = _add_residuals(hooks, index, queries, keys, (height, width), num_masks)
        if index == 0 and hooks is not None and hooks.shift_query_pe:
            query_pe = queries
        queries, keys, _ = block(
            queries=queries,
            keys=keys,
            query_point_embedding=query_pe,
            key_point_embedding=key_pe,
            attention_similarity=None,
        )
    queries, keys = _add_residuals(hooks, len(transformer.layers), queries, keys, (height, width), num_masks)
    attn_out, _ = transformer.final_attn_token_to_image(query=queries + query_pe, key=keys + key_pe, value=keys)
    queries = transformer.layer_norm_final_attn(queries + attn_out)  # (B, 1, 2 + K + n, C)

    # Sam2VideoMaskDecoder.forward after the transformer: upscale, hypernetworks, heads.
    iou_token_out = queries[:, :, 1, :]
    mask_tokens_out = queries[:, :, 2 : 2 + num_masks, :]  # (B, 1, K, C)
    image_embeddings = keys.transpose(2, 3).reshape(batch, channels, height, width)
    feat_s0, feat_s1 = high_resolution_features
    upscaled = decoder.upscale_conv1(image_embeddings) + feat_s1
    upscaled = decoder.activation(decoder.upscale_layer_norm(upscaled))
    upscaled = decoder.activation(decoder.upscale_conv2(upscaled) + feat_s0)  # (B, C/8, 4h, 4w)
    hyper_in = torch.stack(
        [mlp(mask_tokens_out[:, :, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=2
    )  # (B, 1, K, C/8)
    _, up_channels, up_height, up_width = upscaled.shape
    upscaled = upscaled.view(batch, 1, up_channels, up_height * up_width)
    masks = (hyper_in @ upscaled).view(batch, num_masks, up_height, up_width)  # (B, K, 4h, 4w)
    iou_pred = decoder.iou_prediction_head(iou_token_out)[:, 0]  # (B, K)
    object_score_logits = decoder.pred_obj_score_head(queries[:, :, 0, :])[:, 0]  # (B, 1)
    return masks, iou_pred, object_score_logits, mask_tokens_out[:, 0]


def choose_outputs(
    decoder: nn.Module, masks: Tensor, iou_pred: Tensor, tokens: Tensor, *, multimask_output: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """SAM2's choice among the ``K`` decoder outputs: tokens 1..K-1 (multimask), or token 0 (single mask; in eval
    mode replaced by the best multimask output when unstable, ``dynamic_multimask_via_stability``).

    Returns:
        ``masks (B, M, H, W)``, ``iou_pred (B, M)``, ``tokens (B, M, C)``.
    """
    if multimask_output:
        return masks[:, 1:], iou_pred[:, 1:], tokens[:, 1:]
    if decoder.dynamic_multimask_via_stability and not decoder.training:
        # transformers' helper works on (B, point_batch, K, ...) tensors
        chosen, chosen_iou = decoder._dynamic_multimask_via_stability(masks.unsqueeze(1), iou_pred.unsqueeze(1))
        return chosen[:, 0], chosen_iou[:, 0], tokens[:, :1]
    return masks[:, :1], iou_pred[:, :1], tokens[:, :1]


def select_mask(
    mask_logits: Tensor,
    iou_pred: Tensor,
    object_score_logits: Tensor,
    mode: Literal["first", "iou", "iou_occ"],
) -> Tensor:
    """Pick one mask among multimask outputs, as AuralSAM2's evaluation does.

    Args:
        mask_logits: ``(..., M, H, W)`` mask logits.
        iou_pred: ``(..., M)`` predicted IoUs.
        object_score_logits: ``(...)`` or ``(..., 1)`` object-presence logits.
        mode: ``"first"`` mask 0 (AuralSAM2's ``first_index``); ``"iou"`` the highest predicted IoU
            (``iou_select``); ``"iou_occ"`` as ``"iou"``, then the mask is emptied (logits set to -1024, SAM2's
            no-object score) where the object-score logit is negative (``iou_occ_select``; AuralSAM2 writes 0, which
            is empty only for a threshold above 0.5 probability).

    Returns:
        ``(..., 1, H, W)`` logits.
    """
    if mode not in ("first", "iou", "iou_occ"):
        raise ValueError(f"mask selection mode must be 'first', 'iou' or 'iou_occ', got {mode!r}")
    if iou_pred.shape != mask_logits.shape[:-2]:
        raise ShapeError(f"iou_pred {tuple(iou_pred.shape)} does not match mask_logits {tuple(mask_logits.shape)}")
    if mode == "first":
        return mask_logits[..., :1, :, :]
    index = iou_pred.argmax(dim=-1)[..., None, None, None]  # (..., 1, 1, 1)
    index = index.expand(*mask_logits.shape[:-3], 1, *mask_logits.shape[-2:])
    chosen = torch.gather(mask_logits, -3, index)  # (..., 1, H, W)
    if mode == "iou_occ":
        scores = object_score_logits.reshape(*mask_logits.shape[:-3], 1, 1, 1)
        chosen = torch.where(scores < 0, torch.full_like(chosen, NO_OBJECT_SCORE), chosen)
    return chosen


def upsample_masks(mask_logits: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinearly resize ``(..., H, W)`` mask logits to ``size`` (SAM2's upsampling, ``align_corners=False``)."""
    lead = mask_logits.shape[:-2]
    flat = mask_logits.reshape(-1, 1, *mask_logits.shape[-2:]).float()
    out = F.interpolate(flat, size=tuple(size), mode="bilinear", align_corners=False)
    return out.reshape(*lead, *out.shape[-2:])
