"""Soundtrack variants for audio-robustness evaluation (``avseg eval --audio``): the shuffle derangement, noise at an
SNR, offsets, silence, clips without audio, and the eval command's per-variant tables and drops on a tiny SynthAV.

The model is a toy that listens: its mask is the left part of the frame, as wide as a function of the loudness of the
frame's log-mel example, so that any change of the soundtrack changes its scores.
"""

import csv
import json
import math
import shutil
from collections import Counter
from dataclasses import dataclass

import pytest
import torch

import avseg.models.registry
from avseg.audio.logmel import pad_or_trim_examples, waveform_to_examples
from avseg.audio.variants import (
    NOISE_FLOOR_DBFS,
    AudioVariant,
    AudioVariantDataset,
    add_noise,
    apply_audio_variant,
    audio_donors,
    offset_wave,
    parse_audio_variant,
    parse_audio_variants,
)
from avseg.checkpoint import save_checkpoint
from avseg.data.base import AVSDataset, load_audio_features
from avseg.data.refavs import RefAVSReader
from avseg.data.synthav.commands import synth
from avseg.data.types import AUDIO_SAMPLE_RATE, AVSBatch
from avseg.errors import UsageError
from avseg.evaluate import evaluate_split
from avseg.models.base import AVSModel, AVSOutput
from tests.test_evaluate_cli import one_error_line, run_eval


@dataclass
class ListenerConfig:
    image_size: int = 48


class Listener(AVSModel):
    """Foreground = the columns left of ``W * frac(7 * mean log-mel)`` of each frame: a pure function of the audio."""

    family = "listener-test"
    config_class = ListenerConfig

    def __init__(self, config: ListenerConfig) -> None:
        super().__init__(config)
        self.scale = torch.nn.Parameter(torch.tensor(10.0))  # a checkpoint needs a tensor

    def forward(self, batch: AVSBatch) -> AVSOutput:
        b, t, _, h, w = batch.frames.shape
        loud = batch.audio_examples.float().mean(dim=(2, 3, 4))  # (B, T)
        edge = (loud * 7).remainder(1.0) * w  # (B, T)
        x = torch.arange(w, dtype=torch.float32) + 0.5  # (W,)
        logits = self.scale * (edge[:, :, None, None] - x)  # (B, T, 1, W)
        return AVSOutput(mask_logits=logits.expand(b, t, h, w)[:, :, None].contiguous())  # (B, T, 1, H, W)


@pytest.fixture(autouse=True)
def _register_listener(monkeypatch):
    monkeypatch.setitem(avseg.models.registry._FAMILIES, Listener.family, Listener)


@pytest.fixture(scope="module")
def synthav(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthav")
    synth(root, videos=7, seed=3, size=48, frames=10, workers=1)  # train: 3 videos
    return RefAVSReader(root / "refavs", image_size=48, native_masks=True)


@pytest.fixture(scope="module")
def listener_ck(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("ck") / "ck", Listener(ListenerConfig()))


# ---- parsing ---------------------------------------------------------------------------------------------------


def test_variants_are_read_in_order_without_repeats_with_true_first():
    specs = parse_audio_variants(["shuffle", "noise:0,offset:1.50", "true", "noise:-0", "SILENCE", "offset:-2"])
    assert [v.spec for v in specs] == ["true", "shuffle", "noise:0", "offset:1.5", "silence", "offset:-2"]
    assert parse_audio_variant("noise:12.5") == AudioVariant("noise", 12.5)


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("noise:abc", "noise needs an SNR in dB"),
        ("offset:", "offset needs a shift in seconds"),
        ("noise", "noise needs an SNR in dB"),
        ("noise:inf", "finite"),
        ("shuffle:2", "shuffle takes no value"),
        ("loud", "unknown audio variant 'loud'"),
    ],
)
def test_a_bad_variant_is_one_error_line_naming_audio(tmp_path, capsys, spec, says):
    # Checked before the checkpoint or the data is looked at: neither exists here.
    args = ["--checkpoint", tmp_path / "no-ck", "--data", tmp_path / "no-data", "--audio", "true", spec]
    status, out, err = run_eval(capsys, *args)
    line = one_error_line(err)
    assert status == 2 and out == ""
    assert f"--audio {spec}:" in line and says in line, line


def test_audio_without_a_variant_is_refused(tmp_path, capsys):
    status, _, err = run_eval(capsys, "--checkpoint", tmp_path, "--data", tmp_path, "--audio")
    assert status == 2 and "--audio: give at least one audio variant" in one_error_line(err)


# ---- the shuffle ----------------------------------------------------------------------------------------------


def test_shuffle_is_a_seeded_derangement_that_uses_every_soundtrack_once():
    videos = [f"v{i % 5}" for i in range(23)]
    heard = [i % 7 != 3 for i in range(23)]  # three items without a soundtrack
    donors, same = audio_donors(videos, heard, seed=4)
    with_audio = [i for i in range(23) if heard[i]]
    assert sorted(donors[i] for i in with_audio) == with_audio  # every soundtrack heard exactly once
    assert all(donors[i] == i for i in range(23) if not heard[i])  # clips without audio are left alone
    assert all(videos[donors[i]] != videos[i] for i in with_audio) and same == 0  # never their own video's sound
    assert audio_donors(videos, heard, seed=4) == (donors, same)
    assert audio_donors(videos, heard, seed=5)[0] != donors


@pytest.mark.parametrize(("videos", "heard"), [(["a"], [True]), (["a", "b", "c"], [False, True, False])])
def test_a_shuffle_with_one_soundtrack_is_refused(videos, heard):
    with pytest.raises(UsageError, match=r"--audio shuffle: only one item of split 'x' has a soundtrack"):
        audio_donors(videos, heard, split="x")


def test_shuffle_cannot_run_on_a_split_of_one_item(synthav, tmp_path, listener_ck, capsys):
    # A copy of the Ref-AVS folder whose test_u holds one expression.
    root = tmp_path / "refavs"
    shutil.copytree(synthav.root, root)
    with (synthav.root / "metadata.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    kept = [r for r in rows if r["split"] != "test_u"] + [next(r for r in rows if r["split"] == "test_u")]
    with (root / "metadata.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)
    args = ["--checkpoint", listener_ck, "--data", root, "--format", "refavs", "--split", "test_u"]
    status, _, err = run_eval(capsys, *args, "--audio", "true", "shuffle", "--image-size", 48)
    line = one_error_line(err)
    assert status == 2 and "only one item of split 'test_u' has a soundtrack" in line


def test_shuffled_items_hear_their_donor_whatever_the_batch_size(synthav):
    seen: Counter = Counter()
    records = []
    for record in synthav.index("train"):
        seen[record.video_id] += 1
        if seen[record.video_id] <= 3:
            records.append(record)
    dataset = AVSDataset(synthav, records)  # three expressions of each of the three videos
    shuffled = AudioVariantDataset(dataset, "shuffle", seed=2)
    perm = shuffled.permutation
    videos = [r.video_id for r in dataset.records]
    assert len(set(videos)) > 2 and all(videos[perm[i]] != videos[i] for i in range(len(videos)))
    for i in (0, 5):
        donor = dataset[perm[i]]
        assert torch.equal(shuffled[i].audio_wave, donor.audio_wave)
        assert torch.equal(shuffled[i].audio_examples, donor.audio_examples)
        assert shuffled[i].meta["audio_from"] == donor.uid
    model = Listener(ListenerConfig())
    scores = [
        evaluate_split(model, dataset, preset="avsbench", audio="shuffle", audio_seed=2, batch_size=b, progress=False)
        for b in (1, 4)
    ]
    assert [it["J"] for it in scores[0].items] == [it["J"] for it in scores[1].items]
    true = evaluate_split(model, dataset, preset="avsbench", batch_size=4, progress=False)
    assert [it["J"] for it in true.items] != [it["J"] for it in scores[0].items]  # the toy does listen


# ---- noise, offset, silence, clips without audio ----------------------------------------------------------------


def _snr_db(signal, noisy):
    return 10 * math.log10(float(signal.double().pow(2).mean()) / float((noisy - signal).double().pow(2).mean()))


@pytest.mark.parametrize("snr", [-5.0, 0.0, 20.0])
def test_noise_is_added_at_the_asked_snr_and_is_seeded(snr):
    t = torch.arange(10 * AUDIO_SAMPLE_RATE, dtype=torch.float32) / AUDIO_SAMPLE_RATE
    wave = 0.05 * torch.sin(2 * math.pi * 440 * t)
    noisy = add_noise(wave, snr, seed=(0, 3))
    assert noisy.dtype == torch.float32 and noisy.shape == wave.shape
    assert _snr_db(wave, noisy) == pytest.approx(snr, abs=0.05)
    assert torch.equal(add_noise(wave, snr, seed=(0, 3)), noisy)
    assert not torch.equal(add_noise(wave, snr, seed=(0, 4)), noisy)


def test_silence_under_noise_becomes_noise_at_the_floor():
    noisy = add_noise(torch.zeros(10 * AUDIO_SAMPLE_RATE), 10.0, seed=1)
    power_db = 10 * math.log10(float(noisy.double().pow(2).mean()))
    assert power_db == pytest.approx(NOISE_FLOOR_DBFS - 10.0, abs=0.05)


def test_offset_moves_the_soundtrack_by_whole_samples_and_pads_with_silence():
    wave = torch.randn(3 * AUDIO_SAMPLE_RATE)
    late = offset_wave(wave, 1.5)
    shift = 24_000  # 1.5 s at 16 kHz
    assert late.shape == wave.shape
    assert torch.equal(late[:shift], torch.zeros(shift)) and torch.equal(late[shift:], wave[:-shift])
    early = offset_wave(wave, -0.25)
    assert torch.equal(early[:-4000], wave[4000:]) and torch.equal(early[-4000:], torch.zeros(4000))
    assert torch.equal(offset_wave(wave, 4.0), torch.zeros_like(wave))


def test_silence_gives_the_features_a_clip_without_audio_has(synthav):
    sample = synthav.dataset("train")[0]
    silent = apply_audio_variant(sample, AudioVariant("silence"))
    assert torch.equal(silent.audio_wave, torch.zeros_like(sample.audio_wave))
    _, no_audio_examples, has_audio = load_audio_features(None, sample.num_frames)  # what a reader gives
    assert not has_audio and torch.equal(silent.audio_examples, no_audio_examples)
    assert torch.equal(silent.frames, sample.frames) and silent.meta["audio_variant"] == "silence"


def test_changed_soundtracks_get_examples_computed_as_the_reader_computes_them(synthav):
    sample = synthav.dataset("train")[0]
    same = apply_audio_variant(sample, AudioVariant("offset", 0.0))  # the soundtrack unchanged, examples recomputed
    torch.testing.assert_close(same.audio_examples, sample.audio_examples, rtol=0, atol=1e-6)
    late = apply_audio_variant(sample, AudioVariant("offset", 2.0))
    shifted = torch.cat([torch.zeros(2 * AUDIO_SAMPLE_RATE), sample.audio_wave[: -2 * AUDIO_SAMPLE_RATE]])
    assert torch.equal(late.audio_wave, shifted)
    expected = pad_or_trim_examples(waveform_to_examples(shifted.numpy(), AUDIO_SAMPLE_RATE), sample.num_frames)
    torch.testing.assert_close(late.audio_examples, expected)
    noisy = apply_audio_variant(sample, AudioVariant("noise", 0.0), seed=(0, 0))
    assert _snr_db(sample.audio_wave, noisy.audio_wave) == pytest.approx(0.0, abs=0.1)


@pytest.mark.parametrize("spec", ["shuffle", "silence", "noise:0", "offset:1"])
def test_clips_without_audio_are_left_as_they_are(synthav, spec):
    sample = synthav.dataset("train")[0]
    mute = sample.with_updates(has_audio=False)
    donor = synthav.dataset("train")[7]
    assert apply_audio_variant(mute, parse_audio_variant(spec), donor=donor) is mute


# ---- the eval command -----------------------------------------------------------------------------------------


def _eval_args(ck, root, out):
    return ["--checkpoint", ck, "--data", root, "--format", "refavs", "--split", "train,test_n", "--json-out", out]


@pytest.mark.slow
def test_eval_audio_reports_each_variant_and_its_drop(synthav, tmp_path, listener_ck, capsys, monkeypatch):
    import avseg.progress

    monkeypatch.setattr(avseg.progress, "LOG_INTERVAL_S", 0.0)  # a progress line at every step: each variant reports
    out = tmp_path / "r.json"
    status, printed, err = run_eval(
        capsys, *_eval_args(listener_ck, synthav.root, out), "--audio", "shuffle", "silence", "--device", "cpu"
    )
    assert status == 0, err
    report = json.loads(out.read_text())
    audio = report["audio"]
    assert audio["variants"] == ["true", "shuffle", "silence"] and audio["seed"] == 0
    assert audio["items_without_audio"] == {"train": 0, "test_n": 0}
    for spec in ("shuffle", "silence"):
        true = audio["splits"]["train"]["true"]
        changed = audio["splits"]["train"][spec]
        assert changed["settings"]["audio"] == spec
        drops = audio["drops"]["train"][spec]
        assert drops["all"] == true["metrics"]["J&F"] - changed["metrics"]["J&F"]
        # The audio-dependent (needs audio) and audio-only (cues:audio) expressions, as SynthAV marks them.
        for subset in ("audio", "cues:audio", "no_audio"):
            assert drops[subset] == true["subsets"][subset]["J&F"] - changed["subsets"][subset]["J&F"]
    assert audio["drops"]["train"]["shuffle"]["all"] != 0  # the toy listens
    assert report["splits"]["train"]["metrics"] == audio["splits"]["train"]["true"]["metrics"]
    table = (tmp_path / "r.md").read_text()
    assert "## Audio shuffle" in table and "## Audio silence" in table and "| J&F shuffle | drop shuffle |" in table
    drop = audio["drops"]["train"]["shuffle"]["cues:audio"]
    assert "| train | cues:audio |" in table and f"{drop:.4f} |" in table
    assert "## Audio shuffle" in printed and "eval train audio=silence" in err


@pytest.mark.slow
def test_eval_audio_true_alone_gives_the_numbers_of_a_plain_eval(synthav, tmp_path, listener_ck, capsys):
    plain, true = tmp_path / "plain.json", tmp_path / "true.json"
    assert run_eval(capsys, *_eval_args(listener_ck, synthav.root, plain), "--device", "cpu")[0] == 0
    assert run_eval(capsys, *_eval_args(listener_ck, synthav.root, true), "--audio", "true", "--device", "cpu")[0] == 0
    a, b = json.loads(plain.read_text()), json.loads(true.read_text())
    assert "audio" not in a and b["audio"]["variants"] == ["true"]
    assert b["audio"]["drops"] == {"train": {}, "test_n": {}}
    for split in ("train", "test_n"):
        for key in ("metrics", "subsets", "items", "videos"):
            assert json.dumps(a["splits"][split][key]) == json.dumps(b["splits"][split][key]), (split, key)
    assert Counter(tuple(i["modalities"]) for i in a["splits"]["train"]["items"])[("audio",)] > 0
