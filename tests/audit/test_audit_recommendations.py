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
        "num_samples": 1000,
        "num_classes": 2,
        "per_class": [
            {"name": "a", "accuracy": 0.9, "support": 500, "predicted_as_this": 505},
            {"name": "b", "accuracy": 0.88, "support": 500, "predicted_as_this": 495},
        ],
        "calibration": {
            "gap_se": 0.01,
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
            "faithfulness": {
                "samples": 8,
                "better_than_random": True,
                "deletion_auc": 0.2,
                "insertion_auc": 0.8,
                "random_deletion_auc": 0.5,
                "random_insertion_auc": 0.5,
                "score": 0.6,
                "random_score": 0.0,
                "score_se": 0.05,
                "deletion_se": 0.03,
            },
            "fixed_region": {"flagged": False},
        },
        "checkpoint_metrics": {"train/acc": 0.95},
        "training_progress": {"epochs_done": 15, "max_epochs": 15, "improving": True, "monitor": "val/acc"},
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


def near_chance(report: dict) -> None:
    # Two balanced classes, 1000 samples: chance 0.5, standard error 0.016, so 0.52 is within 2 of them.
    report.update(accuracy=0.52, checkpoint_metrics={"train/acc": 0.55})


# rule -> (how to make it fire, text its message must contain)
FIRING = {
    "shortcut": (
        lambda r: r.update(
            shortcut={
                "fires": True,
                "score": 0.97,
                "threshold": 0.15,
                "where": "top-left corner",
                "region": [0, 0, 10, 16],
                "share": 0.98,
                "classes": 6,
                "follow": 0.98,
                "control_follow": 0.0,
                "samples": 48,
                "picture": "shortcut_region.png",
                "statement": "Shortcut: the model decides from the top-left corner (x 0-10, y 0-16 of 64x64 px)",
                "advice": "Look at what your training images have in the top-left corner; crop or mask it.",
            }
        ),
        "the model decides from the top-left corner (x 0-10, y 0-16 of 64x64 px)",
    ),
    "near_chance": (
        near_chance,
        "accuracy 0.520 on 1000 samples is less than 2 standard errors (0.016) above chance 0.500 (1/2 classes)",
    ),
    "not_converged": (
        lambda r: r["training_progress"].update(epochs_done=2),
        "saved after epoch 2 of 15 (13% of the planned training), with val/acc still improving",
    ),
    "too_few_samples": (
        lambda r: r.update(
            num_samples=70,
            per_class=[
                {"name": "a", "accuracy": 0.9, "support": 50, "predicted_as_this": 50},
                {"name": "b", "accuracy": 0.9, "support": 20, "predicted_as_this": 20},
            ],
        ),
        "1 of 2 classes have fewer than 43 samples (fewest: b with 20; 70 in all)",
    ),
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
        "insertion - deletion AUC 0.010 vs 0.020 for random maps",
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


# -- preconditions: advice that is right or silent (issue 21) ----------------------------------------------


def by_rule(recs: list[dict]) -> dict[str, dict]:
    return {r["rule"]: r for r in recs}


def resnet_two_epochs() -> dict:
    """The tester's ResNet-18: 2 of 15 epochs from scratch, accuracy 0.44 on 36 images of 4 classes, two
    classes never predicted, confidence well below accuracy."""
    report = quiet()
    report.update(num_samples=36, num_classes=4, accuracy=0.44, checkpoint_metrics={"train/acc": 0.5})
    report["per_class"] = [
        {"name": n, "accuracy": a, "support": 9, "predicted_as_this": p}
        for n, a, p in (("a", 1.0, 20), ("b", 0.78, 16), ("c", 0.0, 0), ("d", 0.0, 0))
    ]
    report["calibration"].update(
        accuracy=0.44, mean_confidence=0.25, gap=-0.19, gap_se=0.05, ece=0.19, direction="underconfident"
    )
    report["calibration"]["under_share"] = 0.9
    report["training_progress"].update(epochs_done=2)
    return report


def shapes_forty_steps() -> dict:
    """The tester's 40-step shapes model: accuracy 0.22 on 120 images of 6 classes, maps off the object."""
    report = quiet()
    report.update(num_samples=120, num_classes=6, accuracy=0.22, checkpoint_metrics={})
    report["per_class"] = [
        {"name": f"s{i}", "accuracy": 0.22, "support": 20, "predicted_as_this": 20} for i in range(6)
    ]
    report.pop("training_progress")  # stopped by max_steps: nothing says how far the plan got
    FIRING["attention_off_object"][0](report)
    return report


def test_near_chance_comes_first_and_holds_back_the_shortcut_and_calibration_advice() -> None:
    report = shapes_forty_steps()
    overconfident(report)
    recs = recommend(report)
    first = recs[0]
    assert first["rule"] == "near_chance" and first["severity"] == "high"
    # chance 1/6 = 0.167, standard error sqrt(0.167 * 0.833 / 120) = 0.034: 0.22 is below 0.167 + 2 * 0.034.
    assert (
        "accuracy 0.220 on 120 samples is less than 2 standard errors (0.034) above chance 0.167"
        in first["message"]
    )
    assert "train longer" in first["action"] and "before judging attention" in first["action"]
    rules = by_rule(recs)
    for name in ("attention_off_object", "overconfident"):
        held = rules[name]
        assert held["severity"] == "info" and held["held_back_by"] == ["near_chance"]
        assert held["message"].startswith("held back (near_chance: accuracy 0.22 is at chance (0.17))")
        assert "shortcut" not in held["action"] and "label smoothing" not in held["action"]
    assert "shortcut" in rules["attention_off_object"]["withheld_action"]  # kept for the record, not advised
    assert "[HIGH]" not in as_text(recs).split("near_chance")[1]  # nothing else claims high severity


def test_near_chance_measures_chance_as_always_answering_the_largest_class() -> None:
    report = quiet()
    report["num_classes"] = 3
    report["per_class"] = [
        {"name": "a", "accuracy": 1.0, "support": 800, "predicted_as_this": 1000},
        {"name": "b", "accuracy": 0.0, "support": 100, "predicted_as_this": 0},
        {"name": "c", "accuracy": 0.0, "support": 100, "predicted_as_this": 0},
    ]
    report["accuracy"] = 0.8
    first = recommend(report)[0]
    assert first["rule"] == "near_chance"
    assert "is at or below chance 0.800 (always answering a, 800 of 1000)" in first["message"]
    assert "2 of 3 classes are never predicted (b, c)" in first["message"]
    report["accuracy"] = 0.9  # 0.1 above the majority share with standard error 0.013: learned something
    assert "near_chance" not in by_rule(recommend(report))


def test_at_chance_after_learning_the_training_data_keeps_the_attention_findings() -> None:
    # The spurious-cue model: 0.97 on its training data, chance on a split where the cue is random.
    report = quiet()
    near_chance(report)
    report["checkpoint_metrics"] = {"train/acc": 0.97}
    FIRING["fixed_region"][0](report)
    overconfident(report)
    recs = recommend(report)
    rules = by_rule(recs)
    assert recs[0]["rule"] == "near_chance" and "does not carry over to val" in recs[0]["action"]
    assert rules["fixed_region"]["severity"] == "high" and "held_back_by" not in rules["fixed_region"]
    assert rules["overconfident"]["severity"] == "info"
    assert rules["overfitting"]["severity"] == "medium"  # a 0.45 gap is a real finding at chance too


def test_too_few_samples_says_how_many_and_why_and_holds_back_per_class_advice() -> None:
    report = resnet_two_epochs()
    report.pop("training_progress")
    FIRING["weak_classes"][0](report)
    rules = by_rule(recommend(report))
    few = rules["too_few_samples"]
    assert "4 of 4 classes have fewer than 43 samples (fewest: a with 9; 36 in all)" in few["message"]
    assert "at 9 samples a class accuracy of 0.5 is only known to +-0.33 (95%)" in few["message"]
    assert "43 are needed to resolve the 0.15 gaps" in few["message"]
    assert rules["weak_classes"]["severity"] == "info"
    assert rules["weak_classes"]["held_back_by"] == ["too_few_samples"]
    # 43 per class: enough, silent.
    for row in report["per_class"]:
        row["support"] = 43
    assert "too_few_samples" not in by_rule(recommend(report))


def test_a_calibration_gap_within_noise_is_silent() -> None:
    # The numbers of issue 11's plant run (gap -0.122), but on 36 samples: the gap's standard error
    # sqrt(0.417 * 0.583 / 36) = 0.082 makes -0.122 indistinguishable from calibrated.
    report = quiet()
    underconfident(report)
    report["calibration"].pop("gap_se")
    report["num_samples"] = 36
    assert "underconfident" not in by_rule(recommend(report))
    report["num_samples"] = 1000  # standard error 0.016: the same gap is real
    assert "underconfident" in by_rule(recommend(report))


def test_not_converged_comes_first_and_holds_back_calibration_advice() -> None:
    recs = recommend(resnet_two_epochs())
    assert [r["rule"] for r in recs[:2]] == ["not_converged", "too_few_samples"]
    message = recs[0]["message"]
    assert "saved after epoch 2 of 15 (13% of the planned training)" in message
    assert "2 of 4 classes are never predicted (c, d)" in message
    assert "audit the final checkpoint" in recs[0]["action"]
    under = by_rule(recs)["underconfident"]
    assert under["severity"] == "info" and under["held_back_by"] == ["not_converged"]
    # The tester's top recommendation is now among the withheld ones at the end.
    assert all(r["severity"] == "info" for r in recs[recs.index(under) :])


def test_not_converged_only_when_stopped_short_and_not_levelled_off() -> None:
    report = quiet()
    assert "not_converged" not in by_rule(recommend(report))  # 15 of 15
    report["training_progress"].update(epochs_done=2, improving=False)  # levelled off: stopping was fine
    assert "not_converged" not in by_rule(recommend(report))
    # No max_epochs on record: the learning-rate schedule's planned steps stand in.
    report["training_progress"] = {"step": 80, "planned_steps": 600, "improving": None}
    first = recommend(report)[0]
    assert first["rule"] == "not_converged"
    assert (
        "after step 80 of 600 (13% of the planned training); whether it was still improving is not "
        in first["message"]
    )
    report["training_progress"] = {"step": 600, "planned_steps": 600}
    assert "not_converged" not in by_rule(recommend(report))
    # The tester's 40-step model: epoch 1 of 6, but max_steps 40 was its plan, and it got there.
    report["training_progress"] = {"epochs_done": 1, "max_epochs": 6, "step": 40, "max_steps": 40}
    assert "not_converged" not in by_rule(recommend(report))
    report["training_progress"]["step"] = 20
    assert "saved after epoch 1 of 6" in recommend(report)[0]["message"]


def test_not_converged_demotes_the_attention_findings() -> None:
    report = quiet()
    FIRING["not_converged"][0](report)
    FIRING["attention_off_object"][0](report)
    rules = by_rule(recommend(report))
    off = rules["attention_off_object"]
    assert off["severity"] == "medium" and off["demoted_by"] == ["not_converged"]
    assert "(less certain: not_converged: training stopped at epoch 2 of 15)" in off["message"]
    assert "shortcut" in off["action"]  # demoted, not withheld


def test_deletion_auc_equal_to_its_random_baseline_is_flagged() -> None:
    report = quiet()
    report["attention"]["faithfulness"].update(
        deletion_auc=0.323, random_deletion_auc=0.323, deletion_se=0.02, score=0.4, random_score=0.1
    )
    FIRING["attention_off_object"][0](report)
    recs = recommend(report)
    assert recs[0]["rule"] == "unfaithful_maps"
    assert (
        "the maps are no better than random at picking evidence: deletion AUC 0.323 vs 0.323"
        in recs[0]["message"]
    )
    assert "difference +0.000, noise +-0.040" in recs[0]["message"]
    off = by_rule(recs)["attention_off_object"]
    assert off["severity"] == "medium" and off["demoted_by"] == ["unfaithful_maps"]
    # Better than random by more than the noise: silent.
    report["attention"]["faithfulness"].update(deletion_auc=0.2)
    assert "unfaithful_maps" not in by_rule(recommend(report))
    # Better, but within two standard errors: the maps cannot be told from random ones.
    report["attention"]["faithfulness"].update(deletion_auc=0.3)
    assert "unfaithful_maps" in by_rule(recommend(report))


def test_randomisation_failure_demotes_map_findings_only_when_the_maps_are_not_faithful() -> None:
    report = quiet()
    FIRING["randomisation_failed"][0](report)
    FIRING["fixed_region"][0](report)
    rules = by_rule(recommend(report))
    # Deletion/insertion pass clearly (quiet numbers): the maps follow the model's evidence.
    assert rules["fixed_region"]["severity"] == "high"
    assert "the deletion/insertion check passes" in rules["randomisation_failed"]["action"]
    report["attention"]["faithfulness"].update(deletion_auc=0.5)
    rules = by_rule(recommend(report))
    assert rules["fixed_region"]["severity"] == "medium"
    assert set(rules["fixed_region"]["demoted_by"]) == {"randomisation_failed", "unfaithful_maps"}
    assert "do not read these maps" in rules["randomisation_failed"]["action"]


def test_healthy_model_keeps_its_findings_at_full_severity() -> None:
    report = quiet()
    for name in ("attention_off_object", "overconfident", "weak_classes"):
        FIRING[name][0](report)
    report["per_class"][2].update(support=500, predicted_as_this=400)
    report["num_samples"] = 1500
    recs = recommend(report)
    assert [r["rule"] for r in recs] == ["attention_off_object", "overconfident", "weak_classes"]
    assert all("held_back_by" not in r and "demoted_by" not in r for r in recs)
