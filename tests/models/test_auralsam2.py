"""Tests of AuralSAM2 (avseg.models.auralsam2): wiring into SAM2, losses, prompt engineering, presets."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from avseg.config import config_from_dict
from avseg.data.augment import ClipAugment, ClipAugmentConfig
from avseg.data.types import AVSBatch, random_batch
from avseg.errors import UsageError
from avseg.layers.sam2 import Sam2Prompt
from avseg.models.auralsam2 import AuralSAM2, AuralSAM2Config, PromptConfig, TrackingConfig, auralsam2_tiny
from avseg.models.auralsam2_fuser import AuralFuser
from avseg.models.registry import get_entry

FULL_PRESETS = ["auralsam2-b+-avs", "auralsam2-l-avs", "auralsam2-b+-refavs", "auralsam2-l-refavs"]
PAPER_VARIANTS = [f"{name}-paper" for name in FULL_PRESETS]


def square_batch(b: int = 2, t: int = 3, size: int = 64, **kwargs: Any) -> AVSBatch:
    """A batch whose frames each hold one square object."""
    return random_batch(b, t, size, masks="square", **kwargs)


def activate_fusion(model: AuralSAM2) -> None:
    """Give the fusion blocks' zero-initialised residual branches weight, as training does."""
    for fusion in model.fuser.fusion:
        for bn in (fusion.frame_out[1], fusion.audio_out[1]):
            torch.nn.init.ones_(bn.weight)


@pytest.fixture(scope="module")
def tiny() -> AuralSAM2:
    """The tiny preset with the paper's three candidate masks (the preset itself decodes one)."""
    torch.manual_seed(0)
    model = AuralSAM2(dataclasses.replace(auralsam2_tiny(), tracking=TrackingConfig()))
    activate_fusion(model)
    return model.eval()


def test_forward_shapes_and_aux(tiny):
    batch = square_batch(texts=["the red circle", None])
    with torch.no_grad():
        out = tiny(batch)
    s4 = tiny.sam2.image_size // 4
    assert out.mask_logits.shape == (2, 3, 1, 64, 64)
    assert out.object_logits.shape == (2, 3) and out.iou_pred.shape == (2, 3, 3)
    assert out.aux["multimask_logits"].shape == (2, 3, 3, s4, s4)
    assert out.aux["selected_logits"].shape == (2, 3, s4, s4)
    assert len(out.aux["pixel_embeddings"]) == 3 and out.aux["audio_embeddings"][0].shape == (2, 3, 32)


def test_sam2_is_frozen_in_the_full_size_presets_and_only_the_fuser_trains():
    cfg = get_entry("auralsam2-l-refavs").config(pretrained=False)
    assert cfg.fuser.residual_init == 0.0  # released: the fusion starts as the identity (the tiny preset does not)
    with torch.device("meta"):
        model = AuralSAM2(cfg)
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"fuser"}
    # Checkpoints hold the fuser only: SAM2 is rebuilt from its weights, and VGGish and DistilRoBERTa are here only
    # because pretrained=False gave them random weights (the converter relies on this).
    outside = {k for k in model.state_dict() if not k.startswith("fuser.")}
    assert all(k.startswith(("audio_encoder.vggish.module.", "text_encoder.module.")) for k in outside)
    groups = model.param_groups(1e-4, 0.05)
    no_decay = next(g for g in groups if g["name"] == "no_decay")
    norms = sum(
        p.numel() for m in model.fuser.modules() for p in m.parameters(recurse=False) if "Norm" in type(m).__name__
    )
    assert sum(p.numel() for p in no_decay["params"]) == norms and no_decay["weight_decay"] == 0.0


def test_sam2_parts_trained_by_choice_take_sam2_lr_and_the_fuser_keeps_the_recipes():
    cfg = get_entry("auralsam2-l-refavs").config(pretrained=False)
    cfg = dataclasses.replace(cfg, sam2=dataclasses.replace(cfg.sam2, trainable=("mask_decoder",), lr=2e-5))
    with torch.device("meta"):
        model = AuralSAM2(cfg)
    groups = {g["name"]: g for g in model.param_groups(1e-4, 0.05)}
    assert set(groups) == {"decay", "no_decay", "decay@2e-05", "no_decay@2e-05"}
    decoder = {id(p) for p in model.sam2.model.mask_decoder.parameters()}
    assert {id(p) for g in ("decay@2e-05", "no_decay@2e-05") for p in groups[g]["params"]} == decoder
    assert groups["decay@2e-05"]["lr"] == 2e-5 and groups["decay"]["lr"] == 1e-4
    assert groups["no_decay@2e-05"]["weight_decay"] == 0.0 and groups["decay@2e-05"]["weight_decay"] == 0.05


def _full_fuser_count(dim=256, depths=(3, 6, 12), audio_depth=3, mlp=4, sr=4, text=768, hidden=1024, proj=(2, 128)):
    """Parameters of the full-size fuser, counted by hand from the method's description (the released projector:
    ``Linear-GELU-LN-Linear`` or ``conv-BN-conv``, which have the same count)."""
    lin = lambda o, i: o * i + o  # noqa: E731
    norm = 2 * dim
    visual = 2 * norm + lin(dim, dim) + lin(2 * dim, dim) + lin(dim, dim) + (dim * dim * sr * sr + dim) + norm
    visual += lin(mlp * dim, dim) + (mlp * dim * 9 + mlp * dim) + lin(dim, mlp * dim)
    audio = 2 * norm + lin(dim, dim) + lin(2 * dim, dim) + lin(dim, dim) + lin(mlp * dim, dim) + lin(dim, mlp * dim)
    inner = dim // 2
    fusion = lin(dim, dim) + 6 * lin(inner, dim) + 2 * (lin(dim, inner) + norm) + 2 * norm
    patches = sum(dim * dim * k * k + dim for k in (4, 2, 1))
    smooth = 2 * lin(dim, dim)
    layers, pdim = proj
    head = lin(pdim, dim) + 2 * pdim + (layers - 2) * (lin(pdim, pdim) + 2 * pdim) + lin(pdim, pdim)
    text_proj = lin(hidden, text) + lin(dim, hidden) if text else 0
    return sum(depths) * visual + 3 * audio_depth * audio + 3 * fusion + patches + smooth + 2 * head + text_proj


@pytest.mark.parametrize("name", FULL_PRESETS)
def test_full_size_presets_build_on_meta_with_the_released_values(name):
    cfg = get_entry(name).config(pretrained=False)
    refavs = name.endswith("refavs")
    assert cfg.sam2.image_size == 1024 and cfg.recipe.optim.lr == 1e-4 and cfg.recipe.schedule.kind == "poly"
    assert cfg.recipe.optim.weight_decay == 0.05 and cfg.sam2.trainable == ()
    assert cfg.recipe.augment == ClipAugmentConfig(grayscale=0.05)  # the released augmentation, as a data transform
    assert cfg.fuser.fusion_affinity == "dot" and cfg.loss.audiocon_samples == (64 if refavs else 128)
    projector = (cfg.projector.layers, cfg.projector.dim, cfg.projector.norm, cfg.projector.source)
    assert projector == ((2, 128, "layer", "residual") if refavs else (2, 128, "batch", "fused"))
    with torch.device("meta"):
        model = AuralSAM2(cfg)
    assert model.num_parameters(trainable_only=True) == _full_fuser_count(text=768 if refavs else None)
    sam2 = sum(p.numel() for p in model.sam2.parameters())
    assert (sam2 > 200e6) == ("-l-" in name)  # Hiera-L vs Hiera-b+
    assert (model.text_encoder is not None) == refavs
    assert model.config.tracking.eval_conditioning == ("middle" if refavs else "first")


@pytest.mark.parametrize("name", PAPER_VARIANTS)
def test_paper_variants_carry_the_papers_values(name):
    cfg = get_entry(name).config(pretrained=False)
    released = get_entry(name.removesuffix("-paper")).config(pretrained=False)
    assert cfg.recipe.optim.weight_decay == 0.01 and cfg.recipe.augment.grayscale == 0.1
    assert cfg.fuser.fusion_affinity == "softmax"  # supplement, Eq. 10
    assert (cfg.projector.layers, cfg.projector.dim) == (3, 64)
    assert cfg.loss.audiocon_samples * 2 * 2 == 512  # per scale and frame: 2 classes x (hard + easy)
    # Everything else is the released preset's.
    same = dataclasses.replace(
        cfg,
        fuser=released.fuser,
        projector=released.projector,
        loss=released.loss,
        recipe=dataclasses.replace(
            cfg.recipe, optim=released.recipe.optim, augment=released.recipe.augment, notes=released.recipe.notes
        ),
    )
    assert same == released
    with torch.device("meta"):
        fuser = AuralFuser(cfg.fuser, cfg.projector)
    refavs = name.endswith("refavs-paper")
    assert sum(p.numel() for p in fuser.parameters()) == _full_fuser_count(text=768 if refavs else None, proj=(3, 64))


def test_hooks_inject_levels_in_reverse_order(tiny):
    torch.manual_seed(1)
    b, t, h, w, c = 2, 3, 2, 2, tiny.config.fuser.dim
    dense = [torch.randn(b * t, h * w, c) for _ in range(3)]
    sparse = [torch.randn(b, t, c) for _ in range(3)]
    hooks = tiny._hooks(dense, sparse, b, t, (h, w))
    assert len(hooks) == t
    frame = 1
    expected = dense[2].view(b, t, h, w, c)[:, frame].permute(0, 3, 1, 2)  # the stride-16 branch goes first
    torch.testing.assert_close(hooks[frame].image[0], expected)
    torch.testing.assert_close(hooks[frame].mask_tokens[0], sparse[2][:, frame])
    torch.testing.assert_close(hooks[frame].mask_tokens[2], sparse[0][:, frame])


def test_dense_and_sparse_prompts_carry_the_audio(tiny):
    batch = square_batch(b=1)
    other = dataclasses.replace(batch, audio_examples=torch.randn_like(batch.audio_examples))

    def heads(b):  # a random SAM2 mostly scores "no object", which blanks the masks; its heads still differ
        out = tiny(b)
        return torch.cat([out.object_logits.flatten(), out.iou_pred.flatten()])

    with torch.no_grad():
        assert not torch.allclose(heads(batch), heads(other))  # the audio reaches SAM2 through the hooks
        for prompts in (PromptConfig(dense=False, sparse=True), PromptConfig(dense=True, sparse=False)):
            tiny.config.prompts = prompts
            assert not torch.allclose(heads(batch), heads(other))
        tiny.config.prompts = PromptConfig(dense=False, sparse=False)
        try:
            torch.testing.assert_close(heads(batch), heads(other))  # pure SAM2 then
            sam2_only = tiny.segment_with_prompts(batch, {1: Sam2Prompt()}, use_audio=False)
            forward_only = tiny(batch)
        finally:
            tiny.config.prompts = PromptConfig()
    torch.testing.assert_close(sam2_only.object_logits, forward_only.object_logits)


def test_conditioning_frame_follows_the_mode(tiny, monkeypatch):
    seen = []
    original = tiny.sam2.propagate

    def spy(*args, **kwargs):
        seen.append(sorted(kwargs["prompts"]))
        return original(*args, **kwargs)

    monkeypatch.setattr(tiny.sam2, "propagate", spy)
    batch = square_batch(b=1, t=5)
    tiny.config.tracking = TrackingConfig(train_conditioning="middle", eval_conditioning="first")
    try:
        with torch.no_grad():
            tiny.eval()(batch)
            tiny.train()(batch)
    finally:
        tiny.config.tracking = TrackingConfig()
        tiny.eval()
    assert seen == [[0], [2]]


def test_prompt_engineering_combines_boxes_with_audio(tiny, monkeypatch):
    captured = {}
    original = tiny.sam2.propagate

    def spy(*args, **kwargs):
        captured.update(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(tiny.sam2, "propagate", spy)
    batch = square_batch(b=2, t=3, size=64)
    boxes = torch.tensor([[8.0, 8.0, 40.0, 40.0], [0.0, 0.0, 32.0, 16.0]])
    with torch.no_grad():
        out = tiny.segment_with_prompts(batch, {0: Sam2Prompt(boxes=boxes)})
        plain = tiny.segment_with_prompts(batch, {0: Sam2Prompt(boxes=boxes)}, use_audio=False)
    scale = tiny.sam2.image_size / 64
    torch.testing.assert_close(captured["prompts"][0].boxes, boxes * scale)  # batch pixels → SAM2 input pixels
    assert captured["hooks"] is not None and out.mask_logits.shape == (2, 3, 1, 64, 64)
    assert not torch.allclose(out.object_logits, plain.object_logits)  # the audio prompts still act
    with pytest.raises(ValueError, match=r"0\.\.2"):
        tiny.segment_with_prompts(batch, {5: Sam2Prompt(boxes=boxes)})


def test_losses_terms_reduction_and_audiocon_switch():
    torch.manual_seed(0)
    cfg = auralsam2_tiny()
    model = AuralSAM2(dataclasses.replace(cfg, tracking=TrackingConfig())).train()  # three candidates
    batch = square_batch(b=2, t=3)
    out = model(batch)
    losses = model.losses(batch, out)
    assert set(losses) == {"focal", "dice", "iou", "object", "audiocon", "loss"}
    w = cfg.loss
    weights = (("focal", w.focal_weight), ("dice", w.dice_weight), ("iou", w.iou_weight), ("object", w.object_weight))
    expected = sum(weight * losses[k] for k, weight in weights) + w.audiocon_weight * losses["audiocon"]
    torch.testing.assert_close(losses["loss"], expected)
    assert w.frame_reduction == "sum" and losses["iou"].item() > 0
    model.config.loss = dataclasses.replace(w, frame_reduction="mean", audiocon_weight=0.0)
    averaged = model.losses(batch, out)
    assert "audiocon" not in averaged
    torch.testing.assert_close(averaged["dice"] * 3, losses["dice"])  # 6 frames / 2 clips vs 6 frames
    unlabelled = dataclasses.replace(batch, label_valid=torch.zeros(2, 3, dtype=torch.bool))
    zero = model.losses(unlabelled, out)["loss"]
    assert zero.item() == 0.0 and zero.requires_grad


def test_the_paper_presets_augment_through_the_data_transform_not_inside_forward(monkeypatch):
    paper = dataclasses.replace(get_entry("auralsam2-l-refavs").config().recipe, image_size=None)
    model = AuralSAM2(dataclasses.replace(auralsam2_tiny(), recipe=paper))
    assert isinstance(model.train_transform(), ClipAugment)
    seen = []
    original = model.sam2.encode_frames

    def spy(pixel_values, **kwargs):
        seen.append(pixel_values)
        return original(pixel_values, **kwargs)

    monkeypatch.setattr(model.sam2, "encode_frames", spy)
    batch = square_batch(b=1, t=2)
    with torch.no_grad():
        model.train()(batch)
        expected = model.sam2.resize((batch.frames.flatten(0, 1).float() - model.pixel_mean) / model.pixel_std)
    torch.testing.assert_close(seen[0], expected, rtol=0, atol=0)  # SAM2 sees the batch's own pixels in training


def test_single_mask_mode_supervises_sam2s_own_output():
    torch.manual_seed(0)
    cfg = auralsam2_tiny()
    cfg = dataclasses.replace(cfg, tracking=dataclasses.replace(cfg.tracking, multimask_output=False))
    model = AuralSAM2(cfg).train()
    batch = square_batch(b=1, t=2)
    out = model(batch)
    assert out.iou_pred is None and out.aux["candidates"].shape[2] == 1
    torch.testing.assert_close(out.aux["candidates"][:, :, 0], out.aux["selected_logits"])
    losses = model.losses(batch, out)
    assert losses["iou"].item() == 0.0 and torch.isfinite(losses["loss"])


def test_training_on_drawn_frames_tracks_only_them_and_supervises_them(monkeypatch):
    torch.manual_seed(0)
    cfg = auralsam2_tiny()
    assert cfg.train_frames == 4
    cfg = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, audiocon_weight=0.0))
    model = AuralSAM2(cfg).train()
    batch = square_batch(b=2, t=7, size=32)
    batch.masks[1, 5] = 0  # a frame whose target differs from the others
    conditioning = []
    original = model.sam2.propagate

    def spy(*args, **kwargs):
        conditioning.append((kwargs["num_frames"], sorted(kwargs["prompts"])))
        return original(*args, **kwargs)

    monkeypatch.setattr(model.sam2, "propagate", spy)
    torch.manual_seed(3)
    out = model(batch)
    index = out.computed_frames[0].nonzero().flatten()
    torch.manual_seed(3)
    assert torch.equal(index, model.draw_training_frames(batch, 4))
    assert conditioning == [(4, [2])]  # the middle of the drawn frames conditions SAM2
    others = [i for i in range(7) if i not in index.tolist()]
    assert out.mask_logits.shape == (2, 7, 1, 32, 32) and out.mask_logits[:, others].abs().sum() == 0
    assert out.computed_frames[:, index].all() and not out.computed_frames[:, others].any()
    assert out.object_logits.shape == (2, 7) and out.object_logits[:, others].abs().sum() == 0
    assert out.aux["candidates"].shape[1] == 4
    # The loss is the loss of the drawn frames as a clip of their own (at their seconds, the text weighed as on 7).
    sub = batch.select_frames(index)
    with torch.no_grad():
        direct = model._run(sub, None, use_audio=True, frame_index=index, clip_frames=7)
        torch.testing.assert_close(direct.mask_logits, out.mask_logits[:, index])
        torch.testing.assert_close(direct.object_logits, out.object_logits[:, index])
        # rtol: the two runs differ in float rounding only (one builds a graph, one does not)
        torch.testing.assert_close(
            model.losses(batch, out)["loss"], model.losses(sub, direct)["loss"], rtol=1e-4, atol=0
        )
    model.eval()
    with torch.no_grad():
        assert model(batch).computed_frames.all()  # evaluation tracks every frame
    with pytest.raises(ValueError, match="train_frames"):
        dataclasses.replace(cfg, train_frames=0)


EXPRESSION = "the red circle"
LONG = "the small red circle that moves to the left of the large blue square while the music plays"


def _expression_model(layout: str) -> AuralSAM2:
    torch.manual_seed(0)
    overrides: dict[str, Any] = {"fuser.fusion_layout": layout}
    if layout == "released":
        overrides["text.encoder.padding"] = "max_tokens"  # as the released code and converted checkpoints
    return AuralSAM2(get_entry("auralsam2-tiny").config(**overrides)).eval()


def _clip0(model: AuralSAM2, batch: AVSBatch) -> torch.Tensor:
    with torch.no_grad():
        out = model(batch)
    return torch.cat([out.mask_logits[0].flatten(), out.object_logits[0]])


@pytest.mark.parametrize("layout", ["released", "per_position"])
def test_an_expression_gets_the_same_masks_whatever_else_is_in_the_batch(layout):
    model = _expression_model(layout)
    batch = square_batch(b=2, t=3, texts=[EXPRESSION, "a dog"])
    beside_long = dataclasses.replace(batch, text=[EXPRESSION, LONG])
    reference = _clip0(model, batch)
    scale = reference.abs().max().item()
    beside = _clip0(model, beside_long)
    torch.testing.assert_close(beside, reference, atol=1e-4 * scale, rtol=0)
    # Not because the expression is ignored: another one changes the clip's output far more than its batch mates do
    # (they change it by float rounding at most; the fuser is untrained, so the expression's effect is small).
    other = _clip0(model, dataclasses.replace(batch, text=["the blue square", "a dog"]))
    assert (other - reference).abs().max() > 100 * (beside - reference).abs().max() + 1e-5
    if layout == "released":
        # The released layout reads padded positions unmasked: padded only to the batch's longest expression, the
        # clip's output would change with the expression beside it.
        model.text_encoder.module.config.padding = "longest"
        assert (_clip0(model, beside_long) - _clip0(model, batch)).abs().max() > 1e-2 * scale


def test_the_released_layout_needs_the_released_text_padding():
    with pytest.raises(ValueError, match=r"text\.encoder\.padding to 'max_tokens'"):
        get_entry("auralsam2-tiny").config(**{"fuser.fusion_layout": "released"})
    model = _expression_model("released")
    with pytest.raises(UsageError, match=r"clips \[1\]"):
        model(square_batch(b=2, t=2, texts=[EXPRESSION, None]))
    # A converted checkpoint saved before the padding option existed is read with the released padding.
    released = {"fuser.fusion_layout": "released", "text.encoder.padding": "max_tokens"}
    old = dataclasses.asdict(get_entry("auralsam2-l-refavs").config(**released))
    del old["text"]["encoder"]["padding"]
    upgraded = config_from_dict(AuralSAM2Config, AuralSAM2.upgrade_config(old))
    assert upgraded.text.encoder.padding == "max_tokens"
