"""Tests of SAM2 trained as a promptable VOS model (avseg.models.sam2_vos): prompting, tracking, loss, protocol."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from avseg.checkpoint import save_checkpoint
from avseg.config import config_from_dict, config_to_dict
from avseg.data.augment import ClipAugmentConfig
from avseg.data.types import AVSBatch, random_batch
from avseg.layers.sam2 import NO_OBJECT_SCORE
from avseg.layers.sam2 import layer as sam2_layer
from avseg.layers.sam2.memory import MemoryBank
from avseg.layers.sam2.prompts import PromptPlan, PromptSimulationConfig
from avseg.models import sam2_vos
from avseg.models.registry import get_entry, list_models, load_model
from avseg.models.sam2_vos import SAM2VOS, SAM2LossConfig, SAM2VOSConfig, sam2_tiny

PAPER = [f"{v}-hiera-{s}" for v in ("sam2", "sam2.1") for s in ("t", "s", "b+", "l")]


def tiny_config(**changes: Any) -> SAM2VOSConfig:
    """``sam2-tiny`` with SAM2's own loss reduction (a sum over decoder passes)."""
    return dataclasses.replace(sam2_tiny(), loss=SAM2LossConfig(), **changes)


@pytest.fixture(scope="module")
def tiny() -> SAM2VOS:
    torch.manual_seed(0)
    return SAM2VOS(tiny_config())


def square_batch(b: int = 2, t: int = 10, size: int = 64, seed: int = 0) -> AVSBatch:
    """Clips with one square object per frame, moving one pixel per frame."""
    batch = random_batch(b, t, size, masks="square", seed=seed)
    for i in range(t):
        batch.masks[:, i] = torch.roll(batch.masks[:, i], shifts=i, dims=-1)
    return batch


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum() / (a | b).sum())


def force_plan(monkeypatch: pytest.MonkeyPatch, plan: PromptPlan) -> None:
    monkeypatch.setattr(sam2_vos, "plan_prompts", lambda *args, **kwargs: plan)


def record_decodes(monkeypatch: pytest.MonkeyPatch, model: SAM2VOS) -> list[dict[str, Any]]:
    """Record the prompt of every decoder pass (the layer's ``track_step``)."""
    calls: list[dict[str, Any]] = []
    original = model.sam2.track_step

    def spy(features, bank, frame, *, prompt=None, conditioning=False, previous_masks=None, **kwargs):
        calls.append(
            {
                "points": None if prompt is None else prompt.points,
                "labels": None if prompt is None else prompt.point_labels,
                "mask_input": previous_masks,
                "conditioning": conditioning,
            }
        )
        return original(
            features, bank, frame, prompt=prompt, conditioning=conditioning, previous_masks=previous_masks, **kwargs
        )

    monkeypatch.setattr(model.sam2, "track_step", spy)
    return calls


def record_memories(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bool]]:
    """Record ``(frame, conditioning)`` of every memory stored."""
    added: list[tuple[int, bool]] = []

    class Bank(MemoryBank):
        def add(self, frame, memory, *, conditioning):
            added.append((frame, conditioning))
            super().add(frame, memory, conditioning=conditioning)

    monkeypatch.setattr(sam2_layer, "MemoryBank", Bank)
    return added


# -- training --------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_training_clicks_and_corrects_the_conditioning_frame_and_a_tracked_one(tiny, monkeypatch):
    force_plan(monkeypatch, PromptPlan(True, [0], {0: False}, [0, 5]))
    calls = record_decodes(monkeypatch, tiny)
    memories = record_memories(monkeypatch)
    batch = square_batch()
    tiny.train()
    torch.manual_seed(0)
    out = tiny(batch)
    tiny.eval()
    computed = torch.nonzero(out.computed_frames[0]).flatten()
    assert len(computed) == 8 and (computed.diff() == 1).all()  # 8 consecutive frames
    assert out.mask_logits.shape == (2, 10, 1, 64, 64)
    assert (out.mask_logits[~out.computed_frames] == 0).all()
    steps = out.aux["steps"]
    assert [len(s) for s in steps] == [8, 1, 1, 1, 1, 8, 1, 1]  # 1 + 7 corrective passes on corrected frames
    first = calls[:8]
    assert [c["points"].shape[1] for c in first] == list(range(1, 9))  # one click more per pass
    assert first[0]["mask_input"] is None and all(c["mask_input"] is not None for c in first[1:])
    assert all(c["conditioning"] for c in first)
    # The first click is positive and inside the object (at SAM2's input size).
    s = tiny.sam2.image_size
    x, y = first[0]["points"][0, 0].long().tolist()
    gt = F.interpolate(batch.masks[:, computed[0]][:, None].float(), size=(s, s), mode="nearest")[:, 0]
    assert first[0]["labels"][0, 0] == 1 and gt[0, y, x] == 1
    # Candidates: three for zero or one click, one mask from two clicks on.
    assert [p.candidates.shape[1] for p in steps[0]] == [3] + [1] * 7
    # The corrected tracked frame joins the conditioning memories; the others do not.
    assert memories == [(0, True), (1, False), (2, False), (3, False), (4, False), (5, True), (6, False), (7, False)]
    # The corrected tracked frame is decoded from memory, not as a conditioning frame.
    fifth = [c for c in calls if c["points"] is not None and not c["conditioning"]]
    assert [c["points"].shape[1] for c in fifth] == list(range(1, 8))


def test_mask_prompts_are_the_conditioning_frames_output(tiny, monkeypatch):
    force_plan(monkeypatch, PromptPlan(False, [0, 3], {}, []))
    memories = record_memories(monkeypatch)
    batch = square_batch(size=128)
    tiny.train()
    out = tiny(batch)
    tiny.eval()
    computed = torch.nonzero(out.computed_frames[0]).flatten()
    assert [len(s) for s in out.aux["steps"]] == [1] * 8
    assert memories[:2] == [(0, True), (3, True)]  # conditioning frames first, then the others in order
    assert [f for f, _ in memories[2:]] == [1, 2, 4, 5, 6, 7]
    for k in (0, 3):
        # the mask becomes SAM2's S/4 output (logits ±10), upsampled back: equal up to its borders
        assert iou(out.mask_logits[:, computed[k], 0] > 0, batch.masks[:, computed[k]] > 0) > 0.9


def test_box_prompts_are_the_masks_corners(tiny, monkeypatch):
    force_plan(monkeypatch, PromptPlan(True, [0], {0: True}, [0]))
    calls = record_decodes(monkeypatch, tiny)
    batch = square_batch(t=2, size=128)
    tiny.train()
    out = tiny(batch)
    tiny.eval()
    start = int(torch.nonzero(out.computed_frames[0])[0])
    box = calls[0]
    assert box["labels"].tolist() == [[2, 3], [2, 3]]
    ys, xs = torch.nonzero(batch.masks[0, start], as_tuple=True)
    (x1, _), (_, y2) = box["points"][0].tolist()
    # noised by at most 10% of the box's side
    side = float(xs.max() - xs.min())
    assert abs(x1 - float(xs.min())) <= 0.1 * side + 1e-4 and abs(y2 - float(ys.max())) <= 0.1 * side + 1e-4
    assert [c["points"].shape[1] for c in calls[:8]] == list(range(2, 10))  # box, then 7 clicks after it


@pytest.mark.slow
def test_training_repeats_with_the_seed(tiny):
    batch = square_batch(t=4)
    tiny.train()
    runs = []
    for _ in range(2):
        torch.manual_seed(4)
        out = tiny(batch)
        runs.append((out.mask_logits.detach(), [len(s) for s in out.aux["steps"]]))
    tiny.eval()
    assert runs[0][1] == runs[1][1]
    torch.testing.assert_close(runs[0][0], runs[1][0], rtol=0, atol=0)


# -- loss ------------------------------------------------------------------------------------------------------------


def sam2_multistep_loss(passes_per_frame, targets: torch.Tensor) -> dict[str, float]:
    """``MultiStepMultiMasksAndIous`` (MOSE weights 20/1/1/1, supervise_all_iou, L1 IoU, object-score BCE) restated
    from facebookresearch/sam2 training/loss_fns.py: ``passes_per_frame[t]`` lists ``(masks (N, M, H, W) at the
    target size, ious (N, M), object logits (N, 1))``; ``targets (T, N, H, W)``."""
    num_objects = targets.shape[1]
    total = {"loss_mask": 0.0, "loss_dice": 0.0, "loss_iou": 0.0, "loss_class": 0.0}
    for passes, target in zip(passes_per_frame, targets):
        tgt = target[:, None].float()
        for src, ious, obj in passes:
            tgt_m = tgt.expand_as(src)
            prob = src.sigmoid()
            ce = F.binary_cross_entropy_with_logits(src, tgt_m, reduction="none")
            p_t = prob * tgt_m + (1 - prob) * (1 - tgt_m)
            focal = ce * (1 - p_t) ** 2 * (0.25 * tgt_m + 0.75 * (1 - tgt_m))
            focal = focal.flatten(2).mean(-1) / num_objects
            p, g = prob.flatten(2), tgt_m.flatten(2)
            den = p.sum(-1) + g.sum(-1)
            num = den - (p - g).abs().sum(-1)
            dice = (1 - (num + 1) / (den + 1)) / num_objects
            target_obj = (tgt[:, 0] > 0).flatten(1).any(-1)[:, None].float()
            cls = F.binary_cross_entropy_with_logits(obj, target_obj, reduction="none").mean(1).sum() / num_objects
            inter = ((src.flatten(2) > 0) & (g > 0)).sum(-1).float()
            union = ((src.flatten(2) > 0) | (g > 0)).sum(-1).float()
            iou = (ious - inter / union.clamp(min=1)).abs() / num_objects
            if focal.shape[1] > 1:
                best = (focal * 20 + dice).argmin(-1)
                rows = torch.arange(len(best))
                focal, dice = focal[rows, best][:, None], dice[rows, best][:, None]
                iou = iou.mean(-1, keepdim=True)
            total["loss_mask"] += float((focal * target_obj).sum().detach())
            total["loss_dice"] += float((dice * target_obj).sum())
            total["loss_iou"] += float((iou * target_obj).sum())
            total["loss_class"] += float(cls)
    total["core"] = 20 * total["loss_mask"] + total["loss_dice"] + total["loss_iou"] + total["loss_class"]
    return total


@pytest.mark.slow
def test_loss_equals_sam2s_multistep_multimask_loss(tiny, monkeypatch):
    force_plan(monkeypatch, PromptPlan(True, [0], {0: False}, [0, 2]))
    batch = square_batch(t=4, size=128)
    batch.masks[1, 3] = 0  # an absent object: only the object-score term counts there
    tiny.train()
    out = tiny(batch)
    losses = tiny.losses(batch, out)
    tiny.eval()
    passes = [
        [
            (
                F.interpolate(p.candidates, size=(128, 128), mode="bilinear", align_corners=False),
                p.iou_pred,
                p.object_logits[:, None],
            )
            for p in frame
        ]
        for frame in out.aux["steps"]
    ]
    with torch.no_grad():
        reference = sam2_multistep_loss(passes, (batch.masks.transpose(0, 1) > 0))
    assert losses["focal"].item() == pytest.approx(reference["loss_mask"], rel=1e-5)
    assert losses["dice"].item() == pytest.approx(reference["loss_dice"], rel=1e-5)
    assert losses["iou"].item() == pytest.approx(reference["loss_iou"], rel=1e-5)
    assert losses["object"].item() == pytest.approx(reference["loss_class"], rel=1e-5)
    assert losses["loss"].item() == pytest.approx(reference["core"], rel=1e-5)


def test_unlabelled_frames_are_not_supervised(tiny, monkeypatch):
    force_plan(monkeypatch, PromptPlan(False, [0], {}, []))
    batch = square_batch(t=4, size=64)
    tiny.train()
    torch.manual_seed(0)
    out = tiny(batch)
    full = tiny.losses(batch, out)["loss"]
    batch.label_valid[:, 2] = False
    batch.masks[:, 2] = 1 - batch.masks[:, 2]  # whatever is there must not count
    partial = tiny.losses(batch, out)["loss"]
    batch.label_valid[:] = False
    none = tiny.losses(batch, out)["loss"]
    tiny.eval()
    assert partial < full and none == 0 and none.requires_grad


@pytest.mark.slow
def test_training_lowers_the_loss_and_trains_only_the_configured_parts(monkeypatch):
    torch.manual_seed(0)
    sam2 = dataclasses.replace(sam2_tiny().sam2, trainable=("prompt_encoder", "mask_decoder", "memory"))
    model = SAM2VOS(tiny_config(sam2=sam2, prompts=PromptSimulationConfig(num_correction_points=2)))
    force_plan(monkeypatch, PromptPlan(True, [0], {0: False}, [0]))
    batch = square_batch(t=3, size=64)
    model.train()
    opt = torch.optim.AdamW(model.param_groups(lr=3e-3, weight_decay=0.0))
    losses = []
    for step in range(12):
        torch.manual_seed(step)
        loss = model.losses(batch, model(batch))["loss"]
        opt.zero_grad()
        loss.backward()
        if step == 0:
            reached = {n.split(".")[2] for n, p in model.named_parameters() if p.grad is not None and p.grad.any()}
            assert "vision_encoder" not in reached and {"mask_decoder", "prompt_encoder", "memory_attention"} <= reached
            frozen = [p for n, p in model.named_parameters() if n.startswith("sam2.model.vision_encoder.")]
            assert frozen and not any(p.requires_grad for p in frozen)
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3


# -- evaluation ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", ["mask", "box", "points"])
def test_evaluation_reads_only_the_conditioning_frames_ground_truth(prompt):
    torch.manual_seed(0)
    model = SAM2VOS(tiny_config(eval_prompt=prompt, eval_clicks=3, eval_chunk=2)).eval()
    batch = square_batch(b=2, t=4, size=128)
    batch.meta[1]["first_frame"] = 2
    with torch.no_grad():
        out = model(batch)
        batch.masks[:, 3:] = 1 - batch.masks[:, 3:]  # ground truth after the conditioning frames
        batch.masks[1, :2] = 1  # and before the late object's
        again = model(batch)
    torch.testing.assert_close(out.mask_logits, again.mask_logits, rtol=0, atol=0)
    assert out.mask_logits.shape == (2, 4, 1, 128, 128) and out.object_logits.shape == (2, 4)
    # The late object is predicted absent before its first frame, and conditioned there.
    assert (out.mask_logits[1, :2] == NO_OBJECT_SCORE).all() and (out.object_logits[1, :2] == NO_OBJECT_SCORE).all()
    if prompt == "mask":
        assert iou(out.mask_logits[1, 2, 0] > 0, batch.masks[1, 2] > 0) > 0.9
        assert iou(out.mask_logits[0, 0, 0] > 0, batch.masks[0, 0] > 0) > 0.9
    # Tracks run together or alone alike.
    with torch.no_grad():
        alone = model(
            dataclasses.replace(
                batch,
                frames=batch.frames[1:2],
                masks=batch.masks[1:2],
                frame_valid=batch.frame_valid[1:2],
                label_valid=batch.label_valid[1:2],
                meta=batch.meta[1:2],
            )
        )
    torch.testing.assert_close(alone.mask_logits[0], again.mask_logits[1], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("prompt", ["mask", "points"])
def test_evaluation_binarises_the_memory_of_prompted_frames_as_sam2s_predictor(prompt, monkeypatch):
    # SAM2's video predictor encodes the memory of every frame the user prompted (clicks or a mask) from the
    # binarised mask (``_consolidate_temp_output_across_obj(..., is_mask_from_pts=True)``), tracked frames from
    # sigmoid probabilities
    torch.manual_seed(0)
    model = SAM2VOS(tiny_config(eval_prompt=prompt, eval_clicks=2)).eval()
    seen: list[bool] = []
    original = model.sam2._encode_memory

    def spy(features, high_res_masks, scores, *, binarize):
        seen.append(binarize)
        return original(features, high_res_masks, scores, binarize=binarize)

    monkeypatch.setattr(model.sam2, "_encode_memory", spy)
    with torch.no_grad():
        model(square_batch(b=1, t=3, size=64))
    assert seen == [True, False, False]


def test_evaluation_clicks_follow_the_error_regions(monkeypatch):
    torch.manual_seed(0)
    model = SAM2VOS(tiny_config(eval_prompt="points", eval_clicks=4)).eval()
    calls = record_decodes(monkeypatch, model)
    batch = square_batch(b=1, t=3, size=128)
    with torch.no_grad():
        model(batch)
    clicks = [c["points"].shape[1] for c in calls if c["conditioning"]]
    assert clicks == [1, 2, 3, 4]
    x, y = calls[0]["points"][0, 0].long().tolist()
    xs = torch.nonzero(batch.masks[0, 0], as_tuple=True)[1]
    # SAM2's "center" click: the middle of the square object (32..63 in a 128 frame)
    assert calls[0]["labels"][0, 0] == 1 and (x, y) in {(47, 47), (48, 48), (47, 48), (48, 47)}
    assert int(xs.min()) <= x <= int(xs.max())


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = SAM2VOS(sam2_tiny()).eval()
    model.preset = "sam2-tiny"
    batch = square_batch(b=1, t=3, size=64)
    with torch.no_grad():
        before = model(batch).mask_logits
    again = load_model(save_checkpoint(tmp_path / "ck", model, preset="sam2-tiny")).eval()
    with torch.no_grad():
        after = again(batch).mask_logits
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    assert again.tasks == ("vos",)


# -- optimiser groups and presets ------------------------------------------------------------------------------------


def test_a_sam2_preset_refuses_a_separate_sam2_learning_rate():
    cfg = sam2_tiny()
    with pytest.raises(ValueError, match=r"sam2\.lr: .*train\.lr"):
        dataclasses.replace(cfg, sam2=dataclasses.replace(cfg.sam2, lr=1e-4))


def test_param_groups_follow_sam2s_vision_lr_and_layer_decay():
    cfg = get_entry("sam2.1-hiera-b+").config(pretrained=False)
    with torch.device("meta"):
        model = SAM2VOS(cfg)
    groups = model.param_groups(lr=5e-6, weight_decay=0.1)
    params = [p for g in groups for p in g["params"]]
    assert len(params) == len({id(p) for p in params}) == sum(1 for p in model.parameters() if p.requires_grad)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    wd_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    n = len(model.sam2.model.vision_encoder.backbone.blocks)
    assert n == 24  # Hiera-B+: 2 + 3 + 16 + 3 blocks
    named = dict(model.named_parameters())
    trunk = "sam2.model.vision_encoder.backbone."
    vision = 3e-6  # the MOSE config's vision_lr
    expect = {
        trunk + "pos_embed": vision,
        trunk + "patch_embed.projection.weight": vision * 0.9 ** (n + 1),
        trunk + "blocks.0.attn.qkv.weight": vision * 0.9**n,
        trunk + f"blocks.{n - 1}.mlp.proj_in.weight": vision * 0.9,
        "sam2.model.vision_encoder.neck.convs.0.weight": vision,
        "sam2.model.mask_decoder.iou_token.weight": 5e-6,
    }
    for name, lr in expect.items():
        assert lr_of[id(named[name])] == pytest.approx(lr), name
    assert wd_of[id(named[trunk + "blocks.0.attn.qkv.bias"])] == 0.0
    assert wd_of[id(named[trunk + "blocks.0.layer_norm1.weight"])] == 0.0
    assert wd_of[id(named[trunk + "blocks.0.attn.qkv.weight"])] == 0.1


@pytest.mark.parametrize("name", PAPER)
def test_paper_presets_load_meta_weights_with_the_mose_recipe(name):
    entry = get_entry(name)
    cfg = entry.config()
    assert entry.tasks == ("vos",) and entry.model_cls is SAM2VOS and cfg.pretrained
    version, size = name.split("-hiera-")
    full = {"t": "tiny", "s": "small", "b+": "base-plus", "l": "large"}[size]
    assert cfg.sam2.variant == f"{version}-hiera-{full}" and cfg.sam2.weights == f"facebook/{version}-hiera-{full}"
    assert cfg.sam2.trainable == ("image_encoder", "prompt_encoder", "mask_decoder", "memory")
    r = cfg.recipe
    assert (r.optim.name, r.optim.lr, r.optim.weight_decay, r.clip_grad_norm, r.epochs) == ("adamw", 5e-6, 0.1, 0.1, 40)
    assert (r.schedule.kind, r.schedule.min_lr_ratio, r.image_size) == ("cosine", 0.1, 1024)
    assert r.augment == ClipAugmentConfig() and cfg.train_frames == 8 and cfg.eval_prompt == "mask"
    assert config_from_dict(SAM2VOSConfig, config_to_dict(cfg)) == cfg


def test_the_tiny_preset_is_registered_offline_and_random():
    assert "sam2-tiny" in list_models("sam2*") and set(PAPER) <= set(list_models("sam2*"))
    cfg = get_entry("sam2-tiny").config()
    assert not cfg.pretrained and cfg.sam2.variant == "test-tiny" and cfg.recipe.image_size == cfg.sam2.image_size
    assert (cfg.loss.focal_weight, cfg.loss.dice_weight, cfg.loss.iou_weight, cfg.loss.object_weight) == (20, 1, 1, 1)
    with pytest.raises(ValueError, match="eval_prompt"):
        SAM2VOSConfig(eval_prompt="scribble")  # type: ignore[arg-type]


@pytest.mark.slow
def test_sam2_tiny_trains_from_the_cli_with_simulated_prompts_and_resumes_exactly(tmp_path):
    """`avseg train --model sam2-tiny --format vos` for 4 steps, and the same run resumed from its step-2 checkpoint:
    the prompt simulation draws from torch's global generator, which the checkpoint restores, so both end equal."""
    import json
    import shutil

    from safetensors.torch import load_file

    from avseg.train.commands import train
    from tests.data.fixtures_vos import write_vos_tree

    root = write_vos_tree(tmp_path / "data").ytvos
    common = {"data": root, "format": "vos", "model": "sam2-tiny", "max_steps": 4, "batch_size": 2, "device": "cpu"}
    overrides = ["train.checkpoint_every=2", "train.keep_last=5", "train.val_every=100", "train.progress_bar=false"]
    full = tmp_path / "full"
    assert train(out=full, overrides=overrides, val_split=None, **common) == 0
    assert sorted(p.name for p in (full / "checkpoints").glob("step-*")) == ["step-0000002", "step-0000004"]

    part = tmp_path / "part"
    shutil.copytree(full, part)
    shutil.rmtree(part / "checkpoints" / "step-0000004")
    (part / "checkpoints" / "latest.json").write_text(json.dumps({"checkpoint": "step-0000002", "step": 2}))
    assert train(out=part, overrides=overrides, val_split=None, resume=True, **common) == 0

    ours = load_file(str(part / "checkpoints" / "step-0000004" / "model.safetensors"))
    reference = load_file(str(full / "checkpoints" / "step-0000004" / "model.safetensors"))
    assert ours.keys() == reference.keys()
    changed = [k for k in reference if not torch.equal(ours[k], reference[k])]
    assert not changed, changed[:5]
    first = load_file(str(full / "checkpoints" / "step-0000002" / "model.safetensors"))
    assert any(not torch.equal(first[k], reference[k]) for k in reference)  # steps 3-4 did train
