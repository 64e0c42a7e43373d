"""Explain a batch for the callbacks and lay it out as captioned rows: image | CAM pred | CAM true | Guided."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lit_explain.explain import guided_gradcam
from lit_explain.explain.true_class import true_class_maps
from lit_explain.render import denormalize, guided_to_image, overlay, panel_grid, to_rgb

COLUMN_TITLES = ("image", "CAM predicted", "CAM true", "Guided Grad-CAM")


@dataclass(frozen=True)
class Explained:
    """Explanations of one batch (all on the model's device).

    Attributes:
        probs: float32 ``[B, num_classes]`` from the explanation's own forward pass (eval mode).
        preds: int64 ``[B]`` predicted classes.
        pred_maps / true_maps: float32 ``[B, 1, H, W]`` CAMs of the predicted and of the true class.
        guided: float32 ``[B, C, H, W]`` Guided Grad-CAM of the predicted class.
    """

    probs: Tensor
    preds: Tensor
    pred_maps: Tensor
    true_maps: Tensor
    guided: Tensor


def explain_batch(
    net: nn.Module, images: Tensor, labels: Tensor, layer: str | list[str] | None, method: str
) -> Explained:
    """Guided Grad-CAM for the predicted class (its CAM comes from the same pass) plus a CAM of the true class.

    The true-class CAM is computed only for misclassified rows; the others reuse the predicted-class CAM.

    The explain engine runs in eval mode with its own autograd session (so it works inside
    ``torch.inference_mode``), restores every train/eval flag and never touches ``.grad`` or BatchNorm
    statistics: training is not perturbed.
    """
    with torch.inference_mode(False):
        # Targets built inside Lightning's inference_mode are inference tensors, which autograd refuses
        # to record even as gather indices; a clone made outside it is an ordinary tensor.
        guided = guided_gradcam(net, images, layer=layer, targets=None, method=method)
        true_maps = true_class_maps(net, images, labels, guided.cam, layer=layer, method=method)
    return Explained(
        probs=guided.cam.logits.float().softmax(dim=1),
        preds=guided.cam.targets,
        pred_maps=guided.cam.maps,
        true_maps=true_maps,
        guided=guided.guided,
    )


def display_images(images: Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> Tensor:
    """Model-space images -> ``[0, 1]`` RGB; per-image min-max when the normalisation is unknown."""
    x = images.detach().float()
    if mean is not None and std is not None:
        return to_rgb(denormalize(x, mean, std))
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    return to_rgb((x - lo) / (hi - lo).clamp_min(1e-12))


def render_rows(
    images01: Tensor,
    explained: Explained,
    captions: Sequence[str],
    correct: Tensor,
    alpha: float = 0.5,
    cmap: str = "jet",
    min_cell: int = 128,
) -> Tensor:
    """One row per sample (image | CAM predicted | CAM true | Guided Grad-CAM): uint8 ``[3, H, W]``."""
    images01 = images01.to(explained.pred_maps.device)
    rows = torch.stack(
        [
            images01,
            overlay(images01, explained.pred_maps, alpha=alpha, cmap=cmap),
            overlay(images01, explained.true_maps, alpha=alpha, cmap=cmap),
            guided_to_image(explained.guided),
        ],
        dim=1,
    )
    return panel_grid(
        rows,
        captions=list(captions),
        column_titles=list(COLUMN_TITLES),
        caption_colors=correct.cpu(),
        min_cell=min_cell,
    )


def class_name(names: Sequence[str], index: int) -> str:
    return names[index] if 0 <= index < len(names) else str(index)
