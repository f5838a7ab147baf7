"""Decode one image file into the RGB array every other part of the app expects.

Why one function: ingestion, the labeling page and dataset code must agree on what an image
*is* (EXIF orientation applied, CMYK/grayscale/palette/16-bit converted, transparency flattened
on white). Anything that cannot be turned into such an array raises :class:`ImageRejected` with
a short human-readable reason, which ingestion records as a reject instead of crashing.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Pixel cap per image, like Image.MAX_IMAGE_PIXELS but enforced *before* decoding and raised as
# a reject. Vehicle crops are tiny; 40 MP is already a large camera frame.
DEFAULT_MAX_PIXELS = 40_000_000
# Anything narrower than this is a thumbnail or an icon, not a usable crop.
DEFAULT_MIN_SIDE = 8
# Formats a vehicle crop realistically comes in. Pillow opens many more (PSD, ICO, PCX, EPS...),
# which we refuse rather than risk odd decoders on untrusted files.
SUPPORTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "BMP", "WEBP", "TIFF", "GIF"})


class ImageRejected(ValueError):
    """A file that cannot be used as a pool image; ``reason`` is a short explanation."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _to_8bit(img: Image.Image) -> Image.Image:
    """Map high bit-depth single-channel modes (I;16, I, F) onto 0..255 'L'."""
    arr = np.asarray(img)
    if arr.dtype == np.uint8:
        return Image.fromarray(arr, mode="L")
    arr = arr.astype(np.float64)
    if img.mode.startswith("I;16") or (img.mode == "I" and arr.max(initial=0) > 255):
        top = 65535.0 if arr.max(initial=0) <= 65535 else float(arr.max())
        arr = arr * (255.0 / top)
    elif img.mode == "F":
        lo, hi = float(arr.min(initial=0)), float(arr.max(initial=0))
        arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")


def _flatten(img: Image.Image) -> Image.Image:
    """Any decoded mode -> RGB (alpha composited on white)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _to_8bit(img).convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode in ("P", "L", "RGB") and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def decode_image(data: bytes, *, name: str = "", max_pixels: int = DEFAULT_MAX_PIXELS,
                 min_side: int = DEFAULT_MIN_SIDE) -> np.ndarray:
    """Fully decode image bytes to an H x W x 3 uint8 RGB array or raise ImageRejected."""
    if not data:
        raise ImageRejected("zero-byte file")
    try:
        with warnings.catch_warnings():
            # our own pixel cap below gives the reject reason; Pillow's warning is noise
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageRejected("not an image (unrecognised file content)") from None
    except Image.DecompressionBombError as exc:
        raise ImageRejected(f"decompression bomb: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageRejected(f"corrupt image header: {exc}") from None
    with img:
        fmt = img.format or "unknown"
        if fmt not in SUPPORTED_FORMATS:
            raise ImageRejected(f"unsupported format {fmt}")
        w, h = img.size
        if w * h > max_pixels:
            raise ImageRejected(
                f"decompression bomb: {w}x{h} = {w * h:,} pixels exceeds the {max_pixels:,} cap")
        if min(w, h) < min_side:
            raise ImageRejected(f"too small: {w}x{h} (minimum side {min_side} px)")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img.load()
        except OSError as exc:
            text = str(exc)
            if "truncated" in text or "broken data stream" in text or "premature end" in text.lower():
                raise ImageRejected(f"truncated image ({text})") from None
            raise ImageRejected(f"corrupt image: {text}") from None
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            raise ImageRejected(f"decompression bomb: {exc}") from None
        except (SyntaxError, ValueError, EOFError, MemoryError) as exc:
            raise ImageRejected(f"corrupt image: {exc}") from None
        try:
            img = ImageOps.exif_transpose(img) or img
        except Exception:  # noqa: BLE001 - a broken EXIF block must not cost the pixels
            pass
        try:
            rgb = _flatten(img)
        except (OSError, ValueError) as exc:
            raise ImageRejected(f"cannot convert {img.mode} to RGB: {exc}") from None
        arr = np.asarray(rgb, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageRejected(f"unexpected decoded shape {arr.shape}")
    return np.ascontiguousarray(arr)


def load_rgb(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS,
             min_side: int = DEFAULT_MIN_SIDE) -> np.ndarray:
    """Read and fully decode an image file to H x W x 3 uint8 RGB (see :func:`decode_image`)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise ImageRejected("is a folder, not a file") from None
    except OSError as exc:
        raise ImageRejected(f"cannot read file: {exc.strerror or exc}") from None
    return decode_image(data, name=path.name, max_pixels=max_pixels, min_side=min_side)
