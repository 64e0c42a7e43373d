"""One engine call for a batch: probabilities, predictions, predicted- and true-class maps, Guided Grad-CAM.

The training callbacks, the audit, the :class:`~lit_explain.inference.Explainer` and the HTTP service all
need the same bundle; this is the one place that decides how it is made:

- one forward pass gives the logits, the predicted-class CAM and, from the same graph, Guided Grad-CAM
  (:func:`~lit_explain.explain.guided.guided_gradcam`; several fused layers go through that pass too);
- the true-class CAM costs one more pass over the rows whose known label differs from the explained
  class only (:func:`~lit_explain.explain.true_class.true_class_maps`); other rows share the map;
- Guided Grad-CAM is made for the gradient CAM methods only, and only for networks that run ReLUs: a
  GELU/SiLU network (ViT, ConvNeXt, EfficientNet) gets the CAM alone, with one warning per network.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lit_explain.explain._common import Targets
from lit_explain.explain._true_rows import TrueRows
from lit_explain.explain.cam import CAM, CAMMethod, CAMResult, get_method
from lit_explain.explain.guided import NoReluError, guided_gradcam_with_labels
from lit_explain.explain.layers import LayerSpec, unwrap_model
from lit_explain.explain.rollout import is_rollout_method
from lit_explain.explain.true_class import true_class_maps

__all__ = ["Explained", "explain_predictions", "guided_applies"]

# Networks whose guided pass ran no ReLU (weakly held: a network that is freed leaves the set). Later
# calls skip the guided attempt, so the warning comes once per network, not once per epoch or caller.
_NETS_WITHOUT_RELU: weakref.WeakSet[nn.Module] = weakref.WeakSet()


@dataclass(frozen=True)
class Explained:
    """What :func:`explain_predictions` returns; every tensor is on the model's device and detached.

    Attributes:
        probs: float32 ``[B, num_classes]``: softmax of ``logits``.
        preds: int64 ``[B]``: the predicted classes (argmax of ``logits``).
        logits: float32 ``[B, num_classes]`` from the call's own forward pass (eval mode).
        targets: int64 ``[B]``: the classes ``pred_maps`` and ``guided`` explain (``preds`` unless
            ``targets=`` was given).
        pred_maps: float32 ``[B, 1, H, W]`` in [0, 1]: the CAM of ``targets``.
        true_maps: float32 ``[B, 1, H, W]``: the CAM of the label; the ``pred_maps`` row where the label
            equals the target, is unknown (< 0) or no labels were given.
        guided: float32 ``[B, C, H, W]`` Guided Grad-CAM of ``targets``, or None (not asked for, a
            gradient-free or rollout method, or a network without ReLUs).
        layers: the resolved layer name(s) (the attention blocks for the rollouts).
        raw_size: ``(h, w)`` of the (first) layer's map: the resolution the maps really have.

    Example:
        >>> from torchvision.models import resnet18
        >>> e = explain_predictions(resnet18(num_classes=3), torch.randn(2, 3, 64, 64), [0, -1], layer="layer4")
        >>> e.pred_maps.shape, e.guided.shape, e.layers, e.raw_size
        (torch.Size([2, 1, 64, 64]), torch.Size([2, 3, 64, 64]), ('layer4',), (2, 2))
    """

    probs: Tensor
    preds: Tensor
    logits: Tensor
    targets: Tensor
    pred_maps: Tensor
    true_maps: Tensor
    guided: Tensor | None
    layers: tuple[str, ...]
    raw_size: tuple[int, int]


def guided_applies(method: str | CAMMethod) -> bool:
    """Whether ``method`` comes with Guided Grad-CAM: the gradient CAM methods, not the rollouts or the
    gradient-free ones (eigencam, scorecam), whose point is to explain without gradients.

    Example:
        >>> guided_applies("gradcam++"), guided_applies("eigencam"), guided_applies("rollout")
        (True, False, False)
    """
    return not is_rollout_method(method) and get_method(method).uses_gradients


def explain_predictions(
    model: nn.Module,
    images: Tensor,
    labels: Tensor | Sequence[int] | None = None,
    *,
    layer: LayerSpec | Sequence[str | nn.Module] = None,
    method: str | CAMMethod = "gradcam",
    guided: bool = True,
    targets: Targets = None,
) -> Explained:
    """Probabilities, predictions, predicted- and true-class maps and Guided Grad-CAM of a batch, in one call.

    Args:
        model: a classifier ``[B, C, H, W] -> [B, num_classes]``; DataParallel / DDP are unwrapped.
        images: float ``[B, C, H, W]`` (moved to the model's device).
        labels: int ``[B]`` true classes, ``< 0`` for unknown ones, or None (no true-class maps to make:
            ``true_maps`` is ``pred_maps``).
        layer / method: as for :func:`~lit_explain.explain.cam.cam` (a list of layers is fused).
        guided: also make Guided Grad-CAM where :func:`guided_applies` and the network runs ReLUs.
        targets: the classes the predicted-class maps explain: None (the predictions), an int, or one
            per row (e.g. the top-k classes of repeated images).

    Works inside ``torch.no_grad()`` / ``torch.inference_mode()`` (e.g. Lightning's validation loop) and,
    like every engine call, leaves the model as it found it: train/eval flags, hooks, ``.grad``,
    BatchNorm statistics.

    Example:
        >>> from torchvision.models import resnet18
        >>> net, x = resnet18(num_classes=3), torch.randn(4, 3, 64, 64)
        >>> e = explain_predictions(net, x, labels=torch.tensor([0, 1, 2, -1]), layer="layer4")
        >>> e.probs.shape, e.preds.dtype, bool((e.targets == e.preds).all())
        (torch.Size([4, 3]), torch.int64, True)
    """
    net = unwrap_model(model)
    want_guided = guided and guided_applies(method) and net not in _NETS_WITHOUT_RELU
    # Tensors made inside Lightning's inference_mode are inference tensors, which autograd refuses to
    # record even as gather indices; the primitives copy them, and true_class_maps copies the labels.
    with torch.inference_mode(False):
        known = None if labels is None else torch.as_tensor(labels).clone()
        predicted, guided_maps, shared = _predicted(
            model, net, images, known, layer, targets, method, want_guided
        )
        true_maps = (
            predicted.maps
            if known is None
            else true_class_maps(model, images, known, predicted, layer=layer, method=method, shared=shared)
        )
    logits = predicted.logits.float()
    raw = predicted.raw[0] if isinstance(predicted.raw, tuple) else predicted.raw
    return Explained(
        probs=logits.softmax(dim=1),
        preds=logits.argmax(dim=1),
        logits=logits,
        targets=predicted.targets,
        pred_maps=predicted.maps,
        true_maps=true_maps,
        guided=guided_maps,
        layers=predicted.layers,
        raw_size=(int(raw.shape[-2]), int(raw.shape[-1])),
    )


def _predicted(
    model: nn.Module,
    net: nn.Module,
    images: Tensor,
    labels: Tensor | None,
    layer: LayerSpec | Sequence[str | nn.Module],
    targets: Targets,
    method: str | CAMMethod,
    want_guided: bool,
) -> tuple[CAMResult, Tensor | None, TrueRows | None]:
    """The CAM of ``targets``, when wanted and possible Guided Grad-CAM, and the true-class maps of the
    misclassified rows where they are cheaper from the same forward pass (see ``_true_rows``)."""
    if want_guided:
        try:
            result, shared = guided_gradcam_with_labels(
                model, images, labels, layer=layer, targets=targets, method=get_method(method)
            )
        except NoReluError as err:
            _NETS_WITHOUT_RELU.add(net)
            # "column is left out" is what the callbacks' users see: their panels lose that column.
            warnings.warn(
                f"Guided Grad-CAM is turned off for this {type(net).__name__} (its Guided Grad-CAM column "
                f"is left out): {err}",
                stacklevel=3,
            )
        else:
            return result.cam, result.guided, shared
    predicted, shared = CAM(model, layer, method).explain_with_labels(images, targets, labels)
    return predicted, None, shared
