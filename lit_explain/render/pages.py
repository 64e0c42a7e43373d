"""Explained samples as captioned pages: image | CAM predicted | CAM true | Guided Grad-CAM, one row each.

Sized so every page is readable at TensorBoard's default card size (:mod:`lit_explain.render.card`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from lit_explain.render.card import CARD_IMAGE_PX, MAX_PAGE_PX, MIN_TEXT_PX
from lit_explain.render.colors import overlay
from lit_explain.render.grid import colorbar, panel_pages
from lit_explain.render.images import denormalize, guided_to_image, to_rgb

MAX_CELL_PX = 160
PAD = 2
TEXT_HEIGHT_RATIO = 0.9
METHOD_LABELS = {
    "gradcam": "Grad-CAM",
    "gradcam++": "Grad-CAM++",
    "xgradcam": "XGrad-CAM",
    "hirescam": "HiResCAM",
    "layercam": "LayerCAM",
    "eigencam": "Eigen-CAM",
    "scorecam": "Score-CAM",
    "rollout": "Rollout",
    "gradient_rollout": "Grad. rollout",
}


def display_images(images: Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> Tensor:
    """Model-space images -> ``[0, 1]`` RGB; per-image min-max when the normalisation is unknown.

    Example:
        >>> import torch
        >>> display_images(torch.zeros(1, 3, 4, 4), [0.5] * 3, [0.25] * 3).unique().tolist()
        [0.5]
    """
    x = images.detach().float()
    if mean is not None and std is not None:
        return to_rgb(denormalize(x, mean, std))
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    return to_rgb((x - lo) / (hi - lo).clamp_min(1e-12))


def render_pages(
    images01: Tensor,
    pred_maps: Tensor,
    true_maps: Tensor,
    guided: Tensor | None,
    captions: Sequence[str],
    correct: Tensor,
    method: str = "gradcam",
    alpha: float = 0.5,
    cmap: str = "jet",
    min_cell: int = 128,
) -> list[Tensor]:
    """Rows of image | CAM predicted | CAM true (misclassified rows only) | Guided Grad-CAM, as pages.

    Each page is uint8 ``[3, H, W]`` with ``H <= MAX_PAGE_PX``, repeats the column titles and ends with a
    colour bar, and its text is at least ``MIN_TEXT_PX`` tall when TensorBoard shows the page at its
    narrowest card width (``CARD_IMAGE_PX``). The true-class column appears only when some row is
    misclassified, and then only in those rows. Images larger than ``MAX_CELL_PX`` are shown downscaled
    (TensorBoard would shrink them to the card anyway).

    Example:
        >>> import torch
        >>> maps = torch.rand(2, 1, 32, 32)
        >>> pages = render_pages(torch.rand(2, 3, 32, 32), maps, maps, None, ["a", "b"], torch.tensor([True, True]))
        >>> pages[0].dtype, pages[0].shape[0]
        (torch.uint8, 3)
    """
    device = pred_maps.device
    images01 = _fit_cells(images01.to(device))
    pred_maps, true_maps = _fit_cells(pred_maps), _fit_cells(true_maps)
    wrong = (~correct.to(device).bool()).tolist()
    pred = overlay(images01, pred_maps, alpha=alpha, cmap=cmap)
    true = overlay(images01, true_maps, alpha=alpha, cmap=cmap) if any(wrong) else None
    guided_img = _fit_cells(guided_to_image(guided)) if guided is not None else None
    label = METHOD_LABELS.get(method, method)
    # Short titles fit a cell at the readable font size; the colour bar names the method.
    titles = ["image", "predicted"]
    if true is not None:
        titles.append("true class")
    if guided_img is not None:
        titles.append("guided")
    rows = []
    for i in range(images01.shape[0]):
        row = [images01[i], pred[i]]
        if true is not None:
            row.append(true[i] if wrong[i] else None)
        if guided_img is not None:
            row.append(guided_img[i])
        rows.append(row)
    cell = _cell_px(tuple(images01.shape[-2:]), min_cell)
    width = len(titles) * cell[1] + (len(titles) + 1) * PAD
    font_px = readable_font_px(width)
    footer = colorbar(width, cmap, label=f"{label} (per-map peak = 1)", font_size=font_px)
    return panel_pages(
        rows,
        list(captions),
        titles,
        max_height=MAX_PAGE_PX,
        footer=footer,
        font_size=font_px,
        caption_colors=correct.cpu(),
        min_cell=min_cell,
        pad=PAD,
    )


def readable_font_px(width: int) -> int:
    """The font size that stays ``MIN_TEXT_PX`` tall when a ``width``-px picture is shown ``CARD_IMAGE_PX`` wide.

    Example:
        >>> readable_font_px(320), readable_font_px(394), readable_font_px(640)
        (13, 16, 25)
    """
    # PIL's text is about 0.9 of the font size from ascender to descender: round up past it.
    return max(12, math.ceil(MIN_TEXT_PX * max(width, CARD_IMAGE_PX) / CARD_IMAGE_PX / TEXT_HEIGHT_RATIO))


def page_tags(tag: str, n_pages: int) -> list[str]:
    """``tag/page_0``, ``tag/page_1``, ... (zero-padded when there are ten or more pages, so they sort).

    Example:
        >>> page_tags("explain/probes", 3)
        ['explain/probes/page_0', 'explain/probes/page_1', 'explain/probes/page_2']
    """
    digits = len(str(n_pages - 1))
    return [f"{tag}/page_{i:0{digits}d}" for i in range(n_pages)]


def _cell_px(size: tuple[int, int], min_cell: int) -> tuple[int, int]:
    """A grid cell's (height, width) for images of ``size``, as panel_grid upscales them (nearest)."""
    short = min(size)
    factor = math.ceil(min_cell / short) if 0 < short < min_cell else 1
    return size[0] * factor, size[1] * factor


def _fit_cells(x: Tensor) -> Tensor:
    """Downscale ``[B, C, H, W]`` so the short side is at most ``MAX_CELL_PX`` (antialiased)."""
    short = min(x.shape[-2:])
    if short <= MAX_CELL_PX:
        return x
    size = [round(s * MAX_CELL_PX / short) for s in x.shape[-2:]]
    return F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
