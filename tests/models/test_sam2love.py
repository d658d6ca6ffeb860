"""Tests of SAM2-LOVE (avseg.models.sam2love): token propagation and accumulation, first-frame supervision, what
trains, null expressions, the presets, and the command line."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from avseg.cli import main
from avseg.data.synthav.commands import synth
from avseg.data.types import AVSBatch, random_batch
from avseg.layers.audio import AudioEncoderConfig
from avseg.layers.frozen import Frozen
from avseg.layers.sam2 import tiny_sam2_config
from avseg.media.video import write_video
from avseg.models.registry import create_model, get_entry
from avseg.models.sam2love import (
    SAM2LOVE,
    FusionConfig,
    NullConfig,
    Sam2LoveConfig,
    Sam2LoveLossConfig,
    sam2love_tiny,
)
from avseg.train.config import ScheduleConfig
from avseg.train.optim import build_optimizer, build_scheduler


def small_config(**changes) -> Sam2LoveConfig:
    """The tiny preset at 64 px, with SAM2's test shape (faster to build), and ``changes`` applied."""
    tiny = sam2love_tiny()
    changes.setdefault("sam2", tiny_sam2_config(image_size=64, trainable=tiny.sam2.trainable, memory_dtype="float32"))
    return dataclasses.replace(tiny, recipe=dataclasses.replace(tiny.recipe, image_size=64), **changes)


def square_batch(b: int = 2, t: int = 4, **kwargs) -> AVSBatch:
    return random_batch(b, t, 64, masks="square", **kwargs)


class FusionRecorder:
    """Records, per frame, the sequence entering the first fusion block and the fusion's normalised output."""

    def __init__(self, model: SAM2LOVE) -> None:
        self.inputs: list[torch.Tensor] = []
        self.outputs: list[torch.Tensor] = []
        fusion = model.fusion
        self.handles = [
            fusion.blocks[0].register_forward_pre_hook(lambda m, args: self.inputs.append(args[0].detach())),
            fusion.norm.register_forward_hook(lambda m, args, out: self.outputs.append(out.detach())),
        ]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@pytest.fixture(scope="module")
def model() -> SAM2LOVE:
    torch.manual_seed(0)
    return SAM2LOVE(small_config()).eval()


def test_the_seg_output_of_each_frame_is_the_seg_input_of_the_next(model):
    batch = square_batch(texts=["the red circle", None])
    batch.frame_valid[1, -1] = False  # clip 1 ends with a padded frame
    recorder = FusionRecorder(model)
    with torch.no_grad():
        out = model(batch)
    recorder.remove()
    t = batch.num_frames
    assert len(recorder.inputs) == len(recorder.outputs) == t
    seg = model.fusion.seg.detach()
    torch.testing.assert_close(recorder.inputs[0][:, 0], seg[0].expand(2, -1))  # frame 0 starts from the token
    for i in range(t - 1):
        # clip 1's last frame is padding: its [seg] input is still the previous output, and it passes it unchanged
        torch.testing.assert_close(recorder.inputs[i + 1][:, 0], recorder.outputs[i][:, 0], rtol=0, atol=0)
    torch.testing.assert_close(out.aux["seg_outputs"][0, -1], recorder.outputs[-1][0, :1], rtol=0, atol=0)
    torch.testing.assert_close(out.aux["seg_outputs"][1, -1], out.aux["seg_outputs"][1, -2], rtol=0, atol=0)
    torch.testing.assert_close(out.aux["seg_inputs"][:, 1:], out.aux["seg_outputs"][:, :-1], rtol=0, atol=0)
    # The [seg] after the last frame prompts SAM2, through the projector.
    expected = model.projector(out.aux["seg_outputs"][:, -1, :1])
    torch.testing.assert_close(out.aux["prompt_tokens"], expected)
    # ...and it carries the later frames: changing the last frame changes the prompt of frame 0.
    other = dataclasses.replace(batch, frames=batch.frames.clone())
    other.frames[0, t - 1] = 255 - other.frames[0, t - 1]
    with torch.no_grad():
        changed = model(other).aux["prompt_tokens"]
    assert (changed[0] - out.aux["prompt_tokens"][0]).abs().max() > 1e-4
    torch.testing.assert_close(changed[1], out.aux["prompt_tokens"][1])


@pytest.mark.parametrize("accumulate", [True, False])
def test_the_history_grows_by_one_cls_per_frame(accumulate):
    torch.manual_seed(0)
    net = SAM2LOVE(small_config(fusion=FusionConfig(dim=128, depth=2, heads=4, accumulate_cls=accumulate))).eval()
    batch = square_batch(texts=["the red circle", "the blue square"])
    recorder = FusionRecorder(net)
    with torch.no_grad():
        out = net(batch)
        _, cls = net.vision_encoder(batch.frames.flatten(0, 1), batch.frame_valid.flatten())
        history = net.fusion.vision_proj(cls.view(2, batch.num_frames, -1))  # (B, T, D)
    recorder.remove()
    lengths = out.aux["sequence_lengths"]
    steps = (lengths[1:] - lengths[:-1]).tolist()
    assert steps == [1 if accumulate else 0] * (batch.num_frames - 1)
    assert [x.shape[1] for x in recorder.inputs] == lengths.tolist()
    patches = getattr(net.vision_encoder, "module", net.vision_encoder).num_patches  # unwrapped when frozen
    for i, x in enumerate(recorder.inputs):
        if accumulate:  # [his]^i = [cls]^0 ... [cls]^i, right before the frame's patch tokens
            torch.testing.assert_close(x[:, -patches - (i + 1) : -patches], history[:, : i + 1])
        else:
            assert not any(torch.allclose(x[:, -patches - 1], history[:, j]) for j in range(batch.num_frames))


def test_only_the_first_frame_is_supervised_in_training():
    torch.manual_seed(0)
    net = SAM2LOVE(small_config(supervision="first", train_frames=None)).train()
    batch = square_batch(texts=["the red circle", "the blue square"])

    def loss(b: AVSBatch) -> torch.Tensor:
        torch.manual_seed(1)
        out = net(b)
        assert out.computed_frames.tolist() == [[True, False, False, False]] * 2
        return net.losses(b, out)["loss"].detach()

    reference = loss(batch)
    later = dataclasses.replace(batch, masks=batch.masks.clone())
    later.masks[:, 1:] = 1 - later.masks[:, 1:]
    assert loss(later) == reference
    first = dataclasses.replace(batch, masks=batch.masks.clone())
    first.masks[:, 0] = 1 - first.masks[:, 0]
    assert (loss(first) - reference).abs() > 1e-3


def test_the_grounding_loss_points_each_frames_seg_at_the_patches_the_mask_covers():
    torch.manual_seed(0)
    assert SAM2LOVE(small_config()).fusion.grounding is None  # the paper's setting builds no head
    net = SAM2LOVE(small_config(supervision="first", loss=Sam2LoveLossConfig(grounding_weight=1.0))).train()
    batch = square_batch(texts=["the red circle", "the blue square"])
    batch.masks.zero_()
    batch.masks[:, :, 16:32, 40:56] = 1  # rows 16-31, columns 40-55 of 64 px
    out = net(batch)
    logits = out.aux["grounding_logits"]
    assert logits.shape == (2, 4, 64)  # the tiny ViT's 8 × 8 patches on every frame, not only the supervised one
    covered = torch.zeros(8, 8)
    covered[2:4, 5:7] = 1.0  # the square fills exactly these 8-px patches (row-major, as the ViT orders them)
    losses = net.losses(batch, out)
    expected = F.binary_cross_entropy_with_logits(logits, covered.flatten().expand_as(logits))
    assert torch.allclose(losses["grounding"], expected)
    mask_losses = losses["bce"] + losses["dice"] + losses["object"]
    assert torch.allclose(losses["loss"], mask_losses + losses["grounding"])

    later = dataclasses.replace(batch, masks=batch.masks.clone())
    later.masks[:, 1:] = 0  # frames SAM2 did not decode still teach the fusion where the object is
    assert (net.losses(later, out)["grounding"] - losses["grounding"]).abs() > 1e-3

    net.zero_grad()
    losses["grounding"].backward()
    assert net.fusion.grounding.weight.grad.abs().sum() > 0
    assert net.fusion.seg.grad.abs().sum() > 0 and net.fusion.text_proj[0].weight.grad.abs().sum() > 0
    assert net.projector[0].weight.grad is None  # SAM2's prompt is not part of it


def paper_like_config(trainable: tuple[str, ...]) -> Sam2LoveConfig:
    """Frozen encoders (VGGish, a ViT, MiniLM) and a SAM2 whose image encoder and memory are frozen, as the paper."""
    vision = dataclasses.replace(small_config().vision, frozen=True)
    return small_config(
        sam2=tiny_sam2_config(image_size=64, trainable=trainable),
        vision=vision,
        audio=AudioEncoderConfig(encoder="vggish"),
        supervision="first",
        train_frames=None,
    )


TRAINABLE_PARTS = {
    "fusion.audio_proj",
    "fusion.text_proj",
    "fusion.vision_proj",
    "fusion.seg",
    "fusion.aud",
    "fusion.vis",
    "fusion.blocks",
    "fusion.norm",
    "projector",
    "sam2.model.prompt_encoder",
    "sam2.model.mask_decoder",
}


def _part(name: str) -> str:
    """The part a parameter belongs to: ``sam2.model.<part>``, ``fusion.<part>`` or a top-level module."""
    pieces = name.split(".")
    depth = 3 if pieces[0] == "sam2" else 2 if pieces[0] == "fusion" else 1
    return ".".join(pieces[:depth])


@pytest.mark.parametrize(
    ("trainable", "sam2_parts"),
    [
        (("prompt_encoder", "mask_decoder"), {"prompt_encoder", "mask_decoder"}),
        (("mask_decoder",), {"mask_decoder"}),  # paper Table 6: decoder only
        ((), set()),  # SAM2 frozen
    ],
)
def test_gradients_reach_exactly_the_trainable_parts(trainable, sam2_parts):
    torch.manual_seed(0)
    net = SAM2LOVE(paper_like_config(trainable)).train()
    assert isinstance(net.vision_encoder, Frozen) and net.audio_encoder.vggish is not None
    batch = square_batch(texts=["the red circle", "the blue square"])
    batch = dataclasses.replace(batch, audio_embeddings=torch.randn(2, batch.num_frames, 128))
    net.losses(batch, net(batch))["loss"].backward()
    expected = {p for p in TRAINABLE_PARTS if not p.startswith("sam2.")} | {f"sam2.model.{p}" for p in sam2_parts}
    requires = {_part(n) for n, p in net.named_parameters() if p.requires_grad}
    assert requires == expected
    reached = {_part(n) for n, p in net.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert reached == expected
    assert all(p.grad is None for p in net.parameters() if not p.requires_grad)


def _object_head_bias(net: SAM2LOVE, value: float) -> None:
    head = net.sam2.model.mask_decoder.pred_obj_score_head.proj_out
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(value)


@pytest.mark.parametrize("switch", [True, False])
def test_null_items_train_the_object_score_to_absent(switch):
    torch.manual_seed(0)
    net = SAM2LOVE(small_config(supervision="first", train_frames=None, null=NullConfig(object_score=switch)))
    net.train()
    batch = square_batch(texts=["the red circle", "the violin"])
    batch.is_null[1] = True
    batch.masks[1] = 0  # a null item's ground truth is empty
    out = net(batch)
    losses = net.losses(batch, out)
    scores = out.object_logits[:, 0]  # the supervised frame
    if switch:  # target 1 for the object in view, 0 for the null item
        expected = F.binary_cross_entropy_with_logits(scores, torch.tensor([1.0, 0.0]))
    else:  # the null item gives no target
        expected = F.binary_cross_entropy_with_logits(scores[:1], torch.tensor([1.0]))
    torch.testing.assert_close(losses["object"], expected)


def test_eval_output_is_empty_where_the_object_score_is_negative():
    torch.manual_seed(0)
    net = SAM2LOVE(small_config()).eval()
    batch = square_batch(texts=["the violin", "the red circle"])
    _object_head_bias(net, -5.0)
    with torch.no_grad():
        absent = net(batch)
    assert (absent.object_logits < 0).all() and (absent.mask_logits <= -1000).all()
    assert (absent.probabilities() == 0).all()
    _object_head_bias(net, 5.0)
    with torch.no_grad():
        present = net(batch)
    assert (present.object_logits > 0).all() and (present.mask_logits > -1000).all()


def test_ablation_switches():
    torch.manual_seed(0)
    batch = square_batch()  # no expressions: every position of the sequence is a real token
    fusion = FusionConfig(dim=128, depth=1, heads=4, num_seg_tokens=4, prompt_tokens="all")
    net = SAM2LOVE(small_config(fusion=fusion)).eval()
    with torch.no_grad():
        out = net(batch)
    assert len(net.fusion.blocks) == 1 and out.aux["seg_inputs"].shape == (2, 4, 4, 128)
    assert out.aux["prompt_tokens"].shape == (2, 4, net.sam2.hidden_size)  # one SAM2 prompt token per [seg]

    mean = SAM2LOVE(small_config(fusion=dataclasses.replace(fusion, readout="mean"))).eval()
    recorder = FusionRecorder(mean)
    with torch.no_grad():
        out = mean(batch)
    recorder.remove()
    torch.testing.assert_close(out.aux["prompt_tokens"], mean.projector(recorder.outputs[-1].mean(1, keepdim=True)))


def test_the_paper_preset_builds_on_meta_with_the_papers_settings_and_sizes():
    cfg = get_entry("sam2love-l-refavs").config(pretrained=False)
    assert (cfg.sam2.variant, cfg.sam2.weights, cfg.sam2.image_size) == (
        "sam2-hiera-large",
        "facebook/sam2-hiera-large",
        1024,
    )
    assert cfg.sam2.trainable == ("prompt_encoder", "mask_decoder") and cfg.supervision == "first"
    assert (cfg.fusion.dim, cfg.fusion.depth, cfg.fusion.num_seg_tokens, cfg.fusion.accumulate_cls) == (
        1024,
        6,
        1,
        True,
    )
    assert cfg.text.encoder.source == "distilbert/distilroberta-base" and cfg.vision.frozen
    recipe = cfg.recipe
    assert (recipe.optim.name, recipe.optim.lr, recipe.optim.weight_decay, recipe.batch_size) == ("adamw", 1e-4, 0, 8)
    assert (recipe.schedule.kind, recipe.schedule.warmup_steps) == ("warmup_decay", 100)
    with torch.device("meta"):
        net = SAM2LOVE(cfg)

    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    # Counted by hand from the description: Linear-ReLU-Linear projections into 1024, six pre-norm blocks (qkv,
    # output projection, two layer norms, a 4x MLP), the final norm, three learned tokens, the projector to 256.
    lin = lambda i, o: i * o + o  # noqa: E731
    block = lin(1024, 3072) + lin(1024, 1024) + 2 * 2048 + lin(1024, 4096) + lin(4096, 1024)
    projections = sum(lin(i, 1024) + lin(1024, 1024) for i in (128, 768, 768))
    fusion = projections + 6 * block + 2048 + 3 * 1024
    assert count(net.fusion) == fusion == 80_438_272
    assert count(net.projector) == lin(1024, 1024) + lin(1024, 256) == 1_312_000
    assert count(net.sam2) == 224_430_130  # SAM2 Hiera-L
    assert count(net.vision_encoder) == 85_798_656  # ViT-B/16 without its pooler
    assert count(net.text_encoder) == 82_118_400  # DistilRoBERTa-base
    assert count(net.audio_encoder) == 72_141_184  # VGGish
    assert net.num_parameters(trainable_only=True) == fusion + 1_312_000 + 4_221_329  # + prompt encoder, decoder
    assert net.num_parameters() == 546_238_642


def test_the_clip_text_ablation_swaps_distilroberta_for_clips_text_tower():
    from avseg.layers.text import clip_text_encoder

    cfg = get_entry("sam2love-l-refavs").config(**{"pretrained": False, "text.encoder": clip_text_encoder()})
    with torch.device("meta"):
        net = SAM2LOVE(cfg)
    assert type(net.text_encoder.module.model).__name__ == "CLIPTextModel"
    assert net.fusion.text_proj[0].in_features == 512  # CLIP's 512-d tokens, projected into the fusion's 1024
    clip_text, roberta = 63_165_952, 82_118_400
    text_proj_change = (512 - 768) * 1024  # the first Linear of the text projection reads 512 features, not 768
    assert net.num_parameters() == 546_238_642 - roberta + clip_text + text_proj_change


def test_the_tiny_preset_prompts_the_packaged_sam2_and_freezes_its_packaged_encoders():
    cfg = sam2love_tiny()
    assert cfg.vision.frozen and cfg.vision.weights == "avseg:vit-tiny-synthav"
    assert cfg.audio.encoder == "logmel_cnn" and cfg.audio.logmel_frozen
    assert cfg.audio.logmel_weights == "avseg:logmel-cnn-synthav"
    assert cfg.sam2.weights == "avseg:sam2-tiny-synthav"
    assert set(cfg.sam2.trainable) == {"prompt_encoder", "mask_decoder"}  # the paper's trainable SAM2 parts
    assert cfg.supervision == "first" and cfg.train_frames is None


def test_sam2_lr_trains_sam2s_parts_at_their_own_rate_and_the_rest_at_the_recipes():
    tiny = sam2love_tiny()
    # by default everything at the recipe's rate, 3e-4: at 3e-3 the fused [seg] collapses to one prompt
    assert tiny.sam2.lr is None and tiny.recipe.optim.lr == 3e-4
    net = SAM2LOVE(small_config(sam2=dataclasses.replace(small_config().sam2, lr=1e-4)))
    optimiser = build_optimizer(net, tiny.recipe.optim)
    scheduler = build_scheduler(optimiser, ScheduleConfig(kind="cosine", warmup_steps=2), total_steps=10)
    base_lr = {id(p): g["initial_lr"] for g in optimiser.param_groups for p in g["params"]}
    trainable = {name: p for name, p in net.named_parameters() if p.requires_grad}
    assert any(name.startswith("sam2.") for name in trainable) and any(not n.startswith("sam2.") for n in trainable)
    for name, p in trainable.items():
        assert base_lr[id(p)] == (1e-4 if name.startswith("sam2.") else 3e-4), name
    for _ in range(2):  # to the end of the warm-up: the schedule scales both rates alike
        optimiser.step()
        scheduler.step()
    rates = {g["name"]: g["lr"] for g in optimiser.param_groups}
    assert rates["decay@0.0001"] == pytest.approx(1e-4) and rates["decay"] == pytest.approx(3e-4)


def test_supervising_every_frame_tracks_the_first_frame_and_drawn_ones():
    net = SAM2LOVE(small_config(supervision="all", train_frames=4)).train()
    torch.manual_seed(3)
    batch = square_batch(t=6)
    out = net(batch)
    frames = out.computed_frames[0].nonzero().flatten().tolist()
    assert len(frames) == 4 and frames[0] == 0 and out.computed_frames.all(0).sum() == 4  # frame 0 + 3 drawn
    with pytest.raises(ValueError, match="train_frames needs supervision='all'"):
        small_config(supervision="first", train_frames=4)


@pytest.mark.slow
def test_train_eval_and_predict_from_the_command_line(tmp_path, capsys):
    synth(tmp_path / "synthav", videos=6, seed=1, size=64, frames=10, workers=1)
    data = tmp_path / "synthav" / "refavs"
    run = tmp_path / "run"
    common = ["--device", "cpu"]
    train = ["train", "--data", data, "--model", "sam2love-tiny", "--out", run, "--max-steps", "2"]
    assert main([*map(str, train), "--batch-size", "2", "--image-size", "64", "--val-split", "none", *common]) == 0
    scores = tmp_path / "scores.json"
    evaluate = ["eval", "--checkpoint", run, "--data", data, "--split", "test_s", "--pointer", "latest"]
    assert main([*map(str, evaluate), "--json-out", str(scores), *common]) == 0
    result = json.loads(scores.read_text())
    assert "J&F" in json.dumps(result)

    video = tmp_path / "clip.mp4"
    frames = np.random.default_rng(0).integers(0, 255, size=(25, 64, 80, 3), dtype=np.uint8)
    write_video(video, frames, fps=10.0, audio=np.zeros((1, 40_000), dtype=np.float32))
    out = tmp_path / "overlay.mp4"
    predict = ["predict", video, "--checkpoint", run, "--pointer", "latest", "--out", out, "--quiet"]
    assert main([*map(str, predict), "--text", "the red circle", *common]) == 0
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["preset"] == "sam2love-tiny" and sidecar["text"] == "the red circle"
    assert len(list((tmp_path / "overlay_masks").glob("*.png"))) == 3
    capsys.readouterr()


def test_create_model_by_name_gives_the_tiny_preset():
    net = create_model("sam2love-tiny", **{"fusion.depth": 1})
    assert net.preset == "sam2love-tiny" and len(net.fusion.blocks) == 1 and net.text_input == "optional"
