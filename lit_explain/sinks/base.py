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

    def __init__(self, logger: Logger) -> None:
        self.logger = logger

    @abc.abstractmethod
    def image(self, tag: str, picture: Picture, step: int) -> None:
        """Write one picture under ``tag`` at ``step``."""

    @abc.abstractmethod
    def table(self, tag: str, table: Table, step: int) -> None:
        """Write one table under ``tag`` at ``step``."""

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        """Write float scalars at ``step``."""
        if values:
            self.logger.log_metrics({tag: float(v) for tag, v in values.items()}, step=step)

    def flush(self) -> None:
        """Make what was written visible to a tracker reading the files now (no-op where writes are direct)."""
        return None
