"""Turn model-space image tensors into displayable ``[0, 1]`` RGB tensors.

All functions are batched, stay on the input's device, detach from autograd and return float32
(except :func:`to_rgb`, a pure shape operation, and :func:`to_uint8`). A single ``[C, H, W]`` image
is accepted wherever a batch is, and comes back without the batch dimension.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from lit_explain.render._common import as_tensor, batch_images, unbatch

__all__ = ["denormalize", "guided_to_image", "to_rgb", "to_uint8"]


def _per_channel(values: Sequence[float] | Tensor | float, channels: int, like: Tensor, name: str) -> Tensor:
    v = torch.as_tensor(values, dtype=torch.float32, device=like.device).flatten()
    if v.numel() not in (1, channels):
        raise ValueError(f"{name} has {v.numel()} values but the images have {channels} channels")
    return v.view(1, -1, 1, 1)


def denormalize(
    images: Tensor,
    mean: Sequence[float] | Tensor | float,
    std: Sequence[float] | Tensor | float,
) -> Tensor:
    """Undo per-channel normalisation: ``images * std + mean``, clamped to ``[0, 1]``.

    Args:
        images: normalised images ``[B, C, H, W]`` (or one ``[C, H, W]``), any float dtype/device.
        mean: per-channel means used by the data module (one value, or one per channel).
        std: per-channel standard deviations (one value, or one per channel).

    Returns:
        float32 tensor of the input's shape, in ``[0, 1]``, on the input's device.

    Example:
        >>> x = torch.zeros(2, 3, 8, 8)
        >>> denormalize(x, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2))[0, :, 0, 0]
        tensor([0.5000, 0.4000, 0.3000])
    """
    x, single = batch_images(images)
    m = _per_channel(mean, x.shape[1], x, "mean")
    s = _per_channel(std, x.shape[1], x, "std")
    return unbatch((x * s + m).clamp_(0.0, 1.0), single)


def to_rgb(images: Tensor) -> Tensor:
    """Repeat a single channel to three; three-channel input is returned unchanged.

    Works on ``[B, C, H, W]`` and ``[C, H, W]`` of any dtype (it is a pure shape operation).

    Example:
        >>> to_rgb(torch.rand(4, 1, 16, 16)).shape
        torch.Size([4, 3, 16, 16])
    """
    x = as_tensor(images, "images")
    if x.ndim not in (3, 4):
        raise ValueError(f"images: expected [B, C, H, W] or [C, H, W], got {tuple(x.shape)}")
    c = x.shape[-3]
    if c == 3:
        return x
    if c == 1:
        reps = (3, 1, 1) if x.ndim == 3 else (1, 3, 1, 1)
        return x.repeat(*reps)
    raise ValueError(f"images: expected 1 or 3 channels, got {c} (shape {tuple(x.shape)})")


def to_uint8(images: Tensor | np.ndarray) -> Tensor:
    """Convert ``[0, 1]`` float images (any shape) to uint8 ``0..255``, rounding to nearest.

    uint8 input is returned as is (detached). Values outside ``[0, 1]`` are clamped.

    Example:
        >>> to_uint8(torch.tensor([0.0, 0.5, 1.0]))
        tensor([  0, 128, 255], dtype=torch.uint8)
    """
    x = as_tensor(images, "images")
    if x.dtype == torch.uint8:
        return x
    if not x.is_floating_point():
        raise TypeError(f"images: expected a float tensor in [0, 1] or uint8, got {x.dtype}")
    # Round rather than truncate so 0.5 -> 128 and float round trips through uint8 are unbiased.
    return (x.to(torch.float32).clamp(0.0, 1.0) * 255.0).round_().to(torch.uint8)


def guided_to_image(g: Tensor, eps: float = 1e-5) -> Tensor:
    """Visualise signed guided-backprop / guided Grad-CAM gradients as ``[0, 1]`` RGB images.

    Per image (statistics over all of its channels and pixels), the usual recipe from the
    Grad-CAM papers' code (``deprocess_image`` in keras-grad-cam / pytorch-grad-cam)::

        out = clamp((g - mean(g)) / (std(g) + eps) * 0.1 + 0.5, 0, 1)

    with the population standard deviation. So grey (0.5) is "average gradient" and ±5 standard
    deviations span the full range; an all-constant gradient becomes uniform grey.

    Args:
        g: gradients ``[B, C, H, W]`` (or one ``[C, H, W]``) with ``C`` of 1 or 3, any float dtype.
        eps: added to the standard deviation to avoid dividing by zero.

    Returns:
        float32 ``[B, 3, H, W]`` (or ``[3, H, W]``) in ``[0, 1]`` on the input's device.

    Example:
        >>> guided_to_image(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 3, 32, 32])
    """
    x, single = batch_images(g, "g")
    flat = x.flatten(1)
    mean = flat.mean(dim=1).view(-1, 1, 1, 1)
    std = flat.std(dim=1, correction=0).view(-1, 1, 1, 1)
    out = ((x - mean) / (std + eps) * 0.1 + 0.5).clamp_(0.0, 1.0)
    return unbatch(to_rgb(out), single)
