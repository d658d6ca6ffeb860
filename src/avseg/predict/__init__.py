"""``avseg predict``: run a trained model on any video with its own soundtrack; masks as PNGs plus an overlay video.

- :mod:`avseg.predict.command`: the ``predict`` command (:func:`predict`): arguments and outputs checked before any
  work, then the rest of this package.
- :mod:`avseg.predict.predictor`: :class:`Predictor`, a model plus its sampling settings, which decodes a video as a
  stream, cuts it into clips with their audio (:mod:`avseg.audio.alignment`) and segments every sampled frame
  (:meth:`Predictor.stream_video`, or in memory :meth:`Predictor.predict_video`).
- :mod:`avseg.predict.prompts`: the clicks, box or mask that tell a promptable model (SAM2) what to track.
- :mod:`avseg.predict.prediction`: :class:`Prediction`, the masks of a video in memory, and what is written from
  masks: PNGs, an overlay video (:class:`OverlayWriter`, frame by frame) and a settings record
  (:class:`PredictionSummary`).
- :mod:`avseg.predict.resume`: the masks folder's settings record, which lets an interrupted run resume.
- :mod:`avseg.predict.settings`: what a checkpoint records about its training data (:func:`read_training_data`) and
  the frame size, clip length and rate that follow (:func:`sampling_settings`).
- :mod:`avseg.predict.memory`: the memory guard of the in-memory path (progress on stderr is :mod:`avseg.progress`).

Whether a model needs a referring expression is the model's to say (:func:`avseg.models.base.requires_text`).
"""

from avseg.audio.alignment import AudioAlign, clip_audio_examples, window_audio_examples, window_example_starts
from avseg.predict.command import predict
from avseg.predict.prediction import OVERLAY_SUFFIXES, OverlayWriter, Prediction, PredictionSummary
from avseg.predict.predictor import (
    FpsCappedWarning,
    PredictionStream,
    Predictor,
    SegmentedFrame,
    TextRequiredError,
)
from avseg.predict.prompts import ObjectPrompt, VideoPrompts, is_promptable, parse_prompts
from avseg.predict.resume import MaskFolder
from avseg.predict.settings import (
    DEFAULT_CLIP_LEN,
    DEFAULT_FPS,
    SamplingSettings,
    TrainingData,
    read_training_data,
    sampling_settings,
)

__all__ = [
    "DEFAULT_CLIP_LEN",
    "DEFAULT_FPS",
    "OVERLAY_SUFFIXES",
    "AudioAlign",
    "FpsCappedWarning",
    "MaskFolder",
    "ObjectPrompt",
    "OverlayWriter",
    "Prediction",
    "PredictionStream",
    "PredictionSummary",
    "Predictor",
    "SamplingSettings",
    "SegmentedFrame",
    "TextRequiredError",
    "TrainingData",
    "VideoPrompts",
    "clip_audio_examples",
    "is_promptable",
    "parse_prompts",
    "predict",
    "read_training_data",
    "sampling_settings",
    "window_audio_examples",
    "window_example_starts",
]
