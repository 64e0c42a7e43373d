"""Turn whatever the user sends (a path, bytes, a PIL image) into the tensor the model expects.

The model's hyperparameters say how it was trained (input size, normalisation, channels); this module
reads the image in any mode with :func:`lit_explain.data.images.decode_image` and applies exactly that
transform. Decoding is bounded: a JPEG is decoded at the smallest libjpeg scale that keeps twice the model's
input size, other formats are shrunk right after decoding, and whatever would still exceed ``max_pixels`` is
refused from the header *before* decoding, so a decompression bomb or a huge scan never allocates its pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lit_explain.data.images import (
    DEFAULT_MAX_PIXELS,
    ImageDecodeError,
    ImageInfo,
    ImageTooLargeError,
    decode_image,
    describe_source,
    eval_transform,
    probe_image,
)
from lit_explain.errors import DataError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageSource",
    "ImageTooLargeError",
    "Prepared",
    "Preprocessor",
    "check_pixels",
]

ImageSource = str | Path | bytes | bytearray | Image.Image | np.ndarray | torch.Tensor


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


def _as_pil(array: np.ndarray | torch.Tensor, name: str) -> Image.Image:
    """An in-memory picture as PIL: numpy ``[H, W(, C)]``, torch ``[C, H, W]`` / ``[H, W]``, float in [0, 1] or uint8."""
    from lit_explain.render import to_hwc_uint8

    if isinstance(array, np.ndarray):
        array = np.require(
            array, requirements="W"
        )  # torch.from_numpy warns on read-only arrays (np.asarray(PIL))
    try:
        pixels = to_hwc_uint8(array)
    except (ValueError, TypeError) as exc:
        raise ImageDecodeError(f"cannot use {name} as an image: {exc}") from exc
    return Image.fromarray(pixels[..., 0] if pixels.ndim == 3 and pixels.shape[-1] == 1 else pixels)


def check_pixels(source: ImageSource, max_pixels: int) -> tuple[int, int]:
    """Read only the header of ``source`` and refuse it when ``width * height > max_pixels``.

    The stored size counts here, whatever a reduced decode would allocate (see :meth:`Preprocessor.probe`).
    """
    if isinstance(source, (np.ndarray, torch.Tensor)):
        source = _as_pil(source, _message_name(source))
    size = probe_image(source, name=_message_name(source)).size
    if size[0] * size[1] > max_pixels:
        raise ImageTooLargeError(
            f"{_message_name(source)} has {size[0]}x{size[1]} = {size[0] * size[1]:,} pixels, more than the "
            f"limit of {max_pixels:,}; shrink the image or raise max_pixels"
        )
    return size


def _message_name(source: object) -> str:
    if isinstance(source, (np.ndarray, torch.Tensor)):
        return f"the {type(source).__name__} of shape {tuple(source.shape)}"
    return describe_source(source)


class Preprocessor:
    """Decode and transform images for one model: its input size, normalisation and channel count.

    Args:
        input_size: ``(height, width)`` the model was trained at.
        mean, std: the normalisation, one value per channel.
        in_channels: 1 (images are converted to grayscale) or 3 (RGB).
        max_pixels: largest ``width * height`` decoded (a JPEG counts at the reduced scale it is decoded at).
        limit_hint: the setting that raises ``max_pixels``, quoted when an image is refused (the explain
            command and the service both take ``--max_pixels``).

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
        limit_hint: str = "max_pixels (--max_pixels)",
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
        self.limit_hint = limit_hint
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

    def probe(self, source: ImageSource) -> ImageInfo:
        """The header's size and mode and the size decoding will allocate, without decoding.

        Lets a caller budget memory before :meth:`__call__` (``info.decoded_pixels``).
        """
        name = _message_name(source)
        if isinstance(source, (np.ndarray, torch.Tensor)):
            source = _as_pil(source, name)  # numpy is [H, W(, C)], torch [C, H, W]: one rule for both
        return probe_image(source, self.input_size, name=name)

    def __call__(self, source: ImageSource, name: str | None = None) -> Prepared:
        """Decode ``source`` and return the normalised model input.

        ``source`` is a path, encoded bytes, a PIL image, a numpy array ``[H, W(, C)]`` or a tensor
        ``[C, H, W]`` (float in [0, 1] or uint8; un-normalised pixels, not a model input). ``name`` is how
        error messages call it (default: the path, "the image bytes", "the PIL image"; the HTTP service
        says "the uploaded image").
        """
        label = _describe(source)
        name = name or _message_name(source)
        if isinstance(source, (np.ndarray, torch.Tensor)):
            source = _as_pil(source, name)
        decoded = decode_image(
            source,
            self.mode,
            size=self.input_size,
            max_pixels=self.max_pixels,
            name=name,
            limit_hint=self.limit_hint,
        )
        tensor = self._transform(decoded.image)
        return Prepared(
            tensor=tensor,
            source=label,
            original_size=decoded.original_size,
            original_mode=decoded.original_mode,
        )
