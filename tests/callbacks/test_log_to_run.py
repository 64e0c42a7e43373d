"""``audit --log_to_run``: the report lands in the run its checkpoint came from (real MLflow, W&B, CSV runs)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from tracker_readers import mlflow_artifacts, wandb_records

from lit_explain.audit.attach import REPORT_ARTIFACT_TYPE, attach_report, find_run
from lit_explain.errors import ConfigError
from lit_explain.outputs import OutputExistsError


def _checkpoint(logger, root: Path) -> Path:
    """A real checkpoint saved by Lightning where it saves them for ``logger``."""
    checkpoint = ModelCheckpoint(save_last=False)
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=logger,
        default_root_dir=root,
        callbacks=[checkpoint],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(BoringModel())
    return Path(checkpoint.best_model_path)


def _report(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "index.html").write_text("<h1>audit</h1>")
    (folder / "maps").mkdir()
    (folder / "maps" / "cat.png").write_bytes(b"\x89PNG fake")
    return folder


def test_mlflow_run_gets_the_report_as_artifacts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mlflow")
    from lightning.pytorch.loggers import MLFlowLogger
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    logger = MLFlowLogger(experiment_name="audit_test", tracking_uri=f"file:{tmp_path / 'mlruns'}")
    ckpt = _checkpoint(logger, tmp_path)
    run = find_run(ckpt)
    assert (run.kind, run.run_id) == ("mlflow", logger.run_id)
    message = attach_report(_report(tmp_path / "elsewhere" / "best_audit_val"), ckpt)
    assert logger.run_id in message
    files = mlflow_artifacts(MlflowClient(f"file:{tmp_path / 'mlruns'}"), logger.run_id, "audit")
    assert sorted(files) == ["audit/best_audit_val/index.html", "audit/best_audit_val/maps/cat.png"]


def test_wandb_run_gets_the_report_as_an_artifact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    for name in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        (tmp_path / name).mkdir()
        monkeypatch.setenv(name, str(tmp_path / name))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="shapes")
    ckpt = _checkpoint(logger, tmp_path)
    run_id = logger.experiment.id
    logger.experiment.finish()
    run = find_run(ckpt)
    assert (run.kind, run.run_id, run.project) == ("wandb", run_id, "shapes")
    message = attach_report(_report(tmp_path / "best_audit_val"), ckpt)
    assert "offline" in message and run_id in message
    # The audit resumed the same run id offline: a second local run folder holds the artifact.
    folders = sorted((tmp_path / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(folders) == 2
    artifacts = [
        r.artifact
        for r in wandb_records(next(folders[-1].glob("*.wandb")))
        if r.WhichOneof("record_type") == "artifact"
    ]
    assert [a.type for a in artifacts] == [REPORT_ARTIFACT_TYPE]
    assert sorted(c.path for c in artifacts[0].manifest.contents) == ["index.html", "maps/cat.png"]


def test_files_runs_get_a_copy_next_to_the_checkpoint_never_over_one(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import CSVLogger

    ckpt = _checkpoint(CSVLogger(tmp_path, name="csv"), tmp_path)
    log_dir = tmp_path / "csv" / "version_0"
    assert find_run(ckpt).location == log_dir
    report = _report(tmp_path / "reports" / "best_audit_val")
    assert "copied next to the checkpoint" in attach_report(report, ckpt)
    assert (log_dir / "best_audit_val" / "maps" / "cat.png").read_bytes() == b"\x89PNG fake"
    with pytest.raises(OutputExistsError, match="already exists"):
        attach_report(report, ckpt)
    assert attach_report(log_dir / "best_audit_val", ckpt).startswith("already in the run's folder")
    with pytest.raises(ConfigError, match="does not exist"):
        attach_report(tmp_path / "missing", ckpt)


def test_audit_cli_attaches_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from lightning.pytorch.loggers import CSVLogger

    from lit_explain.audit import cli

    ckpt = _checkpoint(CSVLogger(tmp_path, name="csv"), tmp_path)
    report = _report(tmp_path / "reports" / "best_audit_val")
    fake = {"path": str(report), "split": "val", "num_samples": 4, "accuracy": 0.5, "recommendations": []}
    fake["timing"] = {"total_s": 0.1}
    # The audit itself is covered by the audit tests; here only what --log_to_run adds to the command.
    monkeypatch.setattr(cli, "audit_checkpoint", lambda *args, **kwargs: fake)
    assert cli.main(["--ckpt_path", str(ckpt)]) == 0
    assert not (tmp_path / "csv" / "version_0" / "best_audit_val").exists()
    assert cli.main(["--ckpt_path", str(ckpt), "--log_to_run"]) == 0
    assert "attached to the run: copied next to the checkpoint" in capsys.readouterr().out
    assert (tmp_path / "csv" / "version_0" / "best_audit_val" / "index.html").is_file()
    assert cli.main(["--ckpt_path", str(ckpt), "--log_to_run"]) == 2  # never over an earlier copy
    assert "already exists" in capsys.readouterr().err
