"""The one table of benchmarks: every consumer agrees with it."""

from typing import get_args

import pytest

from avseg.data.base import BenchmarkReader
from avseg.data.benchmarks import (
    BENCHMARKS,
    FORMAT_READERS,
    BenchmarkName,
    DatasetFormat,
    benchmarks_of_format,
    default_metric_preset,
    format_has_text,
    get_benchmark,
)
from avseg.data.readers import reader_class
from avseg.metrics.presets import get_preset


def test_literal_types_list_the_table():
    assert set(get_args(DatasetFormat)) == set(FORMAT_READERS)
    assert set(get_args(BenchmarkName)) == set(BENCHMARKS)
    assert {b.format for b in BENCHMARKS.values()} == set(FORMAT_READERS)


@pytest.mark.parametrize("format", sorted(FORMAT_READERS))
def test_every_format_has_a_reader_and_an_official_metric(format):
    assert issubclass(reader_class(format), BenchmarkReader)
    get_preset(default_metric_preset(format))  # raises for an unknown preset


def test_facts():
    assert [b.name for b in benchmarks_of_format("avs-object")] == ["s4", "ms3"]
    assert get_benchmark("s4").reader_options == {"subset": "s4"}
    assert format_has_text("refavs") and format_has_text("rvos")
    assert not format_has_text("avss") and not format_has_text("avs-object")
    assert get_benchmark("avss").num_classes == 71 and get_benchmark("refavs").num_classes == 1
    assert default_metric_preset("avss", 71) == "avss" and default_metric_preset("avss", 1) == "avsbench"
    assert default_metric_preset("rvos") == "davis" and default_metric_preset("refavs") == "refavs"
    vos = get_benchmark("vos")
    assert (vos.format, vos.metric_preset, vos.text, vos.frames) == ("vos", "davis_semi", False, None)
    assert not format_has_text("vos") and reader_class("vos").format == "vos"
    with pytest.raises(ValueError, match="unknown dataset format 'nope'"):
        default_metric_preset("nope")
    with pytest.raises(ValueError, match="unknown benchmark 'avs'"):
        get_benchmark("avs")


def test_model_presets_name_benchmarks_as_tasks():
    from avseg.models import get_entry, list_models
    from avseg.models.registry import register_model
    from tests.toy_model import ToyModel

    for name in list_models():
        assert set(get_entry(name).tasks) <= set(BENCHMARKS), name
    with pytest.raises(ValueError, match="unknown tasks \\['avs'\\]"):
        register_model("toy-bad-task", ToyModel, tasks=("avs",))


def test_the_avss_reader_and_the_models_share_the_class_count():
    from avseg.data.avss import avss_palette
    from avseg.models import get_entry, list_models

    assert len(avss_palette()) == get_benchmark("avss").num_classes == 71
    avss_presets = [n for n in list_models() if get_entry(n).tasks == ("avss",)]
    assert avss_presets and all(get_entry(n).config().num_classes == 71 for n in avss_presets)
