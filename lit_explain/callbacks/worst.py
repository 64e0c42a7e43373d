"""WorstSamples: a running top-k of the validation samples the model gets most wrong, explained at epoch end."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from lit_explain.callbacks import _logging as tb
from lit_explain.callbacks._panels import (
    check_explain_settings,
    class_name,
    display_images,
    explain_batch,
    explain_layers,
    explained_net,
    page_tags,
    prediction_line,
    render_pages,
    sample_sources,
)
from lit_explain.compat import callback_state_key
from lit_explain.data.batch import batch_indices, split_batch
from lit_explain.errors import ConfigError
from lit_explain.render import overlay
from lit_explain.sinks import Picture, Table

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
        score = torch.cat([self.score, new.score])
        best = torch.topk(score, k, sorted=False).indices
        incoming = new.as_dict()
        merged = {
            name: torch.cat([mine, incoming[name].to(mine.dtype)]).index_select(0, best)
            for name, mine in self.as_dict().items()
        }
        return TopK(**merged)

    def select(self, order: Tensor) -> TopK:
        return TopK(**{name: t.index_select(0, order) for name, t in self.as_dict().items()})


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


class WorstSamples(Callback):
    """Collect the validation samples with the highest loss and log them, explained, once per validation.

    During validation a running top-k (per ranking in ``modes``) is merged batch by batch on the device
    from the model's ``validation_step`` outputs (``per_sample_loss``, ``probs``, ``preds``, ``targets``),
    so there is no second forward pass and no host synchronisation per batch; memory is O(k) whatever the
    size of the validation set. At epoch end every rank joins one ``all_gather`` (the buffers are always
    k long, free slots padded with ``-inf`` scores), then the global-zero rank keeps the overall top-k,
    explains them (image | CAM predicted | CAM true, in misclassified rows only | Guided Grad-CAM) and logs
    a captioned grid in pages no taller than 1,600 px (``explain/worst/page_0``, ...; worst first, "worst 1"
    on top) plus a table ``explain/worst_table``: place in the ranking, source (``idx N`` for generated
    data, the file relative to the data root otherwise), true and predicted class, confidence, loss, and
    the process that saw the sample when the run is distributed. The sanity check is skipped; during
    ``trainer.test`` the tags are ``explain/test/...``.

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
        super().__init__()
        if k < 1:
            raise ConfigError(f"WorstSamples: k must be >= 1, got {k}")
        if every_n_epochs < 1:
            raise ConfigError(f"WorstSamples: every_n_epochs must be >= 1, got {every_n_epochs}")
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
        self.every_n_epochs = every_n_epochs
        self._top: dict[str, TopK] = {}
        self.last_winners: dict[str, dict[str, Tensor]] = {}

    @property
    def state_key(self) -> str:
        return callback_state_key(self, k=self.k, modes=tuple(self.modes))

    # -- collection --------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Refuse a run it cannot log or explain in now, not after an epoch of training.
        tb.check_trainer(trainer, type(self).__name__, stage)
        check_explain_settings(type(self).__name__, pl_module, stage, self.layer, self.method)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._top = {}

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._top = {}

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self._skips(trainer):
            self._collect(trainer, outputs, batch, batch_idx)

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._collect(trainer, outputs, batch, batch_idx)

    def _collect(self, trainer: L.Trainer, outputs: Any, batch: Any, batch_idx: int) -> None:
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
            new = TopK(
                score=ranking_scores(mode, loss, confidence, correct),
                image=images.detach(),
                label=labels,
                pred=preds,
                confidence=confidence,
                loss=loss,
                index=index,
                rank=rank,
            )
            current = self._top.get(mode)
            if current is None:
                current = TopK.empty(self.k, tuple(images.shape[1:]), images.device, images.dtype)
            self._top[mode] = current.merge(new)

    # -- epoch end ---------------------------------------------------------------------------------
    def _skips(self, trainer: L.Trainer) -> bool:
        """True in the sanity check and, while fitting, in epochs between every ``every_n_epochs``-th."""
        fitting = trainer.state.fn == "fit"
        return trainer.sanity_checking or (fitting and (trainer.current_epoch + 1) % self.every_n_epochs != 0)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._skips(trainer):
            self._gather_explain_log(trainer, pl_module)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._gather_explain_log(trainer, pl_module)

    def _gather_explain_log(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.last_winners = {}
        for mode in self.modes:
            local = self._top.get(mode) or self._placeholder(pl_module)
            # Every rank joins the collective, even one that saw no batch (it sends k free slots).
            gathered = pl_module.all_gather(local.as_dict())
            if trainer.world_size > 1:
                gathered = {name: t.flatten(0, 1) for name, t in gathered.items()}
            if not tb.is_logging_rank(trainer):
                continue
            everything = TopK(**gathered)
            # One host synchronisation per epoch: how many slots hold a real sample.
            valid = int((everything.score > float("-inf")).sum())
            if valid == 0:
                continue
            order = torch.topk(everything.score, min(self.k, valid)).indices  # sorted, worst first
            winners = everything.select(order)
            self.last_winners[mode] = {name: t.detach().cpu() for name, t in winners.as_dict().items()}
            self._log(trainer, pl_module, mode, winners)
        self._top = {}
        if tb.is_logging_rank(trainer):
            tb.flush(trainer)

    def _placeholder(self, pl_module: L.LightningModule) -> TopK:
        hp = getattr(pl_module, "hparams", {})
        size, channels = hp.get("input_size"), hp.get("in_channels") or 3
        if size is None:
            raise ConfigError("WorstSamples: a rank saw no batch and the model has no input_size to pad with")
        return TopK.empty(self.k, (int(channels), *map(int, size)), pl_module.device, torch.float32)

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule, mode: str, top: TopK) -> None:
        layer = explain_layers(pl_module, self.layer)
        explained = explain_batch(explained_net(pl_module), top.image, top.label, layer, self.method)
        names = [str(n) for n in getattr(pl_module, "class_names", None) or range(explained.probs.shape[1])]
        # Rows arrive sorted by score, worst (or most/least confident) first: position 1 is the extreme.
        place = RANK_LABELS[mode]
        sources = sample_sources(trainer, tb.stage_prefix(trainer), top.index.tolist())
        distributed = trainer.world_size > 1
        rows = list(
            zip(
                sources,
                top.rank.tolist(),
                top.label.tolist(),
                top.pred.tolist(),
                top.confidence.tolist(),
                top.loss.tolist(),
                strict=True,
            )
        )
        captions = []
        for n, (source, r, t, p, c, loss) in enumerate(rows, 1):
            process = f" · process {r}" if distributed else ""
            captions.append(
                f"{place} {n} · {source}{process}\n{prediction_line(names, t, p, c)} · loss {loss:.2f}"
            )
        hp = getattr(pl_module, "hparams", {})
        images01 = display_images(top.image, hp.get("mean"), hp.get("std"))
        pages = render_pages(
            images01,
            explained,
            captions,
            top.pred == top.label,
            method=self.method,
            alpha=self.alpha,
            cmap=self.cmap,
            min_cell=self.min_cell,
        )
        name = TAG_NAMES[mode]
        caption = f"epoch {trainer.current_epoch}: {place} {len(rows)}, {RANK_MEANINGS[mode]} first"
        tags = page_tags(tb.explain_tag(trainer, name), len(pages))
        for n, (tag, page) in enumerate(zip(tags, pages, strict=True), 1):
            tb.add_image(trainer, tag, page, caption=f"{caption} (page {n} of {len(pages)})")
        columns = [
            f"{place} (1 = {RANK_MEANINGS[mode]})",
            "source",
            "true",
            "predicted",
            "confidence",
            "loss",
        ]
        table_rows = [
            [n, source, class_name(names, t), class_name(names, p), round(c, 4), round(loss, 4)]
            + ([r] if distributed else [])
            for n, (source, r, t, p, c, loss) in enumerate(rows, 1)
        ]
        table = Table(
            tuple(columns + (["process"] if distributed else [])),
            table_rows,
            # Trackers with image tables (W&B) show each sample next to its CAM; PNGs only encoded there.
            images={"image | CAM predicted": self._row_pictures(images01, explained.pred_maps)},
        )
        tb.add_table(trainer, tb.explain_tag(trainer, f"{name}_table"), table)

    def _row_pictures(self, images01: Tensor, maps: Tensor) -> list[Picture]:
        """One small picture per sample: the image beside its overlay, uint8, at the image's own size."""
        images01 = images01.to(maps.device)
        strips = torch.cat([images01, overlay(images01, maps, alpha=self.alpha, cmap=self.cmap)], dim=-1)
        strips = (strips.clamp(0, 1) * 255).round().to(torch.uint8).cpu()
        return [Picture(strip) for strip in strips]
