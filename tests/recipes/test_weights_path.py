"""``model.weights_path``: a head of another class count is replaced (one line logged) and the backbone loads;
any other mismatch, or an unsafe pickle, is one line naming the file and the first mismatching keys."""

from __future__ import annotations

import pathlib
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

from lit_explain.cli import main
from lit_explain.errors import ConfigError
from lit_explain.models import ImageClassifier, build_backbone, timm_backbones, weights_file
from lit_explain.models.checkpoint_io import CheckpointError
from lit_explain.models.loading import load_classifier

REPO = Path(__file__).resolve().parents[2]


class Marker:
    """Unpickling this creates ``path``: the stand-in for code a malicious weights file would run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


@pytest.fixture
def notes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The lines weights_path logs (rank_zero_info)."""
    seen: list[str] = []
    monkeypatch.setattr(weights_file, "rank_zero_info", seen.append)
    return seen


def _one_line(exc: pytest.ExceptionInfo, path: Path) -> str:
    message = str(exc.value)
    assert "\n" not in message and len(message) < 600 and str(path) in message, message
    assert "weights_only=False" not in message and "corrupt" not in message, message
    return message


def test_a_ten_class_resnet18_into_a_four_class_model(tmp_path: Path, notes: list[str]) -> None:
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(num_classes=10)
    path = tmp_path / "resnet18_10.pth"
    torch.save(reference.state_dict(), path)
    model = ImageClassifier("resnet18", num_classes=4, weights_path=str(path))
    assert model.net.fc.out_features == 4 and model.pretrained
    for key, value in reference.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(model.net.state_dict()[key], value), key
    assert not torch.equal(model.net.fc.weight, reference.fc.weight[:4])
    assert notes == [f"weights from {path}: classifier fc 10→4 classes left at random init"]
    # The same class count keeps the file's head (a model's own export reused as a starting point).
    notes.clear()
    same = build_backbone("resnet18", 10, weights_path=str(path))
    assert torch.equal(same.fc.weight, reference.fc.weight) and notes == []


def test_a_timm_head_of_another_class_count_is_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "convnext_1000.safetensors"
    save_file(timm.create_model("convnext_atto", num_classes=1000).state_dict(), str(path))
    seen: list[str] = []
    monkeypatch.setattr(timm_backbones, "rank_zero_info", seen.append)
    net = build_backbone("timm:convnext_atto", 6, weights_path=str(path))
    assert net.head.fc.out_features == 6
    assert seen == [f"weights from {path}: classifier head.fc 1000→6 classes left at random init"]


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_another_architecture_is_one_line_with_the_keys(suffix: str, tmp_path: Path) -> None:
    path = tmp_path / f"resnet34{suffix}"
    state = torchvision.models.resnet34().state_dict()
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    with pytest.raises(ConfigError) as err:
        build_backbone("resnet18", 4, weights_path=str(path))
    message = _one_line(err, path)
    # The first few keys (resnet34's extra blocks), and how many there are.
    assert "does not fit backbone ResNet: unexpected layer1.2." in message and "(96 in all)" in message


def test_another_timm_architecture_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "convnext_atto.safetensors"
    save_file(timm.create_model("convnext_atto").state_dict(), str(path))
    with pytest.raises(ConfigError) as err:
        build_backbone("timm:convnext_femto", 3, weights_path=str(path))
    message = _one_line(err, path)
    assert "do not fit timm model convnext_femto" in message and "shape mismatch: stem.0.weight" in message


@pytest.mark.parametrize("backbone", ["resnet18", "timm:convnext_atto"])
def test_an_unsafe_pickle_is_refused(backbone: str, tmp_path: Path) -> None:
    path, marker = tmp_path / "evil.pth", tmp_path / "marker"
    torch.save({"fc.weight": torch.zeros(4, 512), "payload": Marker(marker)}, path)
    with pytest.raises(ConfigError) as err:
        build_backbone(backbone, 4, weights_path=str(path))
    message = _one_line(err, path)
    assert not marker.exists()
    assert "refused to load" in message and "as unsafe: loading it would call" in message
    with pytest.raises(CheckpointError, match=r"as unsafe") as err:
        load_classifier(path, backbone="resnet18")
    _one_line(err, path)
    assert not marker.exists()


def test_fit_with_an_unsafe_weights_path_is_one_line(tmp_path: Path, capsys) -> None:
    path, marker = tmp_path / "evil.pth", tmp_path / "marker"
    torch.save({"payload": Marker(marker)}, path)
    code = main(
        [
            "fit",
            f"--model.weights_path={path}",
            f"--trainer.default_root_dir={tmp_path / 'runs'}",
            "--trainer.max_epochs=1",
        ]
    )
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and not marker.exists()
    assert lines[-1].startswith("error: model.weights_path: refused to load") and "unsafe" in lines[-1], lines
    assert not any("Traceback" in line or "weights_only=False" in line for line in lines)


def test_a_lightning_checkpoint_that_does_not_fit_is_one_line(
    shapes_checkpoint: Path, tmp_path: Path
) -> None:
    checkpoint = torch.load(shapes_checkpoint, weights_only=True)
    state = checkpoint["state_dict"]
    first = next(k for k in state if k.endswith("conv1.weight"))
    state[first] = state[first][:, :1]
    state.pop(next(k for k in state if k.endswith("bn1.bias")))
    path = tmp_path / "bent.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError) as err:
        load_classifier(path)
    message = _one_line(err, path)
    assert "missing net.bn1.bias" in message and f"shape mismatch: {first} found [" in message


class SystemCall:
    """A payload through ``os.system``: torch reports it differently ("module posix is blocked")."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        import os

        return (os.system, (f"touch {self.marker}",))


def test_an_os_system_payload_is_called_unsafe_not_corrupt(tmp_path: Path) -> None:
    path, marker = tmp_path / "system.pth", tmp_path / "marker"
    torch.save({"fc.weight": torch.zeros(4, 512), "payload": SystemCall(marker)}, path)
    with pytest.raises(ConfigError) as err:
        build_backbone("resnet18", 4, weights_path=str(path))
    message = _one_line(err, path)
    assert "as unsafe: loading it would call " in message and ".system" in message and not marker.exists()
