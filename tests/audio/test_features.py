"""Per-second embeddings and the on-disk feature cache."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from avseg.audio.features import FeatureCache, audio_embeddings, default_cache_dir, save_npy_atomic
from avseg.audio.logmel import waveform_to_examples
from avseg.audio.vggish import VGGish
from avseg.errors import AudioPaddedWarning


class TinyEmbedder(nn.Module):
    """A stand-in with VGGish's interface, (B, 1, 96, 64) -> (B, 128), that counts its forward calls."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.proj = nn.Linear(96 * 64, 128)
        self.calls = 0
        self.examples_seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.examples_seen += x.shape[0]
        return self.proj(x.reshape(x.shape[0], -1))


def noise(seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.5, 0.5, int(seconds * rate)).astype(np.float32)


def test_embeddings_pad_and_trim():
    model = TinyEmbedder()
    wave = noise(3.2)  # 3 complete examples
    examples = waveform_to_examples(wave, 16000)
    with torch.no_grad():
        direct = model(examples)  # (3, 128)
        zero_row = model(torch.zeros(1, 1, 96, 64))[0]
    every = audio_embeddings(wave, 16000, model, None)
    assert tuple(every.shape) == (3, 128) and every.dtype == torch.float32
    torch.testing.assert_close(every, direct)
    rep = audio_embeddings(wave, 16000, model, 5)
    assert tuple(rep.shape) == (5, 128)
    torch.testing.assert_close(rep[3], direct[2])
    torch.testing.assert_close(rep[4], direct[2])
    zero = audio_embeddings(wave, 16000, model, 5, pad_mode="zero")
    torch.testing.assert_close(zero[:3], direct)
    torch.testing.assert_close(zero[3], zero_row)
    trimmed = audio_embeddings(wave, 16000, model, 2)
    torch.testing.assert_close(trimmed, direct[:2])
    assert not any(p.grad is not None for p in model.parameters()) and not trimmed.requires_grad


def test_embeddings_are_batched():
    model = TinyEmbedder()
    calls = model.calls
    out = audio_embeddings(noise(10.0), 16000, model, 10)
    assert tuple(out.shape) == (10, 128) and model.calls - calls == 1
    calls = model.calls
    chunked = audio_embeddings(noise(10.0), 16000, model, 10, batch_size=4)
    assert model.calls - calls == 3  # 4 + 4 + 2
    torch.testing.assert_close(chunked, out)


def test_short_audio():
    model = TinyEmbedder()
    assert tuple(audio_embeddings(noise(0.5), 16000, model, None).shape) == (0, 128)
    with pytest.warns(AudioPaddedWarning):
        out = audio_embeddings(noise(0.5), 16000, model, 5)
    with torch.no_grad():
        torch.testing.assert_close(out, model(torch.zeros(5, 1, 96, 64)))


def test_vggish_embeddings_stereo_44k():
    with torch.device("meta"):
        model = VGGish()
    state = {k: torch.full((1,), 0.01).expand(v.shape).contiguous() for k, v in model.state_dict().items()}
    model.load_state_dict(state, assign=True)
    model.eval()
    wave = np.stack([noise(2.1, 44100, seed=1), noise(2.1, 44100, seed=2)])  # (2, N)
    out = audio_embeddings(wave, 44100, model, 5)
    assert tuple(out.shape) == (5, 128)
    torch.testing.assert_close(out[2], out[1], rtol=1e-4, atol=1e-5)  # 2 complete examples, the last repeated
    assert out.min() >= 0.0


def test_cache_hit_skips_the_model(tmp_path: Path):
    cache = FeatureCache(tmp_path / "cache")
    model = TinyEmbedder()
    wave = noise(3.2)
    first = cache.get_or_compute(wave, 16000, model, 5)
    assert model.calls == 1 and (cache.hits, cache.misses) == (0, 1)
    second = cache.get_or_compute(wave, 16000, model, 5)
    assert model.calls == 1 and (cache.hits, cache.misses) == (1, 1)
    torch.testing.assert_close(second, first)
    torch.testing.assert_close(first, audio_embeddings(wave, 16000, model, 5))
    files = list((tmp_path / "cache").rglob("*"))
    npy = [p for p in files if p.is_file()]
    assert len(npy) == 1 and npy[0].suffix == ".npy" and not any(p.name.endswith(".tmp") for p in npy)
    assert np.load(npy[0]).shape == (5, 128)
    # A fresh cache object over the same folder finds the entry too.
    again = FeatureCache(tmp_path / "cache")
    calls = model.calls
    again.get_or_compute(wave, 16000, model, 5)
    assert again.hits == 1 and model.calls == calls


def test_cache_key_changes_with_inputs(tmp_path: Path):
    cache = FeatureCache(tmp_path)
    model = TinyEmbedder()
    wave = noise(3.2)
    fp = "weights-a"
    base = cache.key(wave, weights_fingerprint=fp, num_frames=5, pad_mode="repeat_last")
    assert len(base) == 64 and base == cache.key(wave.copy(), weights_fingerprint=fp, num_frames=5)
    changed = wave.copy()
    changed[1000] += 1e-3
    assert cache.key(changed, weights_fingerprint=fp, num_frames=5) != base
    assert cache.key(wave, weights_fingerprint=fp, num_frames=10) != base
    assert cache.key(wave, weights_fingerprint=fp, num_frames=None) != base
    assert cache.key(wave, weights_fingerprint=fp, num_frames=5, pad_mode="zero") != base
    assert cache.key(wave, weights_fingerprint="weights-b", num_frames=5) != base
    # Other weights, other entry: the second model must run.
    other = TinyEmbedder(seed=1)
    cache.get_or_compute(wave, 16000, model, 5)
    cache.get_or_compute(wave, 16000, other, 5)
    assert other.calls == 1 and cache.misses == 2
    cache.get_or_compute(wave, 16000, model, 10)
    assert cache.misses == 3


def test_cache_key_is_the_16k_mono_content(tmp_path: Path):
    cache = FeatureCache(tmp_path)
    model = TinyEmbedder()
    mono = noise(2.0)
    cache.get_or_compute(mono, 16000, model, 2)
    cache.get_or_compute(np.stack([mono, mono]), 16000, model, 2)  # same mono mix
    cache.get_or_compute(torch.from_numpy(mono), 16000, model, 2)
    assert (cache.hits, cache.misses) == (2, 1)


def test_corrupt_entry_is_recomputed(tmp_path: Path):
    cache = FeatureCache(tmp_path)
    model = TinyEmbedder()
    wave = noise(2.0)
    first = cache.get_or_compute(wave, 16000, model, 2)
    (entry,) = [p for p in tmp_path.rglob("*.npy")]
    entry.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="unreadable"):
        again = cache.get_or_compute(wave, 16000, model, 2)
    torch.testing.assert_close(again, first)
    assert model.calls == 2 and np.load(entry).shape == (2, 128)


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    target = tmp_path / "sub" / "out.npy"
    save_npy_atomic(target, np.ones((2, 3), dtype=np.float32))
    assert np.load(target).sum() == 6.0

    def broken_save(handle, array, allow_pickle=False):
        handle.write(b"\x93NUMPY partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_npy_atomic(target, np.zeros((2, 3), dtype=np.float32))
    monkeypatch.undo()
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.npy"]  # no temporary file left
    assert np.load(target).sum() == 6.0  # the old content survives untouched


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o077, 0o600)])
def test_saved_files_follow_the_umask(tmp_path: Path, mask: int, expected: int):
    # A private umask keeps features private; a group-friendly one lets colleagues read a shared cache.
    old = os.umask(mask)
    try:
        direct = save_npy_atomic(tmp_path / "direct.npy", np.ones((2, 3), dtype=np.float32))
        FeatureCache(tmp_path / "cache").get_or_compute(noise(1.0), 16000, TinyEmbedder(), 1)
    finally:
        os.umask(old)
    (entry,) = (tmp_path / "cache").rglob("*.npy")
    assert stat.S_IMODE(direct.stat().st_mode) == expected
    assert stat.S_IMODE(entry.stat().st_mode) == expected


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("AVSEG_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("AVSEG_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "avseg"
