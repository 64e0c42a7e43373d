"""Shared fixtures: a tiny trained shapes checkpoint and the real-photo folder."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import pytest
import torch

from lit_explain.data import ShapesDataModule
from lit_explain.models import ImageClassifier

LEAF_SHAPES = Path(__file__).resolve().parents[2] / "shared" / "data" / "leaf-shapes"
if os.environ.get("LIT_EXPLAIN_LEAF_SHAPES"):
    LEAF_SHAPES = Path(os.environ["LIT_EXPLAIN_LEAF_SHAPES"])


def train_shapes_checkpoint(directory: Path, epochs: int = 1, train_size: int = 256, **data_kwargs) -> Path:
    """Train a small shapes classifier and return the path of its checkpoint (a real Lightning .ckpt)."""
    L.seed_everything(0, verbose=False)
    dm = ShapesDataModule(train_size=train_size, val_size=64, test_size=64, batch_size=32, **data_kwargs)
    model = ImageClassifier("resnet18", optimizer="adamw", lr=3e-3, scheduler="none")
    trainer = L.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=directory,
        callbacks=[L.pytorch.callbacks.ModelCheckpoint(dirpath=directory, save_last=True)],
    )
    trainer.fit(model, datamodule=dm)
    return directory / "last.ckpt"


@pytest.fixture(scope="session")
def shapes_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A shapes ResNet-18 checkpoint trained for one short epoch (fast; accuracy is not the point)."""
    return train_shapes_checkpoint(tmp_path_factory.mktemp("shapes_ckpt"))


@pytest.fixture(scope="session")
def leaf_shapes_dir() -> Path:
    """The folder of real leaf photos next to the repository; tests using it skip when it is absent."""
    if not LEAF_SHAPES.is_dir():
        pytest.skip(f"real-photo folder {LEAF_SHAPES} is absent (set LIT_EXPLAIN_LEAF_SHAPES to point at it)")
    return LEAF_SHAPES


@pytest.fixture(autouse=True)
def _torch_threads() -> None:
    # Tests run on 2-core machines; oversubscribing threads makes them slower, not faster.
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
