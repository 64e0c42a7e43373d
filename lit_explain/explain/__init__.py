"""The explanation engine: CAM family, Guided Backprop / Guided Grad-CAM and faithfulness metrics.

Pure PyTorch, batched, on the model's device, and side-effect free: every call leaves the model's
modules, train/eval flags, hooks, parameter ``.grad`` and BatchNorm statistics exactly as it found them.

Example:
    >>> import torch
    >>> from torchvision.models import resnet18
    >>> from lit_explain.explain import cam, guided_gradcam
    >>> model, images = resnet18(num_classes=10), torch.randn(2, 3, 64, 64)
    >>> r = cam(model, images, layer="layer4", method="gradcam")
    >>> r.maps.shape
    torch.Size([2, 1, 64, 64])
    >>> guided_gradcam(model, images, layer="layer4", targets=r.targets).guided.shape
    torch.Size([2, 3, 64, 64])
"""

from lit_explain.explain.cam import (
    CAM,
    METHODS,
    CAMMethod,
    CAMResult,
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
    cam,
)
from lit_explain.explain.guided import GuidedGradCAMResult, guided_backprop, guided_gradcam
from lit_explain.explain.hooks import LayerCapture, eval_mode
from lit_explain.explain.layers import LayerNotFoundError, resolve_layer, resolve_layers, unwrap_model
from lit_explain.explain.metrics import (
    average_drop,
    concentration,
    deletion_auc,
    drift,
    energy_pointing_game,
    explanation_confidence,
    increase_in_confidence,
    insertion_auc,
    perturbation_curve,
    pointing_game,
)

__all__ = [
    "CAM",
    "METHODS",
    "CAMMethod",
    "CAMResult",
    "EigenCAM",
    "GradCAM",
    "GradCAMPlusPlus",
    "GuidedGradCAMResult",
    "HiResCAM",
    "LayerCAM",
    "LayerCapture",
    "LayerNotFoundError",
    "ScoreCAM",
    "XGradCAM",
    "average_drop",
    "cam",
    "concentration",
    "deletion_auc",
    "drift",
    "energy_pointing_game",
    "eval_mode",
    "explanation_confidence",
    "guided_backprop",
    "guided_gradcam",
    "increase_in_confidence",
    "insertion_auc",
    "perturbation_curve",
    "pointing_game",
    "resolve_layer",
    "resolve_layers",
    "unwrap_model",
]
