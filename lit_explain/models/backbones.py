"""Backbone factories: any torchvision classification model by name, with a new head, input channels,
an optional CIFAR stem and optional pretrained weights (torchvision's weights API or a local file), and
any timm model as ``timm:NAME`` (see :mod:`lit_explain.models.timm_backbones`)."""

from __future__ import annotations

import difflib
import pickle
from pathlib import Path
from typing import Any
from urllib.error import URLError
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from lit_explain.errors import ConfigError
from lit_explain.models.timm_backbones import build_timm_backbone, is_timm, timm_head_names
from lit_explain.models.weights_file import load_weights_path


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
            f"Valid choices: {', '.join(names)}; or any timm model as timm:NAME (timm:vit_tiny_patch16_224)"
        )


def _parent_and_attr(model: nn.Module, dotted: str) -> tuple[nn.Module, str]:
    parent_name, _, attr = dotted.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), attr


def classifier_head_names(model: nn.Module) -> list[str]:
    """Dotted names of the classifier head(s): timm's ``get_classifier()`` (``head``, ``head.fc``; ``head``
    and ``head_dist`` for distilled DeiT), else the final ``nn.Linear`` (``fc`` for ResNets, ``classifier.6``
    for VGG, ...)."""
    if hasattr(model, "get_classifier") and hasattr(model, "reset_classifier"):
        names = timm_head_names(model)
        if names:
            return names
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ConfigError(f"{type(model).__name__} has no nn.Linear classifier head to replace")
    return linears[-1:]


def classifier_head_name(model: nn.Module) -> str:
    """Dotted name of the (first) classifier head, see :func:`classifier_head_names`."""
    return classifier_head_names(model)[0]


def no_weight_decay_ids(net: nn.Module) -> set[int]:
    """``id()`` of the parameters weight decay should skip: biases, norm and other 1-D parameters (timm's
    rule, the same set as "biases and norm layers" for CNNs) and the names timm's ``no_weight_decay()``
    lists (position embeddings, class/register tokens)."""
    listed = getattr(net, "no_weight_decay", None)
    skip = set(listed()) if callable(listed) else set()
    return {
        id(p) for name, p in net.named_parameters() if p.ndim <= 1 or name.endswith(".bias") or name in skip
    }


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
    """Load a state-dict file into ``model`` without running code; a classifier head of another class count
    keeps its random init (one line logged), anything else that does not fit is a one-line ConfigError."""
    load_weights_path(model, path, classifier_head_names(model))


def normalise_weights(weights: str | bool | None) -> str | bool | None:
    """``model.weights`` as given on a command line: ``"true"`` -> True, ``"false"``/``""`` -> None.

    Example:
        >>> normalise_weights("true"), normalise_weights("false"), normalise_weights("IMAGENET1K_V1")
        (True, None, 'IMAGENET1K_V1')
    """
    if isinstance(weights, str) and weights.strip().lower() in ("true", "false", "", "none", "null"):
        return True if weights.strip().lower() == "true" else None
    return None if weights is False else weights


def has_cifar_stem_option(name: str) -> bool:
    """True when ``model.cifar_stem`` can apply to ``name``: torchvision's ResNet family (``resnet*``,
    ``resnext*``, ``wide_resnet*``, all built by ``torchvision.models.resnet``).

    Example:
        >>> has_cifar_stem_option("resnet34"), has_cifar_stem_option("vgg11"), has_cifar_stem_option("timm:resnet10t")
        (True, False, False)
    """
    if is_timm(name) or name not in available_backbones():
        return False
    return torchvision.models.get_model_builder(name).__module__ == torchvision.models.resnet.__name__


def resolve_cifar_stem(name: str, cifar_stem: bool | str) -> bool:
    """``model.cifar_stem`` as a bool: ``"auto"`` means the CIFAR stem where the backbone has that option
    (torchvision ResNets) and the backbone's own stem otherwise, so a CIFAR recipe stays valid under
    ``--model.backbone timm:vit_tiny_patch16_224``; ``true`` stays strict (an error for other backbones)."""
    if isinstance(cifar_stem, str):
        if cifar_stem.strip().lower() != "auto":
            raise ConfigError(f"model.cifar_stem must be true, false or auto, got {cifar_stem!r}")
        return has_cifar_stem_option(name)
    return bool(cifar_stem)


def build_backbone(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    cifar_stem: bool | str = False,
    weights: str | bool | None = None,
    weights_path: str | None = None,
    input_size: list[int] | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """Build a torchvision classifier, or a timm one (``timm:NAME``), ready for ``num_classes``.

    Args:
        name: a torchvision model name (see :func:`available_backbones`) or ``timm:NAME`` (any model of
            ``timm.list_models()``, optionally with a pretrained tag: ``timm:vit_tiny_patch16_224.augreg_in21k``).
        num_classes: outputs of the new head.
        in_channels: input channels (1 for grayscale models).
        cifar_stem: torchvision ResNets only: 3x3 stride-1 first convolution, no max-pool; ``"auto"``:
            for torchvision ResNets, the backbone's own stem for any other (see :func:`resolve_cifar_stem`).
        weights: torchvision: a weights name such as ``"IMAGENET1K_V1"`` or ``"DEFAULT"`` (True means
            ``"DEFAULT"``), downloaded into ``$TORCH_HOME/hub/checkpoints`` when online, read from there when
            cached; timm: True (the default pretrained tag) or a tag name. None: random initialisation.
        weights_path: a local file with the backbone's original state dict (e.g. ImageNet, 1000 classes; for
            timm also ``.safetensors``); used instead of ``weights`` when both are given.
        input_size: ``(height, width)`` of the data; timm's fixed-size models (ViT, Swin) are built for it.
        backbone_kwargs: further keyword arguments for ``timm.create_model`` / ``torchvision.models.get_model``.

    Example:
        >>> net = build_backbone("resnet34", num_classes=100, cifar_stem=True)
        >>> net(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 100])
        >>> vit = build_backbone("timm:vit_tiny_patch16_224", num_classes=6, input_size=[64, 64])
        >>> vit(torch.zeros(2, 3, 64, 64)).shape
        torch.Size([2, 6])
    """
    if num_classes < 1:
        raise ConfigError(f"model.num_classes must be >= 1, got {num_classes}")
    if in_channels < 1:
        raise ConfigError(f"model.in_channels must be >= 1, got {in_channels}")
    weights = normalise_weights(weights)
    cifar_stem = resolve_cifar_stem(name, cifar_stem)
    if is_timm(name):
        if cifar_stem:
            raise ConfigError(f"model.cifar_stem applies to torchvision ResNets only, not {name}")
        return build_timm_backbone(
            name, num_classes, in_channels, input_size, weights, weights_path, backbone_kwargs
        )
    _check_name(name)
    kwargs = dict(backbone_kwargs or {})
    if weights_path is not None:
        # Built for the data's classes: a head in the file of another class count stays at random init.
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
        load_weights_file(model, weights_path)
    elif weights is not None:
        weights = "DEFAULT" if weights is True else str(weights)
        weights_enum = torchvision.models.get_model_weights(name)
        try:
            chosen = weights_enum[weights] if weights != "DEFAULT" else weights_enum.DEFAULT
        except KeyError:
            options = ", ".join(["DEFAULT", *weights_enum.__members__])
            raise ConfigError(
                f"model.weights={weights!r} is not available for {name}; choose one of {options}"
            ) from None
        model = _download_or_load(name, chosen, kwargs)
        replace_head(model, num_classes)
    else:
        model = torchvision.models.get_model(name, num_classes=num_classes, **kwargs)
    if in_channels != 3:
        replace_input_channels(model, in_channels)
    if cifar_stem:
        apply_cifar_stem(model)
    return model


def _download_or_load(
    name: str, weights: torchvision.models.WeightsEnum, kwargs: dict[str, Any]
) -> torch.nn.Module:
    """Build ``name`` with ``weights``; a failed download names the file to place in the cache instead."""
    try:
        # Not get_model(weights=...): torchvision reads the cached file with weights_only=False, so a
        # tampered $TORCH_HOME file could run code. Same file, same hash check, loaded as plain tensors.
        state = weights.get_state_dict(progress=True, check_hash=True, weights_only=True)
    except (URLError, OSError) as err:
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
        raise ConfigError(
            f"could not download the {weights} weights for {name} ({err}). Without internet, copy "
            f"{Path(urlparse(weights.url).path).name} (from {weights.url}) to {cache} "
            "(set TORCH_HOME to choose the cache folder), or pass model.weights_path=<file>."
        ) from err
    except pickle.UnpicklingError as err:
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
        raise ConfigError(
            f"refused to load {cache}: it is not a plain tensor file (weights_only=True failed: "
            f"{str(err).splitlines()[0][:200]}). Delete it and download the {weights} weights again."
        ) from None
    model = torchvision.models.get_model(
        name, weights=None, num_classes=len(weights.meta["categories"]), **kwargs
    )
    model.load_state_dict(state)
    return model
