"""``avseg predict``: the command that segments a user's video and writes mask PNGs, an overlay and a settings file.

Everything a user can get wrong (the output paths, the device, the checkpoint) is checked here before a model loads or
a frame decodes; the work is :class:`~avseg.predict.predictor.Predictor`'s and the files are
:class:`~avseg.predict.prediction.Prediction`'s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from avseg.checkpoint import resolve_checkpoint
from avseg.device import resolve_device
from avseg.errors import AVSegWarning, MissingFileError, UsageError
from avseg.fileio import atomic_write_text, check_output_dir, check_output_file
from avseg.media.image import read_mask
from avseg.models.base import set_answer_mode
from avseg.predict.prediction import OVERLAY_SUFFIXES, OverlayWriter, PredictionSummary, write_overlay_from_masks
from avseg.predict.predictor import PredictionStream, Predictor, fallback_pointer
from avseg.predict.prompts import parse_prompts
from avseg.predict.resume import MaskFolder
from avseg.predict.settings import positive_float

__all__ = ["predict"]


def predict(
    video: Path,
    *,
    checkpoint: Path,
    out: Path,
    text: str | None = None,
    masks_dir: Path | None = None,
    fps: float | None = None,
    clip_len: int | None = None,
    frame_pick: Literal["first", "last", "center"] = "last",
    device: str = "auto",
    threshold: float = 0.5,
    pointer: Literal["best", "latest"] = "best",
    overlay_fps: float | None = None,
    audio_align: Literal["window", "clip"] = "window",
    batch_size: int = 1,
    points: str | None = None,
    box: str | None = None,
    mask: Path | None = None,
    prompt_frame: int | None = None,
    answer_mode: Literal["read", "generate"] | None = None,
    restart: bool = False,
    quiet: bool = False,
) -> int:
    """Segment the sounding (or referred) objects of a video with a trained model; write mask PNGs and an overlay.

    Frames are sampled at the model's rate (1 frame/s for AVSBench and Ref-AVS models), cut into clips of the model's
    length, and heard through the video's own soundtrack (one 0.975 s VGGish example centred on each frame's window).
    Writes one PNG per sampled frame, an overlay video that keeps the original sound, and a JSON file with the
    settings and per-frame timestamps. A video without sound runs on silence (with a warning) and its overlay has no
    audio track. The outputs, the device and the checkpoint are checked before anything is decoded: an output that
    is the input video (or one of the checkpoint's files) is refused. Progress goes to stderr: bars on a terminal,
    a line every 15 s in a log; warnings are one ``avseg: warning:`` line each on stderr.

    A promptable model (sam2-*) tracks the object you give on one frame, with --points, --box or --mask in the video's
    own pixel coordinates, through the rest of the video (earlier frames stay empty); it samples every frame unless
    --fps (or its checkpoint) says otherwise. A mask with several ids tracks one object per id and writes palette
    PNGs holding those ids. Prompt options for a model that takes none, or no prompt for one that needs it, are
    refused before the video is decoded, as are points outside the frame and a mask of another size.

    The video is decoded, segmented and written as a stream: each clip's PNGs and overlay frames are written as soon
    as it has run, so memory does not grow with the video's length (a 10-minute video needs about what a 1-minute
    one does). Interrupted, the same command run again resumes: sampled frames whose PNG exists are not segmented
    again (the masks folder records the settings; other settings are refused, --restart starts over), and the
    overlay is encoded again from all the masks, so the outputs are those of an uninterrupted run. A promptable model
    tracks again from the prompted frame (its memory needs every frame since), with the same result.

    Args:
        video: input video file (mp4, mkv, webm, mov, ...) or folder of frames (with audio.wav).
        checkpoint: checkpoint folder, or training run folder (its best.json / latest.json is followed).
        out: overlay video to write (.mp4, .m4v, .mov, .mkv or .webm); settings go to the same name with .json.
        text: referring expression, required by Ref-AVS/RVOS models, ignored by AVS models.
        masks_dir: folder for the mask PNGs, {frame:05d}.png per sampled frame (default: OUT's name + '_masks').
        fps: frames sampled per second (default: the training rate the checkpoint records, else 1); at most the
            video's own frame rate (a higher rate is lowered to it, with a warning: every frame once, none repeated).
        clip_len: frames per model clip (default: the training clip length the checkpoint records, else its
            preset's, else 10).
        frame_pick: which frame of each 1/fps window is used: last (AVSBench), first, or center (ffmpeg fps filter).
        device: 'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:1', 'mps', ...
        threshold: foreground threshold on the sigmoid, binary models only.
        pointer: which checkpoint of a run folder to use: best or latest (the other when it is missing).
        overlay_fps: frame rate of the overlay video; default: the sampling rate (the frames the model saw, each held
            for its window). Give e.g. the source rate for smooth playback (each frame shows its window's mask).
        audio_align: audio example per frame: window (centred on the frame's window) or clip (the benchmark readers'
            consecutive 0.96 s examples from each clip's start).
        batch_size: clips per forward pass (raise it on a GPU).
        points: clicks on the object to track (promptable models): "x,y[,label];..." in the video's pixels, label 1
            (default) on the object, 0 on the background.
        box: the box of the object to track (promptable models): "x0,y0,x1,y1", top-left and bottom-right corners.
        mask: PNG mask of the object(s) to track (promptable models), of the video's size: binary, or palette/grey
            ids with one object per id.
        prompt_frame: the sampled frame the prompt is on (default: 0, the first).
        answer_mode: how an MLLM segmenter (sa2va-*, svac-*) finds its [SEG] tokens: read them from the answer it
            was trained on, or generate its answer and read the [SEG] tokens it writes, as the released Sa2VA code
            does (frames whose [SEG] it does not write stay empty); default: the checkpoint's (read unless its
            config says otherwise).
        restart: discard the masks of an earlier run in the masks folder instead of resuming it (needed when the
            settings differ).
        quiet: show no progress (warnings and the summary are still printed).
    """
    out, video = Path(out), Path(video)
    if out.suffix.lower() not in OVERLAY_SUFFIXES:
        raise UsageError(f"--out {out}: must end in one of {', '.join(OVERLAY_SUFFIXES)} (it is the overlay video)")
    if overlay_fps is not None:
        positive_float(overlay_fps, "overlay_fps")
    if not video.exists():
        raise MissingFileError(video, "video")
    # Everything a user can get wrong is checked here, before the model loads or a frame decodes.
    torch_device = resolve_device(device, arg="--device")
    folder = resolve_checkpoint(Path(checkpoint), pointer, fallback=fallback_pointer(pointer))
    inputs = _input_paths(video, Path(checkpoint), folder) + ([Path(mask)] if mask is not None else [])
    masks_arg = "--masks-dir" if masks_dir is not None else "--masks-dir (default: OUT's name + _masks)"
    masks_dir, sidecar = _check_outputs(out, masks_dir, inputs=inputs)
    prompts = parse_prompts(points, box, mask, prompt_frame)

    predictor = Predictor.from_checkpoint(
        folder,
        device=torch_device,
        fps=fps,
        clip_len=clip_len,
        threshold=threshold,
        frame_pick=frame_pick,
        audio_align=audio_align,
        batch_size=batch_size,
    )
    if answer_mode is not None:
        set_answer_mode(predictor.model, answer_mode, folder)
    predictor.check_prompts(prompts)  # before any frame is decoded
    if text and not predictor.reads_text:
        print(f"note: model {predictor.name} does not read text; --text is ignored")
    with warnings.catch_warnings():  # restores the filters and showwarning afterwards
        warnings.simplefilter("always", AVSegWarning)
        warnings.showwarning = _one_line_warnings(warnings.showwarning)
        stream = predictor.stream_video(video, text, prompts=prompts, progress=not quiet)
        masks = MaskFolder(masks_dir, _mask_settings(predictor, stream, folder, video), restart=restart, arg=masks_arg)
        if masks.resuming and prompts is not None:
            print(
                f"note: {masks_dir} holds masks of an interrupted run; tracking starts again from the prompted frame "
                "(SAM2's memory of a frame needs every frame since), with the same result"
            )
        stream.finished = masks.finished if prompts is None else None
        overlay, files, new = _write_outputs(stream, masks, out, overlay_fps, quiet=quiet)
    summary = stream.summary()
    record = {"masks_dir": str(masks_dir), "mask_files": [p.name for p in files], "overlay": overlay}
    atomic_write_text(sidecar, json.dumps(_settings_record(predictor, summary, record), indent=2))
    if masks.resuming and prompts is None:
        print(f"resumed:  {summary.num_frames - new} finished mask(s) kept, {new} new")
    _print_summary(summary, masks_dir, len(files), overlay, out, sidecar)
    return 0


def _mask_settings(predictor: Predictor, stream: PredictionStream, checkpoint: Path, video: Path) -> dict[str, Any]:
    """What decides the masks (a resumed run must match it): input, model, sampling, audio rule, text, prompt."""
    return {
        "video": str(video.resolve()),
        "video_bytes": video.stat().st_size if video.is_file() else None,
        "checkpoint": str(checkpoint.resolve()),
        "fps": stream.rate,
        "frame_pick": stream.reader.frame_pick,
        "clip_len": stream.clip_len,
        "image_size": list(predictor.image_size),
        "threshold": predictor.threshold,
        "audio_align": predictor.audio_align,
        "text": stream.text,
        "prompt": stream.prompts.record() if stream.prompts is not None else None,
        # only for the models that have one, so that the masks folders of other models keep their settings
        **({"answer_mode": mode} if (mode := getattr(predictor.model.config, "answer_mode", None)) else {}),
    }


def _write_outputs(
    stream: PredictionStream, masks: MaskFolder, out: Path, overlay_fps: float | None, *, quiet: bool
) -> tuple[dict[str, Any], list[Path], int]:
    """Run the stream: each mask PNG written (unless finished) and each overlay frame encoded as it comes.

    Returns:
        The overlay record (:meth:`OverlayWriter.close`), the PNG files in frame order, and how many were new.
    """
    files: list[Path] = []
    new = 0
    sound = stream if stream.has_audio else None
    # At the sampled rate the overlay is encoded in the same pass; at another rate, from the PNGs once all exist.
    with contextlib.ExitStack() as stack:
        writer = None
        if overlay_fps is None:
            writer = stack.enter_context(OverlayWriter(out, stream.rate, kind=None, audio=sound))
        for frame in stream:
            if frame.finished:
                files.append(masks.path(frame.index))
            else:
                files.append(masks.write(frame.index, frame.mask, stream.kind or "binary", stream.num_classes or 1))
                new += 1
            if writer is not None:
                writer.add(frame.image, frame.mask, stream.kind or masks.kind)
        if writer is not None:
            return writer.close(stream.audio), files, new
    summary = stream.summary()
    kind = summary.kind

    def read(k: int) -> Tensor:
        stored = torch.from_numpy(np.array(read_mask(masks.path(k))))
        return (stored > 0).to(torch.uint8) if kind == "binary" else stored

    return write_overlay_from_masks(out, summary, read, overlay_fps, progress=not quiet), files, new


def _settings_record(predictor: Predictor, prediction: PredictionSummary, outputs: dict[str, Any]) -> dict[str, Any]:
    """The settings file: the model and checkpoint, the files written, and :meth:`PredictionSummary.settings`."""
    from avseg.config import config_to_dict

    model = predictor.model
    return {
        "checkpoint": str(predictor.checkpoint),
        "preset": getattr(model, "preset", None),  # set by the registry's load_model
        "family": model.family,
        "model_config": config_to_dict(model.config) if dataclasses.is_dataclass(model.config) else None,
        **outputs,
        "batch_size": predictor.batch_size,
        **prediction.settings(),
    }


def _print_summary(
    prediction: PredictionSummary, masks_dir: Path, num_files: int, overlay: dict[str, Any], out: Path, sidecar: Path
) -> None:
    """What was written, where, and what the model found, on stdout."""
    height, width = prediction.size
    if prediction.kind == "binary":
        png_kind = "0/255 grey"
    elif "object_ids" in prediction.extra:
        png_kind = f"palette, object ids {prediction.extra['object_ids']}"
    else:
        png_kind = "AVSS palette"
    print(f"masks:    {masks_dir}/ ({num_files} PNG{'s' * (num_files != 1)}, {width}x{height}, {png_kind})")
    stale = sorted(
        p.name for p in masks_dir.glob("[0-9][0-9][0-9][0-9][0-9].png") if int(p.stem) >= prediction.num_frames
    )
    if stale:
        print(f"note: {masks_dir} also holds {len(stale)} older PNG(s) from a longer run ({stale[0]}, ...)")
    sound = "original audio" if overlay["audio"] else "no audio track (the video has none)"
    print(f"overlay:  {out} ({overlay['frames']} frames at {overlay['fps']:g} fps, {sound})")
    print(f"settings: {sidecar}")
    answers = prediction.extra.get("answers")
    if answers:
        more = f" (and {len(answers) - 1} more clip(s): see the settings file)" if len(answers) > 1 else ""
        print(f"answer:   {answers[0]['answer']!r}{more}")
    print(
        f"predict: {prediction.num_frames} frames ({prediction.fps:g} fps, {prediction.frame_pick}) in "
        f"{prediction.num_clips} clip(s) of {prediction.clip_len} | {prediction.num_frames / prediction.fps:.1f} s "
        f"sampled | {prediction.elapsed_s:.2f} s on {prediction.device} | mean foreground "
        f"{100 * float(prediction.foreground.mean()):.2f}%"
    )


def _one_line_warnings(previous: Callable[..., None]) -> Callable[..., None]:
    """A ``warnings.showwarning`` that prints avseg's warnings as one ``avseg: warning: ...`` line on stderr, when they
    happen (a silent soundtrack or a lowered --fps changes the result), instead of Python's display with a line of
    avseg's source under it; other warnings go to ``previous``."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, AVSegWarning):
            from tqdm import tqdm

            tqdm.write(f"avseg: warning: {message}", file=sys.stderr)  # clears and redraws a progress bar on a terminal
        else:
            previous(message, category, filename, lineno, file, line)

    return show


def _check_outputs(out: Path, masks_dir: Path | None, *, inputs: list[Path]) -> tuple[Path, Path]:
    """Check that the overlay, its settings file and the masks folder can be written and replace no input.

    Returns:
        The masks folder (``masks_dir``, else OUT's name + ``_masks``) and the settings file (OUT with ``.json``).
    """
    sidecar = out.with_suffix(".json")
    check_output_file(out, arg="--out", inputs=inputs)
    check_output_file(sidecar, arg="--out (its .json settings file)", inputs=inputs)
    masks_arg = "--masks-dir" if masks_dir is not None else "--masks-dir (default: OUT's name + _masks)"
    masks_dir = Path(masks_dir) if masks_dir is not None else out.parent / f"{out.stem}_masks"
    check_output_dir(masks_dir, arg=masks_arg, inputs=inputs)
    if masks_dir.resolve() in (out.resolve(), sidecar.resolve()):
        raise UsageError(f"{masks_arg} {masks_dir}: is a file --out writes; give the masks their own folder")
    return masks_dir, sidecar


def _input_paths(video: Path, checkpoint: Path, folder: Path) -> list[Path]:
    """What ``predict`` reads and must never overwrite: the video and the files of the checkpoint (or run) folder."""
    paths = [video, checkpoint, folder]
    for holder in {checkpoint, folder}:
        if holder.is_dir():
            paths.extend(p for p in holder.iterdir() if p.is_file())
    return paths
