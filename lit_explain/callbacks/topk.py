"""A running top-k of samples as a torchmetrics :class:`~torchmetrics.Metric`: the buffers live on the
device, merge batch by batch without host synchronisation, and are concatenated across DDP ranks by
declaration (``dist_reduce_fx="cat"``) when computed."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields

import torch
from torch import Tensor
from torchmetrics import Metric


@dataclass
class TopK:
    """The k best-scoring samples seen so far, all tensors on the device (``score = -inf`` marks a free slot)."""

    score: Tensor  # float32 [k]
    image: Tensor  # [k, C, H, W]
    label: Tensor  # int64 [k]
    pred: Tensor  # int64 [k]
    confidence: Tensor  # float32 [k], probability of the predicted class
    loss: Tensor  # float32 [k]
    index: Tensor  # int64 [k], dataset index (-1: unknown)
    rank: Tensor  # int64 [k], the process that saw it

    @classmethod
    def empty(cls, k: int, image_shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> TopK:
        long = {"dtype": torch.long, "device": device}
        return cls(
            score=torch.full((k,), float("-inf"), device=device),
            image=torch.zeros((k, *image_shape), dtype=dtype, device=device),
            label=torch.full((k,), -1, **long),
            pred=torch.full((k,), -1, **long),
            confidence=torch.zeros(k, device=device),
            loss=torch.zeros(k, device=device),
            index=torch.full((k,), -1, **long),
            rank=torch.full((k,), -1, **long),
        )

    def as_dict(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def merge(self, new: TopK) -> TopK:
        """Keep the k highest scores of ``self`` and ``new``: one cat and one topk, no host synchronisation."""
        k = self.score.shape[0]
        score = torch.cat([self.score, new.score.to(self.score.dtype)])
        best = torch.topk(score, k, sorted=False).indices
        incoming = new.as_dict()
        merged = {
            name: torch.cat([mine, incoming[name].to(mine.dtype)]).index_select(0, best)
            for name, mine in self.as_dict().items()
        }
        return TopK(**merged)

    def select(self, order: Tensor) -> TopK:
        return TopK(**{name: t.index_select(0, order) for name, t in self.as_dict().items()})


class TopKSamples(Metric):
    """The ``k`` highest-scoring samples (with their images and predictions) of an epoch, across ranks.

    Args:
        k: how many samples to keep.
        image_shape: ``(C, H, W)`` of the images (the buffers are preallocated).

    Example:
        >>> top = TopKSamples(k=2, image_shape=(3, 4, 4))
        >>> top.update(TopK(torch.tensor([0.1, 0.9, 0.5]), torch.zeros(3, 3, 4, 4), *[torch.zeros(3)] * 6))
        >>> top.compute().score.tolist()
        [0.8999999761581421, 0.5]
    """

    full_state_update = False

    def __init__(self, k: int, image_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.k = k
        self.image_shape = tuple(int(s) for s in image_shape)
        empty = TopK.empty(k, self.image_shape, torch.device("cpu"), torch.float32)
        for name, default in empty.as_dict().items():
            # Every rank holds k slots; "cat" gathers them all and compute keeps the best k overall.
            self.add_state(name, default=default, dist_reduce_fx="cat")

    def _current(self) -> TopK:
        return TopK(**{f.name: getattr(self, f.name) for f in fields(TopK)})

    def update(self, new: TopK) -> None:
        merged = self._current().merge(new)
        for name, value in merged.as_dict().items():
            setattr(self, name, value)

    def compute(self) -> TopK:
        """The best k (fewer when fewer samples were seen) over every rank, best first."""
        # After a distributed sync torchmetrics stacks the ranks' states ([world, k, ...]): flatten them.
        everything = TopK(
            **{
                name: t.reshape(-1, *self.image_shape) if name == "image" else t.reshape(-1)
                for name, t in self._current().as_dict().items()
            }
        )
        # One host synchronisation per epoch: how many slots hold a real sample.
        valid = int((everything.score > float("-inf")).sum())
        order = torch.topk(everything.score, min(self.k, valid)).indices
        return everything.select(order)

    def compute_quietly(self) -> TopK:
        """:meth:`compute` on a rank that may have seen no batch (it still joins the gathering)."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*compute.*before.*update.*")
            return self.compute()
