"""``model.weights_path``: read a state-dict file without running code and fit it into a backbone.

A file is ``.safetensors`` or a ``torch.save`` file (read with ``weights_only=True`` through
:func:`~lit_explain.models.checkpoint_io.read_checkpoint`, so a pickle that would run code is refused as
unsafe). The state dict may be bare or under ``state_dict`` / ``model_state_dict`` / ``model``, with wrapper
prefixes (``module.``, ``net.``, ...). When loaded into a backbone, a classifier head of another class count
(ImageNet's 1000 classes into a 4-class model) stays at its random initialisation and one line says so;
anything else that does not fit is one line naming the file and the first mismatching keys.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from lit_explain.errors import ConfigError
from lit_explain.models.checkpoint_io import CheckpointError, read_checkpoint

# Prefixes a state dict picks up when saved from a wrapper (DataParallel, torch.compile, a LightningModule).
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "net.", "model.")
_NESTED = ("state_dict", "model_state_dict", "model")


def strip_prefixes(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of ``state`` with wrapper prefixes that every key shares removed (repeatedly)."""
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    changed = True
    while changed and tensors:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in tensors):
                tensors = {k[len(prefix) :]: v for k, v in tensors.items()}
                changed = True
    return tensors


def _listed(items: Sequence[str], first: int = 4) -> str:
    return ", ".join(items[:first]) + (f", ... ({len(items)} in all)" if len(items) > first else "")


def describe_mismatch(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor]) -> str:
    """How a state dict differs from what a network expects, in one line: the first few keys of each kind."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [
        f"{k} found {list(found[k].shape)} expected {list(expected[k].shape)}"
        for k in expected
        if k in found and found[k].shape != expected[k].shape
    ]
    parts = [
        f"{label} {_listed(keys)}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch:", shapes))
        if keys
    ]
    return "; ".join(parts) or "keys and shapes agree"


def summarise_load_error(exc: BaseException) -> str:
    """``load_state_dict``'s multi-line RuntimeError as one line with the first few keys of each kind."""
    text = str(exc)
    parts = []
    for label, heading in (("missing", "Missing key"), ("unexpected", "Unexpected key")):
        found = re.search(rf"{heading}\(s\) in state_dict: ([^\n]*)", text)
        if found:
            keys = re.findall(r'"([^"]+)"', found.group(1))
            parts.append(f"{label} {_listed(keys)}")
    sizes = re.findall(
        r"size mismatch for (\S+): copying a param with shape torch\.Size\((\[[^\]]*\])\) from checkpoint, "
        r"the shape in current model is torch\.Size\((\[[^\]]*\])\)",
        text,
    )
    if sizes:
        parts.append("shape mismatch: " + _listed([f"{k} found {a} expected {b}" for k, a, b in sizes]))
    line = "; ".join(parts) or " ".join(text.split())
    return line if len(line) <= 400 else line[:397] + "..."


def _read_safetensors(path: Path) -> dict[str, Any]:
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError:
        raise ConfigError(
            f"model.weights_path={str(path)!r} is a .safetensors file; install safetensors to read it"
        ) from None
    try:
        return load_file(str(path), device="cpu")
    except SafetensorError as exc:
        raise ConfigError(
            f"model.weights_path={str(path)!r} is not a readable .safetensors file ({exc})"
        ) from None


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in a ``.safetensors`` or ``torch.save`` file, read without running code.

    Example:
        >>> state = read_weights("resnet18-f37072fd.pth")   # torchvision's ImageNet file
        >>> state["fc.weight"].shape
        torch.Size([1000, 512])
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"model.weights_path={str(path)!r} does not exist or is not a file")
    try:
        content: Any = _read_safetensors(path) if path.suffix == ".safetensors" else read_checkpoint(path)
    except CheckpointError as exc:  # unsafe (refused), truncated or not a torch file: already one line
        raise ConfigError(f"model.weights_path: {exc}") from None
    for key in _NESTED:
        if isinstance(content.get(key), Mapping):
            content = content[key]
            break
    state = strip_prefixes(content)
    if not state:
        keys = ", ".join(sorted(map(str, content))[:8]) or "none"
        raise ConfigError(f"model.weights_path={str(path)!r} holds no tensors (its keys: {keys})")
    return state


def head_changes(
    expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], heads: Sequence[str]
) -> list[tuple[str, int, int]]:
    """``(head, classes in the file, classes of the model)`` for each head whose shape differs."""
    changes = []
    for head in heads:
        key = f"{head}.weight"
        if key in state and key in expected and state[key].shape != expected[key].shape:
            changes.append((head, int(state[key].shape[0]), int(expected[key].shape[0])))
    return changes


def head_note(source: str, changes: Sequence[tuple[str, int, int]]) -> str:
    """The one line that says which heads were left at random init."""
    heads = ", ".join(f"{head} {found}→{wanted}" for head, found, wanted in changes)
    return f"weights from {source}: classifier {heads} classes left at random init"


def load_into(
    net: nn.Module, state: Mapping[str, torch.Tensor], source: str, heads: Sequence[str]
) -> str | None:
    """Load ``state`` into ``net``; heads (dotted names) of another class count keep their random init.

    Returns the line to log when a head was left out (None when everything loaded). Raises
    :class:`ConfigError`, one line naming ``source`` and the first mismatching keys, for anything else.

    Example:
        >>> net = torchvision.models.resnet18(num_classes=4)
        >>> load_into(net, read_weights("resnet18-f37072fd.pth"), "resnet18-f37072fd.pth", ["fc"])
        'weights from resnet18-f37072fd.pth: classifier fc 1000→4 classes left at random init'
    """
    expected = net.state_dict()
    changes = head_changes(expected, state, heads)
    skipped = {f"{head}.{part}" for head, _, _ in changes for part in ("weight", "bias")}
    kept = {k: v for k, v in state.items() if k not in skipped}
    reason = describe_mismatch({k: v for k, v in expected.items() if k not in skipped}, kept)
    if reason != "keys and shapes agree":
        raise ConfigError(
            f"model.weights_path={source!r} does not fit backbone {type(net).__name__}: {reason}"
        )
    net.load_state_dict(kept, strict=False)  # strict up to the skipped head, checked just above
    return head_note(source, changes) if changes else None


def load_weights_path(net: nn.Module, path: str | Path, heads: Sequence[str]) -> None:
    """Read ``path`` (:func:`read_weights`) into ``net`` (:func:`load_into`) and log a replaced head.

    Auxiliary classifiers (GoogLeNet's ``aux1.fc2``, Inception's ``AuxLogits.fc``) count as heads too.
    """
    aux = [n for n, m in net.named_modules() if isinstance(m, nn.Linear) and "aux" in n.lower()]
    note = load_into(net, read_weights(path), str(path), [*heads, *(n for n in aux if n not in heads)])
    if note is not None:
        rank_zero_info(note)
