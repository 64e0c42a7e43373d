"""Every checkpoint load is weights_only=True: --ckpt_path paths and URLs (http, file) in every Lightning
command, the trainer's own loader, and the loaders of audit / explain / serve."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from checkpoint_helpers import http_server, run_folders, tiny_recipe, write_malicious_checkpoint

from lit_explain.cli import LitExplainCLI, main
from lit_explain.models.checkpoint_io import CheckpointError, SafeCheckpointIO, read_checkpoint
from lit_explain.models.loading import load_classifier


@pytest.fixture
def evil(tmp_path: Path) -> tuple[Path, Path]:
    """(a malicious checkpoint in its own folder, the marker file it would create)."""
    folder = tmp_path / "served"
    folder.mkdir()
    marker = tmp_path / "marker"
    return write_malicious_checkpoint(folder / "evil.ckpt", marker), marker


def test_the_payload_really_runs_without_weights_only(evil):
    # The control: what Lightning 2.6 does for URLs (weights_only=False) executes the pickle.
    path, marker = evil
    torch.load(path, weights_only=False)
    assert marker.exists()


def _run(capsys, tmp_path: Path, *args: str) -> tuple[int, list[str]]:
    root = tmp_path / "runs"
    code = main(
        [*args, "--config", str(tiny_recipe(tmp_path / "tiny.yaml")), f"--trainer.default_root_dir={root}"]
    )
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.strip()]


@pytest.mark.parametrize("command", ["fit", "validate", "test", "predict"])
def test_malicious_checkpoint_url_runs_nothing(command, evil, tmp_path, capsys):
    path, marker = evil
    with http_server(path.parent) as url:
        code, lines = _run(capsys, tmp_path, command, "--ckpt_path", f"{url}/evil.ckpt")
    assert code == 2 and not marker.exists()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and "refused to load" in errors[0] and "evil.ckpt" in errors[0], lines
    assert "weights_only=True" in errors[0] and not any("Traceback" in line for line in lines)
    assert run_folders(tmp_path / "runs") == []


@pytest.mark.parametrize("form", ["path", "file_url"])
def test_malicious_local_checkpoint_runs_nothing(form, evil, tmp_path, capsys):
    path, marker = evil
    source = str(path) if form == "path" else path.as_uri()
    code, lines = _run(capsys, tmp_path, "validate", "--ckpt_path", source)
    assert code == 2 and not marker.exists()
    assert lines[-1].startswith("error: refused to load") and str(path.name) in lines[-1], lines


def test_checkpoint_io_refuses_code_and_weights_only_false(evil):
    path, marker = evil
    io = SafeCheckpointIO()
    with pytest.raises(CheckpointError, match="refused to load"):
        io.load_checkpoint(path)
    with pytest.raises(CheckpointError, match="weights_only=True only"):
        io.load_checkpoint(path, weights_only=False)
    assert not marker.exists()


def test_the_trainer_loads_through_the_safe_loader(tmp_path):
    cli = LitExplainCLI(
        args=["--config", str(tiny_recipe(tmp_path / "tiny.yaml")), f"--trainer.default_root_dir={tmp_path}"],
        run=False,
    )
    assert cli.trainer.strategy.checkpoint_io is cli.checkpoint_io
    assert isinstance(cli.checkpoint_io, SafeCheckpointIO)


def test_weights_only_false_is_refused(tmp_path, capsys, shapes_checkpoint):
    code, lines = _run(
        capsys, tmp_path, "validate", "--ckpt_path", str(shapes_checkpoint), "--weights_only=false"
    )
    assert code == 2 and "--weights_only false is not supported" in lines[-1]


def test_loaders_of_the_other_commands_read_urls_safely(evil, shapes_checkpoint, tmp_path):
    path, marker = evil
    good = tmp_path / "served" / "good.ckpt"
    good.write_bytes(shapes_checkpoint.read_bytes())
    with http_server(path.parent) as url:
        with pytest.raises(CheckpointError, match="refused to load"):
            load_classifier(f"{url}/evil.ckpt")
        with pytest.raises(CheckpointError, match="HTTP 404"):
            read_checkpoint(f"{url}/missing.ckpt")
        model = load_classifier(f"{url}/good.ckpt")
    reference = load_classifier(shapes_checkpoint)
    assert not marker.exists()
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), reference.state_dict().values(), strict=True)
    )


def test_a_real_checkpoint_validates_from_a_url(shapes_checkpoint, tmp_path, capsys):
    # A genuine lit_explain checkpoint (optimizer, loops, callbacks, hyperparameters) loads with weights_only.
    served = tmp_path / "served"
    served.mkdir()
    (served / "model.ckpt").write_bytes(shapes_checkpoint.read_bytes())
    with http_server(served) as url:
        code, lines = _run(
            capsys, tmp_path, "validate", "--ckpt_path", f"{url}/model.ckpt", "--trainer.limit_val_batches=1"
        )
    assert code == 0, lines


def test_a_tampered_torchvision_cache_file_runs_nothing(tmp_path, monkeypatch):
    # torchvision reads cached ImageNet weights with torch.hub's default weights_only=False.
    import os
    from urllib.parse import urlparse

    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    cached = tmp_path / "torch" / "hub" / "checkpoints" / os.path.basename(urlparse(url).path)
    cached.parent.mkdir(parents=True)
    marker = tmp_path / "marker"
    write_malicious_checkpoint(cached, marker)
    with pytest.raises(CheckpointError, match="cannot load resnet18 weights"):
        load_classifier("torchvision:resnet18")
    assert not marker.exists()


def test_a_bare_protocol_4_pickle_is_one_line_without_torch_warnings(tmp_path) -> None:
    import pickle
    import subprocess
    import sys

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil_raw.ckpt"
    evil.write_bytes(pickle.dumps({"state_dict": Payload()}, protocol=4))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "lit_explain",
            "export",
            "--ckpt_path",
            str(evil),
            "--output",
            str(tmp_path / "m"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "evil_raw.ckpt" in done.stderr, done.stderr
    assert not marker.exists()
