"""File names for images sent to CVAT.

CVAT names frames, and Datumaro items, by the uploaded file's base name (items drop the
extension), so two pool images called ``0001.jpg`` in different folders would collide. Every
image therefore travels as ``<image id>_<sanitised name>``: unique, readable, and mappable back
to the image without a lookup table (the table is still recorded for pushed tasks).
"""
from __future__ import annotations

import re
from pathlib import PurePosixPath

_EXT_RE = re.compile(r"\.[A-Za-z0-9]{1,5}")


def _split(name: str) -> tuple[str, str]:
    p = PurePosixPath(name.replace("\\", "/"))
    stem, ext = p.with_suffix("").as_posix(), p.suffix
    if not _EXT_RE.fullmatch(ext or ""):
        stem, ext = p.as_posix(), ".jpg"
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.")[:80] or "image"
    return stem, ext.lower()


def upload_name(image_id: int, name: str) -> str:
    """``12_cam1-car-front.jpg`` for image 12 named ``cam1/car front.JPG``."""
    stem, ext = _split(name)
    return f"{int(image_id)}_{stem}{ext}"


def upload_stem(image_id: int, name: str) -> str:
    """The Datumaro item id CVAT will give :func:`upload_name`'s file."""
    return PurePosixPath(upload_name(image_id, name)).stem


def parse_upload_stem(stem: str) -> tuple[int, str] | None:
    """``"12_car"`` -> ``(12, "car")``; None for names we did not make."""
    m = re.fullmatch(r"(\d+)_(.+)", stem)
    return (int(m.group(1)), m.group(2)) if m else None
