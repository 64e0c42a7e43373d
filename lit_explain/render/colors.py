"""Colormaps as tensor lookups, and heatmap overlays.

matplotlib is only consulted once per colormap name to sample its 256-entry table; the lookup
itself is a single gather on the maps' device, so colouring a validation batch costs no host
round trip.
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_explain.render._common import batch_images, batch_maps, unbatch
from lit_explain.render.images import to_rgb

__all__ = ["LUT_SIZE", "colorize", "colormap_lut", "overlay"]

LUT_SIZE = 256
"""Number of entries sampled from a matplotlib colormap (matplotlib's own default resolution)."""

_lock = threading.Lock()
_host_luts: dict[str, Tensor] = {}
_device_luts: dict[tuple[str, torch.device], Tensor] = {}


def colormap_lut(cmap: str = "jet", device: torch.device | str | None = None) -> Tensor:
    """The ``[256, 3]`` float32 RGB table of a matplotlib colormap, cached per name and device.

    Entry ``i`` is matplotlib's colour for the value ``i / 255``. Any colormap name registered in
    matplotlib works (``"jet"``, ``"inferno"``, ``"viridis"``, ``"turbo"``, ``"gray"``, ...).

    Example:
        >>> colormap_lut("viridis").shape
        torch.Size([256, 3])
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    return _channel_lut(cmap, dev).t().contiguous()  # a copy: callers cannot alter the cache


def _host_lut(cmap: str) -> Tensor:
    """``[3, 256]`` on the CPU: channels first so a lookup yields ``[3, N]`` without a transpose."""
    if not isinstance(cmap, str):
        raise TypeError(f"cmap must be a matplotlib colormap name, got {type(cmap).__name__}")
    lut = _host_luts.get(cmap)
    if lut is None:
        # Imported lazily so that the tensor-only parts of render never pay for matplotlib.
        import matplotlib
        import numpy as np

        try:
            cm = matplotlib.colormaps[cmap]
        except KeyError as err:
            raise ValueError(
                f"unknown colormap {cmap!r}; use a matplotlib colormap name such as "
                "'jet', 'inferno', 'viridis' or 'turbo'"
            ) from err
        rgba = cm(np.linspace(0.0, 1.0, LUT_SIZE))
        lut = torch.from_numpy(np.ascontiguousarray(rgba[:, :3].T)).to(torch.float32)
        with _lock:
            _host_luts[cmap] = lut
    return lut


def _channel_lut(cmap: str, device: torch.device) -> Tensor:
    key = (cmap, device)
    lut = _device_luts.get(key)
    if lut is None:
        lut = _host_lut(cmap).to(device)
        with _lock:
            _device_luts[key] = lut
    return lut


def colorize(maps: Tensor, cmap: str = "jet") -> Tensor:
    """Colour ``[0, 1]`` maps with a matplotlib colormap, as a batched tensor lookup.

    Uses matplotlib's own binning (entry ``floor(v * 256)``, the last bin closed), so for the
    usual 256-colour maps (jet, inferno, viridis, turbo, ...) the result equals
    ``matplotlib.colormaps[cmap](v)[..., :3]`` for every value in ``[0, 1]``. Values
    outside ``[0, 1]`` are clamped (matplotlib's default under/over colours) and NaN is treated
    as 0.

    Args:
        maps: ``[B, 1, H, W]`` (or one map ``[1, H, W]`` / ``[H, W]``), any float dtype/device.
        cmap: matplotlib colormap name.

    Returns:
        float32 ``[B, 3, H, W]`` (or ``[3, H, W]``) in ``[0, 1]`` on the maps' device.

    Example:
        >>> colorize(torch.rand(4, 1, 32, 32), cmap="inferno").shape
        torch.Size([4, 3, 32, 32])
    """
    m, single = batch_maps(maps)
    lut = _channel_lut(cmap, m.device)
    b, _, h, w = m.shape
    idx = (torch.nan_to_num(m, nan=0.0).clamp_(0.0, 1.0) * LUT_SIZE).long().clamp_(max=LUT_SIZE - 1)
    # One gather over all pixels with the channel dim first: [3, B*H*W] -> [B, 3, H, W].
    rgb = lut.index_select(1, idx.flatten()).view(3, b, h, w).transpose(0, 1).contiguous()
    return unbatch(rgb, single)


def overlay(images01: Tensor, maps: Tensor, alpha: float = 0.5, cmap: str = "jet") -> Tensor:
    """Blend colourised maps onto images: ``(1 - alpha) * image + alpha * colorize(map)``.

    Maps whose size differs from the images are resized bilinearly (``align_corners=False``, like
    the explain engine's upsampling). Grey images are repeated to RGB. A batch of one on either
    side is broadcast against the other.

    Args:
        images01: images in ``[0, 1]`` (see :func:`denormalize`) or uint8, ``[B, C, H, W]`` with
            ``C`` of 1 or 3, or one ``[C, H, W]`` image.
        maps: ``[B, 1, h, w]`` maps in ``[0, 1]`` (or one ``[1, h, w]`` / ``[h, w]``).
        alpha: heatmap weight; 0 gives the image, 1 the heatmap.
        cmap: matplotlib colormap name.

    Returns:
        float32 ``[B, 3, H, W]`` in ``[0, 1]`` on the images' device (``[3, H, W]`` when both
        inputs were single).

    Example:
        >>> images = torch.rand(2, 3, 64, 64)
        >>> overlay(images, torch.rand(2, 1, 8, 8), alpha=0.4).shape
        torch.Size([2, 3, 64, 64])
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    x, single_image = batch_images(images01, "images01")
    m, single_map = batch_maps(maps)
    if x.shape[0] != m.shape[0] and 1 not in (x.shape[0], m.shape[0]):
        raise ValueError(f"batch sizes differ: images {x.shape[0]} vs maps {m.shape[0]}")
    m = m.to(x.device)
    if m.shape[-2:] != x.shape[-2:]:
        m = F.interpolate(m, size=x.shape[-2:], mode="bilinear", align_corners=False)
    heat = colorize(m, cmap)
    out = torch.lerp(to_rgb(x).clamp(0.0, 1.0), heat, alpha)
    return unbatch(out, single_image and single_map)
