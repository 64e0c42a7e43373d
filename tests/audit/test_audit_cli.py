"""The audit command: options, refusals and clear errors; compare; the building blocks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lit_explain.audit import AtomicReportDir, ReportExistsError
from lit_explain.audit.attention import fixed_region, spearman
from lit_explain.audit.cli import main, split_data_overrides
from lit_explain.audit.selection import select_class_samples
from lit_explain.audit.sweep import SweepResult

FAST = ["--quality_samples", "4", "--progress", "false"]


def test_cli_subset_of_classes_and_refusal(shapes_checkpoint: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "audit"
    argv = [
        "--ckpt_path",
        str(shapes_checkpoint),
        "--output",
        str(out),
        "--classes",
        "[circle, 1]",
        "--max_samples",
        "30",
        *FAST,
    ]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["classes_audited"] == [0, 1]
    assert [r["name"] for r in report["per_class"]] == ["circle", "square"]
    assert report["num_samples"] <= 30
    assert len(list((out / "worst_predictions").iterdir())) == 2
    # An existing report is never replaced silently ...
    assert main(argv) == 2
    assert "already exists" in capsys.readouterr().err
    # ... only with --overwrite, and then no temporary or old directory is left behind.
    assert main([*argv, "--overwrite", "true", "--compare_to", str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit"]
    compare = json.loads((out / "report.json").read_text())["compare"]
    assert compare["accuracy_delta"] == pytest.approx(0.0)
    assert compare["attention_drift_mean"] == pytest.approx(0.0, abs=1e-3)  # same model, same probe images
    assert (out / "compare_per_class.csv").is_file() and (out / "compare_per_class.png").is_file()


def test_cli_errors_are_clear(shapes_checkpoint: Path, tmp_path: Path, capsys) -> None:
    junk = tmp_path / "junk.ckpt"
    junk.write_text("not a checkpoint")
    assert main(["--ckpt_path", str(junk), "--output", str(tmp_path / "a")]) == 2
    assert "not a readable PyTorch checkpoint" in capsys.readouterr().err
    # A checkpoint whose head does not fit the data: a 6-class model on 3-class data config.
    config = tmp_path / "data.yaml"
    config.write_text("data:\n  class_path: lit_explain.data.ShapesDataModule\n  init_args: {val_size: 8}\n")
    assert (
        main(
            [
                "--ckpt_path",
                str(shapes_checkpoint),
                "--output",
                str(tmp_path / "b"),
                "--data_config",
                str(config),
                "--method",
                "nope",
            ]
        )
        == 2
    )
    assert "--method 'nope'" in capsys.readouterr().err
    assert (
        main(
            [
                "--ckpt_path",
                str(shapes_checkpoint),
                "--output",
                str(tmp_path / "c"),
                "--data.in_channels",
                "1",
            ]
        )
        == 2
    )
    assert "in_channels" in capsys.readouterr().err
    assert (
        main(
            ["--ckpt_path", str(shapes_checkpoint), "--classes", "[giraffe]", "--output", str(tmp_path / "d")]
        )
        == 2
    )
    assert "giraffe" in capsys.readouterr().err
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_split_data_overrides() -> None:
    assert split_data_overrides(["--data.data_dir", "/x", "--split=test", "--data.val_size=8"]) == (
        ["--split=test"],
        {"data_dir": "/x", "val_size": 8},
    )


def test_atomic_report_dir(tmp_path: Path) -> None:
    dest = tmp_path / "r"
    with pytest.raises(RuntimeError), AtomicReportDir(dest) as tmp:
        (tmp / "half.txt").write_text("x")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []  # nothing that looks like a report
    target = AtomicReportDir(dest)
    with target as tmp:
        (tmp / "a.txt").write_text("1")
        target.commit()
    with pytest.raises(ReportExistsError), AtomicReportDir(dest):
        pass
    target = AtomicReportDir(dest, overwrite=True)
    with target as tmp:
        (tmp / "b.txt").write_text("2")
        target.commit()
    assert sorted(p.name for p in dest.iterdir()) == [".lit_explain-output", "b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["r"]


def _sweep(labels, preds, conf) -> SweepResult:
    labels, preds = torch.tensor(labels), torch.tensor(preds)
    conf = torch.tensor(conf)
    n = len(labels)
    return SweepResult(torch.arange(n), labels, preds, preds, conf, conf, -conf.log(), num_classes=3)


def test_selection_best_and_worst() -> None:
    r = _sweep([0, 0, 0, 0, 0, 1], [0, 0, 1, 2, 0, 1], [0.9, 0.6, 0.95, 0.5, 0.99, 0.9])
    sel = select_class_samples(r, 0, n_best=2, n_worst=3)
    assert sel.best == [4, 0]  # correct, most confident first
    assert sel.worst == [2, 3, 1]  # errors (most confident first), then the least confident hit


def test_spearman_and_fixed_region() -> None:
    a = torch.rand(3, 1, 8, 8)
    assert torch.allclose(spearman(a, a**3), torch.ones(3))
    assert torch.allclose(spearman(a, -a), -torch.ones(3))
    corner = torch.zeros(40, 24, 24)
    corner[:, :6, :6] = 1.0
    labels = torch.arange(40) % 4
    assert fixed_region(corner, labels, range(4))["flagged"]
    assert fixed_region(corner, labels, range(4))["hot_cell"] == "top-left"
    centre = torch.zeros(40, 24, 24)
    centre[:, 9:15, 9:15] = 1.0
    assert not fixed_region(centre, labels, range(4))["flagged"]  # centred objects are normal
