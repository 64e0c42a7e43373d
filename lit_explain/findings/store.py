"""``<run folder>/findings.json``: every finding a run made, one JSON list, rewritten atomically.

Each entry has at least ``kind`` (``"shortcut"``, ``"label_issues"``), ``epoch``, ``severity``, ``message``
(what, where, the numbers and what to do) and ``region`` (``[x0, y0, x1, y1]`` in input pixels, or null).
Earlier entries are kept when new ones are recorded; the file exists (possibly ``[]``) after every fit.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from lit_explain.outputs import OutputError, dumps_json, write_text

FINDINGS_FILE = "findings.json"
Severity = Literal["info", "warning", "critical"]
SEVERITIES: tuple[str, ...] = ("info", "warning", "critical")


@dataclass(frozen=True)
class Finding:
    """One thing the run found wrong, with the numbers behind it and what to do about it.

    Example:
        >>> f = Finding("shortcut", epoch=3, severity="warning", message="...", region=[0, 0, 12, 12])
        >>> f.as_dict()["region"]
        [0, 0, 12, 12]
    """

    kind: str
    epoch: int
    severity: Severity
    message: str
    region: list[int] | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}, got {self.severity!r}")
        if self.region is not None and len(self.region) != 4:
            raise ValueError(f"region must be [x0, y0, x1, y1], got {self.region!r}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_findings(run_dir: str | Path) -> list[dict[str, Any]]:
    """The findings recorded in ``run_dir`` (``[]`` when there is no file yet).

    Raises:
        OutputError: the file exists but is not a JSON list (it is never overwritten then).
    """
    path = Path(run_dir) / FINDINGS_FILE
    if not path.is_file():
        return []
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OutputError(
            f"{path} is not a findings file lit_explain can read ({exc}); move it away"
        ) from exc
    if not isinstance(entries, list):
        raise OutputError(f"{path} is not a JSON list of findings; move it away")
    return entries


def record_findings(run_dir: str | Path, findings: Iterable[Finding] = ()) -> Path:
    """Append ``findings`` to ``run_dir/findings.json`` (created as ``[]`` when absent), atomically.

    Called with no findings it only makes sure the file exists, so every run has one.

    Example:
        >>> record_findings(tmp_path)                                             # doctest: +SKIP
        PosixPath('.../findings.json')
    """
    entries = read_findings(run_dir)
    new = [f.as_dict() for f in findings]
    path = Path(run_dir) / FINDINGS_FILE
    if path.is_file() and not new:
        return path
    return write_text(path, dumps_json(entries + new) + "\n", overwrite=True)
