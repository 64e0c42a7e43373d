"""ShortcutAlarm in real fits of hand-made models: on a corner reader it fires (warning, findings.json, text,
picture, a score every epoch); on a whole-image reader it stays quiet; findings.json exists after every fit."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path
from typing import ClassVar

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from colour_net import ColourNet, corner_mask
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import Dataset

from lit_explain.callbacks import ShortcutAlarm
from lit_explain.data import PlantDataModule, ShapesDataModule
from lit_explain.data.batch import split_batch
from lit_explain.data.shapes import CUE_COLOURS
from lit_explain.errors import ConfigError
from lit_explain.findings import read_findings
from lit_explain.models import ImageClassifier


class Handmade(L.LightningModule):
    """The least a model needs for the alarm: ``net``, ``default_explain_layers`` and the usual steps."""

    default_explain_layers: ClassVar[list[str]] = ["conv"]

    def __init__(self, corner_only: bool) -> None:
        super().__init__()
        self.net = ColourNet(corner_mask(64, corner_only))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        images, labels = split_batch(batch)
        return F.cross_entropy(self(images), labels)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        images, labels = split_batch(batch)
        self.log("val/acc", (self(images).argmax(1) == labels).float().mean())

    def test_step(self, batch: dict, batch_idx: int) -> None:
        images, labels = split_batch(batch)
        self.log("test/acc", (self(images).argmax(1) == labels).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)  # the weights stay hand-made


def trainer_for(root: Path, *callbacks: L.Callback) -> L.Trainer:
    """Two epochs of one training batch each (the hand-made weights do not move), logged to CSV."""
    return L.Trainer(
        max_epochs=2,
        limit_train_batches=1,
        accelerator="cpu",
        logger=CSVLogger(root, name="run", version=0),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=1,
        callbacks=list(callbacks),
    )


def shapes(cue: bool) -> ShapesDataModule:
    return ShapesDataModule(
        train_size=32, val_size=96, batch_size=32, spurious_cue=cue, eval_cue="random", corner="bottom_right"
    )


def run(root: Path, corner_only: bool, cue: bool) -> tuple[Path, ShortcutAlarm, list[str]]:
    """Fit two epochs (weights unchanged) with the alarm; returns the run folder, the alarm, the warnings."""
    L.seed_everything(0, verbose=False)
    alarm = ShortcutAlarm(sample_size=48, show=4)
    trainer = trainer_for(root, alarm)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Handmade(corner_only), datamodule=shapes(cue))
    return Path(trainer.logger.log_dir), alarm, [str(w.message) for w in caught]


def scores(run_dir: Path) -> list[float]:
    with (run_dir / "metrics.csv").open() as handle:
        return [
            float(r["explain/shortcut_score"]) for r in csv.DictReader(handle) if r["explain/shortcut_score"]
        ]


def test_the_alarm_fires_on_a_corner_reader_and_says_where(tmp_path: Path) -> None:
    run_dir, alarm, caught = run(tmp_path, corner_only=True, cue=True)
    assert len(scores(run_dir)) == 2 and min(scores(run_dir)) >= alarm.threshold  # every epoch, no sanity
    findings = read_findings(run_dir)
    assert [f["epoch"] for f in findings] == [0, 1], findings  # one entry per epoch it fires, kept
    first = findings[0]
    assert first["kind"] == "shortcut" and first["severity"] in ("warning", "critical")
    assert "bottom-right corner" in first["message"] and "crop or mask it" in first["message"]
    x0, y0, x1, y1 = first["region"]
    assert 40 <= x0 < x1 <= 64 and 40 <= y0 < y1 <= 64
    assert first["details"]["score"] >= alarm.threshold and first["details"]["follow"] > 0.8
    # One warning line while the region stays put, not one per epoch.
    lines = [m for m in caught if m.startswith("ShortcutAlarm")]
    assert len(lines) == 1 and "bottom-right corner" in lines[0], caught
    # The text entry and the picture went through the sink (CSV: a one-cell table and a PNG per epoch).
    texts = sorted((run_dir / "tables" / "explain" / "findings").glob("step_*.csv"))
    pictures = sorted((run_dir / "images" / "explain" / "shortcut_region").glob("step_*.png"))
    assert len(texts) == len(pictures) == 2
    assert "bottom-right corner" in texts[0].read_text()
    assert pictures[0].read_bytes().startswith(b"\x89PNG")


def test_no_shortcut_no_finding_and_findings_json_exists(tmp_path: Path) -> None:
    run_dir, alarm, caught = run(tmp_path, corner_only=False, cue=False)
    assert json.loads((run_dir / "findings.json").read_text()) == []
    assert len(scores(run_dir)) == 2 and max(scores(run_dir)) < alarm.threshold
    assert not [m for m in caught if m.startswith("ShortcutAlarm")]
    assert not (run_dir / "images" / "explain" / "shortcut_region").exists()


def test_validate_and_test_use_their_own_tags(tmp_path: Path) -> None:
    L.seed_everything(0, verbose=False)
    alarm = ShortcutAlarm(sample_size=48, show=2)
    trainer = trainer_for(tmp_path, alarm)
    model, dm = Handmade(corner_only=True), shapes(cue=True)
    trainer.test(model, datamodule=dm, verbose=False)
    run_dir = Path(trainer.logger.log_dir)
    assert (run_dir / "images" / "explain" / "test" / "shortcut_region").is_dir()
    assert read_findings(run_dir)[0]["kind"] == "shortcut"


def test_plain_dataloaders_give_the_sample_from_the_first_validation_batches(tmp_path: Path) -> None:
    L.seed_everything(0, verbose=False)
    dm = shapes(cue=True)
    dm.setup("fit")
    alarm = ShortcutAlarm(sample_size=40, show=2)
    trainer = trainer_for(tmp_path, alarm)
    trainer.fit(Handmade(corner_only=True), dm.train_dataloader(), dm.val_dataloader())
    assert alarm.last is not None and alarm.last.n_images == 40
    assert read_findings(Path(trainer.logger.log_dir))[0]["details"]["where"] == "bottom-right corner"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"threshold": 0.0}, "threshold"),
        ({"threshold": 1.5}, "threshold"),
        ({"sample_size": 2}, "sample_size"),
        ({"controls": 0}, "controls"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ShortcutAlarm(**kwargs)


class StampedLeaves(PlantDataModule):
    """The leaf photos with a square stamp in one corner of every (transformed) image: the class's cue colour
    in training, a random cue colour in validation and test (so the stamp carries no label there)."""

    def __init__(self, root: str, corner: str | None, **kwargs: object) -> None:
        super().__init__(root, **kwargs)
        self.corner = corner

    def _build_split(self, split: str) -> Dataset:
        base = super()._build_split(split)
        if self.corner is None:
            return base
        rng = torch.Generator().manual_seed(7)
        colours = torch.randint(0, len(CUE_COLOURS), (len(base),), generator=rng).tolist()
        return _Stamped(base, self.corner, self.mean, self.std, None if split == "train" else colours)


class _Stamped(Dataset):
    def __init__(self, base: Dataset, corner: str, mean, std, colours: list[int] | None) -> None:
        self.base, self.corner, self.colours = base, corner, colours
        self.mean, self.std = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict:
        sample = dict(self.base[index])
        image = sample["image"].clone()
        size = image.shape[-1]
        side = size // 8
        y0 = 1 if self.corner.startswith("top") else size - side - 1
        x0 = 1 if self.corner.endswith("left") else size - side - 1
        cue = sample["label"] if self.colours is None else self.colours[index]
        colour = (torch.tensor(CUE_COLOURS[cue]).view(3, 1, 1) / 255 - self.mean) / self.std
        image[:, y0 : y0 + side, x0 : x0 + side] = colour
        sample["image"] = image
        return sample


def fit_leaves(root: Path, photos: Path, corner: str | None) -> tuple[Path, ShortcutAlarm]:
    L.seed_everything(0, verbose=False)
    dm = StampedLeaves(str(photos), corner, image_size=64, batch_size=32, num_workers=0)
    model = ImageClassifier("timm:resnet10t_half", optimizer="adamw", lr=5e-3, scheduler="none")
    alarm = ShortcutAlarm()
    trainer = L.Trainer(
        max_epochs=6,
        accelerator="cpu",
        logger=CSVLogger(root, name="leaves", version=0),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        callbacks=[alarm],
    )
    trainer.fit(model, datamodule=dm)
    return Path(trainer.logger.log_dir), alarm


@pytest.mark.slow
def test_a_stamp_on_real_leaf_photos_fires_and_names_the_corner(
    tmp_path: Path, leaf_shapes_dir: Path
) -> None:
    run_dir, alarm = fit_leaves(tmp_path, leaf_shapes_dir, "bottom_left")
    findings = read_findings(run_dir)
    assert findings, f"no finding; scores {scores(run_dir)}, last evidence {alarm.last}"
    assert all(f["details"]["where"] == "bottom-left corner" for f in findings), findings
    assert "bottom-left corner" in findings[0]["message"]


@pytest.mark.slow
def test_the_leaf_photos_themselves_do_not_fire(tmp_path: Path, leaf_shapes_dir: Path) -> None:
    # Leaves are centred in most photos: evidence in the centre is the object, not a shortcut.
    run_dir, alarm = fit_leaves(tmp_path, leaf_shapes_dir, None)
    assert read_findings(run_dir) == [], alarm.last
    assert max(scores(run_dir)) < alarm.threshold
