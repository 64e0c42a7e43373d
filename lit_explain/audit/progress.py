"""How far the audited checkpoint's training got: epochs and steps done against the run's plan, and whether
the monitored metric was still improving when it was saved.

The audit's ``not_converged`` rule reads this (``report["training_progress"]``): advice about calibration or
attention is premature for a model stopped early in its schedule. Everything here is read from what a run
already stores, so it also works for old checkpoints (fields it cannot find are None):

- epoch and step: the checkpoint's ``epoch`` (0-based, so +1 epochs are done) and ``global_step``;
- the plan: ``trainer.max_epochs`` and ``trainer.max_steps`` of the run's own ``config.yaml`` (LightningCLI),
  and the total steps the checkpoint's learning-rate schedule was built for (cosine / one-cycle runs);
- improving: the ``ModelCheckpoint`` state saved in the checkpoint (this checkpoint's score against the best
  so far) or an ``EarlyStopping`` state (epochs without improvement).

Example:
    >>> from lit_explain.models.checkpoint_io import read_checkpoint              # doctest: +SKIP
    >>> training_progress(read_checkpoint(path), path)                         # doctest: +SKIP
    {'epochs_done': 2, 'max_epochs': 15, 'max_steps': None, 'step': 80, 'planned_steps': 600, ...}
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _number(value: Any) -> float | None:
    """A finite float from a float, int or one-element tensor; None otherwise."""
    try:
        number = float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError, RuntimeError):
        return None
    return number if math.isfinite(number) else None


def _int(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None else None


def improvement(current: Any, best: Any, mode: str | None = None, wait_count: Any = None) -> bool | None:
    """Whether the monitored metric was still improving when the checkpoint was saved.

    True when this checkpoint's score is the best so far (the metric rose or fell to a new best at its last
    check), False when it is worse than the best or an EarlyStopping counter shows epochs without
    improvement, None when neither is known.

    Example:
        >>> improvement(0.8, 0.8, "max"), improvement(0.7, 0.8, "max"), improvement(None, None)
        (True, False, None)
    """
    waited = _int(wait_count)
    if waited is not None and waited > 0:
        return False
    cur, top = _number(current), _number(best)
    if cur is None or top is None:
        return True if waited == 0 else None
    tolerance = 1e-9 * max(1.0, abs(top))
    return cur >= top - tolerance if mode == "max" else cur <= top + tolerance


def _callback_improvement(callbacks: Mapping[str, Any]) -> tuple[bool | None, str | None]:
    """(improving, monitored metric) from the ModelCheckpoint / EarlyStopping states of a checkpoint."""
    found: bool | None = None
    monitor: str | None = None
    for key, state in callbacks.items():
        if not isinstance(state, Mapping):
            continue
        name = str(key)
        if name.startswith("EarlyStopping") and "wait_count" in state:
            verdict = improvement(None, None, wait_count=state["wait_count"])
        elif name.startswith("ModelCheckpoint") and state.get("monitor"):
            mode = "max" if "'mode': 'max'" in name else "min"
            verdict = improvement(state.get("current_score"), state.get("best_model_score"), mode)
        else:
            continue
        monitor = monitor or state.get("monitor")
        # One callback that saw no improvement is enough to say the run had levelled off.
        if verdict is False:
            return False, monitor
        found = verdict if verdict is not None else found
    return found, monitor


def _planned_steps(ckpt: Mapping[str, Any]) -> int | None:
    from lit_explain.models.schedules import planned_steps

    schedules = ckpt.get("lr_schedulers") or []
    if len(schedules) != 1 or not isinstance(schedules[0], Mapping):
        return None
    try:
        return planned_steps(dict(schedules[0]))
    except (KeyError, TypeError, ValueError):
        return None


def _limit(value: Any) -> int | None:
    """A positive epoch or step limit; None for none set (Lightning's -1 or None mean "no limit")."""
    number = _int(value)
    return number if number is not None and number > 0 else None


def _configured_limits(ckpt_path: str | Path | None) -> tuple[int | None, int | None]:
    """``trainer.max_epochs`` and ``trainer.max_steps`` of the checkpoint's own run folder's config.yaml
    (never any other file: see :func:`lit_explain.audit.source.run_config_path`)."""
    if ckpt_path is None:
        return None, None
    from lit_explain.audit.source import run_config_path

    path = run_config_path(ckpt_path)
    if path is None or not path.is_file():
        return None, None
    try:
        import yaml

        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        log.debug("no training limits from %s: %s", path, exc)
        return None, None
    trainer = config.get("trainer") if isinstance(config, Mapping) else None
    if not isinstance(trainer, Mapping):
        return None, None
    return _limit(trainer.get("max_epochs")), _limit(trainer.get("max_steps"))


def training_progress(ckpt: Mapping[str, Any], ckpt_path: str | Path | None = None) -> dict[str, Any]:
    """Epochs and steps done against the run's plan, and whether it was still improving (see the module)."""
    meta = ckpt.get("lit_explain") or {}
    epoch = _int(meta.get("epoch", ckpt.get("epoch")))
    improving, monitor = _callback_improvement(ckpt.get("callbacks") or {})
    max_epochs, max_steps = _configured_limits(ckpt_path)
    return {
        "epochs_done": epoch + 1 if epoch is not None else None,
        "max_epochs": max_epochs,
        "max_steps": max_steps,
        "step": _int(ckpt.get("global_step")),
        "planned_steps": _planned_steps(ckpt),
        "improving": improving,
        "monitor": monitor,
    }


def trainer_progress(trainer: Any) -> dict[str, Any]:
    """The same record from a live Trainer (for the AttentionAudit callback, which audits during training)."""
    checkpoint = getattr(trainer, "checkpoint_callback", None)
    improving = None
    if checkpoint is not None and getattr(checkpoint, "monitor", None):
        improving = improvement(
            checkpoint.current_score, checkpoint.best_model_score, getattr(checkpoint, "mode", "min")
        )
    return {
        "epochs_done": int(trainer.current_epoch) + 1,
        "max_epochs": _limit(getattr(trainer, "max_epochs", None)),
        "max_steps": _limit(getattr(trainer, "max_steps", None)),
        "step": int(trainer.global_step),
        "planned_steps": None,
        "improving": improving,
        "monitor": getattr(checkpoint, "monitor", None),
    }
