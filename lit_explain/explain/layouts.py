"""Turn any captured activation into ``[B, C, h, w]`` once, before a CAM method sees it.

Layouts:

- ``"nchw"``: ``[B, C, h, w]`` (convolutions, ConvNeXt stages), used as is.
- ``"nhwc"``: ``[B, h, w, C]`` (timm Swin blocks, channels-last stages, ConvNeXt block internals),
  permuted.
- ``"tokens"``: ``[B, T, C]`` (ViT, DeiT, DINOv2): the model's prefix tokens (CLS, distillation
  token, registers; timm's ``num_prefix_tokens``) are dropped and the remaining ``h*w`` patch tokens
  are laid out on the patch grid, row-major, as the patch embedding produced them.

Detection (``layout=None`` / ``"auto"``): a 3-D output is tokens; the grid comes from the model's
``patch_embed`` (``dynamic_feat_size`` of the input size, so non-square inputs and
``dynamic_img_size`` work) and the prefix from ``num_prefix_tokens``; models without those get the
smallest prefix (0-8) whose remaining token count forms a grid of the input's proportions. A 4-D
output is NCHW or NHWC depending on which pair of dimensions can be the input downsampled by one
integer stride; when both can (say ``[B, 7, 7, 7]``), the model's ``output_fmt`` (timm) decides, else
NCHW. Anything else: pass ``layout=`` (a name above) or ``reshape=`` (a callable returning
``[B, C, h, w]``). Gradients go through the same function as the activations: the layouts only select
and permute elements, so the reshaped gradient is the gradient w.r.t. the reshaped activation.

Example:
    >>> import torch
    >>> Layout("tokens", prefix=1, grid=(2, 3))(torch.randn(4, 7, 16)).shape
    torch.Size([4, 16, 2, 3])
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from lit_explain.errors import ConfigError

__all__ = [
    "LAYOUTS",
    "Layout",
    "LayoutSpec",
    "ZeroGradientError",
    "check_layout_spec",
    "detect_layout",
    "token_grid",
]

LAYOUTS: tuple[str, ...] = ("nchw", "nhwc", "tokens")
"""Layout names accepted by ``layout=``."""

LayoutSpec = str | Callable[[Tensor], Tensor] | None
"""``None``/``"auto"`` (detect), a name in :data:`LAYOUTS`, or a callable ``Tensor -> [B, C, h, w]``."""

_MAX_SEARCHED_PREFIX = 8


class ZeroGradientError(ConfigError):
    """The target score does not reach the layer's spatial positions (its gradient there is all zero)."""


@dataclass(frozen=True)
class Layout:
    """How one layer's output becomes ``[B, C, h, w]``: a kind, and for tokens the prefix and grid.

    Example:
        >>> import torch
        >>> Layout("nhwc")(torch.randn(2, 5, 4, 8)).shape
        torch.Size([2, 8, 5, 4])
    """

    kind: str
    prefix: int = 0
    grid: tuple[int, int] | None = None
    reshape: Callable[[Tensor], Tensor] | None = None

    def __call__(self, t: Tensor) -> Tensor:
        if self.kind == "nchw":
            return t
        if self.kind == "nhwc":
            return t.permute(0, 3, 1, 2)
        if self.kind == "tokens":
            assert self.grid is not None
            b, _, c = t.shape
            return t[:, self.prefix :].reshape(b, *self.grid, c).permute(0, 3, 1, 2)
        assert self.reshape is not None
        out = self.reshape(t)
        if not isinstance(out, Tensor) or out.ndim != 4 or out.shape[0] != t.shape[0]:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ConfigError(f"reshape must return a [B, C, h, w] tensor with B={t.shape[0]}, got {shape}")
        return out

    def check_gradient(self, gradient: Tensor, name: str, hint: str) -> None:
        """Raise :class:`ZeroGradientError` when the score reaches the prefix tokens but no patch token.

        That is the signature of a layer after which the model reads only its class token (a ViT's
        final ``norm``, or the output of its last block): every map would be zero.
        """
        if self.kind != "tokens" or self.prefix == 0:
            return
        if bool(gradient[:, self.prefix :].eq(0).all()) and not bool(gradient[:, : self.prefix].eq(0).all()):
            raise ZeroGradientError(
                f"the score's gradient w.r.t. the patch tokens of layer {name!r} is zero: after this "
                f"layer the model reads only its {self.prefix} prefix token(s) (CLS), so every map "
                f"would be empty. Choose a layer inside or before the last attention block{hint}."
            )


def detect_layout(
    net: nn.Module, name: str, activation: Tensor, image_size: tuple[int, int], spec: LayoutSpec = None
) -> Layout:
    """The :class:`Layout` of layer ``name``'s output ``activation`` for a batch of ``image_size`` images.

    Args:
        net: the unwrapped model (its ``num_prefix_tokens``, ``patch_embed`` and ``output_fmt``, or
            those of the innermost module around the layer that has them, inform the choice).
        name: the layer's dotted name in ``net`` (for the owner lookup and error messages).
        activation: the captured output.
        image_size: the input's ``(H, W)``.
        spec: ``None``/``"auto"``, a name in :data:`LAYOUTS`, or a reshape callable.

    Raises:
        ConfigError: unknown layout name, or an output whose spatial dims cannot be told apart.
    """
    if callable(spec):
        return Layout("custom", reshape=spec)
    kind = check_layout_spec(spec)
    shape = tuple(activation.shape)
    if kind == "auto":
        kind = _guess_kind(net, name, shape, image_size)
    expected = 3 if kind == "tokens" else 4
    if len(shape) != expected:
        raise ConfigError(
            f"layer {name!r} outputs shape {shape}, which is not a {kind} layout ({expected}-D); "
            "pass layout='nchw' / 'nhwc' / 'tokens', or reshape= a function returning [B, C, h, w]"
        )
    if kind != "tokens":
        return Layout(kind)
    prefix, grid = token_grid(net, name, shape[1], image_size)
    return Layout("tokens", prefix=prefix, grid=grid)


def check_layout_spec(spec: LayoutSpec) -> str:
    """The layout name ``spec`` stands for (``"auto"`` for None, ``"custom"`` for a callable), or a ConfigError."""
    if callable(spec):
        return "custom"
    kind = "auto" if spec is None else str(spec).lower()
    if kind not in ("auto", *LAYOUTS):
        raise ConfigError(f"layout must be one of {('auto', *LAYOUTS)} or a reshape callable, got {spec!r}")
    return kind


def token_grid(
    net: nn.Module, name: str, tokens: int, image_size: tuple[int, int]
) -> tuple[int, tuple[int, int]]:
    """``(prefix, (h, w))`` for ``tokens`` tokens of layer ``name`` on an ``image_size`` input.

    Uses the patch embedding's grid and ``num_prefix_tokens`` of the innermost module around the
    layer that has them; otherwise (or if those do not add up) searches the smallest prefix whose
    remainder forms a grid of the input's proportions.
    """
    prefix = _owner_attr(net, name, "num_prefix_tokens")
    embed = _owner_attr(net, name, "patch_embed")
    grid = _patch_grid(embed, image_size) if isinstance(embed, nn.Module) else None
    if isinstance(prefix, int) and grid is not None and prefix + grid[0] * grid[1] == tokens:
        return prefix, grid
    candidates = [prefix] if isinstance(prefix, int) else range(_MAX_SEARCHED_PREFIX + 1)
    for p in candidates:
        found = _plausible_grid(tokens - p, image_size)
        if found is not None:
            return p, found
    known = f"{prefix} prefix token(s)" if isinstance(prefix, int) else "no known prefix tokens"
    raise ConfigError(
        f"layer {name!r} outputs {tokens} tokens, which with {known} do not form a grid for a "
        f"{image_size[0]}x{image_size[1]} input; pass reshape= a function returning [B, C, h, w]"
    )


def _guess_kind(net: nn.Module, name: str, shape: tuple[int, ...], image_size: tuple[int, int]) -> str:
    if len(shape) == 3:
        return "tokens"
    if len(shape) != 4:
        raise ConfigError(
            f"layer {name!r} outputs shape {shape}, with no spatial layout; choose a layer before "
            "global pooling, or pass reshape= a function returning [B, C, h, w]"
        )
    nchw = _is_downsampled(shape[2], shape[3], image_size)
    nhwc = _is_downsampled(shape[1], shape[2], image_size)
    if nchw and nhwc:
        fmt = _owner_attr(net, name, "output_fmt")
        return "nhwc" if str(getattr(fmt, "value", fmt)).upper() == "NHWC" else "nchw"
    if nchw or nhwc:
        return "nchw" if nchw else "nhwc"
    raise ConfigError(
        f"cannot tell which dimensions of layer {name!r}'s output {shape} are spatial for a "
        f"{image_size[0]}x{image_size[1]} input; pass layout='nchw' or 'nhwc', or reshape="
    )


def _owner_attr(net: nn.Module, name: str, attr: str) -> object:
    """``attr`` of the innermost module on the path from ``net`` to layer ``name`` that has it."""
    parts = name.split(".") if name else []
    modules = dict(net.named_modules())
    for depth in range(len(parts), -1, -1):
        module = modules.get(".".join(parts[:depth]))
        if module is not None and hasattr(module, attr):
            return getattr(module, attr)
    return None


def _patch_grid(embed: nn.Module, image_size: tuple[int, int]) -> tuple[int, int] | None:
    if hasattr(embed, "dynamic_feat_size"):
        h, w = embed.dynamic_feat_size(tuple(image_size))
        return int(h), int(w)
    patch = getattr(embed, "patch_size", None)
    if patch is None:
        return None
    ph, pw = (patch, patch) if isinstance(patch, int) else tuple(patch)
    return image_size[0] // ph, image_size[1] // pw


def _is_downsampled(h: int, w: int, image_size: tuple[int, int]) -> bool:
    """Whether ``(h, w)`` is the input size divided by one integer stride, rounded down or up.

    Padded strided convolutions and pools round up (``ceil(H/2)``), unpadded ones down, and chains of
    them stay between ``floor(H/s)`` and ``ceil(H/s)`` of the total stride ``s``.
    """
    big_h, big_w = image_size
    if h < 1 or w < 1 or h > big_h or w > big_w:
        return False
    for stride in range(1, max(big_h, big_w) + 1):
        ok_h = big_h // stride <= h <= -(-big_h // stride)
        ok_w = big_w // stride <= w <= -(-big_w // stride)
        if ok_h and ok_w:
            return True
    return False


def _plausible_grid(count: int, image_size: tuple[int, int]) -> tuple[int, int] | None:
    """The ``(h, w)`` with ``h * w == count`` closest to the input's proportions, if it is one stride's grid."""
    if count < 1:
        return None
    ratio = image_size[0] / image_size[1]
    pairs = [(h, count // h) for h in range(1, count + 1) if count % h == 0]
    pairs = [p for p in pairs if _is_downsampled(p[0], p[1], image_size)]
    if not pairs:
        return None
    return min(pairs, key=lambda p: abs(math.log(p[0] / p[1] / ratio)))
