"""Parity with the official evaluation loops, each rewritten here from the official code (never imported):

- the Ref-AVS test loop (GeWu-Lab/Ref-AVS run_refavs.py, scripts/train.py::test, datasets/dataset_refavs.py,
  utils/metric/utility.py) over a small Ref-AVS tree with a duplicate row and videos of different sizes, against
  ``evaluate_split`` with the official Ref-AVS protocol;
- DAVIS J&F (davis2017-evaluation ``db_eval_iou`` / ``db_eval_boundary``) at the native resolution of non-square
  masks, with predictions made at a smaller square size;
- the AVSS rule for padded frames (AVSBench avss model ``pred * vid_temporal_mask_flag`` and
  ``utils/compute_color_metrics.py``) on a v1s-like clip of 5 real and 5 padded frames.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from avseg.data.refavs import RefAVSReader
from avseg.data.types import AVSBatch, AVSSample
from avseg.evaluate import evaluate_split
from avseg.metrics.protocols import REFAVS_OFFICIAL
from avseg.models.base import AVSModel, AVSOutput
from tests.data.fixtures_refavs import write_frames, write_wav
from tests.toy_model import ToyConfig, ToyModel

# ------------------------------------------------------------------------------------------------------ helpers


def bilinear(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """Half-pixel-centre bilinear resize of a 2-D array (cv2.INTER_LINEAR geometry), edges clamped, in float64."""
    src_h, src_w = x.shape

    def axis(out: int, src: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.clip((np.arange(out) + 0.5) * src / out - 0.5, 0, src - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, src - 1)
        return lo, hi, pos - lo

    y0, y1, fy = axis(h, src_h)
    x0, x1, fx = axis(w, src_w)
    x = x.astype(np.float64)
    top = x[y0][:, x0] * (1 - fx) + x[y0][:, x1] * fx
    bottom = x[y1][:, x0] * (1 - fx) + x[y1][:, x1] * fx
    return top * (1 - fy[:, None]) + bottom * fy[:, None]


def sample(
    uid: str,
    frames: int,
    size: int,
    native: torch.Tensor,
    logits: torch.Tensor,
    *,
    real: int | None = None,
) -> AVSSample:
    """A clip carrying its native ground truth and the logits the stored-logits model returns for it."""
    real = frames if real is None else real
    valid = torch.arange(frames) < real
    return AVSSample(
        frames=torch.zeros(frames, 3, size, size, dtype=torch.uint8),
        masks=torch.zeros(frames, size, size, dtype=torch.uint8),
        frame_valid=valid,
        label_valid=valid,
        audio_wave=torch.zeros(frames * 160),
        audio_examples=torch.zeros(frames, 1, 96, 64),
        video_id=uid,
        split="test",
        dataset="parity",
        uid=uid,
        native_masks=native,
        meta={"logits": logits},
    )


@dataclass
class StoredConfig:
    num_classes: int = 1


class StoredLogits(AVSModel):
    """Returns the logits each sample carries in ``meta["logits"]``: ``(T, H, W)`` or ``(T, K, H, W)``."""

    family = "stored-logits-test"
    config_class = StoredConfig

    def forward(self, batch: AVSBatch) -> AVSOutput:
        logits = torch.stack([m["logits"] for m in batch.meta])
        return AVSOutput(mask_logits=logits[:, :, None] if logits.dim() == 4 else logits)


# -------------------------------------------------------------------------------------------- Ref-AVS test loop

VID_A, VID_B = "aaaaaaaaaaa_0_10000", "-bbbbbbbbbb_5000_15000"
SIZES = {VID_A: (24, 32), VID_B: (30, 20)}
FRAMES = 3  # frame_n is 10 in Ref-AVSBench; 3 keeps the 256x256 F sweeps of this test short
TEST_S = [  # (vid, uid, fid): batches of 4 rows: [0..3], [4]; the duplicate uid is read twice, as pandas reads it
    (VID_A, f"{VID_A}_piano_1", 0),
    (VID_B, f"{VID_B}_dog_1", 0),
    (VID_A, f"{VID_A}_guitar_2", 1),
    (VID_B, f"{VID_B}_dog_1", 0),
    (VID_B, f"{VID_B}_dog_2", 1),
]
TEST_N = [
    (VID_A, f"null_c-{VID_A}_null_1", 0),
    (VID_B, f"null_m-{VID_B}_null_2", 0),
    (VID_A, f"null_m-{VID_A}_null_3", 0),
]


def write_tree(root: Path) -> None:
    rows = [(v, u, "test_s", f, f"expression {i}") for i, (v, u, f) in enumerate(TEST_S)]
    rows += [(v, u, "test_n", f, f"null {i}") for i, (v, u, f) in enumerate(TEST_N)]
    root.mkdir(parents=True)
    with (root / "metadata.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["vid", "uid", "split", "fid", "exp"])
        writer.writerows(rows)
    folders = {v: v for v in SIZES} | {u.rsplit("_", 2)[0]: v for v, u, _ in TEST_N}
    for seed, (folder, vid) in enumerate(folders.items()):
        h, w = SIZES[vid]
        write_frames(root / "media" / folder / "frames", h, w, FRAMES, seed)
        write_wav(root / "media" / folder / "audio.wav", float(FRAMES))
        for fid in (0, 1) if folder == vid else (0,):
            for i in range(FRAMES):
                mask = np.zeros((h, w), dtype=np.uint8)
                if folder == vid and not (fid == 1 and i == FRAMES - 1):  # object 1 leaves: empty last frame
                    mask[2 + 4 * fid : 9 + 4 * fid, 1 + i : 8 + i] = 255 if fid == 0 else 128
                path = root / "gt_mask" / folder / f"fid_{fid}" / f"0000{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask).save(path)


def official_gt_256(root: Path, uid: str, fid: int, i: int) -> torch.Tensor:
    """REFAVS.__getitem__: the grey mask resized to 256x256 bilinearly by cv2 on uint8 (which rounds), then > 0."""
    folder = uid.rsplit("_", 2)[0]
    grey = np.asarray(Image.open(root / "gt_mask" / folder / f"fid_{fid}" / f"0000{i}.png").convert("L"))
    rounded = np.floor(bilinear(grey.astype(np.float64), 256, 256) + 0.5)  # cv2 rounds half up
    return torch.as_tensor(rounded > 0, dtype=torch.float32)


def mask_iou_04(pred: torch.Tensor, target: torch.Tensor) -> float:
    """utility.mask_iou: sigmoid > 0.4, true negatives over all pixels for empty GT, mean over the batch's frames."""
    pred = pred.view(-1, 256, 256)
    target = target.view(-1, 256, 256)
    empty = target.sum(2).sum(1) == 0
    hard = (torch.sigmoid(pred) > 0.4).int()
    inter = (hard * target).sum(2).sum(1)
    union = torch.max(hard, target).sum(2).sum(1)
    inter[empty] = ((1 - target) * (1 - hard)).sum(2).sum(1)[empty]
    union[empty] = 256 * 256
    return float(torch.sum(inter / (union + 1e-7)) / pred.shape[0])


def eval_fmeasure(pred: torch.Tensor, gt: torch.Tensor) -> float:
    """utility.Eval_Fmeasure: per non-empty frame, the 255-threshold F curve (beta^2 0.3); the curves averaged; max."""
    prob = torch.sigmoid(pred)
    thresholds = torch.linspace(0, 1 - 1e-10, 255)
    total, count, score = 0.0, 0, torch.zeros(255)
    for k in range(prob.shape[0]):
        if torch.mean(gt[k]) == 0.0:
            continue
        hard = (prob[k].reshape(1, -1) >= thresholds[:, None]).float()  # (255, H*W)
        tp = (hard * gt[k].reshape(1, -1)).sum(1)
        prec, rec = tp / (hard.sum(1) + 1e-20), tp / (gt[k].sum() + 1e-20)
        f = 1.3 * prec * rec / (0.3 * prec + rec)
        f[f != f] = 0
        total += f
        count += 1
        score = total / count
    return float(score.max())


def metric_s_for_null(pred: torch.Tensor) -> float:
    """utility.metric_s_for_null: sqrt of the predicted foreground fraction (sigmoid > 0.5) of the batch."""
    hard = (torch.sigmoid(pred) > 0.5).int()
    return float(torch.sqrt(hard.sum() / hard.numel()))


@pytest.fixture(scope="module")
def refavs_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity") / "refavs"
    write_tree(root)
    return root


@pytest.mark.slow
@torch.no_grad()
def test_refavs_official_loop_matches_the_official_protocol(refavs_tree):
    torch.manual_seed(0)
    model = ToyModel(ToyConfig()).eval()  # predicts at 256x256, as the EEMC model does
    reader = RefAVSReader(refavs_tree, image_size=256, num_frames=FRAMES, keep_duplicate_rows=True, native_masks=True)
    logits: dict[str, list[torch.Tensor]] = {"test_s": [], "test_n": []}  # the model's logits per row, as evaluated
    ours = {
        split: evaluate_split(
            model,
            reader.dataset(split),
            protocol=REFAVS_OFFICIAL,
            batch_size=3,
            progress=False,
            on_batch=lambda batch, out, split=split: logits[split].extend(out.mask_logits[:, :, 0]),
        )
        for split in logits
    }

    rows = {s: [r for r in csv.DictReader((refavs_tree / "metadata.csv").open()) if r["split"] == s] for s in ours}
    for split in ours:  # every CSV row, in CSV order, as the official loader reads them
        assert [r.uid for r in reader.dataset(split).records] == [r["uid"] for r in rows[split]]

    mious, fs = [], []  # AverageMeter: one value per DataLoader(batch_size=4) batch
    for start in range(0, len(rows["test_s"]), 4):
        batch = rows["test_s"][start : start + 4]
        pred = torch.stack(logits["test_s"][start : start + 4]).view(-1, 1, 256, 256)
        gt = torch.stack(
            [official_gt_256(refavs_tree, r["uid"], int(r["fid"]), i) for r in batch for i in range(FRAMES)]
        )
        mious.append(mask_iou_04(pred, gt.view(-1, 1, 256, 256)))
        fs.append(eval_fmeasure(pred, gt.view(-1, 1, 256, 256)))
    null_s = [
        metric_s_for_null(torch.stack(logits["test_n"][start : start + 4]))
        for start in range(0, len(rows["test_n"]), 4)
    ]
    assert len(mious) == 2  # 5 rows with the duplicate kept
    assert ours["test_s"].metrics["J"] == pytest.approx(np.mean(mious), abs=1e-6)
    assert ours["test_s"].metrics["F"] == pytest.approx(np.mean(fs), abs=1e-6)
    assert ours["test_n"].metrics["S"] == pytest.approx(np.mean(null_s), abs=1e-6)
    settings = ours["test_s"].settings
    assert settings["group"] == "batch:4" and settings["resolution"] == "256x256"
    assert settings["gt_source"].startswith("native") and sorted(settings["gt_resolution"]) == ["24x32", "30x20"]
    assert settings["protocol"]["reader_options"] == {"keep_duplicate_rows": True}
    assert [item["uid"] for item in ours["test_s"].items] == [r["uid"] for r in rows["test_s"]]


def test_official_protocol_refuses_a_reader_that_drops_duplicates(refavs_tree):
    reader = RefAVSReader(refavs_tree, image_size=64, num_frames=FRAMES, native_masks=True)
    with pytest.warns(Warning):
        dataset = reader.dataset("test_s")
    with pytest.raises(Exception, match="keep_duplicate_rows=True"):
        evaluate_split(ToyModel(ToyConfig()), dataset, protocol=REFAVS_OFFICIAL, progress=False)


# ------------------------------------------------------------------------------------------------ DAVIS, native


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """davis2017-evaluation _seg2bmap at the mask's own size: pixels whose right, lower or lower-right neighbour
    differs."""
    seg = seg.astype(bool)
    e, s, se = np.zeros_like(seg), np.zeros_like(seg), np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = seg ^ e | seg ^ s | seg ^ se
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = 0
    return b


def dilate_disk(x: np.ndarray, r: int) -> np.ndarray:
    """binary_dilation with skimage's disk(r) (x^2 + y^2 <= r^2), zeros outside."""
    h, w = x.shape
    out = np.zeros_like(x)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dy * dy + dx * dx <= r * r:
                out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] |= x[
                    max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
                ]
    return out


def db_eval_boundary(fg: np.ndarray, gt: np.ndarray, bound_th: float = 0.008) -> float:
    bound_pix = bound_th if bound_th >= 1 else math.ceil(bound_th * np.linalg.norm(fg.shape))
    fg_b, gt_b = seg2bmap(fg), seg2bmap(gt)
    fg_match = fg_b & dilate_disk(gt_b, bound_pix)
    gt_match = gt_b & dilate_disk(fg_b, bound_pix)
    n_fg, n_gt = fg_b.sum(), gt_b.sum()
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        precision, recall = fg_match.sum() / n_fg, gt_match.sum() / n_gt
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def db_eval_iou(fg: np.ndarray, gt: np.ndarray) -> float:
    union = (fg | gt).sum()
    return 1.0 if union == 0 else (fg & gt).sum() / union


def test_davis_scores_at_native_resolution():
    rng = np.random.default_rng(5)
    natives = {"e0": (70, 110), "e1": (50, 36)}  # non-square; boundary radius 2 and 1
    samples = []
    for uid, (h, w) in natives.items():
        native = np.zeros((3, h, w), dtype=np.uint8)
        for t in range(3):
            native[t, h // 4 + 3 * t : h // 2 + 3 * t, w // 3 : 2 * w // 3 + t] = 1
        native[2] = 0 if uid == "e1" else native[2]  # an empty frame: J = 1 only if the prediction is empty too
        logits = torch.from_numpy(rng.normal(0, 2, size=(3, 16, 16)).astype(np.float32))
        logits[:, 4:9, 5:11] += 4.0
        samples.append(sample(uid, 3, 16, torch.from_numpy(native), logits))
    result = evaluate_split(StoredLogits(StoredConfig()), samples, preset="davis", split="val", progress=False)
    js, fs = [], []
    for s in samples:
        h, w = s.native_masks.shape[-2:]
        pred = [bilinear(s.meta["logits"][t].numpy(), h, w) > 0 for t in range(3)]
        gt = [s.native_masks[t].numpy() > 0 for t in range(3)]
        js.append(np.mean([db_eval_iou(p, g) for p, g in zip(pred, gt)]))
        fs.append(np.mean([db_eval_boundary(p, g) for p, g in zip(pred, gt)]))
    assert result.metrics["J"] == pytest.approx(np.mean(js), abs=1e-6)
    assert result.metrics["F"] == pytest.approx(np.mean(fs), abs=1e-6)
    assert [item["F"] for item in result.items] == pytest.approx(fs, abs=1e-6)
    assert sorted(result.settings["resolution"]) == ["50x36", "70x110"]


def test_native_preset_without_native_masks_names_the_reader_option():
    plain = sample("e", 2, 8, torch.zeros(2, 8, 8, dtype=torch.uint8), torch.zeros(2, 8, 8))
    plain = plain.with_updates(native_masks=None)
    with pytest.raises(Exception, match=r"native_masks=True"):
        evaluate_split(StoredLogits(StoredConfig()), [plain], preset="davis", split="val", progress=False)


# ------------------------------------------------------------------------------------------ AVSS padded frames


def official_avss(logits: np.ndarray, labels: np.ndarray, vid_flag: np.ndarray) -> tuple[float, float]:
    """TPAVI's ``pred * vid_temporal_mask_flag`` then compute_color_metrics over every frame, padded ones included:
    argmax + 1 against label + 1, per-class IoU and F summed over frames, divided by the frames where the class is
    in pred or GT, NaN -> 0, mean over all classes."""
    logits = logits * vid_flag[:, None, None, None]
    k = logits.shape[1]
    pred = torch.argmax(torch.softmax(torch.from_numpy(logits), 1), 1).numpy() + 1
    target = labels.astype(np.int64) + 1
    ious, fscores, count = np.zeros(k), np.zeros(k), np.zeros(k)
    for p, t in zip(pred, target):
        inter = np.bincount(p[p == t], minlength=k + 1)[1:].astype(np.float64)
        area_p = np.bincount(p.ravel(), minlength=k + 1)[1:].astype(np.float64)
        area_t = np.bincount(t.ravel(), minlength=k + 1)[1:].astype(np.float64)
        union = area_p + area_t - inter
        ious += inter / (2.220446049250313e-16 + union)
        count[union > 0] += 1
        with np.errstate(divide="ignore", invalid="ignore"):
            precision, recall = inter / area_p, inter / area_t
            f = 1.3 * precision * recall / (0.3 * precision + recall)
        fscores += np.nan_to_num(f, nan=0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        miou, fscore = ious / count, fscores / count
    return float(np.nan_to_num(miou).mean()), float(np.nan_to_num(fscore).mean())


def test_avss_padded_frames_get_zero_logits_as_in_the_official_models():
    rng = np.random.default_rng(11)
    k, h0, w0 = 4, 30, 40
    native = np.zeros((10, h0, w0), dtype=np.uint8)  # v1s-like: 5 real frames, 5 padded (zero labels)
    for t in range(5):
        native[t, 5 + t : 20, 10:30] = 1 + t % 3
    logits = rng.normal(0, 1, size=(10, k, 224, 224)).astype(np.float32)
    logits[5:, 2] += 3.0  # the model would predict class 2 on the padded frames
    clip = sample("v1s_clip", 10, 224, torch.from_numpy(native), torch.from_numpy(logits), real=5)
    model = StoredLogits(StoredConfig(num_classes=k))
    result = evaluate_split(model, [clip], preset="avss", split="test", progress=False)

    gt_224 = np.stack([np.asarray(Image.fromarray(m).resize((224, 224), Image.NEAREST)) for m in native])
    flag = np.array([1.0] * 5 + [0.0] * 5, dtype=np.float32)
    miou, fscore = official_avss(logits, gt_224, flag)
    assert result.metrics["J"] == pytest.approx(miou, abs=1e-6)
    assert result.metrics["F"] == pytest.approx(fscore, abs=1e-6)
    assert result.metrics["counts"]["scored_frames"] == 10
    kept, _ = official_avss(logits, gt_224, np.ones(10, dtype=np.float32))
    assert kept != pytest.approx(miou, abs=1e-3)  # scoring the model's own padded logits gives another number
    corrected = evaluate_split(model, [clip], preset="avss_corrected", split="test", progress=False)
    assert corrected.metrics["counts"]["scored_frames"] == 5
    assert corrected.settings["zero_padded_logits"] is False and result.settings["zero_padded_logits"] is True
