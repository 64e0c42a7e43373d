"""Run folders of fit / validate / test / predict: find the newest ``last.ckpt``, continue a resumed run in
its own folder, and take away the folder of a run that failed before its first batch.

Lightning looks for ``--ckpt_path last`` only in the *new* run's checkpoint folder (always empty with a
versioned logger), so it silently trains from scratch; :func:`newest_last_checkpoint` searches the run
folders instead. A failed run's folder is removed only when this process created it, no batch ran, and it
holds nothing but the files a logger writes while starting (checked by name, process id and time).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import TensorBoardLogger

# Lightning names a second "last" checkpoint in the same folder last-v1.ckpt.
LAST_NAME = re.compile(r"^last(-v\d+)?\.ckpt$")
# Where a last.ckpt sits below a root: a ModelCheckpoint dirpath, a run without logger, a logger's run folder.
LAST_GLOBS = ("last*.ckpt", "checkpoints/last*.ckpt", "*/checkpoints/last*.ckpt")
# Files loggers and the CLI write while a run starts (before any batch), the only ones cleanup may remove.
STARTUP_FILES = ("hparams.yaml", "config.yaml", "metrics.csv")


def newest_last_checkpoint(roots: Iterable[str | Path]) -> Path | None:
    """The most recently written ``last.ckpt`` below any of ``roots`` (run folders of a logger), or None.

    Example:
        >>> newest_last_checkpoint(["lightning_logs/shapes_demo"])
        PosixPath('lightning_logs/shapes_demo/version_3/checkpoints/last.ckpt')
    """
    found: set[Path] = set()
    for root in map(Path, roots):
        for pattern in LAST_GLOBS:
            found.update(p for p in root.glob(pattern) if LAST_NAME.match(p.name) and p.is_file())
    if not found:
        return None
    # Newest file first; on equal times the later version folder ("version_10" after "version_9").
    return max(found, key=lambda p: (p.stat().st_mtime, _natural(str(p))))


def _natural(text: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def logging_step(checkpoint: dict[str, Any]) -> int:
    """The step Lightning's loggers continue at after resuming from ``checkpoint``."""
    loop = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.state_dict", {})
    return int(loop.get("_batches_that_stepped", checkpoint.get("global_step", 0)))


def continue_run_folder(trainer: L.Trainer, ckpt_path: Path, step: int) -> Path | None:
    """Point the trainer's TensorBoard logger at the run folder that holds ``ckpt_path``, if it has one.

    The resumed run then writes into ``version_K/`` again, with TensorBoard's ``purge_step`` so that the
    steps the interrupted run logged after its checkpoint are dropped instead of appearing twice. Returns
    the run folder, or None when the checkpoint is not in a run folder of this logger (a new one is used).
    """
    logger = trainer.logger
    if not isinstance(logger, TensorBoardLogger) or logger._version is not None or len(trainer.loggers) > 1:
        return None  # a version the user chose, or several loggers: keep Lightning's behaviour
    run_dir = ckpt_path.parent.parent
    if ckpt_path.parent.name != "checkpoints" or run_dir.parent.resolve() != Path(logger.root_dir).resolve():
        return None
    logger._version = run_dir.name
    logger._kwargs["purge_step"] = step
    for callback in trainer.callbacks:
        if isinstance(callback, SaveConfigCallback):
            # Keep the interrupted run's config.yaml; the resumed run's config goes next to it.
            callback.config_filename = _free_name(run_dir, f"config-resumed-step{step}", ".yaml")
    return run_dir


def _free_name(folder: Path, stem: str, suffix: str) -> str:
    name, n = stem + suffix, 1
    while (folder / name).exists():
        n += 1
        name = f"{stem}-{n}{suffix}"
    return name


class BatchTracker(L.Callback):
    """Records whether any batch ran (sanity-check batches excluded): a run that fails before has logged nothing."""

    def __init__(self) -> None:
        self.ran = False

    def _seen(self, trainer: L.Trainer, *_: Any) -> None:
        if not trainer.sanity_checking:
            self.ran = True

    on_train_batch_start = _seen
    on_validation_batch_start = _seen
    on_test_batch_start = _seen
    on_predict_batch_start = _seen


class RunFolderGuard:
    """Snapshot of the run folders a trainer's loggers will create, to remove them if the run fails early.

    Example:
        >>> guard = RunFolderGuard(trainer, tracker)
        >>> try:
        ...     trainer.fit(model, datamodule=data)
        ... except Exception:
        ...     guard.remove_unused()
        ...     raise
    """

    def __init__(self, trainer: L.Trainer, tracker: BatchTracker) -> None:
        self.tracker = tracker
        self.pid = os.getpid()
        self.started = time.time() - 1.0  # file times have a coarse resolution on some file systems
        self.created: list[list[Path]] = []  # per new run folder: it and its parents that do not exist yet
        for logger in trainer.loggers:
            log_dir = getattr(logger, "log_dir", None)
            if log_dir is None:
                continue
            new = [p for p in [Path(log_dir), *Path(log_dir).parents] if not p.exists()]
            if new:
                self.created.append(new)

    def remove_unused(self) -> list[Path]:
        """Remove the new run folders if no batch ran and they hold only startup files; the removed paths."""
        if self.tracker.ran:
            return []
        removed: list[Path] = []
        for folders in self.created:
            run_dir = folders[0]
            files = self._startup_files(run_dir)
            if files is None:
                continue
            try:
                for file in files:
                    file.unlink()
                for directory in sorted((p for p in run_dir.rglob("*") if p.is_dir()), reverse=True):
                    directory.rmdir()  # empty by the check above; fails (and keeps all) if not
                for folder in folders:  # the run folder, then parents this run created, while empty
                    if folder.is_dir() and not any(folder.iterdir()):
                        folder.rmdir()
                        removed.append(folder)
            except OSError:
                continue  # something else is writing there: leave the rest as it is
        return removed

    def _startup_files(self, run_dir: Path) -> Sequence[Path] | None:
        """The files in ``run_dir`` if every one is a startup file this process wrote; None otherwise."""
        if not run_dir.is_dir():
            return None
        files = []
        for path in run_dir.rglob("*"):
            if path.is_dir() and not path.is_symlink():
                continue
            if not path.is_file() or path.is_symlink() or path.stat().st_mtime < self.started:
                return None
            ours = path.name in STARTUP_FILES or (
                path.name.startswith("events.out.tfevents.") and f".{self.pid}." in path.name
            )
            if not ours or path.parent != run_dir:
                return None
            files.append(path)
        return files
