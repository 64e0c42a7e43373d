"""Command line: LightningCLI's fit / validate / test / predict plus lit_explain's own subcommands.

``python -m lit_explain fit`` with no ``--config`` trains the shapes demo (``configs/shapes_demo.yaml``).
Further subcommands (audit, explain, serve, export) register in :data:`EXTRA_COMMANDS` as
``"module:function"`` strings; each function takes the remaining argv and returns an exit code.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lit_explain.compat import parse_args_unvalidated
from lit_explain.data.base import ExplainableDataModule
from lit_explain.errors import ConfigError, LitExplainError
from lit_explain.explain_switch import add_explain_argument, apply_explain_switch
from lit_explain.models.checkpoint_io import CheckpointError, SafeCheckpointIO, local_path
from lit_explain.models.classifier import ImageClassifier
from lit_explain.run_names import name_runs
from lit_explain.runs import (
    BatchTracker,
    RunConfigCallback,
    RunFolderGuard,
    check_run_dirs,
    continue_run_folder,
    keep_last_checkpoint_current,
    logging_step,
    newest_last_checkpoint,
    write_error,
)

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
# Loaded lazily, so `fit` never imports the web server and a broken optional command cannot break training.
EXTRA_COMMANDS: dict[str, str] = {
    "export": "lit_explain.models.export:main",
    "audit": "lit_explain.audit.cli:main",
    "explain": "lit_explain.inference.cli:main",
    "serve": "lit_explain.serve.cli:main",
}
DEFAULT_RECIPE = "shapes_demo.yaml"
PROG = "python -m lit_explain"


def recipe_path(name: str = DEFAULT_RECIPE) -> Path:
    """Path of a recipe shipped inside the package (``configs/`` in the repository links to the same files)."""
    return Path(str(resources.files("lit_explain") / "configs" / name))


class LitExplainCLI(LightningCLI):
    """LightningCLI over :class:`ImageClassifier` and any :class:`ExplainableDataModule`.

    The model's optimizer and schedule are plain YAML keys (``model.optimizer``, ``model.scheduler``), so
    LightningCLI's automatic ``--optimizer`` arguments are turned off. On top of LightningCLI:

    * ``--ckpt_path`` (a path, ``file://`` or ``http(s)://`` URL, or ``last``) is read once with
      ``weights_only=True`` and checked before any run folder exists; the trainer's own loads go through
      :class:`SafeCheckpointIO` as well. ``last`` is the newest ``last.ckpt`` in the logger's run folders.
    * ``fit --ckpt_path`` continues the checkpoint's own TensorBoard run folder (no step logged twice).
    * A logger ``save_dir`` left out of the config follows ``trainer.default_root_dir``.
    * A run that fails before its first batch leaves no run folder behind; a run folder that cannot be
      written (a file in its way, a read-only parent) is one line before the run starts.
    * ``ModelCheckpoint(save_last=True)`` next to a monitor keeps ``last.ckpt`` at the latest epoch.
    * Runs are named after the recipe and the backbone (:mod:`lit_explain.run_names`), and each run's
      ``config.yaml`` is saved in its own folder, above ``checkpoints/``, for every logger
      (:class:`RunConfigCallback`), so W&B and MLflow runs can be repeated in one folder.
    * ``--explain false`` drops the :mod:`lit_explain.callbacks` callbacks; ``--explain.every_n_epochs N``
      thins them (:mod:`lit_explain.explain_switch`).

    Example:
        >>> LitExplainCLI(args=["fit", "--config", "configs/shapes_demo.yaml", "--trainer.max_epochs=1"])
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("model_class", ImageClassifier)
        kwargs.setdefault("datamodule_class", ExplainableDataModule)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("save_config_callback", RunConfigCallback)
        kwargs.setdefault(
            "parser_kwargs", {"prog": PROG, "description": "lit_explain: train and explain image classifiers"}
        )
        self.checkpoint_io = SafeCheckpointIO()
        self.batch_tracker = BatchTracker()
        self._resume: tuple[Path, int] | None = None
        self._checkpoint_source: str | None = None  # --ckpt_path, named by errors about the model it built
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        add_explain_argument(parser)

    def before_instantiate_classes(self) -> None:
        # On the parsed config, before anything is built: the saved config.yaml then holds what ran.
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config
        apply_explain_switch(config.trainer, config.get("explain"))

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        if isinstance(args, (dict, Namespace)):
            super().parse_arguments(parser, args)
            return
        # Validated only once a logger save_dir left out of the config has followed default_root_dir.
        self.config = parse_args_unvalidated(parser, args)
        subcommand = self.config.get("subcommand")
        follow_default_root_dir((self.config[subcommand] if subcommand else self.config).trainer)
        name_runs(
            self.config[subcommand] if subcommand else self.config, sys.argv[1:] if args is None else args
        )
        try:
            parser.validate(self.config)
        except (TypeError, KeyError) as exc:
            parser.error(str(exc), exc)

    def _parse_ckpt_path(self) -> None:
        """Read ``--ckpt_path`` safely and early (replaces LightningCLI's, which skips URLs and ``last``)."""
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        if config.get("weights_only") is False:
            raise ConfigError(
                "--weights_only false is not supported: lit_explain never runs code from a checkpoint"
            )
        ckpt_path = config.get("ckpt_path")
        if not ckpt_path or ckpt_path in ("hpc", "registry") or str(ckpt_path).startswith("registry:"):
            return  # Lightning resolves these; its loads still go through SafeCheckpointIO
        if ckpt_path == "best":
            raise CheckpointError(
                "--ckpt_path best names the best checkpoint of a fit in the same process; pass the path of "
                "a best-*.ckpt file, or `last` for the newest last.ckpt"
            )
        if ckpt_path == "last":
            ckpt_path = resolve_last(config.trainer)
        checkpoint = self.checkpoint_io.preload(ckpt_path, resume=subcommand == "fit")
        config.ckpt_path = str(ckpt_path)
        path = local_path(ckpt_path)
        if subcommand == "fit" and path is not None:
            self._resume = (path, logging_step(checkpoint))
        self._apply_checkpoint_hparams(subcommand, checkpoint)
        self._checkpoint_source = str(ckpt_path)

    def _apply_checkpoint_hparams(self, subcommand: str, checkpoint: dict[str, Any]) -> None:
        # As LightningCLI does: the model is built with the hyperparameters the checkpoint was trained with.
        hparams = dict(checkpoint.get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        try:
            self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
        except SystemExit:
            sys.stderr.write("Parsing of ckpt_path hyperparameters failed!\n")
            raise

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        current = trainer.strategy.checkpoint_io
        if type(current) is not TorchCheckpointIO:
            raise ConfigError(
                f"lit_explain reads checkpoints with its own weights_only loader; remove the "
                f"{type(current).__name__} plugin from trainer.plugins"
            )
        trainer.strategy.checkpoint_io = self.checkpoint_io
        if self._checkpoint_source is not None and hasattr(self.model, "checkpoint_source"):
            self.model.checkpoint_source = self._checkpoint_source
        trainer.callbacks.append(self.batch_tracker)
        keep_last_checkpoint_current(trainer)
        return trainer

    def _run_subcommand(self, subcommand: str) -> None:
        resumed = subcommand == "fit" and self._resume is not None
        in_place = resumed and continue_run_folder(self.trainer, *self._resume) is not None
        check_run_dirs(self.trainer)
        guard = RunFolderGuard(self.trainer, self.batch_tracker)
        try:
            with warnings.catch_warnings():
                if in_place:  # expected when a run continues in its own folder
                    warnings.filterwarnings(
                        "ignore", message=r"Checkpoint directory .* exists and is not empty"
                    )
                super()._run_subcommand(subcommand)
        except BaseException as exc:
            guard.remove_unused()
            error = None if self.batch_tracker.ran else write_error(exc, self.trainer)
            if error is not None:
                raise error from exc
            raise

    def after_fit(self) -> None:
        metrics = self.trainer.callback_metrics
        if self.trainer.is_global_zero and "val/acc" in metrics:
            print(f"final validation accuracy: {float(metrics['val/acc']):.4f}")


def _loggers(trainer: Namespace) -> list[Any]:
    logger = trainer.get("logger")
    return list(logger) if isinstance(logger, list) else [logger]


def follow_default_root_dir(trainer: Namespace) -> None:
    """Give loggers configured without a ``save_dir`` the trainer's ``default_root_dir`` (else the cwd)."""
    root = str(trainer.get("default_root_dir") or os.getcwd())
    for logger in _loggers(trainer):
        init_args = logger.get("init_args") if isinstance(logger, Namespace) else None
        if init_args is not None and "save_dir" in init_args and init_args.save_dir is None:
            init_args.save_dir = root


def checkpoint_roots(trainer: Namespace) -> list[Path]:
    """Folders whose run folders hold this configuration's checkpoints (as Lightning places them)."""
    root = Path(trainer.get("default_root_dir") or os.getcwd())
    roots = []
    for callback in trainer.get("callbacks") or []:
        init_args = callback.get("init_args") if isinstance(callback, Namespace) else None
        if init_args is not None and init_args.get("dirpath"):
            roots.append(Path(init_args.dirpath))
    first = _loggers(trainer)[0]
    if first is None or first is True:  # Lightning's default logger
        roots.append(root / "lightning_logs")
    elif first is False:
        roots.append(root)
    elif isinstance(first, Namespace):
        init_args = first.get("init_args") or Namespace()
        save_dir = Path(init_args.get("save_dir") or root)
        # W&B keeps its runs' checkpoints under the project (its `name` is the run's display name).
        key = "project" if str(first.get("class_path", "")).endswith(".WandbLogger") else "name"
        roots.append(save_dir / str(init_args[key]) if init_args.get(key) else save_dir)
    return roots


def resolve_last(trainer: Namespace) -> Path:
    """``--ckpt_path last``: the newest last.ckpt in this configuration's run folders, or a clear error."""
    roots = checkpoint_roots(trainer)
    found = newest_last_checkpoint(roots)
    if found is None:
        where = ", ".join(str(r) for r in roots)
        raise CheckpointError(
            f"--ckpt_path last: no last.ckpt in the run folders under {where}; train first with "
            "`python -m lit_explain fit` (same --config and --trainer.default_root_dir) or pass a checkpoint path"
        )
    return found


def _has_config(argv: Sequence[str]) -> bool:
    return any(a == "--config" or a.startswith("--config=") for a in argv)


def _extra_command(name: str) -> Callable[[list[str]], int | None]:
    module_name, _, function = EXTRA_COMMANDS[name].partition(":")
    return getattr(importlib.import_module(module_name), function)


def _usage() -> str:
    commands = ", ".join([*LIGHTNING_COMMANDS, *EXTRA_COMMANDS])
    return (
        "usage: python -m lit_explain {" + commands + "} [options]\n"
        "  python -m lit_explain fit                      train the shapes demo\n"
        "  python -m lit_explain fit --config RECIPE.yaml  train a recipe (configs/)\n"
        "  python -m lit_explain COMMAND --help            options of a command"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m lit_explain`` and the ``lit-explain`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0
    command = args[0]
    try:
        if command in EXTRA_COMMANDS:
            return int(_extra_command(command)(args[1:]) or 0)
        if command not in LIGHTNING_COMMANDS:
            print(f"error: unknown command {command!r}\n{_usage()}", file=sys.stderr)
            return 2
        if not _has_config(args) and not ({"-h", "--help"} & set(args)):
            # The shapes demo is the default recipe: spelled out in one YAML file, not in code defaults.
            args = [command, "--config", str(recipe_path()), *args[1:]]
        with warnings.catch_warnings():
            # We pass argv on purpose (to add the default recipe); Lightning warns about args + sys.argv.
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
            LitExplainCLI(args=args)
    except LitExplainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, TypeError) as exc:
        # jsonargparse instantiates the data module and model inside its own type checks and reports our
        # error as "Does not validate against any of the Union subtypes" with a namespace dump: say ours.
        ours = _our_error(exc)
        if ours is None:
            raise
        print(f"error: {ours}", file=sys.stderr)
        return 2
    return 0


def _our_error(exc: BaseException) -> LitExplainError | None:
    """The lit_explain error that caused ``exc``, following ``__cause__``/``__context__``, if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, LitExplainError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
