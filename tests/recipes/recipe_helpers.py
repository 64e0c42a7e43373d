"""Helpers for the recipe tests: the CIFAR-100 fixture writer and photo-like plant images."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

PLANT_CLASSES = ("oak", "maple", "fern")
_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make_cifar100_fixture.py"
_spec = importlib.util.spec_from_file_location("make_cifar100_fixture", _SCRIPT)
make_cifar100_fixture = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_cifar100_fixture)
write_cifar100 = make_cifar100_fixture.write_cifar100


def plant_image(path: Path, label_index: int, size: int = 40, mode: str = "RGB", seed: int = 0) -> Path:
    """Save a small photo-like image whose colour depends on the class, in the mode the suffix allows."""
    rng = np.random.default_rng([seed, label_index, len(path.name)])
    base = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200], [200, 200, 40]][label_index % 4])
    pixels = np.clip(base + rng.normal(0, 20, size=(size, size + 8, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    image.save(path, format=fmt)
    return path


def file_names(per_class: int, labels: str) -> list[tuple[int, str]]:
    out = []
    for c, name in enumerate(PLANT_CLASSES):
        for i in range(per_class):
            ext = (".jpg", ".JPG", ".jpeg", ".png")[i % 4]
            out.append((c, f"{name if labels == 'names' else c}_{i:03d}{ext}"))
    return out
