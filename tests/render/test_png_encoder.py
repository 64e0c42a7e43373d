"""encode_png's own encoder (zlib, "Sub"-filtered scanlines): valid PNGs with exactly the input's pixels."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import decode_png

from lit_explain.render import encode_png
from lit_explain.render import png as png_module


@pytest.fixture(params=["zlib", "isal"])
def deflater(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both deflate back ends: zlib (always there) and ISA-L (the optional ``fast-png`` extra)."""
    if request.param == "zlib":
        monkeypatch.setattr(png_module, "_ISAL", None)
    elif png_module._ISAL is None:
        pytest.skip("isal is not installed (pip install 'lit_explain[fast-png]')")
    return request.param


def _pixels(shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, size=shape, dtype=np.uint8)
    # Half noise, half flat runs and ramps: both wrap-around directions of the Sub filter get exercised.
    noise[: shape[0] // 2] = np.arange(shape[1], dtype=np.uint8)[None, :, None][..., : noise.shape[2]] * 37
    return noise if len(shape) == 3 else noise[..., 0]


@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("size", [(1, 1), (1, 7), (9, 1), (33, 65)])
@pytest.mark.parametrize("level", [0, 1, 9])
def test_png_decodes_to_the_same_pixels(
    channels: int, size: tuple[int, int], level: int, deflater: str
) -> None:
    pixels = _pixels((*size, max(channels, 1)), seed=channels * 100 + size[0])
    pixels = pixels[..., 0] if channels == 1 else pixels[..., :channels]
    data = encode_png(pixels, compress_level=level)
    with Image.open(io.BytesIO(data)) as image:
        image.verify()  # chunk CRCs and structure
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == {1: "L", 3: "RGB", 4: "RGBA"}[channels]
        assert np.array_equal(np.asarray(image), pixels)
    # A second, independent decoder (libpng through torchvision).
    decoded = decode_png(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    expected = torch.from_numpy(pixels).reshape(*size, channels).permute(2, 0, 1)
    assert torch.equal(decoded, expected)


def test_png_of_a_uint8_tensor_round_trips() -> None:
    image = torch.from_numpy(_pixels((40, 50, 3), seed=7)).permute(2, 0, 1).contiguous()
    decoded = decode_png(torch.frombuffer(bytearray(encode_png(image, compress_level=1)), dtype=torch.uint8))
    assert torch.equal(decoded, image)


def test_png_refuses_bad_levels() -> None:
    with pytest.raises(ValueError, match="compress_level"):
        encode_png(torch.zeros(3, 2, 2), compress_level=10)


def test_isal_is_used_where_installed_and_level_zero_stays_stored() -> None:
    if png_module._ISAL is None:
        pytest.skip("isal is not installed (pip install 'lit_explain[fast-png]')")
    data = np.random.default_rng(0).integers(0, 256, size=300_000, dtype=np.uint8).tobytes()
    from isal import isal_zlib

    assert png_module.deflate(data, 1) == isal_zlib.compress(data, 1)
    assert png_module.deflate(data, 6) == isal_zlib.compress(data, 2)
    # Level 0 asks for no compression: zlib's stored blocks, bigger than the input.
    assert len(png_module.deflate(data, 0)) > len(data)
