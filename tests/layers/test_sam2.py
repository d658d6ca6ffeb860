"""The SAM2 layer: building, batched encoding, hookable decoding, memory propagation and parity with transformers.

All tests use the random ``test-tiny`` shape at 64 px. transformers initialises SAM2 with tiny weights (std 0.02),
whose outputs are nearly constant and whose object scores are all negative (every mask suppressed), which would make
parity trivial; :func:`_randomize` gives the weights a realistic scale first.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import Sam2VideoConfig, Sam2VideoModel
from transformers.models.sam2_video.modeling_sam2_video import Sam2VideoInferenceSession

from avseg.config import config_from_dict, config_to_dict
from avseg.errors import ShapeError, UsageError
from avseg.layers.sam2 import (
    NO_OBJECT_SCORE,
    DecoderHooks,
    Sam2LayerConfig,
    Sam2Prompt,
    build_sam2,
    hiera_trunk_overrides,
    select_mask,
    tiny_sam2_config,
)
from avseg.layers.sam2 import layer as layer_module
from avseg.layers.sam2.config import hf_video_config_kwargs
from avseg.layers.sam2.memory import MemoryBank

SIZE = 64


def _randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Weights at the scale of trained ones: fan-in scaled matrices, norms near 1, embeddings of std 0.5."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim >= 2 and not any(k in name for k in ("embedding", "pos", "token")):
                param.copy_(torch.randn(param.shape, generator=generator) / param[0].numel() ** 0.5)
            elif "norm" in name and name.endswith("weight"):
                param.copy_(1 + 0.1 * torch.randn(param.shape, generator=generator))
            else:
                param.copy_(0.5 * torch.randn(param.shape, generator=generator))


def _layer(seed: int = 0, **overrides) -> layer_module.Sam2Layer:
    torch.manual_seed(seed)  # the random buffers (prompt encoder's Gaussian matrix) come from the global generator
    layer = build_sam2(tiny_sam2_config(SIZE, **overrides))
    _randomize(layer.model, seed)
    return layer


@pytest.fixture(scope="module")
def layer() -> layer_module.Sam2Layer:
    return _layer()


def _video(frames: int, batch: int = 1, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, frames, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _points(*xy: tuple[float, float]) -> torch.Tensor:
    return torch.tensor([list(p) for p in xy], dtype=torch.float32)[None]  # (1, P, 2)


# -- building ----------------------------------------------------------------------------------------------------------


def test_tiny_layer_shape_and_attributes(layer):
    assert layer.image_size == SIZE and layer.hidden_size == 128
    assert layer.feature_sizes == ((16, 16), (8, 8), (4, 4))
    assert (layer.num_mask_tokens, layer.num_multimask_outputs, layer.decoder_depth, layer.num_hook_points) == (
        4,
        3,
        2,
        3,
    )
    assert sum(p.numel() for p in layer.parameters()) < 3_000_000
    assert not layer.training and all(not p.requires_grad for p in layer.parameters())


@pytest.mark.parametrize(
    ("variant", "millions"),
    [
        ("sam2-hiera-tiny", 38.9),
        ("sam2-hiera-small", 46.0),
        ("sam2-hiera-base-plus", 80.8),
        ("sam2-hiera-large", 224.4),
        ("sam2.1-hiera-tiny", 39.0),
        ("sam2.1-hiera-large", 224.4),
    ],
)
def test_released_shapes_have_the_published_sizes(variant, millions):
    # Parameter counts of the SAM 2 / SAM 2.1 checkpoints (facebookresearch/sam2 README), built on the meta device.
    with torch.device("meta"):
        model = Sam2VideoModel(Sam2VideoConfig(**hf_video_config_kwargs(Sam2LayerConfig(variant=variant))))
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(millions, abs=0.06)
    sam21 = variant.startswith("sam2.1")
    assert (model.occlusion_spatial_embedding_parameter is not None) == sam21
    assert isinstance(model.temporal_positional_encoding_projection_layer, torch.nn.Linear) == sam21


@pytest.mark.parametrize(
    "kwargs",
    [
        {"variant": "sam3"},
        {"image_size": 100},
        {"trainable": ("decoder",)},
        {"memory_dtype": "float16"},
        {"variant": "test-tiny", "in_checkpoint": False},
        {"random_init": "xavier"},
        {"lr": 0.0},
    ],
)
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        Sam2LayerConfig(**kwargs)


def test_random_builds_use_sam2s_module_initialisation_unless_told_otherwise():
    def weight_std(init: str) -> tuple[float, float]:
        torch.manual_seed(0)
        decoder = build_sam2(tiny_sam2_config(SIZE, random_init=init)).model.mask_decoder
        return float(decoder.transformer.layers[0].cross_attn_token_to_image.q_proj.weight.std()), float(
            decoder.conv_s0.weight.std()
        )

    linear_sam2, conv_sam2 = weight_std("sam2")
    linear_hf, conv_hf = weight_std("transformers")
    # PyTorch's defaults: uniform(+-1/sqrt(fan_in)), std 1/sqrt(3 fan_in) (fan_in 128); transformers: normal(0, 0.02)
    assert linear_sam2 == pytest.approx((3 * 128) ** -0.5, rel=0.1)
    assert linear_hf == pytest.approx(0.02, rel=0.1)
    assert conv_sam2 > 2 * conv_hf


def test_a_random_build_codes_clicks_with_the_image_grids_positions():
    """SAM2 has one random Fourier matrix for clicks and the image grid; transformers draws two in a random build.
    The click at the centre of each stride-16 cell must match that cell's image position code best."""
    torch.manual_seed(0)
    model = build_sam2(tiny_sam2_config(SIZE)).model
    grid = model.get_image_wide_positional_embeddings()[0]  # (C, S/16, S/16)
    cells = SIZE // 16
    ys, xs = torch.meshgrid(torch.arange(cells), torch.arange(cells), indexing="ij")
    # pixel coordinates of the cell centres; the prompt encoder adds 0.5 and divides by the input size
    clicks = torch.stack([xs, ys], dim=-1).reshape(1, 1, -1, 2).float() * 16 + 7.5
    codes = model.prompt_encoder.shared_embedding(clicks + 0.5, (SIZE, SIZE))[0, 0]  # (cells², C)
    similarity = codes @ grid.flatten(1)  # (cells², cells²)
    assert torch.equal(similarity.argmax(dim=1), torch.arange(cells * cells))


def test_with_sam2s_initialisation_the_memory_tells_two_prompted_objects_apart():
    """The memory-conditioned features of a tracked frame differ between two objects prompted on the same video
    several times more with SAM2's initialisation than with transformers' (the signal the memory path learns from)."""

    def tracked_difference(init: str) -> float:
        torch.manual_seed(0)
        layer = build_sam2(tiny_sam2_config(SIZE, random_init=init))
        video = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
        features = layer.encode_frames(torch.cat([video, video]))  # two tracks on one video, b-major
        masks = torch.zeros(2, 1, SIZE, SIZE)
        masks[0, :, 8:24, 8:24] = 1  # top-left object
        masks[1, :, 40:56, 40:56] = 1  # bottom-right object
        with torch.no_grad():
            bank = layer.memory_bank(2)
            first = features.select([0, 2])
            layer.remember(
                first,
                bank,
                layer.track_step(first, bank, 0, prompt=Sam2Prompt(masks=masks), conditioning=True),
                conditioning=True,
            )
            embeddings = layer.track_step(features.select([1, 3]), bank, 1).image_embeddings
        return float((embeddings[0] - embeddings[1]).abs().mean() / embeddings.std())

    assert tracked_difference("sam2") > 3 * tracked_difference("transformers")


def test_config_round_trips_through_plain_dicts():
    config = Sam2LayerConfig(
        variant="sam2-hiera-large", trainable=("mask_decoder", "memory"), hf_config={"num_maskmem": 5}
    )
    assert config_from_dict(Sam2LayerConfig, json.loads(json.dumps(config_to_dict(config)))) == config
    assert hf_video_config_kwargs(config)["num_maskmem"] == 5


def test_pretrained_build_from_a_local_folder_and_frozen_parts_left_out_of_checkpoints(tmp_path, layer):
    layer.model.save_pretrained(tmp_path)
    config = tiny_sam2_config(SIZE, weights=str(tmp_path), trainable=("mask_decoder",), in_checkpoint=False)
    loaded = build_sam2(config, pretrained=True)
    for key, value in layer.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    state = loaded.state_dict()
    assert state and all(key.startswith("model.mask_decoder.") for key in state)
    before = loaded.model.mask_decoder.iou_token.weight.clone()
    state["model.mask_decoder.iou_token.weight"] = before + 1
    loaded.load_state_dict(state, strict=True)  # frozen weights are kept, not demanded
    assert torch.equal(loaded.model.mask_decoder.iou_token.weight, before + 1)
    assert torch.equal(loaded.model.vision_encoder.backbone.pos_embed, layer.model.vision_encoder.backbone.pos_embed)


# -- encoding ----------------------------------------------------------------------------------------------------------


def test_batched_encoding_equals_frame_by_frame(layer, one_thread):
    frames = _video(5)[0]
    with torch.no_grad():
        batched = layer.encode_frames(frames)
        chunked = layer.encode_frames(frames, chunk_size=2)
        single = [layer.encode_frames(frames[i : i + 1]) for i in range(5)]
    shapes = [tuple(f.shape) for f in batched.fpn]
    assert shapes == [(5, 128, 16, 16), (5, 128, 8, 8), (5, 128, 4, 4)]
    assert [tuple(p.shape) for p in batched.pos] == shapes
    for level in range(3):
        per_frame = torch.cat([s.fpn[level] for s in single])
        torch.testing.assert_close(batched.fpn[level], per_frame, rtol=0, atol=1e-5)
        torch.testing.assert_close(chunked.fpn[level], batched.fpn[level], rtol=0, atol=1e-5)
    picked = batched.select([4, 1])
    assert torch.equal(picked.fpn[2], batched.fpn[2][[4, 1]]) and picked.pos[0].shape[0] == 2


def test_hiera_trunk_overrides_widen_the_trunk_and_its_neck():
    wide = (32, 64, 128, 256)
    overrides = hiera_trunk_overrides(embed_dim_per_stage=list(wide), num_attention_heads_per_stage=[1, 2, 2, 4])
    layer = build_sam2(tiny_sam2_config(SIZE, hf_config=overrides))
    trunk = layer.model.vision_encoder.backbone
    assert trunk.patch_embed.projection.out_channels == 32  # the first stage's width
    assert [conv.in_channels for conv in layer.model.vision_encoder.neck.convs] == list(reversed(wide))
    with torch.no_grad():
        feats = layer.encode_frames(_video(2)[0])
    assert [tuple(f.shape) for f in feats.fpn] == [(2, 128, 16, 16), (2, 128, 8, 8), (2, 128, 4, 4)]
    with pytest.raises(ValueError, match="unknown Hiera trunk keys"):
        hiera_trunk_overrides(width=32)


def test_frames_are_resized_to_the_model_input(layer):
    assert layer.resize(torch.zeros(2, 3, 48, 80)).shape == (2, 3, SIZE, SIZE)
    with pytest.raises(ShapeError):
        layer.resize(torch.zeros(2, 48, 80))


# -- decoding ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("multimask", [True, False])
def test_decoder_equals_transformers_mask_decoder(layer, multimask):
    frames = _video(2)[0]
    with torch.no_grad():
        features = layer.encode_frames(frames)
        prompt = Sam2Prompt(points=torch.tensor([[[10.0, 20.0]], [[40.0, 33.0]]]))
        ours = layer.decode(features, prompt, multimask_output=multimask)
        model = layer.model
        image = features.fpn[2] + model.no_memory_embedding.view(1, -1, 1, 1)
        coords = torch.tensor([[[[10.0, 20.0]]], [[[40.0, 33.0]]]])
        sparse, dense = model.prompt_encoder(coords, torch.ones(2, 1, 1, dtype=torch.int32), None, None)
        masks, iou, tokens, scores = model.mask_decoder(
            image_embeddings=image,
            image_positional_embeddings=model.get_image_wide_positional_embeddings().repeat(2, 1, 1, 1),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
            high_resolution_features=[
                model.mask_decoder.conv_s0(features.fpn[0]),
                model.mask_decoder.conv_s1(features.fpn[1]),
            ],
        )
    count = 3 if multimask else 1
    assert ours.mask_logits.shape == (2, count, 16, 16) and ours.iou_pred.shape == (2, count)
    torch.testing.assert_close(ours.mask_logits, masks[:, 0], rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.iou_pred, iou[:, 0], rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.object_score_logits, scores[:, 0], rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.mask_tokens, tokens[:, 0], rtol=0, atol=1e-6)


def _hooks(layer, batch: int, scale: float, *, shift: bool = False, per_token: bool = False) -> DecoderHooks:
    generator = torch.Generator().manual_seed(3)
    size = layer.feature_sizes[2]
    token_shape = (batch, 4, layer.hidden_size) if per_token else (batch, layer.hidden_size)
    return DecoderHooks(
        image=[scale * torch.randn(batch, layer.hidden_size, *size, generator=generator) for _ in range(3)],
        mask_tokens=[scale * torch.randn(*token_shape, generator=generator) for _ in range(3)],
        shift_query_pe=shift,
    )


@pytest.mark.parametrize("shift", [False, True])
def test_zero_hooks_change_nothing_and_nonzero_hooks_do(layer, shift):
    with torch.no_grad():
        features = layer.encode_frames(_video(2)[0])
        plain = layer.decode(features)
        zero = layer.decode(features, hooks=_hooks(layer, 2, 0.0, shift=shift))
        moved = layer.decode(features, hooks=_hooks(layer, 2, 1.0, shift=shift))
        moved_per_token = layer.decode(features, hooks=_hooks(layer, 2, 1.0, per_token=True))
    for field in ("mask_logits", "iou_pred", "object_score_logits", "mask_tokens"):
        assert torch.equal(getattr(zero, field), getattr(plain, field)), field
    assert (moved.mask_logits - plain.mask_logits).abs().max() > 1e-2
    assert (moved_per_token.mask_logits - plain.mask_logits).abs().max() > 1e-2


def test_hook_points_are_independent(layer):
    # Each of the 3 hook points (before block 0, before block 1, before the final attention) must reach the output,
    # and shift_query_pe only matters through the first token residual.
    with torch.no_grad():
        features = layer.encode_frames(_video(1)[0])
        plain = layer.decode(features).mask_logits
        for index in range(3):
            image = [None] * 3
            image[index] = torch.randn(1, 128, 4, 4)
            tokens = [None] * 3
            tokens[index] = torch.randn(1, 128)
            by_image = layer.decode(features, hooks=DecoderHooks(image=image)).mask_logits
            by_tokens = layer.decode(features, hooks=DecoderHooks(mask_tokens=tokens)).mask_logits
            shifted = layer.decode(features, hooks=DecoderHooks(mask_tokens=tokens, shift_query_pe=True)).mask_logits
            assert (by_image - plain).abs().max() > 1e-3 and (by_tokens - plain).abs().max() > 1e-3
            assert torch.equal(shifted, by_tokens) == (index != 0)


def test_hooks_with_wrong_shapes_are_rejected(layer):
    features = layer.encode_frames(_video(1)[0])
    with pytest.raises(ShapeError, match="3 entries"):
        layer.decode(features, hooks=DecoderHooks(image=[None, None]))
    with pytest.raises(ShapeError, match="image\\[1\\]"):
        layer.decode(features, hooks=DecoderHooks(image=[None, torch.zeros(1, 128, 8, 8), None]))
    with pytest.raises(ShapeError, match="mask_tokens\\[0\\]"):
        layer.decode(features, hooks=DecoderHooks(mask_tokens=[torch.zeros(1, 64), None, None]))


def test_custom_sparse_prompt_tokens(layer):
    with torch.no_grad():
        features = layer.encode_frames(_video(2)[0])
        token = torch.randn(2, 1, 128, generator=torch.Generator().manual_seed(5))
        plain = layer.decode(features)
        appended = layer.decode(features, Sam2Prompt(sparse_embeddings=token))
        replaced = layer.decode(features, Sam2Prompt(sparse_embeddings=token, sparse_mode="replace"))
        with_click = layer.decode(features, Sam2Prompt(points=_points((5, 5)).expand(2, 1, 2), sparse_embeddings=token))
    for a, b in [(appended, plain), (replaced, appended), (with_click, appended)]:
        assert (a.mask_logits - b.mask_logits).abs().max() > 1e-3
    with pytest.raises(ValueError, match="replace"):
        Sam2Prompt(points=_points((5, 5)), sparse_embeddings=token[:1], sparse_mode="replace")
    with pytest.raises(ShapeError, match="channels"):
        layer.decode(features, Sam2Prompt(sparse_embeddings=torch.zeros(2, 1, 64)))
    with pytest.raises(ShapeError, match="batch size"):
        layer.decode(features, Sam2Prompt(sparse_embeddings=torch.zeros(3, 1, 128)))


def test_boxes_are_two_corner_points(layer):
    with torch.no_grad():
        features = layer.encode_frames(_video(1)[0])
        boxed = layer.decode(features, Sam2Prompt(boxes=torch.tensor([[8.0, 10.0, 40.0, 50.0]])))
        as_points = layer.decode(
            features, Sam2Prompt(points=_points((8, 10), (40, 50)), point_labels=torch.tensor([[2, 3]]))
        )
    assert torch.equal(boxed.mask_logits, as_points.mask_logits)
    assert Sam2Prompt(boxes=torch.zeros(1, 4), points=torch.zeros(1, 1, 2)).num_clicks == 3


def test_select_mask_modes():
    logits = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 2, 2)
    iou = torch.tensor([[0.1, 0.9, 0.3], [0.8, 0.2, 0.5]])
    scores = torch.tensor([1.0, -1.0])
    assert torch.equal(select_mask(logits, iou, scores, "first"), logits[:, :1])
    best = select_mask(logits, iou, scores, "iou")
    assert torch.equal(best[0, 0], logits[0, 1]) and torch.equal(best[1, 0], logits[1, 0])
    occ = select_mask(logits, iou, scores[:, None], "iou_occ")
    assert torch.equal(occ[0], best[0]) and bool((occ[1] == NO_OBJECT_SCORE).all())
    clip = select_mask(
        logits[None].expand(4, -1, -1, -1, -1), iou[None].expand(4, -1, -1), scores[None].expand(4, -1), "iou"
    )
    assert clip.shape == (4, 2, 1, 2, 2) and torch.equal(clip[3], best)
    with pytest.raises(ValueError):
        select_mask(logits, iou, scores, "best")


# -- propagation: parity with transformers' video model ------------------------------------------------------------


def _reference(model, video: torch.Tensor, clicks: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> dict:
    """transformers' own video propagation (one object): prompted frames, then forward, then backward."""
    session = Sam2VideoInferenceSession(
        video=video, video_height=SIZE, video_width=SIZE, dtype=torch.float32, max_vision_features_cache_size=1
    )
    outputs = {}
    with torch.inference_mode():
        for frame, (points, labels) in sorted(clicks.items()):
            index = session.obj_id_to_idx(1)
            session.add_point_inputs(index, frame, {"point_coords": points[None, None], "point_labels": labels[None]})
            session.obj_with_new_inputs = [1]
            outputs[frame] = model(session, frame_idx=frame)
        for reverse in (False, True):
            for out in model.propagate_in_video_iterator(session, reverse=reverse):
                outputs[out.frame_idx] = out
    return outputs


PARITY_CASES = {
    "first frame": {0: ([(20.0, 30.0)], [1])},
    "middle frame": {5: ([(20.0, 30.0)], [1])},
    "several frames, 2 clicks": {3: ([(20.0, 30.0), (40.0, 10.0)], [1, 0]), 8: ([(5.0, 50.0)], [1])},
    "box": {2: ([(8.0, 10.0), (40.0, 50.0)], [2, 3])},
}


@pytest.fixture
def one_thread():
    """Parity is about the algorithm: with several threads, float32 reductions are split differently for a batch of
    frames than for one frame (differences near 1e-4 on logits of magnitude 5), so compare single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_propagation_equals_transformers_video_model(layer, case, one_thread):
    clicks = {
        frame: (torch.tensor(points), torch.tensor([labels], dtype=torch.int32))
        for frame, (points, labels) in PARITY_CASES[case].items()
    }
    frames = 12
    video = _video(frames)
    reference = _reference(layer.model, video[0], clicks)
    prompts = {}
    for frame, (points, labels) in clicks.items():
        if labels.tolist() == [[2, 3]]:
            prompts[frame] = Sam2Prompt(boxes=points.reshape(1, 4))
        else:
            prompts[frame] = Sam2Prompt(points=points[None], point_labels=labels)
    with torch.no_grad():
        ours = layer.propagate(video, prompts=prompts, chunk_size=5)
    assert sorted(reference) == list(range(frames))
    expected_masks = torch.stack([reference[t].pred_masks[0] for t in range(frames)])  # (T, 1, 16, 16)
    expected_scores = torch.stack([reference[t].object_score_logits.reshape(()) for t in range(frames)])
    assert ours.masks.shape == (1, frames, 1, 16, 16)
    # Tolerance: both sides are float32 and transformers releases reorder some of its operations (with 5.25 the largest
    # difference after 12 frames of memory is 2.6e-5 on logits of magnitude about 10; with 5.23 it was below 1e-5).
    # 2e-4 leaves a margin of about 8x and stays far below what a wrong memory or prompt path changes (order 1).
    torch.testing.assert_close(ours.masks[0], expected_masks, rtol=0, atol=2e-4)
    torch.testing.assert_close(ours.object_score_logits[0], expected_scores, rtol=0, atol=2e-4)
    # the comparison is not trivial: the object is present on some frames and the masks vary
    present = expected_scores > 0
    assert present.any() and expected_masks[present].std() > 0.1


def test_tracks_in_one_batch_equal_tracks_one_by_one(layer, one_thread):
    video = _video(6, batch=2)
    prompts = {1: Sam2Prompt(points=torch.tensor([[[20.0, 30.0]], [[50.0, 12.0]]]))}
    with torch.no_grad():
        together = layer.propagate(video, prompts=prompts)
        for b in range(2):
            alone = layer.propagate(video[b : b + 1], prompts={1: Sam2Prompt(points=prompts[1].points[b : b + 1])})
            torch.testing.assert_close(together.masks[b], alone.masks[0], rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(together.multimask_logits[b], alone.multimask_logits[0], rtol=1e-4, atol=1e-4)


def test_precomputed_features_and_frame_loader_give_the_same_result(layer, one_thread):
    video = _video(7, batch=2)
    prompts = {3: Sam2Prompt(points=torch.tensor([[[20.0, 30.0]], [[50.0, 12.0]]]))}
    loaded: list[list[int]] = []

    def loader(indices: list[int]) -> torch.Tensor:
        loaded.append(indices)
        return video[:, indices]

    with torch.no_grad():
        direct = layer.propagate(video, prompts=prompts)
        features = layer.encode_frames(video.flatten(0, 1))
        cached = layer.propagate(features=features, num_frames=7, prompts=prompts)
        streamed = layer.propagate(loader, num_frames=7, batch_size=2, prompts=prompts, chunk_size=3)
    for other in (cached, streamed):
        torch.testing.assert_close(other.masks, direct.masks, rtol=0, atol=1e-5)
    assert sorted(t for chunk in loaded for t in chunk) == list(range(7))  # every frame encoded once
    assert all(len(chunk) <= 3 for chunk in loaded) and loaded[0][0] == 3  # conditioning frame first


def test_processing_orders(layer):
    video = _video(6)
    with torch.no_grad():
        bidirectional = [o.frame_idx for o in layer.propagate_iter(video, prompts={2: Sam2Prompt()})]
        ascending = [o.frame_idx for o in layer.propagate_iter(video, prompts={2: Sam2Prompt()}, order="ascending")]
        several = [o.frame_idx for o in layer.propagate_iter(video, prompts={4: Sam2Prompt(), 1: Sam2Prompt()})]
    assert bidirectional == [2, 3, 4, 5, 1, 0]
    assert ascending == [2, 0, 1, 3, 4, 5]
    assert several == [1, 4, 2, 3, 5, 0]
    with pytest.raises(ValueError, match="conditioning"):
        list(layer.propagate_iter(video, prompts={}))
    with pytest.raises(ValueError, match="outside"):
        list(layer.propagate_iter(video, prompts={6: Sam2Prompt()}))


def test_mask_prompt_becomes_the_frame_output(layer):
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:20, 4:16] = 1
    with torch.no_grad():
        out = layer.propagate(_video(4), prompts={0: Sam2Prompt(masks=mask)})
        empty = layer.propagate(_video(4), prompts={0: Sam2Prompt(masks=torch.zeros(1, 1, 32, 32))})
    first = out.masks[0, 0, 0]  # (16, 16): +10 inside the mask, -10 outside
    assert first[6, 4] == pytest.approx(10.0) and first[0, 15] == pytest.approx(-10.0)
    assert out.object_score_logits[0, 0] == pytest.approx(10.0) and empty.object_score_logits[0, 0] == pytest.approx(
        -10.0
    )
    assert out.multimask_logits.shape == (1, 4, 3, 16, 16)


def test_memory_bank_stays_bounded_on_long_videos(layer, monkeypatch):
    sizes: list[int] = []

    class CountingBank(MemoryBank):
        def add(self, frame, memory, *, conditioning):
            super().add(frame, memory, conditioning=conditioning)
            sizes.append(len(self.cond) + len(self.tracked))

    monkeypatch.setattr(layer_module, "MemoryBank", CountingBank)
    frames = 80
    video = _video(frames)
    prompts = {40: Sam2Prompt(points=_points((20, 30)))}
    with torch.no_grad():
        count = sum(
            1 for _ in layer.propagate_iter(lambda idx: video[:, idx], num_frames=frames, batch_size=1, prompts=prompts)
        )
    assert count == frames
    window = max(layer.model.config.num_maskmem, layer.model.config.max_object_pointers_in_encoder)
    # conditioning frame + the tracked window, plus the forward frames a later backward pass still reads
    assert max(sizes) <= 1 + 2 * window
    assert max(sizes) < frames


def test_bounded_bank_gives_the_results_of_keeping_everything(layer, monkeypatch):
    video = _video(30)
    prompts = {12: Sam2Prompt(points=_points((20, 30)))}
    with torch.no_grad():
        bounded = layer.propagate(video, prompts=prompts)
        monkeypatch.setattr(MemoryBank, "forget", lambda self, frames: None)
        unbounded = layer.propagate(video, prompts=prompts)
    assert torch.equal(bounded.masks, unbounded.masks)


# -- training ------------------------------------------------------------------------------------------------------


def test_training_gradients_reach_hooks_prompts_and_trainable_parts():
    layer = _layer(trainable=("mask_decoder",), memory_dtype="float32")
    with torch.no_grad():  # SAM2 cuts the gradient of frames without the object (hard choice): make it present
        layer.model.mask_decoder.pred_obj_score_head.proj_out.bias.fill_(30.0)
    layer.train()
    assert layer.model.mask_decoder.training and not layer.model.vision_encoder.training
    assert not layer.model.memory_attention.training  # frozen memory: no dropout
    frames = 4
    hooks = [_hooks(layer, 1, 0.1) for _ in range(frames)]
    for h in hooks:
        for tensor in [*h.image, *h.mask_tokens]:
            tensor.requires_grad_(True)
    token = torch.zeros(1, 1, 128, requires_grad=True)
    out = layer.propagate(
        _video(frames), prompts={0: Sam2Prompt(sparse_embeddings=token)}, hooks=hooks, binarize_memory_masks=False
    )
    # a loss on the last frame only: its gradient reaches the first frame through the memory (the object score
    # term keeps a gradient even where the masks are suppressed to a constant)
    last = out.multimask_logits[0, -1].clamp(-50, 50).square().mean()
    loss = last + out.object_score_logits[0, -1] + out.multimask_iou[0, -1].sum()
    loss.backward()
    assert token.grad is not None and token.grad.abs().sum() > 0
    assert hooks[0].image[0].grad is not None and hooks[0].image[0].grad.abs().sum() > 0
    assert hooks[-1].mask_tokens[2].grad.abs().sum() > 0
    decoder_grads = [p.grad for p in layer.model.mask_decoder.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in decoder_grads)
    assert all(p.grad is None for p in layer.model.vision_encoder.parameters())
    assert all(p.grad is None for p in layer.model.memory_attention.parameters())


def test_hooks_may_be_a_function_of_the_frame(layer):
    seen: list[int] = []

    def hooks(frame: int) -> DecoderHooks | None:
        seen.append(frame)
        return None

    with torch.no_grad():
        layer.propagate(_video(3), prompts={1: Sam2Prompt()}, hooks=hooks)
    assert sorted(seen) == [0, 1, 2]
    with pytest.raises(ShapeError, match="one entry per frame"):
        layer.propagate(_video(3), prompts={1: Sam2Prompt()}, hooks=[None, None])


# -- the per-frame step ------------------------------------------------------------------------------------------------


def test_propagate_is_a_loop_of_track_step_and_remember(layer, one_thread):
    frames = 7
    video = _video(frames, batch=2)
    prompts = {4: Sam2Prompt(), 1: Sam2Prompt(points=torch.tensor([[[20.0, 30.0]], [[40.0, 12.0]]]))}
    with torch.no_grad():
        features = layer.encode_frames(video.flatten(0, 1))  # (2*7, …), b-major
        expected = layer.propagate(features=features, num_frames=frames, prompts=prompts)
        # SAM2's video predictor by hand: the conditioning frames, forward from the earliest, then backward
        bank = layer.memory_bank(frames)
        outputs = {}
        plan = [(1, True, False), (4, True, False), (2, False, False), (3, False, False), (5, False, False)]
        plan += [(6, False, False), (0, False, True)]
        for frame, conditioning, reverse in plan:
            feats = features.select([frame, frames + frame])
            step = layer.track_step(
                feats, bank, frame, prompt=prompts.get(frame), conditioning=conditioning, reverse=reverse
            )
            layer.remember(feats, bank, step, conditioning=conditioning)
            outputs[frame] = step
    for name in ("masks", "multimask_logits", "multimask_iou", "object_score_logits"):
        stacked = torch.stack([getattr(outputs[t], name) for t in range(frames)], dim=1)
        assert torch.equal(stacked, getattr(expected, name)), name
    # the step's candidates are SAM2's: three for a single click and for tracked frames (multimask_output_for_tracking)
    assert outputs[1].mask_logits.shape == (2, 3, 16, 16) and outputs[1].iou_pred.shape == (2, 3)
    assert outputs[1].image_embeddings.shape == (2, 128, 4, 4) and outputs[1].prompted
    assert not outputs[2].prompted and outputs[2].prompt_masks is None


def test_a_corrective_pass_is_transformers_single_frame_forward_with_the_previous_mask(layer, one_thread):
    video = _video(3)
    model = layer.model
    with torch.no_grad():
        features = layer.encode_frames(video[0])
        bank = layer.memory_bank(3)
        first = features.select(0)
        step = layer.track_step(first, bank, 0, prompt=Sam2Prompt(points=_points((20, 30))), conditioning=True)
        layer.remember(first, bank, step, conditioning=True)
        feats = features.select(1)
        tracked = layer.track_step(feats, bank, 1)  # decoded from memory
        clicks = Sam2Prompt(points=_points((50, 40), (12, 8)), point_labels=torch.tensor([[1, 0]]))
        corrected = layer.track_step(
            feats,
            bank,
            1,
            prompt=clicks,
            previous_masks=tracked.masks,
            image_embeddings=tracked.image_embeddings,
        )
        # transformers' own SAM head pass on the memory-conditioned features with the previous mask logits as the
        # dense prompt (``_run_single_frame_inference`` with ``prev_sam_mask_logits``)
        decoder = model.mask_decoder
        labels = clicks.point_labels[:, None].int()  # (1, 1, 2)
        reference = model._single_frame_forward(
            input_points=clicks.points[:, None],
            input_labels=labels,
            input_masks=tracked.masks,
            image_embeddings=[decoder.conv_s0(feats.fpn[0]), decoder.conv_s1(feats.fpn[1]), tracked.image_embeddings],
            multimask_output=model._use_multimask(False, {"point_labels": labels}),
        )
        without_previous = layer.track_step(feats, bank, 1, prompt=clicks)
        recomputed = layer.track_step(feats, bank, 1, prompt=clicks, previous_masks=tracked.masks)
    assert corrected.mask_logits.shape[1] == 1  # two clicks: one mask
    torch.testing.assert_close(corrected.masks, reference.pred_masks, rtol=0, atol=1e-5)
    torch.testing.assert_close(corrected.object_pointer, reference.object_pointer[:, 0], rtol=0, atol=1e-5)
    expected_score = reference.object_score_logits.reshape(1)
    torch.testing.assert_close(corrected.object_score_logits, expected_score, rtol=0, atol=1e-5)
    # the previous mask is an input that matters, and reusing the image embeddings equals conditioning again
    assert (corrected.masks - without_previous.masks).abs().max() > 1e-2
    torch.testing.assert_close(recomputed.masks, corrected.masks, rtol=0, atol=1e-5)


def test_the_remembered_pass_is_what_later_frames_read(layer):
    video = _video(6)
    with torch.no_grad():
        features = layer.encode_frames(video[0, 4:])
        cond, nxt = features.select(0), features.select(1)  # the object is present on frame 4 with these clicks
        results = []
        for correct in (False, True):
            bank = layer.memory_bank(6)
            step = layer.track_step(cond, bank, 4, prompt=Sam2Prompt(points=_points((20, 30))), conditioning=True)
            if correct:
                clicks = Sam2Prompt(points=_points((20, 30), (50, 40)), point_labels=torch.tensor([[1, 0]]))
                step = layer.track_step(
                    cond,
                    bank,
                    4,
                    prompt=clicks,
                    conditioning=True,
                    previous_masks=step.masks,
                    image_embeddings=step.image_embeddings,
                )
            assert step.object_score_logits.item() > 0
            layer.remember(cond, bank, step, conditioning=True)
            results.append(layer.track_step(nxt, bank, 5))
    assert (results[0].masks - results[1].masks).abs().max() > 1e-2


def test_track_step_rejects_inconsistent_inputs(layer):
    features = layer.encode_frames(_video(1)[0])
    bank = layer.memory_bank(4)
    mask = torch.ones(1, 1, SIZE, SIZE)
    with pytest.raises(UsageError, match="mask prompt"):
        layer.track_step(features, bank, 0, prompt=Sam2Prompt(masks=mask, points=_points((3, 4))), conditioning=True)
    with pytest.raises(UsageError, match="memory bank is empty"):
        layer.track_step(features, bank, 2)
    with pytest.raises(ShapeError, match="previous_masks"):
        layer.track_step(features, bank, 0, conditioning=True, previous_masks=torch.zeros(2, 1, 16, 16))
    with pytest.raises(UsageError, match="num_frames"):
        layer.memory_bank(0)


def test_a_conditioning_memory_replaces_the_frames_tracked_memory(layer):
    # SAM2's predictor removes a frame's non-conditioning output once the frame gets a conditioning one
    with torch.no_grad():
        features = layer.encode_frames(_video(1)[0])
        bank = layer.memory_bank(8)
        step = layer.track_step(features, bank, 3, prompt=Sam2Prompt(), conditioning=True)
        tracked = layer.remember(features, bank, step, conditioning=False)
        stored = layer.remember(features, bank, step, conditioning=True)
    assert 3 not in bank.tracked and bank.cond[3] is stored and stored is not tracked
    assert [offset for offset, _ in bank.memories(5, reverse=False)] == [0]
