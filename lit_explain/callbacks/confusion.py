"""ConfusionMatrix: the validation confusion matrix, per-class accuracy and most-confused pairs in every tracker."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix

from lit_explain.callbacks.base import ExplainCallback, is_logging_rank, stage_prefix
from lit_explain.callbacks.captions import class_names
from lit_explain.compat import callback_state_key
from lit_explain.errors import ConfigError
from lit_explain.render import confused_pairs_table, confusion_matrix_image, per_class_accuracy_images
from lit_explain.render.pages import page_tags
from lit_explain.sinks import Table
from lit_explain.sinks.writer import StepLog


def per_class_accuracy(cm: Tensor) -> Tensor:
    """Recall of each class from a ``[C, C]`` matrix (rows true): ``diag / row sum``, NaN for absent classes."""
    cm = cm.double()
    support = cm.sum(dim=1)
    return torch.where(
        support > 0, cm.diagonal() / support.clamp_min(1), torch.full_like(support, float("nan"))
    )


def worst_k_mean(acc: Tensor, k: int) -> float:
    """Mean accuracy of the ``k`` worst classes that have samples (NaN when none has)."""
    present = acc[~acc.isnan()]
    if present.numel() == 0:
        return float("nan")
    return float(present.sort().values[: min(k, present.numel())].mean())


class ConfusionMatrix(ExplainCallback):
    """Accumulate the confusion matrix during validation and log figures, a table and scalars per epoch.

    The matrix is a torchmetrics :class:`~torchmetrics.classification.MulticlassConfusionMatrix` kept on
    the model's device and fed from ``validation_step``'s ``preds`` and ``targets`` (no extra forward,
    no host synchronisation per batch); torchmetrics sums it across DDP ranks when computed, which all
    ranks do at epoch end. The global-zero rank logs the scalar at once and hands the figures to the
    background writer, which logs to every tracker:

    * ``val/confusion_matrix``: the matrix as a figure (rows true, columns predicted) sized for
      TensorBoard's card: labels stay readable at its narrowest width (every k-th class is labelled
      beyond about 14 classes; per-cell numbers only when the classes are few);
    * ``val/per_class_accuracy``: a bar chart of per-class accuracy, worst first; above 50 classes in
      pages ``val/per_class_accuracy/page_0``, ``page_1``, ...;
    * ``val/confused_pairs``: a text table of the ``top_n_pairs`` most confused (true -> predicted) pairs;
    * scalar ``val/worst{worst_k}_class_acc`` (the overall accuracy is the model's ``val/acc``).

    Tags start with ``test/`` during ``trainer.test``. The sanity check is skipped.

    Args:
        normalize: row-normalise the matrix figure (per-true-class rates) instead of raw counts.
        top_n_pairs: how many confused pairs the table lists.
        worst_k: how many of the worst classes the ``worst{k}_class_acc`` scalar averages.

    Example (YAML, under ``trainer.callbacks``)::

        - class_path: lit_explain.callbacks.ConfusionMatrix
          init_args: {normalize: true, top_n_pairs: 10, worst_k: 5}

    Example (Python):
        >>> trainer = L.Trainer(callbacks=[ConfusionMatrix(normalize=False)])
    """

    def __init__(self, normalize: bool = True, top_n_pairs: int = 10, worst_k: int = 5) -> None:
        # Every epoch (no every_n_epochs): the matrix costs a figure, and `--explain.every_n_epochs N`
        # thins only the callbacks that run the explanation engine.
        super().__init__()
        if top_n_pairs < 1 or worst_k < 1:
            raise ConfigError(
                f"ConfusionMatrix: top_n_pairs and worst_k must be >= 1, got {top_n_pairs}, {worst_k}"
            )
        self.normalize = normalize
        self.top_n_pairs = top_n_pairs
        self.worst_k = worst_k
        self.metric: MulticlassConfusionMatrix | None = None
        self.last_matrix: Tensor | None = None
        self.last_scalars: dict[str, float] = {}

    @property
    def state_key(self) -> str:
        return callback_state_key(self, normalize=self.normalize, worst_k=self.worst_k)

    # -- collection --------------------------------------------------------------------------------
    def epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        num_classes = _num_classes(trainer, pl_module)
        if self.metric is None or self.metric.num_classes != num_classes:
            self.metric = MulticlassConfusionMatrix(num_classes=num_classes, validate_args=False)
        self.metric = self.metric.to(pl_module.device)
        self.metric.reset()

    def batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not isinstance(outputs, Mapping) or "preds" not in outputs or "targets" not in outputs:
            raise ConfigError(
                "ConfusionMatrix needs validation_step/test_step to return a dict with 'preds' and 'targets' "
                "(as lit_explain's ImageClassifier does)"
            )
        assert self.metric is not None
        self.metric.update(outputs["preds"], outputs["targets"])

    # -- epoch end ---------------------------------------------------------------------------------
    def epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.metric is None:
            return
        cm = self.metric.compute()  # every rank: torchmetrics sums the matrices across processes here
        self.metric.reset()
        if not is_logging_rank(trainer):
            return
        cm = cm.detach().cpu().long()
        self.last_matrix = cm
        prefix = stage_prefix(trainer)
        # The overall accuracy is the model's own `val/acc`; logging it again here only duplicated it.
        scalars = {
            f"{prefix}/worst{self.worst_k}_class_acc": worst_k_mean(per_class_accuracy(cm), self.worst_k)
        }
        self.log_scalars(trainer, scalars)
        self.last_scalars = scalars
        names = class_names(pl_module, cm.shape[0])
        epoch = trainer.current_epoch
        self.submit(trainer, lambda log: self._write(log, cm, names, prefix, epoch), "confusion matrix")

    def _write(self, log: StepLog, cm: Tensor, names: list[str], prefix: str, epoch: int) -> None:
        """On the background writer: the matrix and per-class figures, and the confused-pairs table."""
        # Drawn as pixels; each chart's fixed parts are kept between epochs (render/charts.py).
        title = f"Confusion matrix ({prefix})"
        matrix = confusion_matrix_image(cm, names, normalize=self.normalize, title=title)
        log.image(
            f"{prefix}/confusion_matrix", matrix, caption=f"epoch {epoch}: rows true, columns predicted"
        )
        pages = per_class_accuracy_images(
            per_class_accuracy(cm), names, title=f"Per-class accuracy ({prefix})"
        )
        tag = f"{prefix}/per_class_accuracy"
        tags = [tag] if len(pages) == 1 else page_tags(tag, len(pages))
        for n, (page_tag, page) in enumerate(zip(tags, pages, strict=True), 1):
            numbered = f" (page {n} of {len(pages)})" if len(pages) > 1 else ""
            log.image(
                page_tag, page, caption=f"epoch {epoch}: classes sorted by accuracy, worst first{numbered}"
            )
        support = cm.sum(dim=1)
        rows = [
            (names[p.true_idx], names[p.pred_idx], p.count, p.count / max(int(support[p.true_idx]), 1))
            for p in confused_pairs_table(cm, names, top_n=self.top_n_pairs)
        ]
        table = Table(
            ("true", "predicted", "count", "share of true class"),
            rows,
            empty_text="no confusions: every sample was classified correctly",
        )
        log.table(f"{prefix}/confused_pairs", table)


def _num_classes(trainer: L.Trainer, pl_module: L.LightningModule) -> int:
    hp = getattr(pl_module, "hparams", {})
    n = hp.get("num_classes") or (len(hp["class_names"]) if hp.get("class_names") else None)
    dm = getattr(trainer, "datamodule", None)
    if n is None and dm is not None and hasattr(dm, "num_classes"):
        n = dm.num_classes
    if not n:
        raise ConfigError("ConfusionMatrix: cannot tell the number of classes; set model.num_classes")
    return int(n)
