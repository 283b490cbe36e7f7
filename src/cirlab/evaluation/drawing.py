"""Small PIL helpers for the pictures composed from images (the report's example grid); charts are in `plots`."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageFont

from cirlab.utils.io import atomic_path


def font(size: int) -> ImageFont.ImageFont:
    """Pillow's built-in font at `size` (a fixed-size bitmap font where Pillow lacks FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Write `image` as PNG atomically: a crash never leaves half a picture in place of a good one."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)
