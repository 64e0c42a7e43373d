"""The CAM family as weightings of (activation, gradient).

:class:`CAM` owns the hooks, the forward pass, the gradients and the post-processing; each method only
says how it turns a layer's activation ``A`` ``[B, K, h, w]`` and the gradient ``G = dy/dA`` of the
target score ``y`` into a signed map ``[B, h, w]``. Everything is batched and stays on the model's
device. The formulas follow pytorch-grad-cam's classes of the same name (same epsilons), so the maps
agree with it to float32 rounding. Activations of any layout (tokens, channels-last) are turned into
``[B, K, h, w]`` by :mod:`~lit_explain.explain.layouts` before a method sees them, and batches are
explained ``batch_size`` images at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_explain.errors import ConfigError
from lit_explain.explain._common import (
    Score,
    Targets,
    autocast_as,
    autocast_state,
    check_score,
    grad_session,
    minmax,
    model_device,
    no_autocast,
    prepare_images,
    resolve_targets,
    target_scores,
    upsample,
)
from lit_explain.explain._true_rows import TrueRows, labelled_slices, rows_to_share
from lit_explain.explain.hooks import LayerCapture
from lit_explain.explain.layers import LayerSpec, family_layer, resolve_layers, unwrap_model
from lit_explain.explain.layouts import LayoutSpec, ZeroGradientError, check_layout_spec, detect_layout
from lit_explain.explain.rollout import (
    ROLLOUT_METHODS,
    attention_rollout,
    is_rollout_method,
    rollout_method_name,
)

__all__ = [
    "CAM",
    "CAM_METHODS",
    "DEFAULT_BATCH_SIZE",
    "METHODS",
    "CAMMethod",
    "CAMResult",
    "EigenCAM",
    "GradCAM",
    "GradCAMPlusPlus",
    "HiResCAM",
    "LayerCAM",
    "ScoreCAM",
    "XGradCAM",
    "cam",
]

Fuse = Literal["mean", "max"]


@dataclass(frozen=True)
class CAMResult:
    """What :func:`cam` returns; every tensor is on the model's device and detached.

    Attributes:
        maps: float32 ``[B, 1, H, W]`` in [0, 1]: the ReLU'd map upsampled bilinearly
            (align_corners=False) to the input size, then min-max normalised per image; all zero
            where the map is constant. With several layers, the fused map (see :class:`CAM`).
        raw: float32 ``[B, 1, h, w]``: the map after ReLU, unnormalised, at the layer's resolution;
            with several layers, a tuple of those, one per layer.
        logits: float32 ``[B, num_classes]`` from the single forward pass of the call.
        targets: int64 ``[B]``, the explained class of each image.
        layers: the resolved layer name(s).
        method: the method's name.
    """

    maps: Tensor
    raw: Tensor | tuple[Tensor, ...]
    logits: Tensor
    targets: Tensor
    layers: tuple[str, ...]
    method: str


@dataclass
class MethodContext:
    """What a gradient-free method may need besides (A, G): the batch and a way to score new inputs."""

    images: Tensor
    targets: Tensor
    score: Callable[[Tensor, Tensor], Tensor]  # (images [N, C, H, W], targets [N]) -> float32 scores [N]


class CAMMethod:
    """A CAM method: how to weigh a layer's activation ``A`` and gradient ``G`` into a signed map."""

    name: ClassVar[str]
    uses_gradients: ClassVar[bool] = True

    def weigh(self, activation: Tensor, gradient: Tensor | None, ctx: MethodContext) -> Tensor:
        """Return the signed map ``[B, h, w]`` (the base class applies ReLU, upsampling, normalising)."""
        weights = self.channel_weights(activation, gradient)
        return torch.einsum("bk,bkhw->bhw", weights, activation)

    def channel_weights(self, activation: Tensor, gradient: Tensor | None) -> Tensor:
        """``[B, K]`` channel weights for methods of the form ``sum_k w_k A_k``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class GradCAM(CAMMethod):
    """Grad-CAM (Selvaraju et al., ICCV 2017): ``w_k = mean_ij G_kij``."""

    name = "gradcam"

    def channel_weights(self, activation: Tensor, gradient: Tensor | None) -> Tensor:
        return gradient.mean(dim=(2, 3))


class GradCAMPlusPlus(CAMMethod):
    """Grad-CAM++ (Chattopadhay et al., WACV 2018), eq. 19 with the exponential output's closed form.

    ``a_kij = G² / (2 G² + sum_ij(A_k) G³ + 1e-6)`` (0 where G = 0), ``w_k = sum_ij a_kij relu(G_kij)``.
    """

    name = "gradcam++"

    def channel_weights(self, activation: Tensor, gradient: Tensor | None) -> Tensor:
        g2 = gradient.square()
        g3 = g2 * gradient
        sum_a = activation.sum(dim=(2, 3), keepdim=True)
        alpha = g2 / (2 * g2 + sum_a * g3 + 1e-6)
        alpha = torch.where(gradient != 0, alpha, torch.zeros_like(alpha))
        return (alpha * gradient.clamp_min(0)).sum(dim=(2, 3))


class XGradCAM(CAMMethod):
    """XGrad-CAM (Fu et al., BMVC 2020): ``w_k = sum_ij G_kij A_kij / (sum_ij A_kij + 1e-7)``."""

    name = "xgradcam"

    def channel_weights(self, activation: Tensor, gradient: Tensor | None) -> Tensor:
        sum_a = activation.sum(dim=(2, 3))
        return (gradient * activation).sum(dim=(2, 3)) / (sum_a + 1e-7)


class HiResCAM(CAMMethod):
    """HiResCAM (Draelos & Carin, 2020): ``sum_k G_k * A_k`` element-wise, no spatial averaging."""

    name = "hirescam"

    def weigh(self, activation: Tensor, gradient: Tensor | None, ctx: MethodContext) -> Tensor:
        return torch.einsum("bkhw,bkhw->bhw", gradient, activation)


class LayerCAM(CAMMethod):
    """LayerCAM (Jiang et al., IEEE TIP 2021): ``sum_k relu(G_k) * A_k`` element-wise."""

    name = "layercam"

    def weigh(self, activation: Tensor, gradient: Tensor | None, ctx: MethodContext) -> Tensor:
        return torch.einsum("bkhw,bkhw->bhw", gradient.clamp_min(0), activation)


class EigenCAM(CAMMethod):
    """Eigen-CAM (Muhammad & Yeasin, IJCNN 2020): projection on the first principal component.

    Per image, the activations form an ``[h*w, K]`` matrix; it is centred per channel and projected
    on its first right singular vector ``v``. The sign of a singular vector is arbitrary (LAPACK
    decides, so pytorch-grad-cam's maps may come out flipped); here ``v`` is oriented so that
    ``sum_k v_k >= 0``, which makes the map correlate positively with the mean activation over
    channels: regions where the layer fires strongly come out positive.
    """

    name = "eigencam"
    uses_gradients = False

    def weigh(self, activation: Tensor, gradient: Tensor | None, ctx: MethodContext) -> Tensor:
        return eigen_projection(activation)


def eigen_projection(activation: Tensor) -> Tensor:
    """Signed first-principal-component projection ``[B, h, w]`` of ``[B, K, h, w]`` (see EigenCAM)."""
    b, _, h, w = activation.shape
    x = activation.nan_to_num(0.0).flatten(2).transpose(1, 2)  # [B, hw, K]
    x = x - x.mean(dim=1, keepdim=True)
    v = torch.linalg.svd(x, full_matrices=False).Vh[:, 0]  # [B, K]
    v = torch.where(v.sum(dim=1, keepdim=True) < 0, -v, v)
    return (x @ v[:, :, None]).reshape(b, h, w)


class ScoreCAM(CAMMethod):
    """Score-CAM (Wang et al., CVPR-W 2020), batched.

    Each channel ``A_k`` is upsampled to the input size (bilinear, align_corners=True as in
    pytorch-grad-cam), min-max normalised (``/(max - min + 1e-8)``) and multiplied with the image; the
    target scores of these masked images, softmax-ed over the channels, are the weights. The ``B*K``
    masked images are built and scored ``chunk_size`` at a time, across images, so memory stays at
    one chunk whatever the batch.

    Args:
        chunk_size: masked images per forward pass.
    """

    name = "scorecam"
    uses_gradients = False

    def __init__(self, chunk_size: int = 32) -> None:
        if chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        self.chunk_size = chunk_size

    def weigh(self, activation: Tensor, gradient: Tensor | None, ctx: MethodContext) -> Tensor:
        b, k, h, w = activation.shape
        size = tuple(ctx.images.shape[-2:])
        channels = activation.reshape(b * k, 1, h, w)
        owner = torch.arange(b, device=activation.device).repeat_interleave(k)
        scores = torch.empty(b * k, dtype=torch.float32, device=activation.device)
        for start in range(0, b * k, self.chunk_size):
            stop = min(start + self.chunk_size, b * k)
            mask = F.interpolate(channels[start:stop], size=size, mode="bilinear", align_corners=True)
            lo = mask.amin(dim=(2, 3), keepdim=True)
            hi = mask.amax(dim=(2, 3), keepdim=True)
            mask = (mask - lo) / (hi - lo + 1e-8)
            idx = owner[start:stop]
            masked = ctx.images[idx] * mask.to(ctx.images.dtype)
            scores[start:stop] = ctx.score(masked, ctx.targets[idx])
        weights = scores.view(b, k).softmax(dim=1)
        return torch.einsum("bk,bkhw->bhw", weights, activation)

    def __repr__(self) -> str:
        return f"ScoreCAM(chunk_size={self.chunk_size})"


_REGISTRY: dict[str, type[CAMMethod]] = {
    m.name: m for m in (GradCAM, GradCAMPlusPlus, XGradCAM, HiResCAM, LayerCAM, EigenCAM, ScoreCAM)
}
CAM_METHODS: list[str] = list(_REGISTRY)
"""Names of the activation-and-gradient methods (the ones :func:`guided_gradcam` accepts too)."""
METHODS: list[str] = [*CAM_METHODS, *ROLLOUT_METHODS]
"""Names accepted by ``method=``: :data:`CAM_METHODS`, then the attention rollouts (see
:func:`~lit_explain.explain.rollout.is_rollout_method`), which :func:`cam` hands to
:func:`~lit_explain.explain.rollout.attention_rollout`."""

DEFAULT_BATCH_SIZE = 32
"""Images per forward/backward pass unless ``batch_size=`` says otherwise (bounds memory)."""


def _method_key(method: str) -> str:
    key = method.lower().replace("_", "").replace("-", "")
    return {"gradcampp": "gradcam++", "gradcamplusplus": "gradcam++"}.get(key, key)


def get_method(method: str | CAMMethod, chunk_size: int = 32) -> CAMMethod:
    """A method instance from its name (``chunk_size`` is used by scorecam), or the instance itself."""
    if isinstance(method, CAMMethod):
        return method
    if not isinstance(method, str):
        raise TypeError(f"method must be a name or a CAMMethod, not {type(method).__name__}")
    if is_rollout_method(method):
        raise ConfigError(
            f"{method!r} is an attention rollout, not a channel weighting of one layer; "
            f"use attention_rollout() or cam(), or one of {CAM_METHODS} here"
        )
    key = _method_key(method)
    if key not in _REGISTRY:
        raise ConfigError(f"unknown CAM method {method!r}; choose one of {METHODS}")
    cls = _REGISTRY[key]
    return cls(chunk_size=chunk_size) if cls is ScoreCAM else cls()


def check_batch_size(batch_size: int | None) -> None:
    if batch_size is not None and (isinstance(batch_size, bool) or batch_size < 1):
        raise ValueError(f"batch_size must be None or >= 1, got {batch_size!r}")


class CAM:
    """A reusable explainer: ``CAM(model, layer, method)(images, targets)`` -> :class:`CAMResult`.

    Hooks exist only during a call. Each call does one forward pass per ``batch_size`` images (plus
    scorecam's masked ones), in eval mode, and restores the model exactly: train/eval flags, hooks and
    parameter ``.grad``. Works inside ``torch.no_grad()`` / ``torch.inference_mode()`` and under
    autocast (maps are float32). Transformers need no reshape code: token (ViT, DeiT, DINOv2) and
    channels-last (Swin) outputs are laid out as ``[B, C, h, w]`` first (see
    :mod:`lit_explain.explain.layouts`).

    Args:
        model: a classifier ``[B, C, H, W] -> [B, num_classes]``; DataParallel / DDP are unwrapped.
        layer: a dotted name, a module, None (auto, per family: see
            :func:`~lit_explain.explain.layers.resolve_layer`), or a list of those. With several
            layers, each layer's map is min-max normalised at its own resolution, upsampled to the
            input size, and the maps are fused element-wise by ``fuse`` (``"mean"``, the default, as
            pytorch-grad-cam does, or ``"max"``), then min-max normalised.
        method: one of :data:`METHODS` or a :class:`CAMMethod` instance. ``"rollout"`` and
            ``"gradient_rollout"`` run :func:`~lit_explain.explain.rollout.attention_rollout` over
            every attention block (``layer``, ``fuse``, ``layout`` and ``reshape`` do not apply;
            ``raw`` is ``[B, 1, h, w]`` on the patch grid).
        score: ``"logit"`` (default) or ``"prob"`` (softmax probability) of the target class.
        fuse: how several layers' maps combine, ``"mean"`` or ``"max"``.
        chunk_size: masked images per forward pass for scorecam.
        batch_size: images per forward/backward pass; larger batches are explained in slices of
            this size (same maps, bounded memory). None: the whole batch in one pass.
        layout: how the layer's output is read: None/``"auto"`` (detected), ``"nchw"``, ``"nhwc"``
            or ``"tokens"``.
        reshape: a function ``activation -> [B, C, h, w]`` for any other layout (applied to the
            gradient too); overrides ``layout``.

    Example:
        >>> from torchvision.models import resnet18
        >>> explain = CAM(resnet18(num_classes=10), "layer4", "gradcam++")
        >>> r = explain(torch.randn(2, 3, 64, 64), targets=[3, 7])
        >>> r.maps.shape, r.raw.shape, r.targets.tolist()
        (torch.Size([2, 1, 64, 64]), torch.Size([2, 1, 2, 2]), [3, 7])
    """

    def __init__(
        self,
        model: nn.Module,
        layer: LayerSpec | Sequence[str | nn.Module] = None,
        method: str | CAMMethod = "gradcam",
        *,
        score: Score = "logit",
        fuse: Fuse = "mean",
        chunk_size: int = 32,
        batch_size: int | None = DEFAULT_BATCH_SIZE,
        layout: str | None = None,
        reshape: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        check_score(score)
        check_batch_size(batch_size)
        if fuse not in ("mean", "max"):
            raise ValueError(f"fuse must be 'mean' or 'max', got {fuse!r}")
        self.model = model
        self.layer = layer
        self.rollout = rollout_method_name(method) if isinstance(method, str) else None
        self.method = get_method(method, chunk_size) if self.rollout is None else None
        self.score = score
        self.fuse = fuse
        self.batch_size = batch_size
        self.layout: LayoutSpec = reshape if reshape is not None else layout
        check_layout_spec(self.layout)

    def __call__(self, images: Tensor, targets: Targets = None) -> CAMResult:
        """Explain ``images`` ``[B, C, H, W]`` for ``targets`` (None: argmax, an int, or one per image)."""
        return self.explain_with_labels(images, targets)[0]

    def explain_with_labels(
        self, images: Tensor, targets: Targets = None, labels: Tensor | None = None
    ) -> tuple[CAMResult, TrueRows | None]:
        """As a call, plus the maps of ``labels`` (int ``[B]``, ``< 0`` unknown) for the rows whose label is
        not the explained class, made from the same pass's graph where that is cheaper than a pass of their
        own (see :mod:`lit_explain.explain._true_rows`); None where it is not (or for gradient-free methods).
        """
        if self.rollout is not None:
            r = attention_rollout(
                self.model, images, targets, self.rollout, score=self.score, batch_size=self.batch_size
            )
            return CAMResult(r.maps, r.raw[:, None], r.logits, r.targets, r.layers, r.method), None
        net = unwrap_model(self.model)
        with grad_session():
            x = prepare_images(images, model_device(net, images))
            layers = resolve_layers(self.model, self.layer, x)
            parts, shared = [], []
            for start, xs, ts, rows in labelled_slices(x, targets, labels, self.batch_size):
                part, true_rows = self._explain_slice(net, layers, xs, ts, rows)
                parts.append(part)
                shared.append((start, true_rows))
        return concat_results(parts), TrueRows.concat(shared)

    def _explain_slice(
        self,
        net: nn.Module,
        layers: list[tuple[str, nn.Module]],
        x: Tensor,
        targets: Targets,
        labels: Tensor | None,
    ) -> tuple[CAMResult, TrueRows | None]:
        method = self.method
        assert method is not None
        names = [name for name, _ in layers]
        true_rows = None
        with LayerCapture(
            self.model, [m for _, m in layers], names=names, graph_from_layer=method.uses_gradients
        ) as cap:
            if method.uses_gradients:
                logits = cap.forward(x)
                chosen = resolve_targets(targets, logits)
                true_rows = true_rows_from_graph(
                    cap, net, method, x, logits, chosen, labels, self.score, self.fuse, self.layout
                )
                grads: Sequence[Tensor | None] = cap.gradients(
                    target_scores(logits, chosen, self.score).sum()
                )
            else:
                with torch.no_grad():
                    logits = cap.forward(x)
                chosen = resolve_targets(targets, logits)
                grads = [None] * len(layers)
            cap.recording = False  # scorecam's masked forwards must not overwrite the capture
            acts = [a.detach() for a in cap.activations if a is not None]
            acts, grads = apply_layouts(net, names, acts, grads, tuple(x.shape[-2:]), self.layout)
            result = build_result(
                net, method, x, acts, grads, logits.detach(), chosen, names, self.score, self.fuse
            )
            return result, true_rows

    def __repr__(self) -> str:
        method = self.method if self.rollout is None else self.rollout
        return f"CAM(layer={self.layer!r}, method={method!r}, score={self.score!r}, fuse={self.fuse!r})"


def cam(
    model: nn.Module,
    images: Tensor,
    layer: LayerSpec | Sequence[str | nn.Module] = None,
    targets: Targets = None,
    method: str | CAMMethod = "gradcam",
    *,
    score: Score = "logit",
    fuse: Fuse = "mean",
    chunk_size: int = 32,
    batch_size: int | None = DEFAULT_BATCH_SIZE,
    layout: str | None = None,
    reshape: Callable[[Tensor], Tensor] | None = None,
) -> CAMResult:
    """Explain a batch in one call; see :class:`CAM` for the arguments and :class:`CAMResult` for the result.

    Example:
        >>> from torchvision.models import resnet18
        >>> r = cam(resnet18(num_classes=10), torch.randn(4, 3, 67, 45), layer="layer4", method="layercam")
        >>> r.maps.shape, r.maps.dtype, float(r.maps.min()) >= 0.0, float(r.maps.max()) <= 1.0
        (torch.Size([4, 1, 67, 45]), torch.float32, True, True)
    """
    explainer = CAM(
        model,
        layer,
        method,
        score=score,
        fuse=fuse,
        chunk_size=chunk_size,
        batch_size=batch_size,
        layout=layout,
        reshape=reshape,
    )
    return explainer(images, targets)


def apply_layouts(
    net: nn.Module,
    names: Sequence[str],
    activations: Sequence[Tensor],
    gradients: Sequence[Tensor | None],
    image_size: tuple[int, int],
    spec: LayoutSpec,
) -> tuple[list[Tensor], list[Tensor | None]]:
    """Each layer's activation and gradient as ``[B, C, h, w]`` (one layout per layer, detected once).

    Raises :class:`~lit_explain.explain.layouts.ZeroGradientError` for a token layer the score does
    not reach through any patch token (a ViT's final norm), naming the layer the family rule picks.
    """
    acts: list[Tensor] = []
    grads: list[Tensor | None] = []
    for name, act, grad in zip(names, activations, gradients, strict=True):
        layout = detect_layout(net, name, act, image_size, spec)
        if grad is not None:
            try:
                layout.check_gradient(grad, name, "")
            except ZeroGradientError:
                # The hint walks every module of the network: only worth it for the error message.
                auto = family_layer(net)
                hint = f", e.g. {auto!r}" if auto and auto != name else ""
                layout.check_gradient(grad, name, hint)
                raise
        acts.append(layout(act))
        grads.append(None if grad is None else layout(grad))
    return acts, grads


def true_rows_from_graph(
    cap: LayerCapture,
    net: nn.Module,
    method: CAMMethod,
    x: Tensor,
    logits: Tensor,
    chosen: Tensor,
    labels: Tensor | None,
    score: str,
    fuse: str,
    layout: LayoutSpec,
) -> TrueRows | None:
    """The maps of ``labels`` for the misclassified rows, from the graph of ``cap``'s forward pass (kept for
    the caller's own backward passes), when :func:`~lit_explain.explain._true_rows.rows_to_share` says so."""
    rows = rows_to_share(labels, chosen)
    if rows is None:
        return None
    wanted = labels.to(chosen.device)[rows]  # type: ignore[union-attr]
    grads = cap.gradients(target_scores(logits[rows], wanted, score).sum(), retain_graph=True)
    acts = [a.detach()[rows] for a in cap.activations if a is not None]
    acts, picked = apply_layouts(net, cap.names, acts, [g[rows] for g in grads], tuple(x.shape[-2:]), layout)
    result = build_result(
        net, method, x.detach()[rows], acts, picked, logits.detach()[rows], wanted, cap.names, score, fuse
    )
    return TrueRows(rows=rows, maps=result.maps)


def concat_results(parts: Sequence[CAMResult]) -> CAMResult:
    """One :class:`CAMResult` from the results of consecutive slices of a batch."""
    first = parts[0]
    if len(parts) == 1:
        return first
    if isinstance(first.raw, tuple):
        raw: Tensor | tuple[Tensor, ...] = tuple(
            torch.cat([p.raw[i] for p in parts])
            for i in range(len(first.raw))  # type: ignore[index]
        )
    else:
        raw = torch.cat([p.raw for p in parts])  # type: ignore[misc]
    return CAMResult(
        maps=torch.cat([p.maps for p in parts]),
        raw=raw,
        logits=torch.cat([p.logits for p in parts]),
        targets=torch.cat([p.targets for p in parts]),
        layers=first.layers,
        method=first.method,
    )


def build_result(
    net: nn.Module,
    method: CAMMethod,
    images: Tensor,
    activations: Sequence[Tensor],
    gradients: Sequence[Tensor | None],
    logits: Tensor,
    targets: Tensor,
    names: Sequence[str],
    score: str,
    fuse: str,
) -> CAMResult:
    """Weigh each layer, then ReLU, upsample, normalise and fuse (model in eval mode, hooks off)."""
    device_type = images.device.type
    ambient = autocast_state(device_type)

    def score_fn(batch: Tensor, chosen: Tensor) -> Tensor:
        with torch.no_grad(), autocast_as(device_type, ambient):
            out = net(batch)
        return target_scores(out, chosen, score).float()

    ctx = MethodContext(images=images, targets=targets, score=score_fn)
    size = (images.shape[-2], images.shape[-1])
    raws: list[Tensor] = []
    with torch.no_grad(), no_autocast(device_type):
        for act, grad in zip(activations, gradients, strict=True):
            signed = method.weigh(act.float(), None if grad is None else grad.float(), ctx)
            raws.append(signed.nan_to_num(0.0).clamp_min(0.0)[:, None])
        if len(raws) == 1:
            maps = minmax(upsample(raws[0], size))
        else:
            stacked = torch.stack([upsample(minmax(raw), size) for raw in raws])
            maps = minmax(stacked.amax(dim=0) if fuse == "max" else stacked.mean(dim=0))
    return CAMResult(
        maps=maps,
        raw=raws[0] if len(raws) == 1 else tuple(raws),
        logits=logits.float(),
        targets=targets,
        layers=tuple(names),
        method=method.name,
    )
