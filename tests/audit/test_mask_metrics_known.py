"""The audit's mask metrics on hand-made maps and masks whose answers are worked out by hand.

The audit's own path is used (``sample_stats`` -> ``StatsStore`` -> ``aggregate``), with masks in the
layout a data module yields (``[B, H, W]`` bool, True on the object), so an inverted or misaligned mask
fails here in a second rather than only in the slow end-to-end runs.
"""

from __future__ import annotations

import pytest
import torch

from lit_explain.audit.attention import Maps, sample_stats
from lit_explain.audit.stats import StatsStore, aggregate

SIZE = 8


def _object_mask() -> torch.Tensor:
    """The object is the top-left 4x4 quadrant of an 8x8 image: area 16/64 = 0.25."""
    mask = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    mask[:4, :4] = True
    return mask


def _map_on_object() -> torch.Tensor:
    """Peak 1.0 on a 2x2 block inside the object, 0.5 on a 2x2 block outside it.

    Energy inside = 4 x 1.0 = 4; total = 4 + 4 x 0.5 = 6 -> 2/3. The peak is inside -> pointing hit.
    """
    m = torch.zeros(1, SIZE, SIZE)
    m[0, 1:3, 1:3] = 1.0
    m[0, 5:7, 5:7] = 0.5
    return m


def _map_off_object() -> torch.Tensor:
    """All of the map outside the object (bottom-right): energy inside 0, peak outside -> miss."""
    m = torch.zeros(1, SIZE, SIZE)
    m[0, 5:7, 5:7] = 1.0
    m[0, 6, 6] = 0.75  # not constant inside the block, so there is one clear maximum
    return m


def _stats(maps: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
    # The same tensor for true and predicted class, as the audit passes when the prediction is right.
    return sample_stats(Maps(true=maps, pred=maps, layer="hand-made", raw_size=(SIZE, SIZE)), masks)


def test_map_on_the_object_scores_by_hand() -> None:
    stats = _stats(_map_on_object()[None], _object_mask()[None])
    assert stats["pointing_game"].tolist() == [1.0]
    assert stats["energy_in_mask"].tolist() == pytest.approx([2 / 3])
    assert stats["energy_in_mask_true"].tolist() == pytest.approx([2 / 3])
    assert stats["mask_area"].tolist() == [0.25]


def test_map_off_the_object_scores_zero() -> None:
    stats = _stats(_map_off_object()[None], _object_mask()[None])
    assert stats["pointing_game"].tolist() == [0.0]
    assert stats["energy_in_mask"].tolist() == [0.0]
    assert stats["mask_area"].tolist() == [0.25]


def test_true_and_predicted_class_maps_are_scored_separately() -> None:
    # A wrong prediction: the true-class map is on the object, the predicted-class map is off it.
    maps = Maps(
        true=_map_on_object()[None],
        pred=_map_off_object()[None],
        layer="hand-made",
        raw_size=(SIZE, SIZE),
    )
    stats = sample_stats(maps, _object_mask()[None])
    assert stats["energy_in_mask"].tolist() == [0.0]
    assert stats["energy_in_mask_true"].tolist() == pytest.approx([2 / 3])


def test_report_numbers_average_the_samples_right_and_wrong() -> None:
    """Two samples through the store and the aggregation the report's ``attention.overall`` comes from."""
    maps = torch.stack([_map_on_object(), _map_off_object()])
    masks = torch.stack([_object_mask(), _object_mask()])
    store = StatsStore()
    store.add([7, 9], _stats(maps, masks), torch.zeros(2, 24, 24))
    _, values, _ = store.tensors()
    labels, correct = torch.tensor([0, 1]), torch.tensor([True, False])
    overall, by_class = aggregate(values, labels, correct, classes=[0, 1])
    assert overall["energy_in_mask"] == pytest.approx(1 / 3)
    assert overall["pointing_game"] == pytest.approx(0.5)
    assert overall["energy_in_mask_right"] == pytest.approx(2 / 3)
    assert overall["energy_in_mask_wrong"] == 0.0
    assert overall["mask_area"] == pytest.approx(0.25)
    assert by_class[0]["pointing_game"] == 1.0 and by_class[1]["pointing_game"] == 0.0
