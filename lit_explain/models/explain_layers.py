"""A model's default explanation layer(s), so recipes stay valid when only the backbone changes.

The rule, by family (names are dotted paths inside the plain network, ``ImageClassifier.net``):

- ViT / DeiT / DINOv2 / EVA, Swin, ConvNeXt and other timm stage networks: the explanation engine's
  family rule (:func:`lit_explain.explain.layers.family_layer`), e.g. ``blocks.11.norm1`` for ViT-Tiny,
  ``layers.3.blocks.1.norm1`` for Swin-T, ``stages.3`` for ConvNeXt.
- ResNets (torchvision or timm): ``layer4``; where ``layer4``'s map would be smaller than 4x4 at the
  model's input size (64 px shapes: 2x2), ``layer1`` and ``layer2`` fused (16x16 and 8x8): a 2x2 map cannot
  point at an object, and the shallow stages can (best with LayerCAM, whose authors fuse shallow layers for
  exactly this; see docs/benchmarks.md#demo-over-seeds).
- Anything else: the engine's automatic choice, the last module with a 4-D output before global pooling.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lit_explain.explain.hooks import eval_mode
from lit_explain.explain.layers import family_layer, resolve_layer

# Below this many cells on its shorter side, layer4's map is too coarse to point at an object.
MIN_MAP_SIDE = 4
# Input size assumed when the model's is unknown (ImageNet's).
DEFAULT_INPUT = (224, 224)


def default_explain_layers(
    net: nn.Module, in_channels: int = 3, input_size: Sequence[int] | None = None
) -> list[str]:
    """The layer name(s) inside ``net`` to explain when none is given; a list of several is fused.

    Args:
        net: the plain network (torchvision or timm).
        in_channels, input_size: the model's input (``(height, width)``; None assumes 224x224), for the
            probe that measures ResNet map sizes and for the engine's automatic choice.

    Example:
        >>> from torchvision.models import resnet18
        >>> default_explain_layers(resnet18(), 3, [224, 224]), default_explain_layers(resnet18(), 3, [64, 64])
        (['layer4'], ['layer1', 'layer2'])
    """
    family = family_layer(net)
    if family is not None:
        return [family]
    size = tuple(int(s) for s in (input_size or DEFAULT_INPUT))
    probe = torch.zeros(1, in_channels, *size, device=_device(net))
    names = dict(net.named_modules())
    if all(f"layer{i}" in names for i in (2, 3, 4)):
        shapes = _output_shapes(net, probe, ["layer4"])
        side = min(shapes["layer4"][-2:]) if len(shapes.get("layer4", ())) == 4 else 0
        return ["layer4"] if side >= MIN_MAP_SIDE else ["layer1", "layer2"]
    return [resolve_layer(net, None, probe)[0]]


def _device(net: nn.Module) -> torch.device:
    param = next(net.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _output_shapes(net: nn.Module, probe: Tensor, names: list[str]) -> dict[str, tuple[int, ...]]:
    """Output shapes of the named modules for one probe forward (eval mode restored, hooks removed)."""
    shapes: dict[str, tuple[int, ...]] = {}
    modules = dict(net.named_modules())

    def hook(name: str):
        def record(_module: nn.Module, _args: tuple, out: object) -> None:
            if isinstance(out, Tensor):
                shapes[name] = tuple(out.shape)

        return record

    handles = [modules[n].register_forward_hook(hook(n)) for n in names]
    try:
        with eval_mode(net), torch.no_grad():
            net(probe)
    finally:
        for handle in handles:
            handle.remove()
    return shapes
