"""Evaluation protocols: the DistributedSampler emulation against PyTorch's own sampler and against the official
AuralSAM2 pooling rewritten here, and the protocol each model family declares."""

import json

import pytest
import torch
from torch.utils.data.distributed import DistributedSampler

from avseg.errors import UsageError
from avseg.metrics import MetricAccumulator
from avseg.metrics.presets import distributed_indices, group_indices, group_ranges, parse_group
from avseg.metrics.protocols import (
    AURALSAM2_AVS,
    AURALSAM2_REFAVS,
    AVSBENCH_AVSS_TEST_SH,
    AVSBENCH_TEST_SH,
    AVSEGFORMER_AVS,
    AVSEGFORMER_AVSS,
    DAVIS2017_SEMI,
    REFAVS_OFFICIAL,
    EvalProtocol,
    default_protocol,
    official_protocol,
)
from avseg.models.auralsam2 import AuralSAM2
from avseg.models.avsegformer import AVSegFormer
from avseg.models.base import AVSModel
from avseg.models.sam2_vos import SAM2VOS
from avseg.models.tpavi import TPAVI


def torch_sampler_batches(n: int, replicas: int, k: int) -> list[list[int]]:
    """The batches every rank's DataLoader(batch_size=k) reads, from PyTorch's sampler itself (rank-major)."""
    batches = []
    for rank in range(replicas):
        order = list(DistributedSampler(range(n), num_replicas=replicas, rank=rank, shuffle=False))
        batches += [order[i : i + k] for i in range(0, len(order), k)]
    return batches


@pytest.mark.parametrize(("n", "replicas", "k"), [(7, 4, 1), (7, 4, 2), (9, 4, 4), (3, 4, 1), (1, 4, 4), (8, 2, 3)])
def test_ddp_groups_are_the_torch_sampler_batches(n, replicas, k):
    assert group_indices(n, f"ddp:{replicas}:{k}") == torch_sampler_batches(n, replicas, k)
    for rank in range(replicas):
        expected = list(DistributedSampler(range(n), num_replicas=replicas, rank=rank, shuffle=False))
        assert distributed_indices(n, replicas, rank) == expected


def test_grouping_strings():
    assert str(parse_group("ddp:4:4")) == "ddp:4:4" and parse_group("ddp:4:1").replicas == 4
    for bad in ("ddp:0:1", "ddp:4", "ddp:4:0", "ddp"):
        with pytest.raises(ValueError, match="ddp:R:K"):
            parse_group(bad)
    assert group_indices(5, "batch:2") == [[0, 1], [2, 3], [4]]
    with pytest.raises(ValueError, match="group_indices"):
        group_ranges(5, "ddp:4:1")


# -------------------------------------------------------- the official AuralSAM2 evaluation, rewritten from its code


def foreground_iou(logits: torch.Tensor, target: torch.Tensor) -> float:
    """ForegroundIoU.calculate_iou on (logits > 0): per-frame IoU, true negatives for empty GT, mean over frames."""
    pred = (logits > 0).long()
    target = target.long()
    n, pixels = pred.shape[0], pred.shape[-1] * pred.shape[-2]
    empty = target.sum((1, 2)) == 0
    inter = (pred * target).sum((1, 2))
    union = torch.max(pred, target).sum((1, 2))
    inter[empty] = ((1 - target) * (1 - pred)).sum((1, 2))[empty]
    union[empty] = pixels
    return float(torch.sum(inter / (union + 1e-7)) / n)


def foreground_fscore(logits: torch.Tensor, target: torch.Tensor) -> float:
    """ForegroundFScore.calculate_f_score: 255-threshold curves of non-empty frames averaged, then the max."""
    prob = torch.sigmoid(logits)
    thresholds = torch.linspace(0, 1 - 1e-10, 255)
    total, count, score = 0.0, 0, torch.zeros(255)
    for i in range(prob.shape[0]):
        if torch.mean(target[i].float()) == 0.0:
            continue
        prec, rec = torch.zeros(255), torch.zeros(255)
        for j in range(255):
            hard = (prob[i] >= thresholds[j]).float()
            tp = (hard * target[i]).sum()
            prec[j], rec[j] = tp / (hard.sum() + 1e-20), tp / (target[i].sum() + 1e-20)
        f = 1.3 * prec * rec / (0.3 * prec + rec)
        f[f != f] = 0
        total += f
        count += 1
        score = total / count
    return float(score.max())


def auralsam2_valid(logits: torch.Tensor, masks: torch.Tensor, replicas: int, k: int) -> tuple[float, float, float]:
    """Trainer.valid / valid_null: each rank adds one value per batch to its meter (S: fg and pixel sums); the sums
    of all ranks, gathered, are divided by the counts."""
    iou_sum = f_sum = fg = pixels = 0.0
    batches = 0
    for rank in range(replicas):
        order = list(DistributedSampler(range(len(logits)), num_replicas=replicas, rank=rank, shuffle=False))
        for start in range(0, len(order), k):
            index = order[start : start + k]
            lg = logits[index].flatten(0, 1)  # (k*T, H, W)
            gt = masks[index].flatten(0, 1)
            iou_sum += foreground_iou(lg, gt)
            f_sum += foreground_fscore(lg, gt)
            fg += float((torch.sigmoid(lg) > 0.5).sum())
            pixels += lg.numel()
            batches += 1
    return iou_sum / batches, f_sum / batches, fg / pixels


def test_auralsam2_ddp_pooling_matches_the_official_loop():
    g = torch.Generator().manual_seed(3)
    n, t, h, w = 7, 2, 6, 5  # an odd number of items over 4 GPUs: the sampler repeats the first one
    masks = torch.zeros(n, t, h, w, dtype=torch.uint8)
    for i in range(n):
        masks[i, :, i % 3 : i % 3 + 3, 1:4] = 1
    masks[2, 1] = 0  # an empty frame: true-negative J, skipped by F
    logits = torch.randn(n, t, h, w, generator=g) * 3 + (masks.float() * 2 - 1) * 2
    acc = MetricAccumulator("auralsam2_compat", group="ddp:4:2")
    acc.update(logits[:3], masks[:3], ids=[f"e{i}" for i in range(3)])
    acc.update(logits[3:], masks[3:], ids=[f"e{i}" for i in range(3, n)])
    result = acc.compute()
    j, f, s = auralsam2_valid(logits, masks, replicas=4, k=2)
    assert result["J"] == pytest.approx(j, abs=1e-6)
    assert result["F"] == pytest.approx(f, abs=1e-6)
    assert result["S"] == pytest.approx(s, abs=1e-12)
    assert result["counts"]["groups"] == 4 and result["counts"]["group_members"] == 8
    assert [v["id"] for v in result["per_video"]] == [f"e{i}" for i in range(n)]  # each item once
    plain = MetricAccumulator("auralsam2_compat", group="batch:2")
    plain.update(logits, masks)
    assert plain.compute()["J"] != pytest.approx(j, abs=1e-6)  # the emulation changes the number


# ---------------------------------------------------------------------------------------- the declared protocols


def test_each_family_declares_the_protocol_of_its_published_numbers():
    assert AVSModel.official_protocols == {}
    assert dict(TPAVI.official_protocols) == {
        "s4": AVSBENCH_TEST_SH,
        "ms3": AVSBENCH_TEST_SH,
        "avss": AVSBENCH_AVSS_TEST_SH,
        "refavs": REFAVS_OFFICIAL,
    }
    assert dict(AVSegFormer.official_protocols) == {
        "s4": AVSEGFORMER_AVS,
        "ms3": AVSEGFORMER_AVS,
        "avss": AVSEGFORMER_AVSS,
        "refavs": REFAVS_OFFICIAL,
    }
    assert dict(AuralSAM2.official_protocols) == {"s4": AURALSAM2_AVS, "ms3": AURALSAM2_AVS, "refavs": AURALSAM2_REFAVS}
    assert dict(SAM2VOS.official_protocols) == {"vos": DAVIS2017_SEMI}
    table = {
        AVSBENCH_TEST_SH: ("avsbench", "batch:4", {}),
        AVSBENCH_AVSS_TEST_SH: ("avss", "batch:4", {}),
        AVSEGFORMER_AVS: ("avsbench", "batch:2", {}),
        AVSEGFORMER_AVSS: ("avss", "batch:4", {}),
        REFAVS_OFFICIAL: ("refavs", "batch:4", {"keep_duplicate_rows": True}),
        AURALSAM2_AVS: ("auralsam2_compat", "ddp:4:1", {}),
        AURALSAM2_REFAVS: ("auralsam2_compat", "ddp:4:4", {"keep_duplicate_rows": True}),
        DAVIS2017_SEMI: ("davis_semi", "video", {}),
    }
    for protocol, (preset, group, options) in table.items():
        assert (protocol.preset, protocol.group, dict(protocol.reader_options)) == (preset, group, options)
        assert protocol.source
    assert REFAVS_OFFICIAL.native_masks and not AURALSAM2_REFAVS.native_masks  # SAM input size for AuralSAM2
    assert official_protocol(TPAVI, "s4") is AVSBENCH_TEST_SH


def test_missing_official_protocol_is_one_line_listing_what_exists():
    with pytest.raises(UsageError, match=r"no published evaluation protocol for auralsam2 on avss") as info:
        official_protocol(AuralSAM2, "avss")
    assert "ms3, refavs, s4" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(UsageError, match=r"official protocols of .*: none"):
        official_protocol(AVSModel, "s4")


def test_protocol_validation_and_default():
    with pytest.raises(ValueError, match="unknown reader options"):
        EvalProtocol(name="x", preset="refavs", group="batch:4", reader_options={"dedupe": False})
    with pytest.raises(ValueError, match="unknown metric preset"):
        EvalProtocol(name="x", preset="nope", group="video")
    with pytest.raises(ValueError, match="group must be"):
        EvalProtocol(name="x", preset="refavs", group="batch:0")
    assert default_protocol("refavs", text=True).group == "expression"
    assert default_protocol("avsbench", text=False).group == "video"
    record = REFAVS_OFFICIAL.to_dict()
    assert record["reader_options"] == {"keep_duplicate_rows": True} and record["native_masks"] is True
    assert json.loads(json.dumps(record)) == record


def test_protocols_module_examples():
    import doctest

    import avseg.metrics.protocols as protocols

    result = doctest.testmod(protocols, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
