"""Where runs write (default_root_dir / logger save_dir), failed runs leave no empty run folder, and the
command line's own name and scalars."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import pytest
import yaml
from checkpoint_helpers import run_folders, tiny_recipe

from lit_explain.cli import LitExplainCLI, main, recipe_path
from lit_explain.runs import BatchTracker, RunFolderGuard

RECIPES = ["shapes_demo.yaml", "shapes_spurious.yaml", "cifar100_resnet34.yaml", "plant_resnet18.yaml"]


def _cli(tmp_path: Path, *args: str) -> LitExplainCLI:
    return LitExplainCLI(args=["--config", str(tiny_recipe(tmp_path / "tiny.yaml")), *args], run=False)


def test_default_root_dir_moves_logs_and_checkpoints(tmp_path):
    trainer = _cli(tmp_path, f"--trainer.default_root_dir={tmp_path / 'elsewhere'}").trainer
    assert Path(trainer.logger.log_dir) == tmp_path / "elsewhere" / "shapes_demo" / "version_0"


def test_logger_save_dir_still_wins(tmp_path):
    trainer = _cli(
        tmp_path,
        f"--trainer.default_root_dir={tmp_path / 'root'}",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
    ).trainer
    assert Path(trainer.logger.log_dir) == tmp_path / "logs" / "shapes_demo" / "version_0"


@pytest.mark.parametrize("name", RECIPES)
def test_recipes_keep_last_ckpt_and_no_placeholder_hp_metric(name):
    trainer = yaml.safe_load(recipe_path(name).read_text())["trainer"]
    assert trainer["logger"]["init_args"].get("default_hp_metric") is False
    assert "save_dir" not in trainer["logger"]["init_args"]  # follows trainer.default_root_dir
    checkpoints = [
        c["init_args"] for c in trainer["callbacks"] if c["class_path"].endswith("ModelCheckpoint")
    ]
    # The first (trainer.checkpoint_callback) keeps the best epoch; another rewrites last.ckpt every epoch.
    assert checkpoints[0]["monitor"] == "val/acc"
    assert {
        "monitor": None,
        "filename": "last",
        "save_top_k": 1,
        "enable_version_counter": False,
    }.items() <= (checkpoints[1].items())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("num_classes", "num_classes=10 disagrees"),
        ("callback_layer", "ProbeHeatmaps: layer='layer5'"),
    ],
)
def test_a_run_failing_in_setup_leaves_no_run_folder(change, message, tmp_path, capsys):
    config = tiny_recipe(tmp_path / "tiny.yaml")
    args = ["fit", "--config", str(config), f"--trainer.default_root_dir={tmp_path / 'runs'}"]
    if change == "num_classes":
        args.append("--model.num_classes=10")
    else:
        recipe = yaml.safe_load(config.read_text())
        probes = {"class_path": "lit_explain.callbacks.ProbeHeatmaps", "init_args": {"layer": "layer5"}}
        recipe["trainer"]["callbacks"].append(probes)
        config.write_text(yaml.safe_dump(recipe))
    assert main(args) == 2 and message in capsys.readouterr().err
    assert run_folders(tmp_path) == [] and not (tmp_path / "runs").exists()


def _startup_files(run_dir: Path) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / f"events.out.tfevents.1.host.{os.getpid()}.0").write_bytes(b"")
    (run_dir / "hparams.yaml").write_text("{}\n")
    (run_dir / "checkpoints").mkdir()


class _Trainer:
    """What RunFolderGuard reads from a trainer: its loggers' log_dir."""

    def __init__(self, log_dir: Path) -> None:
        self.loggers = [type("Logger", (), {"log_dir": str(log_dir)})()]


def test_guard_removes_only_what_this_run_created(tmp_path):
    run_dir = tmp_path / "logs" / "demo" / "version_0"
    guard = RunFolderGuard(_Trainer(run_dir), BatchTracker())
    _startup_files(run_dir)
    assert guard.remove_unused() == [run_dir, run_dir.parent, run_dir.parent.parent]
    assert list(tmp_path.iterdir()) == []


def test_guard_keeps_folders_it_did_not_create_or_with_other_files(tmp_path):
    existing = tmp_path / "version_0"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    assert RunFolderGuard(_Trainer(existing), BatchTracker()).remove_unused() == []
    assert (existing / "notes.txt").read_text() == "mine"

    for extra in ("notes.txt", f"events.out.tfevents.1.host.{os.getpid() + 1}.0", "checkpoints/last.ckpt"):
        run_dir = tmp_path / extra.replace("/", "_") / "version_0"
        guard = RunFolderGuard(_Trainer(run_dir), BatchTracker())
        _startup_files(run_dir)
        (run_dir / extra).write_bytes(b"x")
        assert guard.remove_unused() == [] and (run_dir / extra).exists(), extra


def test_guard_keeps_a_run_that_ran_batches(tmp_path):
    run_dir = tmp_path / "version_0"
    tracker = BatchTracker()
    guard = RunFolderGuard(_Trainer(run_dir), tracker)
    _startup_files(run_dir)
    tracker.on_train_batch_start(L.Trainer(logger=False, enable_progress_bar=False))
    assert tracker.ran and guard.remove_unused() == [] and run_dir.is_dir()


def test_usage_names_the_real_command(capsys):
    with pytest.raises(SystemExit):
        main(["validate", "--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m lit_explain") and "__main__.py" not in out
