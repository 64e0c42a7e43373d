"""ShortcutAlarm: tell the user, while the model trains, that its evidence sits in a fixed, content-free region."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lit_explain.callbacks.base import ExplainCallback, is_logging_rank
from lit_explain.callbacks.captions import class_name, class_names
from lit_explain.callbacks.settings import (
    check_explain_layers,
    check_explain_method,
    explain_layers,
    explained_net,
)
from lit_explain.callbacks.shared_maps import recall, remember
from lit_explain.data.batch import split_batch
from lit_explain.errors import ConfigError
from lit_explain.findings import record_findings
from lit_explain.findings.shortcut import (
    CONTROL_BOXES,
    DEFAULT_THRESHOLD,
    MIN_IMAGES,
    ShortcutEvidence,
    predicted_maps,
    region_picture,
    shortcut_finding,
    shortcut_sample,
    shortcut_test,
)
from lit_explain.render.pages import display_images
from lit_explain.runs import run_folder
from lit_explain.sinks.writer import HostTensors, StepLog, to_host


class ShortcutAlarm(ExplainCallback):
    """Decide after every validation whether the model learned a shortcut, and say so when it did.

    On a fixed sample of validation images (the data module's class-balanced ``probe_indices``; the
    first validation batches for other data modules) it runs :func:`lit_explain.findings.shortcut.shortcut_test`:
    where the predicted-class maps of images of different classes peak (a small box shared by most of
    them is suspicious; evidence that follows the object is not), and whether pasting that box into an image
    of another class makes the prediction follow it (compared with boxes of the same size elsewhere).

    Every epoch: the scalar ``explain/shortcut_score`` (in [0, 1]). When the score reaches ``threshold``:
    one warning line (the first time, and again when the region moves), the text entry ``explain/findings``
    and the picture ``explain/shortcut_region`` (the region over a few sample images and their maps) in every
    logger, and an entry in ``<run folder>/findings.json``. That file exists (possibly ``[]``) after every
    fit. During ``trainer.test`` the tags are ``explain/test/...``.

    Cost on the training thread: one engine call on the sample (the maps), then, only when at least
    ``threshold`` of the images share a box, ``pairs * (1 + controls)`` forward passes (the score is 0
    otherwise: it never exceeds that share).

    Args:
        threshold: the score at which the alarm fires (docs/benchmarks.md, "Shortcut alarm": clean shapes
            and leaf-photo runs stayed at or under 0.03 in every epoch, shortcut runs reached 0.3 to 1.0).
        sample_size: validation images in the sample.
        split: the data module split the sample comes from.
        layer: the layer(s) to explain; None = the model's ``default_explain_layers``.
        method: the CAM method.
        controls: boxes of the region's size elsewhere in the image, the transplant's control.
        show: sample images in the picture.
        every_n_epochs: test after every n-th training epoch's validation (always in validate/test).

    Example:
        >>> trainer = L.Trainer(callbacks=[ShortcutAlarm(threshold=0.15)])    # doctest: +SKIP
    """

    def __init__(
        self,
        threshold: float = DEFAULT_THRESHOLD,
        sample_size: int = 48,
        split: str = "val",
        layer: str | list[str] | None = None,
        method: str = "layercam",
        controls: int = CONTROL_BOXES,
        show: int = 8,
        every_n_epochs: int = 1,
    ) -> None:
        super().__init__(every_n_epochs)
        if not 0.0 < threshold <= 1.0:
            raise ConfigError(f"ShortcutAlarm: threshold must be in (0, 1], got {threshold}")
        if sample_size < MIN_IMAGES:
            raise ConfigError(f"ShortcutAlarm: sample_size must be >= {MIN_IMAGES}, got {sample_size}")
        if controls < 1 or show < 1:
            raise ConfigError(f"ShortcutAlarm: controls and show must be >= 1, got {controls}, {show}")
        self.threshold = threshold
        self.sample_size = sample_size
        self.split = split
        self.layer = layer
        self.method = method
        self.controls = controls
        self.show = show
        self.last: ShortcutEvidence | None = None
        self._sample: tuple[Tensor, Tensor] | None = None
        self._collected: list[tuple[Tensor, Tensor]] = []
        self._warned_region: list[int] | None = None

    # -- hooks -------------------------------------------------------------------------------------
    def on_setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        check_explain_method(type(self).__name__, self.method)

    def on_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        check_explain_layers(type(self).__name__, pl_module, self.layer)

    def batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # Only for data modules without probe_indices: the first validation batches, once.
        if self._sample is not None or not is_logging_rank(trainer) or self._from_datamodule(trainer):
            return
        if sum(len(labels) for _, labels in self._collected) < self.sample_size:
            images, labels = split_batch(batch)
            self._collected.append((images.detach().cpu(), torch.as_tensor(labels).detach().cpu()))

    def epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not is_logging_rank(trainer):
            return
        sample = self._get_sample(trainer)
        if sample is None:
            return
        images = sample[0].to(pl_module.device)
        net = explained_net(pl_module)
        layers = explain_layers(pl_module, self.layer)
        shared = recall(trainer, images, layers, self.method)  # ProbeHeatmaps' maps of the same images
        if shared is None:
            shared = predicted_maps(net, images, layers, self.method)
            remember(trainer, images, layers, self.method, *shared)
        maps, logits = shared
        preds = logits.argmax(1)
        evidence = shortcut_test(
            net, images, maps, preds, controls=self.controls, occlusion=False, gate=self.threshold
        )
        self.last = evidence
        self.log_scalars(trainer, {self.tag(trainer, "shortcut_score"): evidence.score})
        if evidence.fires(self.threshold):
            self._report(trainer, pl_module, evidence, images, maps, logits)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            with self.timed(trainer):
                record_findings(run_folder(trainer))  # the file exists after every fit, possibly []

    def state_dict(self) -> dict[str, Any]:
        return {"warned_region": self._warned_region}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._warned_region = state_dict.get("warned_region")

    # -- work --------------------------------------------------------------------------------------
    @staticmethod
    def _from_datamodule(trainer: L.Trainer) -> bool:
        datamodule = getattr(trainer, "datamodule", None)
        return hasattr(datamodule, "probe_indices") and hasattr(datamodule, "samples")

    def _get_sample(self, trainer: L.Trainer) -> tuple[Tensor, Tensor] | None:
        if self._sample is None:
            if self._from_datamodule(trainer):
                self._sample = shortcut_sample(trainer.datamodule, self.sample_size, self.split)
            elif self._collected:
                images = torch.cat([i for i, _ in self._collected])[: self.sample_size]
                labels = torch.cat([lab for _, lab in self._collected])[: self.sample_size]
                self._sample, self._collected = (images, labels), []
        if self._sample is None or len(self._sample[0]) < MIN_IMAGES:
            return None
        return self._sample

    def _report(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        evidence: ShortcutEvidence,
        images: Tensor,
        maps: Tensor,
        logits: Tensor,
    ) -> None:
        preds = logits.argmax(1)
        finding = shortcut_finding(evidence, trainer.current_epoch, self.threshold)
        if self._warned_region != evidence.region:
            rank_zero_warn(f"ShortcutAlarm (epoch {trainer.current_epoch}): {finding.message}")
            self._warned_region = list(evidence.region)
        record_findings(run_folder(trainer), [finding])
        n = min(self.show, len(images))
        host = to_host(images=images[:n], maps=maps[:n], preds=preds[:n])
        hp = getattr(pl_module, "hparams", {})
        meta = {
            "message": finding.message,
            "region": list(evidence.region),
            "names": class_names(pl_module, logits.shape[1]),
            "mean": hp.get("mean"),
            "std": hp.get("std"),
            "epoch": trainer.current_epoch,
            "text_tag": self.tag(trainer, "findings"),
            "image_tag": self.tag(trainer, "shortcut_region"),
        }
        self.submit(trainer, lambda log: self._write(log, host, meta), "shortcut finding")

    @staticmethod
    def _write(log: StepLog, host: HostTensors, meta: dict[str, Any]) -> None:
        """On the background writer: the text entry and the picture of the region."""
        t = host.get()
        log.text(meta["text_tag"], f"epoch {meta['epoch']}: {meta['message']}")
        captions = [f"pred: {class_name(meta['names'], p)}" for p in t["preds"].tolist()]
        picture = region_picture(
            display_images(t["images"], meta["mean"], meta["std"]), t["maps"], meta["region"], captions
        )
        log.image(meta["image_tag"], picture, caption=meta["message"])
