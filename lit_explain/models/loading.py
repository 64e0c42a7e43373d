"""Rebuild an ImageClassifier from a checkpoint file alone (``weights_only=True``)."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch

from lit_explain.errors import LitExplainError
from lit_explain.models.classifier import ImageClassifier


class CheckpointError(LitExplainError, ValueError):
    """The file is missing, unreadable, or not a checkpoint lit_explain can rebuild a model from."""


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict with ``weights_only=True`` (no arbitrary code runs), with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist or is not a file")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{str(path)!r} is not a readable PyTorch checkpoint ({type(exc).__name__}: {str(exc)[:300]})"
        ) from exc
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{str(path)!r} holds a {type(checkpoint).__name__}, not a checkpoint dict")
    return checkpoint


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
    if "state_dict" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise CheckpointError(
            f"{str(path)!r} is not a lit_explain checkpoint (it has no 'state_dict' and 'hyper_parameters'); "
            "for a plain state-dict file pass the backbone name as well"
        )
    accepted = set(inspect.signature(ImageClassifier.__init__).parameters) - {"self"}
    hparams = {k: v for k, v in checkpoint["hyper_parameters"].items() if k in accepted}
    hparams.update(weights=None, weights_path=None, compile=False)
    hparams.update(overrides)
    model = ImageClassifier(**hparams)
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"the weights in {str(path)!r} do not fit its own hyperparameters: {exc}") from exc
    return model.eval()
