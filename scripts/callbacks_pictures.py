"""Render the ProbeHeatmaps grid (first page) of a trained shapes checkpoint to a PNG; print attention scores.

The same functions the callback uses (explain, render), so the picture is what TensorBoard shows at
the checkpoint's epoch. Used for the README pictures:

    python scripts/callbacks_pictures.py CKPT docs/images/callbacks_probes_demo.png
    python scripts/callbacks_pictures.py CKPT docs/images/callbacks_probes_spurious.png --spurious
"""

from __future__ import annotations

import argparse

import torch

from lit_explain.callbacks import ProbeHeatmaps
from lit_explain.callbacks.captions import prediction_line
from lit_explain.data import ShapesDataModule
from lit_explain.explain import explain_predictions
from lit_explain.explain.metrics import energy_pointing_game, pointing_game
from lit_explain.models.loading import classifier_from_checkpoint
from lit_explain.render import save_png
from lit_explain.render.pages import display_images, render_pages


def corner_mask(masks: torch.Tensor, side: int) -> torch.Tensor:
    """The top-left ``side + 2`` pixels square: where the spurious patch sits (with its 1-pixel margin)."""
    out = torch.zeros_like(masks, dtype=torch.bool)
    out[:, : side + 2, : side + 2] = True
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("output", help="PNG path (never overwritten unless --overwrite)")
    parser.add_argument(
        "--spurious", action="store_true", help="validation images with a random-colour corner patch"
    )
    parser.add_argument(
        "--layer",
        nargs="+",
        default=None,
        help="one layer, or several to fuse (default: the model's, as the demo)",
    )
    parser.add_argument("--method", default="layercam", help="CAM method (default: the demo recipe's)")
    parser.add_argument("--per-class", type=int, default=1)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)

    model = classifier_from_checkpoint(args.checkpoint).eval()
    layers = args.layer or model.default_explain_layers
    dm = ShapesDataModule(
        val_size=500, spurious_cue=args.spurious, eval_cue="random" if args.spurious else "none"
    )
    batch = dm.samples(dm.probe_indices(per_class=args.per_class, max_total=32))
    explained = explain_predictions(
        model.net,
        batch["image"],
        batch["label"],
        layer=layers[0] if len(layers) == 1 else layers,
        method=args.method,
    )
    names = model.class_names
    conf = explained.probs.gather(1, explained.preds[:, None])[:, 0]
    indices = batch["index"].tolist()
    captions = [
        f"idx {i}\n{prediction_line(names, t, p, c)}"
        for i, t, p, c in zip(
            indices, batch["label"].tolist(), explained.preds.tolist(), conf.tolist(), strict=True
        )
    ]
    pages = render_pages(
        display_images(batch["image"], model.hparams.mean, model.hparams.std),
        explained.pred_maps,
        explained.true_maps,
        explained.guided,
        captions,
        explained.preds == batch["label"],
        method=args.method,
    )
    # The README shows the first page, as TensorBoard shows explain/probes/page_0.
    grid = pages[0]
    save_png(args.output, grid, overwrite=args.overwrite)
    masks = batch["mask"].bool()
    maps = explained.pred_maps
    corner = corner_mask(masks, max(4, masks.shape[-1] // 8))
    print(
        f"probes: {len(captions)}  accuracy: {float((explained.preds == batch['label']).float().mean()):.3f}"
    )
    tolerance = ProbeHeatmaps().tolerance_px(masks.shape[-2:])
    print(f"pointing game (object, strict): {float(pointing_game(maps, masks, reduction='mean')):.3f}")
    hits = float(pointing_game(maps, masks, tolerance=tolerance, reduction="mean"))
    print(f"pointing game (object, {tolerance} px tolerance as the callback): {hits:.3f}")
    print(f"energy in object mask:  {float(energy_pointing_game(maps, masks, reduction='mean')):.3f}")
    print(f"pointing game (corner): {float(pointing_game(maps, corner, reduction='mean')):.3f}")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
