"""Private tensor plumbing shared by the render modules.

Every public render function accepts whatever the rest of the package hands it: tensors on any
device, of any floating dtype, possibly still attached to an autograd graph, batched or single.
These helpers turn that into one canonical form (detached float32, 4-D) and back, so the public
functions only deal with the picture logic.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


def as_tensor(x: Tensor | np.ndarray | Sequence[float], name: str = "input") -> Tensor:
    """Return ``x`` as a detached tensor (numpy arrays and sequences are wrapped, not copied)."""
    if isinstance(x, Tensor):
        # Rendering never needs gradients; detaching also lets callers pass tensors straight out
        # of the explain engine (which may still require grad) without a RuntimeError on .numpy().
        return x.detach()
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    try:
        return torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{name}: expected a tensor or array, got {type(x).__name__}") from err


def to_float32(x: Tensor) -> Tensor:
    """Floating copy in float32; integer images are read as 0..255 (uint8) and scaled to [0, 1]."""
    if x.dtype == torch.uint8:
        return x.to(torch.float32) / 255.0
    if x.dtype == torch.bool:
        return x.to(torch.float32)
    if not x.is_floating_point():
        raise TypeError(f"expected a floating point or uint8 tensor, got {x.dtype}")
    # float16/bfloat16 lack several CPU kernels (grid sampling, some reductions) and float64 is
    # wasted precision for 8-bit pictures, so everything downstream runs in float32.
    return x.to(torch.float32)


def batch_images(x: Tensor | np.ndarray, name: str = "images") -> tuple[Tensor, bool]:
    """Detached float32 ``[B, C, H, W]`` plus whether the input was a single ``[C, H, W]`` image."""
    t = to_float32(as_tensor(x, name))
    if t.ndim == 3:
        return t.unsqueeze(0), True
    if t.ndim == 4:
        return t, False
    raise ValueError(f"{name}: expected [B, C, H, W] or [C, H, W], got shape {tuple(t.shape)}")


def batch_maps(x: Tensor | np.ndarray, name: str = "maps") -> tuple[Tensor, bool]:
    """Detached float32 ``[B, 1, H, W]`` plus whether the input was a single map.

    A single map may come as ``[H, W]`` or ``[1, H, W]``. A channel-less batch ``[B, H, W]`` with
    ``B > 1`` is refused rather than guessed, because ``[3, H, W]`` could equally be an RGB image.
    """
    t = to_float32(as_tensor(x, name))
    single = t.ndim in (2, 3)
    if t.ndim == 2:
        t = t[None, None]
    elif t.ndim == 3:
        if t.shape[0] != 1:
            raise ValueError(
                f"{name}: a 3-D map must be [1, H, W], got {tuple(t.shape)}; "
                "for a batch of channel-less maps pass maps.unsqueeze(1)"
            )
        t = t.unsqueeze(0)
    elif t.ndim != 4:
        raise ValueError(f"{name}: expected [B, 1, H, W], [1, H, W] or [H, W], got {tuple(t.shape)}")
    if t.shape[1] != 1:
        raise ValueError(f"{name}: maps must have one channel, got shape {tuple(t.shape)}")
    return t, single


def unbatch(x: Tensor, single: bool) -> Tensor:
    """Undo :func:`batch_images`/:func:`batch_maps`: drop the batch dim again for single inputs."""
    return x[0] if single else x
