"""Per-second audio features shared by the models: frozen VGGish, or a small trainable log-mel CNN.

Every model reads a clip's soundtrack as one feature vector per second (per frame): the 128-d embedding of the frozen
VGGish network on that second's ``96×64`` log-mel example (AVSBench and its successors), or, on CPU presets, the
output of :class:`LogMelCNN`, a small network trained with the model (avseg). AuralSAM2's released code runs VGGish
on the mono signal duplicated to two channels and concatenates the two embeddings (256-d, ``two_channel``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avseg.audio.vggish import EMBEDDING_SIZE, load_vggish, two_channel_embeddings
from avseg.data.types import AVSBatch
from avseg.errors import AVSegWarning, CheckpointError, ShapeError
from avseg.layers.frozen import Frozen

__all__ = ["AudioEncoder", "AudioEncoderConfig", "LogMelCNN", "load_logmel_cnn", "tiny_logmel_audio"]


@dataclass
class AudioEncoderConfig:
    """Where the per-second audio features come from.

    Attributes:
        encoder: ``"vggish"``: the frozen VGGish network on ``batch.audio_examples`` (or ``batch.audio_embeddings``
            when present); ``"logmel_cnn"``: a small trainable CNN on average-pooled log-mel examples (avseg).
        vggish_weights: ``vggish-10086976.pth``, read when the model is built with ``pretrained``; otherwise (or
            with None) VGGish keeps random weights, which then travel in checkpoints.
        two_channel: ``vggish`` only: run VGGish on the mono signal duplicated to two channels and concatenate
            (256-d), as AuralSAM2's released code does; both halves are equal, the layout only matches a 256-d input.
        use_precomputed: use ``batch.audio_embeddings`` (128-d) instead of running VGGish when the batch carries
            them (duplicated with ``two_channel``).
        logmel_pool: ``logmel_cnn`` only: average pooling of the ``96×64`` (frames × mel bands) example first.
        logmel_channels: ``logmel_cnn`` only: widths of its conv stages (each followed by a 2×2 max-pool).
        logmel_weights: ``logmel_cnn`` only: pretrained weights, a packaged asset (``avseg:logmel-cnn-synthav``,
            always read) or a folder written by ``avseg data pretrain-encoders`` (read when the model is built
            pretrained); their ``config.json`` replaces ``logmel_pool`` and ``logmel_channels``. None: random.
        logmel_frozen: ``logmel_cnn`` only: no gradients and batch-norm statistics fixed, as the papers freeze
            VGGish (for pretrained weights).
    """

    encoder: Literal["vggish", "logmel_cnn"] = "vggish"
    vggish_weights: str | None = None
    two_channel: bool = False
    use_precomputed: bool = True
    logmel_pool: tuple[int, int] = (2, 2)
    logmel_channels: tuple[int, ...] = (16, 32, 64)
    logmel_weights: str | None = None
    logmel_frozen: bool = False

    def __post_init__(self) -> None:
        if self.encoder not in ("vggish", "logmel_cnn"):
            raise ValueError(f"audio.encoder must be 'vggish' or 'logmel_cnn', got {self.encoder!r}")
        self.logmel_pool = tuple(int(p) for p in self.logmel_pool)  # type: ignore[assignment]
        self.logmel_channels = tuple(int(c) for c in self.logmel_channels)
        down = 2 ** len(self.logmel_channels)
        if 96 % (self.logmel_pool[0] * down) or 64 % (self.logmel_pool[1] * down):
            raise ValueError(
                f"audio.logmel_pool {self.logmel_pool} with {len(self.logmel_channels)} stages does not divide the "
                "96x64 log-mel example evenly"
            )

    @property
    def dim(self) -> int:
        """Width of the features :class:`AudioEncoder` returns (256 with VGGish on two channels, else 128)."""
        return 2 * EMBEDDING_SIZE if self.encoder == "vggish" and self.two_channel else EMBEDDING_SIZE


def tiny_logmel_audio(*, weights: str | None = None) -> AudioEncoderConfig:
    """A three-layer CNN (16-64 channels) over each second's log-mel examples: the audio encoder of the CPU presets,
    which have no VGGish weights to load. With ``weights`` (``avseg:logmel-cnn-synthav``) it is pretrained and
    frozen, as the papers freeze VGGish; without, it starts random and trains with the model."""
    return AudioEncoderConfig(
        encoder="logmel_cnn",
        logmel_pool=(2, 2),
        logmel_channels=(16, 32, 64),
        logmel_weights=weights,
        logmel_frozen=weights is not None,
    )


class LogMelCNN(nn.Module):
    """A small trainable audio encoder (avseg): ``(N, 1, 96, 64)`` log-mel examples → ``(N, 128)``.

    Average pooling, then conv-BN-ReLU-maxpool stages and a linear projection followed by a batch norm. Batch norms
    standardise each channel over the batch, so they keep the differences between examples (which sound, how loud)
    while removing what all examples share (the noise floor, the mean spectrum); without them, the features of
    different sounds start almost equal and audio is learned very slowly.
    """

    def __init__(self, *, pool: tuple[int, int], channels: tuple[int, ...], out_dim: int = EMBEDDING_SIZE) -> None:
        super().__init__()
        self.pool = pool
        layers: list[nn.Module] = []
        prev = 1
        for c in channels:
            layers += [nn.Conv2d(prev, c, kernel_size=3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2)]
            prev = c
        self.features = nn.Sequential(*layers)
        down = 2 ** len(channels)
        flat = prev * (96 // (pool[0] * down)) * (64 // (pool[1] * down))
        self.proj = nn.Sequential(nn.Linear(flat, out_dim), nn.BatchNorm1d(out_dim))

    def forward(self, examples: Tensor) -> Tensor:
        x = F.avg_pool2d(examples, self.pool)  # (N, 1, 96/p0, 64/p1)
        x = self.features(x)  # (N, C, h, w)
        return self.proj(x.flatten(1))  # (N, 128)


def load_logmel_cnn(source: str) -> LogMelCNN:
    """A :class:`LogMelCNN` (fp32, eval mode) from ``avseg:<asset>`` or a folder holding its ``config.json`` (``pool``,
    ``channels``, ``out_dim``) and ``model.safetensors``, as ``avseg data pretrain-encoders`` writes them.

    Raises:
        CheckpointError: the folder is missing either file, or they do not describe a log-mel CNN.
    """
    import json

    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from avseg.assets import resolve_weights

    folder = Path(resolve_weights(source))
    try:
        shape = json.loads((folder / "config.json").read_text())
        cnn = LogMelCNN(pool=tuple(shape["pool"]), channels=tuple(shape["channels"]), out_dim=int(shape["out_dim"]))
        state = load_file(str(folder / "model.safetensors"))
        cnn.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except (OSError, KeyError, TypeError, ValueError, RuntimeError, SafetensorError) as err:
        raise CheckpointError(folder, f"not a log-mel CNN (config.json + model.safetensors): {err}") from err
    return cnn.eval()


class AudioEncoder(nn.Module):
    """Per-second audio features of a batch, ``(B, T, config.dim)``; zero for samples without audio.

    Args:
        config: the encoder.
        pretrained: read ``config.vggish_weights``; False keeps VGGish random (tests, parameter counts). Pretrained
            VGGish weights are re-read from their file and left out of checkpoints; random ones are saved.
    """

    def __init__(self, config: AudioEncoderConfig, *, pretrained: bool) -> None:
        super().__init__()
        self.config = config
        self.vggish: Frozen | None = None
        self.cnn: nn.Module | None = None
        if config.encoder == "vggish":
            weights = config.vggish_weights if pretrained else None
            if pretrained and weights is None:
                warnings.warn(
                    "audio.vggish_weights is not set: VGGish keeps random weights, so only batches that carry "
                    "precomputed audio_embeddings get meaningful audio features (set it to vggish-10086976.pth)",
                    AVSegWarning,
                    stacklevel=3,
                )
            self.vggish = Frozen(load_vggish(weights), in_checkpoint=weights is None)
        else:
            from avseg.assets import is_packaged

            if config.logmel_weights and (pretrained or is_packaged(config.logmel_weights)):
                cnn = load_logmel_cnn(config.logmel_weights)
                # Weights read from their source are left out of checkpoints only while frozen.
                self.cnn = Frozen(cnn, in_checkpoint=False) if config.logmel_frozen else cnn
            else:
                cnn = LogMelCNN(pool=config.logmel_pool, channels=config.logmel_channels)
                self.cnn = Frozen(cnn, in_checkpoint=True) if config.logmel_frozen else cnn

    def forward(self, batch: AVSBatch) -> Tensor:
        """``batch.audio_examples (B, T, 1, 96, 64)`` (or ``audio_embeddings (B, T, 128)``) → ``(B, T, dim)``."""
        b, t = batch.frames.shape[:2]
        if self.vggish is not None and self.config.use_precomputed and batch.audio_embeddings is not None:
            feats = batch.audio_embeddings.float()  # (B, T, 128)
            if self.config.two_channel:
                feats = torch.cat([feats, feats], dim=-1)  # (B, T, 256), as VGGish on the duplicated channel
        else:
            examples = batch.audio_examples
            if examples.shape[:2] != (b, t) or tuple(examples.shape[2:]) != (1, 96, 64):
                raise ShapeError(f"batch.audio_examples must be ({b}, {t}, 1, 96, 64), got {tuple(examples.shape)}")
            flat = examples.flatten(0, 1).float()  # (B*T, 1, 96, 64)
            if self.vggish is not None and self.config.two_channel:
                with torch.no_grad():  # what Frozen.forward does for the one-channel call
                    out = two_channel_embeddings(self.vggish.module, flat)  # (B*T, 256)
            elif self.vggish is not None:
                out = self.vggish(flat)  # (B*T, 128)
            else:
                assert self.cnn is not None
                out = self.cnn(flat)  # (B*T, 128)
            feats = out.view(b, t, -1)  # (B, T, dim)
        if feats.shape != (b, t, self.config.dim):
            raise ShapeError(f"audio features must be ({b}, {t}, {self.config.dim}), got {tuple(feats.shape)}")
        return feats * batch.has_audio.to(feats)[:, None, None]
