"""Backbone factories: any torchvision classification model by name, with a new head, input channels,
an optional CIFAR stem and optional pretrained weights (torchvision's weights API or a local file)."""

from __future__ import annotations

import difflib
from pathlib import Path
from urllib.error import URLError
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from lit_explain.errors import ConfigError


def available_backbones() -> list[str]:
    """Names of torchvision's image classification models (``resnet18``, ``vgg16_bn``, ...)."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def _check_name(name: str) -> None:
    names = available_backbones()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"model.backbone={name!r} is not a torchvision classification model.{hint} "
            f"Valid choices: {', '.join(names)}"
        )


def _parent_and_attr(model: nn.Module, dotted: str) -> tuple[nn.Module, str]:
    parent_name, _, attr = dotted.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), attr


def classifier_head_name(model: nn.Module) -> str:
    """Dotted name of the final ``nn.Linear`` (``fc`` for ResNets, ``classifier.6`` for VGG, ...)."""
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ConfigError(f"{type(model).__name__} has no nn.Linear classifier head to replace")
    return linears[-1]


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Swap the final linear layer for a freshly initialised one with ``num_classes`` outputs."""
    name = classifier_head_name(model)
    parent, attr = _parent_and_attr(model, name)
    old: nn.Linear = getattr(parent, attr)
    setattr(parent, attr, nn.Linear(old.in_features, num_classes, bias=old.bias is not None))
    return model


def replace_input_channels(model: nn.Module, in_channels: int) -> nn.Module:
    """Make the first convolution take ``in_channels``; pretrained RGB filters are averaged, then repeated."""
    name, conv = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    if conv.in_channels == in_channels:
        return model
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        conv.bias is not None,
        conv.padding_mode,
    )
    with torch.no_grad():
        # Keep pretrained filters meaningful: the mean over RGB responds to intensity like the original did.
        mean_filter = conv.weight.mean(dim=1, keepdim=True)
        new.weight.copy_(mean_filter.repeat(1, in_channels, 1, 1) * (conv.in_channels / in_channels))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    parent, attr = _parent_and_attr(model, name)
    setattr(parent, attr, new)
    return model


def apply_cifar_stem(model: nn.Module) -> nn.Module:
    """The CIFAR ResNet stem: a 3x3 stride-1 first convolution and no max-pool, for 32x32 inputs."""
    if not isinstance(model, torchvision.models.ResNet):
        raise ConfigError(f"model.cifar_stem applies to ResNets only, not {type(model).__name__}")
    old = model.conv1
    model.conv1 = nn.Conv2d(old.in_channels, old.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def load_weights_file(model: nn.Module, path: str | Path) -> None:
    """Load a state dict saved with ``torch.save`` into ``model`` (``weights_only=True``), with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"model.weights_path={str(path)!r} does not exist or is not a file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files, non-torch files
        raise ConfigError(f"could not read weights file {str(path)!r}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if isinstance(state, dict) and "model_state_dict" in state:
        state = state["model_state_dict"]
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError(
            f"weights file {str(path)!r} does not fit backbone {type(model).__name__}: {str(exc)[:800]}"
        ) from exc


def build_backbone(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    cifar_stem: bool = False,
    weights: str | None = None,
    weights_path: str | None = None,
) -> nn.Module:
    """Build a torchvision classifier ready for ``num_classes``.

    Args:
        name: a torchvision model name (see :func:`available_backbones`).
        num_classes: outputs of the new head.
        in_channels: input channels (1 for grayscale models).
        cifar_stem: ResNets only: 3x3 stride-1 first convolution, no max-pool.
        weights: a torchvision weights name such as ``"IMAGENET1K_V1"`` or ``"DEFAULT"`` (downloaded into
            ``$TORCH_HOME/hub/checkpoints`` when online, read from there when cached), or None.
        weights_path: a local file with the backbone's original state dict (e.g. ImageNet, 1000 classes);
            used instead of ``weights`` when both are given.

    Example:
        >>> net = build_backbone("resnet34", num_classes=100, cifar_stem=True)
        >>> net(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 100])
    """
    _check_name(name)
    if num_classes < 1:
        raise ConfigError(f"model.num_classes must be >= 1, got {num_classes}")
    if in_channels < 1:
        raise ConfigError(f"model.in_channels must be >= 1, got {in_channels}")
    if weights_path is not None:
        model = torchvision.models.get_model(name, weights=None)
        load_weights_file(model, weights_path)
        replace_head(model, num_classes)
    elif weights is not None:
        try:
            weights_enum = torchvision.models.get_model_weights(name)
            chosen = weights_enum[weights] if weights != "DEFAULT" else weights_enum.DEFAULT
        except KeyError:
            options = ", ".join(["DEFAULT", *weights_enum.__members__])
            raise ConfigError(
                f"model.weights={weights!r} is not available for {name}; choose one of {options}"
            ) from None
        model = _download_or_load(name, chosen)
        replace_head(model, num_classes)
    else:
        model = torchvision.models.get_model(name, num_classes=num_classes)
    if in_channels != 3:
        replace_input_channels(model, in_channels)
    if cifar_stem:
        apply_cifar_stem(model)
    return model


def _download_or_load(name: str, weights: torchvision.models.WeightsEnum) -> torch.nn.Module:
    """Build ``name`` with ``weights``; a failed download names the file to place in the cache instead."""
    try:
        return torchvision.models.get_model(name, weights=weights)
    except (URLError, OSError) as err:
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
        raise ConfigError(
            f"could not download the {weights} weights for {name} ({err}). Without internet, copy "
            f"{Path(urlparse(weights.url).path).name} (from {weights.url}) to {cache} "
            "(set TORCH_HOME to choose the cache folder), or pass model.weights_path=<file>."
        ) from err
