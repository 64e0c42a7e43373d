"""Pre-processing: any size and mode to the model's input, the pixel limit checked before decoding."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from lit_explain.data.images import ImageDecodeError
from lit_explain.inference import ImageTooLargeError, Preprocessor


@pytest.mark.parametrize("channels", [1, 3])
def test_every_mode_becomes_the_model_input(odd_images, channels):
    prep = Preprocessor((48, 40), mean=[0.5] * channels, std=[0.25] * channels, in_channels=channels)
    for name, path in odd_images.items():
        prepared = prep(path)
        assert prepared.tensor.shape == (channels, 48, 40), name
        assert prepared.tensor.dtype == torch.float32
        assert torch.isfinite(prepared.tensor).all()
        # normalised with the model's mean/std: [0, 1] maps to [-2, 2]
        assert prepared.tensor.min() >= -2.0 - 1e-5 and prepared.tensor.max() <= 2.0 + 1e-5


def test_sixteen_bit_is_scaled_by_its_range_not_clipped(tmp_path):
    import numpy as np

    path = tmp_path / "mid.png"
    Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)).save(path)
    prepared = Preprocessor((8, 8), mean=[0.0], std=[1.0], in_channels=1)(path)
    assert prepared.original_mode.startswith("I")
    assert abs(float(prepared.tensor.mean()) - 0.5) < 0.01  # mid-grey, not saturated white


def test_same_image_from_bytes_path_and_pil(odd_images):
    prep = Preprocessor((32, 32), mean=[0.5] * 3, std=[0.25] * 3)
    path = odd_images["rgba.png"]
    a, b = prep(path).tensor, prep(path.read_bytes()).tensor
    with Image.open(path) as image:
        c = prep(image.copy()).tensor
    assert torch.equal(a, b) and torch.equal(a, c)


def test_pixel_limit_is_checked_from_the_header(tmp_path):
    # A blank 4000 x 3000 PNG is a few KB; it must be refused from its header, before decoding.
    path = tmp_path / "big.png"
    Image.new("L", (4000, 3000)).save(path, compress_level=9)
    assert path.stat().st_size < 100_000
    prep = Preprocessor((32, 32), mean=[0.5] * 3, std=[0.25] * 3, max_pixels=1_000_000)
    with pytest.raises(ImageTooLargeError, match="4000x3000 = 12,000,000 pixels"):
        prep(path)
    with pytest.raises(ImageTooLargeError):
        prep(path.read_bytes())


def test_not_an_image_names_the_source():
    prep = Preprocessor((32, 32), mean=[0.5] * 3, std=[0.25] * 3)
    with pytest.raises(
        ImageDecodeError, match=r"^cannot decode the image bytes: not a recognised image format"
    ):
        prep(b"definitely not an image")
    with pytest.raises(
        ImageDecodeError, match=r"^cannot decode the uploaded image: not a recognised"
    ) as caught:
        prep(b"definitely not an image", name="the uploaded image")
    assert "BytesIO" not in str(caught.value) and " at 0x" not in str(caught.value)
    buffer = io.BytesIO()
    Image.new("RGB", (10, 10)).save(buffer, format="PNG")
    with pytest.raises(ImageDecodeError):
        prep(buffer.getvalue()[:40])  # truncated


def test_mismatched_normalisation_is_reported():
    with pytest.raises(ValueError, match="3 means"):
        Preprocessor((32, 32), mean=[0.5] * 3, std=[0.25] * 3, in_channels=1)


def test_arrays_and_tensors_are_pictures(odd_images):
    import numpy as np

    prep = Preprocessor((24, 24), mean=[0.5] * 3, std=[0.25] * 3)
    with Image.open(odd_images["rgb.jpg"]) as image:
        pixels = np.array(image.convert("RGB"))
    from_array = prep(pixels)
    from_tensor = prep(torch.from_numpy(pixels).permute(2, 0, 1))
    from_float = prep(torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)
    assert from_array.source == "<ndarray (120, 90, 3)>" and from_array.original_size == (90, 120)
    assert torch.equal(from_array.tensor, from_tensor.tensor)
    torch.testing.assert_close(from_array.tensor, from_float.tensor)
    assert prep(np.zeros((10, 12), dtype=np.uint8)).tensor.shape == (3, 24, 24)
    with pytest.raises(ImageDecodeError, match="cannot use"):
        prep(np.zeros((2, 3, 4, 5, 6), dtype=np.uint8))


def test_cmyk_jpeg(tmp_path):
    path = tmp_path / "print.jpg"
    Image.new("CMYK", (30, 20), (0, 255, 255, 0)).save(path)  # pure red in print colours
    prepared = Preprocessor((8, 8), mean=[0.0] * 3, std=[1.0] * 3)(path)
    assert prepared.original_mode == "CMYK"
    red, green = float(prepared.tensor[0].mean()), float(prepared.tensor[1].mean())
    assert red > 0.8 and green < 0.2
    with Image.open(path) as image:  # the same picture handed over as a PIL image
        torch.testing.assert_close(
            Preprocessor((8, 8), mean=[0.0] * 3, std=[1.0] * 3)(image.copy()).tensor, prepared.tensor
        )


def test_probe_reports_sizes_without_decoding(tmp_path):
    import numpy as np

    prep = Preprocessor((32, 32), mean=[0.5] * 3, std=[0.25] * 3)
    Image.new("RGB", (900, 300), (10, 20, 30)).save(tmp_path / "wide.jpg")
    info = prep.probe(tmp_path / "wide.jpg")
    # 2 x 32 = 64 px kept on each side: libjpeg's 1/4 scale (225 x 75) is the smallest that does
    assert (info.size, info.decoded_size, info.mode, info.format) == ((900, 300), (225, 75), "RGB", "JPEG")
    assert prep.probe((tmp_path / "wide.jpg").read_bytes()).decoded_pixels == 225 * 75
    assert prep.probe(np.zeros((30, 40, 3), np.uint8)).size == (40, 30)
    assert prep.probe(torch.zeros(3, 30, 40)).size == (40, 30)
