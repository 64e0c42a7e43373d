"""Faithfulness and attention metrics for saliency maps, batched on tensors.

Maps are ``[B, 1, H, W]`` (or ``[B, H, W]``) non-negative tensors, such as ``CAMResult.maps``; masks are
boolean tensors of the same spatial size. Per-image metrics return ``[B]`` float32 tensors by default
(``reduction="none"``); the averaged ones (average drop, increase in confidence, drift) return a
scalar by default. Model-based metrics run the model in eval mode under ``no_grad`` in chunks of
perturbed images and restore every module's train/eval flag.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_explain.explain._common import Targets, check_score, model_device, resolve_targets, target_scores
from lit_explain.explain._state import eval_mode, unwrap_model

__all__ = [
    "average_drop",
    "concentration",
    "deletion_auc",
    "drift",
    "energy_pointing_game",
    "explanation_confidence",
    "increase_in_confidence",
    "insertion_auc",
    "perturbation_curve",
    "pointing_game",
]

Reduction = Literal["none", "mean"]


def _maps4(maps: Tensor) -> Tensor:
    if maps.ndim == 3:
        maps = maps[:, None]
    if maps.ndim != 4 or maps.shape[1] != 1:
        raise ValueError(f"maps must be [B, 1, H, W] or [B, H, W], got {tuple(maps.shape)}")
    return maps.float()


def _reduce(values: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "none":
        return values
    raise ValueError(f"reduction must be 'none' or 'mean', got {reduction!r}")


def _fit(maps: Tensor, like: Tensor) -> Tensor:
    """``[B, 1, H, W]`` maps resized (bilinear) to the spatial size of ``like`` when they differ."""
    maps = _maps4(maps).to(like.device)
    if maps.shape[-2:] != like.shape[-2:]:
        maps = F.interpolate(maps, size=like.shape[-2:], mode="bilinear", align_corners=False)
    return maps


def gaussian_blur(images: Tensor, kernel_size: int = 11, sigma: float = 5.0) -> Tensor:
    """Separable Gaussian blur (replicate padding); the insertion baseline used by RISE."""
    half = kernel_size // 2
    t = torch.arange(kernel_size, dtype=torch.float32, device=images.device) - half
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(images.dtype)
    c = images.shape[1]
    x = F.pad(images, (half, half, half, half), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _scores(net: nn.Module, batch: Tensor, targets: Tensor, score: str) -> Tensor:
    return target_scores(net(batch), targets, score).float()


def perturbation_curve(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    targets: Targets = None,
    *,
    mode: Literal["deletion", "insertion"] = "deletion",
    steps: int = 20,
    baseline: float | Tensor | None = None,
    score: Literal["logit", "prob"] = "prob",
    chunk_size: int = 64,
) -> Tensor:
    """Target score while pixels are deleted (or inserted) from most to least salient: ``[B, steps + 1]``.

    Step ``k`` perturbs the ``floor(k * H * W / steps)`` most salient pixels (ties broken by position).
    Deletion replaces them with ``baseline`` (default 0, i.e. the dataset mean for normalised inputs);
    insertion starts from ``baseline`` (default: the image blurred with an 11-pixel, sigma-5 Gaussian,
    as in RISE) and puts them back. The ``B * (steps + 1)`` perturbed images are built and scored
    ``chunk_size`` at a time across the batch.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        >>> perturbation_curve(net, torch.randn(2, 3, 8, 8), torch.rand(2, 1, 8, 8), steps=4).shape
        torch.Size([2, 5])
    """
    check_score(score)
    if steps < 1 or chunk_size < 1:
        raise ValueError("steps and chunk_size must be >= 1")
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    net = unwrap_model(model)
    x = images.to(model_device(net, images))
    b, _, h, w = x.shape
    n = h * w
    saliency = _fit(maps, x).flatten(1)
    order = saliency.argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(n, device=x.device).expand(b, n))
    counts = torch.arange(steps + 1, device=x.device) * n // steps
    if baseline is None:
        baseline = 0.0 if mode == "deletion" else gaussian_blur(x)
    base = torch.as_tensor(baseline, dtype=x.dtype, device=x.device).expand_as(x)
    # Deletion puts the baseline where a pixel ranks among the first k; insertion puts the image there.
    first, rest = (base, x) if mode == "deletion" else (x, base)
    out = torch.empty(b * (steps + 1), dtype=torch.float32, device=x.device)
    with eval_mode(model), torch.no_grad():
        # Given targets are checked against the class count with a one-image forward; predicted targets
        # need every image's logits, computed chunk_size images at a time like the perturbed batches.
        logits = (
            torch.cat([net(c) for c in x.split(chunk_size)]) if targets is None else net(x[:1]).expand(b, -1)
        )
        chosen = resolve_targets(targets, logits)
        img_of = torch.arange(b, device=x.device).repeat_interleave(steps + 1)
        step_of = torch.arange(steps + 1, device=x.device).repeat(b)
        for start in range(0, b * (steps + 1), chunk_size):
            i = img_of[start : start + chunk_size]
            k = step_of[start : start + chunk_size]
            top = (rank[i] < counts[k][:, None]).view(-1, 1, h, w)
            batch = torch.where(top, first[i], rest[i])
            out[start : start + chunk_size] = _scores(net, batch, chosen[i], score)
    return out.view(b, steps + 1)


def _auc(curve: Tensor) -> Tensor:
    return torch.trapezoid(curve, dx=1.0 / (curve.shape[1] - 1), dim=1)


def deletion_auc(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    targets: Targets = None,
    *,
    steps: int = 20,
    baseline: float | Tensor | None = None,
    score: Literal["logit", "prob"] = "prob",
    chunk_size: int = 64,
    reduction: Reduction = "none",
) -> Tensor:
    """Deletion AUC (Petsiuk, Das & Saenko, "RISE", BMVC 2018). Lower is better.

    ``AUC = integral_0^1 p(x with the top-f salient pixels deleted) df``, by the trapezoidal rule over
    ``steps + 1`` equally spaced fractions ``f`` (see :func:`perturbation_curve`).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        >>> deletion_auc(net, torch.randn(2, 3, 8, 8), torch.rand(2, 1, 8, 8), steps=4).shape
        torch.Size([2])
    """
    curve = perturbation_curve(
        model,
        images,
        maps,
        targets,
        mode="deletion",
        steps=steps,
        baseline=baseline,
        score=score,
        chunk_size=chunk_size,
    )
    return _reduce(_auc(curve), reduction)


def insertion_auc(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    targets: Targets = None,
    *,
    steps: int = 20,
    baseline: float | Tensor | None = None,
    score: Literal["logit", "prob"] = "prob",
    chunk_size: int = 64,
    reduction: Reduction = "none",
) -> Tensor:
    """Insertion AUC (Petsiuk, Das & Saenko, "RISE", BMVC 2018). Higher is better.

    ``AUC = integral_0^1 p(baseline with the top-f salient pixels of x inserted) df``, trapezoidal
    rule over ``steps + 1`` fractions; the default baseline is a Gaussian-blurred copy of the image.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        >>> insertion_auc(net, torch.randn(2, 3, 8, 8), torch.rand(2, 1, 8, 8), steps=4).shape
        torch.Size([2])
    """
    curve = perturbation_curve(
        model,
        images,
        maps,
        targets,
        mode="insertion",
        steps=steps,
        baseline=baseline,
        score=score,
        chunk_size=chunk_size,
    )
    return _reduce(_auc(curve), reduction)


def explanation_confidence(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    targets: Targets = None,
    *,
    score: Literal["logit", "prob"] = "prob",
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """``(Y, O)``: the target score on the images and on the images multiplied by their maps.

    The inputs of :func:`average_drop` and :func:`increase_in_confidence` (Chattopadhay et al., 2018),
    where the "explanation map" is ``x * map`` with the map in [0, 1] upsampled to the image size.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        >>> y, o = explanation_confidence(net, torch.randn(2, 3, 8, 8), torch.rand(2, 1, 8, 8))
        >>> y.shape, o.shape
        (torch.Size([2]), torch.Size([2]))
    """
    check_score(score)
    net = unwrap_model(model)
    x = images.to(model_device(net, images))
    masked = x * _fit(maps, x).to(x.dtype)
    with eval_mode(model), torch.no_grad():
        base_logits = torch.cat([net(c) for c in x.split(chunk_size)])
        chosen = resolve_targets(targets, base_logits)
        base = target_scores(base_logits, chosen, score).float()
        explained = torch.cat(
            [
                _scores(net, c, t, score)
                for c, t in zip(masked.split(chunk_size), chosen.split(chunk_size), strict=True)
            ]
        )
    return base, explained


def average_drop(base: Tensor, explained: Tensor, *, reduction: Reduction = "mean") -> Tensor:
    """Average Drop % (Chattopadhay et al., "Grad-CAM++", WACV 2018). Lower is better.

    ``AD = 100 / N * sum_i max(0, Y_i - O_i) / Y_i`` with ``Y_i`` the score on the image and ``O_i``
    on the explanation map (see :func:`explanation_confidence`); terms with ``Y_i <= 0`` count as 0.

    Example:
        >>> average_drop(torch.tensor([0.8, 0.5]), torch.tensor([0.4, 0.6]))
        tensor(25.)
    """
    drop = (base - explained).clamp_min(0) / torch.where(base > 0, base, torch.ones_like(base))
    return _reduce(100.0 * torch.where(base > 0, drop, torch.zeros_like(drop)), reduction)


def increase_in_confidence(base: Tensor, explained: Tensor, *, reduction: Reduction = "mean") -> Tensor:
    """% Increase in Confidence (Chattopadhay et al., "Grad-CAM++", WACV 2018). Higher is better.

    ``IC = 100 / N * sum_i 1[Y_i < O_i]``: how often the explanation map alone scores higher.

    Example:
        >>> increase_in_confidence(torch.tensor([0.8, 0.5]), torch.tensor([0.4, 0.6]))
        tensor(50.)
    """
    return _reduce(100.0 * (explained > base).float(), reduction)


def energy_pointing_game(maps: Tensor, masks: Tensor, *, reduction: Reduction = "none") -> Tensor:
    """Energy-based pointing game (Wang et al., "Score-CAM", CVPR-W 2020). Higher is better.

    ``proportion = sum(map * mask) / sum(map)``: the share of the map's energy inside the object
    mask (a bounding box in the paper). An all-zero map scores 0.

    Example:
        >>> maps = torch.tensor([[[[1.0, 3.0], [0.0, 0.0]]]])
        >>> energy_pointing_game(maps, torch.tensor([[[[False, True], [False, False]]]]))
        tensor([0.7500])
    """
    m = _maps4(maps).clamp_min(0)
    inside = (m * _maps4(masks.float()).to(m.device)).sum(dim=(1, 2, 3))
    total = m.sum(dim=(1, 2, 3))
    return _reduce(torch.where(total > 0, inside / torch.where(total > 0, total, 1.0), 0.0), reduction)


def pointing_game(
    maps: Tensor, masks: Tensor, *, tolerance: int = 0, reduction: Reduction = "none"
) -> Tensor:
    """Pointing game (Zhang et al., "Top-down Neural Attention by Excitation Backprop", ECCV 2016).

    A hit (1.0) when the map's maximum lies inside the mask, or within ``tolerance`` pixels (Euclidean)
    of it (the paper uses 15); otherwise 0.0. Ties go to the first maximum in row-major order; a
    constant map has no maximum and counts as a miss. ``mean`` gives the accuracy ``hits / (hits + misses)``.

    Example:
        >>> maps = torch.zeros(1, 1, 5, 5)
        >>> maps[0, 0, 0, 0] = 1.0
        >>> masks = torch.zeros(1, 1, 5, 5, dtype=torch.bool)
        >>> masks[0, 0, 2, 2] = True
        >>> pointing_game(maps, masks), pointing_game(maps, masks, tolerance=3)
        (tensor([0.]), tensor([1.]))
    """
    m = _maps4(maps)
    region = _maps4(masks.float()).to(m.device)
    if tolerance > 0:
        r = int(tolerance)
        t = torch.arange(-r, r + 1, device=m.device, dtype=torch.float32)
        disc = ((t[:, None] ** 2 + t[None, :] ** 2) <= tolerance**2).float()[None, None]
        region = F.conv2d(region, disc, padding=r)
    flat = m.flatten(1)
    peak = flat.argmax(dim=1, keepdim=True)
    hit = region.flatten(1).gather(1, peak)[:, 0] > 0
    varies = flat.amax(dim=1) > flat.amin(dim=1)
    return _reduce((hit & varies).float(), reduction)


def concentration(maps: Tensor, *, reduction: Reduction = "none") -> Tensor:
    """Concentration: one minus the normalised Shannon entropy of the map seen as a distribution.

    ``p = map / sum(map)``, ``H = -sum p log p`` (Shannon, 1948), ``concentration = 1 - H / log(H*W)``:
    1 for a single pixel, 0 for a uniform map. An all-zero map scores 0.

    Example:
        >>> maps = torch.zeros(2, 1, 4, 4)
        >>> maps[0] = 1.0
        >>> maps[1, 0, 0, 0] = 1.0
        >>> concentration(maps)
        tensor([0., 1.])
    """
    m = _maps4(maps).clamp_min(0).flatten(1)
    total = m.sum(dim=1, keepdim=True)
    p = m / torch.where(total > 0, total, 1.0)
    entropy = -(p * torch.log(torch.where(p > 0, p, 1.0))).sum(dim=1)
    n = m.shape[1]
    normalised = entropy / math.log(n) if n > 1 else torch.zeros_like(entropy)
    return _reduce(torch.where(total[:, 0] > 0, 1.0 - normalised, 0.0), reduction)


def drift(maps_a: Tensor, maps_b: Tensor, *, reduction: Reduction = "mean") -> Tensor:
    """Drift between two sets of maps of the same images: ``1 - mean_i pearson(a_i, b_i)``. 0 = identical.

    Pearson correlation over pixels, per image; the same similarity used to compare explanations in
    Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018 (which also reports rank
    correlation). A constant map has no correlation: two constant maps count as r = 1 (no pattern
    to drift), a constant and a varying map as r = 0.
    Range [0, 2]; ``reduction="none"`` gives ``1 - pearson`` per image.

    Example:
        >>> a = torch.rand(3, 1, 8, 8)
        >>> float(drift(a, 2 * a + 1)) < 1e-6, float(drift(a, -a))
        (True, 2.0)
    """
    a = _maps4(maps_a).flatten(1)
    b = _maps4(maps_b).to(a.device).flatten(1)
    if a.shape != b.shape:
        raise ValueError(f"map sets differ in shape: {tuple(maps_a.shape)} vs {tuple(maps_b.shape)}")
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    denom = a.norm(dim=1) * b.norm(dim=1)
    r = (a * b).sum(dim=1) / torch.where(denom > 0, denom, 1.0)
    same = (a == b).all(dim=1)
    r = torch.where(denom > 0, r.clamp(-1.0, 1.0), same.float())
    return _reduce(1.0 - r, reduction)
