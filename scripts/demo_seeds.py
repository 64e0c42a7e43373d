"""Train the shapes demo for several seeds and score where its maps point.

Each seed runs the real CLI (``python -m lit_explain fit [--config ...] --seed_everything S``) in a fresh
temporary folder, reads the accuracy it prints, then scores the last checkpoint's Grad-CAM maps on the
first 200 validation images against the object masks (pointing game with Zhang et al.'s tolerance scaled
to the image size; true-class targets), once per ``--layers`` candidate. The numbers in
docs/benchmarks.md ("Demo over seeds") come from this script.

    python scripts/demo_seeds.py --seeds 0 1 2 3 4
    python scripts/demo_seeds.py --seeds 0 --layers layer2,layer3 layer1,layer2 -- --trainer.max_epochs=8
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from lit_explain.data import ShapesDataModule
from lit_explain.explain import cam, pointing_game
from lit_explain.models import classifier_from_checkpoint

PAPER_TOLERANCE_PX, PAPER_IMAGE_PX = 15, 224


def fit(seed: int, workdir: Path, extra: list[str]) -> tuple[float, float, Path]:
    """Run the demo fit; return (printed accuracy, wall seconds, checkpoint path)."""
    logs = workdir / "lightning_logs"
    cmd = [sys.executable, "-m", "lit_explain", "fit", "--trainer.enable_progress_bar=false"]
    cmd += [f"--seed_everything={seed}", f"--trainer.logger.init_args.save_dir={logs}", *extra]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"fit failed for seed {seed}:\n{done.stderr[-3000:]}")
    accuracy = float(re.search(r"final validation accuracy: ([0-9.]+)", done.stdout).group(1))
    ckpt = sorted(logs.glob("*/version_*/checkpoints/last.ckpt"))[-1]
    return accuracy, seconds, ckpt


def score(ckpt: Path, layers: list[list[str]], n: int, method: str) -> dict[str, float]:
    """Pointing game of each layer set on the first ``n`` validation images (true-class maps)."""
    model = classifier_from_checkpoint(ckpt).eval()
    size = int(model.hparams["input_size"][0])
    dataset = ShapesDataModule(image_size=size, val_size=max(n, 1)).dataset("val")
    items = [dataset[i] for i in range(n)]
    images = torch.stack([item["image"] for item in items])
    labels = torch.tensor([item["label"] for item in items])
    masks = torch.stack([torch.as_tensor(item["mask"]) for item in items]).bool()
    tolerance = round(PAPER_TOLERANCE_PX * size / PAPER_IMAGE_PX)
    out = {}
    for layer in layers:
        maps = cam(model.net, images, layer=layer, targets=labels, method=method).maps
        out["+".join(layer)] = float(pointing_game(maps, masks, tolerance=tolerance, reduction="mean"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--layers", nargs="+", default=["layer2,layer3"], help="comma-separated layer sets")
    parser.add_argument("--method", default="gradcam")
    parser.add_argument("--n", type=int, default=200, help="validation images to score")
    parser.add_argument("--json", type=Path, help="write the results here too")
    parser.add_argument("extra", nargs="*", help="further fit arguments (after --)")
    args = parser.parse_args()
    layers = [s.split(",") for s in args.layers]
    rows = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            accuracy, seconds, ckpt = fit(seed, Path(tmp), args.extra)
            games = score(ckpt, layers, args.n, args.method)
        rows.append({"seed": seed, "accuracy": accuracy, "fit_s": round(seconds, 1), "pointing_game": games})
        print(json.dumps(rows[-1]), flush=True)
    for name in rows[0]["pointing_game"]:
        values = [r["pointing_game"][name] for r in rows]
        print(f"{name}: min {min(values):.3f} max {max(values):.3f} mean {statistics.mean(values):.3f}")
    accs = [r["accuracy"] for r in rows]
    print(f"accuracy: min {min(accs):.4f} max {max(accs):.4f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
