"""What an audit runs on: the model from a checkpoint and the data module its training used."""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lit_explain.data.base import ExplainableDataModule
from lit_explain.errors import DataError
from lit_explain.models.classifier import ImageClassifier
from lit_explain.models.loading import TORCHVISION_PREFIX, CheckpointError, load_classifier, read_checkpoint


@dataclass(frozen=True)
class CheckpointFile:
    """A checkpoint read once per command; the model, the data spec and the provenance all use it.

    ``contents`` is what ``torch.load(weights_only=True)`` gave, or None for ``torchvision:NAME`` (no file:
    the weights come from torchvision's cache when the model is built).

    Example:
        >>> ckpt = CheckpointFile.read("best.ckpt")                   # doctest: +SKIP
        >>> model = load_model(ckpt.path, checkpoint=ckpt.contents)    # doctest: +SKIP
    """

    path: str
    contents: Mapping[str, Any] | None

    @classmethod
    def read(cls, path: str | Path, map_location: str = "cpu") -> CheckpointFile:
        if str(path).startswith(TORCHVISION_PREFIX):
            return cls(str(path), None)
        return cls(str(path), read_checkpoint(path, map_location))


def load_model(
    ckpt_path: str | Path,
    map_location: str = "cpu",
    backbone: str | None = None,
    checkpoint: Mapping[str, Any] | None = None,
) -> ImageClassifier:
    """The classifier of a checkpoint (``weights_only=True``), in eval mode; ``checkpoint``: read already."""
    return load_classifier(ckpt_path, backbone=backbone, map_location=map_location, checkpoint=checkpoint)


# The folder Lightning's ModelCheckpoint saves to inside a run folder: ``<run folder>/checkpoints/``.
CHECKPOINT_DIR = "checkpoints"
# The file LightningCLI's SaveConfigCallback writes into the run folder (``trainer.log_dir``).
RUN_CONFIG = "config.yaml"
# Bookkeeping keys LightningCLI adds to a data module's saved hyperparameters; not init arguments.
LIGHTNING_CLI_KEYS = ("_class_path", "_instantiator")
# Where a data spec came from: report.json's ``data.origin``.
ORIGIN_DATA_CONFIG = "data_config"
ORIGIN_RUN_CONFIG = "run_config"
ORIGIN_CHECKPOINT = "checkpoint"
ORIGINS = {
    ORIGIN_DATA_CONFIG: "--data_config",
    ORIGIN_RUN_CONFIG: "the run folder's config.yaml",
    ORIGIN_CHECKPOINT: "the checkpoint's own data-module hyperparameters",
}


def run_config_path(ckpt_path: str | Path) -> Path | None:
    """The ``config.yaml`` of the checkpoint's own run folder, or None when it is not in one.

    Lightning saves checkpoints to ``<run folder>/checkpoints/`` and LightningCLI its ``config.yaml`` to
    the run folder itself: ``<save_dir>/<name>/version_N/`` with the TensorBoard and CSV loggers,
    ``default_root_dir`` without a logger. Only that file belongs to the checkpoint. A ``config.yaml``
    anywhere else (next to a copied checkpoint, a folder above it) is never read: whoever can write there
    would choose the code and the data the audit runs. W&B and MLflow runs have that folder too
    (``<save_dir>/<project>/<run id>/``, ``<mlruns>/<experiment id>/<run id>/``): lit_explain's CLI saves
    each run's config.yaml there (:class:`lit_explain.runs.RunConfigCallback`), never in the shared
    ``save_dir``, where it would not belong to any one checkpoint and is not read.

    Example:
        >>> run_config_path("lightning_logs/shapes_demo/version_0/checkpoints/last.ckpt").name
        'config.yaml'
        >>> run_config_path("drop/model.ckpt") is None
        True
    """
    # abspath, not resolve: the layout of the path as named ("last.ckpt" from inside checkpoints/ works).
    ckpt = Path(os.path.abspath(ckpt_path))
    if ckpt.parent.name != CHECKPOINT_DIR:
        return None
    return ckpt.parent.parent / RUN_CONFIG


def _read_yaml(path: Path, what: str) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{what} {str(path)!r} cannot be read as YAML: {reason}") from None


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


def _init_params(cls: type) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters) - {"self"}


def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _guess_datamodule(keys: set[str]) -> type[ExplainableDataModule] | None:
    """The one known data module whose init takes all of ``keys`` (a plain Trainer's checkpoint)."""
    fitting = [cls for cls in _known_datamodules() if keys <= _init_params(cls)]
    return fitting[0] if len(fitting) == 1 else None


def _recorded_datamodule(class_path: str, ckpt_path: Path) -> type[ExplainableDataModule]:
    """The data module a LightningCLI checkpoint records, looked up among lit_explain's own.

    Nothing is imported by the name a checkpoint holds (checkpoints are read ``weights_only`` for the
    same reason): it must be one of :mod:`lit_explain.data`'s modules, by full or package path.
    """
    for cls in _known_datamodules():
        if class_path in (_class_path(cls), f"lit_explain.data.{cls.__name__}"):
            return cls
    raise DataError(
        f"{str(ckpt_path)!r} was trained on data module {class_path!r}, which is not one of lit_explain's; "
        "a checkpoint never chooses code to import: pass --data_config FILE (YAML with data: "
        "{class_path: ..., init_args: {...}}) to name it yourself"
    )


def _from_checkpoint_hparams(checkpoint: Mapping[str, Any], ckpt_path: Path) -> dict[str, Any] | None:
    """A data spec from the data-module hyperparameters Lightning saves in a checkpoint, or None.

    LightningCLI saves them with ``_class_path`` (the exact class) and ``_instantiator`` keys; a plain
    ``Trainer`` saves only the init arguments, and the class is the one known data module that takes them.
    """
    hparams = checkpoint.get("datamodule_hyper_parameters")
    if not isinstance(hparams, Mapping):
        return None
    init_args = {str(k): v for k, v in hparams.items() if k not in LIGHTNING_CLI_KEYS}
    class_path = hparams.get("_class_path")
    if class_path is None:
        cls = _guess_datamodule(set(init_args))
        if cls is None:
            return None
    else:
        cls = _recorded_datamodule(str(class_path), ckpt_path)
        unknown = sorted(set(init_args) - _init_params(cls))
        if unknown:
            raise DataError(
                f"{str(ckpt_path)!r} records data settings {unknown} that {cls.__name__} does not take; "
                "pass --data_config FILE with the data section to audit on"
            )
    return {"class_path": _class_path(cls), "init_args": init_args}


def _spec_from_config(path: Path, origin: str) -> dict[str, Any]:
    config = _read_yaml(path, ORIGINS[origin])
    return {**_data_section(config, str(path)), "source": str(path), "origin": origin}


def _not_found(ckpt_path: Path, run_config: Path | None) -> DataError:
    if run_config is None:
        looked = f"it is not in a run folder's {CHECKPOINT_DIR}/ folder, so no config.yaml is read"
    else:
        looked = f"no usable {run_config}"
    return DataError(
        f"cannot tell which data {str(ckpt_path)!r} was trained on: {looked}, and the checkpoint holds no "
        "data-module hyperparameters. Pass --data_config FILE (YAML with data: {class_path: ..., "
        "init_args: {...}}, e.g. the run's config.yaml or the training recipe)"
    )


def data_spec(
    ckpt_path: str | Path,
    data_config: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    checkpoint: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``{"class_path", "init_args", "source", "origin"}`` of the data module to audit on.

    Taken from ``data_config`` when given (``origin`` ``"data_config"``), else from the ``config.yaml`` of
    the checkpoint's own run folder (``"run_config"``, see :func:`run_config_path`), else from the
    data-module hyperparameters saved in the checkpoint (``"checkpoint"``). ``overrides``
    (``{"data_dir": ...}``) replace single init arguments. ``checkpoint``: the file's contents when the
    caller has read it already (else it is read here, if needed).

    Example:
        >>> spec = data_spec("shared/best.ckpt")                              # doctest: +SKIP
        >>> spec["origin"], spec["class_path"]                                # doctest: +SKIP
        ('checkpoint', 'lit_explain.data.shapes.ShapesDataModule')
    """
    ckpt_path = Path(ckpt_path)
    spec: dict[str, Any] | None = None
    run_config = run_config_path(ckpt_path)
    if data_config is not None:
        path = Path(data_config)
        if not path.is_file():
            raise DataError(f"--data_config {str(path)!r} does not exist")
        spec = _spec_from_config(path, ORIGIN_DATA_CONFIG)
    elif run_config is not None and run_config.is_file():
        config = _read_yaml(run_config, ORIGINS[ORIGIN_RUN_CONFIG])
        # A config.yaml without a data section (another tool's file) leaves the checkpoint's own settings.
        if isinstance(config, Mapping) and "data" in config:
            spec = {
                **_data_section(config, str(run_config)),
                "source": str(run_config),
                "origin": ORIGIN_RUN_CONFIG,
            }
    if spec is None:
        if checkpoint is None:
            checkpoint = read_checkpoint(ckpt_path)
        found = _from_checkpoint_hparams(checkpoint, ckpt_path)
        if found is None:
            raise _not_found(ckpt_path, run_config)
        spec = {**found, "source": str(ckpt_path), "origin": ORIGIN_CHECKPOINT}
    spec["init_args"].update(dict(overrides or {}))
    return spec


def describe_spec(spec: Mapping[str, Any]) -> str:
    """One line saying which data module the audit runs on and where that came from."""
    name = str(spec["class_path"]).rpartition(".")[2]
    return f"data: {name} from {ORIGINS.get(spec.get('origin'), 'the caller')} ({spec.get('source')})"


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
