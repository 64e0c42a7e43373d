"""Reading image files of any mode and pre-processing them the way a model expects.

One reader for the plant data module, the explain command and the HTTP service: any size and mode (RGB,
grayscale, palette, RGBA, CMYK, 16-bit), EXIF orientation applied, mixed-case extensions, and an error that
names the file when it cannot be decoded.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms import v2

from lit_explain.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class ImageDecodeError(DataError):
    """An image file or byte string could not be decoded; the message names the source."""


def is_image_file(path: str | Path) -> bool:
    """True for a file whose extension (any case) is a supported image type."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _to_mode(image: Image.Image, mode: str) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit integer images: scale to 8 bits by the type's range, not by clipping at 255.
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray((array / peak * 255.0).clip(0, 255).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Composite transparency onto white, as viewers show it, instead of dropping alpha to black.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert(mode)


def load_image(source: str | Path | bytes, mode: str = "RGB") -> Image.Image:
    """Decode an image file or bytes into a PIL image of ``mode`` ("RGB" or "L"), EXIF rotation applied.

    Example:
        >>> image = load_image("leaf.JPG")            # CMYK, RGBA, 16-bit PNG all come back as RGB
        >>> gray = load_image(png_bytes, mode="L")
    """
    name = "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)
    try:
        handle = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else open(source, "rb")  # noqa: SIM115
    except OSError as exc:
        raise ImageDecodeError(f"cannot open image {name}: {exc.strerror or exc}") from exc
    try:
        with handle, Image.open(handle) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
            return _to_mode(image, mode)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageDecodeError(f"cannot decode image {name}: {exc}") from exc


def eval_transform(input_size: Sequence[int], mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """PIL image -> normalised float tensor [C, H, W] at exactly ``input_size`` (height, width).

    The whole image is resized (no crop), so an explanation covers everything the user sent.
    """
    return v2.Compose(
        [
            v2.PILToTensor(),
            v2.Resize(tuple(int(s) for s in input_size), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
    )
