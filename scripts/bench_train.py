"""Training throughput of the CIFAR-100 ResNet-34 recipe: Lightning + lit_explain against a plain PyTorch loop.

Both sides train the same network (ResNet-34, CIFAR stem) on the same data through the same
``Cifar100DataModule`` loader, with the same optimiser (SGD, Nesterov, weight decay off norms and biases) and
loss (cross-entropy, label smoothing 0.1). Callbacks are off on the Lightning side (no checkpointing, logger,
progress bar or explainability callbacks) so the difference is the framework's own per-step overhead. The two
are run alternately ``--repeats`` times and the medians compared (a loaded machine drifts; alternating spreads
the drift over both).

Without ``--data_dir`` holding ``cifar-100-python/``, a synthetic set in the same layout is written to a
temporary folder (``scripts/make_cifar100_fixture.py``).

    python scripts/bench_train.py --steps 20 --warmup 3 --batch_size 64            # CPU, a subset
    python scripts/bench_train.py --steps 200 --warmup 20 --batch_size 256 --gpu_variants   # on a GPU
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_cifar100_fixture import write_cifar100

from lit_explain.data import Cifar100DataModule
from lit_explain.models import ImageClassifier


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _data(args: argparse.Namespace, data_dir: Path, verify: bool) -> Cifar100DataModule:
    dm = Cifar100DataModule(
        str(data_dir),
        val_size=100,
        verify_checksums=verify,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        seed=0,
    )
    dm.setup("fit")
    return dm


def plain_loop(
    args: argparse.Namespace,
    dm: Cifar100DataModule,
    device: torch.device,
    precision: str,
    channels_last: bool,
) -> float:
    """Images/s of a hand-written loop over the same model, optimiser, loss and loader."""
    model = ImageClassifier(
        "resnet34",
        num_classes=dm.num_classes,
        cifar_stem=True,
        channels_last=channels_last,
        label_smoothing=0.1,
        lr=0.1,
    ).to(device)
    net = model.net.train()
    optimizer = torch.optim.SGD(model._param_groups(), lr=0.1, momentum=0.9, nesterov=True)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if precision == "bf16-mixed"
        else contextlib.nullcontext()
    )
    loader = dm.train_dataloader()
    seen, start, step = 0, None, 0
    while step < args.warmup + args.steps:
        for batch in loader:
            if step == args.warmup:
                _sync(device)
                start, seen = time.perf_counter(), 0
            images = batch["image"].to(device, non_blocking=True)
            labels = batch["label"].to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast:
                loss = F.cross_entropy(net(images), labels, label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(labels)
            step += 1
            if step == args.warmup + args.steps:
                break
    _sync(device)
    return seen / (time.perf_counter() - start)


class _Throughput(L.Callback):
    """Times the same window as the plain loop: from the start of step ``warmup`` to the end of the last."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.seen, self.start, self.end = warmup, 0, 0.0, 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            _sync(module.device)
            self.start, self.seen = time.perf_counter(), 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.seen += len(batch["label"])
        _sync(module.device)
        self.end = time.perf_counter()


def lightning_loop(
    args: argparse.Namespace,
    dm: Cifar100DataModule,
    device: torch.device,
    precision: str,
    channels_last: bool,
) -> float:
    """Images/s of ``Trainer.fit`` on ImageClassifier + Cifar100DataModule, callbacks off."""
    model = ImageClassifier(
        "resnet34",
        cifar_stem=True,
        channels_last=channels_last,
        label_smoothing=0.1,
        lr=0.1,
        scheduler="none",
    )
    timer = _Throughput(args.warmup)
    trainer = L.Trainer(
        accelerator=device.type,
        devices=1,
        precision=precision,
        max_steps=args.warmup + args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[timer],
    )
    trainer.fit(model, datamodule=dm)
    return timer.seen / (timer.end - timer.start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data_dir", type=Path, default=None, help="folder with cifar-100-python/ (else synthetic)"
    )
    parser.add_argument("--train_per_class", type=int, default=20, help="synthetic images per class")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_workers", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on the CPU")
    parser.add_argument("--gpu_variants", action="store_true", help="also bf16-mixed and channels_last (GPU)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and args.gpu_variants:
        print("no GPU: --gpu_variants ignored")
    with tempfile.TemporaryDirectory() as tmp:
        if args.data_dir is not None and (args.data_dir / "cifar-100-python").is_dir():
            data_dir, verify, source = args.data_dir, True, f"CIFAR-100 from {args.data_dir}"
        else:
            data_dir, verify = write_cifar100(tmp, train_per_class=args.train_per_class), False
            source = f"synthetic CIFAR-100 layout, {args.train_per_class * 100} training images"
        dm = _data(args, data_dir, verify)
        needed = (args.warmup + args.steps) * args.batch_size
        print(
            f"device={device} data={source} batch={args.batch_size} steps={args.steps} (+{args.warmup} warm-up) "
            f"threads={torch.get_num_threads()} (the loaders cycle when {needed} > {len(dm.dataset('train'))})"
        )
        variants = [("32-true", False)]
        if device.type == "cuda" and args.gpu_variants:
            variants += [("bf16-mixed", False), ("bf16-mixed", True)]
        for precision, channels_last in variants:
            plain, lightning = [], []
            for _ in range(args.repeats):
                L.seed_everything(0, verbose=False)
                plain.append(plain_loop(args, dm, device, precision, channels_last))
                L.seed_everything(0, verbose=False)
                lightning.append(lightning_loop(args, dm, device, precision, channels_last))
            p, lt = statistics.median(plain), statistics.median(lightning)
            overhead = (p - lt) / p * 100
            print(
                f"{precision:>10} channels_last={channels_last!s:5}  plain {p:8.1f} img/s  lightning {lt:8.1f} img/s"
                f"  overhead {overhead:+.1f}%  (runs: plain {[round(x, 1) for x in plain]}, "
                f"lightning {[round(x, 1) for x in lightning]})"
            )


if __name__ == "__main__":
    main()
