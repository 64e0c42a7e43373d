"""Shared fixtures: a tiny trained shapes checkpoint, the real-photo folder, chromium, and huge image files made
cheaply. Under ``CI=true`` a missing precondition of a selected test (chromium, the real photos) stops the run
with one line instead of skipping, so a green CI run means those tests ran."""

from __future__ import annotations

import importlib.util
import io
import os
import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import lightning as L
import pytest
import torch
from PIL import Image

from lit_explain.data import ShapesDataModule
from lit_explain.models import ImageClassifier

LEAF_SHAPES = Path(__file__).resolve().parents[2] / "shared" / "data" / "leaf-shapes"
if os.environ.get("LIT_EXPLAIN_LEAF_SHAPES"):
    LEAF_SHAPES = Path(os.environ["LIT_EXPLAIN_LEAF_SHAPES"])
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def in_ci() -> bool:
    """True where the environment says CI (``CI=true``, as GitHub Actions, GitLab and .ci/run set it)."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def find_chromium() -> str | None:
    """The headless browser the page tests drive (Debian's package is ``chromium``), or None."""
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


def missing_preconditions(items: list[pytest.Item]) -> list[str]:
    """What the selected tests need and this machine lacks, each as what to install or provide."""
    missing = []
    if any(item.get_closest_marker("browser") for item in items):
        if find_chromium() is None:
            missing.append("chromium for the browser tests (Debian: apt-get install chromium)")
        if importlib.util.find_spec("playwright") is None:
            missing.append("the playwright package for the browser tests (make env)")
    photos = any("leaf_shapes_dir" in getattr(item, "fixturenames", ()) for item in items)
    if photos and not LEAF_SHAPES.is_dir():
        missing.append(f"the real leaf photos at {LEAF_SHAPES} (or set LIT_EXPLAIN_LEAF_SHAPES)")
    return missing


@pytest.hookimpl(trylast=True)  # after -m/-k deselection: only the tests that will run count
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Outside CI these tests skip with their reason; in CI a skip would hide that they never ran.
    missing = missing_preconditions(items) if in_ci() else []
    if missing:
        raise pytest.UsageError(
            "CI=true and selected tests need what is missing here: " + "; ".join(missing) + " "
            "(install or provide it, or deselect those tests explicitly)"
        )


def train_shapes_checkpoint(directory: Path, epochs: int = 1, train_size: int = 256, **data_kwargs) -> Path:
    """Train a small shapes classifier and return the path of its checkpoint (a real Lightning .ckpt)."""
    L.seed_everything(0, verbose=False)
    dm = ShapesDataModule(train_size=train_size, val_size=64, test_size=64, batch_size=32, **data_kwargs)
    model = ImageClassifier("resnet18", optimizer="adamw", lr=3e-3, scheduler="none")
    trainer = L.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=directory,
        callbacks=[L.pytorch.callbacks.ModelCheckpoint(dirpath=directory, save_last=True)],
    )
    trainer.fit(model, datamodule=dm)
    return directory / "last.ckpt"


@pytest.fixture(scope="session")
def shapes_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A shapes ResNet-18 checkpoint trained for one short epoch (fast; accuracy is not the point)."""
    return train_shapes_checkpoint(tmp_path_factory.mktemp("shapes_ckpt"))


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of the headless browser; tests using it skip when there is none (CI stops before, see above)."""
    path = find_chromium()
    if path is None:
        pytest.skip(
            f"no chromium on PATH (looked for {', '.join(CHROMIUM_NAMES)}; Debian: apt-get install chromium)"
        )
    return path


@pytest.fixture(scope="session")
def leaf_shapes_dir() -> Path:
    """The folder of real leaf photos next to the repository; tests using it skip when it is absent (outside CI)."""
    if not LEAF_SHAPES.is_dir():
        pytest.skip(f"real-photo folder {LEAF_SHAPES} is absent (set LIT_EXPLAIN_LEAF_SHAPES to point at it)")
    return LEAF_SHAPES


@pytest.fixture(autouse=True)
def _torch_threads() -> None:
    # Tests run on 2-core machines; oversubscribing threads makes them slower, not faster.
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def write_huge_png(path: Path, width: int, height: int) -> Path:
    """A valid all-black 1-bit PNG of any size, streamed row block by row block: 20000x20000 is ~220 KB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(1)  # fastest; all-zero rows still shrink ~250x
    rows = bytes(1 + (width + 7) // 8) * 1000  # filter byte 0 + packed bits, 1000 rows at a time
    body = [compressor.compress(rows) for _ in range(height // 1000)]
    body += [compressor.compress(bytes(1 + (width + 7) // 8) * (height % 1000)), compressor.flush()]
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(body)) + chunk(b"IEND", b"")
    )
    return path


def write_flat_jpeg(path: Path, width: int, height: int) -> Path:
    """A valid mid-grey baseline JPEG of any size (multiples of 32), written without allocating its pixels.

    A flat block of value 128 has only zero DCT coefficients: with libjpeg's standard Huffman tables it is
    the 6 bits ``00`` (DC difference 0) + ``1010`` (end of block), so four blocks are the bytes 28 a2 8a.
    The header (tables) comes from a 16x16 image PIL encodes; only the frame size is patched.
    """
    if width % 32 or height % 32:
        raise ValueError("width and height must be multiples of 32 (whole groups of four 8x8 blocks)")
    buffer = io.BytesIO()
    Image.new("L", (16, 16), 128).save(buffer, format="JPEG", quality=75)
    template = buffer.getvalue()
    assert template.endswith(bytes.fromhex("28a28affd9")), "PIL no longer writes the standard tables"
    header = bytearray(template[: -len("28a28affd9") // 2])
    sof = header.index(b"\xff\xc0")
    header[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    blocks = (width // 8) * (height // 8)
    path.write_bytes(bytes(header) + bytes.fromhex("28a28a") * (blocks // 4) + b"\xff\xd9")
    return path


@pytest.fixture
def huge_png(tmp_path: Path) -> Callable[..., Path]:
    """``huge_png(width, height, name="huge.png")``: a tiny file whose header claims that many pixels."""
    return lambda width, height, name="huge.png": write_huge_png(tmp_path / name, width, height)


@pytest.fixture
def flat_jpeg(tmp_path: Path) -> Callable[..., Path]:
    """``flat_jpeg(width, height, name="flat.jpg")``: a real, decodable mid-grey JPEG of that size."""
    return lambda width, height, name="flat.jpg": write_flat_jpeg(tmp_path / name, width, height)
