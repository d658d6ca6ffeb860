"""Writing files safely: atomically, with the permissions the user's umask asks for, never over an input.

Every artefact avseg writes (checkpoints, masks, videos, reports, features) goes through these helpers, so that

- a file or folder appears complete or not at all, even when the process is killed mid-write (a temporary sibling,
  then ``os.replace``);
- it gets the mode a plain ``open(path, "w")`` / ``mkdir`` would give under the current umask (``tempfile`` creates
  0600 files and 0700 folders, which would hide results from colleagues sharing a folder);
- output paths are checked *before* long work starts (:func:`check_output_file`, :func:`check_output_dir`), so a
  mistyped ``--out`` is one line at once instead of a traceback after an hour, and an output never replaces an input.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from avseg.errors import UsageError

__all__ = [
    "atomic_dir",
    "atomic_file",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_output_dir",
    "check_output_file",
    "current_umask",
]


def current_umask() -> int:
    """The process umask (read by setting and restoring it: the only portable way)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _apply_umask(path: Path, *, directory: bool) -> None:
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


@contextlib.contextmanager
def atomic_file(path: str | Path, *, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without error it becomes ``path``.

    The parent folders are created. ``suffix`` lets writers that pick a format from the extension (PyAV, PIL) see
    the right one. On error the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _apply_umask(tmp, directory=False)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (fsynced before the rename)."""
    path = Path(path)
    with atomic_file(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_dir(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; when the block ends without error it becomes ``path``.

    With ``overwrite`` an existing ``path`` is replaced, and removed only after the new folder is in place; without
    it an existing ``path`` is a :class:`~avseg.errors.UsageError`.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise UsageError(f"{path}: already exists")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        yield tmp
        _apply_umask(tmp, directory=True)
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def check_output_file(path: str | Path, *, arg: str, inputs: Iterable[str | Path] = ()) -> Path:
    """Check, before any work, that ``path`` can be written as a file for the option ``arg``.

    Refuses an existing folder, a parent that is a file, and a path that resolves to one of ``inputs`` (an output
    must never replace what the command reads). An existing file is allowed (it is replaced atomically at the end).

    Raises:
        UsageError: naming ``arg`` and the path.
    """
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{arg} {path}: is a folder; give a file name")
    _check_writable_place(path, path.parents, arg=arg, inputs=inputs, kind="file", what="output path")
    return path


def check_output_dir(path: str | Path, *, arg: str, inputs: Iterable[str | Path] = ()) -> Path:
    """Check, before any work, that ``path`` can be used (or created) as an output folder for the option ``arg``.

    Raises:
        UsageError: when ``path`` or one of its parents is a file, the folder cannot be written, or it is one of
            ``inputs``.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{arg} {path}: is a file, not a folder")
    _check_writable_place(path, (path, *path.parents), arg=arg, inputs=inputs, kind="", what="output folder")
    return path


def _check_writable_place(
    path: Path, candidates: Iterable[Path], *, arg: str, inputs: Iterable[str | Path], kind: str, what: str
) -> None:
    """The nearest existing folder among ``candidates`` must be a writable folder, and ``path`` none of ``inputs``."""
    for parent in candidates:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{arg} {path}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK):
                raise UsageError(f"{arg} {path}: no permission to write in {parent}")
            break
    for source in inputs:
        if _same_file(path, Path(source)):
            raise UsageError(f"{arg} {path}: is the input {kind + ' ' if kind else ''}{source}; choose another {what}")
