"""What the callbacks hand to the sinks: a picture, a table, built once whatever the number of loggers."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lit_explain.render import encode_png, markdown_table

# zlib level 1: PNG encoding at the default level was half of the callbacks' epoch-end time on a CPU
# (docs/benchmarks.md); level 1 files are a little larger and as lossless.
PNG_LEVEL = 1


@dataclass(eq=False)
class Picture:
    """One rendered image, encoded to PNG at most once, however many sinks write it.

    Args:
        image: uint8 ``[3, H, W]`` (or ``[1, H, W]``) tensor, any device; kept on the CPU.
        caption: one line shown under the image where the tracker has captions (W&B).

    Example:
        >>> picture = Picture(torch.zeros(3, 8, 8, dtype=torch.uint8), caption="probes, epoch 1")
        >>> picture.png[:4], picture.hwc.shape
        (b'\\x89PNG', (8, 8, 3))
    """

    image: Tensor
    caption: str = ""
    _png: bytes | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.image.dtype != torch.uint8 or self.image.dim() != 3 or self.image.shape[0] not in (1, 3):
            raise ValueError(
                f"Picture needs a uint8 [3, H, W] or [1, H, W] tensor, got {self.image.dtype} "
                f"{tuple(self.image.shape)}"
            )
        self.image = self.image.detach().cpu().contiguous()

    @property
    def height(self) -> int:
        return int(self.image.shape[1])

    @property
    def width(self) -> int:
        return int(self.image.shape[2])

    @property
    def channels(self) -> int:
        return int(self.image.shape[0])

    @property
    def png(self) -> bytes:
        """The PNG bytes (encoded on first use, then shared by every sink)."""
        if self._png is None:
            self._png = encode_png(self.image, compress_level=PNG_LEVEL)
        return self._png

    @property
    def hwc(self) -> np.ndarray:
        """uint8 ``[H, W, 3]`` (or ``[H, W]`` for one channel) numpy view, for APIs that take arrays."""
        array = self.image.permute(1, 2, 0).numpy()
        return array[..., 0] if self.channels == 1 else array


@dataclass(frozen=True)
class Table:
    """Rows under a header, plus optional image columns that trackers with image tables show (W&B).

    Args:
        columns: the header, one name per cell of each row.
        rows: plain values (str, int, float).
        images: extra columns of :class:`Picture`, one per row; text-only sinks (TensorBoard's text tab,
            CSV files, MLflow CSV artifacts) leave them out.
        empty_text: what text sinks show when there are no rows.

    Example:
        >>> Table(("true", "predicted", "count"), [("cat", "dog", 3)]).csv_text()
        'true,predicted,count\\r\\ncat,dog,3\\r\\n'
    """

    columns: tuple[str, ...]
    rows: Sequence[Sequence[Any]]
    images: dict[str, Sequence[Picture]] = field(default_factory=dict)
    empty_text: str = ""

    def __post_init__(self) -> None:
        width = len(self.columns)
        for r, row in enumerate(self.rows):
            if len(row) != width:
                raise ValueError(f"table row {r} has {len(row)} cells, expected {width} (one per column)")
        for name, pictures in self.images.items():
            if len(pictures) != len(self.rows):
                raise ValueError(
                    f"image column {name!r} has {len(pictures)} pictures for {len(self.rows)} rows"
                )

    def markdown(self) -> str:
        """GitHub-flavoured Markdown (TensorBoard's text tab renders it); ``empty_text`` when no rows."""
        if not self.rows and self.empty_text:
            return self.empty_text
        return markdown_table(self.rows, list(self.columns))

    def csv_text(self) -> str:
        """The rows as CSV (header first); floats at full precision."""
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(self.columns)
        writer.writerows([_plain(v) for v in row] for row in self.rows)
        return buffer.getvalue()


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, Tensor) and value.numel() == 1 else value
