"""Writing explanations to disk: captioned panels, JSON summaries and the folder summary CSV.

Every file goes through :mod:`lit_explain.outputs`: written atomically (a hidden temporary file moved into
place), never replacing an existing file unless ``overwrite=True``, into a folder lit_explain created or
marked (:func:`lit_explain.outputs.claim_output_dir`) and locked while it is written
(:func:`lit_explain.outputs.locked_output_dir`), so a crash, a concurrent or second run or a mistyped
``--output`` cannot leave half-written or mixed results or clobber anything else; a symlink inside the
output folder is refused, never written through.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

# write_json and OutputExistsError are re-exported: the HTTP service and older callers import them from here.
from lit_explain.outputs import (
    OutputExistsError,
    locked_output_dir,
    refuse_symlinks,
    safe_name,
    write_json,
)
from lit_explain.render import panel_grid, save_png

PREDICTION_PNG = "gradcam_prediction.png"
SUMMARY_JSON = "analysis_summary.json"
TOP_DIR = "top_predictions"
FOLDER_CSV = "summary.csv"
FOLDER_JSON = "folder_summary.json"
__all__ = [
    "CSV_FIELDS",
    "OutputExistsError",
    "class_analysis",
    "csv_row",
    "explanation_panel",
    "map_statistics",
    "planned_files",
    "save_explanation",
    "top_k_text",
    "write_json",
]

CSV_FIELDS = (
    "file",
    "status",
    "prediction",
    "confidence",
    "explained_class",
    "explained_probability",
    "output_dir",
    "error",
    "top_k",
)


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


def save_explanation(
    result: Any, directory: str | Path, overwrite: bool = False, root: str | Path | None = None
) -> list[Path]:
    """Write one image's explanation into ``directory``.

    Files: ``gradcam_prediction.png`` (original | heatmap | overlay | Guided Grad-CAM, captioned),
    ``analysis_summary.json``; with ``top_k > 1`` ``top_predictions/gradcam_top{i}_{name}.png``; with a named
    class ``class_analysis_{name}.json`` and ``gradcam_class_{name}.png``. Returns the written paths.

    ``root`` is the ``--output`` folder ``directory`` lies in (default: ``directory`` itself): a symlink
    below it, on the way to any of these files, is refused with :class:`~lit_explain.outputs.OutputError`.
    The folder is locked while it is written (:func:`~lit_explain.outputs.locked_output_dir`).
    """
    directory = Path(directory)
    refuse_symlinks(root if root is not None else directory, [directory, *planned_files(result, directory)])
    with locked_output_dir(directory, kind="explain") as out:
        return _write_files(result, out, overwrite)


def _write_files(result: Any, out: Path, overwrite: bool) -> list[Path]:
    if not overwrite:
        clash = [p for p in planned_files(result, out) if p.exists()]
        if clash:
            raise OutputExistsError(
                f"{clash[0]} already exists; pass --overwrite to replace the results in {out}"
            )
    written: list[Path] = []
    prediction = result.for_prediction
    if prediction is not None:
        written.append(save_png(out / PREDICTION_PNG, explanation_panel(result, prediction), overwrite))
    if result.explained_top_k > 1:
        for e in result.top_explained:
            path = out / TOP_DIR / f"gradcam_top{e.rank}_{safe_name(e.class_name)}.png"
            written.append(save_png(path, explanation_panel(result, e), overwrite))
    if result.requested is not None:
        named = result.primary
        name = safe_name(named.class_name)
        written.append(
            write_json(out / f"class_analysis_{name}.json", class_analysis(result, named), overwrite)
        )
        written.append(
            save_png(out / f"gradcam_class_{name}.png", explanation_panel(result, named), overwrite)
        )
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
        "top_k": top_k_text(result),
    }


def top_k_text(result: Any) -> str:
    """The classes ``--top_k`` asked for, best first, as one CSV cell: ``circle 0.912345; ring 0.050001``."""
    return "; ".join(f"{name} {probability:.6f}" for name, _, probability in result.top_k)
