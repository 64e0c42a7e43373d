"""TrainingDynamics: the accumulator, checkpoint state, and real shapes fits with flipped labels (the CSV, the
findings entry, the pictures in every sink, bit-identical weights, resuming)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from callback_helpers import state_equal
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from lit_explain.callbacks import TrainingDynamics
from lit_explain.callbacks.dynamics import DynamicsAccumulator, label_issue_pages
from lit_explain.data import PlantDataModule, ShapesDataModule
from lit_explain.findings import dynamics as dyn
from lit_explain.models import ImageClassifier

EPOCHS = 2
TRAIN = 128


class LogitRecorder(L.Callback):
    """Every training step's logits per sample and epoch, independently of the callback under test."""

    def __init__(self) -> None:
        self.logits = torch.full((EPOCHS, TRAIN, 6), float("nan"))
        self.labels = torch.full((TRAIN,), -1, dtype=torch.long)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, i: int
    ) -> None:
        self.logits[trainer.current_epoch, batch["index"]] = outputs["logits"].float()
        self.labels[batch["index"]] = batch["label"]


def test_accumulator_adds_each_step_at_the_samples_indices() -> None:
    acc = DynamicsAccumulator(num_samples=6, num_classes=3)
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    acc.update(logits, torch.tensor([0, 1]), torch.tensor([4, 1]))
    acc.update(logits[:1], torch.tensor([[0.1, 0.9, 0.0]]), torch.tensor([4]))  # soft label: class 1
    sums, latest, class_probs = acc.compute()
    assert sums[4].tolist() == [0, 1, 0, 0, 2, 0]  # the count row
    assert sums[0, 4].item() == pytest.approx(2.0 + -2.0)  # margins: class 0 by 2, then class 1 by -2
    assert sums[0, 1].item() == pytest.approx(-1.0) and sums[3, 1].item() == 0.0
    assert latest[:, 4].tolist() == [1, 0] and latest[:, 0].tolist() == [-1, -1]
    torch.testing.assert_close(class_probs[1], logits[1].softmax(0))
    torch.testing.assert_close(class_probs[4], 2 * logits[0].softmax(0))
    assert acc.nbytes() == 7 * 6 * 4 + 2 * 6 * 8 + 6 * 3 * 4


def test_state_dict_round_trip_restores_the_sums() -> None:
    cb = TrainingDynamics()
    cb.totals = (torch.arange(14.0).view(7, 2), torch.tensor([[0, 1], [2, 3]]), torch.rand(2, 4))
    cb.epochs = 3
    state = cb.state_dict()
    other = TrainingDynamics()
    other.load_state_dict(state)
    other._restore(2, 4, torch.device("cpu"))
    assert other.epochs == 3
    assert all(torch.equal(a, b) for a, b in zip(other.totals, cb.totals, strict=True))
    # Saved mid-epoch: the epoch's steps so far join the totals.
    acc = DynamicsAccumulator(2, 4)
    acc.update(torch.randn(1, 4), torch.tensor([3]), torch.tensor([1]))
    cb.accumulator = acc
    mid = TrainingDynamics()
    mid.load_state_dict(cb.state_dict())
    mid._restore(2, 4, torch.device("cpu"))
    torch.testing.assert_close(mid.totals[0], cb.totals[0] + acc.sums)
    assert mid.totals[1][:, 0].tolist() == [0, 2] and mid.totals[1][0, 1] == 3
    with pytest.warns(UserWarning, match="start afresh"):
        stranger = TrainingDynamics()
        stranger.load_state_dict(state)
        stranger._restore(5, 4, torch.device("cpu"))
    assert stranger.totals is None and stranger.epochs == 0


def test_pages_show_image_and_both_maps_per_row() -> None:
    rows = [
        {"rank": r, "source": f"idx {r}", "given_label": "a", "suggested_label": "b", "late_aum": -1.0}
        for r in (1, 2)
    ]
    tensors = {"images": torch.rand(2, 3, 32, 32), "given_maps": torch.rand(2, 1, 32, 32)}
    tensors["suggested_maps"] = torch.rand(2, 1, 32, 32)
    meta = {"mean": None, "std": None, "alpha": 0.5, "cmap": "jet", "min_cell": 96, "cam_method": "gradcam"}
    pages = label_issue_pages(tensors, rows, meta)
    assert len(pages) == 1 and pages[0].dtype == torch.uint8 and pages[0].shape[2] >= 3 * 96


def _fit(root: Path, callbacks: list[L.Callback], logger: Any, ckpt_path: str | None = None) -> tuple:
    """A seeded CPU fit of the demo's small timm ResNet on 32-px shapes with a tenth of the labels flipped."""
    L.seed_everything(0, verbose=False)
    dm = ShapesDataModule(
        image_size=32, train_size=TRAIN, val_size=32, test_size=32, batch_size=32, label_noise=0.1
    )
    model = ImageClassifier("timm:resnet10t_half", optimizer="adamw", lr=3e-3, scheduler="none")
    trainer = L.Trainer(
        max_epochs=EPOCHS,
        accelerator="cpu",
        deterministic=True,
        logger=logger,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        callbacks=callbacks,
        num_sanity_val_steps=0,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
    )
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return model, dm


@pytest.fixture(scope="module")
def noisy_fit(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("dynamics")
    # threshold 0: the finding and pictures do not wait for this 2-epoch network to learn (the default count, a
    # mixture that flags nothing until a minority group has negative margins, is tested in tests/findings).
    recorder, cb = LogitRecorder(), TrainingDynamics(top_k=4, threshold=0.0)
    every = ModelCheckpoint(dirpath=root / "ckpts", save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    model, dm = _fit(root, [cb, recorder, every], CSVLogger(root, name="csv", version=0))
    plain, _ = _fit(root / "plain", [], False)
    return {"root": root, "cb": cb, "recorder": recorder, "model": model, "plain": plain, "dm": dm}


@pytest.mark.slow
def test_label_issues_csv_ranks_every_training_sample_as_the_findings_functions(noisy_fit: dict) -> None:
    run = noisy_fit["root"] / "csv" / "version_0"
    with (run / "label_issues.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:6] == ["rank", "index", "source", "given_label", "suggested_label", "score"]
    assert len(rows) == TRAIN and [int(r["rank"]) for r in rows] == list(range(1, TRAIN + 1))
    recorder = noisy_fit["recorder"]
    expected = dyn.stats_from_logits(recorder.logits, recorder.labels)
    order = dyn.ranking(dyn.suspicion(expected, "late_aum")).tolist()
    assert [int(r["index"]) for r in rows] == order
    assert rows[0]["source"] == f"idx {order[0]}"
    names = noisy_fit["dm"].class_names
    labels = noisy_fit["dm"].split_labels("train")
    assert all(r["given_label"] == names[labels[int(r["index"])]] for r in rows)
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert all(int(r["seen"]) == EPOCHS for r in rows)


@pytest.mark.slow
def test_findings_entry_and_pictures_in_the_sink(noisy_fit: dict) -> None:
    run = noisy_fit["root"] / "csv" / "version_0"
    entries = [e for e in json.loads((run / "findings.json").read_text()) if e["kind"] == "label_issues"]
    table = noisy_fit["cb"].last_table
    assert len(entries) == 1 and entries[0]["details"]["flagged"] == table.flagged > 0
    assert entries[0]["details"]["top_sources"] == table.top_sources()
    assert entries[0]["epoch"] == EPOCHS
    for tag in ("cartography", "page_0"):
        assert list((run / "images" / "explain" / "label_issues" / tag).glob("*.png")), tag
    tables = list((run / "tables" / "explain" / "label_issues" / "table").glob("*.csv"))
    assert len(tables) == 1  # once per epoch from the second (fit end does not write it again)


@pytest.mark.slow
def test_weights_are_bit_identical_with_and_without_the_callback(noisy_fit: dict) -> None:
    assert state_equal(noisy_fit["model"].state_dict(), noisy_fit["plain"].state_dict()) == []


@pytest.mark.slow
def test_a_resumed_run_continues_the_sums(noisy_fit: dict, tmp_path: Path) -> None:
    first = noisy_fit["root"] / "ckpts" / "epoch=0.ckpt"
    saved = torch.load(first, weights_only=True)["callbacks"]
    state = next(v for k, v in saved.items() if k.startswith("TrainingDynamics"))
    assert state["epochs"] == 1 and state["sums"][4].eq(1).all()  # every sample seen once by then
    cb = TrainingDynamics(top_k=0)
    _fit(tmp_path, [cb], CSVLogger(tmp_path, name="csv", version=0), ckpt_path=str(first))
    assert cb.epochs == EPOCHS and cb.stats().count.eq(EPOCHS).all()
    # The checkpoint held exactly the first epoch's sums (as recorded independently), and the resumed run
    # added one more epoch to them rather than starting afresh.
    recorder = noisy_fit["recorder"]
    first_epoch = dyn.stats_from_logits(recorder.logits[:1], recorder.labels)
    torch.testing.assert_close(state["sums"][0], first_epoch.margin_sum)
    added = cb.totals[0] - state["sums"]
    assert added[4].eq(1).all()
    torch.testing.assert_close(cb.stats().margin_sum - added[0], first_epoch.margin_sum)


def _leaf_copy_with_renamed_training_files(src: Path, dst: Path, fraction: float = 0.1) -> list[str]:
    """The leaf photos in train/val/test folders (the data module's own split), a ``fraction`` of the
    training files renamed to another class (``Ovate_017.jpg`` -> ``Cordate_x017.jpg``); their sources."""
    original = PlantDataModule(str(src), image_size=64, num_workers=0)
    records, names = original.records(), original.class_names
    rng = np.random.default_rng(0)
    train = records["train"]
    chosen = set(rng.choice(len(train), size=round(fraction * len(train)), replace=False).tolist())
    renamed = []
    for split, split_records in records.items():
        (dst / split).mkdir(parents=True)
        for i, record in enumerate(split_records):
            name = record.path.name
            if split == "train" and i in chosen:
                other = names[(record.label + int(rng.integers(1, len(names)))) % len(names)]
                name = f"{other}_x{record.path.stem.rpartition('_')[2]}{record.path.suffix}"
                renamed.append(f"train/{name}")
            shutil.copy(record.path, dst / split / name)
    return renamed


@pytest.mark.slow
def test_renamed_leaf_photos_rank_above_the_median(leaf_shapes_dir: Path, tmp_path: Path) -> None:
    renamed = _leaf_copy_with_renamed_training_files(leaf_shapes_dir, tmp_path / "photos")
    L.seed_everything(0, verbose=False)
    dm = PlantDataModule(str(tmp_path / "photos"), image_size=64, batch_size=16, num_workers=0)
    # From random weights (no download in tests): the demo's small timm ResNet learns the leaf outlines.
    model = ImageClassifier("timm:resnet10t_half", optimizer="adamw", lr=2e-3, weight_decay=0.05)
    cb = TrainingDynamics(top_k=4)
    trainer = L.Trainer(
        max_epochs=15,
        accelerator="cpu",
        logger=CSVLogger(tmp_path, name="csv", version=0),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        callbacks=[cb],
    )
    trainer.fit(model, datamodule=dm)
    rows = cb.last_table.rows
    rank = {row["source"]: row["rank"] for row in rows}
    ranks = sorted(rank[source] for source in renamed)
    top = {row["source"] for row in rows[: len(renamed)]}
    precision = len(top & set(renamed)) / len(renamed)
    print(f"leaf photos: {len(renamed)} of {len(rows)} renamed, ranks {ranks}, precision@k {precision:.2f}")
    assert len(rows) == len(dm.dataset("train")) and all(s.startswith("train/") for s in rank)
    assert float(np.median(ranks)) < len(rows) / 2
