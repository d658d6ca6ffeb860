"""SAM2 as a trainable promptable video object segmenter, trained the way SAM2's own training code trains it.

Paper: N. Ravi et al., "SAM 2: Segment Anything in Images and Videos", arXiv 2408.00714. Training code:
https://github.com/facebookresearch/sam2 (``training/model/sam2.py::SAM2Train``, ``training/loss_fns.py::
MultiStepMultiMasksAndIous``, ``training/optimizer.py``, ``sam2/modeling/sam2_utils.py``, the fine-tuning config
``sam2/configs/sam2.1_training/sam2.1_hiera_b+_MOSE_finetune.yaml``). Written anew in avseg (Apache-2.0) from a
reading of that code; SAM2 itself comes from transformers through :mod:`avseg.layers.sam2`.

**Task.** Semi-supervised video object segmentation (VOS): one object per sample, given on one frame, to be tracked
through the video (:mod:`avseg.data.vos`: one sample per ``(video, object)``).

**Training** (``forward`` in training mode). Each step runs ``train_frames`` (8) consecutive labelled frames of every
clip. :func:`~avseg.layers.sam2.prompts.plan_prompts` decides how they are prompted: with probability 0.5 the
ground-truth mask of each conditioning frame, else a click (uniform inside the object) or, half of the time, a noised
box. The first frame, and at random a second one, are conditioning frames: decoded without memory and stored as
conditioning memories. With clicks or boxes, the conditioning frames (and at random one tracked frame, which then
joins the conditioning memories) receive 7 corrective clicks, one at a time, each drawn from the error of the
current prediction against the ground truth (a click on the ground truth itself with probability 0.1), the previous
mask logits fed back as a dense prompt, and every pass supervised. The other frames are tracked in increasing order
through SAM2's memory. SAM2 outputs three candidate masks for zero or one click (also on tracked frames) and one
mask otherwise.

**Loss.** SAM2's ``MultiStepMultiMasksAndIous`` on every labelled frame and decoder pass: focal (α 0.25, γ 2) × 20,
dice × 1, an L1 IoU regression on every candidate × 1, and a BCE on the object score × 1; with several candidates the
focal and dice terms supervise only the candidate with the lowest ``20·focal + dice``; mask, dice and IoU terms count
only where the object is present. Terms are summed over frames and passes and divided by the number of objects
(tracks) in the batch.

**Evaluation** (the VOS protocol). Only the conditioning frame's ground truth is read: the object's first annotated
frame (``meta["first_frame"]``, default 0) is prompted with its mask (``eval_prompt = "mask"``, SAM2's VOS
evaluation), its box, or clicks placed at the centre of the object and then of the error regions, and the object is
tracked forward to the end of the video; earlier frames are predicted empty.

**Optimisation** (:meth:`SAM2VOS.param_groups`, the MOSE fine-tuning recipe): AdamW, lr 5e-6 (image encoder 3e-6,
its Hiera blocks further scaled by 0.9 per block from the last, the patch embedding by 0.9 more, the position
embeddings not), weight decay 0.1 (none on biases and norm layers), cosine decay to a tenth, gradient clipping at
0.1, 1 video with up to 3 objects per GPU on 8 GPUs, 40 epochs, bf16, SAM2's video augmentation.

**Differences from SAM2's training code:**

* One sample is one object; SAM2 samples up to 3 objects per video and divides by that count. Here a batch's tracks
  are its objects (the paper presets' batch of 3 stands for one video with 3 objects).
* SAM2's sampler draws 8 consecutive annotated frames and keeps the objects visible on the first; here the window
  is drawn among the frames labelled in every clip of the batch, preferring windows whose first frame shows every
  clip's object.
* Weight decay is off for every norm layer's weight; SAM2 exempts only ``torch.nn.LayerNorm`` modules, so its
  channel-first ``LayerNorm2d`` weights decay (transformers uses one norm class for both).
* The prompt samplers' corner cases (:mod:`avseg.layers.sam2.prompts`): an empty mask gets a negative click instead
  of an inverted box.
* ``loss.step_reduction = "mean"`` (``sam2-tiny``) averages the passes of a frame instead of summing them.

**Ready to track** (:func:`sam2_vos_on_weights`). Wherever a checkpoint is expected (``avseg predict``, ``avseg eval``,
``avseg app``, :func:`avseg.models.load_model`), SAM2 weights in transformers' format are taken as they are: Meta's
Hub repositories (``facebook/sam2.1-hiera-large``), a folder ``avseg convert sam2`` wrote (from Meta's ``.pt``
files or from an avseg checkpoint), or the packaged ``avseg:sam2-tiny-synthav``. They give the ``sam2-*`` preset of
their shape with those weights, untrained by avseg.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avseg.data.augment import ClipAugmentConfig
from avseg.data.types import AVSBatch
from avseg.errors import UsageError
from avseg.layers.losses import sam_multimask_losses
from avseg.layers.sam2 import (
    NO_OBJECT_SCORE,
    Sam2Features,
    Sam2LayerConfig,
    Sam2Prompt,
    build_sam2,
    cpu_sam2_config,
    upsample_masks,
)
from avseg.layers.sam2.layer import Sam2StepOutput
from avseg.layers.sam2.memory import last_reads
from avseg.layers.sam2.prompts import (
    PointSampling,
    PromptSimulationConfig,
    plan_prompts,
    sample_box_points,
    sample_error_points,
    uniform,
)
from avseg.metrics.protocols import DAVIS2017_SEMI, protocol_table
from avseg.models.base import AVSModel, AVSOutput
from avseg.models.registry import create_model, get_entry, register_model, register_sam2_weights_builder
from avseg.recipe import OptimConfig, ScheduleConfig, TrainRecipe

__all__ = ["SAM2VOS", "DecodeStep", "SAM2LossConfig", "SAM2VOSConfig", "Sam2ParamGroupConfig"]

EvalPrompt = Literal["mask", "box", "points"]


# -- configs ---------------------------------------------------------------------------------------------------------


@dataclass
class SAM2LossConfig:
    """SAM2's ``MultiStepMultiMasksAndIous`` (MOSE fine-tuning weights).

    Attributes:
        focal_weight, dice_weight, iou_weight, object_weight: 20, 1, 1, 1.
        supervise_all_iou: regress the IoU of every candidate, not only of the supervised one (True).
        iou_l1: L1 (True) or squared error for the IoU head.
        step_reduction: ``"sum"`` over a frame's decoder passes (SAM2) or ``"mean"`` (a loss whose scale does not
            depend on whether the step drew corrective clicks).
        mask_size: square size at which masks and targets are compared (None: the batch's frame size, which is
            SAM2's input size when frames are read at it, as SAM2 compares at 1024).
    """

    focal_weight: float = 20.0
    dice_weight: float = 1.0
    iou_weight: float = 1.0
    object_weight: float = 1.0
    supervise_all_iou: bool = True
    iou_l1: bool = True
    step_reduction: Literal["sum", "mean"] = "sum"
    mask_size: int | None = None

    def __post_init__(self) -> None:
        for name in ("focal_weight", "dice_weight", "iou_weight", "object_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"loss.{name} must be >= 0, got {getattr(self, name)}")
        if self.step_reduction not in ("sum", "mean"):
            raise ValueError(f"loss.step_reduction must be 'sum' or 'mean', got {self.step_reduction!r}")
        if self.mask_size is not None and self.mask_size < 1:
            raise ValueError(f"loss.mask_size must be positive, got {self.mask_size}")


@dataclass
class Sam2ParamGroupConfig:
    """Learning-rate structure of the optimiser groups (SAM2's ``vision_lr`` and ``layer_decay_param_modifier``).

    Attributes:
        image_encoder_lr_scale: the image encoder's lr as a fraction of the base lr (MOSE: 3e-6 / 5e-6 = 0.6).
        layer_decay: Hiera block ``i`` of ``N`` gets ``layer_decay ** (N - i)``, the patch embedding
            ``layer_decay ** (N + 1)``, the position embeddings 1 (0.9; 1 disables it).
    """

    image_encoder_lr_scale: float = 0.6
    layer_decay: float = 0.9

    def __post_init__(self) -> None:
        if not self.image_encoder_lr_scale > 0 or not 0 < self.layer_decay <= 1:
            raise ValueError(
                f"optim_groups.image_encoder_lr_scale must be > 0 and layer_decay in (0, 1], got "
                f"{self.image_encoder_lr_scale}, {self.layer_decay}"
            )


@dataclass
class SAM2VOSConfig:
    """A promptable SAM2 trained for VOS.

    Attributes:
        pretrained: load the SAM2 weights ``sam2.weights`` names (a hub id or a local folder); False builds random
            weights offline (tests, the tiny preset).
        sam2: the SAM2 layer: variant, weights, input size, and which parts train (``sam2.trainable``: image encoder,
            prompt encoder, mask decoder, memory; all four in SAM2's fine-tuning).
        prompts: how training prompts are simulated.
        eval_prompt: the conditioning frame's prompt at evaluation: its ground-truth ``"mask"`` (SAM2's VOS
            evaluation), the exact ``"box"`` of the mask, or ``"points"``.
        eval_clicks: with ``eval_prompt = "points"``: clicks on the conditioning frame, the first at the centre of the
            object, each further one at the centre of the larger error region of the prediction so far (SAM2's
            ``"center"`` sampling).
        eval_chunk: frames per image-encoder call at evaluation (long videos are encoded chunk by chunk).
        loss: loss weights.
        optim_groups: learning-rate scales of the optimiser groups.
        recipe: training recipe.
        train_frames: frames per clip in training (8, SAM2's ``num_frames``): consecutive labelled frames.
    """

    pretrained: bool = True
    sam2: Sam2LayerConfig = field(
        default_factory=lambda: Sam2LayerConfig(trainable=("image_encoder", "prompt_encoder", "mask_decoder", "memory"))
    )
    prompts: PromptSimulationConfig = field(default_factory=PromptSimulationConfig)
    eval_prompt: EvalPrompt = "mask"
    eval_clicks: int = 1
    eval_chunk: int = 8
    loss: SAM2LossConfig = field(default_factory=SAM2LossConfig)
    optim_groups: Sam2ParamGroupConfig = field(default_factory=Sam2ParamGroupConfig)
    recipe: TrainRecipe | None = None
    train_frames: int | None = 8

    def __post_init__(self) -> None:
        if self.eval_prompt not in ("mask", "box", "points"):
            raise ValueError(f"eval_prompt must be 'mask', 'box' or 'points', got {self.eval_prompt!r}")
        if self.eval_clicks < 1 or self.eval_chunk < 1:
            raise ValueError(f"eval_clicks and eval_chunk must be >= 1, got {self.eval_clicks}, {self.eval_chunk}")
        if self.train_frames is not None and self.train_frames < 1:
            raise ValueError(f"train_frames must be >= 1 or null, got {self.train_frames}")
        if self.sam2.lr is not None:
            raise ValueError(
                "sam2.lr: a SAM2 preset trains nothing but SAM2; set train.lr (and optim_groups.image_encoder_lr_scale)"
            )


# -- one decoder pass ------------------------------------------------------------------------------------------------


@dataclass
class DecodeStep:
    """One decoder pass on one frame of ``B`` tracks (``S`` = SAM2's input size).

    Attributes:
        candidates: ``(B, M, S/4, S/4)`` the output masks (``M`` = 3 with multimask output, else 1), set to -1024
            where the object score is negative, as SAM2 does.
        iou_pred: ``(B, M)`` their predicted IoUs.
        object_logits: ``(B,)`` object-score logits.
        masks: ``(B, 1, S/4, S/4)`` the mask kept (the candidate of highest predicted IoU).
        pointer: ``(B, C)`` the object pointer of that mask.
    """

    candidates: Tensor
    iou_pred: Tensor
    object_logits: Tensor
    masks: Tensor
    pointer: Tensor


# -- the model -------------------------------------------------------------------------------------------------------


class SAM2VOS(AVSModel):
    """SAM2 on avseg's model contract, for VOS (binary masks, one object per sample).

    ``forward(batch)`` returns :class:`~avseg.models.base.AVSOutput` with ``mask_logits (B, T, 1, H, W)`` (the final
    mask of each frame, upsampled), ``object_logits (B, T)`` and, in training, ``aux["steps"]``: per computed frame
    (``T'`` of them, in frame order) the list of its :class:`DecodeStep` passes (several on corrected frames), which
    :meth:`losses` supervises. ``iou_pred`` is None (the number of candidates differs between passes).
    """

    family = "sam2"
    config_class = SAM2VOSConfig
    official_protocols = protocol_table(vos=DAVIS2017_SEMI)

    def __init__(self, config: SAM2VOSConfig) -> None:
        super().__init__(config)
        self.sam2 = build_sam2(config.sam2, pretrained=config.pretrained)

    # -- optimiser -----------------------------------------------------------------------------------------------

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW groups as SAM2's fine-tuning builds them: the image encoder at ``image_encoder_lr_scale`` of ``lr``,
        its Hiera trunk with layer-wise decay, no weight decay on biases and norm layers."""
        cfg = self.config.optim_groups
        blocks = len(self.sam2.model.vision_encoder.backbone.blocks)
        groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
        for module_name, module in self.named_modules():
            is_norm = isinstance(module, (nn.LayerNorm, nn.GroupNorm)) or "LayerNorm" in type(module).__name__
            for name, p in module.named_parameters(recurse=False):
                if not p.requires_grad:
                    continue
                full = f"{module_name}.{name}" if module_name else name
                scale = self._lr_scale(full, blocks, cfg)
                decay = not (is_norm or name == "bias")
                groups.setdefault((scale, decay), []).append(p)
        out = []
        for (scale, decay), params in sorted(groups.items(), key=lambda kv: (-kv[0][0], not kv[0][1])):
            name = f"lr{scale:.4g}_{'decay' if decay else 'no_decay'}"
            out.append(
                {"params": params, "lr": lr * scale, "weight_decay": weight_decay if decay else 0.0, "name": name}
            )
        return out

    @staticmethod
    def _lr_scale(name: str, blocks: int, cfg: Sam2ParamGroupConfig) -> float:
        """The lr factor of a parameter (SAM2's ``layer_decay_param_modifier`` with Hiera's ``get_layer_id``)."""
        encoder = "sam2.model.vision_encoder."
        if not name.startswith(encoder):
            return 1.0
        scale = cfg.image_encoder_lr_scale
        trunk = encoder + "backbone."
        if not name.startswith(trunk):
            return scale
        local = name[len(trunk) :]
        if "pos_embed" in local:  # SAM2's override: position embeddings are not decayed
            return scale
        if local.startswith("patch_embed."):
            return scale * cfg.layer_decay ** (blocks + 1)
        if local.startswith("blocks."):
            index = int(local.split(".")[1])
            return scale * cfg.layer_decay ** (blocks - index)
        return scale

    # -- frames --------------------------------------------------------------------------------------------------

    def draw_training_frames(self, batch: AVSBatch, count: int | None) -> Tensor | None:
        """In training: ``count`` consecutive frames among those labelled in every clip (else in some clip), from a
        random start, preferring starts where every clip's object is visible (SAM2's ``RandomUniformSampler``), from
        torch's global generator. None in eval mode, without ``count``, or when ``count`` covers the clip."""
        t = batch.frames.shape[1]
        if not self.training or count is None or count >= t:
            return None
        labelled = (batch.label_valid & batch.frame_valid).cpu()  # (B, T)
        candidates = torch.nonzero(labelled.all(0)).flatten()
        if len(candidates) < count:
            candidates = torch.nonzero(labelled.any(0)).flatten()
        if len(candidates) == 0:
            candidates = torch.arange(t)
        if len(candidates) <= count:
            return candidates
        present = (batch.masks > 0).flatten(2).any(-1).cpu()  # (B, T)
        starts = torch.arange(len(candidates) - count + 1)
        visible = present[:, candidates[starts]].all(0)
        if visible.any():
            starts = starts[visible]
        start = int(starts[torch.randint(len(starts), ())])
        return candidates[start : start + count]

    def _masks_at_input_size(self, masks: Tensor) -> Tensor:
        """``(B, T, H, W)`` masks → ``(B, T, S, S)`` bool at SAM2's input size (nearest)."""
        s = self.sam2.image_size
        if tuple(masks.shape[-2:]) == (s, s):
            return masks > 0
        return F.interpolate(masks.float(), size=(s, s), mode="nearest") > 0

    def _encode(self, batch: AVSBatch) -> Sam2Features:
        """The image encoder on every frame of ``batch``: features of ``B*T`` frames, b-major."""
        return self.sam2.encode_frames(self.sam2.resize(self.normalize_frames(batch)))

    # -- tracking ------------------------------------------------------------------------------------------------

    @staticmethod
    def _decode_step(out: Sam2StepOutput) -> DecodeStep:
        """A decoder pass of the layer as the loss reads it."""
        return DecodeStep(
            candidates=out.mask_logits,
            iou_pred=out.iou_pred,
            object_logits=out.object_score_logits,
            masks=out.masks,
            pointer=out.object_pointer,
        )

    def _track(
        self,
        features: Callable[[int], Sam2Features],
        *,
        num_frames: int,
        start: int,
        prompts: Mapping[int, Sam2Prompt],
        corrections: Mapping[int, int],
        gt: Mapping[int, Tensor],
        method: PointSampling,
        prob_from_gt: float,
        corrected_as_cond: bool,
        generator: torch.Generator | None,
    ) -> Iterator[tuple[int, list[DecodeStep]]]:
        """Track ``B`` objects from the conditioning frames ``prompts`` (processed first, without memory) through
        frames ``start..num_frames-1`` in increasing order, as ``SAM2Train.forward_tracking``.

        Args:
            features: frame index → its features (``N = B``).
            num_frames: ``T``.
            start: the first frame tracked.
            prompts: conditioning frame → its prompt: ``masks (B, 1, S, S)``, or ``points``/``point_labels`` (box
                corners with labels 2 and 3).
            corrections: frame → corrective clicks to add there.
            gt: frame → ``(B, S, S)`` bool ground truth the corrective clicks are drawn from (frames with
                corrections).
            method: ``"uniform"`` or ``"center"`` click sampling.
            prob_from_gt: probability that a click is drawn from the ground truth instead of the error region.
            corrected_as_cond: a tracked frame that received clicks becomes a conditioning memory.
            generator: the random stream of the clicks.

        Yields:
            ``(frame, passes)`` in processing order.
        """
        sam2 = self.sam2
        size = (sam2.image_size, sam2.image_size)
        cond = list(prompts)
        order = cond + [t for t in range(start, num_frames) if t not in prompts]
        plan = [(t, False) for t in order if t not in prompts]
        bank = sam2.memory_bank(num_frames)
        last = last_reads(plan, bank.read_window, num_frames)
        tracked = 0  # position in ``plan`` of the next tracked frame
        for frame in order:
            feats = features(frame)
            prompt = prompts.get(frame)
            conditioning = prompt is not None
            out = sam2.track_step(feats, bank, frame, prompt=prompt, conditioning=conditioning)
            passes = [out]
            points, labels = _clicks(prompt)
            corrected = corrections.get(frame, 0) if out.image_embeddings is not None else 0  # not on a mask prompt
            for _ in range(corrected):
                from_gt = prob_from_gt > 0 and uniform(generator) < prob_from_gt
                pred = None if from_gt else upsample_masks(out.masks[:, 0], size) > 0
                new_points, new_labels = sample_error_points(gt[frame], pred, method=method, generator=generator)
                points = new_points if points is None else torch.cat([points, new_points], dim=1)
                labels = new_labels if labels is None else torch.cat([labels, new_labels], dim=1)
                boxes = prompt.boxes if prompt is not None else None
                clicks = Sam2Prompt(points=points, point_labels=labels, boxes=boxes)
                # SAM2 decodes again from the same memory-conditioned features and feeds the previous mask logits
                # back with the clicks (``iter_use_prev_mask_pred``)
                out = sam2.track_step(
                    feats,
                    bank,
                    frame,
                    prompt=clicks,
                    conditioning=conditioning,
                    previous_masks=out.masks,
                    image_embeddings=out.image_embeddings,
                )
                passes.append(out)
            as_cond = conditioning or (corrected_as_cond and corrected > 0)
            # SAM2's rule: in eval mode the memory of a frame prompted with clicks, a box or a mask is binarised
            sam2.remember(feats, bank, out, conditioning=as_cond)
            if not conditioning:
                bank.forget([t for t in list(bank.tracked) if last.get(t, -1) <= tracked])
                tracked += 1
            yield frame, [self._decode_step(p) for p in passes]

    # -- forward -------------------------------------------------------------------------------------------------

    def _generator(self, device: torch.device) -> torch.Generator:
        """A stream for the prompt simulation, seeded from torch's global generator so that seeded runs repeat."""
        seed = int(torch.randint(0, 2**62, ()))
        return torch.Generator(device=device).manual_seed(seed)

    def forward_frames(self, batch: AVSBatch, frames: Tensor | None) -> AVSOutput:
        """Training: simulated prompts on the drawn clip; evaluation: the VOS protocol on every frame.

        Args:
            batch: frames ``(B, T, 3, H, W)`` uint8, masks ``(B, T, H, W)``, ``meta["first_frame"]`` (evaluation).
            frames: the frames to run (training), or None (every frame).

        Returns:
            See the class docstring.
        """
        if self.training:
            return self._forward_train(batch.select_frames(frames) if frames is not None else batch)
        return self._forward_eval(batch)

    def _forward_train(self, batch: AVSBatch) -> AVSOutput:
        cfg = self.config
        b, t, _, h, w = batch.frames.shape
        device = batch.frames.device
        generator = self._generator(device)
        plan = plan_prompts(t, cfg.prompts, generator)
        gt = self._masks_at_input_size(batch.masks.to(device))  # (B, T, S, S)
        prompts: dict[int, Sam2Prompt] = {}
        for frame in plan.init_cond_frames:
            target = gt[:, frame]  # (B, S, S)
            if not plan.use_points:
                prompts[frame] = Sam2Prompt(masks=target[:, None].float())
            elif plan.use_box[frame]:
                points, labels = sample_box_points(
                    target, noise=cfg.prompts.box_noise, noise_bound=cfg.prompts.box_noise_bound, generator=generator
                )
                prompts[frame] = Sam2Prompt(points=points, point_labels=labels)
            else:
                points, labels = sample_error_points(target, None, method="uniform", generator=generator)
                prompts[frame] = Sam2Prompt(points=points, point_labels=labels)
        feats = self._encode(batch)  # B*T frames, b-major
        passes = dict(
            self._track(
                lambda i: feats.select([k * t + i for k in range(b)]),
                num_frames=t,
                start=0,
                prompts=prompts,
                corrections={f: cfg.prompts.num_correction_points for f in plan.frames_to_correct},
                gt={f: gt[:, f] for f in range(t)},
                method="uniform",
                prob_from_gt=cfg.prompts.prob_sample_from_gt,
                corrected_as_cond=cfg.prompts.add_all_frames_to_correct_as_cond,
                generator=generator,
            )
        )
        steps = [passes[i] for i in range(t)]
        final = torch.stack([s[-1].masks[:, 0] for s in steps], dim=1)  # (B, T, S/4, S/4)
        return AVSOutput(
            mask_logits=upsample_masks(final, (h, w))[:, :, None],
            object_logits=torch.stack([s[-1].object_logits for s in steps], dim=1),
            aux={"steps": steps},
        )

    def _forward_eval(self, batch: AVSBatch) -> AVSOutput:
        b, t, _, h, w = batch.frames.shape
        first = [int(m.get("first_frame", 0)) for m in batch.meta]
        if any(not 0 <= f < t for f in first):
            raise ValueError(f"meta['first_frame'] {first} outside a clip of {t} frames")
        logits = batch.frames.new_full((b, t, 1, h, w), NO_OBJECT_SCORE, dtype=torch.float32)
        objects = batch.frames.new_full((b, t), NO_OBJECT_SCORE, dtype=torch.float32)
        # Tracks whose object starts on the same frame are tracked together.
        for start in sorted(set(first)):
            index = torch.tensor([i for i, f in enumerate(first) if f == start], device=batch.frames.device)
            masks, objs = self._track_from(batch, index, start)
            logits[index, start:] = masks
            objects[index, start:] = objs
        return AVSOutput(mask_logits=logits, object_logits=objects)

    def track(
        self,
        batch: AVSBatch,
        *,
        start: int = 0,
        points: Tensor | None = None,
        point_labels: Tensor | None = None,
        masks: Tensor | None = None,
    ) -> AVSOutput:
        """Track objects given by user prompts on frame ``start`` through the rest of the clip (SAM2's video
        predictor with one prompted frame), by the evaluation path with the prompt given instead of drawn from the
        ground truth. Frames before ``start`` are predicted absent.

        Args:
            batch: frames ``(B, T, 3, H, W)`` uint8, one row per object (rows may repeat one video);
                ``batch.orig_size[i]``: the ``(H0, W0)`` frame the coordinates of row ``i`` refer to (the video's
                own resolution; None: the frames' ``(H, W)``).
            start: the prompted frame.
            points: ``(B, P, 2)`` float ``(x, y)`` pixel coordinates in the ``orig_size`` frame, scaled here to
                SAM2's input size as SAM2's predictor scales them (``x / W0 * S``).
            point_labels: ``(B, P)`` int: 1 a positive click, 0 a negative one, 2 and 3 the top-left and
                bottom-right corners of a box.
            masks: ``(B, H', W')`` instead of points: each object's mask on frame ``start``, at any resolution
                (brought to SAM2's input size by nearest neighbours; SAM2 outputs it as that frame's mask).

        Returns:
            ``mask_logits (B, T, 1, H, W)`` and ``object_logits (B, T)``, as :meth:`forward` in eval mode.
        """
        b, t, _, h, w = batch.frames.shape
        device = batch.frames.device
        if not 0 <= start < t:
            raise ValueError(f"track: start frame {start} is outside a clip of {t} frames")
        prompt = self._user_prompt(batch, points=points, point_labels=point_labels, masks=masks)
        logits = batch.frames.new_full((b, t, 1, h, w), NO_OBJECT_SCORE, dtype=torch.float32)
        objects = batch.frames.new_full((b, t), NO_OBJECT_SCORE, dtype=torch.float32)
        with torch.no_grad():
            tracked, scores = self._track_from(batch, torch.arange(b, device=device), start, prompt)
        logits[:, start:], objects[:, start:] = tracked, scores
        return AVSOutput(mask_logits=logits, object_logits=objects)

    def _user_prompt(
        self, batch: AVSBatch, *, points: Tensor | None, point_labels: Tensor | None, masks: Tensor | None
    ) -> Sam2Prompt:
        """The prompt of :meth:`track` at SAM2's input size, for the ``B`` rows of ``batch``."""
        b, _, _, h, w = batch.frames.shape
        device = batch.frames.device
        if (masks is None) == (points is None) or (points is None) != (point_labels is None):
            raise ValueError("track: give points with point_labels, or masks (one prompt kind per call)")
        s = self.sam2.image_size
        if masks is not None:
            if masks.dim() != 3 or masks.shape[0] != b:
                raise ValueError(f"track: masks must be (B={b}, H, W), got {tuple(masks.shape)}")
            prompt = Sam2Prompt(masks=self._masks_at_input_size(masks[:, None].to(device)).float())  # (B, 1, S, S)
        else:
            if points.dim() != 3 or points.shape[0] != b or points.shape[-1] != 2:
                raise ValueError(f"track: points must be (B={b}, P, 2), got {tuple(points.shape)}")
            if tuple(point_labels.shape) != tuple(points.shape[:2]):
                got = tuple(point_labels.shape)
                raise ValueError(f"track: point_labels must be {tuple(points.shape[:2])}, got {got}")
            sizes = [size or (h, w) for size in batch.orig_size]
            scale = torch.tensor([[s / w0, s / h0] for h0, w0 in sizes], device=device)  # (B, 2)
            prompt = Sam2Prompt(
                points=points.to(device).float() * scale[:, None], point_labels=point_labels.to(device).long()
            )
        return prompt

    def track_iter(
        self,
        chunks: Iterable[AVSBatch],
        *,
        start: int = 0,
        points: Tensor | None = None,
        point_labels: Tensor | None = None,
        masks: Tensor | None = None,
    ) -> Iterator[tuple[int, Tensor, Tensor]]:
        """:meth:`track` on a video that comes in chunks (a long video, decoded as it is tracked), with its results.

        The chunks hold the frames from ``start`` on, in order (frames before ``start`` are predicted absent and are
        not given); each chunk is one image-encoder call, so chunks of ``config.eval_chunk`` frames reproduce
        :meth:`track` exactly. Only SAM2's windowed memory bank and the current chunk's features are held, so memory
        does not grow with the video's length; the video's length need not be known.

        Args:
            chunks: :class:`~avseg.data.types.AVSBatch` of ``(B, n, 3, H, W)`` frames each, one row per object, as
                :meth:`track` takes them (``orig_size`` of the first chunk is the frame the coordinates refer to).
            start: index of the prompted frame (the first frame of the first chunk).
            points, point_labels, masks: the prompt on frame ``start``, as for :meth:`track`.

        Yields:
            ``(frame, mask_logits (B, 1, H, W), object_logits (B,))`` for frames ``start, start + 1, ...``.
        """
        sam2 = self.sam2
        bank = None
        frame = start
        for chunk in chunks:
            _, n, _, h, w = chunk.frames.shape
            if bank is None:  # the prompted frame
                prompt = self._user_prompt(chunk, points=points, point_labels=point_labels, masks=masks)
                # Reads reach back a fixed window, so a bank sized for a long video remembers what one sized for the
                # true length would (pointers are min(T, 16) either way: shorter videos have no frames before 0).
                bank = sam2.memory_bank(1 << 20)
            with torch.no_grad():  # per step, not around the yields: the caller's grad mode stays its own
                encoded = self._encode(chunk)  # B * n frames, b-major
            for j in range(n):
                conditioning = frame == start
                with torch.no_grad():
                    feats = encoded.select([k * n + j for k in range(chunk.batch_size)])
                    out = sam2.track_step(
                        feats, bank, frame, prompt=prompt if conditioning else None, conditioning=conditioning
                    )
                    sam2.remember(feats, bank, out, conditioning=conditioning)
                    if not conditioning:  # as _track: forget what no later frame reads (t reads t - window .. t - 1)
                        bank.forget([t for t in list(bank.tracked) if t + bank.read_window <= frame])
                    logits = upsample_masks(out.masks, (h, w))
                yield frame, logits, out.object_score_logits
                frame += 1

    def _eval_prompt(self, gt: Tensor) -> tuple[Sam2Prompt, int]:
        """The conditioning frame's prompt from its ground truth ``(B, S, S)`` and the clicks still to add."""
        cfg = self.config
        if cfg.eval_prompt == "mask":
            return Sam2Prompt(masks=gt[:, None].float()), 0
        if cfg.eval_prompt == "box":
            generator = torch.Generator(device=gt.device).manual_seed(0)  # only an empty mask draws (a click)
            points, labels = sample_box_points(gt, noise=0.0, generator=generator)
            return Sam2Prompt(points=points, point_labels=labels), 0
        points, labels = sample_error_points(gt, None, method="center")
        return Sam2Prompt(points=points, point_labels=labels), cfg.eval_clicks - 1

    def _track_from(
        self, batch: AVSBatch, index: Tensor, start: int, prompt: Sam2Prompt | None = None
    ) -> tuple[Tensor, Tensor]:
        """Tracks ``index`` of ``batch`` from frame ``start`` to the end: ``(n, T - start, 1, H, W)`` logits and
        ``(n, T - start)`` object scores. Frames are encoded ``eval_chunk`` at a time, in processing order. The
        conditioning prompt is ``prompt`` (at SAM2's input size, no further clicks) or else the evaluation prompt."""
        cfg = self.config
        _, t, _, h, w = batch.frames.shape
        n = len(index)
        tracks = _select_tracks(batch, index)
        gt = self._masks_at_input_size(tracks.masks[:, start : start + 1])[:, 0]  # (n, S, S)
        prompt, clicks = self._eval_prompt(gt) if prompt is None else (prompt, 0)
        cache: dict[int, Sam2Features] = {}

        def features(frame: int) -> Sam2Features:
            if frame not in cache:
                chunk = list(range(frame, min(frame + cfg.eval_chunk, t)))
                encoded = self._encode(tracks.select_frames(torch.tensor(chunk)))  # n * len(chunk) frames, b-major
                for j, f in enumerate(chunk):
                    cache[f] = encoded.select([k * len(chunk) + j for k in range(n)])
            return cache.pop(frame)

        device = batch.frames.device
        masks = torch.empty(n, t - start, 1, h, w, device=device)
        objects = torch.empty(n, t - start, device=device)
        for frame, steps in self._track(
            features,
            num_frames=t,
            start=start,
            prompts={start: prompt},
            corrections={start: clicks},
            gt={start: gt},
            method="center",
            prob_from_gt=0.0,
            corrected_as_cond=False,
            generator=None,
        ):
            masks[:, frame - start] = upsample_masks(steps[-1].masks, (h, w))
            objects[:, frame - start] = steps[-1].object_logits
        return masks, objects

    # -- losses --------------------------------------------------------------------------------------------------

    def losses(self, batch: AVSBatch, output: AVSOutput) -> dict[str, Tensor]:
        """SAM2's multi-step multi-mask loss on the labelled computed frames; ``"loss"`` is the weighted total.

        Returns:
            ``"focal"``, ``"dice"``, ``"iou"``, ``"object"`` (each summed over frames and passes, divided by the
            number of tracks) and ``"loss"``.
        """
        cfg = self.config.loss
        steps: list[list[DecodeStep]] = output.aux["steps"]
        masks = output.select_computed(batch.masks.to(output.mask_logits.device))  # (B, T', H, W)
        labelled = output.select_computed((batch.label_valid & batch.frame_valid).to(masks.device))  # (B, T')
        b = masks.shape[0]
        keys = ("focal", "dice", "iou", "object")
        sums = {k: output.mask_logits.sum() * 0.0 for k in keys}  # keeps the graph connected without labels
        for i, passes in enumerate(steps):
            valid = labelled[:, i]
            if not valid.any():
                continue
            target = masks[valid, i] > 0  # (n, H, W)
            if cfg.mask_size is not None and tuple(target.shape[-2:]) != (cfg.mask_size, cfg.mask_size):
                size = (cfg.mask_size, cfg.mask_size)
                target = F.interpolate(target[:, None].float(), size=size, mode="nearest")[:, 0] > 0
            share = 1.0 / len(passes) if cfg.step_reduction == "mean" else 1.0
            for step in passes:
                terms = sam_multimask_losses(
                    upsample_masks(step.candidates[valid], tuple(target.shape[-2:])),  # (n, M, H, W)
                    step.iou_pred[valid],
                    step.object_logits[valid],
                    target,
                    focal_weight=cfg.focal_weight,
                    dice_weight=cfg.dice_weight,
                    supervise_all_iou=cfg.supervise_all_iou,
                    iou_l1=cfg.iou_l1,
                )
                for k in keys:
                    sums[k] = sums[k] + share * terms[k].sum()
        out = {k: v / b for k, v in sums.items()}
        weights = {
            "focal": cfg.focal_weight,
            "dice": cfg.dice_weight,
            "iou": cfg.iou_weight,
            "object": cfg.object_weight,
        }
        out["loss"] = sum((weights[k] * out[k] for k in keys), output.mask_logits.new_zeros(()))
        return out


def _clicks(prompt: Sam2Prompt | None) -> tuple[Tensor | None, Tensor | None]:
    """A prompt's clicks ``(B, P, 2)`` and labels ``(B, P)`` (positive where not given), the start of corrections."""
    if prompt is None or prompt.points is None:
        return None, None
    labels = prompt.point_labels
    if labels is None:
        labels = torch.ones(prompt.points.shape[:2], dtype=torch.long, device=prompt.points.device)
    return prompt.points, labels


def _select_tracks(batch: AVSBatch, index: Tensor) -> AVSBatch:
    """The tracks ``index (n,)`` of ``batch``: every tensor and list field restricted to them."""
    pick = index.tolist()
    changes: dict[str, Any] = {}
    for f in fields(batch):
        value = getattr(batch, f.name)
        if isinstance(value, Tensor):
            changes[f.name] = value.index_select(0, index.to(value.device))
        elif isinstance(value, list):
            changes[f.name] = [value[i] for i in pick]
    return replace(batch, **changes)


# -- presets ---------------------------------------------------------------------------------------------------------

_ALL_PARTS = ("image_encoder", "prompt_encoder", "mask_decoder", "memory")
_SIZES = {"t": "tiny", "s": "small", "b+": "base-plus", "l": "large"}
_MOSE = (
    "facebookresearch/sam2 sam2/configs/sam2.1_training/sam2.1_hiera_b+_MOSE_finetune.yaml: AdamW lr 5e-6 (vision "
    "3e-6, layer decay 0.9), wd 0.1, cosine to lr/10, grad clip 0.1, 1 video x up to 3 objects per GPU on 8 GPUs, "
    "8 frames at 1024 px, 40 epochs, bf16; the same recipe for every size"
)


def _paper(version: Literal["sam2", "sam2.1"], size: str) -> SAM2VOSConfig:
    variant = f"{version}-hiera-{_SIZES[size]}"
    return SAM2VOSConfig(
        sam2=Sam2LayerConfig(
            variant=variant,  # type: ignore[arg-type]
            weights=f"facebook/{variant}",
            image_size=1024,
            trainable=_ALL_PARTS,
            memory_dtype="float32",  # SAM2's training code keeps memories in float32
        ),
        recipe=TrainRecipe(
            optim=OptimConfig(name="adamw", lr=5e-6, weight_decay=0.1),
            schedule=ScheduleConfig(kind="cosine", min_lr_ratio=0.1),
            batch_size=3,
            epochs=40,
            clip_grad_norm=0.1,
            image_size=1024,
            augment=ClipAugmentConfig(),  # the MOSE config's flip, affine, colour jitter and grayscale
            notes=_MOSE,
        ),
    )


@register_model("sam2-hiera-t", SAM2VOS, tasks=("vos",))
def sam2_hiera_t() -> SAM2VOSConfig:
    """SAM 2 Hiera-T (Meta's weights), fine-tuned for VOS with simulated prompts (SAM2's training recipe)."""
    return _paper("sam2", "t")


@register_model("sam2-hiera-s", SAM2VOS, tasks=("vos",))
def sam2_hiera_s() -> SAM2VOSConfig:
    """SAM 2 Hiera-S (Meta's weights), fine-tuned for VOS with simulated prompts (SAM2's training recipe)."""
    return _paper("sam2", "s")


@register_model("sam2-hiera-b+", SAM2VOS, tasks=("vos",))
def sam2_hiera_bplus() -> SAM2VOSConfig:
    """SAM 2 Hiera-B+ (Meta's weights), fine-tuned for VOS with simulated prompts (SAM2's training recipe)."""
    return _paper("sam2", "b+")


@register_model("sam2-hiera-l", SAM2VOS, tasks=("vos",))
def sam2_hiera_l() -> SAM2VOSConfig:
    """SAM 2 Hiera-L (Meta's weights), fine-tuned for VOS with simulated prompts (SAM2's training recipe)."""
    return _paper("sam2", "l")


@register_model("sam2.1-hiera-t", SAM2VOS, tasks=("vos",))
def sam21_hiera_t() -> SAM2VOSConfig:
    """SAM 2.1 Hiera-T (Meta's weights), fine-tuned for VOS with simulated prompts (SAM2's training recipe)."""
    return _paper("sam2.1", "t")


@register_model("sam2.1-hiera-s", SAM2VOS, tasks=("vos",))
def sam21_hiera_s() -> SAM2VOSConfig:
    """SAM 2.1 Hiera-S (Meta's weights), fine-tuned for VOS with simulated prompts (SAM2's training recipe)."""
    return _paper("sam2.1", "s")


@register_model("sam2.1-hiera-b+", SAM2VOS, tasks=("vos",))
def sam21_hiera_bplus() -> SAM2VOSConfig:
    """SAM 2.1 Hiera-B+ (Meta's weights), fine-tuned for VOS as in sam2.1_hiera_b+_MOSE_finetune.yaml."""
    return _paper("sam2.1", "b+")


@register_model("sam2.1-hiera-l", SAM2VOS, tasks=("vos",))
def sam21_hiera_l() -> SAM2VOSConfig:
    """SAM 2.1 Hiera-L (Meta's weights), fine-tuned for VOS with simulated prompts (SAM2's training recipe)."""
    return _paper("sam2.1", "l")


@register_model("sam2-tiny", SAM2VOS, tasks=("vos",))
def sam2_tiny() -> SAM2VOSConfig:
    """Tiny SAM2 for CPU demos and tests: a random tiny SAM2, all parts trained with SAM2's prompt simulation.

    The SAM2 shape is ``auralsam2-tiny``'s (the layer's 128-d test shape at 128 px with its Hiera trunk twice as
    wide). Nothing pretrained is available offline, so it starts from random weights with SAM2's own initialisation
    (``sam2.random_init``) and every part trains at one learning rate (no image-encoder scale or layer decay, which
    only protect pretrained weights): AdamW 3e-4, cosine with 30 warm-up steps, clipping at 1, 8 clips per step. A
    frame's decoder passes are averaged rather than summed, so that steps with and without corrective clicks weigh
    alike. Prompt simulation and loss weights are SAM2's. From random weights the memory path learns fastest with
    mask prompts alone (``prompts.prob_point_input=0``), and the decoder learns clicks from single frames
    (``train_frames=1``, clicks only), as SAM2 learns them from SA-1B images; the packaged ``avseg:sam2-tiny-synthav``
    was trained on clicked single frames, then with mask prompts, then with the full prompt simulation (its
    ``ASSET.md`` gives the commands).
    """
    return SAM2VOSConfig(
        pretrained=False,
        sam2=cpu_sam2_config(trainable=_ALL_PARTS),
        loss=SAM2LossConfig(step_reduction="mean"),
        optim_groups=Sam2ParamGroupConfig(image_encoder_lr_scale=1.0, layer_decay=1.0),
        recipe=TrainRecipe(
            optim=OptimConfig(name="adamw", lr=3e-4, weight_decay=1e-4),
            schedule=ScheduleConfig(kind="cosine", warmup_steps=30),
            batch_size=8,
            epochs=20,
            clip_grad_norm=1.0,
            image_size=128,
            notes="avseg's CPU recipe for a random tiny SAM2; frames read at SAM2's 128 px, 8-frame clips",
        ),
    )


# -- SAM2 weights as a ready model -----------------------------------------------------------------------------------

_PRESET_OF_VARIANT = {
    **{
        f"{version}-hiera-{size}": f"{version}-hiera-{short}"
        for version in ("sam2", "sam2.1")
        for short, size in _SIZES.items()
    },
    "test-tiny": "sam2-tiny",
}


def _conversion_record(folder: Path) -> dict[str, Any]:
    """``conversion.json`` of a folder ``avseg convert sam2`` wrote ({} when there is none or it is unreadable)."""
    try:
        record = json.loads((folder / "conversion.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


def weights_preset(folder: Path, source: str, record: Mapping[str, Any] | None = None) -> str:
    """The ``sam2-*`` preset a SAM2 weights folder fits.

    The preset ``avseg convert sam2`` recorded when it is a SAM2 preset (``sam2-tiny`` for the packaged weights), else
    the preset of the recorded variant, else of a variant the source's name spells (``facebook/sam2.1-hiera-large``).

    Args:
        folder: the weights folder.
        source: what the user named.
        record: the folder's ``conversion.json`` when already read (default: read here).

    Raises:
        UsageError: none of these says which SAM2 the weights are.
    """
    record = _conversion_record(folder) if record is None else record
    preset = record.get("preset")
    if isinstance(preset, str) and preset in _PRESET_OF_VARIANT.values():
        return preset
    for name in (record.get("variant"), Path(source.rstrip("/")).name, folder.name):
        if isinstance(name, str) and name in _PRESET_OF_VARIANT:
            return _PRESET_OF_VARIANT[name]
    raise UsageError(
        f"{source}: SAM2 weights of an unknown variant (neither its conversion.json nor its name is one of "
        f"{', '.join(sorted(_PRESET_OF_VARIANT))}); write the folder with `avseg convert sam2 ... --variant V`"
    )


@register_sam2_weights_builder
def sam2_vos_on_weights(folder: Path, source: str) -> SAM2VOS:
    """The ``sam2-*`` model on a SAM2 weights folder (:func:`avseg.checkpoint.sam2_weights_config`), in eval mode.

    The preset is :func:`weights_preset`'s; its SAM2 loads the folder's weights (``pretrained``), at the image size
    ``conversion.json`` records when there is one (a tiny SAM2 trained at 128 px), else the preset's.

    Args:
        folder: the weights folder.
        source: what the user named (a path, a Hub id or ``avseg:<name>``), for messages and the variant's name.
    """
    record = _conversion_record(folder)
    preset = weights_preset(folder, source, record)
    overrides: dict[str, Any] = {"pretrained": True, "sam2.weights": str(folder)}
    size = record.get("image_size")
    if isinstance(size, int) and size != get_entry(preset).config().sam2.image_size:
        overrides["sam2.image_size"] = size
    model = create_model(preset, **overrides)
    return model.eval()
