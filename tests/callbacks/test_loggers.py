"""The callbacks in one real fit logging to TensorBoard, W&B (offline), MLflow (file store) and CSV files at once.

Every tracker is read back through its own files or client and compared with TensorBoard's event file
of the same run: the same image tags at the same global steps, the tables with their rows, the scalars.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from callback_helpers import events, fit_shapes
from tracker_readers import mlflow_artifacts, mlflow_images, wandb_artifact_files, wandb_history, wandb_logged

from lit_explain.callbacks import ConfusionMatrix, ProbeHeatmaps, WorstSamples

pytest.importorskip("wandb")
pytest.importorskip("mlflow")

EPOCHS = 2
STEPS = [2, 4]  # 64 training images in batches of 32: validation ends at global steps 2 and 4
K = 4


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger, WandbLogger

    root = tmp_path_factory.mktemp("all_loggers")
    with pytest.MonkeyPatch.context() as env:
        for name, value in {
            "WANDB_MODE": "offline",
            "WANDB_SILENT": "true",
            "WANDB_DIR": root / "wandb",
            "WANDB_DATA_DIR": root / "wandb_data",
            "WANDB_CACHE_DIR": root / "wandb_cache",
            "WANDB_CONFIG_DIR": root / "wandb_config",
            "MLFLOW_ALLOW_FILE_STORE": "true",
        }.items():
            if isinstance(value, Path):
                value.mkdir()
            env.setenv(name, str(value))
        loggers = {
            "tb": TensorBoardLogger(root, name="tb", version=0),
            "csv": CSVLogger(root, name="csv", version=0),
            "wandb": WandbLogger(save_dir=str(root / "wandb"), offline=True, project="lit_explain_tests"),
            "mlflow": MLFlowLogger(
                experiment_name="lit_explain_tests", tracking_uri=f"file:{root / 'mlruns'}"
            ),
        }
        callbacks = [
            ProbeHeatmaps(layer="layer3", per_class=1),
            WorstSamples(k=K, layer="layer3"),
            ConfusionMatrix(),
        ]
        _, trainer, _ = fit_shapes(
            root, callbacks, epochs=EPOCHS, logger=list(loggers.values()), train_size=64, val_size=32
        )
        wandb_dir = Path(loggers["wandb"].experiment.dir).parent
        loggers["wandb"].experiment.finish()
    acc = events(loggers["tb"].log_dir)
    tb_images = {tag: [e.step for e in acc.Images(tag)] for tag in acc.Tags()["images"]}
    return {
        "root": root,
        "loggers": loggers,
        "trainer": trainer,
        "callbacks": callbacks,
        "tb": acc,
        "tb_images": tb_images,
        "wandb_dir": wandb_dir,
    }


def test_tensorboard_reference_has_every_picture_once_per_epoch(run: dict) -> None:
    tags = run["tb_images"]
    for prefix in ("explain/probes", "explain/worst", "val/confusion_matrix", "val/per_class_accuracy"):
        assert any(tag.startswith(prefix) for tag in tags), prefix
    assert all(steps == STEPS for steps in tags.values()), tags


def test_csv_logger_pictures_tables_and_scalars_at_documented_paths(run: dict) -> None:
    root = Path(run["loggers"]["csv"].log_dir)
    files = {p.relative_to(root / "images").as_posix() for p in (root / "images").rglob("*.png")}
    expected = {f"{tag}/step_{step:06d}.png" for tag, steps in run["tb_images"].items() for step in steps}
    assert files == expected
    # The very same PNG bytes TensorBoard holds: encoded once.
    tag = next(t for t in run["tb_images"] if t.startswith("explain/worst"))
    tb_png = run["tb"].Images(tag)[-1].encoded_image_string
    assert (root / "images" / tag / "step_000004.png").read_bytes() == tb_png

    rows = _worst_rows((root / "tables" / "explain" / "worst_table" / "step_000004.csv").read_text())
    _assert_are_the_winners(rows, run)
    assert (root / "tables" / "val" / "confused_pairs" / "step_000002.csv").is_file()

    metrics = list(csv.DictReader((root / "metrics.csv").open()))
    for name, (steps, last) in _scalars(run).items():
        logged = [(int(m["step"]), float(m[name])) for m in metrics if m.get(name)]
        assert [step for step, _ in logged] == steps, name
        assert logged[-1][1] == pytest.approx(last), name


def test_wandb_images_with_captions_tables_with_image_columns_and_scalars(run: dict) -> None:
    history = wandb_history(run["wandb_dir"])
    media = run["wandb_dir"] / "files"
    for tag, steps in run["tb_images"].items():
        logged = wandb_logged(history, tag)
        assert [step for step, _ in logged] == steps, tag
        for step, fields in logged:
            assert fields["_type"] == "image-file" and fields["caption"].startswith(
                f"epoch {steps.index(step)}"
            )
            # W&B copied the picture's own PNG: byte for byte what TensorBoard got.
            tb_png = next(e for e in run["tb"].Images(tag) if e.step == step).encoded_image_string
            assert (media / fields["path"]).read_bytes() == tb_png

    tables = wandb_logged(history, "explain/worst_table")
    assert [step for step, _ in tables] == STEPS
    assert all(t["_type"] == "table-file" and t["nrows"] == K for _, t in tables)
    artifacts = [files for name, files in wandb_artifact_files(run["wandb_dir"]) if "worst_table" in name]
    assert len(artifacts) == EPOCHS
    table = json.loads(artifacts[-1]["explain/worst_table.table.json"].read_text())
    assert table["columns"][-1] == "image | CAM predicted"
    columns = table["columns"][:-1]
    _assert_are_the_winners([dict(zip(columns, row[:-1], strict=True)) for row in table["data"]], run)
    cells = [row[-1] for row in table["data"]]
    assert all(c["_type"] == "image-file" and c["path"] in artifacts[-1] for c in cells)
    assert all(artifacts[-1][c["path"]].read_bytes()[:4] == b"\x89PNG" for c in cells)

    for name, (steps, last) in _scalars(run).items():
        logged = [(int(row["trainer/global_step"]), row[name]) for row in history if name in row]
        assert [step for step, _ in logged] == steps, name
        assert logged[-1][1] == pytest.approx(last), name


def test_mlflow_step_indexed_images_table_artifacts_and_metrics(run: dict) -> None:
    from mlflow import MlflowClient

    logger = run["loggers"]["mlflow"]
    client = MlflowClient(logger._tracking_uri)
    assert mlflow_images(client, logger.run_id) == run["tb_images"]
    tables = [p for p in mlflow_artifacts(client, logger.run_id, "tables")]
    assert sorted(tables) == sorted(
        f"tables/{tag}/step_{step:06d}.csv"
        for tag in ("explain/worst_table", "val/confused_pairs")
        for step in STEPS
    )
    local = Path(client.download_artifacts(logger.run_id, "tables/explain/worst_table/step_000004.csv"))
    _assert_are_the_winners(_worst_rows(local.read_text()), run)
    for name, (steps, last) in _scalars(run).items():
        logged = client.get_metric_history(logger.run_id, name)
        assert sorted(m.step for m in logged) == steps, name
        assert max(logged, key=lambda m: m.step).value == pytest.approx(last), name


def _worst_rows(text: str) -> list[dict]:
    return list(csv.DictReader(text.splitlines()))


def _assert_are_the_winners(rows: list[dict], run: dict) -> None:
    """The worst-samples table of the last epoch: the callback's k winners, highest loss first."""
    winners = run["callbacks"][1].last_winners["loss"]
    assert len(rows) == K
    assert [float(r["loss"]) for r in rows] == pytest.approx(winners["loss"].tolist(), abs=1e-4)


def _scalars(run: dict) -> dict[str, tuple[list[int], float]]:
    """Each explanation scalar the callbacks logged: its expected steps and its last value."""
    probes, _, confusion = run["callbacks"]
    names = {**probes.last_scalars, **confusion.last_scalars}
    assert any(n.endswith("pointing_game") for n in names) and any(n.endswith("class_acc") for n in names)
    # Drift compares with the previous validation's maps, so it starts at the second one.
    return {name: (STEPS[1:] if name.endswith("/drift") else STEPS, value) for name, value in names.items()}
