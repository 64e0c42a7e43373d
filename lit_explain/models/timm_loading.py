"""Rebuild a timm ``ImageClassifier`` from a plain weights file (``python -m lit_explain export`` output)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from lit_explain.errors import ConfigError
from lit_explain.models.classifier import ImageClassifier
from lit_explain.models.timm_backbones import _default_cfg, _head_rows, parse_timm_name
from lit_explain.models.weights_file import summarise_load_error


def timm_classifier_from_state(
    checkpoint: Mapping[str, Any],
    state: Mapping[str, torch.Tensor],
    backbone: str,
    overrides: Mapping[str, Any],
    source: str,
) -> ImageClassifier:
    """An eval-mode classifier for ``backbone`` (``timm:NAME``) holding ``state``.

    The class count comes from the head in ``state``; class names, channels, normalisation, input size and
    ``backbone_kwargs`` from ``overrides``, then the file's own keys, then timm's pretrained config.

    Example:
        >>> plain = torch.load("model.pth", weights_only=True)   # written by `lit_explain export`
        >>> model = timm_classifier_from_state(plain, plain["model_state_dict"], plain["backbone"], {}, "model.pth")
    """
    name, tag = parse_timm_name(backbone)
    cfg = _default_cfg(name, tag)
    num_classes = _head_rows(state, cfg)
    if num_classes < 1:
        raise ConfigError(
            f"{source!r} has no classifier head for timm model {name} (no {cfg.classifier} weights)"
        )

    def pick(key: str, default: Any) -> Any:
        for where in (overrides, checkpoint):
            if where.get(key) is not None:
                return where[key]
        return default

    class_names = pick("class_names", None)
    if class_names is not None and len(class_names) != num_classes:
        raise ConfigError(
            f"{source!r} has a {num_classes}-class head but {len(class_names)} class names were given"
        )
    model = ImageClassifier(
        backbone,
        num_classes=num_classes,
        class_names=[str(c) for c in class_names] if class_names is not None else None,
        in_channels=int(pick("in_channels", (cfg.input_size or (3,))[0])),
        mean=[float(m) for m in pick("mean", cfg.mean)],
        std=[float(s) for s in pick("std", cfg.std)],
        input_size=[int(s) for s in pick("input_size", (cfg.input_size or (3, 224, 224))[1:])],
        backbone_kwargs=pick("backbone_kwargs", None),
    )
    try:
        model.net.load_state_dict(dict(state))
    except RuntimeError as exc:
        raise ConfigError(
            f"the weights in {source!r} do not fit timm model {name} with {num_classes} classes: "
            f"{summarise_load_error(exc)}"
        ) from exc
    return model.eval()
