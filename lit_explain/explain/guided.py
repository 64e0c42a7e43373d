"""Guided Backprop and Guided Grad-CAM without touching the model's modules.

Guided Backprop (Springenberg et al., ICLR-W 2015) backpropagates through every ReLU only the positive
gradients where the ReLU's input was positive. Instead of swapping ``nn.ReLU`` modules (which misses
``F.relu`` / ``torch.relu`` calls inside ``forward`` and has to undo inplace flags), a
``TorchFunctionMode`` reroutes every relu call made during the forward pass (``nn.ReLU`` with or
without ``inplace``, a module called twice, ``F.relu``, ``torch.relu``, ``torch.relu_``,
``Tensor.relu``, ``Tensor.relu_``) to an autograd Function with the guided backward. The model's
modules are never replaced, so nothing needs restoring but the train/eval flags and the hooks,
which :class:`~lit_explain.explain.hooks.LayerCapture` handles. Calls below the Python API
(``torch.ops.aten.relu`` directly, TorchScript or compiled graphs) are not seen and keep the plain
backward; other activations (SiLU, Hardswish, GELU) keep theirs too, as in captum.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.overrides import TorchFunctionMode

from lit_explain.explain._common import (
    Score,
    Targets,
    check_score,
    grad_session,
    model_device,
    prepare_images,
    resolve_targets,
    target_scores,
)
from lit_explain.explain.cam import CAMMethod, CAMResult, build_result, get_method
from lit_explain.explain.hooks import LayerCapture
from lit_explain.explain.layers import LayerSpec, resolve_layers, unwrap_model

__all__ = ["GuidedGradCAMResult", "guided_backprop", "guided_gradcam"]

# func -> True if the call is in-place (F.relu decides from its ``inplace`` argument).
_RELUS: dict[object, bool | None] = {
    F.relu: None,
    torch.relu: False,
    torch.Tensor.relu: False,
    torch.relu_: True,
    F.relu_: True,
    torch.Tensor.relu_: True,
}


class _GuidedState:
    """Shared by the mode and the backward passes: whether relu backward is guided, and a relu count."""

    def __init__(self) -> None:
        self.guided = True
        self.calls = 0


class _GuidedReLU(torch.autograd.Function):
    """relu whose backward keeps only positive gradients where the input was positive (if guided)."""

    @staticmethod
    def forward(ctx, x: Tensor, state: _GuidedState, inplace: bool) -> Tensor:  # type: ignore[override]
        if inplace:
            out = x.relu_()
            ctx.mark_dirty(x)
        else:
            out = torch.relu(x)
        ctx.save_for_backward(out)
        ctx.state = state
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        (out,) = ctx.saved_tensors
        # out > 0 exactly where the input was > 0; threshold_backward is relu's own fused backward.
        grad_in = torch.ops.aten.threshold_backward(grad, out, 0)
        if ctx.state.guided:
            grad_in = grad_in.clamp_min_(0)
        return grad_in, None, None


class _GuidedReLUMode(TorchFunctionMode):
    def __init__(self, state: _GuidedState) -> None:
        super().__init__()
        self.state = state

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        if func in _RELUS:
            inplace = _RELUS[func]
            if inplace is None:
                inplace = bool(kwargs.get("inplace", args[1] if len(args) > 1 else False))
            self.state.calls += 1
            return _GuidedReLU.apply(args[0], self.state, inplace)
        return func(*args, **kwargs)


@dataclass(frozen=True)
class GuidedGradCAMResult:
    """What :func:`guided_gradcam` returns.

    Attributes:
        guided: float32 ``[B, C, H, W]``: ``backprop * cam.maps`` (the normalised, upsampled map).
        backprop: float32 ``[B, C, H, W]``: the guided backprop gradient alone (what
            :func:`guided_backprop` returns).
        cam: the :class:`~lit_explain.explain.cam.CAMResult` of the same forward pass.
    """

    guided: Tensor
    backprop: Tensor
    cam: CAMResult


def guided_backprop(
    model: nn.Module, images: Tensor, targets: Targets = None, *, score: Score = "logit"
) -> Tensor:
    """Guided Backprop: the input gradient of the target score with guided ReLU backward.

    Returns float32 ``[B, C, H, W]`` on the model's device (raw gradients, not normalised), equal to
    captum's ``GuidedBackprop`` where the model's relus are ``nn.ReLU`` modules, and also guiding
    functional relu calls. The model is left exactly as found (modules, flags, hooks, ``.grad``).

    Example:
        >>> from torchvision.models import resnet18
        >>> gb = guided_backprop(resnet18(num_classes=10), torch.randn(2, 3, 64, 64), targets=[1, 2])
        >>> gb.shape, gb.dtype
        (torch.Size([2, 3, 64, 64]), torch.float32)
    """
    check_score(score)
    _, backprop, _ = _guided_pass(model, images, targets, score, layer=None, method=None)
    return backprop


def guided_gradcam(
    model: nn.Module,
    images: Tensor,
    layer: LayerSpec | Sequence[str | nn.Module] = None,
    targets: Targets = None,
    method: str | CAMMethod = "gradcam",
    *,
    score: Score = "logit",
    fuse: str = "mean",
    chunk_size: int = 32,
) -> GuidedGradCAMResult:
    """Guided Grad-CAM: guided backprop times the upsampled CAM, from ONE forward pass.

    The layer activation and the input gradient come from the same graph. The CAM uses the plain
    gradient (as Grad-CAM defines it): when no relu runs after the layer (ResNet's ``layer4``) one
    ``autograd.grad(score, [activation, input])`` gives both; otherwise the relus after the layer
    switch to the plain backward for a first, short pass from the score to the layer, then the full
    guided pass runs to the input.

    Args are as in :func:`~lit_explain.explain.cam.cam`; ``method`` may be any of its methods.

    Example:
        >>> from torchvision.models import resnet18
        >>> r = guided_gradcam(resnet18(num_classes=10), torch.randn(2, 3, 64, 64), layer="layer4")
        >>> r.guided.shape, r.cam.maps.shape
        (torch.Size([2, 3, 64, 64]), torch.Size([2, 1, 64, 64]))
    """
    check_score(score)
    if fuse not in ("mean", "max"):
        raise ValueError(f"fuse must be 'mean' or 'max', got {fuse!r}")
    result, backprop, _ = _guided_pass(
        model, images, targets, score, layer=layer, method=get_method(method, chunk_size), fuse=fuse
    )
    assert result is not None
    return GuidedGradCAMResult(guided=backprop * result.maps, backprop=backprop, cam=result)


def _guided_pass(
    model: nn.Module,
    images: Tensor,
    targets: Targets,
    score: str,
    *,
    layer: LayerSpec | Sequence[str | nn.Module],
    method: CAMMethod | None,
    fuse: str = "mean",
) -> tuple[CAMResult | None, Tensor, Tensor]:
    net = unwrap_model(model)
    with grad_session():
        x = prepare_images(images, model_device(net, images)).detach().requires_grad_(True)
        layers = resolve_layers(model, layer, x) if method is not None else []
        names = [name for name, _ in layers]
        state = _GuidedState()
        relus_at_capture: dict[int, int] = {}
        with LayerCapture(
            model,
            [m for _, m in layers],
            names=names,
            on_capture=lambda i: relus_at_capture.__setitem__(i, state.calls),
        ) as cap:
            with _GuidedReLUMode(state):
                logits = cap.forward(x)
            chosen = resolve_targets(targets, logits)
            total = target_scores(logits, chosen, score).sum()
            layer_grads: Sequence[Tensor | None] = [None] * len(layers)
            if method is not None and method.uses_gradients:
                if state.calls > min(relus_at_capture.values()):
                    state.guided = False
                    layer_grads = cap.gradients(total, retain_graph=True)
                    state.guided = True
                    (backprop,) = torch.autograd.grad(total, [x])
                else:
                    *layer_grads, backprop = cap.gradients(total, [x])
            else:
                (backprop,) = torch.autograd.grad(total, [x])
            backprop = backprop.float()
            if method is None:
                return None, backprop, chosen
            cap.recording = False
            acts = [a.detach() for a in cap.activations if a is not None]
            result = build_result(
                net, method, x.detach(), acts, layer_grads, logits.detach(), chosen, names, score, fuse
            )
            return result, backprop, chosen
