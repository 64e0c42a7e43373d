"""CIFAR-100 through torchvision's ``CIFAR100`` class, with samples as dicts and transforms from v2.

The training set is split (seeded, stratified) into train and val; the official test set is the test split.
Class names come from the dataset's own ``meta`` file, so they are known as soon as the data is on disk,
which is before the model's ``setup`` adopts them.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torchvision
from torch.utils.data import Dataset
from torchvision.transforms import v2

from lit_explain.data._split import stratified_split
from lit_explain.data.base import ExplainableDataModule
from lit_explain.errors import ConfigError, DataError

# Per-channel mean and std of the 50,000 CIFAR-100 training images (pixel values scaled to [0, 1]).
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
TRAIN_SIZE = 50_000
Policy = Literal["standard", "trivialaugment", "randaugment"]


class UnverifiedCIFAR100(torchvision.datasets.CIFAR100):
    """torchvision's CIFAR100 with the md5 checks off: the files must exist but may differ from the release."""

    train_list: ClassVar[list[list[str | None]]] = [
        [n, None] for n, _ in torchvision.datasets.CIFAR100.train_list
    ]
    test_list: ClassVar[list[list[str | None]]] = [
        [n, None] for n, _ in torchvision.datasets.CIFAR100.test_list
    ]
    meta: ClassVar[dict[str, str | None]] = {**torchvision.datasets.CIFAR100.meta, "md5": None}


class CifarSplit(Dataset):
    """Some images of a CIFAR array as dict samples ``{"image", "label", "index"}`` (index within the split).

    Example:
        >>> split = CifarSplit(images, labels, torch.arange(10), v2.ToDtype(torch.float32, scale=True))
        >>> split[0]["image"].shape
        torch.Size([3, 32, 32])
    """

    def __init__(
        self, images: np.ndarray, labels: torch.Tensor, indices: torch.Tensor, transform: v2.Transform
    ):
        self.images, self.labels, self.indices, self.transform = images, labels, indices, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        source = int(self.indices[index])
        # uint8 HWC -> CHW tensor without PIL: the v2 transforms work on tensors directly and faster.
        image = torch.from_numpy(self.images[source]).permute(2, 0, 1)
        return {"image": self.transform(image), "label": int(self.labels[source]), "index": index}


class Cifar100DataModule(ExplainableDataModule):
    """CIFAR-100: 32x32 RGB images in 100 classes, 45,000 train / 5,000 val / 10,000 test by default.

    Args:
        data_dir: folder that holds (or will hold) ``cifar-100-python/``.
        download: download the dataset into ``data_dir`` in ``prepare_data`` when it is not there.
        val_size: images of the official training set held out (stratified, seeded) for validation.
        seed: seed of the train/val split (independent of the training seed).
        augment: ``"standard"`` (random crop with 4 px padding, horizontal flip), or that plus
            ``"trivialaugment"`` (TrivialAugmentWide) or ``"randaugment"`` (RandAugment, 2 ops, magnitude 9).
        random_erasing: probability of RandomErasing on each training image (0 = off).
        mixup_alpha, cutmix_alpha: Beta parameters of MixUp / CutMix on training batches (0 = off; with both
            on, one of them is picked per batch). Labels of mixed batches are probabilities ``[B, 100]``.
        mean, std: normalisation; the defaults are the CIFAR-100 training-set statistics.
        verify_checksums: compare the files against the official release's md5 sums. Turn off only for a
            deliberate copy in the same layout (a subset, a test fixture).
        batch_size, num_workers, pin_memory: loader settings; ``pin_memory=None`` pins when CUDA is present.

    Example:
        >>> dm = Cifar100DataModule(data_dir="data", download=True)
        >>> dm.prepare_data(); dm.setup("fit")
        >>> dm.class_names[:3], len(dm.dataset("train")), len(dm.dataset("val"))
        (['apple', 'aquarium_fish', 'baby'], 45000, 5000)
    """

    def __init__(
        self,
        data_dir: str = "data",
        download: bool = False,
        val_size: int = 5000,
        seed: int = 0,
        augment: Policy = "standard",
        random_erasing: float = 0.0,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        mean: tuple[float, float, float] = CIFAR100_MEAN,
        std: tuple[float, float, float] = CIFAR100_STD,
        verify_checksums: bool = True,
        batch_size: int = 128,
        num_workers: int = min(4, os.cpu_count() or 1),
        pin_memory: bool | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory)
        if augment not in ("standard", "trivialaugment", "randaugment"):
            raise ConfigError(f"data.augment={augment!r}; choose standard, trivialaugment or randaugment")
        if not 0.0 <= random_erasing <= 1.0:
            raise ConfigError(f"data.random_erasing must be a probability in [0, 1], got {random_erasing}")
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ConfigError(
                f"data.mixup_alpha and data.cutmix_alpha must be >= 0, got {mixup_alpha}, {cutmix_alpha}"
            )
        if val_size < 0:
            raise ConfigError(f"data.val_size must be >= 0, got {val_size}")
        if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
            raise ConfigError(f"data.mean and data.std need 3 values each (std > 0), got {mean} and {std}")
        # Lightning merges the model's and the data module's logged hyperparameters and refuses keys whose
        # values differ; the model holds mean/std itself (adopted from metadata()), so they stay out of here.
        self.save_hyperparameters(ignore=["mean", "std"])
        self.data_dir = Path(data_dir).expanduser()
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.input_size = (32, 32)
        self.in_channels = 3
        self._class_names: list[str] | None = None
        self._arrays: dict[bool, tuple[np.ndarray, torch.Tensor]] = {}
        self._train_parts: tuple[torch.Tensor, torch.Tensor] | None = None
        self._mix: v2.Transform | None = None

    # -- files --------------------------------------------------------------------------------------
    @property
    def folder(self) -> Path:
        return self.data_dir / torchvision.datasets.CIFAR100.base_folder

    def _dataset_class(self) -> type[torchvision.datasets.CIFAR100]:
        return torchvision.datasets.CIFAR100 if self.hparams.verify_checksums else UnverifiedCIFAR100

    def prepare_data(self) -> None:
        if not self.hparams.download:
            return
        try:
            self._dataset_class()(str(self.data_dir), train=True, download=True)
        except Exception as exc:  # URLError offline, a full disk, a corrupt archive
            raise DataError(
                f"could not download CIFAR-100 into {self.data_dir}: {type(exc).__name__}: {exc}. Without network "
                f"access, copy cifar-100-python/ (train, test, meta) into {self.data_dir} and set data.download=false"
            ) from exc

    def _explain_missing(self) -> DataError:
        files = ("train", "test", "meta")
        missing = [f for f in files if not (self.folder / f).is_file()]
        if missing:
            return DataError(
                f"CIFAR-100 not found: expected {self.folder}/{{train,test,meta}} (missing: {', '.join(missing)}). "
                "Set data.download=true, or point data.data_dir at the folder that contains cifar-100-python/"
            )
        return DataError(
            f"the CIFAR-100 files in {self.folder} do not match the official release's md5 checksums (corrupt or "
            "modified). Delete them and download again, or set data.verify_checksums=false if this is a "
            "deliberate copy in the same layout"
        )

    def _load(self, train: bool) -> tuple[np.ndarray, torch.Tensor]:
        if train not in self._arrays:
            try:
                data = self._dataset_class()(str(self.data_dir), train=train, download=False)
            except RuntimeError as exc:
                raise self._explain_missing() from exc
            except (pickle.UnpicklingError, EOFError, KeyError, ValueError) as exc:
                raise DataError(
                    f"cannot read CIFAR-100 from {self.folder}: {type(exc).__name__}: {exc}"
                ) from exc
            labels = torch.as_tensor(data.targets, dtype=torch.long)
            names = self.class_names
            bad = labels[(labels < 0) | (labels >= len(names))]
            if bad.numel():
                raise DataError(
                    f"{self.folder / ('train' if train else 'test')} has fine label {int(bad[0])}, outside the "
                    f"{len(names)} classes of its meta file (expected 0..{len(names) - 1})"
                )
            self._arrays[train] = (data.data, labels)
        return self._arrays[train]

    @property
    def class_names(self) -> list[str]:  # type: ignore[override]
        """The 100 fine label names, read from ``cifar-100-python/meta``."""
        if self._class_names is None:
            path = self.folder / "meta"
            if not path.is_file():
                raise self._explain_missing()
            try:
                with path.open("rb") as handle:
                    meta = pickle.load(handle, encoding="latin1")
                names = [str(n) for n in meta["fine_label_names"]]
            except Exception as exc:
                raise DataError(f"cannot read class names from {path}: {type(exc).__name__}: {exc}") from exc
            if not names:
                raise DataError(f"{path} lists no fine_label_names")
            self._class_names = names
        return self._class_names

    # -- splits -------------------------------------------------------------------------------------
    def _parts(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._train_parts is None:
            labels = self._load(True)[1]
            val_size = self.hparams.val_size
            if val_size >= len(labels):
                raise ConfigError(f"data.val_size={val_size} leaves no training images of the {len(labels)}")
            train, val = stratified_split(
                labels,
                [len(labels) - val_size, val_size],
                self.hparams.seed,
                ("train", "val"),
                self.class_names,
            )
            self._train_parts = (train, val)
        return self._train_parts

    def _indices(self, split: str) -> tuple[bool, torch.Tensor]:
        if split == "test":
            return False, torch.arange(len(self._load(False)[1]))
        train, val = self._parts()
        return True, train if split == "train" else val

    def train_transform(self) -> v2.Compose:
        hp = self.hparams
        steps: list[v2.Transform] = [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()]
        if hp.augment == "trivialaugment":
            steps.append(v2.TrivialAugmentWide())
        elif hp.augment == "randaugment":
            steps.append(v2.RandAugment(num_ops=2, magnitude=9))
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(self.mean), list(self.std))]
        if hp.random_erasing > 0:
            steps.append(v2.RandomErasing(p=hp.random_erasing, value=0))
        return v2.Compose(steps)

    def eval_transform(self) -> v2.Compose:
        return v2.Compose(
            [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(self.mean), list(self.std))]
        )

    def _build_split(self, split: str) -> Dataset:
        train_file, indices = self._indices(split)
        if len(indices) == 0:
            raise DataError(f"the CIFAR-100 {split} split is empty (data.val_size={self.hparams.val_size})")
        images, labels = self._load(train_file)
        transform = self.train_transform() if split == "train" else self.eval_transform()
        return CifarSplit(images, labels, indices, transform)

    def split_labels(self, split: str) -> torch.Tensor:
        train_file, indices = self._indices(split)
        return self._load(train_file)[1][indices]

    # -- batch mixing -------------------------------------------------------------------------------
    def _mixer(self) -> v2.Transform | None:
        hp = self.hparams
        if self._mix is None and (hp.mixup_alpha > 0 or hp.cutmix_alpha > 0):
            n = self.num_classes
            options = []
            if hp.mixup_alpha > 0:
                options.append(v2.MixUp(alpha=hp.mixup_alpha, num_classes=n))
            if hp.cutmix_alpha > 0:
                options.append(v2.CutMix(alpha=hp.cutmix_alpha, num_classes=n))
            self._mix = options[0] if len(options) == 1 else v2.RandomChoice(options)
        return self._mix

    def mix_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Apply MixUp/CutMix to a training batch: images blended, labels become probabilities ``[B, C]``."""
        mixer = self._mixer()
        if mixer is None:
            return batch
        images, labels = mixer(batch["image"], batch["label"])
        return {**batch, "image": images, "label": labels}

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        trainer = self.trainer
        # Only training batches are mixed; validation and the explainability callbacks see real images.
        if trainer is not None and trainer.training and isinstance(batch, dict):
            return self.mix_batch(batch)
        return batch
