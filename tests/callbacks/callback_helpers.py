"""Helpers for the callback tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_explain.data import ShapesDataModule
from lit_explain.models import ImageClassifier


def tiny_datamodule(**kwargs: Any) -> ShapesDataModule:
    settings = {"train_size": 256, "val_size": 64, "test_size": 64, "batch_size": 32, "seed": 0}
    settings.update(kwargs)
    return ShapesDataModule(**settings)


def fit_shapes(
    root: Path,
    callbacks: list[L.Callback],
    epochs: int = 2,
    logger: Any = True,
    ckpt_path: str | None = None,
    extra_callbacks: list[L.Callback] | None = None,
    **data_kwargs: Any,
) -> tuple[ImageClassifier, L.Trainer, ShapesDataModule]:
    """Seeded, deterministic CPU fit of a ResNet-18 on a small shapes set."""
    L.seed_everything(0, verbose=False)
    dm = tiny_datamodule(**data_kwargs)
    model = ImageClassifier("resnet18", optimizer="adamw", lr=3e-3, scheduler="none")
    if logger is True:
        logger = TensorBoardLogger(save_dir=root, name="tb", version=0)
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        deterministic=True,
        logger=logger,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        callbacks=[*callbacks, *(extra_callbacks or [])],
        num_sanity_val_steps=1,
        log_every_n_steps=1,
        enable_checkpointing=bool(extra_callbacks),
    )
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return model, trainer, dm


def events(log_dir: Path | str) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def state_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """Names of the entries that differ (bitwise) between two state dicts."""
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


def run_as_printed(
    command: str, cwd: Path, env: dict[str, str], flags: Sequence[str] = ()
) -> subprocess.CompletedProcess:
    """Run a README command line in ``cwd`` as a user would (``VAR=value`` prefixes included), with this venv's
    python and ``flags`` appended (small-run settings that keep the command's meaning)."""
    words = shlex.split(command)
    prefix = words[: words.index("python")]
    env = {**env, **dict(w.split("=", 1) for w in prefix)}
    argv = [sys.executable, *words[len(prefix) + 1 :], *flags]
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
