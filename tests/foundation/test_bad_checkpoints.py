"""fit/validate/test/predict with a bad --ckpt_path: one line naming the file and the fault, exit 2, and no
run folder left behind."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from checkpoint_helpers import run_folders, tiny_recipe

from lit_explain.cli import main


def _bad_checkpoints(folder: Path, good: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, what the error must say)."""
    data = good.read_bytes()
    files = {
        "truncated": (data[: len(data) // 2], "truncated, corrupt or another format"),
        "random": (bytes(range(256)) * 40, "corrupt or another format"),
        "empty": (b"", "is empty (0 bytes)"),
        "text": (b"just some text\n", "not a readable PyTorch checkpoint"),
    }
    cases = {}
    for name, (content, message) in files.items():
        path = folder / f"{name}.ckpt"
        path.write_bytes(content)
        cases[name] = (path, message)
    plain = folder / "plain.pt"
    torch.save({"model_state_dict": {"w": torch.zeros(2)}}, plain)
    cases["plain"] = (plain, "is not a Lightning checkpoint (no 'pytorch-lightning_version'")
    cases["missing"] = (folder / "missing.ckpt", "does not exist or is not a file")
    cases["directory"] = (folder, "does not exist or is not a file")
    return cases


@pytest.mark.parametrize("command", ["validate", "test", "predict", "fit"])
def test_bad_checkpoints_get_one_line_and_leave_nothing(command, tmp_path, capsys, shapes_checkpoint):
    config = tiny_recipe(tmp_path / "tiny.yaml")
    bad = tmp_path / "bad"
    bad.mkdir()
    root = tmp_path / "runs"
    for name, (path, message) in _bad_checkpoints(bad, shapes_checkpoint).items():
        code = main(
            [command, "--config", str(config), f"--trainer.default_root_dir={root}", "--ckpt_path", str(path)]
        )
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert code == 2, (name, lines)
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, lines)
        assert str(path) in lines[0] and message in lines[0], (name, lines[0])
    assert run_folders(tmp_path) == [] and not root.exists()


def test_fit_refuses_a_weights_only_checkpoint(tmp_path, capsys, shapes_checkpoint):
    weights = torch.load(shapes_checkpoint, weights_only=True)
    for key in ("optimizer_states", "loops", "lr_schedulers", "callbacks"):
        weights.pop(key, None)
    path = tmp_path / "weights.ckpt"
    torch.save(weights, path)
    config = tiny_recipe(tmp_path / "tiny.yaml")
    code = main(
        ["fit", "--config", str(config), f"--trainer.default_root_dir={tmp_path}", "--ckpt_path", str(path)]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "fit cannot resume from it" in err and "\n" not in err
    assert run_folders(tmp_path) == []
