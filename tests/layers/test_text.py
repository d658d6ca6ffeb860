"""The shared text input (avseg.layers.text): the text config and the frozen encoder's checkpoint policy."""

from __future__ import annotations

from avseg.layers.text import TextConfig, TextEncoderConfig, frozen_text_encoder
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
