"""Which audio goes with which video frame: sample spans of frame windows and the VGGish example of each frame.

Frames are sampled at ``fps`` windows per second; sampled frame ``k`` stands for window ``k``, the interval
``[k / fps, (k + 1) / fps)`` after the first frame, and sample 0 of the 16 kHz mono track is the start of window 0.
Each frame gets one VGGish log-mel example (96 STFT frames of 10 ms, i.e. 15,600 samples = 0.975 s) by one of two
rules (:data:`AudioAlign`):

- ``"window"``: the example is **centred on the frame's window**: it starts at STFT frame
  ``j_k = floor(((k + 0.5) / fps * 16000 - 7800) / 160 + 0.5)``, clamped to ``[0, F - 96]`` where ``F`` is the number
  of STFT frames of the whole track. At 1 fps that is samples ``[16000 k + 160, 16000 k + 15760)``, inside second
  ``k``. Windows shorter than 0.975 s (``fps > 1.025``) get overlapping examples; near the end of the track the clamp
  shifts the example back so it never reads past the audio. A track shorter than 0.975 s is padded with silence to
  one example. This rule does not depend on where clips start, so the clip length never changes what a frame hears.
- ``"clip"``: the layout of the benchmark readers (AVSBench preprocessing): the audio of a clip's windows is cut into
  consecutive examples from the clip's start (example ``i`` starts at ``0.96 i`` s), and a clip with fewer examples
  than frames repeats its last one. At 1 fps and the training clip length this is exactly what a model saw in
  training; example ``i`` then drifts ahead of window ``i`` by ``0.04 i`` s.

Every function here is pure: arrays in, arrays out, no file or device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from avseg.audio.logmel import (
    EXAMPLE_FRAMES,
    HOP_LENGTH,
    NUM_MEL_BINS,
    SAMPLE_RATE,
    frame_count,
    log_mel_spectrogram,
    min_samples_for,
    pad_or_trim_examples,
    waveform_to_examples,
)
from avseg.media.audio import samples_for

__all__ = [
    "EXAMPLE_SAMPLES",
    "AudioAlign",
    "clip_audio_examples",
    "clip_waveform",
    "frame_audio_examples",
    "window_audio_examples",
    "window_example_starts",
    "window_index",
    "window_span",
]

AudioAlign = Literal["window", "clip"]
"""How a frame's VGGish example is placed: centred on its window, or the benchmark readers' clip layout."""

EXAMPLE_SAMPLES = min_samples_for(1)
"""Samples one VGGish example spans: 96 STFT frames of 400 samples with a 160-sample hop (15,600, 0.975 s)."""

# Frame times come from rationals such as 30000/1001 fps; a time that is a window boundary up to float rounding belongs
# to the window it starts.
_BOUNDARY_SLACK = 1e-9


def window_span(start: int, stop: int, fps: float) -> tuple[int, int]:
    """The 16 kHz samples ``[lo, hi)`` of windows ``[start, stop)`` (each end rounded to the nearest sample)."""
    return samples_for(start / fps, SAMPLE_RATE), samples_for(stop / fps, SAMPLE_RATE)


def window_index(times: Sequence[float] | np.ndarray, fps: float, num_windows: int) -> np.ndarray:
    """The window holding each time, for showing ``num_windows`` sampled frames at another frame rate.

    Args:
        times: seconds after the start of window 0.
        fps: the sampling rate of the windows.
        num_windows: how many windows there are; earlier and later times get the first and the last one.

    Returns:
        int64 ``(n,)`` window indices in ``[0, num_windows - 1]``.
    """
    index = np.floor(np.asarray(times, dtype=np.float64) * fps + _BOUNDARY_SLACK).astype(np.int64)
    return np.clip(index, 0, max(num_windows - 1, 0))


def window_example_starts(frame_indices: Sequence[int] | np.ndarray, fps: float, num_samples: int) -> np.ndarray:
    """The STFT frame at which each sampled frame's ``"window"`` example starts (see the module docstring).

    Args:
        frame_indices: sampled-frame (window) indices ``k``.
        fps: sampling rate (windows per second).
        num_samples: length of the 16 kHz track (sample 0 = start of window 0); a shorter track than one example is
            taken as padded to one.

    Returns:
        int64 ``(n,)`` start frames ``j_k``; the example spans samples ``[160 j_k, 160 j_k + 15600)``.
    """
    k = np.asarray(frame_indices, dtype=np.float64)
    centres = (k + 0.5) / fps * SAMPLE_RATE  # window centres in samples
    starts = np.floor((centres - EXAMPLE_SAMPLES / 2) / HOP_LENGTH + 0.5).astype(np.int64)
    last = frame_count(max(num_samples, EXAMPLE_SAMPLES)) - EXAMPLE_FRAMES
    return np.clip(starts, 0, last)


def window_audio_examples(wave: np.ndarray | Tensor, fps: float, frame_indices: Sequence[int] | range) -> Tensor:
    """VGGish examples centred on the windows of the given sampled frames (``audio_align="window"``).

    Only the span of audio those frames need is analysed, so a clip of a long video costs a clip's worth of FFTs; the
    STFT grid is the whole track's (hop 160 from sample 0), so a frame's example does not depend on its clip.

    Args:
        wave: float ``(N,)`` 16 kHz mono track whose sample 0 is the start of window 0.
        fps: sampling rate of the frames.
        frame_indices: the frames (window indices) to compute examples for.

    Returns:
        float32 ``(n, 1, 96, 64)``, one example per index.
    """
    wave = wave.detach().cpu().float() if isinstance(wave, Tensor) else torch.from_numpy(np.asarray(wave, np.float32))
    if wave.ndim != 1:
        raise ValueError(f"window_audio_examples: wave must be mono (N,), got shape {tuple(wave.shape)}")
    if wave.numel() < EXAMPLE_SAMPLES:
        wave = F.pad(wave, (0, EXAMPLE_SAMPLES - wave.numel()))  # silence up to one example
    starts = torch.from_numpy(window_example_starts(list(frame_indices), fps, wave.numel()))
    if starts.numel() == 0:
        return torch.zeros((0, 1, EXAMPLE_FRAMES, NUM_MEL_BINS))
    first, last = int(starts.min()), int(starts.max())
    segment = wave[first * HOP_LENGTH : last * HOP_LENGTH + EXAMPLE_SAMPLES]
    log_mel = log_mel_spectrogram(segment)  # (frames, 64) on the track's STFT grid, shifted by `first`
    rows = (starts - first)[:, None] + torch.arange(EXAMPLE_FRAMES)  # (n, 96)
    return log_mel[rows][:, None].float()  # (n, 1, 96, 64)


def clip_audio_examples(wave: np.ndarray | Tensor, fps: float, start: int, stop: int) -> Tensor:
    """Benchmark-reader examples for the clip of windows ``[start, stop)`` (``audio_align="clip"``).

    The clip's audio ``[start / fps, stop / fps)`` is cut into consecutive 0.96 s examples from its beginning and
    padded by repeating the last one (AVSBench S4/MS3 preprocessing; ``avseg.data.base.load_audio_features``).

    Returns:
        float32 ``(stop - start, 1, 96, 64)``.
    """
    array = wave.detach().cpu().numpy() if isinstance(wave, Tensor) else np.asarray(wave, dtype=np.float32)
    lo, hi = window_span(start, stop, fps)
    examples = waveform_to_examples(np.ascontiguousarray(array[lo:hi], dtype=np.float32), SAMPLE_RATE)
    return pad_or_trim_examples(examples, stop - start, mode="repeat_last").float()


def frame_audio_examples(
    wave: np.ndarray | Tensor, fps: float, start: int, stop: int, align: AudioAlign = "window"
) -> Tensor:
    """The examples of sampled frames ``[start, stop)`` under rule ``align`` (module docstring).

    Returns:
        float32 ``(stop - start, 1, 96, 64)``.
    """
    if align == "window":
        return window_audio_examples(wave, fps, range(start, stop))
    if align == "clip":
        return clip_audio_examples(wave, fps, start, stop)
    raise ValueError(f"audio align must be 'window' or 'clip', got {align!r}")


def clip_waveform(wave: np.ndarray | Tensor, fps: float, start: int, stop: int, length: int) -> Tensor:
    """The track of windows ``[start, stop)`` as the wave of a clip of ``length`` windows, zero past ``stop``.

    Every clip of a batch then has the same wave length, also the last, shorter one.

    Returns:
        float32 ``(samples of length windows,)``.
    """
    if stop - start > length:
        raise ValueError(f"clip_waveform: windows [{start}, {stop}) do not fit a clip of {length}")
    array = wave.detach().cpu().numpy() if isinstance(wave, Tensor) else np.asarray(wave, dtype=np.float32)
    lo, hi = window_span(start, stop, fps)
    span = samples_for(length / fps, SAMPLE_RATE)
    segment = array[lo : min(hi, lo + span)]
    out = torch.zeros(span, dtype=torch.float32)
    out[: segment.size] = torch.from_numpy(np.ascontiguousarray(segment, dtype=np.float32))
    return out
