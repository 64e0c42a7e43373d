"""Captioned panel grids: one row per probe image, one column per view (image, maps, ...).

The image part is assembled with tensor ops on the cells' device; only the caption and title
strips are drawn on the host (PIL), all in one image, then copied over once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lit_explain.render._common import as_tensor, to_float32
from lit_explain.render._text import Color, TextBox, draw_strips, line_count, rgb
from lit_explain.render.images import to_rgb, to_uint8

__all__ = ["RIGHT_COLOR", "WRONG_COLOR", "CaptionColor", "colorbar", "panel_grid", "panel_pages"]

RIGHT_COLOR: tuple[int, int, int] = (0, 130, 40)
"""Caption colour for a correct prediction (``caption_colors`` entry ``True``)."""
WRONG_COLOR: tuple[int, int, int] = (200, 30, 30)
"""Caption colour for a wrong prediction (``caption_colors`` entry ``False``)."""

CaptionColor = Color | bool | None
"""A caption colour: RGB tuple or colour name; ``True``/``False`` for right/wrong; None = default."""


_Group = tuple[list[tuple[int, int]], Tensor]
"""Cells of one source size: their (row, column) positions and a ``[n, 3, h, w]`` float32 batch."""


def _cell_groups(rows: Sequence[Sequence[Tensor | None]] | Tensor) -> tuple[list[_Group], int, int]:
    """Cells batched by source size, plus the grid's row and column counts.

    A ``[R, K, C, H, W]`` tensor is one group without any per-cell work; lists are grouped by
    cell size so that each size is resized in one call.
    """
    if isinstance(rows, Tensor | np.ndarray):
        x = to_float32(as_tensor(rows, "rows"))
        if x.ndim != 5:
            raise ValueError(f"rows: a tensor must be [R, K, C, H, W], got shape {tuple(x.shape)}")
        n_rows, n_cols = x.shape[:2]
        positions = [(r, k) for r in range(n_rows) for k in range(n_cols)]
        return [(positions, to_rgb(x.flatten(0, 1)))], n_rows, n_cols
    by_size: dict[tuple[int, int], tuple[list[tuple[int, int]], list[Tensor]]] = {}
    device: torch.device | None = None
    n_cols = 0
    for r, row in enumerate(rows):
        n_cols = max(n_cols, len(row))
        for k, cell in enumerate(row):
            if cell is None:
                continue
            x = to_float32(as_tensor(cell, f"rows[{r}][{k}]"))
            if x.ndim == 2:
                x = x.unsqueeze(0)
            if x.ndim != 3:
                raise ValueError(f"rows[{r}][{k}]: a cell must be [C, H, W] or [H, W], got {tuple(x.shape)}")
            if device is None:
                device = x.device  # the first cell decides where the grid is built
            pos, cells = by_size.setdefault((x.shape[-2], x.shape[-1]), ([], []))
            pos.append((r, k))
            cells.append(to_rgb(x).to(device))
    groups = [(pos, torch.stack(cells)) for pos, cells in by_size.values()]
    return groups, len(rows), n_cols


def _cell_size(sizes: list[tuple[int, int]], min_cell: int, upscale: str) -> tuple[int, int]:
    h = max(s[0] for s in sizes)
    w = max(s[1] for s in sizes)
    short = min(h, w)
    if short >= min_cell:
        return h, w
    # Whole-number factors keep nearest-neighbour pixels square and equally sized.
    factor = math.ceil(min_cell / short) if upscale == "nearest" else min_cell / short
    return round(h * factor), round(w * factor)


def _prepare(batch: Tensor, size: tuple[int, int], mode: str, dtype: torch.dtype) -> Tensor:
    """Resize a ``[n, 3, h, w]`` batch to ``size`` and convert it to the canvas dtype."""
    if mode == "nearest" and dtype == torch.uint8:
        # Rounding to uint8 commutes with nearest-neighbour copies: convert the small cells, then upscale
        # bytes (same pixels, a quarter or less of the float work at a 2x upscale).
        batch = to_uint8(batch)
    if tuple(batch.shape[-2:]) != size:
        kwargs = {"align_corners": False, "antialias": True} if mode == "bilinear" else {}
        batch = F.interpolate(batch, size=size, mode=mode, **kwargs)
    return to_uint8(batch) if dtype == torch.uint8 else batch.clamp(0.0, 1.0).to(dtype)


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


def _color_at(colors: Sequence | Tensor | np.ndarray | None, r: int, k: int | None) -> CaptionColor:
    if colors is None:
        return None
    entry = colors[r] if r < len(colors) else None
    if isinstance(entry, Tensor | np.ndarray | np.generic):
        entry = entry.tolist()  # e.g. a row of `preds == targets`; also makes 0-d values plain bools
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
    caption_colors: Sequence[CaptionColor] | Sequence[Sequence[CaptionColor]] | Tensor | None = None,
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
            (one per cell, centred under each cell); None for no caption strips. ``"\\n"`` splits a
            caption into lines (1.3 font sizes apart); all caption strips get the most lines' height.
        column_titles: one str per column, centred above the first row.
        pad: background pixels between and around cells.
        caption_height: height of each caption/title strip in px (default from the font size).
        font_size: text size in px (default from the cell size, 12 px for 128 px cells).
        min_cell: minimum short side of a cell in px after upscaling; 0 disables upscaling.
        upscale: interpolation for upscaling cells.
        caption_colors: per row (or, with per-cell captions, per row per cell): a colour,
            ``True``/``False`` for :data:`RIGHT_COLOR`/:data:`WRONG_COLOR`, or None for
            ``text_color``. A bool tensor such as ``preds == targets`` works directly.
        text_color: default caption and title colour.
        background: colour of padding and caption strips.
        dtype: ``torch.uint8`` (ready for PNG / ``add_image``) or a float dtype for ``[0, 1]``.

    Returns:
        ``[3, H_total, W_total]`` on the device of the first cell, where
        ``W_total = K * cell_w + (K + 1) * pad`` and
        ``H_total = pad + title_h + R * (cell_h + caption_h + pad)``, ``caption_h`` being the
        strip height plus 1.3 font sizes per further caption line.

    Example:
        >>> img, cam = torch.rand(3, 64, 64), torch.rand(3, 64, 64)
        >>> grid = panel_grid([[img, cam], [img, cam]], captions=["true: a | pred: a (0.91)",
        ...     "true: b | pred: a (0.55)"], column_titles=["image", "Grad-CAM"],
        ...     caption_colors=[True, False])
        >>> grid.shape, grid.dtype
        (torch.Size([3, 322, 262]), torch.uint8)
    """
    return _render(
        rows,
        captions,
        column_titles,
        pad=pad,
        caption_height=caption_height,
        font_size=font_size,
        min_cell=min_cell,
        upscale=upscale,
        caption_colors=caption_colors,
        text_color=text_color,
        background=background,
        dtype=dtype,
    )[0]


def _render(
    rows: Sequence[Sequence[Tensor | None]] | Tensor,
    captions: Sequence[str] | Sequence[Sequence[str]] | None = None,
    column_titles: Sequence[str] | None = None,
    *,
    pad: int = 2,
    caption_height: int | None = None,
    font_size: int | None = None,
    min_cell: int = 128,
    upscale: Literal["nearest", "bilinear"] = "nearest",
    caption_colors: Sequence[CaptionColor] | Sequence[Sequence[CaptionColor]] | Tensor | None = None,
    text_color: Color = (0, 0, 0),
    background: Color = (255, 255, 255),
    dtype: torch.dtype = torch.uint8,
) -> tuple[Tensor, int, int]:
    """:func:`panel_grid`'s work; also returns the height above the first row and the height of a row."""
    if upscale not in ("nearest", "bilinear"):
        raise ValueError(f"upscale must be 'nearest' or 'bilinear', got {upscale!r}")
    if pad < 0 or min_cell < 0:
        raise ValueError("pad and min_cell must be >= 0")
    if dtype != torch.uint8 and not dtype.is_floating_point:
        raise ValueError(f"dtype must be torch.uint8 or a floating dtype, got {dtype}")
    groups, n_rows, n_cols = _cell_groups(rows)
    if not groups:
        raise ValueError("panel_grid needs at least one cell")
    device = groups[0][1].device
    cell_h, cell_w = _cell_size([tuple(b.shape[-2:]) for _, b in groups], min_cell, upscale)

    row_caps, cell_caps = _normalise_captions(captions, n_rows, n_cols)
    if column_titles is not None and len(column_titles) > n_cols:
        raise ValueError(f"got {len(column_titles)} column titles for {n_cols} columns")
    has_text = row_caps is not None or cell_caps is not None or column_titles is not None
    fs = font_size or (
        max(6, int(caption_height / 1.6)) if caption_height else max(12, min(24, cell_h // 10))
    )
    strip_h = (caption_height or math.ceil(fs * 1.6)) if has_text else 0
    texts = row_caps if row_caps is not None else [c for row in cell_caps or [] for c in row]
    lines = max((line_count(t) for t in texts), default=1)
    # Further caption lines sit closer than a strip's height: a two-line caption reads as one block.
    line_h = math.ceil(fs * 1.3) if lines > 1 else strip_h
    caption_h = strip_h + (lines - 1) * line_h if row_caps is not None or cell_caps is not None else 0
    title_h = strip_h if column_titles is not None else 0

    width = n_cols * cell_w + (n_cols + 1) * pad
    row_h = cell_h + caption_h + pad
    top = pad + title_h
    bg = rgb(background)
    scale = 1.0 if dtype == torch.uint8 else 1.0 / 255.0
    canvas = torch.empty(3, top + n_rows * row_h, width, dtype=dtype, device=device)
    canvas.copy_((torch.tensor(bg, dtype=torch.float32) * scale).to(dtype).view(3, 1, 1).expand_as(canvas))
    body = canvas[:, top:].view(3, n_rows, row_h, width)

    factors = _whole_factors(groups, (cell_h, cell_w), upscale, dtype)
    if factors is not None:
        positions, batch = groups[0]
        small = _full_grid(positions, to_uint8(batch), n_rows, n_cols, bg)
        _place_repeated(body[:, :, :cell_h, pad:], small, factors, pad)
        groups = []
    for positions, batch in groups:
        cells = _prepare(batch, (cell_h, cell_w), upscale, dtype)
        if len(positions) == n_rows * n_cols:
            # Full grid in row-major order: one strided copy; each cell's right-hand padding is
            # the tail of its (cell_w + pad) slot.
            slots = body[:, :, :cell_h, pad:].view(3, n_rows, cell_h, n_cols, cell_w + pad)
            slots[..., :cell_w].copy_(cells.view(n_rows, n_cols, 3, cell_h, cell_w).permute(2, 0, 3, 1, 4))
            continue
        for (r, k), cell in zip(positions, cells, strict=True):
            x0 = pad + k * (cell_w + pad)
            body[:, r, :cell_h, x0 : x0 + cell_w] = cell

    fg = rgb(text_color)
    x_of = [pad + k * (cell_w + pad) for k in range(n_cols)]
    strips: list[list[TextBox]] = []
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
    if strips:
        body[:, :, cell_h : cell_h + caption_h] = _strips(
            strips, width, caption_h, fs, bg, line_h, scale, canvas
        )
    if column_titles is not None:
        titles = [[TextBox(t, x_of[k], cell_w, fg, "center") for k, t in enumerate(column_titles)]]
        canvas[:, pad : pad + title_h] = _strips(titles, width, title_h, fs, bg, title_h, scale, canvas)[:, 0]
    return canvas, top, row_h


def _whole_factors(
    groups: list[_Group], cell: tuple[int, int], upscale: str, dtype: torch.dtype
) -> tuple[int, int] | None:
    """``(fh, fw)`` when every cell has one size that ``cell`` is a whole multiple of (uint8, nearest)."""
    if len(groups) != 1 or upscale != "nearest" or dtype != torch.uint8:
        return None
    h, w = groups[0][1].shape[-2:]
    if cell[0] % h or cell[1] % w:
        return None
    return cell[0] // h, cell[1] // w


def _full_grid(
    positions: list[tuple[int, int]], cells: Tensor, n_rows: int, n_cols: int, bg: tuple[int, int, int]
) -> Tensor:
    """``[R, K, 3, h, w]`` uint8: the cells at their positions, background where a row has no cell."""
    if len(positions) == n_rows * n_cols:
        return cells.view(n_rows, n_cols, *cells.shape[1:])
    grid = torch.empty((n_rows * n_cols, *cells.shape[1:]), dtype=cells.dtype, device=cells.device)
    grid.copy_(torch.tensor(bg, dtype=torch.uint8, device=cells.device).view(1, 3, 1, 1).expand_as(grid))
    index = torch.tensor([r * n_cols + k for r, k in positions], device=cells.device)
    grid.index_copy_(0, index, cells)
    return grid.view(n_rows, n_cols, *cells.shape[1:])


def _place_repeated(slots_area: Tensor, small: Tensor, factors: tuple[int, int], pad: int) -> None:
    """Copy ``[R, K, 3, h, w]`` cells into the canvas rows, each pixel repeated ``fh x fw`` (nearest upscale).

    ``slots_area`` is ``[3, R, h * fh, W - pad]``: the cell band of every row from the first cell's left
    edge. The columns are widened first (a contiguous repeat), then every row is copied ``fh`` times by one
    strided copy: the same pixels as ``F.interpolate(mode="nearest")`` in about a third of its time.
    """
    n_rows, n_cols, _, h, w = small.shape
    fh, fw = factors
    cell_w = w * fw
    wide = _repeat_columns(small, fw)
    slots = slots_area.view(3, n_rows, h * fh, n_cols, cell_w + pad)[..., :cell_w].unflatten(2, (h, fh))
    source = wide.permute(2, 0, 3, 1, 4)[:, :, :, None]  # [3, R, h, 1, K, cell_w]
    slots.copy_(source.expand(slots.shape))


# Repeating each byte k times is one multiply of the bytes widened to k bytes: v * 0x0101 is (v, v).
_BYTE_REPEATS = {2: (torch.uint16, 0x0101), 4: (torch.uint32, 0x01010101)}


def _repeat_columns(x: Tensor, factor: int) -> Tensor:
    """``x`` (uint8) with every pixel repeated ``factor`` times along the last dimension."""
    if factor == 1:
        return x
    wide = _BYTE_REPEATS.get(factor)
    if wide is not None:
        try:
            return (x.to(wide[0]) * wide[1]).view(torch.uint8)  # 10x faster than repeat_interleave
        except (RuntimeError, NotImplementedError):  # a build without unsigned arithmetic on this device
            pass
    return x.repeat_interleave(factor, dim=-1)


def _strips(
    strips: list[list[TextBox]],
    width: int,
    height: int,
    fs: int,
    bg: tuple[int, int, int],
    line_h: int,
    scale: float,
    like: Tensor,
) -> Tensor:
    """Text strips drawn on the host, as ``[3, S, height, width]`` in ``like``'s dtype and device."""
    drawn = torch.from_numpy(draw_strips(strips, width, height, fs, bg, line_height=line_h)).to(like.device)
    drawn = drawn.permute(3, 0, 1, 2)
    return drawn if like.dtype == torch.uint8 else drawn.to(like.dtype) * scale


def colorbar(
    width: int,
    cmap: str = "jet",
    *,
    label: str = "",
    low: str = "0",
    high: str = "1",
    font_size: int = 12,
    pad: int = 2,
    background: Color = (255, 255, 255),
    text_color: Color = (0, 0, 0),
) -> Tensor:
    """A horizontal colour bar: the colormap from 0 to 1 over ``width``, then ``low``, ``label``, ``high``.

    Returns uint8 ``[3, h, width]`` (on the CPU) to put under a grid of heatmaps, so a reader knows
    which colour is strong and which is weak.

    Example:
        >>> bar = colorbar(300, "jet", label="Grad-CAM, per-image max = 1", font_size=14)
        >>> bar.shape[0], bar.shape[2], bar.dtype
        (3, 300, torch.uint8)
    """
    from lit_explain.render.colors import colorize

    if width < 4 * pad + 2:
        raise ValueError(f"colorbar needs a width of at least {4 * pad + 2} px, got {width}")
    bar_h = max(6, font_size)
    strip_h = math.ceil(font_size * 1.6)
    ramp = torch.linspace(0.0, 1.0, width - 2 * pad).view(1, 1, 1, -1).expand(1, 1, bar_h, -1)
    bg = rgb(background)
    out = torch.tensor(bg, dtype=torch.uint8).view(3, 1, 1).repeat(1, pad + bar_h + strip_h, width)
    out[:, pad : pad + bar_h, pad : width - pad] = (colorize(ramp, cmap)[0] * 255).round().to(torch.uint8)
    fg = rgb(text_color)
    boxes = [
        TextBox(low, 0, width, fg, "left"),
        TextBox(label, 0, width, fg, "center"),
        TextBox(high, 0, width, fg, "right"),
    ]
    text = draw_strips([boxes], width, strip_h, font_size, bg)[0]
    out[:, pad + bar_h :] = torch.from_numpy(text).permute(2, 0, 1)
    return out


def panel_pages(
    rows: Sequence[Sequence[Tensor | None]] | Tensor,
    captions: Sequence[str] | Sequence[Sequence[str]] | None = None,
    column_titles: Sequence[str] | None = None,
    *,
    max_height: int = 1600,
    footer: Tensor | None = None,
    **grid_kwargs: object,
) -> list[Tensor]:
    """:func:`panel_grid` split into pages no taller than ``max_height`` px, each with the column titles.

    Every page repeats the column-title strip at its top and ends with ``footer`` (e.g. a
    :func:`colorbar` as wide as the grid), so a page read on its own is complete. A row is never cut.
    ``grid_kwargs`` are :func:`panel_grid`'s keyword arguments.

    Example:
        >>> pages = panel_pages(torch.rand(30, 3, 3, 64, 64), [f"row {i}" for i in range(30)],
        ...                     ["a", "b", "c"], max_height=1000)
        >>> len(pages), max(p.shape[1] for p in pages) <= 1000
        (5, True)
    """
    grid, top, row_h = _render(rows, captions, column_titles, **grid_kwargs)  # type: ignore[arg-type]
    n_rows = (grid.shape[1] - top) // row_h
    foot_h = 0 if footer is None else footer.shape[1]
    if footer is not None and (footer.shape[0] != 3 or footer.shape[2] != grid.shape[2]):
        raise ValueError(f"footer must be [3, h, {grid.shape[2]}], got {tuple(footer.shape)}")
    per_page = (max_height - top - foot_h) // row_h
    if per_page < 1:
        raise ValueError(
            f"max_height={max_height} px cannot hold one row ({top} + {row_h} + {foot_h} px); raise it"
        )
    header = grid[:, :top]
    pages = []
    for start in range(0, n_rows, per_page):
        body = grid[:, top + start * row_h : top + min(n_rows, start + per_page) * row_h]
        parts = [header, body] if footer is None else [header, body, footer.to(grid.device, grid.dtype)]
        pages.append(torch.cat(parts, dim=1))
    return pages
