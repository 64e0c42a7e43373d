"""Run folders of fit / validate / test / predict: find the newest ``last.ckpt``, keep it the latest epoch,
continue a resumed run in its own folder, refuse a run folder that cannot be written before the run starts,
and take away the folder of a run that failed before its first batch.

Lightning looks for ``--ckpt_path last`` only in the *new* run's checkpoint folder (always empty with a
versioned logger), so it silently trains from scratch; :func:`newest_last_checkpoint` searches the run
folders instead. A failed run's folder is removed only when this process created it, no batch ran, and it
holds nothing but the files a logger writes while starting (checked by name, process id and time).
"""

from __future__ import annotations

import errno
import os
import re
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lit_explain.compat import checkpoint_schedule, continue_tensorboard_version, tensorboard_version_is_set
from lit_explain.outputs import OutputError

# Lightning names a second "last" checkpoint in the same folder last-v1.ckpt.
LAST_NAME = re.compile(r"^last(-v\d+)?\.ckpt$")
# Where a last.ckpt sits below a root: a ModelCheckpoint dirpath, a run without logger, a logger's run folder.
LAST_GLOBS = ("last*.ckpt", "checkpoints/last*.ckpt", "*/checkpoints/last*.ckpt")
# Errors that say a folder cannot be written to, whatever the run does differently.
WRITE_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST, errno.ENOSPC)
WHERE_TO_WRITE = "set --trainer.default_root_dir (or the logger's save_dir) to a writable folder"
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
    if (
        not isinstance(logger, TensorBoardLogger)
        or tensorboard_version_is_set(logger)
        or len(trainer.loggers) > 1
    ):
        return None  # a version the user chose, or several loggers: keep Lightning's behaviour
    run_dir = ckpt_path.parent.parent
    if ckpt_path.parent.name != "checkpoints" or run_dir.parent.resolve() != Path(logger.root_dir).resolve():
        return None
    continue_tensorboard_version(logger, run_dir.name, purge_step=step)
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


def keep_last_checkpoint_current(trainer: L.Trainer) -> list[ModelCheckpoint]:
    """Make every ``ModelCheckpoint(save_last=True, monitor=...)`` keep ``last.ckpt`` at the latest epoch.

    Lightning 2.6 rewrites such a ``last.ckpt`` only when the monitored value improves, so it can be many
    epochs old and ``--ckpt_path last`` resumes from there. As in the recipes, a second ModelCheckpoint
    without a monitor (``filename: last``) now writes it at the same times, and the monitored one keeps
    only its best checkpoints. Returns the checkpoints added.
    """
    added: list[ModelCheckpoint] = []
    for callback in list(trainer.callbacks):
        if not isinstance(callback, ModelCheckpoint) or not callback.save_last or callback.monitor is None:
            continue
        companion = _latest_companion(callback)
        present = [c for c in trainer.checkpoint_callbacks if c.state_key == companion.state_key]
        if present and not _writes_last(present[0], callback):
            rank_zero_warn(
                f"ModelCheckpoint(save_last=True, monitor={callback.monitor!r}) rewrites last.ckpt only when "
                "the monitor improves; use the recipes' pattern: save_last: false, plus a ModelCheckpoint with "
                "monitor: null, filename: last, enable_version_counter: false"
            )
            continue
        callback.save_last = False  # the companion writes last.ckpt; this one keeps the best epochs
        if not present:
            trainer.callbacks.insert(trainer.callbacks.index(callback) + 1, companion)
            added.append(companion)
        rank_zero_info(
            f"ModelCheckpoint(monitor={callback.monitor!r}, save_last=True): last.ckpt is rewritten at every "
            "checkpoint time, whatever the monitor does (as in the recipes)"
        )
    return added


def _latest_companion(callback: ModelCheckpoint) -> ModelCheckpoint:
    """A monitor-less ModelCheckpoint writing ``last.ckpt`` where and when ``callback`` checks."""
    return ModelCheckpoint(
        dirpath=callback.dirpath,
        filename=callback.CHECKPOINT_NAME_LAST,
        monitor=None,
        save_top_k=1,
        save_weights_only=callback.save_weights_only,
        **checkpoint_schedule(callback),
        enable_version_counter=False,  # a resumed run rewrites its own last.ckpt, not last-v1.ckpt
    )


def _writes_last(candidate: ModelCheckpoint, callback: ModelCheckpoint) -> bool:
    """Whether a monitor-less ``candidate`` already writes ``last.ckpt`` next to ``callback``'s checkpoints."""
    return candidate.filename == callback.CHECKPOINT_NAME_LAST and candidate.dirpath == callback.dirpath


def run_folder(trainer: L.Trainer) -> str:
    """The folder of this run: where ``ModelCheckpoint`` puts ``checkpoints/`` and ``config.yaml`` goes.

    TensorBoard and CSV: the logger's ``log_dir`` (``<save_dir>/<name>/version_N``). Any other logger
    (W&B, MLflow): ``<save_dir>/<name>/<version>`` as ``ModelCheckpoint`` builds it, i.e.
    ``<save_dir>/<project>/<run id>`` for W&B and ``<mlruns>/<experiment id>/<run id>`` for MLflow, not
    Lightning's ``trainer.log_dir`` (the logger's shared ``save_dir``, where a second run's config.yaml
    collides with the first). No logger: ``default_root_dir``. Call it on global rank zero only (it may
    start the tracker's run to learn its id).
    """
    if not trainer.loggers:
        return str(trainer.default_root_dir)
    logger = trainer.loggers[0]
    if isinstance(logger, (TensorBoardLogger, CSVLogger)):
        return str(logger.log_dir)
    _ = getattr(logger, "experiment", None)  # W&B knows its run id only once the run has started
    save_dir = logger.save_dir if logger.save_dir is not None else trainer.default_root_dir
    version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
    return os.path.join(str(save_dir), str(logger.name), version)


class RunConfigCallback(SaveConfigCallback):
    """LightningCLI's ``config.yaml``, saved into the run's own folder (:func:`run_folder`) for every logger.

    Lightning's :class:`SaveConfigCallback` writes ``trainer.log_dir``, which for W&B and MLflow is the
    ``save_dir`` all runs share: the second run in a folder stopped in setup, and the audit could not
    tell a checkpoint's config. Here each run's config sits above its ``checkpoints/``; a file already
    there (a W&B or MLflow run continued by id) is kept and the new one takes the next free name
    (``config-2.yaml``). W&B and MLflow runs also get the file itself: an artifact of type ``config``
    (W&B), the run artifact ``config.yaml`` (MLflow).

    Example:
        >>> LightningCLI(ImageClassifier, save_config_callback=RunConfigCallback)   # doctest: +SKIP
    """

    saved: str | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        if self.save_to_log_dir:
            # Worked out on rank zero (the tracker's run exists there only), then shared with every rank.
            folder = trainer.strategy.broadcast(run_folder(trainer) if trainer.is_global_zero else None)
            if trainer.is_global_zero:
                self.saved = self._write(folder)
        if trainer.is_global_zero:
            self.save_config(trainer, pl_module, stage)
            self.already_saved = True
        self.already_saved = trainer.strategy.broadcast(self.already_saved)

    def _write(self, folder: str) -> str:
        fs = get_filesystem(folder)
        name, n = self.config_filename, 1
        stem, suffix = os.path.splitext(name)
        while not self.overwrite and fs.isfile(os.path.join(folder, name)):
            n += 1
            name = f"{stem}-{n}{suffix}"
        fs.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, name)
        self.parser.save(
            self.config, path, skip_none=False, overwrite=self.overwrite, multifile=self.multifile
        )
        return path

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.saved is None or "://" in self.saved:
            return
        for logger in trainer.loggers:
            _log_config_file(logger, self.saved)


def _log_config_file(logger: Logger, path: str) -> None:
    """Hand the run's config.yaml to the tracker itself, so it travels with the run (e.g. after wandb sync)."""
    if isinstance(logger, MLFlowLogger):
        logger.experiment.log_artifact(logger.run_id, path)
    elif isinstance(logger, WandbLogger):
        import wandb

        run = logger.experiment
        artifact = wandb.Artifact(f"run-{run.id}-config", type="config")
        artifact.add_file(path, name="config.yaml")
        run.log_artifact(artifact)


def run_dirs(trainer: L.Trainer) -> list[Path]:
    """The local folders a run writes into: each logger's run folder and each ModelCheckpoint's ``dirpath``
    (remote ones, ``s3://...``, are the file system library's to check)."""
    places = [getattr(logger, "log_dir", None) for logger in trainer.loggers]
    places += [callback.dirpath for callback in trainer.checkpoint_callbacks]
    return [Path(str(place)) for place in places if place and "://" not in str(place)]


def check_run_dirs(trainer: L.Trainer) -> None:
    """Refuse, in one line, a run folder that cannot be created: a file in its way or a read-only parent.

    Checked before the run starts, so a bad ``save_dir`` costs no model setup and leaves no folder behind.
    """
    for folder in run_dirs(trainer):
        existing = next((p for p in [folder, *folder.parents] if p.exists()), Path.cwd())
        if not existing.is_dir():
            raise OutputError(f"cannot write the run folder {folder}: {existing} is a file; {WHERE_TO_WRITE}")
        if not _writable(existing):
            raise OutputError(
                f"cannot write the run folder {folder}: {existing} is not writable (read-only or no "
                f"permission); {WHERE_TO_WRITE}"
            )


def _writable(folder: Path) -> bool:
    # access(2) answers for this process as the kernel would (EROFS for read-only mounts, even for root).
    return os.access(folder, os.W_OK | os.X_OK)


def write_error(exc: BaseException, trainer: L.Trainer) -> OutputError | None:
    """A one-line :class:`OutputError` for an OSError writing inside a run folder; None for any other error."""
    if not isinstance(exc, OSError) or exc.errno not in WRITE_ERRNOS or not exc.filename:
        return None
    path = Path(os.fsdecode(exc.filename)).absolute()
    for folder in run_dirs(trainer):
        folder_path = folder.absolute()
        # The run folder itself, a file in it, or a folder on the way to it.
        if path == folder_path or folder_path in path.parents or path in folder_path.parents:
            reason = exc.strerror or errno.errorcode.get(exc.errno or 0, "error")
            return OutputError(f"cannot write the run folder {folder}: {path}: {reason}; {WHERE_TO_WRITE}")
    return None


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
