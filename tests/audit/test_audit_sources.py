"""Where an audit takes its data settings from, and ``--log_to_run`` into a run folder it cannot write.

The data settings of a checkpoint come from ``--data_config``, the ``config.yaml`` of the checkpoint's own
run folder (``version_N/`` above ``checkpoints/``) or the checkpoint itself; never from a ``config.yaml``
in a folder the user did not name (issue 19).
"""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from lit_explain.audit import attach
from lit_explain.audit import cli as audit_cli
from lit_explain.audit.source import (
    _from_checkpoint_hparams,
    build_datamodule,
    data_spec,
    run_config_path,
)
from lit_explain.errors import DataError
from lit_explain.models.loading import read_checkpoint

FAST = ["--quality_samples", "4", "--max_samples", "24", "--progress", "false", "--device", "cpu"]
SHAPES = "lit_explain.data.shapes.ShapesDataModule"
# The smallest LightningCLI run: two steps of a ResNet-18 on 32 px shapes, CSV logger (no TensorBoard files).
TINY_RECIPE = """\
seed_everything: 0
trainer:
  max_steps: 2
  limit_val_batches: 1
  num_sanity_val_steps: 0
  enable_progress_bar: false
  enable_model_summary: false
  logger:
    class_path: lightning.pytorch.loggers.CSVLogger
    init_args: {name: tiny}
model:
  backbone: resnet18
  scheduler: none
data:
  class_path: lit_explain.data.ShapesDataModule
  init_args: {image_size: 32, train_size: 64, val_size: 24, test_size: 24, batch_size: 32, num_workers: 0}
"""


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real ``python -m lit_explain fit`` run folder: ``tiny/version_0/{config.yaml, checkpoints/*.ckpt}``."""
    root = tmp_path_factory.mktemp("cli_run")
    (root / "tiny.yaml").write_text(TINY_RECIPE)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lit_explain",
            "fit",
            "--config",
            "tiny.yaml",
            "--trainer.default_root_dir=run",
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "run" / "tiny" / "version_0"


def _ckpt(run_dir: Path) -> Path:
    (ckpt,) = (run_dir / "checkpoints").glob("*.ckpt")
    return ckpt


def _marker_datamodule(folder: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """An importable data module class whose import or construction writes a marker file (a stand-in payload)."""
    marker = folder / "payload_ran"
    module = f"planted_data_{uuid.uuid4().hex[:8]}"
    (folder / f"{module}.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(marker)!r}).write_text('imported')\n"
        "from lit_explain.data import ShapesDataModule\n"
        "class Planted(ShapesDataModule):\n"
        "    def __init__(self, **kwargs):\n"
        f"        Path({str(marker)!r}).write_text('built')\n"
        "        super().__init__(**kwargs)\n"
    )
    monkeypatch.syspath_prepend(str(folder))
    return f"{module}.Planted", marker


def _planted_config(path: Path, class_path: str) -> None:
    path.write_text(
        f"data:\n  class_path: {class_path}\n  init_args: {{data_dir: /tmp/payload, verify_checksums: false}}\n"
    )


def test_config_yaml_above_or_beside_a_dropped_checkpoint_is_never_read(
    shapes_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: drop/config.yaml and drop/../config.yaml were both read, and the class they named was imported.
    code = tmp_path / "code"
    code.mkdir()
    class_path, marker = _marker_datamodule(code, monkeypatch)
    drop = tmp_path / "shared" / "drop"
    drop.mkdir(parents=True)
    ckpt = Path(shutil.copy(shapes_checkpoint, drop / "model.ckpt"))
    _planted_config(tmp_path / "shared" / "config.yaml", class_path)
    _planted_config(drop / "config.yaml", class_path)

    assert run_config_path(ckpt) is None
    spec = data_spec(ckpt)
    assert spec["origin"] == "checkpoint" and spec["class_path"] == SHAPES
    assert "data_dir" not in spec["init_args"]
    build_datamodule(spec)
    assert not marker.exists()


def test_a_checkpoint_folder_that_is_not_lightnings_reads_no_config(
    shapes_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only <run>/checkpoints/x.ckpt has a run folder; a config.yaml next to checkpoints/ files is not the run's.
    code = tmp_path / "code"
    code.mkdir()
    class_path, marker = _marker_datamodule(code, monkeypatch)
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    ckpt = Path(shutil.copy(shapes_checkpoint, folder / "last.ckpt"))
    _planted_config(folder / "config.yaml", class_path)
    assert data_spec(ckpt)["origin"] == "checkpoint"
    assert not marker.exists()


def test_checkpoint_copied_alone_audits_from_its_own_hyperparameters(
    cli_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: LightningCLI's _class_path/_instantiator keys made the fallback give up ("cannot tell which data").
    shared = tmp_path / "shared_models"
    shared.mkdir()
    ckpt = Path(shutil.copy(_ckpt(cli_run), shared / "best.ckpt"))
    hparams = read_checkpoint(ckpt)["datamodule_hyper_parameters"]
    assert hparams["_class_path"] == "lit_explain.data.ShapesDataModule" and "_instantiator" in hparams

    out = tmp_path / "audit"
    assert audit_cli.main(["--ckpt_path", str(ckpt), "--output", str(out), *FAST]) == 0
    err = capsys.readouterr().err
    assert "data: ShapesDataModule from the checkpoint's own data-module hyperparameters" in err
    data = json.loads((out / "report.json").read_text())["data"]
    assert data["origin"] == "checkpoint" and data["class_path"] == SHAPES
    assert data["init_args"]["image_size"] == 32 and not any(k.startswith("_") for k in data["init_args"])


def test_run_folder_config_is_still_used_in_lightnings_layout(
    cli_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt = _ckpt(cli_run)
    assert run_config_path(ckpt) == cli_run / "config.yaml"
    spec = data_spec(ckpt)
    assert spec["origin"] == "run_config" and spec["source"] == str(cli_run / "config.yaml")
    assert spec["class_path"] == "lit_explain.data.ShapesDataModule" and spec["init_args"]["val_size"] == 24
    # Named from inside checkpoints/ ("best.ckpt"): the layout of the path made absolute.
    monkeypatch.chdir(ckpt.parent)
    assert run_config_path(ckpt.name) == cli_run / "config.yaml"


def test_data_config_names_any_other_file(cli_run: Path, tmp_path: Path) -> None:
    config = tmp_path / "elsewhere.yaml"
    config.write_text("data:\n  class_path: lit_explain.data.ShapesDataModule\n  init_args: {val_size: 8}\n")
    spec = data_spec(_ckpt(cli_run), config)
    assert (spec["origin"], spec["source"], spec["init_args"]) == (
        "data_config",
        str(config),
        {"val_size": 8},
    )
    config.write_text("data: [unclosed\n")
    with pytest.raises(DataError, match="cannot be read as YAML"):
        data_spec(_ckpt(cli_run), config)


def test_checkpoint_never_chooses_code_outside_lit_explain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class_path, marker = _marker_datamodule(tmp_path, monkeypatch)
    checkpoint = {"datamodule_hyper_parameters": {"_class_path": class_path, "_instantiator": "x", "seed": 0}}
    with pytest.raises(DataError, match=r"not one of lit_explain's.*--data_config"):
        _from_checkpoint_hparams(checkpoint, tmp_path / "m.ckpt")
    assert not marker.exists()
    unknown = {
        "datamodule_hyper_parameters": {"_class_path": "lit_explain.data.ShapesDataModule", "bogus": 1}
    }
    with pytest.raises(DataError, match=r"\['bogus'\].*--data_config"):
        _from_checkpoint_hparams(unknown, tmp_path / "m.ckpt")


# ------------------------------------------------------------------------------ --log_to_run, read-only


def _fake_report(folder: Path) -> dict:
    folder.mkdir(parents=True)
    (folder / "index.html").write_text("<h1>audit</h1>")
    (folder / "report.json").write_text("{}")
    return {
        "path": str(folder),
        "split": "val",
        "num_samples": 4,
        "accuracy": 0.5,
        "recommendations": [],
        "timing": {"total_s": 0.1},
    }


def _one_line_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert audit_cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def test_log_to_run_into_a_folder_that_refuses_writes_is_one_line(
    cli_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Root ignores chmod, so the read-only mount is simulated where the copy writes into the run folder.
    # Before: the OSError escaped as a 24-line traceback with exit 1.
    ckpt = _ckpt(cli_run)
    folder = tmp_path / "reports" / "best_audit_val"
    report = {"path": str(folder)}
    # The report appears when the (stubbed) audit runs: an existing --output would be refused up front.
    monkeypatch.setattr(
        audit_cli, "audit_checkpoint", lambda *args, **kwargs: report.update(_fake_report(folder)) or report
    )
    before = sorted(p.name for p in cli_run.iterdir())

    def read_only(src: Path, dst: Path, **kwargs: object) -> None:
        (Path(dst) / "index.html").write_text("half")  # a partial copy, then the file system refuses
        raise OSError(errno.EROFS, "Read-only file system", str(dst))

    monkeypatch.setattr(attach.shutil, "copytree", read_only)
    err = _one_line_exit_2(["--ckpt_path", str(ckpt), "--output", report["path"], "--log_to_run"], capsys)
    assert str(cli_run) in err and "not writable" in err and "--output" in err
    assert f"the report is only at {report['path']}" in err
    assert sorted(p.name for p in cli_run.iterdir()) == before  # nothing half-written in the run folder


def test_log_to_run_into_an_unwritable_folder_is_refused_before_the_audit(
    cli_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def audit_must_not_run(*args: object, **kwargs: object) -> dict:
        raise AssertionError("the audit ran although --log_to_run could not attach its report")

    monkeypatch.setattr(audit_cli, "audit_checkpoint", audit_must_not_run)
    monkeypatch.setattr(attach, "_writable", lambda folder: folder != cli_run)
    argv = ["--ckpt_path", str(_ckpt(cli_run)), "--output", str(tmp_path / "out"), "--log_to_run"]
    err = _one_line_exit_2(argv, capsys)
    assert str(cli_run) in err and "nothing was audited" in err and "--output" in err


def _chmod_is_respected(folder: Path) -> bool:
    """Whether this process is refused writing into a chmod 555 folder (root, or CAP_DAC_OVERRIDE, is not)."""
    probe = folder / "probe"
    probe.mkdir()
    probe.chmod(0o555)
    try:
        (probe / "x").write_text("")
    except PermissionError:
        return True
    finally:
        probe.chmod(0o755)
        shutil.rmtree(probe)
    return False


def test_log_to_run_into_a_chmod_read_only_run_folder(
    cli_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if not _chmod_is_respected(tmp_path):
        pytest.skip("this process writes into chmod 555 folders (root); the EROFS test above covers it")
    run = tmp_path / "run"
    shutil.copytree(cli_run, run)
    folder = tmp_path / "reports" / "best_audit_val"
    report = {"path": str(folder)}
    # The report appears when the (stubbed) audit runs: an existing --output would be refused up front.
    monkeypatch.setattr(
        audit_cli, "audit_checkpoint", lambda *args, **kwargs: report.update(_fake_report(folder)) or report
    )
    run.chmod(0o555)
    try:
        argv = ["--ckpt_path", str(_ckpt(run)), "--output", report["path"], "--log_to_run"]
        err = _one_line_exit_2(argv, capsys)
        assert str(run) in err and "not writable" in err and "nothing was audited" in err
        # Without the check before the audit, the copy itself is refused the same way.
        monkeypatch.setattr(attach, "_writable", lambda folder: True)
        err = _one_line_exit_2(argv, capsys)
        assert str(run) in err and "not writable" in err and f"the report is only at {report['path']}" in err
        assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in cli_run.iterdir())
    finally:
        run.chmod(0o755)
