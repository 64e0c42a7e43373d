"""ImageClassifier: a LightningModule over a torchvision or timm backbone that remembers how to pre-process."""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from lit_explain.compat import attached_trainer, scheduler_state_last_lr
from lit_explain.data.batch import split_batch
from lit_explain.errors import ConfigError
from lit_explain.models.backbones import (
    build_backbone,
    classifier_head_names,
    no_weight_decay_ids,
    normalise_weights,
    resolve_cifar_stem,
)
from lit_explain.models.explain_layers import default_explain_layers
from lit_explain.models.schedules import (
    ContinuedLR,
    SchedulePlan,
    build_schedule,
    is_continuation,
    planned_steps,
    schedule_plan,
    steps_taken,
)
from lit_explain.models.timm_backbones import is_timm, timm_size_kwargs

# Hyperparameters that describe the data rather than the model; adopted from the data module in setup().
DATA_KEYS = ("class_names", "mean", "std", "input_size", "in_channels")


def _shown(names: list[str], first: int = 10) -> str:
    """The first few class names, for an error line."""
    return ", ".join(names[:first]) + (", ..." if len(names) > first else "")


class ImageClassifier(L.LightningModule):
    """Image classification over a torchvision or timm backbone, with everything a checkpoint needs to explain later.

    The checkpoint's hyperparameters hold the class names, normalisation (mean, std), input size and input
    channels (taken from the data module during ``setup`` when not given), so a checkpoint alone rebuilds
    the model and pre-processes a new image. ``validation_step`` returns the per-sample loss,
    probabilities and predictions, so callbacks never run a second forward pass.

    Args:
        backbone: torchvision model name (``resnet18``, ``resnet34``, ``resnet50``, ``vgg16_bn``, ...) or any
            timm model as ``timm:NAME`` (``timm:vit_tiny_patch16_224``, ``timm:convnext_atto``); timm's
            fixed-size models (ViT, Swin) are built for the data's ``input_size``.
        num_classes: number of classes; None takes the data module's.
        class_names: names of the classes; None takes the data module's.
        in_channels: input channels of the first convolution; None takes the data module's (default 3).
        cifar_stem: ResNets only: 3x3 stride-1 first convolution and no max-pool (32x32 inputs); ``"auto"``:
            that stem for torchvision ResNets and the backbone's own for any other, so a CIFAR recipe stays
            valid when only the backbone changes (recorded as true/false once the network is built).
        weights: pretrained weights: a torchvision weights name (``"IMAGENET1K_V1"``; True = ``"DEFAULT"``),
            for timm True (the default tag) or a pretrained tag; None for random initialisation.
        weights_path: local state-dict file for the backbone instead of ``weights`` (timm: ``.safetensors``
            or ``.pth``); a head with another class count is replaced.
        backbone_kwargs: further arguments for ``timm.create_model`` (``{patch_size: 8}``,
            ``{drop_path_rate: 0.1}``, ``{dynamic_img_size: true}``) or ``torchvision.models.get_model``.
        optimizer: ``"sgd"`` (momentum, optional Nesterov) or ``"adamw"``.
        lr, momentum, nesterov, weight_decay: optimizer settings; weight decay skips biases and norm layers.
        scheduler: ``"cosine"`` (per step, with linear warm-up), ``"onecycle"`` or ``"none"``. Resuming with
            another length (a larger ``max_epochs``) continues it without a jump to the new last step
            (:class:`~lit_explain.models.schedules.ContinuedLR`).
        warmup_epochs: linear warm-up length for ``"cosine"``.
        label_smoothing: cross-entropy label smoothing.
        mean, std, input_size: normalisation and ``(height, width)``; None takes the data module's.
        channels_last: train in channels-last memory format (faster convolutions on recent GPUs).
        compile: run the training/eval forward through ``torch.compile`` (explanations use the plain module).

    Example:
        >>> model = ImageClassifier("resnet18", num_classes=6, class_names=list("abcdef"))
        >>> trainer = L.Trainer(max_epochs=1)
        >>> trainer.fit(model, datamodule=ShapesDataModule())
        >>> model.net   # the plain torchvision network: explain(model.net, images, layer="layer4")
        >>> vit = ImageClassifier("timm:vit_tiny_patch16_224", backbone_kwargs={"patch_size": 8})
        >>> trainer.fit(vit, datamodule=ShapesDataModule())   # built for the data's 64x64 images
        >>> vit.default_explain_layers                        # ['blocks.11.norm1']
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        num_classes: int | None = None,
        class_names: list[str] | None = None,
        in_channels: int | None = None,
        cifar_stem: bool | Literal["auto"] = False,
        weights: str | bool | None = None,
        weights_path: str | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
        optimizer: Literal["sgd", "adamw"] = "sgd",
        lr: float = 0.05,
        momentum: float = 0.9,
        nesterov: bool = True,
        weight_decay: float = 5e-4,
        scheduler: Literal["cosine", "onecycle", "none"] = "cosine",
        warmup_epochs: float = 0.0,
        label_smoothing: float = 0.0,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        input_size: list[int] | None = None,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if class_names is not None and num_classes is not None and len(class_names) != num_classes:
            raise ConfigError(
                f"model.num_classes={num_classes} but model.class_names has {len(class_names)} names"
            )
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"model.label_smoothing must be in [0, 1), got {label_smoothing}")
        if lr <= 0:
            raise ConfigError(f"model.lr must be > 0, got {lr}")
        self.save_hyperparameters()
        # Which setting fixed the class count, for errors that must name what the user actually set.
        self.classes_setting = "model.num_classes" if num_classes is not None else "model.class_names"
        # The checkpoint whose hyperparameters built this model (set by the CLI for --ckpt_path).
        self.checkpoint_source: str | None = None
        self.net: nn.Module | None = None
        self._default_layers: tuple[tuple, list[str]] | None = None  # (network and input, answer)
        self._resume_schedule_state: dict[str, Any] | None = None
        if num_classes is not None or class_names is not None:
            self._build()

    # -- construction -----------------------------------------------------------------------------
    def _build(self) -> None:
        hp = self.hparams
        if hp.num_classes is None:
            hp.num_classes = len(hp.class_names)
        if hp.in_channels is None:
            hp.in_channels = 3
        # Recorded as the bool it resolved to, so a checkpoint or export rebuilds the same network.
        hp.cifar_stem = resolve_cifar_stem(hp.backbone, hp.cifar_stem)
        if is_timm(hp.backbone) and hp.input_size is None:
            # Built before the data's size is known (num_classes given): a fixed-size model gets
            # dynamic_img_size, recorded so that rebuilding from the checkpoint builds the same network.
            extra = timm_size_kwargs(hp.backbone, hp.in_channels, None, hp.backbone_kwargs)
            if extra:
                hp.backbone_kwargs = {**(hp.backbone_kwargs or {}), **extra}
        self.net = build_backbone(
            hp.backbone,
            hp.num_classes,
            in_channels=hp.in_channels,
            cifar_stem=hp.cifar_stem,
            weights=hp.weights,
            weights_path=hp.weights_path,
            input_size=hp.input_size,
            backbone_kwargs=hp.backbone_kwargs,
        )
        if hp.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        # Kept out of the module tree so the state dict holds the weights once, under "net.".
        self.__dict__["_compiled_net"] = torch.compile(self.net) if hp.compile else None
        for stage in ("train", "val", "test"):
            setattr(self, f"{stage}_acc", MulticlassAccuracy(hp.num_classes, average="micro"))
            # Top-5 accuracy is always 1.0 with 5 classes or fewer: only logged where it says something.
            if hp.num_classes > 5:
                top5 = MulticlassAccuracy(hp.num_classes, top_k=5, average="micro")
                setattr(self, f"{stage}_acc_top5", top5)

    def adopt_data_metadata(self, metadata: dict[str, Any], stage: str | None = None) -> None:
        """Take class names, normalisation, input size and channels from a data module's ``metadata()``.

        Values given explicitly to the model win; a disagreement in the number of classes or channels is an
        error, because the head or the first convolution would not fit the data. The error names what fixed
        the model's side: the checkpoint it was built from, else the setting the user made. ``stage`` (the
        trainer's ``fit``, ``validate``, ...) picks the advice for a checkpoint.
        """
        hp = self.hparams
        names = metadata.get("class_names")
        if names is not None:
            if hp.num_classes is not None and hp.num_classes != len(names):
                raise ConfigError(self._class_count_mismatch(list(names), stage))
            if hp.class_names is None:
                hp.class_names = list(names)
        channels = metadata.get("in_channels")
        if channels is not None and hp.in_channels is not None and hp.in_channels != channels:
            ckpt = self.checkpoint_source
            made = (
                f"the checkpoint {ckpt} was trained on"
                if ckpt
                else f"model.in_channels={hp.in_channels} means"
            )
            raise ConfigError(
                f"{made} {hp.in_channels}-channel images; the data module's images have {channels} channels"
            )
        for key in DATA_KEYS:
            if hp.get(key) is None and metadata.get(key) is not None:
                hp[key] = metadata[key]

    def _class_count_mismatch(self, names: list[str], stage: str | None) -> str:
        """One line: who fixed the model's class count, what the data has, and what to do about it."""
        hp, ckpt = self.hparams, self.checkpoint_source
        data = f"this data has {len(names)} ({_shown(names)})"
        if ckpt is not None:
            trained = f"the checkpoint {ckpt} was trained for {hp.num_classes} classes"
            if hp.class_names:
                trained += f" ({_shown(list(hp.class_names))})"
            if stage in (None, "fit"):
                advice = (
                    "resume it with its own data, or start a new run from its weights with "
                    f"--model.weights_path {ckpt}"
                )
            else:
                advice = "evaluate it on data with the classes it was trained for"
            return f"{trained}; {data}: {advice}"
        if self.classes_setting == "model.class_names":
            return (
                f"model.class_names has {hp.num_classes} names; {data}: give the data's names in "
                "model.class_names or leave it unset"
            )
        return (
            f"model.num_classes={hp.num_classes} disagrees with the data module, which has {len(names)} "
            f"classes ({_shown(names)}). Set model.num_classes={len(names)} or leave it unset."
        )

    def setup(self, stage: str) -> None:
        datamodule = getattr(attached_trainer(self), "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "metadata"):
            self.adopt_data_metadata(datamodule.metadata(), stage)
        if self.net is None:
            if self.hparams.num_classes is None and self.hparams.class_names is None:
                raise ConfigError(
                    "model.num_classes is not set and the data module gives no class_names; set one of them"
                )
            self._build()

    @property
    def class_names(self) -> list[str]:
        """Class names from the checkpoint or data module; ``"0"``, ``"1"``, ... when none were given."""
        if self.hparams.class_names is not None:
            return list(self.hparams.class_names)
        return [str(i) for i in range(self.hparams.num_classes or 0)]

    @property
    def head_name(self) -> str:
        """Dotted name of the classifier head inside :attr:`net` (``fc`` for ResNets, ``head`` for ViTs)."""
        return self.head_names[0]

    @property
    def head_names(self) -> list[str]:
        """Dotted names of the classifier head(s) (timm's ``get_classifier()``; two for distilled DeiT)."""
        return classifier_head_names(self.net)

    @property
    def pretrained(self) -> bool:
        """True when the backbone started from pretrained weights (``weights`` or ``weights_path``)."""
        return normalise_weights(self.hparams.weights) is not None or self.hparams.weights_path is not None

    @property
    def backbone(self) -> nn.ModuleList:
        """Everything in :attr:`net` except the head module(s): the largest parts holding no head, plus the
        parameters the network holds itself (a ViT's ``cls_token`` and ``pos_embed``; ConvNeXt's ``head.norm``
        is backbone, its ``head.fc`` the head), for
        :class:`~lit_explain.models.finetune.BackboneUnfreeze` and Lightning's ``BackboneFinetuning``."""
        modules = dict(self.net.named_modules())
        return nn.ModuleList(_parts_without(self.net, {id(modules[name]) for name in self.head_names}))

    @property
    def default_explain_layers(self) -> list[str]:
        """Layer names inside :attr:`net` to explain when none is given (callbacks, audit, explain, serve).

        See :func:`lit_explain.models.explain_layers.default_explain_layers`: ``layer4`` for ResNets
        (``layer1`` + ``layer2`` fused where ``layer4`` would be under 4x4, as for 64 px shapes), the
        engine's family rule for timm (``blocks.11.norm1`` for ViT-Tiny, ``stages.3`` for ConvNeXt).
        """
        if self.net is None:
            raise ConfigError("the network is built in setup(); default_explain_layers needs it built first")
        # Asked by every callback at its start and epochs; a ResNet's answer costs a probe forward (~0.1 s on a
        # CPU), and it only changes with the network or its input.
        key = (id(self.net), self.hparams.in_channels or 3, tuple(self.hparams.input_size or ()))
        if self._default_layers is None or self._default_layers[0] != key:
            self._default_layers = (key, default_explain_layers(self.net, key[1], self.hparams.input_size))
        return list(self._default_layers[1])

    # -- steps ------------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        compiled = self.__dict__.get("_compiled_net")
        return compiled(images) if compiled is not None else self.net(images)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return F.cross_entropy(
            logits, labels, label_smoothing=self.hparams.label_smoothing, reduction=reduction
        )

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        """The loss, plus the step's logits (detached) for callbacks that learn from training dynamics.

        Returning the logits costs nothing (they exist already) and changes no gradient: Lightning
        back-propagates ``"loss"`` only, so training is bit-identical to returning the loss alone.
        """
        images, labels = split_batch(batch)
        logits = self(images)
        # MixUp/CutMix batches carry label probabilities [B, C]; cross-entropy takes them as they are and
        # accuracy counts against the dominant class.
        loss = self._loss(logits, labels)
        self.train_acc(logits, labels.argmax(dim=1) if labels.is_floating_point() else labels)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return {"loss": loss, "logits": logits.detach()}

    def _eval_step(self, batch: Any, stage: str) -> dict[str, torch.Tensor]:
        images, labels = split_batch(batch)
        logits = self(images)
        per_sample = self._loss(logits.float(), labels, reduction="none")
        loss = per_sample.mean()
        acc, top5 = getattr(self, f"{stage}_acc"), getattr(self, f"{stage}_acc_top5", None)
        acc(logits, labels)
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", sync_dist=True)
        self.log(f"{stage}/acc", acc, prog_bar=stage == "val")
        if top5 is not None:
            top5(logits, labels)
            self.log(f"{stage}/acc_top5", top5)
        probs = logits.float().softmax(dim=1)
        return {
            "loss": loss,
            "per_sample_loss": per_sample.detach(),
            "logits": logits.detach(),
            "probs": probs.detach(),
            "preds": probs.argmax(dim=1),
            "targets": labels,
        }

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        images = split_batch(batch)[0] if isinstance(batch, (dict, list, tuple)) else batch
        probs = self(images).float().softmax(dim=1)
        confidence, preds = probs.max(dim=1)
        return {"probs": probs, "preds": preds, "confidence": confidence}

    # -- optimisation -----------------------------------------------------------------------------
    def _param_groups(self) -> list[dict[str, Any]]:
        skip = no_weight_decay_ids(self.net)
        decay, no_decay = [], []
        for param in self.net.parameters():
            if not param.requires_grad:
                continue  # frozen by BackboneFinetuning; it adds them back itself
            (no_decay if id(param) in skip else decay).append(param)
        return [
            {"params": decay, "weight_decay": self.hparams.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        groups = self._param_groups()
        if hp.optimizer == "sgd":
            optimizer = torch.optim.SGD(
                groups, lr=hp.lr, momentum=hp.momentum, nesterov=hp.nesterov and hp.momentum > 0
            )
        elif hp.optimizer == "adamw":
            optimizer = torch.optim.AdamW(groups, lr=hp.lr)
        else:
            raise ConfigError(f"model.optimizer={hp.optimizer!r} is not supported; choose sgd or adamw")
        if hp.scheduler == "none":
            return optimizer
        if hp.scheduler not in ("cosine", "onecycle"):
            raise ConfigError(
                f"model.scheduler={hp.scheduler!r} is not supported; choose cosine, onecycle or none"
            )
        total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        steps_per_epoch = total_steps / max(1, self.trainer.max_epochs or 1)
        warmup = (
            min(int(hp.warmup_epochs * steps_per_epoch), total_steps - 1) if hp.scheduler == "cosine" else 0
        )
        scheduler = self._resumed_schedule(optimizer, total_steps, warmup)
        if scheduler is None:
            scheduler = build_schedule(optimizer, hp.scheduler, total_steps, warmup)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _resumed_schedule(self, optimizer: torch.optim.Optimizer, total_steps: int, warmup: int) -> Any:
        """A :class:`ContinuedLR` when resuming a checkpoint whose schedule was built for another length.

        None when not resuming, when the lengths agree, or for a schedule this model did not make (the
        checkpoint's state is then loaded as Lightning does).
        """
        state, self._resume_schedule_state = self._resume_schedule_state, None
        old_total = planned_steps(state) if state else None
        if old_total is None:
            return None
        plan = schedule_plan(self.hparams.scheduler, total_steps, warmup)
        if is_continuation(state) and old_total == total_steps:  # resumed again: the same continuation
            saved = SchedulePlan(old_total, state["peak_step"], state["final_factor"])
            return ContinuedLR(optimizer, state["start_step"], state["start_factor"], saved)
        if old_total == total_steps:
            return None
        step, last_lrs = steps_taken(state), scheduler_state_last_lr(state)
        if step >= old_total - 1:
            # The checkpoint's schedule had ended; its last rate (a step past the end) starts a new cycle.
            start = state.get("final_factor", schedule_plan(self.hparams.scheduler, old_total).final_factor)
        elif last_lrs:
            start = float(last_lrs[0]) / self.hparams.lr
        else:
            return None  # a schedule state without its rates: not one this model made
        message = (
            f"--ckpt_path: the checkpoint's {self.hparams.scheduler} schedule was built for {old_total} steps, "
            f"this run has {total_steps}; the learning rate continues from {start * self.hparams.lr:.3g} at "
            f"step {step} to {plan.final_factor * self.hparams.lr:.3g} at the last step, {total_steps} (cosine)"
        )
        if step >= old_total - 1:
            # Continuity keeps an ended schedule at its floor; say so, or the extra epochs look broken.
            message += (
                ". That schedule had ended, so the extra epochs barely change the weights; to train on with a "
                "fresh schedule, start a new run from these weights: fit --model.weights_path CHECKPOINT"
            )
        rank_zero_warn(message)
        return ContinuedLR(optimizer, step, start, plan)

    # -- checkpoints ------------------------------------------------------------------------------
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Resuming a fit: keep the schedule's state, so configure_optimizers (called next) can continue it
        # when this run's length differs (a larger --trainer.max_epochs).
        fitting = attached_trainer(self) is not None and self.trainer.state.fn == "fit"
        schedules = checkpoint.get("lr_schedulers") or [None]
        self._resume_schedule_state = schedules[0] if fitting and len(schedules) == 1 else None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        metrics = {}
        if attached_trainer(self) is not None:
            for key in ("train/acc", "val/acc", "test/acc", "val/loss"):
                value = self.trainer.callback_metrics.get(key)
                if value is not None:
                    metrics[key] = float(value)
        checkpoint["lit_explain"] = {
            "format": 1,
            "epoch": checkpoint.get("epoch"),
            "metrics": metrics,
            **{key: self.hparams.get(key) for key in DATA_KEYS},
        }


def _parts_without(module: nn.Module, heads: set[int]) -> list[nn.Module]:
    """The largest submodules of ``module`` that hold none of ``heads``, plus holders of the parameters
    of the modules on the way to a head."""
    if id(module) in heads:
        return []
    inside = {id(m) for m in module.modules()}
    if not heads & inside:
        return [module]
    parts: list[nn.Module] = []
    own = dict(module.named_parameters(recurse=False))
    if own:
        parts.append(_ParameterHolder(own))
    for child in module.children():
        parts.extend(_parts_without(child, heads))
    return parts


class _ParameterHolder(nn.Module):
    """Parameters a network holds itself (not in a child module), so a fine-tuning callback can freeze them."""

    def __init__(self, parameters: dict[str, nn.Parameter]) -> None:
        super().__init__()
        for name, param in parameters.items():
            self.register_parameter(name, param)
