"""Sa2VA and SVAC: the ASTC composite, one [SEG] per clip reaching exactly its clip's frames (training and
inference), the released code's first-frames sampling as an option, and the paper-size preset's shape."""

import pytest
import torch

from avseg.data.types import random_batch
from avseg.layers.mllm import CLIP_MEAN, CLIP_STD
from avseg.layers.sam2 import Sam2Layer
from avseg.models import create_model, get_entry
from avseg.models.sa2va import ClipConfig, astc_composite, clip_of_frames, sample_uniform

COLOURS = torch.tensor([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], dtype=torch.uint8)


def test_the_astc_composite_tiles_the_frames_row_major_at_one_frames_size():
    frames = COLOURS[:, :, None, None].expand(4, 3, 32, 48).clone()  # four flat frames, 32 x 48
    out = astc_composite(frames, (2, 2))
    assert out.shape == (3, 32, 48)
    # each quadrant, away from the seams the bicubic kernel blends, is its frame's colour
    quadrants = {(0, 0): 0, (0, 1): 1, (1, 0): 2, (1, 1): 3}
    for (r, c), k in quadrants.items():
        cell = out[:, r * 16 + 4 : r * 16 + 12, c * 24 + 4 : c * 24 + 20]
        assert (cell - COLOURS[k, :, None, None].float()).abs().max() < 1.0
    # three frames in a 2 x 2 grid leave the last cell black
    assert astc_composite(frames[:3], (2, 2))[:, 20:28, 28:44].abs().max() < 1.0


def test_clips_split_the_sampled_frames_into_consecutive_runs():
    assert clip_of_frames(10, 2).tolist() == [0] * 5 + [1] * 5
    assert clip_of_frames(7, 3).tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert sample_uniform(10, 5) == [0, 2, 5, 7, 9]
    assert ClipConfig(num_clips=2, clip_length=10, compress=True).composite_grid == (3, 3)
    with pytest.raises(ValueError, match="cannot hold the 4 non-anchor frames"):
        ClipConfig(clip_length=5, compress=True, grid=(1, 3))


@pytest.fixture(scope="module")
def svac():
    torch.manual_seed(0)
    return create_model("svac-tiny")


def batch_of(t=10):
    return random_batch(2, t, 64, texts=["the red circle", "the square at the bottom"], masks="square")


def test_svac_reads_two_images_per_clip_and_one_seg_per_clip(svac):
    clips = svac.config.clips
    assert (clips.num_clips, clips.images_per_video, clips.num_seg_tokens) == (2, 4, 2)
    assert svac.answer_text() == "It is [SEG][SEG]."
    images = svac.mllm_images(batch_of().frames[0])
    assert images.shape == (4, 3, 64, 64)
    frames = batch_of().frames[0].float()
    assert torch.equal(images[0], frames[0]) and torch.equal(images[2], frames[5])  # the anchors
    torch.testing.assert_close(images[1], astc_composite(batch_of().frames[0, 1:5], (2, 2)))


def test_in_training_each_clip_s_seg_prompts_exactly_its_clip_s_frames(svac, monkeypatch):
    seen = {}
    original = Sam2Layer.decode

    def spy(self, features, prompt=None, **kwargs):
        seen["prompts"] = prompt.sparse_embeddings.detach().clone()
        return original(self, features, prompt, **kwargs)

    monkeypatch.setattr(Sam2Layer, "decode", spy)
    svac.train()
    out = svac(batch_of())
    tokens = out.aux["prompt_tokens"].detach()  # (B, 2, C)
    assert tokens.shape[1] == 2 and not torch.allclose(tokens[:, 0], tokens[:, 1])
    prompts = seen["prompts"].view(2, 10, -1)  # (B, T', C): every frame drawn (10 of 10)
    assert out.aux["frame_tokens"][0].tolist() == [0] * 5 + [1] * 5
    for k in range(2):
        torch.testing.assert_close(prompts[:, 5 * k : 5 * k + 5], tokens[:, k, None].expand(-1, 5, -1))
    losses = svac.losses(batch_of(), out)
    assert {"ce", "dice", "lm", "object", "loss"} <= set(losses) and losses["lm"] > 0


def test_at_inference_each_clip_s_frames_are_conditioned_on_its_own_seg(svac, monkeypatch):
    seen = []
    original = Sam2Layer.propagate

    def spy(self, frames=None, *, prompts, **kwargs):
        seen.append({f: p.sparse_embeddings.detach().clone() for f, p in prompts.items()})
        return original(self, frames, prompts=prompts, **kwargs)

    monkeypatch.setattr(Sam2Layer, "propagate", spy)
    svac.eval()
    batch = batch_of(t=12)
    batch.frame_valid[1, 10:] = False  # the second clip has 10 real frames
    with torch.no_grad():
        out = svac(batch)
    tokens = out.aux["prompt_tokens"]
    assert sorted(seen[0]) == sample_uniform(12, 10)
    assert sorted(seen[1]) == sample_uniform(10, 10) == list(range(10))
    for i, prompts in enumerate(seen):
        order = sorted(prompts)
        for position, frame in enumerate(order):
            torch.testing.assert_close(prompts[frame][0, 0], tokens[i, position // 5])
    assert out.aux["frame_tokens"][1].tolist() == [0] * 5 + [1] * 5 + [-1, -1]
    assert out.mask_logits.shape == (2, 12, 1, 64, 64)
    assert (out.mask_logits[1, 10:] < 0).all()  # padded frames stay empty


def record_prompted_frames(monkeypatch) -> list[list[int]]:
    """Make ``Sam2Layer.propagate`` record, call by call, the frames it is prompted on."""
    seen: list[list[int]] = []
    original = Sam2Layer.propagate

    def spy(self, frames=None, *, prompts, **kwargs):
        seen.append(sorted(prompts))
        return original(self, frames, prompts=prompts, **kwargs)

    monkeypatch.setattr(Sam2Layer, "propagate", spy)
    return seen


def test_the_released_first_frames_sampling_is_an_option(monkeypatch):
    model = create_model("sa2va-tiny", inference_sampling="first").eval()
    seen = record_prompted_frames(monkeypatch)
    with torch.no_grad():
        model(batch_of())
    assert seen == [[0, 1, 2, 3, 4]] * 2
    assert model.config.clips.num_seg_tokens == 1 and model.answer_text() == "It is [SEG]."


def test_a_clip_without_an_expression_is_refused_by_name():
    model = create_model("sa2va-tiny").eval()
    batch = random_batch(1, 5, 64, texts=[None])
    with pytest.raises(ValueError, match="needs a referring expression"):
        model(batch)


def test_the_paper_preset_has_sa2va_1b_s_shape():
    cfg = get_entry("sa2va-1b").config()
    assert cfg.mllm.lora.rank == 128 and cfg.mllm.lora.alpha == 256 and cfg.mllm.lora.dropout == 0.05
    assert cfg.clips.num_frames == 5 and not cfg.clips.compress and not cfg.clips.seg_per_clip
    assert (cfg.loss.ce_weight, cfg.loss.dice_weight, cfg.loss.num_points) == (2.0, 0.5, 12544)
    assert cfg.recipe.optim.lr == 4e-5 and cfg.sam2.trainable == ("mask_decoder",)


@pytest.mark.parametrize("name, parameters", [("sa2va-1b", 494_032_768), ("sa2va-4b", 3_085_938_688)])
def test_the_paper_presets_language_models_have_qwen2_5s_published_sizes(name, parameters):
    # Qwen2.5-0.5B and -3B (tied embeddings, 151,936-token vocabulary) as their model cards give them, built on the
    # meta device from the preset's shape: a wrong width, depth or head count would change the count.
    import transformers

    text = dict(get_entry(name).config().mllm.hf_config["text_config"])
    text.pop("model_type")
    with torch.device("meta"):
        llm = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**{**text, "vocab_size": 151_936}))
    assert sum(p.numel() for p in llm.parameters()) == parameters


def test_svac_runs_on_a_qwen2_vl_mllm():
    # Another MLLM family through configuration alone: the tiny SVAC with a random Qwen2-VL (M-RoPE, patch merger).
    text = {
        "hidden_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 256,
        "rope_parameters": {"rope_type": "default", "mrope_section": [4, 6, 6], "rope_theta": 10000.0},
    }
    vision = {"depth": 1, "embed_dim": 64, "hidden_size": 128, "num_heads": 2, "patch_size": 8, "spatial_merge_size": 2}
    torch.manual_seed(0)
    model = create_model(
        "svac-tiny",
        **{
            "mllm.family": "qwen2_vl",
            "mllm.hf_config": {"vision_config": vision, "text_config": text},
            "mllm.image_mean": CLIP_MEAN,
            "mllm.image_std": CLIP_STD,
        },
    )
    assert type(model.mllm.model).__name__ == "Qwen2VLForConditionalGeneration"
    assert model.mllm.tokens_per_image == 16  # (64 / 8)^2 patches merged 2 x 2
    batch = batch_of()
    model.train()
    loss = model.losses(batch, model(batch))["loss"]
    loss.backward()
    merger = model.mllm.model.model.visual.merger
    assert torch.isfinite(loss) and any(p.grad is not None and p.grad.abs().sum() > 0 for p in merger.parameters())
    model.eval()
    with torch.no_grad():
        out = model(batch)
    assert out.mask_logits.shape == (2, 10, 1, 64, 64)


def test_a_generated_answer_prompts_the_frames_of_the_seg_tokens_it_wrote(monkeypatch):
    # The released code's inference: the MLLM writes its answer; each [SEG] it writes prompts its clip's frames, and
    # the frames of a [SEG] it did not write stay empty.
    model = create_model("svac-tiny", answer_mode="generate", max_answer_tokens=6).eval()
    tok = model.mllm.tokenizer
    one_seg = tok("it is [SEG]", add_special_tokens=False)["input_ids"] + [tok.sep_token_id]
    steps = iter(one_seg + [tok.sep_token_id] * 6)  # clip 0's answer, then clip 1 stops at once

    def dictate(module, args, logits):
        forced = torch.full_like(logits, -1e4)
        forced[..., next(steps)] = 1e4
        return forced

    prompted = record_prompted_frames(monkeypatch)
    handle = model.mllm.model.get_output_embeddings().register_forward_hook(dictate)
    try:
        with torch.no_grad():
            out = model(batch_of())
    finally:
        handle.remove()
    assert [a.split() for a in out.aux["answers"]] == [["it", "is", "[SEG]", "[SEP]"], ["[SEP]"]]
    # video 0's answer holds [SEG]_0 only: the frames of its first clip are prompted, those of the second are not
    assert prompted == [[0, 1, 2, 3, 4]]
    assert out.aux["frame_tokens"][0].tolist() == [0] * 5 + [-1] * 5
    assert (out.mask_logits[1] < 0).all()  # no [SEG] written: nothing segmented


@pytest.mark.slow  # evaluates and runs a tiny SVAC from the command line (about 10 s on 2 cores)
def test_eval_and_predict_let_the_mllm_write_its_answer(tmp_path, capsys):
    import json

    from avseg.checkpoint import save_checkpoint
    from avseg.cli import main
    from tests.data.fixtures_rvos import write_rvos_tree
    from tests.test_predict import write_test_video

    torch.manual_seed(0)
    ck = save_checkpoint(tmp_path / "ck", create_model("svac-tiny"), preset="svac-tiny")
    tree = write_rvos_tree(tmp_path)
    results = tmp_path / "r.json"
    args = ["eval", "--checkpoint", ck, "--data", tree.root, "--format", "rvos", "--split", "train"]
    assert main([*map(str, args), "--json-out", str(results), "--answer-mode", "generate", "--quiet"]) == 0
    assert json.loads(results.read_text())["splits"]["train"]["settings"]["answer_mode"] == "generate"
    assert main([*map(str, args), "--json-out", str(results), "--quiet"]) == 0
    assert json.loads(results.read_text())["splits"]["train"]["settings"]["answer_mode"] == "read"  # the checkpoint's

    video = write_test_video(tmp_path / "bars.mp4")
    out = tmp_path / "o.mp4"
    predict = ["predict", video, "--checkpoint", ck, "--out", out, "--text", "the white bar", "--quiet"]
    capsys.readouterr()
    assert main([*map(str, predict), "--answer-mode", "generate"]) == 0
    settings = json.loads(out.with_suffix(".json").read_text())
    assert settings["model_config"]["answer_mode"] == "generate"
    # what the MLLM wrote for the video's one clip is recorded and shown
    assert [a["frames"] for a in settings["answers"]] == [[0, settings["num_frames"] - 1]]
    assert isinstance(settings["answers"][0]["answer"], str)
    assert f"answer:   {settings['answers'][0]['answer']!r}" in capsys.readouterr().out
    # the answer mode decides the masks: resuming the same masks folder with the other mode is refused
    assert main([*map(str, predict), "--answer-mode", "read"]) == 2
    assert "answer_mode" in capsys.readouterr().err
