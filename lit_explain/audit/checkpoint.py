"""Audit a checkpoint file: load the model and its data, record where they came from, run the audit."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# The module, not its functions: tests replace source.load_model to watch the order of work.
from lit_explain.audit import source
from lit_explain.audit.label_issues import label_issues_csv, missing_message
from lit_explain.audit.options import AuditOptions, default_output
from lit_explain.audit.progress import training_progress
from lit_explain.audit.run import run_audit
from lit_explain.audit.source import CheckpointFile
from lit_explain.data.base import ExplainableDataModule
from lit_explain.errors import ConfigError
from lit_explain.inference.explainer import resolve_device
from lit_explain.outputs import AtomicReportDir, locked_report

log = logging.getLogger(__name__)


def audit_checkpoint(
    ckpt_path: str | Path,
    output: str | Path | None = None,
    options: AuditOptions | None = None,
    *,
    data_config: str | Path | None = None,
    data_overrides: Mapping[str, Any] | None = None,
    datamodule: ExplainableDataModule | None = None,
    backbone: str | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Audit a checkpoint on the data it was trained on (or ``datamodule`` / ``data_config``).

    The file is read once (``weights_only=True``); the model, the data settings and the report's
    provenance all come from that one read. ``options`` is not modified (its ``extra`` is copied before
    the provenance is added).

    Example:
        >>> report = audit_checkpoint("lightning_logs/shapes_demo/version_0/checkpoints/last.ckpt",
        ...                           options=AuditOptions(split="val"))          # doctest: +SKIP
        >>> report["accuracy"], report["path"]                                  # doctest: +SKIP
    """
    options = options or AuditOptions()
    options.validate()
    output = Path(output) if output is not None else default_output(ckpt_path, options.split)
    # Refuse a bad --output before the (long) sweep, not only at the end.
    AtomicReportDir(output, overwrite=options.overwrite, kind="audit").check()
    # The report's lock from before the model loads until it is written: a second audit of the same
    # output is refused at once (run_audit's AtomicReportDir uses this lock; the CLI may hold it already).
    with locked_report(output):
        # One rule for audit, explain and serve: "auto" (the default) is CUDA when available, else the CPU.
        device = str(resolve_device(device))
        ckpt = CheckpointFile.read(ckpt_path, map_location=device)
        model = source.load_model(ckpt_path, map_location=device, backbone=backbone, checkpoint=ckpt.contents)
        spec = None
        if datamodule is None:
            spec = source.data_spec(ckpt_path, data_config, data_overrides, checkpoint=ckpt.contents)
            # Said before the data module is built: which file chose the code and data the audit runs.
            log.info(source.describe_spec(spec))
            datamodule = source.build_datamodule(spec)
        source.check_fits(model, datamodule, ckpt_path)
        extra = {**options.extra, **_provenance(ckpt, model, datamodule, spec)}
        options = dataclasses.replace(options, extra=extra)
        return run_audit(
            model,
            datamodule,
            output,
            options,
            device=device,
            label_issues=label_issues_path(ckpt_path, options),
        )


def _provenance(
    ckpt: CheckpointFile, model: Any, datamodule: ExplainableDataModule, spec: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Which checkpoint, epoch, metrics, backbone and data the report is about."""
    meta: dict[str, Any] = {}
    epoch = None
    if ckpt.path.endswith(".ckpt") and ckpt.contents is not None:
        extra = ckpt.contents.get("lit_explain") or {}
        meta = dict(extra.get("metrics") or {})
        epoch = extra.get("epoch", ckpt.contents.get("epoch"))
    if spec:
        data = {key: spec[key] for key in ("class_path", "init_args", "source", "origin")}
    else:
        data = {
            "class_path": f"{type(datamodule).__module__}.{type(datamodule).__qualname__}",
            "source": "given",
            "origin": "given",
        }
    return {
        "checkpoint": ckpt.path,
        "checkpoint_epoch": epoch,
        "checkpoint_metrics": meta,
        "backbone": model.hparams.get("backbone"),
        "data": data,
        "training_progress": training_progress(ckpt.contents or {}, ckpt.path),
    }


def label_issues_path(ckpt_path: str | Path, options: AuditOptions) -> Path | None:
    """The training run's ``label_issues.csv`` when ``--label_issues`` asks for it (one line when absent)."""
    if not options.label_issues:
        return None
    path = label_issues_csv(ckpt_path)
    if path is None:
        raise ConfigError(missing_message(ckpt_path))
    return path
