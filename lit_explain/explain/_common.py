"""Small tensor helpers shared by cam.py, guided.py and metrics.py."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Targets = int | Sequence[int] | Tensor | None
Score = Literal["logit", "prob"]
SCORES: tuple[str, ...] = ("logit", "prob")


@contextmanager
def grad_session() -> Iterator[None]:
    """Autograd on, even when the caller is inside ``torch.no_grad()`` or ``torch.inference_mode()``."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def model_device(net: nn.Module, images: Tensor) -> torch.device:
    """The device of the model's first parameter or buffer, else the images' device."""
    first = next(itertools.chain(net.parameters(), net.buffers()), None)
    return first.device if first is not None else images.device


def prepare_images(images: Tensor, device: torch.device) -> Tensor:
    """Check the batch and move it to ``device``; inference tensors are cloned into normal ones."""
    if not isinstance(images, Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a [B, C, H, W] tensor, got {shape}")
    if not images.is_floating_point():
        raise TypeError(f"images must be floating point, got {images.dtype}")
    x = images.to(device)
    # Inference tensors cannot be recorded by autograd, and .to() on the same device returns them as is.
    return x.clone() if x.is_inference() else x


def check_score(score: str) -> None:
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")


def resolve_targets(targets: Targets, logits: Tensor) -> Tensor:
    """int64 ``[B]`` class indices on the logits' device: argmax, one class for all, or one per sample."""
    if logits.ndim != 2:
        raise ValueError(f"the model must return logits [B, num_classes], got shape {tuple(logits.shape)}")
    batch, classes = logits.shape
    if targets is None:
        return logits.detach().argmax(dim=1)
    if isinstance(targets, bool):
        raise TypeError("targets must be None, an int, or one int per sample")
    if isinstance(targets, int):
        out = torch.full((batch,), targets, dtype=torch.int64, device=logits.device)
    else:
        out = torch.as_tensor(targets, device=logits.device)
        if out.is_floating_point() or out.dtype == torch.bool:
            raise TypeError(f"targets must be integers, got {out.dtype}")
        out = out.to(torch.int64).reshape(-1)
        if out.is_inference():
            # Targets made under torch.inference_mode (Lightning's validate/test) cannot be saved for the
            # backward of the gather that picks the scores; a normal copy can.
            out = out.clone()
        if out.numel() == 1 and batch != 1:
            out = out.expand(batch).clone()
        if out.numel() != batch:
            raise ValueError(f"got {out.numel()} targets for a batch of {batch}")
    if bool(((out < 0) | (out >= classes)).any()):
        raise ValueError(f"targets must lie in [0, {classes}), got {out.tolist()}")
    return out


def split_batch(images: Tensor, targets: Targets, batch_size: int | None) -> list[tuple[Tensor, Targets]]:
    """Consecutive ``(images, targets)`` slices of at most ``batch_size`` images (None: one slice).

    Per-sample targets are checked against the whole batch once and sliced with the images; None, an
    int or a single target apply to every slice as they are.
    """
    batch = images.shape[0]
    if batch_size is None or batch <= batch_size:
        return [(images, targets)]
    bounds = [(start, min(start + batch_size, batch)) for start in range(0, batch, batch_size)]
    if targets is None or isinstance(targets, int):  # bool too: resolve_targets rejects it per slice
        return [(images[a:b], targets) for a, b in bounds]
    flat = torch.as_tensor(targets).reshape(-1)
    if flat.numel() == 1:
        return [(images[a:b], flat) for a, b in bounds]
    if flat.numel() != batch:
        raise ValueError(f"got {flat.numel()} targets for a batch of {batch}")
    return [(images[a:b], flat[a:b]) for a, b in bounds]


def target_scores(logits: Tensor, targets: Tensor, score: str) -> Tensor:
    """Per-sample score of the target class: the logit, or the softmax probability."""
    if score == "prob":
        return logits.float().softmax(dim=1).gather(1, targets[:, None])[:, 0]
    return logits.gather(1, targets[:, None])[:, 0]


def autocast_state(device_type: str) -> tuple[bool, torch.dtype | None]:
    """Whether autocast is on for ``device_type`` and with which dtype (so it can be re-entered)."""
    try:
        return torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)
    except (TypeError, RuntimeError):  # torch < 2.4, or a device type autocast does not know
        return False, None


@contextmanager
def autocast_as(device_type: str, state: tuple[bool, torch.dtype | None]) -> Iterator[None]:
    """Re-enter the caller's autocast state (used for model forwards inside no_autocast blocks)."""
    enabled, dtype = state
    if not enabled:
        with no_autocast(device_type):
            yield
        return
    with torch.autocast(device_type, dtype=dtype, enabled=True):
        yield


@contextmanager
def no_autocast(device_type: str) -> Iterator[None]:
    """Autocast off, so CAM arithmetic stays float32 under a bf16/fp16 autocast region."""
    try:
        ctx = torch.autocast(device_type, enabled=False)
    except RuntimeError:  # a device type without autocast support: nothing to turn off
        yield
        return
    with ctx:
        yield


def minmax(maps: Tensor) -> Tensor:
    """Min-max normalise each ``[B, 1, H, W]`` map to [0, 1]; constant (or non-finite) maps become 0."""
    lo = maps.amin(dim=(2, 3), keepdim=True)
    hi = maps.amax(dim=(2, 3), keepdim=True)
    span = hi - lo
    ok = span > 0
    out = (maps - lo) / torch.where(ok, span, torch.ones_like(span))
    out = torch.where(ok, out, torch.zeros_like(out))
    return out.nan_to_num_(0.0).clamp_(0.0, 1.0)


def upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of ``[B, 1, h, w]`` maps (align_corners=False, like cv2.resize)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
