"""TIRG's 2D rendering of CSS scenes: coloured rectangles, diamond-like circles and triangles on white.

At 64x64 the drawing reproduces TIRG's `generate_2d_image` pixel for pixel (same floating-point span
arithmetic, integer-truncated rows and spans, exact colours), so generated images equal what TIRG's
loader draws. Larger sizes scale the geometry and draw anti-aliased (4x supersampling, LANCZOS
downsampling) for encoders that want bigger inputs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

COLORS: tuple[str, ...] = ("gray", "red", "blue", "green", "brown", "purple", "cyan", "yellow")
SHAPES: tuple[str, ...] = ("rectangle", "circle", "triangle")
SIZES: tuple[str, ...] = ("small", "large")

#: TIRG's colour table (RGB, 0-255).
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "gray": (87, 87, 87),
    "red": (244, 35, 35),
    "blue": (42, 75, 215),
    "green": (29, 205, 20),
    "brown": (129, 74, 25),
    "purple": (129, 38, 192),
    "cyan": (41, 208, 208),
    "yellow": (255, 238, 51),
}

#: Half-size in pixels of a small object on the 64 px canvas; large objects are twice as big.
BASE_HALF_SIZE = 4.0
BASE_CANVAS = 64
_SUPERSAMPLE = 4


def _half_size(obj: Mapping[str, Any], canvas: int) -> float:
    scale = 2.0 if obj["size"] == "large" else 1.0
    return BASE_HALF_SIZE * scale * canvas / BASE_CANVAS


def _span(lo: float, hi: float, limit: int) -> slice:
    """TIRG's `int(lo):int(hi)` slice, clipped to the canvas (TIRG would wrap negative indices)."""
    return slice(min(max(int(lo), 0), limit), min(max(int(hi), 0), limit))


def _render_exact(objects: Iterable[Mapping[str, Any]], size: int) -> np.ndarray:
    img = np.full((size, size, 3), 255, dtype=np.uint8)
    for obj in objects:
        s = _half_size(obj, size)
        y, x = obj["pos"][0] * size, obj["pos"][1] * size
        color = np.array(COLOR_RGB[obj["color"]], dtype=np.uint8)
        shape = obj["shape"]
        if shape == "rectangle":
            img[_span(y - s, y + s, size), _span(x - s, x + s, size)] = color
        elif shape == "circle":
            for row in range(int(y - s), int(y + s) + 1):
                left = x + (abs(row - y) - s)
                if 0 <= row < size:
                    img[row, _span(left, 2 * x - left, size)] = color
        elif shape == "triangle":
            for row in range(int(y - s), int(y + s)):
                edge = x + (row - y + s) / 2
                if 0 <= row < size:
                    img[row, _span(min(edge, 2 * x - edge), max(edge, 2 * x - edge), size)] = color
        else:
            raise ValueError(f"unknown CSS shape {shape!r}")
    return img


def _render_antialiased(objects: Iterable[Mapping[str, Any]], size: int) -> Image.Image:
    big = size * _SUPERSAMPLE
    canvas = Image.new("RGB", (big, big), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for obj in objects:
        s = _half_size(obj, big)
        y, x = obj["pos"][0] * big, obj["pos"][1] * big
        color = COLOR_RGB[obj["color"]]
        shape = obj["shape"]
        if shape == "rectangle":
            draw.rectangle([x - s, y - s, x + s, y + s], fill=color)
        elif shape == "circle":
            draw.polygon([(x, y - s), (x + s, y), (x, y + s), (x - s, y)], fill=color)
        elif shape == "triangle":
            draw.polygon([(x, y - s), (x + s, y + s), (x - s, y + s)], fill=color)
        else:
            raise ValueError(f"unknown CSS shape {shape!r}")
    return canvas.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=2.0)


def render_scene(objects: Iterable[Mapping[str, Any]], image_size: int = 64) -> Image.Image:
    """Draw a CSS scene (objects with `color`, `shape`, `size`, `pos` = (y, x) in [0, 1]) as an RGB image.

    64 px gives TIRG's exact drawing; any other size scales it and draws anti-aliased.
    """
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if image_size == BASE_CANVAS:
        return Image.fromarray(_render_exact(objects, image_size))
    return _render_antialiased(objects, image_size)
