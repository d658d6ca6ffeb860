import math

import pytest
import torch
import torch.nn.functional as F

from avseg.errors import ShapeError, UsageError
from avseg.layers.alignment import SegMemoryBank, alignment_loss

T = 0.07


def _released_alignment_loss(q, pos_feats, temperature=T):
    """SimToken ``models/avs_model.py::compute_alignment_loss`` as released: per anchor with stored positives,
    ``-mean(log_softmax(cos / t))`` over those positives only; mean over such anchors; 0 when there are none."""
    total, count = 0.0, 0
    for i in range(q.shape[0]):
        if not pos_feats[i]:
            continue
        anchor = q[i] / q[i].norm().clamp_min(1e-12)
        sims = [float(anchor @ (p / p.norm().clamp_min(1e-12))) / temperature for p in pos_feats[i]]
        log_z = math.log(sum(math.exp(s) for s in sims))
        total += -sum(s - log_z for s in sims) / len(sims)
        count += 1
    return total / count if count else 0.0


def _naive_infonce(anchors, keys, videos, stored, temperature=T):
    """Per-anchor loop: ``stored`` is a list of (key, video, embedding) already in the bank."""

    def cos(x, y):
        return float(x @ y / (x.norm() * y.norm()))

    per_anchor = []
    for i in range(len(keys)):
        pos = [cos(anchors[i], e) / temperature for k, _, e in stored if k == keys[i]]
        pos += [cos(anchors[i], anchors[j]) / temperature for j in range(len(keys)) if j != i and keys[j] == keys[i]]
        neg = [cos(anchors[i], e) / temperature for k, v, e in stored if v == videos[i] and k != keys[i]]
        neg += [cos(anchors[i], anchors[j]) / temperature for j in range(len(keys)) if keys[j] != keys[i]]
        if not pos:
            continue
        neg_sum = sum(math.exp(n) for n in neg)
        per_anchor.append(-sum(math.log(math.exp(p) / (math.exp(p) + neg_sum)) for p in pos) / len(pos))
    return sum(per_anchor) / len(per_anchor) if per_anchor else 0.0


def _fill(bank, stored):
    for key, video, embedding in stored:
        bank.add([key], embedding[None], [video])


def test_one_positive_compat_is_zero_with_zero_gradient_while_infonce_is_positive():
    torch.manual_seed(0)
    bank = SegMemoryBank()
    _fill(bank, [("v1/0", "v1", torch.randn(8)), ("v1/1", "v1", torch.randn(8))])
    anchor = torch.randn(1, 8, requires_grad=True)
    compat = alignment_loss(anchor, ["v1/0"], ["v1"], bank, mode="compat")
    compat.backward()
    assert compat.item() == 0.0
    assert torch.count_nonzero(anchor.grad) == 0
    infonce = alignment_loss(anchor, ["v1/0"], ["v1"], bank)
    assert infonce.item() > 0


def test_infonce_step_pulls_anchor_to_its_positive_and_pushes_it_from_the_negative():
    torch.manual_seed(1)
    pos, neg = torch.randn(16), torch.randn(16)
    bank = SegMemoryBank()
    _fill(bank, [("v1/0", "v1", pos), ("v1/1", "v1", neg)])
    anchor = torch.randn(1, 16, requires_grad=True)
    alignment_loss(anchor, ["v1/0"], ["v1"], bank).backward()
    a = F.normalize(anchor.detach()[0], dim=0)
    direction = -anchor.grad[0]
    # Descent direction has a component towards the positive and away from the negative.
    assert direction @ (F.normalize(pos, dim=0) - a) > 0
    assert direction @ (F.normalize(neg, dim=0) - a) < 0
    stepped = anchor.detach()[0] + 0.5 * direction
    assert F.cosine_similarity(stepped, pos, dim=0) > F.cosine_similarity(anchor.detach()[0], pos, dim=0)
    assert F.cosine_similarity(stepped, neg, dim=0) < F.cosine_similarity(anchor.detach()[0], neg, dim=0)


def test_compat_matches_released_loss_with_several_positives():
    torch.manual_seed(2)
    stored = [(f"v{k % 2}/{k}", f"v{k % 2}", torch.randn(12, dtype=torch.float64)) for k in range(3) for _ in range(4)]
    bank = SegMemoryBank()
    _fill(bank, stored)
    keys = ["v0/0", "v1/1", "v0/2", "v1/1", "v1/9"]  # v1/9 has no stored positive
    videos = [key.split("/")[0] for key in keys]
    anchors = torch.randn(len(keys), 12, dtype=torch.float64)
    pos_feats = [[e for k, _, e in stored if k == key] for key in keys]
    got = alignment_loss(anchors, keys, videos, bank, mode="compat")
    assert got.item() > 0
    assert got.item() == pytest.approx(_released_alignment_loss(anchors, pos_feats), rel=1e-9)


def test_infonce_matches_naive_loop():
    torch.manual_seed(3)
    stored = [
        ("a/0", "a", torch.randn(6)),
        ("a/0", "a", torch.randn(6)),
        ("a/1", "a", torch.randn(6)),
        ("b/0", "b", torch.randn(6)),
        ("b/2", "b", torch.randn(6)),
    ]
    bank = SegMemoryBank()
    _fill(bank, stored)
    keys = ["a/0", "a/1", "a/1", "b/0", "b/3", "c/0"]  # b/3 and c/0 have no positive
    videos = [key.split("/")[0] for key in keys]
    anchors = torch.randn(len(keys), 6, dtype=torch.float64)
    got = alignment_loss(anchors, keys, videos, bank)
    stored64 = [(k, v, e.double()) for k, v, e in stored]
    assert got.item() == pytest.approx(_naive_infonce(anchors, keys, videos, stored64), rel=1e-9)


def test_anchors_without_positive_are_skipped():
    torch.manual_seed(4)
    pos, neg = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    bank = SegMemoryBank()
    _fill(bank, [("a/0", "a", pos), ("a/1", "a", neg)])
    anchors = torch.randn(3, 5, dtype=torch.float64)
    keys, videos = ["a/0", "a/7", "b/0"], ["a", "a", "b"]  # only anchor 0 has a positive

    def s(x, y):
        return F.cosine_similarity(x, y, dim=0) / T

    # Anchor 0's own loss: the two others still count as its (batch) negatives, but add no term of their own.
    s_pos = s(anchors[0], pos)
    negatives = [neg, anchors[1], anchors[2]]
    denominator = s_pos.exp() + sum(s(anchors[0], n).exp() for n in negatives)
    expected = -(s_pos.exp() / denominator).log()
    full = alignment_loss(anchors, keys, videos, bank)
    assert full.item() == pytest.approx(expected.item(), rel=1e-9)
    compat = alignment_loss(anchors, keys, videos, bank, mode="compat")
    assert compat.item() == pytest.approx(alignment_loss(anchors[:1], keys[:1], videos[:1], bank, mode="compat").item())
    leaf = torch.randn(2, 5, requires_grad=True)
    for mode in ("infonce", "compat"):
        zero = alignment_loss(leaf, ["x/0", "y/0"], ["x", "y"], bank, mode=mode)
        zero.backward()  # still connected to the anchors
        assert zero.item() == 0.0 and leaf.grad is not None and torch.count_nonzero(leaf.grad) == 0


def test_batch_anchors_of_same_object_are_positives_and_get_gradient():
    torch.manual_seed(5)
    anchors = torch.randn(3, 4, requires_grad=True)
    loss = alignment_loss(anchors, ["a/0", "a/0", "a/1"], ["a", "a", "a"], SegMemoryBank())
    assert loss.item() > 0
    loss.backward()
    assert torch.count_nonzero(anchors.grad[2]) > 0  # the other object is a live negative
    # compat reads the bank only: with an empty bank nothing has a positive.
    assert alignment_loss(anchors, ["a/0", "a/0", "a/1"], ["a", "a", "a"], SegMemoryBank(), mode="compat") == 0


def test_bank_keeps_last_size_entries_fifo_detached():
    bank = SegMemoryBank(size=3)
    live = torch.arange(5.0)[:, None].repeat(1, 2).requires_grad_(True)  # rows 0..4
    for i in range(5):
        bank.add(["v/0"], live[i : i + 1] * 1, ["v"])
    stored = bank.positives("v/0")
    assert stored[:, 0].tolist() == [2.0, 3.0, 4.0]  # oldest dropped first
    assert len(bank) == 3 and not stored.requires_grad
    # Several items of one object in one batch are stored in batch order.
    bank.add(["v/0", "v/1", "v/0"], torch.tensor([[7.0, 7.0], [8.0, 8.0], [9.0, 9.0]]), ["v", "v", "v"])
    assert bank.positives("v/0")[:, 0].tolist() == [4.0, 7.0, 9.0]
    assert bank.negatives("v/0", "v")[:, 0].tolist() == [8.0]
    bank.clear()
    assert len(bank) == 0 and bank.positives("v/0").shape[0] == 0


def test_bank_negatives_are_same_video_other_objects_plus_batch():
    bank = SegMemoryBank()
    bank.add(["a/0", "a/1", "b/0", "a/2"], torch.tensor([[0.0], [1.0], [2.0], [3.0]]), ["a", "a", "b", "a"])
    extra = torch.tensor([[9.0]], requires_grad=True)
    neg = bank.negatives("a/0", "a", batch=extra)
    assert neg[:, 0].tolist() == [1.0, 3.0, 9.0] and neg.requires_grad
    assert bank.positives("a/0", batch=extra)[:, 0].tolist() == [0.0, 9.0]
    assert bank.negatives("c/0", "c").shape[0] == 0


def test_bank_stores_on_the_embeddings_device_and_row_copies():
    bank = SegMemoryBank()
    batch = torch.randn(4, 3, dtype=torch.float64)
    bank.add(["a/0", "a/1", "a/2", "a/3"], batch, ["a"] * 4)
    row = bank.positives("a/0")
    assert row.device == batch.device and row.dtype == torch.float64
    assert bank._entries["a/0"][0].untyped_storage().nbytes() == 3 * 8  # not a view of the whole batch


def test_bad_arguments_name_the_problem():
    bank = SegMemoryBank()
    bank.add(["a/0"], torch.randn(1, 4), ["a"])
    with pytest.raises(UsageError, match="belongs to video 'a'"):
        bank.add(["a/0"], torch.randn(1, 4), ["b"])
    with pytest.raises(ShapeError, match="3 channels"):
        bank.add(["a/1"], torch.randn(1, 3), ["a"])
    with pytest.raises(ShapeError, match="2 rows"):
        alignment_loss(torch.randn(2, 4), ["a/0"], ["a"], bank)
    with pytest.raises(UsageError, match="temperature"):
        alignment_loss(torch.randn(1, 4), ["a/0"], ["a"], bank, temperature=0.0)
    with pytest.raises(UsageError, match="'supcon'"):
        alignment_loss(torch.randn(1, 4), ["a/0"], ["a"], bank, mode="supcon")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="size"):
        SegMemoryBank(size=0)
