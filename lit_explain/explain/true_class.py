"""CAMs of the true class next to those of the predicted class, at the cost of one extra pass over errors.

Where the prediction is right the two maps are the same map, so only misclassified rows need a second
explanation; once a model learns those are few. Used by
:func:`~lit_explain.explain.predictions.explain_predictions`, the one call the callbacks, the audit and the
Explainer make.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lit_explain.explain._true_rows import TrueRows
from lit_explain.explain.cam import CAMResult, cam
from lit_explain.explain.layers import LayerSpec

__all__ = ["true_class_maps"]


def true_class_maps(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    predicted: CAMResult,
    layer: LayerSpec | Sequence[str | nn.Module] = None,
    method: str = "gradcam",
    shared: TrueRows | None = None,
) -> Tensor:
    """The ``[B, 1, H, W]`` maps for ``labels``, reusing ``predicted.maps`` where ``predicted.targets == labels``.

    Rows whose label is unknown (``< 0``) get ``predicted.maps`` too: there is no other class to explain.
    Most callers want :func:`~lit_explain.explain.predictions.explain_predictions`, which calls this.

    Args:
        model: the explained network (the one ``predicted`` came from).
        images: the ``[B, C, H, W]`` batch ``predicted`` explains.
        labels: int ``[B]`` true classes, ``< 0`` where unknown (any device; an inference tensor is copied
            first, since autograd refuses to record one even as a gather index).
        predicted: :func:`~lit_explain.explain.cam` result for the predicted classes (or any targets).
        layer / method: as given to :func:`~lit_explain.explain.cam` for ``predicted``.
        shared: maps of some of these rows already made from the predicted pass's graph (see
            :mod:`lit_explain.explain._true_rows`); only the other misclassified rows get a pass here.

    Example:
        >>> net = torchvision.models.resnet18(num_classes=3).eval()          # doctest: +SKIP
        >>> pred = cam(net, x, layer="layer4")                               # doctest: +SKIP
        >>> true = true_class_maps(net, x, y, pred, layer="layer4")          # doctest: +SKIP
    """
    with torch.inference_mode(False):
        labels = labels.to(predicted.targets.device).clone()
        true_maps = predicted.maps.clone()
        missing = (labels >= 0) & (predicted.targets != labels)
        if shared is not None:
            true_maps[shared.rows] = shared.maps.to(true_maps.dtype)
            missing[shared.rows] = False
        wrong = torch.nonzero(missing).flatten()
        if wrong.numel():
            rows = images[wrong.to(images.device)]
            true_maps[wrong] = cam(model, rows, layer=layer, targets=labels[wrong], method=method).maps
    return true_maps
