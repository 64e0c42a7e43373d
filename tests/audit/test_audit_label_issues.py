"""audit --label_issues: the run's label_issues.csv found beside the checkpoint, its top rows explained into
pages, the report entry and the HTML fragment."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from lit_explain.audit.label_issues import (
    label_issues_csv,
    label_issues_html,
    label_issues_section,
    missing_message,
    read_label_issues,
)
from lit_explain.callbacks.dynamics import LABEL_ISSUES_FILE
from lit_explain.data import ShapesDataModule
from lit_explain.errors import DataError
from lit_explain.findings import dynamics as dyn
from lit_explain.models import ImageClassifier
from lit_explain.outputs import write_csv

TRAIN = 40


def _run_with_label_issues(root: Path) -> tuple[Path, ShapesDataModule]:
    """``root/run/version_0/{checkpoints/last.ckpt, label_issues.csv}`` as a fit with TrainingDynamics leaves it."""
    dm = ShapesDataModule(image_size=32, train_size=TRAIN, val_size=8, label_noise=0.1)
    labels = dm.split_labels("train")
    torch.manual_seed(0)
    stats = dyn.stats_from_logits(torch.randn(3, TRAIN, 6), labels)
    sources = [f"idx {i}" for i in range(TRAIN)]
    table = dyn.label_issue_table(stats, sources, dm.class_names, "late_aum")
    run = root / "run" / "version_0"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = run / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(b"only its place matters here")
    write_csv(run / LABEL_ISSUES_FILE, table.rows, dyn.CSV_COLUMNS)
    return ckpt, dm


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    model = ImageClassifier("timm:resnet10t_half", num_classes=6, input_size=[32, 32])
    return model.net.eval()


def test_the_csv_is_found_in_the_checkpoints_run_folder_only(tmp_path: Path) -> None:
    ckpt, _ = _run_with_label_issues(tmp_path)
    assert label_issues_csv(ckpt) == ckpt.parent.parent / LABEL_ISSUES_FILE
    alone = tmp_path / "copied.ckpt"
    alone.write_bytes(b"x")
    (tmp_path / LABEL_ISSUES_FILE).write_text("rank\n")  # beside a loose checkpoint: never read
    assert label_issues_csv(alone) is None
    (ckpt.parent.parent / LABEL_ISSUES_FILE).unlink()
    assert label_issues_csv(ckpt) is None
    assert "TrainingDynamics" in missing_message(ckpt) and LABEL_ISSUES_FILE in missing_message(ckpt)


def test_top_rows_are_read_typed_with_the_counts(tmp_path: Path) -> None:
    ckpt, _ = _run_with_label_issues(tmp_path)
    rows, counts = read_label_issues(label_issues_csv(ckpt), top=5)
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5] and counts["total"] == TRAIN
    assert isinstance(rows[0]["index"], int) and isinstance(rows[0]["score"], float)
    assert rows[0]["score"] >= rows[4]["score"]
    bad = tmp_path / "bad.csv"
    bad.write_text("rank,index\n1,2\n")
    with pytest.raises(DataError, match="no column"):
        read_label_issues(bad)
    bad.write_text("rank,index,source,given_label,suggested_label,score\none,2,idx 2,star,ring,0.1\n")
    with pytest.raises(DataError, match="not a label-issues row"):
        read_label_issues(bad)


def test_section_explains_the_rows_into_pages_and_html(tmp_path: Path) -> None:
    ckpt, dm = _run_with_label_issues(tmp_path)
    path = label_issues_csv(ckpt)
    rows, counts = read_label_issues(path, top=6)
    out = tmp_path / "report"
    out.mkdir()
    section = label_issues_section(out, _net(), dm, path, rows, counts, method="gradcam")
    assert "note" not in section and section["pages"] == ["label_issues_0.png"]
    with Image.open(out / "label_issues_0.png") as page:
        assert page.width >= 3 * 96 and page.height > 6 * 96  # image | given | suggested, six rows
    assert section["total"] == TRAIN and [r["index"] for r in section["rows"]] == [r["index"] for r in rows]
    html = label_issues_html(section)
    assert html.count("<tr>") == 1 + 6 and 'src="label_issues_0.png"' in html
    assert f"idx {rows[0]['index']}" in html and "Label issues" in html
    assert label_issues_html(None) == ""


def test_a_training_split_that_is_not_the_csvs_shows_no_images(tmp_path: Path) -> None:
    ckpt, _ = _run_with_label_issues(tmp_path)
    path = label_issues_csv(ckpt)
    rows, counts = read_label_issues(path, top=4)
    smaller = ShapesDataModule(image_size=32, train_size=2, val_size=8)
    section = label_issues_section(tmp_path, _net(), smaller, path, rows, counts)
    assert section["pages"] == [] and "beyond" in section["note"]
    renamed = [{**r, "source": "elsewhere.jpg"} for r in rows]
    dm = ShapesDataModule(image_size=32, train_size=TRAIN, val_size=8)
    section = label_issues_section(tmp_path, _net(), dm, path, renamed, counts)
    assert section["pages"] == [] and "do not match" in section["note"]
    assert "do not match" in label_issues_html(section)


def test_audit_label_issues_through_the_command_line(tmp_path: Path, shapes_checkpoint: Path) -> None:
    import json
    import shutil

    from lit_explain.audit.cli import main

    # The layout a fit leaves: <run>/checkpoints/last.ckpt and <run>/label_issues.csv.
    run = tmp_path / "run" / "version_0"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = run / "checkpoints" / "last.ckpt"
    shutil.copy(shapes_checkpoint, ckpt)
    dm = ShapesDataModule(train_size=256, val_size=64, test_size=64, batch_size=32)
    torch.manual_seed(0)
    stats = dyn.stats_from_logits(torch.randn(2, 256, 6), dm.split_labels("train"))
    table = dyn.label_issue_table(stats, [f"idx {i}" for i in range(256)], dm.class_names, "late_aum")
    fast = [
        "--quality_samples",
        "4",
        "--faithfulness_steps",
        "3",
        "--progress",
        "false",
        "--max_samples",
        "64",
    ]
    argv = ["--ckpt_path", str(ckpt), "--label_issues", "true", "--label_issues_top", "4", *fast]

    # Without the run's table: one line, exit 2, nothing written.
    assert main([*argv, "--output", str(tmp_path / "none")]) == 2
    assert not (tmp_path / "none").exists()

    write_csv(run / LABEL_ISSUES_FILE, table.rows, dyn.CSV_COLUMNS)
    out = tmp_path / "report"
    assert main([*argv, "--output", str(out)]) == 0
    section = json.loads((out / "report.json").read_text())["label_issues"]
    assert section["total"] == 256 and [r["rank"] for r in section["rows"]] == [1, 2, 3, 4]
    assert section["pages"] and all((out / page).is_file() for page in section["pages"])
    page = (out / "index.html").read_text()
    assert 'id="label-issues"' in page and f"idx {section['rows'][0]['index']}" in page
