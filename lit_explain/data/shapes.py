"""Synthetic "shapes" data: offline, deterministic, with ground-truth object masks.

Every sample is drawn on the fly from ``(seed, split, index)``: a textured, noisy background and one shape
(circle, square, triangle, star, cross, ring) at a random position, scale, rotation and colour. The object
mask says exactly which pixels belong to the shape, so attention maps can be scored against ground truth.

In spurious-cue mode the training split also carries a small patch in a corner whose colour is tied to the
label (with probability ``cue_probability``). A model can then score well in training by looking at the corner
instead of the shape: the shortcut Grad-CAM is meant to reveal.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from lit_explain.data.base import ExplainableDataModule, Workers
from lit_explain.errors import ConfigError

SHAPE_NAMES = ("circle", "square", "triangle", "star", "cross", "ring")
# Distinct, saturated colours (RGB, 0-255) for the spurious patch: one per class.
CUE_COLOURS = np.array(
    [[230, 25, 75], [60, 180, 75], [0, 130, 200], [255, 225, 25], [145, 30, 180], [245, 130, 48]],
    dtype=np.float32,
)
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
_NOISE_STREAM = 0x1AB3  # tags the label-noise generator's seed
Corner = Literal["top_left", "top_right", "bottom_left", "bottom_right"]
EvalCue = Literal["none", "random"]


def _polygon(kind: str, radius: float, angle: float) -> np.ndarray:
    """Vertices (x, y) around the origin of a shape of the given circumradius, rotated by ``angle``."""
    if kind == "square":
        t = np.pi / 4 + np.arange(4) * np.pi / 2
        pts = np.stack([np.cos(t), np.sin(t)], 1) * radius
    elif kind == "triangle":
        t = -np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        pts = np.stack([np.cos(t), np.sin(t)], 1) * radius
    elif kind == "star":
        t = -np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, radius, radius * 0.42)
        pts = np.stack([np.cos(t) * r, np.sin(t) * r], 1)
    elif kind == "cross":
        a, b = radius, radius * 0.34
        pts = np.array(
            [
                [-b, -a],
                [b, -a],
                [b, -b],
                [a, -b],
                [a, b],
                [b, b],
                [b, a],
                [-b, a],
                [-b, b],
                [-a, b],
                [-a, -b],
                [-b, -b],
            ],
            dtype=np.float64,
        )
    else:
        raise ValueError(f"not a polygon shape: {kind}")
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return pts @ rot.T


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random texture in two random colours, float32 [H, W, 3] in 0..255."""
    coarse = rng.random((rng.integers(3, 7), rng.integers(3, 7)), dtype=np.float32)
    blend = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC).clip(0, 1)[..., None]
    c1, c2 = rng.uniform(20, 235, size=(2, 3)).astype(np.float32)
    stripes = np.sin(np.arange(size, dtype=np.float32) * rng.uniform(0.2, 0.9) + rng.uniform(0, 6))
    texture = 12.0 * (stripes[None, :, None] if rng.random() < 0.5 else stripes[:, None, None])
    return c1 * blend + c2 * (1 - blend) + texture


def _object_colour(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """A colour that stands out from the mean background colour (at least 90 apart in RGB distance)."""
    mean = background.reshape(-1, 3).mean(0)
    for _ in range(20):
        colour = rng.uniform(0, 255, size=3).astype(np.float32)
        if np.linalg.norm(colour - mean) >= 90:
            return colour
    return np.where(mean > 127, 0.0, 255.0).astype(np.float32)


def render_shape_sample(
    seed: int,
    split: str,
    index: int,
    size: int = 64,
    num_classes: int = len(SHAPE_NAMES),
    noise: float = 12.0,
    cue: Literal["none", "label", "random"] = "none",
    cue_probability: float = 1.0,
    cue_size: int | None = None,
    corner: Corner = "top_left",
) -> tuple[np.ndarray, int, np.ndarray]:
    """Draw one sample: ``(image uint8 [H, W, 3], label, mask bool [H, W])``, a pure function of its arguments.

    ``cue="label"`` adds a corner patch in the label's colour with probability ``cue_probability``;
    ``cue="random"`` adds one in a random class's colour (so it carries no information about the label).
    """
    rng = np.random.default_rng([seed, _SPLIT_IDS[split], index])
    label = int(rng.integers(num_classes))
    kind = SHAPE_NAMES[label]
    image = _background(rng, size)
    colour = _object_colour(rng, image)

    radius = rng.uniform(0.2, 0.32) * size
    margin = radius + 1
    cx, cy = rng.uniform(margin, size - margin, size=2)
    angle = rng.uniform(0, 2 * np.pi)
    mask = np.zeros((size, size), np.uint8)
    shift = 4  # sub-pixel precision for cv2's integer vertices
    centre = (round(cx * (1 << shift)), round(cy * (1 << shift)))
    if kind in ("circle", "ring"):
        cv2.circle(mask, centre, round(radius * (1 << shift)), 1, thickness=-1, shift=shift)
        if kind == "ring":
            cv2.circle(mask, centre, round(radius * 0.55 * (1 << shift)), 0, thickness=-1, shift=shift)
    else:
        pts = _polygon(kind, radius, angle) + np.array([cx, cy])
        cv2.fillPoly(mask, [np.round(pts * (1 << shift)).astype(np.int32)], 1, shift=shift)
    obj = mask.astype(bool)
    image[obj] = colour

    if cue != "none" and rng.random() < cue_probability:
        cue_label = label if cue == "label" else int(rng.integers(num_classes))
        side = cue_size or max(4, size // 8)
        y0 = 1 if corner.startswith("top") else size - side - 1
        x0 = 1 if corner.endswith("left") else size - side - 1
        image[y0 : y0 + side, x0 : x0 + side] = CUE_COLOURS[cue_label % len(CUE_COLOURS)]
        obj[y0 : y0 + side, x0 : x0 + side] = False  # the patch hides whatever of the shape was under it

    image += rng.normal(0, noise, size=image.shape).astype(np.float32)
    return image.clip(0, 255).astype(np.uint8), label, obj


def flip_labels(labels: Sequence[int], fraction: float, seed: int, num_classes: int) -> dict[int, int]:
    """Reproducible label noise: ``round(fraction * N)`` samples, each moved to another class at random.

    Returns ``{index: new_label}``; the new label always differs from the old one. A pure function of its
    arguments, so the flipped indices can be recomputed for evaluation.

    Example:
        >>> flip_labels([0, 1, 2, 0, 1, 2, 0, 1, 2, 0], fraction=0.2, seed=0, num_classes=3)  # doctest: +SKIP
        {7: 0, 2: 1}
    """
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"data.label_noise must be in [0, 1), got {fraction}")
    count = round(fraction * len(labels))
    if count == 0 or num_classes < 2:
        return {}
    # A stream of its own (tagged), so the flips never share draws with the samples themselves.
    rng = np.random.default_rng([seed, _NOISE_STREAM])
    chosen = rng.choice(len(labels), size=count, replace=False)
    shifts = rng.integers(1, num_classes, size=count)
    return {int(i): int((labels[i] + s) % num_classes) for i, s in zip(chosen, shifts, strict=True)}


class ShapesDataset(Dataset):
    """One split of the synthetic shapes data; samples are dicts ``{"image", "label", "mask", "index"}``.

    Example:
        >>> ds = ShapesDataset(length=100, split="val", seed=0)
        >>> sample = ds[3]
        >>> sample["image"].shape, sample["mask"].shape
        (torch.Size([3, 64, 64]), torch.Size([64, 64]))
    """

    def __init__(
        self,
        length: int,
        split: str,
        seed: int = 0,
        image_size: int = 64,
        noise: float = 12.0,
        cue: Literal["none", "label", "random"] = "none",
        cue_probability: float = 1.0,
        corner: Corner = "top_left",
        mean: tuple[float, ...] = (0.5, 0.5, 0.5),
        std: tuple[float, ...] = (0.25, 0.25, 0.25),
        label_overrides: dict[int, int] | None = None,
    ) -> None:
        self.length, self.split, self.seed = length, split, seed
        # Flipped labels ({index: label}, see flip_labels); the images stay exactly as drawn.
        self.label_overrides = dict(label_overrides or {})
        self.image_size, self.noise = image_size, noise
        self.cue, self.cue_probability, self.corner = cue, cue_probability, corner
        self._mean = torch.tensor(mean).view(3, 1, 1)
        self._std = torch.tensor(std).view(3, 1, 1)
        # Drawing costs about 1 ms a sample; keeping the drawn uint8 samples (12 KB each at 64x64) makes
        # every epoch after the first as cheap as a memory read.
        self._cache: dict[int, tuple[np.ndarray, int, np.ndarray]] = {}

    def __len__(self) -> int:
        return self.length

    def raw(self, index: int) -> tuple[np.ndarray, int, np.ndarray]:
        """The sample before normalisation: ``(uint8 [H, W, 3], label, bool mask [H, W])``."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for a {self.split} split of {self.length} samples")
        if index not in self._cache:
            self._cache[index] = render_shape_sample(
                self.seed,
                self.split,
                index,
                self.image_size,
                noise=self.noise,
                cue=self.cue,
                cue_probability=self.cue_probability,
                corner=self.corner,
            )
            if index in self.label_overrides:
                image, _, mask = self._cache[index]
                self._cache[index] = (image, self.label_overrides[index], mask)
        return self._cache[index]

    def label(self, index: int) -> int:
        """The label of a sample without drawing it (the label is the generator's first draw)."""
        if index in self.label_overrides:
            return self.label_overrides[index]
        return self.drawn_label(index)

    def drawn_label(self, index: int) -> int:
        """The label the sample was drawn with, before any flip."""
        return int(
            np.random.default_rng([self.seed, _SPLIT_IDS[self.split], index]).integers(len(SHAPE_NAMES))
        )

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        image, label, mask = self.raw(index)
        tensor = torch.from_numpy(image).permute(2, 0, 1).float().div_(255)
        return {
            "image": (tensor - self._mean) / self._std,
            "label": label,
            "mask": torch.from_numpy(mask),
            "index": index,
        }


class ShapesDataModule(ExplainableDataModule):
    """Offline synthetic shapes with ground-truth masks: the default demo recipe.

    Args:
        image_size: side of the square RGB images.
        train_size, val_size, test_size: number of samples per split (drawn on the fly, nothing on disk).
        seed: the data seed; a sample is a pure function of ``(seed, split, index)``.
        noise: standard deviation of the per-pixel Gaussian noise (0-255 scale).
        spurious_cue: put a class-coloured patch in a corner of training images (the shortcut demo).
        cue_probability: how often the training patch shows the label's colour (else no patch).
        eval_cue: what val/test show in the corner: ``"none"`` (no patch) or ``"random"`` (a patch in a
            random class's colour, uncorrelated with the label, which exposes a model that learned the cue).
        corner: where the patch goes.
        label_noise: fraction of TRAINING labels moved to another class (0 = none), to see the label-issue
            finder (:class:`~lit_explain.callbacks.TrainingDynamics`) at work; val/test keep true labels.
        label_noise_seed: which samples are flipped and to what; :meth:`flipped_indices` says which.
        batch_size, num_workers, pin_memory: loader settings.

    Example:
        >>> dm = ShapesDataModule(train_size=600, val_size=120)
        >>> dm.setup("fit")
        >>> batch = next(iter(dm.val_dataloader()))
        >>> batch["image"].shape, batch["mask"].shape
        (torch.Size([64, 3, 64, 64]), torch.Size([64, 64, 64]))
    """

    has_masks = True

    def __init__(
        self,
        image_size: int = 64,
        train_size: int = 6000,
        val_size: int = 1000,
        test_size: int = 1000,
        seed: int = 0,
        noise: float = 12.0,
        spurious_cue: bool = False,
        cue_probability: float = 1.0,
        eval_cue: EvalCue = "none",
        corner: Corner = "top_left",
        label_noise: float = 0.0,
        label_noise_seed: int = 0,
        batch_size: int = 64,
        num_workers: Workers = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory)
        if image_size < 24:
            raise ConfigError(
                f"data.image_size must be at least 24 pixels to draw the shapes, got {image_size}"
            )
        for name, value in (("train_size", train_size), ("val_size", val_size), ("test_size", test_size)):
            if value < 1:
                raise ConfigError(f"data.{name} must be >= 1, got {value}")
        if not 0.0 <= cue_probability <= 1.0:
            raise ConfigError(f"data.cue_probability must be in [0, 1], got {cue_probability}")
        if not 0.0 <= label_noise < 1.0:
            raise ConfigError(f"data.label_noise must be in [0, 1), got {label_noise}")
        self.save_hyperparameters()
        self.class_names = list(SHAPE_NAMES)
        self.mean = (0.5, 0.5, 0.5)
        self.std = (0.25, 0.25, 0.25)
        self.input_size = (image_size, image_size)
        self.in_channels = 3
        self.sizes = {"train": train_size, "val": val_size, "test": test_size}

    def _build_split(self, split: str) -> ShapesDataset:
        hp = self.hparams
        if split == "train":
            cue = "label" if hp.spurious_cue else "none"
        else:
            cue = "random" if hp.spurious_cue and hp.eval_cue == "random" else "none"
        return ShapesDataset(
            self.sizes[split],
            split,
            seed=hp.seed,
            image_size=hp.image_size,
            noise=hp.noise,
            cue=cue,
            cue_probability=hp.cue_probability,
            corner=hp.corner,
            mean=self.mean,
            std=self.std,
            label_overrides=self.label_flips() if split == "train" else None,
        )

    def label_flips(self) -> dict[int, int]:
        """``{index: flipped label}`` of the training split (empty without ``label_noise``)."""
        if not self.hparams.get("label_noise"):
            return {}
        hp = self.hparams
        clean = ShapesDataset(self.sizes["train"], "train", seed=hp.seed, image_size=hp.image_size)
        drawn = [clean.drawn_label(i) for i in range(len(clean))]
        return flip_labels(drawn, hp.label_noise, hp.get("label_noise_seed", 0), len(self.class_names))

    def flipped_indices(self) -> torch.Tensor:
        """Sorted training indices whose label ``label_noise`` changed (int64), for evaluating a finder.

        Example:
            >>> ShapesDataModule(train_size=100, label_noise=0.1).flipped_indices().numel()
            10
        """
        return torch.tensor(sorted(self.label_flips()), dtype=torch.long)

    def split_labels(self, split: str) -> torch.Tensor:
        data = self.dataset(split)
        return torch.tensor([data.label(i) for i in range(len(data))], dtype=torch.long)
