"""``audit --log_to_run``: attach an audit report to the training run its checkpoint came from.

Lightning's ``ModelCheckpoint`` saves into ``<save_dir>/<name>/<version>/checkpoints/`` of the first
logger, which tells the run apart without any extra bookkeeping:

* MLflow (file store): ``<mlruns>/<experiment id>/<run id>/checkpoints/`` is the run's own folder
  (it holds MLflow's ``meta.yaml``): the report becomes the run's artifacts under ``audit/<report name>``;
* Weights & Biases: ``<save_dir>/<project>/<run id>/checkpoints/`` with the local run folder in
  ``<save_dir>/wandb/[offline-]run-<date>-<run id>``: the run is resumed and the report logged as an
  artifact of type ``audit-report`` (offline runs stay offline; ``wandb sync`` uploads them later);
* TensorBoard, CSV or no logger: the report is copied next to the checkpoint, in the run's log dir,
  unless it is already there (the audit's default output is next to the checkpoint).

A run folder that cannot be written (read-only, shared) is refused with one line before the audit
starts (:func:`check_attachable`), and, should writing still fail, after it: the finished report stays
where ``--output`` put it and nothing is left half-written in the run.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from lit_explain.errors import ConfigError, LitExplainError
from lit_explain.outputs import AtomicReportDir, OutputError, OutputExistsError

REPORT_ARTIFACT_TYPE = "audit-report"


@dataclass(frozen=True)
class RunRef:
    """The run a checkpoint belongs to: ``kind`` is ``"mlflow"``, ``"wandb"`` or ``"files"``."""

    kind: str
    run_id: str | None = None
    location: Path | None = None  # mlflow: the mlruns folder; wandb: the local run folder; files: the log dir
    project: str | None = None
    writes_into: Path | None = None  # the local folder attaching writes into, where known


def find_run(ckpt_path: str | Path) -> RunRef:
    """Which run wrote ``ckpt_path``, from where Lightning saved it (see the module docstring)."""
    ckpt = Path(ckpt_path).resolve()
    if not ckpt.is_file():
        raise ConfigError(f"--log_to_run: checkpoint {ckpt_path} not found")
    in_checkpoints = ckpt.parent.name == "checkpoints"
    run_dir = ckpt.parent.parent if in_checkpoints else ckpt.parent
    if in_checkpoints and (run_dir / "meta.yaml").is_file() and (run_dir.parent / "meta.yaml").is_file():
        # A file store keeps the run's artifacts in <run>/artifacts (elsewhere with a remote artifact root).
        artifacts = run_dir / "artifacts"
        return RunRef(
            "mlflow",
            run_id=run_dir.name,
            location=run_dir.parent.parent,
            writes_into=artifacts if artifacts.is_dir() else None,
        )
    if in_checkpoints:
        local = sorted(run_dir.parent.parent.glob(f"wandb/*run-*-{run_dir.name}"))
        if local:
            # Resuming the run writes a new local run folder next to the old one.
            return RunRef(
                "wandb",
                run_id=run_dir.name,
                location=local[-1],
                project=run_dir.parent.name,
                writes_into=local[-1].parent,
            )
    return RunRef("files", location=run_dir, writes_into=run_dir)


def _unwritable(run: RunRef, reason: str, outcome: str) -> OutputError:
    return OutputError(
        f"--log_to_run: cannot attach the report to the run: its folder {run.writes_into or run.location} "
        f"is not writable ({reason}); {outcome}. Leave out --log_to_run (choose where the report goes with "
        "--output), or make the run folder writable"
    )


def _attach_failed(run: RunRef, report: Path, exc: OSError) -> OutputError:
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return _unwritable(run, exc.strerror or str(exc), f"the report is only at {report}")
    return OutputError(
        f"--log_to_run: cannot attach the report to the run in {run.writes_into or run.location}: "
        f"{exc.strerror or exc}; the report is only at {report}"
    )


def check_attachable(report_dir: str | Path, ckpt_path: str | Path) -> None:
    """Raise before a long audit when :func:`attach_report` could not attach ``report_dir`` to the run.

    Checks what can be known beforehand: a copy that already exists, a run folder that is not writable
    (a read-only mount, or permissions for anyone but root).
    """
    report = Path(report_dir).absolute()
    run = find_run(ckpt_path)
    if run.kind == "files":
        if _already_there(report, run):
            return
        _refuse_existing(run.location / report.name)
    folder = run.writes_into
    if folder is not None and folder.is_dir() and not _writable(folder):
        raise _unwritable(run, "permission denied or read-only", "nothing was audited")


def _writable(folder: Path) -> bool:
    # access() answers for a read-only mount to anyone, and for permissions to anyone but root.
    return os.access(folder, os.W_OK | os.X_OK)


def attach_report(report_dir: str | Path, ckpt_path: str | Path) -> str:
    """Attach the finished report folder to the checkpoint's run; returns where it went, in words."""
    report = Path(report_dir)
    if not report.is_dir():
        raise ConfigError(f"--log_to_run: the report folder {report} does not exist")
    run = find_run(ckpt_path)
    try:
        if run.kind == "mlflow":
            return _to_mlflow(report, run)
        if run.kind == "wandb":
            return _to_wandb(report, run)
        return _to_folder(report, run)
    except OutputExistsError:
        raise
    except LitExplainError as exc:
        # outputs.py turns an OSError into a one-line OutputError chained to it; say it for --log_to_run.
        if not isinstance(exc.__cause__, OSError):
            raise
        raise _attach_failed(run, report, exc.__cause__) from None
    except OSError as exc:  # a copy or tracker write that failed (shutil.Error is an OSError too)
        raise _attach_failed(run, report, exc) from None


def _to_mlflow(report: Path, run: RunRef) -> str:
    from mlflow import MlflowClient

    uri = run.location.as_uri()
    MlflowClient(uri).log_artifacts(run.run_id, str(report), artifact_path=f"audit/{report.name}")
    return f"MLflow run {run.run_id} ({uri}), artifacts audit/{report.name}"


def _to_wandb(report: Path, run: RunRef) -> str:
    import wandb

    offline = run.location.name.startswith("offline-run-")
    session = wandb.init(
        project=run.project,
        id=run.run_id,
        resume="allow",
        dir=str(run.location.parent.parent),
        mode="offline" if offline else None,
        job_type="audit",
    )
    try:
        artifact = wandb.Artifact(_artifact_name(f"audit-{report.name}"), type=REPORT_ARTIFACT_TYPE)
        artifact.add_dir(str(report))
        session.log_artifact(artifact)
    finally:
        session.finish()
    where = "offline; upload with `wandb sync`" if offline else "online"
    return f"W&B run {run.project}/{run.run_id} ({where}), artifact {artifact.name} of type {REPORT_ARTIFACT_TYPE}"


def _already_there(report: Path, run: RunRef) -> bool:
    return run.location == report.resolve().parent


def _refuse_existing(dest: Path) -> None:
    if dest.exists() or dest.is_symlink():
        raise OutputExistsError(
            f"--log_to_run: {dest} already exists; remove it or audit into another --output"
        )


def _to_folder(report: Path, run: RunRef) -> str:
    log_dir = run.location
    if _already_there(report, run):
        return f"already in the run's folder {log_dir}"
    dest = log_dir / report.name
    _refuse_existing(dest)
    # Copied into a hidden folder that is renamed into place when complete and removed on any error:
    # a reader never sees half a report, a failed copy leaves nothing in the run folder.
    target = AtomicReportDir(dest, kind="audit")
    with target as tmp:
        shutil.copytree(report, tmp, dirs_exist_ok=True)
        target.commit()
    return f"copied next to the checkpoint: {dest}"


def _artifact_name(name: str) -> str:
    # W&B artifact names: letters, digits, '-', '_' and '.'.
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
