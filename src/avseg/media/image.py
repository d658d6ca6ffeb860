"""Still-image I/O: RGB frames, binary / palette masks and colour masks, with errors that name the file.

Every dataset reader decodes images through these functions so that a missing or corrupt file always produces the
same one-line error (:class:`~avseg.errors.MissingFileError` or :class:`~avseg.errors.CorruptMediaError`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from avseg.errors import CorruptMediaError, MissingFileError, ShapeError
from avseg.fileio import atomic_file

__all__ = ["read_mask", "read_rgb", "write_jpeg", "write_png"]


def _open(path: str | Path, what: str) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(path, what)
    try:
        image = Image.open(path)
        image.load()  # decode now, so truncated files fail here and not later inside a transform
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise CorruptMediaError(path, f"cannot decode {what}: {err}") from err
    return image


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as RGB.

    Args:
        path: JPEG/PNG/... file.

    Returns:
        ``uint8`` array ``(H, W, 3)``.
    """
    return np.asarray(_open(path, "image").convert("RGB"), dtype=np.uint8)


def read_mask(path: str | Path) -> np.ndarray:
    """Read a single-channel mask PNG without changing its values.

    Palette (``P``) images return their palette indices, grayscale images their gray values, 1-bit images 0/1, and
    RGB(A) images are rejected: colour masks go through :func:`read_rgb` and a palette decoder instead.

    Args:
        path: mask file.

    Returns:
        ``uint8`` array ``(H, W)``.
    """
    image = _open(path, "mask")
    if image.mode in ("P", "L"):
        return np.asarray(image, dtype=np.uint8)
    if image.mode == "1":
        return np.asarray(image, dtype=np.uint8)
    if image.mode in ("I", "I;16", "F"):
        return (np.asarray(image) > 0).astype(np.uint8)
    if image.mode in ("RGB", "RGBA", "LA"):
        # Some re-encoded copies of binary-mask datasets store the mask as gray RGB; accept those, since every
        # channel carries the same value, and refuse genuinely coloured masks.
        rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
        if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
            return rgb[..., 0].copy()
        raise CorruptMediaError(path, f"expected a single-channel mask, got a colour image (mode {image.mode})")
    raise CorruptMediaError(path, f"unsupported mask image mode {image.mode!r}")


def write_png(path: str | Path, array: np.ndarray, palette: np.ndarray | None = None) -> None:
    """Write ``(H, W)`` (gray or palette indices) or ``(H, W, 3)`` RGB ``uint8`` data as PNG, atomically.

    Args:
        path: destination file.
        array: image data.
        palette: optional ``(K, 3)`` ``uint8`` palette; with it a ``(H, W)`` array is stored as a ``P`` image.
    """
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise ShapeError(f"write_png: array must be uint8 (H, W) or (H, W, 3), got {array.dtype} {array.shape}")
    image = Image.fromarray(array)
    if palette is not None:
        if array.ndim != 2:
            raise ShapeError("write_png: a palette needs a (H, W) index array")
        image = image.convert("P")
        flat = np.zeros((256, 3), dtype=np.uint8)
        flat[: len(palette)] = np.asarray(palette, dtype=np.uint8)
        image.putpalette(flat.reshape(-1).tolist())
    with atomic_file(path) as tmp:  # PIL is told the format: the temporary name's suffix does not matter
        image.save(tmp, format="PNG")


def write_jpeg(path: str | Path, array: np.ndarray, quality: int = 95) -> None:
    """Write a ``(H, W, 3)`` ``uint8`` RGB array as JPEG, atomically."""
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ShapeError(f"write_jpeg: array must be uint8 (H, W, 3), got {array.dtype} {array.shape}")
    with atomic_file(path) as tmp:
        Image.fromarray(array).save(tmp, format="JPEG", quality=quality)
