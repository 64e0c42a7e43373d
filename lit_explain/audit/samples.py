"""Which file (or which dataset index) each audited sample is, so every shown sample can be found again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.data import Dataset, Subset


def sample_source(dataset: Dataset, index: int, split: str, root: str | Path | None = None) -> str:
    """The file behind sample ``index`` of ``dataset`` (relative to ``root`` when inside it), else ``"val idx 14"``.

    Understands lit_explain's image-file datasets (``records``), torchvision's ``ImageFolder`` (``samples``)
    and ``Subset`` chains around either; generated or in-memory data (shapes, CIFAR) has no file, so the
    split and the index in it say which sample it is.

    Example:
        >>> sample_source(ShapesDataset(8), 3, "val")           # doctest: +SKIP
        'val idx 3'
    """
    inner, i = dataset, int(index)
    while isinstance(inner, Subset):
        i = int(inner.indices[i])
        inner = inner.dataset
    path = _file_of(inner, i)
    if path is None:
        return f"{split} idx {int(index)}"
    if root is not None:
        try:
            return Path(path).resolve().relative_to(Path(root).expanduser().resolve()).as_posix()
        except ValueError:
            pass
    return Path(path).as_posix()


def _file_of(dataset: Any, index: int) -> str | None:
    records = getattr(dataset, "records", None)
    if records is not None and hasattr(records[index], "path"):
        return str(records[index].path)
    samples = getattr(dataset, "samples", None)  # torchvision ImageFolder / DatasetFolder
    if isinstance(samples, list) and samples and isinstance(samples[index], tuple):
        return str(samples[index][0])
    return None
