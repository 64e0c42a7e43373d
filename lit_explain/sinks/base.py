"""The interface every sink implements: write a picture, a table, scalars at a step, then flush."""

from __future__ import annotations

import abc
from collections.abc import Mapping

from lightning.pytorch.loggers import Logger

from lit_explain.sinks.items import Picture, Table


class Sink(abc.ABC):
    """Writes what the callbacks built into one Lightning logger, in that tracker's own form.

    Sinks run on the global-zero rank only (the callbacks check it); ``step`` is the trainer's global
    step, the x axis of Lightning's own scalars. Scalars go through the logger's ``log_metrics`` by
    default, so they sit with the training metrics (TensorBoard scalars, W&B charts, MLflow metrics,
    ``metrics.csv``).
    """

    # Whether image/table/text writes may run on the background writer's thread. A sink whose library is
    # not thread-safe (W&B's run.log) gets them on the training thread, already rendered and encoded.
    thread_safe: bool = True

    def __init__(self, logger: Logger) -> None:
        self.logger = logger

    @abc.abstractmethod
    def image(self, tag: str, picture: Picture, step: int) -> None:
        """Write one picture under ``tag`` at ``step``."""

    @abc.abstractmethod
    def table(self, tag: str, table: Table, step: int) -> None:
        """Write one table under ``tag`` at ``step``."""

    def text(self, tag: str, text: str, step: int) -> None:
        """Write a short text (a finding, a note) under ``tag``: by default a one-cell table."""
        self.table(tag, Table(("text",), [[text]]), step)

    def hparams(self, params: Mapping[str, object], metrics: Mapping[str, float], step: int) -> None:
        """Put the run's end results next to its hyperparameters where the tracker has such a view."""
        return None

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        """Write float scalars at ``step``."""
        if values:
            self.logger.log_metrics({tag: float(v) for tag, v in values.items()}, step=step)

    def flush(self) -> None:
        """Make what was written visible to a tracker reading the files now (no-op where writes are direct).

        Called on the training thread (it may write the logger's own metrics file)."""
        return None

    def flush_pictures(self) -> None:
        """Make pictures written from the background writer visible; called on the writer's thread."""
        return None
