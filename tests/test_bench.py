"""``avseg bench``: timings, frames/s and peak memory of a model on a random batch."""

import json
import resource
import statistics

import pytest
import torch

import avseg.bench
from avseg.bench import BenchResult, bench, peak_memory
from avseg.checkpoint import save_checkpoint
from avseg.cli import main
from avseg.errors import UsageError
from avseg.models import create_model

RESULT_KEYS = {
    "model",
    "overrides",
    "checkpoint",
    "mode",
    "device",
    "image_size",
    "frames",
    "batch_size",
    "warmup",
    "runs",
    "seconds",
    "min_s",
    "median_s",
    "max_s",
    "frames_per_s",
    "peak_memory_bytes",
    "memory_kind",
    "parameters",
    "machine",
}


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    """tpavi-tiny without its sentence encoder, and with no fixed input size: it runs frames at their own size, which
    must then be multiples of 32."""
    folder = tmp_path_factory.mktemp("bench") / "ckpt"
    model = create_model("tpavi-tiny", **{"text.encoder": None, "input_size": None, "pretrained": False})
    return save_checkpoint(folder, model, preset="tpavi-tiny")


def test_bench_command_writes_json_with_the_documented_keys(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "--model", "tpavi-tiny", "--image-size", "32", "--frames", "2", "--batch-size", "2"]
    assert main([*argv, "--device", "cpu", "--warmup", "1", "--runs", "2", "--json-out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "tpavi-tiny, inference on cpu" in printed and "frames/s" in printed and "process maximum RSS" in printed
    data = json.loads(out.read_text())
    assert set(data) == RESULT_KEYS
    assert (data["model"], data["mode"], data["device"], data["checkpoint"]) == ("tpavi-tiny", "inference", "cpu", None)
    assert data["overrides"] == {}
    assert (data["image_size"], data["frames"], data["batch_size"], data["warmup"], data["runs"]) == (32, 2, 2, 1, 2)
    seconds = data["seconds"]
    assert len(seconds) == 2 and all(s > 0 for s in seconds)
    assert data["min_s"] == min(seconds) <= data["median_s"] == statistics.median(seconds) <= data["max_s"]
    assert data["max_s"] == max(seconds)
    assert data["frames_per_s"] == pytest.approx(2 * 2 / data["median_s"])
    assert data["memory_kind"] == "process_max_rss" and data["peak_memory_bytes"] > 0
    assert data["parameters"] == create_model("tpavi-tiny").num_parameters()
    assert {"torch", "device_name", "threads", "date", "python", "avseg"} <= set(data["machine"])
    assert data["machine"]["torch"] == torch.__version__ and data["machine"]["threads"] == torch.get_num_threads()


def test_bench_json_prints_the_result_on_stdout_and_quiet_hides_progress(tmp_path, capsys, monkeypatch):
    import avseg.progress

    monkeypatch.setattr(avseg.progress, "LOG_INTERVAL_S", 0.0)  # a progress line at every run
    out = tmp_path / "bench.json"
    argv = ["bench", "--model", "tpavi-tiny", "--image-size", "32", "--frames", "2", "--device", "cpu"]
    argv += ["--warmup", "1", "--runs", "2", "--json-out", str(out)]
    assert main([*argv, "--json"]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)  # stdout holds the JSON document and nothing else
    assert set(printed) == RESULT_KEYS and printed == json.loads(out.read_text())
    assert (printed["model"], printed["mode"], printed["warmup"], printed["runs"]) == ("tpavi-tiny", "inference", 1, 2)
    assert printed["frames_per_s"] == pytest.approx(2 / printed["median_s"])
    assert f"wrote {out}" in captured.err
    lines = captured.err.splitlines()
    assert any(line.startswith("benchmarking tpavi-tiny: 3/3 runs (100%)") for line in lines), lines
    assert main([*argv, "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "benchmarking" not in captured.err and "tpavi-tiny, inference on cpu" in captured.out


def test_overrides_time_a_variant_of_the_preset_and_are_recorded(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "--model", "tpavi-tiny", "--image-size", "32", "--frames", "1", "--warmup", "0", "--runs", "1"]
    assert main([*argv, "--device", "cpu", "--overrides", "model.text.encoder=null", "--json-out", str(out)]) == 0
    assert "tpavi-tiny model.text.encoder=None, inference on cpu" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["overrides"] == {"model.text.encoder": None}
    variant = create_model("tpavi-tiny", **{"text.encoder": None}).num_parameters()
    assert data["parameters"] == variant < create_model("tpavi-tiny").num_parameters()


def test_statistics_come_from_the_timed_runs_only(small_checkpoint, monkeypatch):
    """With a clock that advances by set amounts, the warm-up is left out and min/median/max/frames/s are exact."""
    # perf_counter is read at the start and end of each run: two warm-up runs of 9 s and 7 s, then 0.3, 0.1, 0.2 s.
    stamps = iter([0.0, 9.0, 9.0, 16.0, 16.0, 16.3, 16.3, 16.4, 16.4, 16.6])
    monkeypatch.setattr(avseg.bench, "perf_counter", lambda: next(stamps))
    result = bench(checkpoint=small_checkpoint, image_size=32, frames=3, batch_size=2, warmup=2, runs=3, device="cpu")
    assert isinstance(result, BenchResult)
    assert result.seconds == pytest.approx([0.3, 0.1, 0.2])
    assert (result.min_s, result.median_s, result.max_s) == pytest.approx((0.1, 0.2, 0.3))
    assert result.frames_per_s == pytest.approx(3 * 2 / 0.2)
    assert result.model == "tpavi-tiny" and result.checkpoint == str(small_checkpoint)


def test_train_mode_takes_an_optimiser_step_per_run(small_checkpoint, monkeypatch):
    steps = []
    original = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        steps.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    result = bench(checkpoint=small_checkpoint, image_size=32, frames=2, warmup=1, runs=2, device="cpu", train=True)
    assert result.mode == "train" and len(result.seconds) == 2 and len(steps) == 3


def test_cpu_peak_memory_is_the_process_maximum_rss():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    value, kind = peak_memory(torch.device("cpu"))
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert kind == "process_max_rss" and before <= value <= after


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--model", "tpavi-tiny", "--runs", "0"], "--runs 0: must be an integer >= 1"),
        (["--model", "tpavi-tiny", "--warmup", "-1"], "--warmup -1: must be an integer >= 0"),
        (["--model", "no-such-model"], "--model 'no-such-model': unknown model 'no-such-model'"),
        (["--model", "tpavi-tiny", "--image-size", "4"], "--image-size 4: must be an integer >= 8"),
        (["--model", "tpavi-tiny", "--device", "banana"], "--device 'banana': not a device"),
        ([], "give --model PRESET (random weights) or --checkpoint DIR"),
        (["--model", "tpavi-tiny", "--overrides", "model.no_such_key=1"], "--overrides: override 'model.no_such_key'"),
        (["--model", "tpavi-tiny", "--overrides", "train.lr=1"], "--overrides 'train.lr': avseg bench takes the model"),
        (["--model", "tpavi-tiny", "--overrides", "model.input_size"], "--overrides: override 'model.input_size' must"),
        (["--checkpoint", "run", "--overrides", "model.input_size=64"], "--overrides change a preset's config"),
    ],
)
def test_bad_arguments_are_one_error_line(options, message, capsys):
    assert main(["bench", *options]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"avseg: error: {message}"), err


def test_an_image_size_the_model_cannot_run_is_one_error_line(small_checkpoint, capsys):
    argv = ["bench", "--checkpoint", str(small_checkpoint), "--image-size", "48", "--frames", "1", "--runs", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("avseg: error: --image-size 48: tpavi-tiny cannot run 48x48 frames"), err
    with pytest.raises(UsageError, match="multiples of 32"):
        bench(checkpoint=small_checkpoint, image_size=48, frames=1, runs=1, warmup=0, device="cpu")


def test_json_out_may_not_replace_a_checkpoint_file(small_checkpoint, capsys):
    argv = ["bench", "--checkpoint", str(small_checkpoint), "--json-out", str(small_checkpoint / "config.json")]
    assert main(argv) == 2
    assert "--json-out" in capsys.readouterr().err
