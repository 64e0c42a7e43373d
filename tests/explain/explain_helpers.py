"""Helpers for the explanation-engine tests: small calibrated models, model-state snapshots.

Models are random-init torchvision models, calibrated: random-init BatchNorm with its default running statistics collapses activations towards zero
(MobileNetV3's last layer outputs ~1e-8), where float32 rounding differences between two correct
implementations dominate a min-max normalised map. A few train-mode forward passes on random
images give the BatchNorm layers realistic statistics, so agreement is tested on maps with signal.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torchvision import models

SIZE = (67, 45)  # odd on purpose: non-integer upsampling factors in both directions


def calibrate(model: nn.Module, size: tuple[int, int] = SIZE, batches: int = 2) -> nn.Module:
    """Give BatchNorm layers running statistics from random images; return the model in eval mode."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration batches
    gen = torch.Generator().manual_seed(1)
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(8, 3, *size, generator=gen))
    return model.eval()


class ModuleReluDenseNet(models.DenseNet):
    """torchvision's DenseNet with its final functional ``F.relu`` replaced by an ``nn.ReLU`` module.

    captum's GuidedBackprop only sees ``nn.ReLU`` modules; this twin lets the guided comparison with
    captum include a DenseNet, while lit_explain is checked to give the same result on the original.
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.final_relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.final_relu(self.features(x))
        out = nn.functional.adaptive_avg_pool2d(out, (1, 1))
        return self.classifier(torch.flatten(out, 1))


DENSENET121 = {"growth_rate": 32, "block_config": (6, 12, 24, 16), "num_init_features": 64}

BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "resnet18": lambda: models.resnet18(num_classes=10),
    "vgg11_bn": lambda: models.vgg11_bn(num_classes=10),
    "densenet121": lambda: models.DenseNet(num_classes=10, **DENSENET121),
    "mobilenet_v3_small": lambda: models.mobilenet_v3_small(num_classes=10),
    "efficientnet_b0": lambda: models.efficientnet_b0(num_classes=10),
}

# The layer pytorch-grad-cam's README suggests for each family (DenseNet: see test_explain_agreement).
LAYERS = {
    "resnet18": "layer4",
    "vgg11_bn": "features",
    "densenet121": "features.denseblock4",
    "mobilenet_v3_small": "features",
    "efficientnet_b0": "features",
}

_CACHE: dict[str, nn.Module] = {}


def make_model(name: str) -> nn.Module:
    """A fresh calibrated model (seeded, so two calls give identical weights)."""
    torch.manual_seed(0)
    if name == "densenet121_module_relu":
        model = ModuleReluDenseNet(num_classes=10, **DENSENET121)
    else:
        model = BUILDERS[name]()
    return calibrate(model)


def shared_model(name: str) -> nn.Module:
    """A calibrated model shared across tests that only read it (peers may set eval mode or grads)."""
    if name not in _CACHE:
        _CACHE[name] = make_model(name)
    return _CACHE[name]


HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks_always_called",
)
GLOBAL_HOOKS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
)


def snapshot(model: nn.Module) -> dict:
    """Everything an explanation could disturb, copied so later changes show up."""
    modules = list(model.named_modules(remove_duplicate=False))
    return {
        "modules": [(name, id(m), type(m)) for name, m in modules],
        "children": [(name, dict(m._modules)) for name, m in modules],
        "training": [m.training for _, m in modules],
        "inplace": [getattr(m, "inplace", None) for _, m in modules],
        "hooks": [{attr: dict(getattr(m, attr, {})) for attr in HOOK_DICTS} for _, m in modules],
        "global_hooks": {a: dict(getattr(nn.modules.module, a)) for a in GLOBAL_HOOKS},
        "grads": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "buffers": {n: b.clone() for n, b in model.named_buffers()},
        "grad_mode": torch.is_grad_enabled(),
        "function_modes": torch._C._len_torch_function_stack(),
    }


def assert_unchanged(before: dict, after: dict) -> None:
    for key in ("modules", "children", "training", "inplace", "hooks", "global_hooks", "requires_grad"):
        assert before[key] == after[key], key
    assert before["grad_mode"] == after["grad_mode"]
    assert before["function_modes"] == after["function_modes"]
    for name, grad in before["grads"].items():
        now = after["grads"][name]
        assert (grad is None) == (now is None), name
        if grad is not None:
            assert torch.equal(grad, now), name  # bitwise
    for group in ("params", "buffers"):  # BatchNorm running stats and num_batches_tracked included
        for name, value in before[group].items():
            assert torch.equal(value, after[group][name]), name
