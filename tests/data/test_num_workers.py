"""``data.num_workers: auto``: as many loader workers as the recipe wants, leaving one core to training."""

from __future__ import annotations

import pytest
import yaml

from lit_explain.cli import LitExplainCLI, recipe_path
from lit_explain.data import base
from lit_explain.data.base import resolve_workers
from lit_explain.data.cifar100 import Cifar100DataModule
from lit_explain.data.plants import PlantDataModule
from lit_explain.data.shapes import ShapesDataModule
from lit_explain.errors import ConfigError


@pytest.mark.parametrize(
    ("wanted", "cores", "expected"), [(4, 1, 0), (4, 2, 1), (8, 2, 1), (4, 16, 4), (8, 16, 8)]
)
def test_auto_is_capped_by_the_cores_less_one(wanted, cores, expected):
    assert resolve_workers("auto", wanted, cores=cores) == expected


def test_counts_pass_through_and_bad_values_name_the_setting():
    assert resolve_workers(3, wanted=8, cores=1) == 3  # an explicit count is the user's choice
    for bad in (-1, "many", True):
        with pytest.raises(ConfigError, match=r"data\.num_workers must be an integer >= 0 or auto"):
            resolve_workers(bad, wanted=4)


@pytest.mark.parametrize(("cores", "plants", "cifar"), [(1, 0, 0), (2, 1, 1), (16, 4, 8)])
def test_data_modules_resolve_auto_from_the_affinity(monkeypatch, tmp_path, cores, plants, cifar):
    monkeypatch.setattr(base, "usable_cores", lambda: cores)
    assert PlantDataModule(str(tmp_path), num_workers="auto").num_workers == plants
    assert Cifar100DataModule(str(tmp_path), num_workers="auto").num_workers == cifar
    assert PlantDataModule(str(tmp_path)).num_workers == plants  # auto is the default
    assert ShapesDataModule().num_workers == 0  # the demo's measured figures load in-process


def test_plant_and_cifar_recipes_use_auto_and_shapes_keep_zero():
    def workers(name: str) -> object:
        return yaml.safe_load(recipe_path(name).read_text())["data"]["init_args"]["num_workers"]

    assert workers("plant_resnet18.yaml") == workers("cifar100_resnet34.yaml") == "auto"
    assert workers("shapes_demo.yaml") == workers("shapes_spurious.yaml") == 0


def test_the_cli_accepts_auto(monkeypatch, tmp_path):
    monkeypatch.setattr(base, "usable_cores", lambda: 3)
    monkeypatch.chdir(tmp_path)
    args = ["--config", str(recipe_path("plant_resnet18.yaml")), "--data.root", str(tmp_path)]
    cli = LitExplainCLI(args=[*args, "--trainer.logger=false"], run=False)
    assert cli.datamodule.num_workers == 2
