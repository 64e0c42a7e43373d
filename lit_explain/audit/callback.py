"""AttentionAudit: write the audit report next to every new best checkpoint while training."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lit_explain.audit.options import AuditOptions, default_output
from lit_explain.audit.progress import trainer_progress
from lit_explain.audit.run import run_audit
from lit_explain.data.base import ExplainableDataModule
from lit_explain.outputs import OutputError, remove_output_dir


class AttentionAudit(L.Callback):
    """Run the checkpoint audit whenever the ModelCheckpoint callback has a new best checkpoint.

    The report goes next to the checkpoint (``<ckpt dir>/<ckpt stem>_audit_<split>``), is written
    atomically, and is compared with the previous best's report. The audit runs on the global-zero rank
    only, outside sanity checking, in eval mode with the random number generators forked, so training
    continues exactly as it would without it.

    Args:
        options: the audit's settings (:class:`~lit_explain.audit.options.AuditOptions`: split, method,
            layer, max_samples, quality_samples, ...); default: all of the split, no progress bars.
            ``overwrite`` and ``compare_to`` are set by the callback (it replaces its own report for the
            same checkpoint and compares with the previous best's).
        compare_to_previous: add a comparison with the previous best checkpoint's report.
        remove_stale: delete the report of a previous best whose checkpoint file is gone (``save_top_k``).

    Example:
        >>> trainer = L.Trainer(callbacks=[ModelCheckpoint(monitor="val/acc", mode="max"),
        ...                                AttentionAudit(AuditOptions(max_samples=2000, progress=False))])
        >>> trainer.fit(model, datamodule=ShapesDataModule())   # doctest: +SKIP
    """

    def __init__(
        self,
        options: AuditOptions | None = None,
        compare_to_previous: bool = True,
        remove_stale: bool = True,
    ) -> None:
        # Inside training the audit's own progress bars would interleave with Lightning's.
        self.options = options if options is not None else AuditOptions(progress=False)
        self.options.validate()  # a bad setting fails when the trainer is built, not at the first best
        self.compare_to_previous = compare_to_previous
        self.remove_stale = remove_stale
        self.last_checkpoint: str | None = None
        self.last_mtime: float | None = None
        self.last_report: str | None = None
        self.reports: list[str] = []

    def state_dict(self) -> dict[str, Any]:
        return {
            "last_checkpoint": self.last_checkpoint,
            "last_mtime": self.last_mtime,
            "last_report": self.last_report,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_checkpoint = state_dict.get("last_checkpoint")
        self.last_mtime = state_dict.get("last_mtime")
        self.last_report = state_dict.get("last_report")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._maybe_audit(trainer, pl_module)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._maybe_audit(trainer, pl_module)

    def _maybe_audit(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        checkpoint_cb = trainer.checkpoint_callback
        best = getattr(checkpoint_cb, "best_model_path", "") if checkpoint_cb is not None else ""
        if not best or not Path(best).is_file():
            return
        mtime = Path(best).stat().st_mtime
        if best == self.last_checkpoint and mtime == self.last_mtime:
            return
        datamodule = getattr(trainer, "datamodule", None)
        if not isinstance(datamodule, ExplainableDataModule):
            rank_zero_warn("AttentionAudit needs a lit_explain ExplainableDataModule; skipping the audit")
            self.last_checkpoint, self.last_mtime = best, mtime
            return
        previous = self.last_report if self.last_report and Path(self.last_report).is_dir() else None
        output = default_output(best, self.options.split)
        compare = self.compare_to_previous and previous and previous != str(output)
        options = dataclasses.replace(
            self.options,
            overwrite=True,
            compare_to=previous if compare else None,
            extra={**self.options.extra, **_provenance(trainer, best)},
        )
        report = run_audit(pl_module, datamodule, output, options)
        rank_zero_info(f"AttentionAudit: {report['path']} (accuracy {report['accuracy']:.4f})")
        stale = previous and previous != report["path"] and self.last_checkpoint
        if self.remove_stale and stale and not Path(self.last_checkpoint).exists():
            try:
                remove_output_dir(previous)  # only a report lit_explain wrote, untouched since
            except OutputError as exc:
                rank_zero_warn(f"AttentionAudit: kept the previous report: {exc}")
        self.last_checkpoint, self.last_mtime, self.last_report = best, mtime, report["path"]
        self.reports.append(report["path"])


def _provenance(trainer: L.Trainer, checkpoint: str) -> dict[str, Any]:
    """Which checkpoint, epoch and metrics the report is about (as the audit command records them)."""
    return {
        "checkpoint": checkpoint,
        "checkpoint_epoch": trainer.current_epoch,
        "checkpoint_metrics": {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1},
        "training_progress": trainer_progress(trainer),
    }
