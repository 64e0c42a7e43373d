"""The synthetic shapes data: determinism, masks, labels and the spurious-cue mode."""

import numpy as np
import pytest
import torch

from lit_explain.data.shapes import (
    CUE_COLOURS,
    SHAPE_NAMES,
    ShapesDataModule,
    ShapesDataset,
    render_shape_sample,
)
from lit_explain.errors import ConfigError


def test_sample_is_a_pure_function_of_seed_split_index():
    a = render_shape_sample(3, "train", 17)
    b = render_shape_sample(3, "train", 17)
    for x, y in zip(a[::2], b[::2], strict=True):
        np.testing.assert_array_equal(x, y)
    assert a[1] == b[1]
    assert not np.array_equal(a[0], render_shape_sample(4, "train", 17)[0])
    assert not np.array_equal(a[0], render_shape_sample(3, "val", 17)[0])
    assert not np.array_equal(a[0], render_shape_sample(3, "train", 18)[0])


def test_datamodules_with_the_same_seed_give_identical_batches():
    batches = []
    for _ in range(2):
        dm = ShapesDataModule(train_size=64, val_size=40, batch_size=20, seed=5)
        dm.setup("fit")
        batches.append(next(iter(dm.val_dataloader())))
    for key in ("image", "label", "mask", "index"):
        assert torch.equal(batches[0][key], batches[1][key])
    assert batches[0]["image"].shape == (20, 3, 64, 64)
    assert batches[0]["mask"].dtype == torch.bool and batches[0]["mask"].shape == (20, 64, 64)


@pytest.mark.parametrize("index", range(24))
def test_mask_covers_exactly_the_drawn_object(index):
    image, label, mask = render_shape_sample(0, "val", index, noise=0.0)
    inside = image[mask]
    # Without noise every object pixel has the object's single colour ...
    assert len(np.unique(inside, axis=0)) == 1
    colour = inside[0]
    # ... and (apart from a few texture pixels that happen to match) no pixel outside the mask has it.
    outside_same = np.all(image[~mask] == colour, axis=1).sum()
    assert outside_same <= 2
    area = mask.mean()
    expected = {"ring": (0.02, 0.25)}.get(SHAPE_NAMES[label], (0.03, 0.35))
    assert expected[0] < area < expected[1], (SHAPE_NAMES[label], area)


def test_labels_are_known_without_drawing_and_cover_every_class():
    ds = ShapesDataset(length=120, split="train", seed=1)
    labels = [ds.label(i) for i in range(len(ds))]
    assert labels == [ds[i]["label"] for i in range(len(ds))]
    assert set(labels) == set(range(len(SHAPE_NAMES)))


def _corner(image: np.ndarray, side: int = 8) -> np.ndarray:
    return image[1 : 1 + side, 1 : 1 + side].reshape(-1, 3).astype(float).mean(0)


def test_spurious_cue_is_in_train_only_and_tied_to_the_label():
    dm = ShapesDataModule(train_size=60, val_size=60, spurious_cue=True, cue_probability=1.0)
    train, val = dm.dataset("train"), dm.dataset("val")
    for i in range(60):
        image, label, _ = train.raw(i)
        assert np.abs(_corner(image) - CUE_COLOURS[label]).max() < 12  # noise std 12, averaged over 64 px
        val_image, _, _ = val.raw(i)
        assert min(np.abs(_corner(val_image) - c).max() for c in CUE_COLOURS) > 3


def test_cue_probability_and_random_eval_cue():
    dm = ShapesDataModule(
        train_size=400, val_size=200, spurious_cue=True, cue_probability=0.5, eval_cue="random"
    )
    train = dm.dataset("train")
    with_cue = sum(
        np.abs(_corner(train.raw(i)[0]) - CUE_COLOURS[train.raw(i)[1]]).max() < 12 for i in range(400)
    )
    assert 150 < with_cue < 250
    val = dm.dataset("val")
    patches = [int(np.abs(_corner(val.raw(i)[0])[None] - CUE_COLOURS).max(1).argmin()) for i in range(200)]
    labels = [val.raw(i)[1] for i in range(200)]
    agreement = np.mean(np.array(patches) == np.array(labels))
    assert agreement < 0.35  # chance is 1/6: the eval patch says nothing about the label


def test_bad_settings_are_reported():
    with pytest.raises(ConfigError, match="image_size"):
        ShapesDataModule(image_size=8)
    with pytest.raises(ConfigError, match="cue_probability"):
        ShapesDataModule(cue_probability=1.5)
    with pytest.raises(ConfigError, match="val_size"):
        ShapesDataModule(val_size=0)


def test_probe_indices_are_deterministic_and_balanced():
    dm = ShapesDataModule(val_size=200)
    probes = dm.probe_indices(per_class=2, max_total=32)
    assert probes == ShapesDataModule(val_size=200).probe_indices(per_class=2, max_total=32)
    labels = dm.split_labels("val")[probes].tolist()
    assert sorted(labels) == sorted(list(range(6)) * 2)
    assert len(dm.probe_indices(per_class=10, max_total=7)) == 7
