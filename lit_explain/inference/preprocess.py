"""Turn whatever the user sends (a path, bytes, a PIL image) into the tensor the model expects.

The model's hyperparameters say how it was trained (input size, normalisation, channels); this module
reads the image in any mode with :func:`lit_explain.data.images.load_image` and applies exactly that
transform. Sizes are checked from the header *before* decoding, so a decompression bomb or a huge scan
is refused without allocating its pixels.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from lit_explain.data.images import ImageDecodeError, eval_transform, load_image
from lit_explain.errors import DataError

DEFAULT_MAX_PIXELS = 50_000_000  # a 50-megapixel photo is fine, a 30,000 x 30,000 bomb is not

ImageSource = str | Path | bytes | bytearray | Image.Image | np.ndarray | torch.Tensor


class ImageTooLargeError(DataError):
    """The image has more pixels than allowed; the message gives both numbers."""


@dataclass(frozen=True)
class Prepared:
    """One pre-processed image: the model input ``[C, H, W]`` and what it came from."""

    tensor: torch.Tensor
    source: str
    original_size: tuple[int, int]  # (width, height) as decoded, before resizing
    original_mode: str


def _describe(source: ImageSource) -> str:
    if isinstance(source, (bytes, bytearray)):
        return "<bytes>"
    if isinstance(source, Image.Image):
        return "<PIL image>"
    if isinstance(source, (np.ndarray, torch.Tensor)):
        return f"<{type(source).__name__} {tuple(source.shape)}>"
    return str(source)


def _as_pil(array: np.ndarray | torch.Tensor) -> Image.Image:
    """An in-memory picture as PIL: numpy ``[H, W(, C)]``, torch ``[C, H, W]`` / ``[H, W]``, float in [0, 1] or uint8."""
    from lit_explain.render import to_hwc_uint8

    if isinstance(array, np.ndarray):
        array = np.require(
            array, requirements="W"
        )  # torch.from_numpy warns on read-only arrays (np.asarray(PIL))
    try:
        pixels = to_hwc_uint8(array)
    except (ValueError, TypeError) as exc:
        raise ImageDecodeError(f"cannot use {_describe(array)} as an image: {exc}") from exc
    return Image.fromarray(pixels[..., 0] if pixels.ndim == 3 and pixels.shape[-1] == 1 else pixels)


def check_pixels(source: ImageSource, max_pixels: int) -> tuple[int, int]:
    """Read only the header of ``source`` and refuse it when ``width * height > max_pixels``."""
    name = _describe(source)
    if isinstance(source, Image.Image):
        size = source.size
    else:
        handle = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else None
        if handle is None and not Path(source).is_file():
            raise ImageDecodeError(f"cannot open image {name}: no such file")
        try:
            with Image.open(handle or source) as image:  # lazy: decodes the header only
                size = image.size
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            raise ImageDecodeError(f"cannot decode image {name}: {exc}") from exc
        except Image.DecompressionBombError as exc:
            raise ImageTooLargeError(
                f"image {name} exceeds the limit of {max_pixels:,} pixels and PIL's decompression-bomb guard: {exc}"
            ) from exc
    if size[0] * size[1] > max_pixels:
        raise ImageTooLargeError(
            f"image {name} has {size[0]}x{size[1]} = {size[0] * size[1]:,} pixels, more than the limit of "
            f"{max_pixels:,}; resize it first"
        )
    return size


class Preprocessor:
    """Decode and transform images for one model: its input size, normalisation and channel count.

    Args:
        input_size: ``(height, width)`` the model was trained at.
        mean, std: the normalisation, one value per channel.
        in_channels: 1 (images are converted to grayscale) or 3 (RGB).
        max_pixels: largest ``width * height`` accepted before decoding.

    Example:
        >>> prep = Preprocessor((64, 64), mean=(0.5,), std=(0.25,), in_channels=1)
        >>> prep("sketch.png").tensor.shape                    # doctest: +SKIP
        torch.Size([1, 64, 64])
    """

    def __init__(
        self,
        input_size: Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        in_channels: int = 3,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        if in_channels not in (1, 3):
            raise DataError(f"only 1- or 3-channel models can be explained, this one takes {in_channels}")
        if len(mean) != in_channels or len(std) != in_channels:
            raise DataError(
                f"the model's normalisation has {len(mean)} means and {len(std)} stds for {in_channels} channels"
            )
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.in_channels = in_channels
        self.mode = "L" if in_channels == 1 else "RGB"
        self.max_pixels = max_pixels
        self._transform = eval_transform(self.input_size, self.mean, self.std)

    @classmethod
    def for_model(cls, model: torch.nn.Module, max_pixels: int = DEFAULT_MAX_PIXELS) -> Preprocessor:
        """The pre-processing saved in an :class:`~lit_explain.models.ImageClassifier`'s hyperparameters."""
        hp = model.hparams
        missing = [key for key in ("input_size", "mean", "std") if hp.get(key) is None]
        if missing:
            raise DataError(
                f"the checkpoint does not record {', '.join(missing)}; it was trained without a data module "
                "that reports them, so the expected pre-processing is unknown"
            )
        size = hp["input_size"]
        size = (size, size) if isinstance(size, int) else tuple(size)
        in_channels = int(hp.get("in_channels") or len(hp["mean"]))
        return cls(size, hp["mean"], hp["std"], in_channels, max_pixels)

    def __call__(self, source: ImageSource) -> Prepared:
        """Decode ``source`` and return the normalised model input.

        ``source`` is a path, encoded bytes, a PIL image, a numpy array ``[H, W(, C)]`` or a tensor
        ``[C, H, W]`` (float in [0, 1] or uint8; un-normalised pixels, not a model input).
        """
        name = _describe(source)
        if isinstance(source, (np.ndarray, torch.Tensor)):
            source = _as_pil(source)
        size = check_pixels(source, self.max_pixels)
        if isinstance(source, Image.Image):
            original_mode = source.mode
            buffer = io.BytesIO()
            # Through load_image, so every mode is converted the same way; TIFF keeps CMYK, 16-bit and alpha.
            try:
                source.save(buffer, format="TIFF")
            except (OSError, ValueError) as exc:
                raise ImageDecodeError(f"cannot use a PIL image of mode {source.mode}: {exc}") from exc
            image = load_image(buffer.getvalue(), mode=self.mode)
        else:
            original_mode = _peek_mode(source)
            image = load_image(bytes(source) if isinstance(source, bytearray) else source, mode=self.mode)
        tensor = self._transform(image)
        return Prepared(tensor=tensor, source=name, original_size=size, original_mode=original_mode)


def _peek_mode(source: str | Path | bytes | bytearray) -> str:
    handle = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    try:
        with Image.open(handle) as image:
            return image.mode
    except Exception:  # the real decode right after reports the error with the file's name
        return "?"
