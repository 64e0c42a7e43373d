"""Seeded, stratified splitting of a labelled set into named parts (train/val/test)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lit_explain.errors import DataError


def _allocate(total: int, weights: Sequence[float]) -> list[int]:
    """Split ``total`` into integers proportional to ``weights`` (largest remainder, ties to the first)."""
    norm = sum(weights)
    exact = [total * w / norm for w in weights]
    counts = [int(e) for e in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def stratified_split(
    labels: torch.Tensor | Sequence[int],
    sizes: Sequence[int],
    seed: int = 0,
    names: Sequence[str] = ("train", "val", "test"),
    class_names: Sequence[str] | None = None,
) -> list[torch.Tensor]:
    """Partition sample indices into parts of exactly ``sizes`` whose class proportions match the whole.

    Each class is shuffled with a generator seeded by ``seed`` and dealt to the parts in proportion to
    ``sizes``; the per-class counts are then corrected so every part has its exact size. The result is a
    pure function of ``(labels, sizes, seed)``. Indices inside each part are sorted (stable dataset order).

    Every part gets at least one sample of every class when the class has at least as many samples as
    there are non-empty parts; otherwise a :class:`DataError` names the class.

    Example:
        >>> train, val = stratified_split(torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), sizes=[6, 2], seed=0)
        >>> len(train), len(val)
        (6, 2)
    """
    labels = torch.as_tensor(labels, dtype=torch.long)
    n = labels.numel()
    if sum(sizes) != n:
        raise DataError(f"split sizes {list(sizes)} add up to {sum(sizes)}, but there are {n} samples")
    if any(s < 0 for s in sizes):
        raise DataError(f"split sizes must be >= 0, got {list(sizes)}")
    num_classes = int(labels.max()) + 1 if n else 0
    per_class = [torch.nonzero(labels == c).flatten() for c in range(num_classes)]
    counts = torch.tensor([len(idx) for idx in per_class])
    active = [i for i, s in enumerate(sizes) if s > 0]
    # Target per class and part, proportional to the part sizes, then fixed so columns sum to the sizes.
    table = torch.tensor(
        [_allocate(int(c), [sizes[i] for i in active]) for c in counts.tolist()], dtype=torch.long
    )
    table = table.reshape(num_classes, len(active))
    for col in range(len(active)):
        # Move samples between this part and later ones until its total is exact; the class with the most
        # slack gives or takes first, so the proportions stay as close as possible.
        need = sizes[active[col]] - int(table[:, col].sum())
        while need != 0:
            later = (
                table[:, col + 1 :].sum(dim=1)
                if col + 1 < len(active)
                else torch.zeros(num_classes, dtype=torch.long)
            )
            if need > 0:
                donor = int(torch.argmax(torch.where(later > 0, later, torch.full_like(later, -1))))
                row = table[donor, col + 1 :]
                j = int(torch.argmax(row)) + col + 1
                table[donor, col] += 1
                table[donor, j] -= 1
                need -= 1
            else:
                donor = int(torch.argmax(table[:, col]))
                table[donor, col] -= 1
                table[donor, col + 1] += 1
                need += 1
    for c in range(num_classes):
        if counts[c] == 0:
            continue
        empty = [
            names[active[j]] if active[j] < len(names) else str(active[j])
            for j in range(len(active))
            if table[c, j] == 0
        ]
        if empty:
            name = class_names[c] if class_names is not None and c < len(class_names) else str(c)
            raise DataError(
                f"class {name!r} would have no samples in the {', '.join(empty)} split(s): it has "
                f"{int(counts[c])} sample(s) and the splits hold {'/'.join(map(str, sizes))} of {n}. "
                "Add images of this class or change the split fractions"
            )
    generator = torch.Generator().manual_seed(int(seed))
    parts: list[list[torch.Tensor]] = [[] for _ in sizes]
    for c, idx in enumerate(per_class):
        shuffled = idx[torch.randperm(len(idx), generator=generator)]
        start = 0
        for j, part in enumerate(active):
            take = int(table[c, j])
            parts[part].append(shuffled[start : start + take])
            start += take
    return [torch.sort(torch.cat(p)).values if p else torch.zeros(0, dtype=torch.long) for p in parts]
