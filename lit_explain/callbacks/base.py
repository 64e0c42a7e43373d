"""The base of lit_explain's callbacks: one place that maps Lightning's validation and test hooks to an
epoch's start, batches and end, skips the sanity check, honours ``every_n_epochs``, checks the trainer at
setup, counts the time spent on the training thread, and hands rendering to the background writer.
"""

from __future__ import annotations

import os
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy, Strategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lit_explain import sinks
from lit_explain.callbacks import shared_maps
from lit_explain.callbacks.cost import cost_account, cost_line, missing_speedups
from lit_explain.errors import ConfigError
from lit_explain.sinks.writer import BackgroundWriter, StepLog

# Lightning's own stage names for the loops the callbacks take part in.
VALIDATING = "val"
TESTING = "test"
# The trainer functions whose loops the callbacks log in (predict runs none of their hooks).
CHECKED_STAGES = ("fit", "validate", "test")
# How long a failing run waits for pictures still being written before it reports its own error.
EXCEPTION_FLUSH_S = 10.0


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


_WRITERS: weakref.WeakKeyDictionary[L.Trainer, BackgroundWriter] = weakref.WeakKeyDictionary()
# (trainer function, stage, epoch, step) last logged per trainer: the per-epoch cost scalar and flush
# happen once per epoch, whichever callback gets there first.
_EPOCH_DONE: weakref.WeakKeyDictionary[L.Trainer, tuple[Any, ...]] = weakref.WeakKeyDictionary()
_FIT_REPORTED: weakref.WeakSet[L.Trainer] = weakref.WeakSet()


# LIT_EXPLAIN_WRITER=thread|inline overrides the choice below.
WRITER_ENV = "LIT_EXPLAIN_WRITER"


def writer_for(trainer: L.Trainer) -> BackgroundWriter:
    """The trainer's background writer (one per trainer; only the logging rank ever creates one)."""
    writer = _WRITERS.get(trainer)
    if writer is None:
        writer = _WRITERS[trainer] = BackgroundWriter(inline=not background_pays_off(trainer))
    return writer


def background_pays_off(trainer: L.Trainer) -> bool:
    """Whether a writer thread takes work off training rather than slowing it.

    Yes when the model trains on an accelerator (the CPU is free while the device computes) or when the
    CPU has a core the training's threads do not use; no when every core trains (measured on 2 cores:
    epochs 1.40x with the thread, see docs/benchmarks.md, "Callbacks"). ``LIT_EXPLAIN_WRITER`` =
    ``thread`` or ``inline`` decides instead.
    """
    forced = os.environ.get(WRITER_ENV, "").strip().lower()
    if forced in ("thread", "inline"):
        return forced == "thread"
    if trainer.strategy.root_device.type != "cpu":
        return True
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cores > torch.get_num_threads()


class ExplainCallback(Callback):
    """Base of the explanation callbacks: validation and test hooks mapped to one set of methods.

    Subclasses override :meth:`epoch_start`, :meth:`batch_end`, :meth:`epoch_end` (called in fit's
    validation, ``trainer.validate`` and ``trainer.test``; never in the sanity check; while fitting only
    in every ``every_n_epochs``-th epoch), :meth:`on_setup` (cheap checks of the callback's own settings)
    and :meth:`on_start` (checks against the built model, before the first batch). The base checks the trainer at setup,
    counts the hooks' time as the callback's cost on the training thread (``explain/cost_s`` per epoch,
    one line at the end of fit), flushes the background writer at the end of fit/validate/test and on
    exceptions, and re-raises a background error at the next hook.

    Args:
        every_n_epochs: work in every n-th training epoch's validation only (always in validate/test).

    Example:
        >>> class CountBatches(ExplainCallback):
        ...     def epoch_start(self, trainer, pl_module):
        ...         self.n = 0
        ...     def batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        ...         self.n += 1
        ...     def epoch_end(self, trainer, pl_module):
        ...         self.log_scalars(trainer, {self.tag(trainer, "batches"): self.n})
    """

    def __init__(self, every_n_epochs: int = 1) -> None:
        super().__init__()
        if every_n_epochs < 1:
            raise ConfigError(f"{type(self).__name__}: every_n_epochs must be >= 1, got {every_n_epochs}")
        self.every_n_epochs = every_n_epochs

    # -- what subclasses override ------------------------------------------------------------------
    def on_setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Checks and preparation at ``setup`` (after the trainer checks)."""

    def on_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The model is set up (its network built) and no batch has run yet: fit, validate or test starts."""

    def epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A validation or test epoch starts (in the epochs the callback works in)."""

    def batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """A validation or test batch ended; ``outputs`` is what ``validation_step``/``test_step`` returned."""

    def epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A validation or test epoch ended (every rank calls it: collectives go here)."""

    # -- helpers for subclasses --------------------------------------------------------------------
    def active(self, trainer: L.Trainer) -> bool:
        """False in the sanity check and, while fitting, in the epochs between every ``every_n_epochs``-th."""
        if trainer.sanity_checking:
            return False
        fitting = trainer.state.fn == "fit"
        return not fitting or (trainer.current_epoch + 1) % self.every_n_epochs == 0

    @contextmanager
    def timed(self, trainer: L.Trainer) -> Iterator[None]:
        """Count the enclosed work as this callback's cost on the training thread."""
        with cost_account(trainer).timed(type(self).__name__):
            yield

    @staticmethod
    def tag(trainer: L.Trainer, name: str) -> str:
        """``explain/<name>``, or ``explain/test/<name>`` during ``trainer.test``."""
        return explain_tag(trainer, name)

    @staticmethod
    def log_scalars(trainer: L.Trainer, values: dict[str, float]) -> None:
        """Log float scalars to every logger at the global step, now (on the logging rank only)."""
        if values and is_logging_rank(trainer):
            sinks.log_scalars(trainer, values)

    @staticmethod
    def submit(trainer: L.Trainer, job: Callable[[StepLog], None], what: str) -> None:
        """Run ``job(log)`` on the background writer at the current global step (logging rank only).

        The job must only touch host tensors and plain data (copy with ``sinks.writer.to_host`` first).
        """
        if is_logging_rank(trainer):
            writer_for(trainer).submit(
                sinks.sinks_for(trainer), trainer.global_step, trainer.current_epoch, job, what
            )

    # -- Lightning hooks ---------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        account = cost_account(trainer)
        if stage == "fit" and account.fit_start is None:
            account.fit_start = time.perf_counter()
        with self.timed(trainer):
            check_trainer(trainer, type(self).__name__, stage)
            self.on_setup(trainer, pl_module, stage)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        with self.timed(trainer):
            self.on_start(trainer, pl_module)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn != "fit":  # fit's own validations come after on_fit_start
            with self.timed(trainer):
                self.on_start(trainer, pl_module)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        with self.timed(trainer):
            self.on_start(trainer, pl_module)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check_writer(trainer)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check_writer(trainer)
        shared_maps.forget(trainer)  # maps shared between callbacks last one epoch
        if self.active(trainer):
            with self.timed(trainer):
                self.epoch_start(trainer, pl_module)

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.active(trainer):
            with self.timed(trainer):
                self.batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.active(trainer):
            with self.timed(trainer):
                self.epoch_end(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._loop_end(trainer)

    # The test loop works exactly like the validation loop (``active`` is always true outside fit).
    on_test_epoch_start = on_validation_epoch_start
    on_test_batch_end = on_validation_batch_end
    on_test_epoch_end = on_validation_epoch_end
    on_test_end = on_validation_end

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        writer = _WRITERS.get(trainer)
        if writer is not None:
            writer.flush()
        if stage == "fit" and trainer not in _FIT_REPORTED and is_logging_rank(trainer):
            _FIT_REPORTED.add(trainer)
            account = cost_account(trainer)
            background = writer.stats.background_s if writer is not None else 0.0
            inline = writer is not None and writer.inline
            tensorboard = any(isinstance(lg, TensorBoardLogger) for lg in trainer.loggers)
            missing = missing_speedups(tensorboard)
            rank_zero_info(
                cost_line(account.total_s, account.fit_seconds(), background, inline=inline, missing=missing)
            )

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        writer = _WRITERS.get(trainer)
        if writer is None:
            return
        try:
            writer.flush(timeout=EXCEPTION_FLUSH_S)
        except Exception as err:  # the run's own exception is the one to report
            warnings.warn(
                f"explainability pictures were not all written: {err}", RuntimeWarning, stacklevel=2
            )

    # -- internals ---------------------------------------------------------------------------------
    def _check_writer(self, trainer: L.Trainer) -> None:
        writer = _WRITERS.get(trainer)
        if writer is not None:
            with self.timed(trainer):
                writer.check()

    def _loop_end(self, trainer: L.Trainer) -> None:
        """Once per epoch (whichever callback comes first): the cost scalar, the loggers' flush, and
        outside fit the writer's flush, so ``validate``/``test`` return with everything written."""
        if trainer.sanity_checking:
            return
        key = (trainer.state.fn, stage_prefix(trainer), trainer.current_epoch, trainer.global_step)
        if _EPOCH_DONE.get(trainer) == key:
            return
        _EPOCH_DONE[trainer] = key
        if not is_logging_rank(trainer):
            return
        spent = cost_account(trainer).take_epoch()
        sinks.log_scalars(trainer, {explain_tag(trainer, "cost_s"): spent})
        sinks.flush(trainer)
        if trainer.state.fn != "fit":
            writer_for(trainer).flush()
