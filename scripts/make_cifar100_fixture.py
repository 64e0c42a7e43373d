"""Write a small dataset in CIFAR-100's exact on-disk layout (``cifar-100-python/{train,test,meta}``).

The files are pickled the way the official archive's Python 2 pickles are (byte-string keys and values as
``SHORT_BINSTRING``/``BINSTRING`` opcodes, protocol 2), so torchvision's ``CIFAR100`` reads them with its own
code path (``encoding="latin1"``). The pixels are synthetic (class-dependent colour plus noise), so the md5
sums differ from the release: load them with ``Cifar100DataModule(verify_checksums=False)``.

Used by the tests and by ``scripts/bench_train.py`` when the real dataset is not on disk.

    python scripts/make_cifar100_fixture.py OUT_DIR --train-per-class 50 --test-per-class 10
"""

from __future__ import annotations

import argparse
import io
import pickle
import struct
from pathlib import Path
from typing import ClassVar

import numpy as np


class _Py2Pickler(pickle._Pickler):
    """Protocol-2 pickler that writes ``bytes`` as Python 2 ``str`` (what the CIFAR archive contains)."""

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)

    def save_bytes(self, obj: bytes) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes


def _dump(obj: object, path: Path) -> None:
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(obj)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(path)


def write_cifar100(
    root: str | Path,
    train_per_class: int = 3,
    test_per_class: int = 1,
    num_classes: int = 100,
    seed: int = 0,
    noise: float = 25.0,
) -> Path:
    """Write ``root/cifar-100-python/{train,test,meta}`` and return ``root``.

    Keys and dtypes are those of the release: ``data`` uint8 [N, 3072] (rows in CHW order), ``fine_labels``,
    ``coarse_labels``, ``filenames``, ``batch_label``; meta: ``fine_label_names``, ``coarse_label_names``.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    colours = rng.integers(30, 225, size=(num_classes, 3))

    def batch(per_class: int, label: bytes) -> dict[bytes, object]:
        fine = np.repeat(np.arange(num_classes), per_class)
        rng.shuffle(fine)
        pixels = colours[fine][:, None, None, :] + rng.normal(0, noise, size=(len(fine), 32, 32, 3))
        hwc = np.clip(pixels, 0, 255).astype(np.uint8)
        return {
            b"filenames": [f"synthetic_{i:06d}.png".encode() for i in range(len(fine))],
            b"batch_label": label,
            b"fine_labels": fine.tolist(),
            b"coarse_labels": (fine % 20).tolist(),
            b"data": np.ascontiguousarray(hwc.transpose(0, 3, 1, 2).reshape(len(fine), 3072)),
        }

    _dump(batch(train_per_class, b"training batch 1 of 1"), folder / "train")
    _dump(batch(test_per_class, b"testing batch 1 of 1"), folder / "test")
    meta = {
        b"fine_label_names": [f"class_{i:03d}".encode() for i in range(num_classes)],
        b"coarse_label_names": [f"superclass_{i:02d}".encode() for i in range(20)],
    }
    _dump(meta, folder / "meta")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="folder to create cifar-100-python/ in")
    parser.add_argument("--train-per-class", type=int, default=50)
    parser.add_argument("--test-per-class", type=int, default=10)
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if (args.root / "cifar-100-python").exists():
        parser.error(f"{args.root / 'cifar-100-python'} exists; refusing to overwrite it")
    write_cifar100(args.root, args.train_per_class, args.test_per_class, args.num_classes, args.seed)
    print(f"wrote {args.root / 'cifar-100-python'}")


if __name__ == "__main__":
    main()
