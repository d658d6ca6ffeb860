"""Audio decoding: any sound file or the audio track of any container, as float32 waves at a chosen rate.

``read_audio`` reads WAV/FLAC/OGG/MP3 with soundfile (libsndfile) and everything else (mp4, mkv, webm, mov, m4a, ...)
with PyAV; a file soundfile refuses is retried with PyAV before it is called corrupt. Samples are scaled to
``[-1, 1]``, channels are averaged for mono, and the rate is changed with :func:`avseg.media.resample.resample` (scipy
polyphase), so every reader in avseg hears the same 16 kHz mono signal that VGGish-style front ends expect.

PyAV does not trim AAC encoder priming and padding, so a decoded AAC track is typically a few tens of milliseconds
longer than the audio that was encoded. Callers that need an exact length use
:func:`fit_audio_length`, which pads or trims and warns only when the padding is larger than such codec noise.
"""

from __future__ import annotations

import math
import warnings
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile

from avseg.errors import AudioPaddedWarning, CorruptMediaError, MediaError, MissingFileError
from avseg.media.resample import resample

__all__ = ["SAMPLE_RATE", "NoAudioStreamError", "fit_audio_length", "frame_to_float", "read_audio"]

SAMPLE_RATE = 16_000
"""Rate (Hz) of every audio front end in the AVS literature (VGGish, BEATs, HTS-AT after resampling)."""

# Formats libsndfile decodes itself; anything else, or a file libsndfile refuses, goes through PyAV.
_SOUNDFILE_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif"})

# Full-scale divisor and zero offset of each PyAV sample format (planar variants end in "p").
_INT_SCALE = {"u8": (128.0, 128.0), "s16": (32768.0, 0.0), "s32": (2.0**31, 0.0), "s64": (2.0**63, 0.0)}


class NoAudioStreamError(MediaError):
    """The container opens but holds no audio stream."""


def read_audio(path: str | Path, sample_rate: int | None = SAMPLE_RATE, *, mono: bool = True) -> tuple[np.ndarray, int]:
    """Decode the whole audio of a file.

    Args:
        path: a sound file (wav, flac, ogg, mp3) or any container with an audio stream (mp4, mkv, webm, mov, m4a);
            the first audio stream is used.
        sample_rate: rate (Hz) to resample to; ``None`` keeps the file's native rate.
        mono: average the channels into one.

    Returns:
        ``(wave, rate)``: ``wave`` is float32 in ``[-1, 1]``, shaped ``(N,)`` when ``mono`` else ``(C, N)``
        (``(1, N)`` for a mono file); ``rate`` is ``sample_rate``, or the native rate when that is ``None``.

    Raises:
        MissingFileError: ``path`` does not exist.
        CorruptMediaError: the file cannot be opened or decoded.
        NoAudioStreamError: the container has no audio stream (e.g. a silent mp4).
        ValueError: ``sample_rate`` is not positive.
    """
    path = Path(path)
    if sample_rate is not None and sample_rate <= 0:
        raise ValueError(f"read_audio: sample_rate must be positive or None, got {sample_rate}")
    if not path.is_file():
        raise MissingFileError(path, "audio file")
    wave: np.ndarray | None = None
    rate = 0
    soundfile_error: Exception | None = None
    if path.suffix.lower() in _SOUNDFILE_SUFFIXES:
        try:
            data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
            wave = np.ascontiguousarray(data.T)  # (N, C) -> (C, N)
        except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
            soundfile_error = err
    if wave is None:
        container = open_container(path, also_tried=soundfile_error)
        try:
            if not container.streams.audio:
                raise NoAudioStreamError(path, "no audio stream in the container")
            wave, rate, _ = decode_audio_stream(container, path, mono=False)
        finally:
            container.close()
        if wave.shape[1] == 0:
            # FFmpeg opens some junk files by their suffix alone and then decodes nothing from them.
            raise CorruptMediaError(path, "the audio stream holds no decodable samples")
    if mono:
        wave = wave.mean(axis=0, dtype=np.float32)
    if sample_rate is not None and sample_rate != rate:
        wave = resample(wave, rate, sample_rate)
        rate = sample_rate
    # Float files may exceed full scale, and polyphase filtering overshoots near it; the contract is [-1, 1].
    return np.clip(wave, -1.0, 1.0).astype(np.float32, copy=False), int(rate)


def fit_audio_length(
    wave: np.ndarray,
    num_samples: int,
    *,
    source: str | Path | None = None,
    tolerance_s: float = 0.1,
    sample_rate: int = SAMPLE_RATE,
) -> np.ndarray:
    """Pad with zeros (silence) or trim the last axis to exactly ``num_samples``.

    Args:
        wave: ``(..., N)`` samples.
        num_samples: wanted length of the last axis.
        source: file the audio came from, named in the warning.
        tolerance_s: padding up to this many seconds is silent (AAC priming and padding make a few-ms mismatch
            normal); more raises an :class:`~avseg.errors.AudioPaddedWarning`.
        sample_rate: rate of ``wave`` in Hz, to convert ``tolerance_s`` to samples.

    Returns:
        ``(..., num_samples)`` array of the input dtype.
    """
    if num_samples < 0:
        raise ValueError(f"fit_audio_length: num_samples must be >= 0, got {num_samples}")
    if sample_rate <= 0:
        raise ValueError(f"fit_audio_length: sample_rate must be positive, got {sample_rate}")
    wave = np.asarray(wave)
    have = wave.shape[-1]
    if have >= num_samples:
        return wave[..., :num_samples]
    missing = num_samples - have
    if missing > tolerance_s * sample_rate:
        prefix = f"{Path(source)}: " if source is not None else ""
        warnings.warn(
            f"{prefix}audio is {have / sample_rate:.3f} s long, padded with {missing / sample_rate:.3f} s of silence "
            f"to {num_samples / sample_rate:.3f} s",
            AudioPaddedWarning,
            stacklevel=2,
        )
    pad = [(0, 0)] * (wave.ndim - 1) + [(0, missing)]
    return np.pad(wave, pad)


def open_container(path: Path, *, also_tried: Exception | None = None) -> av.container.InputContainer:
    """Open ``path`` with PyAV for reading, turning every failure into :class:`CorruptMediaError`.

    Args:
        path: an existing file.
        also_tried: an earlier reader's error, added to the message.
    """
    try:
        return av.open(str(path), mode="r")
    except (av.error.FFmpegError, OSError, ValueError, UnicodeDecodeError) as err:
        reason = f"cannot open as a media container: {err}"
        if also_tried is not None:
            reason += f" (soundfile: {also_tried})"
        raise CorruptMediaError(path, reason) from err


def decode_audio_stream(
    container: av.container.InputContainer, path: Path, *, mono: bool, until_s: float | None = None
) -> tuple[np.ndarray, int, float]:
    """Decode the first audio stream of an open container at its native rate.

    Args:
        container: container opened by :func:`open_container`, with at least one audio stream.
        path: the file, for error messages.
        mono: average the channels as each chunk is decoded (halves the memory of stereo tracks).
        until_s: stop once the decoded audio reaches this presentation time (s); ``None`` decodes everything.

    Returns:
        ``(wave, rate, start_s)``: float32 ``(C, N)`` (``C = 1`` when ``mono``), the native rate in Hz, and the
        presentation time of the first decoded sample (0.0 when the stream gives none).
    """
    stream = container.streams.audio[0]
    chunks: list[np.ndarray] = []
    rate = 0
    channels = 0
    start_s: float | None = None
    end_s = 0.0
    total = 0
    try:
        for frame in container.decode(stream):
            if frame.samples == 0:
                continue
            if rate == 0:
                rate, channels = frame.sample_rate, frame.layout.nb_channels
            elif frame.sample_rate != rate or (not mono and frame.layout.nb_channels != channels):
                raise CorruptMediaError(
                    path,
                    f"audio changes format mid-stream at t={end_s:.3f} s "
                    f"({rate} Hz/{channels} ch -> {frame.sample_rate} Hz/{frame.layout.nb_channels} ch)",
                )
            chunk = frame_to_float(frame, path)  # (C, n)
            chunks.append(chunk.mean(axis=0, keepdims=True, dtype=np.float32) if mono else chunk)
            time_s = _frame_time(frame, stream.time_base)
            if start_s is None:
                start_s = time_s if time_s is not None else 0.0
            total += frame.samples
            end_s = max(start_s + total / rate, time_s + frame.samples / rate if time_s is not None else 0.0)
            if until_s is not None and end_s >= until_s:
                break
    except av.error.FFmpegError as err:
        raise CorruptMediaError(path, f"audio decode failed near t={end_s:.3f} s: {err}") from err
    if rate == 0:
        # An audio stream without decodable samples (e.g. declared but empty): no native rate to report either.
        rate = stream.codec_context.sample_rate or stream.rate or SAMPLE_RATE
        channels = 1 if mono else max(1, stream.codec_context.channels or 1)
        return np.zeros((channels, 0), np.float32), int(rate), 0.0
    return np.concatenate(chunks, axis=1), int(rate), float(start_s or 0.0)


def _frame_time(frame: av.AudioFrame, stream_time_base: Fraction | None) -> float | None:
    if frame.pts is None:
        return None
    time_base = frame.time_base or stream_time_base
    return float(frame.pts * time_base) if time_base is not None else None


def frame_to_float(frame: av.AudioFrame, path: Path) -> np.ndarray:
    """One decoded audio frame as float32 ``(C, n)`` in ``[-1, 1]`` (before clipping), whatever its sample format."""
    array = frame.to_ndarray()
    channels = frame.layout.nb_channels
    if not frame.format.is_planar:
        array = array.reshape(-1, channels).T  # packed (1, n*C) -> (C, n)
    name = frame.format.name.rstrip("p")
    if name in _INT_SCALE:
        scale, offset = _INT_SCALE[name]
        return ((array.astype(np.float64) - offset) / scale).astype(np.float32)
    if name in ("flt", "dbl"):
        return array.astype(np.float32, copy=False)
    raise CorruptMediaError(path, f"unsupported audio sample format {frame.format.name!r}")


def samples_for(duration_s: float, rate: int) -> int:
    """Number of samples covering ``duration_s`` seconds at ``rate`` Hz (rounded to nearest, never negative)."""
    return max(0, math.floor(duration_s * rate + 0.5))
