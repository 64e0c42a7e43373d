"""CSVLogger: PNG files and CSV tables in the run's log dir, next to ``metrics.csv``.

Layout (``<log_dir>`` is ``CSVLogger.log_dir``, e.g. ``lightning_logs/version_0``)::

    <log_dir>/metrics.csv                                  scalars (CSVLogger's own file)
    <log_dir>/images/<tag>/step_<global step, 6 digits>.png
    <log_dir>/tables/<tag>/step_<global step, 6 digits>.csv

A tag's ``/`` become folders (``explain/probes`` -> ``images/explain/probes/``). A second picture at the
same tag and step (``trainer.validate`` after ``fit`` runs at the same global step) is written as
``step_000120-1.png``: files are never overwritten.
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.loggers import CSVLogger

from lit_explain.outputs import OutputExistsError, safe_name, write_bytes
from lit_explain.sinks.base import Sink
from lit_explain.sinks.items import Picture, Table

MAX_SAME_STEP = 1000


def tag_folder(root: Path, tag: str) -> Path:
    """``root / <tag's parts>``, each part a safe file name (no ``..``, no separators).

    Example:
        >>> tag_folder(Path("run/images"), "explain/test/worst").as_posix()
        'run/images/explain/test/worst'
    """
    return root.joinpath(*[safe_name(part) for part in tag.split("/") if part.strip()] or ["_"])


def write_new_file(folder: Path, stem: str, suffix: str, data: bytes) -> Path:
    """Write ``data`` atomically to ``folder/stem+suffix``, or to ``stem-1+suffix``... if that name is taken.

    Never overwrites: the final move of :func:`lit_explain.outputs.write_bytes` fails when the name
    exists (even if another writer creates it meanwhile), and the next suffix is tried.
    """
    for n in range(MAX_SAME_STEP):
        try:
            return write_bytes(folder / (f"{stem}{suffix}" if n == 0 else f"{stem}-{n}{suffix}"), data)
        except OutputExistsError:
            continue
    raise OutputExistsError(f"{folder}: {MAX_SAME_STEP} files named {stem}*{suffix} exist already")


class CsvFilesSink(Sink):
    """Writes pictures and tables as files in a :class:`~lightning.pytorch.loggers.CSVLogger`'s log dir.

    Scalars go to the logger's ``metrics.csv`` (through ``log_metrics``), with the training metrics.

    Example:
        >>> sink = CsvFilesSink(CSVLogger("lightning_logs"))
        >>> sink.image("explain/probes", Picture(grid), step=120)  # doctest: +SKIP
        # -> lightning_logs/lightning_logs/version_0/images/explain/probes/step_000120.png
    """

    logger: CSVLogger

    @property
    def root(self) -> Path:
        # The logger creates its folder when its experiment starts, and warns if it already holds files:
        # start it before the first picture lands there.
        _ = self.logger.experiment
        return Path(self.logger.log_dir)

    def image(self, tag: str, picture: Picture, step: int) -> None:
        write_new_file(tag_folder(self.root / "images", tag), f"step_{step:06d}", ".png", picture.png)

    def table(self, tag: str, table: Table, step: int) -> None:
        data = table.csv_text().encode("utf-8")
        write_new_file(tag_folder(self.root / "tables", tag), f"step_{step:06d}", ".csv", data)

    def flush(self) -> None:
        # CSVLogger buffers metrics until save(); saving now puts the epoch's scalars in metrics.csv.
        self.logger.save()
