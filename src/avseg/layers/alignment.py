"""Target-consistent alignment of ``[SEG]`` embeddings: a memory bank and a supervised contrastive loss.

SimToken (ICASSP'26; https://github.com/DianJin-HFUT/SimToken, ``models/avs_model.py``) asks the ``[SEG]`` embeddings
that an MLLM emits for the same object (one object of one video, referred to by several expressions) to agree. It keeps
the last five detached ``[SEG]`` embeddings of every object in a memory bank and adds ``0.1 *`` an alignment loss at
temperature 0.07 from the first epoch.

As released, that loss (``compute_alignment_loss``) is ``-mean(log_softmax(cos(anchor, positives) / t))`` over the
stored embeddings of the anchor's object alone: the negatives it gathers are never used. With one stored positive the
loss is identically 0, and with several it only pushes the anchor to be equally similar to each of them, so it pulls
nothing together and pushes nothing apart. :func:`alignment_loss` implements what the paper describes (a supervised
InfoNCE, ``mode="infonce"``, the avseg default) and keeps the released computation as ``mode="compat"`` for reproducing
the released numbers.

Typical use in a training step, for ``[SEG]`` embeddings ``seg`` of shape ``(B, C)``::

    loss = loss + 0.1 * alignment_loss(seg, keys, videos, bank)
    bank.add(keys, seg, videos)  # after the loss, so an anchor is never its own positive

where ``keys[i]`` names the object the ``i``-th expression refers to (for Ref-AVS, its video folder and ``fid``) and
``videos[i]`` its video.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from avseg.errors import ShapeError, UsageError

__all__ = ["SegMemoryBank", "alignment_loss"]


class SegMemoryBank:
    """The last ``size`` detached embeddings of every object seen in training, grouped by video.

    Entries are stored detached (no gradient flows into the past) and cloned row by row (a stored row never keeps its
    whole batch alive), on the device and in the dtype they arrive in. Each object keeps at most ``size`` entries,
    oldest first, so memory is at most ``size * objects * C`` values.

    The bank is training state, not model weights: it is not an ``nn.Module``, appears in no ``state_dict`` and is
    not saved with checkpoints. A resumed run starts from an empty bank (as the released SimToken code does); call
    :meth:`clear` to empty it by hand.

    Args:
        size: most embeddings kept per object (SimToken: 5).
    """

    def __init__(self, size: int = 5) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise UsageError(f"SegMemoryBank size must be a positive integer, got {size!r}")
        self.size = size
        self._entries: dict[str, deque[Tensor]] = {}
        self._video_of: dict[str, str] = {}
        # Insertion-ordered keys per video (dict as an ordered set), so negatives come out in a stable order.
        self._keys_of: dict[str, dict[str, None]] = {}
        self._dim: int | None = None

    def __len__(self) -> int:
        """Number of embeddings stored, over all objects."""
        return sum(len(entries) for entries in self._entries.values())

    def clear(self) -> None:
        """Forget every stored embedding (for example at the start of a run)."""
        self._entries.clear()
        self._video_of.clear()
        self._keys_of.clear()
        self._dim = None

    def add(self, keys: Sequence[str], embeddings: Tensor, videos: Sequence[str]) -> None:
        """Store one embedding per batch item, dropping an object's oldest entry past ``size``.

        Call it after :func:`alignment_loss` on the same batch, so that an anchor is not compared with itself.
        Items of the same object in one batch are stored in batch order.

        Args:
            keys: ``B`` object keys, one per row.
            embeddings: ``(B, C)``; stored detached.
            videos: ``B`` video ids; an object always belongs to the same video.
        """
        _check_batch(embeddings, keys, videos, name="embeddings")
        self._check_dim(embeddings.shape[1], "embeddings")
        self._dim = embeddings.shape[1]
        rows = embeddings.detach()
        for i, (key, video) in enumerate(zip(keys, videos)):
            self._check_video(key, video)
            if key not in self._entries:
                self._entries[key] = deque(maxlen=self.size)
                self._video_of[key] = video
                self._keys_of.setdefault(video, {})[key] = None
            self._entries[key].append(rows[i].clone())

    def positives(self, key: str, *, batch: Tensor | None = None) -> Tensor:
        """Stored embeddings of object ``key``, oldest first, followed by ``batch`` if given.

        Args:
            key: object key.
            batch: ``(M, C)`` embeddings of the current batch to append (for example the other anchors of the same
                object); returned as they are, with their graph. The stored rows are moved to its device and dtype.

        Returns:
            ``(P, C)`` with ``P`` = stored entries of ``key`` + ``M`` (``(0, C)`` when there are none; ``(0, 0)`` when
            the bank is empty and no ``batch`` is given).
        """
        return self._rows(list(self._entries.get(key, ())), batch)

    def negatives(self, key: str, video: str, *, batch: Tensor | None = None) -> Tensor:
        """Stored embeddings of the other objects of ``video``, followed by ``batch`` if given.

        Args:
            key: object key of the anchor; its own entries are left out.
            video: the anchor's video; objects of other videos are left out.
            batch: ``(M, C)`` embeddings of the current batch to append (for example the anchors of other objects);
                returned as they are, with their graph. The stored rows are moved to its device and dtype.

        Returns:
            ``(N, C)`` with ``N`` = stored entries of the other objects of ``video`` + ``M``.
        """
        self._check_video(key, video)
        rows = [row for other in self._keys_of.get(video, {}) if other != key for row in self._entries[other]]
        return self._rows(rows, batch)

    def _rows(self, rows: list[Tensor], batch: Tensor | None) -> Tensor:
        if batch is not None:
            if batch.dim() != 2:
                raise ShapeError(f"batch must be (M, C), got {tuple(batch.shape)}")
            self._check_dim(batch.shape[1], "batch")
            stored = [row.to(device=batch.device, dtype=batch.dtype) for row in rows]
            return torch.cat([torch.stack(stored), batch]) if stored else batch
        if rows:
            return torch.stack(rows)
        return torch.empty(0, self._dim or 0)

    def _check_dim(self, dim: int, name: str) -> None:
        if self._dim is not None and dim != self._dim:
            raise ShapeError(f"{name} have {dim} channels but the memory bank stores {self._dim}")

    def _check_video(self, key: str, video: str) -> None:
        known = self._video_of.get(key)
        if known is not None and known != video:
            raise UsageError(f"object key {key!r} belongs to video {known!r} in the memory bank, not to {video!r}")


def _check_batch(embeddings: Tensor, keys: Sequence[str], videos: Sequence[str], *, name: str) -> None:
    if embeddings.dim() != 2:
        raise ShapeError(f"{name} must be (B, C), got {tuple(embeddings.shape)}")
    b = embeddings.shape[0]
    if len(keys) != b or len(videos) != b:
        raise ShapeError(f"{name} has {b} rows but got {len(keys)} keys and {len(videos)} videos")


def alignment_loss(
    anchors: Tensor,
    keys: Sequence[str],
    videos: Sequence[str],
    bank: SegMemoryBank,
    *,
    temperature: float = 0.07,
    mode: Literal["infonce", "compat"] = "infonce",
) -> Tensor:
    """Pull the ``[SEG]`` embeddings of the same object together and (``"infonce"``) away from other objects.

    Similarities are cosines divided by ``temperature``. Stored bank entries are detached; the batch anchors are live,
    so each anchor also receives gradient as another anchor's positive or negative.

    ``mode="infonce"`` (default): a supervised InfoNCE. For anchor ``i``, the positives ``P(i)`` are the bank entries
    of its object and the other batch anchors of the same object; the negatives ``N(i)`` are the bank entries of the
    other objects of its video and every batch anchor of another object (from any video). Then::

        loss_i = -1/|P(i)| * sum_{p in P(i)} log(exp(s_ip) / (exp(s_ip) + sum_{n in N(i)} exp(s_in)))

    This is SupCon's ``L_out`` form (Khosla et al. 2020: the mean over positives outside the log, their better
    variant) with each positive contrasted against the negatives alone, not against the other positives: positives
    then never repel one another, so several views of one object can all reach similarity 1 (with other positives in
    the denominator the optimum instead equalises them, the failure of the released loss). With one positive it is
    the standard InfoNCE; with no negative it is 0.

    ``mode="compat"``: the released ``compute_alignment_loss``: positives are the bank entries of the anchor's object
    only (no batch anchors), negatives are ignored, ``loss_i = -mean(log_softmax(s_iP))``. It is exactly 0 with one
    positive. Use it only to reproduce the released numbers.

    In both modes anchors without a positive contribute nothing and the loss is the mean of ``loss_i`` over the
    anchors that have one; when none has, it is a zero still connected to ``anchors`` (``backward`` works).

    Args:
        anchors: ``(B, C)`` ``[SEG]`` embeddings of the batch (not normalised).
        keys: ``B`` object keys.
        videos: ``B`` video ids.
        bank: embeddings of earlier steps; read here, not updated (call :meth:`SegMemoryBank.add` afterwards).
        temperature: divides the cosine similarities (SimToken: 0.07).
        mode: ``"infonce"`` or ``"compat"``.

    Returns:
        Scalar loss, in float32 (float64 for float64 anchors).
    """
    if mode not in ("infonce", "compat"):
        raise UsageError(f"alignment loss mode must be 'infonce' or 'compat', got {mode!r}")
    if not temperature > 0:
        raise UsageError(f"alignment loss temperature must be > 0, got {temperature!r}")
    _check_batch(anchors, keys, videos, name="anchors")
    # Cosines / 0.07 span [-14.3, 14.3]: compute in at least float32 so that the exponentials stay accurate.
    a = F.normalize(anchors.to(torch.promote_types(anchors.dtype, torch.float32)), dim=1)  # (B, C)
    b = a.shape[0]
    key_codes = {key: code for code, key in enumerate(dict.fromkeys(keys))}
    codes = torch.tensor([key_codes[key] for key in keys], device=a.device)
    same = codes[:, None] == codes[None, :]  # (B, B)
    sim = a @ a.T / temperature  # (B, B)
    # An empty slice of the anchors as ``batch`` moves the stored rows to the anchors' device and dtype.
    empty = a[:0]
    losses = []
    for i in range(b):
        if mode == "compat":
            stored = bank.positives(keys[i], batch=empty)
            if stored.shape[0] == 0:
                continue
            logits = a[i] @ F.normalize(stored, dim=1).T / temperature  # (P,)
            losses.append(-torch.log_softmax(logits, dim=0).mean())
            continue
        others = torch.arange(b, device=a.device) != i
        pos = bank.positives(keys[i], batch=empty)  # detached, (P_bank, C)
        pos_logits = torch.cat([a[i] @ F.normalize(pos, dim=1).T / temperature, sim[i, same[i] & others]])
        if pos_logits.shape[0] == 0:
            continue
        neg = bank.negatives(keys[i], videos[i], batch=empty)  # detached, (N_bank, C)
        neg_logits = torch.cat([a[i] @ F.normalize(neg, dim=1).T / temperature, sim[i, ~same[i]]])
        if neg_logits.shape[0] == 0:
            losses.append(pos_logits.sum() * 0)  # exp(s)/exp(s) = 1 for every positive
            continue
        # -log(e^s / (e^s + sum_n e^n)) = softplus(logsumexp_n(n) - s), stable for any magnitude.
        losses.append(F.softplus(torch.logsumexp(neg_logits, dim=0) - pos_logits).mean())
    if not losses:
        return a.sum() * 0
    return torch.stack(losses).mean()
