"""Capture layer activations and their gradients without side effects on the model.

:class:`LayerCapture` is the one place where hooks are registered. It puts the model in eval mode,
records each target layer's output during a forward pass, and computes gradients with
``torch.autograd.grad`` (never ``.backward()``, so no parameter ``.grad`` is written). On exit, even
after an exception, every hook is removed and every module gets its own train/eval flag back.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from types import TracebackType

import torch
from torch import Tensor, nn

from lit_explain.explain._state import eval_mode, unwrap_model

__all__ = ["LayerCapture", "eval_mode", "fast_layout"]


# Networks whose forward failed on a channels-last batch (weakly held): they get the plain layout.
_CONTIGUOUS_ONLY: weakref.WeakSet[nn.Module] = weakref.WeakSet()


def fast_layout(images: Tensor) -> Tensor:
    """``images`` in the memory layout the engine explains fastest on their device: channels-last on the CPU.

    oneDNN runs a channels-last batch's convolutions without reordering it: a ResNet's explanation (forward
    and both backward passes) takes 10-30% less time (timm ResNet-10-T at 64 px, torchvision ResNet-18 at
    224 px); ConvNeXt and ViT are unchanged. The values are the same; the float rounding of the network's
    sums is not, so a result can differ from one made from the plain layout (or by pytorch-grad-cam or captum)
    by rounding, and where a ReLU's input is within rounding of 0, by more. The engine itself keeps the
    caller's layout for that reason; the training callbacks, whose pictures only need to be right, use this.
    A network whose forward cannot take a channels-last batch (it ``.view()``s its input) is run on the plain
    layout instead, from its first failure on.

    Example:
        >>> fast_layout(torch.randn(2, 3, 8, 8)).is_contiguous(memory_format=torch.channels_last)
        True
        >>> fast_layout(torch.randn(2, 8)).shape  # no image batch: as given
        torch.Size([2, 8])
    """
    if (
        images.ndim != 4
        or images.device.type != "cpu"
        or not images.is_floating_point()
        or images.shape[1] == 1  # one channel: both layouts are the same memory
    ):
        return images
    return images.contiguous(memory_format=torch.channels_last)


def _is_channels_last(x: object) -> bool:
    return (
        isinstance(x, Tensor)
        and x.ndim == 4
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last)
    )


class LayerCapture:
    """Context manager that records the outputs of ``layers`` during :meth:`forward` and their gradients.

    Args:
        model: the model (DataParallel / DDP wrappers are unwrapped for the forward pass; the flags of
            the wrapper and of every inner module are restored on exit).
        layers: the modules whose output to capture (``[]`` only manages eval mode).
        names: names used in error messages, one per layer.
        graph_from_layer: run the part of the network before the first captured layer without
            autograd; the hook switches autograd on and makes the activation a fresh leaf. Gradients
            with respect to the layers stay exact (nothing upstream can change them) while the
            backbone builds no graph, which saves its memory and time. Leave False when a gradient
            with respect to the input is needed too.
        on_capture: called with the layer index each time an activation is captured.

    If a layer runs several times in one forward pass, the last call is kept. Every captured layer
    hands a copy of its output to the rest of the network, so an in-place op downstream (DenseNet's
    ``F.relu(inplace=True)``, a conv followed by ``ReLU(inplace=True)``) cannot overwrite the capture.

    Example:
        >>> from torchvision.models import resnet18
        >>> model, x = resnet18(), torch.randn(2, 3, 64, 64)
        >>> with LayerCapture(model, [model.layer4], graph_from_layer=True) as cap:
        ...     logits = cap.forward(x)
        ...     (grad,) = cap.gradients(logits[:, 0].sum())
        >>> cap.activations[0].shape == grad.shape == (2, 512, 2, 2)
        True
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[nn.Module],
        *,
        names: Sequence[str] | None = None,
        graph_from_layer: bool = False,
        on_capture: Callable[[int], None] | None = None,
    ) -> None:
        self.model = model
        self.layers = list(layers)
        self.names = list(names) if names is not None else [type(m).__name__ for m in self.layers]
        self.graph_from_layer = graph_from_layer
        self.on_capture = on_capture
        self.activations: list[Tensor | None] = [None] * len(self.layers)
        self.recording = True
        self._stack: ExitStack | None = None

    def __enter__(self) -> LayerCapture:
        stack = ExitStack()
        try:
            stack.enter_context(eval_mode(self.model))
            for index, layer in enumerate(self.layers):
                stack.callback(layer.register_forward_hook(self._hook(index)).remove)
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    def _hook(self, index: int) -> Callable[[nn.Module, tuple, object], Tensor | None]:
        def hook(_module: nn.Module, _args: tuple, output: object) -> Tensor | None:
            if not self.recording:
                return None
            if not isinstance(output, Tensor):
                raise TypeError(
                    f"layer {self.names[index]!r} returned {type(output).__name__}; "
                    "explanations need a layer whose output is a single tensor"
                )
            if self.graph_from_layer and not output.requires_grad:
                torch.set_grad_enabled(True)  # the caller's no_grad block restores the mode on exit
                output = output.detach().requires_grad_(True)
            self.activations[index] = output
            if self.on_capture is not None:
                self.on_capture(index)
            return output.clone()

        return hook

    def forward(self, *args: object, **kwargs: object) -> Tensor:
        """Run the (unwrapped) model and check that every layer was captured; returns its output.

        A channels-last batch (see :func:`fast_layout`) that the network cannot take is run on the plain
        layout (a copy in the graph: gradients with respect to the caller's tensor are unchanged).
        """
        net = unwrap_model(self.model)
        if len(args) == 1 and not kwargs and _is_channels_last(args[0]):
            if net in _CONTIGUOUS_ONLY:
                args = (args[0].contiguous(),)
            else:
                try:
                    output = self._run(net, args, kwargs)
                except RuntimeError:
                    # e.g. a model that .view()s its input. Retried on the plain layout: an error that was
                    # not the layout's is raised by the retry; otherwise this network keeps the plain layout.
                    output = self._run(net, (args[0].contiguous(),), kwargs)
                    _CONTIGUOUS_ONLY.add(net)
                return self._checked(output)
        return self._checked(self._run(net, args, kwargs))

    def _checked(self, output: object) -> Tensor:
        missing = [name for name, act in zip(self.names, self.activations, strict=True) if act is None]
        if missing:
            raise RuntimeError(f"layer(s) {missing} did not run during the forward pass")
        if not isinstance(output, Tensor):
            raise TypeError(f"the model must return a logits tensor, not {type(output).__name__}")
        return output

    def _run(self, net: nn.Module, args: tuple, kwargs: dict) -> object:
        self.activations = [None] * len(self.layers)
        if self.graph_from_layer:
            with torch.no_grad():
                return net(*args, **kwargs)
        return net(*args, **kwargs)

    def gradients(
        self, score: Tensor, extra_inputs: Sequence[Tensor] = (), *, retain_graph: bool = False
    ) -> tuple[Tensor, ...]:
        """Gradients of the scalar ``score`` w.r.t. each captured activation, then each of ``extra_inputs``.

        Uses ``torch.autograd.grad``, which computes only what these inputs need and leaves every
        parameter's ``.grad`` alone.
        """
        inputs = [act for act in self.activations if act is not None]
        if len(inputs) != len(self.layers):
            raise RuntimeError("call forward() before gradients()")
        inputs += list(extra_inputs)
        grads = torch.autograd.grad(score, inputs, retain_graph=retain_graph, allow_unused=True)
        names = [*self.names, *(f"input {i}" for i in range(len(extra_inputs)))]
        unused = [name for name, grad in zip(names, grads, strict=True) if grad is None]
        if unused:
            raise RuntimeError(
                f"the score does not depend on {unused}; choose a layer on the path to the logits"
            )
        return tuple(g for g in grads if g is not None)
