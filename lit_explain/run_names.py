"""Names of runs, for every logger: after the recipe and the backbone, unless the user named them.

* TensorBoard / CSV: the run folder's name is the recipe's (``shapes_demo``) while the model is the
  recipe's own backbone, ``<recipe>-<backbone>`` (``shapes_demo-resnet18``) with any other, so runs of
  different networks never share ``version_N`` numbering.
* Weights & Biases: project = the recipe, run name = ``<recipe>-<backbone>-<time>``; ``save_dir`` left at
  W&B's ``.`` follows ``trainer.default_root_dir`` like the other loggers (nothing lands in the cwd).
* MLflow: experiment = the recipe (not ``lightning_logs``), run name = ``<recipe>-<backbone>-<time>``.

A value set on the command line (``--trainer.logger.init_args.name=...``) or by a further config file
(anything other than the recipe's own or the logger's default) always wins.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import Namespace

from lit_explain.outputs import safe_name

# The name Lightning's loggers give a run (TensorBoard, CSV) or MLflow experiment when none is set.
LIGHTNING_DEFAULT_NAME = "lightning_logs"
# WandbLogger's own save_dir default: the cwd.
WANDB_DEFAULT_SAVE_DIR = "."


@dataclass(frozen=True)
class Recipe:
    """What a run's names are made of: the recipe's name and backbone, and the backbone it trains."""

    name: str  # the recipe's logger name (``shapes_demo``), else its file name without ``.yaml``
    logger_name: str | None  # the name the recipe file gives its logger, if any
    own_backbone: str | None  # the backbone the recipe file names
    backbone: str  # the backbone this run trains

    @property
    def folder_name(self) -> str:
        """TensorBoard/CSV run-folder name: the recipe's, plus the backbone when it is not the recipe's own."""
        if self.own_backbone is None or self.backbone == self.own_backbone:
            return self.name
        return f"{self.name}-{short_backbone(self.backbone)}"

    def display_name(self, now: float | None = None) -> str:
        """W&B / MLflow run name: ``<recipe>-<backbone>-<YYYYmmdd-HHMMSS>`` (they number runs by id)."""
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
        return f"{self.name}-{short_backbone(self.backbone)}-{stamp}"


def short_backbone(backbone: str) -> str:
    """A backbone's short, file-safe name: ``timm:resnet10t`` -> ``resnet10t``, ``hf-hub:org/vit`` -> ``vit``."""
    return safe_name(str(backbone).rpartition(":")[2].rpartition("/")[2], limit=60)


def recipe_of(config: Namespace) -> Recipe | None:
    """The recipe (the first ``--config`` file) a parsed fit/validate/test/predict config came from."""
    files = config.get("config") or []
    model = config.get("model")
    backbone = model.get("backbone") if isinstance(model, Namespace) else None
    if not files or not backbone:
        return None
    path = Path(os.fspath(files[0]))
    try:
        recipe = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        recipe = None  # the parser already read it; a file gone since then leaves the names alone
    if not isinstance(recipe, dict):
        return None
    logger_name = _recipe_logger_name(recipe)
    own = (recipe.get("model") or {}).get("backbone") if isinstance(recipe.get("model"), dict) else None
    name = safe_name(logger_name or path.stem.removesuffix(".yaml"), limit=60)
    return Recipe(name=name, logger_name=logger_name, own_backbone=own, backbone=str(backbone))


def _recipe_logger_name(recipe: dict[str, Any]) -> str | None:
    logger = (recipe.get("trainer") or {}).get("logger")
    logger = logger[0] if isinstance(logger, list) and logger else logger
    if not isinstance(logger, dict):
        return None
    name = (logger.get("init_args") or {}).get("name")
    return name if isinstance(name, str) and name else None


def _given(argv: Sequence[str], key: str) -> bool:
    """Whether the command line sets the logger's ``key`` itself (``--trainer.logger.init_args.KEY=...``)."""
    pattern = re.compile(rf"^--trainer\.logger\.(init_args\.)?{re.escape(key)}(=|$)")
    return any(pattern.match(arg) for arg in argv)


def name_runs(config: Namespace, argv: Sequence[str] = (), now: float | None = None) -> Recipe | None:
    """Name every logger of a parsed subcommand config after its recipe and backbone (see the module doc).

    Example:
        >>> name_runs(cli_config["fit"], ["fit", "--model.backbone=resnet18"])   # doctest: +SKIP
        Recipe(name='shapes_demo', ..., backbone='resnet18')     # TensorBoard: shapes_demo-resnet18/version_0
    """
    recipe = recipe_of(config)
    trainer = config.get("trainer")
    if recipe is None or not isinstance(trainer, Namespace):
        return None
    logger = trainer.get("logger")
    for entry in logger if isinstance(logger, list) else [logger]:
        init_args = entry.get("init_args") if isinstance(entry, Namespace) else None
        if init_args is None:
            continue
        kind = str(entry.get("class_path", "")).rpartition(".")[2]
        unset = {
            key: not _given(argv, key) for key in ("name", "project", "save_dir", "dir", "experiment_name")
        }
        if kind in ("TensorBoardLogger", "CSVLogger"):
            _name_folder_logger(init_args, recipe, unset)
        elif kind == "WandbLogger":
            _name_wandb(init_args, recipe, unset, trainer, now)
        elif kind == "MLFlowLogger":
            _name_mlflow(init_args, recipe, unset, now)
    return recipe


def _ours(value: Any, recipe: Recipe, *defaults: Any) -> bool:
    """Whether a name is still the recipe's or the logger's default (so not chosen by the user)."""
    return value in (recipe.logger_name, *defaults)


def _name_folder_logger(init_args: Namespace, recipe: Recipe, unset: dict[str, bool]) -> None:
    if unset["name"] and _ours(init_args.get("name"), recipe, None, LIGHTNING_DEFAULT_NAME):
        init_args.name = recipe.folder_name


def _name_wandb(
    init_args: Namespace, recipe: Recipe, unset: dict[str, bool], trainer: Namespace, now: float | None
) -> None:
    # WANDB_PROJECT is the user's choice too: WandbLogger reads it when project is left out.
    if unset["project"] and init_args.get("project") is None and "WANDB_PROJECT" not in os.environ:
        init_args.project = recipe.name
    if unset["name"] and _ours(init_args.get("name"), recipe, None):
        init_args.name = recipe.display_name(now)
    save_dir = init_args.get("save_dir")
    if unset["save_dir"] and unset["dir"] and save_dir == WANDB_DEFAULT_SAVE_DIR and not init_args.get("dir"):
        # Run folder, checkpoints, config.yaml and W&B's own wandb/ folder under default_root_dir.
        init_args.save_dir = str(trainer.get("default_root_dir") or WANDB_DEFAULT_SAVE_DIR)


def _name_mlflow(init_args: Namespace, recipe: Recipe, unset: dict[str, bool], now: float | None) -> None:
    if unset["experiment_name"] and _ours(init_args.get("experiment_name"), recipe, LIGHTNING_DEFAULT_NAME):
        init_args.experiment_name = recipe.name
    if not _given_run_name(init_args) and init_args.get("run_name") is None:
        init_args.run_name = recipe.display_name(now)


def _given_run_name(init_args: Namespace) -> bool:
    # A run_id continues an existing run, which keeps its own name.
    return init_args.get("run_id") is not None
