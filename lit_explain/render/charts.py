"""Card charts drawn as pixels: the confusion matrix and the per-class accuracy pages the callbacks log.

The ``ConfusionMatrix`` callback logs both charts every validation epoch, from the training thread or a
background writer. Refilling a cached matplotlib figure per chart cost 5-60 ms a call (100-700 ms for
the first); these charts are numpy canvases instead. Per chart (class names and options) what never changes (titles, tick labels, axis labels,
frames, a colour bar with a fixed range) is drawn once and kept as pixels, and every string's coverage
mask is rasterised once (:func:`lit_explain.render._text.text_mask`); a call copies the fixed pixels,
paints the cells or bars and blends the masks of its strings (a few milliseconds).

Sizes and layout rules are those of the card figures of :mod:`lit_explain.render.figures`
(``confusion_matrix_figure(..., card=True)``, ``per_class_accuracy_pages``): the same picture sizes, the
same labelled classes, the same text size, so the logged pictures keep their contract.
"""

from __future__ import annotations

import functools
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib
import numpy as np
import torch
from torch import Tensor

from lit_explain.render._text import fit_text, font, line_height, text_mask
from lit_explain.render.card import card_font_pt
from lit_explain.render.figures import (
    _ANNOTATE_MAX_BARS,
    _CARD_BAR_CHARS,
    _DPI,
    CARD_FIGURE_IN,
    _accuracies,
    _accuracy_colors,
    _card_accuracy_label,
    _card_accuracy_size,
    _card_matrix_layout,
    _card_matrix_names,
    _cell_text,
    _check_names,
    _light_text,
    _matrix,
    _matrix_values,
    _mean_present,
    _page_chunks,
    _page_sizes,
    _page_titles,
    _rotate_x_labels,
    _short,
)

__all__ = ["confusion_matrix_image", "per_class_accuracy_images"]

TEXT_PX = round(card_font_pt(CARD_FIGURE_IN) * _DPI / 72)
"""Size of the charts' text (18 px): the card figures' font at their dpi, so that it stays
:data:`~lit_explain.render.card.MIN_TEXT_PX` tall when a 500 px chart is shown 320 px wide."""

Color = tuple[int, int, int]
_BLACK: Color = (0, 0, 0)
_WHITE: Color = (255, 255, 255)
_GRID: Color = (231, 231, 231)  # matplotlib's grid (#b0b0b0 at alpha 0.3) over white
_PAD = 6  # canvas edge to the outermost text
_GAP = 6  # between a block of text and what it labels
_TICK = 4  # tick mark length
_TICK_PAD = 3  # tick mark to its label
_BAR_GAP, _BAR_W = 10, 14  # colour bar: distance from the matrix, width
_VALUE_PAD = 4  # bar end to its value
_MEAN_LINE_PX = 1.2 * _DPI / 72  # matplotlib's 1.2 pt dashed line
_DASH = (6, 3)  # on, off (px): matplotlib's "--" at 1.2 pt
# The widest colour-bar label of a raw-count matrix (its labels change with the counts; the room does not).
_COUNT_LABELS = ("0.25", "8888", "88.8k", "8.88M")


# -- pixels ------------------------------------------------------------------------------------------------


def _blank(height: int, width: int) -> np.ndarray:
    return np.full((3, height, width), 255, np.uint8)


def _fill(canvas: np.ndarray, top: int, left: int, height: int, width: int, color: Color) -> None:
    canvas[:, max(top, 0) : max(top + height, 0), max(left, 0) : max(left + width, 0)] = np.asarray(
        color, np.uint8
    )[:, None, None]


def _frame(canvas: np.ndarray, top: int, left: int, height: int, width: int) -> None:
    """A 1 px black outline just outside the box, so that painting inside the box never touches it."""
    for box in ((top - 1, left - 1, 1, width + 2), (top + height, left - 1, 1, width + 2)):
        _fill(canvas, *box, _BLACK)
    for box in ((top, left - 1, height, 1), (top, left + width, height, 1)):
        _fill(canvas, *box, _BLACK)


def _blend(canvas: np.ndarray, mask: np.ndarray, top: int, left: int, color: Color) -> None:
    """Paint ``color`` through ``mask`` (coverage 0..255) at ``(top, left)``, clipped to the canvas."""
    _, height, width = canvas.shape
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + mask.shape[0], height), min(left + mask.shape[1], width)
    if y1 <= y0 or x1 <= x0:
        return
    cover = mask[y0 - top : y1 - top, x0 - left : x1 - left].astype(np.uint32)
    region = canvas[:, y0:y1, x0:x1]
    paint = np.asarray(color, np.uint32)[:, None, None] * cover
    region[...] = (region * (255 - cover) + paint + 127) // 255


_ALIGN = {"left": 0.0, "top": 0.0, "center": 0.5, "right": 1.0, "bottom": 1.0}


def _text(
    canvas: np.ndarray,
    text: str,
    x: float,
    y: float,
    ha: str = "left",
    va: str = "top",
    color: Color = _BLACK,
    size: int = TEXT_PX,
    rotated: bool = False,
    backdrop: bool = False,
) -> None:
    """One line of text whose box (ink width by line height) is aligned to ``(x, y)`` by ``ha``/``va``;
    with ``backdrop`` on a white box 2 px larger than its ink (for text that a line may cross)."""
    mask = text_mask(text, size, rotated)
    top = round(y - _ALIGN[va] * mask.shape[0])
    left = round(x - _ALIGN[ha] * mask.shape[1])
    if backdrop:
        first, last = _ink_rows(text, size, rotated)
        _fill(canvas, top + first - 2, left - 2, last - first + 5, mask.shape[1] + 4, _WHITE)
    _blend(canvas, mask, top, left, color)


def _width(text: str, size: int = TEXT_PX, rotated: bool = False) -> int:
    return text_mask(text, size, rotated).shape[1]


def _title(canvas: np.ndarray, title: str, centre: float, top: int) -> None:
    """A title centred on ``centre`` but kept whole inside the canvas (shortened only if it cannot fit)."""
    width = canvas.shape[2]
    title = fit_text(title, font(TEXT_PX), width - 2 * _PAD)
    w = _width(title)
    _text(canvas, title, min(max(centre - w / 2, _PAD), width - _PAD - w), top)


def _vline(
    canvas: np.ndarray, x: float, top: int, bottom: int, width: float, dash: tuple[int, int] | None = None
) -> None:
    """A black vertical line centred on ``x`` (sub-pixel: its edge columns get partial coverage)."""
    cols = np.arange(math.floor(x - width / 2), math.ceil(x + width / 2))
    cover = np.clip(np.minimum(cols + 1, x + width / 2) - np.maximum(cols, x - width / 2), 0.0, 1.0)
    rows = np.ones(max(bottom - top, 0))
    if dash is not None:
        rows = (np.arange(rows.size) % sum(dash) < dash[0]).astype(float)
    mask = np.round(rows[:, None] * cover[None, :] * 255).astype(np.uint8)
    _blend(canvas, mask, top, int(cols[0]) if cols.size else 0, _BLACK)


@functools.lru_cache(maxsize=1024)
def _ink_rows(text: str, size: int, rotated: bool = False) -> tuple[int, int]:
    """The first and last rows of ``text_mask(text, size, rotated)`` with ink ((0, -1) for none)."""
    rows = np.flatnonzero(text_mask(text, size, rotated).any(axis=1))
    return (int(rows[0]), int(rows[-1])) if rows.size else (0, -1)


@functools.lru_cache(maxsize=16)
def _lut(cmap: str) -> np.ndarray:
    """A matplotlib colormap's table as uint8 ``[N, 3]``, the colours matplotlib paints (``bytes=True``)."""
    try:
        colormap = matplotlib.colormaps[cmap]
    except KeyError as err:
        raise ValueError(f"{cmap!r} is not a matplotlib colormap name (e.g. 'Blues', 'viridis')") from err
    table = np.ascontiguousarray(colormap(np.arange(colormap.N), bytes=True)[:, :3])
    table.flags.writeable = False  # shared through the cache
    return table


def _lut_index(values01: np.ndarray, size: int) -> np.ndarray:
    """matplotlib's binning of ``[0, 1]`` values into a ``size``-entry table (1.0 in the last entry)."""
    return np.clip(np.floor(np.nan_to_num(values01) * size), 0, size - 1).astype(np.intp)


def _nice_ticks(vmax: float) -> tuple[np.ndarray, list[str]]:
    """Ticks from 0 to ``vmax`` at a round step (1, 2, 2.5 or 5 x 10^k, at most 8 ticks), with labels:
    counts from ten thousand in k and from a million in M, so that the labels stay short."""
    raw = vmax / 7
    base = 10.0 ** math.floor(math.log10(raw))
    step = next(f * base for f in (1, 2, 2.5, 5, 10) if f * base >= raw * (1 - 1e-9))
    ticks = step * np.arange(math.floor(vmax / step + 1e-9) + 1)
    units = ((1e6, "M", 1e6), (1e3, "k", 1e4))  # (scale, unit, from): "2.5M" and "20k", but "5000"
    scale, unit = next(((s, u) for s, u, start in units if ticks[-1] >= start), (1.0, ""))
    decimals = next(
        (d for d in range(7) if abs(step / scale * 10**d - round(step / scale * 10**d)) < 1e-6), 6
    )
    labels = ["0" if t == 0 and unit else f"{t / scale:.{decimals}f}{unit}" for t in ticks.tolist()]
    return ticks, labels


# -- charts kept per key -----------------------------------------------------------------------------------

_CACHED_CHARTS = 8
"""How many charts (matrix or page sets) are kept: a few tags (val/test) of a few runs."""
_charts: OrderedDict[tuple, Any] = OrderedDict()
# The callbacks call from their background writer threads: the cache is shared, the charts in it are not
# changed after they are built (a call paints a copy of their fixed pixels), so only the cache is locked.
_charts_lock = threading.Lock()


def _cached(key: tuple, build: Callable[[], Any]) -> Any:
    with _charts_lock:
        chart = _charts.pop(key, None)
        if chart is None:
            chart = build()
        _charts[key] = chart  # most recently used last
        while len(_charts) > _CACHED_CHARTS:
            _charts.popitem(last=False)
        return chart


# -- confusion matrix --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _MatrixBox:
    """Where a matrix chart's parts go, in canvas pixels."""

    left: int  # the matrix's top-left corner and its side
    top: int
    side: int
    edges: np.ndarray  # the n + 1 cell boundaries, from the corner
    bar_left: int  # the colour bar (its width is _BAR_W)
    bar_top: int
    bar_height: int


def _matrix_box(width: int, height: int, n: int, ytick_w: int, xtick_h: int, bar_label_w: int) -> _MatrixBox:
    """The largest square matrix that leaves room for the labels around it, centred with them."""
    line = line_height(TEXT_PX)
    left_part = _PAD + line + _GAP + ytick_w + _TICK_PAD + _TICK
    right_part = _BAR_GAP + _BAR_W + _TICK + _TICK_PAD + bar_label_w + _PAD
    top_part = _PAD + line + _GAP
    bottom_part = _TICK + _TICK_PAD + xtick_h + _GAP + line + _PAD
    room_w, room_h = width - left_part - right_part, height - top_part - bottom_part
    side = max(min(room_w, room_h), 1)
    left, top = left_part + (room_w - side) // 2, top_part + (room_h - side) // 2
    bar_height = round(0.8 * side)  # as matplotlib's colour bar (shrink=0.8), centred on the matrix
    return _MatrixBox(
        left=left,
        top=top,
        side=side,
        edges=np.round(np.linspace(0, side, n + 1)).astype(np.intp),
        bar_left=left + side + _BAR_GAP,
        bar_top=top + (side - bar_height) // 2,
        bar_height=bar_height,
    )


class _MatrixCard:
    """One confusion-matrix chart (class names and options): its fixed pixels, drawn once, and :meth:`draw`.

    Example:
        >>> _MatrixCard(list("abc"), True, "cm", "Blues").draw(np.eye(3)).shape
        torch.Size([3, 462, 500])
    """

    def __init__(self, names: list[str], normalize: bool, title: str, cmap: str) -> None:
        n = len(names)
        short = _card_matrix_names(names)
        layout = _card_matrix_layout(n, short)
        self.n, self.normalize, self.lut = n, normalize, _lut(cmap)
        self.cell_px = round(layout["cell_pt"] * _DPI / 72)
        ticks = list(range(0, n, layout["tick_every"]))
        labels = [short[i] for i in ticks]
        rotate = _rotate_x_labels(n, short, card=True)
        ytick_w = max((_width(c) for c in labels), default=0)
        xtick_h = ytick_w if rotate else line_height(TEXT_PX)  # rotated: as tall as the longest is wide
        bar_labels = _nice_ticks(1.0)[1] if normalize else _COUNT_LABELS
        width, height = (int(v * _DPI) for v in layout["size"])  # as Agg sizes a figure's canvas
        bar_label_w = max(_width(c) for c in bar_labels)
        self.box = box = _matrix_box(width, height, n, ytick_w, xtick_h, bar_label_w)
        # The cell each pixel row (and column) of the matrix falls in: cells are painted by one gather.
        self.cell_of = np.repeat(np.arange(n), np.diff(box.edges))
        canvas = _blank(height, width)
        title_top = box.top - _GAP - line_height(TEXT_PX)
        _title(canvas, title + (" (row-normalised)" if normalize else ""), box.left + box.side / 2, title_top)
        self._axis_labels(canvas, ticks, labels, rotate, (ytick_w, xtick_h))
        self._colour_bar(canvas)
        canvas.flags.writeable = False
        self.background = canvas

    def _centres(self, ticks: Sequence[int]) -> list[float]:
        edges = self.box.edges
        return [(edges[i] + edges[i + 1]) / 2 for i in ticks]

    def _axis_labels(
        self, canvas: np.ndarray, ticks: list[int], labels: list[str], rotate: bool, room: tuple[int, int]
    ) -> None:
        """Tick marks and class names on both axes, "true" and "predicted", and the matrix's frame."""
        box, (ytick_w, xtick_h) = self.box, room
        below = box.top + box.side + 1 + _TICK
        for label, c in zip(labels, self._centres(ticks), strict=True):
            _fill(canvas, round(box.top + c), box.left - 1 - _TICK, 1, _TICK, _BLACK)
            _fill(canvas, below - _TICK, round(box.left + c), _TICK, 1, _BLACK)
            _text(canvas, label, box.left - 1 - _TICK - _TICK_PAD, box.top + c, ha="right", va="center")
            _text(canvas, label, box.left + c, below + _TICK_PAD, ha="center", rotated=rotate)
        true_right = box.left - 1 - _TICK - _TICK_PAD - ytick_w - _GAP
        _text(canvas, "true", true_right, box.top + box.side / 2, ha="right", va="center", rotated=True)
        predicted_top = below + _TICK_PAD + xtick_h + _GAP
        _text(canvas, "predicted", box.left + box.side / 2, predicted_top, ha="center")
        _frame(canvas, box.top, box.left, box.side, box.side)

    def _colour_bar(self, canvas: np.ndarray) -> None:
        """The colour bar's gradient and frame, and its ticks where they never change (0..1)."""
        box = self.box
        # Row k from the bottom shows the value at its centre, (k + 0.5) / height of the range.
        values = (np.arange(box.bar_height)[::-1] + 0.5) / max(box.bar_height, 1)
        colours = self.lut[_lut_index(values, len(self.lut))]  # [bar_height, 3]
        bar = canvas[:, box.bar_top : box.bar_top + box.bar_height, box.bar_left : box.bar_left + _BAR_W]
        bar[...] = colours.T[:, :, None]
        _frame(canvas, box.bar_top, box.bar_left, box.bar_height, _BAR_W)
        if self.normalize:
            self._bar_ticks(canvas, 1.0)

    def _bar_ticks(self, canvas: np.ndarray, vmax: float) -> None:
        box = self.box
        x = box.bar_left + _BAR_W + 1
        for tick, label in zip(*_nice_ticks(vmax), strict=True):
            y = box.bar_top + box.bar_height - 1 - tick / vmax * (box.bar_height - 1)
            _fill(canvas, round(y), x, 1, _TICK, _BLACK)
            _text(canvas, label, x + _TICK + _TICK_PAD, y + 0.5, va="center")

    def draw(self, m: np.ndarray) -> Tensor:
        """The chart of counts ``m`` (``[C, C]`` float64) as uint8 ``[3, H, W]``."""
        shown, vmax = _matrix_values(m, self.normalize)
        canvas = self.background.copy()
        box = self.box
        colours = self.lut[_lut_index(shown / vmax, len(self.lut))].transpose(2, 0, 1)  # [3, n, n]
        if self.n:  # (no classes: an empty frame)
            cells = colours[:, self.cell_of][:, :, self.cell_of]
            canvas[:, box.top : box.top + box.side, box.left : box.left + box.side] = cells
        if self.cell_px:
            self._cell_numbers(canvas, shown, vmax)
        if not self.normalize:  # the colour bar's range follows the counts
            self._bar_ticks(canvas, vmax)
        return torch.from_numpy(canvas)

    def _cell_numbers(self, canvas: np.ndarray, shown: np.ndarray, vmax: float) -> None:
        box = self.box
        centres = self._centres(range(self.n))
        room = int(np.diff(box.edges).min()) - 2
        for (i, j), v in np.ndenumerate(shown):
            text = _cell_text(v, self.normalize)
            if _width(text, self.cell_px) > room:  # a large count: shortened (12.3k) rather than spilled over
                text = _compact(v)
                if _width(text, self.cell_px) > room:
                    continue
            color = _WHITE if _light_text(v, vmax) else _BLACK
            x, y = box.left + centres[j], box.top + centres[i] + _digit_shift(self.cell_px)
            _text(canvas, text, x, y, "center", "center", color, self.cell_px)


def _compact(count: float) -> str:
    """A count in at most 3 significant digits with k or M: 12345 -> 12.3k."""
    for scale, unit in ((1e6, "M"), (1e3, "k")):
        if abs(count) >= scale:
            return f"{count / scale:.3g}{unit}"
    return f"{count:.3g}"


@functools.lru_cache(maxsize=8)
def _digit_shift(size: int) -> float:
    """How far below its line box's middle a number's ink is centred: numbers in cells are centred on their
    ink (a line box keeps room for descenders, which digits never use)."""
    first, last = _ink_rows("0123456789", size)
    return (line_height(size) - 1) / 2 - (first + last) / 2


def confusion_matrix_image(
    cm: Tensor,
    class_names: Sequence[str],
    normalize: bool = True,
    title: str = "Confusion matrix",
    cmap: str = "Blues",
) -> Tensor:
    """The confusion matrix as a TensorBoard card picture: uint8 ``[3, H, W]``, 500 px wide.

    The card layout of ``confusion_matrix_figure(..., card=True)`` (same size; every k-th class labelled
    beyond about 14 classes; the numbers in the cells where they fit), drawn as pixels in a few
    milliseconds: the fixed parts are drawn once per (class names, options). Safe to call from any thread.

    Args:
        cm: ``[C, C]`` counts (rows: true class, columns: predicted class), any device.
        class_names: ``C`` names.
        normalize: divide each row by its sum (per-true-class rates; empty rows stay 0).
        title: chart title.
        cmap: matplotlib colormap name.

    Example:
        >>> confusion_matrix_image(torch.randint(0, 50, (6, 6)), list("abcdef")).shape
        torch.Size([3, 462, 500])
    """
    m = _matrix(cm)
    names = _check_names(class_names, m.shape[0], "cm")
    key = ("matrix", tuple(names), normalize, title, cmap)
    return _cached(key, lambda: _MatrixCard(names, normalize, title, cmap)).draw(m)


# -- per-class accuracy ------------------------------------------------------------------------------------


class _AccuracyPage:
    """One page of a per-class accuracy chart: ``n`` bars under ``title``, names in ``name_w`` px.

    Example:
        >>> page = _AccuracyPage(3, "accuracy", name_w=40)
        >>> page.draw(np.array([0.2, 0.5, np.nan]), ["a", "b", "c"], 0.35).shape
        torch.Size([3, 184, 500])
    """

    def __init__(self, n: int, title: str, name_w: int) -> None:
        width, height = (int(v * _DPI) for v in _card_accuracy_size(n))  # as Agg sizes a figure's canvas
        line = line_height(TEXT_PX)
        self.annotate = n <= _ANNOTATE_MAX_BARS
        self.left, self.top = _PAD + name_w + _GAP, _PAD + line + _GAP
        # Below the bars: tick marks, their labels, the axis label.
        self.plot_h = height - self.top - (1 + _TICK + _TICK_PAD + 2 * line + _GAP // 2 + _PAD)
        self.plot_w = width - self.left - _PAD - (0 if self.annotate else math.ceil(_width("1.0") / 2))
        # Room right of 1.0 for the values (as the figures' x range up to 1.1), at least "1.00" wide.
        value_room = _VALUE_PAD + _width("1.00") + 2
        self.xmax = max(1.1, self.plot_w / (self.plot_w - value_room)) if self.annotate else 1.0
        self.scale = self.plot_w / self.xmax  # px per accuracy unit
        self.row = self.plot_h / max(n, 1)
        rows = np.arange(n)
        # matplotlib's bars: 0.8 of a row, centred on it.
        self.bar_tops = self.top + np.round((rows + 0.1) * self.row).astype(np.intp)
        self.bar_bottoms = self.top + np.round((rows + 0.9) * self.row).astype(np.intp)
        canvas = _blank(height, width)
        _title(canvas, title, self.left + self.plot_w / 2, _PAD)
        self._x_axis(canvas)
        canvas.flags.writeable = False
        self.background = canvas

    def _x(self, value: float) -> float:
        return self.left + value * self.scale

    def _x_axis(self, canvas: np.ndarray) -> None:
        """Grid lines, tick marks and labels at 0, 0.5 and 1, and the frame."""
        bottom = self.top + self.plot_h
        for tick in (0.0, 0.5, 1.0):
            x = min(round(self._x(tick)), self.left + self.plot_w - 1)
            if 0 < tick < self.xmax:
                _fill(canvas, self.top, x, self.plot_h, 1, _GRID)
            _fill(canvas, bottom + 1, x, _TICK, 1, _BLACK)
            _text(canvas, f"{tick:.1f}", x + 0.5, bottom + 1 + _TICK + _TICK_PAD, ha="center")
        _frame(canvas, self.top, self.left, self.plot_h, self.plot_w)

    def draw(self, a: np.ndarray, names: Sequence[str], mean: float, out: np.ndarray | None = None) -> Tensor:
        """Bars for accuracies ``a`` (NaN: no samples) named ``names``, top to bottom, and the mean line;
        drawn into ``out`` (the background's shape) when given."""
        canvas = np.empty_like(self.background) if out is None else out
        np.copyto(canvas, self.background)
        valid = ~np.isnan(a)
        shown = np.where(valid, a, 0.0)
        colours = np.round(_accuracy_colors(shown)[:, :3] * 255).astype(np.uint8)
        ends = np.clip(np.round(shown * self.scale), 0, self.plot_w).astype(np.intp).tolist()
        for top, bottom, end, colour in zip(
            self.bar_tops.tolist(), self.bar_bottoms.tolist(), ends, colours, strict=False
        ):
            canvas[:, top:bottom, self.left : self.left + end] = colour[:, None, None]
        finite = bool(np.isfinite(mean))
        if finite:
            _vline(canvas, self._x(mean), self.top, self.top + self.plot_h, _MEAN_LINE_PX, _DASH)
        self._labels(canvas, a, valid, names)
        line = line_height(TEXT_PX)
        label_top = self.top + self.plot_h + 1 + _TICK + _TICK_PAD + line + _GAP // 2
        label = _card_accuracy_label(mean) if finite else "accuracy"
        _text(canvas, label, self.left + self.plot_w / 2, label_top, ha="center")
        return torch.from_numpy(canvas)

    def _labels(self, canvas: np.ndarray, a: np.ndarray, valid: np.ndarray, names: Sequence[str]) -> None:
        """Class names left of the bars, values at their ends ("n/a" for a class without samples)."""
        for i, (name, v, ok) in enumerate(zip(names, a.tolist(), valid.tolist(), strict=True)):
            y = self.top + (i + 0.5) * self.row
            _text(canvas, name, self.left - _GAP, y, ha="right", va="center")
            if self.annotate or not ok:
                x = self._x(min(max(v, 0.0), self.xmax) if ok else 0.0) + _VALUE_PAD
                # On white, so that the mean line or a grid line crossing a value never runs through it.
                _text(canvas, f"{v:.2f}" if ok else "n/a", x, y, va="center", backdrop=True)


class _AccuracyCard:
    """The pages of one per-class accuracy chart (class names and title), all with the same margins (room
    for the longest class name).

    Example:
        >>> card = _AccuracyCard([f"c{i}" for i in range(60)], "accuracy")
        >>> [p.shape[1] for p in card.draw(np.linspace(0.0, 1.0, 60))]
        [1329, 354]
    """

    def __init__(self, names: list[str], title: str) -> None:
        self.names = [_short(c, _CARD_BAR_CHARS) for c in names]
        name_w = max((_width(c) for c in self.names), default=0)
        sizes = _page_sizes(len(names))
        titles = _page_titles(title, len(sizes))
        self.pages = [_AccuracyPage(size, t, name_w) for size, t in zip(sizes, titles, strict=True)]

    def draw(self, a: np.ndarray) -> list[Tensor]:
        """One picture per page: the worst classes first, each page with the mean over all classes."""
        mean = _mean_present(a)
        # All pages in one allocation: freeing several page-sized blocks at once lets malloc return them
        # to the system, and the next call's pages would fault fresh memory in (about 1 ms a page here).
        sizes = [page.background.size for page in self.pages]
        buffer = np.empty(sum(sizes), np.uint8)
        views = np.split(buffer, np.cumsum(sizes)[:-1])
        return [
            page.draw(a[chunk], [self.names[i] for i in chunk], mean, view.reshape(page.background.shape))
            for page, chunk, view in zip(self.pages, _page_chunks(a), views, strict=True)
        ]


def per_class_accuracy_images(
    acc: Tensor, class_names: Sequence[str], title: str = "Per-class accuracy"
) -> list[Tensor]:
    """Per-class accuracy as TensorBoard card pictures: uint8 ``[3, H, W]``, 500 px wide, one per page.

    The pages of ``per_class_accuracy_pages`` (same sizes, at most
    :data:`~lit_explain.render.figures.CARD_BARS_PER_PAGE` bars a page, worst class at the top, a dashed
    line at the mean over all classes, "n/a" for a class without samples), drawn as pixels in a few
    milliseconds: the fixed parts are drawn once per (class names, title). Safe to call from any thread.

    Args:
        acc: ``[C]`` accuracies in ``[0, 1]``, NaN for a class without samples.
        class_names: ``C`` names.
        title: chart title (`` (k/n)`` is added on each of several pages).

    Example:
        >>> [p.shape[1] for p in per_class_accuracy_images(torch.rand(60), [f"c{i}" for i in range(60)])]
        [1329, 354]
    """
    a, names = _accuracies(acc, class_names)
    return _cached(("accuracy", tuple(names), title), lambda: _AccuracyCard(names, title)).draw(a)
