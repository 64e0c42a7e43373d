"""PNG encoding; files are written through :mod:`lit_explain.outputs` (atomic, no-clobber)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from lit_explain.outputs import OutputExistsError, write_bytes
from lit_explain.render.images import to_uint8

__all__ = ["encode_png", "save_png", "to_hwc_uint8"]

ImageLike = Tensor | np.ndarray | Image.Image


def to_hwc_uint8(image: ImageLike) -> np.ndarray:
    """One image as a host uint8 ``[H, W, C]`` (C in 1/3/4) or ``[H, W]`` array.

    Conventions: torch tensors are channels-first (``[C, H, W]`` or ``[H, W]``), numpy arrays are
    channels-last (``[H, W, C]`` or ``[H, W]``) as PIL and OpenCV use them; a leading batch
    dimension of 1 is dropped. Floats are read as ``[0, 1]`` and rounded, uint8 is kept.

    Example:
        >>> to_hwc_uint8(torch.zeros(3, 4, 5)).shape
        (4, 5, 3)
    """
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGBA" if "A" in image.getbands() else "RGB"))
    if isinstance(image, Tensor):
        x = to_uint8(image)
        if x.ndim == 4 and x.shape[0] == 1:
            x = x[0]
        if x.ndim == 3:
            x = x.permute(1, 2, 0)
        arr = x.cpu().numpy()
    elif isinstance(image, np.ndarray):
        arr = to_uint8(torch.from_numpy(np.ascontiguousarray(image))).numpy()
        if arr.ndim == 4 and arr.shape[0] == 1:
            arr = arr[0]
    else:
        raise TypeError(f"expected a tensor, numpy array or PIL image, got {type(image).__name__}")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ValueError(
            f"expected one image ([C, H, W] tensor or [H, W, C] array with C in 1/3/4), got "
            f"shape {tuple(image.shape)}; lay batches out with panel_grid first"
        )
    return np.ascontiguousarray(arr)


def encode_png(image: ImageLike, compress_level: int = 6) -> bytes:
    """Encode one image as PNG bytes.

    Args:
        image: ``[C, H, W]`` / ``[H, W]`` tensor (float in ``[0, 1]`` or uint8, any device),
            ``[H, W, C]`` / ``[H, W]`` numpy array, or a PIL image. See :func:`to_hwc_uint8`.
        compress_level: zlib level 0-9; lower is faster (1 suits an HTTP service).

    Example:
        >>> encode_png(torch.rand(3, 32, 32))[:8]
        b'\\x89PNG\\r\\n\\x1a\\n'
    """
    buf = io.BytesIO()
    Image.fromarray(to_hwc_uint8(image)).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def save_png(
    path: str | os.PathLike[str],
    image: ImageLike,
    overwrite: bool = False,
    compress_level: int = 6,
) -> Path:
    """Write one image to ``path`` as PNG, atomically; creates missing parent directories.

    The file is written by :func:`lit_explain.outputs.write_bytes`: a hidden temporary file in the same
    directory, fsync-ed and moved into place, so readers (an HTML report being viewed, a sync job) never
    see a half-written file. Without ``overwrite`` an existing file is never replaced, even if it appears
    while this call runs. Permissions follow the umask.

    Args:
        path: destination file.
        image: anything :func:`encode_png` accepts.
        overwrite: replace an existing file instead of raising.
        compress_level: zlib level 0-9.

    Returns:
        The destination path.

    Raises:
        lit_explain.outputs.OutputExistsError: ``path`` exists and ``overwrite`` is False (a
            ``FileExistsError``).

    Example:
        >>> save_png("report/maps/0001.png", grid, overwrite=True)  # doctest: +SKIP
        PosixPath('report/maps/0001.png')
    """
    dest = Path(path)
    if not overwrite and dest.exists():
        raise OutputExistsError(f"{dest} already exists; pass --overwrite (overwrite=True) to replace it")
    return write_bytes(dest, encode_png(image, compress_level=compress_level), overwrite=overwrite)
