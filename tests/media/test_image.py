"""Image writers: round trip, atomic replacement, and permissions that follow the umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from avseg.media.image import read_mask, read_rgb, write_jpeg, write_png


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o077, 0o600)])
def test_written_images_get_the_umask_mode(tmp_path: Path, mask: int, expected: int):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    old = os.umask(mask)
    try:
        write_png(tmp_path / "masks" / "a.png", gray)
        write_jpeg(tmp_path / "frames" / "a.jpg", rgb)
    finally:
        os.umask(old)
    assert _mode(tmp_path / "masks" / "a.png") == expected
    assert _mode(tmp_path / "frames" / "a.jpg") == expected
    np.testing.assert_array_equal(read_mask(tmp_path / "masks" / "a.png"), gray)
    assert read_rgb(tmp_path / "frames" / "a.jpg").shape == (8, 8, 3)


def test_palette_png_round_trip(tmp_path: Path):
    indices = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    palette = np.array([[0, 0, 0], [128, 0, 0], [0, 128, 0]], dtype=np.uint8)
    write_png(tmp_path / "p.png", indices, palette=palette)
    with Image.open(tmp_path / "p.png") as image:
        assert image.mode == "P"
    np.testing.assert_array_equal(read_mask(tmp_path / "p.png"), indices)


def test_failed_write_keeps_the_old_image_and_leaves_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    target = tmp_path / "a.png"
    write_png(target, np.full((4, 4), 7, dtype=np.uint8))

    def broken_save(self, fp, format=None, **params):
        Path(fp).write_bytes(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_png(target, np.zeros((4, 4), dtype=np.uint8))
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]
    np.testing.assert_array_equal(read_mask(target), np.full((4, 4), 7, dtype=np.uint8))
