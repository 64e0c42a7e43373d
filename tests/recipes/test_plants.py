"""PlantDataModule: every layout, odd image files, and the bad inputs."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from recipe_helpers import PLANT_CLASSES, plant_image

from lit_explain.data import PlantDataModule
from lit_explain.data.images import ImageDecodeError, load_image
from lit_explain.errors import DataError


def _module(root: Path, **kwargs) -> PlantDataModule:
    kwargs.setdefault("image_size", 32)
    return PlantDataModule(str(root), num_workers=0, batch_size=4, **kwargs)


def test_split_files_with_integer_labels(plants_split_dirs: Path) -> None:
    dm = _module(plants_split_dirs, class_names=list(PLANT_CLASSES))
    dm.setup("fit")
    assert dm.layout == "split_files" and dm.class_names == list(PLANT_CLASSES)
    assert [len(dm.records()[s]) for s in ("train", "val", "test")] == [18, 6, 6]
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 32, 32)
    # 0_000.jpg is class_names[0] whatever the extension's case.
    assert all(r.label == int(r.path.name.split("_")[0]) for r in dm.records()["val"])
    assert {p.suffix for p in (r.path for r in dm.records()["train"])} == {".jpg", ".JPG", ".jpeg", ".png"}


def test_split_files_with_names_and_imagefolder(
    plants_named_split_dirs: Path, plants_imagefolder: Path
) -> None:
    named = _module(plants_named_split_dirs)
    folders = _module(plants_imagefolder)
    assert named.layout == "split_files" and folders.layout == "split_folders"
    assert named.class_names == folders.class_names == sorted(PLANT_CLASSES)
    assert torch.equal(named.split_labels("test"), folders.split_labels("test"))
    ordered = _module(plants_imagefolder, class_names=list(PLANT_CLASSES))
    assert ordered.class_names == list(PLANT_CLASSES)
    sample = ordered.dataset("val")[0]
    assert sample["image"].shape == (3, 32, 32) and ordered.class_names[sample["label"]] in str(
        ordered.records()["val"][0].path
    )


def test_flat_and_root_class_folders_are_split_stratified(plants_flat: Path, tmp_path_factory) -> None:
    dm = _module(plants_flat, val_fraction=0.2, test_fraction=0.2)
    assert dm.layout == "flat"
    sizes = [len(dm.records()[s]) for s in ("train", "val", "test")]
    assert sizes == [18, 6, 6]
    for split in ("val", "test"):
        assert torch.bincount(dm.split_labels(split)).tolist() == [2, 2, 2]
    again = _module(plants_flat, val_fraction=0.2, test_fraction=0.2)
    assert [r.path for r in again.records()["val"]] == [r.path for r in dm.records()["val"]]
    root = tmp_path_factory.mktemp("root_folders")
    for c, name in enumerate(PLANT_CLASSES):
        for i in range(5):
            plant_image(root / name / f"{i}.png", c)
    folders = _module(root, val_fraction=0.2, test_fraction=0.2)
    assert folders.layout == "folders" and [len(folders.records()[s]) for s in ("train", "val", "test")] == [
        9,
        3,
        3,
    ]


def test_image_modes_and_exif(tmp_path: Path) -> None:
    for c, name in enumerate(PLANT_CLASSES):
        for i, mode in enumerate(("L", "RGBA", "CMYK", "RGB", "P")):
            suffix = ".jpg" if mode in ("L", "CMYK", "RGB") else ".png"
            plant_image(tmp_path / f"{name}_{i}{suffix}", c, mode=mode)
    # A portrait photo stored landscape with EXIF orientation 6 (rotate 90 degrees clockwise to view).
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = 255  # left half white as stored -> top half white as viewed
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(tmp_path / "oak_exif.jpg", exif=exif.tobytes(), quality=95)
    dm = _module(tmp_path, val_fraction=0.2, test_fraction=0.2, augment=False, image_size=40)
    for split in ("train", "val", "test"):
        for i in range(len(dm.dataset(split))):
            assert dm.dataset(split)[i]["image"].shape == (3, 40, 40)
    exif_index = next(
        i
        for i, r in enumerate(dm.records()["train"] + dm.records()["val"] + dm.records()["test"])
        if r.path.name == "oak_exif.jpg"
    )
    everything = dm.records()["train"] + dm.records()["val"] + dm.records()["test"]
    split = "train" if exif_index < len(dm.records()["train"]) else None
    record = everything[exif_index]
    from lit_explain.data.images import load_image

    viewed = np.asarray(load_image(record.path))
    assert viewed.shape[:2] == (40, 20) and viewed[:20].mean() > 200 and viewed[20:].mean() < 50
    assert split in ("train", None)


def test_corrupt_image_error_and_skip(plants_flat: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A file that is no image at all: found from its header during setup, before any training.
    (plants_flat / "oak_999.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(
        DataError,
        match=r"^1 image\(s\) cannot be used: cannot decode image .*oak_999\.jpg: not a recognised image "
        r"format .*--data\.skip_bad_images=true",
    ):
        _module(plants_flat, val_fraction=0.2, test_fraction=0.2).records()
    # A JPEG cut short has a good header: it fails when read, with an error naming the file.
    whole = (plants_flat / "oak_000.jpg").read_bytes()
    (plants_flat / "oak_999.jpg").write_bytes(whole[:-200])  # header whole, scan cut short
    dm = _module(plants_flat, val_fraction=0.2, test_fraction=0.2, augment=False)
    bad = next(
        (s, i)
        for s in ("train", "val", "test")
        for i, r in enumerate(dm.records()[s])
        if r.path.name == "oak_999.jpg"
    )
    with pytest.raises(ImageDecodeError, match=r"oak_999\.jpg"):
        dm.dataset(bad[0])[bad[1]]
    with caplog.at_level(logging.WARNING):
        skipping = _module(plants_flat, val_fraction=0.2, test_fraction=0.2, skip_bad_images=True)
        total = sum(len(skipping.records()[s]) for s in ("train", "val", "test"))
    assert total == 30 and [p.name for p, _ in skipping.skipped] == ["oak_999.jpg"]
    assert "skipped 1 unreadable image(s)" in caplog.text and "oak_999.jpg" in caplog.text


def test_bad_inputs(tmp_path: Path, plants_split_dirs: Path, plants_named_split_dirs: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        _module(tmp_path / "nope").setup("fit")
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    (empty / "val").mkdir()
    with pytest.raises(DataError, match=r"train/val/ but no test/"):
        _module(empty).setup("fit")
    (empty / "test").mkdir()
    for split in ("train", "test"):
        plant_image(empty / split / "oak_1.jpg", 0)
        plant_image(empty / split / "fern_1.jpg", 2)
    with pytest.raises(DataError, match=r"the val split is empty: no images found in .*val"):
        _module(empty).setup("fit")
    # A class missing from a split.
    for f in (plants_named_split_dirs / "val").glob("fern_*"):
        f.unlink()
    with pytest.raises(
        DataError, match=r"val split .* has no images of class\(es\) fern; found maple: 2, oak: 2"
    ):
        _module(plants_named_split_dirs).setup("fit")
    # A label outside the class list (integer and named).
    with pytest.raises(DataError, match=r"has label 2, outside data.class_names \(2 classes, labels 0..1\)"):
        _module(plants_split_dirs, class_names=["a", "b"]).setup("fit")
    with pytest.raises(DataError, match=r"label 'oak', which is not in data.class_names \(maple, fern\)"):
        PlantDataModule(str(plants_named_split_dirs / "train"), class_names=["maple", "fern"]).class_names  # noqa: B018
    # A file name that does not follow {label}_{id}.jpg.
    plant_image(plants_split_dirs / "train" / "IMG1234.jpg", 0)
    with pytest.raises(
        DataError, match=r"'IMG1234.jpg' .* does not follow the \{label\}_\{id\}.jpg convention"
    ):
        _module(plants_split_dirs, class_names=list(PLANT_CLASSES)).setup("fit")
    # A flat folder too small for a class to reach every split.
    tiny = tmp_path / "tiny"
    for i in range(6):
        plant_image(tiny / f"oak_{i}.jpg", 0)
    plant_image(tiny / "fern_0.jpg", 2)
    with pytest.raises(DataError, match=r"class 'fern' would have no samples in the .* split"):
        _module(tiny, val_fraction=0.2, test_fraction=0.2).setup("fit")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_bombs_and_oversize_images_are_named_or_skipped(
    plants_flat: Path, huge_png, caplog: pytest.LogCaptureFixture
) -> None:
    huge_png(20000, 20000, name="oak_bomb.png").replace(plants_flat / "oak_bomb.png")  # PIL's guard
    huge_png(8000, 8000, name="fern_scan.png").replace(plants_flat / "fern_scan.png")  # our 50 MP limit
    with pytest.raises(DataError) as caught:
        _module(plants_flat, val_fraction=0.2, test_fraction=0.2).setup("fit")
    message = str(caught.value)
    assert message.startswith("2 image(s) cannot be used: "), message
    assert "fern_scan.png has 8000x8000 = 64,000,000 pixels, more than the limit of 50,000,000" in message
    assert "raise data.max_image_pixels" in message and "oak_bomb.png is too large to decode" in message
    assert "--data.skip_bad_images=true" in message
    with caplog.at_level(logging.WARNING):
        skipping = _module(plants_flat, val_fraction=0.2, test_fraction=0.2, skip_bad_images=True)
        kept = [r.path.name for s in ("train", "val", "test") for r in skipping.records()[s]]
    assert len(kept) == 30 and sorted(p.name for p, _ in skipping.skipped) == [
        "fern_scan.png",
        "oak_bomb.png",
    ]
    assert "skipped 2 unreadable image(s) in all: " in caplog.text  # "all": the flat folder, before splitting
    # A raised limit admits the 64 MP scan (decoded once, reduced right away); PIL's guard still refuses the bomb.
    raised = _module(
        plants_flat, val_fraction=0.2, test_fraction=0.2, skip_bad_images=True, max_image_pixels=70_000_000
    )
    raised.records()
    assert [p.name for p, _ in raised.skipped] == ["oak_bomb.png"]


def test_a_large_jpeg_in_a_plant_folder_is_decoded_small(plants_flat: Path, flat_jpeg) -> None:
    flat_jpeg(4096, 4096, name="oak_big.jpg").replace(plants_flat / "oak_big.jpg")
    dm = _module(plants_flat, val_fraction=0.2, test_fraction=0.2, augment=False)
    split, i = next(
        (s, i)
        for s in ("train", "val", "test")
        for i, r in enumerate(dm.records()[s])
        if r.path.name == "oak_big.jpg"
    )
    dataset = dm.dataset(split)
    assert dataset.load_kwargs["size"] == (32, 32)
    # decoded at 1/8 (512 px), then reduce(8): 64 px, twice the 32 px input; never the full 4096 px
    assert load_image(plants_flat / "oak_big.jpg", **dataset.load_kwargs).size == (64, 64)
    sample = dataset[i]
    torch.testing.assert_close(
        sample["image"], (torch.full((3, 32, 32), 128 / 255) - dm_mean(dm)) / dm_std(dm), atol=1e-6, rtol=0
    )


def dm_mean(dm: PlantDataModule) -> torch.Tensor:
    return torch.tensor(dm.mean)[:, None, None]


def dm_std(dm: PlantDataModule) -> torch.Tensor:
    return torch.tensor(dm.std)[:, None, None]


def test_one_class_only_is_a_clear_error(tmp_path: Path) -> None:
    for i in range(6):
        plant_image(tmp_path / "flat" / f"oak_{i}.jpg", 0)
        plant_image(tmp_path / "folders" / "oak" / f"{i}.jpg", 0)
    for root in ("flat", "folders"):
        with pytest.raises(
            DataError,
            match=r"holds images of one class only \(oak: 6 images\); a classifier needs at least two",
        ):
            _module(tmp_path / root).setup("fit")
    with pytest.raises(
        ValueError, match=r"data.class_names=\['oak'\]: a classifier needs at least two classes"
    ):
        _module(tmp_path / "flat", class_names=["oak"])


def test_class_folders_are_read_recursively(tmp_path: Path) -> None:
    # ImageFolder's rule: anything below a class folder belongs to that class; hidden folders are skipped.
    for c, name in enumerate(PLANT_CLASSES):
        for i in range(3):
            plant_image(tmp_path / name / f"{i}.jpg", c)
            plant_image(tmp_path / name / "2024" / "june" / f"{i}.png", c)
        plant_image(tmp_path / name / ".thumbnails" / "x.jpg", c)
    (tmp_path / "oak" / "loop").symlink_to(tmp_path / "oak")  # a symlink loop is walked once
    dm = _module(tmp_path, val_fraction=0.2, test_fraction=0.2)
    records = [r for s in ("train", "val", "test") for r in dm.records()[s]]
    assert len(records) == 18 and dm.class_names == sorted(PLANT_CLASSES)
    nested = [r for r in records if "june" in r.path.parts]
    assert len(nested) == 9 and all(dm.class_names[r.label] == r.path.parts[-4] for r in nested)


def test_images_in_subfolders_of_a_file_name_layout_are_reported(
    plants_flat: Path, plants_split_dirs: Path
) -> None:
    for i in range(4):
        plant_image(plants_flat / "extra" / f"oak_{i}.jpg", 0)
    plant_image(plants_flat / "Fern" / "deep" / "fern_9.jpg", 2)
    with pytest.raises(
        DataError,
        match=r"flat holds images named \{label\}_\{id\}.jpg and 5 more image\(s\) in subfolders "
        r"\(Fern/deep/fern_9\.jpg, extra/oak_0\.jpg, extra/oak_1\.jpg, \.\.\.\), which this layout does not read",
    ):
        _module(plants_flat, val_fraction=0.2, test_fraction=0.2).records()
    plant_image(plants_split_dirs / "val" / "old" / "0_100.jpg", 0)
    with pytest.raises(
        DataError, match=r"val holds images named .* and 1 more image\(s\) in subfolders \(old/0_100"
    ):
        _module(plants_split_dirs, class_names=list(PLANT_CLASSES)).records()
