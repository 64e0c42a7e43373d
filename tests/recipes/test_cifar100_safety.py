"""CIFAR-100 files are pickles: they are read with a restricted unpickler that never runs code from them,
whatever ``verify_checksums`` says, and no message recommends turning a check off."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torchvision
from recipe_helpers import make_cifar100_fixture, write_cifar100

from lit_explain.cli import main
from lit_explain.data import Cifar100DataModule
from lit_explain.data.cifar100 import CifarUnpickler, read_cifar_pickle
from lit_explain.errors import DataError

REPO = Path(__file__).resolve().parents[2]


class TouchMarker:
    """Unpickling this creates ``path`` through ``os.system``, as the tester's payload did."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (os.system, (f"touch {self.path}",))


def _evil_copy(cifar_root: Path, tmp_path: Path, file: str = "train") -> tuple[Path, Path]:
    """A copy of the fixture whose ``file`` carries a payload; (data_dir, marker it would create)."""
    root = tmp_path / "evil"
    shutil.copytree(cifar_root, root)
    marker = tmp_path / "marker"
    target = root / "cifar-100-python" / file
    content = pickle.load(target.open("rb"), encoding="bytes")
    content[b"payload"] = TouchMarker(marker)
    make_cifar100_fixture._dump(content, target)
    return root, marker


def test_the_payload_really_runs_with_plain_pickle(cifar_root: Path, tmp_path: Path) -> None:
    # The control: torchvision's CIFAR100 reads these files with pickle.load, which runs the payload.
    root, marker = _evil_copy(cifar_root, tmp_path)
    pickle.load((root / "cifar-100-python" / "train").open("rb"), encoding="latin1")
    assert marker.exists()


@pytest.mark.parametrize("file", ["train", "meta"])
def test_a_payload_is_refused_with_checksums_off(file: str, cifar_root: Path, tmp_path: Path) -> None:
    root, marker = _evil_copy(cifar_root, tmp_path, file)
    with pytest.raises(DataError) as err:
        Cifar100DataModule(str(root), val_size=100, verify_checksums=False, num_workers=0).setup("fit")
    message = str(err.value)
    assert "\n" not in message and not marker.exists()
    assert f"refused to read {root / 'cifar-100-python' / file}" in message and ".system" in message
    assert "verify_checksums" not in message


def test_a_payload_is_refused_with_checksums_on(
    cifar_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, marker = _evil_copy(cifar_root, tmp_path)
    # The md5 check alone stops it (and names the file) ...
    with pytest.raises(DataError, match=r"cifar-100-python/train does not match .*md5") as err:
        Cifar100DataModule(str(root), val_size=100, num_workers=0).setup("fit")
    assert "verify_checksums" not in str(err.value) and not marker.exists()
    # ... and were the sums to match (a release list that names these files), the unpickler still refuses.
    folder = root / "cifar-100-python"
    sums = {f: hashlib.md5((folder / f).read_bytes()).hexdigest() for f in ("train", "test", "meta")}
    release = torchvision.datasets.CIFAR100
    monkeypatch.setattr(release, "train_list", [["train", sums["train"]]])
    monkeypatch.setattr(release, "test_list", [["test", sums["test"]]])
    monkeypatch.setattr(release, "meta", {**release.meta, "md5": sums["meta"]})
    with pytest.raises(DataError, match=r"refused to read .*cifar-100-python/train"):
        Cifar100DataModule(str(root), val_size=100, num_workers=0).setup("fit")
    assert not marker.exists()


def test_the_fit_command_stops_with_one_line(cifar_root: Path, tmp_path: Path, capsys) -> None:
    # The tester's command: the recipe with --data.init_args.verify_checksums=false on a poisoned folder.
    root, marker = _evil_copy(cifar_root, tmp_path)
    code = main(
        [
            "fit",
            "--config",
            str(REPO / "configs" / "cifar100_resnet34.yaml"),
            f"--data.init_args.data_dir={root}",
            "--data.init_args.verify_checksums=false",
            "--data.init_args.num_workers=0",
            f"--trainer.default_root_dir={tmp_path / 'runs'}",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
        ]
    )
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and not marker.exists()
    assert lines[-1].startswith("error: refused to read") and "cifar-100-python/train" in lines[-1], lines
    assert not any("Traceback" in line for line in lines)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_python3_pickles_of_the_format_load(protocol: int, tmp_path: Path) -> None:
    # A Python 3 re-save keeps bytes keys and, at protocol 2, writes bytes through _codecs.encode;
    # protocol 5 writes arrays through numpy's _frombuffer. All hold only what the format holds.
    root = write_cifar100(tmp_path / "py3")
    folder = root / "cifar-100-python"
    for name in ("train", "test", "meta"):
        content = pickle.load((folder / name).open("rb"), encoding="bytes")
        if name == "train":
            content[b"fine_labels"] = np.asarray(content[b"fine_labels"], dtype=np.int64)
        (folder / name).write_bytes(pickle.dumps(content, protocol=protocol))
    dm = Cifar100DataModule(str(root), val_size=100, verify_checksums=False, num_workers=0)
    dm.setup("fit")
    reference = Cifar100DataModule(
        str(write_cifar100(tmp_path / "py2")), val_size=100, verify_checksums=False
    )
    assert dm.class_names == reference.class_names and dm.class_names[0] == "class_000"
    assert np.array_equal(dm._load(True)[0], reference._load(True)[0])
    assert dm._load(True)[1].tolist() == reference._load(True)[1].tolist()
    assert set(read_cifar_pickle(folder / "train")) >= {"data", "fine_labels"}


def test_unpickler_refuses_any_other_global() -> None:
    for payload in (eval, print, shutil.rmtree, io.BytesIO):
        data = pickle.dumps({"x": payload})
        with pytest.raises(DataError, match=r"refused to read f\.pkl: unpickling it would call"):
            CifarUnpickler(io.BytesIO(data), "f.pkl").load()


def test_malformed_files_are_one_line(cifar_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "bad"
    shutil.copytree(cifar_root, root)
    train = root / "cifar-100-python" / "train"
    train.write_bytes(train.read_bytes()[:1000])  # truncated
    dm = Cifar100DataModule(str(root), val_size=100, verify_checksums=False)
    with pytest.raises(DataError, match=r"cannot read .*train: not a CIFAR-100 python pickle \(truncated"):
        dm.setup("fit")
    make_cifar100_fixture._dump({b"data": np.zeros((2, 10), np.uint8), b"fine_labels": [0, 1]}, train)
    with pytest.raises(DataError, match=r"'data' must be a uint8 array \[N, 3072\].*found uint8 \[2, 10\]"):
        Cifar100DataModule(str(root), val_size=1, verify_checksums=False).setup("fit")


def test_download_only_into_a_folder_without_the_files(
    cifar_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # torchvision's download() would extract the archive over a partial folder and then pickle.load it.
    import lit_explain.data.cifar100 as cifar100

    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(cifar100, "download_and_extract_archive", lambda *args: calls.append(args))
    Cifar100DataModule(str(cifar_root), download=True).prepare_data()
    assert calls == []  # complete: nothing fetched, nothing read
    Cifar100DataModule(str(tmp_path / "empty"), download=True).prepare_data()
    release = torchvision.datasets.CIFAR100
    assert calls == [(release.url, str(tmp_path / "empty"), release.filename, release.tgz_md5)]
    partial = tmp_path / "partial" / "cifar-100-python"
    partial.mkdir(parents=True)
    shutil.copy(cifar_root / "cifar-100-python" / "meta", partial / "meta")
    with pytest.raises(DataError, match=r"holds meta but not train, test; move the folder away"):
        Cifar100DataModule(str(tmp_path / "partial"), download=True).prepare_data()
    assert len(calls) == 1
