"""Model state helpers shared by layers.py and hooks.py (kept apart so neither imports the other)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

_WRAPPERS: tuple[type[nn.Module], ...] = (nn.DataParallel, nn.parallel.DistributedDataParallel)


def unwrap_model(model: nn.Module) -> nn.Module:
    """Return the module inside ``nn.DataParallel`` / ``DistributedDataParallel`` wrappers.

    Explanations run the inner module directly: on one device, without the wrapper's scatter or
    buffer broadcast (a collective that would hang when only one rank explains).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3))
        >>> unwrap_model(nn.DataParallel(net)) is net
        True
    """
    while isinstance(model, _WRAPPERS):
        model = model.module
    return model


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode and give every module back its own train/eval flag on exit.

    Flags are restored one module at a time (not with ``model.train(flag)``), so a model that was
    partly frozen (say a backbone in eval inside a training head) comes back exactly as it was.

    Example:
        >>> net = nn.Sequential(nn.BatchNorm2d(3))
        >>> with eval_mode(net):
        ...     net.training
        False
        >>> net.training
        True
    """
    flags = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        yield model
    finally:
        for module, flag in flags:
            module.training = flag
