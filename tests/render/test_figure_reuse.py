"""confusion_matrix_image / per_class_accuracy_images: one figure per chart, refilled every call, drawing
exactly what a fresh figure draws."""

from __future__ import annotations

import threading

import pytest
import torch

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


@pytest.mark.parametrize(("n", "normalize"), [(6, True), (6, False), (20, True), (100, True)])
def test_confusion_matrix_image_redraws_like_a_fresh_figure(n: int, normalize: bool) -> None:
    names = _names(n)
    for seed in range(3):  # the first call builds the figure, the later ones refill it
        image = confusion_matrix_image(_cm(n, seed), names, normalize=normalize, title="cm (val)")
        fresh = figure_to_tensor(
            confusion_matrix_figure(_cm(n, seed), names, normalize=normalize, title="cm (val)", card=True)
        )
        assert image.dtype == torch.uint8 and image.shape == fresh.shape
        assert torch.equal(image, fresh), f"call {seed + 1} differs from a fresh figure"


@pytest.mark.parametrize("n", [6, 60])
def test_per_class_accuracy_images_redraw_like_fresh_pages(n: int) -> None:
    names = _names(n)
    for seed in range(3):
        images = per_class_accuracy_images(_acc(n, seed), names, title="acc (val)")
        fresh = [
            figure_to_tensor(p) for p in per_class_accuracy_pages(_acc(n, seed), names, title="acc (val)")
        ]
        assert len(images) == len(fresh) == -(-n // 50)
        for k, (image, page) in enumerate(zip(images, fresh, strict=True)):
            assert torch.equal(image, page), f"call {seed + 1}, page {k + 1} differs from a fresh page"


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
