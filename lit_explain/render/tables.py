"""Tabular summaries: most confused class pairs, and Markdown tables for TensorBoard's add_text."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from lit_explain.render._common import as_tensor

__all__ = ["ConfusedPair", "confused_pairs_table", "markdown_table", "name_pairs"]


class ConfusedPair(NamedTuple):
    """One off-diagonal confusion-matrix cell: ``count`` samples of ``true_idx`` predicted as ``pred_idx``."""

    true_idx: int
    pred_idx: int
    count: int | float


def confused_pairs_table(
    cm: Tensor, class_names: Sequence[str] | None = None, top_n: int | None = 10
) -> list[ConfusedPair]:
    """The ``top_n`` largest off-diagonal cells of a confusion matrix, largest first.

    Ties are broken by ``(true_idx, pred_idx)`` ascending, so the result is deterministic; cells
    with a zero count are not confusions and never appear.

    Args:
        cm: ``[C, C]`` confusion matrix, rows true and columns predicted, any device/dtype.
        class_names: optional; only checked to have ``C`` entries (map indices to names with
            :func:`name_pairs`).
        top_n: maximum number of pairs; None for all non-zero ones.

    Returns:
        ``ConfusedPair(true_idx, pred_idx, count)`` tuples; ``count`` is an int for integer
        matrices, a float otherwise.

    Example:
        >>> cm = torch.tensor([[5, 2, 0], [3, 4, 1], [0, 2, 6]])
        >>> confused_pairs_table(cm, top_n=2)
        [ConfusedPair(true_idx=1, pred_idx=0, count=3), ConfusedPair(true_idx=0, pred_idx=1, count=2)]
    """
    m = as_tensor(cm, "cm").cpu()
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"cm must be a square [C, C] matrix, got shape {tuple(m.shape)}")
    n = m.shape[0]
    if class_names is not None and len(class_names) != n:
        raise ValueError(f"cm has {n} classes but {len(class_names)} class names were given")
    if top_n is not None and top_n < 0:
        raise ValueError(f"top_n must be >= 0 or None, got {top_n}")
    is_int = not (m.is_floating_point() or m.is_complex())
    values = m.to(torch.float64).flatten()
    off = ~torch.eye(n, dtype=torch.bool).flatten()
    cand = torch.nonzero(off & (values != 0) & ~values.isnan()).flatten()
    # A stable sort keeps the row-major order of equal counts: the (true, pred) tie-break.
    order = torch.sort(values[cand], descending=True, stable=True).indices
    flat = cand[order][:top_n].tolist()
    return [ConfusedPair(i // n, i % n, int(m.flatten()[i]) if is_int else float(values[i])) for i in flat]


def name_pairs(
    pairs: Sequence[tuple[int, int, Any]], class_names: Sequence[str]
) -> list[tuple[str, str, Any]]:
    """Replace class indices by names, e.g. to feed :func:`confused_pairs_figure`.

    Example:
        >>> name_pairs([(1, 0, 3)], ["cat", "dog"])
        [('dog', 'cat', 3)]
    """
    return [(class_names[t], class_names[p], c) for t, p, c in pairs]


def _cell(value: Any, float_format: str) -> str:
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral | bool):
        text = format(float(value), float_format)
    else:
        text = str(value)
    # A pipe would split the cell and a newline would end the table.
    return " ".join(text.split()).replace("|", "\\|")


def markdown_table(rows: Sequence[Sequence[Any]], headers: Sequence[str], float_format: str = ".3f") -> str:
    """A GitHub-flavoured Markdown table (TensorBoard's ``add_text`` renders these).

    Floats are formatted with ``float_format``; columns whose values are all numbers are
    right-aligned. Pipes in cells are escaped and newlines collapsed.

    Example:
        >>> print(markdown_table([("cat", "dog", 31), ("car", "truck", 0.5)], ["true", "pred", "n"]))
        | true | pred | n |
        | --- | --- | ---: |
        | cat | dog | 31 |
        | car | truck | 0.500 |
    """
    width = len(headers)
    for r, row in enumerate(rows):
        if len(row) != width:
            raise ValueError(f"row {r} has {len(row)} cells, expected {width} (one per header)")
    numeric = [
        bool(rows) and all(isinstance(_unwrap(row[k]), numbers.Number) for row in rows) for k in range(width)
    ]
    lines = [
        "| " + " | ".join(_cell(h, float_format) for h in headers) + " |",
        "| " + " | ".join("---:" if num else "---" for num in numeric) + " |",
    ]
    lines += ["| " + " | ".join(_cell(v, float_format) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _unwrap(value: Any) -> Any:
    return value.item() if isinstance(value, Tensor) and value.numel() == 1 else value
