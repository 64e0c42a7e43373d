"""LightningDataModules that describe their data for explanations (class names, normalisation, probes)."""

from lit_explain.data.base import ExplainableDataModule
from lit_explain.data.shapes import SHAPE_NAMES, ShapesDataModule, ShapesDataset

__all__ = ["SHAPE_NAMES", "ExplainableDataModule", "ShapesDataModule", "ShapesDataset"]
