"""``audit --label_issues``: the run's ``label_issues.csv`` in the report, with the suspected images explained.

The :class:`~lit_explain.callbacks.TrainingDynamics` callback writes ``<run folder>/label_issues.csv`` (every
training sample, most suspicious first). The audit finds it next to the checkpoint's run folder (the
folder above ``checkpoints/``, the same rule as its ``config.yaml``), takes the top rows, explains those
training images for their given and their suggested label, and adds a section to the report:
``label_issues`` in report.json, ``label_issues_N.png`` pages, and an HTML fragment for index.html.

Example:
    >>> path = label_issues_csv(ckpt_path)                                       # doctest: +SKIP
    >>> rows = read_label_issues(path, top=16)                                   # doctest: +SKIP
    >>> section = label_issues_section(tmp, net, datamodule, path, rows)         # doctest: +SKIP
    >>> html = label_issues_html(section)                                        # doctest: +SKIP
"""

from __future__ import annotations

import csv
import html as _html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lit_explain.audit.source import run_config_path
from lit_explain.callbacks.captions import sample_sources
from lit_explain.callbacks.dynamics import LABEL_ISSUES_FILE, label_issue_pages, train_images
from lit_explain.errors import DataError
from lit_explain.explain import cam
from lit_explain.render import save_png

REQUIRED_COLUMNS = ("rank", "index", "source", "given_label", "suggested_label", "score")
DEFAULT_TOP = 16
SECTION_KEY = "label_issues"


def label_issues_csv(ckpt_path: str | Path) -> Path | None:
    """``<run folder>/label_issues.csv`` of the checkpoint's run, or None (no run folder, or no file).

    Example:
        >>> label_issues_csv("drop/model.ckpt") is None
        True
    """
    config = run_config_path(ckpt_path)
    if config is None:
        return None
    path = config.parent / LABEL_ISSUES_FILE
    return path if path.is_file() else None


def missing_message(ckpt_path: str | Path) -> str:
    """One line for ``--label_issues`` when the checkpoint's run has no ``label_issues.csv``."""
    config = run_config_path(ckpt_path)
    where = (
        f"{config.parent / LABEL_ISSUES_FILE}" if config is not None else "a run folder above checkpoints/"
    )
    return (
        f"--label_issues: no label_issues.csv for {ckpt_path} (looked for {where}); it is written by the "
        "TrainingDynamics callback during fit (on in every recipe)"
    )


def read_label_issues(
    path: str | Path, top: int = DEFAULT_TOP
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The first ``top`` rows of a ``label_issues.csv`` (typed) and counts ``{"total", "flagged"}``.

    Raises:
        DataError: the file is not a label-issues table (a missing column, a non-numeric rank/index/score).
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{path} is not a label_issues.csv: no column(s) {', '.join(missing)}")
            rows, total, flagged = [], 0, 0
            for row in reader:
                total += 1
                flagged += row.get("flagged", "0") == "1"
                if len(rows) < top:
                    rows.append(_typed(row, path))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path} cannot be read: {exc}") from None
    return rows, {"total": total, "flagged": flagged}


def _typed(row: dict[str, str], path: Path) -> dict[str, Any]:
    try:
        out: dict[str, Any] = dict(row)
        out["rank"], out["index"] = int(row["rank"]), int(row["index"])
        for key in ("score", "aum", "late_aum", "confidence", "variability", "correctness"):
            if row.get(key) not in (None, ""):
                out[key] = float(row[key])
        return out
    except ValueError as exc:
        raise DataError(f"{path}: row {row.get('rank')!r} is not a label-issues row ({exc})") from None


def _class_id(name: str, names: Sequence[str]) -> int | None:
    if name in names:
        return list(names).index(name)
    return int(name) if name.isdigit() and int(name) < len(names) else None


def label_issues_section(
    directory: str | Path,
    net: nn.Module,
    datamodule: Any,
    csv_path: str | Path,
    rows: Sequence[dict[str, Any]],
    counts: dict[str, int] | None = None,
    *,
    class_names: Sequence[str] | None = None,
    layer: str | list[str] | None = None,
    method: str = "gradcam",
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """Explain the ``rows`` (from :func:`read_label_issues`) and write their pages into ``directory``.

    Returns the report entry: the CSV's path, counts, the rows shown, the page files, and ``note`` when
    the images could not be shown (the data module's training split does not match the CSV's sources).
    """
    directory = Path(directory)
    names = list(class_names or datamodule.class_names)
    section: dict[str, Any] = {
        "file": str(csv_path),
        "total": (counts or {}).get("total", len(rows)),
        "flagged": (counts or {}).get("flagged", 0),
        "rows": [dict(r) for r in rows],
        "pages": [],
    }
    if not rows:
        return section
    indices = [r["index"] for r in rows]
    mismatch = _source_mismatch(datamodule, rows)
    if mismatch:
        section["note"] = mismatch
        return section
    given = [_class_id(str(r["given_label"]), names) for r in rows]
    suggested = [_class_id(str(r["suggested_label"]), names) for r in rows]
    if None in given or None in suggested:
        section["note"] = "the CSV names classes this model does not have; images left out"
        return section
    images = train_images(datamodule, indices)
    if images is None:
        section["note"] = "the data module cannot load training samples by index; images left out"
        return section
    device = torch.device(device) if device is not None else next(net.parameters()).device
    images = images.to(device)
    k = len(indices)
    with torch.inference_mode(False), torch.enable_grad():
        result = cam(
            net,
            torch.cat([images, images]),
            layer=layer,
            targets=torch.tensor(given + suggested, device=device),
            method=method,
        )
    tensors = {
        "images": images.cpu(),
        "given_maps": result.maps[:k].cpu(),
        "suggested_maps": result.maps[k:].cpu(),
    }
    meta = {
        "mean": getattr(datamodule, "mean", None),
        "std": getattr(datamodule, "std", None),
        "alpha": 0.5,
        "cmap": "jet",
        "min_cell": 96,
        "cam_method": method,
    }
    for i, page in enumerate(label_issue_pages(tensors, rows, meta)):
        name = f"label_issues_{i}.png"
        save_png(directory / name, page, overwrite=True)
        section["pages"].append(name)
    return section


def _source_mismatch(datamodule: Any, rows: Sequence[dict[str, Any]]) -> str | None:
    """Why the data module's training split is not the one the CSV describes, or None when it is."""
    try:
        size = len(datamodule.dataset("train"))
    except (AttributeError, TypeError, ValueError, KeyError) as exc:
        return f"the data module has no training split to show the images from ({exc})"
    if any(r["index"] >= size for r in rows):
        return f"the CSV lists training indices beyond this data module's {size} training samples"
    holder = type("_Holder", (), {"datamodule": datamodule})()
    found = sample_sources(holder, "train", [r["index"] for r in rows])
    wrong = [r for r, s in zip(rows, found, strict=True) if str(r["source"]) != s]
    if wrong:
        first = wrong[0]
        return (
            f"the CSV's sources do not match this data module's training split (row {first['rank']}: "
            f"{first['source']!r} in the CSV); images left out"
        )
    return None


def label_issues_html(section: dict[str, Any] | None) -> str:
    """The report's ``Label issues`` section as an HTML fragment ("" when the audit ran without it)."""
    if not section:
        return ""
    esc = _html.escape
    head = (
        f"<p>{section['flagged']} of {section['total']} training labels flagged by TrainingDynamics "
        f"(<code>{esc(str(section['file']))}</code>); the {len(section['rows'])} most suspicious, with the "
        "maps for their given and their suggested label:</p>"
    )
    note = f"<p><em>{esc(section['note'])}</em></p>" if section.get("note") else ""
    pages = "".join(
        f'<img src="{esc(p)}" alt="suspected label errors, page {i + 1}" style="max-width:420px">'
        for i, p in enumerate(section["pages"])
    )
    cells = ("rank", "source", "given_label", "suggested_label", "score")
    header = "".join(f"<th>{esc(c)}</th>" for c in cells)
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(_cell(r.get(c)))}</td>" for c in cells) + "</tr>" for r in section["rows"]
    )
    return (
        f'<section id="label-issues"><h2>Label issues</h2>{head}{note}'
        f'<div class="row"><div class="card">{pages}</div>'
        f'<div class="card"><table><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table></div></div>'
        "</section>"
    )


def _cell(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)
