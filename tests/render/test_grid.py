from __future__ import annotations

import math

import pytest
import torch

from lit_explain.render import RIGHT_COLOR, WRONG_COLOR, colorbar, panel_grid, panel_pages

WHITE = torch.tensor([255, 255, 255], dtype=torch.uint8).view(3, 1, 1)


def _layout(cell: int, rows: int, cols: int, pad: int, strip: int, titles: bool) -> tuple[int, int]:
    height = pad + (strip if titles else 0) + rows * (cell + strip + pad)
    width = cols * cell + (cols + 1) * pad
    return height, width


def test_grid_size_arithmetic_and_upscaling(device: torch.device) -> None:
    cells = torch.rand(3, 4, 3, 64, 64, device=device)
    out = panel_grid(cells, captions=["a", "b", "c"], column_titles=list("wxyz"), caption_height=20, pad=2)
    assert out.dtype == torch.uint8 and out.device == cells.device
    # 64 px cells are upscaled x2 to reach min_cell=128.
    assert out.shape == (3, *_layout(128, 3, 4, 2, 20, True))
    # Cell content lands where the arithmetic says (nearest upscaling keeps pixels exact).
    top = 2 + 20
    expected = (cells[1, 2].repeat_interleave(2, 1).repeat_interleave(2, 2) * 255).round().to(torch.uint8)
    y0, x0 = top + 1 * (128 + 20 + 2), 2 + 2 * (128 + 2)
    assert torch.equal(out[:, y0 : y0 + 128, x0 : x0 + 128], expected)


def test_grid_without_captions_or_upscaling_is_pure_tensor_layout() -> None:
    cells = torch.rand(2, 3, 3, 10, 12)
    out = panel_grid(cells, pad=1, min_cell=0, dtype=torch.float32)
    assert out.shape == (3, 1 + 2 * (10 + 1), 3 * 12 + 4 * 1)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out[:, 1:11, 1:13], cells[0, 0])
    assert torch.all(out[:, 0] == 1.0)  # white padding row


def test_caption_pixels_are_drawn_and_coloured() -> None:
    rows = [[torch.zeros(3, 64, 64), torch.zeros(1, 64, 64)] for _ in range(2)]
    out = panel_grid(
        rows,
        ["true: circle | pred: ring (0.83)", "true: ring | pred: ring (0.97)"],
        caption_colors=[False, True],
    )
    strip_h = (out.shape[1] - 2) // 2 - 128 - 2
    for r, color in enumerate([WRONG_COLOR, RIGHT_COLOR]):
        y0 = 2 + r * (128 + strip_h + 2) + 128
        strip = out[:, y0 : y0 + strip_h]
        ink = (strip != WHITE).any(dim=0)
        assert ink.sum() > 100, "caption text should produce non-background pixels"
        # The darkest-ink pixels carry the caption colour (text is anti-aliased against white).
        pix = strip[:, ink]
        dominant = pix[:, (255 * 3 - pix.int().sum(0)).argmax()]
        target = torch.tensor(color, dtype=torch.uint8)
        assert (dominant.int() - target.int()).abs().max() <= 40


def test_caption_colors_from_bool_tensors() -> None:
    rows = torch.zeros(2, 2, 3, 16, 16)
    by_row = panel_grid(rows, ["x" * 5, "y" * 5], caption_colors=torch.tensor([True, False]), min_cell=64)
    as_list = panel_grid(rows, ["x" * 5, "y" * 5], caption_colors=[True, False], min_cell=64)
    assert torch.equal(by_row, as_list)
    per_cell = [["a", "b"], ["c", "d"]]
    verdicts = torch.tensor([[True, False], [False, True]])
    out = panel_grid(rows, per_cell, caption_colors=verdicts, min_cell=64)
    assert torch.equal(out, panel_grid(rows, per_cell, caption_colors=verdicts.tolist(), min_cell=64))
    assert not torch.equal(out, panel_grid(rows, per_cell, min_cell=64))


def test_per_cell_captions_column_titles_and_truncation() -> None:
    rows = [[torch.rand(3, 32, 32)] * 2]
    long = "an extremely long caption that cannot possibly fit under one small cell"
    out = panel_grid(rows, [["short", long]], column_titles=["original", "CAM"], font_size=12)
    h, w = out.shape[1:]
    assert w == 2 * 128 + 3 * 2
    title = out[:, 2:20]
    assert (title != WHITE).any()
    # Truncated text stays inside its own cell: the padding column between cells stays blank.
    caption = out[:, h - 2 - 20 : h - 2]  # 12 px font -> ceil(1.6 * 12) px strip
    assert (caption[:, :, 128 + 2 : 128 + 4] == WHITE).all()
    assert (caption[:, :, 132:] != WHITE).any()


def test_ragged_rows_mixed_sizes_dtypes_and_grad() -> None:
    rows = [
        [torch.rand(3, 32, 32, requires_grad=True), torch.rand(1, 16, 16, dtype=torch.float64)],
        [(torch.rand(3, 32, 32) * 255).to(torch.uint8)],
        [None, torch.rand(32, 32, dtype=torch.float16)],
    ]
    out = panel_grid(rows, ["a", "b", "c"], upscale="bilinear", min_cell=64, caption_height=16)
    assert out.shape == (3, *_layout(64, 3, 2, 2, 16, False))
    # The missing cells (row 1 col 1, row 2 col 0) are background.
    y0 = 2 + 64 + 16 + 2
    assert (out[:, y0 : y0 + 64, 2 + 64 + 2 : 2 + 128 + 2] == 255).all()


def test_grid_validation() -> None:
    cells = torch.rand(2, 2, 3, 8, 8)
    with pytest.raises(ValueError, match="2 rows"):
        panel_grid(cells, ["only one"])
    with pytest.raises(ValueError, match="column titles"):
        panel_grid(cells, column_titles=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"\[R, K, C, H, W\]"):
        panel_grid(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="at least one cell"):
        panel_grid([[None]])


def test_multi_line_captions_make_every_caption_strip_taller() -> None:
    cells = torch.rand(2, 2, 3, 16, 16)
    one = panel_grid(cells, ["a", "b"], min_cell=64, font_size=12, pad=2)
    two = panel_grid(cells, ["a\nsecond line", "b"], min_cell=64, font_size=12, pad=2)
    # Each of the two rows gains one line of 1.3 font sizes.
    assert two.shape[1] - one.shape[1] == 2 * math.ceil(12 * 1.3)
    strip = math.ceil(12 * 1.6)
    row0 = two[:, 2 + 64 : 2 + 64 + strip + math.ceil(12 * 1.3)]
    second = row0[:, strip:]
    assert (second != WHITE).any(), "the second line is drawn below the first"


def test_pages_repeat_the_titles_end_with_the_footer_and_never_cut_a_row() -> None:
    cells = torch.rand(30, 3, 3, 64, 64)
    captions = [f"row {i}\nline two" for i in range(30)]
    whole = panel_grid(cells, captions, ["a", "b", "c"], font_size=14)
    footer = colorbar(whole.shape[2], "jet", label="Grad-CAM", font_size=14)
    pages = panel_pages(cells, captions, ["a", "b", "c"], max_height=920, footer=footer, font_size=14)
    assert all(p.shape[1] <= 920 and p.shape[2] == whole.shape[2] for p in pages)
    title_h = 2 + math.ceil(14 * 1.6)
    row_h = (whole.shape[1] - title_h) // 30
    per_page = (920 - title_h - footer.shape[1]) // row_h
    assert len(pages) == math.ceil(30 / per_page)
    for n, page in enumerate(pages):
        assert torch.equal(page[:, :title_h], whole[:, :title_h])
        assert torch.equal(page[:, -footer.shape[1] :], footer)
        rows = page[:, title_h : page.shape[1] - footer.shape[1]]
        start = title_h + n * per_page * row_h
        assert torch.equal(rows, whole[:, start : start + rows.shape[1]])
    with pytest.raises(ValueError, match="cannot hold one row"):
        panel_pages(cells, captions, ["a", "b", "c"], max_height=100, font_size=14)


def test_colorbar_runs_from_the_low_to_the_high_colour_with_labels() -> None:
    bar = colorbar(200, "jet", label="CAM", font_size=12)
    assert bar.dtype == torch.uint8 and bar.shape[2] == 200
    ramp = bar[:, 2 + 6].int()  # a row through the bar
    assert ramp[2, 3] > ramp[0, 3] and ramp[0, -4] > ramp[2, -4]  # jet: blue on the left, red on the right
    labels = bar[:, 2 + 12 :]
    assert (labels != WHITE).any()


@pytest.mark.parametrize("factor", [1, 2, 3, 4, 5])
def test_cells_are_upscaled_by_repeating_pixels_as_nearest_interpolation_does(factor: int) -> None:
    # 2 and 4 repeat bytes by one multiply of wider integers; the others by repeat_interleave.
    from lit_explain.render.grid import _repeat_columns

    cells = torch.randint(0, 256, (2, 3, 3, 5, 7), dtype=torch.uint8)
    assert torch.equal(_repeat_columns(cells, factor), cells.repeat_interleave(factor, dim=-1))
    # Reference: every cell upscaled by F.interpolate first, then laid out without upscaling.
    big = torch.nn.functional.interpolate(cells.flatten(0, 1), scale_factor=factor, mode="nearest")
    big = big.view(2, 3, 3, 5 * factor, 7 * factor)
    rows: list[list[torch.Tensor | None]] = [list(row) for row in cells]
    assert torch.equal(panel_grid(rows, min_cell=5 * factor, pad=1), panel_grid(big, min_cell=0, pad=1))
    # A blank cell (None) is left background, as a white cell would be.
    rows[1][1] = None
    big[1, 1] = 255
    assert torch.equal(panel_grid(rows, min_cell=5 * factor, pad=1), panel_grid(big, min_cell=0, pad=1))
