"""The shortcut test: is the model's evidence in a fixed image region that does not depend on the content?

Two measurements on a small sample of validation images, no masks needed:

1. *Shared peak* (where): the peak of each image's predicted-class map. A shortcut (a watermark, a corner
   stamp) puts the peaks of images of *different* classes in the same small box (1/8 of the image side);
   evidence that follows the object spreads them over the object's extent, even for objects centred in
   every photo. ``share`` is the fraction of images whose peak falls in the densest such box.
2. *Transplant* (whether it matters): paste the region around those peaks (their bounding box plus 1/8 of
   the side) from an image into an image the model assigns to another class, and count how often the
   prediction becomes the donor's. A content-independent cue carries the class with it; a piece of an
   object rarely does. The same count with boxes of the same size elsewhere in the image is the control.

``score = share * max(0, follow - control_follow)``, in [0, 1]; the alarm fires at ``score >= threshold``.
The occlusion drops (mean-fill the box, random boxes of the same size, each image's own top evidence) are
measured too (the audit reports them); they do not enter the score: occluding a centred object's box drops
the confidence as a stamp's does (docs/benchmarks.md, "Shortcut alarm").

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(3)).eval()
    >>> images, maps = torch.randn(8, 3, 32, 32), torch.rand(8, 1, 32, 32)
    >>> ev = shortcut_test(net, images, maps, net(images).argmax(1))
    >>> 0.0 <= ev.score <= 1.0 and len(ev.region) == 4
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lit_explain.explain import cam, eval_mode, fast_layout
from lit_explain.findings.store import Finding
from lit_explain.render import overlay, panel_grid

Forward = Callable[[Tensor], Tensor]  # images [B, C, H, W] -> logits [B, num_classes]

DEFAULT_THRESHOLD = 0.15  # docs/benchmarks.md, "Shortcut alarm": clean runs <= 0.03, shortcut runs >= 0.3
GRID = 16  # the peak grid: cells of 1/16 of the image side; the shared box is WINDOW x WINDOW cells
WINDOW = 2
PAD = 2.0  # cells of margin around the peaks' bounding box, for the transplanted region
CONTROL_BOXES = 4
MIN_IMAGES = 8


@dataclass(frozen=True)
class ShortcutEvidence:
    """The numbers of one shortcut test; ``region`` is ``[x0, y0, x1, y1]`` in input pixels (x1, y1 exclusive).

    Example:
        >>> ev = ShortcutEvidence(score=0.8, region=[0, 0, 12, 12], image_size=(64, 64), share=0.9, classes=6,
        ...                       follow=0.9, control_follow=0.02, n_images=64)
        >>> ev.where
        'top-left corner'
    """

    score: float
    region: list[int]
    image_size: tuple[int, int]  # (H, W)
    share: float
    classes: int
    follow: float
    control_follow: float
    n_images: int
    pairs: int = 0
    occlusion_drop: float = 0.0
    control_drop: float = 0.0
    own_drop: float = 0.0

    @property
    def where(self) -> str:
        return describe_region(self.region, self.image_size)

    def fires(self, threshold: float = DEFAULT_THRESHOLD) -> bool:
        return self.score >= threshold

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["image_size"] = list(self.image_size)
        out["where"] = self.where
        return out


def shortcut_sample(datamodule: Any, size: int = 48, split: str = "val") -> tuple[Tensor, Tensor]:
    """A fixed, class-balanced sample of a lit_explain data module's ``split``: ``(images, labels)`` on the CPU.

    The same images every epoch and in the audit (the data module's ``probe_indices``, dataset order only).
    """
    per_class = max(1, math.ceil(size / max(1, len(datamodule.class_names))))
    indices = datamodule.probe_indices(per_class=per_class, max_total=size, split=split)
    batch = datamodule.samples(indices, split=split)
    return batch["image"], torch.as_tensor(batch["label"]).long()


def predicted_maps(
    net: nn.Module, images: Tensor, layer: str | Sequence[str] | None = None, method: str = "layercam"
) -> tuple[Tensor, Tensor]:
    """Predicted-class maps ``[N, 1, H, W]`` and logits ``[N, num_classes]`` of ``net``, in one engine call.

    The batch goes in channels-last on the CPU (:func:`~lit_explain.explain.fast_layout`), as ProbeHeatmaps
    explains it, so the callback decides the same from its own maps as from the probes' shared ones.
    """
    result = cam(
        net,
        fast_layout(images),
        layer=layer if layer is None or isinstance(layer, str) else list(layer),
        method=method,
    )
    return result.maps, result.logits


def describe_region(region: Sequence[int], image_size: tuple[int, int]) -> str:
    """Name where a box is: ``"top-left corner"``, ``"left edge"``, ``"centre"`` (by thirds of the image).

    Example:
        >>> describe_region([52, 52, 64, 64], (64, 64)), describe_region([28, 2, 36, 10], (64, 64))
        ('bottom-right corner', 'top edge')
    """
    height, width = image_size
    cx, cy = (region[0] + region[2]) / 2, (region[1] + region[3]) / 2
    horizontal = "left" if cx < width / 3 else "right" if cx > 2 * width / 3 else ""
    vertical = "top" if cy < height / 3 else "bottom" if cy > 2 * height / 3 else ""
    if horizontal and vertical:
        return f"{vertical}-{horizontal} corner"
    if horizontal or vertical:
        return f"{horizontal or vertical} edge"
    return "centre"


def peak_positions(maps: Tensor) -> Tensor:
    """``[B, 2]`` (y, x) of each map's maximum; maps ``[B, 1, H, W]`` or ``[B, H, W]``."""
    flat = maps.reshape(maps.shape[0], -1)
    width = maps.shape[-1]
    index = flat.argmax(dim=1)
    return torch.stack([index // width, index % width], dim=1)


def shared_region(
    maps: Tensor, preds: Tensor, grid: int = GRID, window: int = WINDOW, pad: float = PAD
) -> tuple[list[int], float, int]:
    """The densest box of map peaks: ``(region, share, distinct predicted classes among its images)``.

    Peaks are counted in every ``window x window`` block of a ``grid x grid`` grid (stride one cell). The
    region is the bounding box of the peaks inside the densest block, padded by ``pad`` cells and at least one
    cell wide, so a tight cluster (a stamp) gives a small box and scattered peaks the whole block.
    """
    height, width = maps.shape[-2:]
    peaks = peak_positions(maps).cpu()
    cell_h, cell_w = max(1, height // grid), max(1, width // grid)
    cy = (peaks[:, 0] // cell_h).clamp(max=grid - 1)
    cx = (peaks[:, 1] // cell_w).clamp(max=grid - 1)
    counts = torch.zeros(grid, grid)
    counts.index_put_((cy, cx), torch.ones(len(peaks)), accumulate=True)
    blocks = counts.unfold(0, window, 1).unfold(1, window, 1).sum(dim=(-1, -2))  # [grid-w+1, grid-w+1]
    best = int(blocks.argmax())
    by, bx = divmod(best, blocks.shape[1])
    inside = (cy >= by) & (cy < by + window) & (cx >= bx) & (cx < bx + window)
    share = float(inside.float().mean())
    classes = int(preds.cpu()[inside].unique().numel())
    ys, xs = peaks[inside, 0], peaks[inside, 1]
    pad_h, pad_w = max(1, round(cell_h * pad)), max(1, round(cell_w * pad))
    y0, y1 = int(ys.min()) - pad_h, int(ys.max()) + 1 + pad_h
    x0, x1 = int(xs.min()) - pad_w, int(xs.max()) + 1 + pad_w
    y0, x0 = max(0, min(y0, y1 - cell_h)), max(0, min(x0, x1 - cell_w))
    return [x0, y0, min(width, max(x1, x0 + cell_w)), min(height, max(y1, y0 + cell_h))], share, classes


def donor_pairs(preds: Tensor) -> Tensor:
    """``[P, 2]`` (recipient, donor) pairs: each image with the next one (cyclically) of another prediction."""
    labels = preds.tolist()
    pairs = []
    for i, label in enumerate(labels):
        for step in range(1, len(labels)):
            j = (i + step) % len(labels)
            if labels[j] != label:
                pairs.append((i, j))
                break
    return torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)


def control_boxes(
    region: Sequence[int], image_size: tuple[int, int], count: int = CONTROL_BOXES, seed: int = 0
) -> list[list[int]]:
    """``count`` boxes of the region's size elsewhere: drawn with a fixed seed, none touching the region.

    Falls back to fewer boxes when the image has no room (a region covering most of the image).
    """
    height, width = image_size
    x0, y0, x1, y1 = region
    bw, bh = x1 - x0, y1 - y0
    generator = torch.Generator().manual_seed(seed)
    boxes: list[list[int]] = []
    for _ in range(50 * count):
        if len(boxes) == count:
            break
        bx = int(torch.randint(0, width - bw + 1, (1,), generator=generator))
        by = int(torch.randint(0, height - bh + 1, (1,), generator=generator))
        if bx < x1 + bw // 2 and bx + bw > x0 - bw // 2 and by < y1 + bh // 2 and by + bh > y0 - bh // 2:
            continue  # touches the region (with half a box of margin): not a control
        boxes.append([bx, by, bx + bw, by + bh])
    return boxes


def transplant(images: Tensor, pairs: Tensor, region: Sequence[int]) -> Tensor:
    """The recipients with the donors' ``region`` pasted in: ``[P, C, H, W]``."""
    x0, y0, x1, y1 = region
    out = images[pairs[:, 0]].clone()
    out[..., y0:y1, x0:x1] = images[pairs[:, 1]][..., y0:y1, x0:x1]
    return out


def occlude(images: Tensor, boxes: Tensor) -> Tensor:
    """Each image with its own box (``[B, 4]``) filled with that image's per-channel mean."""
    out = images.clone()
    mean = images.mean(dim=(-1, -2), keepdim=True)
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        out[i, :, y0:y1, x0:x1] = mean[i]
    return out


def _chunked(forward: Forward, images: Tensor, batch_size: int = 64) -> Tensor:
    return torch.cat([forward(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


def follow_rate(
    forward: Forward, images: Tensor, preds: Tensor, pairs: Tensor, region: Sequence[int]
) -> float:
    """How often a recipient's prediction becomes its donor's once the donor's ``region`` is pasted in."""
    if len(pairs) == 0:
        return 0.0
    moved = _chunked(forward, transplant(images, pairs, region)).argmax(1).cpu()
    return float((moved == preds.cpu()[pairs[:, 1]]).float().mean())


def _confidence_drop(forward: Forward, images: Tensor, preds: Tensor, base: Tensor, boxes: Tensor) -> float:
    probs = _chunked(forward, occlude(images, boxes)).softmax(1).cpu()
    return float((base - probs.gather(1, preds.cpu()[:, None])[:, 0]).mean())


def own_boxes(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """``[B, 4]`` boxes of ``size`` (h, w) centred on each map's peak (clipped inside the image)."""
    height, width = maps.shape[-2:]
    bh, bw = size
    peaks = peak_positions(maps).cpu()
    y0 = (peaks[:, 0] - bh // 2).clamp(0, height - bh)
    x0 = (peaks[:, 1] - bw // 2).clamp(0, width - bw)
    return torch.stack([x0, y0, x0 + bw, y0 + bh], dim=1)


@torch.no_grad()
def shortcut_test(
    forward: Forward,
    images: Tensor,
    maps: Tensor,
    preds: Tensor,
    controls: int = CONTROL_BOXES,
    occlusion: bool = True,
    gate: float = 0.0,
    grid: int = GRID,
    window: int = WINDOW,
    pad: float = PAD,
) -> ShortcutEvidence:
    """Run the shortcut test on one sample: ``images`` as the model takes them, their predicted-class
    ``maps`` ([B, 1, H, W]) and predictions ``preds`` ([B]). ``forward`` maps images to logits: a network
    (run in eval mode, its train/eval flags restored) or any callable; called without autograd. Costs ``P * (1 + controls)`` forwards for the transplants
    (``P <= B`` pairs) plus ``B * (2 + controls)`` for the occlusion numbers when ``occlusion``.
    With ``share < gate`` (no box holds the peaks of that many images) the forwards are skipped and the
    score is 0: the score never exceeds ``share``, so with ``gate = threshold`` no decision changes. For the
    same reason, without ``occlusion``, the control boxes are skipped (score 0) when ``share * follow < gate``.
    """
    # An nn.Module runs in eval mode (BatchNorm statistics untouched) and gets every module's flag back.
    with eval_mode(forward) if isinstance(forward, nn.Module) else nullcontext():
        region, share, classes = shared_region(maps, preds, grid, window, pad)
        return _shortcut_test(
            forward, images, maps, preds, controls, occlusion, gate, (region, share, classes)
        )


def _shortcut_test(
    forward: Forward,
    images: Tensor,
    maps: Tensor,
    preds: Tensor,
    controls: int,
    occlusion: bool,
    gate: float,
    shared: tuple[list[int], float, int],
) -> ShortcutEvidence:
    height, width = images.shape[-2:]
    region, share, classes = shared
    if share < gate or classes < 2:
        # One class everywhere is a collapsed model, not a region shared across classes.
        return ShortcutEvidence(
            0.0, region, (int(height), int(width)), round(share, 4), classes, 0.0, 0.0, len(images)
        )
    pairs = donor_pairs(preds)
    follow = follow_rate(forward, images, preds, pairs, region)
    if not occlusion and share * follow < gate:
        # The score can only fall below share * follow once the controls are subtracted: it cannot reach the
        # gate, so the control forwards (controls / (1 + controls) of the test) would change no decision.
        return ShortcutEvidence(
            0.0,
            region,
            (int(height), int(width)),
            round(share, 4),
            classes,
            round(follow, 4),
            0.0,
            len(images),
            pairs=len(pairs),
        )
    boxes = control_boxes(region, (height, width), controls)
    control = sum(follow_rate(forward, images, preds, pairs, b) for b in boxes) / max(1, len(boxes))
    drops = (0.0, 0.0, 0.0)
    if occlusion:
        base = _chunked(forward, images).softmax(1).cpu().gather(1, preds.cpu()[:, None])[:, 0]
        fixed = torch.tensor([region] * len(images))
        drop_region = _confidence_drop(forward, images, preds, base, fixed)
        drop_control = sum(
            _confidence_drop(forward, images, preds, base, torch.tensor([b] * len(images))) for b in boxes
        ) / max(1, len(boxes))
        size = (region[3] - region[1], region[2] - region[0])
        drop_own = _confidence_drop(forward, images, preds, base, own_boxes(maps, size))
        drops = (drop_region, drop_control, drop_own)
    score = share * max(0.0, follow - control)
    return ShortcutEvidence(
        score=round(score, 4),
        region=region,
        image_size=(int(height), int(width)),
        share=round(share, 4),
        classes=classes,
        follow=round(follow, 4),
        control_follow=round(control, 4),
        n_images=len(images),
        pairs=len(pairs),
        occlusion_drop=round(drops[0], 4),
        control_drop=round(drops[1], 4),
        own_drop=round(drops[2], 4),
    )


def shortcut_statement(evidence: ShortcutEvidence) -> str:
    """What, where and the numbers (the first part of the message).

    Example:
        >>> ev = ShortcutEvidence(score=0.8, region=[0, 0, 12, 12], image_size=(64, 64), share=0.9, classes=6,
        ...                       follow=0.9, control_follow=0.02, n_images=64)
        >>> shortcut_statement(ev).split(";")[0]
        'Shortcut: the model decides from the top-left corner (x 0-12, y 0-12 of 64x64 px)'
    """
    ev, (height, width) = evidence, evidence.image_size
    x0, y0, x1, y1 = ev.region
    return (
        f"Shortcut: the model decides from the {ev.where} (x {x0}-{x1}, y {y0}-{y1} of {width}x{height} px); "
        f"the predicted-class map peaks there for {ev.share:.0%} of {ev.n_images} validation images across "
        f"{ev.classes} predicted classes, and pasting that region into an image of another class makes the "
        f"prediction follow it {ev.follow:.0%} of the time (regions of the same size elsewhere: "
        f"{ev.control_follow:.0%}); score {ev.score:.2f}."
    )


def shortcut_advice(where: str) -> str:
    """What to do about a shortcut in ``where`` (the second part of the message, the audit's action).

    Example:
        >>> shortcut_advice("bottom-right corner")
        'Look at what your training images have in the bottom-right corner; crop or mask it, or add examples without it.'
    """
    return (
        f"Look at what your training images have in the {where}; crop or mask it, or add examples without it."
    )


def shortcut_message(evidence: ShortcutEvidence) -> str:
    """What, where, the numbers and what to do, in one paragraph (the warning line and the text entry)."""
    return f"{shortcut_statement(evidence)} {shortcut_advice(evidence.where)}"


def shortcut_finding(evidence: ShortcutEvidence, epoch: int, threshold: float = DEFAULT_THRESHOLD) -> Finding:
    """The :class:`~lit_explain.findings.store.Finding` for a test that fired (``critical`` at twice the threshold)."""
    severity = "critical" if evidence.score >= 2 * threshold else "warning"
    details = {**evidence.as_dict(), "threshold": threshold}
    return Finding(
        "shortcut", epoch, severity, shortcut_message(evidence), region=list(evidence.region), details=details
    )


def draw_box(images01: Tensor, region: Sequence[int], colour: Sequence[float] = (1.0, 1.0, 1.0)) -> Tensor:
    """``images01`` (``[B, 3, H, W]`` in [0, 1]) with the region's outline drawn one pixel wide (a copy)."""
    x0, y0, x1, y1 = region
    out = images01.clone()
    c = torch.tensor(colour, dtype=out.dtype, device=out.device).view(1, 3, 1)
    out[..., y0, x0:x1] = c
    out[..., y1 - 1, x0:x1] = c
    out[..., y0:y1, x0] = c.view(1, 3, 1)
    out[..., y0:y1, x1 - 1] = c.view(1, 3, 1)
    return out


def region_picture(images01: Tensor, maps: Tensor, region: Sequence[int], captions: Sequence[str]) -> Tensor:
    """The finding's picture: per image, the image and its predicted-class map, the region outlined in both.

    Returns a uint8 ``[3, H, W]`` grid (one row per image), ready for ``log.image`` or a PNG file.

    Example:
        >>> region_picture(torch.rand(2, 3, 32, 32), torch.rand(2, 1, 32, 32), [0, 0, 8, 8], ["a", "b"]).dtype
        torch.uint8
    """
    images01 = images01.float().cpu()
    cams = overlay(images01, maps.float().cpu(), alpha=0.5)
    rows = [[a, b] for a, b in zip(draw_box(images01, region), draw_box(cams, region), strict=True)]
    return panel_grid(rows, list(captions), column_titles=["image", "predicted-class map"], min_cell=96)
