"""The explanation engine: CAM family, attention rollout, Guided Backprop / Guided Grad-CAM, metrics.

CNNs and timm transformers alike (ViT, DeiT, DINOv2 with registers, Swin, ConvNeXt): token and
channels-last activations are laid out as ``[B, C, h, w]`` without user code (see ``layouts``).

:func:`explain_predictions` is the one call for a batch's probabilities, predictions, predicted- and
true-class maps and Guided Grad-CAM (the callbacks, the audit and the Explainer all use it).

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
    CAM_METHODS,
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
from lit_explain.explain.guided import GuidedGradCAMResult, NoReluError, guided_backprop, guided_gradcam
from lit_explain.explain.hooks import LayerCapture, eval_mode, fast_layout
from lit_explain.explain.layers import (
    LayerNotFoundError,
    family_layer,
    resolve_layer,
    resolve_layers,
    unwrap_model,
)
from lit_explain.explain.layouts import LAYOUTS, Layout, ZeroGradientError
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
from lit_explain.explain.predictions import Explained, explain_predictions, guided_applies
from lit_explain.explain.rollout import (
    ROLLOUT_METHODS,
    RolloutResult,
    attention_rollout,
    is_rollout_method,
)

__all__ = [
    "CAM",
    "CAM_METHODS",
    "LAYOUTS",
    "METHODS",
    "ROLLOUT_METHODS",
    "CAMMethod",
    "CAMResult",
    "EigenCAM",
    "Explained",
    "GradCAM",
    "GradCAMPlusPlus",
    "GuidedGradCAMResult",
    "HiResCAM",
    "LayerCAM",
    "LayerCapture",
    "LayerNotFoundError",
    "Layout",
    "NoReluError",
    "RolloutResult",
    "ScoreCAM",
    "XGradCAM",
    "ZeroGradientError",
    "attention_rollout",
    "average_drop",
    "cam",
    "concentration",
    "deletion_auc",
    "drift",
    "energy_pointing_game",
    "eval_mode",
    "explain_predictions",
    "explanation_confidence",
    "family_layer",
    "fast_layout",
    "guided_applies",
    "guided_backprop",
    "guided_gradcam",
    "increase_in_confidence",
    "insertion_auc",
    "is_rollout_method",
    "perturbation_curve",
    "pointing_game",
    "resolve_layer",
    "resolve_layers",
    "unwrap_model",
]
