"""The recommendation table, rule by rule: each fires on its numbers only, says them, and follows the run's settings."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from lit_explain.audit.recommendations import RULES, as_text, recommend


def quiet() -> dict[str, Any]:
    """A report where no rule fires: calibrated, on the object, faithful maps, no dominant error."""
    return {
        "split": "val",
        "accuracy": 0.9,
        "per_class": [{"name": "a", "accuracy": 0.9}, {"name": "b", "accuracy": 0.88}],
        "calibration": {
            "ece": 0.03,
            "accuracy": 0.9,
            "mean_confidence": 0.91,
            "gap": 0.01,
            "direction": "calibrated",
            "over_share": 0.0,
            "under_share": 0.0,
            "errors": 100,
            "high_confidence_errors": 5,
            "high_confidence_error_share": 0.05,
            "mean_confidence_wrong": 0.6,
        },
        "confused_pairs": [
            {"rank": 1, "true_name": "b", "pred_name": "a", "count": 2, "share_of_errors": 0.02}
        ],
        "attention": {
            "method": "gradcam",
            "layer": "layer4",
            "layer_resolution": [7, 7],
            "has_masks": True,
            "overall": {
                "energy_in_mask": 0.6,
                "mask_area": 0.2,
                "pointing_game": 0.9,
                "concentration_pred": 0.5,
            },
            "concentration_relative": 0.8,
            "concentration_reference": 0.6,
            "randomisation": {"samples": 8, "spearman_mean": 0.1, "randomised_layers": ["layer4.1", "fc"]},
            "faithfulness": {"samples": 8, "better_than_random": True},
            "fixed_region": {"flagged": False},
        },
        "checkpoint_metrics": {"train/acc": 0.95},
        "training_settings": {"label_smoothing": 0.0, "weight_decay": 5e-4, "augment": True},
    }


def overconfident(report: dict) -> None:
    report["calibration"].update(
        ece=0.21, accuracy=0.7, mean_confidence=0.92, gap=0.22, direction="overconfident", over_share=0.85
    )


def underconfident(report: dict) -> None:
    # The plant run of issue 11: accuracy 0.417, mean confidence 0.295, label smoothing already 0.1.
    report["calibration"].update(
        ece=0.122,
        accuracy=0.417,
        mean_confidence=0.295,
        gap=-0.122,
        direction="underconfident",
        under_share=0.9,
    )


def set_path(report: dict, path: str, value: Any) -> None:
    *head, last = path.split(".")
    target = report
    for key in head:
        target = target[key]
    target[last] = value


# rule -> (how to make it fire, text its message must contain)
FIRING = {
    "attention_off_object": (
        lambda r: r["attention"]["overall"].update(energy_in_mask=0.12, pointing_game=0.3),
        "energy inside the mask 0.12",
    ),
    "fixed_region": (
        lambda r: set_path(
            r,
            "attention.fixed_region",
            {
                "flagged": True,
                "hot_cell": "top-left",
                "peak_share": 0.8,
                "energy_share": 0.4,
                "classes_with_peak_there": 5,
                "classes_considered": 6,
            },
        ),
        "the top-left cell holds the peak of 80% of the maps, for 5/6 classes",
    ),
    "randomisation_failed": (
        lambda r: r["attention"]["randomisation"].update(spearman_mean=0.93),
        "mean Spearman rank correlation 0.93 over 8 samples",
    ),
    "unfaithful_maps": (
        lambda r: set_path(
            r,
            "attention.faithfulness",
            {
                "samples": 8,
                "better_than_random": False,
                "score": 0.01,
                "random_score": 0.02,
                "deletion_auc": 0.4,
                "insertion_auc": 0.41,
            },
        ),
        "insertion - deletion AUC 0.010 vs 0.020",
    ),
    "overconfident": (overconfident, "overconfident: mean confidence 0.920 vs accuracy 0.700 (gap +0.220)"),
    "underconfident": (
        underconfident,
        "underconfident: mean confidence 0.295 vs accuracy 0.417 (gap -0.122)",
    ),
    "confident_errors": (
        lambda r: r["calibration"].update(
            high_confidence_errors=60, high_confidence_error_share=0.6, mean_confidence_wrong=0.93
        ),
        "60 of 100 errors (60%) are made with confidence >= 0.90",
    ),
    "dominant_pairs": (
        lambda r: r["confused_pairs"][0].update(count=40, share_of_errors=0.4),
        "the top pair b -> a is 40% of all errors",
    ),
    "weak_classes": (
        lambda r: r["per_class"].append({"name": "c", "accuracy": 0.3}),
        "1 classes trail the mean class accuracy 0.69",
    ),
    "overfitting": (
        lambda r: r.update(accuracy=0.7),
        "training accuracy 0.95 vs 0.70 on val: a gap of 0.25",
    ),
    "diffuse_attention": (
        lambda r: r["attention"].update(concentration_relative=0.1),
        "10% of what one active cell of layer4 (7x7)",
    ),
}


def test_the_quiet_report_fires_nothing() -> None:
    recs = recommend(quiet())
    assert [r["rule"] for r in recs] == ["no_issue"]
    assert "accuracy 0.900, ECE 0.030, energy in mask 0.60" in recs[0]["message"]


def test_every_rule_in_the_table_is_walked() -> None:
    assert {rule.name for rule in RULES} == set(FIRING)


@pytest.mark.parametrize("rule", [r for r in RULES], ids=lambda r: r.name)
def test_each_rule_fires_alone_on_its_numbers(rule) -> None:
    report = quiet()
    make, text = FIRING[rule.name]
    assert rule.apply(report) is None  # quiet numbers: silent
    make(report)
    fired = rule.apply(report)
    assert fired is not None and fired["severity"] == rule.severity
    assert text in fired["message"], fired["message"]
    assert [r["rule"] for r in recommend(report)] == [rule.name]  # no other rule reacts to these numbers


def test_direction_follows_confidence_against_accuracy() -> None:
    over, under = quiet(), quiet()
    overconfident(over)
    underconfident(under)
    over_rec = {r["rule"]: r for r in recommend(over)}
    under_rec = {r["rule"]: r for r in recommend(under)}
    assert set(over_rec) == {"overconfident"} and set(under_rec) == {"underconfident"}
    assert "label smoothing (model.label_smoothing: 0.1)" in over_rec["overconfident"]["action"]
    assert "temperature above 1" in over_rec["overconfident"]["action"]
    # Under-confidence never gets label smoothing (which lowers confidence further) as advice.
    assert "train with label smoothing" not in under_rec["underconfident"]["action"]
    assert "temperature below 1" in under_rec["underconfident"]["action"]


def test_no_advice_to_set_what_the_run_already_has() -> None:
    # Issue 11: an under-confident plant model with label_smoothing 0.1 was told to "train with label smoothing".
    under = quiet()
    underconfident(under)
    under["training_settings"]["label_smoothing"] = 0.1
    action = recommend(under)[0]["action"]
    assert "label smoothing (0.1 in this run) caps confidence: lower it" in action
    assert "train with label smoothing" not in action
    over = quiet()
    overconfident(over)
    over["training_settings"]["label_smoothing"] = 0.1
    action = recommend(over)[0]["action"]
    assert "model.label_smoothing: 0.1" not in action and "already 0.1" in action
    over["training_settings"]["label_smoothing"] = 0.05
    assert "raise label smoothing from 0.05 to 0.1" in recommend(over)[0]["action"]
    fit = quiet()
    fit["accuracy"] = 0.7
    fit["training_settings"] = {"label_smoothing": 0.1, "weight_decay": 0.0, "augment": False}
    action = recommend(fit)[0]["action"]
    assert "weight decay (model.weight_decay: 0.0005)" in action and "data.augment: true" in action
    assert "label smoothing" not in action
    fit["training_settings"] = {"label_smoothing": 0.0, "weight_decay": 1e-3, "augment": True}
    action = recommend(fit)[0]["action"]
    assert "stronger weight decay (model.weight_decay is 0.001)" in action and "label smoothing" in action


def test_worst_first_and_text() -> None:
    report = quiet()
    for name in ("diffuse_attention", "randomisation_failed", "weak_classes"):
        FIRING[name][0](report)
    recs = recommend(copy.deepcopy(report))
    assert [r["rule"] for r in recs] == ["randomisation_failed", "weak_classes", "diffuse_attention"]
    text = as_text(recs)
    assert "1. [HIGH] randomisation_failed" in text and "3. [LOW] diffuse_attention" in text
