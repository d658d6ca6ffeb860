"""The evaluation engine on a tiny SynthAV: oracle scores, modality subsets, audio shuffling, the eval command."""

import json
from dataclasses import dataclass

import pytest
import torch

from avseg.data.refavs import RefAVSReader
from avseg.data.synthav.commands import synth
from avseg.data.types import AVSBatch
from avseg.evaluate import AudioShuffledDataset, evaluate_split, format_markdown, refavs_summary
from avseg.models.base import AVSModel, AVSOutput


@pytest.fixture(scope="module")
def synthav(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthav")
    synth(root, videos=10, seed=3, size=48, frames=10, workers=1)
    return RefAVSReader(root / "refavs", image_size=48)


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


def test_audio_shuffle_gives_every_sample_another_videos_audio(synthav):
    dataset = synthav.dataset("train")  # several videos, several expressions each
    shuffled = AudioShuffledDataset(dataset, seed=1)
    videos = [r.video_id for r in dataset.records]
    assert sorted(shuffled.permutation) != list(range(len(videos))) or len(set(videos)) == 1
    for i, donor in enumerate(shuffled.permutation):
        assert videos[donor] != videos[i]
        assert torch.equal(shuffled[i].audio_examples, dataset[donor].audio_examples)
        assert torch.equal(shuffled[i].frames, dataset[i].frames)


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
