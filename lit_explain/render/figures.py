"""matplotlib figures: confusion matrix, per-class accuracy, most confused pairs.

Figures are built with the object-oriented API on an Agg canvas (``matplotlib.figure.Figure``),
never through pyplot, so nothing is registered in pyplot's global figure list, no GUI backend is
touched and figures are freed like any other object. Global rcParams are never modified.
"""

from __future__ import annotations

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
    :data:`ANNOTATE_MAX_CLASSES` classes.

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
    m = _host(cm, "cm")
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"cm must be a square [C, C] matrix, got shape {m.shape}")
    n = m.shape[0]
    names = [_short(c, 12 if card else 24) for c in _check_names(class_names, n, "cm")]
    if normalize:
        sums = m.sum(axis=1, keepdims=True)
        m = np.divide(m, sums, out=np.zeros_like(m), where=sums > 0)
    layout = _card_matrix_layout(n, names) if card else _full_matrix_layout(n, names)
    fig = _new_figure(*layout["size"])
    ax = fig.add_subplot()
    vmax = 1.0 if normalize else max(float(m.max()), 1.0)
    im = ax.imshow(m, cmap=cmap, vmin=0.0, vmax=vmax, interpolation="nearest", aspect="equal")
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, shrink=0.8)
    bar.ax.tick_params(labelsize=layout["font"])
    ticks = range(0, n, layout["tick_every"])
    rotate = n > 8 or (card and max((len(c) for c in names), default=0) > 3)
    ax.set_xticks(ticks, [names[i] for i in ticks], rotation=90 if rotate else 0, ha="center")
    ax.set_yticks(ticks, [names[i] for i in ticks])
    ax.tick_params(labelsize=layout["tick_pt"], length=2)
    ax.set_xlabel("predicted", fontsize=layout["font"])
    ax.set_ylabel("true", fontsize=layout["font"])
    ax.set_title(title + (" (row-normalised)" if normalize else ""), fontsize=layout["font"])
    if layout["cell_pt"]:
        for i in range(n):
            for j in range(n):
                v = m[i, j]
                txt = f"{v:.2f}" if normalize else f"{v:.0f}" if float(v).is_integer() else f"{v:.2g}"
                # Light text on the dark half of the colormap, dark text elsewhere.
                color = "white" if v > 0.6 * vmax else "black"
                ax.text(j, i, txt, ha="center", va="center", fontsize=layout["cell_pt"], color=color)
    return fig


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
    n = a.shape[0]
    names = [_short(c, 16 if card else 24) for c in _check_names(class_names, n, "acc")]
    order = np.arange(n)
    if sorted:
        # NaN sorts last with numpy; stable so equal accuracies keep class order.
        order = np.argsort(a, kind="stable")
    a, names = a[order], [names[i] for i in order]
    valid = ~np.isnan(a)
    if mean is None:
        mean = _mean_present(a)

    longest = max((len(c) for c in names), default=1)
    if card:
        label_pt = legend_pt = card_font_pt(CARD_FIGURE_IN)
        bar_in = 1.35 * label_pt / 72
        fig = _new_figure(CARD_FIGURE_IN, n * bar_in + 4.5 * label_pt / 72 + 0.3)
    else:
        bar_in = float(np.clip(5.0 / max(n, 1), 0.14, 0.35))
        label_pt, legend_pt = float(np.clip(bar_in * 72 * 0.6, 5.0, 10.0)), 8.0
        fig = _new_figure(6.5 + 0.05 * longest, n * bar_in + 1.4)
    ax = fig.add_subplot()
    y = np.arange(n)
    shown = np.where(valid, a, 0.0)
    ax.barh(y, shown, color=_accuracy_colors(shown), height=0.8)
    ax.set_yticks(y, names)
    ax.tick_params(axis="y", labelsize=label_pt, length=0)
    ax.tick_params(axis="x", labelsize=legend_pt if card else None)
    ax.invert_yaxis()  # first bar (worst when sorted) at the top, like a ranking
    annotate = n <= 40
    # Room right of 1.0 for the value labels; ticks stay within the meaningful [0, 1].
    ax.set_xlim(0.0, 1.1 if annotate else 1.0)
    ax.set_xticks(np.linspace(0.0, 1.0, 6 if not card else 3))
    ax.set_ylim(n - 0.5, -0.5)
    ax.set_xlabel("accuracy", fontsize=legend_pt if card else None)
    ax.set_title(title, fontsize=legend_pt if card else None)
    ax.grid(axis="x", alpha=0.3)
    if np.isfinite(mean):
        ax.axvline(mean, color="black", linestyle="--", linewidth=1.2, label=f"mean {mean:.3f}")
        if card:  # a card is narrow: the mean goes into the axis label rather than a legend beside it
            ax.set_xlabel(f"accuracy (dashed: mean {mean:.3f})", fontsize=legend_pt)
        else:  # outside the axes so it never hides bars; constrained layout makes room for it
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=legend_pt, frameon=False)
    for yi, v, ok in zip(y, a, valid, strict=True):
        if annotate or not ok:
            ax.text(
                (v if ok else 0.0) + 0.01, yi, f"{v:.2f}" if ok else "n/a", va="center", fontsize=label_pt
            )
    return fig


def per_class_accuracy_pages(
    acc: Tensor, class_names: Sequence[str], title: str = "Per-class accuracy"
) -> list[Figure]:
    """Per-class accuracy for TensorBoard cards: worst classes first, at most
    :data:`CARD_BARS_PER_PAGE` bars per figure, each with the mean over all classes.

    Example:
        >>> pages = per_class_accuracy_pages(torch.rand(100), [f"c{i}" for i in range(100)])
        >>> len(pages)
        2
    """
    a = _host(acc, "acc").reshape(-1)
    names = _check_names(class_names, a.shape[0], "acc")
    order = np.argsort(a, kind="stable")
    mean = _mean_present(a)
    chunks = [order[i : i + CARD_BARS_PER_PAGE] for i in range(0, len(order), CARD_BARS_PER_PAGE)] or [order]
    pages = []
    for k, chunk in enumerate(chunks, 1):
        suffix = f" ({k}/{len(chunks)})" if len(chunks) > 1 else ""
        page_acc = torch.from_numpy(a[chunk].copy())
        page_names = [names[i] for i in chunk]
        pages.append(
            per_class_accuracy_figure(
                page_acc, page_names, sorted=False, title=title + suffix, card=True, mean=mean
            )
        )
    return pages


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
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    rgb = rgba[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
    out = torch.from_numpy(np.ascontiguousarray(rgb.round().astype(np.uint8))).permute(2, 0, 1)
    if close:
        _close(fig)
    return out.contiguous()


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
