"""Audit fixtures: reports of a shapes checkpoint and of a small CIFAR-layout (100-class, 32 px) checkpoint."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import lightning as L
import pytest

from lit_explain.audit import AuditOptions, audit_checkpoint
from lit_explain.models import ImageClassifier

_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make_cifar100_fixture.py"


def fast_options(**kwargs) -> AuditOptions:
    """Audit settings that keep a test audit to a few seconds on two CPU cores."""
    base = {"quality_samples": 6, "faithfulness_steps": 4, "progress": False, "cam_batch_size": 64}
    base.update(kwargs)
    return AuditOptions(**base)


@pytest.fixture(scope="session")
def shapes_report(shapes_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("audit_shapes") / "report"
    audit_checkpoint(shapes_checkpoint, out, fast_options())
    return out


@pytest.fixture(scope="session")
def cifar_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CIFAR-layout ResNet-18 (CIFAR stem, 100 classes) trained for two steps on the pickle-layout fixture."""
    spec = importlib.util.spec_from_file_location("make_cifar100_fixture", _SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from lit_explain.data.cifar100 import Cifar100DataModule

    root = module.write_cifar100(tmp_path_factory.mktemp("cifar_data"), train_per_class=2, test_per_class=1)
    directory = tmp_path_factory.mktemp("cifar_ckpt")
    L.seed_everything(0, verbose=False)
    dm = Cifar100DataModule(
        data_dir=str(root), val_size=100, verify_checksums=False, batch_size=50, num_workers=0
    )
    model = ImageClassifier("resnet18", cifar_stem=True, optimizer="adamw", lr=1e-3, scheduler="none")
    trainer = L.Trainer(
        max_steps=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        default_root_dir=directory,
        callbacks=[L.pytorch.callbacks.ModelCheckpoint(dirpath=directory, save_last=True)],
    )
    trainer.fit(model, datamodule=dm)
    return directory / "last.ckpt"


@pytest.fixture(scope="session")
def cifar_report(cifar_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("audit_cifar") / "report"
    audit_checkpoint(cifar_checkpoint, out, fast_options(split="test", probe_per_class=1, quality_samples=8))
    return out


@pytest.fixture
def audit_options():
    """The fast audit settings as a factory: ``audit_options(split="test")``."""
    return fast_options


def _root_conftest():
    spec = importlib.util.spec_from_file_location(
        "_root_conftest", Path(__file__).resolve().parents[1] / "conftest.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def spurious_checkpoint(tmp_path: Path) -> Path:
    """A shapes model trained with the corner cue tied to the label (val shows a random cue): it learns the cue."""
    train = _root_conftest().train_shapes_checkpoint
    return train(tmp_path / "ckpt", epochs=3, train_size=480, spurious_cue=True, eval_cue="random")
