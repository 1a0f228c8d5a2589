"""THE decoder: anything image-like (path, bytes, PIL in any mode, 16-bit PNG, RGBA, palette,
numpy) to an 8-bit RGB PIL image, or None (logged) when it is unreadable, so one broken frame
never kills a long run."""
from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sewer_hf.errors import DataError

if TYPE_CHECKING:  # heavy imports only for type checkers; the CLI imports this module
    from PIL import Image as PILImage

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def decode_rgb(image: Any, strict: bool = False) -> "PILImage.Image | None":
    """THE image decoder of the package: every entry point (training, ``prepare``,
    ``check-data``, ``predict``, ``scan``, ``SewerClassifier.predict``, the attention overlay,
    the Space) turns its input into pixels here, so one file gives the same scores everywhere.

    Fully decodes ``image`` to an 8-bit RGB PIL image. Accepts a ``datasets`` image dict
    ``{"bytes", "path"}`` (bytes win), a PIL image (in any mode; a lazily opened one is decoded
    now), raw bytes, a path, or a uint8/uint16 numpy array (HxW, HxWx1, HxWx3, HxWx4).
    Conversions: grayscale and palette -> RGB; any alpha channel (RGBA, LA, PA, a palette or
    grayscale with a transparent colour) is composited on black (transparent pixels show as
    black, as a viewer on a black screen would; Sewer-ML frames are opaque, so this only matters
    for foreign images); 16-bit grayscale is scaled to 8 bits (``round(v * 255 / 65535)``, not
    clipped to white); a 16-bit RGB(A) PNG keeps the high byte of each sample (Pillow's reader).

    When it cannot be read: ``None`` and a logged warning (one broken frame never stops a long
    run), or with ``strict=True`` a ``DataError`` that names the image and the reason.
    """
    rgb, error = decode_rgb_or_error(image)
    if rgb is None:
        if strict:
            raise DataError(f"{describe_image(image)}: not an image that can be decoded ({error}); expected a PNG, "
                            f"JPEG, BMP, TIFF or WebP file")
        logger.warning("unreadable image %s: %s", describe_image(image), error)
    return rgb


def decode_rgb_or_error(image: Any) -> tuple["PILImage.Image | None", str | None]:
    """Like ``decode_rgb`` but silent: ``(rgb, None)`` or ``(None, reason)``."""
    from PIL import Image

    opened = None
    try:
        if isinstance(image, Image.Image):
            img = image
        elif isinstance(image, np.ndarray):
            img = _array_image(image)
        else:
            opened = img = Image.open(_as_file(image))
        img.load()  # decodes everything now: truncated files fail here, not in a worker later
        return _to_rgb(img), None
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure means "unreadable"
        if opened is not None:
            opened.close()
        return None, f"{type(exc).__name__}: {exc}"


def _array_image(array: np.ndarray) -> "PILImage.Image":
    """A numpy image (uint8 or uint16; HxW, HxWx1, HxWx3 or HxWx4) as a PIL image."""
    from PIL import Image

    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)) or min(array.shape[:2]) < 1:
        raise ValueError(f"image array of shape {array.shape}: expected HxW, HxWx1, HxWx3 or HxWx4")
    if array.dtype == np.uint16:
        if array.ndim == 2:
            return Image.fromarray(array)  # mode I;16: scaled by _to_rgb
        array = ((array.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)
    if array.dtype != np.uint8:
        raise ValueError(f"image array of dtype {array.dtype}: expected uint8 or uint16")
    return Image.fromarray(np.ascontiguousarray(array))


def encoded_bytes(image: Any) -> bytes | None:
    """The encoded bytes of an image (a ``datasets`` dict: its bytes, else its file; raw bytes;
    a path), or ``None`` (and a warning) when there are none to read."""
    try:
        source = _as_file(image)
        data = source.getvalue() if isinstance(source, io.BytesIO) else Path(source).read_bytes()
        if not data:
            raise ValueError("empty file")
        return data
    except (OSError, TypeError, ValueError) as exc:
        logger.warning("unreadable image %s: %s: %s", describe_image(image), type(exc).__name__, exc)
        return None


def _as_file(image: Any):
    if isinstance(image, dict):
        if image.get("bytes") is not None:
            return io.BytesIO(image["bytes"])
        if image.get("path"):
            return image["path"]
        raise ValueError("image dict has neither 'bytes' nor 'path'")
    if isinstance(image, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(image))
    if isinstance(image, (str, os.PathLike)):
        return image
    raise TypeError(f"expected an image dict, PIL image, bytes or path, got {type(image).__name__}")


def describe_image(image: Any) -> str:
    if isinstance(image, dict):
        return str(image.get("path") or "<bytes>")
    if isinstance(image, (str, os.PathLike)):
        return os.fspath(image)
    return f"<{type(image).__name__}>"


def _to_rgb(img: "PILImage.Image") -> "PILImage.Image":
    from PIL import Image

    if img.mode == "RGB":
        return img
    if img.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(img).astype(np.int64)
        # PNG stores at most 16 bits: map 0..65535 onto 0..255 with rounding.
        eight = (np.clip(values, 0, 65535) * 255 + 32767) // 65535
        return Image.fromarray(eight.astype(np.uint8), mode="L").convert("RGB")
    if img.mode == "F":
        return Image.fromarray(np.clip(np.asarray(img), 0, 255).round().astype(np.uint8), mode="L").convert("RGB")
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, ...


