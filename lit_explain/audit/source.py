"""What an audit runs on: the model from a checkpoint and the data module its training used."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from lit_explain.data.base import ExplainableDataModule
from lit_explain.errors import DataError
from lit_explain.models.classifier import ImageClassifier
from lit_explain.models.loading import CheckpointError, read_checkpoint


def load_model(
    ckpt_path: str | Path, map_location: str = "cpu", backbone: str | None = None
) -> ImageClassifier:
    """The classifier of a checkpoint (``weights_only=True``), in eval mode."""
    try:
        from lit_explain.models.loading import load_classifier
    except ImportError:  # older checkout without the plain-file loader
        from lit_explain.models.loading import classifier_from_checkpoint

        return classifier_from_checkpoint(ckpt_path, map_location=map_location)
    return load_classifier(ckpt_path, backbone=backbone, map_location=map_location)


def _config_candidates(ckpt_path: Path) -> list[Path]:
    # LightningCLI writes config.yaml into the log dir: lightning_logs/<name>/version_N/config.yaml,
    # two levels above checkpoints/<file>.ckpt.
    return [ckpt_path.parent / "config.yaml", ckpt_path.parent.parent / "config.yaml"]


def _data_section(config: Mapping[str, Any], source: str) -> dict[str, Any]:
    section = config.get("data", config) if isinstance(config, Mapping) else None
    if not isinstance(section, Mapping) or "class_path" not in section:
        raise DataError(
            f"{source} has no data section with a class_path; expected e.g.\n"
            "data:\n  class_path: lit_explain.data.ShapesDataModule\n  init_args: {val_size: 500}"
        )
    return {"class_path": str(section["class_path"]), "init_args": dict(section.get("init_args") or {})}


def _known_datamodules() -> list[type[ExplainableDataModule]]:
    import lit_explain.data as data_pkg

    found = []
    for name in dir(data_pkg):
        obj = getattr(data_pkg, name)
        if inspect.isclass(obj) and issubclass(obj, ExplainableDataModule) and not inspect.isabstract(obj):
            found.append(obj)
    return found


def _from_checkpoint_hparams(checkpoint: Mapping[str, Any]) -> dict[str, Any] | None:
    """A data spec from the hyperparameters Lightning stores when the data module saved them."""
    hparams = checkpoint.get("datamodule_hyper_parameters")
    if not isinstance(hparams, Mapping):
        return None
    keys = set(hparams)
    fitting = []
    for cls in _known_datamodules():
        params = set(inspect.signature(cls.__init__).parameters) - {"self"}
        if keys <= params:
            fitting.append(cls)
    if len(fitting) != 1:
        return None
    cls = fitting[0]
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": dict(hparams)}


def data_spec(
    ckpt_path: str | Path, data_config: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """``{"class_path", "init_args", "source"}`` of the data module to audit on.

    Taken from ``data_config`` when given, else from the LightningCLI ``config.yaml`` next to the
    checkpoint's log directory, else from the data module's hyperparameters saved in the checkpoint;
    ``overrides`` (``{"data_dir": ...}``) replace single init arguments.
    """
    ckpt_path = Path(ckpt_path)
    spec: dict[str, Any] | None = None
    if data_config is not None:
        path = Path(data_config)
        if not path.is_file():
            raise DataError(f"--data_config {str(path)!r} does not exist")
        spec = {**_data_section(yaml.safe_load(path.read_text()), str(path)), "source": str(path)}
    else:
        for candidate in _config_candidates(ckpt_path):
            if candidate.is_file():
                config = yaml.safe_load(candidate.read_text())
                if isinstance(config, Mapping) and "data" in config:
                    spec = {**_data_section(config, str(candidate)), "source": str(candidate)}
                    break
        if spec is None:
            found = _from_checkpoint_hparams(read_checkpoint(ckpt_path))
            if found is not None:
                spec = {**found, "source": f"{ckpt_path} (datamodule_hyper_parameters)"}
    if spec is None:
        looked = ", ".join(str(p) for p in _config_candidates(ckpt_path))
        raise DataError(
            f"cannot tell which data {str(ckpt_path)!r} was trained on: no config.yaml at {looked} and no "
            "data-module hyperparameters in the checkpoint. Pass --data_config FILE (a YAML file with "
            "data: {class_path: ..., init_args: {...}}, e.g. the training recipe)"
        )
    spec["init_args"].update(dict(overrides or {}))
    return spec


def build_datamodule(spec: Mapping[str, Any]) -> ExplainableDataModule:
    """Instantiate the data module of a :func:`data_spec`, with errors that say which setting failed."""
    class_path = spec["class_path"]
    module_name, _, class_name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise DataError(
            f"data class_path {class_path!r} (from {spec.get('source')}) cannot be imported: {exc}"
        ) from exc
    if not (inspect.isclass(cls) and issubclass(cls, ExplainableDataModule)):
        raise DataError(f"data class_path {class_path!r} is not an ExplainableDataModule")
    try:
        return cls(**spec["init_args"])
    except TypeError as exc:
        raise DataError(
            f"cannot build {class_name} with {spec['init_args']} (from {spec.get('source')}): {exc}"
        ) from exc


def check_fits(model: ImageClassifier, datamodule: ExplainableDataModule, ckpt_path: str | Path) -> None:
    """Raise a clear error when the checkpoint's head or first convolution cannot take this data."""
    n_model = int(model.hparams.num_classes)
    if n_model != datamodule.num_classes:
        raise CheckpointError(
            f"{str(ckpt_path)!r} predicts {n_model} classes but {type(datamodule).__name__} has "
            f"{datamodule.num_classes}; audit it on the data it was trained on (--data_config / --data.*)"
        )
    c_model = int(model.hparams.in_channels or 3)
    if c_model != datamodule.in_channels:
        raise CheckpointError(
            f"{str(ckpt_path)!r} takes {c_model}-channel images but {type(datamodule).__name__} gives "
            f"{datamodule.in_channels}-channel ones"
        )
