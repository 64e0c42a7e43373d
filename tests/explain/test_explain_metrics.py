"""Metrics against hand-computed values and a naive per-image, per-step reference."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lit_explain.explain import (
    average_drop,
    concentration,
    deletion_auc,
    drift,
    energy_pointing_game,
    explanation_confidence,
    increase_in_confidence,
    insertion_auc,
    perturbation_curve,
    pointing_game,
)


class RegionNet(nn.Module):
    """Two classes: class 0 scores the mean of the top-left quadrant, class 1 the rest."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2] // 2, x.shape[-1] // 2
        s = x.sum(dim=1)
        top_left = s[:, :h, :w].mean(dim=(1, 2))
        rest = (s.sum(dim=(1, 2)) - s[:, :h, :w].sum(dim=(1, 2))) / (s[0].numel() - h * w)
        return torch.stack([top_left, rest], dim=1)


def naive_curve(model, images, maps, targets, mode, steps, baseline, score):
    """One image, one step at a time, ranking with Python sorting."""
    b, _, h, w = images.shape
    n = h * w
    out = torch.zeros(b, steps + 1)
    for i in range(b):
        flat = maps[i, 0].flatten().tolist()
        order = sorted(range(n), key=lambda j: (-flat[j], j))
        for k in range(steps + 1):
            count = k * n // steps
            chosen = torch.zeros(n, dtype=torch.bool)
            chosen[order[:count]] = True
            chosen = chosen.view(1, h, w)
            base = baseline[i] if isinstance(baseline, torch.Tensor) else torch.full_like(images[i], baseline)
            if mode == "deletion":
                img = torch.where(chosen, base, images[i])
            else:
                img = torch.where(chosen, images[i], base)
            logits = model(img[None])
            s = logits.softmax(1) if score == "prob" else logits
            out[i, k] = s[0, targets[i]]
    return out


@pytest.fixture
def conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 5, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3)
    ).eval()


@pytest.mark.parametrize("mode", ["deletion", "insertion"])
@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_batched_curve_matches_naive_loop(conv_net: nn.Module, mode: str, chunk: int) -> None:
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(3, 3, 7, 6, generator=gen)
    maps = torch.rand(3, 1, 7, 6, generator=gen)
    maps[0, 0, :2] = 0.5  # ties are broken by position
    targets = [0, 2, 1]
    baseline = torch.randn(3, 3, 7, 6, generator=gen)
    curve = perturbation_curve(
        conv_net, images, maps, targets, mode=mode, steps=4, baseline=baseline, chunk_size=chunk
    )
    expected = naive_curve(conv_net, images, maps, targets, mode, 4, baseline, "prob")
    assert torch.allclose(curve, expected, atol=1e-6)


def test_auc_is_the_trapezoid_of_the_curve(conv_net: nn.Module) -> None:
    images, maps = torch.randn(2, 3, 6, 6), torch.rand(2, 1, 6, 6)
    curve = perturbation_curve(conv_net, images, maps, mode="deletion", steps=5, score="logit")
    auc = deletion_auc(conv_net, images, maps, steps=5, score="logit")
    by_hand = (curve[:, :-1] + curve[:, 1:]).sum(1) / 2 / 5
    assert torch.allclose(auc, by_hand, atol=1e-6)
    assert deletion_auc(conv_net, images, maps, steps=5, reduction="mean").shape == ()


def test_a_faithful_map_beats_its_reverse() -> None:
    model, images = RegionNet(), torch.rand(4, 3, 8, 8) + 0.5
    good = torch.zeros(4, 1, 8, 8)
    good[:, :, :4, :4] = 1.0
    good += 0.01 * torch.rand(4, 1, 8, 8)
    bad = 1.0 - good
    kw = {"targets": 0, "steps": 16, "score": "logit", "baseline": 0.0}
    assert bool((deletion_auc(model, images, good, **kw) < deletion_auc(model, images, bad, **kw)).all())
    assert bool((insertion_auc(model, images, good, **kw) > insertion_auc(model, images, bad, **kw)).all())


def test_curve_endpoints_and_default_baselines(conv_net: nn.Module) -> None:
    images, maps = torch.randn(2, 3, 9, 9), torch.rand(2, 1, 9, 9)
    d = perturbation_curve(conv_net, images, maps, [1, 1], mode="deletion", steps=3, score="logit")
    i = perturbation_curve(conv_net, images, maps, [1, 1], mode="insertion", steps=3, score="logit")
    full = conv_net(images)[:, 1]
    assert torch.allclose(d[:, 0], full, atol=1e-6) and torch.allclose(i[:, -1], full, atol=1e-6)
    assert torch.allclose(d[:, -1], conv_net(torch.zeros_like(images))[:, 1], atol=1e-6)
    # insertion starts from the RISE baseline: the image blurred by an 11 x 11, sigma-5 Gaussian with
    # replicated borders, built here as one 2-D kernel (the library uses two separable passes)
    t = torch.arange(11, dtype=torch.float32) - 5
    g = torch.exp(-(t**2) / (2 * 5.0**2))
    kernel = torch.outer(g, g) / torch.outer(g, g).sum()
    padded = torch.nn.functional.pad(images, (5, 5, 5, 5), mode="replicate")
    blurred = torch.nn.functional.conv2d(padded, kernel.expand(3, 1, 11, 11), groups=3)
    assert not torch.allclose(blurred, images, atol=0.1)  # the blur is far from the image itself
    torch.testing.assert_close(i[:, 0], conv_net(blurred)[:, 1], atol=1e-5, rtol=1e-5)


def test_maps_at_another_resolution_are_upsampled(conv_net: nn.Module) -> None:
    images = torch.randn(2, 3, 8, 8)
    small = torch.rand(2, 1, 2, 2)
    big = torch.nn.functional.interpolate(small, size=(8, 8), mode="bilinear", align_corners=False)
    assert torch.equal(
        deletion_auc(conv_net, images, small, steps=4), deletion_auc(conv_net, images, big, steps=4)
    )


def test_average_drop_and_increase_in_confidence() -> None:
    base = torch.tensor([0.8, 0.5, 0.2, 0.0])
    explained = torch.tensor([0.4, 0.6, 0.2, 0.1])
    # drops: 0.5, 0 (increase), 0, and Y = 0 counts 0
    assert float(average_drop(base, explained)) == pytest.approx(100 * 0.5 / 4)
    assert average_drop(base, explained, reduction="none").tolist() == pytest.approx([50.0, 0.0, 0.0, 0.0])
    assert float(increase_in_confidence(base, explained)) == pytest.approx(50.0)


def test_explanation_confidence_masks_the_image() -> None:
    model, images = RegionNet(), torch.rand(3, 3, 8, 8)
    maps = torch.zeros(3, 1, 8, 8)
    maps[:, :, :4, :4] = 1.0  # keeps exactly what class 0 looks at
    y, o = explanation_confidence(model, images, maps, targets=0, score="logit")
    assert torch.allclose(y, o) and torch.allclose(y, model(images)[:, 0])
    _, o1 = explanation_confidence(model, images, maps, targets=1, score="logit")
    assert torch.allclose(o1, torch.zeros(3))


def test_energy_pointing_game() -> None:
    maps = torch.zeros(3, 1, 4, 4)
    maps[0, 0, 0, 0], maps[0, 0, 3, 3] = 3.0, 1.0
    maps[1] = 1.0
    masks = torch.zeros(3, 1, 4, 4, dtype=torch.bool)
    masks[:, :, :2, :2] = True
    assert energy_pointing_game(maps, masks).tolist() == pytest.approx([0.75, 0.25, 0.0])
    assert energy_pointing_game(maps[:, 0], masks[:, 0]).shape == (3,)


def test_pointing_game_with_tolerance() -> None:
    maps = torch.zeros(3, 1, 20, 20)
    maps[0, 0, 2, 2] = 1.0  # inside the box
    maps[1, 0, 2, 11] = 1.0  # 3 pixels right of the box (box covers columns 0..8)
    masks = torch.zeros(3, 1, 20, 20, dtype=torch.bool)
    masks[:, :, :9, :9] = True
    assert pointing_game(maps, masks).tolist() == [1.0, 0.0, 0.0]  # the constant map misses
    assert pointing_game(maps, masks, tolerance=2).tolist() == [1.0, 0.0, 0.0]
    assert pointing_game(maps, masks, tolerance=3).tolist() == [1.0, 1.0, 0.0]
    assert float(pointing_game(maps, masks, tolerance=3, reduction="mean")) == pytest.approx(2 / 3)


def test_concentration() -> None:
    maps = torch.zeros(4, 1, 4, 4)
    maps[0] = 1.0  # uniform
    maps[1, 0, 1, 2] = 5.0  # one pixel
    maps[2, 0, :2, :2] = 1.0  # four of sixteen pixels: H = log 4
    values = concentration(maps)
    assert values.tolist() == pytest.approx([0.0, 1.0, 1 - math.log(4) / math.log(16), 0.0], abs=1e-6)


def test_drift() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(3, 1, 6, 6, generator=gen)
    assert float(drift(a, a)) == pytest.approx(0.0, abs=1e-6)
    assert float(drift(a, 3 * a + 2)) == pytest.approx(0.0, abs=1e-6)
    assert float(drift(a, -a)) == pytest.approx(2.0, abs=1e-6)
    b = torch.rand(3, 1, 6, 6, generator=gen)
    pearson = torch.stack(
        [torch.corrcoef(torch.stack([a[i].flatten(), b[i].flatten()]))[0, 1] for i in range(3)]
    )
    assert drift(a, b, reduction="none").tolist() == pytest.approx((1 - pearson).tolist(), abs=1e-5)
    const = torch.ones(3, 1, 6, 6)
    assert drift(const, 2 * const, reduction="none").tolist() == [0.0, 0.0, 0.0]
    assert drift(const, a, reduction="none").tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError):
        drift(a, a[:, :, :3])


def test_metrics_never_return_nan() -> None:
    zeros = torch.zeros(2, 1, 5, 5)
    masks = torch.zeros(2, 1, 5, 5, dtype=torch.bool)
    for value in (energy_pointing_game(zeros, masks), pointing_game(zeros, masks), concentration(zeros)):
        assert bool(torch.isfinite(value).all())
    assert bool(torch.isfinite(drift(zeros, zeros)).all())


class LargestBatch(nn.Module):
    """Wraps a model and records the largest batch it was called with."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.largest = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.largest = max(self.largest, x.shape[0])
        return self.inner(x)


@pytest.mark.parametrize("targets", [None, 1])
def test_no_forward_exceeds_the_chunk_size(targets) -> None:
    # predicted targets (None) used to take one forward over the whole batch, whatever chunk_size said
    net = LargestBatch(RegionNet())
    images, maps = torch.rand(10, 3, 8, 8), torch.rand(10, 1, 8, 8)
    for metric in (deletion_auc, insertion_auc):
        net.largest = 0
        chunked = metric(net, images, maps, targets, steps=3, chunk_size=4)
        assert net.largest == 4, metric.__name__
        torch.testing.assert_close(chunked, metric(net, images, maps, targets, steps=3, chunk_size=1000))
    net.largest = 0
    explanation_confidence(net, images, maps, targets, chunk_size=4)
    assert net.largest == 4


def test_explain_tests_run_single_threaded() -> None:
    # tests/explain/conftest.py asks for one thread; the root conftest's 2-thread fixture must not win.
    assert torch.get_num_threads() == 1
