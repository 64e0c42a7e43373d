"""Where the callbacks write: every TensorBoard writer of the trainer, on the global-zero rank only."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.compat.proto.summary_pb2 import Summary

from lit_explain.render import encode_png

# Lightning's own stage names for the loops the callbacks take part in.
VALIDATING = "val"
TESTING = "test"


def tensorboard_writers(trainer: L.Trainer) -> list[Any]:
    """The ``SummaryWriter`` of every :class:`TensorBoardLogger` in ``trainer.loggers``; others are ignored.

    Only the global-zero rank has real writers (Lightning hands other ranks a dummy experiment), so
    callers render and log only where :func:`is_logging_rank` holds.
    """
    return [logger.experiment for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]


def is_logging_rank(trainer: L.Trainer) -> bool:
    """True on the global-zero rank of a run that has at least one TensorBoard logger."""
    return trainer.is_global_zero and any(isinstance(lg, TensorBoardLogger) for lg in trainer.loggers)


def stage_prefix(trainer: L.Trainer) -> str:
    """``"test"`` while ``trainer.test`` runs, ``"val"`` during fit's validation and ``trainer.validate``."""
    return TESTING if trainer.testing else VALIDATING


def explain_tag(trainer: L.Trainer, name: str) -> str:
    """Tag of a heatmap grid or explanation scalar: ``explain/NAME``, ``explain/test/NAME`` when testing."""
    return f"explain/{name}" if stage_prefix(trainer) == VALIDATING else f"explain/{TESTING}/{name}"


def log_step(trainer: L.Trainer) -> int:
    """The step the callbacks log at: the trainer's global step, like Lightning's own scalars."""
    return int(trainer.global_step)


def add_image(trainer: L.Trainer, tag: str, image: torch.Tensor) -> None:
    """Log a uint8 ``[3, H, W]`` image to every TensorBoard writer.

    The PNG is encoded once, at zlib level 1, and the same bytes go to every writer: PNG encoding at
    SummaryWriter's default level was half of the callbacks' epoch-end time on a CPU (docs/benchmarks.md).
    """
    writers = tensorboard_writers(trainer)
    if not writers:
        return
    step = log_step(trainer)
    picture = image.detach().cpu()
    channels, height, width = picture.shape
    summary = Summary(
        value=[
            Summary.Value(
                tag=tag,
                image=Summary.Image(
                    height=height,
                    width=width,
                    colorspace=channels,
                    encoded_image_string=encode_png(picture, compress_level=1),
                ),
            )
        ]
    )
    for writer in writers:
        file_writer = getattr(writer, "_get_file_writer", None)
        if file_writer is None:  # a SummaryWriter without torch's internals: its public API
            writer.add_image(tag, picture, global_step=step, dataformats="CHW")
        else:
            file_writer().add_summary(summary, step)


def add_scalars(trainer: L.Trainer, values: dict[str, float]) -> None:
    """Log plain float scalars to every TensorBoard writer (one entry per tag at the current step)."""
    step = log_step(trainer)
    for writer in tensorboard_writers(trainer):
        for tag, value in values.items():
            writer.add_scalar(tag, float(value), global_step=step)


def add_text(trainer: L.Trainer, tag: str, text: str) -> None:
    """Log Markdown text (TensorBoard's Text tab renders tables) to every TensorBoard writer."""
    step = log_step(trainer)
    for writer in tensorboard_writers(trainer):
        writer.add_text(tag, text, global_step=step)


def flush(trainer: L.Trainer) -> None:
    """Flush the writers so a running TensorBoard shows the epoch's pictures without waiting."""
    for writer in tensorboard_writers(trainer):
        writer.flush()
