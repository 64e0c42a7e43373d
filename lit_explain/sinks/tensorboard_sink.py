"""TensorBoard: images in the Images tab, tables as Markdown in the Text tab, scalars in Scalars."""

from __future__ import annotations

from collections.abc import Mapping

from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.compat.proto.summary_pb2 import Summary

from lit_explain.compat import summary_file_writer, use_fast_tensorboard_crc
from lit_explain.sinks.base import Sink
from lit_explain.sinks.items import Picture, Table


class TensorBoardSink(Sink):
    """Writes into a :class:`~lightning.pytorch.loggers.TensorBoardLogger`'s ``SummaryWriter``.

    Images are written as an image summary holding the picture's PNG bytes, so the encoding is the
    picture's own (done once for every sink) rather than SummaryWriter's re-encoding.

    Example:
        >>> sink = TensorBoardSink(TensorBoardLogger("lightning_logs"))
        >>> sink.image("explain/probes", Picture(grid, "probes"), step=120)  # doctest: +SKIP
    """

    logger: TensorBoardLogger

    def __init__(self, logger: TensorBoardLogger) -> None:
        super().__init__(logger)
        # Event records are checksummed in pure Python unless a C CRC32C is installed (compat explains).
        use_fast_tensorboard_crc()

    def image(self, tag: str, picture: Picture, step: int) -> None:
        writer = self.logger.experiment
        file_writer = summary_file_writer(writer)
        if file_writer is None:  # a SummaryWriter without torch's internals: its public API
            writer.add_image(tag, picture.image, global_step=step, dataformats="CHW")
            return
        encoded = Summary.Image(
            height=picture.height,
            width=picture.width,
            colorspace=picture.channels,
            encoded_image_string=picture.png,
        )
        file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=encoded)]), step)

    def table(self, tag: str, table: Table, step: int) -> None:
        self.logger.experiment.add_text(tag, table.markdown(), global_step=step)

    def text(self, tag: str, text: str, step: int) -> None:
        self.logger.experiment.add_text(tag, text, global_step=step)

    def hparams(self, params: Mapping[str, object], metrics: Mapping[str, float], step: int) -> None:
        # The hyperparameters Lightning logged at the start, now with metrics: one HParams session.
        self.logger.log_hyperparams(dict(params or self.logger.hparams), metrics=dict(metrics), step=step)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        # The writer directly, not log_metrics: TensorBoardLogger.log_metrics also feeds its hparams
        # bookkeeping, which these explanation scalars are not part of.
        writer = self.logger.experiment
        for tag, value in values.items():
            writer.add_scalar(tag, float(value), global_step=step)

    def flush(self) -> None:
        self.logger.experiment.flush()

    def flush_pictures(self) -> None:
        # SummaryWriter queues events for its own writer thread: flushing from the worker is safe.
        self.logger.experiment.flush()
