"""``avseg app``: a local web page (Gradio) that segments a video with a trained model.

Upload a video or pick a SynthAV sample, choose a checkpoint, type an expression when the model reads text, click
points on the first frame for a promptable (SAM2) model, and get the overlay video with its sound plus a zip of the
mask PNGs and the settings file. Each run is :func:`avseg.predict.predict`, with its progress forwarded to the page
(:func:`avseg.progress.report_to`); avseg's errors become one-line messages on the page.

The page is built from plain functions that need no browser (:func:`find_models`, :func:`find_samples`,
:func:`inspect_model`, :func:`run_prediction`, :func:`mask_archive`); :func:`build_app` wires them to Gradio, which is
imported only there (the ``app`` extra: ``pip install "avseg[app]"``). Nothing leaves the machine: no analytics, no
share links, system fonts.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avseg.checkpoint import CONFIG_FILE, CheckpointPointerWarning, has_pointer, resolve_checkpoint
from avseg.errors import MissingFileError, UsageError
from avseg.optional import require
from avseg.progress import Listener

__all__ = [
    "PACKAGED_SAM2",
    "ModelChoice",
    "ModelInfo",
    "RunResult",
    "Sample",
    "app",
    "build_app",
    "find_models",
    "find_samples",
    "first_frame",
    "inspect_model",
    "mask_archive",
    "run_prediction",
    "serve",
]

GRADIO_PURPOSE = "avseg app (the web page)"

# Run folders sit at most this deep under --runs (runs/<experiment>/<seed>/...); deeper folders are not searched, so
# a --runs pointed at a big tree does not stall the start.
_RUNS_DEPTH = 3


# --------------------------------------------------------------------------------------------------------------------
# What the page offers


@dataclass(frozen=True)
class ModelChoice:
    """A model the page offers: ``label`` in the list, ``source`` the checkpoint folder, run folder or Hub id."""

    label: str
    source: str


@dataclass(frozen=True)
class Sample:
    """A SynthAV sample video: a folder of frames with its ``audio.wav`` beside them (read as a video at 1 frame/s).

    Attributes:
        label: the name shown in the list (``"synth_00003 (test_s)"``).
        frames: the frame folder.
        expressions: the sample's referring expressions from the Ref-AVS metadata, empty when there are none.
    """

    label: str
    frames: Path
    expressions: tuple[str, ...] = ()


def _is_model_folder(folder: Path) -> bool:
    """A checkpoint folder, or a training run with a ``best.json`` / ``latest.json`` pointer."""
    return (folder / CONFIG_FILE).is_file() or has_pointer(folder, "best") or has_pointer(folder, "latest")


PACKAGED_SAM2 = ModelChoice(
    "packaged tiny SAM2: tracks a clicked SynthAV shape (avseg:sam2-tiny-synthav)", "avseg:sam2-tiny-synthav"
)
"""The model listed last on every page: the tiny SAM2 shipped with avseg, which tracks an object clicked on the first
frame without any training (it was trained on SynthAV's shapes; on real videos use Meta's, e.g. a folder
``avseg convert sam2`` wrote or ``facebook/sam2.1-hiera-large``)."""


def find_models(
    checkpoints: Sequence[str | Path] = (), runs: str | Path | None = None, *, packaged: bool = True
) -> list[ModelChoice]:
    """The models the page lists: each of ``checkpoints``, then the run and checkpoint folders under ``runs``, then
    (with ``packaged``) :data:`PACKAGED_SAM2`.

    A folder under ``runs`` counts when it holds a ``config.json`` (a checkpoint) or a ``best.json`` /
    ``latest.json`` pointer (a training run, itself or in its ``checkpoints/``); the search does not descend into
    such a folder (a run's own checkpoints are reached through its pointer) nor deeper than three levels.

    Args:
        checkpoints: checkpoint folders, run folders or Hub ids, each checked here.
        runs: a folder of training runs, or None.
        packaged: list the packaged tiny SAM2 too.

    Raises:
        MissingFileError: a checkpoint or ``runs`` that does not exist (a Hub id not in the cache while offline).
        NotACheckpointError: a checkpoint that is neither a checkpoint folder nor a run.
    """
    choices = []
    for source in checkpoints:
        resolve_checkpoint(Path(source), "best", fallback="latest")  # refuse a wrong path before the page starts
        choices.append(ModelChoice(str(source), str(source)))
    if runs is not None:
        root = Path(runs)
        if not root.is_dir():
            raise MissingFileError(root, "--runs folder")
        level = [root]
        for _ in range(_RUNS_DEPTH + 1):
            deeper = []
            for folder in level:
                if _is_model_folder(folder):
                    label = folder.relative_to(root).as_posix() if folder != root else folder.name
                    choices.append(ModelChoice(f"{label}  ({root.name})", str(folder)))
                else:
                    deeper += sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
            level = deeper
    if packaged:
        choices.append(PACKAGED_SAM2)
    return choices


def find_samples(root: str | Path | None) -> list[Sample]:
    """The SynthAV videos under ``root`` (the folder ``avseg data synth`` wrote, or its ``refavs`` or ``avss``).

    Each video is listed once, from ``refavs/media/{vid}/frames`` (with its referring expressions) or else
    ``avss/v2/{vid}/frames``; the ``null_*`` copies of the Ref-AVS layout are left out.

    Raises:
        MissingFileError: ``root`` does not exist.
        UsageError: ``root`` holds no SynthAV video.
    """
    if root is None:
        return []
    root = Path(root)
    if not root.is_dir():
        raise MissingFileError(root, "--samples folder")
    found: dict[str, Sample] = {}
    for base in (root, root / "refavs"):
        expressions = _refavs_expressions(base / "metadata.csv")
        for frames in sorted((base / "media").glob("*/frames")):
            vid = frames.parent.name
            if not vid.startswith("null_") and vid not in found:
                split, texts = expressions.get(vid, ("", ()))
                found[vid] = Sample(f"{vid} ({split})" if split else vid, frames, texts)
    for base in (root, root / "avss"):
        splits = _avss_splits(base / "metadata.csv")
        for frames in sorted((base / "v2").glob("*/frames")):
            vid = frames.parent.name
            if vid not in found:
                found[vid] = Sample(f"{vid} ({splits[vid]})" if vid in splits else vid, frames)
    if not found:
        raise UsageError(
            f"--samples {root}: holds no SynthAV video (refavs/media/*/frames or avss/v2/*/frames); "
            "write one with: avseg data synth OUT"
        )
    return sorted(found.values(), key=lambda s: s.frames.parent.name)


def _refavs_expressions(metadata: Path) -> dict[str, tuple[str, tuple[str, ...]]]:
    """``vid -> (split, expressions)`` from a Ref-AVS ``metadata.csv`` (empty when there is none)."""
    import csv

    if not metadata.is_file():
        return {}
    table: dict[str, tuple[str, list[str]]] = {}
    with metadata.open(newline="") as file:
        for row in csv.DictReader(file):
            vid, text = row.get("vid", ""), row.get("exp", "")
            _, texts = table.setdefault(vid, (row.get("split", ""), []))
            # Null expressions name an absent or silent object: the right answer to them is an empty mask.
            if text and text not in texts and not row.get("uid", "").startswith("null_"):
                texts.append(text)
    return {vid: (split, tuple(texts)) for vid, (split, texts) in table.items()}


def _avss_splits(metadata: Path) -> dict[str, str]:
    """``uid -> split`` from an AVSS ``metadata.csv`` (empty when there is none)."""
    import csv

    if not metadata.is_file():
        return {}
    with metadata.open(newline="") as file:
        return {row.get("uid", ""): row.get("split", "") for row in csv.DictReader(file)}


# --------------------------------------------------------------------------------------------------------------------
# The chosen model


@dataclass(frozen=True)
class ModelInfo:
    """What the page needs to know about a model before running it.

    Attributes:
        name: the model's name (its preset, else its family).
        folder: the checkpoint folder ``source`` resolved to.
        reads_text: the model uses a referring expression (the expression box is shown).
        requires_text: the model refuses to run without one.
        text_reason: why it requires one (``"it has a text encoder and was trained on refavs data"``), or None.
        promptable: the model tracks objects clicked on the first frame (SAM2).
    """

    name: str
    folder: Path
    reads_text: bool
    requires_text: bool
    text_reason: str | None
    promptable: bool

    def describe(self) -> str:
        """One line for the page."""
        if self.requires_text:
            text = "needs a referring expression"
        elif self.reads_text:
            text = "reads an optional referring expression"
        else:
            text = "reads no text"
        prompt = "; tracks the object you click on the first frame" if self.promptable else ""
        return f"**{self.name}** (checkpoint {self.folder.name}): {text}{prompt}"


def inspect_model(source: str | Path) -> ModelInfo:
    """Load the model at ``source`` (checkpoint folder, run folder or Hub id) on the CPU and say what it needs.

    Raises:
        AVSegError: ``source`` is not a checkpoint (the message names it).
    """
    from avseg.predict.predictor import Predictor

    source = _model_source(source)
    with warnings.catch_warnings():
        # A run without validation has no best.json: latest is what predict uses too, and the page says which folder.
        warnings.simplefilter("ignore", CheckpointPointerWarning)
        predictor = Predictor.from_checkpoint(source, device="cpu")
    return ModelInfo(
        name=predictor.name,
        folder=predictor.checkpoint or Path(source),
        reads_text=predictor.reads_text,
        requires_text=predictor.requires_text,
        text_reason=predictor.text_reason,
        promptable=predictor.promptable,
    )


def _model_source(source: str | Path | None) -> Path:
    text = str(source or "").strip()
    if not text:
        raise UsageError("no model chosen: pick one from the list, or type a checkpoint folder or a Hub id")
    return Path(os.path.expanduser(text))


# --------------------------------------------------------------------------------------------------------------------
# Points on the first frame (promptable models)


def first_frame(video: str | Path) -> np.ndarray:
    """The first frame of a video file or frame folder: ``(H, W, 3)`` uint8 RGB, the frame the points are given on.

    Raises:
        MissingFileError: ``video`` does not exist.
        CorruptMediaError: it cannot be decoded, or holds no frame.
    """
    from avseg.media.video import read_video

    path = Path(video)
    if not path.exists():
        raise MissingFileError(path, "video")
    # The reader avseg predict uses: the same frame order in folders and the same errors for unreadable files.
    return read_video(path, fps=None, max_frames=1, audio=False).frames[0].permute(1, 2, 0).numpy()


def add_point(points: str | None, x: float, y: float, label: int) -> str:
    """``points`` (the ``predict --points`` string ``"x,y[,label];..."``) with one more click appended."""
    click = f"{round(x)},{round(y)},{int(label)}"
    return f"{points.strip()};{click}" if points and points.strip() else click


def draw_points(image: np.ndarray, points: str | None) -> np.ndarray:
    """``image`` with each click of ``points`` drawn: a green dot on the object, a red one on the background."""
    from avseg.predict.prompts import parse_points

    out = np.array(image, copy=True)
    if not points or not points.strip():
        return out
    coords, labels = parse_points(points)
    height, width = out.shape[:2]
    radius = max(3, round(min(height, width) / 60))
    yy, xx = np.mgrid[:height, :width]
    for (x, y), label in zip(coords.tolist(), labels.tolist()):
        disc = (xx - x) ** 2 + (yy - y) ** 2
        out[disc <= (radius + 1) ** 2] = 255  # a white ring keeps the dot visible on any colour
        out[disc <= radius**2] = (40, 200, 40) if label == 1 else (220, 40, 40)
    return out


# --------------------------------------------------------------------------------------------------------------------
# One run


@dataclass(frozen=True)
class RunResult:
    """The files of one run and what to tell the user.

    Attributes:
        overlay: the overlay video (with the original sound when the video has some).
        archive: the zip of the mask PNGs and the settings file.
        settings: the settings record ``avseg predict`` writes beside the overlay.
        summary: one line: frames, clips, time, device, foreground.
        notes: things the user should know about the result (a video without sound ran on silence).
    """

    overlay: Path
    archive: Path
    settings: dict[str, Any]
    summary: str
    notes: tuple[str, ...]


def run_prediction(
    video: str | Path | None,
    model: str | Path | None,
    *,
    work_dir: str | Path,
    text: str | None = None,
    points: str | None = None,
    device: str = "auto",
    info: ModelInfo | None = None,
    listener: Listener | None = None,
) -> RunResult:
    """Segment ``video`` with ``model`` into a new folder of ``work_dir``: the overlay, the masks and their zip.

    Args:
        video: video file or frame folder.
        model: checkpoint folder, run folder or Hub id.
        work_dir: where the run's folder is made.
        text: the referring expression (blank counts as none).
        points: clicks on the first frame for a promptable model, ``"x,y[,label];..."`` (blank counts as none).
        device: ``auto``, ``cpu``, ``cuda``, ...
        info: what :func:`inspect_model` said about ``model``, to refuse a missing expression or missing points with
            the page's wording before anything is decoded (without it, ``predict`` refuses them).
        listener: called as ``listener(desc, count, total)`` by every progress phase.

    Raises:
        UsageError: no video, no model, or no points for a promptable model.
        TextRequiredError: a model that needs an expression got none.
        AVSegError: anything ``avseg predict`` refuses (an unreadable video, a bad checkpoint).
    """
    from avseg.predict.command import predict
    from avseg.predict.predictor import TextRequiredError
    from avseg.progress import report_to

    if video is None or not str(video).strip():
        raise UsageError("no video: upload one, or pick a sample")
    source = _model_source(model)
    text = (text or "").strip() or None
    points = (points or "").strip() or None
    if info is not None:
        if info.requires_text and text is None:
            reason = f" ({info.text_reason})" if info.text_reason else ""
            raise TextRequiredError(
                f"model {info.name} segments the object named by a referring expression{reason}: type one in the "
                "Expression box"
            )
        if info.promptable and points is None:
            raise UsageError(f"model {info.name} tracks the object you click: click it on the first frame")
        if not info.promptable:
            points = None  # a stale click from an earlier model; predict would refuse it
    video = Path(video)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=work_dir))
    stem = video.parent.name if video.is_dir() and video.name == "frames" else video.stem
    overlay = run_dir / f"{stem}_overlay.mp4"
    masks_dir = run_dir / f"{stem}_masks"
    with warnings.catch_warnings(record=True) as recorded, report_to(listener or _ignore):
        warnings.simplefilter("always")
        predict(
            video,
            checkpoint=source,
            out=overlay,
            masks_dir=masks_dir,
            text=text,
            points=points,
            device=device,
            quiet=True,
        )
    settings_file = overlay.with_suffix(".json")
    settings = json.loads(settings_file.read_text())
    archive = mask_archive(masks_dir, settings_file, run_dir / f"{stem}_masks.zip")
    notes = [str(w.message) for w in recorded if issubclass(w.category, CheckpointPointerWarning)]
    notes += _result_notes(settings)
    return RunResult(overlay, archive, settings, _summary(settings), tuple(notes))


def _ignore(desc: str, count: int, total: int | None) -> None:
    del desc, count, total


def _result_notes(settings: dict[str, Any]) -> list[str]:
    """What changed the result, from the settings record (avseg's warnings during the run say the same on stderr)."""
    notes = []
    if not settings.get("has_audio", True):
        notes.append("the video has no sound: the model heard silence, and the overlay has no audio track")
    elif settings.get("audio_padded"):
        notes.append("the video's sound is shorter than its picture: the rest was padded with silence")
    if settings.get("requested_fps") is not None:
        notes.append(
            f"{settings['requested_fps']:g} frames/s is above the video's frame rate: every frame was used once"
        )
    return notes


def _summary(settings: dict[str, Any]) -> str:
    frames, fps = settings["num_frames"], settings["fps"]
    text = f' | "{settings["text"]}"' if settings.get("text") else ""
    return (
        f"{settings.get('preset') or settings.get('family')}{text} | {frames} frame{'s' * (frames != 1)} "
        f"({fps:g} fps) in {settings['num_clips']} clip(s) of {settings['clip_len']} | {settings['elapsed_s']:.2f} s "
        f"on {settings['device']} | mean foreground {100 * settings['mean_foreground']:.1f}%"
    )


def mask_archive(masks_dir: str | Path, settings_file: str | Path, dest: str | Path) -> Path:
    """Zip the mask PNGs of ``masks_dir`` (under their folder's name) and the settings file into ``dest``."""
    masks_dir, settings_file, dest = Path(masks_dir), Path(settings_file), Path(dest)
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_STORED) as archive:  # PNGs are compressed already
        for png in sorted(masks_dir.glob("*.png")):
            archive.write(png, f"{masks_dir.name}/{png.name}")
        archive.write(settings_file, settings_file.name)
    return dest


class _PageProgress:
    """Forwards avseg's progress phases to a Gradio progress bar, at most every 0.1 s within a phase."""

    def __init__(self, progress: Callable[..., Any], clock: Callable[[], float] = time.monotonic) -> None:
        self._progress, self._clock = progress, clock
        self._desc: str | None = None
        self._last = float("-inf")

    def __call__(self, desc: str, count: int, total: int | None) -> None:
        now = self._clock()
        done = total is not None and count >= total
        if desc == self._desc and not done and now - self._last < 0.1:
            return
        self._desc, self._last = desc, now
        self._progress((count, total), desc=desc, unit="frames")


# --------------------------------------------------------------------------------------------------------------------
# The page


def _gradio() -> Any:
    """Import Gradio with everything that would reach the network switched off."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    return require("gradio", GRADIO_PURPOSE)


def build_app(
    models: Sequence[ModelChoice],
    samples: Sequence[Sample] = (),
    *,
    work_dir: str | Path,
    device: str = "auto",
) -> Any:
    """The page, as a ``gradio.Blocks`` (not launched).

    Args:
        models: the models listed (the first is chosen when the page opens); a folder path or Hub id can be typed too.
        samples: SynthAV sample videos listed beside the upload.
        work_dir: where each run writes its files (Gradio copies the results into its own cache).
        device: the device every run uses.
    """
    from avseg.cli import USER_ERRORS, error_line

    gr = _gradio()
    samples_by_label = {s.label: s for s in samples}
    known: dict[str, ModelInfo] = {}  # source -> what it needs; models are loaded once to find out

    def chosen(listed: str | None, typed: str | None) -> str:
        return (typed or "").strip() or (listed or "")

    def info_of(source: str) -> ModelInfo:
        if source not in known:
            known[source] = inspect_model(source)
        return known[source]

    def on_model(listed, typed):
        source = chosen(listed, typed)
        try:
            info = info_of(source)
        except USER_ERRORS as err:
            return (
                f"⚠️ {error_line(err)}",
                gr.update(visible=False, value=""),
                gr.update(visible=False),
            )
        label = "Expression (required)" if info.requires_text else "Expression (optional)"
        return info.describe(), gr.update(visible=info.reads_text, label=label), gr.update(visible=info.promptable)

    def video_source(upload, sample):
        if upload:
            return upload
        return str(samples_by_label[sample].frames) if sample in samples_by_label else None

    def on_sample(sample, text):
        picked = samples_by_label.get(sample or "")
        hint = ""
        if picked is not None and picked.expressions:
            hint = "Expressions of this sample: " + "; ".join(f'"{e}"' for e in picked.expressions[:4])
        return None, gr.update(info=hint or None, value=text)

    def on_frame(upload, sample):
        source = video_source(upload, sample)
        if source is None:
            return None, ""
        try:
            return first_frame(source), ""
        except USER_ERRORS as err:
            raise gr.Error(error_line(err), print_exception=False) from None

    def on_click(frame, upload, sample, points, kind, evt):
        x, y = evt.index
        points = add_point(points, x, y, 1 if kind.startswith("object") else 0)
        source = video_source(upload, sample)
        return draw_points(first_frame(source) if source else frame, points), points

    on_click.__annotations__ = {"evt": gr.SelectData}  # how Gradio knows to pass the click

    # Gradio hands a progress tracker to the parameter whose default is one.
    def on_run(upload, sample, listed, typed, text, points, progress=gr.Progress()):  # noqa: B008
        source = chosen(listed, typed)
        try:
            info = info_of(source)
            result = run_prediction(
                video_source(upload, sample),
                source,
                work_dir=work_dir,
                text=text,
                points=points,
                device=device,
                info=info,
                listener=_PageProgress(progress),
            )
        except USER_ERRORS as err:
            raise gr.Error(error_line(err), print_exception=False) from None
        for note in result.notes:
            gr.Warning(note)
        summary = result.summary + "".join(f"\n\n⚠️ {note}" for note in result.notes)
        return str(result.overlay), str(result.archive), summary

    with gr.Blocks(title="avseg", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            "## avseg: segment what is heard (and said) in a video\n"
            "Upload a video or pick a sample, choose a model, type an expression when the model reads text, and run."
        )
        with gr.Row():
            with gr.Column():
                upload = gr.Video(label="Video", sources=["upload"], elem_id="video-input")
                sample = gr.Dropdown(
                    [s.label for s in samples],
                    value=None,
                    label="…or a SynthAV sample",
                    visible=bool(samples),
                    elem_id="sample",
                )
                listed = gr.Dropdown(
                    [(m.label, m.source) for m in models],
                    value=models[0].source if models else None,
                    label="Model",
                    elem_id="model",
                )
                typed = gr.Textbox(
                    label="…or a checkpoint folder, run folder or Hub id",
                    placeholder="runs/demo or org/name",
                    elem_id="model-path",
                )
                about = gr.Markdown(elem_id="model-info")
                text = gr.Textbox(label="Expression", placeholder="the dog that barks", elem_id="expression")
                with gr.Group(visible=False) as prompt_group:
                    frame = gr.Image(
                        label="First frame: click the object to track",
                        interactive=False,
                        type="numpy",
                        elem_id="first-frame",
                    )
                    kind = gr.Radio(
                        ["object (positive)", "background (negative)"], value="object (positive)", label="A click marks"
                    )
                    points = gr.Textbox(label="Points (x,y,label; ...)", elem_id="points")
                    clear = gr.Button("Clear points", size="sm")
                run = gr.Button("Segment", variant="primary", elem_id="run")
            with gr.Column():
                overlay = gr.Video(label="Overlay", interactive=False, elem_id="overlay")
                archive = gr.File(label="Masks (PNG) and settings (zip)", interactive=False, elem_id="masks")
                summary = gr.Markdown(elem_id="summary")

        model_inputs = [listed, typed]
        model_outputs = [about, text, prompt_group]
        demo.load(on_model, model_inputs, model_outputs)
        listed.input(lambda: "", None, typed).then(on_model, model_inputs, model_outputs)
        typed.submit(on_model, model_inputs, model_outputs)
        typed.blur(on_model, model_inputs, model_outputs)
        sample.input(on_sample, [sample, text], [upload, text]).then(on_frame, [upload, sample], [frame, points])
        upload.upload(lambda: None, None, sample).then(on_frame, [upload, sample], [frame, points])
        frame.select(on_click, [frame, upload, sample, points, kind], [frame, points])
        clear.click(on_frame, [upload, sample], [frame, points])
        run.click(on_run, [upload, sample, listed, typed, text, points], [overlay, archive, summary])
    return demo


def serve(demo: Any, host: str = "127.0.0.1", port: int = 7860, *, block: bool = True) -> str:
    """Launch the page on ``host:port`` with nothing reaching the network; returns its URL.

    Runs are queued one at a time (a model fills the CPU or GPU by itself). With ``block`` False the server runs in
    a background thread until ``demo.close()``.
    """
    gr = _gradio()
    theme = gr.themes.Default(  # system fonts: the page never waits for a font download
        font=("ui-sans-serif", "system-ui", "sans-serif"), font_mono=("ui-monospace", "Consolas", "monospace")
    )
    demo.queue(default_concurrency_limit=1)
    try:
        _, url, _ = demo.launch(
            server_name=host,
            server_port=port,
            share=False,
            ssr_mode=False,
            quiet=not block,
            theme=theme,
            footer_links=[],
            prevent_thread_lock=not block,
        )
    except OSError as err:
        raise UsageError(f"--host {host} --port {port}: cannot listen there ({err})") from None
    return url


def app(
    *,
    checkpoint: list[str] | None = None,
    runs: Path | None = None,
    samples: Path | None = None,
    host: str = "127.0.0.1",
    port: int = 7860,
    device: str = "auto",
) -> int:
    """Start a local web page that segments a video with a trained model and gives its overlay and masks.

    The page lists the checkpoints given with --checkpoint and the training runs found under --runs, and takes a
    typed checkpoint folder or Hub id too. It shows an expression box for models that read text and, for promptable
    (sam2) models, the first frame to click the object on. Each run shows its progress and gives the overlay video
    with its sound, a zip of the mask PNGs with the settings file, and a one-line summary; a video without sound, an
    unreadable file or a missing expression is said in one line on the page. Stop it with Ctrl+C.

    Args:
        checkpoint: checkpoint folders, run folders or Hub ids to list.
        runs: a folder of training runs to list (each folder holding best.json/latest.json or a checkpoint).
        samples: a SynthAV folder (from 'avseg data synth') whose videos are offered as samples.
        host: address to listen on; 127.0.0.1 keeps the page on this machine.
        port: port to listen on.
        device: device every run uses: 'auto' (CUDA when available), 'cpu', 'cuda', ...
    """
    from avseg.device import resolve_device

    _gradio()  # before the models load: a missing extra is said at once
    resolve_device(device, arg="--device")
    models = find_models(checkpoint or (), runs)
    if models == [PACKAGED_SAM2]:
        print(
            "note: no trained model listed (no --checkpoint or --runs): the page offers the packaged tiny SAM2; type a "
            "checkpoint folder or Hub id on the page for another"
        )
    offered = find_samples(samples)
    with tempfile.TemporaryDirectory(prefix="avseg-app-") as work_dir:
        demo = build_app(models, offered, work_dir=work_dir, device=device)
        try:
            serve(demo, host, port)
        finally:
            demo.close()
    return 0
