"""The ``avseg score`` command function on small .npz files: text and JSON output, and each input error."""

import json
import math

import numpy as np
import pytest

from avseg.errors import MetadataError, MissingFileError, ShapeError
from avseg.metrics import score


def logit(p):
    return math.log(p / (1 - p))


def write(tmp_path, logits, masks, **extra):
    pred, gt = tmp_path / "pred.npz", tmp_path / "gt.npz"
    np.savez(pred, logits=np.asarray(logits))
    np.savez(gt, masks=np.asarray(masks), **extra)
    return pred, gt


@pytest.fixture
def grouping_files(tmp_path):
    # The three one-frame videos of test_avsbench_video_and_batch2_grouping_differ_by_hand:
    # video grouping F = 1, J = (1/2 + 0 + 1) / 3; batch:2 F = 41/46, J = 0.625 (each up to the 1e-7 union eps).
    logits = np.array([[[[logit(0.9), logit(0.6)]]], [[[logit(0.3), logit(0.1)]]], [[[9.0, 9.0]]]], dtype=np.float32)
    masks = np.array([[[[1, 0]]], [[[1, 0]]], [[[1, 1]]]], dtype=np.uint8)
    return write(tmp_path, logits, masks, ids=np.array(["a", "b", "c"]))


def test_text_output(grouping_files, capsys):
    pred, gt = grouping_files
    assert score(pred=pred, gt=gt) == 0
    out = capsys.readouterr().out
    assert "preset=avsbench group=video resolution=1x2" in out and "threshold=0.5" in out
    assert "empty_gt=tn_ratio" in out and "beta_sweep_max(beta2=0.3, 255 thresholds)" in out
    assert "J    0.500000" in out and "F    1.000000" in out and "J&F  0.750000" in out
    assert "S " not in out  # not a null split
    assert score(pred=pred, gt=gt, group="batch:2") == 0
    out = capsys.readouterr().out
    assert "group=batch:2" in out
    assert f"F    {41 / 46:.6f}" in out and "J    0.625000" in out


def test_json_output(grouping_files, capsys):
    pred, gt = grouping_files
    assert score(pred=pred, gt=gt, preset="avsbench", group="batch:2", json=True) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["F"] == pytest.approx(41 / 46)
    settings = result["settings"]
    assert (settings["preset"], settings["group"], settings["resolution"], settings["threshold"]) == (
        "avsbench",
        "batch:2",
        "1x2",
        0.5,
    )
    assert [v["id"] for v in result["per_video"]] == ["a", "b", "c"]


def test_null_split_prints_s(tmp_path, capsys):
    logits = np.full((2, 2, 4, 4), -9.0, dtype=np.float32)
    logits[0, 0, :2] = 9.0  # 8 of 16 pixels in one frame of expression 0
    pred, gt = write(tmp_path, logits, np.zeros((2, 2, 4, 4), dtype=np.uint8))
    assert score(pred=pred, gt=gt, preset="avsbench") == 0  # every GT empty: S is printed without --null
    out = capsys.readouterr().out
    # video grouping: expression 0 -> sqrt(8 / 32) = 0.5, expression 1 -> 0; mean 0.25.
    assert "S    0.250000  (sqrt_ratio at s_threshold=0.5, mean over groups)" in out
    np.savez(tmp_path / "gt2.npz", masks=np.ones((2, 2, 4, 4), dtype=np.uint8))
    score(pred=pred, gt=tmp_path / "gt2.npz", null=True)
    assert "S    0.250000" in capsys.readouterr().out


def test_json_turns_nan_into_null(tmp_path, capsys):
    # avss_corrected on an all-invalid split has nothing to average: NaN must become JSON null, not "NaN".
    logits = np.zeros((1, 2, 3, 2, 2), dtype=np.float32)
    pred, gt = write(tmp_path, logits, np.zeros((1, 2, 2, 2), dtype=np.uint8), valid=np.zeros((1, 2), dtype=bool))
    score(pred=pred, gt=gt, preset="avss_corrected", json=True)
    text = capsys.readouterr().out
    assert "NaN" not in text and json.loads(text)["J"] is None


def test_semantic_text_output(tmp_path, capsys):
    # Class 1 predicted everywhere on a 1x2 frame labelled [1, 1], plus a padded all-background frame. The official
    # models zero the logits of padded frames, so frame 2 is predicted as background: class 0 IoU 1 (frame 2 only),
    # class 1 IoU 1 (frame 1 only), class 2 unseen -> (1 + 1 + 0) / 3.
    logits = np.zeros((1, 2, 3, 1, 2), dtype=np.float32)
    logits[:, :, 1] = 5.0
    masks = np.array([[[[1, 1]], [[0, 0]]]], dtype=np.uint8)
    valid = np.array([[True, False]])
    pred, gt = write(tmp_path, logits, masks, valid=valid)
    assert score(pred=pred, gt=gt, preset="avss") == 0
    out = capsys.readouterr().out
    assert "preset=avss " in out and f"J    {2 / 3:.6f}" in out
    assert "corrected: mIoU 1.000000" in out  # valid frame only, class 1 alone


def test_missing_file(tmp_path):
    with pytest.raises(MissingFileError, match=r"pred\.npz: npz archive not found"):
        score(pred=tmp_path / "pred.npz", gt=tmp_path / "gt.npz")


def test_missing_key(tmp_path):
    pred, gt = write(tmp_path, np.zeros((1, 1, 2, 2), np.float32), np.zeros((1, 1, 2, 2), np.uint8))
    np.savez(pred, scores=np.zeros((1, 1, 2, 2), np.float32))
    with pytest.raises(MetadataError, match=r"pred\.npz: missing key 'logits' \(keys present: \['scores'\]\)"):
        score(pred=pred, gt=gt)


def test_not_an_npz(tmp_path):
    # A text file named .npz is not an archive at all: say so, and do not give numpy's pickle advice.
    pred, gt = write(tmp_path, np.zeros((1, 1, 2, 2), np.float32), np.zeros((1, 1, 2, 2), np.uint8))
    gt.write_bytes(b"not a zip archive")
    with pytest.raises(MetadataError, match=r"gt\.npz: is not an \.npz archive") as err:
        score(pred=pred, gt=gt)
    assert "pickle" not in str(err.value)
    np.save(tmp_path / "single.npy", np.zeros((1, 1, 2, 2), np.float32))
    with pytest.raises(MetadataError, match=r"single\.npy: holds a single \.npy array, not an \.npz archive"):
        score(pred=tmp_path / "single.npy", gt=gt)
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(MetadataError, match=r"empty\.npz: is empty, not an \.npz archive"):
        score(pred=tmp_path / "empty.npz", gt=gt)


def test_truncated_npz_is_corrupt_not_pickle(tmp_path):
    pred, gt = write(tmp_path, np.zeros((1, 1, 2, 2), np.float32), np.zeros((1, 1, 2, 2), np.uint8))
    pred.write_bytes(pred.read_bytes()[:40])  # a zip header, then nothing
    with pytest.raises(MetadataError, match=r"pred\.npz: corrupt \.npz archive") as err:
        score(pred=pred, gt=gt)
    assert "pickle" not in str(err.value)


def test_object_array_gets_pickle_advice_without_unpickling(tmp_path):
    pred, gt = write(tmp_path, np.zeros((1, 1, 2, 2), np.float32), np.zeros((1, 1, 2, 2), np.uint8))
    np.savez(pred, logits=np.array([[1.0], "x"], dtype=object))
    with pytest.raises(MetadataError, match=r"pred\.npz: key 'logits' holds Python objects \(dtype=object\)") as err:
        score(pred=pred, gt=gt)
    assert "allow_pickle" not in str(err.value)  # numpy's advice to unpickle is not echoed


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_logits_are_refused(tmp_path, bad):
    # Thresholding NaN says "background", so a partly NaN prediction used to get a plausible score.
    logits = np.full((2, 3, 4, 4), 5.0, dtype=np.float32)
    logits[1, 2, 3, 1] = bad
    logits[1, 2, 3, 2] = bad
    pred, gt = write(tmp_path, logits, np.ones((2, 3, 4, 4), np.uint8), ids=np.array(["a", "b"]))
    with pytest.raises(ShapeError) as err:
        score(pred=pred, gt=gt)
    message = str(err.value)
    assert message.startswith(f"{pred}: key 'logits' has 2 non-finite value(s) (NaN or ±inf) out of 96")
    assert "at index (1, 2, 3, 1): video 1 (id 'b'), frame 2, pixel (y=3, x=1)" in message


def test_all_nan_semantic_logits_name_the_class(tmp_path):
    logits = np.full((1, 2, 3, 2, 2), np.nan, dtype=np.float32)
    pred, gt = write(tmp_path, logits, np.zeros((1, 2, 2, 2), np.uint8))
    with pytest.raises(ShapeError, match=r"has 24 non-finite value\(s\).*index \(0, 0, 0, 0, 0\): video 0, frame 0, "):
        score(pred=pred, gt=gt, preset="avss")
    with pytest.raises(ShapeError, match="class 0, pixel"):
        score(pred=pred, gt=gt, preset="avss")


def test_binary_ground_truth_must_be_binary(tmp_path, capsys):
    masks = np.ones((2, 1, 3, 3), np.uint8)
    masks[1, 0, 2, 0] = 7  # a class label in a binary mask
    pred, gt = write(tmp_path, np.zeros((2, 1, 3, 3), np.float32), masks)
    with pytest.raises(ShapeError) as err:
        score(pred=pred, gt=gt)
    assert str(err.value).startswith(
        f"{gt}: key 'masks' must be binary (0 and 1, or 0 and 255) for preset 'avsbench', but 1 value(s) are "
        "neither; the first is 7 at index (1, 0, 2, 0): video 1, frame 0, pixel (y=2, x=0)"
    )
    np.savez(gt, masks=np.where(masks > 0, 255, 0).astype(np.uint8))  # 0/255 masks are binary
    assert score(pred=pred, gt=gt) == 0
    capsys.readouterr()


def test_cli_nan_logits_is_one_line(tmp_path, capsys):
    from avseg.cli import main

    pred, gt = write(tmp_path, np.full((1, 2, 4, 4), np.nan, np.float32), np.ones((1, 2, 4, 4), np.uint8))
    status = main(["score", "--pred", str(pred), "--gt", str(gt)])
    out, err = capsys.readouterr()
    assert status == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"avseg: error: {pred}: key 'logits' has 32 non-finite value(s)")
    assert "index (0, 0, 0, 0)" in lines[0]


def test_cli_text_file_named_npz_is_one_line(tmp_path, capsys):
    from avseg.cli import main

    pred, gt = write(tmp_path, np.zeros((1, 1, 2, 2), np.float32), np.zeros((1, 1, 2, 2), np.uint8))
    pred.write_text("J F\n0.5 0.5\n")
    status = main(["score", "--pred", str(pred), "--gt", str(gt)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(lines) == 1
    assert lines[0].startswith(f"avseg: error: {pred}: is not an .npz archive") and "pickle" not in lines[0]


@pytest.mark.parametrize(
    "logits,masks,extra,match",
    [
        (
            np.zeros((1, 1, 2, 2), np.int64),
            np.zeros((1, 1, 2, 2), np.uint8),
            {},
            r"pred\.npz: key 'logits' must be a float",
        ),
        (
            np.zeros((1, 1, 2, 2), np.float32),
            np.zeros((1, 1, 2, 2), np.float32),
            {},
            r"gt\.npz: key 'masks' must be uint8",
        ),
        (
            np.zeros((1, 2, 2), np.float32),
            np.zeros((1, 1, 2, 2), np.uint8),
            {},
            r"key 'logits' must have shape \(N, T, H, W\)",
        ),
        (np.zeros((2, 1, 2, 2), np.float32), np.zeros((1, 1, 2, 2), np.uint8), {}, r"disagree on \(N, T\)"),
        (np.zeros((1, 1, 2, 3), np.float32), np.zeros((1, 1, 2, 2), np.uint8), {}, "resolution given"),
        (
            np.zeros((1, 2, 2, 2), np.float32),
            np.zeros((1, 2, 2, 2), np.uint8),
            {"valid": np.ones((1, 2), np.uint8)},
            r"gt\.npz: key 'valid' must be a bool array",
        ),
    ],
)
def test_bad_arrays(tmp_path, logits, masks, extra, match):
    pred, gt = write(tmp_path, logits, masks, **extra)
    with pytest.raises(ShapeError, match=match):
        score(pred=pred, gt=gt)


def test_refavs_resizes_instead_of_rejecting_sizes(tmp_path, capsys):
    logits = np.full((1, 1, 4, 4), 9.0, dtype=np.float32)
    pred, gt = write(tmp_path, logits, np.ones((1, 1, 8, 8), np.uint8))
    assert score(pred=pred, gt=gt, preset="refavs") == 0
    out = capsys.readouterr().out
    assert "resolution=256x256 resize=256(gt bilinear_gt0, logits bilinear)" in out and "threshold=0.4" in out


def test_unknown_preset_and_group(grouping_files):
    pred, gt = grouping_files
    with pytest.raises(ValueError, match="unknown metric preset"):
        score(pred=pred, gt=gt, preset="coco")
    with pytest.raises(ValueError, match="group must be"):
        score(pred=pred, gt=gt, group="batch:x")
