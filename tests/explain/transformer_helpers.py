"""timm models for the transformer tests: random weights, small inputs, the reshape peers prescribe.

Every model is built with ``pretrained=False`` (nothing is downloaded) and a small image size so a
forward pass takes milliseconds. ``peer_reshape`` is pytorch-grad-cam's documented
``reshape_transform`` for each family (docs/vit_example, swinT_example): ViT-style tokens drop the
prefix tokens and fold the rest onto the patch grid; Swin's blocks already output ``[B, H, W, C]``
in timm 1.x, which the documented transform's transposes turn into ``[B, C, H, W]``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import timm
import torch
from torch import nn


@dataclass(frozen=True)
class Case:
    """A timm model at a small input size, the layer the family rule picks, and its token layout."""

    name: str
    size: tuple[int, int]
    layer: str
    kwargs: dict = field(default_factory=dict)
    prefix: int | None = None  # prefix tokens (None: not a token model)
    nhwc: bool = False


CASES: dict[str, Case] = {
    "vit": Case("vit_tiny_patch16_224", (64, 64), "blocks.11.norm1", {"img_size": 64}, prefix=1),
    "deit_distilled": Case(
        "deit_tiny_distilled_patch16_224", (64, 64), "blocks.11.norm1", {"img_size": 64}, prefix=2
    ),
    "dinov2_reg4": Case(
        "vit_small_patch14_reg4_dinov2", (56, 56), "blocks.11.norm1", {"img_size": 56}, prefix=5
    ),
    "swin": Case(
        "swin_tiny_patch4_window7_224", (96, 96), "layers.3.blocks.1.norm1", {"img_size": 96}, nhwc=True
    ),
    "convnext": Case("convnext_atto", (96, 96), "stages.3"),
    "vit_dynamic_nonsquare": Case(
        "vit_tiny_patch16_224", (48, 80), "blocks.11.norm1", {"dynamic_img_size": True}, prefix=1
    ),
}

_CACHE: dict[str, nn.Module] = {}


def make(key: str) -> nn.Module:
    """A fresh seeded model (two calls give identical weights), eval mode, 10 classes."""
    case = CASES[key]
    torch.manual_seed(0)
    return timm.create_model(case.name, pretrained=False, num_classes=10, **case.kwargs).eval()


def shared(key: str) -> nn.Module:
    """A model shared by tests that only read it."""
    if key not in _CACHE:
        _CACHE[key] = make(key)
    return _CACHE[key]


def images(key: str, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, *CASES[key].size, generator=torch.Generator().manual_seed(seed))


def peer_reshape(key: str, model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """pytorch-grad-cam's documented reshape_transform for this model (None for CNN outputs)."""
    case = CASES[key]
    if case.nhwc:

        def swin(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.transpose(2, 3).transpose(1, 2)  # [B, H, W, C] -> [B, C, H, W]

        return swin
    if case.prefix is None:
        return None
    grid = model.patch_embed.dynamic_feat_size(case.size)

    def vit(tensor: torch.Tensor) -> torch.Tensor:
        result = tensor[:, case.prefix :, :].reshape(tensor.size(0), grid[0], grid[1], tensor.size(2))
        return result.transpose(2, 3).transpose(1, 2)

    return vit


def fused_flags(model: nn.Module) -> list[tuple[str, bool]]:
    return [(n, bool(m.fused_attn)) for n, m in model.named_modules() if hasattr(m, "fused_attn")]
