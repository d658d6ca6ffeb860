"""ReVOS's A, R and summary in ``evaluate_split`` and the eval table, on a tiny ReVOS split with a model whose
predictions are known, against the official computation re-implemented in tests/metrics/test_metrics_revos.py."""

import json
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from avseg.data.rvos import RVOSReader
from avseg.data.types import AVSBatch
from avseg.errors import UsageError
from avseg.evaluate import evaluate_split, format_markdown, results_json, results_report
from avseg.models.base import AVSModel, AVSOutput
from tests.data.fixtures_rvos import SIZE, box, union, write_revos_tree
from tests.metrics.test_metrics_revos import reference_accuracy, reference_robustness, reference_summary

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

INPUT = (2 * SIZE[0], 2 * SIZE[1])
"""The model's input size: twice the ground truth's, so that the bilinear resize back to it is exact."""

# Per frame position, the predicted mask at the ground truth's size: it hits part of objects 0 and 1 on the first
# frame, a corner of object 0 on the second, and straddles object 2 on the third, where the foreground is null.
PATTERN = np.stack([box(0, 0, 6, 9), box(2, 2, 4, 4), box(8, 8, 4, 8)]).astype(bool)


@dataclass
class PatternConfig:
    pass


class Pattern(AVSModel):
    """Predicts :data:`PATTERN` on every item, at twice its size (each pixel a 2x2 block)."""

    family = "revos-pattern-test"
    config_class = PatternConfig

    def forward(self, batch: AVSBatch) -> AVSOutput:
        b, t = batch.frames.shape[:2]
        up = torch.from_numpy(np.kron(PATTERN[:t], np.ones((2, 2), bool)))  # (T, 2H, 2W)
        logits = (up.float() * 20 - 10)[None, :, None].expand(b, t, 1, *up.shape[-2:])  # (B, T, 1, 2H, 2W)
        return AVSOutput(mask_logits=logits.contiguous())


@pytest.fixture
def revos(tmp_path):
    return write_revos_tree(tmp_path)


def _evaluate(root, **kwargs):
    reader = RVOSReader(root, image_size=INPUT, native_masks=True)
    kwargs = {"preset": "davis", "batch_size": 3, "progress": False, **kwargs}
    return evaluate_split(Pattern(PatternConfig()), reader.dataset("valid"), **kwargs)


def _expected_a_r(tree):
    """Per expression uid: the official A and R, means over all frames of the video."""
    out = {}
    for vid, video in tree.expressions["valid"].items():
        positions = list(range(len(video["frames"])))
        fg = tree.foreground[("valid", vid)]
        pred = PATTERN[: len(positions)].astype(np.uint8)
        for exp_id, exp in video["expressions"].items():
            # The union of the expression's objects (avseg's documented deviation from the official sum).
            gt = union(tree, "valid", [str(a) for a in exp["anno_id"]], positions)
            out[f"{vid}/{exp_id}"] = (reference_accuracy(gt, pred).mean(), reference_robustness(gt, pred, fg).mean())
    return out


def test_items_get_the_official_a_and_r_and_the_split_the_official_summary(revos):
    result = _evaluate(revos.root)
    expected = _expected_a_r(revos)
    assert [item["uid"] for item in result.items] == list(expected)
    for item in result.items:
        a, r = expected[item["uid"]]
        assert item["A"] == pytest.approx(a, abs=1e-12) and item["R"] == pytest.approx(r, abs=1e-12), item["uid"]
        assert item["frames"] == len(revos.expressions["valid"][item["video_id"]]["frames"])
    # Not trivial: the null foreground of vidA's third frame and the false positives there make R < 1.
    assert len({round(item["R"], 6) for item in result.items}) > 2 and min(i["R"] for i in result.items) < 0.5
    assert [item["type_id"] for item in result.items] == [0, 1, 2, 0, 1]
    columns = [[item[k] for item in result.items] for k in ("J", "F", "A", "R", "type_id")]
    want = reference_summary(*columns)
    got = result.metrics["revos"]
    assert set(got) == {"referring", "reason", "overall"}
    for group in got:
        assert set(got[group]) == {"J", "F", "A", "R", "JF"}
        for key in got[group]:
            assert got[group][key] == pytest.approx(want[group][key] / 100, abs=1e-12), (group, key)
    # The type-2 expression enters no number: dropping it changes nothing.
    kept = [i for i, t in enumerate(columns[-1]) if t != 2]
    assert reference_summary(*([c[i] for i in kept] for c in columns)) == want


def test_without_the_foreground_file_nothing_changes_but_the_revos_scores(revos):
    with_fg = _evaluate(revos.root)
    (revos.root / "valid" / "mask_dict_foreground.json").unlink()
    without = _evaluate(revos.root)
    assert "revos" not in without.metrics and "revos_not_scored" not in without.settings
    assert {k: v for k, v in with_fg.metrics.items() if k != "revos"} == without.metrics
    revos_keys = ("A", "R", "type_id")
    assert without.items == [{k: v for k, v in item.items() if k not in revos_keys} for item in with_fg.items]
    assert without.settings == with_fg.settings
    assert "ReVOS" not in format_markdown({"valid": without})


def test_markdown_and_json_show_the_revos_rows(revos):
    result = _evaluate(revos.root)
    table = format_markdown({"valid": result}, refavs_rows=False)
    assert "| split | ReVOS | J | F | J&F | A | R |" in table
    for group, row in result.metrics["revos"].items():
        cells = " | ".join(f"{row[k]:.4f}" for k in ("J", "F", "JF", "A", "R"))
        assert f"| valid | {group} | {cells} |" in table
    report = json.loads(results_json(results_report({"valid": result}, refavs_rows=False)))
    assert report["splits"]["valid"]["metrics"]["revos"] == result.metrics["revos"]


def test_items_with_and_without_foreground_are_refused(revos):
    reader = RVOSReader(revos.root, image_size=INPUT, native_masks=True)

    def drop_one(sample):
        if sample.uid == "UVO/vidB/0":
            sample.meta = {k: v for k, v in sample.meta.items() if k != "foreground"}
        return sample

    with pytest.raises(UsageError, match=r"split 'valid': 4 of 5 items carry their video's foreground"):
        evaluate_split(Pattern(PatternConfig()), reader.dataset("valid", transform=drop_one), preset="davis")


def test_a_preset_off_the_native_grid_gives_no_revos_scores_and_says_why(revos):
    result = _evaluate(revos.root, preset="auralsam2_compat")  # scores the masks at the model's input size
    assert "revos" not in result.metrics and all("A" not in item for item in result.items)
    reason = result.settings["revos_not_scored"]
    assert "'auralsam2_compat'" in reason and "'davis'" in reason
    assert f"valid: {reason}." in format_markdown({"valid": result})
    assert not math.isnan(result.metrics["J"])
