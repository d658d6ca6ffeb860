"""Command functions for the VGGish audio front end (``avseg logmel``, ``avseg embed``).

Plain typed functions: the CLI (:mod:`avseg.cli`) builds its parser from their signatures and docstrings. They raise
avseg's typed errors (:class:`~avseg.errors.MissingFileError`, :class:`~avseg.errors.CorruptMediaError`,
:class:`~avseg.audio.vggish.CheckpointError`, ...) whose one-line messages name the file at fault; the CLI prints them
and exits with status 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import numpy as np

from avseg.errors import MissingFileError
from avseg.fileio import check_output_dir, check_output_file

__all__ = ["embed", "logmel"]


def _read_wave(path: Path) -> tuple[np.ndarray, int]:
    """Decode the audio of a wav or video file to 16 kHz mono float32."""
    from avseg.audio.logmel import SAMPLE_RATE
    from avseg.media.audio import read_audio  # PyAV is heavy: import it only when a command runs

    if not path.is_file():
        raise MissingFileError(path, "input audio or video file")
    return read_audio(path, SAMPLE_RATE, mono=True)


def logmel(input: Path, *, out: Path) -> int:
    """Compute the VGGish log-mel examples of a wav or video file and save them as .npy.

    Args:
        input: a wav file or a video with an audio track; decoded to 16 kHz mono.
        out: the .npy file to write: float32 array (N, 96, 64), one 0.96 s example per row (frame, mel band).

    Returns:
        0 on success.
    """
    from avseg.audio.features import save_npy_atomic
    from avseg.audio.logmel import waveform_to_examples

    input, out = Path(input), Path(out)
    check_output_file(out, arg="--out", inputs=[input])
    wave, sample_rate = _read_wave(input)
    examples = waveform_to_examples(wave, sample_rate)[:, 0]  # (N, 96, 64)
    save_npy_atomic(out, examples.numpy().astype(np.float32))
    duration = wave.shape[-1] / float(sample_rate)
    note = " (shorter than one 0.96 s example)" if examples.shape[0] == 0 else ""
    print(f"{input}: {duration:.2f} s of audio -> {examples.shape[0]} log-mel examples{note} -> {out}")
    return 0


def embed(
    input: Path,
    *,
    weights: Path,
    out: Path,
    pca_params: Optional[Path] = None,  # noqa: UP045 - the CLI generator reads Optional[...]
    frames: Optional[int] = None,  # noqa: UP045
    cache_dir: Optional[Path] = None,  # noqa: UP045
    pad: Literal["repeat_last", "zero"] = "repeat_last",
) -> int:
    """Compute per-second VGGish embeddings of a wav or video file and save them as .npy.

    Args:
        input: a wav file or a video with an audio track; decoded to 16 kHz mono.
        weights: the VGGish weights, vggish-10086976.pth (the torchvggish port, as distributed with AVSBench).
        out: the .npy file to write: float32 array (T, 128).
        pca_params: vggish_pca_params-970ea276.pth (or vggish_pca_params.npz) to apply the AudioSet PCA and 8-bit
            quantisation; AVSBench does not.
        frames: pad or trim to this many embeddings (the clip's frame count at 1 fps, e.g. 5 for AVSBench v1, 10 for
            AVSS); default: one per complete 0.96 s of audio.
        cache_dir: reuse and store embeddings in this feature cache folder.
        pad: how missing seconds are filled when --frames asks for more than the audio holds: repeat_last (AVSBench
            S4/MS3) or zero (AVSS).

    Returns:
        0 on success.
    """
    from avseg.audio.features import FeatureCache, audio_embeddings, save_npy_atomic
    from avseg.audio.vggish import load_vggish

    input, weights, out = Path(input), Path(weights), Path(out)
    if frames is not None and frames < 0:
        raise ValueError(f"--frames must be >= 0, got {frames}")
    if not weights.is_file():
        raise MissingFileError(weights, "VGGish weights file")
    if pca_params is not None and not Path(pca_params).is_file():
        raise MissingFileError(pca_params, "VGGish PCA parameter file")
    check_output_file(out, arg="--out", inputs=[input, weights, *([pca_params] if pca_params is not None else [])])
    if cache_dir is not None:
        check_output_dir(cache_dir, arg="--cache-dir")
    wave, sample_rate = _read_wave(input)
    model = load_vggish(weights, pca_params)
    source = "computed"
    if cache_dir is not None:
        cache = FeatureCache(cache_dir)
        embeddings = cache.get_or_compute(wave, sample_rate, model, frames, pad)
        source = "from cache" if cache.hits else "computed, cached"
    else:
        embeddings = audio_embeddings(wave, sample_rate, model, frames, pad).cpu()
    save_npy_atomic(out, embeddings.numpy().astype(np.float32))
    duration = wave.shape[-1] / float(sample_rate)
    t, d = embeddings.shape
    print(f"{input}: {duration:.2f} s of audio -> {t} x {d} embeddings ({source}) -> {out}")
    return 0
