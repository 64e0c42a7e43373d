"""Command line: LightningCLI's fit / validate / test / predict plus lit_explain's own subcommands.

``python -m lit_explain fit`` with no ``--config`` trains the shapes demo (``configs/shapes_demo.yaml``).
Further subcommands (audit, explain, serve, export) register in :data:`EXTRA_COMMANDS` as
``"module:function"`` strings; each function takes the remaining argv and returns an exit code.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

from lightning.pytorch.cli import LightningCLI

from lit_explain.data.base import ExplainableDataModule
from lit_explain.errors import LitExplainError
from lit_explain.models.classifier import ImageClassifier

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
# Loaded lazily, so `fit` never imports the web server and a broken optional command cannot break training.
EXTRA_COMMANDS: dict[str, str] = {
    "export": "lit_explain.models.export:main",
    "audit": "lit_explain.audit.cli:main",
    "explain": "lit_explain.inference.cli:main",
    "serve": "lit_explain.serve.cli:main",
}
DEFAULT_RECIPE = "shapes_demo.yaml"


def recipe_path(name: str = DEFAULT_RECIPE) -> Path:
    """Path of a recipe shipped inside the package (``configs/`` in the repository links to the same files)."""
    return Path(str(resources.files("lit_explain") / "configs" / name))


class LitExplainCLI(LightningCLI):
    """LightningCLI over :class:`ImageClassifier` and any :class:`ExplainableDataModule`.

    The model's optimizer and schedule are plain YAML keys (``model.optimizer``, ``model.scheduler``), so
    LightningCLI's automatic ``--optimizer`` arguments are turned off.

    Example:
        >>> LitExplainCLI(args=["fit", "--config", "configs/shapes_demo.yaml", "--trainer.max_epochs=1"])
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("model_class", ImageClassifier)
        kwargs.setdefault("datamodule_class", ExplainableDataModule)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault(
            "parser_kwargs", {"description": "lit_explain: train and explain image classifiers"}
        )
        super().__init__(*args, **kwargs)

    def after_fit(self) -> None:
        metrics = self.trainer.callback_metrics
        if self.trainer.is_global_zero and "val/acc" in metrics:
            print(f"final validation accuracy: {float(metrics['val/acc']):.4f}")


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
    return 0
