"""confusion_matrix_image / per_class_accuracy_images: the card charts drawn as pixels (render/charts.py).

Sizes are those of the matplotlib card figures (the logged pictures' contract); colours are matplotlib's
colormaps; strings are checked through the charts' one text function (``charts._text``), positions and
colours through the pixels.
"""

from __future__ import annotations

import inspect
import re
import threading
from collections.abc import Iterator

import matplotlib
import numpy as np
import pytest
import torch

from lit_explain.render import (
    charts,
    confusion_matrix_figure,
    confusion_matrix_image,
    per_class_accuracy_images,
)
from lit_explain.render.card import CARD_IMAGE_PX, MIN_TEXT_PX, shown_text_px
from lit_explain.render.figures import CARD_BARS_PER_PAGE


def _cm(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 9, (n, n), generator=g) + torch.eye(n, dtype=torch.int64) * (20 + seed)


def _acc(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, generator=torch.Generator().manual_seed(seed))


def _names(n: int) -> list[str]:
    return [f"class_{i:03d}" for i in range(n)]


@pytest.fixture(autouse=True)
def _no_cached_charts() -> Iterator[None]:
    charts._charts.clear()  # every test builds its charts (and draws their fixed parts) itself
    yield
    charts._charts.clear()


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, bool]]:
    """Every string the charts draw, in order, as (text, size, rotated)."""
    strings: list[tuple[str, int, bool]] = []
    real = charts._text
    signature = inspect.signature(real)

    def recording(*args: object, **kwargs: object) -> None:
        call = signature.bind(*args, **kwargs)
        call.apply_defaults()
        strings.append((call.arguments["text"], call.arguments["size"], call.arguments["rotated"]))
        real(*args, **kwargs)

    monkeypatch.setattr(charts, "_text", recording)
    return strings


def _texts(drawn: list[tuple[str, int, bool]]) -> list[str]:
    return [text for text, _, _ in drawn]


# -- sizes -------------------------------------------------------------------------------------------------

# The matplotlib card figures' sizes (figure_to_tensor of confusion_matrix_figure(card=True) and of
# per_class_accuracy_pages) before the charts were drawn as pixels: the matrix is 462 x 500 whatever the
# classes, the accuracy pages grow with their bars.
PAGE_HEIGHTS = {2: [159], 6: [257], 20: [598], 21: [622], 60: [1329, 354], 100: [1329, 1329]}


@pytest.mark.parametrize("n", sorted(PAGE_HEIGHTS))
@pytest.mark.parametrize("long_names", [False, True])
def test_sizes_are_the_card_figures_sizes(n: int, long_names: bool) -> None:
    names = [f"a_rather_long_class_name_{i}" if long_names else f"c{i}" for i in range(n)]
    for normalize in (True, False):
        image = confusion_matrix_image(_cm(n, 0), names, normalize=normalize)
        assert image.dtype == torch.uint8 and image.shape == (3, 462, 500) and image.is_contiguous()
    pages = per_class_accuracy_images(_acc(n, 0), names)
    assert [tuple(p.shape) for p in pages] == [(3, h, 500) for h in PAGE_HEIGHTS[n]]
    assert all(p.dtype == torch.uint8 for p in pages)


def test_sizes_match_a_matplotlib_card_figure() -> None:
    from lit_explain.render import confusion_matrix_figure, figure_to_tensor, per_class_accuracy_pages

    names = _names(21)
    figure = figure_to_tensor(confusion_matrix_figure(_cm(21, 0), names, card=True))
    assert confusion_matrix_image(_cm(21, 0), names).shape == figure.shape
    pages = [figure_to_tensor(p).shape for p in per_class_accuracy_pages(_acc(21, 0), names)]
    assert [p.shape for p in per_class_accuracy_images(_acc(21, 0), names)] == pages


def test_text_stays_readable_on_the_narrowest_card(drawn: list[tuple[str, int, bool]]) -> None:
    confusion_matrix_image(_cm(6, 0), _names(6))
    per_class_accuracy_images(_acc(6, 0), _names(6))
    labels = {text for text, size, _ in drawn if size == charts.TEXT_PX}
    assert {"Confusion matrix (row-normalised)", "class_000", "true", "predicted", "1.0"} <= labels
    assert {"Per-class accuracy", "0.5"} <= labels
    # Only the numbers in the cells (detail, as in the figures) are smaller.
    smaller = [text for text, size, _ in drawn if size != charts.TEXT_PX]
    assert smaller and all(re.fullmatch(r"[01]\.\d\d", text) for text in smaller)
    # The card figures' font (points at their dpi) and MIN_TEXT_PX tall when 500 px are shown 320 px wide.
    assert charts.TEXT_PX == 18
    assert shown_text_px(charts.TEXT_PX * 72 / 100, 100, 500) >= MIN_TEXT_PX
    assert charts.TEXT_PX * CARD_IMAGE_PX / 500 >= MIN_TEXT_PX


# -- confusion matrix --------------------------------------------------------------------------------------


def _card(names: list[str], normalize: bool = True, cmap: str = "Blues") -> charts._MatrixCard:
    return charts._MatrixCard(names, normalize, "cm", cmap)


def _cell_pixels(image: torch.Tensor, card: charts._MatrixCard, i: int, j: int) -> np.ndarray:
    """The pixels of cell (row i, column j), ``[3, h, w]``."""
    box, edges = card.box, card.box.edges
    rows = slice(box.top + edges[i], box.top + edges[i + 1])
    return image.numpy()[:, rows, box.left + edges[j] : box.left + edges[j + 1]]


def _expected(cmap: str, value: float) -> np.ndarray:
    return np.asarray(matplotlib.colormaps[cmap](value, bytes=True)[:3])


@pytest.mark.parametrize(("cmap", "normalize"), [("Blues", True), ("viridis", True), ("Blues", False)])
def test_cells_have_the_colormaps_colour(cmap: str, normalize: bool) -> None:
    n = 20  # no numbers in the cells: every pixel of a cell is its colour
    m = _cm(n, 3).double()
    names = _names(n)
    card = _card(names, normalize, cmap)
    image = card.draw(m.numpy())
    shown = m / m.sum(1, keepdim=True) if normalize else m / m.max()
    for i, j in [(0, 0), (3, 7), (19, 19), (12, 4)]:
        cell = _cell_pixels(image, card, i, j)
        assert cell.shape[1] >= 10 and cell.shape[2] >= 10  # a real cell, not an empty slice
        assert (cell == _expected(cmap, float(shown[i, j]))[:, None, None]).all(), (i, j)
    # And through the public function (the cached chart): the same pixels.
    assert torch.equal(confusion_matrix_image(m, names, normalize=normalize, title="cm", cmap=cmap), image)


def test_cell_numbers_are_white_on_dark_cells_and_black_on_light_ones(
    drawn: list[tuple[str, int, bool]],
) -> None:
    # Row 0: 0.61 (above 0.6 of the range: white text) and 0.39 (black); row 1: 0.59 (black), 0.41.
    m = np.array([[61.0, 39.0], [59.0, 41.0]])
    card = _card(["cat", "dog"])
    image = card.draw(m)
    assert {"0.61", "0.39", "0.59", "0.41"} <= set(_texts(drawn))

    def counts(i: int, j: int) -> tuple[int, int]:
        cell = _cell_pixels(image, card, i, j).astype(int)
        return int((cell.min(axis=0) > 230).sum()), int((cell.max(axis=0) < 40).sum())

    white, black = counts(0, 0)
    assert white > 20 and black == 0  # 0.61: white text on the dark cell
    for i, j in [(0, 1), (1, 0), (1, 1)]:
        white, black = counts(i, j)
        assert black > 20 and white == 0, (i, j)  # 0.39 and 0.59 and 0.41: black text


def test_cell_numbers_as_the_figures_write_them(drawn: list[tuple[str, int, bool]]) -> None:
    confusion_matrix_image(torch.tensor([[3, 1], [0, 4]]), ["a", "b"], normalize=False)
    assert {"3", "1", "0", "4"} <= set(_texts(drawn))
    drawn.clear()
    confusion_matrix_image(torch.tensor([[3, 1], [0, 4]]), ["a", "b"])
    assert {"0.75", "0.25", "0.00", "1.00"} <= set(_texts(drawn))
    drawn.clear()
    confusion_matrix_image(_cm(20, 0), _names(20))  # too many classes for numbers in the cells
    numbers = [t for t in _texts(drawn) if re.fullmatch(r"[\d.]+", t)]
    assert numbers == ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]  # the colour bar's only


def test_matrix_labels(drawn: list[tuple[str, int, bool]]) -> None:
    names = [f"class_{i:03d}_with_a_long_name" for i in range(100)]
    confusion_matrix_image(_cm(100, 0), names)
    texts = _texts(drawn)
    assert "cm (row-normalised)" not in texts and "Confusion matrix (row-normalised)" in texts
    assert ("true", charts.TEXT_PX, True) in drawn and ("predicted", charts.TEXT_PX, False) in drawn
    # The classes the card figure labels (every k-th), cut to 12 characters, on both axes: upright on the
    # rows, rotated on the columns.
    figure = confusion_matrix_figure(_cm(100, 0), names, card=True)
    shown = [t.get_text() for t in figure.axes[0].get_yticklabels()]
    assert len(shown) == 10 and shown[1] == "class_011_w…"
    assert [t for t, _, r in drawn if t.startswith("class_") and not r] == shown
    assert [t for t, _, r in drawn if t.startswith("class_") and r] == shown
    # The colour bar: 0..1.
    assert [t for t in texts if t[:2] in ("0.", "1.")] == ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]


def test_short_names_of_few_classes_are_not_rotated(drawn: list[tuple[str, int, bool]]) -> None:
    confusion_matrix_image(_cm(3, 0), ["cat", "dog", "owl"], normalize=False, title="counts")
    assert [(t, r) for t, _, r in drawn if t in ("cat", "dog", "owl")] == [
        (name, rotated) for name in ("cat", "dog", "owl") for rotated in (False, False)
    ]
    assert "counts" in _texts(drawn)


def test_raw_count_colour_bar_follows_the_counts(drawn: list[tuple[str, int, bool]]) -> None:
    names = list("abc")
    first = confusion_matrix_image(
        torch.tensor([[679, 1, 0], [2, 600, 3], [0, 0, 650]]), names, normalize=False
    )
    # The colour bar's labels are drawn last, after the numbers in the cells.
    assert _texts(drawn)[-7:] == ["0", "100", "200", "300", "400", "500", "600"]
    drawn.clear()
    second = confusion_matrix_image(
        torch.tensor([[150000, 1, 0], [2, 6, 3], [0, 0, 9]]), names, normalize=False
    )
    assert drawn, "the second call draws its strings too"
    assert _texts(drawn)[-7:] == ["0", "25k", "50k", "75k", "100k", "125k", "150k"]
    card = next(iter(charts._charts.values()))
    bar = slice(card.box.bar_left + charts._BAR_W + 1, 500)  # the colour bar's labels changed
    assert not torch.equal(first[:, :, bar], second[:, :, bar])


@pytest.mark.parametrize(
    ("vmax", "labels"),
    [
        (1.0, ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]),
        (679.0, ["0", "100", "200", "300", "400", "500", "600"]),
        (3.0, ["0.0", "0.5", "1.0", "1.5", "2.0", "2.5", "3.0"]),
        (25_000.0, ["0", "5k", "10k", "15k", "20k", "25k"]),
        (2.4e7, ["0", "5M", "10M", "15M", "20M"]),
        (2.8e6, ["0", "0.5M", "1.0M", "1.5M", "2.0M", "2.5M"]),
        (9_000.0, ["0", "2000", "4000", "6000", "8000"]),
    ],
)
def test_colour_bar_ticks(vmax: float, labels: list[str]) -> None:
    ticks, shown = charts._nice_ticks(vmax)
    assert shown == labels and ticks[-1] <= vmax and len(ticks) == len(labels)


# -- per-class accuracy ------------------------------------------------------------------------------------


def test_accuracy_pages_worst_first_and_paged(drawn: list[tuple[str, int, bool]]) -> None:
    n = 120
    acc = _acc(n, 1)
    names = _names(n)
    pages = per_class_accuracy_images(acc, names, title="acc (val)")
    assert len(pages) == 3
    texts = _texts(drawn)
    assert [t for t in texts if t.startswith("acc (val)")] == [f"acc (val) ({k}/3)" for k in (1, 2, 3)]
    order = [names[i] for i in np.argsort(acc.numpy(), kind="stable")]
    assert [t for t in texts if t.startswith("class_")] == order  # every class once, worst at the top
    mean = f"accuracy (dashed: mean {acc.mean():.3f})"
    assert texts.count(mean) == 3  # every page marks the mean over all classes
    assert CARD_BARS_PER_PAGE == 50


def _bar_rows(page: charts._AccuracyPage, i: int) -> slice:
    return slice(int(page.bar_tops[i]), int(page.bar_bottoms[i]))


def test_bars_have_the_accuracy_colours_and_lengths() -> None:
    acc = np.array([0.9, 0.2, 0.55, 1.0])
    page = charts._AccuracyPage(4, "acc", name_w=60)
    image = page.draw(acc, list("abcd"), float("nan")).numpy()  # no mean line across the bars
    for i, v in enumerate(acc):
        rows = image[:, _bar_rows(page, i), page.left : page.left + page.plot_w]
        expected = np.round(np.asarray(matplotlib.colormaps["RdYlGn"](0.15 + 0.7 * v)[:3]) * 255).astype(
            np.uint8
        )
        painted = (rows == expected[:, None, None]).all(axis=0).all(axis=0)
        length = int(painted.sum())
        assert painted[:length].all()  # one bar from the axis
        assert abs(length - v * page.scale) <= 1, (v, length)


def test_nan_accuracy_is_n_a_and_left_out_of_the_mean(drawn: list[tuple[str, int, bool]]) -> None:
    acc = torch.tensor([0.5, float("nan"), 0.7, 0.9])
    pages = per_class_accuracy_images(acc, list("abcd"))
    texts = _texts(drawn)
    assert "n/a" in texts and "accuracy (dashed: mean 0.700)" in texts
    assert [t for t in texts if t in list("abcd")] == ["a", "c", "d", "b"]  # no samples: last
    page = next(iter(charts._charts.values())).pages[0]
    row = pages[0].numpy()[:, _bar_rows(page, 3), page.left + 1 : page.left + 60]
    assert (row.max(axis=0) < 60).any()  # "n/a" written where the bar would start
    drawn.clear()
    per_class_accuracy_images(torch.full((4,), float("nan")), list("abcd"))
    assert "accuracy" in _texts(drawn) and _texts(drawn).count("n/a") == 4


def _mean_line_column(image: np.ndarray, page: charts._AccuracyPage) -> int:
    """The plot's column with the most black pixels: the dashed mean line (no values are written)."""
    plot = image[:, page.top : page.top + page.plot_h, page.left : page.left + page.plot_w]
    dark = (plot.max(axis=0) < 80).sum(axis=0)
    assert dark.max() > page.plot_h / 2  # a dashed line over the whole height
    return page.left + int(dark.argmax())


def test_the_mean_line_follows_the_mean() -> None:
    n = 45  # more than 40 bars: no values beside the bars, only the line is black in the plot
    page = charts._AccuracyPage(n, "acc", name_w=60)
    found = []
    for mean in (0.25, 0.5, 0.8):
        acc = np.full(n, mean)
        column = _mean_line_column(page.draw(acc, _names(n), mean).numpy(), page)
        assert abs(column + 0.5 - page._x(mean)) <= 1.0, mean
        found.append(column)
    assert found[0] < found[1] < found[2]
    no_mean = page.draw(np.full(n, np.nan), _names(n), float("nan")).numpy()
    right_of_n_a = round(page._x(0.2))  # ("n/a" is written at the start of every row)
    plot = no_mean[:, page.top : page.top + page.plot_h, right_of_n_a : page.left + page.plot_w]
    assert (plot.max(axis=0) < 80).sum(axis=0).max() == 0  # no line without a mean


# -- every call draws its own data -------------------------------------------------------------------------


def test_data_changes_pixels_and_the_cache_keeps_no_state() -> None:
    names = _names(6)
    first = confusion_matrix_image(_cm(6, 0), names)
    first_pages = per_class_accuracy_images(_acc(6, 0), names)
    other = confusion_matrix_image(_cm(6, 1), names)
    other_pages = per_class_accuracy_images(_acc(6, 1), names)
    assert not torch.equal(first, other) and not torch.equal(first_pages[0], other_pages[0])
    first.zero_()  # a caller's changes to its picture never reach the next one
    first_pages[0].zero_()
    assert torch.equal(confusion_matrix_image(_cm(6, 1), names), other)
    assert torch.equal(per_class_accuracy_images(_acc(6, 1), names)[0], other_pages[0])
    assert confusion_matrix_image(_cm(6, 0), names).float().mean() > 100  # not the zeroed picture
    charts._charts.clear()  # a fresh chart draws the very same pixels as the cached one
    assert torch.equal(confusion_matrix_image(_cm(6, 1), names), other)
    assert torch.equal(per_class_accuracy_images(_acc(6, 1), names)[0], other_pages[0])


def _draw_chart(kind: str, n: int) -> torch.Tensor:
    names = [f"{'W' * 9}_{i:02d}" for i in range(n)]  # as wide as names get (cut to 12 / 16 characters)
    if kind == "matrix":
        return confusion_matrix_image(_cm(n, 0), names)
    if kind == "counts":
        return confusion_matrix_image(_cm(n, 0) * 99_999, names, normalize=False)
    acc = _acc(n, 0)
    acc[0] = float("nan")
    (page,) = per_class_accuracy_images(acc, names)
    return page


CROWDED = [(kind, n) for kind in ("matrix", "counts") for n in (2, 6, 13, 20, 100)] + [
    ("accuracy", n)
    for n in (2, 6, 13, 20, 50)  # one page (50 bars: the most a page holds)
]


@pytest.mark.parametrize(("kind", "n"), CROWDED)
def test_text_is_anti_aliased_and_nothing_is_clipped_or_overlaps(
    monkeypatch: pytest.MonkeyPatch, kind: str, n: int
) -> None:
    boxes: list[tuple[int, int, int, int]] = []  # of one picture: its fixed parts and its call's
    real = charts._blend

    def recording(canvas: np.ndarray, mask: np.ndarray, top: int, left: int, color: tuple) -> None:
        _, height, width = canvas.shape
        assert top >= 0 and left >= 0 and top + mask.shape[0] <= height and left + mask.shape[1] <= width
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if not mask.flags.writeable and rows.size:  # a string's cached mask (not the mean line): its ink
            boxes.append((top + rows[0], left + cols[0], top + rows[-1] + 1, left + cols[-1] + 1))
        real(canvas, mask, top, left, color)

    monkeypatch.setattr(charts, "_blend", recording)
    image = _draw_chart(kind, n).numpy()
    assert len(boxes) >= 8
    _assert_disjoint(boxes)
    # Anti-aliased: the title's pixels take many grey levels between black text and the white.
    title = image[:, :40].min(axis=0)
    assert title.min() < 60 and len(np.unique(title)) > 20


def _assert_disjoint(boxes: list[tuple[int, int, int, int]]) -> None:
    """No two strings' ink overlaps."""
    for k, (t0, l0, b0, r0) in enumerate(boxes):
        for t1, l1, b1, r1 in boxes[k + 1 :]:
            assert b0 <= t1 or b1 <= t0 or r0 <= l1 or r1 <= l0, ((t0, l0, b0, r0), (t1, l1, b1, r1))


def test_threads_draw_what_serial_calls_draw() -> None:
    names = _names(12)
    seeds = range(6)
    serial = {
        s: (confusion_matrix_image(_cm(12, s), names), per_class_accuracy_images(_acc(12, s), names))
        for s in seeds
    }
    charts._charts.clear()
    results: dict[int, list] = {s: [] for s in seeds}
    errors: list[BaseException] = []
    start = threading.Barrier(len(seeds))

    def draw(seed: int) -> None:
        try:
            start.wait()  # all at once: the first calls build the same charts concurrently
            for _ in range(4):
                pages = per_class_accuracy_images(_acc(12, seed), names)
                results[seed].append((confusion_matrix_image(_cm(12, seed), names), pages))
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=draw, args=(s,)) for s in seeds]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for seed, runs in results.items():
        assert len(runs) == 4
        for matrix, pages in runs:
            assert torch.equal(matrix, serial[seed][0])
            assert all(torch.equal(a, b) for a, b in zip(pages, serial[seed][1], strict=True))
    assert len({id(chart) for chart in charts._charts.values()}) == len(charts._charts) == 2


def test_the_cache_is_bounded_and_keeps_the_recent_charts() -> None:
    for k in range(charts._CACHED_CHARTS + 3):
        confusion_matrix_image(_cm(3, 0), list("abc"), title=f"t{k}")
    assert len(charts._charts) == charts._CACHED_CHARTS
    titles = [key[3] for key in charts._charts]
    assert titles == [f"t{k}" for k in range(3, charts._CACHED_CHARTS + 3)]  # least recently used dropped
    assert charts.text_mask.cache_info().maxsize is not None  # the masks of strings are bounded too


def test_argument_errors() -> None:
    with pytest.raises(ValueError, match="square"):
        confusion_matrix_image(torch.zeros(3, 4), list("abc"))
    with pytest.raises(ValueError, match="class names"):
        confusion_matrix_image(torch.zeros(3, 3), ["a", "b"])
    with pytest.raises(ValueError, match="colormap"):
        confusion_matrix_image(torch.zeros(3, 3), list("abc"), cmap="no_such_map")
    with pytest.raises(ValueError, match="class names"):
        per_class_accuracy_images(torch.rand(4), list("abc"))
    with pytest.raises(TypeError):
        confusion_matrix_image("not a matrix", list("abc"))  # type: ignore[arg-type]
