"""confusion_matrix_image / per_class_accuracy_images: one figure per chart, refilled every call, drawing
exactly what a fresh figure draws (strings drawn before are replayed, not rasterised again)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg
from matplotlib.figure import Figure

from lit_explain.render import (
    confusion_matrix_figure,
    confusion_matrix_image,
    figure_to_tensor,
    per_class_accuracy_images,
    per_class_accuracy_pages,
)
from lit_explain.render import figures as figures_module


def _cm(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 9, (n, n), generator=g) + torch.eye(n, dtype=torch.int64) * (20 + seed)


def _acc(n: int, seed: int) -> torch.Tensor:
    acc = torch.rand(n, generator=torch.Generator().manual_seed(seed))
    acc[seed % n] = float("nan")  # a class without samples: "n/a", left out of the mean
    return acc


def _names(n: int) -> list[str]:
    return [f"class_{i:03d}" for i in range(n)]


@pytest.fixture(autouse=True)
def _no_cached_charts() -> None:
    figures_module._charts.clear()


# Seeds of successive epochs: new numbers, then numbers seen before (their strings are replayed).
EPOCHS = (0, 1, 0, 2, 1)


@pytest.mark.parametrize(("n", "normalize"), [(6, True), (6, False), (20, True), (100, True)])
def test_confusion_matrix_image_redraws_like_a_fresh_figure(n: int, normalize: bool) -> None:
    names = _names(n)
    for call, seed in enumerate(EPOCHS, 1):  # the first call builds the figure, the later ones refill it
        image = confusion_matrix_image(_cm(n, seed), names, normalize=normalize, title="cm (val)")
        fresh = figure_to_tensor(
            confusion_matrix_figure(_cm(n, seed), names, normalize=normalize, title="cm (val)", card=True)
        )
        assert image.dtype == torch.uint8 and image.shape == fresh.shape
        assert torch.equal(image, fresh), f"call {call} differs from a fresh figure"


def _acc_epochs(n: int) -> list[torch.Tensor]:
    """Accuracies of successive epochs: new values, NaN (no samples) here and there, the same values in
    another order (the same strings at other places), all classes NaN, and values seen before."""
    first, second = _acc(n, 0), _acc(n, 1)
    shuffled = second[torch.randperm(n, generator=torch.Generator().manual_seed(5))]
    return [first, second, shuffled, torch.full((n,), float("nan")), first, shuffled]


@pytest.mark.parametrize("n", [6, 60, 100])
def test_per_class_accuracy_images_redraw_like_fresh_pages(n: int) -> None:
    names = _names(n)
    for call, acc in enumerate(_acc_epochs(n), 1):
        images = per_class_accuracy_images(acc, names, title="acc (val)")
        fresh = [figure_to_tensor(p) for p in per_class_accuracy_pages(acc, names, title="acc (val)")]
        assert len(images) == len(fresh) == -(-n // 50)
        for k, (image, page) in enumerate(zip(images, fresh, strict=True)):
            assert torch.equal(image, page), f"call {call}, page {k + 1} differs from a fresh page"


def test_a_replayed_string_takes_its_current_colour() -> None:
    # Raw counts: cell (0, 1) says "5" both times, white on a dark cell first (max 6), then black (max 40).
    names = list("abc")
    dark = torch.tensor([[6, 5, 0], [0, 6, 0], [0, 0, 6]])
    light = torch.tensor([[40, 5, 0], [0, 40, 0], [0, 0, 40]])
    for cm in (dark, light):
        image = confusion_matrix_image(cm, names, normalize=False)
        fresh = figure_to_tensor(confusion_matrix_figure(cm, names, normalize=False, card=True))
        assert torch.equal(image, fresh)


def _count_rasterised(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    drawn: list[str] = []
    real = RendererAgg.draw_text

    def counting(self, gc, x, y, s, *args, **kwargs):
        drawn.append(s)
        return real(self, gc, x, y, s, *args, **kwargs)

    monkeypatch.setattr(RendererAgg, "draw_text", counting)
    return drawn


def test_strings_drawn_before_are_not_rasterised_again(monkeypatch: pytest.MonkeyPatch) -> None:
    drawn = _count_rasterised(monkeypatch)
    for n in (6, 60):
        names = _names(n)
        confusion_matrix_image(_cm(n, 0), names, normalize=False)
        per_class_accuracy_images(_acc(n, 0), names)
    assert "class_000" in drawn and "20" in drawn  # the first calls lay the strings out with FreeType
    drawn.clear()
    for n in (6, 60):
        names = _names(n)
        confusion_matrix_image(_cm(n, 0), names, normalize=False)  # the colour bar is redrawn too
        per_class_accuracy_images(_acc(n, 0), names)
    assert drawn == []


def _text_figure(title: str) -> Figure:
    fig = Figure(figsize=(3.0, 2.0), dpi=100)  # no layout engine: every draw lays it out the same
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1])
    ax.set_title(title)
    ax.text(0.5, 0.5, "multi\nline", color="tab:red", rotation=30)
    return fig


def _replayed(fig: Figure, replay: figures_module._TextReplay) -> np.ndarray:
    canvas = fig.canvas
    with replay.installed(canvas.get_renderer()):
        canvas.draw()
    assert "draw_text" not in vars(canvas.get_renderer())  # the renderer is left as it was
    return np.asarray(canvas.buffer_rgba()).copy()


def _plain(fig: Figure) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba()).copy()


@pytest.mark.parametrize("title", [r"mathtext $x^2 + \alpha$", "plain title"])
def test_text_replay_draws_what_matplotlib_draws(title: str) -> None:
    replay = figures_module._TextReplay()
    fig = _text_figure(title)
    expected = _plain(fig)
    for _ in range(2):  # recorded, then replayed
        assert np.array_equal(_replayed(fig, replay), expected)
    cached = {key[0] for key in replay.strings}
    assert {"multi", "line", "0.00", "1.00"} <= cached  # rotated lines and tick labels are replayed
    assert not any("$" in s for s in cached)  # mathtext draws boxes too: always drawn by matplotlib
    assert ("plain title" in cached) == (title == "plain title")


def test_text_replay_is_bounded() -> None:
    replay = figures_module._TextReplay(capacity=3)
    fig = _text_figure("plain title")
    expected = _plain(fig)
    for _ in range(2):
        assert np.array_equal(_replayed(fig, replay), expected)
    assert len(replay.strings) == 3


def test_figures_are_built_once_per_chart(monkeypatch: pytest.MonkeyPatch) -> None:
    built = []
    real = figures_module._new_figure

    def counting(*size: float):
        built.append(size)
        return real(*size)

    monkeypatch.setattr(figures_module, "_new_figure", counting)
    names = _names(60)
    for seed in range(3):
        confusion_matrix_image(_cm(60, seed), names)
        per_class_accuracy_images(_acc(60, seed), names)
    assert len(built) == 1 + 2  # one matrix, two accuracy pages
    confusion_matrix_image(_cm(60, 0), names, title="other title")  # another chart: another figure
    assert len(built) == 4


def test_images_from_threads_match_fresh_figures() -> None:
    names = _names(8)
    results: dict[int, torch.Tensor] = {}
    errors: list[BaseException] = []

    def draw(seed: int) -> None:
        try:
            for _ in range(3):  # same chart from both threads: the lock keeps each draw whole
                results[seed] = confusion_matrix_image(_cm(8, seed), names)
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=draw, args=(seed,)) for seed in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for seed, image in results.items():
        assert torch.equal(image, figure_to_tensor(confusion_matrix_figure(_cm(8, seed), names, card=True)))


def test_cache_is_bounded() -> None:
    for k in range(figures_module._CACHED_CHARTS + 3):
        confusion_matrix_image(_cm(3, 0), list("abc"), title=f"t{k}")
    assert len(figures_module._charts) == figures_module._CACHED_CHARTS


def test_text_replay_stands_aside_for_an_unknown_renderer_layout() -> None:
    class OtherRenderer:  # an Agg renderer without the rasteriser attribute the replay relies on
        def draw_text(self) -> str:
            return "matplotlib's own"

    renderer = OtherRenderer()
    with figures_module._TextReplay().installed(renderer):
        assert renderer.draw_text() == "matplotlib's own"
    assert "draw_text" not in vars(renderer)
