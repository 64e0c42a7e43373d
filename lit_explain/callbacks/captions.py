"""What the callbacks write next to each sample: where it comes from, its classes, what it was predicted as."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L


def class_names(pl_module: L.LightningModule, num_classes: int) -> list[str]:
    """The model's class names when it has ``num_classes`` of them, else ``"0"``, ``"1"``, ...

    Example:
        >>> class_names(object(), 3)
        ['0', '1', '2']
    """
    names = getattr(pl_module, "class_names", None)
    if names and len(names) == num_classes:
        return [str(n) for n in names]
    return [str(i) for i in range(num_classes)]


def class_name(names: Sequence[str], index: int) -> str:
    """``names[index]``, or the index itself when it is outside the names.

    Example:
        >>> class_name(["cat", "dog"], 1), class_name(["cat", "dog"], 7)
        ('dog', '7')
    """
    return names[index] if 0 <= index < len(names) else str(index)


def prediction_line(names: Sequence[str], label: int, pred: int, confidence: float) -> str:
    """``true: circle · pred: ring (confidence 0.53)``; ``true: ?`` for an unknown label.

    Example:
        >>> prediction_line(["circle", "ring"], 0, 1, 0.531)
        'true: circle · pred: ring (confidence 0.53)'
    """
    true = class_name(names, label) if label >= 0 else "?"
    return f"true: {true} · pred: {class_name(names, pred)} (confidence {confidence:.2f})"


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
