from __future__ import annotations

import numpy as np
import pytest
import torch

from lit_explain.render import denormalize, guided_to_image, to_rgb, to_uint8

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def test_denormalize_inverts_normalisation(device: torch.device) -> None:
    x01 = torch.rand(4, 3, 8, 8, device=device)
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    out = denormalize((x01 - mean) / std, MEAN, STD)
    assert out.shape == x01.shape and out.dtype == torch.float32 and out.device == x01.device
    torch.testing.assert_close(out, x01)


def test_denormalize_clamps_and_accepts_single_image_and_scalar_stats() -> None:
    out = denormalize(torch.full((1, 5, 5), 10.0), mean=0.5, std=[0.5])
    assert out.shape == (1, 5, 5)
    assert out.max() == 1.0
    assert denormalize(torch.full((2, 1, 3, 3), -10.0), (0.5,), (0.5,)).min() == 0.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_denormalize_other_dtypes_and_grad(dtype: torch.dtype) -> None:
    x = torch.randn(2, 3, 4, 4, dtype=dtype, requires_grad=True)
    out = denormalize(x, MEAN, STD)
    assert out.dtype == torch.float32 and not out.requires_grad
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_denormalize_rejects_wrong_stat_length() -> None:
    with pytest.raises(ValueError, match="2 values but the images have 3 channels"):
        denormalize(torch.zeros(1, 3, 2, 2), (0.1, 0.2), (1.0, 1.0, 1.0))


def test_to_rgb() -> None:
    grey = torch.rand(2, 1, 4, 4)
    rgb = to_rgb(grey)
    assert rgb.shape == (2, 3, 4, 4)
    assert torch.equal(rgb[:, 0], rgb[:, 2]) and torch.equal(rgb[:, 1], grey[:, 0])
    assert to_rgb(torch.zeros(1, 4, 4, dtype=torch.uint8)).shape == (3, 4, 4)
    three = torch.rand(3, 4, 4)
    assert to_rgb(three).data_ptr() == three.data_ptr()  # no copy
    with pytest.raises(ValueError, match="1 or 3 channels"):
        to_rgb(torch.zeros(2, 2, 4, 4))


def test_to_uint8_rounds_and_clamps() -> None:
    out = to_uint8(torch.tensor([-1.0, 0.0, 0.5, 1.0, 2.0], dtype=torch.float64, requires_grad=True))
    assert out.tolist() == [0, 0, 128, 255, 255] and out.dtype == torch.uint8


def test_guided_to_image_matches_reference_recipe(device: torch.device) -> None:
    g = torch.randn(3, 3, 16, 16, device=device) * 1e-3
    out = guided_to_image(g)
    assert out.shape == (3, 3, 16, 16) and out.device == g.device and out.dtype == torch.float32
    for i in range(3):
        # pytorch-grad-cam's deprocess_image, before its uint8 conversion.
        a = g[i].cpu().double().numpy()
        a = (a - a.mean()) / (a.std() + 1e-5) * 0.1 + 0.5
        np.testing.assert_allclose(out[i].cpu().numpy(), np.clip(a, 0, 1), atol=1e-5)


def test_guided_to_image_grey_input_constant_input_and_half() -> None:
    out = guided_to_image(torch.randn(1, 16, 16, dtype=torch.float16, requires_grad=True))
    assert out.shape == (3, 16, 16) and not out.requires_grad
    assert out.min() >= 0.0 and out.max() <= 1.0
    torch.testing.assert_close(guided_to_image(torch.ones(2, 3, 4, 4)), torch.full((2, 3, 4, 4), 0.5))
