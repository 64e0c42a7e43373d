"""Acceptance: after a short demo-style fit the probe maps sit on the shapes (pointing game >= 80%).

The model and schedule are the demo recipe's (ResNet-18, AdamW 5e-3, one-cycle); the data is smaller so the
test stays within a few minutes on two CPU cores. The callback logs the score it is checked against.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.loggers import TensorBoardLogger

from lit_explain.callbacks import ProbeHeatmaps
from lit_explain.data import ShapesDataModule
from lit_explain.models import ImageClassifier

pytestmark = pytest.mark.slow


def test_probe_maps_sit_on_the_object_after_a_demo_fit(tmp_path: Path) -> None:
    L.seed_everything(0, verbose=False)
    dm = ShapesDataModule(train_size=1500, val_size=120, test_size=60, batch_size=32, seed=0)
    model = ImageClassifier("resnet18", optimizer="adamw", lr=5e-3, weight_decay=0.05, scheduler="onecycle")
    probes = ProbeHeatmaps(per_class=5, layer="layer3")
    trainer = L.Trainer(
        max_epochs=4,
        accelerator="cpu",
        logger=TensorBoardLogger(tmp_path),
        callbacks=[probes],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=dm)
    assert float(trainer.callback_metrics["val/acc"]) >= 0.8
    assert probes.last_scalars["explain/pointing_game"] >= 0.8, probes.last_scalars
