"""Which sink writes to which Lightning logger, and the trainer-level calls the callbacks make."""

from __future__ import annotations

import weakref
from collections.abc import Mapping

import lightning as L
from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger

from lit_explain.sinks.base import Sink
from lit_explain.sinks.csv_sink import CsvFilesSink
from lit_explain.sinks.items import Picture, Table
from lit_explain.sinks.mlflow_sink import MlflowSink
from lit_explain.sinks.tensorboard_sink import TensorBoardSink
from lit_explain.sinks.wandb_sink import WandbSink

# Logger class -> its sink; subclasses of these loggers are served by the same sink.
SINK_TYPES: tuple[tuple[type[Logger], type[Sink]], ...] = (
    (TensorBoardLogger, TensorBoardSink),
    (WandbLogger, WandbSink),
    (MLFlowLogger, MlflowSink),
    (CSVLogger, CsvFilesSink),
)
SUPPORTED_LOGGERS: tuple[str, ...] = tuple(logger.__name__ for logger, _ in SINK_TYPES)

# One sink per logger object for the logger's lifetime (the MLflow sink remembers its table names).
_SINKS: weakref.WeakKeyDictionary[Logger, Sink] = weakref.WeakKeyDictionary()


def sink_for(logger: Logger) -> Sink | None:
    """The sink of ``logger``, or None when no sink can write to that kind of logger."""
    sink = _SINKS.get(logger)
    if sink is None:
        kind = next((s for cls, s in SINK_TYPES if isinstance(logger, cls)), None)
        if kind is None:
            return None
        sink = _SINKS[logger] = kind(logger)
    return sink


def sinks_for(trainer: L.Trainer) -> list[Sink]:
    """A sink for every supported logger in ``trainer.loggers``, in the trainer's order."""
    return [s for s in (sink_for(lg) for lg in trainer.loggers) if s is not None]


def unsupported_loggers(trainer: L.Trainer) -> list[Logger]:
    """The loggers of ``trainer`` no sink writes to."""
    return [lg for lg in trainer.loggers if sink_for(lg) is None]


def log_image(trainer: L.Trainer, tag: str, picture: Picture) -> None:
    """Write ``picture`` to every logger at the trainer's global step (call on the global-zero rank)."""
    for sink in sinks_for(trainer):
        sink.image(tag, picture, int(trainer.global_step))


def log_table(trainer: L.Trainer, tag: str, table: Table) -> None:
    """Write ``table`` to every logger at the trainer's global step (call on the global-zero rank)."""
    for sink in sinks_for(trainer):
        sink.table(tag, table, int(trainer.global_step))


def log_scalars(trainer: L.Trainer, values: Mapping[str, float]) -> None:
    """Write float scalars to every logger at the trainer's global step (call on the global-zero rank)."""
    if values:
        for sink in sinks_for(trainer):
            sink.scalars(values, int(trainer.global_step))


def log_hparams(trainer: L.Trainer, metrics: Mapping[str, float]) -> None:
    """Put end-of-run results next to the run's hyperparameters (TensorBoard's HParams tab)."""
    for sink in sinks_for(trainer):
        sink.hparams({}, metrics, int(trainer.global_step))


def flush(trainer: L.Trainer) -> None:
    """Make the epoch's entries visible now (TensorBoard event files, ``metrics.csv``)."""
    for sink in sinks_for(trainer):
        sink.flush()
