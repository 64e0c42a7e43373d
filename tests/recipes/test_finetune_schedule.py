"""BackboneUnfreeze: a pretrained backbone is frozen first, a random one trains from the first epoch (issue 11
part 6), with one log line saying which; timm backbones freeze everything but get_classifier()."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import pytest
import torch
import torchvision
from torch import nn

from lit_explain.cli import main as cli_main
from lit_explain.data import ShapesDataModule
from lit_explain.models import ImageClassifier
from lit_explain.models.finetune import BackboneUnfreeze

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def unfreeze_log() -> Iterator[list[str]]:
    """The lines BackboneUnfreeze logs (Lightning's loggers do not propagate to pytest's caplog)."""
    lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)


class _Record(L.Callback):
    """Trainable parameter count, optimizer groups and the backbone/head LR ratio at each epoch start."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int, float]] = []

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        groups = trainer.optimizers[0].param_groups
        trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
        self.seen.append((trainable, len(groups), round(groups[-1]["lr"] / groups[0]["lr"], 6)))


def _fit(model: ImageClassifier, image_size: int = 32) -> list[tuple[int, int, float]]:
    L.seed_everything(0, verbose=False)
    record = _Record()
    trainer = L.Trainer(
        max_epochs=2,
        limit_train_batches=1,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[BackboneUnfreeze(unfreeze_at_epoch=1, lr_ratio=0.1), record],
    )
    dm = ShapesDataModule(train_size=16, val_size=8, test_size=8, batch_size=8, image_size=image_size)
    trainer.fit(model, datamodule=dm)
    return record.seen


def _count(modules: list[nn.Module]) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def test_random_backbone_trains_whole_from_epoch_zero(unfreeze_log: list[str]) -> None:
    model = ImageClassifier("resnet18", weights=None, scheduler="none")
    seen = _fit(model)
    total = sum(p.numel() for p in model.parameters())
    assert seen == [(total, 2, 1.0), (total, 2, 1.0)]
    assert any(
        "no pretrained weights (model.weights is null), so it is not frozen: the whole network trains "
        "from epoch 0 (11.2 M of 11.2 M parameters train)" in line
        for line in unfreeze_log
    ), unfreeze_log


def test_pretrained_backbone_frozen_then_unfrozen(tmp_path: Path, unfreeze_log: list[str]) -> None:
    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    model = ImageClassifier("resnet18", weights_path=str(weights), scheduler="none")
    seen = _fit(model)
    total = sum(p.numel() for p in model.parameters())
    head_and_bn = _count([model.net.fc]) + _count(
        [m for m in model.net.modules() if isinstance(m, nn.BatchNorm2d)]
    )
    assert seen[0] == (head_and_bn, 2, 1.0)
    assert seen[1][0] == total and seen[1][2] == 0.1
    assert any(
        "pretrained backbone frozen for epochs 0-0, only the head and BatchNorm layers train" in line
        and "from epoch 1 the backbone trains at 0.1x the head's learning rate" in line
        for line in unfreeze_log
    ), unfreeze_log


def test_timm_vit_freezes_all_but_get_classifier(tmp_path: Path) -> None:
    import timm
    from safetensors.torch import save_file

    weights = tmp_path / "vit.safetensors"
    save_file(timm.create_model("vit_tiny_patch16_224", depth=2).state_dict(), str(weights))
    model = ImageClassifier(
        "timm:vit_tiny_patch16_224",
        weights_path=str(weights),
        backbone_kwargs={"depth": 2},
        scheduler="none",
        optimizer="adamw",
        lr=1e-3,
    )
    seen = _fit(model)
    assert seen[0][0] == _count([model.net.get_classifier()])  # cls_token, pos_embed frozen too
    assert seen[1][0] == sum(p.numel() for p in model.parameters()) and seen[1][2] == 0.1


def test_plant_recipe_with_weights_null_trains_everything(
    plants_flat: Path, tmp_path: Path, unfreeze_log
) -> None:
    """`fit --config configs/plant_resnet18.yaml --model.weights null`: no frozen random backbone."""
    argv = [
        "fit",
        "--config",
        str(REPO / "configs" / "plant_resnet18.yaml"),
        "--model.weights=null",
        f"--data.root={plants_flat}",
        "--data.image_size=32",
        "--data.batch_size=8",
        "--data.num_workers=0",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=1",
        "--trainer.limit_val_batches=1",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    assert cli_main(argv) == 0
    assert any("the whole network trains from epoch 0 (11.2 M of 11.2 M" in line for line in unfreeze_log)
