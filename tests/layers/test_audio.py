"""The shared audio encoder (avseg.layers.audio): VGGish on one or two channels, precomputed embeddings, log-mel CNN."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from avseg.data.types import random_batch
from avseg.errors import AVSegWarning, MissingFileError, ShapeError
from avseg.layers.audio import AudioEncoder, AudioEncoderConfig


@pytest.fixture(scope="module")
def vggish_two() -> AudioEncoder:
    torch.manual_seed(0)
    return AudioEncoder(AudioEncoderConfig(two_channel=True), pretrained=False)


def test_two_channel_vggish_gives_the_one_channel_embedding_twice(vggish_two: AudioEncoder) -> None:
    batch = random_batch(1, 2, 16)
    out = vggish_two(batch)  # (B, T, 256)
    assert out.shape == (1, 2, 256) and vggish_two.config.dim == 256
    one = vggish_two.vggish(batch.audio_examples.flatten(0, 1)).view(1, 2, 128)  # VGGish on the mono examples
    torch.testing.assert_close(out[..., :128], one)
    torch.testing.assert_close(out[..., 128:], one)
    # Precomputed 128-d embeddings are duplicated the same way, and VGGish does not run.
    embedded = dataclasses.replace(batch, audio_embeddings=torch.randn(1, 2, 128))
    torch.testing.assert_close(vggish_two(embedded), embedded.audio_embeddings.repeat(1, 1, 2))
    assert AudioEncoderConfig().dim == 128 and AudioEncoderConfig(encoder="logmel_cnn", two_channel=True).dim == 128


def test_samples_without_audio_get_zero_features_and_bad_examples_are_refused(vggish_two: AudioEncoder) -> None:
    torch.manual_seed(0)
    cnn = AudioEncoder(AudioEncoderConfig(encoder="logmel_cnn"), pretrained=False).eval()
    batch = random_batch(2, 3, 16)
    batch.has_audio[1] = False
    out = cnn(batch)
    assert out.shape == (2, 3, 128) and out[0].abs().sum() > 0 and out[1].abs().sum() == 0
    with pytest.raises(ShapeError, match=r"audio_examples must be \(2, 3, 1, 96, 64\)"):
        cnn(dataclasses.replace(batch, audio_examples=torch.zeros(2, 3, 1, 96, 32)))


def test_vggish_weights_are_read_only_for_pretrained_models(tmp_path) -> None:
    missing = str(tmp_path / "vggish-10086976.pth")
    random = AudioEncoder(AudioEncoderConfig(vggish_weights=missing), pretrained=False)
    assert any(k.startswith("vggish.module.") for k in random.state_dict())  # random weights travel in checkpoints
    with pytest.raises(MissingFileError, match=r"vggish-10086976\.pth"):
        AudioEncoder(AudioEncoderConfig(vggish_weights=missing), pretrained=True)
    with pytest.warns(AVSegWarning, match=r"audio\.vggish_weights is not set"):
        AudioEncoder(AudioEncoderConfig(), pretrained=True)


def test_invalid_configs_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"audio\.encoder"):
        AudioEncoderConfig(encoder="wav2vec")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"audio\.logmel_pool"):
        AudioEncoderConfig(encoder="logmel_cnn", logmel_pool=(5, 2))
