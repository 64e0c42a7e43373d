"""Issue 21: every recipe stays valid when only `--model.backbone` changes, and `--explain` switches the
explanation callbacks off or thins them from the command line."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub.constants
import lightning as L
import pytest
import timm
import torch
import torchvision
import yaml
from recipe_helpers import PLANT_CLASSES, plant_image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_explain.callbacks import (
    ConfusionMatrix,
    ProbeHeatmaps,
    ShortcutAlarm,
    TrainingDynamics,
    WorstSamples,
)
from lit_explain.cli import LitExplainCLI, main, recipe_path
from lit_explain.errors import ConfigError
from lit_explain.models import ImageClassifier, build_backbone, timm_backbones
from lit_explain.models.timm_backbones import LIT_EXPLAIN_MODELS

REPO = Path(__file__).resolve().parents[2]
RECIPES = ("shapes_demo.yaml", "shapes_spurious.yaml", "plant_resnet18.yaml", "cifar100_resnet34.yaml")
BACKBONES = ("timm:vit_tiny_patch16_224", "timm:convnext_atto", "resnet18")
TINY = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=1",
    "--trainer.num_sanity_val_steps=0",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]
# Small data for each recipe (`--data.init_args.*`), and what a CPU run needs (no bf16, no workers).
SHAPES = ["--data.init_args.train_size=32", "--data.init_args.val_size=12", "--data.init_args.batch_size=8"]
DATA = {
    "shapes_demo.yaml": SHAPES,
    "shapes_spurious.yaml": SHAPES,
    "plant_resnet18.yaml": ["--data.init_args.image_size=64", "--data.init_args.batch_size=8"],
    "cifar100_resnet34.yaml": [
        "--data.init_args.download=false",
        "--data.init_args.verify_checksums=false",
        "--data.init_args.val_size=100",
        "--data.init_args.batch_size=8",
        "--trainer.precision=32-true",
        "--explain.every_n_epochs=1",  # the recipe explains its probes every 5th epoch; a tiny run has one
    ],
}


def _recipe(name: str) -> dict:
    return yaml.safe_load(recipe_path(name).read_text())


def _explain_callbacks(config: dict) -> list[dict]:
    return [c for c in config["trainer"]["callbacks"] if c["class_path"].startswith("lit_explain.callbacks.")]


# -- the recipes name nothing backbone-specific -----------------------------------------------------------
def test_demo_network_is_one_name_with_the_same_weights() -> None:
    for name in ("shapes_demo.yaml", "shapes_spurious.yaml"):
        model = _recipe(name)["model"]
        assert (model["backbone"], model["backbone_kwargs"]) == ("timm:resnet10t_half", None), name

    def initial(**kwargs) -> dict[str, torch.Tensor]:
        L.seed_everything(0, verbose=False)
        return ImageClassifier(num_classes=6, input_size=[64, 64], **kwargs).state_dict()

    old = initial(
        backbone="timm:resnet10t", backbone_kwargs={"stem_width": 16, "channels": [32, 64, 128, 256]}
    )
    new = initial(backbone="timm:resnet10t_half")
    assert old.keys() == new.keys()
    assert all(torch.equal(old[k], new[k]) for k in old)
    # Registered in timm's registry by lit_explain only, and known to have no published weights.
    assert timm.list_models(module="timm_registry") == sorted(LIT_EXPLAIN_MODELS)


def test_recipes_leave_layers_to_the_model_and_weights_to_the_family() -> None:
    for name in RECIPES:
        config = _recipe(name)
        layers = [c["init_args"]["layer"] for c in _explain_callbacks(config) if "layer" in c["init_args"]]
        assert layers and all(layer is None for layer in layers), name
        assert config["model"]["backbone_kwargs"] is None, name
    assert _recipe("plant_resnet18.yaml")["model"]["weights"] is True
    assert _recipe("cifar100_resnet34.yaml")["model"]["cifar_stem"] == "auto"


def test_default_layers_keep_each_recipe_on_its_own_backbone_as_before() -> None:
    # layer: null must give what the recipes hard-coded before (layer4) for their own backbones.
    cifar = ImageClassifier("resnet34", num_classes=100, cifar_stem="auto", input_size=[32, 32])
    plant = ImageClassifier("resnet18", num_classes=4, input_size=[224, 224])
    assert cifar.default_explain_layers == plant.default_explain_layers == ["layer4"]


def test_cifar_stem_auto_applies_where_the_backbone_has_it() -> None:
    resnet = ImageClassifier("resnet34", num_classes=100, cifar_stem="auto", input_size=[32, 32])
    assert resnet.hparams.cifar_stem is True and resnet.net.conv1.kernel_size == (3, 3)
    # Recorded as a bool: a checkpoint or an export rebuilds the same network.
    assert isinstance(resnet.net.maxpool, torch.nn.Identity)
    vit = ImageClassifier(
        "timm:vit_tiny_patch16_224", num_classes=100, cifar_stem="auto", input_size=[32, 32]
    )
    assert vit.hparams.cifar_stem is False
    assert ImageClassifier("vgg11", num_classes=3, cifar_stem="auto").hparams.cifar_stem is False
    with pytest.raises(ConfigError, match=r"^model\.cifar_stem must be true, false or auto, got 'yes'$"):
        build_backbone("resnet18", 3, cifar_stem="yes")
    with pytest.raises(ConfigError, match=r"cifar_stem applies to torchvision ResNets only"):
        build_backbone("timm:convnext_atto", 3, cifar_stem=True)  # true stays strict


def _cache_imagenet_resnet18(torch_home: Path) -> torch.nn.Module:
    # torchvision reads $TORCH_HOME/hub/checkpoints/<basename of the url> without a download.
    reference = torchvision.models.resnet18(num_classes=1000)
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    path = torch_home / "hub" / "checkpoints" / Path(weights.url).name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(reference.state_dict(), path)
    return reference


def test_weights_true_is_each_familys_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model_args = {k: v for k, v in _recipe("plant_resnet18.yaml")["model"].items() if v is not None}
    # ResNet-18 (the recipe's): weights: true is IMAGENET1K_V1, as the recipe named it before.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference = _cache_imagenet_resnet18(tmp_path)
    model = ImageClassifier(**model_args, num_classes=4)
    assert torch.equal(model.net.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    # timm: the family's default tag; offline, one line naming the file and where it goes.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(timm_backbones, "_reachable", lambda host, timeout=3.0: "offline (test)")
    with pytest.raises(ConfigError) as info:
        ImageClassifier(**{**model_args, "backbone": "timm:convnext_atto"}, num_classes=4)
    message = str(info.value)
    assert "\n" not in message and message.startswith("model.weights=true: cannot download the timm weights")
    assert (
        "convnext_atto.d2_in1k" in message
        and "model.safetensors" in message
        and "model.weights_path" in message
    )
    with pytest.raises(
        ConfigError, match=r"resnet10t_half is lit_explain's own network.*model\.weights=null"
    ):
        build_backbone("timm:resnet10t_half", 6, weights=True)


# -- --explain ---------------------------------------------------------------------------------------------
def _callbacks(tmp_path: Path, *args: str) -> list:
    cli = LitExplainCLI(
        args=["--config", str(recipe_path()), f"--trainer.default_root_dir={tmp_path}", *args], run=False
    )
    return cli.trainer.callbacks


def test_explain_false_drops_the_explanation_callbacks(tmp_path: Path) -> None:
    explained = (ProbeHeatmaps, WorstSamples, ConfusionMatrix, ShortcutAlarm, TrainingDynamics)
    default = _callbacks(tmp_path)
    assert sorted(type(c).__name__ for c in default if isinstance(c, explained)) == [
        "ConfusionMatrix",
        "ProbeHeatmaps",
        "ShortcutAlarm",
        "TrainingDynamics",
        "WorstSamples",
    ]
    off = _callbacks(tmp_path, "--explain=false")
    assert not any(isinstance(c, explained) for c in off)
    # Everything else stays: checkpoints, the learning-rate monitor.
    assert [type(c).__name__ for c in off] == [
        type(c).__name__ for c in default if not isinstance(c, explained)
    ]


def test_explain_every_n_epochs_thins_them(tmp_path: Path) -> None:
    callbacks = _callbacks(tmp_path, "--explain.every_n_epochs=3")
    thinned = (ProbeHeatmaps, WorstSamples, ShortcutAlarm, TrainingDynamics)
    assert {type(c).__name__: c.every_n_epochs for c in callbacks if isinstance(c, thinned)} == {
        "ProbeHeatmaps": 3,
        "ShortcutAlarm": 3,
        "TrainingDynamics": 3,
        "WorstSamples": 3,
    }
    assert any(isinstance(c, ConfusionMatrix) for c in callbacks)  # cheap: stays every epoch


def test_explain_every_n_epochs_bad_value_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = [
        "fit",
        "--explain.every_n_epochs=0",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.fast_dev_run=1",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "error: --explain.every_n_epochs must be an integer >= 1, got 0 (--explain false switches the "
        "explanation callbacks off)"
    )


def test_worst_samples_every_n_epochs() -> None:
    callback = WorstSamples(every_n_epochs=2)

    def trainer(epoch: int, fn: str = "fit", sanity: bool = False) -> SimpleNamespace:
        return SimpleNamespace(current_epoch=epoch, sanity_checking=sanity, state=SimpleNamespace(fn=fn))

    assert [callback.active(trainer(e)) for e in range(4)] == [False, True, False, True]
    assert callback.active(trainer(0, fn="validate")) and not callback.active(trainer(1, sanity=True))
    with pytest.raises(ConfigError, match=r"^WorstSamples: every_n_epochs must be >= 1, got 0$"):
        WorstSamples(every_n_epochs=0)


# -- every recipe under every kind of backbone, through the command line ---------------------------------
def _synthetic_plants(root: Path) -> Path:
    for c, name in enumerate(PLANT_CLASSES):
        for i in range(10):
            plant_image(root / f"{name}_{i:03d}.jpg", c, size=48)
    return root


def _fit(cwd: Path, monkeypatch: pytest.MonkeyPatch, args: list[str]) -> Path:
    """`python -m lit_explain ARGS` in ``cwd``, in this process; returns the run folder of its checkpoint."""
    monkeypatch.chdir(cwd)
    before = set(cwd.rglob("last.ckpt"))
    assert main(args) == 0, args
    (ckpt,) = set(cwd.rglob("last.ckpt")) - before
    return ckpt.parent.parent


def _fit_with_each_backbone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recipe: str, data: list[str]
) -> None:
    """The recipe as shipped, only ``--model.backbone`` (and ``--model.weights=null``, offline) changed."""
    for backbone in BACKBONES:
        folder = tmp_path / backbone.replace(":", "_")
        folder.mkdir()
        args = [
            "fit",
            "--config",
            str(recipe_path(recipe)),
            "--model.backbone",
            backbone,
            "--model.weights=null",
        ]
        args += [*DATA[recipe], *data, "--data.init_args.num_workers=0", *TINY]
        run = _fit(folder, monkeypatch, [*args, f"--trainer.default_root_dir={folder}"])
        assert yaml.safe_load((run / "hparams.yaml").read_text())["backbone"] == backbone
        # The explanation callbacks ran on the model's default layers and logged their pages.
        acc = EventAccumulator(str(run), size_guidance={"images": 0})
        acc.Reload()
        logged = set(acc.Tags()["images"])
        assert {"explain/probes/page_0", "explain/worst/page_0", "val/confusion_matrix"} <= logged, backbone


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["shapes_demo.yaml", "shapes_spurious.yaml"])
def test_shapes_recipes_fit_with_any_backbone(
    recipe: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fit_with_each_backbone(tmp_path, monkeypatch, recipe, [])


@pytest.mark.slow
def test_cifar_recipe_fits_with_any_backbone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cifar_root: Path
) -> None:
    recipe = "cifar100_resnet34.yaml"
    _fit_with_each_backbone(tmp_path, monkeypatch, recipe, [f"--data.init_args.data_dir={cifar_root}"])


@pytest.mark.slow
def test_plant_recipe_fits_with_any_backbone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, leaf_shapes_dir: Path
) -> None:
    _fit_with_each_backbone(
        tmp_path, monkeypatch, "plant_resnet18.yaml", [f"--data.init_args.root={leaf_shapes_dir}"]
    )


def _readme_commands() -> list[list[str]]:
    """The commands of README's "timm backbones and transformers" block, split as a shell would."""
    text = (REPO / "README.md").read_text()
    section = text.split("### timm backbones and transformers", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line) for line in block.splitlines() if line.strip()]


@pytest.mark.slow
def test_readme_backbone_commands_run_as_printed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    commands = _readme_commands()
    assert [c[:3] for c in commands] == [["python", "-m", "lit_explain"]] * len(commands)
    assert [c[3] for c in commands] == ["fit", "fit", "explain"]
    # What the commands name, in a folder of their own: configs/, photos/, then vit.ckpt and leaf.jpg.
    (tmp_path / "configs").symlink_to(REPO / "configs")
    _synthetic_plants(tmp_path / "photos")
    offline_tiny = ["--model.weights=null", "--data.num_workers=0", *TINY]
    plant, vit, explain = (c[3:] for c in commands)
    _fit(tmp_path, monkeypatch, [*plant, *offline_tiny, "--data.image_size=64", "--data.batch_size=8"])
    vit_run = _fit(tmp_path, monkeypatch, [*vit, *offline_tiny, *SHAPES])
    shutil.copy(next(vit_run.rglob("last.ckpt")), tmp_path / "vit.ckpt")
    plant_image(tmp_path / "leaf.jpg", 0, size=64)
    assert main([*explain, "--progress=false", "--device=cpu"]) == 0
    assert any((tmp_path / "out").iterdir())
