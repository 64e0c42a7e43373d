"""Explain every image in a folder, batch by batch, with a progress bar and a summary of what failed.

Every entry under the folder ends up in ``summary.csv``: explained (``ok``, with the folder its results
went to), ``unreadable`` (with the decoder's error) or ``skipped`` (with the reason: not an image
extension, hidden, a broken symlink, a FIFO or other special file, a folder named like an image, a
symlinked folder, the output folder itself). Output folder names are unique for every input, even when two
names map to the same folder name (``x.y.jpg`` and ``x_y.jpg``, or ``A.jpg`` and ``a.jpg`` on a
case-insensitive disk): the first in sorted order keeps the plain name, the next ones get ``_2``, ``_3``...
The output folder is locked for the whole run (a second run writing it is refused at once), and a symlink
inside it, where results would go, is refused before any image is explained.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from lit_explain.data.images import IMAGE_EXTENSIONS, is_image_file
from lit_explain.errors import DataError
from lit_explain.inference.explainer import Explainer, Target
from lit_explain.inference.outputs import (
    CSV_FIELDS,
    FOLDER_CSV,
    FOLDER_JSON,
    PREDICTION_PNG,
    SUMMARY_JSON,
    csv_row,
    save_explanation,
)
from lit_explain.outputs import locked_output_dir, refuse_symlinks, write_csv, write_json

NOT_IMAGE = "not an image extension"


@dataclass
class FolderReport:
    """What :func:`explain_folder` did: counts, the unreadable and skipped entries, and where results went."""

    output: Path
    explained: int = 0
    unreadable: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"file", "reason"}
    renamed: dict[str, str] = field(default_factory=dict)  # input -> output folder, where suffixed
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "output": str(self.output),
            "explained": self.explained,
            "unreadable_count": len(self.unreadable),
            "unreadable": self.unreadable,
            "skipped_count": len(self.skipped),
            "skipped": self.skipped,
            "renamed_outputs": self.renamed,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class Listing:
    """What :func:`list_entries` found: image files to explain and skipped entries with their reasons."""

    images: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def _special_kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _classify(entry: os.DirEntry, exclude: Path | None) -> tuple[str, str | None]:
    """("image" | "dir" | "skip", reason) for one directory entry, without opening it."""
    path = Path(entry.path)
    if entry.name.startswith("."):
        return "skip", "hidden (names starting with '.' are not explained)"
    if entry.is_symlink():
        if not path.exists():
            return "skip", f"broken symlink (its target {os.readlink(path)!r} does not exist)"
        if path.is_dir():
            return "skip", "symlink to a folder (not followed)"
    if entry.is_dir(follow_symlinks=False):
        if exclude is not None and path.resolve() == exclude:
            return "skip", "the --output folder (results are not explained again)"
        return "dir", None
    mode = path.stat().st_mode
    if not stat.S_ISREG(mode):
        return "skip", f"{_special_kind(mode)}, not an image file"
    return ("image", None) if is_image_file(path) else ("skip", NOT_IMAGE)


def list_entries(directory: Path, exclude: Path | None = None) -> Listing:
    """Everything under ``directory`` (recursively, sorted, symlinked folders not followed), classified."""
    listing = Listing()
    exclude = exclude.resolve() if exclude is not None else None

    def walk(folder: Path) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            listing.skipped.append((folder, f"unreadable folder ({exc.strerror or exc})"))
            return
        for entry in entries:
            try:
                kind, reason = _classify(entry, exclude)
            except OSError as exc:
                kind, reason = "skip", f"cannot be inspected ({exc.strerror or exc})"
            path = Path(entry.path)
            if kind == "dir":
                if path.suffix.lower() in IMAGE_EXTENSIONS:
                    listing.skipped.append((path, "a folder named like an image (its contents are searched)"))
                walk(path)
            elif kind == "image":
                listing.images.append(path)
            else:
                listing.skipped.append((path, reason or NOT_IMAGE))

    walk(directory)
    return listing


def output_names(relatives: list[Path]) -> dict[Path, Path]:
    """A unique output folder (relative) for each input image path (relative), stable for a given folder.

    ``a/x.y.jpg`` -> ``a/x_y_jpg``; names that coincide (also ignoring case, for case-insensitive disks)
    or that equal an input sub-folder get ``_2``, ``_3``... in sorted order of the inputs.

    Example:
        >>> names = output_names([Path("x.y.jpg"), Path("x_y.jpg")])
        >>> [str(names[Path(p)]) for p in ("x.y.jpg", "x_y.jpg")]
        ['x_y_jpg', 'x_y_jpg_2']
    """
    # An input sub-folder's path is taken too: an output folder there would mix with its images' outputs.
    taken = {p.as_posix().casefold() for rel in relatives for p in rel.parents if p != Path(".")}
    names: dict[Path, Path] = {}
    for rel in sorted(relatives, key=lambda p: p.as_posix()):
        base = rel.parent / rel.name.replace(".", "_")
        candidate, n = base, 1
        while candidate.as_posix().casefold() in taken:
            n += 1
            candidate = base.with_name(f"{base.name}_{n}")
        taken.add(candidate.as_posix().casefold())
        names[rel] = candidate
    return names


def list_files(directory: Path) -> tuple[list[Path], list[Path]]:
    """(image files, other skipped entries) under ``directory``; see :func:`list_entries` for the reasons."""
    listing = list_entries(directory)
    return listing.images, [p for p, _ in listing.skipped]


def _check_output(out: Path, names: list[Path], overwrite: bool) -> None:
    """Refuse, before any image is explained, an output that this run may not write as a whole."""
    # A symlinked result folder or file would send this run's pictures (or their replacement) outside
    # --output; save_explanation checks each image's own files again.
    planned = [out / FOLDER_CSV, out / FOLDER_JSON]
    for name in names:
        planned += [out / name / PREDICTION_PNG, out / name / SUMMARY_JSON]
    refuse_symlinks(out, planned)
    if not overwrite:
        for name in (FOLDER_CSV, FOLDER_JSON):
            if (out / name).exists():
                raise DataError(f"{out / name} already exists; choose another --output or pass --overwrite")


def explain_folder(
    explainer: Explainer,
    directory: str | Path,
    output: str | Path,
    target: Target = None,
    top_k: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> FolderReport:
    """Explain every image under ``directory`` into ``output/<unique folder>/`` plus ``summary.csv``.

    Images are decoded one by one (a file that cannot be read is recorded with its error and the run goes
    on), then explained ``explainer.batch_size`` at a time in one forward/backward per batch. Entries that
    are not image files are listed as skipped with the reason. ``summary.csv`` has one row per entry
    (status ``ok``, ``unreadable`` or ``skipped``; ``output_dir`` says where each image's results are);
    ``folder_summary.json`` has the counts.
    """
    start = time.perf_counter()
    root, out = Path(directory), Path(output)
    if not root.is_dir():
        raise DataError(f"--images_dir {str(root)!r} is not a folder")
    listing = list_entries(root, exclude=out if out.exists() else None)
    if not listing.images:
        raise DataError(
            f"no images under {str(root)!r} (looked for files ending in {', '.join(IMAGE_EXTENSIONS)})"
        )
    if target is not None:
        explainer.class_index(target)  # an unknown class fails before any work is done
    # Held until summary.csv is written: a concurrent run writing the same --output is refused at once
    # (interleaved, two runs would leave one's pictures under the other's summary).
    with locked_output_dir(out, kind="explain-folder"):
        return _explain_locked(explainer, root, out, listing, target, top_k, overwrite, progress, start)


def _explain_locked(
    explainer: Explainer,
    root: Path,
    out: Path,
    listing: Listing,
    target: Target,
    top_k: int,
    overwrite: bool,
    progress: bool,
    start: float,
) -> FolderReport:
    report = FolderReport(output=out)
    report.skipped = [{"file": str(p.relative_to(root)), "reason": why} for p, why in listing.skipped]
    rows = [csv_row(s["file"], status="skipped", error=s["reason"]) for s in report.skipped]
    relatives = [p.relative_to(root) for p in listing.images]
    names = output_names(relatives)
    _check_output(out, list(names.values()), overwrite)
    report.renamed = {
        str(rel): str(names[rel]) for rel in relatives if names[rel].name != rel.name.replace(".", "_")
    }
    bar = tqdm(total=len(relatives), desc="explaining", unit="img", disable=not progress)
    try:
        rows += _explain_all(explainer, root, out, relatives, names, target, top_k, overwrite, report, bar)
    finally:
        bar.close()
    report.seconds = time.perf_counter() - start
    rows.sort(key=lambda r: r["file"])
    write_csv(out / FOLDER_CSV, rows, fields=CSV_FIELDS, overwrite=overwrite)
    write_json(out / FOLDER_JSON, report.as_dict(), overwrite=overwrite)
    return report


def _explain_all(
    explainer: Explainer,
    root: Path,
    out: Path,
    relatives: list[Path],
    names: dict[Path, Path],
    target: Target,
    top_k: int,
    overwrite: bool,
    report: FolderReport,
    bar: Any,
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    per_batch = max(1, explainer.batch_size // max(1, top_k + (target is not None)))
    for first in range(0, len(relatives), per_batch):
        prepared, done = [], []
        for rel in relatives[first : first + per_batch]:
            try:
                prepared.append(explainer.preprocess(root / rel))
                done.append(rel)
            except (DataError, OSError) as exc:
                error = (
                    str(exc) if isinstance(exc, DataError) else f"cannot read {rel}: {exc.strerror or exc}"
                )
                report.unreadable.append({"file": str(rel), "error": error})
                rows.append(csv_row(str(rel), status="unreadable", error=error))
                bar.update(1)
        if not prepared:
            continue
        for rel, result in zip(done, explainer.explain_prepared(prepared, target, top_k), strict=True):
            save_explanation(result, out / names[rel], overwrite=overwrite, root=out)
            rows.append(csv_row(str(rel), result, output_dir=names[rel].as_posix()))
            report.explained += 1
            bar.update(1)
    return rows


__all__ = ["FolderReport", "Listing", "explain_folder", "list_entries", "list_files", "output_names"]
