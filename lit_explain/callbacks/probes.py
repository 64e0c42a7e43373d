"""ProbeHeatmaps: the same probe images explained every epoch, so TensorBoard shows where attention moves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import default_collate

from lit_explain.callbacks.base import ExplainCallback, is_logging_rank
from lit_explain.callbacks.captions import class_names, prediction_line, sample_sources
from lit_explain.callbacks.settings import (
    check_explain_layers,
    check_explain_method,
    explain_layers,
    explained_net,
)
from lit_explain.callbacks.shared_maps import remember
from lit_explain.compat import callback_state_key
from lit_explain.data.batch import split_batch
from lit_explain.errors import ConfigError
from lit_explain.explain import explain_predictions, fast_layout
from lit_explain.explain.metrics import drift, energy_pointing_game, pointing_game
from lit_explain.render.pages import display_images, page_tags, render_pages
from lit_explain.sinks import log_hparams
from lit_explain.sinks.writer import HostTensors, StepLog, to_host

UNKNOWN_LABEL = -1
# The pointing game's tolerance in Zhang et al. (ECCV 2016): 15 pixels on 224-pixel images.
PAPER_TOLERANCE_PX = 15
PAPER_IMAGE_PX = 224


class ProbeHeatmaps(ExplainCallback):
    """Explain a fixed probe set after every ``every_n_epochs``-th validation and log one captioned grid.

    Per probe the grid shows: the image | the CAM of the predicted class | the CAM of the true class (only
    in misclassified rows; the column is left out when all are right) | Guided Grad-CAM of the predicted
    class, captioned with the probe's source, the true class, the predicted class and its confidence
    (green when right, red when wrong), with a colour bar under each page. Scalars, on the maps of ``scalar_target``:

    * ``explain/drift``: ``1 - mean Pearson correlation`` with the previous validation's maps;
    * ``explain/energy_in_mask`` and ``explain/pointing_game`` where the samples carry object masks
      (the shapes data module): the share of the map's energy on the object, and how often its peak is.

    At the end of ``fit`` the final validation accuracy and, with masks, the last pointing game and energy
    go to TensorBoard's HParams tab (``hparams/val_acc``, ``hparams/pointing_game``, ...) with the run's
    hyperparameters, so runs can be compared there. The grid is logged in pages no taller than 1,600 px
    (``explain/probes/page_0``, ...), readable at TensorBoard's default card size; each caption names the
    probe's source (``idx N`` for generated data, the file relative to the data root otherwise).

    The probe set is chosen once, deterministically: by default the data module's ``probe_indices``
    (``per_class`` per class of the validation split, at most ``max_probes``); or dataset indices of
    ``split``; or image files (their label is the parent folder's name when it is a class name). The
    probe ids and the previous maps are saved in checkpoints, so a resumed run explains the same
    probes and continues the drift series. Explanations run on the global-zero rank only, on
    ``pl_module.net``, in eval mode with a private autograd session: training is not perturbed. The
    sanity check is skipped. During ``trainer.test`` the tags are ``explain/test/...``.

    Args:
        probes: dataset indices of ``split`` or image file paths; None picks them from the data module.
        per_class: probes per class when picking automatically.
        max_probes: upper bound on the number of probes (picked or given).
        split: the data module split the indices refer to.
        every_n_epochs: explain after every n-th training epoch's validation (always in validate/test).
        layer: the layer to explain (dotted name inside ``pl_module.net``); None = automatic (the last
            spatial layer, ``layer4`` for ResNets).
            A list of names fuses their maps (finer maps where the last layer is coarse).
        method: a CAM method of :mod:`lit_explain.explain` (``gradcam``, ``gradcam++``, ``layercam`` ...).
        scalar_target: which maps the scalars use: ``"pred"`` (where the model looks for its decision)
            or ``"true"`` (its evidence for the right class).
        alpha: heatmap opacity in the overlays.
        cmap: matplotlib colormap of the heatmaps.
        min_cell: the short side of each grid cell in pixels (small images are upscaled to it).
        pointing_tolerance: pointing-game tolerance in pixels; None = Zhang et al.'s 15 px at 224 px scaled
            to the images' short side (4 px at 64 px, 2 px at 32 px); 0 = the peak must be on the object.

    Example (YAML, under ``trainer.callbacks``)::

        - class_path: lit_explain.callbacks.ProbeHeatmaps
          init_args: {per_class: 2, max_probes: 32, every_n_epochs: 1, layer: layer3}

    Example (Python):
        >>> trainer = L.Trainer(callbacks=[ProbeHeatmaps(probes=[0, 5, 9], layer="layer3")])
    """

    def __init__(
        self,
        probes: list[int] | list[str] | None = None,
        per_class: int = 2,
        max_probes: int = 32,
        split: Literal["train", "val", "test"] = "val",
        every_n_epochs: int = 1,
        layer: str | list[str] | None = None,
        method: str = "gradcam",
        scalar_target: Literal["pred", "true"] = "pred",
        alpha: float = 0.5,
        cmap: str = "jet",
        min_cell: int = 128,
        pointing_tolerance: int | None = None,
    ) -> None:
        super().__init__(every_n_epochs)
        if pointing_tolerance is not None and pointing_tolerance < 0:
            raise ConfigError(
                f"ProbeHeatmaps: pointing_tolerance must be >= 0 pixels, got {pointing_tolerance}"
            )
        if per_class < 1 or max_probes < 1:
            raise ConfigError(
                f"ProbeHeatmaps: per_class and max_probes must be >= 1, got {per_class}, {max_probes}"
            )
        if scalar_target not in ("pred", "true"):
            raise ConfigError(f"ProbeHeatmaps: scalar_target must be 'pred' or 'true', got {scalar_target!r}")
        if probes is not None:
            if len(probes) == 0:
                raise ConfigError(
                    "ProbeHeatmaps: probes is an empty list; give indices or paths, or leave it unset"
                )
            kinds = {isinstance(p, str) for p in probes}
            if len(kinds) > 1:
                raise ConfigError(
                    "ProbeHeatmaps: probes mixes dataset indices and image paths; give one kind"
                )
            if len(probes) > max_probes:
                raise ConfigError(f"ProbeHeatmaps: {len(probes)} probes given but max_probes={max_probes}")
        self.probes = list(probes) if probes is not None else None
        self.per_class = per_class
        self.max_probes = max_probes
        self.split = split
        self.layer = layer
        self.method = method
        self.scalar_target = scalar_target
        self.alpha = alpha
        self.cmap = cmap
        self.min_cell = min_cell
        self.pointing_tolerance = pointing_tolerance
        self.probe_ids: list[int] | list[str] | None = None
        self.prev_maps: Tensor | None = None
        self.last_scalars: dict[str, float] = {}
        self._batch: dict[str, Tensor] | None = None
        self._sources: list[str] | None = None

    @property
    def state_key(self) -> str:
        return callback_state_key(self, split=self.split, layer=self.layer, method=self.method)

    # -- hooks -------------------------------------------------------------------------------------
    def on_setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Refuse a run it cannot explain in now, not after an epoch of training.
        check_explain_method(type(self).__name__, self.method)
        self._check_probes(trainer)

    def on_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        check_explain_layers(type(self).__name__, pl_module, self.layer)

    def epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if is_logging_rank(trainer):
            self._explain_and_submit(trainer, pl_module, update_drift=not trainer.testing)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Put the run's end results in the tracker's hyperparameter view (TensorBoard's HParams tab)."""
        if not is_logging_rank(trainer):
            return
        with self.timed(trainer):
            final = {}
            accuracy = trainer.callback_metrics.get("val/acc")
            if accuracy is not None:
                final["hparams/val_acc"] = float(accuracy)
            for name in ("pointing_game", "energy_in_mask"):
                value = self.last_scalars.get(f"explain/{name}")
                if value is not None:
                    final[f"hparams/{name}"] = value
            if final:
                log_hparams(trainer, final)

    def state_dict(self) -> dict[str, Any]:
        return {
            "probe_ids": list(self.probe_ids) if self.probe_ids is not None else None,
            "split": self.split,
            "prev_maps": self.prev_maps,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        ids = state_dict.get("probe_ids")
        if ids is not None and self.probes is not None and list(ids) != list(self.probes):
            rank_zero_warn(
                "ProbeHeatmaps: the checkpoint's probe set differs from the configured `probes`; keeping the "
                "checkpoint's so the drift series stays comparable"
            )
        self.probe_ids = list(ids) if ids is not None else None
        self.split = state_dict.get("split", self.split)
        prev = state_dict.get("prev_maps")
        self.prev_maps = prev.detach().cpu().clone() if prev is not None else None
        self._batch = None
        self._sources = None

    # -- work --------------------------------------------------------------------------------------
    def _explain_and_submit(
        self, trainer: L.Trainer, pl_module: L.LightningModule, update_drift: bool
    ) -> None:
        """On the training thread: explain the probes, log the scalars, copy the maps to the host."""
        batch = self._probe_batch(trainer, pl_module)
        images, labels = batch["image"], batch["label"]
        layer = explain_layers(pl_module, self.layer)
        # Probes without a known label (-1) are explained for their predicted class in the "true" column.
        explained = explain_predictions(
            explained_net(pl_module), images, labels, layer=layer, method=self.method
        )
        # ShortcutAlarm explains the same sample in every recipe: it takes these maps instead.
        remember(trainer, images, layer, self.method, explained.pred_maps, explained.logits)
        maps = explained.pred_maps if self.scalar_target == "pred" else explained.true_maps
        scalars = self._scalars(trainer, maps, batch.get("mask"))
        self.log_scalars(trainer, scalars)
        self.last_scalars = scalars
        if update_drift:
            self.prev_maps = maps.detach().cpu().clone()
        host = to_host(
            image=images,
            pred_maps=explained.pred_maps,
            true_maps=explained.true_maps,
            guided=explained.guided,
            probs=explained.probs,
            preds=explained.preds,
            labels=labels,
        )
        hp = getattr(pl_module, "hparams", {})
        meta = {
            "names": class_names(pl_module, explained.probs.shape[1]),
            "sources": self.sources(trainer),
            "epoch": trainer.current_epoch,
            "tag": self.tag(trainer, "probes"),
            "mean": hp.get("mean"),
            "std": hp.get("std"),
        }
        self.submit(trainer, lambda log: self._write(log, host, meta), "probe heatmaps")

    def _scalars(self, trainer: L.Trainer, maps: Tensor, masks: Tensor | None) -> dict[str, float]:
        scalars: dict[str, float] = {}
        if self.prev_maps is not None and self.prev_maps.shape == maps.shape:
            scalars[self.tag(trainer, "drift")] = float(drift(self.prev_maps.to(maps.device), maps))
        if masks is not None:
            masks = masks.to(maps.device).bool()
            scalars[self.tag(trainer, "energy_in_mask")] = float(
                energy_pointing_game(maps, masks, reduction="mean")
            )
            scalars[self.tag(trainer, "pointing_game")] = float(
                pointing_game(maps, masks, tolerance=self.tolerance_px(maps.shape[-2:]), reduction="mean")
            )
        return scalars

    def _write(self, log: StepLog, host: HostTensors, meta: dict[str, Any]) -> None:
        """On the background writer: captions and captioned pages."""
        t = host.get()
        labels, preds = t["labels"], t["preds"]
        conf = t["probs"].gather(1, preds[:, None])[:, 0].tolist()
        rows = zip(meta["sources"], labels.tolist(), preds.tolist(), conf, strict=True)
        captions = [
            f"probe {n} · {source}\n{prediction_line(meta['names'], label, pred, c)}"
            for n, (source, label, pred, c) in enumerate(rows, 1)
        ]
        correct = (preds == labels) | (labels < 0)
        pages = render_pages(
            display_images(t["image"], meta["mean"], meta["std"]),
            t["pred_maps"],
            t["true_maps"],
            t["guided"],
            captions,
            correct,
            method=self.method,
            alpha=self.alpha,
            cmap=self.cmap,
            min_cell=self.min_cell,
        )
        caption = f"epoch {meta['epoch']}: {int(correct.sum())} of {len(captions)} probes right"
        for n, (tag, page) in enumerate(zip(page_tags(meta["tag"], len(pages)), pages, strict=True), 1):
            log.image(tag, page, caption=f"{caption} (page {n} of {len(pages)})")

    def tolerance_px(self, image_size: tuple[int, int] | torch.Size) -> int:
        """The pointing game's tolerance in pixels for images of ``image_size`` (H, W).

        Example:
            >>> ProbeHeatmaps().tolerance_px((64, 64)), ProbeHeatmaps().tolerance_px((224, 224))
            (4, 15)
        """
        if self.pointing_tolerance is not None:
            return self.pointing_tolerance
        return round(PAPER_TOLERANCE_PX * min(image_size) / PAPER_IMAGE_PX)

    def sources(self, trainer: L.Trainer) -> list[str]:
        """Where each probe comes from: ``idx N`` (generated data), its file relative to the data root, or
        the image path as given in ``probes``."""
        if self._sources is None:
            ids = list(self.probe_ids or [])
            if ids and isinstance(ids[0], str):
                self._sources = [str(p) for p in ids]
            else:
                self._sources = sample_sources(trainer, self.split, [int(i) for i in ids])
        return self._sources

    def _check_probes(self, trainer: L.Trainer) -> None:
        """Probe files that do not exist or are no image, or indices outside the split, fail here (at setup)."""
        if self.probes is None:
            return
        if isinstance(self.probes[0], str):
            missing = [p for p in self.probes if not Path(str(p)).is_file()]
            if missing:
                raise ConfigError(
                    f"ProbeHeatmaps: probe image(s) not found: {', '.join(map(str, missing[:5]))}"
                    f"{' ...' if len(missing) > 5 else ''} (relative paths start at {Path.cwd()}); "
                    "fix `probes` in the callback's init_args"
                )
            for path in self.probes:
                _check_decodes(str(path))
            return
        dm = getattr(trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "dataset"):
            _check_indices(self.probes, len(dm.dataset(self.split)), self.split)

    def _probe_batch(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Tensor]:
        if self._batch is None:
            if self.probe_ids is None:
                self.probe_ids = self._choose(trainer, pl_module)
            batch = self._load(trainer, pl_module, self.probe_ids)
            # Cloned outside inference mode: the cache outlives the loop that first builds it.
            with torch.inference_mode(False):
                self._batch = {k: v.to(pl_module.device).clone() for k, v in batch.items()}
                # Explained every epoch: in the layout the engine runs fastest (channels-last on the CPU).
                self._batch["image"] = fast_layout(self._batch["image"])
        return self._batch

    def _choose(self, trainer: L.Trainer, pl_module: L.LightningModule) -> list[int] | list[str]:
        if self.probes is not None:
            return list(self.probes)
        dm = getattr(trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "probe_indices"):
            ids = dm.probe_indices(per_class=self.per_class, max_total=self.max_probes, split=self.split)
        else:
            ids = _first_per_class(_split_dataset(trainer, self.split), self.per_class, self.max_probes)
        if not ids:
            raise ConfigError(f"ProbeHeatmaps: the {self.split} split has no samples to use as probes")
        return ids

    def _load(
        self, trainer: L.Trainer, pl_module: L.LightningModule, ids: Sequence[int | str]
    ) -> dict[str, Tensor]:
        if isinstance(ids[0], str):
            return _load_paths([str(i) for i in ids], pl_module)
        dm = getattr(trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "samples"):
            size = len(dm.dataset(self.split))
            _check_indices(ids, size, self.split)
            batch = dm.samples(list(ids), split=self.split)
        else:
            data = _split_dataset(trainer, self.split)
            _check_indices(ids, len(data), self.split)
            batch = default_collate([data[int(i)] for i in ids])
        if not isinstance(batch, dict):
            images, labels = split_batch(batch)
            batch = {"image": images, "label": labels}
        out = {"image": batch["image"].float(), "label": torch.as_tensor(batch["label"]).long()}
        if batch.get("mask") is not None:
            out["mask"] = batch["mask"].bool()
        return out


def _check_indices(ids: Sequence[int | str], size: int, split: str) -> None:
    bad = [i for i in ids if not 0 <= int(i) < size]
    if bad:
        raise ConfigError(
            f"ProbeHeatmaps: probe indices {bad} are outside the {split} split (valid: 0..{size - 1}); "
            "fix `probes` in the callback's init_args"
        )


def _check_decodes(path: str) -> None:
    """Decode a probe file now (at reduced scale), so a file that is no image fails before training."""
    from lit_explain.data.images import ImageDecodeError, load_image

    try:
        load_image(path, size=PAPER_IMAGE_PX)
    except ImageDecodeError as exc:
        raise ConfigError(f"ProbeHeatmaps: {exc}; fix `probes` in the callback's init_args") from exc


def _split_dataset(trainer: L.Trainer, split: str) -> Any:
    loaders = {
        "val": trainer.val_dataloaders,
        "test": trainer.test_dataloaders,
        "train": trainer.train_dataloader,
    }
    loader = loaders.get(split)
    if isinstance(loader, (list, tuple)):
        loader = loader[0] if loader else None
    data = getattr(loader, "dataset", None)
    if data is None or not hasattr(data, "__len__"):
        raise ConfigError(
            f"ProbeHeatmaps: no indexable {split} dataset to take probes from; use a lit_explain data module "
            "or give `probes` as image paths"
        )
    return data


def _first_per_class(data: Any, per_class: int, max_total: int) -> list[int]:
    """The first ``per_class`` samples of every class seen in a bounded scan of a plain dataset."""
    chosen: dict[int, list[int]] = {}
    for i in range(min(len(data), 50 * max_total)):
        sample = data[i]
        label = int(sample["label"] if isinstance(sample, dict) else sample[1])
        if len(chosen.setdefault(label, [])) < per_class:
            chosen[label].append(i)
        if sum(len(v) for v in chosen.values()) >= max_total:
            break
    by_class = [chosen[c] for c in sorted(chosen)]
    return [c[r] for r in range(per_class) for c in by_class if r < len(c)][:max_total]


def _load_paths(paths: list[str], pl_module: L.LightningModule) -> dict[str, Tensor]:
    from lit_explain.data.images import eval_transform, load_image

    hp = pl_module.hparams
    if hp.get("input_size") is None or hp.get("mean") is None or hp.get("std") is None:
        raise ConfigError(
            "ProbeHeatmaps: image-path probes need the model's input_size, mean and std hparams"
        )
    mode = "L" if hp.get("in_channels") == 1 else "RGB"
    transform = eval_transform(hp["input_size"], hp["mean"], hp["std"])
    names = list(getattr(pl_module, "class_names", None) or [])
    images, labels = [], []
    for path in paths:
        images.append(transform(load_image(path, mode=mode)))
        parent = Path(path).parent.name
        labels.append(names.index(parent) if parent in names else UNKNOWN_LABEL)
    return {"image": torch.stack(images), "label": torch.tensor(labels, dtype=torch.long)}
