"""Fine-tuning schedule: train the new head on a frozen backbone, then unfreeze it at a lower learning rate."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BaseFinetuning
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from lit_explain.compat import NormBase, extend_last_lr, nested_schedulers
from lit_explain.errors import ConfigError
from lit_explain.models.backbones import no_weight_decay_ids

_NORMS = (NormBase, nn.GroupNorm, nn.LayerNorm)
# Per-group keys LR schedulers keep in the optimizer (OneCycleLR, CyclicLR, the warm-up of SequentialLR).
_SCHEDULE_KEYS = ("initial_lr", "max_lr", "min_lr")
# Per-group momentum bounds OneCycleLR/CyclicLR cycle; copied unscaled.
_MOMENTUM_KEYS = ("base_momentum", "max_momentum", "momentum", "betas")


def _schedulers(scheduler: Any) -> list[LRScheduler]:
    """A scheduler and the schedulers nested in it (SequentialLR, ChainedScheduler)."""
    return [scheduler] + [s for child in nested_schedulers(scheduler) for s in _schedulers(child)]


class BackboneUnfreeze(BaseFinetuning):
    """Freeze ``pl_module.backbone`` at the start, unfreeze it at ``unfreeze_at_epoch`` at ``lr_ratio`` x the head's LR.

    Like Lightning's ``BackboneFinetuning`` (it builds on the same ``BaseFinetuning``, so resuming restores the
    optimizer's groups), with two differences that matter for lit_explain's recipes: the unfrozen backbone
    joins the optimizer as two groups that keep :class:`ImageClassifier`'s weight-decay policy (no decay on
    biases and norm layers), and the LR scheduler learns about those groups, so the backbone follows the same
    schedule (cosine or one-cycle) as the head, scaled by ``lr_ratio``, instead of a fixed rate.

    A backbone without pretrained weights (``ImageClassifier.pretrained`` is False: ``model.weights: null``
    and no ``weights_path``) is not frozen: a frozen random backbone would leave only the head to learn, so the
    whole network trains from the first epoch at the full rate. One log line says which case applies.

    Works on any module with a ``backbone``: torchvision and timm networks alike (for timm, everything
    except what ``get_classifier()`` returns, including a ViT's ``cls_token`` and ``pos_embed``).

    Args:
        unfreeze_at_epoch: first epoch (0-based) in which the backbone trains; 0 trains it from the start.
        lr_ratio: backbone LR / head LR from the unfreezing on (e.g. 0.1).
        train_bn: keep the backbone's BatchNorm layers trainable while the rest is frozen.
        freeze_untrained: freeze the backbone even when it has no pretrained weights.

    Example:
        >>> trainer = L.Trainer(callbacks=[BackboneUnfreeze(unfreeze_at_epoch=3, lr_ratio=0.1)])
        >>> trainer.fit(ImageClassifier("resnet18", weights="IMAGENET1K_V1"), datamodule=PlantDataModule("photos"))
    """

    def __init__(
        self,
        unfreeze_at_epoch: int = 5,
        lr_ratio: float = 0.1,
        train_bn: bool = True,
        freeze_untrained: bool = False,
    ) -> None:
        super().__init__()
        if unfreeze_at_epoch < 0:
            raise ConfigError(f"BackboneUnfreeze: unfreeze_at_epoch must be >= 0, got {unfreeze_at_epoch}")
        if not 0 < lr_ratio <= 1:
            raise ConfigError(f"BackboneUnfreeze: lr_ratio must be in (0, 1], got {lr_ratio}")
        self.unfreeze_at_epoch = unfreeze_at_epoch
        self.lr_ratio = lr_ratio
        self.train_bn = train_bn
        self.freeze_untrained = freeze_untrained
        self._trainer: L.Trainer | None = None
        self._stage = ""

    @staticmethod
    def _backbone(pl_module: L.LightningModule) -> nn.Module:
        backbone = getattr(pl_module, "backbone", None)
        if not isinstance(backbone, nn.Module):
            raise ConfigError(
                f"BackboneUnfreeze needs a LightningModule with a `backbone` module; {type(pl_module).__name__} has none"
            )
        return backbone

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer
        self._stage = stage
        if getattr(pl_module, "net", True) is None:
            # Callbacks are set up before the module, and ImageClassifier builds its network in its own setup()
            # from the data module's class names; build it now (idempotent) so there is a backbone to freeze
            # before configure_optimizers collects the trainable parameters.
            pl_module.setup(stage)
        super().setup(trainer, pl_module, stage)

    def _freezes(self, pl_module: L.LightningModule) -> bool:
        """Whether the schedule freezes: never at epoch 0, and not a backbone without pretrained weights."""
        pretrained = getattr(pl_module, "pretrained", True)
        return self.unfreeze_at_epoch > 0 and (pretrained or self.freeze_untrained)

    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        backbone = self._backbone(pl_module)
        if self._freezes(pl_module):
            self.freeze(backbone, train_bn=self.train_bn)
        if self._stage == "fit":
            rank_zero_info(self._describe(pl_module))

    def _describe(self, pl_module: L.LightningModule) -> str:
        trainable = sum(p.numel() for p in pl_module.parameters() if p.requires_grad)
        total = sum(p.numel() for p in pl_module.parameters())
        counts = f"{_count(trainable)} of {_count(total)} parameters train"
        if self.unfreeze_at_epoch == 0:
            return f"BackboneUnfreeze: unfreeze_at_epoch=0, the whole network trains from epoch 0 ({counts})"
        if not self._freezes(pl_module):
            return (
                "BackboneUnfreeze: the backbone has no pretrained weights (model.weights is null), so it is "
                f"not frozen: the whole network trains from epoch 0 ({counts}); set freeze_untrained=true "
                "to freeze it anyway"
            )
        kept = "the head and BatchNorm layers" if self.train_bn else "the head"
        return (
            f"BackboneUnfreeze: pretrained backbone frozen for epochs 0-{self.unfreeze_at_epoch - 1}, only "
            f"{kept} train ({counts}); from epoch {self.unfreeze_at_epoch} the backbone trains at "
            f"{self.lr_ratio:g}x the head's learning rate"
        )

    def finetune_function(self, pl_module: L.LightningModule, epoch: int, optimizer: Optimizer) -> None:
        if epoch < self.unfreeze_at_epoch or self.unfreeze_at_epoch == 0:
            return
        backbone = self._backbone(pl_module)
        if all(p.requires_grad for p in backbone.parameters()):
            return
        # Also reached after resuming past the unfreeze epoch: the groups come back from the checkpoint,
        # requires_grad does not.
        self.make_trainable(backbone)
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
        net = getattr(pl_module, "net", None)
        skip = no_weight_decay_ids(net) if isinstance(net, nn.Module) else set()
        decay, no_decay = [], []
        for module in backbone.modules():
            for name, param in module.named_parameters(recurse=False):
                if id(param) in in_optimizer:
                    continue
                no = isinstance(module, _NORMS) or name == "bias" or id(param) in skip
                (no_decay if no else decay).append(param)
        self._add_groups(optimizer, [(decay, True), (no_decay, False)])

    def _add_groups(self, optimizer: Optimizer, groups: list[tuple[list[nn.Parameter], bool]]) -> None:
        reference = optimizer.param_groups[0]
        weight_decay = max(g.get("weight_decay", 0.0) for g in optimizer.param_groups)
        added = 0
        for params, decays in groups:
            if not params:
                continue
            group = {
                "params": params,
                "lr": reference["lr"] * self.lr_ratio,
                "weight_decay": weight_decay if decays else 0.0,
            }
            for key in _SCHEDULE_KEYS:
                if key in reference:
                    group[key] = reference[key] * self.lr_ratio
            for key in _MOMENTUM_KEYS:
                if key in reference:
                    group[key] = reference[key]
            optimizer.add_param_group(group)
            added += 1
        if added and self._trainer is not None:
            for config in self._trainer.lr_scheduler_configs:
                if config.scheduler.optimizer is not optimizer:
                    continue
                for scheduler in _schedulers(config.scheduler):
                    # Schedulers zip base_lrs with the groups; new groups need an entry or they are not scheduled.
                    if hasattr(scheduler, "base_lrs"):
                        scheduler.base_lrs += [scheduler.base_lrs[0] * self.lr_ratio] * added
                    extend_last_lr(scheduler, [g["lr"] for g in optimizer.param_groups[-added:]])


def _count(n: int) -> str:
    """A parameter count the way Lightning's model summary prints it (11.7 K, 11.2 M)."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.1f} {suffix}"
    return str(n)
