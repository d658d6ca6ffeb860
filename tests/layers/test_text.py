"""The shared text input (avseg.layers.text): the text config, padding, and the frozen encoder's checkpoint policy."""

from __future__ import annotations

import pytest
import torch

from avseg.layers.text import MINILM_PACKAGE, TextConfig, TextEncoder, TextEncoderConfig, frozen_text_encoder
from avseg.models.avsegformer import AVSegFormerTextConfig
from avseg.models.tpavi import TPAVITextConfig

TINY_BERT = {
    "model_type": "bert",
    "vocab_size": 32,
    "hidden_size": 8,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 16,
}


def test_the_encoders_own_pretrained_switch_wins_and_random_encoders_are_checkpointed() -> None:
    config = TextEncoderConfig(source="unused-folder", pretrained=False, hf_config=TINY_BERT)
    frozen = frozen_text_encoder(config, pretrained=True)  # the encoder's False wins over the model's True
    assert frozen.in_checkpoint and frozen.module.hidden_size == 8
    assert not any(p.requires_grad for p in frozen.parameters()) and not frozen.module.training
    follows = frozen_text_encoder(TextEncoderConfig(source="unused-folder", hf_config=TINY_BERT), pretrained=False)
    assert follows.in_checkpoint  # None follows the model's switch
    assert any(k.startswith("module.model.") for k in follows.state_dict())


def test_every_family_text_config_is_the_shared_one() -> None:
    for config in (TextConfig(), TPAVITextConfig(), AVSegFormerTextConfig()):
        assert isinstance(config, TextConfig) and config.encoder is None  # no text unless an encoder is named


# A random one-layer BERT with the vocabulary of the MiniLM package's tokenizer (which ships with avseg[text]).
MINILM_SHAPED_BERT = {**TINY_BERT, "vocab_size": 30522}
LONG = "the man in the red shirt playing a very loud electric guitar on the left side of the stage"


def released_style_encoder(padding: str, max_tokens: int = 8) -> TextEncoder:
    torch.manual_seed(0)
    config = TextEncoderConfig(
        source=MINILM_PACKAGE, pretrained=False, hf_config=MINILM_SHAPED_BERT, max_tokens=max_tokens, padding=padding
    )
    return TextEncoder(config, pretrained=False).eval()


def test_max_tokens_padding_is_the_released_encode_text() -> None:
    encoder = released_style_encoder("max_tokens")
    texts = ["a dog", LONG]
    with torch.no_grad():
        tokens, mask = encoder(texts)
        assert tokens.shape == (2, 8, 8) and mask.shape == (2, 8)
        for i, text in enumerate(texts):
            # The released AVmodel._encode_text, one expression per call: tokenizer(*[text], max_length, padding to
            # max_length, truncation), then the frozen encoder on input ids *and* attention mask.
            enc = encoder.tokenizer(*[text], max_length=8, padding="max_length", truncation=True, return_tensors="pt")
            expected = encoder.model(**enc).last_hidden_state[0]  # (8, D), pad positions included
            torch.testing.assert_close(tokens[i], expected, atol=1e-6, rtol=0)
            assert mask[i].tolist() == enc["attention_mask"][0].bool().tolist()
        alone, _ = encoder(["a dog"])
    assert mask[0].sum() == 4 and not mask[0, 4:].any()  # [CLS] a dog [SEP], then padding on the right
    assert mask[1].all()  # the long expression is cut to 8 tokens
    assert tokens[0, 4:].abs().sum() > 0  # the pad positions carry the encoder's features, as released
    torch.testing.assert_close(alone[0], tokens[0], atol=1e-6, rtol=0)  # whatever else is in the batch


def test_longest_padding_gives_the_same_features_on_the_real_tokens() -> None:
    fixed = released_style_encoder("max_tokens")
    longest = released_style_encoder("longest")
    with torch.no_grad():
        short, short_mask = longest(["a dog", "a cat"])
        mixed, mixed_mask = longest(["a dog", LONG])
        reference, _ = fixed(["a dog"])
    assert short.shape[1] == 4 and mixed.shape[1] == 8  # the padded length follows the batch
    assert short_mask[0].all() and mixed_mask[0].sum() == 4
    torch.testing.assert_close(short[0], reference[0, :4], atol=1e-5, rtol=0)
    torch.testing.assert_close(mixed[0, :4], reference[0, :4], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="padding"):
        TextEncoderConfig(padding="left")  # type: ignore[arg-type]


def _tiny_clip_folder(folder) -> None:
    """A full two-tower CLIP checkpoint with random tiny weights and a real (tiny-vocabulary) CLIP BPE tokenizer."""
    import json

    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    letters = "abcdefghijklmnopqrstuvwxyz"
    tokens = ["!", *letters, *(c + "</w>" for c in letters), "<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    text = {"vocab_size": len(tokens), "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2}
    text |= {"num_attention_heads": 2, "max_position_embeddings": 32}
    text |= {"bos_token_id": len(tokens) - 2, "eos_token_id": len(tokens) - 1, "pad_token_id": len(tokens) - 1}
    vision = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    vision |= {"image_size": 32, "patch_size": 16}
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def test_a_full_clip_checkpoint_gives_its_text_tower(tmp_path) -> None:
    from transformers import CLIPModel

    _tiny_clip_folder(tmp_path)
    encoder = TextEncoder(TextEncoderConfig(source=str(tmp_path), max_tokens=12), pretrained=True).eval()
    assert type(encoder.model).__name__ == "CLIPTextModel" and encoder.hidden_size == 16
    with torch.no_grad():
        tokens, mask = encoder(["the dog", "a cat barks"])
        full = CLIPModel.from_pretrained(tmp_path).eval()
        ids = encoder.tokenizer(["the dog", "a cat barks"], padding="longest", return_tensors="pt")
        expected = full.text_model(**ids).last_hidden_state  # the two-tower model's own text tower
    assert mask.sum(1).tolist() == ids["attention_mask"].sum(1).tolist()
    torch.testing.assert_close(tokens, expected)


def test_clip_text_config_builds_the_clip_vit_b16_text_tower_offline() -> None:
    from avseg.layers.text import clip_text_encoder

    config = clip_text_encoder()
    assert config.source == "openai/clip-vit-base-patch16" and config.max_tokens == 25
    with torch.device("meta"):
        encoder = TextEncoder(config, pretrained=False)
    assert type(encoder.model).__name__ == "CLIPTextModel" and encoder.hidden_size == 512
    assert sum(p.numel() for p in encoder.parameters()) == 63_165_952  # CLIP ViT-B/16's text tower
