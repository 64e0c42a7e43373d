"""Explain a batch for the callbacks and lay it out as captioned pages: image | CAM pred | CAM true | Guided.

Also what the callbacks write next to each sample (where it comes from, what it was predicted as) and the
sizes that keep every page readable at TensorBoard's default card size.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from lit_explain.errors import ConfigError
from lit_explain.explain import (
    LayerNotFoundError,
    NoReluError,
    cam,
    guided_gradcam,
    is_rollout_method,
    resolve_layers,
)
from lit_explain.explain.true_class import true_class_maps
from lit_explain.render import colorbar, denormalize, guided_to_image, overlay, panel_pages, to_rgb
from lit_explain.render.card import CARD_IMAGE_PX, MAX_PAGE_PX, MIN_TEXT_PX

MAX_CELL_PX = 160
PAD = 2
TEXT_HEIGHT_RATIO = 0.9
METHOD_LABELS = {
    "gradcam": "Grad-CAM",
    "gradcam++": "Grad-CAM++",
    "xgradcam": "XGrad-CAM",
    "hirescam": "HiResCAM",
    "layercam": "LayerCAM",
    "eigencam": "Eigen-CAM",
    "scorecam": "Score-CAM",
    "rollout": "Rollout",
    "gradient_rollout": "Grad. rollout",
}


@dataclass(frozen=True)
class Explained:
    """Explanations of one batch (all on the model's device).

    Attributes:
        probs: float32 ``[B, num_classes]`` from the explanation's own forward pass (eval mode).
        preds: int64 ``[B]`` predicted classes.
        pred_maps / true_maps: float32 ``[B, 1, H, W]`` CAMs of the predicted and of the true class.
        guided: float32 ``[B, C, H, W]`` Guided Grad-CAM of the predicted class; None for models without
            ReLUs (GELU/SiLU: ViTs, ConvNeXt, EfficientNet) and for the attention-rollout methods.
    """

    probs: Tensor
    preds: Tensor
    pred_maps: Tensor
    true_maps: Tensor
    guided: Tensor | None


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
        predicted, guided = _predicted_class(net, images, layer, method)
        true_maps = true_class_maps(net, images, labels, predicted, layer=layer, method=method)
    return Explained(
        probs=predicted.logits.float().softmax(dim=1),
        preds=predicted.targets,
        pred_maps=predicted.maps,
        true_maps=true_maps,
        guided=guided,
    )


# Networks whose guided pass found no ReLU (weakly held: a network that is freed leaves the set).
_NETS_WITHOUT_RELU: weakref.WeakSet[nn.Module] = weakref.WeakSet()


def _predicted_class(
    net: nn.Module, images: Tensor, layer: str | list[str] | None, method: str
) -> tuple[Any, Tensor | None]:
    """The predicted-class CAM and, where the model allows it, Guided Grad-CAM from the same pass.

    Guided backprop is defined through ReLUs and Guided Grad-CAM through a CAM layer: GELU/SiLU models and
    the rollout methods get the CAM alone, instead of a failed run. A network found without ReLUs is
    remembered, so the warning comes once per network (not per epoch and callback) and later calls skip
    the guided attempt.
    """
    if is_rollout_method(method) or net in _NETS_WITHOUT_RELU:
        return cam(net, images, layer=layer, targets=None, method=method), None
    try:
        result = guided_gradcam(net, images, layer=layer, targets=None, method=method)
    except NoReluError as err:
        _NETS_WITHOUT_RELU.add(net)
        rank_zero_warn(f"the Guided Grad-CAM column is left out: {err}")
        return cam(net, images, layer=layer, targets=None, method=method), None
    return result.cam, result.guided


def display_images(images: Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> Tensor:
    """Model-space images -> ``[0, 1]`` RGB; per-image min-max when the normalisation is unknown."""
    x = images.detach().float()
    if mean is not None and std is not None:
        return to_rgb(denormalize(x, mean, std))
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    return to_rgb((x - lo) / (hi - lo).clamp_min(1e-12))


def render_pages(
    images01: Tensor,
    explained: Explained,
    captions: Sequence[str],
    correct: Tensor,
    method: str = "gradcam",
    alpha: float = 0.5,
    cmap: str = "jet",
    min_cell: int = 128,
) -> list[Tensor]:
    """Rows of image | CAM predicted | CAM true (misclassified rows only) | Guided Grad-CAM, as pages.

    Each page is uint8 ``[3, H, W]`` with ``H <= MAX_PAGE_PX``, repeats the column titles and ends with a
    colour bar, and its text is at least ``MIN_TEXT_PX`` tall when TensorBoard shows the page at its
    narrowest card width (``CARD_IMAGE_PX``). The true-class column appears only when some row is
    misclassified, and then only in those rows. Images larger than ``MAX_CELL_PX`` are shown downscaled
    (TensorBoard would shrink them to the card anyway).
    """
    device = explained.pred_maps.device
    images01 = _fit_cells(images01.to(device))
    pred_maps, true_maps = _fit_cells(explained.pred_maps), _fit_cells(explained.true_maps)
    wrong = (~correct.to(device).bool()).tolist()
    pred = overlay(images01, pred_maps, alpha=alpha, cmap=cmap)
    true = overlay(images01, true_maps, alpha=alpha, cmap=cmap) if any(wrong) else None
    guided = _fit_cells(guided_to_image(explained.guided)) if explained.guided is not None else None
    label = METHOD_LABELS.get(method, method)
    # Short titles fit a cell at the readable font size; the colour bar names the method.
    titles = ["image", "predicted"]
    if true is not None:
        titles.append("true class")
    if guided is not None:
        titles.append("guided")
    rows = []
    for i in range(images01.shape[0]):
        row = [images01[i], pred[i]]
        if true is not None:
            row.append(true[i] if wrong[i] else None)
        if guided is not None:
            row.append(guided[i])
        rows.append(row)
    cell = _cell_px(tuple(images01.shape[-2:]), min_cell)
    width = len(titles) * cell[1] + (len(titles) + 1) * PAD
    font_px = readable_font_px(width)
    footer = colorbar(width, cmap, label=f"{label} (per-map peak = 1)", font_size=font_px)
    return panel_pages(
        rows,
        list(captions),
        titles,
        max_height=MAX_PAGE_PX,
        footer=footer,
        font_size=font_px,
        caption_colors=correct.cpu(),
        min_cell=min_cell,
        pad=PAD,
    )


def readable_font_px(width: int) -> int:
    """The font size that stays ``MIN_TEXT_PX`` tall when a ``width``-px picture is shown ``CARD_IMAGE_PX`` wide.

    Example:
        >>> readable_font_px(320), readable_font_px(394), readable_font_px(640)
        (13, 16, 25)
    """
    # PIL's text is about 0.9 of the font size from ascender to descender: round up past it.
    return max(12, math.ceil(MIN_TEXT_PX * max(width, CARD_IMAGE_PX) / CARD_IMAGE_PX / TEXT_HEIGHT_RATIO))


def _cell_px(size: tuple[int, int], min_cell: int) -> tuple[int, int]:
    """A grid cell's (height, width) for images of ``size``, as panel_grid upscales them (nearest)."""
    short = min(size)
    factor = math.ceil(min_cell / short) if 0 < short < min_cell else 1
    return size[0] * factor, size[1] * factor


def _fit_cells(x: Tensor) -> Tensor:
    """Downscale ``[B, C, H, W]`` so the short side is at most ``MAX_CELL_PX`` (antialiased)."""
    short = min(x.shape[-2:])
    if short <= MAX_CELL_PX:
        return x
    size = [round(s * MAX_CELL_PX / short) for s in x.shape[-2:]]
    return F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False, antialias=True)


def page_tags(tag: str, n_pages: int) -> list[str]:
    """``tag/page_0``, ``tag/page_1``, ... (zero-padded when there are ten or more pages, so they sort).

    Example:
        >>> page_tags("explain/probes", 3)
        ['explain/probes/page_0', 'explain/probes/page_1', 'explain/probes/page_2']
    """
    digits = len(str(n_pages - 1))
    return [f"{tag}/page_{i:0{digits}d}" for i in range(n_pages)]


def sample_sources(trainer: Any, split: str, indices: Sequence[int]) -> list[str]:
    """Where each sample of a split comes from: its file relative to the data root, else ``idx N``.

    Data modules may say it themselves with ``sample_source(split, index)``; otherwise datasets of image
    records (``dataset.records[i].path``) give the file, relative to ``datamodule.root`` when under it,
    and generated data (the shapes) or plain datasets give the dataset index. ``-1`` (unknown) -> ``?``.
    """
    dm = getattr(trainer, "datamodule", None)
    own = getattr(dm, "sample_source", None)
    records, root = None, getattr(dm, "root", None)
    if own is None and dm is not None and hasattr(dm, "dataset"):
        try:
            records = getattr(dm.dataset(split), "records", None)
        except (ValueError, KeyError, IndexError):  # a split the module does not have
            records = None
    out = []
    for index in indices:
        i = int(index)
        if i < 0:
            out.append("?")
        elif own is not None:
            out.append(str(own(split, i)))
        elif records is not None and 0 <= i < len(records) and hasattr(records[i], "path"):
            out.append(_relative(Path(records[i].path), root))
        else:
            out.append(f"idx {i}")
    return out


def _relative(path: Path, root: Any) -> str:
    if root is not None:
        try:
            return path.resolve().relative_to(Path(root).resolve()).as_posix()
        except ValueError:  # outside the root: the path as the data module holds it
            pass
    return path.as_posix()


def prediction_line(names: Sequence[str], label: int, pred: int, confidence: float) -> str:
    """``true: circle · pred: ring (confidence 0.53)``; ``true: ?`` for an unknown label.

    Example:
        >>> prediction_line(["circle", "ring"], 0, 1, 0.531)
        'true: circle · pred: ring (confidence 0.53)'
    """
    true = class_name(names, label) if label >= 0 else "?"
    return f"true: {true} · pred: {class_name(names, pred)} (confidence {confidence:.2f})"


def class_name(names: Sequence[str], index: int) -> str:
    return names[index] if 0 <= index < len(names) else str(index)


def explained_net(pl_module: Any) -> nn.Module:
    """The plain network the callbacks explain: ``pl_module.net`` when there is one, else the module."""
    net = getattr(pl_module, "net", None)
    return pl_module if net is None else net


def explain_layers(pl_module: Any, layer: str | list[str] | None) -> str | list[str] | None:
    """The configured layer(s), or the model's own default (``default_explain_layers``) when None.

    None stays None (the engine's automatic choice) for models without a default.
    """
    if layer is not None:
        return layer
    try:
        default = getattr(pl_module, "default_explain_layers", None)
    except ConfigError:  # the network is not built yet
        return None
    return list(default) if default else None


def check_explain_settings(
    owner: str, pl_module: Any, stage: str | None, layer: str | list[str] | None, method: str
) -> None:
    """Refuse, at ``setup``, a method the engine does not have or a layer the model does not have.

    The message names the valid candidates. A lit_explain model builds its network from the data module
    in its own ``setup``, which Lightning calls after the callbacks'; that build is idempotent, so it is
    done here already to check the layers before the first batch instead of after an epoch.
    """
    methods = _known_methods()
    if method not in methods:
        raise ConfigError(
            f"{owner}: method={method!r} is not an explanation method; choose one of {', '.join(methods)}"
        )
    if getattr(pl_module, "net", False) is None and hasattr(pl_module, "adopt_data_metadata"):
        pl_module.setup(stage or "fit")
    net = explained_net(pl_module)
    chosen = explain_layers(pl_module, layer)
    if chosen is None:
        return
    names = [chosen] if isinstance(chosen, str) else list(chosen)
    try:
        resolve_layers(net, names)
    except LayerNotFoundError as exc:
        raise ConfigError(
            f"{owner}: layer={layer!r}: {exc} Fix `layer` in the callback's init_args, or leave it unset "
            "for the model's default"
        ) from None


def _known_methods() -> list[str]:
    from lit_explain import explain

    return list(getattr(explain, "METHODS", []))
