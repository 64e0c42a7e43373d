"""Attention quality: where the maps fall, whether they are faithful, and whether they depend on the weights."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_explain.explain import (
    cam,
    concentration,
    deletion_auc,
    energy_pointing_game,
    explain_predictions,
    insertion_auc,
    pointing_game,
)

THUMB = 24  # side of the stored low-resolution maps (divisible by the 3x3 region grid)
GRID = 3
CELL_NAMES = (
    "top-left",
    "top",
    "top-right",
    "left",
    "centre",
    "right",
    "bottom-left",
    "bottom",
    "bottom-right",
)


@dataclass(frozen=True)
class Maps:
    """CAMs of one batch: for the true class and for the predicted class (the same tensor where they agree)."""

    true: Tensor  # [B, 1, H, W] in [0, 1]
    pred: Tensor
    layer: str
    raw_size: tuple[int, int]  # the layer's spatial resolution


def explain_batch(
    net: nn.Module, images: Tensor, labels: Tensor, preds: Tensor, layer: str | None, method: str
) -> Maps:
    """CAMs for the predicted and the true class; only the misclassified samples need a second pass.

    ``preds`` are the sweep's predictions: the maps explain them, so every number of the report refers to
    the same prediction. The audit shows no Guided Grad-CAM, so none is made.
    """
    e = explain_predictions(net, images, labels, layer=layer, method=method, guided=False, targets=preds)
    return Maps(e.true_maps, e.pred_maps, e.layers[0], e.raw_size)


def reference_concentration(raw_size: tuple[int, int], size: tuple[int, int]) -> float:
    """Concentration of the sharpest map a layer can give: one active cell, upsampled like a CAM.

    CAMs of a coarse layer (2x2 at layer4 for 64 px inputs) are smooth by construction; comparing with this
    reference keeps "diffuse" meaning the same at every layer resolution.
    """
    raw = torch.zeros(1, 1, *raw_size)
    raw[0, 0, raw_size[0] // 2, raw_size[1] // 2] = 1.0
    up = F.interpolate(raw, size=size, mode="bilinear", align_corners=False)
    up = (up - up.min()) / (up.max() - up.min()).clamp_min(1e-12)
    return float(concentration(up)[0])


def sample_stats(maps: Maps, masks: Tensor | None) -> dict[str, Tensor]:
    """Per-sample attention numbers (CPU float32 ``[B]``): concentration and, with masks, energy and pointing."""
    stats = {
        "concentration_true": concentration(maps.true),
        "concentration_pred": concentration(maps.pred),
    }
    if masks is not None:
        m = masks.to(maps.pred.device).bool()
        if m.ndim == 3:
            m = m[:, None]
        stats["energy_in_mask"] = energy_pointing_game(maps.pred, m)
        stats["pointing_game"] = pointing_game(maps.pred, m)
        stats["energy_in_mask_true"] = energy_pointing_game(maps.true, m)
        stats["mask_area"] = m.float().mean(dim=(1, 2, 3))
    return {k: v.detach().float().cpu() for k, v in stats.items()}


def thumbnails(maps: Tensor, size: int = THUMB) -> Tensor:
    """Maps shrunk to ``[B, size, size]`` float16 on the CPU: enough to compare where attention sits."""
    return F.adaptive_avg_pool2d(maps.float(), size)[:, 0].to("cpu", torch.float16)


def _average_ranks(x: Tensor) -> Tensor:
    """1-based ranks along dim 1, ties sharing their average rank (as Spearman's coefficient needs)."""
    order = x.argsort(dim=1, stable=True)
    ranks = torch.empty_like(x, dtype=torch.float32)
    for b in range(x.shape[0]):
        _, inverse, counts = torch.unique_consecutive(x[b, order[b]], return_inverse=True, return_counts=True)
        ends = counts.cumsum(0).float()
        ranks[b, order[b]] = (ends - (counts.float() - 1) / 2)[inverse]
    return ranks


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation per sample between two map batches ``[B, ...]``; NaN where a map is constant.

    Example:
        >>> a = torch.rand(2, 1, 8, 8)
        >>> spearman(a, a * 3 + 1).tolist()
        [1.0, 1.0]
    """
    ra = _average_ranks(a.flatten(1).float())
    rb = _average_ranks(b.flatten(1).float())
    ra = ra - ra.mean(dim=1, keepdim=True)
    rb = rb - rb.mean(dim=1, keepdim=True)
    denom = ra.norm(dim=1) * rb.norm(dim=1)
    rho = (ra * rb).sum(dim=1) / torch.where(denom > 0, denom, 1.0)
    return torch.where(denom > 0, rho.clamp(-1, 1), torch.full_like(rho, float("nan")))


def _top_layers(net: nn.Module, layer: str, head: str | None) -> list[str]:
    """The explained layer's last block plus the classifier head: the top of the network."""
    module = net.get_submodule(layer)
    children = list(module.named_children())
    names = [f"{layer}.{children[-1][0]}" if children else layer]
    if head:
        names.append(head)
    return names


def randomisation_check(
    net: nn.Module,
    images: Tensor,
    targets: Tensor,
    maps: Tensor,
    layer: str,
    method: str,
    head: str | None = None,
    seed: int = 0,
    threshold: float = 0.5,
) -> dict:
    """Model-randomisation sanity check (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018).

    The network's top layers (the explained layer's last block and the head) get fresh random weights;
    the same method explains the same images and targets again. A faithful method's maps change: a low
    Spearman rank correlation with the original maps passes, a high one means the maps reflect the image
    (edges, contrast) more than what the model learned.

    Memory: the network is not copied. Only the randomised layers' parameters and buffers are saved, on the
    CPU, and written back in place afterwards (also on errors and Ctrl-C) — a deep copy would need a
    second network's worth of device memory at once, which a large model on a busy GPU may not have.
    Restoring in place keeps the same Parameter objects (an optimizer holding them is unaffected) and
    never touches ``.grad``.
    """
    names = _top_layers(net, layer, head)
    modules = [net.get_submodule(name) for name in names]
    saved = [{k: v.detach().to("cpu", copy=True) for k, v in _tensors(m).items()} for m in modules]
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        with torch.no_grad():
            for module in modules:
                for sub in module.modules():
                    reset = getattr(sub, "reset_parameters", None)
                    if callable(reset):
                        reset()
        new_maps = cam(net, images, layer=layer, targets=targets, method=method).maps
    finally:
        torch.random.set_rng_state(generator_state)
        with torch.no_grad():
            for module, state in zip(modules, saved, strict=True):
                for key, tensor in _tensors(module).items():
                    tensor.copy_(state[key])
    rho = spearman(maps, new_maps)
    valid = rho[~rho.isnan()]
    mean = float(valid.mean()) if valid.numel() else float("nan")
    return {
        "samples": int(images.shape[0]),
        "randomised_layers": names,
        "spearman_mean": mean,
        "spearman_median": float(valid.median()) if valid.numel() else float("nan"),
        "threshold": threshold,
        "passed": bool(valid.numel()) and mean < threshold,
    }


def _tensors(module: nn.Module) -> dict[str, Tensor]:
    """A module's parameters and buffers by name (the live tensors, not copies)."""
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


def faithfulness(
    net: nn.Module, images: Tensor, maps: Tensor, targets: Tensor, steps: int = 10, seed: int = 0
) -> dict:
    """Deletion / insertion AUC (RISE) of the maps, beside the same numbers for random maps."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(maps.shape, generator=generator).to(maps.device)
    kw = {"steps": steps, "score": "prob"}
    deletion = deletion_auc(net, images, maps, targets, **kw)
    insertion = insertion_auc(net, images, maps, targets, **kw)
    r_deletion = deletion_auc(net, images, noise, targets, **kw)
    r_insertion = insertion_auc(net, images, noise, targets, **kw)
    out = {
        "samples": int(images.shape[0]),
        "steps": steps,
        "deletion_auc": float(deletion.mean()),
        "insertion_auc": float(insertion.mean()),
        "random_deletion_auc": float(r_deletion.mean()),
        "random_insertion_auc": float(r_insertion.mean()),
    }
    # Insertion minus deletion: how much better than chance the ranking of pixels is.
    out["score"] = out["insertion_auc"] - out["deletion_auc"]
    out["random_score"] = out["random_insertion_auc"] - out["random_deletion_auc"]
    out["better_than_random"] = out["score"] > out["random_score"]
    # Paired standard errors (same images, map vs random map), so a rule can tell "better" from noise.
    n = int(images.shape[0])
    paired = {
        "score_se": (insertion - deletion) - (r_insertion - r_deletion),
        "deletion_se": deletion - r_deletion,
    }
    for key, diff in paired.items():
        out[key] = float(diff.float().std() / n**0.5) if n > 1 else float("nan")
    return out


def fixed_region(thumbs: Tensor, labels: Tensor, classes: Sequence[int]) -> dict:
    """Whether attention sits in one fixed off-centre region of the image across classes (a shortcut sign).

    Each map is pooled into a 3x3 grid; the cell holding most of a map's energy is its peak cell. Flagged
    when one non-centre cell is the peak of at least half of all maps and of at least half of the classes,
    and holds at least twice its uniform share (1/9) of the mean map's energy.
    """
    if thumbs.numel() == 0:
        return {"flagged": False, "samples": 0}
    cells = F.adaptive_avg_pool2d(thumbs.float()[:, None], GRID).flatten(1)
    share = cells / cells.sum(dim=1, keepdim=True).clamp_min(1e-12)
    peaks = share.argmax(dim=1)
    hot = int(torch.bincount(peaks, minlength=GRID * GRID).argmax())
    peak_share = float((peaks == hot).float().mean())
    mean_map = share.mean(dim=0)
    class_hits, class_total = 0, 0
    for c in classes:
        mine = peaks[labels == c]
        if mine.numel():
            class_total += 1
            class_hits += int(torch.bincount(mine, minlength=GRID * GRID).argmax() == hot)
    class_share = class_hits / class_total if class_total else 0.0
    energy_share = float(mean_map[hot])
    flagged = hot != (GRID * GRID) // 2 and peak_share >= 0.5 and class_share >= 0.5 and energy_share >= 2 / 9
    return {
        "samples": int(thumbs.shape[0]),
        "hot_cell": CELL_NAMES[hot],
        "peak_share": peak_share,
        "energy_share": energy_share,
        "classes_with_peak_there": class_hits,
        "classes_considered": class_total,
        "cell_energy": [round(float(v), 4) for v in mean_map],
        "flagged": bool(flagged),
    }
