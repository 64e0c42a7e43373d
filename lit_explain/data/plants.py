"""Your own photos (plants, leaves, anything) from a folder, in one of three layouts.

1. ``root/train/``, ``root/val/``, ``root/test/`` holding files named ``{label}_{id}.jpg``, where ``label`` is
   an integer index (the class names then come from ``class_names``) or a class name;
2. class-named subfolders (torchvision's ImageFolder layout): ``root/{train,val,test}/<class>/*.jpg``, or
   ``root/<class>/*.jpg`` split here;
3. one flat folder of ``{label}_{id}.jpg`` files, split here.

Subfolders. In the class-folder layouts (2) a class folder's images are read recursively, as torchvision's
ImageFolder does: ``oak/2024/img1.jpg`` is an ``oak`` image. In the file-name layouts (1, 3) only the folder
itself is read, so a subfolder holding images (``extra/``, ``Oak/...`` next to loose files) is an error that
counts them and names a few, never silently left out. Hidden files and folders (``.name``) are ignored.

At least two classes are needed; one class only is an error that says which class was found.

Splits made here are stratified and seeded. Every image is read by :func:`lit_explain.data.images.load_image`
(any mode, EXIF rotation, mixed-case extensions) with bounded memory: a JPEG is decoded at the smallest
libjpeg scale that keeps twice ``image_size``, and any image that would still need more than
``max_image_pixels`` decoded pixels (a decompression bomb, a huge scan) is refused from its header. During
setup every file's header is read, so an unreadable or oversize image stops the run *before* training with
one message listing them (or, with ``skip_bad_images``, every image is decoded once and the bad ones are left
out and listed). Images are normalised with the ImageNet statistics the pretrained backbones expect.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2
from tqdm.auto import tqdm

from lit_explain.data._split import stratified_split
from lit_explain.data.base import SPLITS, ExplainableDataModule, Workers
from lit_explain.data.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    ImageDecodeError,
    eval_transform,
    is_image_file,
    load_image,
    probe_image,
)
from lit_explain.errors import ConfigError, DataError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
Layout = Literal["auto", "split_files", "split_folders", "folders", "flat"]
LAYOUTS = ("split_files", "split_folders", "folders", "flat")


@dataclass(frozen=True)
class ImageRecord:
    """One image file and the class label its name or folder gives it."""

    path: Path
    label: int


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and is_image_file(p) and not p.name.startswith(".")
    )


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_under(folder: Path) -> list[Path]:
    """Every image below ``folder`` at any depth (symlinked folders followed once), in path order."""
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()
    for current, dirs, files in os.walk(folder, followlinks=True):
        stat = os.stat(current)
        if (stat.st_dev, stat.st_ino) in seen:  # a symlink loop: do not walk a folder twice
            dirs[:] = []
            continue
        seen.add((stat.st_dev, stat.st_ino))
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        here = Path(current)
        found += [
            here / f for f in files if is_image_file(f) and not f.startswith(".") and (here / f).is_file()
        ]
    return sorted(found)


def _examples(paths: Sequence[Path], root: Path, limit: int = 3) -> str:
    shown = ", ".join(str(p.relative_to(root)) for p in paths[:limit])
    return shown + (", ..." if len(paths) > limit else "")


def parse_label(path: Path) -> str:
    """The ``label`` part of a ``{label}_{id}.ext`` file name (the label may itself contain underscores)."""
    label, sep, ident = path.stem.rpartition("_")
    if not sep or not label or not ident:
        raise DataError(
            f"file name {path.name!r} ({path.parent}) does not follow the {{label}}_{{id}}.jpg convention, "
            "e.g. 3_0042.jpg or Ovate_017.jpg; rename it, or use class-named subfolders instead"
        )
    return label


def detect_layout(root: Path) -> str:
    """Which of the supported layouts ``root`` is in (see the module docstring)."""
    if not root.is_dir():
        raise DataError(f"data.root={str(root)!r} does not exist or is not a folder")
    present = [s for s in SPLITS if (root / s).is_dir()]
    if present:
        missing = [s for s in SPLITS if s not in present]
        if missing:
            raise DataError(
                f"{root} has {'/'.join(present)}/ but no {'/'.join(missing)}/ folder: the split layout needs "
                "train/, val/ and test/ (or put all images in one folder and let the data module split them)"
            )
        return "split_folders" if _subfolders(root / "train") else "split_files"
    if _subfolders(root) and not _images_in(root):
        return "folders"
    if _images_in(root):
        return "flat"
    raise DataError(
        f"{root} holds no images (extensions {', '.join(IMAGE_EXTENSIONS)}, "
        "any case) and no class subfolders or train/val/test folders"
    )


class ImageFileDataset(Dataset):
    """Image files with labels as dict samples ``{"image", "label", "index"}``.

    Example:
        >>> ds = ImageFileDataset([ImageRecord(Path("a_1.jpg"), 0)], eval_transform((224, 224), mean, std))
        >>> ds[0]["image"].shape
        torch.Size([3, 224, 224])
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        transform: v2.Transform,
        **load_kwargs: Any,
    ) -> None:
        self.records = list(records)
        self.transform = transform
        # load_image's bounds (size, max_pixels, limit_hint): decode no more than the transform needs.
        self.load_kwargs = load_kwargs

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        image = load_image(record.path, **self.load_kwargs)
        return {"image": self.transform(image), "label": record.label, "index": index}


class PlantDataModule(ExplainableDataModule):
    """Photos in a folder (three layouts, see the module docstring), for fine-tuning ImageNet backbones.

    Args:
        root: the folder.
        class_names: class names in label order. Required meaning for integer labels (``3_0042.jpg`` is
            ``class_names[3]``); for named labels or folders it fixes the order (else alphabetical) and every
            label found must be in it.
        layout: ``"auto"`` (detected) or one of ``split_files``, ``split_folders``, ``folders``, ``flat``.
        val_fraction, test_fraction: shares of the images held out when the data module splits them.
        seed: seed of that split.
        image_size: side of the square input (224 for ImageNet backbones).
        augment: random resized crop (scale 0.35-1) and horizontal flip on training images; eval images are
            resized whole to ``image_size`` (the same pre-processing the explain command and service use).
        skip_bad_images: decode every image once during setup and leave out the unreadable or oversize ones,
            logging how many and which (also kept in ``skipped``); without it setup reads every header and
            an unreadable or oversize image stops the run before training, with an error naming the files.
        max_image_pixels: the most pixels one image may need decoded (a JPEG counts at its reduced decode
            scale); larger images are refused from their header, before decoding.
        batch_size, num_workers, pin_memory: loader settings; ``num_workers="auto"`` is min(4, usable cores - 1)
            (:func:`~lit_explain.data.base.resolve_workers`); ``pin_memory=None`` pins when CUDA is present.

    Example:
        >>> dm = PlantDataModule("data/leaf-shapes", image_size=224)
        >>> dm.setup("fit")
        >>> dm.class_names, len(dm.dataset("train"))
        (['Cordate', 'Lanceolate', 'Ovate', 'Sagittate'], 169)
    """

    def __init__(
        self,
        root: str,
        class_names: list[str] | None = None,
        layout: Layout = "auto",
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        seed: int = 0,
        image_size: int = 224,
        augment: bool = True,
        skip_bad_images: bool = False,
        max_image_pixels: int = DEFAULT_MAX_PIXELS,
        batch_size: int = 32,
        num_workers: Workers = "auto",
        pin_memory: bool | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory)
        if layout != "auto" and layout not in LAYOUTS:
            raise ConfigError(f"data.layout={layout!r}; choose auto, {', '.join(LAYOUTS)}")
        if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ConfigError(
                f"data.val_fraction={val_fraction} and data.test_fraction={test_fraction} must be in [0, 1) "
                "and leave some images for training"
            )
        if image_size < 16:
            raise ConfigError(f"data.image_size must be at least 16 pixels, got {image_size}")
        if max_image_pixels < 1:
            raise ConfigError(f"data.max_image_pixels must be >= 1, got {max_image_pixels}")
        if class_names is not None and len(class_names) < 2:
            raise ConfigError(f"data.class_names={class_names}: a classifier needs at least two classes")
        if class_names is not None and len(set(class_names)) != len(class_names):
            raise ConfigError(f"data.class_names has duplicates: {class_names}")
        # The model keeps class names itself; Lightning refuses equal keys with different logged values.
        self.save_hyperparameters(ignore=["class_names"])
        self.root = Path(root).expanduser()
        self.given_class_names = list(class_names) if class_names is not None else None
        self.mean = IMAGENET_MEAN
        self.std = IMAGENET_STD
        self.input_size = (image_size, image_size)
        self.in_channels = 3
        self._records: dict[str, list[ImageRecord]] | None = None
        self._class_names: list[str] | None = None
        self.skipped: list[tuple[Path, str]] = []

    # -- discovery ----------------------------------------------------------------------------------
    @property
    def layout(self) -> str:
        return self.hparams.layout if self.hparams.layout != "auto" else detect_layout(self.root)

    @property
    def class_names(self) -> list[str]:  # type: ignore[override]
        """Class names in label order (from ``class_names`` or the labels found, alphabetically)."""
        if self._class_names is None:
            self.records()
        return list(self._class_names)

    def records(self) -> dict[str, list[ImageRecord]]:
        """The labelled image files of each split, found (and split) once."""
        if self._records is None:
            layout = self.layout
            if layout in ("split_files", "split_folders"):
                raw = {s: self._scan(self.root / s, layout == "split_folders") for s in SPLITS}
            else:
                raw = {"all": self._scan(self.root, layout == "folders")}
            names = self._resolve_names(raw)
            if len(names) < 2:
                count = sum(len(files) for files in raw.values())
                raise DataError(
                    f"{self.root} holds images of one class only ({names[0] if names else 'none'}: {count} "
                    "images); a classifier needs at least two classes. Add images of another class "
                    "(another class folder, or files named {label}_{id}.jpg with another label)"
                )
            index = {name: i for i, name in enumerate(names)}
            labelled = {s: [ImageRecord(p, index[label]) for p, label in files] for s, files in raw.items()}
            if self.hparams.skip_bad_images:
                labelled = {s: self._drop_unreadable(s, recs) for s, recs in labelled.items()}
            else:
                for recs in labelled.values():
                    self._check_headers(recs)
            self._class_names = names
            self._records = labelled if "all" not in labelled else self._split(labelled["all"], names)
            for split in SPLITS:
                self._check_split(split, self._records[split], names)
        return self._records

    def _scan(self, folder: Path, by_folder: bool) -> list[tuple[Path, str]]:
        if not folder.is_dir():
            raise DataError(f"expected a folder {folder}, found none")
        if by_folder:
            found = [(p, sub.name) for sub in _subfolders(folder) for p in _images_under(sub)]
            stray = _images_in(folder)
            if stray:
                raise DataError(
                    f"{folder} mixes class subfolders with {len(stray)} loose image(s) such as {stray[0].name}; "
                    "put every image inside its class folder"
                )
            return found
        nested = [p for sub in _subfolders(folder) for p in _images_under(sub)]
        if nested:
            raise DataError(
                f"{folder} holds images named {{label}}_{{id}}.jpg and {len(nested)} more image(s) in "
                f"subfolders ({_examples(nested, folder)}), which this layout does not read. Move them into "
                f"{folder} itself, move them elsewhere, or sort every image into class folders "
                "(<class>/*.jpg, read recursively)"
            )
        return [(p, parse_label(p)) for p in _images_in(folder)]

    def _resolve_names(self, raw: dict[str, list[tuple[Path, str]]]) -> list[str]:
        labels = {label for files in raw.values() for _, label in files}
        numeric = {label for label in labels if label.isdigit()}
        given = self.given_class_names
        if numeric and numeric != labels and self.layout in ("split_files", "flat"):
            example = next(iter(sorted(labels - numeric)))
            raise DataError(
                f"the file names in {self.root} mix integer labels ({', '.join(sorted(numeric, key=int)[:3])}) "
                f"with named labels ({example}); use one convention"
            )
        if numeric == labels and labels and self.layout in ("split_files", "flat"):
            top = max(int(label) for label in labels)
            if given is None:
                log.warning("integer labels without data.class_names: naming the classes 0..%d", top)
                return [str(i) for i in range(top + 1)]
            if top >= len(given):
                path = next(p for files in raw.values() for p, label in files if int(label) == top)
                raise DataError(
                    f"{path} has label {top}, outside data.class_names ({len(given)} classes, labels "
                    f"0..{len(given) - 1}); add the missing class names or fix the file name"
                )
            # Integer labels address class_names by position; rewrite them to names for one lookup path.
            for files in raw.values():
                files[:] = [(p, given[int(label)]) for p, label in files]
            return given
        if given is None:
            return sorted(labels)
        unknown = sorted(labels - set(given))
        if unknown:
            path = next(p for files in raw.values() for p, label in files if label == unknown[0])
            raise DataError(
                f"{path} has label {unknown[0]!r}, which is not in data.class_names ({', '.join(given)}); "
                f"labels found: {', '.join(sorted(labels))}"
            )
        return given

    def _load_kwargs(self) -> dict[str, Any]:
        return {
            "size": self.input_size,
            "max_pixels": self.hparams.max_image_pixels,
            "limit_hint": "data.max_image_pixels",
        }

    def _check_headers(self, records: list[ImageRecord]) -> None:
        """Read every header (no pixels) so an unreadable or oversize file stops the run now, not mid-epoch."""
        bad: list[str] = []
        for record in tqdm(records, desc="reading image headers", leave=False, disable=len(records) < 2000):
            try:
                probe_image(record.path, **self._load_kwargs())
            except ImageDecodeError as exc:
                bad.append(str(exc))
        if bad:
            raise DataError(
                f"{len(bad)} image(s) cannot be used: "
                + "; ".join(bad[:3])
                + ("; ..." if len(bad) > 3 else "")
                + ". Fix or remove them, or pass --data.skip_bad_images=true to leave them out"
            )

    def _drop_unreadable(self, split: str, records: list[ImageRecord]) -> list[ImageRecord]:
        kept = []
        for record in tqdm(records, desc=f"checking {split} images", leave=False, disable=len(records) < 200):
            try:
                load_image(record.path, **self._load_kwargs())
            except ImageDecodeError as exc:
                self.skipped.append((record.path, str(exc)))
                continue
            kept.append(record)
        if len(kept) < len(records):
            bad = [str(p) for p, _ in self.skipped[-(len(records) - len(kept)) :]]
            log.warning("skipped %d unreadable image(s) in %s: %s", len(bad), split, ", ".join(bad))
        return kept

    def _split(self, records: list[ImageRecord], names: list[str]) -> dict[str, list[ImageRecord]]:
        n = len(records)
        n_val = round(n * self.hparams.val_fraction)
        n_test = round(n * self.hparams.test_fraction)
        labels = torch.tensor([r.label for r in records], dtype=torch.long)
        parts = stratified_split(
            labels, [n - n_val - n_test, n_val, n_test], self.hparams.seed, SPLITS, names
        )
        return {split: [records[i] for i in idx.tolist()] for split, idx in zip(SPLITS, parts, strict=True)}

    def _check_split(self, split: str, records: list[ImageRecord], names: list[str]) -> None:
        where = self.root / split if self.layout in ("split_files", "split_folders") else self.root
        if not records:
            raise DataError(
                f"the {split} split is empty: no images found in {where}"
                + (" (fractions leave none for it)" if where == self.root else "")
            )
        counts = torch.bincount(torch.tensor([r.label for r in records]), minlength=len(names))
        missing = [names[i] for i in range(len(names)) if counts[i] == 0]
        if missing:
            raise DataError(
                f"the {split} split ({where}) has no images of class(es) {', '.join(missing)}; found "
                f"{', '.join(f'{names[i]}: {int(c)}' for i, c in enumerate(counts) if c)}. "
                f"Every split needs every one of the {len(names)} classes"
            )

    # -- datasets -----------------------------------------------------------------------------------
    def train_transform(self) -> v2.Compose:
        size = self.input_size
        if not self.hparams.augment:
            return eval_transform(size, self.mean, self.std)
        return v2.Compose(
            [
                v2.PILToTensor(),
                v2.RandomResizedCrop(size, scale=(0.35, 1.0), antialias=True),
                v2.RandomHorizontalFlip(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(list(self.mean), list(self.std)),
            ]
        )

    def _build_split(self, split: str) -> Dataset:
        transform = (
            self.train_transform()
            if split == "train"
            else eval_transform(self.input_size, self.mean, self.std)
        )
        return ImageFileDataset(self.records()[split], transform, **self._load_kwargs())

    def split_labels(self, split: str) -> torch.Tensor:
        return torch.tensor([r.label for r in self.records()[split]], dtype=torch.long)
