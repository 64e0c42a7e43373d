"""Every tracker, run twice in one folder through the CLI: each run's config.yaml in that run's own folder,
runs named after the recipe and the backbone, and ``audit --log_to_run`` on W&B and MLflow checkpoints
without ``--data_config``.

The W&B and MLflow commands are taken from the README exactly as printed (plus tiny-run flags) and run as
a user runs them, one process each: before run folders held their own config.yaml, the second one died in
setup with Lightning's ``SaveConfigCallback expected ./config.yaml to NOT exist``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml
from callback_helpers import run_as_printed
from tracker_readers import wandb_records

from lit_explain.cli import LitExplainCLI, checkpoint_roots, main, recipe_path

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=1",
    "--trainer.num_sanity_val_steps=0",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--data.init_args.train_size=64",
    "--data.init_args.val_size=48",
]
README_COMMAND = (
    r"`((?:\w+=\S+ )*python -m lit_explain fit --trainer\.logger=lightning\.pytorch\.loggers\.{}[^`]*)`"
)


def readme_command(logger: str) -> str:
    """The README's one-line ``fit`` command for ``logger`` (WandbLogger, MLFlowLogger), as printed."""
    found = re.findall(README_COMMAND.format(logger), (REPO / "README.md").read_text())
    assert len(found) == 1, f"README has {len(found)} fit commands for {logger}"
    return found[0]


@pytest.fixture
def tracker_env(tmp_path: Path) -> dict[str, str]:
    """A child environment whose W&B settings, cache and data stay inside the test's folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MLFLOW_"))}
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        (tmp_path / name).mkdir()
        env[name] = str(tmp_path / name)
    env.update(WANDB_SILENT="true", PYTHONPATH=str(REPO))
    return env


def _audit_to_run(ckpt: Path, output: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """``audit --log_to_run`` on ``ckpt`` (no --data_config): exit 0, and what it printed."""
    code = main(
        ["audit", "--ckpt_path", str(ckpt), "--log_to_run", "--max_samples", "8", "--output", str(output)]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out + captured.err


def _no_shared_config(cwd: Path) -> None:
    # Lightning's own callback wrote the logger's shared save_dir: ./config.yaml, ./mlruns/config.yaml.
    assert not list(cwd.glob("config*.yaml")) and not list(cwd.glob("*/config*.yaml"))


@pytest.mark.slow
def test_readme_wandb_command_twice_then_audit_log_to_run(
    tmp_path: Path, tracker_env: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    pytest.importorskip("wandb")
    cwd = tmp_path / "project"
    cwd.mkdir()
    for attempt in (1, 2):
        done = run_as_printed(readme_command("WandbLogger"), cwd, tracker_env, TINY)
        assert done.returncode == 0, f"run {attempt}: {done.stderr[-3000:]}"
    # Project = the recipe, under default_root_dir: lightning_logs/shapes_demo/<run id>/.
    runs = sorted((cwd / "lightning_logs" / "shapes_demo").iterdir())
    assert len(runs) == 2
    for run in runs:
        assert (run / "checkpoints" / "last.ckpt").is_file()
        assert yaml.safe_load((run / "config.yaml").read_text())["data"]["init_args"]["val_size"] == 48
        (local,) = (cwd / "lightning_logs" / "wandb").glob(f"offline-run-*-{run.name}")
        # The run carries its config.yaml too, as an artifact of type "config".
        records = wandb_records(next(local.glob("*.wandb")))
        artifacts = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
        configs = [[c.path for c in a.manifest.contents] for a in artifacts if a.type == "config"]
        assert configs == [["config.yaml"]]
    _no_shared_config(cwd)

    for name, value in tracker_env.items():
        if name.startswith("WANDB_"):
            monkeypatch.setenv(name, value)
    monkeypatch.chdir(cwd)
    said = _audit_to_run(runs[-1] / "checkpoints" / "last.ckpt", tmp_path / "audit", capsys)
    assert f"the run folder's config.yaml ({runs[-1] / 'config.yaml'})" in said
    assert f"attached to the run: W&B run shapes_demo/{runs[-1].name}" in said


@pytest.mark.slow
def test_readme_mlflow_command_twice_then_audit_log_to_run(
    tmp_path: Path, tracker_env: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    cwd = tmp_path / "project"
    cwd.mkdir()
    for attempt in (1, 2):
        done = run_as_printed(readme_command("MLFlowLogger"), cwd, tracker_env, TINY)
        assert done.returncode == 0, f"run {attempt}: {done.stderr[-3000:]}"
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(f"file:{cwd / 'mlruns'}")
    experiment = client.get_experiment_by_name("shapes_demo")  # the recipe, not "lightning_logs"
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    for run in runs:
        assert re.fullmatch(r"shapes_demo-\w+-\d{8}-\d{6}", run.info.run_name), run.info.run_name
        folder = cwd / "mlruns" / experiment.experiment_id / run.info.run_id
        assert (folder / "config.yaml").is_file() and (folder / "checkpoints" / "last.ckpt").is_file()
        assert "config.yaml" in [a.path for a in client.list_artifacts(run.info.run_id)]
    _no_shared_config(cwd)

    monkeypatch.chdir(cwd)
    folder = cwd / "mlruns" / experiment.experiment_id / runs[0].info.run_id
    said = _audit_to_run(folder / "checkpoints" / "last.ckpt", tmp_path / "audit", capsys)
    assert f"the run folder's config.yaml ({folder / 'config.yaml'})" in said
    assert f"attached to the run: MLflow run {runs[0].info.run_id}" in said


@pytest.mark.slow
@pytest.mark.parametrize(
    ("logger", "events"), [("TensorBoardLogger", "events.out.tfevents.*"), ("CSVLogger", "metrics.csv")]
)
def test_tensorboard_and_csv_twice_each_run_folder_keeps_its_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, logger: str, events: str
) -> None:
    monkeypatch.chdir(tmp_path)
    for _ in (1, 2):
        assert main(["fit", f"--trainer.logger=lightning.pytorch.loggers.{logger}", *TINY]) == 0
    runs = sorted((tmp_path / "lightning_logs" / "shapes_demo").iterdir())
    assert [r.name for r in runs] == ["version_0", "version_1"]
    for run in runs:
        assert (run / "config.yaml").is_file() and list(run.glob(events))
        assert (run / "checkpoints" / "last.ckpt").is_file()
    _no_shared_config(tmp_path)


def _logger(*args: str):
    return LitExplainCLI(args=["--config", str(recipe_path()), *args], run=False).trainer.logger


def test_folder_named_after_recipe_and_other_backbone(tmp_path: Path) -> None:
    root = f"--trainer.default_root_dir={tmp_path}"
    # The recipe's own backbone keeps the recipe's folder; any other adds its short name.
    assert Path(_logger(root).log_dir) == tmp_path / "shapes_demo" / "version_0"
    other = _logger(root, "--model.backbone=resnet18")
    assert Path(other.log_dir) == tmp_path / "shapes_demo-resnet18" / "version_0"
    csv = _logger(
        root, "--trainer.logger=lightning.pytorch.loggers.CSVLogger", "--model.backbone=timm:resnet10t"
    )
    assert Path(csv.log_dir) == tmp_path / "shapes_demo-resnet10t" / "version_0"
    # An explicit name wins, whatever the backbone.
    mine = _logger(root, "--model.backbone=resnet18", "--trainer.logger.init_args.name=mine")
    assert Path(mine.log_dir) == tmp_path / "mine" / "version_0"


def test_wandb_and_mlflow_named_after_recipe_unless_set(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    root = f"--trainer.default_root_dir={tmp_path}"
    wandb_logger = _logger(
        root, "--trainer.logger=lightning.pytorch.loggers.WandbLogger", "--model.backbone=resnet18"
    )
    # Project = the recipe (run folders under it), save_dir follows default_root_dir.
    assert (wandb_logger.name, wandb_logger.save_dir) == ("shapes_demo", str(tmp_path))
    assert re.fullmatch(r"shapes_demo-resnet18-\d{8}-\d{6}", wandb_logger._wandb_init["name"])
    chosen = _logger(
        root,
        "--trainer.logger=lightning.pytorch.loggers.WandbLogger",
        "--trainer.logger.init_args.project=mine",
        "--trainer.logger.init_args.name=run1",
        "--trainer.logger.init_args.save_dir=.",
    )
    assert (chosen.name, chosen._wandb_init["name"], chosen.save_dir) == ("mine", "run1", ".")

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.chdir(tmp_path)
    mlflow_logger = _logger(root, "--trainer.logger=lightning.pytorch.loggers.MLFlowLogger")
    assert mlflow_logger._experiment_name == "shapes_demo"
    assert re.fullmatch(r"shapes_demo-\w+-\d{8}-\d{6}", mlflow_logger._run_name)
    chosen = _logger(
        root,
        "--trainer.logger=lightning.pytorch.loggers.MLFlowLogger",
        "--trainer.logger.init_args.experiment_name=exp",
        "--trainer.logger.init_args.run_name=r1",
    )
    assert (chosen._experiment_name, chosen._run_name) == ("exp", "r1")


def test_ckpt_path_last_looks_in_the_wandb_project(tmp_path: Path, monkeypatch) -> None:
    # W&B saves checkpoints to <save_dir>/<project>/<run id>/checkpoints/; its `name` is the display name.
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    args = [
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.logger=lightning.pytorch.loggers.WandbLogger",
    ]
    cli = LitExplainCLI(args=["--config", str(recipe_path()), *args], run=False)
    assert checkpoint_roots(cli.config.trainer)[-1] == tmp_path / "shapes_demo"
