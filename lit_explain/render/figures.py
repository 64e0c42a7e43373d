"""matplotlib figures: confusion matrix, per-class accuracy, most confused pairs.

Figures are built with the object-oriented API on an Agg canvas (``matplotlib.figure.Figure``),
never through pyplot, so nothing is registered in pyplot's global figure list, no GUI backend is
touched and figures are freed like any other object. Global rcParams are never modified.

The ``*_figure`` functions build a new figure on every call (for files, reports and custom use). The
card-sized charts the callbacks log every epoch are drawn as pixels by :mod:`lit_explain.render.charts`,
to the card layout defined here (:func:`_card_matrix_layout`, :func:`_card_accuracy_size`).
"""

from __future__ import annotations

import builtins
import io
import sys
from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from lit_explain.render._common import as_tensor
from lit_explain.render.card import card_font_pt

__all__ = [
    "confused_pairs_figure",
    "confusion_matrix_figure",
    "figure_to_png",
    "figure_to_tensor",
    "per_class_accuracy_figure",
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
_CARD_MATRIX_CHARS = 12  # class names on a card's matrix ticks are cut to this many characters
_CARD_BAR_CHARS = 16  # and on its per-class accuracy bars to this many
_ANNOTATE_MAX_BARS = 40  # an accuracy chart of more bars writes no values beside them (only "n/a")


def _new_figure(width_in: float, height_in: float) -> Figure:
    fig = Figure(figsize=(width_in, height_in), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


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
    :data:`ANNOTATE_MAX_CLASSES` classes. Each call makes a new figure;
    :func:`lit_explain.render.charts.confusion_matrix_image` draws the card chart as pixels instead
    (what the callbacks log every epoch).

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
    n = m.shape[0]
    names = _check_names(class_names, n, "cm")
    names = _card_matrix_names(names) if card else [_short(c) for c in names]
    layout = _card_matrix_layout(n, names) if card else _full_matrix_layout(n, names)
    fig = _new_figure(*layout["size"])
    ax = fig.add_subplot()
    shown, vmax = _matrix_values(m, normalize)
    image = ax.imshow(shown, cmap=cmap, vmin=0.0, vmax=vmax, interpolation="nearest", aspect="equal")
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02, shrink=0.8)
    bar.ax.tick_params(labelsize=layout["font"])
    ticks = range(0, n, layout["tick_every"])
    rotate = _rotate_x_labels(n, names, card)
    ax.set_xticks(ticks, [names[i] for i in ticks], rotation=90 if rotate else 0, ha="center")
    ax.set_yticks(ticks, [names[i] for i in ticks])
    ax.tick_params(labelsize=layout["tick_pt"], length=2)
    ax.set_xlabel("predicted", fontsize=layout["font"])
    ax.set_ylabel("true", fontsize=layout["font"])
    ax.set_title(title + (" (row-normalised)" if normalize else ""), fontsize=layout["font"])
    if layout["cell_pt"]:
        for (i, j), v in np.ndenumerate(shown):
            text = _cell_text(v, normalize)
            color = "white" if _light_text(v, vmax) else "black"
            ax.text(j, i, text, ha="center", va="center", fontsize=layout["cell_pt"], color=color)
    return fig


def _matrix(cm: Tensor) -> np.ndarray:
    m = _host(cm, "cm")
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"cm must be a square [C, C] matrix, got shape {m.shape}")
    return m


def _matrix_values(m: np.ndarray, normalize: bool) -> tuple[np.ndarray, float]:
    """What a matrix chart shows for counts ``m``: rows divided by their sums (empty rows stay 0) when
    ``normalize``, and the top of its colour range (1 normalised, else the largest count, at least 1)."""
    if not normalize:
        return m, max(float(m.max()) if m.size else 0.0, 1.0)
    sums = m.sum(axis=1, keepdims=True)
    return np.divide(m, sums, out=np.zeros_like(m), where=sums > 0), 1.0


def _cell_text(v: float, normalize: bool) -> str:
    return f"{v:.2f}" if normalize else f"{v:.0f}" if float(v).is_integer() else f"{v:.2g}"


def _light_text(v: float, vmax: float) -> bool:
    """Light text on the dark part of the colormap (above 0.6 of its range), dark text elsewhere."""
    return v > 0.6 * vmax


def _card_matrix_names(names: Sequence[str]) -> list[str]:
    return [_short(c, _CARD_MATRIX_CHARS) for c in names]


def _rotate_x_labels(n: int, names: Sequence[str], card: bool) -> bool:
    """Whether the matrix's column labels are written upwards (they would overlap side by side)."""
    return n > 8 or (card and max((len(c) for c in names), default=0) > 3)


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
    """A per-class accuracy bar chart of ``n`` bars, filled by :meth:`update`.

    On a card the layout is computed with the longest of ``layout_names`` as tick labels and frozen
    before the bars are filled: every page of a set (other classes) gets the same margins.
    """

    def __init__(self, n: int, title: str, card: bool, layout_names: Sequence[str]) -> None:
        self.card = card
        limit = _CARD_BAR_CHARS if card else 24
        widest = _sorted_by_length([_short(c, limit) for c in layout_names])[:n]
        widest += [""] * (n - len(widest))
        longest = max((len(c) for c in widest), default=1)
        if card:
            self.label_pt = legend_pt = card_font_pt(CARD_FIGURE_IN)
            fig = _new_figure(*_card_accuracy_size(n))
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
        self.annotate = n <= _ANNOTATE_MAX_BARS
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
        if card:
            if self.annotate and n:  # room for the widest value label, "1.00" on a full bar
                self.values[0].set_position((1.01, 0))
                self.values[0].set_text("1.00")
            _freeze_layout(fig)

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


def _card_accuracy_size(n: int) -> tuple[float, float]:
    """A card's per-class accuracy page of ``n`` bars, (width, height) in inches: a bar per text line."""
    label_in = card_font_pt(CARD_FIGURE_IN) / 72
    return CARD_FIGURE_IN, n * 1.35 * label_in + 4.5 * label_in + 0.3


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
    :func:`lit_explain.render.charts.per_class_accuracy_images` draws the same pages as pixels instead
    (what the callbacks log every epoch).

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


def _page_titles(title: str, pages: int) -> list[str]:
    return [title + (f" ({k}/{pages})" if pages > 1 else "") for k in range(1, pages + 1)]


def _accuracy_page_charts(names: list[str], title: str) -> list[_AccuracyChart]:
    sizes = _page_sizes(len(names))
    return [
        _AccuracyChart(size, page_title, True, names)
        for size, page_title in zip(sizes, _page_titles(title, len(sizes)), strict=True)
    ]


def _page_chunks(a: np.ndarray) -> list[np.ndarray]:
    """Class indices of each card page: worst first, NaN (no samples) last."""
    order = np.argsort(a, kind="stable")
    # As _page_sizes: no classes still make one (empty) page.
    return [order[k : k + CARD_BARS_PER_PAGE] for k in range(0, max(len(a), 1), CARD_BARS_PER_PAGE)]


def _update_pages(charts: list[_AccuracyChart], a: np.ndarray, names: list[str]) -> None:
    mean = _mean_present(a)
    for chart, chunk in zip(charts, _page_chunks(a), strict=True):
        chart.update(a[chunk], [names[i] for i in chunk], mean)


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
