"""Checkpoint-time attention audit: one sweep over a split, CAMs for the shown samples, a report directory.

Example:
    >>> from lit_explain.audit import AuditOptions, audit_checkpoint
    >>> report = audit_checkpoint("best.ckpt", "audit_best", AuditOptions(split="val"))  # doctest: +SKIP
    >>> report["accuracy"], report["recommendations"][0]["message"]                       # doctest: +SKIP
"""

from lit_explain.audit.callback import AttentionAudit
from lit_explain.audit.checkpoint import audit_checkpoint
from lit_explain.audit.compare import compare_reports, load_report
from lit_explain.audit.options import AuditOptions, default_output
from lit_explain.audit.report import AtomicReportDir, ReportExistsError
from lit_explain.audit.run import run_audit
from lit_explain.audit.sweep import SweepResult, sweep

__all__ = [
    "AtomicReportDir",
    "AttentionAudit",
    "AuditOptions",
    "ReportExistsError",
    "SweepResult",
    "audit_checkpoint",
    "compare_reports",
    "default_output",
    "load_report",
    "run_audit",
    "sweep",
]
