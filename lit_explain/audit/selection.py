"""Which samples the report shows: per class the surest hits and the worst misses; the top confused pairs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lit_explain.audit.sweep import SweepResult
from lit_explain.render import confused_pairs_table


@dataclass(frozen=True)
class ClassSelection:
    """Sweep positions shown for one class: ``best`` (correct, most confident first) and ``worst``."""

    class_id: int
    best: list[int]
    worst: list[int]

    @property
    def positions(self) -> list[int]:
        return [*self.best, *self.worst]


@dataclass(frozen=True)
class PairSelection:
    """The ``rank``-th most confused pair ``true_id -> pred_id`` and the positions of its examples."""

    rank: int
    true_id: int
    pred_id: int
    count: int
    positions: list[int] = field(default_factory=list)


def select_class_samples(
    result: SweepResult, class_id: int, n_best: int = 3, n_worst: int = 5
) -> ClassSelection:
    """The ``n_best`` correct samples of highest confidence, and the ``n_worst`` worst ones.

    Worst means misclassified, the most confidently wrong first (those hurt most); when a class has fewer
    errors than ``n_worst``, its correct samples of lowest confidence fill the rest.

    Example:
        >>> sel = select_class_samples(result, class_id=3)   # doctest: +SKIP
        >>> sel.best, sel.worst                               # sweep positions
    """
    mine = torch.nonzero(result.labels == class_id).flatten()
    if mine.numel() == 0:
        return ClassSelection(class_id, [], [])
    correct = result.correct[mine]
    conf = result.confidence[mine]
    right = mine[correct][conf[correct].argsort(descending=True, stable=True)]
    wrong = mine[~correct][conf[~correct].argsort(descending=True, stable=True)]
    best = right[:n_best].tolist()
    # Low-confidence hits, least confident first, that are not already among the best.
    shaky = [p for p in right.flip(0).tolist() if p not in best]
    worst = [*wrong[:n_worst].tolist(), *shaky][:n_worst]
    return ClassSelection(class_id, best, worst)


def select_pairs(
    result: SweepResult, classes: Sequence[int] | None = None, top_n: int = 15, examples: int = 6
) -> list[PairSelection]:
    """The ``top_n`` most frequent (true -> predicted) confusions among ``classes`` (true side), largest first.

    Each pair carries up to ``examples`` positions of its samples, the most confidently wrong first.
    """
    cm = result.confusion_matrix()
    if classes is not None:
        keep = torch.zeros(cm.shape[0], dtype=torch.bool)
        keep[list(classes)] = True
        cm = cm * keep[:, None]
    pairs = []
    for rank, pair in enumerate(confused_pairs_table(cm, top_n=top_n), start=1):
        hits = torch.nonzero((result.labels == pair.true_idx) & (result.preds == pair.pred_idx)).flatten()
        order = result.confidence[hits].argsort(descending=True, stable=True)
        pairs.append(
            PairSelection(
                rank, pair.true_idx, pair.pred_idx, int(pair.count), hits[order][:examples].tolist()
            )
        )
    return pairs


def probe_positions(result: SweepResult, classes: Sequence[int], per_class: int = 2) -> list[int]:
    """A fixed, label-balanced probe: the first ``per_class`` samples of each class, interleaved by class.

    Depends only on the data order, not on the model, so two audits of the same split probe the same
    images (which is what makes their attention comparable).
    """
    chosen: dict[int, list[int]] = {c: [] for c in classes}
    for pos, label in enumerate(result.labels.tolist()):
        bucket = chosen.get(label)
        if bucket is not None and len(bucket) < per_class:
            bucket.append(pos)
    return [chosen[c][r] for r in range(per_class) for c in classes if r < len(chosen[c])]


def most_confused_with(cm: Tensor) -> tuple[Tensor, Tensor]:
    """Per true class, the class it is most often mistaken for and the count (``-1, 0`` when never wrong)."""
    off = cm.clone()
    off.fill_diagonal_(-1)
    counts, other = off.max(dim=1)
    none = counts <= 0
    return torch.where(none, -1, other), torch.where(none, 0, counts)
