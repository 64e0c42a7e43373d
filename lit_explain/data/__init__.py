"""LightningDataModules that describe their data for explanations (class names, normalisation, probes)."""

from lit_explain.data.base import ExplainableDataModule
from lit_explain.data.shapes import SHAPE_NAMES, ShapesDataModule, ShapesDataset

__all__ = ["SHAPE_NAMES", "ExplainableDataModule", "ShapesDataModule", "ShapesDataset"]

from lit_explain.data.cifar100 import CIFAR100_MEAN, CIFAR100_STD, Cifar100DataModule
from lit_explain.data.plants import PlantDataModule

__all__ += ["CIFAR100_MEAN", "CIFAR100_STD", "Cifar100DataModule", "PlantDataModule"]
