"""Compare two audits: per-class accuracy change and attention drift on the shared probe images."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lit_explain.audit.report import REPORT_FILE
from lit_explain.errors import ConfigError
from lit_explain.explain import drift
from lit_explain.outputs import write_bytes, write_csv

PROBE_FILE = "attention_probe.pt"
COMPARE_CSV = "compare_per_class.csv"
COMPARE_PNG = "compare_per_class.png"


def load_report(path: str | Path) -> tuple[dict[str, Any], Path]:
    """``(report dict, report directory)`` from a report directory or its ``report.json``."""
    path = Path(path)
    file = path / REPORT_FILE if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(
            f"--compare_to {str(path)!r}: no {REPORT_FILE} there (point it at an audit report directory)"
        )
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--compare_to {str(file)!r} is not a readable audit report: {exc}") from exc
    if not isinstance(data, dict) or "per_class" not in data or "schema_version" not in data:
        raise ConfigError(
            f"--compare_to {str(file)!r} is not a lit_explain audit report (no per_class / schema_version)"
        )
    return data, file.parent


def _probe(directory: Path) -> dict[str, Any] | None:
    file = directory / PROBE_FILE
    if not file.is_file():
        return None
    return torch.load(file, map_location="cpu", weights_only=True)


def compare_reports(report: Mapping[str, Any], directory: Path, other: str | Path) -> dict[str, Any]:
    """Per-class accuracy change (this minus other) and attention drift (1 - Pearson r) on common probes.

    Classes are matched by name. Drift needs both audits to have probed the same split: it is computed on
    the probe images (dataset indices) the two reports share, from the maps for the true class.
    """
    theirs, their_dir = load_report(other)
    before = {r["name"]: r for r in theirs["per_class"]}
    rows = []
    for r in report["per_class"]:
        o = before.get(r["name"])
        a_now, a_before = r["accuracy"], (o or {}).get("accuracy")
        a_before = float("nan") if a_before is None else a_before
        rows.append(
            {
                "id": r["id"],
                "name": r["name"],
                "accuracy": a_now,
                "other_accuracy": a_before,
                "delta": a_now - a_before if o else float("nan"),
                "attention_drift": float("nan"),
                "drift_samples": 0,
            }
        )
    drift_mean, n_drift = float("nan"), 0
    mine, others = _probe(directory), _probe(their_dir)
    if mine is not None and others is not None and mine["split"] == others["split"]:
        where = {int(i): k for k, i in enumerate(others["indices"].tolist())}
        pairs = [(k, where[int(i)]) for k, i in enumerate(mine["indices"].tolist()) if int(i) in where]
        if pairs:
            a = mine["maps"][[k for k, _ in pairs]].float()
            b = others["maps"][[j for _, j in pairs]].float()
            per_sample = drift(a, b, reduction="none")
            labels = mine["labels"][[k for k, _ in pairs]]
            drift_mean, n_drift = float(per_sample.mean()), len(pairs)
            by_id = {row["id"]: row for row in rows}
            for c in labels.unique().tolist():
                if c in by_id:
                    sel = labels == c
                    by_id[c]["attention_drift"] = float(per_sample[sel].mean())
                    by_id[c]["drift_samples"] = int(sel.sum())
    return {
        "other": str(Path(other)),
        "other_split": theirs.get("split"),
        "other_checkpoint": theirs.get("checkpoint"),
        "accuracy": report["accuracy"],
        "other_accuracy": theirs.get("accuracy"),
        "accuracy_delta": report["accuracy"] - theirs["accuracy"]
        if theirs.get("accuracy") is not None
        else None,
        "attention_drift_mean": drift_mean,
        "drift_samples": n_drift,
        "per_class": rows,
        "table": COMPARE_CSV,
        "figure": COMPARE_PNG,
    }


def write_compare_files(directory: Path, compare: Mapping[str, Any]) -> None:
    """compare_per_class.csv and compare_per_class.png (accuracy change and drift per class)."""
    rows = compare["per_class"]
    write_csv(
        directory / COMPARE_CSV,
        fields=[
            "class_id",
            "class_name",
            "accuracy",
            "other_accuracy",
            "delta",
            "attention_drift",
            "drift_samples",
        ],
        rows=[
            [
                r["id"],
                r["name"],
                r["accuracy"],
                r["other_accuracy"],
                r["delta"],
                r["attention_drift"],
                r["drift_samples"],
            ]
            for r in rows
        ],
    )
    write_bytes(directory / COMPARE_PNG, _figure_png(rows, compare), overwrite=True)


def _figure_png(rows: list[Mapping[str, Any]], compare: Mapping[str, Any]) -> bytes:
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    order = sorted(rows, key=lambda r: (math.isnan(r["delta"]), r["delta"]))
    names = [r["name"][:24] for r in order]
    delta = np.array([0.0 if math.isnan(r["delta"]) else r["delta"] for r in order])
    drift_v = np.array([0.0 if math.isnan(r["attention_drift"]) else r["attention_drift"] for r in order])
    height = max(3.0, 0.18 * len(order) + 1.2)
    fig = Figure(figsize=(10, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2, sharey=True)
    y = np.arange(len(order))
    ax1.barh(y, delta, color=np.where(delta >= 0, "#2e7d32", "#c62828"))
    ax1.axvline(0, color="black", lw=0.8)
    ax1.set_yticks(y, names, fontsize=max(5, min(9, 600 / max(len(order), 1) / 4)))
    ax1.set_xlabel("accuracy change (this - other)")
    ax1.set_title(f"accuracy {compare['other_accuracy']:.3f} -> {compare['accuracy']:.3f}")
    ax2.barh(y, drift_v, color="#1565c0")
    ax2.set_xlabel("attention drift (1 - Pearson r), probe images")
    mean = compare["attention_drift_mean"]
    ax2.set_title("drift n/a (no shared probes)" if math.isnan(mean) else f"mean drift {mean:.3f}")
    ax2.set_xlim(0, max(0.1, float(drift_v.max()) * 1.1) if drift_v.size else 1)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
