"""The LightningModule and backbone factories."""

from lit_explain.models.backbones import available_backbones, build_backbone
from lit_explain.models.classifier import ImageClassifier
from lit_explain.models.loading import CheckpointError, classifier_from_checkpoint, read_checkpoint

__all__ = [
    "CheckpointError",
    "ImageClassifier",
    "available_backbones",
    "build_backbone",
    "classifier_from_checkpoint",
    "read_checkpoint",
]

from lit_explain.models.loading import load_classifier

__all__ += ["load_classifier"]
