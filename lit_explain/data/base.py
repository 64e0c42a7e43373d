"""What every lit_explain data module exposes: class names, normalisation, input size and probe samples."""

from __future__ import annotations

import os
from abc import ABCMeta, abstractmethod
from collections.abc import Sequence
from typing import Any, Literal

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from lit_explain.errors import ConfigError

SPLITS = ("train", "val", "test")

Workers = int | Literal["auto"]
"""``data.num_workers``: a count, or ``"auto"`` (see :func:`resolve_workers`)."""


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one, else all cores)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS and Windows have no affinity mask
        return os.cpu_count() or 1


def resolve_workers(num_workers: Workers, wanted: int, cores: int | None = None) -> int:
    """Loader worker processes for ``num_workers``; ``"auto"`` is ``min(wanted, cores - 1)``.

    One core is left to the training process itself, which also decodes when no worker does: on a
    2-core machine ``auto`` is 1 worker, on 1 core 0 (loading in the main process).

    Example:
        >>> resolve_workers("auto", wanted=8, cores=2), resolve_workers("auto", 4, cores=16), resolve_workers(3, 8)
        (1, 4, 3)
    """
    if num_workers == "auto":
        cores = usable_cores() if cores is None else cores
        return max(0, min(wanted, cores - 1))
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ConfigError(f"data.num_workers must be an integer >= 0 or auto, got {num_workers!r}")
    return num_workers


class ExplainableDataModule(L.LightningDataModule, metaclass=ABCMeta):
    """A LightningDataModule that also describes its data for explanations and checkpoints.

    Subclasses set ``class_names``, ``mean``, ``std``, ``input_size`` and ``in_channels`` and implement
    :meth:`_build_split` (a dataset of dict samples ``{"image", "label", "index"[, "mask"]}``) and
    :meth:`split_labels`. The loaders, probe selection and the metadata stored in checkpoints come from here.

    Example:
        >>> dm = ShapesDataModule(val_size=60)   # any subclass
        >>> dm.class_names, dm.mean, dm.std       # what checkpoints and explanations need
        >>> probes = dm.samples(dm.probe_indices(per_class=2))  # a fixed, deterministic probe batch
    """

    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: tuple[int, int]
    in_channels: int = 3
    has_masks: bool = False
    # What ``num_workers: auto`` asks for on a machine with cores to spare (decoding cost per image).
    auto_workers: int = 4

    def __init__(
        self, batch_size: int = 64, num_workers: Workers = 0, pin_memory: bool | None = False
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.num_workers = resolve_workers(num_workers, self.auto_workers)
        # None: pin host memory exactly when a GPU will receive the batches.
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self._datasets: dict[str, Dataset] = {}

    # -- what subclasses provide -------------------------------------------------------------------
    @abstractmethod
    def _build_split(self, split: str) -> Dataset:
        """Return the dataset of one split ("train", "val" or "test")."""

    @abstractmethod
    def split_labels(self, split: str) -> torch.Tensor:
        """Labels (int64 [N]) of a split in dataset order, without decoding images."""

    # -- shared behaviour ---------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def metadata(self) -> dict[str, Any]:
        """What a checkpoint needs to rebuild the model and pre-process an image later."""
        return {
            "class_names": list(self.class_names),
            "mean": [float(m) for m in self.mean],
            "std": [float(s) for s in self.std],
            "input_size": [int(s) for s in self.input_size],
            "in_channels": int(self.in_channels),
        }

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in wanted.get(stage, SPLITS) if stage else SPLITS:
            self.dataset(split)

    def dataset(self, split: str) -> Dataset:
        """The dataset of a split, built on first use."""
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        if split not in self._datasets:
            self._datasets[split] = self._build_split(split)
        return self._datasets[split]

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        data = self.dataset(split)
        return DataLoader(
            data,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            # A trailing training batch of one image breaks BatchNorm in training mode; evaluation keeps all.
            drop_last=shuffle and len(data) % self.batch_size == 1,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def probe_indices(self, per_class: int = 2, max_total: int = 32, split: str = "val") -> list[int]:
        """Pick fixed probe samples: the first ``per_class`` samples of each class, interleaved by class.

        Deterministic (dataset order only), so the same probes come back in every run and after resuming.
        """
        labels = self.split_labels(split)
        chosen: list[list[int]] = [[] for _ in self.class_names]
        for idx, label in enumerate(labels.tolist()):
            if len(chosen[label]) < per_class:
                chosen[label].append(idx)
            if all(len(c) >= per_class for c in chosen):
                break
        interleaved = [c[r] for r in range(per_class) for c in chosen if r < len(c)]
        return interleaved[:max_total]

    def samples(self, indices: Sequence[int], split: str = "val") -> dict[str, torch.Tensor]:
        """Collate the samples at ``indices`` of a split into one batch dict."""
        from torch.utils.data import default_collate

        data = self.dataset(split)
        return default_collate([data[i] for i in indices])
