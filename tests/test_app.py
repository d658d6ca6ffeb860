"""``avseg app``: the page's plain functions, then the page itself in a real headless Chromium (Playwright).

The browser test needs Debian's ``chromium`` (``/usr/bin/chromium``) and the ``playwright`` package; ``make test``
installs both, and the test fails (never skips) when either is missing. It writes a full-page screenshot of the
finished page to its tmp folder, and to ``$AVSEG_APP_SCREENSHOT`` when that is set (docs/images/app.png is made so).
"""

import json
import os
import socket
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from avseg.checkpoint import save_checkpoint, write_pointer
from avseg.errors import AVSegError, CorruptMediaError, MissingDependencyError, MissingFileError, UsageError
from avseg.predict import TextRequiredError
from tests.test_predict import HEIGHT, WIDTH, write_test_video

CHROMIUM = Path("/usr/bin/chromium")
# No network but the page's own: without the background-networking flags Chromium's own connections (updates,
# safe browsing, sync) are refused one after another and slow every page.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
EXPRESSION = "the white bar"


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    """96x64, 25 fps, 5.52 s with a 440 Hz tone in even seconds: six frames at tpavi-tiny's 1 frame/s."""
    return write_test_video(tmp_path_factory.mktemp("video") / "bars.mp4")


@pytest.fixture(scope="module")
def text_checkpoint(tmp_path_factory) -> Path:
    """A tpavi-tiny checkpoint recorded as trained on Ref-AVS data: it needs a referring expression."""
    from avseg.models import create_model

    torch.manual_seed(3)  # untrained: with this seed its masks cover part of each frame (seed 0's nearly all of it)
    return save_checkpoint(
        tmp_path_factory.mktemp("ck") / "tpavi-refavs",
        create_model("tpavi-tiny"),
        preset="tpavi-tiny",
        meta={"data": {"format": "refavs"}},
    )


# --------------------------------------------------------------------------------------------------------------------
# Plain functions


def test_find_models_lists_checkpoints_and_runs_but_not_the_checkpoints_inside_a_run(text_checkpoint, tmp_path):
    from avseg.app import find_models

    runs = tmp_path / "runs"
    run = runs / "exp" / "seed0"  # a run: its checkpoints/latest.json points at its checkpoint
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "step-1").symlink_to(text_checkpoint, target_is_directory=True)
    write_pointer(run / "checkpoints", "latest", run / "checkpoints" / "step-1")
    (runs / "notes").mkdir()  # neither a run nor a checkpoint
    (runs / "notes" / "a.txt").write_text("x")
    (runs / "a" / "b" / "c" / "d").mkdir(parents=True)  # four levels down: not searched
    (runs / "a" / "b" / "c" / "d" / "config.json").write_text("{}")

    choices = find_models([text_checkpoint], runs)
    assert [c.source for c in choices] == [str(text_checkpoint), str(run), "avseg:sam2-tiny-synthav"]
    assert choices[1].label.startswith("exp/seed0")
    assert [c.source for c in find_models([text_checkpoint], packaged=False)] == [str(text_checkpoint)]
    with pytest.raises(MissingFileError, match="--runs folder not found"):
        find_models([], tmp_path / "nowhere")
    with pytest.raises(AVSegError, match="notes"):  # a --checkpoint that is no checkpoint is refused at start
        find_models([runs / "notes"])


def test_find_samples_lists_each_synthav_video_once_with_its_expressions(tmp_path):
    from avseg.app import find_samples
    from avseg.data.synthav.commands import synth

    out = tmp_path / "synthav"
    synth(out, videos=2, size=32, frames=2, workers=1, layouts=("refavs", "avss"), quiet=True)
    samples = find_samples(out)
    assert [s.frames for s in samples] == [out / "refavs" / "media" / f"synth0000{i}" / "frames" for i in range(2)]
    assert [s.label for s in samples] == ["synth00000 (train)", "synth00001 (val)"]
    rows = (out / "refavs" / "metadata.csv").read_text().splitlines()[1:]
    positive = [r.split(",")[4] for r in rows if r.startswith("synth00001,") and ",null_" not in r]
    assert list(samples[1].expressions) == list(dict.fromkeys(positive)) and positive  # null expressions left out
    # The AVSS layout alone is found too; a folder without SynthAV videos is refused with the command to make one.
    avss = out / "avss" / "v2"
    assert [s.frames for s in find_samples(out / "avss")] == [
        avss / "synth00000" / "frames",
        avss / "synth00001" / "frames",
    ]
    with pytest.raises(UsageError, match="avseg data synth"):
        find_samples(tmp_path)


def test_inspect_model_says_what_a_model_needs(text_checkpoint, tmp_path):
    from avseg.app import inspect_model
    from avseg.models import create_model

    info = inspect_model(text_checkpoint)
    assert info.requires_text and info.reads_text and not info.promptable and info.name == "tpavi-tiny"
    assert "refavs" in info.text_reason and "needs a referring expression" in info.describe()
    plain = save_checkpoint(tmp_path / "plain", create_model("tpavi-tiny"), preset="tpavi-tiny")
    info = inspect_model(plain)  # tpavi-tiny also serves AVSBench: the expression is optional
    assert info.reads_text and not info.requires_text and "optional" in info.describe()
    with pytest.raises(UsageError, match="no model chosen"):
        inspect_model("  ")
    with pytest.raises(MissingFileError):
        inspect_model(tmp_path / "missing")


def test_run_prediction_gives_the_overlay_with_sound_and_a_zip_of_masks_and_settings(video, text_checkpoint, tmp_path):
    from avseg.app import inspect_model, run_prediction
    from avseg.media.video import probe_video

    calls = []
    result = run_prediction(
        video,
        str(text_checkpoint),
        work_dir=tmp_path,
        text=f"  {EXPRESSION} ",
        points="10,10",  # a stale click from an earlier model: dropped for a model that takes none
        device="cpu",
        info=inspect_model(text_checkpoint),
        listener=lambda desc, count, total: calls.append((desc, count, total)),
    )
    info = probe_video(result.overlay)
    assert result.overlay.name == "bars_overlay.mp4" and info.has_audio and info.num_frames == 6
    with zipfile.ZipFile(result.archive) as archive:
        names = archive.namelist()
        settings = json.loads(archive.read("bars_overlay.json"))
    assert names == [f"bars_masks/{k:05d}.png" for k in range(6)] + ["bars_overlay.json"]
    assert settings == result.settings and settings["text"] == EXPRESSION and settings["has_audio"]
    assert result.notes == () and EXPRESSION in result.summary and "6 frames" in result.summary
    # Every phase of the run reached the listener (the page's bar): each from 0, counting up; some name the video.
    phases = list(dict.fromkeys(desc for desc, _, _ in calls))
    assert any("bars.mp4" in desc for desc in phases)
    for desc in phases:
        counts = [(c, t) for d, c, t in calls if d == desc]
        done = [count for count, _ in counts]
        assert done[0] == 0 and done[-1] >= 1 and done == sorted(done)


def test_run_prediction_says_what_is_wrong_in_one_line(video, text_checkpoint, tmp_path):
    from avseg.app import inspect_model, run_prediction

    info = inspect_model(text_checkpoint)
    with pytest.raises(TextRequiredError, match=r"trained on refavs data\): type one in the Expression box"):
        run_prediction(video, text_checkpoint, work_dir=tmp_path, text="   ", info=info)
    with pytest.raises(TextRequiredError, match="referring expression"):  # without the page's check: predict's own
        run_prediction(video, text_checkpoint, work_dir=tmp_path, device="cpu")
    with pytest.raises(UsageError, match="no video"):
        run_prediction(None, text_checkpoint, work_dir=tmp_path, text=EXPRESSION, info=info)
    fake = tmp_path / "notes.mp4"  # a text file renamed .mp4
    fake.write_text("not a video\n")
    with pytest.raises(CorruptMediaError, match=r"notes\.mp4"):
        run_prediction(fake, text_checkpoint, work_dir=tmp_path, text=EXPRESSION, info=info, device="cpu")

    silent = write_test_video(tmp_path / "silent.mp4", with_audio=False)
    result = run_prediction(silent, text_checkpoint, work_dir=tmp_path, text=EXPRESSION, info=info, device="cpu")
    assert result.notes == ("the video has no sound: the model heard silence, and the overlay has no audio track",)
    assert not result.settings["has_audio"]


def test_promptable_models_need_a_click(tmp_path, video):
    from avseg.app import ModelInfo, run_prediction

    info = ModelInfo("sam2-tiny", tmp_path, reads_text=False, requires_text=False, text_reason=None, promptable=True)
    with pytest.raises(UsageError, match="click it on the first frame"):
        run_prediction(video, tmp_path, work_dir=tmp_path, points=" ", info=info)


def test_points_are_the_predict_points_string_and_are_drawn(video, tmp_path):
    from avseg.app import add_point, draw_points, first_frame
    from avseg.predict import parse_prompts
    from tests.test_predict import bar_image

    frame = first_frame(video)
    assert frame.shape == (HEIGHT, WIDTH, 3) and np.abs(frame.astype(int) - bar_image(0)).mean() < 8
    points = add_point(add_point("", 8.4, 30.6, 1), 70, 20, 0)
    assert points == "8,31,1;70,20,0"
    prompt = parse_prompts(points).objects[0]  # what predict --points reads
    assert prompt.points.tolist() == [[8, 31], [70, 20]] and prompt.labels.tolist() == [1, 0]
    drawn = draw_points(frame, points)
    assert drawn[31, 8].tolist() == [40, 200, 40] and drawn[20, 70].tolist() == [220, 40, 40]
    assert np.array_equal(drawn[5, 40], frame[5, 40]) and np.array_equal(draw_points(frame, ""), frame)
    # A frame folder's first frame is its lowest-numbered file (10.png sorts before 2.png as text).
    folder = tmp_path / "frames"
    folder.mkdir()
    from avseg.media.image import write_png

    for index in (2, 10):
        write_png(folder / f"{index}.png", np.full((4, 6, 3), index, np.uint8))
    assert first_frame(folder)[0, 0].tolist() == [2, 2, 2]
    fake = tmp_path / "fake.mp4"
    fake.write_text("not a video")
    with pytest.raises(CorruptMediaError, match=r"fake\.mp4"):
        first_frame(fake)


def test_page_progress_forwards_each_phase_at_most_ten_times_a_second():
    from avseg.app import _PageProgress

    now = [0.0]
    shown = []
    bar = _PageProgress(lambda value, desc, unit: shown.append((value, desc)), clock=lambda: now[0])
    for count in range(5):  # five updates within 0.04 s: the first only, then the last (the phase is done)
        bar("segmenting", count, 4)
        now[0] += 0.01
    bar("writing", 0, None)  # a new phase always shows
    now[0] += 0.2
    bar("writing", 7, None)
    assert shown == [((0, 4), "segmenting"), ((4, 4), "segmenting"), ((0, None), "writing"), ((7, None), "writing")]


def test_without_gradio_the_command_names_the_package_and_the_extra(monkeypatch, capsys):
    from avseg.cli import main

    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio now fails as if it were not installed
    with pytest.raises(MissingDependencyError, match=r"pip install \"avseg\[app\]\""):
        from avseg.app import _gradio

        _gradio()
    assert main(["app"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "avseg: error: avseg app (the web page) needs the package 'gradio', which is not installed; install it "
        'with: pip install "avseg[app]"'
    ]


# --------------------------------------------------------------------------------------------------------------------
# The page in a browser


def _playwright():
    """Playwright's sync API and the path of Debian's Chromium, or a failure saying how to install them."""
    try:
        from playwright.sync_api import sync_playwright
    except ModuleNotFoundError:
        pytest.fail("the browser test needs the 'playwright' package: `make test` installs it (the dev extra)")
    if not CHROMIUM.is_file():
        pytest.fail(
            f"the browser test needs Debian's chromium at {CHROMIUM}: `make test` installs it "
            "(apt-get install chromium; Playwright cannot download its own browsers here)"
        )
    return sync_playwright


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def page_url(text_checkpoint, tmp_path):
    """The page, served from a background thread on a free port of 127.0.0.1, listing the text checkpoint."""
    from avseg.app import ModelChoice, build_app, serve

    work = tmp_path / "work"
    work.mkdir()
    models = [ModelChoice("tpavi-tiny, Ref-AVS (untrained)", str(text_checkpoint))]
    demo = build_app(models, work_dir=work, device="cpu")
    url = serve(demo, "127.0.0.1", _free_port(), block=False)
    yield url
    demo.close()


@pytest.mark.slow
def test_page_segments_an_uploaded_video_and_plays_the_result(page_url, video, tmp_path):
    sync_playwright = _playwright()
    outside = []  # requests that would leave the machine: the page must work offline
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on(
                "request",
                lambda r: outside.append(r.url) if r.url.startswith("http") and "//127.0.0.1" not in r.url else None,
            )
            page.goto(page_url)
            # The checkpoint needs text: once the page has looked at it, the expression box says so.
            page.get_by_text("Expression (required)").wait_for(timeout=60_000)
            page.locator("#video-input input[type=file]").set_input_files(str(video))
            page.locator("#video-input video").wait_for(timeout=30_000)

            page.locator("#run").click()  # no expression yet: the page says so in one line
            page.get_by_text("type one in the Expression box").first.wait_for(timeout=30_000)
            assert page.locator("#overlay video").count() == 0
            page.locator(".toast-close").first.click()  # out of the screenshot

            page.locator("#expression textarea").fill(EXPRESSION)
            page.locator("#run").click()
            page.locator("#overlay video").wait_for(timeout=120_000)
            page.wait_for_function(
                "() => { const v = document.querySelector('#overlay video'); return v && v.readyState >= 2 }",
                timeout=30_000,
            )
            played = page.evaluate(
                """async () => {
                    const v = document.querySelector('#overlay video');
                    v.muted = true;  // headless autoplay rules: a muted video may always play
                    await v.play();
                    const start = v.currentTime;
                    await new Promise(r => setTimeout(r, 700));
                    const state = {src: v.currentSrc, duration: v.duration, start, now: v.currentTime};
                    v.pause();
                    return state;
                }"""
            )
            assert played["src"] and played["duration"] > 5 and played["now"] > played["start"], played
            link = page.locator("#masks a[href]").first
            assert link.get_attribute("href").endswith("bars_masks.zip")
            assert EXPRESSION in page.locator("#summary").inner_text()

            page.evaluate("document.querySelector('#overlay video').currentTime = 2.5")  # a frame with a mask
            page.wait_for_timeout(500)
            shots = [tmp_path / "app.png"]
            if os.environ.get("AVSEG_APP_SCREENSHOT"):
                shots.append(Path(os.environ["AVSEG_APP_SCREENSHOT"]))
            for shot in shots:
                page.screenshot(path=str(shot), full_page=True)
            assert (tmp_path / "app.png").stat().st_size > 10_000
        finally:
            browser.close()
    assert outside == []
