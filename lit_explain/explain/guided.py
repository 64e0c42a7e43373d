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
backward; other activations (SiLU, Hardswish, GELU) keep theirs too, as in captum. A model that runs
no relu at all (ViTs, ConvNeXt, EfficientNet: GELU/SiLU) raises :class:`NoReluError` by default, since
"guided" backprop would silently be the plain gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.overrides import TorchFunctionMode

from lit_explain.errors import ConfigError
from lit_explain.explain._common import (
    Score,
    Targets,
    check_score,
    grad_session,
    model_device,
    prepare_images,
    resolve_targets,
    split_batch,
    target_scores,
)
from lit_explain.explain._true_rows import TrueRows, labelled_slices
from lit_explain.explain.cam import (
    DEFAULT_BATCH_SIZE,
    CAMMethod,
    CAMResult,
    apply_layouts,
    build_result,
    check_batch_size,
    concat_results,
    get_method,
    true_rows_from_graph,
)
from lit_explain.explain.hooks import LayerCapture
from lit_explain.explain.layers import LayerSpec, resolve_layers, unwrap_model
from lit_explain.explain.layouts import LayoutSpec, check_layout_spec

__all__ = ["GuidedGradCAMResult", "NoReluError", "guided_backprop", "guided_gradcam"]

# Named in the NoReluError message when a model runs no relu.
_OTHER_ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.GELU,
    nn.SiLU,
    nn.Hardswish,
    nn.Mish,
    nn.ELU,
    nn.LeakyReLU,
    nn.Tanh,
    nn.Sigmoid,
)
# Lower-cased class names of activations that libraries define themselves (timm's GELU, Swish...).
_ACTIVATION_NAMES = frozenset({"gelu", "gelutanh", "quickgelu", "silu", "swish", "mish", "hardswish", "elu"})

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


class NoReluError(ConfigError):
    """Guided Backprop was asked of a model whose forward pass runs no ReLU (GELU, SiLU networks).

    The guided rule changes only ReLU backward passes; without one the result would be the plain
    input gradient under another name. Callers that draw a Guided Grad-CAM column next to others
    (callbacks, audit) catch this error and drop the column; ``allow_no_relu=True`` returns the plain
    gradient instead (captum's behaviour).
    """


def guided_backprop(
    model: nn.Module,
    images: Tensor,
    targets: Targets = None,
    *,
    score: Score = "logit",
    batch_size: int | None = DEFAULT_BATCH_SIZE,
    allow_no_relu: bool = False,
) -> Tensor:
    """Guided Backprop: the input gradient of the target score with guided ReLU backward.

    Returns float32 ``[B, C, H, W]`` on the model's device (raw gradients, not normalised), equal to
    captum's ``GuidedBackprop`` where the model's relus are ``nn.ReLU`` modules, and also guiding
    functional relu calls. The model is left exactly as found (modules, flags, hooks, ``.grad``).
    Batches are explained ``batch_size`` images per pass.

    Raises:
        NoReluError: the forward pass ran no relu (unless ``allow_no_relu``).

    Example:
        >>> from torchvision.models import resnet18
        >>> gb = guided_backprop(resnet18(num_classes=10), torch.randn(2, 3, 64, 64), targets=[1, 2])
        >>> gb.shape, gb.dtype
        (torch.Size([2, 3, 64, 64]), torch.float32)
    """
    check_score(score)
    check_batch_size(batch_size)
    net = unwrap_model(model)
    with grad_session():
        x = prepare_images(images, model_device(net, images))
        parts = [
            _guided_pass(model, xs, ts, score, [], None, "mean", None, allow_no_relu, None)[1]
            for xs, ts in split_batch(x, targets, batch_size)
        ]
    return torch.cat(parts)


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
    batch_size: int | None = DEFAULT_BATCH_SIZE,
    layout: str | None = None,
    reshape: Callable[[Tensor], Tensor] | None = None,
    allow_no_relu: bool = False,
) -> GuidedGradCAMResult:
    """Guided Grad-CAM: guided backprop times the upsampled CAM, from ONE forward pass.

    The layer activation and the input gradient come from the same graph. The CAM uses the plain
    gradient (as Grad-CAM defines it): when no relu runs after the layer (ResNet's ``layer4``) one
    ``autograd.grad(score, [activation, input])`` gives both; otherwise the relus after the layer
    switch to the plain backward for a first, short pass from the score to the layer, then the full
    guided pass runs to the input.

    Args are as in :func:`~lit_explain.explain.cam.cam`; ``method`` may be any of its
    :data:`~lit_explain.explain.cam.CAM_METHODS` (not the rollouts).

    Raises:
        NoReluError: the forward pass ran no relu (unless ``allow_no_relu``).

    Example:
        >>> from torchvision.models import resnet18
        >>> r = guided_gradcam(resnet18(num_classes=10), torch.randn(2, 3, 64, 64), layer="layer4")
        >>> r.guided.shape, r.cam.maps.shape
        (torch.Size([2, 3, 64, 64]), torch.Size([2, 1, 64, 64]))
    """
    check_score(score)
    check_batch_size(batch_size)
    check_layout_spec(reshape if reshape is not None else layout)
    if fuse not in ("mean", "max"):
        raise ValueError(f"fuse must be 'mean' or 'max', got {fuse!r}")
    spec = reshape if reshape is not None else layout
    return guided_gradcam_with_labels(
        model,
        images,
        None,
        layer,
        targets,
        get_method(method, chunk_size),
        score,
        fuse,
        batch_size,
        spec,
        allow_no_relu,
    )[0]


def guided_gradcam_with_labels(
    model: nn.Module,
    images: Tensor,
    labels: Tensor | None,
    layer: LayerSpec | Sequence[str | nn.Module] = None,
    targets: Targets = None,
    method: CAMMethod | None = None,
    score: Score = "logit",
    fuse: str = "mean",
    batch_size: int | None = DEFAULT_BATCH_SIZE,
    layout: LayoutSpec = None,
    allow_no_relu: bool = False,
) -> tuple[GuidedGradCAMResult, TrueRows | None]:
    """:func:`guided_gradcam` (arguments checked, ``method`` an instance; None: Grad-CAM), plus the maps of
    ``labels`` (int ``[B]``, ``< 0`` unknown) for the rows whose label is not the explained class, made from
    the same forward pass where that is cheaper than a pass of their own (see
    :mod:`lit_explain.explain._true_rows`); None where it is not.
    """
    cam_method = method if method is not None else get_method("gradcam")
    net = unwrap_model(model)
    with grad_session():
        x = prepare_images(images, model_device(net, images))
        layers = resolve_layers(model, layer, x)
        parts, shared = [], []
        for start, xs, ts, rows in labelled_slices(x, targets, labels, batch_size):
            part = _guided_pass(model, xs, ts, score, layers, cam_method, fuse, layout, allow_no_relu, rows)
            parts.append(part)
            shared.append((start, part[2]))
    result = concat_results([p[0] for p in parts if p[0] is not None])
    backprop = torch.cat([p[1] for p in parts])
    guided = GuidedGradCAMResult(guided=backprop * result.maps, backprop=backprop, cam=result)
    return guided, TrueRows.concat(shared)


def _no_relu_error(net: nn.Module) -> NoReluError:
    kinds = sorted(
        {
            type(m).__name__
            for m in net.modules()
            if isinstance(m, _OTHER_ACTIVATIONS) or type(m).__name__.lower() in _ACTIVATION_NAMES
        }
    )
    found = f" (its activations: {', '.join(kinds)})" if kinds else ""
    return NoReluError(
        f"guided backprop needs ReLU activations, but {type(net).__name__} ran no relu{found}: the "
        "guided rule would change nothing and the result would be the plain input gradient. Use a "
        "CAM method alone, or pass allow_no_relu=True to get the plain gradient"
    )


def _guided_pass(
    model: nn.Module,
    x: Tensor,
    targets: Targets,
    score: str,
    layers: Sequence[tuple[str, nn.Module]],
    method: CAMMethod | None,
    fuse: str,
    layout: LayoutSpec,
    allow_no_relu: bool,
    labels: Tensor | None,
) -> tuple[CAMResult | None, Tensor, TrueRows | None]:
    """One slice: ``(CAM result or None, guided input gradient, true-class rows or None)`` from a single
    forward pass."""
    net = unwrap_model(model)
    x = x.detach().requires_grad_(True)
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
        if state.calls == 0 and not allow_no_relu:
            raise _no_relu_error(net)
        chosen = resolve_targets(targets, logits)
        total = target_scores(logits, chosen, score).sum()
        layer_grads: Sequence[Tensor | None] = [None] * len(layers)
        true_rows = None
        if method is not None and method.uses_gradients:
            state.guided = False  # CAMs use the plain gradient
            true_rows = true_rows_from_graph(cap, net, method, x, logits, chosen, labels, score, fuse, layout)
            state.guided = True
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
            return None, backprop, None
        cap.recording = False
        acts = [a.detach() for a in cap.activations if a is not None]
        acts, layer_grads = apply_layouts(net, names, acts, layer_grads, tuple(x.shape[-2:]), layout)
        result = build_result(
            net, method, x.detach(), acts, layer_grads, logits.detach(), chosen, names, score, fuse
        )
        return result, backprop, true_rows
