"""Where and whether the callbacks write: their tags and steps, the sinks of the trainer's loggers, and
the setup-time checks (a logger they can write to, a strategy under which rank-0 explanations can run).
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy, Strategy
from lightning.pytorch.utilities import rank_zero_warn

from lit_explain import sinks
from lit_explain.errors import ConfigError
from lit_explain.sinks import Picture, Table

# Lightning's own stage names for the loops the callbacks take part in.
VALIDATING = "val"
TESTING = "test"
# The trainer functions whose loops the callbacks log in (predict runs none of their hooks).
CHECKED_STAGES = ("fit", "validate", "test")


class CallbackSetupError(ConfigError, MisconfigurationException):
    """The trainer is set up so that a callback cannot work; raised from ``setup`` before any step runs.

    A :class:`~lit_explain.errors.ConfigError` (the CLI prints ``error: ...`` and exits 2) and a
    Lightning ``MisconfigurationException``, as Lightning's own ``LearningRateMonitor`` raises.
    """


def check_trainer(trainer: L.Trainer, owner: str, stage: str | None) -> None:
    """Refuse, at ``setup``, a trainer the callback ``owner`` cannot log with or explain under.

    * no logger a sink writes to (or ``logger=False``): :class:`CallbackSetupError` naming the
      supported loggers; loggers without a sink next to supported ones: a warning naming them;
    * a sharded strategy (FSDP, ModelParallel, DeepSpeed ZeRO stage 3): the explanation forward runs on
      the global-zero rank only, and with sharded parameters it would wait forever for the other ranks
      to join the parameter gathering, so the run is refused instead of hanging.
    """
    if stage is not None and stage not in CHECKED_STAGES:
        return
    sharded = sharded_strategy(trainer.strategy)
    if sharded:
        raise CallbackSetupError(
            f"{owner} cannot run under {sharded}: it explains on the global-zero rank only, and with "
            "sharded parameters that forward pass would wait forever for the other ranks. Use a DDP "
            "strategy (strategy=ddp) for runs with explanation callbacks, or remove the callback"
        )
    if trainer.fast_dev_run:
        # fast_dev_run swaps every logger for Lightning's DummyLogger on purpose (a smoke test that logs
        # nothing); the callbacks then log nothing too instead of refusing the run.
        return
    supported = ", ".join(sinks.SUPPORTED_LOGGERS)
    usable = sinks.sinks_for(trainer)
    others = sorted({type(lg).__name__ for lg in sinks.unsupported_loggers(trainer)})
    if not usable:
        found = (
            f"its loggers ({', '.join(others)}) are not supported" if others else "the trainer has no logger"
        )
        raise CallbackSetupError(
            f"{owner} has nowhere to log: {found}. Use one of {supported} from lightning.pytorch.loggers, "
            "e.g. --trainer.logger=lightning.pytorch.loggers.CSVLogger, or remove the callback"
        )
    if others:
        rank_zero_warn(f"{owner} does not write to {', '.join(others)} (supported: {supported})")


def sharded_strategy(strategy: Strategy) -> str | None:
    """A description of ``strategy`` when it shards parameters across ranks, else None."""
    if isinstance(strategy, FSDPStrategy):
        return "FSDPStrategy (strategy=fsdp)"
    if isinstance(strategy, ModelParallelStrategy):
        return "ModelParallelStrategy"
    if isinstance(strategy, DeepSpeedStrategy):
        try:
            stage_3 = bool(strategy.zero_stage_3)
        except (AttributeError, KeyError, TypeError):  # no readable config: assume the worst
            stage_3 = True
        return "DeepSpeedStrategy with ZeRO stage 3" if stage_3 else None
    return None


def is_logging_rank(trainer: L.Trainer) -> bool:
    """True on the global-zero rank of a run that has at least one logger a sink writes to."""
    return trainer.is_global_zero and bool(sinks.sinks_for(trainer))


def stage_prefix(trainer: L.Trainer) -> str:
    """``"test"`` while ``trainer.test`` runs, ``"val"`` during fit's validation and ``trainer.validate``."""
    return TESTING if trainer.testing else VALIDATING


def explain_tag(trainer: L.Trainer, name: str) -> str:
    """Tag of a heatmap grid or explanation scalar: ``explain/NAME``, ``explain/test/NAME`` when testing."""
    return f"explain/{name}" if stage_prefix(trainer) == VALIDATING else f"explain/{TESTING}/{name}"


def log_step(trainer: L.Trainer) -> int:
    """The step the callbacks log at: the trainer's global step, like Lightning's own scalars."""
    return int(trainer.global_step)


def add_image(trainer: L.Trainer, tag: str, image: torch.Tensor, caption: str = "") -> None:
    """Log a uint8 ``[3, H, W]`` image to every logger; its PNG is encoded once for all of them."""
    sinks.log_image(trainer, tag, Picture(image, caption))


def add_table(trainer: L.Trainer, tag: str, table: Table) -> None:
    """Log a table to every logger (TensorBoard: Markdown text; W&B: wandb.Table; MLflow/CSV: CSV files)."""
    sinks.log_table(trainer, tag, table)


def add_scalars(trainer: L.Trainer, values: dict[str, float]) -> None:
    """Log plain float scalars to every logger (one entry per tag at the current step)."""
    sinks.log_scalars(trainer, values)


def flush(trainer: L.Trainer) -> None:
    """Flush the loggers so a running tracker shows the epoch's pictures without waiting."""
    sinks.flush(trainer)
