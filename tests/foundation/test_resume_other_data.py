"""A checkpoint resumed on data with another class count: the error names the checkpoint, not a setting
the user never made."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from checkpoint_helpers import tiny_recipe
from PIL import Image

from lit_explain.cli import main, recipe_path
from lit_explain.errors import ConfigError
from lit_explain.models import ImageClassifier

PLANTS = ["Cordate", "Lanceolate", "Ovate", "Sagittate"]


def _in(cwd: Path, args: list[str]) -> int:
    previous = Path.cwd()
    os.chdir(cwd)
    try:
        return main(args)
    finally:
        os.chdir(previous)


def _plant_folder(root: Path) -> Path:
    for i, name in enumerate(PLANTS):
        (root / name).mkdir(parents=True)
        for j in range(10):
            Image.new("RGB", (40, 40), (60 * i, 20 * j, 90)).save(root / name / f"{j}.png")
    return root


@pytest.mark.slow
def test_resuming_a_shapes_checkpoint_on_plant_photos_names_the_checkpoint(tmp_path, capsys):
    config = tiny_recipe(tmp_path / "tiny.yaml")
    assert _in(tmp_path, ["fit", "--config", str(config), "--trainer.max_epochs=1"]) == 0
    ckpt = next((tmp_path / "lightning_logs").rglob("last.ckpt"))
    capsys.readouterr()
    plants = _plant_folder(tmp_path / "plants")
    args = ["fit", "--config", str(recipe_path("plant_resnet18.yaml")), f"--data.root={plants}"]
    args += ["--data.image_size=32", "--data.num_workers=0", f"--trainer.default_root_dir={tmp_path / 'p'}"]
    assert _in(tmp_path, [*args, f"--ckpt_path={ckpt}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert f"the checkpoint {ckpt} was trained for 6 classes (circle," in err
    assert "this data has 4 (Cordate, Lanceolate, Ovate, Sagittate)" in err
    assert f"start a new run from its weights with --model.weights_path {ckpt}" in err
    assert "Set model.num_classes" not in err


def test_the_setting_the_user_made_is_named():
    data = {"class_names": PLANTS}
    named = ImageClassifier("resnet18", class_names=["a", "b", "c", "d", "e", "f"])
    with pytest.raises(ConfigError, match=r"^model\.class_names has 6 names; this data has 4 \(Cordate,"):
        named.adopt_data_metadata(data)
    counted = ImageClassifier("resnet18", num_classes=6)
    with pytest.raises(ConfigError, match=r"Set model\.num_classes=4 or leave it unset"):
        counted.adopt_data_metadata(data)
    counted.checkpoint_source = "runs/best.ckpt"
    with pytest.raises(
        ConfigError, match=r"checkpoint runs/best\.ckpt .* evaluate it on data with the classes"
    ):
        counted.adopt_data_metadata(data, stage="validate")
