"""Preconditions of the audit's advice on real numbers: how far training got (read from a checkpoint and
its run folder), and a real audit of the tiny shapes checkpoint, whose model is still at chance."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lit_explain.audit.attention import faithfulness
from lit_explain.audit.progress import improvement, trainer_progress, training_progress
from lit_explain.audit.recommendations import recommend
from lit_explain.audit.stats import binomial_se, calibration, chance_accuracy
from lit_explain.audit.sweep import SweepResult
from lit_explain.models.checkpoint_io import read_checkpoint

MC_MAX = "ModelCheckpoint{'monitor': 'val/acc', 'mode': 'max', 'every_n_train_steps': 0}"


def test_improvement_from_scores_and_early_stopping() -> None:
    assert improvement(0.81, 0.81, "max") is True  # this checkpoint is the best so far
    assert improvement(0.70, 0.81, "max") is False
    assert improvement(0.30, 0.25, "min") is False and improvement(torch.tensor(0.25), 0.25, "min") is True
    assert improvement(None, None, wait_count=3) is False  # three checks without a new best
    assert improvement(None, None, wait_count=0) is True
    assert improvement(None, None) is None and improvement(float("nan"), 0.5, "max") is None


def test_training_progress_from_a_checkpoint_dict() -> None:
    ckpt = {
        "epoch": 1,
        "global_step": 80,
        "lit_explain": {"epoch": 1},
        "callbacks": {MC_MAX: {"monitor": "val/acc", "current_score": 0.6, "best_model_score": 0.6}},
        "lr_schedulers": [{"T_max": 600, "last_epoch": 80}],  # cosine over 600 steps
    }
    progress = training_progress(ckpt)
    assert progress == {
        "epochs_done": 2,
        "max_epochs": None,
        "max_steps": None,
        "step": 80,
        "planned_steps": 600,
        "improving": True,
        "monitor": "val/acc",
    }
    ckpt["callbacks"]["EarlyStopping{'monitor': 'val/acc', 'mode': 'max'}"] = {
        "wait_count": 2,
        "best_score": 0.7,
    }
    assert training_progress(ckpt)["improving"] is False  # one callback that saw it level off is enough
    assert training_progress({})["epochs_done"] is None


def test_trainer_progress_from_a_live_trainer() -> None:
    checkpoint = SimpleNamespace(monitor="val/loss", mode="min", current_score=0.4, best_model_score=0.4)
    trainer = SimpleNamespace(current_epoch=2, max_epochs=10, global_step=30, checkpoint_callback=checkpoint)
    progress = trainer_progress(trainer)
    assert progress["epochs_done"] == 3 and progress["max_epochs"] == 10 and progress["improving"] is True
    trainer.max_epochs, trainer.max_steps = -1, 40  # -1: no limit
    assert trainer_progress(trainer)["max_epochs"] is None and trainer_progress(trainer)["max_steps"] == 40


def test_chance_and_standard_errors_by_hand() -> None:
    assert chance_accuracy([10, 10, 10], 3) == (pytest.approx(1 / 3), None)
    assert chance_accuracy([10, 30], 4) == (0.75, 1)
    assert binomial_se(0.25, 48) == pytest.approx(0.0625)
    # confidence - correct = [-0.1, -0.1, 0.9, 0.9]: std 0.5774, standard error 0.2887.
    confidence = torch.tensor([0.9, 0.9, 0.9, 0.9])
    labels = torch.zeros(4, dtype=torch.long)
    preds = torch.tensor([0, 0, 1, 1])
    result = SweepResult(torch.arange(4), labels, preds, preds, confidence, confidence, -confidence.log(), 2)
    assert calibration(result)["gap_se"] == pytest.approx(0.2887, abs=1e-4)


def test_faithfulness_reports_paired_standard_errors() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Flatten(), torch.nn.LazyLinear(3))
    images = torch.rand(5, 3, 8, 8)
    net(images)
    maps = torch.rand(5, 1, 8, 8)
    out = faithfulness(net.eval(), images, maps, torch.zeros(5, dtype=torch.long), steps=4)
    assert out["score_se"] > 0 and out["deletion_se"] > 0
    single = faithfulness(net, images[:1], maps[:1], torch.zeros(1, dtype=torch.long), steps=4)
    assert single["deletion_se"] != single["deletion_se"]  # NaN: one sample has no spread


@pytest.mark.slow
def test_a_checkpoint_stopped_early_in_its_run_is_not_converged(
    shapes_checkpoint: Path, shapes_report: Path, tmp_path: Path
) -> None:
    # A real checkpoint, placed in a run folder whose config.yaml planned 15 epochs: it has done 1.
    run = tmp_path / "version_0"
    (run / "checkpoints").mkdir(parents=True)
    ckpt_path = run / "checkpoints" / "last.ckpt"
    shutil.copy(shapes_checkpoint, ckpt_path)
    (run / "config.yaml").write_text("trainer:\n  max_epochs: 15\n")
    progress = training_progress(read_checkpoint(ckpt_path), ckpt_path)
    assert progress["epochs_done"] == 1 and progress["max_epochs"] == 15 and progress["step"] == 8
    # The same checkpoint anywhere else: no config.yaml is read, so no plan and no finding.
    assert training_progress(read_checkpoint(shapes_checkpoint), shapes_checkpoint)["max_epochs"] is None
    # A run planned as 8 steps (max_steps wins over max_epochs) did finish.
    (run / "config.yaml").write_text("trainer:\n  max_epochs: 15\n  max_steps: 8\n")
    finished = training_progress(read_checkpoint(ckpt_path), ckpt_path)
    assert finished["max_steps"] == 8
    report = json.loads((shapes_report / "report.json").read_text())
    assert "not_converged" not in [r["rule"] for r in recommend(report | {"training_progress": finished})]
    # Its audit with that record (what audit_checkpoint puts in the report once wired): at chance comes
    # first, not converged second, and calibration advice stays withheld.
    report = json.loads((shapes_report / "report.json").read_text()) | {"training_progress": progress}
    recs = recommend(report)
    assert [r["rule"] for r in recs[:2]] == ["near_chance", "not_converged"]
    assert "saved after epoch 1 of 15 (7% of the planned training)" in recs[1]["message"]
    assert all(r["severity"] == "info" for r in recs if r["rule"] in ("overconfident", "underconfident"))


@pytest.mark.slow
def test_real_audit_of_an_untrained_model_says_near_chance_first(shapes_report: Path) -> None:
    report = json.loads((shapes_report / "report.json").read_text())
    n, acc = report["num_samples"], report["accuracy"]
    chance, _ = chance_accuracy([r["support"] for r in report["per_class"]], report["num_classes"])
    # The fixture trains one short epoch: its accuracy is within two standard errors of chance.
    assert acc < chance + 2 * binomial_se(chance, n)
    recs = report["recommendations"]
    assert recs[0]["rule"] == "near_chance" and recs[0]["severity"] == "high"
    assert f"accuracy {acc:.3f} on {n} samples" in recs[0]["message"]
    assert "too_few_samples" in [r["rule"] for r in recs]  # 64 samples over 6 classes
    for rec in recs[1:]:
        assert rec["severity"] != "high", rec  # nothing read from an untrained network claims high severity
        if rec["rule"] in ("attention_off_object", "fixed_region", "overconfident", "underconfident"):
            assert rec["severity"] == "info" and "near_chance" in rec["held_back_by"]
    text = (shapes_report / "recommendations.txt").read_text()
    assert "1. [HIGH] near_chance" in text
