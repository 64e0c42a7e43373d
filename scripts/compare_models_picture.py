"""Two (or more) shapes checkpoints side by side: the same validation images, each model's map, its score.

For the README's "ResNet vs ViT" picture. Each ``--model`` is ``CHECKPOINT[:METHOD]`` (default method:
gradcam at the model's default explanation layers; ``rollout`` / ``gradient_rollout`` for ViTs). The
pointing game of each is measured on the first ``--n`` validation images (true-class maps, Zhang et al.'s
tolerance scaled to the image: 4 px at 64 px), the same protocol as scripts/demo_seeds.py, and printed
with the picture's column titles.

    python scripts/compare_models_picture.py --model resnet.ckpt --model vit.ckpt:gradient_rollout \\
        --output docs/images/resnet_vs_vit.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from lit_explain.data import ShapesDataModule
from lit_explain.explain import METHODS, attention_rollout, cam, is_rollout_method, pointing_game
from lit_explain.models import classifier_from_checkpoint
from lit_explain.render import denormalize, overlay, panel_grid, save_png
from lit_explain.render.pages import METHOD_LABELS

PAPER_TOLERANCE_PX, PAPER_IMAGE_PX = 15, 224


def explain(model, images: torch.Tensor, labels: torch.Tensor, method: str) -> torch.Tensor:
    """``[B, 1, H, W]`` maps of the true class, in [0, 1]."""
    if is_rollout_method(method):
        return attention_rollout(model.net, images, targets=labels, method=method).maps
    layers = model.default_explain_layers
    return cam(
        model.net, images, layer=layers if len(layers) > 1 else layers[0], targets=labels, method=method
    ).maps


def parse_spec(spec: str) -> tuple[str, str]:
    """``CHECKPOINT[:METHOD]`` -> (checkpoint, method); a colon not followed by a method is part of the path."""
    head, sep, tail = spec.rpartition(":")
    return (head, tail) if sep and tail in METHODS else (spec, "gradcam")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", action="append", required=True, help="CHECKPOINT[:METHOD], repeatable")
    parser.add_argument(
        "--output", type=Path, required=True, help="PNG path (never overwritten unless --overwrite)"
    )
    parser.add_argument("--n", type=int, default=200, help="validation images scored")
    parser.add_argument("--rows", type=int, default=6, help="images shown (one per class first)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    if args.output.exists() and not args.overwrite:
        parser.error(f"{args.output} already exists; pass --overwrite to replace it")

    specs = [parse_spec(s) for s in args.model]
    models = [(classifier_from_checkpoint(path).eval(), method) for path, method in specs]
    size = int(models[0][0].hparams["input_size"][0])
    dm = ShapesDataModule(image_size=size, val_size=max(args.n, 500))
    val = dm.dataset("val")
    items = [val[i] for i in range(args.n)]
    images = torch.stack([it["image"] for it in items])
    labels = torch.tensor([it["label"] for it in items])
    masks = torch.stack([torch.as_tensor(it["mask"]) for it in items]).bool()
    tolerance = round(PAPER_TOLERANCE_PX * size / PAPER_IMAGE_PX)
    shown = dm.probe_indices(per_class=1, max_total=args.rows)
    shown = [i for i in shown if i < args.n][: args.rows]

    titles, columns = ["image"], []
    for (model, method), (path, _) in zip(models, specs, strict=True):
        maps = explain(model, images, labels, method)
        with torch.no_grad():
            acc = float((model.net(images).argmax(1) == labels).float().mean())
        game = float(pointing_game(maps, masks, tolerance=tolerance, reduction="mean"))
        name = model.hparams["backbone"].removeprefix("timm:")
        print(f"{path}: {name} {method}: pointing game {game:.3f} on {args.n} val images, accuracy {acc:.3f}")
        arch = name.split("_")[0]  # vit_tiny_patch16_224 -> vit; resnet18 stays
        titles.append(f"{arch} {METHOD_LABELS.get(method, method)}: {game:.2f}")
        columns.append(maps[shown])
    pictures = denormalize(images[shown], models[0][0].hparams["mean"], models[0][0].hparams["std"])
    rows = [
        [pictures[r]] + [overlay(pictures[r : r + 1], col[r : r + 1])[0] for col in columns]
        for r in range(len(shown))
    ]
    names = models[0][0].class_names
    captions = [f"idx {i}: {names[int(labels[i])]}" for i in shown]
    grid = panel_grid(rows, captions, column_titles=titles, min_cell=192, font_size=14)
    save_png(args.output, grid, overwrite=args.overwrite)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
