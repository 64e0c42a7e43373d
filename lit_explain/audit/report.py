"""The report directory: written in a hidden temporary directory and moved into place only when complete."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lit_explain.errors import ConfigError
from lit_explain.render import colorize, denormalize, overlay, panel_grid, save_png, to_rgb

REPORT_FILE = "report.json"
SCHEMA_VERSION = 1


class ReportExistsError(ConfigError, FileExistsError):
    """The output directory already holds something and ``overwrite`` was not asked for."""


def safe_name(name: str, limit: int = 40) -> str:
    """A class name as a file-name fragment: letters, digits, ``-`` and ``_`` only.

    Example:
        >>> safe_name("maple leaf / dry")
        'maple_leaf_dry'
    """
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "_", str(name)).strip("_")
    return (cleaned or "class")[:limit]


class AtomicReportDir:
    """A report directory that appears whole or not at all.

    Files go to ``.<name>.tmp-XXXX`` next to the destination; :meth:`commit` renames it into place. An
    existing destination is refused unless ``overwrite``; then it is renamed aside, the new one moved in,
    and the old one deleted. Leaving the ``with`` block without :meth:`commit` (an error, Ctrl-C) deletes
    the temporary directory, so an interrupted audit never leaves a half-report under the real name.

    Example:
        >>> with AtomicReportDir("reports/audit") as tmp:
        ...     (tmp / "report.json").write_text("{}")
        ...     final = tmp_dir.commit()   # doctest: +SKIP
    """

    def __init__(self, destination: str | os.PathLike[str], overwrite: bool = False) -> None:
        self.destination = Path(destination).absolute()
        self.overwrite = overwrite
        self.check()
        self.destination.parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(
            tempfile.mkdtemp(prefix=f".{self.destination.name}.tmp-", dir=self.destination.parent)
        )
        self.committed = False

    def check(self) -> None:
        if self.destination.exists() and not self.overwrite:
            raise ReportExistsError(
                f"{self.destination} already exists; choose another --output or pass --overwrite to replace it"
            )

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc_info: object) -> None:
        if not self.committed:
            shutil.rmtree(self.path, ignore_errors=True)

    def commit(self) -> Path:
        self.check()
        old = None
        if self.destination.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{self.destination.name}.old-", dir=self.destination.parent))
            os.rmdir(old)
            os.rename(self.destination, old)
        os.rename(self.path, self.destination)
        self.committed = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.destination


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([[_csv_cell(v) for v in row] for row in rows])


def _csv_cell(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, Tensor):
        return _json_safe(value.tolist())
    return value


def write_json(path: Path, data: Any) -> None:
    """JSON with NaN/inf written as null (strict JSON that browsers and ``json.loads`` both accept)."""
    path.write_text(json.dumps(_json_safe(data), indent=1, allow_nan=False), encoding="utf-8")


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
