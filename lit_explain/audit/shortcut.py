"""The audit's shortcut test: the same test as the ``ShortcutAlarm`` callback, on the checkpoint's split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from lit_explain.findings.shortcut import (
    CONTROL_BOXES,
    DEFAULT_THRESHOLD,
    MIN_IMAGES,
    predicted_maps,
    region_picture,
    shortcut_advice,
    shortcut_finding,
    shortcut_sample,
    shortcut_statement,
    shortcut_test,
)
from lit_explain.render import save_png
from lit_explain.render.pages import display_images

PICTURE_FILE = "shortcut_region.png"
SHOWN = 8
# The method the threshold was measured with (docs/benchmarks.md, "Shortcut alarm"), whatever --method says.
METHOD = "layercam"


def shortcut_check(
    net: nn.Module,
    datamodule: Any,
    split: str,
    directory: Path,
    *,
    layers: str | list[str] | None = None,
    names: list[str] | None = None,
    mean: Any = None,
    std: Any = None,
    sample_size: int = 48,
    threshold: float = DEFAULT_THRESHOLD,
) -> dict[str, Any]:
    """Run the shortcut test on a fixed sample of ``split``; returns ``report["shortcut"]``.

    When it fires, the finding (the ``findings.json`` schema) is under ``"finding"`` and the picture of the
    region over a few sample images is written to ``directory / shortcut_region.png``.

    Example:
        >>> shortcut_check(model.net, datamodule, "val", Path("audit_tmp"))["fires"]   # doctest: +SKIP
        False
    """
    images, _ = shortcut_sample(datamodule, sample_size, split)
    if len(images) < MIN_IMAGES:
        return {"fires": False, "samples": len(images), "threshold": threshold, "skipped": "too few samples"}
    device = next(net.parameters()).device
    images = images.to(device)
    maps, logits = predicted_maps(net, images, layers, METHOD)
    preds = logits.argmax(1)
    evidence = shortcut_test(net, images, maps, preds, controls=CONTROL_BOXES, occlusion=True)
    out: dict[str, Any] = {
        "fires": evidence.fires(threshold),
        "threshold": threshold,
        "samples": len(images),
        "method": METHOD,
        **evidence.as_dict(),
    }
    if out["fires"]:
        finding = shortcut_finding(evidence, epoch=0, threshold=threshold).as_dict()
        finding["epoch"] = None  # a checkpoint's audit is no epoch of training; the schema keeps the key
        out["finding"] = finding
        out["statement"] = shortcut_statement(evidence)
        out["advice"] = shortcut_advice(evidence.where)
        names = list(names or getattr(datamodule, "class_names", []))
        shown = slice(0, SHOWN)
        captions = [f"pred: {names[p] if p < len(names) else p}" for p in preds[shown].tolist()]
        picture = region_picture(
            display_images(images[shown].cpu(), mean, std), maps[shown].cpu(), evidence.region, captions
        )
        save_png(directory / PICTURE_FILE, picture, overwrite=True)
        out["picture"] = PICTURE_FILE
    return out
