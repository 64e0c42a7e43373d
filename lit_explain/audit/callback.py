"""AttentionAudit: write the audit report next to every new best checkpoint while training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lit_explain.audit.options import AuditOptions, default_output
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
        split: split of the trainer's data module to audit (``"val"`` or ``"test"``).
        max_samples: audit only the first ``max_samples`` samples of the split (faster; None = all).
        method, layer: CAM method and layer (None = the last spatial layer).
        compare_to_previous: add a comparison with the previous best checkpoint's report.
        remove_stale: delete the report of a previous best whose checkpoint file is gone (``save_top_k``).
        quality_samples: probe images for the faithfulness and randomisation checks.
        progress: show the audit's own progress bars.

    Example:
        >>> trainer = L.Trainer(callbacks=[ModelCheckpoint(monitor="val/acc", mode="max"),
        ...                                AttentionAudit(max_samples=2000)])
        >>> trainer.fit(model, datamodule=ShapesDataModule())   # doctest: +SKIP
    """

    def __init__(
        self,
        split: str = "val",
        max_samples: int | None = None,
        method: str = "gradcam",
        layer: str | None = None,
        compare_to_previous: bool = True,
        remove_stale: bool = True,
        quality_samples: int = 32,
        progress: bool = False,
    ) -> None:
        self.options = dict(
            split=split,
            max_samples=max_samples,
            method=method,
            layer=layer,
            quality_samples=quality_samples,
            progress=progress,
        )
        AuditOptions(**self.options).validate()
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
        output = default_output(best, self.options["split"])
        options = AuditOptions(
            **self.options,
            overwrite=True,
            compare_to=previous
            if self.compare_to_previous and previous and previous != str(output)
            else None,
            extra={
                "checkpoint": best,
                "checkpoint_epoch": trainer.current_epoch,
                "checkpoint_metrics": {
                    k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1
                },
            },
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
