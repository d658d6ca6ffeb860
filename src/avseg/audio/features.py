"""Per-second VGGish embeddings of a clip, and an on-disk cache for them.

One embedding per video frame ("per second"): the waveform is cut into 0.96 s log-mel examples
(:mod:`avseg.audio.logmel`), padded or trimmed to the clip's number of frames with the benchmark's rule, and embedded
by a frozen :class:`~avseg.audio.vggish.VGGish` in one batched, gradient-free pass.

The cache stores one ``.npy`` file per (audio, front end, weights, padding rule, frame count). Its key is the sha256
of the audio content (mono float32 samples at 16 kHz, so the same sound read from a wav or from a video's AAC track
only shares an entry when the samples are identical), :data:`~avseg.audio.logmel.FRONT_END_VERSION`, a fingerprint of
the weights (PCA included), the pad rule and the frame count. Files are written atomically (temporary file in the same
folder, then ``os.replace``), so concurrent workers and interrupted runs never leave a truncated entry behind, and get
the permissions the umask gives, so a cache shared by a group stays readable when the umask allows it.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from avseg.audio.logmel import (
    FRONT_END_VERSION,
    SAMPLE_RATE,
    PadMode,
    pad_or_trim_examples,
    to_mono_16k,
    waveform_to_examples,
)
from avseg.audio.vggish import EMBEDDING_SIZE
from avseg.errors import AVSegWarning
from avseg.fileio import atomic_file

__all__ = [
    "FeatureCache",
    "audio_embeddings",
    "default_cache_dir",
    "save_npy_atomic",
    "weights_fingerprint",
]


def default_cache_dir() -> Path:
    """The cache root: ``$AVSEG_CACHE`` if set, else ``~/.cache/avseg`` (read at call time, never at import)."""
    env = os.environ.get("AVSEG_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "avseg"


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for tensor in model.parameters():
        return tensor.device, tensor.dtype
    for tensor in model.buffers():
        return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.float32


def audio_embeddings(
    wave: np.ndarray | Tensor,
    sample_rate: int,
    model: nn.Module,
    num_frames: int | None,
    pad_mode: PadMode = "repeat_last",
    *,
    batch_size: int = 64,
) -> Tensor:
    """Embed a clip's audio, one vector per second.

    Args:
        wave: ``(N,)`` mono or ``(C, N)`` channels-first samples at ``sample_rate``.
        sample_rate: rate of ``wave`` in Hz (resampled to 16 kHz when different).
        model: a VGGish (any module mapping ``(B, 1, 96, 64)`` to ``(B, D)``); run in ``no_grad`` on its own device
            and in its own dtype.
        num_frames: the clip's number of frames ``T``; examples are padded or trimmed to it. ``None`` keeps every
            complete example.
        pad_mode: ``"repeat_last"`` (AVSBench S4/MS3) or ``"zero"`` (AVSS); see
            :func:`~avseg.audio.logmel.pad_or_trim_examples`.
        batch_size: examples per forward pass (bounds memory on long recordings).

    Returns:
        ``(T, D)`` float32 embeddings on the model's device (``D = 128`` for VGGish).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device, dtype = _model_device_dtype(model)
    examples = waveform_to_examples(wave, sample_rate)  # (E, 1, 96, 64)
    if num_frames is not None:
        examples = pad_or_trim_examples(examples, num_frames, pad_mode)  # (T, 1, 96, 64)
    if examples.shape[0] == 0:
        return torch.zeros((0, EMBEDDING_SIZE), dtype=torch.float32, device=device)
    with torch.no_grad():
        chunks = [
            model(examples[i : i + batch_size].to(device=device, dtype=dtype))
            for i in range(0, examples.shape[0], batch_size)
        ]  # each (b, D)
    return torch.cat(chunks, dim=0).to(torch.float32)


def weights_fingerprint(model: nn.Module) -> str:
    """A sha256 of the model's weights: ``model.fingerprint()`` when it has one (memoised), else a fresh hash."""
    method = getattr(model, "fingerprint", None)
    if callable(method):
        return str(method())
    digest = hashlib.sha256(type(model).__name__.encode())
    for name, t in sorted(model.state_dict().items()):
        flat = t.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(t.shape)}|".encode())
        digest.update(flat.view(torch.uint8).numpy().data)
    return digest.hexdigest()


def save_npy_atomic(path: str | Path, array: np.ndarray) -> Path:
    """Write ``array`` to exactly ``path`` as ``.npy``, atomically (temporary file + ``os.replace``).

    Creates the parent folders. The file appears complete or not at all, even if the process dies mid-write, and gets
    the permissions the umask gives, like any file the user creates.
    """
    path = Path(path)
    with atomic_file(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, np.ascontiguousarray(array), allow_pickle=False)
        handle.flush()
        os.fsync(handle.fileno())
    return path


class FeatureCache:
    """Content-addressed ``.npy`` cache of per-second VGGish embeddings.

    Entries live at ``root/vggish/<key[:2]>/<key>.npy``. Only :attr:`hits` and :attr:`misses` change on the instance,
    so one cache object can serve a whole extraction run.

    Args:
        root: the cache folder (for example :func:`default_cache_dir`); created on first write.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    def key(
        self,
        wave_16k: np.ndarray,
        *,
        weights_fingerprint: str,
        num_frames: int | None,
        pad_mode: PadMode = "repeat_last",
    ) -> str:
        """The cache key of a clip.

        Args:
            wave_16k: ``(N,)`` mono samples at 16 kHz (hashed as little-endian float32).
            weights_fingerprint: see :func:`weights_fingerprint`.
            num_frames: the clip's frame count, or ``None``.
            pad_mode: the padding rule (irrelevant, and recorded as ``"none"``, when ``num_frames`` is ``None``).

        Returns:
            A 64-character hex sha256.
        """
        samples = np.ascontiguousarray(np.asarray(wave_16k, dtype="<f4").reshape(-1))
        header = {
            "front_end": FRONT_END_VERSION,
            "sample_rate": SAMPLE_RATE,
            "num_samples": int(samples.shape[0]),
            "weights": weights_fingerprint,
            "pad_mode": pad_mode if num_frames is not None else "none",
            "num_frames": num_frames,
        }
        digest = hashlib.sha256(b"avseg-vggish-embeddings\0")
        digest.update(json.dumps(header, sort_keys=True).encode())
        digest.update(b"\0")
        digest.update(samples.data)
        return digest.hexdigest()

    def path(self, key: str) -> Path:
        """Where the entry ``key`` lives."""
        return self.root / "vggish" / key[:2] / f"{key}.npy"

    def load(self, key: str) -> np.ndarray | None:
        """The stored ``(T, D)`` float32 array, or ``None`` when absent or unreadable (it is then recomputed)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            warnings.warn(f"{path}: unreadable cache entry ignored ({exc})", AVSegWarning, stacklevel=2)
            return None
        if array.ndim != 2 or array.dtype != np.float32:
            warnings.warn(f"{path}: cache entry of shape {array.shape} / {array.dtype} ignored", AVSegWarning, 2)
            return None
        return array

    def save(self, key: str, array: np.ndarray) -> Path:
        """Store a ``(T, D)`` array under ``key`` (atomically)."""
        return save_npy_atomic(self.path(key), np.asarray(array, dtype=np.float32))

    def get_or_compute(
        self,
        wave: np.ndarray | Tensor,
        sample_rate: int,
        model: nn.Module,
        num_frames: int | None = None,
        pad_mode: PadMode = "repeat_last",
    ) -> Tensor:
        """Return the clip's embeddings from the cache, computing and storing them on a miss.

        Args:
            wave: ``(N,)`` or ``(C, N)`` samples at ``sample_rate``.
            sample_rate: rate of ``wave`` in Hz.
            model: the VGGish that computes missing entries (its weights are part of the key).
            num_frames: the clip's frame count ``T``, or ``None`` for every complete example.
            pad_mode: padding rule, see :func:`audio_embeddings`.

        Returns:
            ``(T, D)`` float32 embeddings on the CPU.
        """
        mono = to_mono_16k(wave, sample_rate)
        mono_np = mono.detach().cpu().numpy() if isinstance(mono, Tensor) else mono
        key = self.key(
            mono_np, weights_fingerprint=weights_fingerprint(model), num_frames=num_frames, pad_mode=pad_mode
        )
        cached = self.load(key)
        if cached is not None and (num_frames is None or cached.shape[0] == num_frames):
            self.hits += 1
            return torch.from_numpy(cached)
        self.misses += 1
        embeddings = audio_embeddings(mono, SAMPLE_RATE, model, num_frames, pad_mode).cpu()
        self.save(key, embeddings.numpy())
        return embeddings
