"""SimToken: the three compressions' token counts, what the language model reads, the alignment loss wired to its
memory bank, and the paper preset's language model."""

import pytest
import torch

from avseg.data.types import random_batch
from avseg.models import create_model, get_entry


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return create_model("simtoken-tiny")


@pytest.mark.parametrize(
    "mode, video, target",
    [("paper", 10 + 256, 256), ("released", 10 + 112, 112), ("none", 10 * 256, 256)],
)
def test_compression_gives_the_documented_token_counts_for_ten_clip_frames(tiny, mode, video, target):
    # CLIP ViT-L/14 at 224 px gives 256 patch tokens per frame; Chat-UniVi's rates 64/32/16 make 112 of them.
    cfg = tiny.config.compression
    saved = (cfg.mode, cfg.spatial_rates)
    cfg.mode, cfg.spatial_rates = mode, (64, 32, 16)
    try:
        features = torch.randn(10, 256, 8)
        v, t = tiny.visual_tokens(features, 10)
    finally:
        cfg.mode, cfg.spatial_rates = saved
    assert (len(v), len(t)) == (video, target)
    if mode == "paper":  # temporal tokens (space-averaged frames), then spatial ones (time-averaged patches)
        torch.testing.assert_close(v[:10], features.mean(1))
        torch.testing.assert_close(v[10:], features.mean(0))
        torch.testing.assert_close(t, features[0])  # the paper's target: the first frame


def test_the_released_target_frame_is_frame_5_and_the_paper_s_the_first():
    cfg = get_entry("simtoken-tiny").config().compression
    assert cfg.target(10) == 0
    assert type(cfg)(mode="released").target(10) == 5 and type(cfg)(mode="released").target(3) == 2


def test_the_language_model_reads_video_audio_target_and_the_audio_matters(tiny):
    tiny.eval()
    batch = random_batch(1, 10, 64, texts=["the dog that barks"])
    with torch.no_grad():
        seg, _, counts = tiny.read_seg_tokens(batch)
        batch.audio_examples.normal_()
        louder, _, _ = tiny.read_seg_tokens(batch)
    assert counts.tolist() == [10 + 64 + 64]  # tiny: 64 patch tokens per frame
    assert (seg - louder).abs().max() > 1e-5


def test_the_alignment_loss_finds_earlier_embeddings_of_the_same_object(tiny):
    tiny.train()
    tiny.bank.clear()
    batch = random_batch(2, 4, 64, texts=["the cat", "the dog"])
    batch.video_id = ["v0", "v0"]
    batch.object_id = ["1", "2"]
    first = tiny.losses(batch, tiny(batch))
    assert first["align"].item() == 0.0 and len(tiny.bank) == 2  # nothing stored yet; then both objects are
    batch.text = ["the small cat", "the brown dog"]
    second = tiny.losses(batch, tiny(batch))
    assert second["align"].item() > 0.0  # each anchor has its object's earlier embedding and the other as negative
    second["loss"].backward()
    tiny.bank.clear()


def test_paper_preset_language_model_is_llama_7b():
    import transformers

    text = dict(get_entry("simtoken-7b").config().mllm.hf_config["text_config"])
    text.pop("model_type")
    with torch.device("meta"):
        llm = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**text, "vocab_size": 32_000}))
    assert sum(p.numel() for p in llm.parameters()) == 6_738_415_616  # LLaMA-7B / Vicuna-7B
    cfg = get_entry("simtoken-7b").config()
    assert (cfg.mllm.lora.rank, cfg.mllm.lora.alpha, cfg.mllm.lora.target_modules) == (8, 16.0, ("q_proj", "v_proj"))
    assert (cfg.loss.align_weight, cfg.loss.align_temperature) == (0.1, 0.07)
    assert cfg.recipe.optim.betas == (0.9, 0.95) and cfg.recipe.optim.lr == 5e-5
