"""Tensors -> pictures.

Batched, device-agnostic tensor rendering for the training callbacks (``SummaryWriter.add_image(s)``),
the checkpoint audit (PNG files, HTML report) and the explain service (PNG bytes). matplotlib is
only used for the summary figures (and, once per colormap, to sample its lookup table).

Modules:
    images   denormalize, to_rgb, to_uint8, guided_to_image
    colors   colorize (tensor colormap lookup), overlay, colormap_lut
    grid     panel_grid (captioned grids; text drawn with PIL on thin host strips), panel_pages (the
             same split into pages of bounded height), colorbar
    png      encode_png, save_png (atomic, no-clobber)
    figures  confusion-matrix / per-class accuracy / confused-pairs figures (matplotlib, for files and
             reports), figure_to_tensor/png
    charts   confusion_matrix_image / per_class_accuracy_images (the card charts the callbacks log every
             epoch, drawn as pixels to the card figures' layout)
    card     what stays readable on TensorBoard's Images card (320 px of picture at the narrowest)
    tables   confused_pairs_table, name_pairs, markdown_table

Example:
    >>> from lit_explain.render import denormalize, overlay, panel_grid, encode_png
    >>> images = denormalize(batch, mean, std)                      # doctest: +SKIP
    >>> cams = overlay(images, result.maps, alpha=0.5)             # doctest: +SKIP
    >>> grid = panel_grid(torch.stack([images, cams], 1), captions)  # doctest: +SKIP
    >>> writer.add_image("val/cams", grid, step)                   # doctest: +SKIP
    >>> png = encode_png(grid)                                     # doctest: +SKIP
"""

from lit_explain.render.charts import confusion_matrix_image, per_class_accuracy_images
from lit_explain.render.colors import LUT_SIZE, colorize, colormap_lut, overlay
from lit_explain.render.figures import (
    ANNOTATE_MAX_CLASSES,
    confused_pairs_figure,
    confusion_matrix_figure,
    figure_to_png,
    figure_to_tensor,
    per_class_accuracy_figure,
    per_class_accuracy_pages,
)
from lit_explain.render.grid import RIGHT_COLOR, WRONG_COLOR, CaptionColor, colorbar, panel_grid, panel_pages
from lit_explain.render.images import denormalize, guided_to_image, to_rgb, to_uint8
from lit_explain.render.png import encode_png, save_png, to_hwc_uint8
from lit_explain.render.tables import ConfusedPair, confused_pairs_table, markdown_table, name_pairs

__all__ = [
    "ANNOTATE_MAX_CLASSES",
    "LUT_SIZE",
    "RIGHT_COLOR",
    "WRONG_COLOR",
    "CaptionColor",
    "ConfusedPair",
    "colorbar",
    "colorize",
    "colormap_lut",
    "confused_pairs_figure",
    "confused_pairs_table",
    "confusion_matrix_figure",
    "confusion_matrix_image",
    "denormalize",
    "encode_png",
    "figure_to_png",
    "figure_to_tensor",
    "guided_to_image",
    "markdown_table",
    "name_pairs",
    "overlay",
    "panel_grid",
    "panel_pages",
    "per_class_accuracy_figure",
    "per_class_accuracy_images",
    "per_class_accuracy_pages",
    "save_png",
    "to_hwc_uint8",
    "to_rgb",
    "to_uint8",
]
