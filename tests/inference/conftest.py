"""Fixtures for the inference tests: quick checkpoints in the three supported formats and odd images."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from lit_explain.models import ImageClassifier

SHAPES = ["circle", "square", "triangle", "star", "cross", "ring"]


def make_lightning_ckpt(
    path: Path, in_channels: int = 3, size: int = 64, classes: list[str] = SHAPES
) -> Path:
    """A lit_explain checkpoint (``state_dict`` + ``hyper_parameters``) of an untrained ResNet-18, in milliseconds."""
    torch.manual_seed(0)
    model = ImageClassifier(
        "resnet18",
        num_classes=len(classes),
        class_names=classes,
        in_channels=in_channels,
        mean=[0.5] * in_channels,
        std=[0.25] * in_channels,
        input_size=[size, size],
    )
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    return path


@pytest.fixture(scope="session")
def quick_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lightning_ckpt(tmp_path_factory.mktemp("ckpt") / "quick.ckpt")


@pytest.fixture(scope="session")
def gray_plain_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain ``{"model_state_dict", ...}`` file of a 1-channel 64x64 sketch model, without class names."""
    torch.manual_seed(1)
    net = torchvision.models.resnet18(num_classes=3)
    net.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    path = tmp_path_factory.mktemp("plain") / "sketch.pth"
    torch.save({"model_state_dict": net.state_dict(), "input_size": [64, 64], "epoch": 3}, path)
    return path


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A TORCH_HOME whose cache holds random squeezenet1_1 "ImageNet" weights (no download)."""
    weights = torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.manual_seed(2)
    state = torchvision.models.squeezenet1_1(weights=None).state_dict()
    torch.save(state, cache / os.path.basename(urlparse(weights.url).path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home"


@pytest.fixture(scope="session")
def odd_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Images of many sizes and modes: RGB JPEG, grayscale, RGBA, 16-bit PNG, palette GIF, tiny."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    images = {
        "rgb.jpg": Image.fromarray(rng.integers(0, 255, (120, 90, 3), dtype=np.uint8)),
        "gray.png": Image.fromarray(rng.integers(0, 255, (33, 47), dtype=np.uint8), "L"),
        "rgba.png": Image.fromarray(rng.integers(0, 255, (64, 64, 4), dtype=np.uint8), "RGBA"),
        "deep16.png": Image.fromarray(rng.integers(0, 65535, (50, 70), dtype=np.uint16)),
        "palette.gif": Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).convert("P"),
        "tiny.bmp": Image.fromarray(rng.integers(0, 255, (3, 5, 3), dtype=np.uint8)),
    }
    paths = {}
    for name, image in images.items():
        image.save(root / name)
        paths[name] = root / name
    return paths
