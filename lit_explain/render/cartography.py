"""The Dataset Cartography picture: each training sample at (variability, confidence), coloured by correctness.

Swayamdipta et al. 2020's map: easy-to-learn samples sit top left (confident, stable), hard-to-learn ones
bottom left (the model never believes their label: often mislabelled), ambiguous ones to the right (the
model changes its mind). Samples flagged as likely label errors get a black ring. Built with the
object-oriented Figure API (no pyplot), so it can run on the background writer thread.
"""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from lit_explain.render.figures import figure_to_tensor

_DPI = 100
MAX_POINTS = 20_000
"""Above this many samples a seeded subset is drawn (every flagged one kept): the picture stays legible."""


def _points(values: Tensor) -> np.ndarray:
    return values.detach().float().cpu().numpy().reshape(-1)


def cartography_figure(
    confidence: Tensor,
    variability: Tensor,
    correctness: Tensor,
    flagged: Tensor | None = None,
    title: str = "Dataset Cartography (training samples)",
    max_points: int = MAX_POINTS,
) -> Figure:
    """Scatter of variability (x) against confidence (y), coloured by correctness (share of steps right).

    Example:
        >>> fig = cartography_figure(torch.rand(100), torch.rand(100) * 0.5, torch.rand(100))
        >>> picture = cartography_image(torch.rand(100), torch.rand(100) * 0.5, torch.rand(100))
        >>> picture.dtype, picture.shape[0]
        (torch.uint8, 3)
    """
    conf, var, corr = _points(confidence), _points(variability), _points(correctness)
    ring = _points(flagged).astype(bool) if flagged is not None else np.zeros(conf.shape, bool)
    keep = ~(np.isnan(conf) | np.isnan(var) | np.isnan(corr))
    chosen = np.flatnonzero(keep)
    if chosen.size > max_points:
        # A seeded subset, so the picture does not flicker between epochs; flagged samples always drawn.
        rng = np.random.default_rng(0)
        rest = chosen[~ring[chosen]]
        rest = rng.choice(rest, size=max(0, max_points - int(ring[chosen].sum())), replace=False)
        chosen = np.union1d(rest, chosen[ring[chosen]])
    fig = Figure(figsize=(5.0, 4.2), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    points = ax.scatter(
        var[chosen], conf[chosen], c=corr[chosen], cmap="coolwarm_r", vmin=0, vmax=1, s=6, alpha=0.7, lw=0
    )
    marked = chosen[ring[chosen]]
    if marked.size:
        ax.scatter(var[marked], conf[marked], s=28, facecolors="none", edgecolors="black", lw=0.7)
        ax.scatter([], [], s=28, facecolors="none", edgecolors="black", lw=0.7, label="flagged")
        ax.legend(loc="upper right", fontsize=8, frameon=False)
    fig.colorbar(points, ax=ax, label="correctness (share of epochs right)")
    ax.set_xlabel("variability (std of the label's probability)")
    ax.set_ylabel("confidence (mean probability of the label)")
    ax.set_xlim(0, max(0.5, float(np.nanmax(var[chosen])) * 1.05 if chosen.size else 0.5))
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=10)
    shown = (
        f"{chosen.size} of {int(keep.sum())} samples"
        if chosen.size < keep.sum()
        else f"{chosen.size} samples"
    )
    ax.text(0.99, 0.01, shown, transform=ax.transAxes, ha="right", va="bottom", fontsize=7, color="0.4")
    return fig


def cartography_image(
    confidence: Tensor,
    variability: Tensor,
    correctness: Tensor,
    flagged: Tensor | None = None,
    title: str = "Dataset Cartography (training samples)",
) -> Tensor:
    """:func:`cartography_figure` as a uint8 ``[3, H, W]`` tensor (the figure is closed)."""
    with torch.no_grad():
        return figure_to_tensor(cartography_figure(confidence, variability, correctness, flagged, title))
