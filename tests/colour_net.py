"""A hand-made shortcut model for the shortcut tests: it reads the shapes' cue colours, from a corner or the
whole image, so whether it "learned" a shortcut is known exactly."""

from __future__ import annotations

import torch
from torch import nn

from lit_explain.data.shapes import CUE_COLOURS


def corner_mask(size: int = 64, corner_only: bool = True) -> torch.Tensor:
    """The bottom-right 8x8 box where the shapes' ``corner="bottom_right"`` cue sits, or the whole image."""
    if not corner_only:
        return torch.ones(size, size)
    mask = torch.zeros(size, size)
    mask[-9:-1, -9:-1] = 1.0
    return mask


class ColourNet(nn.Module):
    """Nearest class colour (the shapes' cue colours), read through a 1x1 conv from the pixels ``mask`` keeps.

    With :func:`corner_mask` it reads the corner stamp only: an exact shortcut, whose LayerCAM at ``conv`` is
    non-zero only there. With the whole image as mask it reads every pixel: no shortcut.
    """

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        colours = (torch.tensor(CUE_COLOURS) / 255 - 0.5) / 0.25  # in the data module's normalisation
        self.conv = nn.Conv2d(3, len(colours), 1)
        with torch.no_grad():
            self.conv.weight.copy_(colours[:, :, None, None])
            self.conv.bias.copy_(-0.5 * (colours**2).sum(1))
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.conv(x) * self.mask).sum(dim=(-1, -2)) / self.mask.sum()
