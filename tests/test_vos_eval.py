"""Semi-supervised VOS evaluation as davis2017-evaluation scores it: the conditioning and the last frame of every
object are not scored, J and boundary F are per-object means, and J&F = (mean J + mean F) / 2 over all objects.

The reference below is written from a reading of davisvideochallenge/davis2017-evaluation (``davis2017/metrics.py``
``db_eval_iou`` and ``db_eval_boundary``, ``davis2017/evaluation.py::DAVISEvaluation.evaluate`` which keeps
``all_gt_masks[:, 1:-1]``, ``davis2017/utils.py::db_statistics`` (``M = nanmean``) and ``evaluation_method.py``
(``final_mean = (np.mean(J["M"]) + np.mean(F["M"])) / 2``)), with a plain-loop disk dilation; it shares no code with
avseg's metrics.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from avseg.checkpoint import save_checkpoint
from avseg.cli import main
from avseg.data.benchmarks import default_metric_preset, get_benchmark
from avseg.media.image import read_mask
from avseg.metrics import MetricAccumulator
from avseg.metrics.protocols import DAVIS2017_SEMI, official_protocol
from avseg.models.sam2_vos import SAM2VOS, sam2_tiny
from tests.data.fixtures_vos import write_vos_tree
from tests.toy_model import ToyConfig, ToyModel

# ----------------------------------------------------------------------------------- the official computation


def reference_iou(gt: np.ndarray, pred: np.ndarray) -> float:
    """``db_eval_iou`` of one frame: 1 when both masks are empty."""
    union = np.logical_or(gt, pred).sum()
    return 1.0 if union == 0 else float(np.logical_and(gt, pred).sum() / union)


def reference_bmap(seg: np.ndarray) -> np.ndarray:
    """``_seg2bmap`` at the mask's own size."""
    seg = seg.astype(bool)
    e, s, se = np.zeros_like(seg), np.zeros_like(seg), np.zeros_like(seg)
    e[:, :-1], s[:-1, :], se[:-1, :-1] = seg[:, 1:], seg[1:, :], seg[1:, 1:]
    b = seg ^ e | seg ^ s | seg ^ se
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = 0
    return b


def reference_dilate(b: np.ndarray, radius: int) -> np.ndarray:
    """``cv2.dilate`` with ``skimage.morphology.disk(radius)``, by explicit offsets."""
    out = np.zeros_like(b)
    h, w = b.shape
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dx * dx + dy * dy > radius * radius:
                continue
            for y, x in zip(*np.nonzero(b)):
                if 0 <= y + dy < h and 0 <= x + dx < w:
                    out[y + dy, x + dx] = True
    return out


def reference_boundary_f(gt: np.ndarray, pred: np.ndarray, bound_th: float = 0.008) -> float:
    """``db_eval_boundary`` of one frame."""
    radius = int(np.ceil(bound_th * np.linalg.norm(gt.shape)))
    fg, gb = reference_bmap(pred), reference_bmap(gt)
    n_fg, n_gt = fg.sum(), gb.sum()
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        precision = (fg & reference_dilate(gb, radius)).sum() / n_fg
        recall = (gb & reference_dilate(fg, radius)).sum() / n_gt
    return 0.0 if precision + recall == 0 else float(2 * precision * recall / (precision + recall))


def reference_object(gt: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """One object's ``J["M"]`` and ``F["M"]`` over its frames ``(T, H, W)`` of the semi-supervised task: [1:-1]."""
    gt, pred = gt[1:-1], pred[1:-1]
    j = [reference_iou(g, p) for g, p in zip(gt, pred)]
    f = [reference_boundary_f(g, p) for g, p in zip(gt, pred)]
    return float(np.nanmean(j)) if j else math.nan, float(np.nanmean(f)) if f else math.nan


# ------------------------------------------------------------------------------- the preset on a tiny example


def test_davis_semi_leaves_out_the_conditioning_and_last_frames_like_davis2017_evaluation():
    """Three objects of 6 frames at 24x32; object 2 enters on frame 2 (its GT is labelled, empty, before), object 3
    is labelled on frames 0, 2, 4 and 5 only. Predictions are perfect on every conditioning frame (as a
    mask-prompted model's are) and wrong on the last frames, so scoring them would change the result."""
    rng = np.random.default_rng(0)
    t, h, w = 6, 24, 32
    gt = np.zeros((3, t, h, w), bool)
    for k in range(3):
        for i in range(t):
            gt[k, i, 4 + k : 12 + k + i, 3 + 2 * i : 13 + 2 * i + k] = True
    gt[1, :2] = False  # object 2 is absent before its first frame
    pred = gt.copy()
    noise = rng.random(pred.shape) < 0.15
    pred[:, 1:-1] ^= noise[:, 1:-1]  # imperfect tracking on the scored frames
    pred[:, -1] = False  # and a lost object on the last frame
    first = [0, 2, 0]
    for k, f in enumerate(first):
        pred[k, f] = gt[k, f]  # the conditioning frame's mask is the prompt
    valid = np.ones((3, t), bool)
    valid[2, [1, 3]] = False

    logits = torch.from_numpy(np.where(pred, 6.0, -6.0)).float()
    acc = MetricAccumulator("davis_semi")
    acc.update(logits, torch.from_numpy(gt).to(torch.uint8), valid=torch.from_numpy(valid), first_frame=first)
    result = acc.compute()

    # davis2017-evaluation sees each object's own frames: from its first frame, the labelled ones.
    own = [valid[k] & (np.arange(t) >= first[k]) for k in range(3)]
    expected = [reference_object(gt[k][own[k]], pred[k][own[k]]) for k in range(3)]
    j_mean = np.mean([j for j, _ in expected])
    f_mean = np.mean([f for _, f in expected])
    assert [v["J"] for v in result["per_video"]] == pytest.approx([j for j, _ in expected], abs=1e-12)
    assert [v["F"] for v in result["per_video"]] == pytest.approx([f for _, f in expected], abs=1e-12)
    assert result["J"] == pytest.approx(j_mean, abs=1e-12) and result["F"] == pytest.approx(f_mean, abs=1e-12)
    assert result["J&F"] == pytest.approx((j_mean + f_mean) / 2, abs=1e-12)
    assert [v["frames"] for v in result["per_video"]] == [4, 2, 2]
    # 18 frames, 2 unlabelled; 2 before object 2's first frame; 2 end frames per object.
    assert result["counts"]["unscored_frames"] == 2 + 6 and result["counts"]["invalid_frames_dropped"] == 2
    assert result["settings"]["preset"] == "davis_semi" and result["settings"]["skip_end_frames"] is True
    # Scoring every frame (the plain DAVIS RVOS preset) gives another number here.
    plain = MetricAccumulator("davis")
    plain.update(logits, torch.from_numpy(gt).to(torch.uint8), valid=torch.from_numpy(valid))
    assert abs(plain.compute()["J&F"] - result["J&F"]) > 0.01


def test_the_vos_benchmark_and_the_sam2_family_use_the_davis_semi_supervised_protocol():
    assert get_benchmark("vos").metric_preset == "davis_semi" and default_metric_preset("vos") == "davis_semi"
    assert official_protocol(SAM2VOS, "vos") is DAVIS2017_SEMI
    assert (DAVIS2017_SEMI.preset, DAVIS2017_SEMI.group, DAVIS2017_SEMI.native_masks) == ("davis_semi", "video", True)


# ------------------------------------------------------------------------------------- avseg eval, end to end


@pytest.fixture(scope="module")
def vos_tree(tmp_path_factory):
    return write_vos_tree(tmp_path_factory.mktemp("vos"))


@pytest.fixture(scope="module")
def sam2_checkpoint(tmp_path_factory):
    """A randomly initialised sam2-tiny, saved the way training saves it."""
    torch.manual_seed(0)
    model = SAM2VOS(sam2_tiny())
    model.preset = "sam2-tiny"
    return save_checkpoint(
        tmp_path_factory.mktemp("ck") / "sam2", model, preset="sam2-tiny", meta={"data": {"format": "vos"}}
    )


def run_eval(capsys, *args):
    status = main(["eval", *map(str, args)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.slow
def test_eval_cli_on_davis_scores_objects_and_videos_like_davis2017_evaluation(
    vos_tree, sam2_checkpoint, tmp_path, capsys
):
    out = tmp_path / "r.json"
    status, printed, _ = run_eval(
        capsys,
        "--checkpoint", sam2_checkpoint, "--data", vos_tree.davis, "--format", "vos", "--split", "train",
        "--json-out", out, "--save-masks", tmp_path / "masks", "--vos-prompt", "box", "--protocol", "official",
    )  # fmt: skip
    assert status == 0, printed
    split = json.loads(out.read_text())["splits"]["train"]
    assert split["settings"]["preset"] == "davis_semi" and split["settings"]["vos_prompt"] == "box"
    assert split["settings"]["protocol"]["name"] == "DAVIS 2017 semi-supervised"
    # bear (4 frames, objects 1 and 3) and dogs (3 frames, object 1): the saved masks, rescored by the reference.
    objects = {"bear/1": ("bear", 1), "bear/3": ("bear", 3), "dogs/1": ("dogs", 1)}
    assert [item["id"] for item in split["items"]] == list(objects)
    expected = {}
    for uid, (video, oid) in objects.items():
        annotations = vos_tree.annotations[("davis", "train", video)]
        gt = np.stack([annotations[stem] == oid for stem in sorted(annotations)])
        folder = tmp_path / "masks" / "train" / uid.replace("/", "_")
        pred = np.stack([read_mask(folder / f"{i:05d}.png") > 0 for i in range(len(gt))])
        expected[uid] = reference_object(gt, pred)
    for item in split["items"]:
        assert (item["J"], item["F"]) == pytest.approx(expected[item["id"]], abs=1e-12)
        assert item["frames"] == {"bear": 2, "dogs": 1}[item["video_id"]]
    j = np.mean([v[0] for v in expected.values()])
    f = np.mean([v[1] for v in expected.values()])
    summary = split["summary"]
    assert (summary["J"], summary["F"], summary["J&F"]) == pytest.approx((j, f, (j + f) / 2), abs=1e-12)
    # Per video: the mean over its objects, as DAVIS reports a sequence.
    videos = {v["video_id"]: v for v in split["videos"]}
    bear_j = (expected["bear/1"][0] + expected["bear/3"][0]) / 2
    assert videos["bear"]["items"] == 2 and videos["bear"]["J"] == pytest.approx(bear_j, abs=1e-12)
    assert videos["dogs"]["F"] == pytest.approx(expected["dogs/1"][1], abs=1e-12)
    assert videos["bear"]["J&F"] == pytest.approx((videos["bear"]["J"] + videos["bear"]["F"]) / 2)


@pytest.mark.slow
def test_vos_prompt_chooses_the_first_frame_prompt(vos_tree, sam2_checkpoint, tmp_path, capsys):
    args = ["--checkpoint", sam2_checkpoint, "--data", vos_tree.davis, "--format", "vos", "--split", "val"]
    scores = {}
    for prompt in ("points", None):  # None: the checkpoint's eval_prompt, mask
        out = tmp_path / f"{prompt}.json"
        status, printed, _ = run_eval(capsys, *args, "--json-out", out, *(["--vos-prompt", prompt] if prompt else []))
        assert status == 0, printed
        split = json.loads(out.read_text())["splits"]["val"]
        assert split["settings"]["vos_prompt"] == (prompt or "mask")
        scores[prompt] = [item["J"] for item in split["items"]]
    assert scores["points"] != scores[None]


def test_vos_prompt_for_a_model_without_prompts_is_one_line(vos_tree, tmp_path, capsys, monkeypatch):
    import avseg.models.registry

    monkeypatch.setitem(avseg.models.registry._FAMILIES, ToyModel.family, ToyModel)
    ck = save_checkpoint(tmp_path / "toy", ToyModel(ToyConfig()))
    args = ["--checkpoint", ck, "--data", vos_tree.davis, "--format", "vos", "--split", "val", "--image-size", "16"]
    status, _, err = run_eval(capsys, *args, "--vos-prompt", "box")
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2 and len(lines) == 1 and lines[0].startswith("avseg: error: --vos-prompt box:"), err
    assert "drop --vos-prompt" in lines[0]
