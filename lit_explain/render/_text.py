"""Host-side text drawing for captions and titles (PIL, no matplotlib).

Only the thin text strips are drawn on the host; the image part of a grid stays a tensor. All
strips of a grid are drawn into one PIL image so that a grid costs one host->device copy.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageColor, ImageDraw, ImageFont

Color = tuple[int, int, int] | str
"""An RGB tuple of 0..255 ints or any colour string PIL understands ("red", "#1f77b4")."""

ELLIPSIS = "…"

_Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


def rgb(color: Color) -> tuple[int, int, int]:
    """Resolve a :data:`Color` to an RGB tuple."""
    if isinstance(color, str):
        r, g, b = ImageColor.getrgb(color)[:3]
        return (r, g, b)
    if len(color) != 3 or not all(isinstance(c, int | np.integer) and 0 <= c <= 255 for c in color):
        raise ValueError(f"colour must be an (r, g, b) tuple of ints in 0..255 or a name, got {color!r}")
    return (int(color[0]), int(color[1]), int(color[2]))


@functools.lru_cache(maxsize=16)
def font(size: int) -> _Font:
    """Pillow's bundled sans font at ``size`` px (a fixed bitmap font where FreeType is missing)."""
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError, TypeError):  # pragma: no cover - Pillow built without FreeType
        return ImageFont.load_default()


def fit_text(text: str, fnt: _Font, max_width: float) -> str:
    """``text`` on one line, cut at the end with an ellipsis so it is at most ``max_width`` px."""
    text = " ".join(text.split())  # newlines/tabs would break the one-line layout (see line_count)
    if fnt.getlength(text) <= max_width:
        return text
    if fnt.getlength(ELLIPSIS) > max_width:
        return ""
    # Binary search the longest prefix that still fits with the ellipsis appended.
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fnt.getlength(text[:mid].rstrip() + ELLIPSIS) <= max_width:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo].rstrip() + ELLIPSIS


def line_count(text: str) -> int:
    """How many lines a caption takes: one per ``\\n``-separated part."""
    return text.count("\n") + 1


@dataclass(frozen=True)
class TextBox:
    """One piece of text inside a strip: a horizontal box ``[x, x + width)`` and how to place it.

    ``text`` may hold several lines separated by ``\\n``; each is fitted to the box on its own.
    """

    text: str
    x: int
    width: int
    color: tuple[int, int, int] = (0, 0, 0)
    align: Literal["left", "center", "right"] = "left"


def draw_strips(
    strips: Sequence[Sequence[TextBox]],
    width: int,
    height: int,
    font_size: int,
    background: tuple[int, int, int],
    line_height: int | None = None,
) -> np.ndarray:
    """Draw ``len(strips)`` text strips of ``height x width``; returns uint8 ``[S, height, width, 3]``.

    Multi-line texts put their lines ``line_height`` px apart (default: the whole strip height, i.e.
    one line), each line centred vertically in its own band.
    """
    canvas = Image.new("RGB", (width, height * len(strips)), background)
    draw = ImageDraw.Draw(canvas)
    fnt = font(font_size)
    # One vertical reference for every string, so baselines line up whether or not a caption has
    # descenders or capitals.
    band = line_height or height
    _, top, _, bottom = fnt.getbbox("Ag|")
    y_offset = (band - (bottom - top)) / 2 - top
    margin = 2
    for s, boxes in enumerate(strips):
        for box in boxes:
            for i, line in enumerate(box.text.split("\n")):
                text = fit_text(line, fnt, box.width - 2 * margin)
                if not text:
                    continue
                x = box.x + margin
                if box.align == "center":
                    x = box.x + (box.width - fnt.getlength(text)) / 2
                elif box.align == "right":
                    x = box.x + box.width - margin - fnt.getlength(text)
                y = s * height + i * band + y_offset
                draw.text((round(x), round(y)), text, fill=box.color, font=fnt)
    return np.array(canvas).reshape(len(strips), height, width, 3)
