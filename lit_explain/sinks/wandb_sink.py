"""Weights & Biases: ``wandb.Image`` with captions, ``wandb.Table`` with image columns, charts for scalars.

``wandb`` is imported here only, when a :class:`~lightning.pytorch.loggers.WandbLogger` is in use (the
``lit_explain[wandb]`` extra); without it, Lightning's WandbLogger itself refuses to start.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger

from lit_explain.sinks.base import Sink
from lit_explain.sinks.items import Picture, Table


class WandbSink(Sink):
    """Logs through the :class:`~lightning.pytorch.loggers.WandbLogger` with the trainer's global step.

    Everything goes through ``WandbLogger.log_metrics``, which adds ``trainer/global_step`` (the x axis
    Lightning declares for every W&B chart), so the pictures' step slider lines up with the loss curves.
    ``wandb.Image`` is given the picture's PNG file, which W&B copies as is: no second encoding.

    Example:
        >>> sink = WandbSink(WandbLogger(project="shapes", offline=True))
        >>> sink.image("explain/probes", Picture(grid, "12 probes, 10 right"), step=120)  # doctest: +SKIP
    """

    logger: WandbLogger
    # wandb's run.log is not thread-safe (wandb/wandb#1824): the background writer renders and encodes,
    # and the training thread makes the call.
    thread_safe = False

    def image(self, tag: str, picture: Picture, step: int) -> None:
        with tempfile.TemporaryDirectory(prefix="lit_explain_wandb_") as folder:
            self.logger.log_metrics({tag: _image(picture, Path(folder), "picture")}, step=step)

    def table(self, tag: str, table: Table, step: int) -> None:
        import wandb

        image_columns = list(table.images)
        with tempfile.TemporaryDirectory(prefix="lit_explain_wandb_") as folder:
            data = [
                [
                    *row,
                    *(
                        _image(table.images[c][r], Path(folder), f"{r}_{k}")
                        for k, c in enumerate(image_columns)
                    ),
                ]
                for r, row in enumerate(table.rows)
            ]
            # W&B copies media files when the row is logged, so the folder can go right after.
            wandb_table = wandb.Table(columns=[*table.columns, *image_columns], data=data)
            self.logger.log_metrics({tag: wandb_table}, step=step)


def _image(picture: Picture, folder: Path, name: str) -> Any:
    import wandb

    path = folder / f"{name}.png"
    path.write_bytes(picture.png)
    return wandb.Image(str(path), caption=picture.caption or None)
