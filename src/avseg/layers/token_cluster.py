"""Chat-UniVi's visual token clustering: DPC-KNN clustering, cluster merging, spatial steps and temporal events.

Paper: P. Jin, R. Takanobu, W. Zhang, X. Cao, L. Yuan, "Chat-UniVi: Unified Visual Representation Empowers Large
Language Models with Image and Video Understanding", CVPR 2024. Original code: PKU-YuanGroup/Chat-UniVi
(``ChatUniVi/model/cluster.py`` and ``ChatUniVi/model/arch.py::ChatUniViMetaForCausalLM.project``, commit ec0b3db,
Apache-2.0); SimToken (DianJin-HFUT/SimToken) ships the same ``cluster.py`` unchanged. This module is a plain-PyTorch
rewrite with typed tensors in place of the released ``token_dict`` dictionaries; it has no parameters (the released
``CTM`` and ``TCBlock`` modules hold none either: ``TCBlock.forward`` returns the merged tokens unchanged).

The clustering is density-peak clustering with k nearest neighbours (DPC-KNN) on the token features:

1. ``d(i, j) = ||x_i - x_j|| / sqrt(C)``: Euclidean distance (``torch.cdist`` in float32) divided by the square root
   of the channel count.
2. Local density ``rho_i = exp(-mean_{j in kNN(i)} d(i, j)^2)``. The ``k`` nearest neighbours include the token itself
   (at distance 0), exactly as ``torch.topk(..., largest=False)`` finds them in the released code. The released code
   then adds ``U(0, 1) * 1e-6`` noise from the global random generator so that no two densities are equal; here the
   noise is ``tie_noise`` (set it to 0 for deterministic results) and can come from a seeded ``generator``.
3. Distance to higher density ``delta_i = min_{j: rho_j > rho_i} d(i, j)``; a token with no denser token gets the
   largest distance of the whole distance matrix of its sample (not its own largest distance).
4. Score ``rho_i * delta_i``; the ``num_clusters`` highest scores are the centres, in descending score order, and
   cluster ``c`` is the one of the ``c``-th centre.
5. Every token joins its nearest centre (the first one on equal distances); centres are then set to their own cluster,
   which matters only for duplicate tokens.

A cluster becomes one token: the weighted average ``sum_i w_i x_i / (sum_i w_i + 1e-6)`` (the ``1e-6`` is the
released code's, so a merged token is the mean scaled by ``n / (n + 1e-6)``). Chat-UniVi always passes unit weights.

An image (``project(..., input_type="image")``) goes through three clustering steps, 256 CLIP ViT-L/14 patch tokens
→ 64 → 32 → 16 with ``k`` = 5, 3, 3, each step clustering the previous step's merged tokens; the three outputs are
concatenated into 112 tokens (:func:`spatial_cluster`). A video (``input_type="video"``) first groups its frames into
events by clustering the per-frame mean tokens (``ceil(T / 16)`` events, ``k`` = 5 lowered for few events), then
clusters each event's frames together at each spatial step (:func:`temporal_events`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from avseg.errors import ShapeError, UsageError

__all__ = [
    "SPATIAL_K",
    "SPATIAL_RATES",
    "TEMPORAL_K",
    "TEMPORAL_RATE",
    "TemporalEvents",
    "cluster_and_merge",
    "dpc_knn",
    "merge_tokens",
    "spatial_cluster",
    "temporal_events",
]

# Chat-UniVi's settings (``ChatUniVi/config/model_config.py`` and ``arch.py::MetaModel``), also SimToken's.
SPATIAL_RATES: tuple[float, ...] = (64, 32, 16)
SPATIAL_K: tuple[int, ...] = (5, 3, 3)
TEMPORAL_RATE = 1 / 16
TEMPORAL_K = 5

# The released code adds U(0, 1) * 1e-6 to the densities and 1e-6 to each cluster's total weight.
_RELEASED_TIE_NOISE = 1e-6
_MERGE_EPS = 1e-6


def _check_tokens(tokens: Tensor, name: str) -> tuple[int, int, int]:
    if tokens.ndim != 3:
        raise ShapeError(f"{name} must be (B, N, C), got shape {tuple(tokens.shape)}")
    b, n, c = tokens.shape
    if b == 0 or n == 0 or c == 0:
        raise ShapeError(f"{name} must have non-empty B, N and C, got shape {tuple(tokens.shape)}")
    if not tokens.is_floating_point():
        raise ShapeError(f"{name} must be a floating-point tensor, got dtype {tokens.dtype}")
    return b, n, c


def dpc_knn(
    tokens: Tensor,
    num_clusters: int,
    k: int = 5,
    *,
    tie_noise: float = _RELEASED_TIE_NOISE,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Cluster tokens with DPC-KNN as Chat-UniVi does (``cluster.py::cluster_dpc_knn``).

    The algorithm is described in the module docstring. No gradient flows through the assignment (the released code
    runs it under ``torch.no_grad``); gradients reach the tokens through :func:`merge_tokens`.

    Args:
        tokens: ``(B, N, C)`` token features; distances are computed in float32 whatever their dtype.
        num_clusters: number of clusters ``K``, ``1 <= K <= N``.
        k: neighbours used for the local density, the token itself included, ``1 <= k <= N``.
        tie_noise: scale of the uniform noise added to the densities to break ties. The default ``1e-6`` is the
            released value and, with ``generator=None``, draws the same numbers from the global random generator as
            the released code; ``0`` disables it (equal densities then stay equal, and centres among equal scores are
            chosen by ``torch.topk``'s tie order). Densities are float32 and close to 1, where float32 steps are about
            ``1.2e-7``, so ``1e-6`` gives only a handful of distinct values and exact duplicates can stay tied.
        generator: random generator for the noise, on the tokens' device; ``None`` uses the global one.

    Returns:
        ``(assignment, centres)``: ``assignment (B, N)`` long, the cluster in ``[0, K)`` of each token;
        ``centres (B, K)`` long, the token index of each cluster's centre, highest score first.

    Raises:
        ShapeError: ``tokens`` is not a non-empty floating-point ``(B, N, C)`` tensor, or has fewer than
            ``num_clusters`` or ``k`` tokens.
        UsageError: ``num_clusters`` or ``k`` is below 1, or ``tie_noise`` is negative.
    """
    b, n, c = _check_tokens(tokens, "tokens")
    if num_clusters < 1:
        raise UsageError(f"num_clusters must be at least 1, got {num_clusters}")
    if k < 1:
        raise UsageError(f"k (nearest neighbours) must be at least 1, got {k}")
    if tie_noise < 0:
        raise UsageError(f"tie_noise must be non-negative, got {tie_noise}")
    if num_clusters > n:
        raise ShapeError(f"tokens has N={n} tokens, fewer than num_clusters={num_clusters}")
    if k > n:
        raise ShapeError(f"tokens has N={n} tokens, fewer than the k={k} nearest neighbours asked for")

    with torch.no_grad():
        x = tokens.detach().float()
        # Dividing by sqrt(C) keeps exp(-d^2) away from 0 for high-dimensional features (C = 1024 for CLIP-L).
        dist = torch.cdist(x, x) / math.sqrt(c)  # (B, N, N)

        knn_dist, _ = torch.topk(dist, k=k, dim=-1, largest=False)  # (B, N, k), the token itself included
        density = torch.exp(-(knn_dist**2).mean(dim=-1))  # (B, N)
        if tie_noise > 0:
            noise = torch.rand(density.shape, generator=generator, device=density.device, dtype=density.dtype)
            density = density + noise * tie_noise

        # denser[b, i, j]: token j is strictly denser than token i.
        denser = density[:, None, :] > density[:, :, None]  # (B, N, N)
        dist_max = dist.flatten(1).max(dim=-1).values[:, None, None]  # (B, 1, 1)
        delta = torch.where(denser, dist, dist_max).min(dim=-1).values  # (B, N)

        score = delta * density
        centres = torch.topk(score, k=num_clusters, dim=-1).indices  # (B, K), highest score first

        centre_dist = dist.gather(1, centres[:, :, None].expand(b, num_clusters, n))  # (B, K, N)
        assignment = centre_dist.argmin(dim=1)  # (B, N)
        # A duplicate of a centre sits at distance 0 from two centres; each centre must still own its cluster.
        labels = torch.arange(num_clusters, device=tokens.device).expand(b, num_clusters)
        assignment.scatter_(1, centres, labels)
    return assignment, centres


def merge_tokens(tokens: Tensor, assignment: Tensor, num_clusters: int, weights: Tensor | None = None) -> Tensor:
    """Merge each cluster's tokens into their weighted average (``cluster.py::merge_tokens``).

    Cluster ``c`` becomes ``sum_i w_i x_i / (sum_i w_i + 1e-6)`` over its tokens ``i``; the ``1e-6`` is the released
    code's, so with unit weights a merged token is its cluster's mean times ``n_c / (n_c + 1e-6)``, and an empty
    cluster is all zeros. Differentiable with respect to ``tokens`` and ``weights``.

    Args:
        tokens: ``(B, N, C)`` token features.
        assignment: ``(B, N)`` integer cluster of each token, in ``[0, num_clusters)``.
        num_clusters: number of clusters ``K``.
        weights: ``(B, N)`` non-negative weight of each token; ``None`` gives every token weight 1, as Chat-UniVi does.

    Returns:
        ``(B, K, C)`` merged tokens in the dtype of ``tokens``.

    Raises:
        ShapeError: a tensor has the wrong shape or dtype, or ``assignment`` holds a cluster outside
            ``[0, num_clusters)``.
        UsageError: ``num_clusters`` is below 1.
    """
    b, n, c = _check_tokens(tokens, "tokens")
    if num_clusters < 1:
        raise UsageError(f"num_clusters must be at least 1, got {num_clusters}")
    if assignment.shape != (b, n):
        raise ShapeError(f"assignment must be (B, N) = {(b, n)} to match tokens, got shape {tuple(assignment.shape)}")
    if assignment.is_floating_point() or assignment.dtype == torch.bool or assignment.is_complex():
        raise ShapeError(f"assignment must be an integer tensor, got dtype {assignment.dtype}")
    low, high = int(assignment.min()), int(assignment.max())
    if low < 0 or high >= num_clusters:
        raise ShapeError(f"assignment holds clusters {low}..{high}, outside [0, num_clusters={num_clusters})")
    if weights is None:
        weights = tokens.new_ones(b, n)
    elif weights.shape != (b, n):
        raise ShapeError(f"weights must be (B, N) = {(b, n)} to match tokens, got shape {tuple(weights.shape)}")
    weights = weights.to(tokens.dtype)
    index = assignment.long()

    totals = weights.new_zeros(b, num_clusters).scatter_add(1, index, weights)  # (B, K)
    norm_weights = weights / (totals.gather(1, index) + _MERGE_EPS)  # (B, N)
    source = tokens * norm_weights[..., None]  # (B, N, C)
    merged = tokens.new_zeros(b, num_clusters, c)
    return merged.scatter_add(1, index[..., None].expand(b, n, c), source)  # (B, K, C)


def _cluster_count(rate: float, num_tokens: int) -> int:
    # CTM.forward: a rate above 1 is a number of clusters, otherwise a fraction of the tokens (so 1 means "all").
    if rate > 1:
        return max(math.ceil(rate), 1)
    return max(math.ceil(num_tokens * rate), 1)


def _neighbour_count(k: int, num_clusters: int) -> int:
    # CTM.forward lowers k when it exceeds the number of clusters (a video with few events).
    return min(3, max(num_clusters // 2, 1)) if k > num_clusters else k


def cluster_and_merge(
    tokens: Tensor,
    rate: float,
    k: int,
    *,
    tie_noise: float = _RELEASED_TIE_NOISE,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """One clustering step of Chat-UniVi (``cluster.py::CTM.forward``): DPC-KNN, then an unweighted merge.

    Args:
        tokens: ``(B, N, C)`` token features.
        rate: above 1, the number of clusters ``K = ceil(rate)``; otherwise the fraction of the tokens,
            ``K = max(ceil(N * rate), 1)`` (so ``1`` keeps ``N`` clusters).
        k: nearest neighbours for the density; when ``k > K`` it becomes ``min(3, max(K // 2, 1))``, as released.
        tie_noise: see :func:`dpc_knn`.
        generator: see :func:`dpc_knn`.

    Returns:
        ``(merged, assignment)``: ``merged (B, K, C)`` cluster means; ``assignment (B, N)`` long.

    Raises:
        ShapeError: ``tokens`` has the wrong shape or fewer than ``K`` tokens.
        UsageError: ``rate`` is not positive or ``k`` is below 1.
    """
    _, n, _ = _check_tokens(tokens, "tokens")
    if not rate > 0:
        raise UsageError(f"cluster rate must be positive, got {rate}")
    if k < 1:
        raise UsageError(f"k (nearest neighbours) must be at least 1, got {k}")
    num_clusters = _cluster_count(rate, n)
    if num_clusters > n:
        raise ShapeError(f"tokens has N={n} tokens, fewer than the {num_clusters} clusters of rate {rate}")
    assignment, _ = dpc_knn(
        tokens, num_clusters, _neighbour_count(k, num_clusters), tie_noise=tie_noise, generator=generator
    )
    return merge_tokens(tokens, assignment, num_clusters), assignment


def _check_steps(rates: Sequence[float], k: Sequence[int]) -> None:
    if len(rates) == 0:
        raise UsageError("rates must name at least one clustering step")
    if len(rates) != len(k):
        raise UsageError(f"rates {tuple(rates)} and k {tuple(k)} must have one entry per clustering step")


def _spatial_steps(
    tokens: Tensor, rates: Sequence[float], k: Sequence[int], tie_noise: float, generator: torch.Generator | None
) -> list[Tensor]:
    # Each step clusters the previous step's merged tokens, not the input tokens.
    steps = []
    for rate, step_k in zip(rates, k):
        tokens, _ = cluster_and_merge(tokens, rate, step_k, tie_noise=tie_noise, generator=generator)
        steps.append(tokens)
    return steps


def spatial_cluster(
    tokens: Tensor,
    rates: Sequence[float] = SPATIAL_RATES,
    k: Sequence[int] = SPATIAL_K,
    *,
    tie_noise: float = _RELEASED_TIE_NOISE,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Chat-UniVi's multi-step clustering of one image's tokens (``arch.py::project``, ``input_type="image"``).

    Step ``s`` clusters the merged tokens of step ``s - 1`` (the input tokens for the first step) with
    :func:`cluster_and_merge`; the outputs of all steps are concatenated, coarse-to-fine order as released
    (64, then 32, then 16 tokens). With the defaults, 256 CLIP ViT-L/14 patch tokens (224 px) become 112 tokens.

    Args:
        tokens: ``(B, N, C)`` patch tokens of ``B`` images, clustered independently.
        rates: cluster rate of each step (see :func:`cluster_and_merge`); Chat-UniVi's are 64, 32, 16.
        k: nearest neighbours of each step; Chat-UniVi's are 5, 3, 3.
        tie_noise: see :func:`dpc_knn`.
        generator: see :func:`dpc_knn`.

    Returns:
        ``(B, K_1 + ... + K_S, C)``, ``(B, 112, C)`` with the defaults.

    Raises:
        ShapeError: ``tokens`` has the wrong shape or fewer tokens than a step's clusters (for example fewer than 64).
        UsageError: ``rates`` and ``k`` differ in length or hold invalid values.
    """
    _check_tokens(tokens, "tokens")
    _check_steps(rates, k)
    return torch.cat(_spatial_steps(tokens, rates, k, tie_noise, generator), dim=1)


class TemporalEvents(NamedTuple):
    """Output of :func:`temporal_events`.

    Attributes:
        tokens: ``(E * (K_1 + ... + K_S), C)`` clustered tokens, event after event, each event's steps coarse first.
        events: the frame indices of each event, ascending; events are ordered by their first frame. An event need
            not be contiguous in time.
    """

    tokens: Tensor
    events: list[list[int]]


def temporal_events(
    frames: Tensor,
    *,
    temporal_rate: float = TEMPORAL_RATE,
    temporal_k: int = TEMPORAL_K,
    rates: Sequence[float] = SPATIAL_RATES,
    k: Sequence[int] = SPATIAL_K,
    tie_noise: float = _RELEASED_TIE_NOISE,
    generator: torch.Generator | None = None,
) -> TemporalEvents:
    """Chat-UniVi's clustering of one video (``arch.py::project``, ``input_type="video"``).

    1. Events: the frames' mean tokens ``(T, C)`` are clustered with :func:`cluster_and_merge` at ``temporal_rate``
       (``E = max(ceil(T / 16), 1)`` events by default, so up to 16 frames form one event). ``temporal_k`` (5) is
       lowered to ``min(3, max(E // 2, 1))`` when ``E < 5``, which is ``k = 1`` for 1 to 3 events (up to 48 frames):
       every density is then ``exp(0)`` up to rounding, so the event centres depend only on the tie noise (or, with
       ``tie_noise=0``, on rounding and ``torch.topk``'s tie order).
    2. Every frame goes through the spatial steps on its own (as in :func:`spatial_cluster`).
    3. Per event, at each step, the tokens of the event's frames from that step are concatenated in frame order and
       clustered again with the same step's rate and ``k``: an event of ``n`` frames gives ``K_s`` tokens out of
       ``n * K_s``, and a one-frame event gives its own step tokens reordered by score (times ``1 / (1 + 1e-6)``).

    The random noise is drawn in the released order (events, then the spatial steps of all frames, then each event),
    so with ``generator=None`` and the same global seed the result equals the released code's.

    Args:
        frames: ``(T, N, C)`` patch tokens of the ``T`` frames of one video.
        temporal_rate: event rate (see :func:`cluster_and_merge`); Chat-UniVi's is ``1 / 16``. A rate above 1 asks for
            that many events and needs at least as many frames.
        temporal_k: nearest neighbours for the event clustering; Chat-UniVi's is 5.
        rates: cluster rate of each spatial step; Chat-UniVi's are 64, 32, 16.
        k: nearest neighbours of each spatial step; Chat-UniVi's are 5, 3, 3.
        tie_noise: see :func:`dpc_knn`.
        generator: see :func:`dpc_knn`.

    Returns:
        :class:`TemporalEvents`; with the defaults and ``T <= 16`` frames, one event and ``(112, C)`` tokens.

    Raises:
        ShapeError: ``frames`` is not ``(T, N, C)``, has fewer tokens than the first spatial step's clusters, or fewer
            frames than an absolute ``temporal_rate`` asks for.
        UsageError: a rate or ``k`` is invalid.
    """
    t, _, _ = _check_tokens(frames, "frames")
    _check_steps(rates, k)
    if not temporal_rate > 0:
        raise UsageError(f"temporal_rate must be positive, got {temporal_rate}")
    if _cluster_count(temporal_rate, t) > t:
        raise ShapeError(f"frames has T={t} frames, fewer than the {_cluster_count(temporal_rate, t)} events asked for")

    frame_means = frames.mean(dim=1)[None]  # (1, T, C)
    _, frame_events = cluster_and_merge(
        frame_means, temporal_rate, temporal_k, tie_noise=tie_noise, generator=generator
    )
    # The released code walks the frames in order and groups them by event (an OrderedDict), so events come in the
    # order of their first frame.
    grouped: dict[int, list[int]] = {}
    for frame, event in enumerate(frame_events[0].tolist()):
        grouped.setdefault(event, []).append(frame)
    events = list(grouped.values())

    steps = _spatial_steps(frames, rates, k, tie_noise, generator)  # S tensors (T, K_s, C)
    out = []
    for frame_ids in events:
        for step_tokens, rate, step_k in zip(steps, rates, k):
            joined = step_tokens[frame_ids].reshape(1, -1, step_tokens.shape[-1])  # (1, n * K_s, C)
            merged, _ = cluster_and_merge(joined, rate, step_k, tie_noise=tie_noise, generator=generator)
            out.append(merged[0])
    return TemporalEvents(tokens=torch.cat(out, dim=0), events=events)
