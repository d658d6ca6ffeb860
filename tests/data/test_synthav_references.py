"""SynthAV reference rules: their masks are what their names say, and they are scored like a model.

Expected values come from the written layout (the Ref-AVS PNGs, the manifest's object table) and from the rules'
definitions, not from the scoring code.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from avseg.data.synthav import generate_scene, render_scene, synth
from avseg.data.synthav.references import (
    REFERENCE_RULES,
    reference_mask,
    score_references,
    template_means,
    template_of,
)
from avseg.errors import MetadataError, MissingFileError

N, SIZE, SEED = 10, 64, 5
SPLITS = ("test_s", "test_u", "test_n")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synthav-references") / "out"
    assert synth(out, videos=N, seed=SEED, size=SIZE, frames=10, workers=1, layouts=("refavs",)) == 0
    return out, json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="module")
def scores(dataset):
    return score_references(dataset[0], SPLITS)


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "refavs" / "metadata.csv", newline="") as f:
        return [row for row in csv.DictReader(f) if row["split"] in SPLITS]


def _scene(manifest: dict, vid: str):
    scene = generate_scene(manifest["seed"], manifest["video_info"][vid]["index"], size=SIZE, num_frames=10)
    return scene, render_scene(scene)[1]


def _written_mask(out: Path, row: dict[str, str]) -> np.ndarray:
    folder = out / "refavs" / "gt_mask" / row["uid"].split("_null_")[0] / "fid_0"
    if not row["uid"].startswith("null_"):
        folder = out / "refavs" / "gt_mask" / row["vid"] / f"fid_{row['fid']}"
    return np.stack([np.array(Image.open(folder / f"{i:05d}.png")) > 0 for i in range(10)])


def test_the_rules_rendered_scenes_are_the_written_ones(dataset):
    """The visual oracle on a vision-only expression is exactly the written ground truth, null or not."""
    out, manifest = dataset
    checked = 0
    for row in _rows(out):
        expression = manifest["expressions"][row["uid"]]
        if expression["modalities"] != "visual":
            continue
        scene, labels = _scene(manifest, expression["vid"])
        predicted = reference_mask("visual_oracle", scene, labels, expression, row["uid"])
        np.testing.assert_array_equal(predicted, _written_mask(out, row), err_msg=row["uid"])
        checked += 1
    assert checked >= 5


def test_each_rule_masks_what_its_name_says(dataset):
    out, manifest = dataset
    for row in _rows(out):
        expression, uid = manifest["expressions"][row["uid"]], row["uid"]
        scene, labels = _scene(manifest, expression["vid"])
        objects = manifest["video_info"][expression["vid"]]["objects"]
        masks = {rule: reference_mask(rule, scene, labels, expression, uid) for rule in REFERENCE_RULES}
        assert not masks["no_object"].any()
        np.testing.assert_array_equal(masks["every_object"], labels > 0)
        sounding = [o["fid"] + 1 for o in objects if o["sounding_seconds"]]
        np.testing.assert_array_equal(masks["sounding_objects"], np.isin(labels, sounding))
        areas = {o["fid"]: int((labels == o["fid"] + 1).sum()) for o in objects}
        picked = set(np.unique(labels[masks["largest_object"]]).tolist())
        assert picked == {max(areas, key=areas.get) + 1}
        drawn = set(np.unique(labels[masks["random_object"]]).tolist())
        assert len(drawn) == 1 and drawn <= {o["fid"] + 1 for o in objects}
        again = reference_mask("random_object", scene, labels, expression, uid)
        np.testing.assert_array_equal(again, masks["random_object"])
        if expression["modalities"] != "visual":
            named = expression["params"]
            allowed = [
                o["fid"] + 1
                for o in objects
                if o["colour"] == named.get("colour", o["colour"]) and o["class"] == named.get("shape", o["class"])
            ]
            np.testing.assert_array_equal(masks["visual_oracle"], np.isin(labels, allowed))
            if not {"colour", "shape"} & set(named):
                np.testing.assert_array_equal(masks["visual_oracle"], labels > 0)


def test_scores_follow_the_rules(dataset, scores):
    out, _ = dataset
    assert set(scores.splits) == set(SPLITS)
    assert scores.splits["test_n"]["no_object"]["S"] == 0.0
    assert scores.splits["test_n"]["every_object"]["S"] > 0.1
    # Vision-only templates are solved exactly by the visual oracle; audio-only ones get every shape.
    for split in ("test_s", "test_u"):
        for template, by_rule in scores.templates[split].items():
            if template.startswith("v_"):
                assert by_rule["visual_oracle"] == pytest.approx(1.0, abs=1e-6), (split, template)
            elif template.startswith("a_"):
                assert by_rule["visual_oracle"] == pytest.approx(by_rule["every_object"]), (split, template)
        assert scores.splits[split]["visual_oracle"]["J&F"] > scores.splits[split]["every_object"]["J&F"]
    counted = {split: sum(scores.counts[split].values()) for split in SPLITS}
    assert counted == {split: sum(row["split"] == split for row in _rows(out)) for split in SPLITS}


def test_template_means_group_items_by_template(dataset):
    _, manifest = dataset
    uids = [u for u, e in manifest["expressions"].items() if e["split"] == "test_s"][:3]
    items = [{"uid": u, "J": 0.5, "F": 1.0 if i else 0.0} for i, u in enumerate(uids)]
    means = template_means(items, manifest["expressions"])
    expected: dict[str, list[float]] = {}
    for item in items:
        expected.setdefault(template_of(manifest["expressions"][item["uid"]]), []).append((item["J"] + item["F"]) / 2)
    assert means == pytest.approx({t: float(np.mean(v)) for t, v in expected.items()})
    with pytest.raises(KeyError, match="'nope'"):
        template_means([{"uid": "nope", "J": 0.0, "F": 0.0}], manifest["expressions"])


def test_bad_input_is_one_clear_error(dataset, tmp_path):
    out, manifest = dataset
    with pytest.raises(MissingFileError, match=r"manifest\.json"):
        score_references(tmp_path, ("test_s",))
    with pytest.raises(ValueError, match="unknown reference rule 'oracle'"):
        score_references(out, ("test_s",), rules=("oracle",))
    with pytest.raises(MetadataError, match="no rows of split 'test_x'"):
        score_references(out, ("test_x",))
    broken = tmp_path / "broken"
    (broken / "refavs").mkdir(parents=True)
    (broken / "refavs" / "metadata.csv").write_text((out / "refavs" / "metadata.csv").read_text())
    trimmed = {**manifest, "expressions": {}}
    (broken / "manifest.json").write_text(json.dumps(trimmed))
    with pytest.raises(MetadataError, match=r"no expression .* \(metadata\.csv names it\)"):
        score_references(broken, ("test_s",))
    (broken / "manifest.json").write_text("{}")
    with pytest.raises(MetadataError, match="not a SynthAV manifest"):
        score_references(broken, ("test_s",))


def test_the_command_prints_the_scores_of_every_rule(dataset, scores, capsys):
    from avseg.cli import main

    out, _ = dataset
    assert main(["data", "references", str(out), "--json", "--quiet"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert list(record["splits"]) == list(SPLITS) and list(record["rules"]) == list(REFERENCE_RULES)
    for split in SPLITS:
        for rule in REFERENCE_RULES:
            assert record["splits"][split][rule]["J&F"] == pytest.approx(scores.splits[split][rule]["J&F"], nan_ok=True)
    assert main(["data", "references", str(out), "--split", "test_s,test_n", "--quiet"]) == 0
    printed = capsys.readouterr().out
    every = scores.splits["test_s"]["every_object"]["J&F"], scores.splits["test_n"]["every_object"]["S"]
    assert "| rule | predicts | test_s J&F | test_n S |" in printed
    assert f"| every_object | every shape of the video | {every[0]:.4f} | {every[1]:.4f} |" in printed
    assert "test_s, mean (J + F) / 2 per expression template" in printed


def test_the_command_names_a_missing_manifest_in_one_line(tmp_path, capsys):
    from avseg.cli import main

    assert main(["data", "references", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("avseg: error: ") and "manifest.json" in err[0]
