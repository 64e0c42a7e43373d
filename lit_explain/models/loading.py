"""Rebuild an ImageClassifier from a file alone (``weights_only=True``).

Three sources are accepted by :func:`load_classifier`, the one function the audit, explain and serve
commands call:

* a lit_explain (Lightning) checkpoint: hyperparameters and weights in one file;
* a plain file in the format of the plant notebook, ``{"model_state_dict", "class_names", "train_acc",
  "val_acc", "test_acc", "epoch"}`` (what ``python -m lit_explain export`` writes), or a bare state dict;
  the backbone name comes from the caller (or from a ``"backbone"`` key that lit_explain's export adds);
* ``"torchvision:NAME[:WEIGHTS]"``: a torchvision model with its pretrained weights from the local
  ``$TORCH_HOME/hub/checkpoints`` cache, the class names from the weights' metadata.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision

from lit_explain.models.checkpoint_io import CheckpointError, read_checkpoint
from lit_explain.models.classifier import ImageClassifier
from lit_explain.models.weights_file import describe_mismatch, strip_prefixes, summarise_load_error

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PLAIN_INPUT_SIZE = (224, 224)
TORCHVISION_PREFIX = "torchvision:"


def is_lightning_checkpoint(checkpoint: Mapping[str, Any]) -> bool:
    """True for a checkpoint written by Lightning (``state_dict`` plus ``hyper_parameters``)."""
    return "state_dict" in checkpoint and "hyper_parameters" in checkpoint


def classifier_from_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", **overrides: Any
) -> ImageClassifier:
    """Rebuild an :class:`ImageClassifier` in eval mode from a lit_explain (Lightning) checkpoint.

    The hyperparameters in the checkpoint (backbone, classes, normalisation, input size) are enough;
    ``overrides`` replace single hyperparameters. Pretrained-weight settings are dropped because the
    checkpoint's state dict already holds the trained weights.

    Example:
        >>> model = classifier_from_checkpoint("lightning_logs/version_0/checkpoints/last.ckpt")
        >>> model.class_names, model.hparams.mean, model.hparams.input_size
    """
    checkpoint = read_checkpoint(path, map_location)
    return _from_lightning(checkpoint, str(path), overrides)


def _from_lightning(
    checkpoint: Mapping[str, Any], source: str, overrides: Mapping[str, Any]
) -> ImageClassifier:
    if not is_lightning_checkpoint(checkpoint):
        raise CheckpointError(
            f"{source!r} is not a lit_explain checkpoint (it has no 'state_dict' and 'hyper_parameters'); "
            "for a plain state-dict file pass the backbone name as well"
        )
    accepted = set(inspect.signature(ImageClassifier.__init__).parameters) - {"self"}
    hparams = {k: v for k, v in checkpoint["hyper_parameters"].items() if k in accepted}
    hparams.update(weights=None, weights_path=None, compile=False)
    hparams.update(overrides)
    if "class_names" in overrides and overrides["class_names"] is not None:
        hparams["num_classes"] = len(overrides["class_names"])
    model = ImageClassifier(**hparams)
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"the weights in {source!r} do not fit its hyperparameters "
            f"(backbone {hparams.get('backbone')!r}, {hparams.get('num_classes')} classes): "
            f"{summarise_load_error(exc)}"
        ) from exc
    return model.eval()


def plain_state_dict(checkpoint: Mapping[str, Any], source: str = "<dict>") -> dict[str, torch.Tensor]:
    """The network's state dict from a plain file: ``model_state_dict``, ``state_dict`` or the dict itself."""
    for key in ("model_state_dict", "state_dict"):
        if isinstance(checkpoint.get(key), Mapping):
            state = strip_prefixes(checkpoint[key])
            break
    else:
        state = strip_prefixes(checkpoint)
    if not state:
        keys = ", ".join(sorted(map(str, checkpoint))[:12])
        raise CheckpointError(
            f"{source!r} holds no weights: expected a 'model_state_dict' (plain format), a Lightning "
            f"'state_dict' with 'hyper_parameters', or a bare state dict; found keys: {keys}"
        )
    return state


def _head_shape(net: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> tuple[str, int] | None:
    """(head weight key, number of classes) of a state dict for the same architecture as ``net``."""
    from lit_explain.models.backbones import classifier_head_name

    key = f"{classifier_head_name(net)}.weight"
    weight = state.get(key)
    return (key, int(weight.shape[0])) if weight is not None and weight.ndim == 2 else None


def _first_conv(state: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    return next((v for v in state.values() if v.ndim == 4), None)


def _load_net(model: ImageClassifier, state: Mapping[str, torch.Tensor]) -> str | None:
    """Load ``state`` into ``model.net``; the reason it does not fit, or None when it loaded."""
    expected = model.net.state_dict()
    reason = describe_mismatch(expected, state)
    if reason != "keys and shapes agree":
        return reason
    model.net.load_state_dict(state)
    return None


def _from_plain(
    checkpoint: Mapping[str, Any], source: str, backbone: str | None, hparams: dict[str, Any]
) -> ImageClassifier:
    from lit_explain.models.backbones import _check_name

    backbone = backbone or checkpoint.get("backbone")
    if not backbone:
        raise CheckpointError(
            f"{source!r} is a plain weights file without a backbone name; pass the architecture it was "
            "trained with, e.g. --backbone resnet18 (load_classifier(path, backbone='resnet18'))"
        )
    if str(backbone).startswith("timm:"):
        from lit_explain.models.timm_loading import timm_classifier_from_state

        return timm_classifier_from_state(
            checkpoint, plain_state_dict(checkpoint, source), backbone, hparams, source
        )
    _check_name(backbone)
    state = plain_state_dict(checkpoint, source)
    probe = torchvision.models.get_model(backbone, weights=None)
    head = _head_shape(probe, state)
    if head is None:
        raise CheckpointError(
            f"{source!r} does not fit backbone {backbone!r}: its weights have no "
            f"{_head_key(probe)!r} tensor (the classifier head); "
            f"found keys such as {', '.join(list(state)[:6])}"
        )
    num_classes = head[1]
    class_names = hparams.get("class_names") or checkpoint.get("class_names")
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        if len(class_names) != num_classes:
            raise CheckpointError(
                f"{source!r} has a {num_classes}-class head but {len(class_names)} class names were given "
                f"({', '.join(class_names[:8])}{', ...' if len(class_names) > 8 else ''})"
            )
    conv = _first_conv(state)
    in_channels = hparams.get("in_channels") or checkpoint.get("in_channels")
    if in_channels is None:
        in_channels = int(conv.shape[1]) if conv is not None else 3
    # A ResNet whose first convolution is 3x3 was trained with the CIFAR stem (no max-pool either).
    cifar_stem = bool(
        checkpoint.get("cifar_stem")
        if "cifar_stem" in checkpoint
        else isinstance(probe, torchvision.models.ResNet) and conv is not None and conv.shape[-1] == 3
    )
    defaults = {
        "mean": checkpoint.get("mean") or (IMAGENET_MEAN if in_channels == 3 else (0.5,) * in_channels),
        "std": checkpoint.get("std") or (IMAGENET_STD if in_channels == 3 else (0.25,) * in_channels),
        "input_size": checkpoint.get("input_size") or PLAIN_INPUT_SIZE,
    }
    chosen = {
        key: hparams.get(key) if hparams.get(key) is not None else value for key, value in defaults.items()
    }
    model = ImageClassifier(
        backbone=backbone,
        num_classes=num_classes,
        class_names=class_names,
        in_channels=int(in_channels),
        cifar_stem=cifar_stem,
        mean=[float(m) for m in chosen["mean"]],
        std=[float(s) for s in chosen["std"]],
        input_size=_pair(chosen["input_size"]),
    )
    reason = _load_net(model, state)
    if reason is not None:
        raise CheckpointError(
            f"the weights in {source!r} do not fit backbone {backbone!r} with {num_classes} classes, "
            f"{in_channels} input channels{' and the CIFAR stem' if cifar_stem else ''}: {reason}"
        )
    return model.eval()


def _head_key(net: torch.nn.Module) -> str:
    from lit_explain.models.backbones import classifier_head_name

    return f"{classifier_head_name(net)}.weight"


def _pair(size: int | Sequence[int]) -> list[int]:
    if isinstance(size, int):
        return [size, size]
    values = [int(s) for s in size]
    return values * 2 if len(values) == 1 else values[:2]


def _from_torchvision(
    spec: str, hparams: dict[str, Any], map_location: str | torch.device
) -> ImageClassifier:
    from lit_explain.models.backbones import _check_name

    name, _, weights_name = spec[len(TORCHVISION_PREFIX) :].partition(":")
    weights_name = weights_name or "IMAGENET1K_V1"
    _check_name(name)
    enum = torchvision.models.get_model_weights(name)
    try:
        weights = enum.DEFAULT if weights_name == "DEFAULT" else enum[weights_name]
    except KeyError:
        options = ", ".join(["DEFAULT", *enum.__members__])
        raise CheckpointError(
            f"{spec!r}: {name} has no weights {weights_name!r}; choose one of {options}"
        ) from None
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)
    try:
        # torchvision reads the cached file when present (the hash is only verified on download).
        state = weights.get_state_dict(
            progress=False, check_hash=True, map_location=map_location, weights_only=True
        )
    except Exception as exc:  # URLError offline, a truncated cache file, ...
        raise CheckpointError(
            f"cannot load {name} weights {weights.name}: expected the file {cached} (downloaded from "
            f"{weights.url} when online). Download it once with network access or copy it there. "
            f"({type(exc).__name__}: {str(exc)[:200]})"
        ) from exc
    preset = weights.transforms()
    categories = list(weights.meta.get("categories") or [])
    num_classes = int(weights.meta.get("num_classes", len(categories)) or len(categories))
    class_names = hparams.get("class_names") or categories or None
    model = ImageClassifier(
        backbone=name,
        num_classes=num_classes,
        class_names=class_names,
        in_channels=3,
        mean=[float(m) for m in (hparams.get("mean") or preset.mean)],
        std=[float(s) for s in (hparams.get("std") or preset.std)],
        input_size=_pair(hparams.get("input_size") or preset.crop_size),
    )
    reason = _load_net(model, state)
    if reason is not None:
        raise CheckpointError(f"the cached file {cached} does not fit {name}: {reason}")
    return model.eval()


def load_classifier(
    path: str | Path,
    backbone: str | None = None,
    class_names: Sequence[str] | None = None,
    input_size: int | Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    in_channels: int | None = None,
    *,
    map_location: str | torch.device = "cpu",
    checkpoint: Mapping[str, Any] | None = None,
) -> ImageClassifier:
    """Load a model for explaining, auditing or serving, in eval mode on ``map_location``.

    Args:
        path: a lit_explain checkpoint (``.ckpt``), a plain weights file (``{"model_state_dict",
            "class_names", ...}`` as the plant notebook and ``lit_explain export`` write, or a bare state
            dict), or ``"torchvision:NAME[:WEIGHTS]"`` for a torchvision model with pretrained weights from
            the local ``$TORCH_HOME`` cache (``IMAGENET1K_V1`` when no weights name is given).
        backbone: torchvision architecture of a plain file (required unless the file names it).
        class_names: override (or, for a plain file without them, supply) the class names.
        input_size: ``(height, width)`` or one side; plain files default to 224.
        mean, std: normalisation; plain files default to ImageNet's.
        in_channels: input channels; plain files default to the first convolution's.
        map_location: device to load the weights onto.
        checkpoint: the file's contents when the caller has read it already (a command reads a
            checkpoint once, see :class:`lit_explain.audit.source.CheckpointFile`); ``path`` names it.

    Example:
        >>> model = load_classifier("lightning_logs/plants/version_0/checkpoints/last.ckpt")
        >>> model = load_classifier("model.pth", backbone="resnet18")    # the plant notebook's format
        >>> model = load_classifier("torchvision:vgg16")                 # ImageNet classes, cached weights
        >>> model.class_names[:2], model.hparams.mean, model.hparams.input_size
    """
    overrides: dict[str, Any] = {
        "class_names": list(class_names) if class_names is not None else None,
        "input_size": _pair(input_size) if input_size is not None else None,
        "mean": list(mean) if mean is not None else None,
        "std": list(std) if std is not None else None,
        "in_channels": in_channels,
    }
    spec = str(path)
    if spec.startswith(TORCHVISION_PREFIX):
        return _from_torchvision(spec, overrides, map_location).to(map_location)
    if checkpoint is None:
        checkpoint = read_checkpoint(path, map_location)
    if is_lightning_checkpoint(checkpoint):
        given = {k: v for k, v in overrides.items() if v is not None}
        if backbone is not None and backbone != checkpoint["hyper_parameters"].get("backbone"):
            raise CheckpointError(
                f"{spec!r} is a lit_explain checkpoint of backbone "
                f"{checkpoint['hyper_parameters'].get('backbone')!r}, not {backbone!r}; leave the backbone unset"
            )
        model = _from_lightning(checkpoint, spec, given)
    else:
        model = _from_plain(checkpoint, spec, backbone, overrides)
    return model.to(map_location)
