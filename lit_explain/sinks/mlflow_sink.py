"""MLflow: step-indexed images (the run's image charts), CSV table artifacts, metrics with steps.

``mlflow`` is only used through the :class:`~lightning.pytorch.loggers.MLFlowLogger`'s own client (the
``lit_explain[mlflow]`` extra); without it, Lightning's MLFlowLogger itself refuses to start.

Where things go in the run:

* pictures: ``MlflowClient.log_image(key=tag, step=step)``, MLflow's time-stepped images, shown in the
  run's charts with a step slider (stored under the run's ``images/`` artifacts);
* tables: ``tables/<tag>/step_<global step, 6 digits>.csv`` artifacts (the UI previews CSV files);
* scalars: ``log_metric`` with the step, through the logger.
"""

from __future__ import annotations

from lightning.pytorch.loggers import MLFlowLogger

from lit_explain.sinks.base import Sink
from lit_explain.sinks.items import Picture, Table


class MlflowSink(Sink):
    """Writes into the run of a :class:`~lightning.pytorch.loggers.MLFlowLogger`.

    MLflow's image API takes an array and writes its own PNG plus a WebP thumbnail (that is what its
    image charts read), so this sink hands it the picture's pixels rather than the shared PNG bytes.

    Example:
        >>> sink = MlflowSink(MLFlowLogger(tracking_uri="file:./mlruns"))
        >>> sink.image("explain/probes", Picture(grid), step=120)  # doctest: +SKIP
    """

    logger: MLFlowLogger

    def __init__(self, logger: MLFlowLogger) -> None:
        super().__init__(logger)
        self._tables: set[str] = set()

    def image(self, tag: str, picture: Picture, step: int) -> None:
        self.logger.experiment.log_image(self.logger.run_id, picture.hwc, key=tag, step=step)

    def table(self, tag: str, table: Table, step: int) -> None:
        # Artifacts are overwritten silently by MLflow; a second table at the same step (validate after
        # fit) gets a suffix instead.
        stem = f"tables/{tag}/step_{step:06d}"
        name, n = f"{stem}.csv", 0
        while name in self._tables:
            n += 1
            name = f"{stem}-{n}.csv"
        self._tables.add(name)
        self.logger.experiment.log_text(self.logger.run_id, table.csv_text(), name)
