"""The shapes recipes end to end, through the real CLI, as a user runs them.

* ``python -m lit_explain fit`` (no config: the packaged demo) reaches >= 90% validation accuracy, and its
  maps (LayerCAM on layer1 + layer2, the recipe's) sit on the object: pointing game with Zhang et al.'s
  tolerance scaled to 64 px images. Thresholds sit below the minimum over 5 seeds (docs/benchmarks.md,
  "Demo over seeds", from scripts/demo_seeds.py) by the margin stated at each assert.
* The spurious-cue recipe learns the corner patch, and the same callback shows it: the maps leave the object
  and their peaks land on the patch.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_explain.data import ShapesDataModule
from lit_explain.explain import cam, pointing_game
from lit_explain.models import classifier_from_checkpoint

pytestmark = pytest.mark.slow

METHOD = "layercam"  # the demo recipe's ProbeHeatmaps / WorstSamples method


def _fit(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "lit_explain", "fit", "--trainer.enable_progress_bar=false", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


def _scalars(run_dir: Path) -> dict[str, list[float]]:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _val_batch(n: int, **data_kwargs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dataset = ShapesDataModule(**data_kwargs).dataset("val")
    items = [dataset[i] for i in range(n)]
    images = torch.stack([item["image"] for item in items])
    labels = torch.tensor([item["label"] for item in items])
    masks = torch.stack([torch.as_tensor(item["mask"]) for item in items]).bool()
    return images, labels, masks


def test_default_demo_learns_and_looks_at_the_object(tmp_path: Path) -> None:
    stdout = _fit(tmp_path)
    accuracy = float(re.search(r"final validation accuracy: ([0-9.]+)", stdout).group(1))
    # Measured over seeds 0-4: 0.980-0.996. 0.90 sits 0.08 under that minimum.
    assert accuracy >= 0.90, stdout[-2000:]

    run = tmp_path / "lightning_logs" / "shapes_demo" / "version_0"
    scalars = _scalars(run)
    epochs = len(scalars["val/acc"])
    assert epochs == 6
    # The probe maps of the last epoch point at the object.
    assert len(scalars["explain/pointing_game"]) == epochs
    # Measured over seeds 0-4 (48 probes, LayerCAM): 0.979-1.000. 0.90 sits 0.079 under that minimum.
    assert scalars["explain/pointing_game"][-1] >= 0.90, scalars["explain/pointing_game"]
    # Attention settles as the model converges: the drift between the last two epochs is small.
    assert scalars["explain/drift"][-1] < scalars["explain/drift"][0]

    # The same holds on a larger, independent sample than the 48 probes.
    model = classifier_from_checkpoint(run / "checkpoints" / "last.ckpt").eval()
    images, labels, masks = _val_batch(200)
    assert model.default_explain_layers == ["layer1", "layer2"]
    maps = cam(model.net, images, layer=model.default_explain_layers, targets=labels, method=METHOD).maps
    hit_rate = float(pointing_game(maps, masks, tolerance=4, reduction="mean"))
    # Measured over seeds 0-4 (200 images): 0.990-1.000 (Grad-CAM on the same layers: 0.755-0.860).
    # 0.90 sits 0.09 under that minimum.
    assert hit_rate >= 0.90, hit_rate


def test_two_seeded_demo_fits_print_the_same_accuracy_and_write_the_same_weights(tmp_path: Path) -> None:
    # The demo recipe, shortened (2 epochs, 320 training images): the same seed on the same machine must
    # give bit-identical weights and the same printed accuracy, so `make demo` reproduces itself.
    short = ["--trainer.max_epochs=2", "--data.train_size=320", "--data.val_size=96", "--data.test_size=32"]
    runs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        stdout = _fit(tmp_path / name, *short)
        accuracy = re.search(r"final validation accuracy: ([0-9.]+)", stdout).group(1)
        (ckpt,) = (tmp_path / name).glob("lightning_logs/shapes_demo/version_0/checkpoints/last.ckpt")
        state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
        runs.append((accuracy, state))
    (acc_a, state_a), (acc_b, state_b) = runs
    assert acc_a == acc_b
    assert state_a.keys() == state_b.keys()
    different = [k for k in state_a if not torch.equal(state_a[k], state_b[k])]
    assert not different, different[:5]


def test_spurious_recipe_maps_move_to_the_corner_patch(tmp_path: Path) -> None:
    config = Path(__file__).resolve().parents[1] / "lit_explain" / "configs" / "shapes_spurious.yaml"
    _fit(tmp_path, "--config", str(config), "--trainer.max_epochs=3", "--data.train_size=1500")

    run = tmp_path / "lightning_logs" / "shapes_spurious" / "version_0"
    scalars = _scalars(run)
    # Validation puts a random-colour patch in the corner, so a model that learned the cue is near chance
    # and the callback's pointing game on the object collapses.
    assert scalars["val/acc"][-1] < 0.5, scalars["val/acc"]
    assert max(scalars["explain/pointing_game"]) <= 0.3, scalars["explain/pointing_game"]

    model = classifier_from_checkpoint(run / "checkpoints" / "last.ckpt").eval()
    images, _, masks = _val_batch(64, spurious_cue=True, eval_cue="random")
    maps = cam(model.net, images, layer=model.default_explain_layers, method=METHOD).maps
    side = max(4, images.shape[-1] // 8)
    corner = torch.zeros_like(masks)
    corner[:, 1 : 1 + side, 1 : 1 + side] = True  # the patch's place (top-left, one pixel in)
    in_corner = float(pointing_game(maps, corner, tolerance=4, reduction="mean"))
    on_object = float(pointing_game(maps, masks, tolerance=4, reduction="mean"))
    assert in_corner >= 0.8 and on_object <= 0.3, (in_corner, on_object)
