"""Decoding request images under one memory budget shared by every request of the service.

Each request's image size is read from its header first (no pixels decoded; a JPEG counts at the reduced
scale it will be decoded at); the request then reserves that many pixels from a :class:`PixelBudget`
before decoding and gives them back once the image has been turned into the model's small input tensor.
So however many large images arrive at once, the pixels being decoded at any moment never exceed the
budget, and so does the memory for decoding. Pixels are counted as 8-bit RGB pixels: an image the
preprocessor must convert at full size before shrinking it (alpha, palette, 16-bit; see
:mod:`lit_explain.data.images`) counts :data:`CONVERTED_WEIGHT` times its pixels, because it needs that
much more memory (measured in docs/benchmarks.md: about 5 bytes per RGB pixel, 19 per RGBA pixel).
After a large decode the freed memory is handed back to the operating system (``malloc_trim`` on glibc),
so the service does not keep the peak's resident size.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
from collections.abc import Callable
from functools import lru_cache
from typing import TypeVar

from PIL import Image

from lit_explain.data.images import PIL_PARSE_ERRORS, ImageDecodeError
from lit_explain.inference.preprocess import ImageTooLargeError, Prepared, Preprocessor
from lit_explain.serve.budget import Budget
from lit_explain.serve.errors import ApiError, logger

T = TypeVar("T")

DEFAULT_DECODE_BUDGET = 100_000_000  # RGB pixels decoded at once: two 50-megapixel photos, ~0.5 GB
# Modes the preprocessor shrinks right after decoding; any other is converted at full size first.
SHRUNK_EARLY = frozenset({"1", "L", "RGB", "YCbCr", "CMYK"})
CONVERTED_WEIGHT = 4  # an RGBA pixel needed 19 bytes at peak, an RGB one 5 (docs/benchmarks.md)
TRIM_AFTER_PIXELS = 4_000_000  # return freed memory to the OS after decoding an image this large

_MALFORMED = (*PIL_PARSE_ERRORS, Image.DecompressionBombError)


class PixelBudget(Budget):
    """The decode budget: a :class:`~lit_explain.serve.budget.Budget` over pixels, shared by all requests.

    Args:
        capacity: pixels that may be held at once (>= 1).

    Example:
        >>> budget = PixelBudget(100_000_000)
        >>> async def decode(raw, pixels):
        ...     async with budget.reserve(pixels):
        ...         return await asyncio.to_thread(preprocess, raw)  # doctest: +SKIP
    """

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity, what="pixel budget")


@lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


def release_memory() -> bool:
    """Hand freed heap memory back to the OS (glibc's ``malloc_trim``); False where there is none.

    Large decodes free hundreds of megabytes in many malloc arenas (one per thread); without this glibc
    keeps them mapped and the process's resident size stays at its peak.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


class ImageDecoder:
    """Bytes -> :class:`Prepared` model input for the service: size checked, pixels budgeted, errors as 4xx.

    Args:
        preprocess: the explainer's :class:`Preprocessor` (its ``max_pixels`` is the per-image limit).
        budget: the pixel budget shared by all requests.

    Example:
        >>> decoder = ImageDecoder(explainer.preprocess, PixelBudget(100_000_000))
        >>> prepared = await decoder(raw_bytes, request_id="3f2a")  # doctest: +SKIP
    """

    def __init__(self, preprocess: Preprocessor, budget: PixelBudget) -> None:
        self.preprocess = preprocess
        self.budget = budget

    async def __call__(self, raw: bytes, request_id: str = "-") -> Prepared:
        # Off the event loop: even a header can be slow to parse for some formats.
        info = await asyncio.to_thread(self._checked, raw, request_id, self.preprocess.probe)
        pixels = info.decoded_pixels  # a JPEG counts at the reduced scale it will be decoded at
        cost = pixels * (1 if info.mode in SHRUNK_EARLY else CONVERTED_WEIGHT)
        if pixels > self.preprocess.max_pixels:
            # Over the per-image limit: the preprocessor refuses it from the header, decoding nothing, so
            # there is nothing to budget (and no reason to queue behind other requests to hear it).
            return await asyncio.to_thread(self._checked, raw, request_id, self._prepare)
        async with self.budget.reserve(cost):
            prepared = await asyncio.to_thread(self._checked, raw, request_id, self._prepare)
        if pixels >= TRIM_AFTER_PIXELS:
            await asyncio.to_thread(release_memory)
        return prepared

    def _prepare(self, raw: bytes) -> Prepared:
        return self.preprocess(raw, name="the uploaded image")

    @staticmethod
    def _checked(raw: bytes, request_id: str, step: Callable[[bytes], T]) -> T:
        try:
            return step(raw)
        except ImageTooLargeError as exc:
            raise ApiError(413, str(exc)) from None
        except ImageDecodeError as exc:
            raise ApiError(422, f"field 'image' is not a readable image: {exc}") from None
        except MemoryError:
            logger.warning("request %s: out of memory decoding a %d-byte image", request_id, len(raw))
            raise ApiError(503, "not enough memory to decode the image now; try again later") from None
        except _MALFORMED as exc:
            # A parser failing in a way lit_explain does not name yet: the input's fault, but keep the trace.
            logger.warning("request %s: the image decoder failed", request_id, exc_info=exc)
            raise ApiError(422, "field 'image' is not a readable image: the decoder rejected it") from None


__all__ = ["CONVERTED_WEIGHT", "DEFAULT_DECODE_BUDGET", "ImageDecoder", "PixelBudget", "release_memory"]
