"""Cifar100DataModule on a fixture in the real cifar-100-python pickle layout, read by torchvision's CIFAR100."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import ClassVar

import pytest
import torch
import torchvision
from recipe_helpers import make_cifar100_fixture, write_cifar100

from lit_explain.data import Cifar100DataModule
from lit_explain.errors import DataError
from lit_explain.models import ImageClassifier, build_backbone


def test_fixture_is_the_real_layout_for_torchvision(
    cifar_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # torchvision reads the files with its own code once only its md5 list is changed (our bytes differ).
    class Patched(torchvision.datasets.CIFAR100):
        train_list: ClassVar = [["train", None]]
        test_list: ClassVar = [["test", None]]
        meta: ClassVar = {"filename": "meta", "key": "fine_label_names", "md5": None}

    data = Patched(str(cifar_root), train=True, download=False)
    assert data.data.shape == (300, 32, 32, 3) and data.data.dtype.name == "uint8"
    assert len(data.classes) == 100 and data.classes[0] == "class_000"
    raw = pickle.load((cifar_root / "cifar-100-python" / "train").open("rb"), encoding="bytes")
    assert set(raw) == {b"data", b"fine_labels", b"coarse_labels", b"filenames", b"batch_label"}
    with pytest.raises(RuntimeError, match="corrupted"):
        torchvision.datasets.CIFAR100(str(cifar_root), train=True, download=False)


def test_split_transforms_and_metadata(cifar_root: Path) -> None:
    dm = Cifar100DataModule(
        str(cifar_root), val_size=100, verify_checksums=False, num_workers=0, batch_size=32
    )
    dm.setup("fit")
    dm.setup("test")
    assert [len(dm.dataset(s)) for s in ("train", "val", "test")] == [200, 100, 100]
    # Stratified: one validation image per class; seeded: the same split twice, a different one for another seed.
    assert torch.equal(
        torch.bincount(dm.split_labels("val"), minlength=100), torch.ones(100, dtype=torch.long)
    )
    again = Cifar100DataModule(str(cifar_root), val_size=100, verify_checksums=False)
    other = Cifar100DataModule(str(cifar_root), val_size=100, verify_checksums=False, seed=1)
    assert torch.equal(again._parts()[1], dm._parts()[1])
    assert not torch.equal(other._parts()[1], dm._parts()[1])
    assert set(dm._parts()[0].tolist()).isdisjoint(dm._parts()[1].tolist())
    meta = dm.metadata()
    assert meta["class_names"][:2] == ["class_000", "class_001"] and meta["input_size"] == [32, 32]
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (32, 3, 32, 32) and batch["image"].dtype == torch.float32
    val = dm.samples([0, 1], "val")
    raw = torch.from_numpy(dm._load(True)[0][int(dm._parts()[1][0])]).permute(2, 0, 1).float() / 255
    expected = (raw - torch.tensor(dm.mean).view(3, 1, 1)) / torch.tensor(dm.std).view(3, 1, 1)
    assert torch.allclose(val["image"][0], expected, atol=1e-5)


def test_stronger_policies_and_mixing(cifar_root: Path) -> None:
    for augment in ("trivialaugment", "randaugment"):
        dm = Cifar100DataModule(
            str(cifar_root),
            val_size=100,
            verify_checksums=False,
            augment=augment,
            random_erasing=0.5,
            mixup_alpha=0.2,
            cutmix_alpha=1.0,
            num_workers=0,
            batch_size=8,
        )
        dm.setup("fit")
        batch = next(iter(dm.train_dataloader()))
        mixed = dm.mix_batch(batch)
        assert mixed["image"].shape == batch["image"].shape
        assert mixed["label"].shape == (8, 100) and torch.allclose(mixed["label"].sum(1), torch.ones(8))


def test_errors(tmp_path: Path, cifar_root: Path) -> None:
    with pytest.raises(DataError, match=r"not found.*missing: train, test, meta.*download=true"):
        Cifar100DataModule(str(tmp_path)).setup("fit")
    with pytest.raises(
        DataError, match=r"cifar-100-python/train does not match .* md5.*download=true"
    ) as err:
        Cifar100DataModule(str(cifar_root)).setup("fit")
    assert "verify_checksums" not in str(err.value)  # no message recommends turning a check off
    bad = write_cifar100(tmp_path / "bad", num_classes=100)
    # A meta file listing fewer classes than the labels use: a label outside the class list.
    names = [f"c{i}".encode() for i in range(50)]
    make_cifar100_fixture._dump(
        {b"fine_label_names": names, b"coarse_label_names": []}, bad / "cifar-100-python" / "meta"
    )
    with pytest.raises(DataError, match=r"fine label \d+, outside the 50 classes.*expected 0\.\.49"):
        Cifar100DataModule(str(bad), verify_checksums=False).setup("fit")


def test_cifar_resnet34_stem_channels_last() -> None:
    net = build_backbone("resnet34", num_classes=100, cifar_stem=True)
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert isinstance(net.maxpool, torch.nn.Identity)
    assert (
        net.layer4(
            net.layer3(net.layer2(net.layer1(net.relu(net.bn1(net.conv1(torch.zeros(1, 3, 32, 32)))))))
        ).shape[-1]
        == 4
    )
    model = ImageClassifier("resnet34", num_classes=100, cifar_stem=True, channels_last=True)
    assert model.net.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)
