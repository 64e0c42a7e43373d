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
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from lit_explain.errors import ConfigError
from lit_explain.outputs import OutputExistsError

REPORT_ARTIFACT_TYPE = "audit-report"


@dataclass(frozen=True)
class RunRef:
    """The run a checkpoint belongs to: ``kind`` is ``"mlflow"``, ``"wandb"`` or ``"files"``."""

    kind: str
    run_id: str | None = None
    location: Path | None = None  # mlflow: the mlruns folder; wandb: the local run folder; files: the log dir
    project: str | None = None


def find_run(ckpt_path: str | Path) -> RunRef:
    """Which run wrote ``ckpt_path``, from where Lightning saved it (see the module docstring)."""
    ckpt = Path(ckpt_path).resolve()
    if not ckpt.is_file():
        raise ConfigError(f"--log_to_run: checkpoint {ckpt_path} not found")
    in_checkpoints = ckpt.parent.name == "checkpoints"
    run_dir = ckpt.parent.parent if in_checkpoints else ckpt.parent
    if in_checkpoints and (run_dir / "meta.yaml").is_file() and (run_dir.parent / "meta.yaml").is_file():
        return RunRef("mlflow", run_id=run_dir.name, location=run_dir.parent.parent)
    if in_checkpoints:
        local = sorted(run_dir.parent.parent.glob(f"wandb/*run-*-{run_dir.name}"))
        if local:
            return RunRef("wandb", run_id=run_dir.name, location=local[-1], project=run_dir.parent.name)
    return RunRef("files", location=run_dir)


def attach_report(report_dir: str | Path, ckpt_path: str | Path) -> str:
    """Attach the finished report folder to the checkpoint's run; returns where it went, in words."""
    report = Path(report_dir)
    if not report.is_dir():
        raise ConfigError(f"--log_to_run: the report folder {report} does not exist")
    run = find_run(ckpt_path)
    if run.kind == "mlflow":
        return _to_mlflow(report, run)
    if run.kind == "wandb":
        return _to_wandb(report, run)
    return _to_folder(report, run)


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


def _to_folder(report: Path, run: RunRef) -> str:
    log_dir = run.location
    if log_dir == report.resolve().parent:
        return f"already in the run's folder {log_dir}"
    dest = log_dir / report.name
    if dest.exists():
        raise OutputExistsError(
            f"--log_to_run: {dest} already exists; remove it or audit into another --output"
        )
    # Copied under a hidden name and renamed when complete: a reader never sees half a report.
    tmp = log_dir / f".{report.name}.tmp-{os.getpid()}"
    shutil.copytree(report, tmp)
    try:
        os.rename(tmp, dest)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # our own partial copy, never the user's files
        raise OutputExistsError(
            f"--log_to_run: {dest} appeared while copying; nothing was replaced"
        ) from None
    return f"copied next to the checkpoint: {dest}"


def _artifact_name(name: str) -> str:
    # W&B artifact names: letters, digits, '-', '_' and '.'.
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
