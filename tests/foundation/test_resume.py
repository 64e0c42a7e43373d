"""last.ckpt always holds the latest epoch, `--ckpt_path last` finds it, and a run killed mid-epoch resumes
at the right epoch and step in its own run folder with no step logged twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from checkpoint_helpers import run_folders, scalar_points, scalar_steps, scalar_tags, tiny_recipe

from lit_explain.cli import main
from lit_explain.runs import newest_last_checkpoint

HERE = Path(__file__).resolve().parent
EPOCHS, STEPS_PER_EPOCH, KILL_AT = 2, 3, 5  # 24 images / batch 8; killed before the last batch of epoch 1


def _killed_fit(cwd: Path, config: Path, *args: str) -> subprocess.CompletedProcess:
    """A fit in its own process, SIGKILLed by the config's KillAtStep callback."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    command = [
        sys.executable,
        "-m",
        "lit_explain",
        "fit",
        f"--config={config}",
        f"--trainer.max_epochs={EPOCHS}",
    ]
    return subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def _fit(cwd: Path, config: Path, *args: str) -> int:
    """A fit in this process (cheaper than a new one on a busy 2-core machine), run from ``cwd``."""
    previous = Path.cwd()
    os.chdir(cwd)
    try:
        return main(["fit", "--config", str(config), f"--trainer.max_epochs={EPOCHS}", *args])
    finally:
        os.chdir(previous)


def _epoch_and_step(path: Path) -> tuple[int, int]:
    checkpoint = torch.load(path, weights_only=True)
    return checkpoint["epoch"], checkpoint["global_step"]


@pytest.mark.slow
def test_kill_and_resume_matches_an_uninterrupted_run(tmp_path):
    # The best-checkpoint monitor never improves after epoch 0 (epoch, mode min): last.ckpt must still move on.
    config = tiny_recipe(tmp_path / "tiny.yaml", monitor="epoch", mode="min", train_size=24, val_size=8)
    killer = yaml.safe_load(config.read_text())
    killer["trainer"]["callbacks"].append(
        {"class_path": "checkpoint_helpers.KillAtStep", "init_args": {"step": KILL_AT}}
    )
    killer_config = tmp_path / "killer.yaml"
    killer_config.write_text(yaml.safe_dump(killer))

    assert _fit(tmp_path, config, f"--trainer.default_root_dir={tmp_path / 'whole'}") == 0
    killed = _killed_fit(
        tmp_path, killer_config, f"--trainer.logger.init_args.save_dir={tmp_path / 'resumed'}"
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run = tmp_path / "resumed" / "shapes_demo" / "version_0"
    assert _epoch_and_step(run / "checkpoints" / "last.ckpt") == (0, STEPS_PER_EPOCH)
    assert max(scalar_steps(run, "train/loss")) >= STEPS_PER_EPOCH  # steps after the checkpoint were logged
    resumed = _fit(
        tmp_path, config, f"--trainer.logger.init_args.save_dir={tmp_path / 'resumed'}", "--ckpt_path=last"
    )
    assert resumed == 0
    # The resumed process started at the checkpoint's step, in the interrupted run's folder.
    events = sorted(run.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
    assert len(events) == 2 and min(scalar_steps(events[-1], "train/loss")) == STEPS_PER_EPOCH

    # default_root_dir and logger.save_dir both place logs and checkpoints; nothing in ./lightning_logs.
    reference = tmp_path / "whole" / "shapes_demo" / "version_0"
    assert not (tmp_path / "lightning_logs").exists()
    assert run_folders(tmp_path / "whole") == [reference] and run_folders(tmp_path / "resumed") == [run]
    # last.ckpt holds the final epoch in both (the best checkpoint stayed at epoch 0).
    final = (EPOCHS - 1, EPOCHS * STEPS_PER_EPOCH)
    assert _epoch_and_step(reference / "checkpoints" / "last.ckpt") == final
    assert _epoch_and_step(run / "checkpoints" / "last.ckpt") == final
    assert _epoch_and_step(reference / "checkpoints" / "best-epoch00.ckpt") == (0, STEPS_PER_EPOCH)
    # The resumed run's TensorBoard history is the uninterrupted one's: every step once, none missing.
    for tag in ("train/loss", "val/acc"):
        steps = scalar_steps(run, tag)
        assert steps == scalar_steps(reference, tag) and len(steps) == len(set(steps)) > 0, tag
    assert scalar_points(run, "epoch") == scalar_points(reference, "epoch")  # the epoch at every step
    assert "hp_metric" not in scalar_tags(reference)
    # The interrupted run's config stays; the resumed run's config is saved next to it.
    assert (run / "config.yaml").is_file() and (run / f"config-resumed-step{STEPS_PER_EPOCH}.yaml").is_file()


def test_ckpt_path_last_without_a_checkpoint_is_a_clear_error(tmp_path, capsys):
    config = tiny_recipe(tmp_path / "tiny.yaml")
    code = main(
        ["fit", "--config", str(config), f"--trainer.default_root_dir={tmp_path}", "--ckpt_path", "last"]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert err.startswith("error: --ckpt_path last: no last.ckpt") and str(tmp_path / "shapes_demo") in err
    assert run_folders(tmp_path) == []


def test_newest_last_checkpoint_is_the_latest_written(tmp_path):
    paths = []
    for i, version in enumerate(["version_0", "version_9", "version_10", "other/version_0"]):
        path = tmp_path / version / "checkpoints" / "last.ckpt"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
        os.utime(path, (1000 + i, 1000 + i))
        paths.append(path)
    (tmp_path / "version_0" / "checkpoints" / "last.ckpt.tmp").write_bytes(b"x")  # not a checkpoint name
    assert (
        newest_last_checkpoint([tmp_path]) == paths[2]
    )  # other/version_0 is one level too deep for this root
    os.utime(paths[0], (2000, 2000))
    assert newest_last_checkpoint([tmp_path]) == paths[0]
    assert newest_last_checkpoint([tmp_path / "nothing"]) is None
