"""The audit report folder: its file names and the panel pictures (files written by :mod:`lit_explain.outputs`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from lit_explain.outputs import AtomicReportDir, OutputExistsError, safe_name, write_csv, write_json
from lit_explain.render import colorize, denormalize, overlay, panel_grid, save_png, to_rgb

REPORT_FILE = "report.json"
SCHEMA_VERSION = 1


# The report folder and the files in it are written by lit_explain.outputs (one set of rules for every
# command); these names stay importable from here.
ReportExistsError = OutputExistsError

__all__ = [
    "REPORT_FILE",
    "SCHEMA_VERSION",
    "AtomicReportDir",
    "ReportExistsError",
    "panel_rows",
    "safe_name",
    "save_panel",
    "write_csv",
    "write_json",
]


def panel_rows(
    images: Tensor, true_maps: Tensor, pred_maps: Tensor, mean: Sequence[float], std: Sequence[float]
) -> Tensor:
    """``[B, 4, 3, H, W]`` cells: original, CAM for the true class, CAM for the predicted class, heatmap."""
    originals = to_rgb(denormalize(images.float(), mean, std))
    return torch.stack(
        [originals, overlay(originals, true_maps), overlay(originals, pred_maps), colorize(pred_maps)], dim=1
    )


def save_panel(
    path: Path,
    rows: Tensor,
    captions: Sequence[str],
    correct: Tensor,
    method: str,
) -> None:
    """One panel PNG composed with array operations (no matplotlib)."""
    titles = ["original", f"{method}: true class", f"{method}: predicted", "heatmap (predicted)"]
    grid = panel_grid(rows, captions=list(captions), column_titles=titles, caption_colors=correct.cpu())
    save_png(path, grid, overwrite=True, compress_level=3)
