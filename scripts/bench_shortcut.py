"""Measure the shortcut alarm's score on runs with and without a shortcut (docs/benchmarks.md, "Shortcut alarm").

Each case trains once (one seed; the demo's model and data for the shapes cases) and records, after every
validation, the shortcut test on the alarm's validation sample (48 images): score, share, transplant follow
rates, occlusion drops, seconds, and the score of four designs of the shared box side by side (``VARIANTS``:
peak grid, window and padding in cells; the shipped design is g16w2p2). Results are appended as JSON lines to
``--out``; ``--summary`` prints per run the chosen design's score per epoch, then both groups' distributions
(shortcut runs: max over epochs; clean runs: max over all epochs) for every design. The first finding of a
shortcut run is saved as it prints (``<case>_<seed>_<corner>_p<p>.txt``) with its picture (``.png``).

    PYTHONPATH=. python scripts/bench_shortcut.py --case clean --seed 0           # 6 epochs
    PYTHONPATH=. python scripts/bench_shortcut.py --case spurious --seed 0 --stop-after 1
    PYTHONPATH=. python scripts/bench_shortcut.py --case spurious --corner bottom_right --stop-after 2
    PYTHONPATH=. python scripts/bench_shortcut.py --case spurious --cue-probability 0.8 --stop-after 2
    PYTHONPATH=. python scripts/bench_shortcut.py --case leaf --epochs 6          # plant recipe, 128 px
    PYTHONPATH=. python scripts/bench_shortcut.py --case leaf --leaf-model small --leaf-size 64
    PYTHONPATH=. python scripts/bench_shortcut.py --case leaf_stamp --leaf-model small --leaf-size 64 \
        --corner bottom_left
    PYTHONPATH=. python scripts/bench_shortcut.py --summary --threshold 0.15

``--stop-after N`` ends a shortcut run after N epochs (the schedule stays the 6-epoch recipe's): the alarm
fires at the first validation there, so the remaining epochs only cost CPU time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import Dataset

from lit_explain.data import PlantDataModule, ShapesDataModule
from lit_explain.data.shapes import CUE_COLOURS
from lit_explain.findings.shortcut import (
    DEFAULT_THRESHOLD,
    predicted_maps,
    region_picture,
    shortcut_message,
    shortcut_sample,
    shortcut_test,
)
from lit_explain.models import ImageClassifier
from lit_explain.render import save_png
from lit_explain.render.pages import display_images

SHORTCUT_CASES = ("spurious", "leaf_stamp_small64", "leaf_stamp_recipe128")
VARIANTS = {
    "g8w2p.5": (8, 2, 0.5),
    "g16w2p.5": (16, 2, 0.5),
    "g16w2p1": (16, 2, 1.0),
    "g16w2p2": (16, 2, 2.0),
}


class StampedImages(Dataset):
    """A split of image samples with a square stamp pasted in a corner of the (normalised) input.

    ``colour_of(label, index)`` picks the stamp's RGB colour (0-255): the label's colour in training, a random
    one in validation. Pasted after the transforms, so the stamp stays in the corner under random crops.
    """

    def __init__(self, base: Dataset, corner: str, colour_of, mean, std, fraction: float = 1 / 8) -> None:
        self.base, self.corner, self.colour_of, self.fraction = base, corner, colour_of, fraction
        self.mean, self.std = torch.tensor(mean).view(3, 1), torch.tensor(std).view(3, 1)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = dict(self.base[index])
        image = sample["image"].clone()
        size = image.shape[-1]
        side = max(4, round(size * self.fraction))
        y0 = 1 if self.corner.startswith("top") else size - side - 1
        x0 = 1 if self.corner.endswith("left") else size - side - 1
        colour = torch.tensor(self.colour_of(sample["label"], index), dtype=torch.float32).view(3, 1) / 255
        image[:, y0 : y0 + side, x0 : x0 + side] = ((colour - self.mean) / self.std).view(3, 1, 1)
        sample["image"] = image
        return sample


class StampedPlants(PlantDataModule):
    """The leaf photos with a class-coloured stamp in training images and a random-colour one elsewhere."""

    def __init__(self, *args: Any, corner: str = "bottom_left", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.corner = corner

    def _build_split(self, split: str) -> Dataset:
        base = super()._build_split(split)
        if split == "train":
            return StampedImages(base, self.corner, lambda label, i: CUE_COLOURS[label], self.mean, self.std)
        colours = np.random.default_rng(1234).integers(0, len(self.class_names), size=len(base))
        return StampedImages(base, self.corner, lambda label, i: CUE_COLOURS[colours[i]], self.mean, self.std)


class Recorder(L.Callback):
    """After every (non-sanity) validation: the shortcut test on the alarm's sample, with its seconds."""

    def __init__(
        self, case: dict[str, Any], out: Path, sample_size: int, stop_after: int | None = None
    ) -> None:
        self.case, self.out, self.sample_size, self.stop_after = case, out, sample_size, stop_after
        self.fit_start = 0.0
        self.saved = False

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fit_start = time.perf_counter()
        self.images, self.labels = shortcut_sample(trainer.datamodule, self.sample_size)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        start = time.perf_counter()
        images = self.images.to(pl_module.device)
        maps, logits = predicted_maps(pl_module.net, images, pl_module.default_explain_layers)
        preds = logits.argmax(1)
        t_maps = time.perf_counter() - start
        evidence = shortcut_test(pl_module.net, images, maps, preds, occlusion=False)
        t_test = time.perf_counter() - start
        full = shortcut_test(pl_module.net, images, maps, preds, occlusion=True)
        # Candidate designs of the shared box (grid cells, window in cells, padding in cells), measured at once.
        variants = {}
        for name, (grid, window, pad) in VARIANTS.items():
            v = shortcut_test(
                pl_module.net, images, maps, preds, occlusion=False, grid=grid, window=window, pad=pad
            )
            variants[name] = {
                k: getattr(v, k) for k in ("score", "share", "classes", "follow", "control_follow")
            }
            variants[name]["region"] = v.region
        row = {
            **self.case,
            "epoch": trainer.current_epoch,
            "val_acc": float(trainer.callback_metrics.get("val/acc", float("nan"))),
            "sample_acc": float((preds.cpu() == self.labels).float().mean()),
            "seconds_maps": round(t_maps, 3),
            "seconds_alarm": round(t_test, 3),
            "seconds_since_fit_start": round(start - self.fit_start, 1),
            **full.as_dict(),
            "variants": variants,
        }
        assert abs(full.score - evidence.score) < 1e-6
        if full.fires(DEFAULT_THRESHOLD) and not self.saved:
            self.saved = True  # the first finding, as the alarm prints it, and its picture
            stem = str(self.out.parent / "{case}_{seed}_{corner}_p{cue_probability}".format(**self.case))
            Path(stem + ".txt").write_text(shortcut_message(full) + "\n")
            names = trainer.datamodule.class_names
            shown = slice(0, 8)
            picture = region_picture(
                display_images(self.images[shown], pl_module.hparams.mean, pl_module.hparams.std),
                maps[shown].cpu(),
                full.region,
                [f"pred: {names[p]}" for p in preds[shown].tolist()],
            )
            save_png(stem + ".png", picture, overwrite=True)
        print(json.dumps(row), flush=True)
        with self.out.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        if self.stop_after is not None and trainer.current_epoch + 1 >= self.stop_after:
            trainer.should_stop = True  # the schedule stays the full recipe's; only the remaining epochs go


def build(args: argparse.Namespace) -> tuple[L.LightningDataModule, ImageClassifier, int]:
    if args.case in ("spurious", "clean"):
        spurious = args.case == "spurious"
        dm = ShapesDataModule(
            image_size=64,
            train_size=5000,
            val_size=500,
            test_size=1000,
            seed=0,
            spurious_cue=spurious,
            cue_probability=args.cue_probability,
            eval_cue="random" if spurious else "none",
            corner=args.corner,
            batch_size=32,
        )
        model = ImageClassifier(
            "timm:resnet10t_half", optimizer="adamw", lr=0.005, weight_decay=0.05, scheduler="onecycle"
        )
        return dm, model, args.epochs or 6
    kwargs = dict(image_size=args.leaf_size, batch_size=32, num_workers=0, seed=0)
    if args.case == "leaf":
        dm = PlantDataModule(str(args.leaf_root), **kwargs)
    else:
        dm = StampedPlants(str(args.leaf_root), corner=args.corner, **kwargs)
    if args.leaf_model == "small":
        # The real-photo test's settings (tests/callbacks/test_shortcut_alarm.py): ResNet-10-T at half width.
        model = ImageClassifier("timm:resnet10t_half", optimizer="adamw", lr=5e-3, scheduler="none")
        return dm, model, args.epochs or 6
    # The plant recipe's optimisation, from scratch (model.weights null: nothing frozen).
    model = ImageClassifier(
        "resnet18",
        weights=None,
        optimizer="sgd",
        lr=0.01,
        momentum=0.9,
        weight_decay=1e-4,
        scheduler="cosine",
        label_smoothing=0.1,
    )
    return dm, model, args.epochs or 6


def _describe(region: list[int], size: list[int]) -> str:
    from lit_explain.findings.shortcut import describe_region

    return describe_region(region, (size[0], size[1]))


def summary(path: Path, threshold: float, design: str) -> None:
    """Per run: the chosen design's score per epoch; then both groups' distributions, for every design."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    runs: dict[tuple, list[dict]] = {}
    for row in rows:
        if "variants" not in row:
            continue  # recorded before the designs were measured side by side
        key = (row["case"], row["seed"], row["corner"], row["cue_probability"])
        runs.setdefault(key, []).append(row)
    print(f"design {design}, threshold {threshold}")
    print(
        f"{'case':<19} {'seed':>4} {'corner':<13} {'p':>4}  max score  first>=thr  where (best epoch)  per epoch"
    )
    for key, epochs in sorted(runs.items()):
        scores = [e["variants"][design]["score"] for e in epochs]
        best = max(epochs, key=lambda e: e["variants"][design]["score"])
        first = next((e["epoch"] for e, s in zip(epochs, scores, strict=True) if s >= threshold), None)
        where = _describe(best["variants"][design]["region"], best["image_size"])
        print(
            f"{key[0]:<19} {key[1]:>4} {key[2]:<13} {key[3]:>4}  {max(scores):9.3f}  {first!s:>9}  "
            f"{where:<19} {' '.join(f'{s:.2f}' for s in scores)}"
        )
    for name in VARIANTS:
        positives = [
            max(e["variants"][name]["score"] for e in ep) for k, ep in runs.items() if k[0] in SHORTCUT_CASES
        ]
        negatives = [
            max(e["variants"][name]["score"] for e in ep)
            for k, ep in runs.items()
            if k[0] not in SHORTCUT_CASES
        ]
        if positives and negatives:
            print(
                f"{name:<9} shortcut runs (max over epochs): {' '.join(f'{v:.2f}' for v in sorted(positives))}; "
                f"clean runs (max over all epochs): {' '.join(f'{v:.3f}' for v in sorted(negatives))}"
            )
    for case in ("clean", "spurious", "leaf"):
        secs = [
            (e["seconds_maps"], e["seconds_alarm"]) for ep in runs.values() for e in ep if e["case"] == case
        ]
        if secs:
            maps, alarm = zip(*secs, strict=True)
            print(
                f"{case}: seconds per epoch for the maps {np.median(maps):.2f} (median), maps + transplant test "
                f"{np.median(alarm):.2f} (median), {max(alarm):.2f} (max)"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--case", choices=("spurious", "clean", "leaf", "leaf_stamp"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--corner", default="top_left")
    parser.add_argument("--cue-probability", type=float, default=1.0)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument(
        "--leaf-root", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/leaf-shapes"
    )
    parser.add_argument("--leaf-size", type=int, default=128)
    parser.add_argument("--leaf-model", choices=("recipe", "small"), default="recipe")
    parser.add_argument("--sample-size", type=int, default=48)
    parser.add_argument("--stop-after", type=int, default=None, help="stop after this many epochs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("lightning_logs/bench_shortcut.jsonl"))
    parser.add_argument("--summary", action="store_true")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    parser.add_argument(
        "--design", default="g16w2p2", choices=list(VARIANTS), help="the design --summary ranks"
    )
    args = parser.parse_args()
    if args.summary:
        summary(args.out, args.threshold, args.design)
        return
    torch.set_num_threads(args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    L.seed_everything(args.seed, verbose=False)
    dm, model, epochs = build(args)
    case = {
        "case": args.case,
        "seed": args.seed,
        "corner": args.corner,
        "cue_probability": args.cue_probability,
    }
    if args.case.startswith("leaf"):
        case["case"] += f"_{args.leaf_model}{args.leaf_size}"
    trainer = L.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[Recorder(case, args.out, args.sample_size, args.stop_after)],
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    print(f"fit took {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
