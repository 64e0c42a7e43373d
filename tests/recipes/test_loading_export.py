"""ImageNet weights offline, plain-file import, export round-trip, fine-tuning schedule, recipe configs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import torchvision

from lit_explain.cli import main as cli_main
from lit_explain.data import ShapesDataModule
from lit_explain.errors import ConfigError
from lit_explain.models import ImageClassifier, build_backbone, load_classifier
from lit_explain.models.export import main as export_main
from lit_explain.models.finetune import BackboneUnfreeze
from lit_explain.models.loading import CheckpointError

REPO = Path(__file__).resolve().parents[2]


def _cache_weights(torch_home: Path, weights: torchvision.models.WeightsEnum, net: torch.nn.Module) -> Path:
    # torchvision reads $TORCH_HOME/hub/checkpoints/<basename of url>; its sha256 prefix is checked only when
    # downloading, so a cached file with other tensors is loaded as is: exactly what lets this test be offline.
    path = torch_home / "hub" / "checkpoints" / Path(weights.url).name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path


def test_imagenet_weights_from_torch_home_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference = torchvision.models.resnet18(num_classes=1000)
    _cache_weights(tmp_path, torchvision.models.ResNet18_Weights.IMAGENET1K_V1, reference)
    net = build_backbone("resnet18", 4, weights="IMAGENET1K_V1")
    for key, value in reference.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(net.state_dict()[key], value), key
    assert net.fc.out_features == 4
    # The same file through weights_path; a file for another architecture is refused with what differs.
    local = tmp_path / "local.pth"
    torch.save(reference.state_dict(), local)
    assert torch.equal(
        build_backbone("resnet18", 4, weights_path=str(local)).conv1.weight, reference.conv1.weight
    )
    with pytest.raises(ConfigError, match=r"does not fit backbone ResNet"):
        build_backbone("resnet34", 4, weights_path=str(local))
    # torchvision:NAME for explaining an ImageNet model as is: class names from the weights' metadata.
    model = load_classifier("torchvision:resnet18")
    assert model.class_names[0] == "tench" and model.hparams.input_size == [224, 224]
    assert torch.equal(model.net.fc.weight, reference.fc.weight)
    with pytest.raises(CheckpointError, match=r"expected the file .*vgg11-8a719046.pth"):
        load_classifier("torchvision:vgg11")


def test_plain_file_import(tmp_path: Path) -> None:
    net = torchvision.models.resnet18(num_classes=3)
    path = tmp_path / "model.pth"
    torch.save(
        {
            "model_state_dict": net.state_dict(),
            "class_names": ["a", "b", "c"],
            "train_acc": 0.9,
            "val_acc": 0.8,
            "test_acc": 0.7,
            "epoch": 4,
        },
        path,
    )
    model = load_classifier(path, backbone="resnet18")
    assert model.class_names == ["a", "b", "c"] and model.hparams.mean == [0.485, 0.456, 0.406]
    assert model.hparams.input_size == [224, 224] and not model.training
    assert torch.equal(model.net.layer4[1].conv2.weight, net.layer4[1].conv2.weight)
    custom = load_classifier(path, backbone="resnet18", input_size=96, mean=[0.5] * 3, std=[0.2] * 3)
    assert custom.hparams.input_size == [96, 96] and custom.hparams.std == [0.2] * 3
    with pytest.raises(CheckpointError, match="without a backbone name"):
        load_classifier(path)
    with pytest.raises(
        CheckpointError, match=r"do not fit backbone 'resnet34' with 3 classes.*missing layer1.2"
    ):
        load_classifier(path, backbone="resnet34")
    with pytest.raises(CheckpointError, match=r"3-class head but 2 class names"):
        load_classifier(path, backbone="resnet18", class_names=["x", "y"])


def test_export_round_trip(shapes_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "model.pth"
    assert cli_main(["export", "--ckpt_path", str(shapes_checkpoint), "--output", str(out)]) == 0
    plain = torch.load(out, weights_only=True)
    assert {"model_state_dict", "class_names", "train_acc", "val_acc", "test_acc", "epoch"} <= set(plain)
    assert "conv1.weight" in plain["model_state_dict"] and plain["backbone"] == "resnet18"
    original = load_classifier(shapes_checkpoint)
    again = load_classifier(out)
    assert again.class_names == original.class_names and again.hparams.mean == original.hparams.mean
    assert again.hparams.input_size == original.hparams.input_size
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(original(images), again(images), atol=1e-6)
    # Refuses to overwrite; --overwrite replaces.
    assert cli_main(["export", "--ckpt_path", str(shapes_checkpoint), "--output", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert (
        export_main(["--ckpt_path", str(shapes_checkpoint), "--output", str(out), "--overwrite", "true"]) == 0
    )
    with pytest.raises(CheckpointError, match="not a lit_explain checkpoint"):
        export_main(["--ckpt_path", str(out), "--output", str(tmp_path / "x.pth")])


def test_backbone_unfreeze_schedule() -> None:
    L.seed_everything(0, verbose=False)
    seen: list[tuple[int, int, bool]] = []

    class Record(L.Callback):
        def on_train_epoch_start(self, trainer: L.Trainer, module: ImageClassifier) -> None:
            groups = trainer.optimizers[0].param_groups
            seen.append(
                (
                    len(groups),
                    round(groups[-1]["lr"] / groups[0]["lr"], 6),
                    module.net.layer1[0].conv1.weight.requires_grad,
                )
            )

    model = ImageClassifier("resnet18", lr=0.05, scheduler="cosine")
    trainer = L.Trainer(
        max_epochs=3,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[BackboneUnfreeze(2, 0.1, freeze_untrained=True), Record()],
    )
    dm = ShapesDataModule(train_size=32, val_size=16, test_size=16, batch_size=16, image_size=32)
    trainer.fit(model, datamodule=dm)
    assert seen[0] == (2, 1.0, False) and seen[1][2] is False
    assert seen[2] == (3, 0.1, True)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["cifar100_resnet34.yaml", "plant_resnet18.yaml"])
def test_recipes_parse_and_run(recipe: str, tmp_path: Path, cifar_root: Path, plants_flat: Path) -> None:
    cmd = [sys.executable, "-m", "lit_explain", "fit", "--config", str(REPO / "configs" / recipe)]
    printed = subprocess.run([*cmd, "--print_config"], capture_output=True, text=True, check=True)
    assert "class_path: lit_explain.callbacks.ProbeHeatmaps" in printed.stdout
    if recipe.startswith("cifar"):
        data = [
            "--data.data_dir",
            str(cifar_root),
            "--data.download=false",
            "--data.verify_checksums=false",
            "--data.val_size=100",
            "--data.batch_size=8",
            "--trainer.precision=32-true",
        ]
    else:
        data = [
            "--data.root",
            str(plants_flat),
            "--model.weights=null",
            "--data.image_size=32",
            "--data.batch_size=8",
        ]
    run = subprocess.run(
        [
            *cmd,
            *data,
            "--data.num_workers=0",
            "--trainer.fast_dev_run=true",
            f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "final validation accuracy" in run.stdout


@pytest.mark.slow
def test_plant_recipe_learns_leaf_shapes(leaf_shapes_dir: Path, tmp_path: Path) -> None:
    from lit_explain.data import PlantDataModule

    L.seed_everything(0, verbose=False)
    dm = PlantDataModule(str(leaf_shapes_dir), image_size=64, batch_size=16, num_workers=0)
    model = ImageClassifier("resnet18", optimizer="adamw", lr=3e-3, scheduler="onecycle", label_smoothing=0.1)
    trainer = L.Trainer(
        max_epochs=6,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        enable_checkpointing=False,
    )
    trainer.fit(model, datamodule=dm)
    result = trainer.test(model, datamodule=dm, verbose=False)[0]
    # 4 classes, largest holds 89/241 = 37%: above chance means above the majority-class rate.
    assert result["test/acc"] > 0.45, result


class _Marker:
    """Unpickling this creates ``path``: the stand-in for code a tampered weights file would run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_a_tampered_torch_home_weights_file_runs_no_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # torchvision's own get_model(weights=...) reads the cached file with weights_only=False.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    cached = tmp_path / "hub" / "checkpoints" / Path(weights.url).name
    cached.parent.mkdir(parents=True)
    marker = tmp_path / "code-ran"
    torch.save({"conv1.weight": torch.zeros(1), "payload": _Marker(marker)}, cached)
    with pytest.raises(ConfigError, match=r"refused to load .*not a plain tensor file"):
        build_backbone("resnet18", 4, weights="IMAGENET1K_V1")
    assert not marker.exists()
