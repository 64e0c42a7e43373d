"""ImageClassifier: backbones, data metadata, training on shapes, and rebuilding from a checkpoint alone."""

import math

import lightning as L
import pytest
import torch

from lit_explain.data import ShapesDataModule
from lit_explain.data.images import eval_transform
from lit_explain.errors import ConfigError
from lit_explain.models import ImageClassifier, build_backbone, classifier_from_checkpoint
from lit_explain.models.loading import CheckpointError


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
def test_resnet_backbones_with_channels_and_cifar_stem(name):
    net = build_backbone(name, num_classes=7, in_channels=1, cifar_stem=True)
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1) and net.conv1.in_channels == 1
    assert isinstance(net.maxpool, torch.nn.Identity)
    assert net(torch.zeros(2, 1, 32, 32)).shape == (2, 7)


def test_unknown_backbone_lists_the_valid_choices():
    with pytest.raises(ConfigError) as info:
        build_backbone("resnet19", num_classes=3)
    message = str(info.value)
    assert (
        "resnet19" in message
        and "Did you mean" in message
        and "resnet18" in message
        and "vgg16_bn" in message
    )


def test_num_classes_disagreeing_with_the_data_is_an_error():
    model = ImageClassifier(num_classes=10)
    with pytest.raises(
        ConfigError, match=r"num_classes=10 disagrees with the data module, which has 6 classes"
    ):
        model.adopt_data_metadata(ShapesDataModule().metadata())


def test_metadata_is_adopted_from_the_data_module():
    model = ImageClassifier()
    model.adopt_data_metadata(ShapesDataModule(image_size=48).metadata())
    assert model.hparams.class_names == ["circle", "square", "triangle", "star", "cross", "ring"]
    assert model.hparams.input_size == [48, 48] and model.hparams.mean == [0.5, 0.5, 0.5]


def test_validation_step_returns_what_callbacks_need():
    model = ImageClassifier(num_classes=6).eval()
    batch = {
        "image": torch.randn(4, 3, 32, 32),
        "label": torch.tensor([0, 1, 2, 3]),
        "index": torch.arange(4),
    }
    out = model.validation_step(batch, 0)
    assert out["per_sample_loss"].shape == (4,) and out["probs"].shape == (4, 6)
    assert torch.allclose(out["probs"].sum(1), torch.ones(4))
    assert torch.equal(out["preds"], out["probs"].argmax(1)) and torch.equal(out["targets"], batch["label"])
    assert torch.allclose(out["loss"], out["per_sample_loss"].mean())


def test_state_dict_holds_each_weight_once():
    keys = list(ImageClassifier(num_classes=3).state_dict())
    assert all(k.startswith("net.") for k in keys) and len(keys) == len(set(keys))


def test_classifier_learns_shapes(tmp_path):
    """A short fit moves the model well above chance on the images it saw (the full demo's accuracy is
    checked end to end in tests/test_demo_end_to_end.py)."""
    L.seed_everything(0, verbose=False)
    dm = ShapesDataModule(image_size=32, train_size=256, val_size=64, batch_size=32)
    model = ImageClassifier("resnet18", optimizer="adamw", lr=3e-3, scheduler="none")
    trainer = L.Trainer(
        max_epochs=8,
        logger=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    seen = dm.samples(list(range(64)), split="train")
    model.eval()
    with torch.no_grad():
        accuracy = float((model(seen["image"]).argmax(1) == seen["label"]).float().mean())
    assert accuracy > 0.4, f"training-set accuracy {accuracy:.3f} is not far above chance (1/6)"
    assert float(trainer.callback_metrics["train/loss"]) < math.log(6)


def test_checkpoint_alone_rebuilds_model_and_preprocessing(shapes_checkpoint):
    model = classifier_from_checkpoint(shapes_checkpoint)
    hp = model.hparams
    assert hp.class_names == ["circle", "square", "triangle", "star", "cross", "ring"]
    assert hp.input_size == [64, 64] and hp.mean == [0.5, 0.5, 0.5] and hp.std == [0.25, 0.25, 0.25]
    checkpoint = torch.load(shapes_checkpoint, weights_only=True)
    assert checkpoint["lit_explain"]["class_names"] == hp.class_names
    assert "val/acc" in checkpoint["lit_explain"]["metrics"]
    # The rebuilt model computes exactly what the trained weights compute, on data pre-processed from the
    # checkpoint's own metadata.
    reference = ImageClassifier(**{k: v for k, v in hp.items() if not k.startswith("_")})
    reference.load_state_dict(checkpoint["state_dict"])
    sample, _, _ = ShapesDataModule().dataset("val").raw(0)
    from PIL import Image

    x = eval_transform(hp.input_size, hp.mean, hp.std)(Image.fromarray(sample))[None]
    with torch.no_grad():
        assert torch.equal(model(x), reference.eval()(x))


def test_non_checkpoint_files_give_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        classifier_from_checkpoint(tmp_path / "missing.ckpt")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        classifier_from_checkpoint(junk)
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, plain)
    with pytest.raises(CheckpointError, match="not a lit_explain checkpoint"):
        classifier_from_checkpoint(plain)


def test_training_step_accepts_mixed_soft_labels():
    model = ImageClassifier(num_classes=4, label_smoothing=0.1)
    model.log = lambda *args, **kwargs: None  # no trainer attached
    images = torch.randn(3, 3, 32, 32)
    soft = torch.tensor([[0.7, 0.3, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.4, 0.6]])
    loss = model.training_step({"image": images, "label": soft}, 0)["loss"]
    hard = model.training_step({"image": images, "label": torch.tensor([0, 1, 3])}, 0)["loss"]
    # Independently: cross-entropy against the smoothed distribution q = (1 - eps) * target + eps / C.
    with torch.no_grad():
        log_p = model(images).log_softmax(dim=1)  # train mode, batch statistics: the same logits as the step

    def expected(target: torch.Tensor) -> torch.Tensor:
        q = 0.9 * target + 0.1 / 4
        return -(q * log_p).sum(dim=1).mean()

    one_hot = torch.nn.functional.one_hot(torch.tensor([0, 1, 3]), 4).float()
    torch.testing.assert_close(loss.detach(), expected(soft))
    torch.testing.assert_close(hard.detach(), expected(one_hot))
    assert abs(float(loss - hard)) > 0.01  # the soft rows count: the two losses are not the same number


def test_offline_weights_download_names_the_cache_file(monkeypatch, tmp_path):
    """Without internet, asking for ImageNet weights says which file to put where."""
    from urllib.error import URLError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise URLError("network unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(ConfigError, match=r"resnet18-f37072fd\.pth") as info:
        build_backbone("resnet18", num_classes=4, weights="IMAGENET1K_V1")
    assert str(tmp_path / "hub" / "checkpoints") in str(info.value)
