"""The sink layer without training: items built once, file layout, setup-time refusals (loggers, strategies)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from unittest import mock

import lightning as L
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

from lit_explain import sinks
from lit_explain.callbacks import ConfusionMatrix, ProbeHeatmaps, WorstSamples
from lit_explain.callbacks.base import CallbackSetupError, check_trainer, sharded_strategy
from lit_explain.errors import ConfigError
from lit_explain.sinks import CsvFilesSink, Picture, Table

SUPPORTED = ("TensorBoardLogger", "WandbLogger", "MLFlowLogger", "CSVLogger")


class NotebookLogger(Logger):
    """A logger no sink knows (stands for Comet, Neptune or a home-made one)."""

    name = "notebook"
    version = 0

    def log_metrics(self, metrics, step=None) -> None:  # pragma: no cover - never called
        pass

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass


def _trainer(tmp_path: Path, logger, **kwargs) -> L.Trainer:
    return L.Trainer(
        logger=logger,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        **kwargs,
    )


def _picture(seed: int = 0, h: int = 12, w: int = 20) -> Picture:
    g = torch.Generator().manual_seed(seed)
    return Picture(torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8), caption=f"seed {seed}")


def test_a_picture_is_encoded_once_for_every_logger(tmp_path: Path) -> None:
    loggers = [
        TensorBoardLogger(tmp_path, name="a"),
        CSVLogger(tmp_path, name="c"),
        TensorBoardLogger(tmp_path, name="b"),
    ]
    trainer = _trainer(tmp_path, loggers)
    picture = _picture()
    with mock.patch("lit_explain.sinks.items.encode_png", wraps=sinks.items.encode_png) as encode:
        sinks.log_image(trainer, "explain/probes", picture)
        sinks.flush(trainer)
    assert encode.call_count == 1
    written = Path(loggers[1].log_dir) / "images" / "explain" / "probes" / "step_000000.png"
    assert written.read_bytes() == picture.png


def test_picture_and_table_validate_their_input() -> None:
    with pytest.raises(ValueError, match="uint8"):
        Picture(torch.rand(3, 4, 4))
    with pytest.raises(ValueError, match="row 1 has 1 cells, expected 2"):
        Table(("a", "b"), [(1, 2), (3,)])
    with pytest.raises(ValueError, match="image column 'x' has 1 pictures for 2 rows"):
        Table(("a",), [(1,), (2,)], images={"x": [_picture()]})


def test_table_text_forms() -> None:
    table = Table(("true", "predicted", "share"), [("cat", "dog", 0.25), ("car", "truck", torch.tensor(0.5))])
    assert list(csv.reader(io.StringIO(table.csv_text()))) == [
        ["true", "predicted", "share"],
        ["cat", "dog", "0.25"],
        ["car", "truck", "0.5"],
    ]
    assert table.markdown().splitlines()[2] == "| cat | dog | 0.250 |"
    assert Table(("a",), [], empty_text="no confusions").markdown() == "no confusions"


def test_csv_files_at_the_documented_paths_and_never_overwritten(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, name="run")
    sink = CsvFilesSink(logger)
    first, second = _picture(1), _picture(2)
    sink.image("explain/test/worst", first, step=8)
    sink.image("explain/test/worst", second, step=8)  # validate after fit: the same global step
    sink.table("val/confused_pairs", Table(("true", "predicted", "count"), [("a", "b", 3)]), step=120)
    sink.scalars({"explain/drift": 0.125}, step=8)
    sink.flush()
    root = tmp_path / "run" / "version_0"
    folder = root / "images" / "explain" / "test" / "worst"
    assert sorted(p.name for p in folder.iterdir()) == ["step_000008-1.png", "step_000008.png"]
    assert (folder / "step_000008.png").read_bytes() == first.png
    assert (folder / "step_000008-1.png").read_bytes() == second.png
    rows = list(csv.DictReader((root / "tables" / "val" / "confused_pairs" / "step_000120.csv").open()))
    assert rows == [{"true": "a", "predicted": "b", "count": "3"}]
    metrics = list(csv.DictReader((root / "metrics.csv").open()))
    assert [(m["step"], m["explain/drift"]) for m in metrics] == [("8", "0.125")]


def test_a_tag_cannot_leave_the_log_dir(tmp_path: Path) -> None:
    sink = CsvFilesSink(CSVLogger(tmp_path, name="run"))
    sink.image("../../../escape/x", _picture(), step=1)
    written = [p for p in tmp_path.rglob("*.png")]
    assert len(written) == 1 and (tmp_path / "run" / "version_0" / "images") in written[0].parents


@pytest.mark.parametrize("callback", [ProbeHeatmaps, WorstSamples, ConfusionMatrix])
def test_no_logger_is_refused_at_setup_naming_the_supported_ones(tmp_path: Path, callback) -> None:
    model = BoringModel()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = _trainer(tmp_path, False, max_epochs=1, callbacks=[callback()])
    with pytest.raises(CallbackSetupError) as info:
        trainer.fit(model)
    message = str(info.value)
    assert f"{callback.__name__} has nowhere to log: the trainer has no logger" in message
    assert all(name in message for name in SUPPORTED)
    # Refused before any step: nothing trained.
    assert trainer.global_step == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_error_is_both_lightnings_and_ours() -> None:
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    assert issubclass(CallbackSetupError, MisconfigurationException)
    assert issubclass(CallbackSetupError, ConfigError)


def test_only_unsupported_loggers_are_refused_and_mixed_ones_warn(tmp_path: Path) -> None:
    with pytest.raises(CallbackSetupError, match=r"its loggers \(NotebookLogger\) are not supported"):
        check_trainer(_trainer(tmp_path, [NotebookLogger()]), "WorstSamples", "fit")
    mixed = _trainer(tmp_path, [NotebookLogger(), CSVLogger(tmp_path)])
    with pytest.warns(UserWarning, match="WorstSamples does not write to NotebookLogger"):
        check_trainer(mixed, "WorstSamples", "validate")
    # predict runs none of the callbacks' hooks: nothing to refuse.
    check_trainer(_trainer(tmp_path, False), "WorstSamples", "predict")


def test_sharded_strategies_are_refused_at_setup(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, CSVLogger(tmp_path))
    fsdp = FSDPStrategy()  # constructible on a CPU machine; the trainer only accepts it with a GPU
    strategy = mock.patch.object(type(trainer), "strategy", new_callable=mock.PropertyMock, return_value=fsdp)
    refused = pytest.raises(CallbackSetupError, match="ProbeHeatmaps cannot run under FSDPStrategy")
    with strategy, refused:
        ProbeHeatmaps().setup(trainer, BoringModel(), "fit")
    # DeepSpeed is not installed here: real strategy objects with the config DeepSpeed would read.
    stage3 = DeepSpeedStrategy.__new__(DeepSpeedStrategy)
    stage3.config = {"zero_optimization": {"stage": 3}}
    stage2 = DeepSpeedStrategy.__new__(DeepSpeedStrategy)
    stage2.config = {"zero_optimization": {"stage": 2}}
    assert sharded_strategy(stage3) == "DeepSpeedStrategy with ZeRO stage 3"
    assert sharded_strategy(stage2) is None  # parameters replicated: a rank-0 forward needs no peers
    assert sharded_strategy(ModelParallelStrategy()) == "ModelParallelStrategy"
    assert sharded_strategy(trainer.strategy) is None  # the default single-device strategy


def test_wandb_and_mlflow_are_imported_only_by_their_sinks() -> None:
    import subprocess
    import sys

    code = (
        "import sys, lit_explain.callbacks, lit_explain.sinks, lit_explain.audit.attach; "
        "print(sorted(m for m in ('wandb', 'mlflow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
