"""The report folder's files: CSV tables, figures, text and HTML pages, the mean map and the probe maps.

Everything is written into the audit's temporary folder through :mod:`lit_explain.outputs`; the folder
is renamed into place only once it is complete (:class:`lit_explain.outputs.AtomicReportDir`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_explain.audit import html, recommendations
from lit_explain.audit.attention import THUMB
from lit_explain.outputs import write_bytes, write_csv, write_text
from lit_explain.render import (
    colorize,
    confused_pairs_figure,
    confusion_matrix_figure,
    figure_to_png,
    name_pairs,
    per_class_accuracy_figure,
    save_png,
)

PROBE_FILE = "attention_probe.pt"
MEAN_MAP_FILE = "attention_mean.png"
SAMPLES_CSV = "shown_samples.csv"
CLASS_FIELDS = (
    "class_id",
    "class_name",
    "accuracy",
    "support",
    "correct",
    "mean_confidence",
    "most_confused_with",
    "most_confused_count",
)
PAIR_FIELDS = ("rank", "true_id", "true_name", "pred_id", "pred_name", "count", "share_of_true_class")
SAMPLE_FIELDS = ("panel", "role", "source", "index", "true_name", "pred_name", "confidence", "correct")


def write_mean_map(directory: Path, thumbs: Tensor) -> str:
    """``attention_mean.png``: the mean of the explained samples' maps, min-max scaled, 192 px."""
    mean_map = thumbs.float().mean(dim=0) if thumbs.numel() else torch.zeros(THUMB, THUMB)
    mean_map = (mean_map - mean_map.min()) / (mean_map.max() - mean_map.min()).clamp_min(1e-12)
    big = F.interpolate(mean_map[None, None], size=(192, 192), mode="bilinear", align_corners=False)[0]
    save_png(directory / MEAN_MAP_FILE, colorize(big), overwrite=True)
    return MEAN_MAP_FILE


def write_probe(directory: Path, split: str, indices: Tensor, labels: Tensor, maps: list[Tensor]) -> None:
    """``attention_probe.pt``: the fixed probe's low-resolution maps, for ``--compare_to`` by a later audit."""
    stacked = torch.stack(maps) if maps else torch.zeros(0, THUMB, THUMB)
    payload = {"split": split, "indices": indices.clone(), "labels": labels.clone(), "maps": stacked}
    write_bytes(directory / PROBE_FILE, _torch_bytes(payload), overwrite=True)


def _torch_bytes(obj: Any) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def write_tables(directory: Path, report: Mapping[str, Any]) -> None:
    """``per_class_accuracy.csv``, ``most_confused_pairs.csv`` and ``shown_samples.csv`` (with sources)."""
    keys = ("id", "name", "accuracy", "support", "correct", "mean_confidence")
    keys += ("most_confused_with", "most_confused_count")
    classes = [[r[k] for k in keys] for r in report["per_class"]]
    write_csv(directory / "per_class_accuracy.csv", classes, fields=CLASS_FIELDS, overwrite=True)
    pairs = [[p[k] for k in PAIR_FIELDS] for p in report["confused_pairs"]]
    write_csv(directory / "most_confused_pairs.csv", pairs, fields=PAIR_FIELDS, overwrite=True)
    write_csv(directory / SAMPLES_CSV, shown_samples(report), fields=SAMPLE_FIELDS, overwrite=True)


def shown_samples(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every sample shown in a panel, in panel order, with the file (or dataset index) it came from."""
    rows: list[dict[str, Any]] = []
    for group in [*report["per_class"], *report["confused_pairs"]]:
        for sample in group.get("samples", []):
            rows.append({"panel": group.get("panel", ""), **sample})
    return rows


def write_figures(directory: Path, report: Mapping[str, Any], cm: Tensor, names: Sequence[str]) -> None:
    """The confusion matrix, per-class accuracy and top confused pairs as PNG figures."""
    per_class, pairs = report["per_class"], report["confused_pairs"]
    title = f"Confusion matrix ({report['split']})"
    _figure(
        directory / "confusion_matrix_full.png",
        confusion_matrix_figure(cm, names, normalize=True, title=title),
    )
    acc = torch.tensor([r["accuracy"] for r in per_class], dtype=torch.float64)
    _figure(
        directory / "per_class_accuracy.png", per_class_accuracy_figure(acc, [r["name"] for r in per_class])
    )
    named = name_pairs([(p["true_id"], p["pred_id"], p["count"]) for p in pairs], names)
    figure = confused_pairs_figure(
        named or [("(none)", "(none)", 0)], title="Most confused pairs (true -> predicted)"
    )
    _figure(directory / "top_confused_pairs.png", figure)


def _figure(path: Path, fig: Any) -> None:
    write_bytes(path, figure_to_png(fig), overwrite=True)


def write_pages(directory: Path, report: Mapping[str, Any]) -> None:
    """recommendations.txt, analysis_summary.txt and the two HTML pages."""
    write_text(
        directory / "recommendations.txt", recommendations.as_text(report["recommendations"]), overwrite=True
    )
    write_text(directory / "analysis_summary.txt", html.summary_text(report), overwrite=True)
    write_text(directory / "per_class_accuracy_interactive.html", html.accuracy_page(report), overwrite=True)
    write_text(directory / "index.html", html.index_page(report), overwrite=True)


def write_report_files(directory: Path, report: Mapping[str, Any], cm: Tensor, names: Sequence[str]) -> None:
    """All tables, figures and pages of a finished report dictionary."""
    write_tables(directory, report)
    write_figures(directory, report, cm, names)
    if "compare" in report:
        from lit_explain.audit.compare import write_compare_files

        write_compare_files(directory, report["compare"])
    write_pages(directory, report)
