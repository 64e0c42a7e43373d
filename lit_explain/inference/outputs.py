"""Writing explanations to disk: captioned panels, JSON summaries and the folder summary CSV.

Every file is written atomically (a hidden temporary file moved into place) and never replaces an existing
file unless ``overwrite=True``, so a crash or a second run cannot leave half-written or clobbered results.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from lit_explain.errors import LitExplainError
from lit_explain.render import panel_grid, save_png

PREDICTION_PNG = "gradcam_prediction.png"
SUMMARY_JSON = "analysis_summary.json"
TOP_DIR = "top_predictions"
FOLDER_CSV = "summary.csv"
FOLDER_JSON = "folder_summary.json"
CSV_FIELDS = (
    "file",
    "status",
    "prediction",
    "confidence",
    "explained_class",
    "explained_probability",
    "output_dir",
    "error",
)


class OutputExistsError(LitExplainError, FileExistsError):
    """An output file exists already and overwriting was not asked for."""


def safe_name(name: str, limit: int = 80) -> str:
    """A file-name-safe form of a class name: ``"Tomato: late blight"`` -> ``"Tomato_late_blight"``."""
    cleaned = re.sub(r"[^\w.-]+", "_", str(name)).strip("._")
    return cleaned[:limit] or "class"


def write_bytes_atomic(path: str | Path, data: bytes, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder; no clobbering by default."""
    dest = Path(path)
    if dest.exists() and not overwrite:
        raise OutputExistsError(f"{dest} already exists; pass --overwrite (overwrite=True) to replace it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(tmp, dest)
        else:
            try:
                os.link(tmp, dest)  # fails if the name appeared meanwhile, unlike rename
            except FileExistsError:
                raise OutputExistsError(f"{dest} already exists; pass --overwrite to replace it") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return dest


def write_json(path: str | Path, payload: Any, overwrite: bool = False) -> Path:
    """Atomically write ``payload`` as indented JSON."""
    return write_bytes_atomic(path, (json.dumps(payload, indent=2) + "\n").encode(), overwrite)


def _png(path: Path, image: torch.Tensor, overwrite: bool) -> Path:
    try:
        return save_png(path, image, overwrite=overwrite)
    except FileExistsError as exc:
        raise OutputExistsError(
            f"{path} already exists; pass --overwrite (overwrite=True) to replace it"
        ) from exc


def explanation_panel(result: Any, explained: Any) -> torch.Tensor:
    """original | heatmap | overlay | Guided Grad-CAM for one class, captioned with the prediction."""
    cells = [result.image, explained.heatmap, explained.overlay]
    titles = ["original", f"{result.method} heatmap", "overlay"]
    if explained.guided is not None:
        cells.append(explained.guided)
        titles.append(f"guided {result.method}")
    caption = (
        f"pred: {result.prediction} ({result.confidence:.3f}) | explained: {explained.class_name} "
        f"({explained.probability:.3f}, rank {explained.rank}) | layer {result.layer}"
    )
    return panel_grid([cells], captions=[caption], column_titles=titles, min_cell=224, upscale="bilinear")


def map_statistics(map_: torch.Tensor) -> dict[str, Any]:
    """Where a ``[1, H, W]`` map in [0, 1] points: peak (row, col as fractions), mean, area above 0.5."""
    m = map_[0].float()
    h, w = m.shape
    peak = int(m.flatten().argmax())
    return {
        "peak_yx": [round((peak // w + 0.5) / h, 4), round((peak % w + 0.5) / w, 4)],
        "mean": round(float(m.mean()), 6),
        "area_above_0.5": round(float((m > 0.5).float().mean()), 6),
    }


def class_analysis(result: Any, explained: Any) -> dict[str, Any]:
    """The JSON record of one explained class."""
    return {
        "source": result.source,
        "class_name": explained.class_name,
        "class_index": explained.class_index,
        "probability": round(explained.probability, 6),
        "rank": explained.rank,
        "is_prediction": explained.class_index == result.prediction_index,
        "prediction": result.prediction,
        "confidence": round(result.confidence, 6),
        "method": result.method,
        "layer": result.layer,
        "map": map_statistics(explained.map),
    }


def planned_files(result: Any, directory: str | Path) -> list[Path]:
    """The files :func:`save_explanation` writes for ``result`` (to check for clashes up front)."""
    out = Path(directory)
    files = [out / SUMMARY_JSON]
    if result.for_prediction is not None:
        files.append(out / PREDICTION_PNG)
    if result.explained_top_k > 1:
        files += [
            out / TOP_DIR / f"gradcam_top{e.rank}_{safe_name(e.class_name)}.png" for e in result.top_explained
        ]
    if result.requested is not None:
        name = safe_name(result.requested)
        files += [out / f"class_analysis_{name}.json", out / f"gradcam_class_{name}.png"]
    return files


def save_explanation(result: Any, directory: str | Path, overwrite: bool = False) -> list[Path]:
    """Write one image's explanation into ``directory``.

    Files: ``gradcam_prediction.png`` (original | heatmap | overlay | Guided Grad-CAM, captioned),
    ``analysis_summary.json``; with ``top_k > 1`` ``top_predictions/gradcam_top{i}_{name}.png``; with a named
    class ``class_analysis_{name}.json`` and ``gradcam_class_{name}.png``. Returns the written paths.
    """
    out = Path(directory)
    if not overwrite:
        clash = [p for p in planned_files(result, out) if p.exists()]
        if clash:
            raise OutputExistsError(
                f"{clash[0]} already exists; pass --overwrite to replace the results in {out}"
            )
    written: list[Path] = []
    prediction = result.for_prediction
    if prediction is not None:
        written.append(_png(out / PREDICTION_PNG, explanation_panel(result, prediction), overwrite))
    if result.explained_top_k > 1:
        for e in result.top_explained:
            path = out / TOP_DIR / f"gradcam_top{e.rank}_{safe_name(e.class_name)}.png"
            written.append(_png(path, explanation_panel(result, e), overwrite))
    if result.requested is not None:
        named = result.primary
        name = safe_name(named.class_name)
        written.append(
            write_json(out / f"class_analysis_{name}.json", class_analysis(result, named), overwrite)
        )
        written.append(_png(out / f"gradcam_class_{name}.png", explanation_panel(result, named), overwrite))
    summary = result.summary()
    summary["files"] = [str(p.relative_to(out)) for p in written] + [SUMMARY_JSON]
    written.append(write_json(out / SUMMARY_JSON, summary, overwrite))
    return written


def csv_row(
    file: str, result: Any = None, output_dir: str = "", error: str = "", status: str = "ok"
) -> dict[str, Any]:
    """One row of the folder summary CSV."""
    if result is None:
        return {"file": file, "status": status, "output_dir": output_dir, "error": error}
    primary = result.primary
    return {
        "file": file,
        "status": status,
        "prediction": result.prediction,
        "confidence": f"{result.confidence:.6f}",
        "explained_class": primary.class_name,
        "explained_probability": f"{primary.probability:.6f}",
        "output_dir": output_dir,
        "error": error,
    }


def write_csv(
    path: str | Path,
    rows: Iterable[dict[str, Any]],
    overwrite: bool = False,
    fields: Sequence[str] = CSV_FIELDS,
) -> Path:
    """Atomically write ``rows`` as CSV with a header."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fields), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return write_bytes_atomic(path, buffer.getvalue().encode(), overwrite)
