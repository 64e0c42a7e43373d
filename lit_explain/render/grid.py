"""Captioned panel grids: one row per probe image, one column per view (image, maps, ...).

The image part is assembled with tensor ops on the cells' device; only the caption and title
strips are drawn on the host (PIL), all in one image, then copied over once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_explain.render._common import as_tensor, to_float32
from lit_explain.render._text import Color, TextBox, draw_strips, rgb
from lit_explain.render.images import to_rgb, to_uint8

__all__ = ["RIGHT_COLOR", "WRONG_COLOR", "CaptionColor", "panel_grid"]

RIGHT_COLOR: tuple[int, int, int] = (0, 130, 40)
"""Caption colour for a correct prediction (``caption_colors`` entry ``True``)."""
WRONG_COLOR: tuple[int, int, int] = (200, 30, 30)
"""Caption colour for a wrong prediction (``caption_colors`` entry ``False``)."""

CaptionColor = Color | bool | None
"""A caption colour: RGB tuple or colour name; ``True``/``False`` for right/wrong; None = default."""


def _cells_from_rows(rows: Sequence[Sequence[Tensor | None]] | Tensor) -> list[list[Tensor | None]]:
    if isinstance(rows, Tensor):
        if rows.ndim != 5:
            raise ValueError(f"rows: a tensor must be [R, K, C, H, W], got shape {tuple(rows.shape)}")
        return [list(row) for row in rows]
    out: list[list[Tensor | None]] = []
    for r, row in enumerate(rows):
        if isinstance(row, Tensor):
            if row.ndim != 4:
                raise ValueError(f"rows[{r}]: a tensor row must be [K, C, H, W], got {tuple(row.shape)}")
            out.append(list(row))
        else:
            out.append([None if c is None else as_tensor(c, f"rows[{r}]") for c in row])
    return out


def _as_cell(cell: Tensor, where: str) -> Tensor:
    x = to_float32(as_tensor(cell, where))
    if x.ndim == 2:
        x = x.unsqueeze(0)
    if x.ndim != 3:
        raise ValueError(f"{where}: a cell must be [C, H, W] or [H, W], got shape {tuple(x.shape)}")
    return to_rgb(x).clamp(0.0, 1.0)


def _cell_size(sizes: set[tuple[int, int]], min_cell: int, upscale: str) -> tuple[int, int]:
    h = max(s[0] for s in sizes)
    w = max(s[1] for s in sizes)
    short = min(h, w)
    if short >= min_cell:
        return h, w
    # Whole-number factors keep nearest-neighbour pixels square and equally sized.
    factor = math.ceil(min_cell / short) if upscale == "nearest" else min_cell / short
    return round(h * factor), round(w * factor)


def _resize_cells(cells: list[Tensor], size: tuple[int, int], mode: str) -> Tensor:
    """Stack cells to ``[N, 3, *size]``, resizing each group of equal shape in one call."""
    out = torch.empty(len(cells), 3, *size, device=cells[0].device)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, c in enumerate(cells):
        groups.setdefault((c.shape[-2], c.shape[-1]), []).append(i)
    for shape, idx in groups.items():
        batch = torch.stack([cells[i] for i in idx])
        if shape != size:
            kwargs = {"align_corners": False, "antialias": True} if mode == "bilinear" else {}
            batch = F.interpolate(batch, size=size, mode=mode, **kwargs).clamp_(0.0, 1.0)
        out[idx] = batch
    return out


def _normalise_captions(
    captions: Sequence[str] | Sequence[Sequence[str]] | None, n_rows: int, n_cols: int
) -> tuple[list[str] | None, list[list[str]] | None]:
    """Split into (one caption per row) or (one per cell), validating the counts."""
    if captions is None:
        return None, None
    if isinstance(captions, str):
        raise TypeError("captions must be a list (one str per row, or one list of str per row)")
    if len(captions) != n_rows:
        raise ValueError(f"got {len(captions)} captions for {n_rows} rows")
    if all(isinstance(c, str) for c in captions):
        return [str(c) for c in captions], None
    per_cell: list[list[str]] = []
    for r, row in enumerate(captions):
        if isinstance(row, str) or len(row) > n_cols:
            raise ValueError(f"captions[{r}]: per-cell captions must be a list of at most {n_cols} str")
        per_cell.append([str(c) for c in row])
    return None, per_cell


def _caption_color(spec: CaptionColor, default: tuple[int, int, int]) -> tuple[int, int, int]:
    if spec is None:
        return default
    if isinstance(spec, bool):
        return RIGHT_COLOR if spec else WRONG_COLOR
    return rgb(spec)


def _color_at(colors: Sequence | None, r: int, k: int | None) -> CaptionColor:
    if colors is None:
        return None
    entry = colors[r] if r < len(colors) else None
    if k is None or entry is None or isinstance(entry, bool | str) or _is_rgb(entry):
        return entry  # one colour for the whole row
    return entry[k] if k < len(entry) else None


def _is_rgb(entry: object) -> bool:
    # bools are ints too, but a (True, False, True) row is three per-cell verdicts, not a colour.
    return (
        isinstance(entry, tuple)
        and len(entry) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) for v in entry)
    )


def panel_grid(
    rows: Sequence[Sequence[Tensor | None]] | Tensor,
    captions: Sequence[str] | Sequence[Sequence[str]] | None = None,
    column_titles: Sequence[str] | None = None,
    *,
    pad: int = 2,
    caption_height: int | None = None,
    font_size: int | None = None,
    min_cell: int = 128,
    upscale: Literal["nearest", "bilinear"] = "nearest",
    caption_colors: Sequence[CaptionColor] | Sequence[Sequence[CaptionColor]] | None = None,
    text_color: Color = (0, 0, 0),
    background: Color = (255, 255, 255),
    dtype: torch.dtype = torch.uint8,
) -> Tensor:
    """Lay out images as a grid with a caption under each row (or cell) and optional column titles.

    Layout, top to bottom: ``pad``, the column-title strip (if any), then per row: the cells
    separated and surrounded by ``pad`` px of background, the caption strip, ``pad``.
    Cells are brought to one size: the largest cell height/width, upscaled so its short side is at
    least ``min_cell`` (by a whole-number factor for ``"nearest"``), so captions stay readable
    next to 32x32 or 64x64 images. Text that does not fit is cut with an ellipsis.

    Args:
        rows: ``R`` rows of cells, each a ``[C, H, W]`` (or ``[H, W]``) tensor with ``C`` in 1/3,
            float in ``[0, 1]`` or uint8 (None leaves a blank cell; rows may be shorter than the
            longest), or one tensor ``[R, K, C, H, W]``.
        captions: one str per row (drawn left-aligned under the row), or one list of str per row
            (one per cell, centred under each cell); None for no caption strips.
        column_titles: one str per column, centred above the first row.
        pad: background pixels between and around cells.
        caption_height: height of each caption/title strip in px (default from the font size).
        font_size: text size in px (default from the cell size, 12 px for 128 px cells).
        min_cell: minimum short side of a cell in px after upscaling; 0 disables upscaling.
        upscale: interpolation for upscaling cells.
        caption_colors: per row (or, with per-cell captions, per row per cell): a colour,
            ``True``/``False`` for :data:`RIGHT_COLOR`/:data:`WRONG_COLOR`, or None for
            ``text_color``.
        text_color: default caption and title colour.
        background: colour of padding and caption strips.
        dtype: ``torch.uint8`` (ready for PNG / ``add_image``) or a float dtype for ``[0, 1]``.

    Returns:
        ``[3, H_total, W_total]`` on the device of the first cell, where
        ``W_total = K * cell_w + (K + 1) * pad`` and
        ``H_total = pad + title_h + R * (cell_h + caption_h + pad)``.

    Example:
        >>> img, cam = torch.rand(3, 64, 64), torch.rand(3, 64, 64)
        >>> grid = panel_grid([[img, cam], [img, cam]], captions=["true: a | pred: a (0.91)",
        ...     "true: b | pred: a (0.55)"], column_titles=["image", "Grad-CAM"],
        ...     caption_colors=[True, False])
        >>> grid.shape, grid.dtype
        (torch.Size([3, 322, 262]), torch.uint8)
    """
    if upscale not in ("nearest", "bilinear"):
        raise ValueError(f"upscale must be 'nearest' or 'bilinear', got {upscale!r}")
    if pad < 0 or min_cell < 0:
        raise ValueError("pad and min_cell must be >= 0")
    grid_cells = _cells_from_rows(rows)
    n_rows = len(grid_cells)
    n_cols = max((len(r) for r in grid_cells), default=0)
    present = [(r, k, c) for r, row in enumerate(grid_cells) for k, c in enumerate(row) if c is not None]
    if not present:
        raise ValueError("panel_grid needs at least one cell")
    device = present[0][2].device
    cells = [_as_cell(c.to(device), f"rows[{r}][{k}]") for r, k, c in present]

    cell_h, cell_w = _cell_size({(c.shape[-2], c.shape[-1]) for c in cells}, min_cell, upscale)
    resized = _resize_cells(cells, (cell_h, cell_w), upscale)

    bg = rgb(background)
    bg_t = torch.tensor(bg, dtype=torch.float32, device=device).view(3, 1, 1) / 255.0
    width = n_cols * cell_w + (n_cols + 1) * pad
    block = bg_t.expand(n_rows, n_cols, 3, cell_h, cell_w).clone()
    block[[r for r, _, _ in present], [k for _, k, _ in present]] = resized
    # [R, K, 3, h, w] -> [R, 3, h, K * (w + pad)]: every cell followed by its right-hand padding.
    block = F.pad(block, (0, pad), value=0.0)
    block[..., cell_w:] = bg_t
    block = block.permute(0, 2, 3, 1, 4).reshape(n_rows, 3, cell_h, n_cols * (cell_w + pad))
    left = bg_t.expand(n_rows, 3, cell_h, pad)
    parts = [torch.cat([left, block], dim=-1)]

    row_caps, cell_caps = _normalise_captions(captions, n_rows, n_cols)
    if column_titles is not None and len(column_titles) > n_cols:
        raise ValueError(f"got {len(column_titles)} column titles for {n_cols} columns")
    fs = font_size or (
        max(6, int(caption_height / 1.6)) if caption_height else max(12, min(24, cell_h // 10))
    )
    strip_h = caption_height or math.ceil(fs * 1.6)
    fg = rgb(text_color)
    x_of = [pad + k * (cell_w + pad) for k in range(n_cols)]

    strips: list[list[TextBox]] = []
    drawn: Tensor | None = None
    if row_caps is not None:
        strips = [
            [TextBox(t, pad, width - 2 * pad, _caption_color(_color_at(caption_colors, r, None), fg))]
            for r, t in enumerate(row_caps)
        ]
    elif cell_caps is not None:
        strips = [
            [
                TextBox(t, x_of[k], cell_w, _caption_color(_color_at(caption_colors, r, k), fg), "center")
                for k, t in enumerate(row)
            ]
            for r, row in enumerate(cell_caps)
        ]
    if column_titles is not None:
        strips.append([TextBox(t, x_of[k], cell_w, fg, "center") for k, t in enumerate(column_titles)])
    if strips:
        drawn = torch.from_numpy(draw_strips(strips, width, strip_h, fs, bg)).to(device)
        drawn = drawn.permute(0, 3, 1, 2).to(torch.float32) / 255.0  # [S, 3, strip_h, width]
        if row_caps is not None or cell_caps is not None:
            parts.append(drawn[:n_rows])
    parts.append(bg_t.expand(n_rows, 3, pad, width))
    rows_t = torch.cat(parts, dim=2)  # [R, 3, cell_h + caption_h + pad, width]
    body = rows_t.permute(1, 0, 2, 3).reshape(3, -1, width)

    head = [bg_t.expand(3, pad, width)]
    if column_titles is not None and drawn is not None:
        head.append(drawn[-1])
    out = torch.cat([*head, body], dim=1)
    return to_uint8(out) if dtype == torch.uint8 else out.to(dtype)
