"""Attention rollout and gradient-weighted attention rollout for vision transformers.

Definitions (``A_l``: block ``l``'s attention probabilities ``[heads, T, T]`` over all ``T`` tokens,
blocks numbered in forward order ``1..L``; ``y``: the target class's score):

- ``rollout`` (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020): per block,
  ``Â_l = 0.5·mean_heads(A_l) + 0.5·I`` with rows renormalised to sum to 1; ``R = Â_L ··· Â_1``.
  Class-agnostic: the targets are reported but do not change the map.
- ``gradient_rollout`` (Chefer, Gur & Wolf, "Generic Attention-model Explainability for
  Interpreting Bi-Modal and Encoder-Decoder Transformers", ICCV 2021): ``R = I``; for each block in
  forward order ``Ā_l = mean_heads((∂y/∂A_l ⊙ A_l)⁺)`` and ``R = R + Ā_l·R``.

Read-out: the class token's row of ``R`` over the patch tokens (every prefix token, CLS,
distillation and registers, dropped), laid out on the patch grid. Models without a class token
(global average pooling) read the mean of the patch tokens' rows instead, the row of the pooled
feature. Only that one row is needed, so it is propagated as a vector (``r ← r·Â_l`` from the last
block down), which equals the row of the full matrix product at a fraction of the cost.

timm computes attention with fused ``scaled_dot_product_attention``, which never materialises the
probabilities: during the call every attention module's ``fused_attn`` flag is set to False (and
restored afterwards, even on exceptions) and the input of its ``attn_drop`` (the probabilities,
identity in eval mode) is captured. Models whose attention is not global over all tokens (Swin's
windows) are refused with a clear error.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lit_explain.errors import ConfigError
from lit_explain.explain._common import (
    Score,
    Targets,
    check_score,
    grad_session,
    minmax,
    model_device,
    no_autocast,
    prepare_images,
    resolve_targets,
    split_batch,
    target_scores,
    upsample,
)
from lit_explain.explain._state import unwrap_model
from lit_explain.explain.hooks import LayerCapture
from lit_explain.explain.layouts import token_grid

__all__ = [
    "ROLLOUT_METHODS",
    "RolloutResult",
    "attention_modules",
    "attention_rollout",
    "is_rollout_method",
    "rollout_method_name",
]

ROLLOUT_METHODS: tuple[str, ...] = ("rollout", "gradient_rollout")
"""Method names that explain through the attention of every block rather than one layer."""

_ALIASES = {"rollout": "rollout", "attentionrollout": "rollout", "gradientrollout": "gradient_rollout"}


@dataclass(frozen=True)
class RolloutResult:
    """What :func:`attention_rollout` returns; every tensor is on the model's device and detached.

    Attributes:
        maps: float32 ``[B, 1, H, W]`` in [0, 1], normalised exactly like ``cam``: bilinear
            upsampling (align_corners=False) to the input size, then per-image min-max (all zero
            where the map is constant).
        raw: float32 ``[B, h, w]``: the read-out row on the patch grid, unnormalised.
        logits: float32 ``[B, num_classes]``.
        targets: int64 ``[B]``.
        layers: the attention modules used, in forward order.
        method: ``"rollout"`` or ``"gradient_rollout"``.

    Example:
        >>> import timm
        >>> vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=3)
        >>> r = attention_rollout(vit, torch.randn(2, 3, 32, 32), method="gradient_rollout")
        >>> r.raw.shape, r.maps.shape, r.layers[0]
        (torch.Size([2, 2, 2]), torch.Size([2, 1, 32, 32]), 'blocks.0.attn')
    """

    maps: Tensor
    raw: Tensor
    logits: Tensor
    targets: Tensor
    layers: tuple[str, ...]
    method: str


def rollout_method_name(method: str) -> str | None:
    """The canonical rollout method ``method`` names (``"rollout"``, ``"gradient_rollout"``), else None."""
    return _ALIASES.get(method.lower().replace("_", "").replace("-", "").replace(" ", ""))


def is_rollout_method(method: object) -> bool:
    """Whether ``method`` names an attention rollout (which needs a ViT, not a layer).

    Example:
        >>> is_rollout_method("gradient_rollout"), is_rollout_method("gradcam")
        (True, False)
    """
    return isinstance(method, str) and rollout_method_name(method) is not None


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every timm-style attention module of ``model``, in registration order.

    A timm-style attention module has a ``fused_attn`` flag and applies an ``attn_drop`` module to
    its attention probabilities when the flag is off (timm's ``Attention``, ViT/DeiT/DINOv2/EVA).
    """
    return [
        (name, m)
        for name, m in unwrap_model(model).named_modules()
        if hasattr(m, "fused_attn") and isinstance(getattr(m, "attn_drop", None), nn.Module)
    ]


def attention_rollout(
    model: nn.Module,
    images: Tensor,
    targets: Targets = None,
    method: str = "rollout",
    *,
    score: Score = "logit",
    batch_size: int | None = 32,
) -> RolloutResult:
    """Attention rollout (``"rollout"``) or gradient-weighted rollout (``"gradient_rollout"``).

    See the module docstring for the definitions. The model is left exactly as found (train/eval
    flags, fused-attention flags, hooks, ``.grad``, buffers); works under ``no_grad`` and
    ``inference_mode``; rollout arithmetic is float32 under autocast.

    Args:
        model: a timm ViT-family classifier (or a module wrapping one); DataParallel/DDP unwrapped.
        images: ``[B, C, H, W]``; any size the model accepts (``dynamic_img_size`` included).
        targets: None (argmax), an int, or one class per image; used by ``gradient_rollout``.
        method: ``"rollout"`` or ``"gradient_rollout"``.
        score: ``"logit"`` or ``"prob"``, the ``y`` whose gradient weighs the attention.
        batch_size: images per forward pass (None: all at once).

    Raises:
        ConfigError: the model has no timm-style attention, or its attention is not global
            over all tokens (windowed, as in Swin), or ``method`` is not a rollout.

    Example:
        >>> import timm
        >>> vit = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=48)
        >>> attention_rollout(vit, torch.randn(1, 3, 48, 48)).raw.shape  # CLS and distillation dropped
        torch.Size([1, 3, 3])
    """
    name = rollout_method_name(method) if isinstance(method, str) else None
    if name is None:
        raise ConfigError(f"method must be one of {ROLLOUT_METHODS}, got {method!r}")
    check_score(score)
    net = unwrap_model(model)
    blocks = attention_modules(net)
    if not blocks:
        raise ConfigError(
            f"attention rollout needs a vision transformer with timm-style attention modules (a "
            f"`fused_attn` flag and an `attn_drop` on the probabilities); {type(net).__name__} has none"
        )
    with grad_session(), _unfused(m for _, m in blocks):
        x = prepare_images(images, model_device(net, images))
        parts = [
            _rollout_slice(model, net, blocks, xs, ts, name, score)
            for xs, ts in split_batch(x, targets, batch_size)
        ]
    return RolloutResult(
        maps=torch.cat([p[0] for p in parts]),
        raw=torch.cat([p[1] for p in parts]),
        logits=torch.cat([p[2] for p in parts]),
        targets=torch.cat([p[3] for p in parts]),
        layers=tuple(n for n, _ in blocks),
        method=name,
    )


@contextmanager
def _unfused(modules: Iterator[nn.Module]) -> Iterator[None]:
    """Turn off every module's ``fused_attn`` flag and give each its own value back on exit."""
    flags = [(m, m.fused_attn) for m in modules]
    try:
        for m, _ in flags:
            m.fused_attn = False
        yield
    finally:
        for m, flag in flags:
            m.fused_attn = flag


def _rollout_slice(
    model: nn.Module,
    net: nn.Module,
    blocks: Sequence[tuple[str, nn.Module]],
    x: Tensor,
    targets: Targets,
    method: str,
    score: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    names = [f"{n}.attn_drop" for n, _ in blocks]
    weighted = method == "gradient_rollout"
    with LayerCapture(model, [m.attn_drop for _, m in blocks], names=names, graph_from_layer=weighted) as cap:
        if weighted:
            logits = cap.forward(x)
            chosen = resolve_targets(targets, logits)
            grads: Sequence[Tensor | None] = cap.gradients(target_scores(logits, chosen, score).sum())
        else:
            with torch.no_grad():
                logits = cap.forward(x)
            chosen = resolve_targets(targets, logits)
            grads = [None] * len(blocks)
        probs = [a.detach() for a in cap.activations if a is not None]
    prefix, grid = _check_global(net, blocks, probs, tuple(x.shape[-2:]))
    with torch.no_grad(), no_autocast(x.device.type):
        raw = _read_out(_propagate(probs, grads), net, blocks, prefix, grid)
        maps = minmax(upsample(raw[:, None], tuple(x.shape[-2:])))
    return maps, raw, logits.detach().float(), chosen


def _check_global(
    net: nn.Module, blocks: Sequence[tuple[str, nn.Module]], probs: Sequence[Tensor], size: tuple[int, int]
) -> tuple[int, tuple[int, int]]:
    """``(prefix, grid)`` of the token sequence, after checking every block attends over all of it."""
    batch = None if not probs else probs[0].shape[0]
    tokens = probs[0].shape[-1] if probs else 0
    for (name, _), p in zip(blocks, probs, strict=True):
        if p.ndim != 4 or p.shape[0] != batch or p.shape[-1] != tokens or p.shape[-2] != tokens:
            raise ConfigError(
                f"attention rollout needs global self-attention over all tokens of each image; "
                f"{name!r} gives probabilities of shape {tuple(p.shape)} (windowed attention, as in "
                "Swin, is not supported); use a CAM method instead"
            )
    return token_grid(net, blocks[0][0], tokens, size)


def _propagate(probs: Sequence[Tensor], grads: Sequence[Tensor | None]) -> list[Tensor]:
    """Per block, the ``[B, T, T]`` factor ``M_l`` of ``R = M_L···M_1``: ``Â_l`` or ``I + Ā_l``."""
    mats = []
    for a, g in zip(probs, grads, strict=True):
        a = a.float()
        eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        if g is None:
            m = 0.5 * a.mean(dim=1) + 0.5 * eye
            mats.append(m / m.sum(dim=-1, keepdim=True))
        else:  # R + Ā·R = (I + Ā)·R
            mats.append(eye + (g.float() * a).clamp_min(0).mean(dim=1))
    return mats


def _read_out(
    mats: Sequence[Tensor],
    net: nn.Module,
    blocks: Sequence[tuple[str, nn.Module]],
    prefix: int,
    grid: tuple[int, int],
) -> Tensor:
    """The class token's row of the rollout over the patch tokens, ``[B, h, w]``."""
    b, t, _ = mats[0].shape
    row = torch.zeros(b, 1, t, dtype=mats[0].dtype, device=mats[0].device)
    if _has_class_token(net, blocks[0][0], prefix):
        row[:, 0, 0] = 1.0
    else:  # global average pooling: the pooled feature's row is the mean of the patch rows
        row[:, 0, prefix:] = 1.0 / (t - prefix)
    for m in reversed(mats):  # e·M_L···M_1, one vector-matrix product per block
        row = row @ m
    return row[:, 0, prefix:].reshape(b, *grid)


def _has_class_token(net: nn.Module, name: str, prefix: int) -> bool:
    modules = dict(net.named_modules())
    parts = name.split(".")
    for depth in range(len(parts), -1, -1):
        owner = modules.get(".".join(parts[:depth]))
        if owner is not None and hasattr(owner, "has_class_token"):
            return bool(owner.has_class_token)
        if owner is not None and getattr(owner, "cls_token", None) is not None:
            return True
    return prefix > 0
