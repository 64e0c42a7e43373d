"""Training-dynamics findings on hand-made numbers: margins, AUM, cartography, confident learning, ranking,
the label-issues table and finding, and the shapes data module's reproducible label noise."""

from __future__ import annotations

import math

import pytest
import torch

from lit_explain.data import ShapesDataModule
from lit_explain.data.shapes import flip_labels
from lit_explain.findings import dynamics as dyn


def test_step_values_margin_probability_correct_and_runner_up() -> None:
    logits = torch.tensor([[2.0, 0.5, 1.0], [0.0, 3.0, 1.0]])
    v = dyn.step_values(logits, torch.tensor([2, 1]))
    assert v.margin.tolist() == [-1.0, 2.0]  # 1 - 2 (class 0 beats it); 3 - 1
    assert v.correct.tolist() == [0.0, 1.0]
    assert v.other.tolist() == [0, 2]
    torch.testing.assert_close(v.prob, logits.softmax(1)[[0, 1], [2, 1]])


def test_soft_labels_count_towards_their_dominant_class() -> None:
    logits = torch.tensor([[2.0, 0.5, 1.0]])
    soft = dyn.step_values(logits, torch.tensor([[0.2, 0.7, 0.1]]))
    hard = dyn.step_values(logits, torch.tensor([1]))
    assert soft.margin.tolist() == hard.margin.tolist() == [-1.5]


def test_aum_and_cartography_from_per_epoch_logits() -> None:
    # Sample 0: margins +2 then -2 (AUM 0); sample 1: +1, +3 (AUM 2); sample 2 is never seen.
    logits = torch.tensor(
        [
            [[2.0, 0.0], [1.0, 0.0], [float("nan")] * 2],
            [[0.0, 2.0], [3.0, 0.0], [float("nan")] * 2],
        ]
    )
    stats = dyn.stats_from_logits(logits, torch.tensor([0, 0, 1]))
    margin = dyn.aum(stats)
    assert margin[:2].tolist() == [0.0, 2.0] and math.isnan(margin[2])
    carto = dyn.cartography(stats)
    p = torch.sigmoid(torch.tensor([2.0, -2.0]))  # sample 0's label probability in the two epochs
    torch.testing.assert_close(carto.confidence[0], p.mean())
    torch.testing.assert_close(carto.variability[0], p.std(unbiased=False), atol=1e-6, rtol=1e-5)
    assert carto.correctness[:2].tolist() == [0.5, 1.0]
    assert stats.label.tolist() == [0, 0, -1] and stats.other.tolist() == [1, 1, -1]
    # Late-weighted AUM: epoch 1 counts 1, epoch 2 counts 4: sample 0 (2*1 - 2*4) / 5 = -1.2
    late = dyn.late_aum(stats)
    assert late[:2].tolist() == pytest.approx([-1.2, (1 * 1 + 3 * 4) / 5])
    assert dyn.suspicion(stats, "late_aum")[0] == pytest.approx(1.2)


def test_ranking_puts_the_most_suspicious_first_nan_last_ties_by_index() -> None:
    score = torch.tensor([0.5, float("nan"), 2.0, 0.5, -1.0])
    assert dyn.ranking(score).tolist() == [2, 0, 3, 4, 1]
    truth = torch.tensor([2, 3])
    assert dyn.precision_at_k(score, truth) == 0.5  # top 2: {2, 0}
    assert dyn.recall_at(score, truth, 3) == 1.0


def test_confident_learning_flags_the_off_diagonal_of_the_confident_joint() -> None:
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.2, 0.8], [0.95, 0.05]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    result = dyn.confident_learning(probs, labels)
    # thresholds: class 0 = mean(0.9, 0.8) = 0.85; class 1 = mean(0.7, 0.8, 0.05) = 0.5167
    assert result.flagged.tolist() == [False, False, False, False, True]
    assert dyn.ranking(result.score)[0] == 4
    assert result.suggested.tolist() == [0, 0, 1, 1, 0]


def _table(margins: list[float], labels: list[int], threshold: float | None = 0.0) -> dyn.LabelIssueTable:
    logits = torch.stack([torch.tensor([[m, 0.0, -5.0] for m in margins])])  # margin of class 0 over class 1
    stats = dyn.stats_from_logits(logits, torch.tensor(labels))
    return dyn.label_issue_table(
        stats, [f"f{i}.jpg" for i in range(len(margins))], ["a", "b", "c"], "aum", threshold
    )


def test_label_issue_table_lists_every_sample_most_suspicious_first() -> None:
    table = _table([3.0, -2.0, 1.0, -0.5], [0, 0, 0, 0])
    assert [r["source"] for r in table.rows] == ["f1.jpg", "f3.jpg", "f2.jpg", "f0.jpg"]
    assert [r["rank"] for r in table.rows] == [1, 2, 3, 4]
    assert table.flagged == 2 and [r["flagged"] for r in table.rows] == [1, 1, 0, 0]
    assert table.rows[0]["given_label"] == "a" and table.rows[0]["suggested_label"] == "b"
    assert table.rows[0]["score"] == 2.0 and table.rows[0]["aum"] == -2.0
    assert set(dyn.CSV_COLUMNS) <= set(table.rows[0])
    assert _table([3.0, -2.0, 1.0, -0.5], [0, 0, 0, 0], threshold=1.5).flagged == 3


def test_confident_learning_count_estimate_for_the_baseline() -> None:
    # Class 0 and class 1 samples, two of the class-1 ones labelled 0: the count estimate says 2.
    probs = torch.tensor([[0.9, 0.1]] * 6 + [[0.1, 0.9]] * 6 + [[0.05, 0.95]] * 2)
    labels = torch.tensor([0] * 6 + [1] * 6 + [0] * 2)
    assert dyn.estimated_issue_count(probs, labels) == 2
    stats = dyn.stats_from_logits(probs.log()[None], labels)  # softmax(log p) = p: one epoch of these
    torch.testing.assert_close(stats.mean_probs(), probs)


def _margins_of(groups: list[tuple[int, float, float]], seed: int = 0) -> torch.Tensor:
    """Normal margins: (count, mean, spread) per group."""
    g = torch.Generator().manual_seed(seed)
    return torch.cat([mean + spread * torch.randn(n, generator=g) for n, mean, spread in groups])


def test_mixture_count_finds_the_low_margin_group_whatever_its_size() -> None:
    # Clean samples around +3 (a long tail of hard ones towards 0), wrong labels around -2.
    for wrong in (50, 250, 500):
        margins = _margins_of([(5000 - wrong, 3.0, 1.2), (wrong, -2.0, 1.0)])
        count = dyn.mixture_issue_count(margins)
        assert abs(count - wrong) <= 0.1 * wrong + 10, (wrong, count)


def test_mixture_count_is_zero_when_no_group_has_a_negative_mean_margin() -> None:
    # A clean run: hard samples near 0, none of them on average preferring another class.
    margins = _margins_of([(4500, 4.0, 1.0), (500, 1.0, 0.8)])
    assert dyn.mixture_issue_count(margins) == 0
    assert dyn.mixture_issue_count(torch.tensor([1.0])) == 0  # too few to fit
    assert dyn.mixture_issue_count(torch.full((10,), -1.0)) == 0  # no spread
    with_nan = torch.cat([_margins_of([(900, 3.0, 1.0), (100, -2.0, 1.0)]), torch.full((50,), float("nan"))])
    assert 90 <= dyn.mixture_issue_count(with_nan) <= 110  # unseen samples left out


def test_mixture_count_decides_how_many_are_flagged_by_default() -> None:
    margins = _margins_of([(180, 3.0, 1.0), (20, -2.5, 0.5)]).tolist()
    table = _table(margins, [0] * 200, threshold=None)
    assert table.flagged == dyn.mixture_issue_count(torch.tensor(margins))
    assert 18 <= table.flagged <= 22 and "mixture" in table.rule
    assert all(r["aum"] < 0 for r in table.rows[: table.flagged])


def test_finding_only_when_some_look_wrong_with_the_top_five_sources() -> None:
    assert dyn.label_issues_finding(_table([3.0, 2.0], [0, 0]), epoch=6) is None
    margins = [-1.0 - i for i in range(7)] + [5.0] * 33
    finding = dyn.label_issues_finding(_table(margins, [0] * 40), epoch=6)
    assert finding is not None and finding.kind == "label_issues" and finding.epoch == 6
    assert finding.details["flagged"] == 7 and finding.details["samples"] == 40
    assert finding.details["top_sources"] == ["f6.jpg", "f5.jpg", "f4.jpg", "f3.jpg", "f2.jpg"]
    assert finding.message.startswith("7 of 40 training labels look wrong after epoch 6")
    assert "f6.jpg (given a, looks like b)" in finding.message
    assert finding.severity == "warning"
    assert dyn.label_issues_finding(_table([-1.0] * 9 + [1.0], [0] * 10), 1).severity == "critical"


def test_label_noise_is_reproducible_and_always_moves_to_another_class() -> None:
    labels = [i % 6 for i in range(1000)]
    flips = flip_labels(labels, 0.1, seed=3, num_classes=6)
    assert len(flips) == 100 and flips == flip_labels(labels, 0.1, seed=3, num_classes=6)
    assert all(new != labels[i] for i, new in flips.items())
    assert flips.keys() != flip_labels(labels, 0.1, seed=4, num_classes=6).keys()
    with pytest.raises(ValueError, match="label_noise"):
        ShapesDataModule(label_noise=1.0)


def test_shapes_label_noise_flips_training_labels_only_and_keeps_the_images() -> None:
    noisy = ShapesDataModule(train_size=200, val_size=20, label_noise=0.05, label_noise_seed=1)
    clean = ShapesDataModule(train_size=200, val_size=20)
    flipped = noisy.flipped_indices()
    assert flipped.tolist() == sorted(flipped.tolist()) and len(flipped) == 10
    noisy_labels, clean_labels = noisy.split_labels("train"), clean.split_labels("train")
    changed = (noisy_labels != clean_labels).nonzero().flatten()
    assert changed.tolist() == flipped.tolist()
    i = int(flipped[0])
    a, b = noisy.dataset("train")[i], clean.dataset("train")[i]
    assert torch.equal(a["image"], b["image"]) and a["label"] != b["label"]
    assert a["label"] == int(noisy_labels[i])
    assert torch.equal(noisy.split_labels("val"), clean.split_labels("val"))
    assert clean.flipped_indices().numel() == 0
