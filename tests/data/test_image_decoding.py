"""Bounded image decoding: huge JPEGs decode at reduced scale, huge PNGs are refused by name from the header."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lit_explain.data.images import (
    DEFAULT_MAX_PIXELS,
    ImageDecodeError,
    ImageTooLargeError,
    decode_image,
    eval_transform,
    load_image,
    probe_image,
)
from lit_explain.inference import Preprocessor

# 12000 x 12000 = 144 MP: above PIL's warning threshold (89 MP), below its error (179 MP).
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")


def test_a_huge_jpeg_is_decoded_at_a_reduced_scale(flat_jpeg) -> None:
    path = flat_jpeg(12000, 12000)
    info = probe_image(path, size=(224, 224))
    # libjpeg's 1/8 scale is the smallest that keeps 2 x 224 = 448 px a side; nothing was decoded yet.
    assert info.size == (12000, 12000) and info.decoded_size == (1500, 1500)
    decoded = decode_image(path, size=(224, 224))
    assert decoded.original_size == (12000, 12000) and decoded.original_mode == "L"
    assert decoded.image.size == (500, 500) and decoded.image.mode == "RGB"  # then reduce(3): >= 448 a side
    assert decoded.image.getextrema() == ((128, 128),) * 3
    # Counted at the decoded scale: the default 50 MP limit accepts it, the full size would not.
    assert DEFAULT_MAX_PIXELS < 12000 * 12000
    prepared = Preprocessor((224, 224), mean=[0.0] * 3, std=[1.0] * 3)(path)
    assert prepared.original_size == (12000, 12000)
    torch.testing.assert_close(prepared.tensor, torch.full((3, 224, 224), 128 / 255))


@pytest.mark.slow  # a fresh interpreter importing torch: seconds on 2 busy cores
def test_a_huge_jpeg_needs_megabytes_not_gigabytes(flat_jpeg) -> None:
    # Peak memory measured in a fresh process: full decoding allocates 144 MB (grey) plus copies
    # (measured +139 MiB with the draft disabled and no pixel limit); the reduced decode measured +4 MiB.
    path = flat_jpeg(12000, 12000)
    script = textwrap.dedent(
        f"""
        import json, resource, warnings
        warnings.simplefilter("ignore")
        from lit_explain.data.images import load_image
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        image = load_image({str(path)!r}, size=224)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({{"size": image.size, "increase_mib": (after - before) / 1024}}))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["size"] == [500, 500]
    assert result["increase_mib"] < 64, result


def test_a_png_bomb_is_a_named_error_before_decoding(huge_png) -> None:
    path = huge_png(20000, 20000, name="bomb.png")
    assert path.stat().st_size < 300_000  # 400 megapixels in a small file
    with pytest.raises(
        ImageTooLargeError, match=r"image .*bomb\.png is too large to decode: .*400000000 pixels"
    ):
        load_image(path)
    with pytest.raises(ImageTooLargeError, match=r"bomb\.png"):
        probe_image(path)
    with pytest.raises(ImageTooLargeError, match=r"the uploaded image is too large"):
        Preprocessor((32, 32), mean=[0.5] * 3, std=[0.25] * 3)(path.read_bytes(), name="the uploaded image")


def test_an_oversize_png_names_the_limit_and_the_setting(huge_png) -> None:
    path = huge_png(8000, 8000, name="scan.png")  # 64 MP: under PIL's guard, over the 50 MP default
    with pytest.raises(
        ImageTooLargeError,
        match=r"image .*scan\.png has 8000x8000 = 64,000,000 pixels, more than the limit of 50,000,000; "
        r"shrink the image or raise data\.max_image_pixels",
    ):
        load_image(path, size=224, limit_hint="data.max_image_pixels")
    # Raising the limit decodes it (1-bit black, reduced right after decoding).
    image = load_image(path, size=224, max_pixels=70_000_000)
    assert image.size == (-(-8000 // 17),) * 2 and image.getextrema() == ((0, 0),) * 3
    assert issubclass(ImageTooLargeError, ImageDecodeError)  # skip_bad_images and the service catch both


def test_reduction_keeps_what_the_final_resize_would_have_made(tmp_path: Path) -> None:
    # A smooth photo-like PNG and a palette GIF: reduced early, the model input barely changes
    # (measured mean absolute difference 0.0014 and 0.0016 against decoding at full size).
    yy, xx = np.mgrid[0:1200, 0:1600].astype(np.float32)
    pixels = np.stack([xx / 1600 * 255, yy / 1200 * 255, (xx + yy) / 2800 * 255], -1).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "smooth.png")
    Image.fromarray(pixels).quantize(64).save(tmp_path / "smooth.gif")
    transform = eval_transform((64, 64), [0.0] * 3, [1.0] * 3)
    for name in ("smooth.png", "smooth.gif"):
        full = transform(load_image(tmp_path / name))
        decoded = decode_image(tmp_path / name, size=(64, 64))
        assert decoded.image.size == (178, 134) and decoded.original_size == (1600, 1200), name
        error = float((transform(decoded.image) - full).abs().mean())
        assert error < 0.01, name


def test_messages_never_show_object_reprs() -> None:
    for data in (b"definitely not an image", b"\x89PNG\r\n\x1a\n" + b"\x00" * 30):
        with pytest.raises(ImageDecodeError) as caught:
            load_image(data)
        message = str(caught.value)
        assert message.startswith("cannot decode the image bytes: "), message
        assert "BytesIO" not in message and " at 0x" not in message, message


@pytest.mark.parametrize(
    "error", [EOFError("no more data"), KeyError(7), ZeroDivisionError("division by zero")]
)
def test_any_parser_failure_names_the_file(tmp_path: Path, monkeypatch, error: Exception) -> None:
    # Fuzzed files make PIL's parsers raise more than OSError; each must still be a named decode error.
    path = tmp_path / "fuzzed.png"
    Image.new("RGB", (8, 8)).save(path)

    def broken_load(self):
        raise error

    monkeypatch.setattr(Image.Image, "load", broken_load)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", broken_load)
    with pytest.raises(
        ImageDecodeError, match=rf"^cannot decode image .*fuzzed\.png: {type(error).__name__}: "
    ):
        load_image(path)
