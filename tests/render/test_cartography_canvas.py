"""CartographyCanvas: the cartography picture redrawn on kept pixels is the picture a new figure draws."""

from __future__ import annotations

import torch

from lit_explain.render.cartography import CartographyCanvas, cartography_image


def _samples(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    conf, var, corr = (
        torch.rand(n, generator=g),
        torch.rand(n, generator=g) * 0.45,
        torch.rand(n, generator=g),
    )
    conf[:3] = float("nan")  # samples not seen yet are left out
    return conf, var, corr, conf < 0.15


def test_every_redraw_matches_a_fresh_figure() -> None:
    canvas = CartographyCanvas()
    for epoch, (n, seed) in enumerate([(400, 0), (900, 1), (50, 2)], start=2):
        conf, var, corr, flagged = _samples(n, seed)
        title = f"Dataset Cartography after epoch {epoch} ({int(flagged.sum())} of {n} flagged)"
        expected = cartography_image(conf, var, corr, flagged, title=title)
        assert torch.equal(canvas.image(conf, var, corr, flagged, title=title), expected)
    # No flagged samples at all, then a subset drawn above max_points: still the fresh figure's pixels.
    conf, var, corr, _ = _samples(300, 3)
    assert torch.equal(canvas.image(conf, var, corr), cartography_image(conf, var, corr))


def test_a_subset_is_drawn_above_max_points_and_says_so() -> None:
    conf, var, corr, flagged = _samples(600, 4)
    small = CartographyCanvas(max_points=200).image(conf, var, corr, flagged)
    full = CartographyCanvas().image(conf, var, corr, flagged)
    assert small.shape == full.shape and not torch.equal(small, full)
