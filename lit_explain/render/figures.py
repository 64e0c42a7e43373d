"""matplotlib figures: confusion matrix, per-class accuracy, most confused pairs.

Figures are built with the object-oriented API on an Agg canvas (``matplotlib.figure.Figure``),
never through pyplot, so nothing is registered in pyplot's global figure list, no GUI backend is
touched and figures are freed like any other object. Global rcParams are never modified.

The callbacks draw the same charts every epoch: :func:`confusion_matrix_image` and
:func:`per_class_accuracy_images` keep one figure per chart (class names and options) and only refill its
artists, behind a lock, so they are cheap and safe to call from a background writer thread. The
``*_figure`` functions build a new figure on every call (for files, reports and custom use).
"""

from __future__ import annotations

import builtins
import functools
import io
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties, findfont
from torch import Tensor

from lit_explain.compat import agg_rasteriser, set_agg_rasteriser
from lit_explain.render._common import as_tensor
from lit_explain.render.card import card_font_pt

__all__ = [
    "confused_pairs_figure",
    "confusion_matrix_figure",
    "confusion_matrix_image",
    "figure_to_png",
    "figure_to_tensor",
    "per_class_accuracy_figure",
    "per_class_accuracy_images",
    "per_class_accuracy_pages",
]

ANNOTATE_MAX_CLASSES = 20
"""Above this many classes the confusion matrix has no per-cell numbers (they would not fit)."""
_DPI = 100
CARD_FIGURE_IN = 5.0
"""Width of the figures made for TensorBoard cards (``card=True``): 500 px, text at 13 pt."""
CARD_BARS_PER_PAGE = 50
"""Bars per per-class accuracy page in card mode (50 x 0.24 in + title and axis: under 1,600 px)."""
_CHAR_EM = 0.6  # average glyph width of DejaVu Sans, in ems


def _new_figure(width_in: float, height_in: float) -> Figure:
    fig = Figure(figsize=(width_in, height_in), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


class _GlyphRecorder:
    """Stands in for a renderer's rasteriser while one string is drawn: passes every call through and
    keeps a copy of each glyph image blended (``draw_text_image``), so the string can be replayed."""

    def __init__(self, target: Any) -> None:
        self.target = target
        self.calls: list[tuple[np.ndarray, int, int, float]] = []
        self.complete = True  # False once anything but a plain glyph image went through

    def draw_text_image(self, image: Any, x: Any, y: Any, angle: Any, gc: Any) -> Any:
        if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 2:
            # Copied: matplotlib may hand over a view of FreeType's buffer, reused for the next glyph.
            self.calls.append((image.copy(), x, y, angle))
        else:  # e.g. older matplotlib passes the whole FT2Font: not replayable here
            self.complete = False
        return self.target.draw_text_image(image, x, y, angle, gc)

    def __getattr__(self, name: str) -> Any:
        self.complete = False  # the string drew something else too (boxes of mathtext, ...)
        return getattr(self.target, name)


class _TextReplay:
    """Draws strings an Agg renderer has drawn before by replaying their glyph images.

    matplotlib lays out and rasterises every glyph of every string at each draw (FreeType, about 0.7 ms
    for a 4-character label): most of a reused chart's drawing time. What reaches the pixels is a list
    of glyph images, each blended at an integer pixel position with the text's colour and clip
    (``draw_text_image(image, x, y, angle, gc)``). That list depends only on the string, the font, the
    exact position, the angle, antialiasing and the canvas geometry, which make the key; the colour and
    clip come from the graphics context at replay. So a replay blends the very same images at the very
    same places: the pixels are those of a normal draw. Strings that draw anything else (mathtext boxes)
    are never cached.
    """

    def __init__(self, capacity: int = 4096) -> None:
        # Bounded, least recently used dropped first: a chart's labels and cell numbers recur over epochs,
        # but the numbers are not a closed set.
        self.capacity = capacity
        self.strings: OrderedDict[tuple, list[tuple[np.ndarray, int, int, float]]] = OrderedDict()

    @contextmanager
    def installed(self, renderer: RendererAgg) -> Iterator[None]:
        """Route ``renderer.draw_text`` through the cache while the block runs (this renderer only)."""
        if not hasattr(agg_rasteriser(renderer), "draw_text_image"):
            yield  # a matplotlib whose Agg renderer is laid out otherwise: draw as usual
            return
        renderer.draw_text = functools.partial(self.draw_text, renderer)  # shadows the class's method
        try:
            yield
        finally:
            del renderer.draw_text

    def draw_text(self, renderer: RendererAgg, gc: Any, *args: Any, **kwargs: Any) -> None:
        """``RendererAgg.draw_text(gc, x, y, s, prop, angle, ismath=False, mtext=None)``, replayed when
        this string was drawn at this place before."""
        key = _text_key(renderer, gc, *args, **kwargs)
        calls = None if key is None else self.strings.get(key)
        if calls is not None:
            self.strings.move_to_end(key)
            raster = agg_rasteriser(renderer)
            for image, x, y, angle in calls:
                raster.draw_text_image(image, x, y, angle, gc)
            return
        if key is None:
            RendererAgg.draw_text(renderer, gc, *args, **kwargs)
            return
        recorder = _GlyphRecorder(agg_rasteriser(renderer))
        set_agg_rasteriser(renderer, recorder)
        try:
            RendererAgg.draw_text(renderer, gc, *args, **kwargs)
        finally:
            set_agg_rasteriser(renderer, recorder.target)
        if recorder.complete:
            self.strings[key] = recorder.calls
            while len(self.strings) > self.capacity:
                self.strings.popitem(last=False)


def _text_key(
    renderer: RendererAgg,
    gc: Any,
    x: float,
    y: float,
    s: str,
    prop: Any,
    angle: float,
    ismath: Any = False,
    mtext: Any = None,
) -> tuple | None:
    """Everything a plain string's glyph images depend on; None for what is never cached (mathtext)."""
    if ismath or not isinstance(prop, FontProperties) or not isinstance(s, str):
        return None
    rc = matplotlib.rcParams
    font = (
        findfont(prop),  # the font file the family resolves to under the current rcParams
        tuple(prop.get_family()),
        prop.get_style(),
        prop.get_variant(),
        prop.get_weight(),
        prop.get_stretch(),
        prop.get_size_in_points(),
    )
    shaping = None
    if mtext is not None:  # OpenType features and language (matplotlib >= 3.10) change the glyphs
        shaping = tuple(
            _hashable(getattr(mtext, name, _none)()) for name in ("get_fontfeatures", "get_language")
        )
    hinting = (rc["text.hinting"], rc["text.hinting_factor"], rc["text.kerning_factor"])
    place = (float(x), float(y), float(angle), renderer.width, renderer.height, renderer.dpi)
    return (s, font, place, gc.get_antialiased(), shaping, hinting)


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _none() -> None:
    return None


def _short(name: str, limit: int = 24) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _check_names(class_names: Sequence[str], n: int, what: str) -> list[str]:
    if len(class_names) != n:
        raise ValueError(f"{what} has {n} classes but {len(class_names)} class names were given")
    return [str(c) for c in class_names]


def _host(x: Tensor | np.ndarray | Sequence[float], name: str) -> np.ndarray:
    return as_tensor(x, name).to("cpu", torch.float64).numpy()


def confusion_matrix_figure(
    cm: Tensor,
    class_names: Sequence[str],
    normalize: bool = True,
    title: str = "Confusion matrix",
    cmap: str = "Blues",
    card: bool = False,
) -> Figure:
    """Heatmap of a confusion matrix (rows: true class, columns: predicted class).

    By default (files viewed at full size) the figure grows with the number of classes so that every
    class keeps a labelled tick (small font at 100 classes). With ``card`` (TensorBoard), the figure is
    500 px wide and every label stays at least 11 px tall at TensorBoard's narrowest card; beyond about
    14 classes every k-th class is labelled. The numbers are written into the cells only up to
    :data:`ANNOTATE_MAX_CLASSES` classes. Each call makes a new figure; :func:`confusion_matrix_image`
    redraws one figure per epoch instead (what the callbacks use).

    Args:
        cm: ``[C, C]`` counts (torchmetrics' ``MulticlassConfusionMatrix`` layout), any device.
        class_names: ``C`` names.
        normalize: divide each row by its sum (per-true-class rates; empty rows stay 0).
        title: axes title.
        cmap: matplotlib colormap name.
        card: size it for a TensorBoard card instead of a file.

    Example:
        >>> fig = confusion_matrix_figure(torch.randint(0, 50, (6, 6)), list("abcdef"))
        >>> figure_to_tensor(fig).shape[0]
        3
    """
    m = _matrix(cm)
    chart = _MatrixChart(
        m.shape[0], _check_names(class_names, m.shape[0], "cm"), normalize, title, cmap, card
    )
    chart.update(m)
    return chart.figure


def _matrix(cm: Tensor) -> np.ndarray:
    m = _host(cm, "cm")
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"cm must be a square [C, C] matrix, got shape {m.shape}")
    return m


class _MatrixChart:
    """A confusion-matrix figure whose artists are built once and refilled by :meth:`update`.

    Building the axes, ticks and colour bar and running the constrained layout is most of a figure's
    cost; refilling the image and the cell texts is cheap. When the layout cannot depend on the numbers
    (row-normalised: the colour bar is always 0..1), it is computed once and frozen.
    """

    def __init__(
        self, n: int, class_names: list[str], normalize: bool, title: str, cmap: str, card: bool
    ) -> None:
        names = [_short(c, 12 if card else 24) for c in class_names]
        layout = _card_matrix_layout(n, names) if card else _full_matrix_layout(n, names)
        self.normalize = normalize
        self.figure = fig = _new_figure(*layout["size"])
        ax = fig.add_subplot()
        self.image = ax.imshow(
            np.zeros((n, n)), cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest", aspect="equal"
        )
        bar = fig.colorbar(self.image, ax=ax, fraction=0.046, pad=0.02, shrink=0.8)
        bar.ax.tick_params(labelsize=layout["font"])
        ticks = range(0, n, layout["tick_every"])
        rotate = n > 8 or (card and max((len(c) for c in names), default=0) > 3)
        ax.set_xticks(ticks, [names[i] for i in ticks], rotation=90 if rotate else 0, ha="center")
        ax.set_yticks(ticks, [names[i] for i in ticks])
        ax.tick_params(labelsize=layout["tick_pt"], length=2)
        ax.set_xlabel("predicted", fontsize=layout["font"])
        ax.set_ylabel("true", fontsize=layout["font"])
        ax.set_title(title + (" (row-normalised)" if normalize else ""), fontsize=layout["font"])
        self.cells = [
            ax.text(j, i, "", ha="center", va="center", fontsize=layout["cell_pt"])
            for i in range(n)
            for j in range(n)
            if layout["cell_pt"]
        ]
        self.axes = ax
        self.background: Any = None  # the pixels of everything that never changes, once drawn
        self.replay = _TextReplay()
        if normalize:
            _freeze_layout(fig)
        # Where the layout is redone per call (raw counts: the colour bar's labels change), it starts from
        # the built positions each time: constrained layout's result depends on where it starts from.
        self.positions = [(a, a.get_position(original=True).frozen()) for a in fig.axes]

    def update(self, m: np.ndarray) -> None:
        """Show counts ``m`` (``[C, C]``, float64), row-normalised first if the chart is."""
        if self.normalize:
            sums = m.sum(axis=1, keepdims=True)
            m = np.divide(m, sums, out=np.zeros_like(m), where=sums > 0)
        vmax = 1.0 if self.normalize else max(float(m.max()), 1.0)
        if self.figure.get_layout_engine() is not None:
            for axes, position in self.positions:
                axes.set_position(position, which="both")
                axes.set_in_layout(True)  # set_position takes an axes out of the layout; it stays in
        self.image.set_data(m)
        self.image.set_clim(0.0, vmax)  # the colour bar follows its mappable
        for text, v in zip(self.cells, m.reshape(-1).tolist(), strict=False):
            text.set_text(
                f"{v:.2f}" if self.normalize else f"{v:.0f}" if float(v).is_integer() else f"{v:.2g}"
            )
            # Light text on the dark half of the colormap, dark text elsewhere.
            text.set_color("white" if v > 0.6 * vmax else "black")

    def tensor(self) -> Tensor:
        """The chart as uint8 ``[3, H, W]``, as :func:`figure_to_tensor` draws it.

        With a frozen layout, the titles, ticks, labels and colour bar never change: they are drawn once
        and kept as pixels, and each call draws only the matrix image, its frame and the cell texts over
        them (in the order a full draw uses).
        """
        canvas = self.figure.canvas
        with self.replay.installed(canvas.get_renderer()):
            if not self.normalize:
                canvas.draw()
            else:
                self._blit(canvas)
        return _rgba_to_tensor(np.asarray(canvas.buffer_rgba()))

    def _blit(self, canvas: FigureCanvasAgg) -> None:
        changing = [self.image, *self.axes.spines.values(), *self.cells]
        if self.background is None:
            for artist in changing:
                artist.set_animated(True)  # left out of full draws
            canvas.draw()
            self.background = canvas.copy_from_bbox(self.figure.bbox)
        else:
            canvas.restore_region(self.background)
            # Refilling the image resets the axes to its pre-aspect box; a full draw would re-apply it.
            self.axes.apply_aspect()
        for artist in changing:
            self.axes.draw_artist(artist)


def _freeze_layout(fig: Figure) -> None:
    """Run the figure's constrained layout now and keep its result for every later draw."""
    engine = fig.get_layout_engine()
    if engine is not None:
        engine.execute(fig)
    fig.set_layout_engine("none")


def _full_matrix_layout(n: int, names: list[str]) -> dict:
    """For files viewed at full size: every class labelled, the figure grows with the classes."""
    # Cell edge shrinks from 0.6 in (few classes) to ~0.16 in, where 100 classes make a ~2000 px
    # square: still one readable tick label per class.
    cell = float(np.clip(6.0 / max(n, 1), 0.16, 0.6))
    tick_pt = float(np.clip(cell * 72 * 0.6, 5.0, 10.0))
    label_in = 0.09 * max((len(c) for c in names), default=1) * tick_pt / 10 + 0.6
    side = n * cell
    cell_pt = float(np.clip(cell * 72 * 0.3, 6.0, 10.0)) if n <= ANNOTATE_MAX_CLASSES else 0.0
    size = (side + label_in + 1.6, side + label_in + 0.8)
    return {"size": size, "font": 10.0, "tick_pt": tick_pt, "tick_every": 1, "cell_pt": cell_pt}


def _card_matrix_layout(n: int, names: list[str]) -> dict:
    """For a TensorBoard card: a fixed width whose every label stays readable when shown 320 px wide.

    That leaves room for about 14 labelled rows; with more classes every k-th class is labelled. The
    per-cell numbers are written where they fit at 6 pt or more (they are detail, for full size).
    """
    font = card_font_pt(CARD_FIGURE_IN)
    char_in = _CHAR_EM * font / 72
    label_in = char_in * max((len(c) for c in names), default=1)
    # Width: y labels, the "true" axis label, the matrix, the colour bar with its tick labels.
    side = CARD_FIGURE_IN - label_in - 2.2 * font / 72 - 1.0
    line_in = 1.3 * font / 72
    tick_every = max(1, int(np.ceil(n * line_in / side)))
    cell_in = side / max(n, 1)
    cell_pt = min(font, 0.8 * cell_in * 72 / (4 * _CHAR_EM))  # "0.97": four glyphs across a cell
    cell_pt = cell_pt if n <= ANNOTATE_MAX_CLASSES and cell_pt >= 6.0 else 0.0
    height = side + label_in + 4.0 * font / 72 + 0.3
    return {
        "size": (CARD_FIGURE_IN, height),
        "font": font,
        "tick_pt": font,
        "tick_every": tick_every,
        "cell_pt": cell_pt,
    }


def per_class_accuracy_figure(
    acc: Tensor,
    class_names: Sequence[str],
    sorted: bool = True,
    title: str = "Per-class accuracy",
    card: bool = False,
    mean: float | None = None,
) -> Figure:
    """Horizontal bar chart of per-class accuracy with the mean marked.

    Horizontal bars keep every class name readable at 100 classes (the figure grows in height).
    Classes with NaN accuracy (no samples) are listed as "n/a" and left out of the mean. With ``card``
    (TensorBoard) the figure is 500 px wide with every label at least 11 px tall at TensorBoard's
    narrowest card; :func:`per_class_accuracy_pages` splits many classes into pages of bounded height.

    Args:
        acc: ``[C]`` accuracies in ``[0, 1]``.
        class_names: ``C`` names.
        sorted: order bars from worst (top) to best; otherwise class-index order from the top.
        title: axes title.
        card: size it for a TensorBoard card instead of a file.
        mean: the mean line's value (e.g. over all classes when this figure is one page); default: the
            mean of ``acc``.

    Example:
        >>> fig = per_class_accuracy_figure(torch.rand(10), [f"c{i}" for i in range(10)])
    """
    a = _host(acc, "acc").reshape(-1)
    names = _check_names(class_names, a.shape[0], "acc")
    order = np.argsort(a, kind="stable") if sorted else np.arange(a.shape[0])  # NaN sorts last
    chart = _AccuracyChart(a.shape[0], title, card, layout_names=names)
    chart.update(a[order], [names[i] for i in order], _mean_present(a) if mean is None else mean)
    return chart.figure


class _AccuracyChart:
    """A per-class accuracy bar chart of ``n`` bars whose bars, labels and texts :meth:`update` refills.

    On a card the layout is computed once, with the longest of ``layout_names`` as tick labels, and
    frozen: later pages and epochs (other classes in other orders) keep the same margins.
    """

    def __init__(self, n: int, title: str, card: bool, layout_names: Sequence[str]) -> None:
        self.card = card
        limit = 16 if card else 24
        widest = _sorted_by_length([_short(c, limit) for c in layout_names])[:n]
        widest += [""] * (n - len(widest))
        longest = max((len(c) for c in widest), default=1)
        if card:
            self.label_pt = legend_pt = card_font_pt(CARD_FIGURE_IN)
            bar_in = 1.35 * self.label_pt / 72
            fig = _new_figure(CARD_FIGURE_IN, n * bar_in + 4.5 * self.label_pt / 72 + 0.3)
        else:
            bar_in = float(np.clip(5.0 / max(n, 1), 0.14, 0.35))
            self.label_pt, legend_pt = float(np.clip(bar_in * 72 * 0.6, 5.0, 10.0)), 8.0
            fig = _new_figure(6.5 + 0.05 * longest, n * bar_in + 1.4)
        self.figure, self.legend_pt, self.limit = fig, legend_pt, limit
        self.ax = ax = fig.add_subplot()
        self.y = np.arange(n)
        self.bars = ax.barh(self.y, np.zeros(n), color=_accuracy_colors(np.zeros(n)), height=0.8).patches
        ax.set_yticks(self.y, widest)
        ax.tick_params(axis="y", labelsize=self.label_pt, length=0)
        ax.tick_params(axis="x", labelsize=legend_pt if card else None)
        ax.invert_yaxis()  # first bar (worst when sorted) at the top, like a ranking
        self.annotate = n <= 40
        # Room right of 1.0 for the value labels; ticks stay within the meaningful [0, 1].
        ax.set_xlim(0.0, 1.1 if self.annotate else 1.0)
        ax.set_xticks(np.linspace(0.0, 1.0, 6 if not card else 3))
        ax.set_ylim(n - 0.5, -0.5)
        # On a card the label will hold the mean: lay it out with one (brackets reach lower than letters).
        ax.set_xlabel(_card_accuracy_label(0.0) if card else "accuracy", fontsize=legend_pt if card else None)
        # A fixed title height and y-label place: matplotlib would otherwise measure all n tick labels at
        # every draw to place them (a third of the drawing time), for the same result (no top ticks,
        # no y label).
        ax.set_title(title, fontsize=legend_pt if card else None, y=1.0)
        ax.yaxis.set_label_coords(0.0, 0.5)
        ax.grid(axis="x", alpha=0.3)
        self.mean_line = ax.axvline(0.0, color="black", linestyle="--", linewidth=1.2, visible=False)
        self.values = [ax.text(0.0, yi, "", va="center", fontsize=self.label_pt) for yi in self.y]
        self.replay = _TextReplay()
        if card:
            if self.annotate and n:  # room for the widest value label, "1.00" on a full bar
                self.values[0].set_position((1.01, 0))
                self.values[0].set_text("1.00")
            _freeze_layout(fig)

    def tensor(self) -> Tensor:
        """The chart as uint8 ``[3, H, W]``, as :func:`figure_to_tensor` draws it (strings drawn before
        are replayed rather than rasterised again)."""
        canvas = self.figure.canvas
        with self.replay.installed(canvas.get_renderer()):
            canvas.draw()
        return _rgba_to_tensor(np.asarray(canvas.buffer_rgba()))

    def update(self, a: np.ndarray, names: Sequence[str], mean: float) -> None:
        """Bars for accuracies ``a`` (NaN: no samples) named ``names``, top to bottom, and the ``mean``."""
        valid = ~np.isnan(a)
        shown = np.where(valid, a, 0.0)
        for bar, width, color in zip(self.bars, shown.tolist(), _accuracy_colors(shown), strict=True):
            bar.set_width(width)
            bar.set_facecolor(color)
        self.ax.set_yticks(self.y, [_short(c, self.limit) for c in names])
        finite = bool(np.isfinite(mean))
        self.mean_line.set_visible(finite)
        if finite:
            self.mean_line.set_xdata([mean, mean])
            self.mean_line.set_label(f"mean {mean:.3f}")
        if self.card:  # a card is narrow: the mean goes into the axis label rather than a legend beside it
            self.ax.set_xlabel(_card_accuracy_label(mean) if finite else "accuracy", fontsize=self.legend_pt)
        elif finite:  # outside the axes so it never hides bars; constrained layout makes room for it
            self.ax.legend(
                loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=self.legend_pt, frameon=False
            )
        for text, yi, v, ok in zip(self.values, self.y, a.tolist(), valid.tolist(), strict=True):
            text.set_visible(self.annotate or not ok)
            text.set_position(((v if ok else 0.0) + 0.01, yi))
            text.set_text(f"{v:.2f}" if ok else "n/a")


def _card_accuracy_label(mean: float) -> str:
    return f"accuracy (dashed: mean {mean:.3f})"


def _sorted_by_length(names: Sequence[str]) -> list[str]:
    return builtins.sorted(names, key=len, reverse=True)


def per_class_accuracy_pages(
    acc: Tensor, class_names: Sequence[str], title: str = "Per-class accuracy"
) -> list[Figure]:
    """Per-class accuracy for TensorBoard cards: worst classes first, at most
    :data:`CARD_BARS_PER_PAGE` bars per figure, each with the mean over all classes.

    Every page has the same margins (room for the longest class name). Each call makes new figures;
    :func:`per_class_accuracy_images` redraws the same figures every epoch instead.

    Example:
        >>> pages = per_class_accuracy_pages(torch.rand(100), [f"c{i}" for i in range(100)])
        >>> len(pages)
        2
    """
    a, names = _accuracies(acc, class_names)
    charts = _accuracy_page_charts(names, title)
    _update_pages(charts, a, names)
    return [chart.figure for chart in charts]


def _accuracies(acc: Tensor, class_names: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    a = _host(acc, "acc").reshape(-1)
    return a, _check_names(class_names, a.shape[0], "acc")


def _page_sizes(n: int) -> list[int]:
    return [min(CARD_BARS_PER_PAGE, n - i) for i in range(0, n, CARD_BARS_PER_PAGE)] or [0]


def _accuracy_page_charts(names: list[str], title: str) -> list[_AccuracyChart]:
    sizes = _page_sizes(len(names))
    return [
        _AccuracyChart(size, title + (f" ({k}/{len(sizes)})" if len(sizes) > 1 else ""), True, names)
        for k, size in enumerate(sizes, 1)
    ]


def _update_pages(charts: list[_AccuracyChart], a: np.ndarray, names: list[str]) -> None:
    order = np.argsort(a, kind="stable")  # worst first; NaN (no samples) last
    mean = _mean_present(a)
    for k, chart in enumerate(charts):
        chunk = order[k * CARD_BARS_PER_PAGE : (k + 1) * CARD_BARS_PER_PAGE]
        chart.update(a[chunk], [names[i] for i in chunk], mean)


# -- one figure per chart, redrawn every epoch ------------------------------------------------------------

_CACHED_CHARTS = 8
"""How many charts (matrix or page sets) are kept for reuse: a few tags (val/test) of a few runs."""
_charts: OrderedDict[tuple, Any] = OrderedDict()
# One chart is one matplotlib figure: two threads must never update or draw it at once.
_charts_lock = threading.Lock()


def _cached_chart(key: tuple, build: Callable[[], Any]) -> Any:
    chart = _charts.pop(key, None)
    if chart is None:
        chart = build()
    _charts[key] = chart  # most recently used last
    while len(_charts) > _CACHED_CHARTS:
        _charts.popitem(last=False)
    return chart


def confusion_matrix_image(
    cm: Tensor,
    class_names: Sequence[str],
    normalize: bool = True,
    title: str = "Confusion matrix",
    cmap: str = "Blues",
) -> Tensor:
    """The card-sized :func:`confusion_matrix_figure` as a uint8 ``[3, H, W]`` tensor, drawn cheaply.

    The figure for a given (class names, options) is built once and only refilled on later calls, so a
    callback that logs the matrix every epoch pays for the drawing, not for building the figure (about
    3x less). The pixels are those of ``figure_to_tensor(confusion_matrix_figure(..., card=True))``.
    Safe to call from any thread (one figure is drawn by one thread at a time).

    Example:
        >>> confusion_matrix_image(torch.randint(0, 50, (6, 6)), list("abcdef")).shape
        torch.Size([3, 462, 500])
    """
    m = _matrix(cm)
    names = _check_names(class_names, m.shape[0], "cm")
    key = ("matrix", tuple(names), normalize, title, cmap)
    with _charts_lock:
        chart = _cached_chart(key, lambda: _MatrixChart(m.shape[0], names, normalize, title, cmap, True))
        chart.update(m)
        return chart.tensor()


def per_class_accuracy_images(
    acc: Tensor, class_names: Sequence[str], title: str = "Per-class accuracy"
) -> list[Tensor]:
    """:func:`per_class_accuracy_pages` as uint8 ``[3, H, W]`` tensors, one per page, drawn cheaply.

    The pages' figures are built once per (class names, title) and refilled on later calls; the pixels
    are those of ``[figure_to_tensor(p) for p in per_class_accuracy_pages(...)]``. Safe to call from any
    thread.

    Example:
        >>> [p.shape[1] for p in per_class_accuracy_images(torch.rand(60), [f"c{i}" for i in range(60)])]
        [1329, 354]
    """
    a, names = _accuracies(acc, class_names)
    with _charts_lock:
        charts = _cached_chart(("accuracy", tuple(names), title), lambda: _accuracy_page_charts(names, title))
        _update_pages(charts, a, names)
        return [chart.tensor() for chart in charts]


def _mean_present(values: np.ndarray) -> float:
    """Mean over the classes that have samples (NaN accuracy = no samples); NaN when none has."""
    valid = ~np.isnan(values)
    return float(values[valid].mean()) if valid.any() else float("nan")


def _accuracy_colors(values: np.ndarray) -> np.ndarray:
    import matplotlib

    return matplotlib.colormaps["RdYlGn"](0.15 + 0.7 * np.clip(values, 0.0, 1.0))


def confused_pairs_figure(
    pairs: Sequence[tuple[str, str, float]],
    title: str = "Most confused pairs",
    top_n: int | None = None,
) -> Figure:
    """Horizontal bar chart of (true class -> predicted class) confusion counts, largest on top.

    Args:
        pairs: ``(true_name, pred_name, count)``, e.g. from :func:`confused_pairs_table` with
            indices mapped to names; drawn in the given order.
        title: axes title.
        top_n: draw only the first ``top_n`` pairs.

    Example:
        >>> fig = confused_pairs_figure([("cat", "dog", 31), ("truck", "car", 12)])
    """
    items = list(pairs)[:top_n] if top_n is not None else list(pairs)
    n = len(items)
    labels = [f"{_short(str(t))} → {_short(str(p))}" for t, p, _ in items]
    counts = np.array([float(c) for _, _, c in items])
    bar_in = float(np.clip(4.0 / max(n, 1), 0.18, 0.4))
    fig = _new_figure(6.5 + 0.05 * max((len(s) for s in labels), default=1), max(n * bar_in, 1.0) + 1.2)
    ax = fig.add_subplot()
    ax.set_title(title)
    if n == 0:
        ax.text(0.5, 0.5, "no confusions", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    y = np.arange(n)
    ax.barh(y, counts, color="tab:red", height=0.7)
    ax.set_yticks(y, labels)
    ax.tick_params(axis="y", labelsize=float(np.clip(bar_in * 72 * 0.55, 6.0, 10.0)), length=0)
    ax.set_ylim(n - 0.5, -0.5)  # first pair at the top
    ax.set_xlabel("count")
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlim(0.0, float(counts.max()) * 1.12 or 1.0)
    for yi, c in zip(y, counts, strict=True):
        ax.text(c, yi, f" {c:g}", va="center", fontsize=8)
    return fig


def _close(fig: Figure) -> None:
    # Only pyplot-managed figures need closing (to drop pyplot's reference); ours are plain
    # objects. pyplot is looked up, not imported, so rendering never initialises it.
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None and getattr(fig.canvas, "manager", None) is not None:
        pyplot.close(fig)


def figure_to_tensor(fig: Figure, close: bool = True) -> Tensor:
    """Rasterise a figure to a uint8 ``[3, H, W]`` tensor (e.g. for ``SummaryWriter.add_image``).

    Transparent parts are composited over white. With ``close``, a pyplot-managed figure is closed
    afterwards (figures from this module are not pyplot-managed and need nothing).

    Example:
        >>> img = figure_to_tensor(confused_pairs_figure([("cat", "dog", 3)]))
        >>> img.dtype, img.shape[0]
        (torch.uint8, 3)
    """
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else None
    if canvas is not None:
        canvas.draw()
        rgba = np.asarray(canvas.buffer_rgba())
    else:
        # Another backend's canvas: go through PNG rather than swapping the figure's canvas.
        from PIL import Image

        rgba = np.asarray(Image.open(io.BytesIO(_savefig_png(fig))).convert("RGBA"))
    out = _rgba_to_tensor(rgba)
    if close:
        _close(fig)
    return out


def _rgba_to_tensor(rgba: np.ndarray) -> Tensor:
    """uint8 ``[H, W, 4]`` -> contiguous uint8 ``[3, H, W]``, composited over white."""
    if (rgba[..., 3] == 255).all():  # an opaque figure (the usual white background): nothing to composite
        return torch.from_numpy(rgba[..., :3].transpose(2, 0, 1).copy())
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    rgb = rgba[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
    return torch.from_numpy(np.ascontiguousarray(rgb.round().astype(np.uint8).transpose(2, 0, 1)))


def _savefig_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    return buf.getvalue()


def figure_to_png(fig: Figure, close: bool = True) -> bytes:
    """Encode a figure as PNG bytes at its own dpi (for files, HTML reports, HTTP responses).

    Example:
        >>> figure_to_png(confused_pairs_figure([("cat", "dog", 3)]))[:4]
        b'\\x89PNG'
    """
    data = _savefig_png(fig)
    if close:
        _close(fig)
    return data
