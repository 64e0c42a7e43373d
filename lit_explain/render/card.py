"""TensorBoard's Images card: how wide a logged picture is shown, and what stays readable there.

TensorBoard lays image cards out at least 335 px wide (its card grid is
``repeat(auto-fill, minmax(335px, 1fr))``) and shrinks a picture to the card: about 320 px of picture at
the narrowest. Every picture the callbacks log keeps its captions and headers at least ``MIN_TEXT_PX``
tall there, and is at most ``MAX_PAGE_PX`` tall (taller content is split into pages).
"""

from __future__ import annotations

CARD_IMAGE_PX = 320
MIN_TEXT_PX = 11
MAX_PAGE_PX = 1600

# Headroom over the exact minimum, so rounding in the renderer never dips a glyph under MIN_TEXT_PX.
_MARGIN = 1.05


def card_font_pt(width_in: float) -> float:
    """The font size (points) whose text stays ``MIN_TEXT_PX`` tall when a ``width_in``-inch figure is shown
    ``CARD_IMAGE_PX`` wide; independent of the dpi it is rasterised at.

    Example:
        >>> round(card_font_pt(5.0), 1)
        13.0
    """
    return MIN_TEXT_PX * 72.0 * width_in / CARD_IMAGE_PX * _MARGIN


def shown_text_px(font_pt: float, dpi: float, picture_width_px: float) -> float:
    """How tall ``font_pt`` text rasterised at ``dpi`` looks once TensorBoard shrinks the picture to its card.

    Example:
        >>> round(shown_text_px(13.0, 100, 500), 1)
        11.6
    """
    return font_pt * dpi / 72.0 * CARD_IMAGE_PX / max(picture_width_px, CARD_IMAGE_PX)
