"""The VGGish front end against an independent, slow float64 reference written here."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.signal import resample_poly

from avseg.audio.logmel import (
    FRONT_END_VERSION,
    example_count,
    frame_count,
    log_mel_spectrogram,
    log_mel_to_examples,
    mel_matrix,
    min_samples_for,
    pad_or_trim_examples,
    to_mono_16k,
    waveform_to_examples,
)
from avseg.errors import AudioPaddedWarning, ShapeError

# ---------------------------------------------------------------------------------------------------------------------
# Reference: plain numpy float64, loops where the recipe is naturally a loop. Written from Google's mel_features.py
# and torchvggish's waveform_to_examples, sharing no code with avseg.


def ref_hz_to_mel(f):
    return 1127.0 * np.log(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def ref_mel_matrix(n_mels=64, n_bins=257, rate=16000, lo=125.0, hi=7500.0):
    bin_mels = [ref_hz_to_mel(k * (rate / 2.0) / (n_bins - 1)) for k in range(n_bins)]
    step = (ref_hz_to_mel(hi) - ref_hz_to_mel(lo)) / (n_mels + 1)
    edges = [ref_hz_to_mel(lo) + i * step for i in range(n_mels + 2)]
    out = np.zeros((n_bins, n_mels), dtype=np.float64)
    for band in range(n_mels):
        left, centre, right = edges[band], edges[band + 1], edges[band + 2]
        for k in range(1, n_bins):  # k = 0 (DC) stays zero
            m = bin_mels[k]
            if left < m <= centre:
                out[k, band] = (m - left) / (centre - left)
            elif centre < m < right:
                out[k, band] = (right - m) / (right - centre)
    return out


def ref_examples(wave16k: np.ndarray) -> np.ndarray:
    """(E, 96, 64) float64 log-mel examples of a float64 16 kHz mono wave."""
    window = np.array([0.5 - 0.5 * math.cos(2.0 * math.pi * i / 400) for i in range(400)])
    mel = ref_mel_matrix()
    rows = []
    start = 0
    while start + 400 <= len(wave16k):
        spectrum = np.abs(np.fft.rfft(wave16k[start : start + 400] * window, 512))
        rows.append(np.log(spectrum @ mel + 0.01))
        start += 160
    n_examples = len(rows) // 96
    return np.array(rows[: n_examples * 96], dtype=np.float64).reshape(n_examples, 96, 64)


def chirp(seconds: float, rate: int, f0: float = 60.0, f1: float = 7600.0) -> np.ndarray:
    t = np.arange(round(seconds * rate), dtype=np.float64) / rate
    return 0.5 * np.sin(2.0 * np.pi * (f0 * t + (f1 - f0) * t * t / (2.0 * seconds)))


# ---------------------------------------------------------------------------------------------------------------------


def test_front_end_matches_reference_at_16k():
    wave = chirp(3.0, 16000)
    got = waveform_to_examples(wave.astype(np.float32), 16000)
    want = ref_examples(wave)
    assert got.dtype == torch.float32
    assert tuple(got.shape) == (want.shape[0], 1, 96, 64) == (3, 1, 96, 64)
    assert np.abs(got[:, 0].numpy().astype(np.float64) - want).max() <= 1e-4


def test_front_end_matches_reference_at_44k_stereo():
    left = chirp(3.0, 44100)
    right = 0.3 * chirp(3.0, 44100, f0=300.0, f1=2000.0)
    stereo = np.stack([left, right])  # (2, N)
    want = ref_examples(resample_poly((left + right) / 2.0, 160, 441))
    got = waveform_to_examples(stereo.astype(np.float32), 44100)
    assert tuple(got.shape) == (want.shape[0], 1, 96, 64) == (3, 1, 96, 64)
    assert np.abs(got[:, 0].numpy().astype(np.float64) - want).max() <= 1e-4
    mono_got = waveform_to_examples(left.astype(np.float32), 44100)
    mono_want = ref_examples(resample_poly(left, 160, 441))
    assert np.abs(mono_got[:, 0].numpy().astype(np.float64) - mono_want).max() <= 1e-4


def test_mel_matrix_properties():
    m = mel_matrix(dtype=torch.float64).numpy()
    assert m.shape == (257, 64)
    np.testing.assert_allclose(m, ref_mel_matrix(), rtol=0, atol=1e-12)
    assert not m[0].any()  # DC row zeroed
    assert m.min() >= 0.0 and m.max() <= 1.0
    assert (m.max(axis=0) > 0.5).all()  # every band catches at least one bin near its peak
    # Bin k sits at 31.25 k Hz: 125 Hz is bin 4 and 7500 Hz is bin 240, both on a band edge, so weight 0.
    assert not m[:5].any() and m[5].any()
    assert not m[240:].any() and m[239].any()
    # Triangles in mel space: between the first and the last band centre, neighbouring bands sum to 1.
    edges = np.linspace(ref_hz_to_mel(125.0), ref_hz_to_mel(7500.0), 66)
    bin_mel = ref_hz_to_mel(np.arange(257) * 31.25)
    inside = (bin_mel >= edges[1]) & (bin_mel <= edges[64])
    np.testing.assert_allclose(m[inside].sum(axis=1), 1.0, atol=1e-12)
    assert mel_matrix().dtype == torch.float32
    with pytest.raises(ValueError, match="Nyquist"):
        mel_matrix(upper_edge_hertz=9000.0)
    with pytest.raises(ValueError, match="below"):
        mel_matrix(lower_edge_hertz=500.0, upper_edge_hertz=400.0)


@pytest.mark.parametrize("n", [0, 399, 400, 559, 560, 16000, 16159, 16160])
def test_frame_count(n):
    expected = 0 if n < 400 else 1 + (n - 400) // 160
    assert frame_count(n) == expected
    assert tuple(log_mel_spectrogram(torch.zeros(n)).shape) == (expected, 64)


def test_example_count_and_partial_example_dropped():
    # 96 frames need 400 + 95 * 160 = 15600 samples; 192 frames need 400 + 191 * 160 = 30960.
    assert min_samples_for(1) == 15600 and min_samples_for(2) == 30960
    rng = np.random.default_rng(0)
    for n, e in [(15599, 0), (15600, 1), (30959, 1), (30960, 2), (48000, 3)]:
        assert example_count(n) == e
        got = waveform_to_examples(rng.uniform(-0.5, 0.5, n).astype(np.float32), 16000)
        assert tuple(got.shape) == (e, 1, 96, 64)
    short = waveform_to_examples(np.zeros(8000, dtype=np.float32), 16000)
    assert tuple(short.shape) == (0, 1, 96, 64) and short.dtype == torch.float32


def test_silence_is_log_offset():
    got = waveform_to_examples(np.zeros(16000, dtype=np.float32), 16000)
    np.testing.assert_allclose(got.numpy(), math.log(0.01), rtol=1e-6)


def test_batched_log_mel_equals_per_row():
    rng = np.random.default_rng(1)
    batch = torch.from_numpy(rng.uniform(-1, 1, (3, 2, 4000)).astype(np.float32))
    out = log_mel_spectrogram(batch)
    assert tuple(out.shape) == (3, 2, 23, 64)
    torch.testing.assert_close(out[2, 1], log_mel_spectrogram(batch[2, 1]), rtol=0, atol=1e-5)
    clips = torch.from_numpy(rng.uniform(-1, 1, (2, 31000)).astype(np.float32))  # 192 frames: 2 examples each
    examples = log_mel_to_examples(log_mel_spectrogram(clips))
    assert tuple(examples.shape) == (2, 2, 1, 96, 64)
    torch.testing.assert_close(examples[1], waveform_to_examples(clips[1], 16000))


def test_multichannel_is_averaged_and_inputs_agree():
    rng = np.random.default_rng(2)
    stereo = rng.uniform(-0.5, 0.5, (2, 20000)).astype(np.float32)
    mono = stereo.astype(np.float64).mean(axis=0).astype(np.float32)
    a = waveform_to_examples(stereo, 16000)
    torch.testing.assert_close(a, waveform_to_examples(mono, 16000), rtol=0, atol=1e-5)
    torch.testing.assert_close(a, waveform_to_examples(torch.from_numpy(stereo), 16000), rtol=0, atol=1e-5)
    pcm = (stereo * 32768).astype(np.int16)
    torch.testing.assert_close(
        waveform_to_examples(pcm, 16000), waveform_to_examples(pcm.astype(np.float32) / 32768, 16000)
    )
    assert isinstance(to_mono_16k(torch.from_numpy(stereo), 48000), torch.Tensor)
    assert to_mono_16k(stereo, 48000).shape == (6667,)
    with pytest.raises(ShapeError, match="channels-first"):
        waveform_to_examples(stereo.T, 16000)
    with pytest.raises(ShapeError):
        waveform_to_examples(np.zeros((1, 2, 3), dtype=np.float32), 16000)


def _examples(e: int) -> torch.Tensor:
    return torch.arange(e, dtype=torch.float32).add(1.0).reshape(e, 1, 1, 1).expand(e, 1, 96, 64).clone()


def test_pad_repeat_last_and_zero():
    ex = _examples(3)
    rep = pad_or_trim_examples(ex, 5)
    assert tuple(rep.shape) == (5, 1, 96, 64)
    assert rep[:, 0, 0, 0].tolist() == [1.0, 2.0, 3.0, 3.0, 3.0]
    zero = pad_or_trim_examples(ex, 5, mode="zero")
    assert zero[:, 0, 0, 0].tolist() == [1.0, 2.0, 3.0, 0.0, 0.0]
    assert not zero[3:].any()
    trimmed = pad_or_trim_examples(_examples(7), 5, mode="zero")
    assert trimmed[:, 0, 0, 0].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert pad_or_trim_examples(ex, 3) is not None and pad_or_trim_examples(ex, 0).shape[0] == 0


def test_pad_empty_examples():
    empty = torch.zeros((0, 1, 96, 64))
    with pytest.warns(AudioPaddedWarning):
        out = pad_or_trim_examples(empty, 5, mode="repeat_last")
    assert tuple(out.shape) == (5, 1, 96, 64) and not out.any()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = pad_or_trim_examples(empty, 10, mode="zero")  # AVSS zero-padding is the rule, not a fallback
    assert tuple(out.shape) == (10, 1, 96, 64) and not out.any()
    with pytest.raises(ValueError, match="mode"):
        pad_or_trim_examples(empty, 5, mode="reflect")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_frames"):
        pad_or_trim_examples(empty, -1)


def test_front_end_version_is_a_string():
    assert FRONT_END_VERSION == "vggish-logmel-v1"
