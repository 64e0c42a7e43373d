"""``--explain``: switch the explanation callbacks off, or thin them, without editing a recipe.

``python -m lit_explain fit --explain false`` removes every callback of :mod:`lit_explain.callbacks`
(``ProbeHeatmaps``, ``WorstSamples``, ``ConfusionMatrix``) from ``trainer.callbacks``;
``--explain.every_n_epochs N`` sets ``every_n_epochs`` on those that take it (``ProbeHeatmaps`` and
``WorstSamples``, the ones that run the explanation engine; the confusion matrix stays every epoch).
``--explain true`` (the default) keeps the recipe's callbacks as they are.

The switch edits the parsed configuration before anything is built, so the ``config.yaml`` a run saves
already holds the callbacks it ran with and reruns the same way.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lit_explain.errors import ConfigError

EXPLAIN_PACKAGE = "lit_explain.callbacks."


@dataclass
class ExplainEvery:
    """Thin the explanation callbacks.

    Args:
        every_n_epochs: explain after every n-th training epoch's validation (always in validate/test).
    """

    every_n_epochs: int


# `--explain false` | `--explain true` | `--explain.every_n_epochs N` (or `--explain '{every_n_epochs: N}'`).
ExplainSwitch = bool | ExplainEvery


def add_explain_argument(parser: Any) -> None:
    """Add ``--explain`` to a LightningCLI (sub)command parser."""
    parser.add_argument(
        "--explain",
        type=ExplainSwitch,
        default=True,
        help=(
            "false: drop the lit_explain.callbacks callbacks (ProbeHeatmaps, WorstSamples, ConfusionMatrix); "
            "--explain.every_n_epochs N: explain every N-th epoch only; true (default): as the recipe says"
        ),
    )


def _callback_list(trainer: Namespace) -> list[Any]:
    callbacks = trainer.get("callbacks")
    if callbacks is None:
        return []
    return list(callbacks) if isinstance(callbacks, list) else [callbacks]


def _class_path(callback: Any) -> str:
    if isinstance(callback, Namespace):
        return str(callback.get("class_path") or "")
    return f"{type(callback).__module__}.{type(callback).__qualname__}"  # an instance given in Python


def _is_explain_callback(callback: Any) -> bool:
    return _class_path(callback).startswith(EXPLAIN_PACKAGE)


def _takes_every_n_epochs(class_path: str) -> bool:
    module, _, name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    return "every_n_epochs" in inspect.signature(cls).parameters


def _short(callback: Any) -> str:
    return _class_path(callback).rpartition(".")[2]


def apply_explain_switch(trainer: Namespace, switch: bool | ExplainEvery | Namespace | None) -> None:
    """Apply ``--explain`` to a parsed ``trainer`` configuration (its ``callbacks`` list), in place.

    Example:
        >>> apply_explain_switch(config.fit.trainer, False)                      # no explanation callbacks
        >>> apply_explain_switch(config.fit.trainer, ExplainEvery(every_n_epochs=5))
    """
    if switch is None or switch is True:
        return
    callbacks = _callback_list(trainer)
    if switch is False:
        kept = [c for c in callbacks if not _is_explain_callback(c)]
        removed = [_short(c) for c in callbacks if _is_explain_callback(c)]
        trainer.callbacks = kept
        if removed:
            rank_zero_info(f"--explain false: running without {', '.join(removed)}")
        return
    every = switch.every_n_epochs
    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise ConfigError(
            f"--explain.every_n_epochs must be an integer >= 1, got {every!r} (--explain false switches "
            "the explanation callbacks off)"
        )
    thinned = []
    for callback in callbacks:
        if not (isinstance(callback, Namespace) and _is_explain_callback(callback)):
            continue
        if _takes_every_n_epochs(callback.class_path):
            if callback.get("init_args") is None:
                callback.init_args = Namespace()
            callback.init_args.every_n_epochs = every
            thinned.append(_short(callback))
    if not thinned:
        rank_zero_warn(
            f"--explain.every_n_epochs {every}: no callback in trainer.callbacks takes every_n_epochs "
            "(ProbeHeatmaps and WorstSamples do); nothing was thinned"
        )
