"""TrainingDynamics: find likely mislabelled training images from the logits training computes anyway."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import default_collate
from torchmetrics import Metric

from lit_explain.callbacks.base import ExplainCallback, is_logging_rank
from lit_explain.callbacks.captions import sample_sources
from lit_explain.callbacks.settings import (
    check_explain_layers,
    check_explain_method,
    explain_layers,
    explained_net,
)
from lit_explain.compat import callback_state_key
from lit_explain.data.batch import batch_indices, split_batch
from lit_explain.errors import ConfigError
from lit_explain.explain import cam, fast_layout
from lit_explain.findings import record_findings
from lit_explain.findings.dynamics import (
    CSV_COLUMNS,
    METHODS,
    DynamicsStats,
    LabelIssueTable,
    Method,
    cartography,
    epoch_weight,
    hard_labels,
    label_issue_table,
    label_issues_finding,
    step_values,
)
from lit_explain.outputs import write_csv
from lit_explain.render import colorbar, overlay, panel_pages
from lit_explain.render.card import MAX_PAGE_PX
from lit_explain.render.cartography import CartographyCanvas
from lit_explain.render.pages import display_images, page_tags, readable_font_px
from lit_explain.runs import run_folder
from lit_explain.sinks import Table
from lit_explain.sinks.writer import HostTensors, StepLog, to_host

LABEL_ISSUES_FILE = "label_issues.csv"
# Rows of the float sums, in DynamicsStats' field order.
SUMS = ("margin_sum", "prob_sum", "prob_sq_sum", "correct_sum", "count", "late_margin_sum", "late_weight_sum")
STATE_NAMES = ("sums", "latest", "class_probs")
MAX_CELL_PX = 160
TABLE_COLUMNS = ("rank", "source", "given", "suggested", "late AUM", "AUM", "confidence", "correctness")


class DynamicsAccumulator(Metric):
    """Per-sample sums of one epoch's step values, preallocated on the device; a torchmetrics Metric.

    ``sums`` ``[7, N]`` (margin, probability, probability², correct, count, epoch-weighted margin and weight)
    and ``class_probs`` ``[N, C]``
    (softmax probabilities, for the suggested label) are reduced across DDP
    ranks by ``"sum"``, ``latest`` ``[2, N]`` (given label, runner-up class; -1 = not seen this epoch) by
    ``"max"``: distributed behaviour is a declaration. Each step adds its batch with two ``index_add_`` and
    one ``index_copy_``: no host synchronisation.

    Example:
        >>> acc = DynamicsAccumulator(num_samples=10, num_classes=3)
        >>> acc.update(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), torch.tensor([3, 4, 5, 6]))
        >>> sums, latest, class_probs = acc.compute()
        >>> sums.shape, int(sums[4].sum()), class_probs.shape
        (torch.Size([7, 10]), 4, torch.Size([10, 3]))
    """

    full_state_update = False
    sums: Tensor
    latest: Tensor
    class_probs: Tensor

    def __init__(self, num_samples: int, num_classes: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_samples, self.num_classes = num_samples, num_classes
        self.add_state("sums", torch.zeros(len(SUMS), num_samples), dist_reduce_fx="sum")
        self.add_state("latest", torch.full((2, num_samples), -1, dtype=torch.long), dist_reduce_fx="max")
        self.add_state("class_probs", torch.zeros(num_samples, num_classes), dist_reduce_fx="sum")

    def update(self, logits: Tensor, labels: Tensor, index: Tensor, weight: float = 1.0) -> None:
        """Add a batch: its logits ``[B, C]``, labels (``[B]`` or soft ``[B, C]``), dataset indices ``[B]``
        and the epoch's weight for the late-weighted AUM."""
        logits = logits.detach().float()
        v = step_values(logits, labels)
        index = index.to(self.sums.device, torch.long)
        one = torch.ones_like(v.prob)
        values = torch.stack(
            [v.margin, v.prob, v.prob * v.prob, v.correct, one, weight * v.margin, weight * one]
        )
        self.sums.index_add_(1, index, values)
        self.class_probs.index_add_(0, index, logits.softmax(dim=1))
        given = torch.stack([hard_labels(labels).to(v.other.device), v.other])
        self.latest.index_copy_(1, index, given)

    def compute(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.sums, self.latest, self.class_probs

    def nbytes(self) -> int:
        """Bytes of the state tensors (what the callback holds per epoch: O(N * (C + 11)))."""
        return sum(t.numel() * t.element_size() for t in (self.sums, self.latest, self.class_probs))


class TrainingDynamics(ExplainCallback):
    """Rank the training samples by how likely their label is wrong, from every training step's logits.

    Each training step's logits (``training_step`` returns ``{"loss", "logits"}``; the batch carries the
    samples' dataset ``index``) give per sample its margin (given-class logit minus the largest other), the
    given-class probability, whether it was predicted and the softmax probabilities; a
    :class:`DynamicsAccumulator` adds them on the device (preallocated, ``N * (C + 11)`` numbers for N
    training samples of C classes, gathered across DDP ranks once per epoch). At the end of every training
    epoch from ``start_epoch`` (and at the end of fit) on the global-zero rank:

    * ``<run folder>/label_issues.csv`` (atomic): every training sample, most suspicious first, with
      ``rank, index, source, given_label, suggested_label, score, flagged, aum, late_aum, confidence,
      variability, correctness, seen``. ``score`` is minus the late-weighted AUM: the area under the margin
      (Pleiss et al. 2020) with epoch ``e``'s margin weighted by ``e²``, which ranked flipped labels best in
      docs/benchmarks.md ("Label issues"); ``suggested_label`` is the most
      probable other class over the run; ``flagged`` marks the first rows, as many as a two-component Gaussian
      mixture on the late-weighted AUM puts in its low group (none when that group's mean margin is not
      negative; :func:`~lit_explain.findings.dynamics.mixture_issue_count`);
    * in every logger: the Dataset Cartography picture (``explain/label_issues/cartography``), the ``top_k``
      most suspicious images with the CAMs of their given and suggested label (``explain/label_issues/page_N``)
      and a table (``explain/label_issues/table``), the scalar ``explain/label_issues/flagged``;
    * at the end of fit, when any are flagged: a ``label_issues`` entry in ``<run folder>/findings.json``
      (how many, the top five sources) and one warning line.

    The state is saved in checkpoints, so a resumed run continues its sums. Training is not touched: the
    weights are bit-identical with and without the callback. MixUp/CutMix batches (soft labels ``[B, C]``)
    count towards their dominant class. Pleiss' threshold samples are not used: they add a fake class to a
    subset of the data, which would change training.

    Args:
        method: ``"late_aum"`` (epoch²-weighted mean margin), ``"aum"`` (Pleiss' plain mean margin) or
            ``"confidence"`` (cartography's mean given-class probability).
        threshold: None: flag the low group of a two-group mixture on the late-weighted AUM; a number: flag the
            samples whose (late) AUM or, for ``"confidence"``, mean confidence is below it.
        top_k: suspicious images shown with their CAMs (0: none).
        layer: layer(s) to explain; None = the model's ``default_explain_layers``.
        cam_method: the CAM method for the pictures.
        alpha, cmap, min_cell: the overlays' opacity, colour map and cell size.
        start_epoch: the first epoch (1-based) after which the ranking is written.
        every_n_epochs: write after every n-th epoch only (always at the end of fit).

    Example (YAML, under ``trainer.callbacks``)::

        - class_path: lit_explain.callbacks.TrainingDynamics
          init_args: {top_k: 16}

    Example (Python):
        >>> trainer = L.Trainer(callbacks=[TrainingDynamics(top_k=8)])   # doctest: +SKIP
    """

    def __init__(
        self,
        method: Method = "late_aum",
        threshold: float | None = None,
        top_k: int = 16,
        layer: str | list[str] | None = None,
        cam_method: str = "gradcam",
        alpha: float = 0.5,
        cmap: str = "jet",
        min_cell: int = 96,
        start_epoch: int = 2,
        every_n_epochs: int = 1,
    ) -> None:
        super().__init__(every_n_epochs)
        if method not in METHODS:
            raise ConfigError(f"TrainingDynamics: method must be one of {', '.join(METHODS)}, got {method!r}")
        if top_k < 0 or start_epoch < 1:
            raise ConfigError(
                f"TrainingDynamics: top_k must be >= 0 and start_epoch >= 1, got {top_k}, {start_epoch}"
            )
        self.method = method
        self.threshold = threshold
        self.top_k = top_k
        self.layer = layer
        self.cam_method = cam_method
        self.alpha = alpha
        self.cmap = cmap
        self.min_cell = min_cell
        self.start_epoch = start_epoch
        self.accumulator: DynamicsAccumulator | None = None
        # Folded epochs' totals (identical on every rank): sums [7, N], latest [2, N], class_probs [N, C].
        self.totals: tuple[Tensor, Tensor, Tensor] | None = None
        self.epochs = 0
        self.last_table: LabelIssueTable | None = None
        self._pending: dict[str, Any] | None = None
        self._sources: list[str] | None = None
        self._ranked_at: tuple[int, int] | None = None
        self._warned: set[str] = set()
        self._canvas: CartographyCanvas | None = None  # built at the first picture, redrawn every epoch

    @property
    def state_key(self) -> str:
        return callback_state_key(self, method=self.method)

    # -- set-up ------------------------------------------------------------------------------------
    def on_setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and self.top_k:
            check_explain_method(type(self).__name__, self.cam_method)

    def on_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit" and self.top_k:
            check_explain_layers(type(self).__name__, pl_module, self.layer)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        with self.timed(trainer):
            n = _train_size(trainer)
            c = getattr(getattr(pl_module, "hparams", None), "num_classes", None)
            if n is None or c is None:
                missing = (
                    "training set's size" if n is None else "model's number of classes (hparams.num_classes)"
                )
                self._warn_once("size", f"TrainingDynamics: the {missing} is unknown; nothing recorded")
                return
            acc = self.accumulator
            if acc is None or (acc.num_samples, acc.num_classes) != (n, c):
                self.accumulator = DynamicsAccumulator(n, c)
                self.totals = None
            self.accumulator = self.accumulator.to(pl_module.device)
            if self.totals is None:
                device = pl_module.device
                self.totals = (
                    torch.zeros(len(SUMS), n, device=device),
                    torch.full((2, n), -1, dtype=torch.long, device=device),
                    torch.zeros(n, c, device=device),
                )
            self._restore(n, c, pl_module.device)

    # -- recording ---------------------------------------------------------------------------------
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.accumulator is None:
            return
        with self.timed(trainer):
            logits = outputs.get("logits") if isinstance(outputs, dict) else None
            index = batch_indices(batch)
            if logits is None or index is None:
                what = "logits in training_step's output" if logits is None else "an 'index' in the batch"
                self._warn_once(what, f"TrainingDynamics: no {what}; nothing recorded for these batches")
                return
            self.accumulator.update(logits, split_batch(batch)[1], index, epoch_weight(trainer.current_epoch))
            # Folded (all ranks, one collective) after the epoch's last batch: before validation, so a
            # checkpoint written at validation end already holds this epoch.
            if batch_idx + 1 == trainer.num_training_batches:
                self._fold()

    def _fold(self) -> None:
        """Add the epoch's (rank-reduced) sums to the totals and start the next epoch's."""
        if self.accumulator is None or self.totals is None or not self.accumulator.update_called:
            return
        sums, latest, class_probs = self.accumulator.compute()
        total_sums, total_latest, total_probs = self.totals
        self.totals = (
            total_sums + sums,
            torch.where(latest >= 0, latest, total_latest),
            total_probs + class_probs,
        )
        self.accumulator.reset()
        self.epochs += 1

    # -- ranking -----------------------------------------------------------------------------------
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        with self.timed(trainer):
            self._fold()
        epoch = trainer.current_epoch + 1  # epochs completed
        if epoch >= self.start_epoch and epoch % self.every_n_epochs == 0:
            with self.timed(trainer):
                self._rank_and_write(trainer, pl_module, epoch, final=False)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        with self.timed(trainer):
            self._fold()
            # After fit the trainer's epoch counter already points past the last epoch: epochs completed.
            self._rank_and_write(trainer, pl_module, trainer.current_epoch, final=True)

    def stats(self) -> DynamicsStats | None:
        """The sums so far as :class:`~lit_explain.findings.dynamics.DynamicsStats` (None before training)."""
        if self.totals is None:
            return None
        sums, latest, class_probs = self.totals
        return DynamicsStats(*sums, label=latest[0], other=latest[1], class_prob_sum=class_probs)

    def _rank_and_write(
        self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int, final: bool
    ) -> None:
        stats = self.stats()
        if stats is None or not trainer.is_global_zero or float(stats.count.sum()) == 0:
            return
        key = (trainer.global_step, self.epochs)
        if key == self._ranked_at:  # fit end right after the last epoch's ranking: only the finding is new
            table = self.last_table
        else:
            stats = stats.to("cpu")
            names = _class_names(pl_module)
            table = label_issue_table(
                stats, self._sample_sources(trainer), names, self.method, self.threshold
            )
            self.last_table, self._ranked_at = table, key
            folder = run_folder(trainer)
            write_csv(f"{folder}/{LABEL_ISSUES_FILE}", table.rows, CSV_COLUMNS, overwrite=True)
            self.log_scalars(trainer, {self.tag(trainer, "label_issues/flagged"): float(table.flagged)})
            if is_logging_rank(trainer):
                self._submit_pictures(trainer, pl_module, stats, table, epoch)
        if final and table is not None:
            finding = label_issues_finding(table, epoch)
            record_findings(run_folder(trainer), [finding] if finding else [])
            if finding is not None:
                rank_zero_warn(f"TrainingDynamics: {finding.message}")

    def _sample_sources(self, trainer: L.Trainer) -> list[str]:
        if self._sources is None:
            n = self.accumulator.num_samples if self.accumulator is not None else 0
            self._sources = sample_sources(trainer, "train", range(n))
        return self._sources

    # -- pictures ----------------------------------------------------------------------------------
    def _submit_pictures(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        stats: DynamicsStats,
        table: LabelIssueTable,
        epoch: int,
    ) -> None:
        carto = cartography(stats)
        flagged = torch.zeros(len(stats.count), dtype=torch.bool)
        flagged[[row["index"] for row in table.rows if row["flagged"]]] = True
        top = table.rows[: self.top_k]
        explained = self._explain_top(trainer, pl_module, [row["index"] for row in top]) if top else None
        hp = getattr(pl_module, "hparams", {})
        host = to_host(**(explained or {}))
        meta = {
            "rows": top,
            "mean": hp.get("mean"),
            "std": hp.get("std"),
            "epoch": epoch,
            "flagged": table.flagged,
            "total": len(table.rows),
            "tag": self.tag(trainer, "label_issues"),
            "alpha": self.alpha,
            "cmap": self.cmap,
            "min_cell": self.min_cell,
            "cam_method": self.cam_method,
        }
        carto_host = (carto.confidence, carto.variability, carto.correctness, flagged)
        if self._canvas is None:
            self._canvas = CartographyCanvas()
        canvas = self._canvas
        self.submit(trainer, lambda log: _write(log, host, carto_host, meta, canvas), "label issues")

    def _explain_top(
        self, trainer: L.Trainer, pl_module: L.LightningModule, indices: Sequence[int]
    ) -> dict[str, Tensor] | None:
        """The images at ``indices`` of the training split with CAMs of the given and the suggested label."""
        images = train_images(getattr(trainer, "datamodule", None), indices)
        if images is None:
            return None
        stats = self.stats()
        assert stats is not None
        index = torch.tensor(list(indices), device=stats.label.device)
        given, suggested = stats.label[index], stats.other[index]
        images = images.to(pl_module.device)
        net = explained_net(pl_module)
        layers = explain_layers(pl_module, self.layer)
        with torch.inference_mode(False), torch.enable_grad():
            # One engine call for both targets: the images twice, given labels then suggested ones.
            result = cam(
                net,
                fast_layout(torch.cat([images, images]).clone()),  # channels-last on the CPU: faster
                layer=layers,
                targets=torch.cat([given, suggested]).to(pl_module.device),
                method=self.cam_method,
            )
        k = len(indices)
        return {"images": images, "given_maps": result.maps[:k], "suggested_maps": result.maps[k:]}

    # -- checkpoints -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self.totals is None:
            return {"epochs": self.epochs}
        state: dict[str, Any] = {"epochs": self.epochs}
        state.update({name: t.cpu() for name, t in zip(STATE_NAMES, self.totals, strict=True)})
        if self.accumulator is not None and self.accumulator.update_called:
            # A checkpoint written mid-epoch: this rank's share of the epoch so far (all of it on one device).
            # The raw states, not compute(): no collective inside a checkpoint save.
            state["epoch"] = {name: getattr(self.accumulator, name).cpu() for name in STATE_NAMES}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Applied once the training set's size is known (on_train_start); Lightning restores callback
        # state after setup, before the loop starts.
        self._pending = dict(state_dict)
        self.epochs = int(state_dict.get("epochs", 0))

    def _restore(self, n: int, c: int, device: torch.device) -> None:
        state, self._pending = self._pending, None
        if not state or "sums" not in state:
            return
        if tuple(state["class_probs"].shape) != (n, c):
            rank_zero_warn(
                f"TrainingDynamics: the checkpoint recorded {state['class_probs'].shape[0]} training samples "
                f"of {state['class_probs'].shape[1]} classes, this run has {n} of {c}; the label-issue sums "
                "start afresh"
            )
            self.epochs = 0
            return
        sums, latest, class_probs = (state[name].to(device) for name in STATE_NAMES)
        if "epoch" in state:
            # Saved mid-epoch: that epoch's steps so far join the totals now; the rest of it adds the others.
            part = {name: t.to(device) for name, t in state["epoch"].items()}
            sums, class_probs = sums + part["sums"], class_probs + part["class_probs"]
            latest = torch.where(part["latest"] >= 0, part["latest"], latest)
        self.totals = (sums, latest, class_probs)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(message)


def _train_size(trainer: L.Trainer) -> int | None:
    """Number of training samples: the data module's train split, else the training loader's dataset."""
    dm = getattr(trainer, "datamodule", None)
    if dm is not None and hasattr(dm, "dataset"):
        try:
            return len(dm.dataset("train"))
        except (TypeError, ValueError, KeyError):
            pass
    loader = trainer.train_dataloader
    dataset = getattr(loader, "dataset", None)
    try:
        return len(dataset) if dataset is not None else None
    except TypeError:  # an iterable dataset without a length
        return None


def train_images(datamodule: Any, indices: Sequence[int]) -> Tensor | None:
    """The training split's images at ``indices`` as the model sees them in evaluation (no augmentation).

    Datasets of files with a ``transform`` (the plant photos) are read through the data module's evaluation
    transform, so a random crop never hides what the label is about; generated data (the shapes) as is.
    None when the data module cannot give samples by index.
    """
    if datamodule is None or not hasattr(datamodule, "dataset"):
        return None
    dataset = datamodule.dataset("train")
    if hasattr(dataset, "transform") and hasattr(datamodule, "input_size"):
        from lit_explain.data.images import eval_transform

        dataset = copy.copy(dataset)
        dataset.transform = eval_transform(datamodule.input_size, datamodule.mean, datamodule.std)
    return default_collate([split_batch(dataset[i])[0] for i in indices])


def _class_names(pl_module: L.LightningModule) -> list[str] | None:
    names = getattr(pl_module, "class_names", None)
    return list(names) if names else None


def _write(
    log: StepLog,
    host: HostTensors,
    carto: tuple[Tensor, Tensor, Tensor, Tensor],
    meta: dict[str, Any],
    canvas: CartographyCanvas,
) -> None:
    """On the background writer: the cartography picture, the top images with their CAMs, the table."""
    tag = meta["tag"]
    title = f"Dataset Cartography after epoch {meta['epoch']} ({meta['flagged']} of {meta['total']} flagged)"
    log.image(f"{tag}/cartography", canvas.image(*carto, title=title), caption=title)
    rows = meta["rows"]
    log.table(
        f"{tag}/table",
        Table(
            TABLE_COLUMNS,
            [
                (
                    r["rank"],
                    r["source"],
                    r["given_label"],
                    r["suggested_label"],
                    round(r["late_aum"], 3),
                    round(r["aum"], 3),
                    round(r["confidence"], 3),
                    round(r["correctness"], 3),
                )
                for r in rows
            ],
            empty_text="no training samples recorded",
        ),
    )
    t = host.get()
    if not t or t.get("images") is None:
        return
    pages = label_issue_pages(t, rows, meta)
    for page_tag, page in zip(page_tags(tag, len(pages)), pages, strict=True):
        log.image(page_tag, page, caption=f"most suspicious training labels after epoch {meta['epoch']}")


def _fit_cells(images01: Tensor, largest: int = MAX_CELL_PX) -> Tensor:
    """Downscale so the short side is at most ``largest`` px (a TensorBoard card shows no more)."""
    short = min(images01.shape[-2:])
    if short <= largest:
        return images01
    size = [round(s * largest / short) for s in images01.shape[-2:]]
    return F.interpolate(images01, size=size, mode="bilinear", align_corners=False, antialias=True)


def _captions(row: dict[str, Any]) -> list[str]:
    """One caption per cell, short enough for a 96-px cell: ``#1 idx 42`` | ``star`` | ``cross`` (the scores
    are in the table)."""
    return [f"#{row['rank']} {row['source']}", str(row["given_label"]), str(row["suggested_label"])]


def label_issue_pages(
    tensors: dict[str, Tensor], rows: Sequence[dict[str, Any]], meta: dict[str, Any]
) -> list[Tensor]:
    """Pages of rows image | CAM of the given label | CAM of the suggested label, most suspicious first."""
    images01 = _fit_cells(display_images(tensors["images"], meta.get("mean"), meta.get("std")))
    given = overlay(images01, tensors["given_maps"], alpha=meta["alpha"], cmap=meta["cmap"])
    suggested = overlay(images01, tensors["suggested_maps"], alpha=meta["alpha"], cmap=meta["cmap"])
    cells = [[images01[i], given[i], suggested[i]] for i in range(len(images01))]
    captions = [_captions(r) for r in rows[: len(cells)]]
    min_cell = meta["min_cell"]
    short = min(images01.shape[-2:])
    cell = short * max(1, -(-min_cell // short))
    width = 3 * cell + 4 * 2
    font = readable_font_px(width)
    footer = colorbar(width, meta["cmap"], label=f"{meta['cam_method']} (per-map peak = 1)", font_size=font)
    return panel_pages(
        cells,
        captions,
        ["image", "given label", "suggested"],
        max_height=MAX_PAGE_PX,
        footer=footer,
        font_size=font,
        min_cell=min_cell,
        pad=2,
    )
