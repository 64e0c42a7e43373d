"""Benchmark the explainability callbacks: their time on the training thread, the epoch wall time with vs
without them, and the memory they hold versus the validation-set size.

1. Training-thread share: one fit with the callbacks under Lightning's simple profiler; the profiler rows of
   every lit_explain callback (setup included) over the ``run_training_epoch`` rows (training + validation).
   The background writer's seconds are reported next to it (they run on another thread).
2. Wall ratio: fits without and with the callbacks alternate in one process (without, with, with, without,
   ...); an epoch is timed from one training epoch's start to the next (the last to the end of fit), so
   the background writer's work, which spills into the next epoch and competes for the cores, is counted.
   The first epoch of every fit is not timed (data caching).
   ``--paired N``: one fit of 2N + 2 epochs in which the callbacks work every second epoch
   (``every_n_epochs=2``); each epoch they work in is compared with the mean of its neighbours where they
   do not, so the machine's drift over minutes (same-side epochs of 11-19 s on a shared 2-core host)
   cancels. Epoch 0 (data caching) and the last epoch (end-of-fit work) are not timed.
3. Memory: ``trainer.validate`` with the callbacks on two validation-set sizes; peak bytes of tensors they hold.

    python scripts/bench_callbacks.py --recipe demo                       # configs/shapes_demo.yaml as shipped
    python scripts/bench_callbacks.py --recipe demo --class-defaults      # the callbacks at their class defaults
    python scripts/bench_callbacks.py --recipe demo --repeats 0 --paired 6   # wall ratio, epochs interleaved
    python scripts/bench_callbacks.py --recipe demo --only ProbeHeatmaps WorstSamples ConfusionMatrix ShortcutAlarm
    python scripts/bench_callbacks.py --recipe plant --data-root ../shared/data/leaf-shapes   # weights: null
    python scripts/bench_callbacks.py --recipe cifar --accelerator gpu    # needs the CIFAR-100 files
    python scripts/bench_callbacks.py --loggers tensorboard csv --repeats 3   # time inside the callbacks:
        # TensorBoard alone vs TensorBoard + the other loggers (each picture is encoded once for all)
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.profilers import SimpleProfiler

from lit_explain.callbacks import ConfusionMatrix, ProbeHeatmaps, WorstSamples
from lit_explain.callbacks.base import ExplainCallback, writer_for

RECIPES = {
    "demo": "configs/shapes_demo.yaml",
    "plant": "configs/plant_resnet18.yaml",
    "cifar": "configs/cifar100_resnet34.yaml",
}


class EpochClock(L.Callback):
    """Seconds from each training epoch's start to the next one's (the last: to the end of fit)."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.end = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _sync(pl_module.device)
        self.starts.append(time.perf_counter())

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _sync(pl_module.device)
        self.end = time.perf_counter()

    @property
    def times(self) -> list[float]:
        marks = [*self.starts, self.end]
        return [b - a for a, b in itertools.pairwise(marks)]


class StateBytes(L.Callback):
    """Peak bytes of the tensors the explainability callbacks hold, sampled after every validation batch."""

    def __init__(self, watched: list[L.Callback]) -> None:
        self.watched = watched
        self.peak = 0

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kw: Any
    ) -> None:
        self.peak = max(self.peak, sum(_tensor_bytes(vars(cb)) for cb in self.watched))


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


def recipe_args(args: argparse.Namespace) -> list[str]:
    """LightningCLI arguments for the recipe: its YAML, the data root and sizes asked for, the overrides."""
    out = ["--config", RECIPES[args.recipe]]
    if args.recipe == "plant":
        # No ImageNet download here: the plant recipe from random initialisation, on the given photos.
        out += ["--model.weights=null", f"--data.init_args.root={args.data_root}"]
    if args.recipe == "demo" and args.train_size:
        out += [f"--data.init_args.train_size={args.train_size}"]
    return out + list(args.override)


def build(args: argparse.Namespace, extra: list[str] | None = None) -> tuple[Any, Any, list[L.Callback]]:
    """The recipe's model, data module and lit_explain callbacks (as the YAML sets them, or class defaults)."""
    from lit_explain.cli import LitExplainCLI

    cli = LitExplainCLI(args=[*recipe_args(args), *(extra or [])], run=False)
    callbacks = [cb for cb in cli.trainer.callbacks if isinstance(cb, ExplainCallback)]
    if args.class_defaults:
        callbacks = [ProbeHeatmaps(), WorstSamples(), ConfusionMatrix()]
    if args.only:
        callbacks = [cb for cb in callbacks if type(cb).__name__ in args.only]
        missing = set(args.only) - {type(cb).__name__ for cb in callbacks}
        if missing:
            raise SystemExit(f"--only: the recipe has no {', '.join(sorted(missing))} callback")
    return cli.model, cli.datamodule, callbacks


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
) -> dict[str, Any]:
    """One fit: per-epoch wall times and, with the callbacks, their profiler seconds and the training seconds."""
    L.seed_everything(0, verbose=False)
    model, dm, explainers = build(args)
    clock = EpochClock()
    profiler = SimpleProfiler(dirpath=log_dir, filename="profile") if with_callbacks else None
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator=args.accelerator,
        devices=1,
        logger=make_loggers(loggers or ["tensorboard"], log_dir),
        callbacks=[*(explainers if with_callbacks else []), clock],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        precision=args.precision,
        profiler=profiler,
    )
    trainer.fit(model, datamodule=dm)
    out: dict[str, Any] = {"epochs": clock.times}
    if profiler is not None:
        rows = profiler.recorded_durations
        names = {type(cb).__name__ for cb in explainers}
        per_callback = {
            name: sum(sum(d) for action, d in rows.items() if action.startswith(f"[Callback]{name}"))
            for name in sorted(names)
        }
        out["callback_s"] = per_callback
        out["training_s"] = sum(rows.get("run_training_epoch", []))
        out["background_s"] = writer_for(trainer).stats.background_s
        out["dropped"] = writer_for(trainer).stats.dropped
    return out


def paired(args: argparse.Namespace) -> dict[str, Any]:
    """Epochs with and without the callbacks interleaved in one fit; ratios against the neighbours."""
    L.seed_everything(0, verbose=False)
    model, dm, explainers = build(args)
    for cb in explainers:
        cb.every_n_epochs = 2  # they work in epochs 1, 3, 5, ... (``(epoch + 1) % 2 == 0``)
    clock = EpochClock()
    trainer = L.Trainer(
        max_epochs=2 * args.paired + 2,
        accelerator=args.accelerator,
        devices=1,
        logger=TensorBoardLogger(f"{args.log_dir}/paired"),
        callbacks=[*explainers, clock],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        precision=args.precision,
    )
    trainer.fit(model, datamodule=dm)
    times = clock.times[:-1]  # the last epoch carries the end-of-fit work: not timed
    ratios = []
    for epoch in range(1, len(times), 2):
        neighbours = [times[e] for e in (epoch - 1, epoch + 1) if 1 <= e < len(times)]
        ratios.append(times[epoch] / statistics.mean(neighbours))
    on = [times[e] for e in range(1, len(times), 2)]
    off = [times[e] for e in range(2, len(times), 2)]
    result = {
        "paired_epochs": [round(t, 3) for t in times],
        "paired_ratios": [round(r, 4) for r in ratios],
        "paired_ratio_mean": round(statistics.mean(ratios), 4),
        "paired_ratio_median": round(statistics.median(ratios), 4),
        "paired_epochs_per_side": [len(off), len(on)],
    }
    print(
        f"paired epochs ({len(on)} with, {len(off)} without, interleaved): ratios "
        f"{', '.join(f'{r:.3f}' for r in ratios)}; mean {result['paired_ratio_mean']:.3f}, "
        f"median {result['paired_ratio_median']:.3f}"
    )
    return result


def run_memory(args: argparse.Namespace, val_size: int, log_dir: str) -> int:
    L.seed_everything(0, verbose=False)
    model, dm, watched = build(args, [f"--data.init_args.val_size={val_size}"])
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


def overhead(args: argparse.Namespace) -> dict[str, Any]:
    """Alternating fits without/with the callbacks (ABBA order), then the shares and the wall ratio."""
    without: list[float] = []
    with_cb: list[float] = []
    share_rows: list[dict[str, Any]] = []
    order = [False, True, True, False] * ((args.repeats + 1) // 2)
    for n, on in enumerate(order[: 2 * args.repeats]):
        run = run_fit(args, on, f"{args.log_dir}/{'with' if on else 'without'}_{n}")
        (with_cb if on else without).extend(run["epochs"][1:])
        if on:
            share_rows.append(run)
        print(
            f"fit {n} {'with' if on else 'without'}: epochs {', '.join(f'{t:.2f}' for t in run['epochs'])} s"
        )
    callback_s = sum(sum(r["callback_s"].values()) for r in share_rows)
    training_s = sum(r["training_s"] for r in share_rows)
    per_callback = {
        name: round(sum(r["callback_s"][name] for r in share_rows) / max(training_s, 1e-9) * 100, 3)
        for name in share_rows[0]["callback_s"]
    }
    t0, t1 = statistics.mean(without), statistics.mean(with_cb)
    result = {
        "recipe": args.recipe,
        "settings": "class defaults" if args.class_defaults else "as the recipe sets them",
        "callbacks": sorted(share_rows[0]["callback_s"]),
        "training_thread_share_pct": round(100 * callback_s / max(training_s, 1e-9), 3),
        "share_pct_by_callback": per_callback,
        "callback_s_per_fit": round(callback_s / len(share_rows), 3),
        "training_s_per_fit": round(training_s / len(share_rows), 2),
        "background_s_per_fit": round(sum(r["background_s"] for r in share_rows) / len(share_rows), 3),
        "epochs_dropped": sum(r["dropped"] for r in share_rows),
        "epoch_s_without": round(t0, 3),
        "epoch_s_with": round(t1, 3),
        "wall_ratio": round(t1 / t0, 4),
        "epochs_timed_per_side": [len(without), len(with_cb)],
    }
    print(
        f"training thread: {result['training_thread_share_pct']:.2f}% of training "
        f"({result['callback_s_per_fit']:.2f} s of {result['training_s_per_fit']:.1f} s per fit; by callback "
        f"{per_callback}); background writer {result['background_s_per_fit']:.2f} s per fit"
    )
    print(
        f"epoch wall time: without {t0:.2f} s, with {t1:.2f} s, ratio {t1 / t0:.3f} "
        f"({len(without)} / {len(with_cb)} epochs)"
    )
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="demo")
    parser.add_argument("--data-root", default="../shared/data/leaf-shapes", help="the plant recipe's photos")
    parser.add_argument("--class-defaults", action="store_true", help="the callbacks at their class defaults")
    parser.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="CALLBACK",
        help="measure only these of the recipe's callbacks (class names), e.g. the three pictures callbacks",
    )
    parser.add_argument("--epochs", type=int, default=4, help="epochs per fit (the first is not timed)")
    parser.add_argument("--repeats", type=int, default=2, help="fits per side (without/with), alternating")
    parser.add_argument(
        "--paired", type=int, default=0, help="N: also one fit of 2N+2 epochs, the callbacks every 2nd epoch"
    )
    parser.add_argument("--train-size", type=int, default=None, help="demo only: training images")
    parser.add_argument("--memory-sizes", type=int, nargs="*", default=[])
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument(
        "--override",
        nargs="*",
        action="extend",
        default=[],
        help="extra LightningCLI arguments (repeatable: --override=--a=1 --override=--b=2)",
    )
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
    result = overhead(args) if args.repeats > 0 else {}
    if args.paired:
        result.update(paired(args))
    result["memory_bytes_by_val_size"] = {}
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
            run = run_fit(args, True, f"{args.log_dir}/loggers_{name}_{r}", loggers)
            spent[name].append(sum(run["callback_s"].values()) / len(run["epochs"]))
            epochs[name] += run["epochs"][1:]
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
