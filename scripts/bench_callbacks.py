"""Benchmark the explainability callbacks: epoch wall-time overhead and memory versus validation-set size.

1. Overhead: the same training (same seed, same data) with and without ProbeHeatmaps + WorstSamples +
   ConfusionMatrix at their default settings, in one process; the per-epoch wall time (training plus
   validation plus the callbacks' epoch-end work) is compared, first epoch excluded (data caching).
2. Memory: ``trainer.validate`` with the callbacks on two validation-set sizes; the bytes of tensors the
   callbacks hold (top-k buffers, confusion matrix, probe cache) are sampled after every batch.

    python scripts/bench_callbacks.py                          # shapes, CPU, defaults of the issue
    python scripts/bench_callbacks.py --epochs 3 --train-size 1000 --memory-sizes 1000 4000
    python scripts/bench_callbacks.py --config configs/cifar100_resnet34.yaml --accelerator gpu
    python scripts/bench_callbacks.py --loggers tensorboard csv --repeats 3   # time inside the callbacks:
        # TensorBoard alone vs TensorBoard + the other loggers (each picture is encoded once for all)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from lit_explain.callbacks import ConfusionMatrix, ProbeHeatmaps, WorstSamples
from lit_explain.data import ShapesDataModule
from lit_explain.models import ImageClassifier


class EpochTimer(L.Callback):
    """Wall time from each training epoch's start to the end of its validation (after the other callbacks)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            _sync(pl_module.device)
            self.times.append(time.perf_counter() - self._start)


class StateBytes(L.Callback):
    """Peak bytes of the tensors the explainability callbacks hold, sampled after every validation batch."""

    def __init__(self, watched: list[L.Callback]) -> None:
        self.watched = watched
        self.peak = 0

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kw: Any
    ) -> None:
        self.peak = max(self.peak, sum(_tensor_bytes(vars(cb)) for cb in self.watched))


HOOKS = ("on_validation_epoch_start", "on_validation_batch_end", "on_validation_epoch_end")


def time_hooks(callbacks: list[L.Callback], device_of: Any) -> list[float]:
    """Wrap the callbacks' validation hooks so the seconds spent inside them add up in the returned cell.

    Measured inside the same run as the epoch time, this share is immune to load drifting between runs.
    """
    spent = [0.0]
    for cb in callbacks:
        for name in HOOKS:
            hook = getattr(cb, name)

            def timed(*args: Any, _hook: Any = hook, **kwargs: Any) -> Any:
                start = time.perf_counter()
                out = _hook(*args, **kwargs)
                _sync(device_of())
                spent[0] += time.perf_counter() - start
                return out

            setattr(cb, name, timed)
    return spent


def _tensor_bytes(obj: Any, seen: set[int] | None = None) -> int:
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v, seen) for v in obj)
    if isinstance(obj, torch.nn.Module) or hasattr(obj, "__dataclass_fields__"):
        return _tensor_bytes(vars(obj), seen) + (
            sum(_tensor_bytes(b, seen) for b in obj.buffers()) if isinstance(obj, torch.nn.Module) else 0
        )
    return 0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


DEMO_LAYERS, DEMO_METHOD = (
    ["layer1", "layer2"],
    "layercam",
)  # configs/shapes_demo.yaml (layer: null resolves to these)


def default_callbacks(as_demo: bool = False) -> list[L.Callback]:
    """The callbacks at their class defaults, or as configs/shapes_demo.yaml sets them (48 probes, LayerCAM on fused layers)."""
    if as_demo:
        return [
            ProbeHeatmaps(per_class=8, max_probes=48, layer=DEMO_LAYERS, method=DEMO_METHOD, min_cell=96),
            WorstSamples(layer=DEMO_LAYERS, method=DEMO_METHOD, min_cell=96),
            ConfusionMatrix(normalize=True, top_n_pairs=10),
        ]
    return [ProbeHeatmaps(), WorstSamples(), ConfusionMatrix()]


def build(
    args: argparse.Namespace, val_size: int | None = None
) -> tuple[ImageClassifier, L.LightningDataModule]:
    if args.config:
        from lit_explain.cli import LitExplainCLI

        cli = LitExplainCLI(args=["--config", args.config, *args.override], run=False)
        return cli.model, cli.datamodule
    dm = ShapesDataModule(
        train_size=args.train_size, val_size=val_size or args.val_size, batch_size=args.batch_size, seed=0
    )
    return ImageClassifier("resnet18", optimizer="adamw", lr=5e-3, scheduler="none"), dm


LOGGERS = ("tensorboard", "csv", "wandb", "mlflow")


def make_loggers(names: list[str], log_dir: str) -> list[Any]:
    """Lightning loggers by short name, all writing under ``log_dir`` (W&B offline, MLflow file store)."""
    from lightning.pytorch import loggers

    made = []
    for name in names:
        if name == "tensorboard":
            made.append(loggers.TensorBoardLogger(log_dir))
        elif name == "csv":
            made.append(loggers.CSVLogger(log_dir))
        elif name == "wandb":
            made.append(loggers.WandbLogger(save_dir=log_dir, offline=True, project="bench_callbacks"))
        elif name == "mlflow":
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            made.append(loggers.MLFlowLogger(tracking_uri=f"file:{os.path.abspath(log_dir)}/mlruns"))
        else:
            raise ValueError(f"unknown logger {name!r}; choose from {', '.join(LOGGERS)}")
    return made


def run_fit(
    args: argparse.Namespace, with_callbacks: bool, log_dir: str, loggers: list[str] | None = None
) -> tuple[list[float], float]:
    """Per-epoch wall times, and the seconds spent inside the explainability callbacks after epoch 1."""
    L.seed_everything(0, verbose=False)
    model, dm = build(args)
    timer = EpochTimer()
    explainers = default_callbacks(args.as_demo) if with_callbacks else []
    spent = time_hooks(explainers, lambda: model.device)
    first_epoch_spent = [0.0]

    class Mark(L.Callback):
        def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            if trainer.current_epoch == 1:
                first_epoch_spent[0] = spent[0]

    callbacks = [*explainers, Mark(), timer]
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator=args.accelerator,
        devices=1,
        logger=make_loggers(loggers or ["tensorboard"], log_dir),
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        precision=args.precision,
    )
    trainer.fit(model, datamodule=dm)
    return timer.times, spent[0] - first_epoch_spent[0]


def run_memory(args: argparse.Namespace, val_size: int, log_dir: str) -> int:
    L.seed_everything(0, verbose=False)
    model, dm = build(args, val_size=val_size)
    watched = default_callbacks(args.as_demo)
    probe = StateBytes(watched)
    trainer = L.Trainer(
        accelerator=args.accelerator,
        devices=1,
        logger=TensorBoardLogger(log_dir),
        callbacks=[*watched, probe],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.validate(model, datamodule=dm)
    return probe.peak


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (the first is not timed)")
    parser.add_argument("--train-size", type=int, default=3000)
    parser.add_argument("--val-size", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--as-demo", action="store_true", help="the callbacks as the demo recipe sets them, not the defaults"
    )
    parser.add_argument("--repeats", type=int, default=1, help="alternating without/with pairs")
    parser.add_argument("--memory-sizes", type=int, nargs="*", default=[1000, 20000])
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--config", default=None, help="a recipe YAML instead of the built-in shapes setup")
    parser.add_argument("--override", nargs="*", default=[], help="extra LightningCLI arguments for --config")
    parser.add_argument("--log-dir", default="lightning_logs/bench_callbacks")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument(
        "--loggers",
        nargs="*",
        choices=LOGGERS,
        default=None,
        help="compare the time inside the callbacks with TensorBoard alone and with these loggers at once",
    )
    parser.add_argument(
        "--sink-cost",
        action="store_true",
        help="only time one probe grid's PNG encoding and its TensorBoard and CSV-files writes",
    )
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (the first epoch is not timed)")
    if args.sink_cost:
        return sink_cost(args.log_dir)
    if args.loggers:
        return compare_loggers(args)

    without: list[float] = []
    with_cb: list[float] = []
    inside, with_total = 0.0, 0.0
    for r in range(args.repeats):
        without += run_fit(args, False, f"{args.log_dir}/without_{r}")[0][1:]
        times, spent = run_fit(args, True, f"{args.log_dir}/with_{r}")
        with_cb += times[1:]
        inside, with_total = inside + spent, with_total + sum(times[1:])
    t0, t1 = statistics.median(without), statistics.median(with_cb)
    share = inside / max(with_total - inside, 1e-9)
    result: dict[str, Any] = {
        "epoch_s_without": round(t0, 3),
        "epoch_s_with": round(t1, 3),
        "ratio": round(t1 / t0, 4),
        "callback_s_per_epoch": round(inside / max(len(with_cb), 1), 3),
        "ratio_from_hook_time": round(1.0 + share, 4),
        "epochs_timed": len(without),
        "memory_bytes_by_val_size": {},
    }
    print(f"epoch wall time: without {t0:.2f} s, with callbacks {t1:.2f} s, ratio {t1 / t0:.3f}")
    print(
        f"inside the callbacks: {result['callback_s_per_epoch']:.2f} s per epoch; same-run ratio "
        f"(epoch with) / (epoch with - callback time) = {1.0 + share:.3f}"
    )
    for size in args.memory_sizes:
        peak = run_memory(args, size, f"{args.log_dir}/memory_{size}")
        result["memory_bytes_by_val_size"][str(size)] = peak
        print(f"validation set {size:>6}: callbacks hold at most {peak / 1024:.1f} KiB of tensors")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    return result


def compare_loggers(args: argparse.Namespace) -> dict[str, Any]:
    """Seconds inside the callbacks per epoch: TensorBoard alone vs ``args.loggers``, alternating runs."""
    sets = {"tensorboard": ["tensorboard"], "+".join(args.loggers): list(args.loggers)}
    spent: dict[str, list[float]] = {name: [] for name in sets}
    epochs: dict[str, list[float]] = {name: [] for name in sets}
    for r in range(args.repeats):
        for name, loggers in sets.items():
            times, inside = run_fit(args, True, f"{args.log_dir}/loggers_{name}_{r}", loggers)
            spent[name].append(inside / (len(times) - 1))
            epochs[name] += times[1:]
    (base, combo) = sets
    result: dict[str, Any] = {
        "loggers": list(args.loggers),
        "callback_s_per_epoch": {name: [round(s, 3) for s in values] for name, values in spent.items()},
        "epoch_s_median": {name: round(statistics.median(values), 3) for name, values in epochs.items()},
        "callback_ratio_median": round(statistics.median(spent[combo]) / statistics.median(spent[base]), 4),
    }
    for name in sets:
        print(
            f"{name:>24}: {statistics.median(spent[name]):.3f} s per epoch inside the callbacks "
            f"(runs: {', '.join(f'{s:.3f}' for s in spent[name])}); epoch {result['epoch_s_median'][name]:.2f} s"
        )
    print(f"callback time ratio {combo} / {base}: {result['callback_ratio_median']:.3f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    return result


def sink_cost(log_dir: str, writes: int = 10) -> dict[str, float]:
    """Median ms per picture: PNG encoding (shared) and each sink's write, for a default 12-probe grid."""
    from lightning.pytorch.loggers import CSVLogger

    from lit_explain.render import overlay
    from lit_explain.sinks import CsvFilesSink, Picture, TensorBoardSink

    tb = TensorBoardSink(TensorBoardLogger(log_dir, name="sink_cost_tb"))
    files = CsvFilesSink(CSVLogger(log_dir, name="sink_cost_csv"))
    g = torch.Generator().manual_seed(0)
    images, maps = torch.rand(12, 3, 128, 128, generator=g), torch.rand(12, 1, 128, 128, generator=g)
    rows = torch.cat([images, overlay(images, maps), overlay(images, maps), images], dim=-1)
    grid = (torch.cat(list(rows), dim=1) * 255).to(torch.uint8)  # [3, 12 * 128, 4 * 128], like the probe grid
    spent: dict[str, list[float]] = {"encode": [], "tensorboard": [], "csv_files": []}
    for step in range(writes):
        picture = Picture(grid.clone())
        start = time.perf_counter()
        _ = picture.png
        spent["encode"].append(time.perf_counter() - start)
        start = time.perf_counter()
        tb.image("explain/probes", picture, step)
        tb.flush()
        spent["tensorboard"].append(time.perf_counter() - start)
        start = time.perf_counter()
        files.image("explain/probes", picture, step)
        spent["csv_files"].append(time.perf_counter() - start)
    result = {name: round(statistics.median(v) * 1000, 1) for name, v in spent.items()}
    print(f"grid {tuple(grid.shape)}, PNG {len(picture.png) / 1024:.0f} KiB; median ms per picture: {result}")
    return result


if __name__ == "__main__":
    main()
