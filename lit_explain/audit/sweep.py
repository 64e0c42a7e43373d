"""One inference pass over a split that keeps only O(N) scalars per sample."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from lit_explain.data.batch import split_batch
from lit_explain.explain import eval_mode


@dataclass(frozen=True)
class SweepResult:
    """Per-sample outcome of one pass over a split (all tensors ``[N]`` on the CPU).

    Example:
        >>> result = sweep(model.net, dataset, num_classes=6)          # doctest: +SKIP
        >>> result.accuracy, result.confusion_matrix().shape           # doctest: +SKIP
    """

    indices: Tensor  # int64: position of the sample in the split's dataset
    labels: Tensor  # int64
    preds: Tensor  # int64: the arg-max class
    second: Tensor  # int64: the runner-up class
    confidence: Tensor  # float32: probability of the predicted class
    true_prob: Tensor  # float32: probability of the true class
    loss: Tensor  # float32: cross-entropy of the sample
    num_classes: int

    def __len__(self) -> int:
        return int(self.labels.numel())

    @property
    def correct(self) -> Tensor:
        return self.preds == self.labels

    @property
    def accuracy(self) -> float:
        return float(self.correct.float().mean()) if len(self) else float("nan")

    def confusion_matrix(self) -> Tensor:
        """``[C, C]`` int64 counts, rows true and columns predicted."""
        c = self.num_classes
        flat = self.labels * c + self.preds
        return torch.bincount(flat, minlength=c * c).view(c, c)


def sweep(
    net: nn.Module,
    dataset: Dataset,
    num_classes: int,
    indices: Sequence[int] | Tensor | None = None,
    *,
    batch_size: int = 256,
    num_workers: int = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
    description: str = "audit: inference",
) -> SweepResult:
    """Run ``net`` once over ``dataset`` (or the given ``indices`` of it) and keep per-sample scalars.

    Nothing but seven numbers per sample stays in memory, so a split of any size fits. The network is put
    in eval mode for the pass and its train/eval flags are restored afterwards.
    """
    if device is None:
        device = next(net.parameters()).device
    device = torch.device(device)
    positions = torch.arange(len(dataset)) if indices is None else torch.as_tensor(indices, dtype=torch.long)
    source = dataset if indices is None else Subset(dataset, positions.tolist())
    loader = DataLoader(
        source,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    n = len(positions)
    out = {
        "labels": torch.empty(n, dtype=torch.long),
        "preds": torch.empty(n, dtype=torch.long),
        "second": torch.empty(n, dtype=torch.long),
        "confidence": torch.empty(n, dtype=torch.float32),
        "true_prob": torch.empty(n, dtype=torch.float32),
        "loss": torch.empty(n, dtype=torch.float32),
    }
    start = 0
    with eval_mode(net), torch.inference_mode():
        for batch in tqdm(loader, desc=description, unit="batch", disable=not progress, leave=False):
            images, labels = split_batch(batch)
            images = images.to(device, non_blocking=True)
            labels = torch.as_tensor(labels).to(device, non_blocking=True).long()
            logits = net(images).float()
            if logits.shape[1] != num_classes:
                raise ValueError(
                    f"the model returns {logits.shape[1]} scores per image, expected {num_classes}"
                )
            log_probs = logits.log_softmax(dim=1)
            top = log_probs.topk(min(2, num_classes), dim=1)
            stop = start + labels.numel()
            out["labels"][start:stop] = labels.cpu()
            out["preds"][start:stop] = top.indices[:, 0].cpu()
            out["second"][start:stop] = top.indices[:, -1].cpu()
            out["confidence"][start:stop] = top.values[:, 0].exp().cpu()
            out["true_prob"][start:stop] = log_probs.gather(1, labels[:, None])[:, 0].exp().cpu()
            out["loss"][start:stop] = F.nll_loss(log_probs, labels, reduction="none").cpu()
            start = stop
    if start != n:
        raise RuntimeError(f"the data loader yielded {start} samples for a dataset of {n}")
    return SweepResult(indices=positions, num_classes=num_classes, **out)
