from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch

from lit_explain.render import colorize, colormap_lut, overlay


@pytest.mark.parametrize("cmap", ["jet", "inferno", "viridis", "turbo"])
def test_colorize_matches_matplotlib_on_lut_grid(cmap: str) -> None:
    grid = torch.linspace(0, 1, 256).view(1, 1, 16, 16)
    out = colorize(grid, cmap)
    expected = matplotlib.colormaps[cmap](grid.flatten().numpy())[:, :3]
    got = out[0].permute(1, 2, 0).reshape(-1, 3).numpy()
    assert np.abs(got - expected).max() <= 1 / 255


def test_colorize_equals_matplotlib_everywhere_and_sanitises() -> None:
    values = torch.rand(1, 1, 64, 64, dtype=torch.float64).float()
    expected = matplotlib.colormaps["viridis"](values.flatten().double().numpy())[:, :3]
    got = colorize(values, "viridis")[0].permute(1, 2, 0).reshape(-1, 3).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)
    lut = colormap_lut("viridis")
    out = colorize(torch.tensor([[[-1.0, 2.0, float("nan")]]]), "viridis")
    torch.testing.assert_close(out[:, 0, 0], lut[0])
    torch.testing.assert_close(out[:, 0, 1], lut[255])
    torch.testing.assert_close(out[:, 0, 2], lut[0])


def test_colorize_shapes_dtypes_devices(device: torch.device) -> None:
    maps = torch.rand(5, 1, 12, 10, device=device, dtype=torch.float16, requires_grad=True)
    out = colorize(maps)
    assert out.shape == (5, 3, 12, 10) and out.dtype == torch.float32 and out.device == maps.device
    assert not out.requires_grad and out.is_contiguous()
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert colorize(torch.rand(12, 10, dtype=torch.float64)).shape == (3, 12, 10)
    assert colormap_lut("jet", device).device.type == device.type


def test_colorize_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown colormap"):
        colorize(torch.rand(1, 1, 2, 2), "not-a-cmap")
    with pytest.raises(ValueError, match="unsqueeze"):
        colorize(torch.rand(4, 8, 8))
    with pytest.raises(ValueError, match="one channel"):
        colorize(torch.rand(2, 3, 8, 8))


def test_overlay_alpha_extremes(device: torch.device) -> None:
    images = torch.rand(2, 3, 16, 16, device=device)
    maps = torch.rand(2, 1, 16, 16, device=device)
    torch.testing.assert_close(overlay(images, maps, alpha=0.0), images)
    torch.testing.assert_close(overlay(images, maps, alpha=1.0), colorize(maps, "jet"))
    half = overlay(images, maps, alpha=0.5, cmap="inferno")
    torch.testing.assert_close(half, (images + colorize(maps, "inferno")) / 2)


def test_overlay_resizes_maps_and_handles_grey_uint8_and_grad() -> None:
    images = (torch.rand(3, 1, 32, 32) * 255).to(torch.uint8)
    maps = torch.rand(3, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    out = overlay(images, maps, alpha=0.3)
    assert out.shape == (3, 3, 32, 32) and out.dtype == torch.float32 and not out.requires_grad
    # A constant map stays constant after resizing, so the heat part is exactly its colour.
    flat = overlay(torch.zeros(3, 8, 8), torch.full((1, 2, 2), 0.25), alpha=1.0)
    assert flat.shape == (3, 8, 8)
    torch.testing.assert_close(flat, colorize(torch.full((1, 8, 8), 0.25)))


def test_overlay_validates() -> None:
    with pytest.raises(ValueError, match="alpha"):
        overlay(torch.rand(1, 3, 4, 4), torch.rand(1, 1, 4, 4), alpha=1.5)
    with pytest.raises(ValueError, match="batch sizes differ"):
        overlay(torch.rand(2, 3, 4, 4), torch.rand(3, 1, 4, 4))
