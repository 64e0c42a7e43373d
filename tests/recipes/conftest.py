"""Fixtures for the recipe tests: CIFAR-100 in its real on-disk pickle layout, plant folders in each layout."""

from __future__ import annotations

from pathlib import Path

import pytest
from recipe_helpers import PLANT_CLASSES, file_names, plant_image, write_cifar100


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 100-class CIFAR-100 fixture: 300 training and 100 test images."""
    return write_cifar100(tmp_path_factory.mktemp("cifar"))


@pytest.fixture
def plants_split_dirs(tmp_path: Path) -> Path:
    """``train/``, ``val/``, ``test/`` folders of ``{label}_{id}.ext`` files with integer labels."""
    tmp_path = tmp_path / "split_index"  # several layouts may be used in one test
    for split, per_class in (("train", 6), ("val", 2), ("test", 2)):
        for c, name in file_names(per_class, "index"):
            plant_image(tmp_path / split / name, c, seed=len(split))
    return tmp_path


@pytest.fixture
def plants_named_split_dirs(tmp_path: Path) -> Path:
    """``train/``, ``val/``, ``test/`` folders of ``{ClassName}_{id}.ext`` files."""
    tmp_path = tmp_path / "split_named"  # several layouts may be used in one test
    for split, per_class in (("train", 6), ("val", 2), ("test", 2)):
        for c, name in file_names(per_class, "names"):
            plant_image(tmp_path / split / name, c)
    return tmp_path


@pytest.fixture
def plants_imagefolder(tmp_path: Path) -> Path:
    """``train/<class>/``, ``val/<class>/``, ``test/<class>/`` (ImageFolder layout) with arbitrary file names."""
    tmp_path = tmp_path / "imagefolder"  # several layouts may be used in one test
    for split, per_class in (("train", 6), ("val", 2), ("test", 2)):
        for c, name in file_names(per_class, "names"):
            plant_image(tmp_path / split / PLANT_CLASSES[c] / f"photo {name}", c)
    return tmp_path


@pytest.fixture
def plants_flat(tmp_path: Path) -> Path:
    """One flat folder of ``{ClassName}_{id}.ext`` files (split inside the data module)."""
    tmp_path = tmp_path / "flat"  # several layouts may be used in one test
    for c, name in file_names(10, "names"):
        plant_image(tmp_path / name, c)
    return tmp_path
