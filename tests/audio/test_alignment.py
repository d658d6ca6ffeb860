"""Which audio each sampled frame gets (avseg.audio.alignment), against hand-cut slices of the track."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avseg.audio.alignment import (
    EXAMPLE_SAMPLES,
    clip_audio_examples,
    clip_waveform,
    frame_audio_examples,
    window_audio_examples,
    window_example_starts,
    window_index,
    window_span,
)
from avseg.audio.logmel import waveform_to_examples

RATE = 16000
NTSC = 30000 / 1001


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.5, 0.5, round(seconds * RATE)).astype(np.float32)


def test_window_examples_match_hand_cut_slices():
    wave = noise(3.3)
    got = window_audio_examples(wave, 1.0, range(3))
    for k in range(3):  # 1 fps: samples [16000 k + 160, 16000 k + 15760), centred in second k
        ref = waveform_to_examples(wave[16000 * k + 160 : 16000 * k + 15760], RATE)[0]
        assert torch.allclose(got[k], ref, atol=1e-4)
    # 4 fps, frame 12: centred start frame 264 is past the last full example (frame 232 of 328): clamped back.
    last = window_audio_examples(wave, 4.0, [12])[0]
    assert torch.allclose(last, waveform_to_examples(wave[232 * 160 : 232 * 160 + 15600], RATE)[0], atol=1e-4)
    short = wave[:8000]  # 0.5 s: padded with silence to one example
    ref = waveform_to_examples(np.pad(short, (0, 7600)), RATE)[0]
    assert torch.allclose(window_audio_examples(short, 1.0, [0])[0], ref, atol=1e-4)


def test_window_examples_do_not_depend_on_the_clip():
    wave = noise(8.0, seed=3)
    whole = window_audio_examples(wave, 2.5, range(20))
    assert torch.equal(window_audio_examples(wave, 2.5, range(7, 11)), whole[7:11])
    assert window_audio_examples(wave, 2.5, []).shape == (0, 1, 96, 64)
    with pytest.raises(ValueError, match="mono"):
        window_audio_examples(np.stack([wave, wave]), 1.0, [0])


@pytest.mark.parametrize("fps", [1.0, 2.5, NTSC])
def test_window_example_starts_are_centred_and_stay_inside_the_track(fps):
    num_samples = 5 * RATE
    k = np.arange(int(5 * fps) + 3)  # a few windows past the end of the track
    starts = window_example_starts(k, fps, num_samples)
    last = 1 + (num_samples - 400) // 160 - 96  # the last STFT frame a whole example can start at
    assert starts.dtype == np.int64 and starts.min() >= 0 and starts.max() == last
    centre_offset = 160 * starts + EXAMPLE_SAMPLES / 2 - (k + 0.5) / fps * RATE  # example centre - window centre
    free = (starts > 0) & (starts < last)
    assert np.all(np.abs(centre_offset[free]) <= 80)  # within half a hop wherever the clamp did not act
    assert window_example_starts([0, 1, 2], 1.0, 15600).tolist() == [0, 0, 0]  # exactly one example: shared
    assert window_example_starts([0, 1, 2], 1.0, 16000).tolist() == [1, 2, 2]  # 98 STFT frames: starts 0 to 2
    assert window_example_starts([0, 3], 1.0, 100).tolist() == [0, 0]  # shorter than an example: padded to one


def test_clip_examples_follow_the_reader_layout():
    wave = noise(13.0, seed=1)
    assert torch.allclose(clip_audio_examples(wave, 1.0, 0, 10), waveform_to_examples(wave[:160000], RATE))
    tail = clip_audio_examples(wave, 1.0, 10, 13)
    assert torch.allclose(tail, waveform_to_examples(wave[160000:208000], RATE))
    padded = clip_audio_examples(wave[: int(11.5 * RATE)], 1.0, 10, 13)  # 1.5 s for 3 frames: last one repeated
    assert torch.equal(padded[1], padded[2]) and padded.shape == (3, 1, 96, 64)


def test_frame_audio_examples_follow_the_chosen_rule():
    wave = noise(6.0, seed=2)
    assert torch.equal(frame_audio_examples(wave, 1.0, 2, 5, "window"), window_audio_examples(wave, 1.0, range(2, 5)))
    assert torch.equal(frame_audio_examples(wave, 1.0, 2, 5, "clip"), clip_audio_examples(wave, 1.0, 2, 5))
    with pytest.raises(ValueError, match="'window' or 'clip', got 'centre'"):
        frame_audio_examples(wave, 1.0, 2, 5, "centre")  # type: ignore[arg-type]


def test_window_span_rounds_each_end_to_the_nearest_sample():
    assert window_span(10, 13, 1.0) == (160000, 208000)
    assert window_span(0, 1, NTSC) == (0, 534)  # 1001 / 30000 s = 533.87 samples
    assert window_span(1, 2, NTSC) == (534, 1068)  # consecutive windows share their boundary sample


def test_clip_waveform_is_the_clips_track_zero_padded_to_a_full_clip():
    wave = np.arange(int(2.5 * RATE), dtype=np.float32)
    first = clip_waveform(wave, 1.0, 0, 2, 2)
    assert first.dtype == torch.float32 and torch.equal(first, torch.from_numpy(wave[: 2 * RATE]))
    last = clip_waveform(wave, 1.0, 2, 3, 2)  # the track ends half-way through window 2
    assert last.shape == (2 * RATE,)
    assert torch.equal(last[: RATE // 2], torch.from_numpy(wave[2 * RATE :])) and not last[RATE // 2 :].any()
    with pytest.raises(ValueError, match="do not fit a clip of 2"):
        clip_waveform(wave, 1.0, 0, 3, 2)


def test_window_index_maps_times_to_the_window_holding_them():
    assert window_index([-0.2, 0.0, 0.999, 1.0, 2.5, 99.0], 1.0, 3).tolist() == [0, 0, 0, 1, 2, 2]
    # 61 / fps * fps is 60.99999999999999 in floating point: a boundary time still starts its own window.
    assert window_index([61 / NTSC], NTSC, 100).tolist() == [61]
    assert window_index([0.4, 0.6], 2.0, 5).tolist() == [0, 1]
