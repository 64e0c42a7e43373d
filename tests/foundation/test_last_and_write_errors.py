"""A user's ModelCheckpoint(save_last=True, monitor=...) keeps last.ckpt at the latest epoch; a run folder that
cannot be written, or a probe file that is no image, is one line (exit 2) and leaves no run folder."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch
import yaml
from checkpoint_helpers import run_folders, tiny_recipe

from lit_explain import runs
from lit_explain.cli import LitExplainCLI, main

BEST = {
    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
    "init_args": {
        "monitor": "epoch",  # mode min: never improves after epoch 0
        "mode": "min",
        "save_last": True,
        "filename": "best-epoch{epoch:02d}",
        "auto_insert_metric_name": False,
    },
}


def _config(tmp_path: Path, callbacks: list[dict]) -> Path:
    config = tiny_recipe(tmp_path / "tiny.yaml", train_size=24, val_size=8)
    recipe = yaml.safe_load(config.read_text())
    recipe["trainer"]["callbacks"] = callbacks
    config.write_text(yaml.safe_dump(recipe))
    return config


def _fit(config: Path, root: Path, *args: str) -> int:
    return main(["fit", "--config", str(config), f"--trainer.default_root_dir={root}", *args])


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.slow
def test_save_last_next_to_a_monitor_keeps_last_ckpt_at_the_latest_epoch(tmp_path):
    assert _fit(_config(tmp_path, [BEST]), tmp_path / "runs", "--trainer.max_epochs=2") == 0
    checkpoints = tmp_path / "runs" / "shapes_demo" / "version_0" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best-epoch00.ckpt", "last.ckpt"]
    last = torch.load(checkpoints / "last.ckpt", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (1, 6)  # Lightning alone leaves it at epoch 0


def test_save_last_with_the_recipe_pattern_already_there_adds_nothing(tmp_path):
    latest = {
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"monitor": None, "filename": "last", "enable_version_counter": False},
    }
    config = _config(tmp_path, [BEST, latest])
    cli = LitExplainCLI(args=["--config", str(config), f"--trainer.default_root_dir={tmp_path}"], run=False)
    best, *others = cli.trainer.checkpoint_callbacks
    assert best.monitor == "epoch" and not best.save_last  # the recipe's callback already writes last.ckpt
    assert [c.filename for c in others] == ["last"]


def test_save_last_alone_gets_a_latest_epoch_companion(tmp_path):
    config = _config(tmp_path, [BEST])
    cli = LitExplainCLI(args=["--config", str(config), f"--trainer.default_root_dir={tmp_path}"], run=False)
    best, latest = cli.trainer.checkpoint_callbacks
    assert cli.trainer.checkpoint_callback is best and not best.save_last
    assert (latest.monitor, latest.filename, latest.save_top_k) == (None, "last", 1)


def test_a_logger_folder_below_a_file_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    assert _fit(_config(tmp_path, [BEST]), blocker / "runs", "--trainer.max_epochs=1") == 2
    err = _one_line_error(capsys)
    assert f"{blocker} is a file" in err and "--trainer.default_root_dir" in err
    assert blocker.read_text() == "x" and run_folders(tmp_path) == []


def test_a_read_only_file_system_is_one_line(tmp_path, capsys, monkeypatch):
    # The folder looks writable, then creating the run folder fails as on a read-only mount (EROFS).
    root = tmp_path / "runs"
    real_makedirs = os.makedirs

    def read_only(name, *args, **kwargs):
        if str(name).startswith(str(root)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(name))
        return real_makedirs(name, *args, **kwargs)

    monkeypatch.setattr(os, "makedirs", read_only)
    assert _fit(_config(tmp_path, [BEST]), root, "--trainer.max_epochs=1") == 2
    err = _one_line_error(capsys)
    assert "Read-only file system" in err and str(root) in err and "--trainer.default_root_dir" in err
    assert run_folders(tmp_path) == [] and not root.exists()


def test_a_folder_access_refuses_is_one_line_before_the_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(runs, "_writable", lambda folder: folder != tmp_path)
    assert _fit(_config(tmp_path, [BEST]), tmp_path / "runs", "--trainer.max_epochs=1") == 2
    assert f"{tmp_path} is not writable" in _one_line_error(capsys)
    assert run_folders(tmp_path) == [] and not (tmp_path / "runs").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a chmod 0o555 folder anyway")
def test_a_chmod_read_only_folder_is_one_line(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert _fit(_config(tmp_path, [BEST]), locked / "runs", "--trainer.max_epochs=1") == 2
    finally:
        locked.chmod(0o755)
    assert f"{locked} is not writable" in _one_line_error(capsys)
    assert list(locked.iterdir()) == []


def test_a_probe_file_that_is_no_image_fails_in_setup(tmp_path, capsys):
    probe = tmp_path / "probe.jpg"
    probe.write_text("this is text, not a JPEG")
    probes = {"class_path": "lit_explain.callbacks.ProbeHeatmaps", "init_args": {"probes": [str(probe)]}}
    assert _fit(_config(tmp_path, [BEST, probes]), tmp_path / "runs", "--trainer.max_epochs=1") == 2
    assert run_folders(tmp_path) == [] and not (tmp_path / "runs").exists()  # it used to train an epoch first
    err = _one_line_error(capsys)
    assert err.startswith("error: ProbeHeatmaps:") and str(probe) in err and "`probes`" in err
