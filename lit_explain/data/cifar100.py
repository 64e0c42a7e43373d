"""CIFAR-100 from the official ``cifar-100-python`` files, with samples as dicts and transforms from v2.

The training set is split (seeded, stratified) into train and val; the official test set is the test split.
Class names come from the dataset's own ``meta`` file, so they are known as soon as the data is on disk,
which is before the model's ``setup`` adopts them.

The files are pickles, and ``pickle.load`` runs whatever code a file names. They are therefore read with
:class:`CifarUnpickler`, which admits only what the format holds (dicts, lists, strings, numbers and numpy
arrays), whether or not ``verify_checksums`` is on; torchvision's ``CIFAR100`` (plain ``pickle.load``) is
not used to read them.
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torchvision
from torch.utils.data import Dataset
from torchvision.datasets.utils import check_integrity, download_and_extract_archive
from torchvision.transforms import v2

from lit_explain.data._split import stratified_split
from lit_explain.data.base import ExplainableDataModule, Workers
from lit_explain.errors import ConfigError, DataError

# Per-channel mean and std of the 50,000 CIFAR-100 training images (pixel values scaled to [0, 1]).
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
TRAIN_SIZE = 50_000
Policy = Literal["standard", "trivialaugment", "randaugment"]
RELEASE = torchvision.datasets.CIFAR100  # the release's URL, file names and md5 sums
FILES = ("train", "test", "meta")


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """The globals a pickled numpy array or scalar names, under numpy 1's and numpy 2's module paths."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    found: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for package in ("numpy.core", "numpy._core"):
        # _reconstruct: protocols 0-4 (the release's Python 2 files); _frombuffer: protocol 5; scalar: np.int64.
        found[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        found[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        found[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    return found


# Everything else a pickle may name (os.system, builtins.eval, subprocess.Popen, ...) is refused.
# _codecs.encode is how Python 3 writes bytes at protocol 2; it only turns a str into bytes.
SAFE_GLOBALS: dict[tuple[str, str], Any] = {**_numpy_globals(), ("_codecs", "encode"): codecs.encode}


class CifarUnpickler(pickle.Unpickler):
    """An unpickler for the CIFAR-100 python format: dicts, lists, bytes, str, numbers, numpy arrays/dtypes.

    Any other global (a function or class the pickle would call) raises :class:`DataError` naming the file,
    before anything is called.

    Example:
        >>> with open("data/cifar-100-python/train", "rb") as f:
        ...     batch = CifarUnpickler(f, "data/cifar-100-python/train").load()
    """

    def __init__(self, file: Any, name: str | Path) -> None:
        # latin1: the release's Python 2 str values (array bytes included) come back byte for byte.
        super().__init__(file, encoding="latin1")
        self.name = str(name)

    def find_class(self, module: str, name: str) -> Any:
        found = SAFE_GLOBALS.get((module, name))
        if found is None:
            raise DataError(
                f"refused to read {self.name}: unpickling it would call {module}.{name}, and a CIFAR-100 file "
                "holds only dicts, lists, strings, numbers and numpy arrays; it is not a CIFAR-100 file. "
                "Replace the folder with the official cifar-100-python release"
            )
        return found


def _text(value: Any) -> Any:
    return value.decode("latin1") if isinstance(value, bytes) else value


def read_cifar_pickle(path: Path) -> dict[str, Any]:
    """One ``cifar-100-python`` file as a dict with str keys, read safely (see :class:`CifarUnpickler`)."""
    try:
        with path.open("rb") as handle:
            content = CifarUnpickler(handle, path).load()
    except DataError:
        raise
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # UnpicklingError, EOFError for a truncated file, ValueError, ...
        raise DataError(
            f"cannot read {path}: not a CIFAR-100 python pickle (truncated or another format: "
            f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]})"
        ) from None
    if not isinstance(content, dict):
        raise DataError(f"{path} holds a {type(content).__name__}, not the dict of a CIFAR-100 file")
    # The release's Python 2 keys load as str; a Python 3 re-save keeps them as bytes.
    return {_text(key): value for key, value in content.items()}


def _batch_arrays(path: Path) -> tuple[np.ndarray, torch.Tensor]:
    """(uint8 images [N, 32, 32, 3], fine labels [N]) of a ``train`` or ``test`` file."""
    batch = read_cifar_pickle(path)
    data, labels = batch.get("data"), batch.get("fine_labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        found = f"{data.dtype} {list(data.shape)}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' must be a uint8 array [N, 3072] (CIFAR-100's layout), found {found}")
    if not isinstance(labels, (list, np.ndarray)) or len(labels) != len(data):
        count = len(labels) if isinstance(labels, (list, np.ndarray)) else "no"
        raise DataError(f"{path}: {count} fine_labels for {len(data)} images")
    try:
        targets = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    except (TypeError, ValueError):
        raise DataError(f"{path}: fine_labels must be integers") from None
    # Rows are CHW; the transforms take HWC uint8 images (as torchvision's CIFAR100 stores them).
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), targets


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
        verify_checksums: compare the files against the official release's md5 sums. Off is for a
            deliberate copy in the same layout (a subset, a test fixture); either way the files are read with
            :class:`CifarUnpickler`, which never runs code from them.
        batch_size, num_workers, pin_memory: loader settings; ``num_workers="auto"`` is min(8, usable cores - 1)
            (:func:`~lit_explain.data.base.resolve_workers`); ``pin_memory=None`` pins when CUDA is present.

    Example:
        >>> dm = Cifar100DataModule(data_dir="data", download=True)
        >>> dm.prepare_data(); dm.setup("fit")
        >>> dm.class_names[:3], len(dm.dataset("train")), len(dm.dataset("val"))
        (['apple', 'aquarium_fish', 'baby'], 45000, 5000)
    """

    # Augmenting 32x32 images costs little per image but there are many per second on a GPU.
    auto_workers = 8

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
        num_workers: Workers = "auto",
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
        return self.data_dir / RELEASE.base_folder

    def prepare_data(self) -> None:
        if not self.hparams.download:
            return
        present = [f for f in FILES if (self.folder / f).exists()]
        if len(present) == len(FILES):
            return
        if present:
            # Extracting the archive would overwrite these; they are not ours to replace.
            raise DataError(
                f"{self.folder} holds {', '.join(present)} but not "
                f"{', '.join(f for f in FILES if f not in present)}; "
                "move the folder away (or complete it) before data.download=true fetches the release"
            )
        try:
            # The archive's md5 is always checked, so what is extracted is the official release.
            download_and_extract_archive(RELEASE.url, str(self.data_dir), RELEASE.filename, RELEASE.tgz_md5)
        except Exception as exc:  # URLError offline, a full disk, a corrupt archive
            raise DataError(
                f"could not download CIFAR-100 into {self.data_dir}: {type(exc).__name__}: {exc}. Without network "
                f"access, copy cifar-100-python/ (train, test, meta) into {self.data_dir} and set data.download=false"
            ) from exc

    def _file(self, name: str) -> Path:
        """``cifar-100-python/<name>``, checked to exist and, with ``verify_checksums``, to be the release's."""
        path = self.folder / name
        if not path.is_file():
            missing = [f for f in FILES if not (self.folder / f).is_file()]
            raise DataError(
                f"CIFAR-100 not found: expected {self.folder}/{{train,test,meta}} (missing: {', '.join(missing)}). "
                "Set data.download=true, or point data.data_dir at the folder that contains cifar-100-python/"
            )
        md5 = dict([*RELEASE.train_list, *RELEASE.test_list, ("meta", RELEASE.meta["md5"])])
        if self.hparams.verify_checksums and not check_integrity(str(path), md5[name]):
            raise DataError(
                f"{path} does not match the official CIFAR-100 release's md5 checksum (corrupt or modified); "
                f"move {self.folder} away and download the release again (data.download=true)"
            )
        return path

    def _load(self, train: bool) -> tuple[np.ndarray, torch.Tensor]:
        if train not in self._arrays:
            path = self._file("train" if train else "test")
            names = self.class_names
            images, labels = _batch_arrays(path)
            bad = labels[(labels < 0) | (labels >= len(names))]
            if bad.numel():
                raise DataError(
                    f"{path} has fine label {int(bad[0])}, outside the "
                    f"{len(names)} classes of its meta file (expected 0..{len(names) - 1})"
                )
            self._arrays[train] = (images, labels)
        return self._arrays[train]

    @property
    def class_names(self) -> list[str]:  # type: ignore[override]
        """The 100 fine label names, read from ``cifar-100-python/meta``."""
        if self._class_names is None:
            path = self._file("meta")
            names = read_cifar_pickle(path).get("fine_label_names")
            if not isinstance(names, list) or not names:
                raise DataError(f"{path} lists no fine_label_names")
            self._class_names = [str(_text(n)) for n in names]
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
