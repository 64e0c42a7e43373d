"""Host-side text drawing for captions and titles (PIL, no matplotlib).

Only the thin text strips are drawn on the host; the image part of a grid stays a tensor. All
strips of a grid are drawn into one PIL image so that a grid costs one host->device copy.
"""

from __future__ import annotations

import functools
import re
import threading
from collections import OrderedDict
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


# A whole word that is a number: "1.23", "-4", "93%", "1e-05", "(0.93)", "inf"; these are never cut.
_NUMBER = re.compile(r"[(\[]?[-+]?(?:\d+(?:[.,]\d+)*(?:[eE][-+]?\d+)?%?|inf|nan)[)\],:;]?", re.IGNORECASE)
_MIN_CHARS = 2  # a shortened word keeps at least one character and the ellipsis


def is_number(word: str) -> bool:
    """Whether ``word`` (one whitespace-free word, maybe in brackets or before a comma) is a number."""
    return _NUMBER.fullmatch(word) is not None


def shorten_word(word: str, chars: int) -> str:
    """``word`` in at most ``chars`` characters with an ellipsis: a path keeps its end (the file name)."""
    if len(word) <= chars + 1:  # one character traded for an ellipsis saves nothing
        return word
    keep = max(1, chars - 1)
    if "/" in word or "\\" in word:
        head = keep // 3
        return word[:head] + ELLIPSIS + word[len(word) - (keep - head) :]
    return word[:keep] + ELLIPSIS


def _capped(words: list[str], tier: list[int], cap: int, floor: dict[int, int]) -> str:
    """The words with those of ``tier`` cut to ``cap`` characters and those in ``floor`` to theirs."""
    out = list(words)
    for i, limit in floor.items():
        out[i] = shorten_word(words[i], limit)
    for i in tier:
        out[i] = shorten_word(words[i], cap)
    return " ".join(out)


def fit_text(text: str, fnt: _Font, max_width: float) -> str:
    """``text`` on one line, at most ``max_width`` px wide, with every number in it whole.

    What does not fit is shortened word by word, never mid-number: paths first (keeping the file name),
    then the other words, longest first (each cut with an ellipsis down to one character), then numbers
    rounded (to one decimal at the least). Only when that is not enough are whole words dropped from the
    end, replaced by an ellipsis.

    Example:
        >>> fit_text("worst 3 · plants/train/Cordate/leaf_0042.jpg · loss 1.2345", font(12), 250)
        'worst 3 · plants/…/leaf_0042.jpg · loss 1.2345'
    """
    text = " ".join(text.split())  # newlines/tabs would break the one-line layout (see line_count)
    if fnt.getlength(text) <= max_width:
        return text
    words = text.split(" ")
    paths = [i for i, w in enumerate(words) if ("/" in w or "\\" in w) and not is_number(w)]
    others = [i for i, w in enumerate(words) if i not in paths and not is_number(w)]
    floor: dict[int, int] = {}
    for tier in (paths, others):
        if not tier:
            continue
        longest = max(len(words[i]) for i in tier)
        fitted = _longest_cap(words, tier, floor, fnt, max_width, longest)
        if fitted is not None:
            return _capped(words, tier, fitted, floor)
        floor.update(dict.fromkeys(tier, _MIN_CHARS))
    words = [shorten_word(w, floor.get(i, len(w))) for i, w in enumerate(words)]
    # Then numbers, rounded to no fewer than one decimal (0.53 -> 1 would say something else).
    for decimals in range(_most_decimals(words) - 1, 0, -1):
        rounded = [round_number(w, decimals) for w in words]
        if fnt.getlength(" ".join(rounded)) <= max_width:
            return " ".join(rounded)
    return _drop_words([round_number(w, 1) for w in words], fnt, max_width)


_DECIMAL = re.compile(r"([(\[]?)([-+]?\d+\.(\d+))([)\],:;]?)")


def round_number(word: str, decimals: int) -> str:
    """A plain decimal word (``1.2345``, ``(0.93)``) rounded to at most ``decimals`` places; others as is.

    Example:
        >>> round_number("1.2345", 2), round_number("(0.93)", 0), round_number("abc", 1)
        ('1.23', '(1)', 'abc')
    """
    found = _DECIMAL.fullmatch(word)
    if found is None or len(found.group(3)) <= decimals:
        return word
    opening, number, _, closing = found.groups()
    return f"{opening}{float(number):.{decimals}f}{closing}"


def _most_decimals(words: list[str]) -> int:
    return max((len(m.group(3)) for w in words if (m := _DECIMAL.fullmatch(w))), default=0)


def _longest_cap(
    words: list[str], tier: list[int], floor: dict[int, int], fnt: _Font, max_width: float, longest: int
) -> int | None:
    """The largest per-word character cap for ``tier`` that makes the line fit, None if none does."""
    lo, hi = _MIN_CHARS, longest
    if fnt.getlength(_capped(words, tier, lo, floor)) > max_width:
        return None
    while lo < hi:  # binary search: fits at lo, the answer is in [lo, hi]
        mid = (lo + hi + 1) // 2
        if fnt.getlength(_capped(words, tier, mid, floor)) <= max_width:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _drop_words(words: list[str], fnt: _Font, max_width: float) -> str:
    """As many whole words from the start as fit with an ellipsis after them ("" if not even that)."""
    for n in range(len(words) - 1, -1, -1):
        line = " ".join([*words[:n], ELLIPSIS])
        if fnt.getlength(line) <= max_width:
            return line
    return ""


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
    replay = isinstance(fnt, ImageFont.FreeTypeFont)
    for s, boxes in enumerate(strips):
        for box in boxes:
            for i, line in enumerate(box.text.split("\n")):
                text = _fitted(line, font_size, box.width - 2 * margin)
                if not text:
                    continue
                x = box.x + margin
                if box.align == "center":
                    x = box.x + (box.width - _length(text, font_size)) / 2
                elif box.align == "right":
                    x = box.x + box.width - margin - _length(text, font_size)
                y = s * height + i * band + y_offset
                if replay:
                    _draw_line(canvas, draw, (round(x), round(y)), text, font_size, box.color)
                else:  # pragma: no cover - Pillow built without FreeType
                    draw.text((round(x), round(y)), text, fill=box.color, font=fnt)
    return np.array(canvas).reshape(len(strips), height, width, 3)


# Captions recur from epoch to epoch (probe names, file names, class names, many of the numbers), and
# FreeType's rasterising is most of a page's drawing time: each line is fitted and rasterised once.
_LINES = 4096


@functools.lru_cache(maxsize=_LINES)
def _fitted(line: str, font_size: int, max_width: float) -> str:
    return fit_text(line, font(font_size), max_width)


@functools.lru_cache(maxsize=_LINES)
def _length(text: str, font_size: int) -> float:
    return font(font_size).getlength(text)


class _LineMasks:
    """Coverage masks of the caption lines seen at least twice (bounded, least recently used dropped).

    A line seen for the first time is drawn by ``ImageDraw.text``; building its mask costs about 1.5x
    that, so only lines that recur (probe names, file names, most labels) get one.
    """

    def __init__(self, capacity: int = _LINES) -> None:
        self.capacity = capacity
        self.seen: OrderedDict[tuple[str, int], None] = OrderedDict()
        self.masks: OrderedDict[tuple[str, int], tuple[Image.Image, int, int]] = OrderedDict()
        self.lock = threading.Lock()  # one writer thread per trainer: several trainers, several threads

    def get(self, text: str, font_size: int) -> tuple[Image.Image, int, int] | None:
        """The mask when the line was seen before (built on its second sight), else None."""
        key = (text, font_size)
        with self.lock:
            mask = self.masks.get(key)
            if mask is not None:
                self.masks.move_to_end(key)
                return mask
            if key not in self.seen:
                self.seen[key] = None
                _trim(self.seen, self.capacity)
                return None
        mask = _line_mask(text, font_size)
        with self.lock:
            self.masks[key] = mask
            _trim(self.masks, self.capacity)
        return mask


def _trim(entries: OrderedDict, capacity: int) -> None:
    while len(entries) > capacity:
        entries.popitem(last=False)


def _line_mask(text: str, font_size: int) -> tuple[Image.Image, int, int]:
    """The line's coverage as an "L" image and where its top-left sits from the drawing origin.

    ``ImageDraw.text`` blends the font's coverage mask with the fill colour at the origin plus the
    mask's offset; pasting the colour through the same mask at the same place (``Image.paste``) is the
    same blend, so the pixels are those of ``draw.text``.
    """
    fnt = font(font_size)
    left, top, right, bottom = (int(v) for v in fnt.getbbox(text))
    mask = Image.new("L", (max(right - left, 0), max(bottom - top, 0)), 0)
    ImageDraw.Draw(mask).text((-left, -top), text, fill=255, font=fnt)
    return mask, left, top


_MASKS = _LineMasks()


def _draw_line(
    canvas: Image.Image,
    draw: ImageDraw.ImageDraw,
    xy: tuple[int, int],
    text: str,
    font_size: int,
    color: tuple[int, int, int],
) -> None:
    cached = _MASKS.get(text, font_size)
    if cached is None:
        draw.text(xy, text, fill=color, font=font(font_size))
        return
    mask, left, top = cached
    if mask.width and mask.height:
        canvas.paste(color, (xy[0] + left, xy[1] + top), mask)


@functools.lru_cache(maxsize=_LINES)
def text_mask(text: str, font_size: int, rotated: bool = False) -> np.ndarray:
    """One line's anti-aliased coverage as a read-only uint8 ``[line height, ink width]`` array.

    Row 0 is the font's ascender line and every string of a size has the same height, so strings placed
    at the same top share their baseline; the columns span the ink. ``rotated`` turns the mask 90°
    counter-clockwise (read bottom to top, like a y-axis label): ``[ink width, line height]``. Cached
    (bounded): charts redraw the same labels and numbers every epoch, and FreeType's rasterising is most
    of a string's cost.

    Example:
        >>> text_mask("0.96", 18).shape, text_mask("0.96", 18, rotated=True).shape
        ((23, 34), (34, 23))
    """
    if rotated:
        mask = np.ascontiguousarray(np.rot90(text_mask(text, font_size)))
    else:
        glyphs, _, top = _line_mask(text, font_size)
        mask = np.zeros((line_height(font_size), glyphs.width), np.uint8)
        rows = np.asarray(glyphs, np.uint8)[max(-top, 0) : mask.shape[0] - top]
        mask[max(top, 0) : max(top, 0) + rows.shape[0]] = rows
    mask.flags.writeable = False  # shared by every caller through the cache
    return mask


@functools.lru_cache(maxsize=16)
def line_height(font_size: int) -> int:
    """Height in pixels of one line of text (ascender to descender) in ``font(font_size)``.

    Example:
        >>> line_height(18)
        23
    """
    fnt = font(font_size)
    if isinstance(fnt, ImageFont.FreeTypeFont):
        ascent, descent = fnt.getmetrics()
        return ascent + descent
    return int(fnt.getbbox("Ag|")[3])  # pragma: no cover - Pillow built without FreeType
