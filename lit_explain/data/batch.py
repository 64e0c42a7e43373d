"""The batch format every lit_explain data module yields, and a reader that also accepts plain tuples."""

from __future__ import annotations

from typing import Any

import torch

IMAGE = "image"
LABEL = "label"
MASK = "mask"
INDEX = "index"


def split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(images, labels)`` from a lit_explain dict batch or a torchvision-style ``(x, y)`` tuple.

    Example:
        >>> images, labels = split_batch({"image": torch.zeros(2, 3, 8, 8), "label": torch.tensor([0, 1])})
    """
    if isinstance(batch, dict):
        return batch[IMAGE], batch[LABEL]
    if isinstance(batch, (list, tuple)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise TypeError(
        f"expected a batch dict with keys {IMAGE!r}/{LABEL!r} or an (images, labels) tuple, got {type(batch).__name__}"
    )


def batch_masks(batch: Any) -> torch.Tensor | None:
    """Ground-truth object masks ``[B, H, W]`` (bool) when the data module provides them, else None."""
    if isinstance(batch, dict):
        return batch.get(MASK)
    return None


def batch_indices(batch: Any) -> torch.Tensor | None:
    """Dataset indices ``[B]`` of the samples in the batch when the data module provides them, else None."""
    if isinstance(batch, dict):
        return batch.get(INDEX)
    return None
