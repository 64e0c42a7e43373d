"""WorstSamples: a running top-k of the validation samples the model gets most wrong, explained at epoch end."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor

from lit_explain.callbacks.base import ExplainCallback, is_logging_rank, stage_prefix
from lit_explain.callbacks.captions import class_name, class_names, prediction_line, sample_sources
from lit_explain.callbacks.settings import (
    check_explain_layers,
    check_explain_method,
    explain_layers,
    explained_net,
)
from lit_explain.callbacks.topk import TopK, TopKSamples
from lit_explain.compat import callback_state_key
from lit_explain.data.batch import batch_indices, split_batch
from lit_explain.errors import ConfigError
from lit_explain.explain import explain_predictions, fast_layout
from lit_explain.render import overlay
from lit_explain.render.pages import display_images, page_tags, render_pages
from lit_explain.sinks import Picture, Table
from lit_explain.sinks.writer import HostTensors, StepLog, to_host

Mode = Literal["loss", "least_confident_correct", "most_confident_correct"]
MODES: tuple[str, ...] = ("loss", "least_confident_correct", "most_confident_correct")
# The tag of each ranking: explain/<name> (grid) and explain/<name>_table (text).
TAG_NAMES = {
    "loss": "worst",
    "least_confident_correct": "least_confident_correct",
    "most_confident_correct": "most_confident_correct",
}
# How captions and tables name a sample's place in each ranking, and what place 1 means.
RANK_LABELS = {
    "loss": "worst",
    "least_confident_correct": "least confident",
    "most_confident_correct": "most confident",
}
RANK_MEANINGS = {
    "loss": "highest loss",
    "least_confident_correct": "lowest confidence among correct",
    "most_confident_correct": "highest confidence among correct",
}
REQUIRED_OUTPUTS = ("per_sample_loss", "probs", "preds", "targets")


def ranking_scores(mode: str, loss: Tensor, confidence: Tensor, correct: Tensor) -> Tensor:
    """Higher = more worth showing: the loss, or the (negated) confidence of correctly classified samples."""
    if mode == "loss":
        return loss.float().nan_to_num(nan=float("inf"))
    minus_inf = torch.full_like(confidence, float("-inf"))
    if mode == "least_confident_correct":
        return torch.where(correct, -confidence, minus_inf)
    if mode == "most_confident_correct":
        return torch.where(correct, confidence, minus_inf)
    raise ConfigError(f"WorstSamples: unknown mode {mode!r}; choose from {', '.join(MODES)}")


class WorstSamples(ExplainCallback):
    """Collect the validation samples with the highest loss and log them, explained, once per validation.

    During validation a running top-k (per ranking in ``modes``, a torchmetrics metric) is merged batch by
    batch on the device from the model's ``validation_step`` outputs (``per_sample_loss``, ``probs``,
    ``preds``, ``targets``), so there is no second forward pass and no host synchronisation per batch;
    memory is O(k) whatever the size of the validation set. At epoch end the metric gathers every rank's
    k slots (``dist_reduce_fx="cat"``), then the global-zero rank keeps the overall top-k, explains them
    (image | CAM predicted | CAM true, in misclassified rows only | Guided Grad-CAM) and hands them to the
    background writer, which logs a captioned grid in pages no taller than 1,600 px
    (``explain/worst/page_0``, ...; worst first, "worst 1" on top) plus a table ``explain/worst_table``:
    place in the ranking, source (``idx N`` for generated data, the file relative to the data root
    otherwise), true and predicted class, confidence, loss, and the process that saw the sample when the
    run is distributed. The sanity check is skipped; during ``trainer.test`` the tags are ``explain/test/...``.

    Args:
        k: how many samples each ranking keeps.
        modes: rankings to collect: ``"loss"`` (highest loss, tag ``explain/worst``),
            ``"least_confident_correct"`` and ``"most_confident_correct"``.
        layer: the layer to explain inside ``pl_module.net``; None = automatic.
            A list of names fuses their maps (finer maps where the last layer is coarse).
        method: a CAM method of :mod:`lit_explain.explain`.
        alpha: heatmap opacity in the overlays.
        cmap: matplotlib colormap of the heatmaps.
        min_cell: the short side of each grid cell in pixels.
        every_n_epochs: collect and explain in every n-th training epoch's validation only (always in
            validate/test); ``--explain.every_n_epochs N`` on the command line sets it.

    Example (YAML, under ``trainer.callbacks``)::

        - class_path: lit_explain.callbacks.WorstSamples
          init_args: {k: 16, modes: [loss, least_confident_correct]}

    Example (Python):
        >>> trainer = L.Trainer(callbacks=[WorstSamples(k=8)])
    """

    def __init__(
        self,
        k: int = 16,
        modes: list[Mode] | None = None,
        layer: str | list[str] | None = None,
        method: str = "gradcam",
        alpha: float = 0.5,
        cmap: str = "jet",
        min_cell: int = 128,
        every_n_epochs: int = 1,
    ) -> None:
        super().__init__(every_n_epochs)
        if k < 1:
            raise ConfigError(f"WorstSamples: k must be >= 1, got {k}")
        modes = list(modes) if modes is not None else ["loss"]
        unknown = [m for m in modes if m not in MODES]
        if unknown or not modes:
            raise ConfigError(
                f"WorstSamples: modes must be a non-empty list from {', '.join(MODES)}, got {modes}"
            )
        self.k = k
        self.modes = list(dict.fromkeys(modes))
        self.layer = layer
        self.method = method
        self.alpha = alpha
        self.cmap = cmap
        self.min_cell = min_cell
        self._top: dict[str, TopKSamples] = {}
        self.last_winners: dict[str, dict[str, Tensor]] = {}

    @property
    def state_key(self) -> str:
        return callback_state_key(self, k=self.k, modes=tuple(self.modes))

    # -- collection --------------------------------------------------------------------------------
    def on_setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        check_explain_method(type(self).__name__, self.method)

    def on_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        check_explain_layers(type(self).__name__, pl_module, self.layer)

    def epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._top = {}
        shape = _image_shape(pl_module)
        if shape is not None:
            self._top = {mode: self._metric(shape, pl_module.device) for mode in self.modes}

    def batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not isinstance(outputs, Mapping) or any(key not in outputs for key in REQUIRED_OUTPUTS):
            raise ConfigError(
                "WorstSamples needs validation_step/test_step to return a dict with "
                f"{', '.join(REQUIRED_OUTPUTS)} (as lit_explain's ImageClassifier does)"
            )
        images, _ = split_batch(batch)
        labels = outputs["targets"].long()
        preds = outputs["preds"].long()
        confidence = outputs["probs"].float().gather(1, preds[:, None])[:, 0]
        loss = outputs["per_sample_loss"].float()
        index = batch_indices(batch)
        if index is None:  # no dataset indices in the batch: the position in this rank's loader
            index = torch.arange(labels.shape[0], device=labels.device) + batch_idx * labels.shape[0]
        index = torch.as_tensor(index, device=labels.device).long()
        rank = torch.full_like(labels, trainer.global_rank)
        correct = preds == labels
        for mode in self.modes:
            metric = self._top.get(mode)
            if metric is None or metric.image_shape != tuple(images.shape[1:]):
                metric = self._top[mode] = self._metric(tuple(images.shape[1:]), images.device)
            score = ranking_scores(mode, loss, confidence, correct)
            metric.update(TopK(score, images.detach(), labels, preds, confidence, loss, index, rank))

    # -- epoch end ---------------------------------------------------------------------------------
    def epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.last_winners = {}
        for mode in self.modes:
            metric = self._top.get(mode)
            if metric is None:  # this rank saw no batch and the model does not say its input size
                raise ConfigError(
                    "WorstSamples: a rank saw no batch and the model has no input_size to pad with"
                )
            # Every rank computes: the metric gathers all ranks' slots here.
            winners = metric.compute_quietly()
            metric.reset()
            if not is_logging_rank(trainer) or winners.score.numel() == 0:
                continue
            self.last_winners[mode] = {name: t.detach().cpu() for name, t in winners.as_dict().items()}
            self._explain_and_submit(trainer, pl_module, mode, winners)
        self._top = {}

    def _metric(self, image_shape: tuple[int, ...], device: torch.device) -> TopKSamples:
        return TopKSamples(self.k, image_shape).to(device)

    def _explain_and_submit(
        self, trainer: L.Trainer, pl_module: L.LightningModule, mode: str, top: TopK
    ) -> None:
        """On the training thread: explain the winners and copy them to the host; the rest is a job."""
        explained = explain_predictions(
            explained_net(pl_module),
            fast_layout(top.image),  # channels-last on the CPU: faster, same pictures
            top.label,
            layer=explain_layers(pl_module, self.layer),
            method=self.method,
        )
        host = to_host(
            image=top.image,
            pred_maps=explained.pred_maps,
            true_maps=explained.true_maps,
            guided=explained.guided,
            label=top.label,
            pred=top.pred,
            confidence=top.confidence,
            loss=top.loss,
            rank=top.rank,
        )
        hp = getattr(pl_module, "hparams", {})
        meta = {
            "names": class_names(pl_module, explained.probs.shape[1]),
            "sources": sample_sources(trainer, stage_prefix(trainer), top.index.tolist()),
            "distributed": trainer.world_size > 1,
            "epoch": trainer.current_epoch,
            "tag": self.tag(trainer, TAG_NAMES[mode]),
            "mean": hp.get("mean"),
            "std": hp.get("std"),
        }
        self.submit(trainer, lambda log: self._write(log, mode, host, meta), f"{TAG_NAMES[mode]} samples")

    def _write(self, log: StepLog, mode: str, host: HostTensors, meta: dict[str, Any]) -> None:
        """On the background writer: captions, pages and the table."""
        t = host.get()
        names, place = meta["names"], RANK_LABELS[mode]
        rows = list(
            zip(
                meta["sources"],
                t["rank"].tolist(),
                t["label"].tolist(),
                t["pred"].tolist(),
                t["confidence"].tolist(),
                t["loss"].tolist(),
                strict=True,
            )
        )
        captions = [
            f"{place} {n} · {source}{f' · process {r}' if meta['distributed'] else ''}\n"
            f"{prediction_line(names, label, pred, conf)} · loss {loss:.2f}"
            for n, (source, r, label, pred, conf, loss) in enumerate(rows, 1)
        ]
        images01 = display_images(t["image"], meta["mean"], meta["std"])
        pages = render_pages(
            images01,
            t["pred_maps"],
            t["true_maps"],
            t["guided"],
            captions,
            t["pred"] == t["label"],
            method=self.method,
            alpha=self.alpha,
            cmap=self.cmap,
            min_cell=self.min_cell,
        )
        caption = f"epoch {meta['epoch']}: {place} {len(rows)}, {RANK_MEANINGS[mode]} first"
        for n, (tag, page) in enumerate(zip(page_tags(meta["tag"], len(pages)), pages, strict=True), 1):
            log.image(tag, page, caption=f"{caption} (page {n} of {len(pages)})")
        log.table(f"{meta['tag']}_table", self._table(mode, rows, names, meta["distributed"], images01, t))

    def _table(
        self,
        mode: str,
        rows: list[tuple[Any, ...]],
        names: list[str],
        distributed: bool,
        images01: Tensor,
        t: dict[str, Any],
    ) -> Table:
        columns = [f"{RANK_LABELS[mode]} (1 = {RANK_MEANINGS[mode]})", "source", "true", "predicted"]
        columns += ["confidence", "loss"] + (["process"] if distributed else [])
        table_rows = [
            [n, source, class_name(names, label), class_name(names, pred), round(conf, 4), round(loss, 4)]
            + ([r] if distributed else [])
            for n, (source, r, label, pred, conf, loss) in enumerate(rows, 1)
        ]
        # Trackers with image tables (W&B) show each sample next to its CAM; PNGs only encoded there.
        pictures = self._row_pictures(images01, t["pred_maps"])
        return Table(tuple(columns), table_rows, images={"image | CAM predicted": pictures})

    def _row_pictures(self, images01: Tensor, maps: Tensor) -> list[Picture]:
        """One small picture per sample: the image beside its overlay, uint8, at the image's own size."""
        strips = torch.cat([images01, overlay(images01, maps, alpha=self.alpha, cmap=self.cmap)], dim=-1)
        strips = (strips.clamp(0, 1) * 255).round().to(torch.uint8)
        return [Picture(strip) for strip in strips]


def _image_shape(pl_module: L.LightningModule) -> tuple[int, ...] | None:
    """``(C, H, W)`` of the model's inputs when its hyperparameters say it, else None."""
    hp = getattr(pl_module, "hparams", {})
    size, channels = hp.get("input_size"), hp.get("in_channels") or 3
    return None if size is None else (int(channels), *map(int, size))
