"""End-to-end: the callbacks in real shapes fits (bit-identical weights, event files, resume, validate/test)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from callback_helpers import events, fit_shapes, state_equal, tiny_datamodule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from lit_explain.callbacks import ConfusionMatrix, ProbeHeatmaps, WorstSamples

# Two 2-epoch fits shared by the module: about 10 s on a quiet 2-core CPU, so not marked slow.

EPOCHS = 2
STEPS_PER_EPOCH = 256 // 32


def _callbacks() -> list[L.Callback]:
    return [
        ProbeHeatmaps(layer="layer3"),
        WorstSamples(k=16, modes=["loss", "most_confident_correct"], layer="layer3"),
        ConfusionMatrix(),
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("callback_runs")
    callbacks = _callbacks()
    with_cb = fit_shapes(
        root / "with",
        callbacks,
        epochs=EPOCHS,
        extra_callbacks=[ModelCheckpoint(dirpath=root / "with" / "ckpt", save_last=True)],
    )
    without = fit_shapes(
        root / "without",
        [],
        epochs=EPOCHS,
        extra_callbacks=[ModelCheckpoint(dirpath=root / "without" / "ckpt", save_last=True)],
    )
    return {"root": root, "callbacks": callbacks, "with": with_cb, "without": without}


def test_training_is_bit_identical_with_and_without_the_callbacks(runs: dict) -> None:
    model_with, model_without = runs["with"][0], runs["without"][0]
    a, b = model_with.state_dict(), model_without.state_dict()
    assert not state_equal(a, b), "weights or BatchNorm statistics differ"
    bn = [k for k in a if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert bn and all(torch.equal(a[k], b[k]) for k in bn)
    # The callbacks did run: they logged explanations each epoch.
    assert runs["callbacks"][0].probe_ids and runs["callbacks"][1].last_winners["loss"]["index"].numel() == 16


def test_event_files_hold_one_entry_per_epoch_with_the_expected_sizes(runs: dict) -> None:
    trainer = runs["with"][1]
    acc = events(trainer.logger.log_dir)
    tags = acc.Tags()
    steps = [STEPS_PER_EPOCH * (e + 1) for e in range(EPOCHS)]
    n_probes = len(runs["callbacks"][0].probe_ids)
    assert n_probes == 12  # 2 per class, 6 classes
    expected_images = {
        "explain/probes": n_probes,
        "explain/worst": 16,
        "explain/most_confident_correct": None,
        "val/confusion_matrix": None,
        "val/per_class_accuracy": None,
    }
    for tag, rows in expected_images.items():
        entries = acc.Images(tag)
        assert [e.step for e in entries] == steps, tag
        if rows is not None:
            # panel_grid: 4 cells of 128 px + 5 px pads wide; a title strip plus one 128 px row per sample.
            assert all(e.width == 4 * 128 + 5 * 2 for e in entries), tag
            assert all(e.height > rows * 128 for e in entries), tag
    for tag in ("explain/pointing_game", "explain/energy_in_mask", "val/overall_acc", "val/worst5_class_acc"):
        assert [e.step for e in acc.Scalars(tag)] == steps, tag
    # Drift needs a previous epoch: one entry fewer than the epochs.
    assert [e.step for e in acc.Scalars("explain/drift")] == steps[1:]
    assert all(0.0 <= e.value <= 1.0 for e in acc.Scalars("explain/pointing_game"))
    for tag in ("explain/worst_table/text_summary", "val/confused_pairs/text_summary"):
        assert tag in tags["tensors"] and len(acc.Tensors(tag)) == EPOCHS
    assert acc.Scalars("val/overall_acc")[-1].value == pytest.approx(
        float(trainer.callback_metrics["val/acc"])
    )


def test_resume_keeps_the_probe_set_and_continues_the_drift_series(runs: dict) -> None:
    root = runs["root"] / "resumed"
    original = runs["callbacks"][0]
    resumed = ProbeHeatmaps(layer="layer3", per_class=1)  # a different pick; the checkpoint's set must win
    logger = TensorBoardLogger(save_dir=root, name="tb", version=0)
    fit_shapes(
        root,
        [resumed],
        epochs=EPOCHS + 1,
        logger=logger,
        ckpt_path=str(runs["root"] / "with" / "ckpt" / "last.ckpt"),
        extra_callbacks=[ModelCheckpoint(dirpath=root / "ckpt", save_last=True)],
    )
    assert resumed.probe_ids == original.probe_ids
    drift = events(logger.log_dir).Scalars("explain/drift")
    # The first validation after resuming already has a drift value: the previous maps came back too.
    assert [e.step for e in drift] == [STEPS_PER_EPOCH * (EPOCHS + 1)]
    assert 0.0 <= drift[0].value <= 2.0


def test_validate_and_test_log_under_inference_mode_to_every_tensorboard_logger(
    runs: dict, tmp_path: Path
) -> None:
    model = runs["with"][0]
    tb_a = TensorBoardLogger(tmp_path, name="a", version=0)
    tb_b = TensorBoardLogger(tmp_path, name="b", version=0)
    trainer = L.Trainer(
        accelerator="cpu",
        logger=[tb_a, CSVLogger(tmp_path, name="csv"), tb_b],
        callbacks=_callbacks(),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    dm = tiny_datamodule()
    trainer.validate(model, datamodule=dm)
    trainer.test(model, datamodule=dm)
    for logger in (tb_a, tb_b):
        tags = events(logger.log_dir).Tags()
        for tag in (
            "explain/probes",
            "explain/worst",
            "val/confusion_matrix",
            "explain/test/probes",
            "explain/test/worst",
            "test/confusion_matrix",
            "test/per_class_accuracy",
        ):
            assert tag in tags["images"], (logger.name, tag)
        assert "test/worst5_class_acc" in tags["scalars"]
