"""Findings: pure functions that turn maps and training dynamics into statements with numbers.

No Lightning here: the callbacks (``ShortcutAlarm``, ``TrainingDynamics``) and the audit call these
functions and write what they return through :mod:`lit_explain.findings.store`.
"""

from lit_explain.findings.store import FINDINGS_FILE, Finding, read_findings, record_findings

__all__ = ["FINDINGS_FILE", "Finding", "read_findings", "record_findings"]
