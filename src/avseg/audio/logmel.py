"""The VGGish log-mel front end, in torch.

This is the input pipeline behind every AVSBench / Ref-AVS audio feature: Google's VGGish
(``tensorflow/models:research/audioset/vggish``, ``vggish_input.py`` + ``mel_features.py``) and its PyTorch port
(``harritaylor/torchvggish``) compute it in numpy; here it is written in torch so that it runs batched on any device.
The recipe (torchvggish's ``waveform_to_examples`` and Google's ``mel_features.py``):

1. average multichannel audio to mono, resample to 16 kHz;
2. frame with a 400-sample (25 ms) periodic Hann window and a 160-sample (10 ms) hop, without padding, so a wave of
   ``N`` samples gives ``1 + floor((N - 400) / 160)`` frames (0 when ``N < 400``);
3. magnitude (not power) of a 512-point real FFT: 257 bins from 0 to 8000 Hz;
4. 64 mel bands from 125 to 7500 Hz, triangles built in HTK-mel space (``mel = 1127 ln(1 + f / 700)``) with peak 1
   and no area normalisation, the DC row zeroed;
5. ``log(mel + 0.01)`` (natural log);
6. 96-frame (0.96 s) non-overlapping examples; a trailing partial example is dropped, so audio shorter than 0.96 s
   gives no example at all (tensorflow/models#9585) and dataset code must pad (:func:`pad_or_trim_examples`).

Resampling uses scipy's polyphase filter (the filter of :func:`avseg.media.resample.resample`, run in float64), not
resampy as the reference does; the two differ by at most ~0.16 in log-mel. For audio already at
16 kHz nothing differs from the reference but float rounding: the spectrum is computed in float64, so the float32
output stays within ~3e-5 of a float64 reference (tests/audio/test_logmel.py).
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from avseg.errors import AudioPaddedWarning, ShapeError

__all__ = [
    "EXAMPLE_FRAMES",
    "FFT_LENGTH",
    "FRONT_END_VERSION",
    "HOP_LENGTH",
    "LOG_OFFSET",
    "MEL_MAX_HZ",
    "MEL_MIN_HZ",
    "NUM_MEL_BINS",
    "SAMPLE_RATE",
    "WINDOW_LENGTH",
    "PadMode",
    "example_count",
    "frame_count",
    "hertz_to_mel",
    "log_mel_spectrogram",
    "log_mel_to_examples",
    "mel_matrix",
    "min_samples_for",
    "pad_or_trim_examples",
    "to_mono_16k",
    "waveform_to_examples",
]

# Constants of the VGGish recipe (vggish_params.py). They are fixed by the pretrained network, not tunable.
SAMPLE_RATE = 16_000
WINDOW_LENGTH = 400  # round(0.025 s * 16 kHz)
HOP_LENGTH = 160  # round(0.010 s * 16 kHz)
FFT_LENGTH = 512  # 2 ** ceil(log2(WINDOW_LENGTH))
NUM_MEL_BINS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96  # 0.96 s examples with zero overlap

# Part of every cache key (features.FeatureCache): bump it whenever a change here alters the numbers produced.
FRONT_END_VERSION = "vggish-logmel-v1"

# HTK mel scale constants, as in mel_features.py.
_MEL_BREAK_FREQUENCY_HERTZ = 700.0
_MEL_HIGH_FREQUENCY_Q = 1127.0

PadMode = Literal["repeat_last", "zero"]


def hertz_to_mel(frequencies_hertz: Tensor) -> Tensor:
    """Convert frequencies to the HTK mel scale, ``1127 * ln(1 + f / 700)``.

    Args:
        frequencies_hertz: any-shaped tensor of frequencies in Hz.

    Returns:
        A tensor of the same shape, in mel.
    """
    return _MEL_HIGH_FREQUENCY_Q * torch.log1p(frequencies_hertz / _MEL_BREAK_FREQUENCY_HERTZ)


def mel_matrix(
    num_mel_bins: int = NUM_MEL_BINS,
    num_spectrogram_bins: int = FFT_LENGTH // 2 + 1,
    sample_rate: int = SAMPLE_RATE,
    lower_edge_hertz: float = MEL_MIN_HZ,
    upper_edge_hertz: float = MEL_MAX_HZ,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Build the VGGish mel weight matrix that maps linear FFT bins to mel bands.

    The triangles are evaluated in mel space: ``num_mel_bins + 2`` band edges are spaced evenly in mel between
    ``mel(lower_edge_hertz)`` and ``mel(upper_edge_hertz)``, each FFT bin's centre frequency is converted to mel, and
    band ``i`` weighs a bin by ``max(0, min(rising, falling))`` with peak 1 at edge ``i + 1``. The DC row is zeroed,
    following HTK, which excludes the DC bin. Computed in float64 and cast to ``dtype`` at the end.

    Args:
        num_mel_bins: number of mel bands (columns).
        num_spectrogram_bins: number of one-sided FFT bins (rows), ``fft_length // 2 + 1``.
        sample_rate: sample rate of the analysed signal in Hz; bins span 0 to ``sample_rate / 2``.
        lower_edge_hertz: lower edge of the lowest band.
        upper_edge_hertz: upper edge of the highest band.
        dtype: dtype of the returned matrix.
        device: device of the returned matrix.

    Returns:
        ``(num_spectrogram_bins, num_mel_bins)`` weights; ``spectrogram @ mel_matrix()`` gives mel energies.

    Raises:
        ValueError: band edges that are negative, inverted, or above the Nyquist frequency.
    """
    nyquist_hertz = sample_rate / 2.0
    if lower_edge_hertz < 0.0:
        raise ValueError(f"lower_edge_hertz must be >= 0, got {lower_edge_hertz}")
    if lower_edge_hertz >= upper_edge_hertz:
        raise ValueError(f"lower_edge_hertz {lower_edge_hertz} must be below upper_edge_hertz {upper_edge_hertz}")
    if upper_edge_hertz > nyquist_hertz:
        raise ValueError(f"upper_edge_hertz {upper_edge_hertz} is above the Nyquist frequency {nyquist_hertz}")
    if num_mel_bins < 1 or num_spectrogram_bins < 2:
        raise ValueError(
            f"need num_mel_bins >= 1 and num_spectrogram_bins >= 2, got {num_mel_bins}, {num_spectrogram_bins}"
        )

    f64 = torch.float64
    bins_mel = hertz_to_mel(torch.linspace(0.0, nyquist_hertz, num_spectrogram_bins, dtype=f64))  # (S,)
    edges_mel = torch.linspace(
        float(hertz_to_mel(torch.tensor(lower_edge_hertz, dtype=f64))),
        float(hertz_to_mel(torch.tensor(upper_edge_hertz, dtype=f64))),
        num_mel_bins + 2,
        dtype=f64,
    )  # (M + 2,)
    lower, center, upper = edges_mel[:-2], edges_mel[1:-1], edges_mel[2:]  # (M,) each
    rising = (bins_mel[:, None] - lower) / (center - lower)  # (S, M)
    falling = (upper - bins_mel[:, None]) / (upper - center)  # (S, M)
    weights = torch.clamp(torch.minimum(rising, falling), min=0.0)
    weights[0, :] = 0.0
    return weights.to(dtype=dtype, device=device)


def frame_count(num_samples: int) -> int:
    """Number of 25 ms STFT frames in ``num_samples`` samples at 16 kHz: ``1 + floor((N - 400) / 160)``, at least 0."""
    if num_samples < WINDOW_LENGTH:
        return 0
    return 1 + (num_samples - WINDOW_LENGTH) // HOP_LENGTH


def example_count(num_samples: int) -> int:
    """Number of complete 96-frame examples in ``num_samples`` samples at 16 kHz (the partial tail is dropped)."""
    return frame_count(num_samples) // EXAMPLE_FRAMES


def _compute_dtype(device: torch.device) -> torch.dtype:
    # float32 FFT round-off leaks ~1e-5 of a loud bin's magnitude into quiet bins, and log(mel + 0.01) amplifies it
    # 100-fold (errors up to ~5e-4 on a chirp), so the spectrum is computed in float64 wherever the device has it.
    return torch.float32 if device.type == "mps" else torch.float64


def log_mel_spectrogram(wave: Tensor) -> Tensor:
    """Compute the VGGish log-mel spectrogram of 16 kHz audio.

    The spectrum is computed in float64 (float32 on devices without float64, such as Apple MPS) and returned as
    float32, or float64 for float64 input.

    Args:
        wave: ``(..., N)`` samples at 16 kHz, any device; leading axes are a batch.

    Returns:
        ``(..., frames, 64)`` ``log(mel + 0.01)`` with ``frames = 1 + floor((N - 400) / 160)``, or 0 frames when
        ``N < 400``.
    """
    if wave.ndim < 1:
        raise ShapeError(f"wave must have a sample axis, got a scalar tensor of shape {tuple(wave.shape)}")
    out_dtype = torch.float64 if wave.dtype == torch.float64 else torch.float32
    work = _compute_dtype(wave.device)
    frames = frame_count(wave.shape[-1])
    if frames == 0:
        return torch.zeros((*wave.shape[:-1], 0, NUM_MEL_BINS), dtype=out_dtype, device=wave.device)
    wave = wave.to(work)
    mel = mel_matrix(dtype=work, device=wave.device)  # (257, 64)
    window = torch.hann_window(WINDOW_LENGTH, periodic=True, dtype=work, device=wave.device)  # (400,)
    # unfold drops the samples after the last complete frame, exactly like the reference's strided framing.
    framed = wave.unfold(-1, WINDOW_LENGTH, HOP_LENGTH)  # (..., frames, 400)
    magnitude = torch.fft.rfft(framed * window, n=FFT_LENGTH).abs()  # (..., frames, 257)
    return torch.log(magnitude @ mel + LOG_OFFSET).to(out_dtype)  # (..., frames, 64)


def _as_channels_first(wave: np.ndarray | Tensor) -> np.ndarray | Tensor:
    """Check the rank of ``wave`` and return it as ``(C, N)``."""
    if wave.ndim == 1:
        return wave[None]
    if wave.ndim == 2:
        if wave.shape[0] > wave.shape[1]:
            raise ShapeError(
                f"wave must be (N,) or channels-first (C, N), got shape {tuple(wave.shape)} with more channels than "
                "samples; transpose (N, C) audio (as soundfile returns it) first"
            )
        return wave
    raise ShapeError(f"wave must be (N,) or (C, N), got shape {tuple(wave.shape)}")


def _resample_to_16k(mono: np.ndarray, sample_rate: int) -> np.ndarray:
    """Polyphase-resample float64 samples to 16 kHz, filtering in float64, and return float32.

    The same filter as :func:`avseg.media.resample.resample` (scipy's ``resample_poly`` with its default Kaiser
    window), but that helper filters in float32, which moves quiet log-mel bands by up to ~3e-4; in float64 the
    front end stays within 1e-4 of a float64 reference.
    """
    if sample_rate == SAMPLE_RATE:
        return mono.astype(np.float32)
    from scipy.signal import resample_poly  # scipy.signal takes ~0.3 s to import; only resampling needs it

    g = math.gcd(int(sample_rate), SAMPLE_RATE)
    return resample_poly(mono, SAMPLE_RATE // g, int(sample_rate) // g).astype(np.float32)


def to_mono_16k(wave: np.ndarray | Tensor, sample_rate: int) -> np.ndarray | Tensor:
    """Average channels to mono and resample to 16 kHz, as the first step of the VGGish recipe.

    This float32 16 kHz mono wave is the canonical input of the front end: :func:`waveform_to_examples` computes
    from it, and the feature cache hashes it. Int16 PCM is scaled by 1/32768, as VGGish's wav reader does. A tensor
    stays on its device when it is already at 16 kHz; otherwise it is resampled on the CPU (scipy) and moved back.

    Args:
        wave: ``(N,)`` mono or ``(C, N)`` channels-first samples; numpy array or tensor.
        sample_rate: rate of ``wave`` in Hz.

    Returns:
        ``(M,)`` float32 samples at 16 kHz, ``M = ceil(N * 16000 / sample_rate)``, of the same kind (numpy or torch)
        as ``wave``.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    wave = _as_channels_first(wave)
    if isinstance(wave, Tensor):
        if wave.dtype == torch.int16:
            wave = wave.to(torch.float64) / 32768.0
        elif not torch.is_floating_point(wave):
            raise ShapeError(f"wave must be float or int16 samples, got dtype {wave.dtype}")
        if sample_rate == SAMPLE_RATE:
            return wave.to(_compute_dtype(wave.device)).mean(dim=0).to(torch.float32)  # (N,)
        mono = wave.detach().to(device="cpu", dtype=torch.float64).mean(dim=0).numpy()
        return torch.from_numpy(_resample_to_16k(mono, sample_rate)).to(wave.device)
    wave = np.asarray(wave)
    if wave.dtype == np.int16:
        wave = wave.astype(np.float64) / 32768.0
    elif not np.issubdtype(wave.dtype, np.floating):
        raise ShapeError(f"wave must be float or int16 samples, got dtype {wave.dtype}")
    return _resample_to_16k(wave.astype(np.float64).mean(axis=0), sample_rate)  # (M,)


def waveform_to_examples(wave: np.ndarray | Tensor, sample_rate: int) -> Tensor:
    """Turn a waveform into VGGish input examples.

    Args:
        wave: ``(N,)`` mono or ``(C, N)`` channels-first samples at ``sample_rate``, float (int16 PCM is scaled by
            1/32768). Channels are averaged to mono; other rates are resampled to 16 kHz.
        sample_rate: rate of ``wave`` in Hz.

    Returns:
        ``(E, 1, 96, 64)`` float32 log-mel examples (axes: example, channel, frame, mel band) on the device of
        ``wave`` (CPU for numpy input). ``E = floor(frames / 96)``; audio shorter than one example (0.96 s, 15,600
        samples at 16 kHz) gives ``E = 0``: pad with :func:`pad_or_trim_examples`.
    """
    mono = to_mono_16k(wave, sample_rate)
    if isinstance(mono, np.ndarray):
        mono = torch.from_numpy(np.ascontiguousarray(mono))
    return log_mel_to_examples(log_mel_spectrogram(mono))  # (E, 1, 96, 64)


def log_mel_to_examples(log_mel: Tensor) -> Tensor:
    """Cut log-mel frames into non-overlapping 96-frame examples, dropping the partial tail.

    Args:
        log_mel: ``(..., frames, 64)`` from :func:`log_mel_spectrogram`; leading axes are a batch (equal-length
            clips embedded together).

    Returns:
        ``(..., E, 1, 96, 64)`` with ``E = floor(frames / 96)``.
    """
    e = log_mel.shape[-2] // EXAMPLE_FRAMES
    batch = log_mel.shape[:-2]
    kept = log_mel[..., : e * EXAMPLE_FRAMES, :]  # (..., E*96, 64)
    return kept.reshape(*batch, e, 1, EXAMPLE_FRAMES, log_mel.shape[-1])  # (..., E, 1, 96, 64)


def pad_or_trim_examples(examples: Tensor, num_frames: int, mode: PadMode = "repeat_last") -> Tensor:
    """Give a clip exactly one example per video frame (one per second).

    AVSBench v1 (S4/MS3) preprocessing repeats the last example up to 5 (``preprocess_s4.py``); AVSS zero-pads to 10
    (``avss/torchvggish/vggish.py::_preprocess``). Extra examples are dropped from the end in both modes.

    Args:
        examples: ``(E, 1, 96, 64)`` examples from :func:`waveform_to_examples` (any trailing shape is accepted).
        num_frames: wanted number of examples ``T``.
        mode: ``"repeat_last"`` repeats the last example; ``"zero"`` appends all-zero examples. With
            ``"repeat_last"`` and no example at all, zeros are used and an :class:`AudioPaddedWarning` is issued.

    Returns:
        ``(T, 1, 96, 64)`` examples on the device and in the dtype of ``examples``.
    """
    if mode not in ("repeat_last", "zero"):
        raise ValueError(f"mode must be 'repeat_last' or 'zero', got {mode!r}")
    if num_frames < 0:
        raise ValueError(f"num_frames must be >= 0, got {num_frames}")
    if examples.ndim < 1:
        raise ShapeError(f"examples must be (E, 1, 96, 64), got shape {tuple(examples.shape)}")
    e = examples.shape[0]
    if e >= num_frames:
        return examples[:num_frames]
    missing = num_frames - e
    if mode == "repeat_last" and e > 0:
        pad = examples[-1:].expand(missing, *examples.shape[1:])
    else:
        if mode == "repeat_last":
            warnings.warn(
                f"no complete 0.96 s audio example to repeat; padding with {missing} all-zero examples",
                AudioPaddedWarning,
                stacklevel=2,
            )
        pad = examples.new_zeros((missing, *examples.shape[1:]))
    return torch.cat([examples, pad], dim=0)


def min_samples_for(num_examples: int) -> int:
    """Fewest 16 kHz samples that give ``num_examples`` complete examples (``400 + 160 * (96 E - 1)``)."""
    if num_examples <= 0:
        return 0
    return WINDOW_LENGTH + HOP_LENGTH * (EXAMPLE_FRAMES * num_examples - 1)
