"""Media I/O: videos and frame folders (PyAV), audio (soundfile/PyAV), still images (Pillow) and resampling."""

from avseg.media.audio import SAMPLE_RATE, NoAudioStreamError, fit_audio_length, read_audio
from avseg.media.image import read_mask, read_rgb, write_jpeg, write_png
from avseg.media.resample import resample
from avseg.media.video import (
    FramePick,
    SampledFrame,
    VideoClip,
    VideoInfo,
    VideoReader,
    VideoWriter,
    probe_video,
    read_video,
    write_video,
)

__all__ = [
    "SAMPLE_RATE",
    "FramePick",
    "NoAudioStreamError",
    "SampledFrame",
    "VideoClip",
    "VideoInfo",
    "VideoReader",
    "VideoWriter",
    "fit_audio_length",
    "probe_video",
    "read_audio",
    "read_mask",
    "read_rgb",
    "read_video",
    "resample",
    "write_jpeg",
    "write_png",
    "write_video",
]
