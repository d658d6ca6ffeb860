"""Chat-UniVi token clustering (avseg.layers.token_cluster) on constructed blobs and against a reference rewrite.

The ``ref_*`` functions below re-state the released computation (PKU-YuanGroup/Chat-UniVi ``ChatUniVi/model/cluster.py``
``cluster_dpc_knn``, ``merge_tokens``, ``CTM.forward`` and ``arch.py::project``) in its own style: 0/1 masks mixed by
arithmetic, ``index_add_`` over flattened batch-and-cluster indices, per-event Python loops.
"""

from __future__ import annotations

import math

import pytest
import torch

from avseg.errors import ShapeError, UsageError
from avseg.layers.token_cluster import (
    cluster_and_merge,
    dpc_knn,
    merge_tokens,
    spatial_cluster,
    temporal_events,
)


def ref_dpc_knn(x: torch.Tensor, cluster_num: int, k: int, noise: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The released ``cluster_dpc_knn`` (no token mask); ``noise`` draws ``torch.rand * 1e-6`` from the global RNG."""
    b, _, c = x.shape
    dist = torch.cdist(x.float(), x.float()) / (c**0.5)
    nearest, _ = torch.topk(dist, k=k, dim=-1, largest=False)
    density = (-(nearest**2).mean(dim=-1)).exp()
    if noise:
        density = density + torch.rand(density.shape, dtype=density.dtype) * 1e-6
    mask = (density[:, None, :] > density[:, :, None]).type(x.dtype)
    dist_max = dist.flatten(1).max(dim=-1)[0][:, None, None]
    delta, _ = (dist * mask + dist_max * (1 - mask)).min(dim=-1)
    score = delta * density
    _, index_down = torch.topk(score, k=cluster_num, dim=-1)
    batch = torch.arange(b)[:, None].expand(b, cluster_num)
    centre_rows = dist[batch, index_down, :]  # index_points: (B, K, N)
    idx_cluster = centre_rows.argmin(dim=1)
    idx_cluster[batch.reshape(-1), index_down.reshape(-1)] = torch.arange(cluster_num)[None].expand(b, -1).reshape(-1)
    return idx_cluster, index_down


def ref_merge(
    x: torch.Tensor, idx_cluster: torch.Tensor, cluster_num: int, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """The released ``merge_tokens`` (features only), with ``(B, N, 1)`` weights."""
    b, n, c = x.shape
    if weight is None:
        weight = x.new_ones(b, n, 1)
    idx = idx_cluster + torch.arange(b)[:, None] * cluster_num
    all_weight = weight.new_zeros(b * cluster_num, 1)
    all_weight.index_add_(0, idx.reshape(b * n), weight.reshape(b * n, 1))
    all_weight = all_weight + 1e-6
    norm_weight = weight / all_weight[idx]
    merged = x.new_zeros(b * cluster_num, c)
    merged.index_add_(0, idx.reshape(b * n), (x * norm_weight).reshape(b * n, c))
    return merged.reshape(b, cluster_num, c)


def ref_ctm(x: torch.Tensor, sample_ratio: float, k: int, noise: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The released ``CTM.forward`` followed by ``TCBlock`` (which returns the merged tokens unchanged)."""
    n = x.shape[1]
    cluster_num = max(math.ceil(sample_ratio), 1) if sample_ratio > 1 else max(math.ceil(n * sample_ratio), 1)
    k = min(3, max(cluster_num // 2, 1)) if k > cluster_num else k
    idx_cluster, _ = ref_dpc_knn(x, cluster_num, k, noise)
    return ref_merge(x, idx_cluster, cluster_num), idx_cluster


def ref_project_image(
    x: torch.Tensor, rates: tuple[int, ...] = (64, 32, 16), ks: tuple[int, ...] = (5, 3, 3), noise: bool = False
) -> list[torch.Tensor]:
    """``project(x, input_type="image")`` with clustering on, as a list of the three steps (64/k 5, 32/k 3, 16/k 3)."""
    levels = []
    for rate, k in zip(rates, ks):
        x, _ = ref_ctm(x, rate, k, noise)
        levels.append(x)
    return levels


def ref_project_video(
    frames: torch.Tensor, rates: tuple[int, ...] = (64, 32, 16), ks: tuple[int, ...] = (5, 3, 3), noise: bool = False
) -> tuple[torch.Tensor, list[list[int]]]:
    """``project(frames, input_type="video")`` with clustering on, before the projector: ``(1, E * 112, C)``."""
    cls = frames.mean(dim=1).unsqueeze(0)
    _, idx = ref_ctm(cls, 0.0625, 5, noise)
    events: dict[int, list[int]] = {}
    for i, e in enumerate(idx[0].tolist()):
        events.setdefault(e, []).append(i)
    levels = ref_project_image(frames, rates, ks, noise)
    out = []
    for ids in events.values():
        for level, rate, k in zip(levels, rates, ks):
            joined = torch.cat([level[i] for i in ids], dim=0).unsqueeze(0)
            out.append(ref_ctm(joined, rate, k, noise)[0])
    return torch.cat(out, dim=1), list(events.values())


def three_blobs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three well-separated Gaussian blobs of unequal sizes (20, 30, 40), shuffled: ``(1, 90, 8)`` and blob labels."""
    g = torch.Generator().manual_seed(seed)
    means = torch.tensor([[0.0] * 8, [10.0] + [0.0] * 7, [0.0, 10.0] + [0.0] * 6])
    sizes = (20, 30, 40)
    points = torch.cat([means[i] + 0.3 * torch.randn(s, 8, generator=g) for i, s in enumerate(sizes)])
    labels = torch.cat([torch.full((s,), i) for i, s in enumerate(sizes)])
    order = torch.randperm(points.shape[0], generator=g)
    return points[order][None], labels[order]


def reference_density(x: torch.Tensor, k: int) -> torch.Tensor:
    """exp(-mean of the k smallest squared distances / C), one token at a time, itself included: ``(N,)``."""
    n, c = x.shape
    out = torch.empty(n)
    for i in range(n):
        sq = ((x - x[i]) ** 2).sum(dim=1) / c
        out[i] = torch.exp(-sq.sort().values[:k].mean())
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dpc_knn_recovers_three_blobs_with_the_densest_points_as_centres(seed: int) -> None:
    tokens, labels = three_blobs(seed)
    assignment, centres = dpc_knn(tokens, 3, k=5, tie_noise=0.0)
    assert assignment.dtype == torch.long and assignment.shape == (1, 90)
    assert centres.shape == (1, 3)
    # Equal up to relabelling: each cluster is exactly one blob.
    pairs = {(int(a), int(lbl)) for a, lbl in zip(assignment[0], labels)}
    assert len(pairs) == 3
    assert {a for a, _ in pairs} == {0, 1, 2} and {lbl for _, lbl in pairs} == {0, 1, 2}
    density = reference_density(tokens[0], k=5)
    for cluster, centre in enumerate(centres[0].tolist()):
        blob = labels == labels[centre]
        assert int(assignment[0, centre]) == cluster
        assert centre == int(torch.where(blob, density, torch.tensor(-1.0)).argmax())


def test_merge_gives_the_blob_means() -> None:
    tokens, labels = three_blobs()
    assignment, _ = dpc_knn(tokens, 3, k=5, tie_noise=0.0)
    merged = merge_tokens(tokens, assignment, 3)
    assert merged.shape == (1, 3, 8)
    for cluster in range(3):
        blob = labels == labels[assignment[0] == cluster][0]
        torch.testing.assert_close(merged[0, cluster], tokens[0, blob].mean(dim=0), rtol=1e-5, atol=1e-5)


def test_merge_with_weights_is_the_released_weighted_average() -> None:
    g = torch.Generator().manual_seed(3)
    tokens = torch.randn(2, 12, 5, generator=g)
    assignment = torch.randint(0, 4, (2, 12), generator=g)
    weights = torch.rand(2, 12, generator=g) + 0.1
    merged = merge_tokens(tokens, assignment, 4, weights)
    torch.testing.assert_close(merged, ref_merge(tokens, assignment, 4, weights[..., None]))
    # By hand for one cluster: sum w x / (sum w + 1e-6).
    sel = assignment[1] == int(assignment[1, 0])
    expected = (weights[1, sel, None] * tokens[1, sel]).sum(0) / (weights[1, sel].sum() + 1e-6)
    torch.testing.assert_close(merged[1, int(assignment[1, 0])], expected)


@pytest.mark.parametrize(("n", "c", "clusters", "k"), [(40, 16, 7, 5), (256, 32, 64, 5), (30, 4, 30, 3), (9, 3, 1, 1)])
def test_dpc_knn_matches_the_released_algorithm_on_random_tokens(n: int, c: int, clusters: int, k: int) -> None:
    tokens = torch.randn(3, n, c, generator=torch.Generator().manual_seed(n + c))
    assignment, centres = dpc_knn(tokens, clusters, k, tie_noise=0.0)
    ref_assignment, ref_centres = ref_dpc_knn(tokens, clusters, k)
    assert torch.equal(centres, ref_centres)
    assert torch.equal(assignment, ref_assignment)
    torch.testing.assert_close(merge_tokens(tokens, assignment, clusters), ref_merge(tokens, ref_assignment, clusters))


@pytest.mark.parametrize("k", [5, 1])
def test_default_noise_draws_what_the_released_code_draws(k: int) -> None:
    # With k=1 every density is exp(0) and the noise alone orders them, so the centres depend on the draws.
    tokens = torch.randn(2, 20, 8, generator=torch.Generator().manual_seed(5))
    results = []
    for seed in (11, 12):
        torch.manual_seed(seed)
        ours = dpc_knn(tokens, 6, k)
        torch.manual_seed(seed)
        ref = ref_dpc_knn(tokens, 6, k, noise=True)
        assert torch.equal(ours[0], ref[0]) and torch.equal(ours[1], ref[1])
        results.append(ours[1])
    if k == 1:
        assert not torch.equal(results[0], results[1])


def test_seeded_noise_is_deterministic_and_breaks_density_ties() -> None:
    # Two groups of exact duplicates: without noise every density is exp(0) and no token is denser than another.
    # The noise makes one copy per group the densest, so each group gets exactly one centre. The scale is 1e-3, not
    # the released 1e-6: float32 has only about 8 steps of 1.2e-7 in [1, 1 + 1e-6), so 1e-6 can leave copies tied.
    a, b = torch.zeros(4), torch.ones(4)
    tokens = torch.stack([a, a, a, a, b, b, b, b])[None]  # (1, 8, 4)
    group = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    for seed in range(5):
        first = dpc_knn(tokens, 2, k=2, tie_noise=1e-3, generator=torch.Generator().manual_seed(seed))
        again = dpc_knn(tokens, 2, k=2, tie_noise=1e-3, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
        assert sorted(group[first[1][0]].tolist()) == [0, 1]
        assert torch.equal(first[0][0], group if int(group[first[1][0, 0]]) == 0 else 1 - group)


def test_duplicate_centres_each_keep_their_own_cluster() -> None:
    # Two exact copies are the densest tokens (density exp(0)) and, without noise, neither is denser than the other:
    # both get the largest distance and become the two centres. Nearest-centre assignment alone would put both
    # copies in the first centre's cluster and leave the second empty; the released code sets centres to themselves.
    a = torch.tensor([0.0, 0.0, 0.0])
    tokens = torch.stack([torch.tensor([5.0, 0.0, 0.0]), a, torch.tensor([0.0, 4.0, 1.0]), a])[None]  # (1, 4, 3)
    assignment, centres = dpc_knn(tokens, 2, k=2, tie_noise=0.0)
    assert sorted(centres[0].tolist()) == [1, 3]
    assert assignment[0, centres[0]].tolist() == [0, 1]
    assert torch.equal(assignment, ref_dpc_knn(tokens, 2, 2)[0])
    assert torch.bincount(assignment[0], minlength=2).min() > 0  # no empty cluster


def test_spatial_cluster_turns_256_clip_tokens_into_112_as_released() -> None:
    tokens = torch.randn(2, 256, 32, generator=torch.Generator().manual_seed(7))
    out = spatial_cluster(tokens, tie_noise=0.0)
    assert out.shape == (2, 64 + 32 + 16, 32)
    torch.testing.assert_close(out, torch.cat(ref_project_image(tokens), dim=1))


def test_spatial_cluster_is_differentiable_through_the_merge() -> None:
    tokens = torch.randn(1, 256, 8, generator=torch.Generator().manual_seed(8), requires_grad=True)
    spatial_cluster(tokens, tie_noise=0.0).sum().backward()
    assert tokens.grad is not None and torch.isfinite(tokens.grad).all() and tokens.grad.abs().sum() > 0


def test_cluster_rates_and_neighbour_rule_follow_ctm() -> None:
    tokens = torch.randn(1, 40, 6, generator=torch.Generator().manual_seed(9))
    merged, assignment = cluster_and_merge(tokens, 0.25, 5, tie_noise=0.0)  # ceil(40 * 0.25) = 10 clusters, k 5
    assert merged.shape == (1, 10, 6) and int(assignment.max()) == 9
    torch.testing.assert_close(merged, ref_ctm(tokens, 0.25, 5)[0])
    # 4 clusters with k=5: k drops to min(3, 4 // 2) = 2.
    merged, assignment = cluster_and_merge(tokens, 4, 5, tie_noise=0.0)
    assert torch.equal(assignment, dpc_knn(tokens, 4, 2, tie_noise=0.0)[0])


@pytest.mark.parametrize(("t", "n_events"), [(10, 1), (40, 3)])
def test_temporal_events_match_the_released_video_path(t: int, n_events: int) -> None:
    g = torch.Generator().manual_seed(t)
    # Frames drift between three scenes. With 40 frames there are ceil(40 / 16) = 3 events and k drops to 1, so every
    # density is exp(0) up to rounding and the events follow the tie order: they must still be the released ones.
    scene = torch.randn(3, 1, 16, generator=g) * 3
    frames = torch.cat([scene[min(i * 3 // t, 2)] + torch.randn(1, 64, 16, generator=g) for i in range(t)])
    out = temporal_events(frames, rates=(16, 8, 4), tie_noise=0.0)
    assert len(out.events) == n_events
    assert sorted(f for ev in out.events for f in ev) == list(range(t))
    assert [ev[0] for ev in out.events] == sorted(ev[0] for ev in out.events)
    assert out.tokens.shape == (n_events * 28, 16)

    ref_tokens, ref_events = ref_project_video(frames, rates=(16, 8, 4))
    assert out.events == ref_events
    torch.testing.assert_close(out.tokens, ref_tokens[0])


def test_temporal_events_with_released_settings_and_global_noise() -> None:
    # SimToken's 10 frames of 256 CLIP tokens: one event of 112 tokens; with the same global seed the default noise
    # reproduces the released numbers.
    frames = torch.randn(10, 256, 8, generator=torch.Generator().manual_seed(12))
    torch.manual_seed(3)
    out = temporal_events(frames)
    torch.manual_seed(3)
    ref_tokens, ref_events = ref_project_video(frames, noise=True)
    assert out.events == ref_events == [list(range(10))]
    assert out.tokens.shape == (112, 8)
    torch.testing.assert_close(out.tokens, ref_tokens[0])


def test_errors_name_the_bad_argument() -> None:
    tokens = torch.randn(1, 10, 4)
    with pytest.raises(ShapeError, match=r"N=10.*num_clusters=64"):
        dpc_knn(tokens, 64)
    with pytest.raises(ShapeError, match="k=11"):
        dpc_knn(tokens, 2, k=11)
    with pytest.raises(ShapeError, match=r"\(B, N, C\)"):
        dpc_knn(torch.randn(10, 4), 2)
    with pytest.raises(ShapeError, match="floating-point"):
        dpc_knn(torch.ones(1, 10, 4, dtype=torch.long), 2)
    with pytest.raises(UsageError, match="num_clusters"):
        dpc_knn(tokens, 0)
    with pytest.raises(ShapeError, match=r"N=10.*64 clusters"):
        spatial_cluster(tokens)
    with pytest.raises(UsageError, match="one entry per clustering step"):
        spatial_cluster(torch.randn(1, 100, 4), rates=(64, 32), k=(5, 3, 3))
    with pytest.raises(ShapeError, match="assignment must be"):
        merge_tokens(tokens, torch.zeros(1, 9, dtype=torch.long), 2)
    with pytest.raises(ShapeError, match="outside"):
        merge_tokens(tokens, torch.full((1, 10), 2), 2)
    with pytest.raises(ShapeError, match="weights must be"):
        merge_tokens(tokens, torch.zeros(1, 10, dtype=torch.long), 2, torch.ones(1, 10, 1))
    with pytest.raises(ShapeError, match="frames"):
        temporal_events(torch.randn(256, 8))
    with pytest.raises(ShapeError, match="T=3 frames"):
        temporal_events(torch.randn(3, 64, 4), temporal_rate=4, rates=(8,), k=(3,))
