"""End-to-end: the callbacks in real shapes fits (bit-identical weights, event files, resume, validate/test)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from callback_helpers import events, fit_shapes, state_equal, tiny_datamodule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from PIL import Image

from lit_explain.callbacks import ConfusionMatrix, ProbeHeatmaps, WorstSamples
from lit_explain.render.card import CARD_IMAGE_PX, MAX_PAGE_PX, MIN_TEXT_PX

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
    # Panels are split into pages no taller than 1,600 px (TensorBoard's card), each its own tag.
    page_tags = {
        name: sorted(t for t in tags["images"] if t.startswith(f"{name}/page_"))
        for name in ("explain/probes", "explain/worst", "explain/most_confident_correct")
    }
    assert all(len(t) >= 2 for t in page_tags.values()), page_tags  # 12 and 16 rows do not fit one page
    expected_images = [t for tags_ in page_tags.values() for t in tags_]
    expected_images += ["val/confusion_matrix", "val/per_class_accuracy"]
    for tag in expected_images:
        entries = acc.Images(tag)
        assert [e.step for e in entries] == steps, tag
        assert all(e.height <= MAX_PAGE_PX for e in entries), tag
    assert "explain/probes" not in tags["images"]  # no unpaged grid any more
    for tag in ("explain/pointing_game", "explain/energy_in_mask", "val/worst5_class_acc"):
        assert [e.step for e in acc.Scalars(tag)] == steps, tag
    assert "val/overall_acc" not in tags["scalars"]  # it duplicated val/acc
    # Drift needs a previous epoch: one entry fewer than the epochs.
    assert [e.step for e in acc.Scalars("explain/drift")] == steps[1:]
    assert all(0.0 <= e.value <= 1.0 for e in acc.Scalars("explain/pointing_game"))
    for tag in ("explain/worst_table/text_summary", "val/confused_pairs/text_summary"):
        assert tag in tags["tensors"] and len(acc.Tensors(tag)) == EPOCHS


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
            "explain/probes/page_0",
            "explain/worst/page_0",
            "val/confusion_matrix",
            "explain/test/probes/page_0",
            "explain/test/worst/page_0",
            "test/confusion_matrix",
            "test/per_class_accuracy",
        ):
            assert tag in tags["images"], (logger.name, tag)
        assert "test/worst5_class_acc" in tags["scalars"]


def _title_ink_height(picture: np.ndarray) -> int:
    """Height of the first line of text from the top (the column titles): ascender to descender."""
    ink_rows = (picture < 200).any(axis=(1, 2))
    start = int(ink_rows.argmax())
    end = start + int((~ink_rows[start:]).argmax())
    return end - start


def test_logged_pages_are_readable_at_tensorboards_default_card_width(runs: dict) -> None:
    acc = events(runs["with"][1].logger.log_dir)
    pages = [t for t in acc.Tags()["images"] if t.startswith(("explain/", "val/"))]
    assert "val/confusion_matrix" in pages and "val/per_class_accuracy" in pages
    assert {"explain/probes/page_0", "explain/worst/page_0"} <= set(pages)  # the heatmaps are checked too
    for tag in pages:
        for entry in acc.Images(tag):
            picture = np.asarray(Image.open(io.BytesIO(entry.encoded_image_string)).convert("RGB"))
            assert picture.shape[0] <= MAX_PAGE_PX, tag
            # TensorBoard shrinks a picture to its card (>= 335 px, ~320 px of picture): the titles' text,
            # ascender to descender (0.9-1.0 of the font size), must stay >= 0.9 x 11 px there.
            shown = _title_ink_height(picture) * CARD_IMAGE_PX / max(picture.shape[1], CARD_IMAGE_PX)
            assert shown >= 0.9 * MIN_TEXT_PX, (tag, picture.shape, shown)


def test_worst_table_names_each_sample_in_ranking_order(runs: dict) -> None:
    acc = events(runs["with"][1].logger.log_dir)
    for entry in acc.Tensors("explain/worst_table/text_summary"):
        text = entry.tensor_proto.string_val[0].decode()
        header = text.splitlines()[0]
        assert "worst (1 = highest loss)" in header and "source" in header and "process" not in header
        rows = re.findall(r"^\| (\d+) \| idx (\d+) \|.*\| ([0-9.]+) \|$", text, flags=re.MULTILINE)
        assert [int(n) for n, _, _ in rows] == list(range(1, 17))
        losses = [float(loss) for _, _, loss in rows]
        assert losses == sorted(losses, reverse=True)


def test_hparams_tab_gets_the_final_accuracy_and_pointing_game(runs: dict) -> None:
    trainer = runs["with"][1]
    acc = events(trainer.logger.log_dir)
    assert "_hparams_/session_start_info" in acc.PluginTagToContent("hparams")
    final = {tag: acc.Scalars(tag)[-1].value for tag in acc.Tags()["scalars"] if tag.startswith("hparams/")}
    assert final["hparams/val_acc"] == pytest.approx(float(trainer.callback_metrics["val/acc"]))
    assert final["hparams/pointing_game"] == pytest.approx(
        runs["callbacks"][0].last_scalars["explain/pointing_game"]
    )
    assert "hparams/energy_in_mask" in final
