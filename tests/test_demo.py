"""``avseg demo`` end to end on a very small budget: every artefact the README promises is written."""

import json

import pytest

from avseg.demo import demo


@pytest.mark.slow
def test_demo_writes_report_curve_and_overlays(tmp_path):
    work = tmp_path / "demo"
    assert demo(work_dir=work, videos=10, minutes=0.4, overlays=1, size=64) == 0
    report = json.loads((work / "report.json").read_text())
    assert set(report["refavs"]) == {"Seen", "Unseen", "Mix", "Null"}
    for split in ("test_s", "test_u", "test_n"):
        assert report["splits"][split]["counts"]["frames"] > 0
    assert 0.0 <= report["refavs"]["Seen"]["J&F"] <= 1.0 and 0.0 <= report["refavs"]["Null"]["S"] <= 1.0
    assert "drop[audio]" in report["listens"]["test_s"]
    assert report["training"]["steps"] > 0 and report["timings_s"]["total"] > 0
    assert "Does the model listen?" in (work / "report.md").read_text()
    assert (work / "training_curve.png").stat().st_size > 1000
    assert len(report["overlays"]) == 1 and all((work / "overlays").glob("*.mp4"))


def test_demo_budget_is_the_argument_else_the_presets_else_the_default():
    from avseg.demo import DEMO_MINUTES, training_minutes
    from avseg.models.recipe import TrainRecipe

    class Config:
        recipe = TrainRecipe(demo_minutes=6.0)

    class Net:
        config = Config()

    assert training_minutes(Net(), None) == 6.0
    assert training_minutes(Net(), 2.5) == 2.5
    Config.recipe = TrainRecipe()
    assert training_minutes(Net(), None) == DEMO_MINUTES == 7.5
    assert training_minutes(object(), None) == DEMO_MINUTES  # a model without a recipe
