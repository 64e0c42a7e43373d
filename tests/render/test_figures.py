from __future__ import annotations

import io
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from lit_explain.render import (
    confused_pairs_figure,
    confusion_matrix_figure,
    figure_to_png,
    figure_to_tensor,
    per_class_accuracy_figure,
)


def _assert_not_blank(img: torch.Tensor) -> None:
    assert img.dtype == torch.uint8 and img.ndim == 3 and img.shape[0] == 3
    # A blank figure is all white; a rendered plot has plenty of non-white pixels and dark text.
    non_white = (img < 250).any(dim=0).float().mean()
    assert non_white > 0.02
    assert img.min() < 60


def _cm(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 5, (n, n), generator=g) + torch.eye(n, dtype=torch.int64) * 40


@pytest.mark.parametrize("normalize", [True, False])
def test_confusion_matrix_figure_small(normalize: bool) -> None:
    fig = confusion_matrix_figure(_cm(6), [f"class {i}" for i in range(6)], normalize=normalize)
    assert len(fig.axes[0].texts) == 36  # per-cell numbers at few classes
    _assert_not_blank(figure_to_tensor(fig))


def test_confusion_matrix_figure_100_classes_scales_and_labels_every_class() -> None:
    names = [f"class_{i:03d}" for i in range(100)]
    small = confusion_matrix_figure(_cm(6), names[:6])
    fig = confusion_matrix_figure(_cm(100).double(), names, title="CIFAR-100")
    ax = fig.axes[0]
    assert len(ax.texts) == 0  # no per-cell numbers
    assert [t.get_text() for t in ax.get_yticklabels()] == names
    assert fig.get_size_inches()[0] > 2.5 * small.get_size_inches()[0]
    img = figure_to_tensor(fig)
    _assert_not_blank(img)
    assert img.shape[1] > 1500 and img.shape[2] > 1500


def test_confusion_matrix_figure_empty_rows_and_validation() -> None:
    cm = torch.zeros(3, 3)
    cm[0, 0] = 4
    fig = confusion_matrix_figure(cm, ["a", "b", "c"])
    assert np.isfinite(fig.axes[0].images[0].get_array()).all()
    with pytest.raises(ValueError, match="class names"):
        confusion_matrix_figure(cm, ["a", "b"])


@pytest.mark.parametrize("n", [5, 100])
def test_per_class_accuracy_figure(n: int) -> None:
    acc = torch.rand(n, dtype=torch.float16)
    acc[1] = float("nan")
    names = [f"c{i}" for i in range(n)]
    fig = per_class_accuracy_figure(acc, names, sorted=True)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert len(labels) == n and labels[-1] == "c1"  # NaN (no samples) sorted last
    shown = acc.float().numpy()
    order = [int(s[1:]) for s in labels[:-1]]
    assert np.all(np.diff(shown[order]) >= 0)  # worst first
    assert any("mean" in t.get_text() for t in ax.get_legend().get_texts())
    _assert_not_blank(figure_to_tensor(fig))


def test_per_class_accuracy_unsorted_keeps_class_order() -> None:
    fig = per_class_accuracy_figure(torch.tensor([0.9, 0.1, 0.5]), ["a", "b", "c"], sorted=False)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["a", "b", "c"]


def test_confused_pairs_figure() -> None:
    pairs = [("cat", "dog", 31), ("truck", "automobile", 12), ("otter", "seal", 3)]
    fig = confused_pairs_figure(pairs, top_n=2)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["cat → dog", "truck → automobile"]
    _assert_not_blank(figure_to_tensor(fig))
    assert figure_to_tensor(confused_pairs_figure([])).shape[0] == 3


def test_figure_to_png_matches_tensor_and_needs_no_pyplot() -> None:
    fig = confusion_matrix_figure(_cm(4), list("abcd"))
    png = figure_to_png(fig)
    decoded = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    img = figure_to_tensor(fig)
    assert decoded.shape == tuple(img.permute(1, 2, 0).shape)
    assert "matplotlib.pyplot" not in sys.modules or fig.canvas.manager is None


def test_figure_to_tensor_closes_pyplot_figures() -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    plt = pytest.importorskip("matplotlib.pyplot")
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    assert plt.fignum_exists(fig.number)
    _assert_not_blank(figure_to_tensor(fig))
    assert not plt.fignum_exists(fig.number)


def _texts(fig) -> list:
    from matplotlib.text import Text

    fig.canvas.draw()
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


@pytest.mark.parametrize("n", [6, 20, 100])
def test_card_figures_keep_every_label_readable_at_tensorboards_card_width(n: int) -> None:
    from lit_explain.render import per_class_accuracy_pages
    from lit_explain.render.card import MAX_PAGE_PX, MIN_TEXT_PX, shown_text_px

    names = [f"class_{i:03d}" for i in range(n)]
    matrix = confusion_matrix_figure(_cm(n), names, card=True)
    cells = set(matrix.axes[0].texts)  # per-cell numbers are detail for full size, not labels
    pages = per_class_accuracy_pages(torch.rand(n), names)
    assert len(pages) == -(-n // 50)
    for fig in [matrix, *pages]:
        width, height = (fig.get_size_inches() * fig.dpi).round()
        assert height <= MAX_PAGE_PX
        labels = [t for t in _texts(fig) if t not in cells]
        assert len(labels) >= 4
        for text in labels:
            assert shown_text_px(text.get_fontsize(), fig.dpi, width) >= MIN_TEXT_PX, text.get_text()
    # The matrix labels every k-th class, evenly, at most ~14 of them.
    ticks = [t.get_text() for t in matrix.axes[0].get_yticklabels()]
    step = names.index(ticks[1]) if len(ticks) > 1 else 1
    assert ticks == names[::step] and len(ticks) <= 16
    assert (n <= 8) == bool(cells)  # cell numbers only where they fit
    # Every class appears on exactly one accuracy page, worst first, and each page marks the overall mean.
    shown = [t.get_text() for page in pages for t in page.axes[0].get_yticklabels()]
    assert sorted(shown) == names


def test_card_per_class_pages_share_the_overall_mean() -> None:
    from lit_explain.render import per_class_accuracy_pages

    acc = torch.linspace(0.0, 1.0, 60)
    pages = per_class_accuracy_pages(acc, [f"c{i}" for i in range(60)])
    labels = [p.axes[0].get_xlabel() for p in pages]
    assert labels == [f"accuracy (dashed: mean {acc.mean():.3f})"] * 2
