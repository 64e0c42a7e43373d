"""Audit building blocks that need no full audit: sample sources, the CPU default, options left untouched, help."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import Subset

import lit_explain.audit.checkpoint as checkpoint
from lit_explain.audit import AuditOptions
from lit_explain.audit.cli import build_parser
from lit_explain.audit.samples import sample_source
from lit_explain.audit.stats import calibration, direction, reliability
from lit_explain.audit.sweep import SweepResult
from lit_explain.data import ShapesDataModule
from lit_explain.data.images import eval_transform
from lit_explain.data.plants import ImageFileDataset, ImageRecord


def test_sample_source_is_the_file_relative_to_the_data_root(tmp_path: Path) -> None:
    root = tmp_path / "plants"
    records = [ImageRecord(root / "Apple" / f"leaf_{i}.jpg", 0) for i in range(4)]
    files = ImageFileDataset(records, eval_transform((8, 8), [0.5] * 3, [0.25] * 3))
    assert sample_source(files, 2, "val", root) == "Apple/leaf_2.jpg"
    assert sample_source(Subset(Subset(files, [3, 2, 1]), [0, 2]), 1, "val", root) == "Apple/leaf_1.jpg"
    assert sample_source(files, 0, "val", tmp_path / "elsewhere").endswith("plants/Apple/leaf_0.jpg")
    shapes = ShapesDataModule(val_size=8).dataset("val")
    assert sample_source(shapes, 5, "val") == "val idx 5"  # generated data: the split and the index


def test_audit_device_rule_is_explains_and_options_are_left_alone(
    shapes_checkpoint: Path, monkeypatch
) -> None:
    seen = {}

    def fake_run_audit(model, datamodule, output, options, device=None, label_issues=None):
        seen.update(device=device, param_device=str(next(model.parameters()).device), options=options)
        return {"path": str(output)}

    from lit_explain.inference import explainer

    assert checkpoint.resolve_device is explainer.resolve_device  # one rule for audit, explain and serve
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(checkpoint, "run_audit", fake_run_audit)
    options = AuditOptions(extra={"note": "mine"})
    checkpoint.audit_checkpoint(shapes_checkpoint, shapes_checkpoint.parent / "never_written", options)
    assert seen["device"] == "cpu" and seen["param_device"] == "cpu"
    assert options.extra == {"note": "mine"}  # the caller's options are not modified
    assert seen["options"].extra["note"] == "mine"
    assert seen["options"].extra["checkpoint"] == str(shapes_checkpoint)


def test_help_example_is_generic() -> None:
    text = " ".join(build_parser().format_help().split())  # argparse re-wraps the lines
    assert "cifar-100-python" not in text  # a CIFAR-only option in the generic example, before
    assert "--data.batch_size 128" in text and "--overwrite [{true,false}]" in text
    assert (
        "auto (cuda when available, else cpu)" in text and "the same rule in audit, explain and serve" in text
    )


def _result(confidence, correct) -> SweepResult:
    confidence = torch.tensor(confidence)
    labels = torch.zeros(len(confidence), dtype=torch.long)
    preds = torch.where(torch.tensor(correct), 0, 1)
    return SweepResult(
        torch.arange(len(labels)), labels, preds, preds, confidence, confidence, -confidence.log(), 2
    )


def test_calibration_direction_and_reliability_by_hand() -> None:
    # 4 samples at confidence 0.95, 2 right: overconfident by 0.45 in the top bin.
    over = calibration(_result([0.95] * 4, [True, True, False, False]))
    assert over["direction"] == "overconfident" and over["gap"] == pytest.approx(0.45)
    assert over["over_share"] == 1.0 and over["under_share"] == 0.0
    assert over["reliability"] == [
        {
            "lo": 0.9,
            "hi": 1.0,
            "count": 4,
            "confidence": pytest.approx(0.95),
            "accuracy": 0.5,
            "gap": pytest.approx(0.45),
        }
    ]
    assert over["ece"] == pytest.approx(0.45) and over["high_confidence_errors"] == 2
    # All right at confidence 0.3 and 0.6: under-confident by 0.55 on average.
    under = calibration(_result([0.3, 0.6], [True, True]))
    assert under["direction"] == "underconfident" and under["gap"] == pytest.approx(-0.55)
    assert under["under_share"] == 1.0 and [
        b["count"] for b in reliability(torch.tensor([0.3, 0.6]), torch.ones(2))
    ] == [1, 1]
    assert direction(0.01) == "calibrated" and direction(float("nan")) == "calibrated"
