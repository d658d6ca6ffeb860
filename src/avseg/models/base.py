"""The one model contract every avseg model follows.

A model is an ``nn.Module`` built from a config dataclass. It takes an :class:`~avseg.data.types.AVSBatch` and returns
an :class:`AVSOutput`; it says how it is trained through :meth:`AVSModel.losses` and :meth:`AVSModel.param_groups`.
The trainer, the evaluator, ``avseg predict`` and the registry-wide tests depend on nothing else, so the four
families (transformer AVS models, SAM2-prompting models, SAM2 external fusers, MLLM + SAM) are interchangeable.

:meth:`AVSModel.forward` is a template: in training it draws the frames a step runs on (``config.train_frames``),
calls the family's :meth:`AVSModel.forward_frames` on them, and places the results back into the whole clip, marking
the computed frames in :attr:`AVSOutput.computed_frames`. A family implements ``forward_frames`` and ``losses``.

A model declares whether it reads a referring expression (:attr:`AVSModel.text_input`); :func:`requires_text` turns
that declaration and what the model was trained on into the one rule ``avseg eval`` and ``avseg predict`` apply.

Shapes: ``B`` batch, ``T`` frames, ``K`` mask channels (1 for binary tasks: S4, MS3, Ref-AVS, RVOS; the number of
classes, :data:`AVSS_NUM_CLASSES`, for AVSS), ``H, W`` the batch's frame size (models that predict at lower
resolution upsample).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avseg.data.augment import training_transform
from avseg.data.benchmarks import AVSS_NUM_CLASSES, BENCHMARKS, FORMAT_READERS, format_has_text
from avseg.data.types import AVSBatch, AVSSample
from avseg.errors import ShapeError
from avseg.metrics.protocols import EvalProtocol
from avseg.recipe import TrainRecipe, upgrade_recipe

__all__ = [
    "AVSS_NUM_CLASSES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "AVSModel",
    "AVSOutput",
    "AnswerMode",
    "TextInput",
    "optimiser_groups",
    "requires_text",
    "set_answer_mode",
    "set_run_option",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

TextInput = Literal["none", "optional", "required"]
"""What a model does with ``batch.text`` (:attr:`AVSModel.text_input`)."""


@dataclass
class AVSOutput:
    """What every model returns.

    Attributes:
        mask_logits: ``(B, T, K, H, W)`` logits at the batch's frame size. Binary tasks: ``K = 1``, probability =
            sigmoid. Semantic (AVSS): ``K`` classes, softmax over ``K``.
        object_logits: optional ``(B, T)`` logits that the referred object is present (SAM2 object score).
        iou_pred: optional ``(B, T, M)`` predicted IoU of ``M`` candidate masks.
        aux: named auxiliary tensors (intermediate masks, embeddings for contrastive losses, ...), documented by each
            model; consumed by its own ``losses``. Their frame axis holds the computed frames only (``T'``).
        computed_frames: ``(B, T)`` bool, the frames the model ran on; every clip has the same number ``T'`` of them
            (all ``T`` in eval mode). The per-frame fields above are zero on the other frames, and losses skip them.
            None: every frame (models that do not use :meth:`AVSModel.forward`'s template).
    """

    mask_logits: Tensor
    object_logits: Tensor | None = None
    iou_pred: Tensor | None = None
    aux: dict[str, Any] = field(default_factory=dict)
    computed_frames: Tensor | None = None

    def select_computed(self, x: Tensor) -> Tensor:
        """``x (B, T, ...)`` restricted to the computed frames of every clip: ``(B, T', ...)`` (``x`` itself when
        every frame was computed), in the frame order of the tensors in ``aux``."""
        if self.computed_frames is None:
            return x
        computed = self.computed_frames.to(x.device)
        return x[computed].view(x.shape[0], -1, *x.shape[2:])

    def probabilities(self) -> Tensor:
        """``(B, T, K, H, W)``: sigmoid for ``K = 1``, softmax over classes otherwise."""
        if self.mask_logits.shape[2] == 1:
            return self.mask_logits.sigmoid()
        return self.mask_logits.softmax(dim=2)


def optimiser_groups(
    groups: Mapping[tuple[bool, float | None], list[nn.Parameter]], lr: float, weight_decay: float
) -> list[dict[str, Any]]:
    """Parameter groups from parameters keyed by (decayed?, own learning rate or None for the recipe's): ``decay``
    and ``no_decay`` at ``lr``, then ``decay@LR`` and ``no_decay@LR`` for each other rate."""
    return [
        {
            "params": groups[key],
            "lr": lr if key[1] is None else key[1],
            "weight_decay": weight_decay if key[0] else 0.0,
            "name": ("decay" if key[0] else "no_decay") + ("" if key[1] is None else f"@{key[1]:g}"),
        }
        for key in sorted(groups, key=lambda k: (k[1] is not None, k[1] or 0.0, not k[0]))
        if groups[key]
    ]


class AVSModel(nn.Module):
    """Base class: holds the config, runs the frame bookkeeping of :meth:`forward`, normalises frames, checks outputs,
    and supplies default parameter groups.

    Subclasses set ``family`` (the registry name of the architecture, e.g. ``"tpavi"``) and ``config_class`` (a
    config with a ``train_frames: int | None`` field), and implement :meth:`forward_frames` and :meth:`losses`.
    """

    family: ClassVar[str]
    config_class: ClassVar[type]
    official_protocols: ClassVar[Mapping[str, EvalProtocol]] = MappingProxyType({})
    """Per benchmark name, the evaluation protocol behind the family's published numbers (``avseg eval --protocol
    official``; see :mod:`avseg.metrics.protocols`). Empty: the family has no published protocol."""
    preset: str | None
    """The registered preset the model was built from (set by ``create_model`` and ``load_model``; None for a model
    built from a config directly)."""
    tasks: tuple[str, ...]
    """The benchmarks that preset serves (:data:`avseg.data.benchmarks.BENCHMARKS` names; empty when unknown)."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config
        self.preset = None
        self.tasks = ()
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0, persistent=False)

    @classmethod
    def upgrade_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        """A config dict as an older avseg stored it in a checkpoint, in today's layout (read by ``load_model``
        before the config is built). The base class upgrades the training recipe; families with renamed fields
        extend it."""
        if isinstance(config.get("recipe"), dict):
            config = {**config, "recipe": upgrade_recipe(config["recipe"])}
        return config

    # -- the contract ------------------------------------------------------------------------------------------------

    def forward(self, batch: AVSBatch) -> AVSOutput:
        """Segment a batch.

        In training mode with ``config.train_frames`` set, only that many frames of each clip are run (the same ones
        for the whole batch, drawn by :meth:`draw_training_frames`); otherwise every frame is.

        Args:
            batch: frames ``(B, T, 3, H, W)`` uint8 and the rest of :class:`~avseg.data.types.AVSBatch`.

        Returns:
            ``mask_logits (B, T, K, H, W)`` (zero on frames that were not run), the optional ``object_logits (B, T)``
            and ``iou_pred (B, T, M)`` likewise, ``computed_frames (B, T)``, and the model's ``aux`` of the frames it
            ran.
        """
        frames = self.draw_training_frames(batch, self.config.train_frames)  # (T',) or None: every frame
        output = self.forward_frames(batch, frames)
        return self.check_output(batch, self._place_frames(batch, output, frames))

    def forward_frames(self, batch: AVSBatch, frames: Tensor | None) -> AVSOutput:  # pragma: no cover - abstract
        """The family's computation on frames ``frames (T',)`` (sorted indices) of every clip of ``batch``, or on
        every frame when None. The whole clip stays readable (a soundtrack heard whole, a text read once).

        Returns:
            An output whose per-frame fields hold those frames: ``mask_logits (B, T', K, H, W)``, ``object_logits
            (B, T')``, ``iou_pred (B, T', M)``; ``aux`` as the family documents it.
        """
        raise NotImplementedError

    def losses(self, batch: AVSBatch, output: AVSOutput) -> dict[str, Tensor]:  # pragma: no cover - abstract
        """Named scalar losses; ``"loss"`` is the total the trainer back-propagates, the others are logged."""
        raise NotImplementedError

    @property
    def recipe(self) -> TrainRecipe | None:
        """The preset's training recipe (``config.recipe``); None for a config without one."""
        recipe = getattr(self.config, "recipe", None)
        return recipe if isinstance(recipe, TrainRecipe) else None

    def train_transform(self, hflip: float = 0.0) -> Callable[[AVSSample], AVSSample] | None:
        """The transform the trainer applies to training samples (:func:`avseg.data.augment.training_transform`): the
        recipe's clip augmentation (``recipe.augment``; ``hflip > 0`` sets its flip probability), else a horizontal
        flip with probability ``hflip``; None: no augmentation."""
        return training_transform(self.recipe.augment if self.recipe is not None else None, hflip)

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Optimiser parameter groups over trainable parameters. Default: no weight decay on biases and norm weights
        (the usual AdamW practice), and a submodule whose ``own_lr`` attribute is a number (the SAM2 layer:
        ``sam2.lr``) trains at that learning rate: groups ``decay`` and ``no_decay``, then ``decay@LR`` and
        ``no_decay@LR`` for each other rate. Models with other lower-LR parts override this."""
        own_lr = self.own_learning_rates()
        groups: dict[tuple[bool, float | None], list[nn.Parameter]] = {}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            decays = not (p.ndim <= 1 or name.endswith(".bias"))
            groups.setdefault((decays, own_lr.get(name)), []).append(p)
        return optimiser_groups(groups, lr, weight_decay)

    def own_learning_rates(self) -> dict[str, float]:
        """Parameter name -> learning rate, for the parameters of submodules whose ``own_lr`` attribute is a number
        (the SAM2 layer's ``sam2.lr``); the others follow the recipe's."""
        own_lr: dict[str, float] = {}
        for prefix, module in self.named_modules():
            part_lr = getattr(module, "own_lr", None)
            if prefix and isinstance(part_lr, (int, float)) and not isinstance(part_lr, bool):
                own_lr.update({name: float(part_lr) for name, _ in module.named_parameters(prefix=prefix)})
        return own_lr

    def on_epoch_start(self, epoch: int) -> None:
        """Hook for schedules inside the model (e.g. unfreezing a backbone after N epochs). Default: nothing."""

    @property
    def text_input(self) -> TextInput:
        """What the model does with the referring expressions of ``batch.text``.

        - ``"none"`` (default): it has no text branch and ignores them.
        - ``"optional"``: it reads them, and a sample whose expression is None runs as if the model had no text
          branch; whether a given checkpoint needs one depends on what it was trained on (:func:`requires_text`).
        - ``"required"``: it cannot segment without one.

        Families with a text branch override this from their config.
        """
        return "none"

    # -- helpers for subclasses --------------------------------------------------------------------------------------

    @property
    def input_size(self) -> int | None:
        """The square size the network sees (``config.input_size``; frames of any size are resized to it by the
        model), or None when it runs at the frames' own size. The size frames are *read* at is a data setting
        (``data.image_size``, defaulting to ``recipe.image_size``), recorded in each checkpoint."""
        value = getattr(self.config, "input_size", None)
        return value if isinstance(value, int) else None

    def draw_training_frames(self, batch: AVSBatch, count: int | None) -> Tensor | None:
        """In training mode: the sorted indices ``(T',)`` of ``count`` frames drawn among those labelled in some clip
        of the batch (all frames when none is), from torch's global generator so that seeded runs repeat. None
        (run every frame) in eval mode, without ``count``, or when ``count`` covers the clip.

        :meth:`forward` runs only these frames in training (``config.train_frames``): each step then sees more clips
        for the same compute, which is what CPU presets need most."""
        t = batch.frames.shape[1]
        if not self.training or count is None or count >= t:
            return None
        candidates = torch.nonzero((batch.label_valid & batch.frame_valid).any(0)).flatten().cpu()
        if len(candidates) == 0:
            candidates = torch.arange(t)
        return candidates[torch.randperm(len(candidates))[:count]].sort().values

    @staticmethod
    def _place_frames(batch: AVSBatch, output: AVSOutput, frames: Tensor | None) -> AVSOutput:
        """``output`` of the frames ``frames (T',)`` placed into clips of ``T`` frames, zero elsewhere."""
        b, t = batch.frames.shape[:2]
        logits = output.mask_logits
        computed = torch.ones(b, t, dtype=torch.bool, device=logits.device)  # (B, T)
        if frames is None:
            return replace(output, computed_frames=computed)
        index = frames.to(logits.device)
        if tuple(logits.shape[:2]) != (b, len(index)):
            raise ShapeError(f"forward_frames: mask_logits {tuple(logits.shape)} for {len(index)} frames of {b} clips")
        computed[:] = False
        computed[:, index] = True

        def place(x: Tensor) -> Tensor:  # (B, T', ...) -> (B, T, ...)
            return x.new_zeros(b, t, *x.shape[2:]).index_copy(1, index, x)

        return replace(
            output,
            mask_logits=place(logits),
            object_logits=place(output.object_logits) if output.object_logits is not None else None,
            iou_pred=place(output.iou_pred) if output.iou_pred is not None else None,
            computed_frames=computed,
        )

    @property
    def num_mask_channels(self) -> int:
        return int(getattr(self.config, "num_classes", 1))

    def normalize_frames(
        self, batch: AVSBatch, frames: Tensor | None = None, size: tuple[int, int] | None = None
    ) -> Tensor:
        """The network input: ``uint8`` ``(B, T, 3, H, W)`` → ImageNet-normalised ``float`` ``(B*T', 3, H', W')``.

        Padded frames (``frame_valid`` False) are exactly 0, as in the official AVSBench and AVSegFormer loaders, which
        pad a clip with zero tensors *after* normalising (mean-grey images). The black ``uint8`` frames a batch stores
        there would otherwise become strongly negative inputs, which reach the real frames through batch-norm
        statistics in training and through any attention across frames.

        Args:
            batch: the batch.
            frames: ``(T',)`` indices of the frames to keep in every clip; None keeps all (``T' = T``).
            size: ``(H', W')`` to resize to (bilinear, antialiased); None keeps ``(H, W)``.
        """
        pixels = batch.frames
        if pixels.ndim != 5 or pixels.shape[2] != 3:
            raise ShapeError(f"batch.frames must be (B, T, 3, H, W), got {tuple(pixels.shape)}")
        valid = batch.frame_valid.to(pixels.device)  # (B, T)
        if frames is not None:
            index = frames.to(pixels.device)
            pixels, valid = pixels[:, index], valid[:, index]  # (B, T', 3, H, W), (B, T')
        x = pixels.flatten(0, 1).float()  # (B*T', 3, H, W)
        if size is not None and tuple(x.shape[-2:]) != tuple(size):
            # Resizing before normalising gives the same numbers (both are affine per channel) for less work.
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        x = (x - self.pixel_mean) / self.pixel_std
        return x.masked_fill(~valid.flatten().view(-1, 1, 1, 1), 0.0)

    def check_output(self, batch: AVSBatch, output: AVSOutput) -> AVSOutput:
        """Raise ShapeError unless ``output.mask_logits`` is ``(B, T, K, H, W)`` for this batch."""
        b, t, _, h, w = batch.frames.shape
        expected = (b, t, self.num_mask_channels, h, w)
        if tuple(output.mask_logits.shape) != expected:
            raise ShapeError(f"{type(self).__name__}: mask_logits {tuple(output.mask_logits.shape)} != {expected}")
        return output

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.parameters() if p.requires_grad)

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    # -- sharing -----------------------------------------------------------------------------------------------------

    def save_pretrained(self, folder: str | Path, **kwargs: Any) -> Path:
        """Write the model as a Hugging Face Hub-layout folder: an avseg checkpoint plus its model card
        (:func:`avseg.hub.save_pretrained`, whose keyword arguments it takes: ``license``, ``meta``, ``results``,
        ...); :func:`avseg.models.from_pretrained` loads it back."""
        from avseg.hub import save_pretrained

        return save_pretrained(self, folder, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:
        """Upload the model to the Hugging Face Hub repository ``repo_id`` (``org/name``): config, safetensors
        weights and a model card (:func:`avseg.hub.push_to_hub`, whose keyword arguments it takes: ``license``,
        ``private``, ``token``, ...). Returns the commit URL."""
        from avseg.hub import push_to_hub

        return push_to_hub(self, repo_id, **kwargs)


AnswerMode = Literal["read", "generate"]


def set_run_option(model: AVSModel, option: str, field: str, value: Any, source: str | Path, *, only: str) -> AVSModel:
    """Set ``model.config.<field>`` to ``value``, given on the command line as ``option`` (``--answer-mode``).

    Args:
        source: the checkpoint, named in the error.
        only: which models have the option, for the error (``"only the MLLM segmenters sa2va-* and svac-* do"``).

    Raises:
        UsageError: one line naming ``option`` and ``source`` when the model's config has no ``field``.
    """
    from avseg.errors import UsageError

    if field not in getattr(model.config, "__dataclass_fields__", {}):
        name = getattr(model, "preset", None) or model.family
        raise UsageError(f"{option} {value}: {source} holds a {name} model, which {only}; drop {option}")
    model.config = replace(model.config, **{field: value})
    return model


def set_answer_mode(model: AVSModel, mode: AnswerMode, source: str | Path) -> AVSModel:
    """Make an MLLM segmenter (``sa2va-*``, ``svac-*``) read the ``[SEG]`` states of its trained answer (``"read"``)
    or write its answer and read the ``[SEG]`` tokens it wrote (``"generate"``, as the released Sa2VA code does); see
    ``answer_mode`` in :mod:`avseg.models.sa2va`. A model that writes no answer is a UsageError naming ``source``.
    """
    only = "writes no answer (only the MLLM segmenters sa2va-* and svac-* do)"
    return set_run_option(model, "--answer-mode", "answer_mode", mode, source, only=only)


def requires_text(model: AVSModel, trained_on: str | None = None) -> str | None:
    """Why ``model`` must be given a referring expression to run, or None when it runs without one.

    In order: a model declaring ``text_input`` ``"none"`` never needs text, and one declaring ``"required"`` always
    does. An ``"optional"`` model needs text when it was trained on data with referring expressions (``trained_on``
    a format of :mod:`avseg.data.benchmarks` whose items carry text: ``refavs``, ``rvos``) and not when it was
    trained on other data. When the training data is unknown, it needs text unless its registered preset serves a
    benchmark without text (``tpavi-tiny`` serves S4 and MS3 as well as Ref-AVS, so it runs without text).

    Args:
        model: the model.
        trained_on: the dataset format it was trained on (``data.format`` of its training run, as its checkpoint
            records it), or None when unknown.

    Returns:
        a short reason (``"it has a text encoder and was trained on refavs data"``), or None.
    """
    declared = model.text_input
    if declared == "none":
        return None
    if declared == "required":
        return "the model declares that it reads text"
    if trained_on is not None:
        needs = trained_on in FORMAT_READERS and format_has_text(trained_on)
        return f"it has a text encoder and was trained on {trained_on} data" if needs else None
    if not model.preset:
        return "it has a text encoder and its checkpoint does not record training on data without text"
    if not model.tasks:
        return f"it has a text encoder and its preset {model.preset} is not registered here"
    if any(not BENCHMARKS[task].text for task in model.tasks):
        return None
    return f"it has a text encoder and its preset {model.preset} serves only referring tasks"
