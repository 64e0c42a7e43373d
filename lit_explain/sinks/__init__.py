"""Sinks: one writer per logger type, so a picture, table or scalar built once lands in every tracker.

The callbacks build each item once (a :class:`Picture` is PNG-encoded at most once, however many
loggers there are) and call :func:`log_image`, :func:`log_table`, :func:`log_scalars` on the global-zero
rank; the sink of each logger in ``trainer.loggers`` puts it where that tool's users look:

===================  ==================================  ===============================  ==================
logger               pictures                            tables                           scalars
===================  ==================================  ===============================  ==================
TensorBoardLogger    Images tab                          Text tab (Markdown)              Scalars tab
WandbLogger          ``wandb.Image`` with caption        ``wandb.Table`` (image columns)  charts
MLFlowLogger         step-indexed ``log_image``          ``tables/<tag>/step_N.csv``      metrics with step
CSVLogger            ``images/<tag>/step_N.png``         ``tables/<tag>/step_N.csv``      ``metrics.csv``
===================  ==================================  ===============================  ==================

All at the trainer's global step. ``wandb`` and ``mlflow`` are imported only by their sinks.

Example:
    >>> from lit_explain import sinks
    >>> sinks.log_image(trainer, "explain/probes", sinks.Picture(grid, caption="epoch 3"))  # doctest: +SKIP
"""

from lit_explain.sinks.base import Sink
from lit_explain.sinks.csv_sink import CsvFilesSink
from lit_explain.sinks.items import Picture, Table
from lit_explain.sinks.mlflow_sink import MlflowSink
from lit_explain.sinks.registry import (
    SINK_TYPES,
    SUPPORTED_LOGGERS,
    flush,
    log_hparams,
    log_image,
    log_scalars,
    log_table,
    sink_for,
    sinks_for,
    unsupported_loggers,
)
from lit_explain.sinks.tensorboard_sink import TensorBoardSink
from lit_explain.sinks.wandb_sink import WandbSink

__all__ = [
    "SINK_TYPES",
    "SUPPORTED_LOGGERS",
    "CsvFilesSink",
    "MlflowSink",
    "Picture",
    "Sink",
    "Table",
    "TensorBoardSink",
    "WandbSink",
    "flush",
    "log_hparams",
    "log_image",
    "log_scalars",
    "log_table",
    "sink_for",
    "sinks_for",
    "unsupported_loggers",
]
