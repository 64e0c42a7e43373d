"""timm backbones (``timm:NAME``): the data's classes, input channels and image size, and timm weights.

Weights come from timm's own API: ``model.weights: true`` (the default pretrained tag) or a tag
(``augreg_in21k_ft_in1k``) downloads through timm (Hugging Face Hub) when online and reads the Hugging Face
cache when the file is there; offline, a :class:`~lit_explain.errors.ConfigError` names the file to provide.
``model.weights_path`` takes a local timm state dict (``.safetensors`` or a ``torch.save`` file). Either way
the weights are loaded strictly through timm (which resizes ViT position embeddings to the image size and
adapts the first convolution to the input channels), and a head with a different class count is replaced
with ``reset_classifier``.
"""

from __future__ import annotations

import difflib
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from lit_explain.errors import ConfigError
from lit_explain.models.weights_file import head_note, read_weights, summarise_load_error

TIMM_PREFIX = "timm:"
# Networks lit_explain registers in timm's registry (lit_explain.models.timm_registry); no published weights.
LIT_EXPLAIN_MODELS = ("resnet10t_half",)
# create_model arguments lit_explain sets itself; backbone_kwargs may not override them.
_RESERVED = {
    "num_classes": "model.num_classes (or the data module's classes)",
    "in_chans": "model.in_channels (or the data module's channels)",
    "pretrained": "model.weights",
    "pretrained_cfg": "model.weights (a pretrained tag)",
    "pretrained_cfg_overlay": "model.weights_path",
    "checkpoint_path": "model.weights_path",
}


def _timm() -> Any:
    """timm, imported on first use, without the wandb import it would trigger (about 1.2 s).

    ``timm.utils.summary`` imports wandb when it is installed, only for timm's own training scripts; a run
    that logs to W&B imports wandb itself through Lightning's logger. lit_explain's own named networks
    (``timm:resnet10t_half``, see :mod:`lit_explain.models.timm_registry`) register on that first use.
    """
    if "timm" not in sys.modules and "wandb" not in sys.modules:
        sys.modules["wandb"] = None  # type: ignore[assignment]  # `import wandb` raises ImportError
        try:
            import timm
        finally:
            del sys.modules["wandb"]
    import timm

    import lit_explain.models.timm_registry  # noqa: F401  (registers its models once, on import)

    return timm


def is_timm(name: str) -> bool:
    """True for a ``timm:NAME`` backbone name."""
    return isinstance(name, str) and name.startswith(TIMM_PREFIX)


def parse_timm_name(spec: str) -> tuple[str, str]:
    """``"timm:NAME[.TAG]"`` -> ``(NAME, TAG)`` (TAG empty when none), checked against timm's registry."""
    name, tag = _timm().models.split_model_name_tag(spec[len(TIMM_PREFIX) :] if is_timm(spec) else spec)
    if not _timm().is_model(name):
        close = difflib.get_close_matches(name, _timm().list_models(), n=6, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"model.backbone={spec!r}: {name!r} is not a timm model.{hint} "
            "List the names with `python -c \"import timm; print(timm.list_models('vit_*'))\"`."
        )
    return name, tag


def _pretrained_cfg(name: str, tag: str) -> Any:
    try:
        cfg = _timm().models.get_pretrained_cfg(f"{name}.{tag}" if tag else name)
    except RuntimeError:
        cfg = None
    if cfg is None:
        tags = [t.partition(".")[2] for t in _timm().list_pretrained(f"{name}.*")]
        raise ConfigError(
            f"timm has no pretrained tag {tag!r} for {name}; choose one of {', '.join(tags) or '(none)'} "
            "(model.weights: true takes the default)"
        )
    return cfg


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a ``torch.save`` file, read without running code (an unsafe
    pickle is refused), wrappers removed; see :func:`lit_explain.models.weights_file.read_weights`."""
    return read_weights(path)


def _head_rows(state: Mapping[str, torch.Tensor], cfg: Any) -> int:
    """Number of classes of the head stored in ``state`` (0 when it holds no head)."""
    names = cfg.classifier if isinstance(cfg.classifier, (tuple, list)) else (cfg.classifier,)
    for name in names:
        weight = state.get(f"{name}.weight") if name else None
        if weight is not None and weight.ndim >= 1:
            return int(weight.shape[0])
    return 0


def _reachable(host: str, timeout: float = 3.0) -> str | None:
    """None when ``host`` accepts a connection on port 443, else the reason (checked before timm retries)."""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return None
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"


def _hub_weights(name: str, tag: str, weights: Any) -> tuple[Any, dict[str, torch.Tensor] | None]:
    """The pretrained cfg and, when the file is already cached, its state dict; offline without it: an error."""
    cfg = _pretrained_cfg(name, tag)
    full = f"{name}.{cfg.tag}" if cfg.tag else name
    if cfg.hf_hub_id:
        from huggingface_hub import constants, try_to_load_from_cache

        files = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        for filename in files:
            cached = try_to_load_from_cache(cfg.hf_hub_id, filename, cache_dir=constants.HF_HUB_CACHE)
            if isinstance(cached, str):
                return cfg, read_state_dict(cached)
        host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
        url = f"{constants.ENDPOINT}/{cfg.hf_hub_id}/resolve/main/{files[0]}"
        cache = f"{constants.HF_HUB_CACHE} (set HF_HOME or HF_HUB_CACHE to move it)"
    elif cfg.url:
        host = urlparse(cfg.url).hostname or cfg.url
        url = cfg.url
        cache = str(Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(cfg.url).path).name)
        if Path(cache).is_file():
            return cfg, None  # timm reads torch.hub's cache without a download
    elif name in LIT_EXPLAIN_MODELS:
        raise ConfigError(
            f"model.weights: {name} is lit_explain's own network, trained from scratch, with no published "
            "weights; set model.weights=null (or model.weights_path=<a state dict of it>)"
        )
    else:
        raise ConfigError(f"timm publishes no pretrained weights for {full}; set model.weights=null")
    reason = _reachable(host)
    if reason is not None:
        shown = str(weights).lower() if isinstance(weights, bool) else repr(weights)
        raise ConfigError(
            f"model.weights={shown}: cannot download the timm weights {full} ({host} unreachable: {reason}). "
            f"Offline, download {url} on a connected machine and pass model.weights_path=<that file>, "
            f"or copy a filled cache to {cache}."
        )
    return cfg, None


def _size_kwargs(
    name: str, in_channels: int, input_size: list[int] | None, kwargs: dict[str, Any], cfg: Any
) -> dict[str, Any]:
    """``img_size`` (fixed-size models such as ViT/Swin) from the data, or ``dynamic_img_size`` when unknown."""
    if input_size is not None:
        try:
            resolved = _timm().models.resolve_model_input_args(
                name, {"input_size": (in_channels, *input_size)}, **kwargs
            )
        except ValueError as exc:  # backbone_kwargs.img_size disagrees with the data
            raise ConfigError(f"model.backbone_kwargs for {name}: {exc}") from exc
        return {"img_size": resolved["img_size"]} if "img_size" in resolved else {}
    if cfg.fixed_input_size and "img_size" not in kwargs and "dynamic_img_size" not in kwargs:
        # Without the data's size, any size must work; the default img_size keeps the weights' grid.
        return {"dynamic_img_size": True, "img_size": list(cfg.input_size[1:])}
    return {}


def timm_size_kwargs(
    spec: str, in_channels: int, input_size: list[int] | None, kwargs: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The size arguments :func:`build_timm_backbone` passes to ``timm.create_model`` for this input.

    Example:
        >>> timm_size_kwargs("timm:vit_tiny_patch16_224", 3, [64, 64])
        {'img_size': (64, 64)}
        >>> timm_size_kwargs("timm:convnext_atto", 3, [64, 64])
        {}
    """
    name, tag = parse_timm_name(spec)
    return _size_kwargs(name, in_channels, input_size, dict(kwargs or {}), _default_cfg(name, tag))


def _default_cfg(name: str, tag: str) -> Any:
    try:
        cfg = _timm().models.get_pretrained_cfg(f"{name}.{tag}" if tag else name)
    except RuntimeError:
        cfg = None
    return cfg if cfg is not None else _timm().models.PretrainedCfg()


def build_timm_backbone(
    spec: str,
    num_classes: int,
    in_channels: int = 3,
    input_size: list[int] | None = None,
    weights: str | bool | None = None,
    weights_path: str | None = None,
    kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """Build ``timm:NAME`` for ``num_classes`` classes, ``in_channels`` channels and ``input_size`` images.

    Args:
        spec: ``"timm:NAME"`` or ``"timm:NAME.TAG"`` (a pretrained tag, used with ``weights``).
        num_classes, in_channels: the head's outputs and the first layer's inputs (timm's ``in_chans``).
        input_size: ``(height, width)`` of the data; fixed-size models (ViT, DeiT, Swin) get it as
            ``img_size``; None gives them ``dynamic_img_size`` (any size works).
        weights: True (timm's default tag), a tag name, or None/False for random initialisation.
        weights_path: a local timm state dict (``.safetensors`` or ``.pth``); wins over ``weights``.
        kwargs: further ``timm.create_model`` arguments (``drop_path_rate``, ``patch_size``, ...).

    Example:
        >>> net = build_timm_backbone("timm:vit_tiny_patch16_224", 6, input_size=[64, 64])
        >>> net(torch.zeros(2, 3, 64, 64)).shape
        torch.Size([2, 6])
    """
    name, tag = parse_timm_name(spec)
    kwargs = dict(kwargs or {})
    for key, where in _RESERVED.items():
        if key in kwargs:
            raise ConfigError(f"model.backbone_kwargs.{key} is set by lit_explain; use {where} instead")
    if weights_path is not None:
        cfg, state = _default_cfg(name, tag), read_state_dict(weights_path)
    elif weights not in (None, False, ""):
        tag = tag if weights is True or str(weights).lower() == "true" else str(weights)
        cfg, state = _hub_weights(name, tag, weights)
    else:
        cfg, state = _default_cfg(name, tag), None
    pretrained = weights_path is not None or weights not in (None, False, "")
    size = _size_kwargs(name, in_channels, input_size, kwargs, cfg)
    # Load the weights strictly with the head they were saved with, then let timm swap the head.
    file_classes = _head_rows(state, cfg) if state is not None else int(cfg.num_classes or 0)
    create = {"num_classes": file_classes if pretrained else num_classes, "in_chans": in_channels}
    overlay = {"state_dict": state, "num_classes": file_classes} if state is not None else None
    try:
        net = _timm().create_model(
            name,
            pretrained=pretrained,
            pretrained_cfg=cfg.tag or None,
            pretrained_cfg_overlay=overlay,
            **{**create, **kwargs, **size},
        )
    except TypeError as exc:  # an argument this model's constructor does not take
        raise ConfigError(f"model.backbone_kwargs do not fit timm model {name}: {exc}") from exc
    except (RuntimeError, ValueError, KeyError) as exc:  # weights that do not fit the architecture
        source = repr(weights_path) if weights_path is not None else f"the {cfg.tag or 'default'} weights"
        raise ConfigError(
            f"{source} do not fit timm model {name} ({in_channels} channels, size {size or 'default'}): "
            f"{summarise_load_error(exc)}"
        ) from None
    if pretrained and file_classes != num_classes:
        net.reset_classifier(num_classes)
        source = str(weights_path) if weights_path is not None else f"timm {name}.{cfg.tag or 'default'}"
        changes = [(head, file_classes, num_classes) for head in timm_head_names(net)]
        rank_zero_info(head_note(source, changes))
    return net


def timm_head_names(net: nn.Module) -> list[str]:
    """Dotted names of the module(s) timm's ``get_classifier()`` returns (``head``, ``head.fc``, ...)."""
    heads = net.get_classifier()
    heads = heads if isinstance(heads, (tuple, list)) else (heads,)
    by_id = {id(m): n for n, m in net.named_modules()}
    return [by_id[id(h)] for h in heads if id(h) in by_id]
