"""Train the shapes demo for several seeds and score where its maps point.

Each seed runs the real CLI (``python -m lit_explain fit [--config ...] --seed_everything S``) in a fresh
folder, reads the accuracy it prints, then scores the last checkpoint's maps against the object masks, once
per ``--layers`` x ``--methods`` candidate:

* ``val200``: the first 200 validation images, true-class maps (the end-to-end test's measure);
* ``probes``: the 48 probes ProbeHeatmaps logs (8 per class), predicted-class maps (``explain/pointing_game``).

Pointing game with Zhang et al.'s tolerance scaled to the image (15 px at 224 px: 4 px at 64 px). The numbers
in docs/benchmarks.md ("Demo over seeds") come from this script.

    python scripts/demo_seeds.py --seeds 0 1 2 3 4
    python scripts/demo_seeds.py --seeds 0 --layers layer1,layer2 layer2,layer3 --methods layercam gradcam
    python scripts/demo_seeds.py --checkpoint 0=runs/s0/last.ckpt --checkpoint 1=runs/s1/last.ckpt
    python scripts/demo_seeds.py --seeds 0 -- --trainer.max_epochs=8      # further fit arguments after --
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
PROBES_PER_CLASS, MAX_PROBES = 8, 48  # the demo recipe's ProbeHeatmaps settings


def fit(seed: int, workdir: Path, extra: list[str]) -> tuple[float, float, Path]:
    """Run the demo fit; return (printed accuracy, wall seconds, checkpoint path)."""
    logs = workdir / "lightning_logs"
    cmd = [sys.executable, "-m", "lit_explain", "fit", "--trainer.enable_progress_bar=false"]
    cmd += [f"--seed_everything={seed}", f"--trainer.default_root_dir={logs}", *extra]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"fit failed for seed {seed}:\n{done.stderr[-3000:]}")
    accuracy = float(re.search(r"final validation accuracy: ([0-9.]+)", done.stdout).group(1))
    ckpt = sorted(logs.glob("*/version_*/checkpoints/last.ckpt"))[-1]
    return accuracy, seconds, ckpt


def _batch(dataset, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    items = [dataset[i] for i in indices]
    images = torch.stack([item["image"] for item in items])
    labels = torch.tensor([item["label"] for item in items])
    masks = torch.stack([torch.as_tensor(item["mask"]) for item in items]).bool()
    return images, labels, masks


def score(ckpt: Path, layers: list[list[str]], methods: list[str], n: int) -> dict[str, dict[str, float]]:
    """Pointing game of each layer set x method: on the first ``n`` validation images and on the probes."""
    model = classifier_from_checkpoint(ckpt).eval()
    size = int(model.hparams["input_size"][0])
    dm = ShapesDataModule(image_size=size, val_size=max(n, 500))
    dataset = dm.dataset("val")
    val = _batch(dataset, list(range(n)))
    probes = _batch(dataset, dm.probe_indices(per_class=PROBES_PER_CLASS, max_total=MAX_PROBES))
    tolerance = round(PAPER_TOLERANCE_PX * size / PAPER_IMAGE_PX)
    out: dict[str, dict[str, float]] = {}
    for layer in layers:
        for method in methods:
            row = {}
            for name, (images, _labels, masks), targets in (
                ("val200", val, val[1]),
                ("probes", probes, None),
            ):
                maps = cam(model.net, images, layer=layer, targets=targets, method=method).maps
                row[name] = round(float(pointing_game(maps, masks, tolerance=tolerance, reduction="mean")), 3)
            out[f"{method} {'+'.join(layer)}"] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3, 4])
    parser.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        help="SEED=PATH: score an existing run instead of fitting",
    )
    parser.add_argument("--layers", nargs="+", default=["layer1,layer2"], help="comma-separated layer sets")
    parser.add_argument("--methods", nargs="+", default=["layercam"])
    parser.add_argument("--n", type=int, default=200, help="validation images to score")
    parser.add_argument("--json", type=Path, help="write the results here too")
    parser.add_argument("extra", nargs="*", help="further fit arguments (after --)")
    args = parser.parse_args()
    layers = [s.split(",") for s in args.layers]
    rows = []
    given = dict(spec.split("=", 1) for spec in args.checkpoint)
    for seed in [int(s) for s in given] or args.seeds:
        if str(seed) in given:
            games = score(Path(given[str(seed)]), layers, args.methods, args.n)
            rows.append({"seed": seed, "pointing_game": games})
        else:
            with tempfile.TemporaryDirectory() as tmp:
                accuracy, seconds, ckpt = fit(seed, Path(tmp), args.extra)
                games = score(ckpt, layers, args.methods, args.n)
            rows.append(
                {"seed": seed, "accuracy": accuracy, "fit_s": round(seconds, 1), "pointing_game": games}
            )
        print(json.dumps(rows[-1]), flush=True)
    for name in rows[0]["pointing_game"]:
        for measure in ("val200", "probes"):
            values = [r["pointing_game"][name][measure] for r in rows]
            print(
                f"{name} {measure}: min {min(values):.3f} max {max(values):.3f} mean {statistics.mean(values):.3f}"
            )
    accs = [r["accuracy"] for r in rows if "accuracy" in r]
    if accs:
        print(f"accuracy: min {min(accs):.4f} max {max(accs):.4f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
