"""``python -m lit_explain export``: a lit_explain checkpoint -> the plain file the plant notebook used.

The plain file holds ``model_state_dict`` (the torchvision network's own keys, ``conv1.weight`` ...),
``class_names``, ``train_acc``, ``val_acc``, ``test_acc`` and ``epoch``, plus what lit_explain needs to load it
again without guessing (``backbone``, ``cifar_stem``, ``in_channels``, ``mean``, ``std``, ``input_size``) and ``lit_explain_export`` (the format version, so that ``--overwrite``
replaces only files export wrote); tools that expect only the notebook's keys ignore the extra ones.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ArgumentParser

from lit_explain.arguments import add_overwrite_argument
from lit_explain.models.loading import CheckpointError, is_lightning_checkpoint, read_checkpoint
from lit_explain.outputs import OutputError, OutputExistsError, write_atomic

EXPORT_MARKER = "lit_explain_export"  # key in every file export writes; its value is the format version


def plain_export(checkpoint: dict[str, Any], source: str = "<checkpoint>") -> dict[str, Any]:
    """Convert a loaded lit_explain checkpoint dict into the plain format (tensors on the CPU)."""
    if not is_lightning_checkpoint(checkpoint):
        raise CheckpointError(
            f"{source!r} is not a lit_explain checkpoint (no 'state_dict' and 'hyper_parameters'); "
            "export converts a .ckpt written by `python -m lit_explain fit`"
        )
    hp = checkpoint["hyper_parameters"]
    extra = checkpoint.get("lit_explain") or {}
    metrics = extra.get("metrics") or {}
    state = {
        k[len("net.") :]: v.detach().cpu()
        for k, v in checkpoint["state_dict"].items()
        if k.startswith("net.")
    }
    if not state:
        raise CheckpointError(f"{source!r} has no network weights (no 'net.' keys in its state_dict)")
    class_names = hp.get("class_names") or extra.get("class_names")
    if class_names is None and hp.get("num_classes"):
        class_names = [str(i) for i in range(int(hp["num_classes"]))]

    def metric(name: str) -> float | None:
        value = metrics.get(f"{name}/acc")
        return float(value) if value is not None else None

    return {
        "model_state_dict": state,
        "class_names": list(class_names) if class_names is not None else None,
        "train_acc": metric("train"),
        "val_acc": metric("val"),
        "test_acc": metric("test"),
        "epoch": extra.get("epoch", checkpoint.get("epoch")),
        "backbone": hp.get("backbone"),
        "cifar_stem": bool(hp.get("cifar_stem", False)),
        "in_channels": hp.get("in_channels") or extra.get("in_channels"),
        "mean": hp.get("mean") or extra.get("mean"),
        "std": hp.get("std") or extra.get("std"),
        "input_size": hp.get("input_size") or extra.get("input_size"),
        "backbone_kwargs": hp.get("backbone_kwargs"),  # timm models: rebuilds the same network
        EXPORT_MARKER: 1,
    }


def is_export_file(path: Path) -> bool:
    """Whether ``path`` is a file ``export`` wrote (read with ``weights_only=True``, memory-mapped)."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a torch file, a legacy pickle, truncated: in any case not ours to replace
        return False
    if not isinstance(data, dict) or "model_state_dict" not in data:
        return False
    # Files from before the marker key carry lit_explain's own loading keys.
    return EXPORT_MARKER in data or {"backbone", "cifar_stem", "input_size"} <= set(data)


def save_atomic(obj: Any, output: Path, overwrite: bool = False) -> None:
    """``torch.save`` through :func:`lit_explain.outputs.write_atomic`: never a half-written file, and
    ``overwrite`` replaces only a file that ``export`` wrote earlier (anything else is refused)."""
    if output.is_dir():
        raise OutputError(f"--output {output} is a folder; give a file path such as {output / 'model.pth'}")
    if output.exists() and not overwrite:
        raise OutputExistsError(f"{output} exists; pass --overwrite to replace it")
    if output.exists() and not is_export_file(output):
        raise OutputError(
            f"{output} exists and was not written by lit_explain export; it is never replaced: "
            "choose another --output"
        )
    write_atomic(output, lambda handle: torch.save(obj, handle), overwrite=overwrite)


def export_checkpoint(ckpt_path: str | Path, output: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Write the plain file for ``ckpt_path`` to ``output``; returns what was written.

    Example:
        >>> export_checkpoint("lightning_logs/plant_resnet18/version_0/checkpoints/last.ckpt", "model.pth")
        >>> load_classifier("model.pth")   # the backbone name travels in the file
    """
    plain = plain_export(read_checkpoint(ckpt_path), str(ckpt_path))
    save_atomic(plain, Path(output), overwrite=overwrite)
    return plain


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m lit_explain export",
        description="Convert a lit_explain checkpoint into a plain {model_state_dict, class_names, train_acc, "
        "val_acc, test_acc, epoch} file (the plant notebook's format).",
    )
    parser.add_argument("--config", action="config", help="a YAML file with these options")
    parser.add_argument(
        "--ckpt_path", type=str, required=True, help="lit_explain checkpoint (.ckpt) to convert"
    )
    parser.add_argument("--output", type=str, required=True, help="file to write (e.g. model.pth)")
    add_overwrite_argument(parser, "--output when it is a file export wrote earlier")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m lit_explain export``."""
    args = build_parser().parse_args(argv if argv is not None else sys.argv[1:])
    plain = export_checkpoint(args.ckpt_path, args.output, overwrite=args.overwrite)
    accs = ", ".join(
        f"{k}={plain[k]:.4f}" for k in ("train_acc", "val_acc", "test_acc") if plain.get(k) is not None
    )
    print(
        f"wrote {args.output}: {plain['backbone']}, {len(plain['class_names'] or [])} classes, "
        f"epoch {plain['epoch']}{', ' + accs if accs else ''}"
    )
    return 0
