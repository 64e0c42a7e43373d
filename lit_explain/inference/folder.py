"""Explain every image in a folder, batch by batch, with a progress bar and a summary of what failed."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from lit_explain.data.images import is_image_file
from lit_explain.errors import DataError
from lit_explain.inference.explainer import Explainer, Target
from lit_explain.inference.outputs import (
    FOLDER_CSV,
    FOLDER_JSON,
    csv_row,
    save_explanation,
    write_csv,
    write_json,
)


@dataclass
class FolderReport:
    """What :func:`explain_folder` did: counts, the unreadable and skipped files, and where results went."""

    output: Path
    explained: int = 0
    unreadable: list[dict[str, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "output": str(self.output),
            "explained": self.explained,
            "unreadable_count": len(self.unreadable),
            "unreadable": self.unreadable,
            "skipped_count": len(self.skipped),
            "skipped_not_images": self.skipped,
            "seconds": round(self.seconds, 3),
        }


def _output_dir(root: Path, relative: Path) -> Path:
    # "a.jpg" and "a.png" must not share a folder: keep the extension in the name.
    return root / relative.parent / relative.name.replace(".", "_")


def list_files(directory: Path) -> tuple[list[Path], list[Path]]:
    """(image files, other files) under ``directory``, recursively, sorted; hidden files are ignored."""
    files = sorted(
        p
        for p in directory.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(directory).parts)
    )
    return [p for p in files if is_image_file(p)], [p for p in files if not is_image_file(p)]


def explain_folder(
    explainer: Explainer,
    directory: str | Path,
    output: str | Path,
    target: Target = None,
    top_k: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> FolderReport:
    """Explain every image under ``directory`` into ``output/<relative path>/`` plus ``summary.csv``.

    Images are decoded one by one (a file that cannot be read is recorded with its error and the run goes
    on), then explained ``explainer.batch_size`` at a time in one forward/backward per batch. Files with
    other extensions are listed as skipped. ``summary.csv`` has one row per file (status ``ok``,
    ``unreadable`` or ``skipped``); ``folder_summary.json`` has the counts.
    """
    start = time.perf_counter()
    root, out = Path(directory), Path(output)
    if not root.is_dir():
        raise DataError(f"--images_dir {str(root)!r} is not a folder")
    images, others = list_files(root)
    if not images:
        raise DataError(
            f"no images under {str(root)!r} (looked for files ending in .jpg, .png, .bmp, .gif, .webp, .tif)"
        )
    if not overwrite:
        for name in (FOLDER_CSV, FOLDER_JSON):
            if (out / name).exists():
                raise DataError(f"{out / name} already exists; choose another --output or pass --overwrite")
    if target is not None:
        explainer.class_index(target)  # an unknown class fails before any work is done
    report = FolderReport(output=out, skipped=[str(p.relative_to(root)) for p in others])
    rows: list[dict[str, Any]] = [
        csv_row(s, status="skipped", error="not an image extension") for s in report.skipped
    ]
    per_batch = max(1, explainer.batch_size // max(1, top_k + (target is not None)))
    bar = tqdm(total=len(images), desc="explaining", unit="img", disable=not progress)
    try:
        for first in range(0, len(images), per_batch):
            prepared, names = [], []
            for path in images[first : first + per_batch]:
                name = str(path.relative_to(root))
                try:
                    prepared.append(explainer.preprocess(path))
                    names.append(name)
                except DataError as exc:
                    report.unreadable.append({"file": name, "error": str(exc)})
                    rows.append(csv_row(name, status="unreadable", error=str(exc)))
                    bar.update(1)
            if not prepared:
                continue
            for name, result in zip(names, explainer.explain_prepared(prepared, target, top_k), strict=True):
                dest = _output_dir(out, Path(name))
                save_explanation(result, dest, overwrite=overwrite)
                rows.append(csv_row(name, result, output_dir=str(dest.relative_to(out))))
                report.explained += 1
                bar.update(1)
    finally:
        bar.close()
    report.seconds = time.perf_counter() - start
    rows.sort(key=lambda r: r["file"])
    write_csv(out / FOLDER_CSV, rows, overwrite=overwrite)
    write_json(out / FOLDER_JSON, report.as_dict(), overwrite=overwrite)
    return report
