"""avseg.fileio: atomic writes, permissions that follow the umask, and output paths checked before work starts."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile

from avseg.cli import main
from avseg.errors import UsageError
from avseg.fileio import (
    atomic_dir,
    atomic_file,
    atomic_write_bytes,
    atomic_write_text,
    check_output_dir,
    check_output_file,
    current_umask,
)


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    """Run the block under ``mask``; the test process's umask comes back whatever happens."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ------------------------------------------------------------------------------------------------ atomic writes


def test_atomic_file_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path):
    target = tmp_path / "result.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="killed"), atomic_file(target) as tmp:
        tmp.write_text("half of the new content")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.txt"]


def test_atomic_file_writes_through_a_sibling_and_creates_parents(tmp_path: Path):
    target = tmp_path / "a" / "b" / "frame.png"
    with atomic_file(target, suffix=".png") as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith(".png") and tmp != target
        assert not target.exists()  # nothing at the final name until the block succeeds
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["frame.png"]


def test_atomic_write_text_and_bytes_replace_content(tmp_path: Path):
    target = tmp_path / "notes.txt"
    atomic_write_text(target, "première\n")
    assert target.read_bytes() == "première\n".encode()
    atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"


@pytest.mark.parametrize(("mask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_modes_follow_the_umask(tmp_path: Path, mask: int, file_mode: int, dir_mode: int):
    with umask(mask):
        assert current_umask() == mask
        with atomic_file(tmp_path / "via_context.bin") as tmp:
            tmp.write_bytes(b"x")
        atomic_write_bytes(tmp_path / "bytes.bin", b"x")
        atomic_write_text(tmp_path / "text.txt", "x")
        with atomic_dir(tmp_path / "folder") as folder:
            (folder / "inside.txt").write_text("x")
    for name in ("via_context.bin", "bytes.bin", "text.txt"):
        assert mode(tmp_path / name) == file_mode, name
    assert mode(tmp_path / "folder") == dir_mode
    assert (tmp_path / "folder" / "inside.txt").read_text() == "x"


def test_atomic_dir_replaces_only_with_overwrite(tmp_path: Path):
    target = tmp_path / "ckpt"
    with atomic_dir(target) as folder:
        (folder / "v1.txt").write_text("1")
    with pytest.raises(UsageError, match="already exists"), atomic_dir(target) as folder:
        (folder / "v2.txt").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["v1.txt"]
    with atomic_dir(target, overwrite=True) as folder:
        (folder / "v2.txt").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["v2.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # neither the new nor the old copy is left over


def test_atomic_dir_failure_keeps_the_old_folder(tmp_path: Path):
    target = tmp_path / "ckpt"
    with atomic_dir(target) as folder:
        (folder / "v1.txt").write_text("1")
    with pytest.raises(RuntimeError), atomic_dir(target, overwrite=True) as folder:
        (folder / "v2.txt").write_text("2")
        raise RuntimeError("killed")
    assert sorted(p.name for p in target.iterdir()) == ["v1.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


# ------------------------------------------------------------------------------------------------ output checks


def test_check_output_file_accepts_new_and_existing_files(tmp_path: Path):
    (tmp_path / "old.npy").write_bytes(b"x")
    assert check_output_file(tmp_path / "old.npy", arg="--out") == tmp_path / "old.npy"
    assert check_output_file(tmp_path / "new" / "deeper" / "x.npy", arg="--out") == tmp_path / "new/deeper/x.npy"


def test_check_output_file_refuses_a_folder(tmp_path: Path):
    with pytest.raises(UsageError, match=r"^--out .*: is a folder"):
        check_output_file(tmp_path, arg="--out")


def test_check_output_file_refuses_a_parent_that_is_a_file(tmp_path: Path):
    (tmp_path / "plain").write_text("x")
    with pytest.raises(UsageError, match=r"--out .*plain is a file, not a folder"):
        check_output_file(tmp_path / "plain" / "sub" / "x.npy", arg="--out")


def test_check_output_file_refuses_an_input(tmp_path: Path):
    source = tmp_path / "a.wav"
    source.write_bytes(b"RIFF")
    (tmp_path / "sub").mkdir()
    with pytest.raises(UsageError, match=r"--out .*is the input file"):
        check_output_file(source, arg="--out", inputs=[source])
    # The same file reached through another spelling of the path or through a symlink.
    with pytest.raises(UsageError, match="is the input file"):
        check_output_file(tmp_path / "sub" / ".." / "a.wav", arg="--out", inputs=[source])
    link = tmp_path / "link.wav"
    link.symlink_to(source)
    with pytest.raises(UsageError, match="is the input file"):
        check_output_file(link, arg="--out", inputs=[source])
    with pytest.raises(UsageError, match="is the input file"):
        check_output_file(source, arg="--out", inputs=[link])
    assert check_output_file(tmp_path / "b.npy", arg="--out", inputs=[source]) == tmp_path / "b.npy"


def test_check_output_dir(tmp_path: Path):
    (tmp_path / "plain").write_text("x")
    with pytest.raises(UsageError, match=r"^OUT .*plain: is a file, not a folder"):
        check_output_dir(tmp_path / "plain", arg="OUT")
    with pytest.raises(UsageError, match=r"OUT .*plain is a file, not a folder"):
        check_output_dir(tmp_path / "plain" / "sub", arg="OUT")
    assert check_output_dir(tmp_path, arg="OUT") == tmp_path
    assert check_output_dir(tmp_path / "new" / "sub", arg="OUT") == tmp_path / "new" / "sub"


# ------------------------------------------------------------------------------------------------ commands


def _tree_modes(root: Path) -> dict[int, list[str]]:
    modes: dict[int, list[str]] = {}
    for path in [root, *root.rglob("*")]:
        modes.setdefault(mode(path), []).append(str(path.relative_to(root)))
    return modes


def test_synth_output_is_readable_by_others_under_umask_022(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "synth"
    with umask(0o022):
        status = main(["data", "synth", str(out), "--videos", "2", "--size", "32", "--workers", "1"])
    assert status == 0, capsys.readouterr().err
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.suffix == ".jpg" for p in files) and any(p.suffix == ".png" for p in files)
    assert any(p.suffix == ".wav" for p in files) and (out / "manifest.json") in files
    modes = _tree_modes(out)
    assert all(mode(p) == 0o644 for p in files), modes
    assert all(mode(p) == 0o755 for p in [out, *out.rglob("*")] if p.is_dir()), modes


def test_logmel_output_follows_umask_022(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    wav = tmp_path / "a.wav"
    soundfile.write(str(wav), np.zeros(16000, dtype=np.float32), 16000)
    out = tmp_path / "feats" / "a.npy"
    with umask(0o022):
        status = main(["audio", "logmel", str(wav), "--out", str(out)])
    assert status == 0, capsys.readouterr().err
    assert np.load(out).shape == (1, 96, 64)
    assert mode(out) == 0o644 and mode(out.parent) == 0o755
