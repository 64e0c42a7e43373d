"""Networks lit_explain adds to timm's model registry, so a recipe names its network with one backbone name.

A recipe that spelled its network as ``backbone: timm:resnet10t`` plus ``backbone_kwargs: {stem_width: 16,
channels: [...]}`` broke as soon as ``--model.backbone`` changed: the kwargs stayed behind and the next model
(a ViT) refused them. Registered here, the demo's network is ``timm:resnet10t_half`` and the recipe's
``backbone_kwargs`` stay null, so ``--model.backbone X`` alone switches it.

Imported by :func:`lit_explain.models.timm_backbones._timm` the first time timm is used, so the names are
known wherever lit_explain resolves a ``timm:NAME`` (fit, checkpoints, plain weight files, audit, serve).

- ``resnet10t_half``: timm's ResNet-10-T (one basic block per stage, 3-conv tiered stem, average-pool
  downsampling) at half width: a 16-wide stem and stages of 32, 64, 128, 256 channels (1.2 M parameters with
  a 6-class head). No pretrained weights: it is trained from scratch (``model.weights`` must stay null).
  Built exactly as ``timm.create_model("resnet10t", stem_width=16, channels=[32, 64, 128, 256])``, so the
  same seed gives the same initial weights.
"""

from __future__ import annotations

from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, ResNet

HALF_WIDTH = {"stem_width": 16, "channels": (32, 64, 128, 256)}

# timm's register_model reads this module's ``default_cfgs``: the preprocessing and head names timm (and
# lit_explain's plain-weights loader) look up. No url / hf_hub_id: there are no published weights.
default_cfgs = generate_default_cfgs(
    {
        "resnet10t_half": {
            "num_classes": 1000,
            "input_size": (3, 224, 224),
            "pool_size": (7, 7),
            "crop_pct": 0.95,
            "interpolation": "bicubic",
            "mean": IMAGENET_DEFAULT_MEAN,
            "std": IMAGENET_DEFAULT_STD,
            "first_conv": "conv1.0",
            "classifier": "fc",
            "description": "lit_explain's half-width ResNet-10-T (the shapes demo's network), no weights",
        }
    }
)


@register_model
def resnet10t_half(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-10-T at half width (stem 16, stages 32-256 channels); the shapes demo's network."""
    # The same arguments, in the same order, as timm's resnet10t entry point plus the half-width overrides:
    # modules are created in the same order, so a seed gives bit-identical weights to that spelling.
    # backbone_kwargs may still override any of them (a deeper stage list, another stem width).
    model_args = {"block": BasicBlock, "layers": (1, 1, 1, 1), "stem_type": "deep_tiered", "avg_down": True}
    return build_model_with_cfg(
        ResNet, "resnet10t_half", pretrained, **{**model_args, **HALF_WIDTH, **kwargs}
    )
