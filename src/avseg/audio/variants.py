"""Soundtrack variants for audio-robustness evaluation: does a model listen?

``avseg eval --audio true shuffle silence noise:0 offset:1.5`` scores the same checkpoint with each variant of the
soundtracks; the J&F lost against ``true`` shows how much the model relies on what it hears. The variants:

- ``true``: the soundtrack as it is.
- ``shuffle``: every item hears the soundtrack of another item, and every soundtrack of the split is heard exactly
  once (a derangement, drawn once over the whole split with the seed, so the scores do not depend on the batch size).
  Items are deranged across videos (:func:`shuffled_donors`): the expressions of one video share its soundtrack, so
  hearing another expression of the same video would change nothing. A split with a single item that has a
  soundtrack cannot be shuffled (:class:`~avseg.errors.UsageError`).
- ``silence``: an all-zero waveform.
- ``noise:SNR_DB``: white Gaussian noise added at ``SNR_DB`` decibels below the item's audio power (the mean square of
  its waveform), seeded per item. The power is taken no lower than :data:`NOISE_FLOOR_DBFS`, so a silent soundtrack
  becomes noise at ``NOISE_FLOOR_DBFS - SNR_DB`` dBFS instead of staying silent.
- ``offset:SECONDS``: the soundtrack moved ``SECONDS`` later (earlier when negative), padded with silence and cut to
  its length.

Every variant is applied where the audio is still a waveform (``AVSSample.audio_wave``); the VGGish log-mel examples
the models read (``audio_examples``) are then computed again from the changed waveform, so that every model, whatever
its audio encoder, hears the same change. ``shuffle`` moves the donor's waveform and examples as they are. Items
without a soundtrack (``has_audio`` False, e.g. RVOS) are left unchanged by every variant. Precomputed
``audio_embeddings`` cannot be recomputed here: a sample carrying them is refused by ``silence``, ``noise`` and
``offset`` (``shuffle`` moves them with the donor's soundtrack).
"""

from __future__ import annotations

import math
import random
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from avseg.data.types import AUDIO_SAMPLE_RATE, AVSSample
from avseg.errors import AVSegWarning, UsageError

__all__ = [
    "AUDIO_VARIANT_KINDS",
    "NOISE_FLOOR_DBFS",
    "TRUE_AUDIO",
    "AudioShuffleWarning",
    "AudioVariant",
    "AudioVariantDataset",
    "add_noise",
    "apply_audio_variant",
    "audio_donors",
    "offset_wave",
    "parse_audio_variant",
    "parse_audio_variants",
    "perturb_waveform",
    "shuffled_donors",
]

AudioVariantKind = Literal["true", "shuffle", "silence", "noise", "offset"]
AUDIO_VARIANT_KINDS: tuple[AudioVariantKind, ...] = ("true", "shuffle", "silence", "noise", "offset")

NOISE_FLOOR_DBFS = -60.0
"""The lowest audio power ``noise:SNR_DB`` measures its noise against, in dB relative to a full-scale (amplitude 1)
signal's power: a silent or near-silent soundtrack gets noise at ``NOISE_FLOOR_DBFS - SNR_DB`` dBFS."""

_SYNTAX = "true, shuffle, silence, noise:SNR_DB or offset:SECONDS"


class AudioShuffleWarning(AVSegWarning):
    """The audio-shuffled control could not give every sample the soundtrack of another video."""


@dataclass(frozen=True)
class AudioVariant:
    """One soundtrack variant.

    Attributes:
        kind: ``true``, ``shuffle``, ``silence``, ``noise`` or ``offset``.
        value: the SNR in dB (``noise``) or the shift in seconds (``offset``); None for the other kinds.
    """

    kind: AudioVariantKind
    value: float | None = None

    @property
    def spec(self) -> str:
        """The variant as ``--audio`` spells it (``noise:10``, ``offset:-0.5``, ``shuffle``)."""
        return self.kind if self.value is None else f"{self.kind}:{self.value:g}"

    def __str__(self) -> str:
        return self.spec


TRUE_AUDIO = AudioVariant("true")


def parse_audio_variant(spec: str, *, arg: str = "--audio") -> AudioVariant:
    """Read one variant: ``true``, ``shuffle``, ``silence``, ``noise:SNR_DB`` or ``offset:SECONDS``.

    Example:
        >>> parse_audio_variant("noise:10")
        AudioVariant(kind='noise', value=10.0)
        >>> parse_audio_variant("offset:-0.5").spec
        'offset:-0.5'

    Raises:
        UsageError: naming ``arg`` and the bad spec (an unknown kind, a missing or non-numeric value, a value given
            to a kind that takes none).
    """
    text = str(spec).strip()
    kind, sep, raw = text.partition(":")
    kind = kind.strip().lower()
    if kind not in AUDIO_VARIANT_KINDS:
        raise UsageError(f"{arg} {spec}: unknown audio variant {kind!r}; expected {_SYNTAX}")
    if kind in ("true", "shuffle", "silence"):
        if sep:
            raise UsageError(f"{arg} {spec}: {kind} takes no value; expected {_SYNTAX}")
        return AudioVariant(kind)
    unit = "an SNR in dB, e.g. noise:10" if kind == "noise" else "a shift in seconds, e.g. offset:1.5"
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"{arg} {spec}: {kind} needs {unit}") from None
    if not math.isfinite(value):
        raise UsageError(f"{arg} {spec}: {kind} needs a finite number ({unit})")
    return AudioVariant(kind, value + 0.0)  # + 0.0 turns -0.0 into 0.0, so noise:-0 and noise:0 are one variant


def parse_audio_variants(specs: Sequence[str], *, arg: str = "--audio") -> list[AudioVariant]:
    """Read ``--audio`` values (separate or comma-separated) in order, without repeats, ``true`` first: every drop is
    measured against it, so it is added when missing.

    Example:
        >>> [v.spec for v in parse_audio_variants(["shuffle", "noise:0,true", "shuffle"])]
        ['true', 'shuffle', 'noise:0']

    Raises:
        UsageError: no variant, or a bad one (:func:`parse_audio_variant`).
    """
    variants = [parse_audio_variant(s, arg=arg) for v in specs for s in str(v).split(",") if s.strip()]
    if not variants:
        raise UsageError(f"{arg}: give at least one audio variant ({_SYNTAX})")
    return list(dict.fromkeys([TRUE_AUDIO, *variants]))


def shuffled_donors(videos: Sequence[str], seed: int = 0) -> tuple[list[int], int]:
    """A seeded permutation ``donor[i]`` of sample indices in which as few samples as possible receive a donor from
    their own video, and every sample is a donor exactly once.

    Samples are grouped by video (videos and the samples within each in a seeded random order) and laid out on a
    circle; sample ``k`` receives from sample ``k + s``. With ``m`` the largest number of samples of one video and
    ``n`` samples in all, the shift ``s = m`` never lands in the receiver's own video when ``m <= n / 2``: the result
    is a derangement over videos. When one video holds more than half of the samples this is impossible; the shift
    ``s = n - m`` then gives the fewest same-video pairs (``2m - n``). A single video gets a cyclic shift of its own
    samples (``s = 1``; with a single sample, the identity). With two samples or more no sample is its own donor.

    Args:
        videos: the video id of each sample.
        seed: seed of the random order.

    Returns:
        ``(donors, same_video)``: the permutation and the number of samples whose donor is from their own video.
    """
    n = len(videos)
    rng = random.Random(seed)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, video in enumerate(videos):
        groups[video].append(i)
    names = sorted(groups)
    rng.shuffle(names)
    circle: list[int] = []
    for name in names:
        members = groups[name]
        rng.shuffle(members)
        circle.extend(members)
    largest = max((len(g) for g in groups.values()), default=0)
    if len(groups) <= 1:
        shift = 1 if n > 1 else 0
    else:
        shift = largest if 2 * largest <= n else n - largest
    donors = [0] * n
    for k, receiver in enumerate(circle):
        donors[receiver] = circle[(k + shift) % n]
    same_video = sum(videos[d] == videos[i] for i, d in enumerate(donors))
    return donors, same_video


def audio_donors(
    videos: Sequence[str], has_audio: Sequence[bool], seed: int = 0, *, split: str = ""
) -> tuple[list[int], int]:
    """The ``shuffle`` variant's permutation: :func:`shuffled_donors` over the items that have a soundtrack; items
    without one are their own donor (they are left unchanged).

    Args:
        videos: the video id of each item.
        has_audio: whether each item has a soundtrack.
        seed: seed of the permutation.
        split: split name, for the error message.

    Returns:
        ``(donors, same_video)`` as :func:`shuffled_donors`, over all items.

    Raises:
        UsageError: exactly one item has a soundtrack (it has no other to hear).
    """
    if len(videos) != len(has_audio):
        raise ValueError(f"audio_donors: {len(videos)} video ids for {len(has_audio)} has_audio flags")
    heard = [i for i, flag in enumerate(has_audio) if flag]
    if len(heard) == 1:
        where = f" of split {split!r}" if split else ""
        raise UsageError(
            f"--audio shuffle: only one item{where} has a soundtrack, so it cannot hear another item's; shuffling "
            "needs at least two"
        )
    donors = list(range(len(videos)))
    picked, same_video = shuffled_donors([videos[i] for i in heard], seed)
    for receiver, donor in zip(heard, picked):
        donors[receiver] = heard[donor]
    return donors, same_video


def offset_wave(wave: Tensor, seconds: float, sample_rate: int = AUDIO_SAMPLE_RATE) -> Tensor:
    """``wave (N,)`` moved ``round(seconds * sample_rate)`` samples later (earlier when negative), padded with zeros and
    cut to ``N`` samples.

    Example:
        >>> offset_wave(torch.tensor([1.0, 2.0, 3.0, 4.0]), 2.0, sample_rate=1)
        tensor([0., 0., 1., 2.])
    """
    n = wave.shape[-1]
    shift = round(seconds * sample_rate)
    out = torch.zeros_like(wave)
    if abs(shift) >= n:
        return out
    if shift >= 0:
        out[..., shift:] = wave[..., : n - shift]
    else:
        out[..., : n + shift] = wave[..., -shift:]
    return out


def add_noise(wave: Tensor, snr_db: float, *, seed: int | Sequence[int] = 0) -> Tensor:
    """``wave (N,)`` plus white Gaussian noise whose power is ``snr_db`` dB below the wave's mean square (never taken
    below :data:`NOISE_FLOOR_DBFS`). The noise is drawn from NumPy's generator seeded with ``seed`` (an int or a
    sequence such as ``(seed, item)``), so it is the same on every machine and for every batch size. The result is
    not clipped.
    """
    if wave.numel() == 0:
        return wave.clone()
    power = max(float(wave.double().pow(2).mean()), 10.0 ** (NOISE_FLOOR_DBFS / 10.0))
    std = math.sqrt(power / 10.0 ** (snr_db / 10.0))
    rng = np.random.default_rng(list(seed) if isinstance(seed, Sequence) else seed)
    noise = torch.from_numpy(rng.standard_normal(tuple(wave.shape), dtype=np.float64) * std)
    return (wave.double() + noise).to(wave.dtype)


def perturb_waveform(wave: Tensor, variant: AudioVariant, *, seed: int | Sequence[int] = 0) -> Tensor:
    """``wave (N,)`` under ``true``, ``silence``, ``noise`` or ``offset`` (``shuffle`` needs a donor: see
    :func:`apply_audio_variant`)."""
    if variant.kind == "true":
        return wave
    if variant.kind == "silence":
        return torch.zeros_like(wave)
    if variant.kind == "noise":
        assert variant.value is not None
        return add_noise(wave, variant.value, seed=seed)
    if variant.kind == "offset":
        assert variant.value is not None
        return offset_wave(wave, variant.value)
    raise ValueError(f"perturb_waveform: {variant.spec} takes another item's soundtrack, not a change of this one")


def _examples_of(wave: Tensor, num_frames: int) -> Tensor:
    """VGGish examples ``(T, 1, 96, 64)`` of a changed soundtrack ``wave (N,)``: one per second it covers, zeros for
    the frames after it (AVSS clips padded beyond their soundtrack carry zero examples, as the readers give them)."""
    from avseg.audio.logmel import pad_or_trim_examples, waveform_to_examples

    examples = waveform_to_examples(np.ascontiguousarray(wave.numpy(), dtype=np.float32), AUDIO_SAMPLE_RATE)
    return pad_or_trim_examples(examples, num_frames, mode="zero").float()


def apply_audio_variant(
    sample: AVSSample,
    variant: AudioVariant,
    *,
    seed: int | Sequence[int] = 0,
    donor: AVSSample | None = None,
) -> AVSSample:
    """``sample`` with its soundtrack changed by ``variant`` (a sample without audio is returned as it is).

    Args:
        sample: the item.
        variant: the change.
        seed: seed of the noise (``noise`` only).
        donor: the item whose soundtrack ``sample`` hears (``shuffle`` only): its waveform is cut or padded with
            silence to ``sample``'s length, its examples (and embeddings) fitted to ``sample``'s frames by repeating
            the last one or cutting.

    Returns:
        A new sample; ``meta["audio_variant"]`` names the variant and, for ``shuffle``, ``meta["audio_from"]`` the
        donor.

    Raises:
        UsageError: ``silence``, ``noise`` or ``offset`` on a sample carrying precomputed ``audio_embeddings``.
    """
    if variant.kind == "true" or not sample.has_audio:
        return sample
    meta = {**sample.meta, "audio_variant": variant.spec}
    if variant.kind == "shuffle":
        if donor is None:
            raise ValueError("apply_audio_variant: shuffle needs the donor sample")
        idx = torch.arange(sample.num_frames).clamp(max=donor.num_frames - 1)
        n = sample.audio_wave.shape[0]
        wave = donor.audio_wave
        wave = wave[:n] if wave.shape[0] >= n else torch.cat([wave, wave.new_zeros(n - wave.shape[0])])
        return sample.with_updates(
            audio_wave=wave,
            audio_examples=donor.audio_examples[idx],
            audio_embeddings=None if donor.audio_embeddings is None else donor.audio_embeddings[idx],
            has_audio=donor.has_audio,
            meta={**meta, "audio_from": donor.uid or donor.video_id},
        )
    if sample.audio_embeddings is not None:
        raise UsageError(
            f"--audio {variant.spec}: sample {sample.uid or sample.video_id!r} carries precomputed audio embeddings, "
            "which cannot be recomputed from a changed soundtrack; evaluate it from its audio files"
        )
    wave = perturb_waveform(sample.audio_wave, variant, seed=seed)
    return sample.with_updates(audio_wave=wave, audio_examples=_examples_of(wave, sample.num_frames), meta=meta)


class AudioVariantDataset(Dataset):
    """Wrap a reader's dataset so that every item carries its soundtrack under ``variant``.

    For ``shuffle`` the permutation (:func:`audio_donors`) is drawn once from the records (video ids, and whether each
    has a soundtrack file), so item ``i`` hears the same soundtrack whatever the batch size; when one video holds more
    than half of the items (in particular a split of a single video) some items must hear a soundtrack of their own
    video, and an :class:`AudioShuffleWarning` gives their number (:attr:`same_video`), since the score is then not a
    clean control. ``noise`` seeds item ``i``'s noise with ``(seed, i)``.

    Attributes:
        variant: the variant.
        seed: its seed.
        permutation: ``shuffle``: ``permutation[i]`` is the item whose soundtrack item ``i`` receives; else None.
        same_video: ``shuffle``: how many items receive a soundtrack of their own video; else 0.
    """

    def __init__(self, dataset: Dataset, variant: AudioVariant | str, seed: int = 0) -> None:
        self.dataset = dataset
        self.variant = variant if isinstance(variant, AudioVariant) else parse_audio_variant(variant)
        self.seed = seed
        self.permutation: list[int] | None = None
        self.same_video = 0
        if self.variant.kind == "shuffle":
            records = dataset.records  # type: ignore[attr-defined]
            videos = [r.video_id for r in records]
            heard = [r.audio_path is not None for r in records]
            split = records[0].split if records else ""
            self.permutation, self.same_video = audio_donors(videos, heard, seed, split=split)
            if self.same_video:
                counts = {v: videos.count(v) for v, h in zip(videos, heard) if h}
                video, most = max(counts.items(), key=lambda kv: (kv[1], kv[0]))
                total = sum(heard)
                why = (
                    "it has a single video"
                    if len(counts) == 1
                    else f"video {video!r} holds {most} of its {total} samples (more than half)"
                )
                warnings.warn(
                    f"audio shuffle on split {split!r}: {self.same_video} of {total} samples hear a soundtrack of "
                    f"their own video because {why}; the shuffled score is not a clean control",
                    AudioShuffleWarning,
                    stacklevel=2,
                )

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> AVSSample:
        sample = self.dataset[i]
        if self.permutation is not None:
            if not sample.has_audio or self.permutation[i] == i:
                return sample
            return apply_audio_variant(sample, self.variant, donor=self.dataset[self.permutation[i]])
        return apply_audio_variant(sample, self.variant, seed=(self.seed, i))
