"""Benchmark the label-issue finder: how well each ranking finds flipped labels, and what recording costs.

1. Quality: the shapes demo recipe (configs/shapes_demo.yaml: timm:resnet10t_half, 5,000 64-px images;
   10 epochs as the README's label-noise command, --epochs 6 as the recipe) trained once per
   (label_noise, seed) with ``ShapesDataModule(label_noise=p, label_noise_seed=s)`` and ``seed_everything(s)``.
   One training records every training step's logits per sample (a few MB), so every ranking is computed
   from the same run: the dynamics rankings of :mod:`lit_explain.findings.dynamics` (AUM, cartography
   confidence, confident learning on the mean probabilities) and the cleanlab-style baseline (confident
   learning on the LAST epoch's in-sample probabilities). Printed: precision@k (k = number flipped) and
   recall@2k (share of the flipped in the top 2k), and how many the callback flags by default. The
   TrainingDynamics callback runs in the same training, so its label_issues.csv is checked against the
   offline ranking.
2. Cost: the callback's per-step update (margin, probability, correctness -> preallocated sums) timed
   against a training step of the recipe, and the bytes it holds at 5,000 and 50,000 training samples.

    python scripts/bench_label_issues.py                                  # the full grid (6 trainings)
    python scripts/bench_label_issues.py --noise 0.05 --seeds 0           # one training
    python scripts/bench_label_issues.py --cost-only
Recorded logits are kept in --record-dir; a rerun analyses them again without training.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from lit_explain.data import ShapesDataModule
from lit_explain.findings import dynamics as dyn
from lit_explain.models import ImageClassifier

DEFAULT_RECORDS = Path("lightning_logs") / "bench_label_issues"


class LogitRecorder(L.Callback):
    """Every training step's logits per sample and epoch ([E, N, C] on the host), for offline rankings."""

    def __init__(self, num_samples: int, num_classes: int, epochs: int) -> None:
        self.logits = torch.full((epochs, num_samples, num_classes), float("nan"))
        self.labels = torch.full((num_samples,), -1, dtype=torch.long)
        self.step_s: list[float] = []
        self._t = 0.0

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, i: int
    ) -> None:
        self._t = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.step_s.append(time.perf_counter() - self._t)
        index = batch["index"].cpu()
        self.logits[trainer.current_epoch, index] = outputs["logits"].float().cpu()
        self.labels[index] = batch["label"].cpu()


def demo_model() -> ImageClassifier:
    """The model of configs/shapes_demo.yaml."""
    return ImageClassifier(
        backbone="timm:resnet10t_half",
        optimizer="adamw",
        lr=0.005,
        momentum=0.9,
        nesterov=True,
        weight_decay=0.05,
        scheduler="onecycle",
    )


def demo_data(noise: float, seed: int, train_size: int = 5000) -> ShapesDataModule:
    """The data of configs/shapes_demo.yaml with label noise."""
    return ShapesDataModule(
        image_size=64,
        train_size=train_size,
        val_size=500,
        test_size=1000,
        seed=0,
        noise=12.0,
        batch_size=32,
        num_workers=0,
        label_noise=noise,
        label_noise_seed=seed,
    )


def train_and_record(noise: float, seed: int, epochs: int, out: Path, with_callback: bool) -> dict[str, Any]:
    L.seed_everything(seed, verbose=False)
    dm = demo_data(noise, seed)
    model = demo_model()
    recorder = LogitRecorder(dm.sizes["train"], len(dm.class_names), epochs)
    callbacks: list[L.Callback] = [recorder]
    run_dir = out / f"run_noise{noise:.2f}_seed{seed}"
    logger: Any = False
    if with_callback:
        from lightning.pytorch.loggers import CSVLogger

        from lit_explain.callbacks import TrainingDynamics

        callbacks.append(TrainingDynamics())
        logger = CSVLogger(str(run_dir), name="", version="")
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        precision="32-true",
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        default_root_dir=str(run_dir),
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    record = {
        "noise": noise,
        "seed": seed,
        "logits": recorder.logits,
        "labels": recorder.labels,
        "flipped": dm.flipped_indices(),
        "val_acc": float(trainer.callback_metrics.get("val/acc", float("nan"))),
        "train_s": time.perf_counter() - start,
        "step_s": recorder.step_s,
        "run_dir": str(run_dir),
    }
    return record


def record_path(out: Path, noise: float, seed: int) -> Path:
    return out / f"noise{noise:.2f}_seed{seed}.pt"


def rankings(record: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Every ranking compared: suspicion scores (higher = more likely a wrong label) per sample."""
    logits, labels = record["logits"], record["labels"]
    stats = dyn.stats_from_logits(logits, labels)
    probs = logits.softmax(dim=-1)
    out = {
        "AUM (all epochs)": dyn.suspicion(stats, "aum"),
        "late AUM (epoch² weights)": dyn.suspicion(stats, "late_aum"),
        "AUM (epochs 2+)": dyn.suspicion(dyn.stats_from_logits(logits[1:], labels), "aum"),
        "cartography confidence": dyn.suspicion(stats, "confidence"),
        "CL on mean probabilities": dyn.confident_learning(probs.mean(0), labels).score,
        "baseline: CL on last epoch": dyn.confident_learning(probs[-1], labels).score,
    }
    return out


def evaluate(record: dict[str, Any]) -> dict[str, dict[str, float]]:
    flipped = record["flipped"]
    table = {}
    for name, score in rankings(record).items():
        table[name] = {
            "precision@k": dyn.precision_at_k(score, flipped),
            "recall@2k": dyn.recall_at(score, flipped, 2 * len(flipped)),
        }
    # What the callback flags by default: as many as the late-AUM mixture estimates, from the top of the
    # ranking; next to it, confident learning's count estimate from the mean probabilities (the rule before).
    stats = dyn.stats_from_logits(record["logits"], record["labels"])
    order = dyn.ranking(dyn.suspicion(stats, "late_aum"))
    for name, count in (
        ("flagged (callback default)", dyn.mixture_issue_count(dyn.late_aum(stats))),
        ("flagged (CL count estimate)", dyn.estimated_issue_count(stats.mean_probs(), record["labels"])),
    ):
        found = set(order[:count].tolist()) & set(flipped.tolist())
        table[name] = {
            "count": count,
            "precision": len(found) / max(1, count),
            "recall": len(found) / len(flipped),
        }
    return table


def check_callback_csv(record: dict[str, Any]) -> str:
    """Whether the callback's label_issues.csv ranks as the offline default ranking does (top k)."""
    files = list(Path(record["run_dir"]).rglob("label_issues.csv"))
    if not files:
        return "no label_issues.csv (run without the callback)"
    with files[0].open() as f:
        rows = list(csv.DictReader(f))
    k = len(record["flipped"])
    from_csv = [int(r["index"]) for r in rows[:k]]
    flipped = set(record["flipped"].tolist())
    hits = sum(i in flipped for i in from_csv)
    return f"{files[0]}: {len(rows)} rows, precision@k from the CSV {hits / k:.3f}"


def cost(
    sizes: list[int], classes: tuple[int, ...] = (6, 100), batch: int = 32, repeats: int = 1000
) -> list[str]:
    """Per-step update time of the callback's accumulator and the bytes it holds (the epoch's sums plus the
    folded totals, twice the accumulator), at each training-set size and class count."""
    from lit_explain.callbacks.dynamics import DynamicsAccumulator

    lines = []
    for num_classes in classes:
        for n in sizes:
            acc = DynamicsAccumulator(n, num_classes)
            logits = torch.randn(batch, num_classes)
            labels = torch.randint(num_classes, (batch,))
            index = torch.randint(n, (batch,))
            for _ in range(50):
                acc.update(logits, labels, index, 4.0)
            start = time.perf_counter()
            for _ in range(repeats):
                acc.update(logits, labels, index, 4.0)
            per_step = (time.perf_counter() - start) / repeats
            held = 2 * acc.nbytes()
            lines.append(
                f"{n:>7} samples, {num_classes:>3} classes: update {per_step * 1e6:.0f} us/step, "
                f"state {held / 1e6:.2f} MB"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--noise", type=float, nargs="+", default=[0.05, 0.10])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10, help="10 as the README trains (the recipe: 6)")
    parser.add_argument("--record-dir", type=Path, default=DEFAULT_RECORDS)
    parser.add_argument("--no-callback", action="store_true", help="record logits only (no TrainingDynamics)")
    parser.add_argument("--cost-only", action="store_true")
    parser.add_argument("--analyse-only", action="store_true", help="skip (noise, seed) not recorded yet")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.record_dir.mkdir(parents=True, exist_ok=True)

    step_s: list[float] = []
    if not args.cost_only:
        results: dict[str, list[dict[str, float]]] = {}
        for seed in args.seeds:
            for noise in args.noise:
                path = record_path(args.record_dir, noise, seed)
                if path.is_file():
                    record = torch.load(path, weights_only=True)
                elif args.analyse_only:
                    continue
                else:
                    record = train_and_record(noise, seed, args.epochs, args.record_dir, not args.no_callback)
                    torch.save(record, path)
                step_s += record["step_s"][len(record["step_s"]) // args.epochs :]  # epoch 1 draws the data
                table = evaluate(record)
                print(
                    f"noise {noise:.2f} seed {seed}: {len(record['flipped'])} flipped, val acc "
                    f"{record['val_acc']:.3f}, trained in {record['train_s']:.0f} s"
                )
                for name, row in table.items():
                    results.setdefault(f"{noise:.2f}|{name}", []).append(row)
                    if "count" in row:
                        print(
                            f"  {name:<28} {row['count']:.0f} flagged: precision {row['precision']:.3f}  "
                            f"recall {row['recall']:.3f}"
                        )
                        continue
                    print(
                        f"  {name:<28} precision@k {row['precision@k']:.3f}  recall@2k {row['recall@2k']:.3f}"
                    )
                print("  " + check_callback_csv(record))
        print("\nmean over seeds (min-max)")
        for key, rows in results.items():
            noise, name = key.split("|")
            if "count" in rows[0]:
                p = [r["precision"] for r in rows]
                r2 = [r["recall"] for r in rows]
                print(
                    f"  noise {noise} {name:<28} precision {sum(p) / len(p):.3f} ({min(p):.3f}-{max(p):.3f})  "
                    f"recall {sum(r2) / len(r2):.3f} ({min(r2):.3f}-{max(r2):.3f})  n={len(rows)}"
                )
                continue
            p = [r["precision@k"] for r in rows]
            r2 = [r["recall@2k"] for r in rows]
            print(
                f"  noise {noise} {name:<28} precision@k {sum(p) / len(p):.3f} ({min(p):.3f}-{max(p):.3f})  "
                f"recall@2k {sum(r2) / len(r2):.3f} ({min(r2):.3f}-{max(r2):.3f})  n={len(rows)}"
            )
    print("\ncost of recording (CPU, batch 32)")
    for line in cost([5_000, 50_000]):
        print("  " + line)
    if step_s:
        mean = sum(step_s) / len(step_s)
        print(f"  training step of the recipe (epochs 2+): {mean * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
