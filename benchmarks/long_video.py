"""Peak memory and wall time of ``avseg predict`` on a 1-minute and a 10-minute 720p video with sound.

Run: ``python benchmarks/long_video.py --folder /path/to/scratch [--model tpavi-tiny auralsam2-tiny]``.

Writes once into ``--folder`` (kept for later runs): ``video-1min.mp4`` and ``video-10min.mp4`` (1280x720 at 25 fps,
moving shapes encoded with x264 ``ultrafast`` so that they are cheap to make, and a 48 kHz stereo AAC soundtrack of
tones that change every second), and a random-weight checkpoint of each preset
(:func:`avseg.checkpoint.save_checkpoint`). Then runs ``avseg predict VIDEO --checkpoint CK --out OUT.mp4 --quiet``
under ``/usr/bin/time -v`` for each preset and video, and prints one markdown row per preset: the peak resident memory
(``Maximum resident set size``) and the wall time of both runs, and the 10-min / 1-min ratio of the peaks. The model
runs at its defaults (1 frame/s and its clip length), so the 10-minute run segments 600 frames and decodes all 15,000.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

WIDTH, HEIGHT, FPS, AUDIO_RATE = 1280, 720, 25, 48_000


def write_video(path: Path, seconds: int) -> Path:
    """Moving shapes over a grey gradient with a two-tone soundtrack, encoded frame by frame (bounded memory)."""
    import av
    import numpy as np

    if path.exists():
        return path
    tmp = path.with_suffix(".tmp.mp4")
    background = np.broadcast_to(np.linspace(40, 90, WIDTH, dtype=np.uint8)[None, :, None], (HEIGHT, WIDTH, 3))
    with av.open(str(tmp), "w") as container:
        video = container.add_stream("libx264", rate=FPS, options={"preset": "ultrafast", "crf": "28"})
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        audio = container.add_stream("aac", rate=AUDIO_RATE, layout="stereo")
        audio_pos = 0
        for i in range(seconds * FPS):
            image = background.copy()
            x = (i * 8) % (WIDTH - 200)
            y = int((HEIGHT - 200) * (0.5 + 0.4 * np.sin(i / 40)))
            image[y : y + 200, x : x + 200] = (230, 60, 60)
            image[HEIGHT - y - 120 : HEIGHT - y, WIDTH - x - 120 : WIDTH - x] = (60, 200, 90)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            container.mux(video.encode(frame))
            until = (i + 1) * AUDIO_RATE // FPS
            while audio_pos + 1024 <= until:
                t = (audio_pos + np.arange(1024)) / AUDIO_RATE
                hz = np.where(np.floor(t) % 2 == 0, 440.0, 660.0)
                wave = (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)
                piece = av.AudioFrame.from_ndarray(np.stack([wave, wave]), format="fltp", layout="stereo")
                piece.sample_rate, piece.pts, piece.time_base = AUDIO_RATE, audio_pos, Fraction(1, AUDIO_RATE)
                container.mux(audio.encode(piece))
                audio_pos += 1024
        container.mux(video.encode(None))
        container.mux(audio.encode(None))
    tmp.replace(path)
    return path


def checkpoint(folder: Path, preset: str) -> Path:
    import torch

    from avseg.checkpoint import save_checkpoint
    from avseg.models import create_model

    target = folder / f"ck-{preset}"
    if not target.exists():
        torch.manual_seed(0)
        save_checkpoint(target, create_model(preset), preset=preset)
    return target


def measure(video: Path, ck: Path, out: Path) -> tuple[float, float]:
    """Peak RSS (MiB) and wall time (s) of one ``avseg predict`` run under ``/usr/bin/time -v``."""
    avseg = Path(sys.executable).with_name("avseg")
    command = ["/usr/bin/time", "-v", str(avseg), "predict", str(video), "--checkpoint", str(ck), "--out", str(out)]
    result = subprocess.run([*command, "--device", "cpu", "--quiet", "--restart"], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", result.stderr).group(1)
    seconds = sum(float(part) * 60**i for i, part in enumerate(reversed(wall.split(":"))))
    return peak_kb / 1024, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, required=True, help="where the videos, checkpoints and outputs go")
    parser.add_argument("--model", nargs="+", default=["tpavi-tiny", "auralsam2-tiny"])
    args = parser.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    short = write_video(args.folder / "video-1min.mp4", 60)
    long = write_video(args.folder / "video-10min.mp4", 600)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores; {datetime.date.today()}", file=sys.stderr)
    print("| preset | 1 min: peak RSS, wall | 10 min: peak RSS, wall | peak ratio 10 min / 1 min |")
    print("|---|---|---|---|")
    for preset in args.model:
        ck = checkpoint(args.folder, preset)
        peak_1, wall_1 = measure(short, ck, args.folder / f"out-{preset}-1min.mp4")
        peak_10, wall_10 = measure(long, ck, args.folder / f"out-{preset}-10min.mp4")
        print(
            f"| `{preset}` | {peak_1:.0f} MiB, {wall_1:.0f} s | {peak_10:.0f} MiB, {wall_10:.0f} s | "
            f"{peak_10 / peak_1:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
