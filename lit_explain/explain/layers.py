"""Find the layer to explain: by dotted name, by module, or automatically.

A layer is named the way ``model.named_modules()`` names it ("layer4", "layer4.1.conv2",
"features.29"). Wrapped models (``nn.DataParallel``, ``DistributedDataParallel``) are unwrapped first,
and names are accepted with or without their ``module.`` prefix.
"""

from __future__ import annotations

import difflib
import weakref
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lit_explain.compat import child_items
from lit_explain.errors import ConfigError
from lit_explain.explain._state import eval_mode, unwrap_model

__all__ = [
    "LayerNotFoundError",
    "LayerSpec",
    "family_layer",
    "resolve_layer",
    "resolve_layers",
    "unwrap_model",
]

LayerSpec = str | nn.Module | None
"""A layer as the public API accepts it: a dotted name, the module itself, or None for automatic."""

_GLOBAL_POOLS: tuple[type[nn.Module], ...] = (
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveMaxPool1d,
)
_CONVISH: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.Sequential)

# Automatic layer choice costs a probe forward; remember it per model and input shape.
_AUTO_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple, str]] = weakref.WeakKeyDictionary()


class LayerNotFoundError(ConfigError):
    """The requested layer does not exist in the model; the message lists the names that do.

    A :class:`~lit_explain.errors.ConfigError` (so a ``ValueError``): the CLIs report it without a traceback.
    """


def resolve_layer(
    model: nn.Module, layer: LayerSpec = None, images: Tensor | None = None
) -> tuple[str, nn.Module]:
    """Resolve one layer to ``(name, module)``.

    Args:
        model: the classifier, possibly wrapped in DataParallel / DistributedDataParallel.
        layer: a dotted name as in ``model.named_modules()``, a module of ``model``, or None for
            the automatic choice: the family rule of :func:`family_layer` when the model (or a
            module inside it, such as a Lightning module's backbone) is a recognised transformer
            or stage network; otherwise the last module with a 4-D output before global pooling,
            found with a one-image probe forward of ``images`` and cached per model and input shape
            (torchvision ResNets: ``layer4``; VGG, DenseNet, MobileNet, EfficientNet: ``features``).
        images: a batch ``[B, C, H, W]``; needed only when ``layer`` is None and no family rule applies.

    Raises:
        LayerNotFoundError: the name or module is not part of the model; the message lists close
            matches and the convolution-like candidates.

    Example:
        >>> from torchvision.models import resnet18
        >>> resolve_layer(resnet18(), "layer4")[0]
        'layer4'
    """
    net = unwrap_model(model)
    if layer is None:
        family = family_layer(net)
        if family is not None:
            return family, dict(net.named_modules())[family]
        if images is None:
            raise ValueError("layer=None picks the layer with a probe forward, so it needs the images")
        return _auto_layer(net, images)
    if isinstance(layer, nn.Module):
        for name, module in net.named_modules():
            if module is layer:
                return name, module
        raise LayerNotFoundError(
            f"the given {type(layer).__name__} module is not part of {type(net).__name__}; "
            + _candidates_hint(net, type(layer).__name__.lower())
        )
    if isinstance(layer, str):
        return _by_name(net, layer, wrapped=net is not model)
    raise TypeError(f"layer must be a name, a module or None, not {type(layer).__name__}")


def resolve_layers(
    model: nn.Module, layers: LayerSpec | Sequence[str | nn.Module], images: Tensor | None = None
) -> list[tuple[str, nn.Module]]:
    """Resolve one layer or a list of layers to a list of ``(name, module)`` (see :func:`resolve_layer`).

    Example:
        >>> from torchvision.models import resnet18
        >>> [name for name, _ in resolve_layers(resnet18(), ["layer3", "layer4"])]
        ['layer3', 'layer4']
    """
    if isinstance(layers, (list, tuple)):
        if not layers:
            raise ValueError("the list of layers is empty")
        return [resolve_layer(model, spec, images) for spec in layers]
    return [resolve_layer(model, layers, images)]


def family_layer(model: nn.Module) -> str | None:
    """The layer ``layer=None`` picks by model family, or None when no family rule applies.

    The outermost module of ``model`` that matches a rule decides (so a classifier wrapping a timm
    backbone as ``net`` gets ``net.blocks.11.norm1``):

    - ViT, DeiT, DINOv2, EVA (a ``patch_embed`` and ``blocks`` whose last has ``norm1`` and
      ``attn``): the last block's ``norm1``, the input of the last attention. Not the last block's
      output nor the final ``norm``: after them the head reads only the class token, so the
      gradient on every patch token is zero (:class:`~lit_explain.explain.layouts.ZeroGradientError`).
    - Swin (a ``patch_embed`` and ``layers`` of stages with ``blocks``): the last stage's last
      block's ``norm1`` (channels-last, as pytorch-grad-cam's Swin example).
    - torchvision ViT (``conv_proj`` and ``encoder.layers``): the last encoder layer's ``ln_1``.
    - ConvNeXt and other timm stage networks (a ``stem`` and ``stages``): the last stage.

    Example:
        >>> import timm
        >>> family_layer(timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32))
        'blocks.11.norm1'
    """
    for prefix, module in model.named_modules():
        rule = _family_rule(module)
        if rule is not None:
            return f"{prefix}.{rule}" if prefix else rule
    return None


def _family_rule(module: nn.Module) -> str | None:
    def last(seq: object) -> tuple[str, nn.Module] | None:
        if isinstance(seq, (nn.Sequential, nn.ModuleList)) and len(seq) > 0:
            return next(reversed(child_items(seq)))  # type: ignore[return-value]
        return None

    if hasattr(module, "patch_embed"):
        blocks = last(getattr(module, "blocks", None))
        if blocks is not None and hasattr(blocks[1], "norm1") and hasattr(blocks[1], "attn"):
            return f"blocks.{blocks[0]}.norm1"
        stage = last(getattr(module, "layers", None))
        inner = last(getattr(stage[1], "blocks", None)) if stage is not None else None
        if stage is not None and inner is not None and hasattr(inner[1], "norm1"):
            return f"layers.{stage[0]}.blocks.{inner[0]}.norm1"
    encoder = getattr(module, "encoder", None)
    if hasattr(module, "conv_proj") and encoder is not None:
        layer = last(getattr(encoder, "layers", None))
        if layer is not None and hasattr(layer[1], "ln_1"):
            return f"encoder.layers.{layer[0]}.ln_1"
    stages = last(getattr(module, "stages", None))
    if stages is not None and hasattr(module, "stem"):
        return f"stages.{stages[0]}"
    return None


def _by_name(net: nn.Module, name: str, wrapped: bool) -> tuple[str, nn.Module]:
    modules = dict(net.named_modules())
    # Names copied from a wrapped model's state_dict carry one "module." per wrapper.
    stripped = name
    while wrapped and stripped.startswith("module.") and stripped not in modules:
        stripped = stripped[len("module.") :]
    if stripped in modules and stripped != "":
        return stripped, modules[stripped]
    raise LayerNotFoundError(
        f"{type(net).__name__} has no layer named {name!r}. " + _candidates_hint(net, stripped)
    )


def _candidates_hint(net: nn.Module, name: str) -> str:
    names = [n for n, _ in net.named_modules() if n]
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    convish = [n for n, m in net.named_modules() if n and isinstance(m, _CONVISH) and n not in close]
    top = [n for n, _ in net.named_children() if n not in close]
    parts = []
    if close:
        parts.append("Close matches: " + ", ".join(close) + ".")
    family = family_layer(net)
    if family is not None:
        parts.append(f"layer=None picks {family!r} for this model.")
    parts.append("Top-level layers: " + (", ".join(top) or "(none)") + ".")
    if convish:
        parts.append("Last convolution-like layers: " + ", ".join(convish[-8:]) + ".")
    return " ".join(parts)


def _auto_layer(net: nn.Module, images: Tensor) -> tuple[str, nn.Module]:
    key = (tuple(images.shape[1:]), images.dtype, images.device.type)
    cached = _AUTO_CACHE.get(net, {}).get(key)
    modules = dict(net.named_modules())
    if cached is not None and cached in modules:
        return cached, modules[cached]
    name = _probe_last_spatial_layer(net, images[:1])
    _AUTO_CACHE.setdefault(net, {})[key] = name
    return name, modules[name]


def _probe_last_spatial_layer(net: nn.Module, probe: Tensor) -> str:
    """Run one image through ``net`` and return the last 4-D-output module before the last global pool.

    Completion order decides: a container such as ResNet's ``layer4`` finishes after its children, so
    the whole stage is preferred over its last conv; a container that wraps the pooling itself (a head
    ``Sequential(pool, flatten, fc)``) finishes after the pool and is excluded.
    """
    events: list[tuple[str, bool]] = []  # (name, is_global_pool) for each module with a 4-D output

    def make_hook(name: str, module: nn.Module):
        def hook(_m: nn.Module, args: tuple, out: object) -> None:
            if isinstance(out, Tensor) and out.ndim == 4:
                events.append((name, _is_global_pool(module, args, out)))

        return hook

    handles = [m.register_forward_hook(make_hook(n, m)) for n, m in net.named_modules() if n]
    try:
        with eval_mode(net), torch.no_grad():
            net(probe)
    finally:
        for handle in handles:
            handle.remove()
    pools = [i for i, (_, is_pool) in enumerate(events) if is_pool]
    end = pools[-1] if pools else len(events)
    candidates = [name for name, is_pool in events[:end] if not is_pool]
    if not candidates:
        raise LayerNotFoundError(
            f"found no module with a 4-D output before global pooling in {type(net).__name__}; pass layer=. "
            + _candidates_hint(net, "")
        )
    return candidates[-1]


def _is_global_pool(module: nn.Module, args: tuple, out: Tensor) -> bool:
    if isinstance(module, _GLOBAL_POOLS):
        return True
    # A fixed-kernel pool that reduces a spatial map to 1x1 (e.g. AvgPool2d(7)) is a global pool too.
    if "pool" in type(module).__name__.lower() and out.shape[-2:] == (1, 1):
        x = args[0] if args else None
        return isinstance(x, Tensor) and x.ndim == 4 and x.shape[-2] * x.shape[-1] > 1
    return False
