"""Typed errors and warnings raised by avseg.

Every error that reaches a user names the file or argument at fault in its message, so that the CLI can print it as
one line (``avseg: error: <message>``) and exit with status 2. Library users catch :class:`AVSegError` (or one of its
subclasses) to handle bad input without parsing messages.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "AVSegError",
    "AVSegWarning",
    "AudioPaddedWarning",
    "CheckpointError",
    "CorruptMediaError",
    "DatasetWarning",
    "EmptyVideoError",
    "MediaError",
    "MetadataError",
    "MissingDependencyError",
    "MissingFileError",
    "NoVideoStreamError",
    "ShapeError",
    "UsageError",
]


class AVSegError(Exception):
    """Base class of every error avseg raises on bad input."""


class MediaError(AVSegError):
    """A media file (video, audio, image) that cannot be used; ``path`` names it."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class CorruptMediaError(MediaError):
    """The file exists but cannot be opened or decoded (unreadable or corrupt container, bad image)."""


class NoVideoStreamError(MediaError):
    """The container opens but holds no video stream."""


class EmptyVideoError(MediaError):
    """The video stream (or frame folder) decodes to zero frames."""


class MissingFileError(AVSegError, FileNotFoundError):
    """A file a dataset layout or a command requires does not exist."""

    def __init__(self, path: str | Path, what: str = "file") -> None:
        self.path = Path(path)
        super().__init__(f"{self.path}: {what} not found")


class MetadataError(AVSegError, ValueError):
    """Malformed metadata (CSV, JSON, manifest): ``path`` names the file, the message names the row or key."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class CheckpointError(AVSegError, ValueError):
    """A weights/checkpoint file that exists but does not fit the model or cannot be read; ``path`` names it."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ShapeError(AVSegError, ValueError):
    """A tensor or array argument has the wrong rank, size or dtype; the message names the argument."""


class UsageError(AVSegError, ValueError):
    """A command-line argument or API argument that cannot work (an output path that is an input, a folder where a
    file is needed, an unavailable device); the message names the argument and the value."""


class MissingDependencyError(AVSegError, ImportError):
    """An optional package a command needs is not installed; the message names the package and the pip extra."""

    def __init__(self, package: str, extra: str | None, purpose: str) -> None:
        self.package = package
        self.extra = extra
        how = f'pip install "avseg[{extra}]"' if extra else f"pip install {package}"
        super().__init__(f"{purpose} needs the package {package!r}, which is not installed; install it with: {how}")


class AVSegWarning(UserWarning):
    """Base class of avseg warnings (documented fallbacks that change the data)."""


class AudioPaddedWarning(AVSegWarning):
    """Audio was missing or shorter than the video and was padded with silence."""


class DatasetWarning(AVSegWarning):
    """A dataset quirk was handled by a documented rule (rows dropped, duplicates removed)."""
