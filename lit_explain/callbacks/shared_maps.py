"""Predicted-class maps explained once per validation and shared between callbacks.

ProbeHeatmaps and ShortcutAlarm both explain a class-balanced sample of the validation split after every
validation; with the data module's ``probe_indices`` (every recipe) they are the same images, and with the
same layers and CAM method the same maps. The first callback that explains them leaves them here and the
other takes them instead of running the network again. An entry is only valid for the trainer step and
loop it was made in, and only for equal images (compared by value), layers and method; every validation or
test epoch starts empty (``trainer.validate`` run twice on other weights keeps the same step).

Example:
    >>> remember(trainer, images, layers, "layercam", maps, logits)       # doctest: +SKIP
    >>> recall(trainer, images, layers, "layercam")                       # doctest: +SKIP
    (maps, logits)
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch import Tensor

# A few samples per moment are plenty: the recipes explain one shared sample.
_PER_TRAINER = 4


@dataclass(frozen=True)
class _Entry:
    images: Tensor
    layers: Any
    method: str
    maps: Tensor
    logits: Tensor


_SHARED: weakref.WeakKeyDictionary[L.Trainer, tuple[tuple[Any, ...], list[_Entry]]] = (
    weakref.WeakKeyDictionary()
)


def _moment(trainer: L.Trainer) -> tuple[Any, ...]:
    """When maps were made: the same weights and the same loop (a later step has other weights)."""
    return (trainer.state.fn, trainer.state.stage, trainer.current_epoch, trainer.global_step)


def _layer_key(layers: Any) -> Any:
    if isinstance(layers, str) or layers is None:
        return layers
    if isinstance(layers, Sequence):
        return tuple(_layer_key(layer) for layer in layers)
    return id(layers)  # a module object: the same object is the same layer


def remember(
    trainer: L.Trainer, images: Tensor, layers: Any, method: str, maps: Tensor, logits: Tensor
) -> None:
    """Keep the predicted-class ``maps`` and ``logits`` of ``images`` for the rest of this step's loop."""
    moment = _moment(trainer)
    held = _SHARED.get(trainer)
    entries = held[1] if held is not None and held[0] == moment else []
    entries = [*entries[-(_PER_TRAINER - 1) :], _Entry(images, _layer_key(layers), method, maps, logits)]
    _SHARED[trainer] = (moment, entries)


def recall(trainer: L.Trainer, images: Tensor, layers: Any, method: str) -> tuple[Tensor, Tensor] | None:
    """``(maps, logits)`` remembered at this moment for equal ``images``, ``layers`` and ``method``, or None."""
    held = _SHARED.get(trainer)
    if held is None or held[0] != _moment(trainer):
        return None
    key = _layer_key(layers)
    for entry in reversed(held[1]):
        if (
            entry.method == method
            and entry.layers == key
            and entry.images.shape == images.shape
            and entry.images.device == images.device
            and torch.equal(entry.images, images)
        ):
            return entry.maps, entry.logits
    return None


def forget(trainer: L.Trainer) -> None:
    """Drop what is kept for ``trainer``: a validation or test epoch starts (the weights may be others)."""
    _SHARED.pop(trainer, None)
