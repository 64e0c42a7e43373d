"""End to end with training: the audit flags a learned shortcut; the callback audits every new best checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from lit_explain.audit import AttentionAudit, AuditOptions, audit_checkpoint
from lit_explain.data import ShapesDataModule
from lit_explain.models import ImageClassifier

pytestmark = pytest.mark.slow


def test_audit_flags_the_spurious_corner_cue(
    spurious_checkpoint: Path, tmp_path: Path, audit_options
) -> None:
    report = audit_checkpoint(spurious_checkpoint, tmp_path / "audit", audit_options(quality_samples=8))
    att = report["attention"]["overall"]
    rules = {r["rule"]: r for r in report["recommendations"]}
    # The model reads the top-left patch (the data's default corner). Measured on this fixture: the top-left
    # cell holds the peak of 100% of the maps for 6/6 classes (flagged from 50%), and the maps' peak lies on
    # the shape for 0% of the samples (pointing game 0.00; the rule fires below 0.50).
    region = rules["fixed_region"]
    assert region["severity"] == "high" and region["evidence"]["hot_cell"] == "top-left"
    share = region["evidence"]["peak_share"]
    assert f"the top-left cell holds the peak of {share:.0%} of the maps" in region["message"]
    off = rules["attention_off_object"]
    assert off["severity"] == "high" and att["pointing_game"] < 0.5
    assert f"energy inside the mask {att['energy_in_mask']:.2f}" in off["message"]
    assert f"pointing game {att['pointing_game']:.2f}" in off["message"]
    text = (tmp_path / "audit" / "recommendations.txt").read_text()
    assert "[HIGH] fixed_region" in text and "[HIGH] attention_off_object" in text


def _fit(directory: Path, audit: bool) -> tuple[ImageClassifier, AttentionAudit | None]:
    L.seed_everything(0, verbose=False)
    dm = ShapesDataModule(train_size=96, val_size=32, test_size=32, batch_size=32)
    model = ImageClassifier("resnet18", optimizer="adamw", lr=3e-3, scheduler="none")
    options = AuditOptions(max_samples=32, quality_samples=4, progress=False)
    callback = AttentionAudit(options) if audit else None
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=directory, monitor="val/loss", mode="min")
    trainer = L.Trainer(
        max_epochs=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=directory,
        callbacks=[checkpoint, *([callback] if callback else [])],
    )
    trainer.fit(model, datamodule=dm)
    return model, callback


def test_callback_writes_report_next_to_best_and_leaves_training_alone(tmp_path: Path) -> None:
    with_audit, callback = _fit(tmp_path / "a", audit=True)
    without, _ = _fit(tmp_path / "b", audit=False)
    assert callback.reports, "no audit ran"
    best = next((tmp_path / "a").glob("*.ckpt"))
    report_dir = best.parent / f"{best.stem}_audit_val"
    assert (report_dir / "index.html").is_file()
    report = json.loads((report_dir / "report.json").read_text())
    assert report["checkpoint"] == str(best) and report["num_samples"] == 32
    for a, b in zip(with_audit.state_dict().values(), without.state_dict().values(), strict=True):
        assert torch.equal(a, b), "the audit changed training"
