"""Benchmark: the full audit vs bare inference over the same images (CIFAR-size, ResNet-34 with the CIFAR stem).

The acceptance bar: audit time <= 1.3 x bare inference time + 30 s. The reference CIFAR-100 notebook's
analysis took 10-15 min on a GPU and 30-45 min on a CPU for 10,000 test images.

    python scripts/bench_audit.py                    # 10,000 images, 100 classes
    python scripts/bench_audit.py --images 2000      # a quicker check on a loaded machine
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from lit_explain.audit import AuditOptions, run_audit
from lit_explain.data.base import ExplainableDataModule
from lit_explain.explain import eval_mode
from lit_explain.models import ImageClassifier

NOTEBOOK_CPU_S = (30 * 60, 45 * 60)
NOTEBOOK_GPU_S = (10 * 60, 15 * 60)


class SyntheticImages(Dataset):
    """CIFAR-size samples drawn on the fly from a seed: class-tinted noise (nothing held in memory)."""

    def __init__(self, n: int, num_classes: int, size: int = 32, seed: int = 0) -> None:
        self.n, self.num_classes, self.size, self.seed = n, num_classes, size, seed
        g = torch.Generator().manual_seed(seed)
        self.tints = torch.randn(num_classes, 3, 1, 1, generator=g)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        label = int(torch.randint(self.num_classes, (1,), generator=g))
        image = torch.randn(3, self.size, self.size, generator=g) * 0.8 + self.tints[label]
        return {"image": image, "label": label, "index": i}


class SyntheticData(ExplainableDataModule):
    def __init__(self, n: int, num_classes: int, batch_size: int = 256) -> None:
        super().__init__(batch_size=batch_size)
        self.class_names = [f"class_{i:02d}" for i in range(num_classes)]
        self.mean, self.std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
        self.input_size, self.in_channels = (32, 32), 3
        self.n = n

    def _build_split(self, split: str) -> Dataset:
        return SyntheticImages(self.n, len(self.class_names), seed={"train": 0, "val": 1, "test": 2}[split])

    def split_labels(self, split: str) -> torch.Tensor:
        data = self.dataset(split)
        return torch.tensor([data[i]["label"] for i in range(len(data))])


def bare_inference(net: torch.nn.Module, dataset: Dataset, batch_size: int) -> float:
    start = time.perf_counter()
    with eval_mode(net), torch.inference_mode():
        for batch in DataLoader(dataset, batch_size=batch_size):
            net(batch["image"]).argmax(1)
    return time.perf_counter() - start


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> float:
    """Reset the peak resident set (Linux) and return the current one in MiB."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    return _status_mib("VmRSS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = ImageClassifier("resnet34", cifar_stem=True, num_classes=args.classes).eval()
    dm = SyntheticData(args.images, args.classes, args.batch_size)
    dataset = dm.dataset("test")
    bare_inference(
        model.net, torch.utils.data.Subset(dataset, range(min(512, args.images))), args.batch_size
    )  # warm-up
    bare = bare_inference(model.net, dataset, args.batch_size)
    out = Path(tempfile.mkdtemp(prefix="bench_audit_")) / "report"
    try:
        rss_before = reset_peak_rss()
        start = time.perf_counter()
        report = run_audit(
            model, dm, out, AuditOptions(split="test", batch_size=args.batch_size, progress=True)
        )
        audit = time.perf_counter() - start
        peak_extra = _status_mib("VmHWM") - rss_before
        n_files = sum(1 for _ in out.rglob("*") if _.is_file())
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)
    bar = 1.3 * bare + 30
    print(
        f"images: {args.images} ({args.classes} classes, 32x32), ResNet-34 CIFAR stem, {args.threads} threads, CPU"
    )
    print(f"bare inference:   {bare:8.1f} s")
    print(f"full audit:       {audit:8.1f} s  ({audit / bare:.2f}x inference; {n_files} files)")
    print(f"audit peak memory over its start: {peak_extra:.0f} MiB (resident set, model and data loaded)")
    print("  phases: " + ", ".join(f"{k} {v:.1f}" for k, v in report["timing"].items()))
    print(f"bar (1.3x + 30 s): {bar:7.1f} s  -> {'PASS' if audit <= bar else 'FAIL'}")
    print(
        f"reference notebook: {NOTEBOOK_CPU_S[0] // 60}-{NOTEBOOK_CPU_S[1] // 60} min on a CPU, "
        f"{NOTEBOOK_GPU_S[0] // 60}-{NOTEBOOK_GPU_S[1] // 60} min on a GPU (10,000 images) -> "
        f"{NOTEBOOK_CPU_S[0] / audit:.0f}-{NOTEBOOK_CPU_S[1] / audit:.0f}x faster than its CPU figure"
    )


if __name__ == "__main__":
    main()
