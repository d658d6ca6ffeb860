"""The shared MLLM layer: a real tokenizer with [SEG], image tokens in their places, the answer-only LM loss, LoRA
adapters that save, reload and merge exactly."""

import pytest
import torch
import torch.nn.functional as F

from avseg.errors import AVSegError
from avseg.layers.mllm import CLIP_MEAN, CLIP_STD, IMAGE_PLACEHOLDER, MLLM, LoraSettings, MLLMConfig
from avseg.layers.text import MINILM_PACKAGE

TINY_INTERNVL = {
    "vision_config": {
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "image_size": [32, 32],
        "patch_size": [8, 8],
    },
    "text_config": {
        "model_type": "qwen2",
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 64,
        "tie_word_embeddings": True,
        "max_position_embeddings": 512,
    },
    "downsample_ratio": 0.5,
}


def tiny_config(**overrides) -> MLLMConfig:
    options = dict(
        family="internvl",
        tokenizer=MINILM_PACKAGE,
        hf_config=TINY_INTERNVL,
        image_size=32,
        special_tokens=("[SEG]", "<p>"),
        lora=LoraSettings(rank=0),
    )
    options.update(overrides)
    return MLLMConfig(**options)


@pytest.fixture(scope="module")
def mllm():
    torch.manual_seed(0)
    return MLLM(tiny_config(), pretrained=False).eval()


def images(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 40, 40), dtype=torch.uint8, generator=g)


def test_the_tokenizer_is_real_and_seg_is_one_token_of_the_resized_vocabulary(mllm):
    tok = mllm.tokenizer
    ids = tok("the red circle on the left", add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids and len(ids) == 6
    seg = tok("it is [SEG].", add_special_tokens=False)["input_ids"]
    assert seg.count(mllm.seg_token_id) == 1 and mllm.seg_token_id == tok.convert_tokens_to_ids("[SEG]")
    assert mllm.model.get_input_embeddings().num_embeddings == len(tok) > 30522


def test_image_placeholders_become_the_images_tokens_and_the_features_land_there(mllm):
    inputs = mllm.tokenize([IMAGE_PLACEHOLDER * 2 + "\nsegment the dog"], ["It is [SEG]."])
    assert int(inputs.image_mask.sum()) == 2 * mllm.tokens_per_image == 2 * 4  # (32 / 8)^2 patches, shuffled by 0.5
    ids = inputs.input_ids[0]
    first_image = int(torch.nonzero(inputs.image_mask[0])[0])
    a = mllm(inputs, images(2, seed=0))
    b = mllm(inputs, images(2, seed=1))
    # A causal LM: what precedes the first image does not see it; the [SEG] after the images does.
    torch.testing.assert_close(a.hidden_states[0, :first_image], b.hidden_states[0, :first_image])
    assert (a.seg_hidden[0] - b.seg_hidden[0]).abs().max() > 1e-4
    assert a.seg_hidden[0].shape == (1, mllm.hidden_size)
    assert torch.equal(a.seg_hidden[0][0], a.hidden_states[0, int(torch.nonzero(ids == mllm.seg_token_id)[0])])
    with pytest.raises(AVSegError, match="2 images but 3 were given"):
        mllm(inputs, images(3))


def test_the_language_model_loss_covers_the_answer_span_only(mllm):
    answer = "It is [SEG][SEG]."
    inputs = mllm.tokenize(
        [IMAGE_PLACEHOLDER + "\nsegment the cat", IMAGE_PLACEHOLDER + "\nhi"], [answer, "It is [SEG]."]
    )
    labelled = inputs.labels[0][inputs.labels[0] != -100]
    # the answer and, with no chat template, the [SEP] that ends it (so a model learns to stop)
    sep = mllm.tokenizer.sep_token_id
    assert labelled.tolist() == mllm.tokenizer(answer, add_special_tokens=False)["input_ids"] + [sep]
    # labels sit exactly on the last tokens of the (unpadded) first row, and never on image tokens or padding
    n = int(inputs.attention_mask[0].sum())
    assert torch.equal(inputs.labels[0, n - len(labelled) : n], labelled)
    assert not (inputs.image_mask & (inputs.labels != -100)).any()
    assert (inputs.labels[~inputs.attention_mask] == -100).all()
    out = mllm(inputs, images(2))
    assert [h.shape[0] for h in out.seg_hidden] == [2, 1]
    # independent: full-vocabulary logits everywhere, cross-entropy over the shifted answer positions only
    logits = mllm.model.get_output_embeddings()(out.hidden_states)
    target = inputs.labels[:, 1:]
    keep = target != -100
    expected = F.cross_entropy(logits[:, :-1][keep], target[keep])
    torch.testing.assert_close(out.lm_loss, expected)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match=r"mllm\.trainable: unknown parts"):
        tiny_config(trainable=("decoder",))
    with pytest.raises(ValueError, match=r"mllm\.family"):
        tiny_config(family="qwen3")
    with pytest.raises(ValueError, match="needs a source"):
        MLLMConfig(tokenizer=MINILM_PACKAGE)
    with pytest.raises(ValueError, match="tied word embeddings, lm_head and embed_tokens train together"):
        MLLM(tiny_config(trainable=("lm_head",)), pretrained=False)


@pytest.fixture(scope="module")
def pretrained_folder(tmp_path_factory, mllm):
    """A "pretrained" MLLM on disk in transformers' layout (weights + tokenizer with the special tokens)."""
    folder = tmp_path_factory.mktemp("tiny-internvl")
    mllm.model.save_pretrained(folder)
    mllm.tokenizer.save_pretrained(folder)
    return folder


def lora_mllm(folder, seed):
    torch.manual_seed(seed)
    config = MLLMConfig(
        family="internvl",
        source=str(folder),
        image_size=32,
        special_tokens=("[SEG]", "<p>"),
        lora=LoraSettings(rank=4, alpha=8.0, dropout=0.0, target_modules=("q_proj", "v_proj")),
        trainable=("projector",),
    )
    return MLLM(config, pretrained=True).eval()


def test_a_pretrained_mllm_checkpoints_only_its_lora_adapters_and_trained_parts(pretrained_folder):
    model = lora_mllm(pretrained_folder, seed=0)
    with torch.no_grad():
        for name, p in model.model.named_parameters():
            if ".lora_B." in name:
                p.normal_()  # peft starts B at zero: make the adapters matter
    state = model.state_dict()
    trainable = {f"model.{n}" for n, p in model.model.named_parameters() if p.requires_grad}
    assert set(state) == trainable
    assert any(".lora_A.default" in k for k in state) and any("multi_modal_projector" in k for k in state)
    assert not any("vision_tower" in k or "embed_tokens" in k for k in state)

    inputs = model.tokenize([IMAGE_PLACEHOLDER + "\nsegment it"], ["It is [SEG]."])
    pixels = images(1)
    with torch.no_grad():
        before = model(inputs, pixels).seg_hidden[0]
        fresh = lora_mllm(pretrained_folder, seed=1)  # other random adapters
        assert not torch.equal(fresh(inputs, pixels).seg_hidden[0], before)
        fresh.load_state_dict(state, strict=True)
        assert torch.equal(fresh(inputs, pixels).seg_hidden[0], before)

        # merged for deployment: same outputs, no adapters left, a plain transformers folder
        merged_layers = fresh.merge_lora()
        assert merged_layers == 2 * 2  # q_proj and v_proj of 2 layers
        assert not fresh.lora_state_dict()
        torch.testing.assert_close(fresh(inputs, pixels).seg_hidden[0], before, rtol=1e-4, atol=1e-5)


def test_a_llava_mllm_reads_its_image_tokens_without_wrappers():
    config = MLLMConfig(
        family="llava",
        tokenizer=MINILM_PACKAGE,
        image_size=32,
        lora=LoraSettings(rank=2, alpha=4.0, target_modules=("q_proj", "v_proj")),
        hf_config={
            "vision_config": {
                "model_type": "clip_vision_model",
                "hidden_size": 32,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "intermediate_size": 64,
                "image_size": 32,
                "patch_size": 8,
            },
            "text_config": {
                "model_type": "llama",
                "hidden_size": 32,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "intermediate_size": 64,
            },
            "vision_feature_layer": -1,
        },
    )
    model = MLLM(config, pretrained=False).eval()
    assert model.tokens_per_image == 16  # (32 / 8)^2 patches, CLS dropped by the default strategy
    inputs = model.tokenize([IMAGE_PLACEHOLDER + "\nsegment the dog"], ["It is [SEG]."])
    image_ids = inputs.input_ids[inputs.image_mask]
    assert len(image_ids) == 16 and (image_ids == model.tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)).all()
    out = model(inputs, images(1))
    assert out.seg_hidden[0].shape == (1, 32) and out.lm_loss > 0
    assert model.lora_state_dict()  # adapters on the Llama attention


def test_a_tokenizer_with_a_chat_template_frames_the_conversation(mllm):
    tok = mllm.tokenizer
    saved = tok.chat_template
    tok.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    try:
        prompt, answer = mllm.render("segment the cat", "It is [SEG].")
        assert prompt == "<|user|>segment the cat<|end|><|assistant|>"
        assert answer == "It is [SEG].<|end|>"  # the end-of-turn marker belongs to the supervised answer
        inputs = mllm.tokenize(["segment the cat"], ["It is [SEG]."])
        labelled = inputs.labels[0][inputs.labels[0] != -100].tolist()
        assert labelled == tok("It is [SEG].<|end|>", add_special_tokens=False)["input_ids"]
    finally:
        tok.chat_template = saved


def test_a_linear_projector_is_not_read_from_a_llava_folder():
    config = MLLMConfig(family="llava", source="some/llava", tokenizer=MINILM_PACKAGE, projector="linear")
    with pytest.raises(AVSegError, match="cannot be loaded from 'some/llava'"):
        MLLM(config, pretrained=True)
    with pytest.raises(ValueError, match="'linear' with family 'llava'"):
        tiny_config(projector="linear")


TINY_QWEN_TEXT = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 64,
    # M-RoPE splits each head's 4 rotary frequencies over (time, height, width).
    "rope_parameters": {"rope_type": "default", "mrope_section": [2, 1, 1], "rope_theta": 10000.0},
}
TINY_QWEN = {
    "qwen2_vl": {
        "vision_config": {
            "depth": 1,
            "embed_dim": 32,
            "hidden_size": 32,
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": 8,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        "text_config": TINY_QWEN_TEXT,
    },
    "qwen2_5_vl": {
        "vision_config": {
            "depth": 2,
            "hidden_size": 32,
            "out_hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "patch_size": 8,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 16,
            "fullatt_block_indexes": [1],
        },
        "text_config": TINY_QWEN_TEXT,
    },
}


def qwen_mllm(family: str, **overrides) -> MLLM:
    torch.manual_seed(0)
    options = dict(
        family=family,
        tokenizer=MINILM_PACKAGE,
        hf_config=TINY_QWEN[family],
        image_size=32,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
        lora=LoraSettings(rank=0),
    )
    options.update(overrides)
    return MLLM(MLLMConfig(**options), pretrained=False).eval()


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_a_qwen_mllm_reads_images_as_its_processor_and_its_own_forward_do(family):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    model = qwen_mllm(family)
    assert model.tokens_per_image == 4  # (32 / 8)^2 patches, merged 2 x 2
    inputs = model.tokenize(
        [IMAGE_PLACEHOLDER + " segment the dog " + IMAGE_PLACEHOLDER, IMAGE_PLACEHOLDER + " hi " + IMAGE_PLACEHOLDER],
        ["It is [SEG].", "It is [SEG]."],
    )
    ids = inputs.input_ids[0]
    start = model.tokenizer.convert_tokens_to_ids("<|vision_start|>")
    end = model.tokenizer.convert_tokens_to_ids("<|vision_end|>")
    opened = torch.nonzero(ids == start).flatten()
    assert len(opened) == 2 and ids[opened[0] + 5] == end and inputs.image_mask[0, opened[0] + 1 : opened[0] + 5].all()
    pixels = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    ours = model(inputs, pixels)

    # The reference: transformers' Qwen2-VL image processor on the same images, then the model's own forward, which
    # computes the multimodal rotary positions itself.
    processor = Qwen2VLImageProcessorPil(
        do_resize=False, image_mean=CLIP_MEAN, image_std=CLIP_STD, patch_size=8, merge_size=2, temporal_patch_size=2
    )
    processed = processor(images=[p.permute(1, 2, 0).numpy() for p in pixels], return_tensors="pt")
    assert torch.equal(processed["image_grid_thw"], model.image_grid(4))
    torch.testing.assert_close(model.patchify(model.preprocess(pixels)), processed["pixel_values"])
    with torch.no_grad():
        reference = model.model.model(
            input_ids=inputs.input_ids,
            attention_mask=inputs.attention_mask.long(),
            pixel_values=processed["pixel_values"],
            image_grid_thw=processed["image_grid_thw"],
            mm_token_type_ids=inputs.image_mask.int(),
        ).last_hidden_state
    keep = inputs.attention_mask
    torch.testing.assert_close(ours.hidden_states[keep], reference[keep], rtol=1e-4, atol=1e-5)
    # The positions matter: plain 1-D positions give other hidden states after the first image.
    with torch.no_grad():
        embeds = model.model.get_input_embeddings()(inputs.input_ids)
        embeds = embeds.masked_scatter(inputs.image_mask[..., None], model.encode_images(pixels).reshape(-1))
        flat = model.language_model(inputs_embeds=embeds, attention_mask=keep.long()).last_hidden_state
    assert (flat[keep] - reference[keep]).abs().max() > 1e-3


def test_a_qwen_mllms_parts_train_as_configured_and_its_size_is_checked():
    model = qwen_mllm("qwen2_vl", trainable=("projector",))
    visual = model.model.model.visual
    assert all(p.requires_grad for p in visual.merger.parameters())
    assert not any(p.requires_grad for p in visual.blocks.parameters())
    assert not any(p.requires_grad for p in model.language_model.parameters())
    with pytest.raises(ValueError, match=r"mllm\.image_size \(40\) must be a multiple of 16"):
        qwen_mllm("qwen2_vl", image_size=40)


@pytest.mark.parametrize("family", ["internvl", "qwen2_vl"])
def test_generation_reads_the_seg_tokens_it_writes_as_a_forward_over_that_answer_would(family):
    model = MLLM(tiny_config(), pretrained=False).eval() if family == "internvl" else qwen_mllm(family)
    tok = model.tokenizer
    answer = tok("it is [SEG] [SEG]", add_special_tokens=False)["input_ids"] + [tok.sep_token_id]
    assert model.stop_token_ids == {tok.sep_token_id}  # no chat template: the answer ends with [SEP]
    head = model.model.get_output_embeddings()
    steps = iter(answer)

    def dictate(module, args, logits):  # the random model writes the answer it is told to, one token a step
        forced = torch.full_like(logits, -1e4)
        forced[..., next(steps)] = 1e4
        return forced

    question = IMAGE_PLACEHOLDER + " segment the dog"
    pixels = images(1)
    handle = head.register_forward_hook(dictate)
    try:
        generated = model.generate(model.tokenize([question], [None]), pixels, max_new_tokens=10)
    finally:
        handle.remove()
    assert generated.token_ids == [answer]  # stopped at [SEP], not at 10 tokens
    assert generated.text[0].split() == ["it", "is", "[SEG]", "[SEG]", "[SEP]"]
    # Reading the same answer in one forward pass gives the same [SEG] hidden states (cache and positions agree).
    read = model(model.tokenize([question], ["it is [SEG] [SEG]"]), pixels)
    assert generated.seg_hidden[0].shape == (2, model.hidden_size)
    torch.testing.assert_close(generated.seg_hidden[0], read.seg_hidden[0], rtol=1e-4, atol=1e-5)
    # Without a stop token the answer is cut at max_new_tokens and may hold no [SEG].
    free = model.generate(model.tokenize([question], [None]), pixels, max_new_tokens=3)
    assert len(free.token_ids[0]) <= 3 and free.seg_hidden[0].shape[1] == model.hidden_size
