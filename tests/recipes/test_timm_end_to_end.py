"""timm backbones end to end (issue 12): `python -m lit_explain fit` on the shapes recipe with only the backbone
changed and the explanation callbacks on, then audit, explain, serve and export on the checkpoint."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from fastapi.testclient import TestClient
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_explain.audit.cli import main as audit_main
from lit_explain.inference import Explainer
from lit_explain.inference.cli import main as explain_main
from lit_explain.models import ImageClassifier, classifier_from_checkpoint
from lit_explain.models.export import main as export_main
from lit_explain.render.card import MAX_PAGE_PX
from lit_explain.render.pages import PAD
from lit_explain.serve import ServeSettings, create_app

REPO = Path(__file__).resolve().parents[2]
BACKBONES = {
    # patch 8 at 64 px: an 8x8 token grid, as fine as the demo ResNet's layer2 map.
    "vit": ("timm:vit_tiny_patch16_224", "{patch_size: 8}", "blocks.11.norm1"),
    "convnext": ("timm:convnext_atto", "null", "stages.3"),
}
EPOCHS, STEPS_PER_EPOCH = 2, 2  # --trainer.max_epochs / --trainer.limit_train_batches below
PROBES, WORST = 6, 4  # per_class=1 probe of each of the 6 classes; WorstSamples k=4


def _recipe_with_default_layers(tmp_path: Path) -> Path:
    """The shapes recipe, small, with the callbacks' layers left to the model (`layer: null`).

    The shipped recipe names ResNet layers (layer2/layer3) today; with `layer` unset the callbacks take
    ImageClassifier.default_explain_layers, which is what a recipe that changes only the backbone needs.
    """
    config = yaml.safe_load((REPO / "configs" / "shapes_demo.yaml").read_text())
    for callback in config["trainer"]["callbacks"]:
        args = callback.get("init_args") or {}
        if "layer" in args:
            args["layer"] = None
        if "max_probes" in args:
            args.update(per_class=1, max_probes=PROBES)
        if "k" in args and callback["class_path"].endswith("WorstSamples"):
            args["k"] = WORST
    path = tmp_path / "shapes_timm.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _fit(tmp_path: Path, backbone: str, kwargs: str) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "lit_explain",
        "fit",
        "--config",
        str(_recipe_with_default_layers(tmp_path)),
        f"--model.backbone={backbone}",
        f"--model.backbone_kwargs={kwargs}",
        "--data.init_args.train_size=64",
        "--data.init_args.val_size=32",
        "--data.init_args.test_size=32",
        "--data.init_args.batch_size=16",
        f"--trainer.max_epochs={EPOCHS}",
        f"--trainer.limit_train_batches={STEPS_PER_EPOCH}",
        "--trainer.limit_val_batches=2",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    run = subprocess.run(
        cmd, capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "2"}
    )
    assert run.returncode == 0, run.stderr[-4000:]
    checkpoints = sorted(tmp_path.glob("**/checkpoints/last.ckpt"))
    assert len(checkpoints) == 1, list(tmp_path.rglob("*"))
    return checkpoints[0]


def _check_logged_explanations(log_dir: Path) -> None:
    """Each epoch's explanation pages, scalars and table, read back from the run's TensorBoard file.

    A page holds rows of cells (64 px images, upscaled by whole factors to at least the recipe's min_cell):
    image | predicted | true class. ConvNeXt and ViT use GELU, so there is no Guided Grad-CAM column; after
    four training steps some rows are misclassified, so the true-class column is there.
    """
    acc = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    steps = [STEPS_PER_EPOCH * (e + 1) for e in range(EPOCHS)]
    images = acc.Tags()["images"]
    pictures = sorted(t for t in images if t.startswith("explain/"))
    # TrainingDynamics' cartography and suspects; ShortcutAlarm draws only when it fires (not on these shapes).
    assert [t for t in pictures if not t.startswith("explain/label_issues/")] == [
        "explain/probes/page_0",
        "explain/worst/page_0",
    ]
    assert {"explain/label_issues/cartography", "explain/label_issues/page_0"} <= set(pictures)
    assert {"val/confusion_matrix", "val/per_class_accuracy"} <= set(images)
    recipe = yaml.safe_load((REPO / "configs" / "shapes_demo.yaml").read_text())
    settings = [c.get("init_args") or {} for c in recipe["trainer"]["callbacks"]]
    (min_cell,) = {args["min_cell"] for args in settings if "min_cell" in args}  # probes' and worst's
    cell = 64 * math.ceil(min_cell / 64)
    width = 3 * cell + 4 * PAD
    heights = {}
    for tag in ("explain/probes/page_0", "explain/worst/page_0"):
        entries = acc.Images(tag)
        assert [e.step for e in entries] == steps, tag
        assert {e.width for e in entries} == {width}, tag
        (heights[tag],) = {e.height for e in entries}  # the same rows every epoch
        assert heights[tag] <= MAX_PAGE_PX, tag
    # Both pages share titles and colour bar: their difference is the two extra probe rows.
    row = (heights["explain/probes/page_0"] - heights["explain/worst/page_0"]) / (PROBES - WORST)
    assert cell < row < 2 * cell, heights
    assert heights["explain/worst/page_0"] > WORST * row, heights
    for tag in ("explain/pointing_game", "explain/energy_in_mask"):
        assert [e.step for e in acc.Scalars(tag)] == steps, tag
        assert all(0.0 <= e.value <= 1.0 for e in acc.Scalars(tag)), tag
    assert len(acc.Tensors("explain/worst_table/text_summary")) == EPOCHS


def _png(size: int = 64) -> bytes:
    pixels = np.full((size, size, 3), 128, np.uint8)
    pixels[16:48, 16:48] = (220, 40, 40)  # a square, the shapes demo's kind of object
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(BACKBONES))
def test_timm_backbone_through_fit_audit_explain_serve_export(family: str, tmp_path: Path, capsys) -> None:
    backbone, kwargs, layer = BACKBONES[family]
    ckpt = _fit(tmp_path, backbone, kwargs)

    # The checkpoint alone rebuilds the model (hyperparameters -> ImageClassifier(**hparams)).
    model = classifier_from_checkpoint(ckpt)
    assert model.hparams.backbone == backbone and model.hparams.input_size == [64, 64]
    assert model.default_explain_layers == [layer]
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 6)

    # The explanation callbacks logged their pages into the run's TensorBoard file, once per epoch.
    _check_logged_explanations(ckpt.parents[1])

    audit_dir = tmp_path / "audit"
    argv = ["--ckpt_path", str(ckpt), "--output", str(audit_dir), "--max_samples", "12"]
    assert audit_main([*argv, "--quality_samples", "4", "--progress", "false", "--device", "cpu"]) == 0
    report = json.loads((audit_dir / "report.json").read_text())
    assert report["num_samples"] == 12

    image = tmp_path / "square.png"
    image.write_bytes(_png())
    out = tmp_path / "explained"
    argv = ["--ckpt_path", str(ckpt), "--image", str(image), "--output", str(out), "--no_guided", "true"]
    assert explain_main([*argv, "--progress", "false"]) == 0, capsys.readouterr().err
    assert any(p.suffix == ".png" for p in out.rglob("*"))

    explainer = Explainer.from_checkpoint(ckpt, guided=False)
    with TestClient(create_app(explainer, ServeSettings(log_dir=tmp_path / "lowconf"))) as client:
        body = client.post("/predict_with_gradcam", json={"image": _b64(_png())})
    assert body.status_code == 200, body.text
    assert body.json()["prediction"] in model.class_names

    exported = tmp_path / "model.pth"
    assert export_main(["--ckpt_path", str(ckpt), "--output", str(exported)]) == 0
    # The exported weights start a new fine-tune of the same timm model (model.weights_path).
    again = ImageClassifier(
        backbone,
        class_names=model.class_names,
        input_size=[64, 64],
        backbone_kwargs=model.hparams.backbone_kwargs,
        weights_path=str(exported),
    )
    for key, value in model.net.state_dict().items():
        assert torch.equal(again.net.state_dict()[key], value), key


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode("ascii")
