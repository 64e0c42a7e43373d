"""True-class maps from the predicted-class pass's own graph, where enough rows are misclassified to pay off.

A misclassified row needs a second map, for its label. Explained on its own it costs a forward and a backward
pass over those rows; from the graph the predicted pass already built it costs one more backward pass over
the whole batch. Which is cheaper depends on how many rows are wrong: early in training and for a batch of the
worst validation samples most are, once a model has learned few are.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lit_explain.explain._common import Targets, split_batch

__all__ = ["SHARE_FROM", "TrueRows", "labelled_slices", "rows_to_share"]

SHARE_FROM = 0.25
"""Share of misclassified rows from which their maps come from the predicted pass's graph. Measured on timm's
ResNet-10-T with 48 images at 64 px (2 CPU threads): a separate pass took 7.6 ms for 3 rows, 16.5 ms for 16
and 30.6 ms for 39; the extra backward pass over all 48 rows 9.5 ms."""


@dataclass(frozen=True)
class TrueRows:
    """The true-class maps of some rows of a batch: ``rows`` (int64 ``[n]`` positions) and ``maps`` ``[n, 1, H, W]``."""

    rows: Tensor
    maps: Tensor

    @staticmethod
    def concat(parts: Sequence[tuple[int, TrueRows | None]]) -> TrueRows | None:
        """The parts of consecutive slices, each given with the position of its slice's first row."""
        found = [(start, part) for start, part in parts if part is not None]
        if not found:
            return None
        rows = torch.cat([part.rows + start for start, part in found])
        return TrueRows(rows=rows, maps=torch.cat([part.maps for _, part in found]))


def rows_to_share(labels: Tensor | None, explained: Tensor) -> Tensor | None:
    """The rows whose known label (``>= 0``) differs from the class ``explained``, when they are at least
    :data:`SHARE_FROM` of the batch (else None: a separate pass over them is cheaper).

    Example:
        >>> rows_to_share(torch.tensor([0, 1, 2, -1]), torch.tensor([0, 2, 1, 3])).tolist()
        [1, 2]
        >>> rows_to_share(torch.tensor([0, 1, 2, 3, 4]), torch.tensor([0, 1, 2, 3, 0])) is None
        True
    """
    if labels is None:
        return None
    labels = labels.to(explained.device)
    wrong = torch.nonzero((labels >= 0) & (labels != explained)).flatten()
    if wrong.numel() == 0 or wrong.numel() < SHARE_FROM * labels.numel():
        return None
    return wrong


def labelled_slices(
    images: Tensor, targets: Targets, labels: Tensor | None, batch_size: int | None
) -> Iterator[tuple[int, Tensor, Targets, Tensor | None]]:
    """:func:`~lit_explain.explain._common.split_batch`'s slices with the position of each slice's first row
    and its labels (None without labels), for passes that return :class:`TrueRows` to :meth:`TrueRows.concat`.

    Example:
        >>> [(start, len(x), y.tolist()) for start, x, _, y in labelled_slices(torch.zeros(5, 1), None, torch.arange(5), 2)]
        [(0, 2, [0, 1]), (2, 2, [2, 3]), (4, 1, [4])]
    """
    start = 0
    for xs, ts in split_batch(images, targets, batch_size):
        yield start, xs, ts, None if labels is None else labels[start : start + xs.shape[0]]
        start += xs.shape[0]
