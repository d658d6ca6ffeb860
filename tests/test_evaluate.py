"""The evaluation engine on a tiny SynthAV: oracle scores, modality subsets, audio shuffling, progress, the eval
command (its command-line checks are in test_evaluate_cli.py)."""

import json
import random
import warnings
from collections import Counter
from dataclasses import dataclass

import pytest
import torch

from avseg.data.base import AVSDataset
from avseg.data.refavs import RefAVSReader
from avseg.data.synthav.commands import synth
from avseg.data.types import AVSBatch
from avseg.errors import UsageError
from avseg.evaluate import (
    AudioShuffledDataset,
    AudioShuffleWarning,
    evaluate_split,
    format_markdown,
    markdown_path,
    refavs_summary,
    shuffled_donors,
    write_results,
)
from avseg.metrics.accumulator import MetricAccumulator
from avseg.models.base import AVSModel, AVSOutput


@pytest.fixture(scope="module")
def synthav(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthav")
    synth(root, videos=10, seed=3, size=48, frames=10, workers=1)
    return RefAVSReader(root / "refavs", image_size=48, native_masks=True)


@dataclass
class OracleConfig:
    flip: bool = False


class Oracle(AVSModel):
    """Predicts the ground truth (or its complement): scores of the whole pipeline are known in advance."""

    family = "oracle-test"
    config_class = OracleConfig

    def forward(self, batch: AVSBatch) -> AVSOutput:
        target = batch.masks.float()
        if self.config.flip:
            target = 1 - target
        return AVSOutput(mask_logits=(target * 20 - 10)[:, :, None])


def test_oracle_scores_one_and_null_scores_zero(synthav):
    # avsbench scores at the given resolution; refavs would upsample the 48-px GT bilinearly to 256 and dilate it.
    result = evaluate_split(Oracle(OracleConfig()), synthav.dataset("test_s"), preset="avsbench", batch_size=3)
    assert result.metrics["J"] == pytest.approx(1.0)
    assert result.metrics["F"] == pytest.approx(1.0, abs=1e-6)
    assert len(result.items) == len(synthav.dataset("test_s"))
    assert all(item["J"] == pytest.approx(1.0) for item in result.items)
    null = evaluate_split(Oracle(OracleConfig()), synthav.dataset("test_n"), preset="refavs")
    assert null.metrics["S"] == 0.0  # empty GT everywhere, predicted empty
    flipped = evaluate_split(Oracle(OracleConfig(flip=True)), synthav.dataset("test_n"), preset="refavs")
    assert flipped.metrics["S"] == pytest.approx(1.0)  # sqrt of a full-frame foreground ratio


def test_subsets_partition_the_items(synthav):
    result = evaluate_split(Oracle(OracleConfig()), synthav.dataset("test_s"), preset="refavs", group="video")
    n = len(result.items)
    assert result.subsets["audio"]["counts"]["videos"] + result.subsets["no_audio"]["counts"]["videos"] == n
    cues = sum(sub["counts"]["videos"] for name, sub in result.subsets.items() if name.startswith("cues:"))
    assert cues == n
    assert "J&F[audio]" in result.summary
    table = format_markdown({"test_s": result})
    assert "| test_s | all |" in table and "| test_s | audio |" in table
    assert "| Seen |" in table and "| Seen |" not in format_markdown({"test_s": result}, refavs_rows=False)


def test_audio_shuffle_is_a_seeded_derangement_over_videos(synthav):
    dataset = synthav.dataset("train")  # several videos, several expressions each
    videos = [r.video_id for r in dataset.records]
    assert len(set(videos)) > 2 and max(Counter(videos).values()) > 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", AudioShuffleWarning)  # a clean control must not warn
        shuffled = AudioShuffledDataset(dataset, seed=1)
    perm = shuffled.permutation
    assert sorted(perm) == list(range(len(videos)))  # every soundtrack used exactly once
    assert all(videos[donor] != videos[i] for i, donor in enumerate(perm))
    assert shuffled.same_video == 0
    assert AudioShuffledDataset(dataset, seed=1).permutation == perm  # deterministic per seed
    assert AudioShuffledDataset(dataset, seed=2).permutation != perm
    for i in range(4):
        donor = perm[i]
        assert torch.equal(shuffled[i].audio_examples, dataset[donor].audio_examples)
        assert torch.equal(shuffled[i].frames, dataset[i].frames)


def test_shuffled_donors_is_a_permutation_with_fewest_same_video_pairs():
    rng = random.Random(0)
    for trial in range(300):
        n_videos = rng.randint(2, 6)
        videos = [f"v{rng.randrange(n_videos)}" for _ in range(rng.randint(2, 20))]
        donors, same = shuffled_donors(videos, seed=trial)
        n, largest = len(videos), max(Counter(videos).values())
        assert sorted(donors) == list(range(n))
        assert same == sum(videos[d] == videos[i] for i, d in enumerate(donors))
        if len(set(videos)) > 1:
            # 2m - n same-video pairs cannot be avoided when one video holds m > n/2 samples; otherwise none remain
            assert same == max(0, 2 * largest - n), videos
        assert all(d != i for i, d in enumerate(donors))  # no sample keeps its own soundtrack


def test_audio_shuffle_of_a_single_video_warns_and_rotates_its_samples(synthav):
    dataset = synthav.dataset("test_s")  # ten SynthAV videos: test_s holds one
    videos = [r.video_id for r in dataset.records]
    assert len(set(videos)) == 1 and len(videos) > 1
    with pytest.warns(AudioShuffleWarning, match="single video"):
        shuffled = AudioShuffledDataset(dataset, seed=0)
    assert sorted(shuffled.permutation) == list(range(len(videos)))
    assert all(d != i for i, d in enumerate(shuffled.permutation))
    assert shuffled.same_video == len(videos)
    assert shuffled_donors(["only"], seed=3) == ([0], 1)
    with pytest.warns(AudioShuffleWarning):
        result = evaluate_split(Oracle(OracleConfig()), dataset, preset="avsbench", audio="shuffle", progress=False)
    assert result.settings["audio_shuffle_same_video"] == len(videos)


def test_progress_counts_the_items_of_the_split_with_rate_and_eta(synthav, capsys, monkeypatch):
    import avseg.progress

    dataset = synthav.dataset("test_s")
    n = len(dataset)
    monkeypatch.setattr(avseg.progress, "LOG_INTERVAL_S", 0.0)  # a line at every batch
    evaluate_split(Oracle(OracleConfig()), dataset, preset="avsbench", batch_size=3)  # progress is on by default
    lines = capsys.readouterr().err.splitlines()  # stderr is not a terminal here: plain lines, no "\r"
    assert lines[0].startswith(f"eval test_s: 3/{n} items") and "items/s, ETA" in lines[0]
    assert lines[-1].startswith(f"eval test_s: {n}/{n} items (100%)")
    evaluate_split(Oracle(OracleConfig()), dataset, preset="avsbench", batch_size=3, progress=False)
    assert capsys.readouterr().err == ""


def test_nothing_to_score_names_the_split(synthav):
    def unlabelled(sample):
        return sample.with_updates(label_valid=torch.zeros_like(sample.label_valid))

    with pytest.raises(UsageError, match="no labelled frames to score in split 'test_s'"):
        evaluate_split(
            Oracle(OracleConfig()), synthav.dataset("test_s", transform=unlabelled), preset="avsbench", progress=False
        )
    with pytest.raises(UsageError, match=r"no labelled frames to score in split 'val' \(the split has no items\)"):
        evaluate_split(Oracle(OracleConfig()), AVSDataset(synthav, []), preset="avsbench", split="val", progress=False)
    with pytest.raises(ValueError, match="no frames to score") as info:
        MetricAccumulator("avsbench").compute()
    assert "MetricAccumulator" not in str(info.value)


def test_device_is_checked(synthav):
    with pytest.raises(UsageError, match="device 'banana'"):
        evaluate_split(Oracle(OracleConfig()), synthav.dataset("test_s"), preset="avsbench", device="banana")


def test_results_are_written_as_json_and_a_distinct_markdown_table(synthav, tmp_path):
    result = evaluate_split(Oracle(OracleConfig()), synthav.dataset("test_s"), preset="avsbench", progress=False)
    table = write_results({"test_s": result}, tmp_path / "out" / "r.json")
    assert table == tmp_path / "out" / "r.md"
    report = json.loads((tmp_path / "out" / "r.json").read_text())
    assert report["splits"]["test_s"]["metrics"]["J"] == pytest.approx(1.0)
    assert table.read_text().startswith("## ")
    for bad in ("results.md", "results", "results.txt"):
        with pytest.raises(UsageError, match=f"{bad}: must end in .json"):
            markdown_path(tmp_path / bad)
    with pytest.raises(UsageError):
        write_results({"test_s": result}, tmp_path / "results.md")
    assert not (tmp_path / "results.md").exists()


def test_refavs_summary_rows(synthav):
    model = Oracle(OracleConfig())
    results = {s: evaluate_split(model, synthav.dataset(s), preset="refavs") for s in ("test_s", "test_u", "test_n")}
    rows = refavs_summary(results)
    assert set(rows) == {"Seen", "Unseen", "Mix", "Null"}
    assert rows["Mix"]["J"] == pytest.approx((rows["Seen"]["J"] + rows["Unseen"]["J"]) / 2)


@pytest.mark.slow
def test_eval_command_end_to_end(synthav, tmp_path, capsys):
    from avseg.checkpoint import save_checkpoint
    from avseg.evaluate import evaluate_command
    from avseg.models import create_model

    torch.manual_seed(0)
    model = create_model("tpavi-tiny")
    ckpt = save_checkpoint(tmp_path / "ck", model, preset="tpavi-tiny")
    status = evaluate_command(
        checkpoint=ckpt,
        data=synthav.root,
        format="refavs",
        split="test_s,test_n",
        json_out=tmp_path / "r.json",
        save_masks=tmp_path / "masks",
        overlays=1,
        image_size=48,
    )
    assert status == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert set(report["splits"]) == {"test_s", "test_n"}
    assert report["splits"]["test_s"]["settings"]["preset"] == "refavs"
    assert (tmp_path / "r.md").read_text().startswith("## ")
    n_items = len(report["splits"]["test_s"]["items"])
    assert len(list((tmp_path / "masks" / "test_s").glob("*/00000.png"))) == n_items
    assert len(list((tmp_path / "masks" / "test_s" / "overlays").glob("*.mp4"))) == 1
    assert "test_s" in capsys.readouterr().out


def test_ground_truth_source_follows_the_preset(synthav):
    plain = RefAVSReader(synthav.root, image_size=48)  # no native masks
    with pytest.raises(UsageError, match=r"'refavs' scores against the ground truth at its resolution on disk.*"):
        evaluate_split(Oracle(OracleConfig()), plain.dataset("test_s"), preset="refavs", progress=False)
    # auralsam2_compat scores the masks at the model's input size: no native masks needed.
    result = evaluate_split(Oracle(OracleConfig()), plain.dataset("test_s"), preset="auralsam2_compat", progress=False)
    assert result.settings["gt_source"].startswith("input") and result.metrics["J"] == pytest.approx(1.0)
    two = AVSDataset(synthav, synthav.dataset("test_s").records[:2])
    native = evaluate_split(Oracle(OracleConfig()), two, preset="refavs", progress=False)
    assert native.settings["gt_source"].startswith("native") and native.settings["gt_resolution"] == "48x48"
    assert native.settings["resolution"] == "256x256" and native.settings["protocol"] is None


def test_preset_and_protocol_arguments_are_checked(synthav):
    from avseg.metrics.protocols import REFAVS_OFFICIAL

    dataset = synthav.dataset("test_s")
    with pytest.raises(UsageError, match="sets the preset and grouping"):
        evaluate_split(Oracle(OracleConfig()), dataset, preset="refavs", protocol=REFAVS_OFFICIAL, progress=False)
    with pytest.raises(UsageError, match="give a metric preset or an evaluation protocol"):
        evaluate_split(Oracle(OracleConfig()), dataset, progress=False)
    with pytest.raises(UsageError, match="'avss' is for semantic masks but the model predicts 1 mask channel"):
        evaluate_split(Oracle(OracleConfig()), dataset, preset="avss", progress=False)
