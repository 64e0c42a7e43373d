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

__all__ = [
    "confused_pairs_figure",
    "confusion_matrix_figure",
    "figure_to_png",
    "figure_to_tensor",
    "per_class_accuracy_figure",
]

ANNOTATE_MAX_CLASSES = 20
"""Above this many classes the confusion matrix has no per-cell numbers (they would not fit)."""
_DPI = 100


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
) -> Figure:
    """Heatmap of a confusion matrix (rows: true class, columns: predicted class).

    The figure grows with the number of classes so that every class keeps a labelled tick (small
    font at 100 classes); the numbers are written into the cells only up to
    :data:`ANNOTATE_MAX_CLASSES` classes.

    Args:
        cm: ``[C, C]`` counts (torchmetrics' ``MulticlassConfusionMatrix`` layout), any device.
        class_names: ``C`` names.
        normalize: divide each row by its sum (per-true-class rates; empty rows stay 0).
        title: axes title.
        cmap: matplotlib colormap name.

    Example:
        >>> fig = confusion_matrix_figure(torch.randint(0, 50, (6, 6)), list("abcdef"))
        >>> figure_to_tensor(fig).shape[0]
        3
    """
    m = _host(cm, "cm")
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"cm must be a square [C, C] matrix, got shape {m.shape}")
    n = m.shape[0]
    names = [_short(c) for c in _check_names(class_names, n, "cm")]
    if normalize:
        sums = m.sum(axis=1, keepdims=True)
        m = np.divide(m, sums, out=np.zeros_like(m), where=sums > 0)

    # Cell edge shrinks from 0.5 in (few classes) to ~0.16 in, where 100 classes make a ~2000 px
    # square: still one readable tick label per class.
    cell = float(np.clip(6.0 / max(n, 1), 0.16, 0.6))
    tick_pt = float(np.clip(cell * 72 * 0.6, 5.0, 10.0))
    label_in = 0.09 * max((len(c) for c in names), default=1) * tick_pt / 10 + 0.6
    side = n * cell
    fig = _new_figure(side + label_in + 1.6, side + label_in + 0.8)
    ax = fig.add_subplot()
    vmax = 1.0 if normalize else max(float(m.max()), 1.0)
    im = ax.imshow(m, cmap=cmap, vmin=0.0, vmax=vmax, interpolation="nearest", aspect="equal")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, shrink=0.8)
    ax.set_xticks(range(n), names, rotation=90 if n > 8 else 45, ha="center" if n > 8 else "right")
    ax.set_yticks(range(n), names)
    ax.tick_params(labelsize=tick_pt, length=2)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title + (" (row-normalised)" if normalize else ""))
    if n <= ANNOTATE_MAX_CLASSES:
        text_pt = float(np.clip(cell * 72 * 0.3, 6.0, 10.0))
        for i in range(n):
            for j in range(n):
                v = m[i, j]
                txt = f"{v:.2f}" if normalize else f"{v:.0f}" if float(v).is_integer() else f"{v:.2g}"
                # Light text on the dark half of the colormap, dark text elsewhere.
                color = "white" if v > 0.6 * vmax else "black"
                ax.text(j, i, txt, ha="center", va="center", fontsize=text_pt, color=color)
    return fig


def per_class_accuracy_figure(
    acc: Tensor,
    class_names: Sequence[str],
    sorted: bool = True,
    title: str = "Per-class accuracy",
) -> Figure:
    """Horizontal bar chart of per-class accuracy with the mean marked.

    Horizontal bars keep every class name readable at 100 classes (the figure grows in height).
    Classes with NaN accuracy (no samples) are listed as "n/a" and left out of the mean.

    Args:
        acc: ``[C]`` accuracies in ``[0, 1]``.
        class_names: ``C`` names.
        sorted: order bars from worst (top) to best; otherwise class-index order from the top.
        title: axes title.

    Example:
        >>> fig = per_class_accuracy_figure(torch.rand(10), [f"c{i}" for i in range(10)])
    """
    a = _host(acc, "acc").reshape(-1)
    n = a.shape[0]
    names = [_short(c) for c in _check_names(class_names, n, "acc")]
    order = np.arange(n)
    if sorted:
        # NaN sorts last with numpy; stable so equal accuracies keep class order.
        order = np.argsort(a, kind="stable")
    a, names = a[order], [names[i] for i in order]
    valid = ~np.isnan(a)
    mean = float(a[valid].mean()) if valid.any() else float("nan")

    bar_in = float(np.clip(5.0 / max(n, 1), 0.14, 0.35))
    label_pt = float(np.clip(bar_in * 72 * 0.6, 5.0, 10.0))
    fig = _new_figure(6.5 + 0.05 * max((len(c) for c in names), default=1), n * bar_in + 1.4)
    ax = fig.add_subplot()
    y = np.arange(n)
    shown = np.where(valid, a, 0.0)
    ax.barh(y, shown, color=_accuracy_colors(shown), height=0.8)
    ax.set_yticks(y, names)
    ax.tick_params(axis="y", labelsize=label_pt, length=0)
    ax.invert_yaxis()  # first bar (worst when sorted) at the top, like a ranking
    annotate = n <= 40
    # Room right of 1.0 for the value labels; ticks stay within the meaningful [0, 1].
    ax.set_xlim(0.0, 1.1 if annotate else 1.0)
    ax.set_xticks(np.linspace(0.0, 1.0, 6))
    ax.set_ylim(n - 0.5, -0.5)
    ax.set_xlabel("accuracy")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    if valid.any():
        ax.axvline(mean, color="black", linestyle="--", linewidth=1.2, label=f"mean {mean:.3f}")
        # Outside the axes so it never hides bars; constrained layout makes room for it.
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    for yi, v, ok in zip(y, a, valid, strict=True):
        if annotate or not ok:
            ax.text(
                (v if ok else 0.0) + 0.01, yi, f"{v:.2f}" if ok else "n/a", va="center", fontsize=label_pt
            )
    return fig


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
