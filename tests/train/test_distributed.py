"""Two CPU processes under torchrun (gloo): ``torchrun --nproc_per_node 2 -m avseg train ...`` on SynthAV.

``accelerate launch --cpu --num_processes 2`` silently runs one process, so the test asserts the world size that
actually ran (recorded in ``train_summary.json``), that both ranks ended with identical parameters (per-rank digests),
that rank 0 alone wrote the outputs, and that a 2-process resume reproduces the uninterrupted run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from avseg.data.synthav.commands import synth
from avseg.models import load_model
from avseg.train.determinism import parameter_digest
from avseg.train.trainer import TIMING_KEYS

REPO = Path(__file__).resolve().parents[2]


def torchrun_train(
    data: Path, out: Path, *extra: str, model: str = "tpavi-tiny", overrides: tuple[str, ...] = ("model.input_size=64",)
) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2"]
    cmd += ["-m", "avseg", "train", "--data", str(data), "--model", model, "--out", str(out), "--max-steps", "4"]
    cmd += ["--image-size", "64", "--batch-size", "2", *extra, "--overrides", *overrides]
    cmd += ["train.log_every=1", "train.checkpoint_every=2", "train.progress_bar=false"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("AVSEG_DEBUG", None)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=REPO)


def reproducible_events(out: Path) -> list[dict]:
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in e.items() if k not in TIMING_KEYS} for e in events if e["event"] in ("train", "val")]


@pytest.mark.slow
def test_two_process_cpu_training_and_resume(tmp_path):
    assert synth(tmp_path / "sav", videos=8, seed=0, size=64, frames=10, workers=1) == 0
    data = tmp_path / "sav" / "refavs"

    full = tmp_path / "full"
    proc = torchrun_train(data, full)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    summary = json.loads((full / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 4 and summary["samples_seen"] == 4 * 2 * 2
    assert summary["ranks_in_sync"] and len(summary["param_digests"]) == 2
    # rank 0 alone writes: one set of outputs, every event once
    assert sorted(p.name for p in full.iterdir()) == [
        "checkpoints",
        "metrics.jsonl",
        "run_config.yaml",
        "train_summary.json",
    ]
    assert sorted(p.name for p in (full / "checkpoints").iterdir()) == [
        "best.json",
        "latest.json",
        "step-0000002",
        "step-0000004",
    ]
    steps = [e["step"] for e in reproducible_events(full) if "losses" in e]
    assert steps == [1, 2, 3, 4]
    # the checkpoint holds the parameters both ranks ended with
    model = load_model(full / "checkpoints")
    assert parameter_digest(model.named_parameters()) == summary["param_digests"][0]

    # Interrupted after the step-2 checkpoint: a run folder holding only that checkpoint, resumed by 2 processes.
    part = tmp_path / "part"
    (part / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step-0000002", part / "checkpoints" / "step-0000002")
    (part / "checkpoints" / "latest.json").write_text(json.dumps({"checkpoint": "step-0000002"}))
    shutil.copy(full / "metrics.jsonl", part / "metrics.jsonl")
    proc = torchrun_train(data, part, "--resume")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    resumed = json.loads((part / "train_summary.json").read_text())
    assert resumed["world_size"] == 2 and resumed["resumed_from"].endswith("step-0000002")
    assert resumed["param_digests"] == summary["param_digests"]
    assert reproducible_events(part) == reproducible_events(full)


def torchrun_toy(out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2"]
    cmd += [str(REPO / "tests" / "train" / "ddp_toy_run.py"), str(out), *extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=REPO)


@pytest.mark.slow
def test_two_process_unfreezing_rewraps_ddp_and_resumes_exactly(tmp_path):
    # 16 samples / (2 x accum 2 x 2 ranks) = 2 steps per epoch: the conv is frozen for steps 1-2, trained for 3-6.
    full = tmp_path / "full"
    proc = torchrun_toy(full)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    lines = [json.loads(line[8:]) for line in proc.stdout.splitlines() if line.startswith("SUMMARY ")]
    assert len(lines) == 1 and lines[0]["world_size"] == 2 and lines[0]["ranks_in_sync"]
    from safetensors.torch import load_file

    early = load_file(str(full / "checkpoints" / "step-0000002" / "model.safetensors"))
    final = load_file(str(full / "checkpoints" / "step-0000006" / "model.safetensors"))
    assert not (early["conv.weight"] == final["conv.weight"]).all()  # the unfrozen conv trained, in sync on 2 ranks

    part = tmp_path / "part"
    (part / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step-0000002", part / "checkpoints" / "step-0000002")
    (part / "checkpoints" / "latest.json").write_text(json.dumps({"checkpoint": "step-0000002"}))
    shutil.copy(full / "metrics.jsonl", part / "metrics.jsonl")
    proc = torchrun_toy(part, "--resume")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    resumed = [json.loads(line[8:]) for line in proc.stdout.splitlines() if line.startswith("SUMMARY ")]
    assert resumed[0]["param_digests"] == lines[0]["param_digests"]
    assert reproducible_events(part) == reproducible_events(full)


@pytest.mark.slow
def test_two_process_cpu_training_of_the_mllm_segmenter(tmp_path):
    # The MLLM + SAM2 family through the same engine: text prompts, [SEG] read-out and the LM loss under DDP.
    assert synth(tmp_path / "sav", videos=8, seed=0, size=64, frames=10, workers=1, layouts=("rvos",)) == 0
    out = tmp_path / "run"
    proc = torchrun_train(tmp_path / "sav" / "rvos", out, "--format", "rvos", model="svac-tiny", overrides=())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 4 and summary["ranks_in_sync"]
    losses = [
        e["losses"] for e in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if e["event"] == "train"
    ]
    assert losses and all("lm" in e and e["lm"] > 0 for e in losses)
