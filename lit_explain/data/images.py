"""Reading image files of any mode, with bounded memory, and pre-processing them the way a model expects.

One reader for the plant data module, the explain command and the HTTP service: any size and mode (RGB,
grayscale, palette, RGBA, CMYK, 16-bit), EXIF orientation applied, mixed-case extensions, and an error that
names the file (or says "the image bytes") when it cannot be decoded.

Bounded decoding. A caller that knows the size it will resize to passes ``size``; the decoded image then
keeps at least :data:`REDUCE_MARGIN` times that size on each side and no more than needed:

- JPEG is decoded at 1/2, 1/4 or 1/8 scale by libjpeg itself (PIL's ``draft``), so a 12000 x 12000 photo
  never exists in memory at full size;
- other formats (PNG, TIFF, BMP, GIF, WebP) cannot be reduced while decoding: they are decoded whole and
  shrunk at once by an integer box filter (``Image.reduce``), so later steps work on the small copy.

Whatever remains to be decoded (after JPEG scaling) must stay within ``max_pixels``
(:data:`DEFAULT_MAX_PIXELS`, 50 megapixels: about 150 MB for RGB); a larger image is refused from its
header, before its pixels are allocated, with an :class:`ImageTooLargeError` that names the file, its size,
the limit and the setting that raises it. PIL's own decompression-bomb guard (``PIL.Image.MAX_IMAGE_PIXELS``
x 2, about 179 megapixels in the header) is refused the same way.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms import v2

from lit_explain.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
DEFAULT_MAX_PIXELS = 50_000_000  # a 50-megapixel photo is fine, a 30,000 x 30,000 bomb is not
REDUCE_MARGIN = 2  # decoded images keep at least twice the target size, so the final resize sets the quality
# Modes Image.reduce averages directly, right after decoding; any other mode (palette, 1-bit, 16-bit,
# alpha) is converted to the requested mode at full size first, which costs more memory.
REDUCED_BEFORE_CONVERSION = frozenset({"L", "RGB", "CMYK", "YCbCr", "F"})
# What PIL's parsers raise on malformed files besides OSError (fuzzed headers, odd chunk lengths).
PIL_PARSE_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
    OverflowError,
    RecursionError,
)

ImageInput = str | Path | bytes | bytearray | Image.Image


class ImageDecodeError(DataError):
    """An image file or byte string could not be decoded; the message names the source."""


class ImageTooLargeError(ImageDecodeError):
    """The image has more pixels than allowed; the message gives both numbers and how to raise the limit."""


@dataclass(frozen=True)
class ImageInfo:
    """What an image's header says, and how many pixels decoding it will allocate.

    ``size`` and ``decoded_size`` are ``(width, height)``; ``decoded_size`` is smaller than ``size`` for a
    JPEG that is decoded at a reduced scale (see the module docstring).
    """

    size: tuple[int, int]
    mode: str
    format: str | None
    decoded_size: tuple[int, int]

    @property
    def decoded_pixels(self) -> int:
        return self.decoded_size[0] * self.decoded_size[1]


@dataclass(frozen=True)
class DecodedImage:
    """:func:`decode_image`'s result: the image in the requested mode and what the header said."""

    image: Image.Image
    original_size: tuple[int, int]  # (width, height) in the file, before any reduction
    original_mode: str


def is_image_file(path: str | Path) -> bool:
    """True for a file whose extension (any case) is a supported image type."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def describe_source(source: object) -> str:
    """How error messages name an image: ``image PATH``, ``the image bytes``, ``the PIL image``."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "the image bytes"
    if isinstance(source, Image.Image):
        return "the PIL image"
    if isinstance(source, (str, Path)):
        return f"image {source}"
    return f"the {type(source).__name__}"


def _reason(exc: BaseException) -> str:
    # OSError and ValueError messages read on their own ("image file is truncated"); others need the type.
    return str(exc) if isinstance(exc, (OSError, ValueError)) else f"{type(exc).__name__}: {exc}"


def _target_side(size: int | Sequence[int] | None) -> int | None:
    # The larger target side for both axes: independent of EXIF rotation, never reduces below the target.
    if size is None:
        return None
    sides = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
    return max(1, max(sides)) * REDUCE_MARGIN


def _open(source: str | Path | bytes | bytearray, name: str) -> tuple[Image.Image, IO[bytes]]:
    """Open lazily (header only); every failure becomes a named :class:`ImageDecodeError`."""
    try:
        handle = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else open(source, "rb")  # noqa: SIM115
    except OSError as exc:
        raise ImageDecodeError(f"cannot open {name}: {exc.strerror or exc}") from exc
    try:
        return Image.open(handle), handle
    except Image.DecompressionBombError as exc:
        handle.close()
        raise ImageTooLargeError(
            f"{name} is too large to decode: {exc} PIL refuses it before decoding; shrink the image "
            "(PIL's guard, PIL.Image.MAX_IMAGE_PIXELS, applies whatever lit_explain's pixel limit is)"
        ) from None
    except UnidentifiedImageError:
        handle.close()
        raise ImageDecodeError(
            f"cannot decode {name}: not a recognised image format "
            f"(supported: {', '.join(e.lstrip('.') for e in IMAGE_EXTENSIONS)})"
        ) from None
    except PIL_PARSE_ERRORS as exc:
        handle.close()
        raise ImageDecodeError(f"cannot decode {name}: {_reason(exc)}") from exc


def _check_count(
    header: tuple[int, int], decoded: tuple[int, int], name: str, max_pixels: int | None, limit_hint: str
) -> None:
    if max_pixels is None or decoded[0] * decoded[1] <= max_pixels:
        return
    reduced = f" (decoded at {decoded[0]}x{decoded[1]})" if decoded != header else ""
    raise ImageTooLargeError(
        f"{name} has {header[0]}x{header[1]} = {header[0] * header[1]:,} pixels{reduced}, more than the "
        f"limit of {max_pixels:,}; shrink the image or raise {limit_hint}"
    )


def _plan(image: Image.Image, side: int | None, name: str, max_pixels: int | None, limit_hint: str) -> None:
    """Ask JPEG for a reduced decode (no-op for other formats) and refuse what stays above the limit."""
    header = image.size
    if side is not None:
        image.draft(image.mode, (side, side))
    _check_count(header, image.size, name, max_pixels, limit_hint)


def probe_image(
    source: ImageInput,
    size: int | Sequence[int] | None = None,
    *,
    name: str | None = None,
    max_pixels: int | None = None,
    limit_hint: str = "max_pixels",
) -> ImageInfo:
    """Read only the header: the stored size and mode, and the size :func:`decode_image` will decode.

    Use it to budget memory before decoding (the HTTP service counts ``decoded_pixels`` across requests),
    or, with ``max_pixels``, to refuse an image exactly as :func:`decode_image` would, without decoding.

    Example:
        >>> info = probe_image("scan.jpg", size=(224, 224))   # doctest: +SKIP
        >>> info.size, info.decoded_size                      # 12000x12000 JPEG, decoded at 1/8 scale
        ((12000, 12000), (1500, 1500))
    """
    name = name or describe_source(source)
    if isinstance(source, Image.Image):
        _check_count(source.size, source.size, name, max_pixels, limit_hint)
        return ImageInfo(source.size, source.mode, source.format, source.size)
    image, handle = _open(bytes(source) if isinstance(source, bytearray) else source, name)
    with handle, image:
        header = image.size
        _plan(image, _target_side(size), name, max_pixels, limit_hint)
        return ImageInfo(header, image.mode, image.format, image.size)


def _to_mode(image: Image.Image, mode: str) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit integer images: scale to 8 bits by the type's range, not by clipping at 255.
        array = np.asarray(image, dtype=np.float32)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray((array / peak * 255.0).clip(0, 255).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Composite transparency onto white, as viewers show it, instead of dropping alpha to black.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert(mode)


def _reduce(image: Image.Image, side: int | None) -> Image.Image:
    if side is None:
        return image
    factor = min(image.width // side, image.height // side)
    return image.reduce(factor) if factor >= 2 else image


def _finish(image: Image.Image, mode: str, side: int | None, owned: bool) -> Image.Image:
    """Shrink (integer box filter), rotate by EXIF and convert, on the smallest copy available.

    ``owned``: the image is ours to change in place (decoded here), not the caller's.
    """
    early = image.mode in REDUCED_BEFORE_CONVERSION
    if early:
        reduced = _reduce(image, side)
        owned, image = owned or reduced is not image, reduced
    if owned:
        ImageOps.exif_transpose(image, in_place=True)
    else:
        image = ImageOps.exif_transpose(image)
    image = _to_mode(image, mode)
    # Palettes, alpha and 16-bit are converted before averaging (indices and straight alpha do not average).
    return image if early else _reduce(image, side)


def decode_image(
    source: ImageInput,
    mode: str = "RGB",
    *,
    size: int | Sequence[int] | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    name: str | None = None,
    limit_hint: str = "max_pixels",
) -> DecodedImage:
    """Decode a file, bytes or PIL image into ``mode`` ("RGB" or "L"), bounded in memory (module docstring).

    Args:
        source: a path, encoded bytes, or a PIL image (left unchanged; a converted copy is returned).
        mode: "RGB" or "L".
        size: the ``(height, width)`` (or side) the caller resizes to; None decodes at full size.
        max_pixels: the most pixels to decode (after JPEG scaling); None: no limit of lit_explain's own.
        name: how messages name the source (default: the path, "the image bytes", "the PIL image").
        limit_hint: the setting that raises ``max_pixels``, quoted in the too-large message.

    Example:
        >>> decoded = decode_image("scan.jpg", size=(224, 224), limit_hint="--max_pixels")  # doctest: +SKIP
        >>> decoded.original_size, decoded.image.size
        ((12000, 12000), (1500, 1500))
    """
    name = name or describe_source(source)
    side = _target_side(size)
    if isinstance(source, Image.Image):
        _check_count(source.size, source.size, name, max_pixels, limit_hint)
        try:
            return DecodedImage(_finish(source, mode, side, owned=False), source.size, source.mode)
        except PIL_PARSE_ERRORS as exc:
            raise ImageDecodeError(f"cannot use {name} of mode {source.mode}: {_reason(exc)}") from exc
    image, handle = _open(bytes(source) if isinstance(source, bytearray) else source, name)
    try:
        with handle, image:
            original = (image.size, image.mode)
            _plan(image, side, name, max_pixels, limit_hint)
            image.load()
            return DecodedImage(_finish(image, mode, side, owned=True), *original)
    except ImageDecodeError:
        raise
    except PIL_PARSE_ERRORS as exc:
        raise ImageDecodeError(f"cannot decode {name}: {_reason(exc)}") from exc


def load_image(
    source: ImageInput,
    mode: str = "RGB",
    *,
    size: int | Sequence[int] | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    name: str | None = None,
    limit_hint: str = "max_pixels",
) -> Image.Image:
    """Decode an image into a PIL image of ``mode`` ("RGB" or "L"), EXIF rotation applied.

    The arguments are :func:`decode_image`'s; without ``size`` the image comes back at full size.

    Example:
        >>> image = load_image("leaf.JPG")            # CMYK, RGBA, 16-bit PNG all come back as RGB
        >>> gray = load_image(png_bytes, mode="L")
        >>> small = load_image("scan.jpg", size=224)  # at least 448 px a side, decoded at reduced scale
    """
    return decode_image(
        source, mode, size=size, max_pixels=max_pixels, name=name, limit_hint=limit_hint
    ).image


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
