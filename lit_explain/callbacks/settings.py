"""Which network and layers the callbacks explain, and the setup-time check of those settings."""

from __future__ import annotations

from typing import Any

from torch import nn

from lit_explain.errors import ConfigError
from lit_explain.explain import METHODS, LayerNotFoundError, resolve_layers


def explained_net(pl_module: Any) -> nn.Module:
    """The plain network the callbacks explain: ``pl_module.net`` when there is one, else the module."""
    net = getattr(pl_module, "net", None)
    return pl_module if net is None else net


def explain_layers(pl_module: Any, layer: str | list[str] | None) -> str | list[str] | None:
    """The configured layer(s), or the model's own default (``default_explain_layers``) when None.

    None stays None (the engine's automatic choice) for models without a default.
    """
    if layer is not None:
        return layer
    try:
        default = getattr(pl_module, "default_explain_layers", None)
    except ConfigError:  # the network is not built yet
        return None
    return list(default) if default else None


def check_explain_method(owner: str, method: str) -> None:
    """Refuse, at ``setup``, a method the engine does not have, naming the valid ones."""
    if method not in METHODS:
        raise ConfigError(
            f"{owner}: method={method!r} is not an explanation method; choose one of {', '.join(METHODS)}"
        )


def check_explain_layers(owner: str, pl_module: Any, layer: str | list[str] | None) -> None:
    """Refuse a layer the model does not have, naming the candidates.

    Called once the model is set up (a lit_explain model builds its network from the data module in its
    own ``setup``, after the callbacks'), and before the first batch: ``on_fit_start``, or the start of
    ``validate``/``test``. A model whose network is still missing is not checked.
    """
    if getattr(pl_module, "net", False) is None:
        return
    chosen = explain_layers(pl_module, layer)
    if chosen is None:
        return
    names = [chosen] if isinstance(chosen, str) else list(chosen)
    try:
        resolve_layers(explained_net(pl_module), names)
    except LayerNotFoundError as exc:
        raise ConfigError(
            f"{owner}: layer={layer!r}: {exc} Fix `layer` in the callback's init_args, or leave it unset "
            "for the model's default"
        ) from None
