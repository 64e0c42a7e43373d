"""What to change next: rules over the audit's measured numbers, each citing the figures that fired it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# Thresholds, in one place so that the report can print them beside the numbers.
HIGH_CONF_ERROR_SHARE = 0.2  # share of errors made with confidence >= 0.9
ECE_LIMIT = 0.08
PAIR_SHARE = 0.05  # one pair's share of all errors
TOP5_PAIR_SHARE = 0.3
WEAK_CLASS_GAP = 0.15  # accuracy below the mean by more than this
ENERGY_MARGIN = 1.5  # energy inside the mask should beat the mask's area share by this factor
POINTING_LIMIT = 0.5
DIFFUSE_LIMIT = (
    0.3  # concentration relative to one active cell of the layer, under which maps count as diffuse
)
RANDOMISATION_LIMIT = 0.5  # Spearman correlation with the randomised model's maps
GENERALISATION_GAP = 0.15


def _ok(x: Any) -> bool:
    return isinstance(x, (int, float)) and not (isinstance(x, float) and math.isnan(x))


def _rec(rule: str, severity: str, message: str, action: str, evidence: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "rule": rule,
        "severity": severity,
        "message": message,
        "action": action,
        "evidence": dict(evidence),
    }


def recommend(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The recommendations for a report dictionary (see :func:`lit_explain.audit.run_audit`), worst first.

    Example:
        >>> for r in recommend(report): print(r["message"], "->", r["action"])   # doctest: +SKIP
    """
    out: list[dict[str, Any]] = []
    cal = report["calibration"]
    acc = report["accuracy"]
    att = report["attention"]
    overall = att.get("overall", {})

    # Attention off the object: masks say where the object is.
    if att.get("has_masks") and _ok(overall.get("energy_in_mask")):
        energy, area = overall["energy_in_mask"], overall.get("mask_area", float("nan"))
        pointing = overall.get("pointing_game", float("nan"))
        if (_ok(area) and energy < ENERGY_MARGIN * area) or (_ok(pointing) and pointing < POINTING_LIMIT):
            out.append(
                _rec(
                    "attention_off_object",
                    "high",
                    f"attention falls outside the object: energy inside the mask {energy:.2f} (the object covers "
                    f"{area:.2f} of the image, so a blind map would score {area:.2f}); pointing game {pointing:.2f} "
                    f"(the map's peak lies on the object for {pointing:.0%} of the explained samples)",
                    "the model likely uses a shortcut or the background: look at the panels for a recurring cue "
                    "(a patch, a watermark, a border), remove or randomise it in the training data, and add "
                    "augmentation that breaks it (random erasing / cutout, random crops, background changes)",
                    {
                        "energy_in_mask": energy,
                        "mask_area": area,
                        "pointing_game": pointing,
                        "thresholds": {"energy_vs_area": ENERGY_MARGIN, "pointing_game": POINTING_LIMIT},
                    },
                )
            )

    region = att.get("fixed_region", {})
    if region.get("flagged"):
        out.append(
            _rec(
                "fixed_region",
                "high",
                f"attention concentrates in one fixed image region across classes: the {region['hot_cell']} "
                f"cell holds the peak of {region['peak_share']:.0%} of the maps, for "
                f"{region['classes_with_peak_there']}/{region['classes_considered']} classes, with "
                f"{region['energy_share']:.0%} of the mean map's energy (a uniform map gives 11%)",
                "a position-bound cue (corner patch, watermark, letterbox) is a likely shortcut: inspect "
                "attention_mean.png and the panels, crop or mask that region, and train with random crops/flips "
                "and random erasing",
                {
                    k: region[k]
                    for k in (
                        "hot_cell",
                        "peak_share",
                        "energy_share",
                        "classes_with_peak_there",
                        "classes_considered",
                    )
                },
            )
        )

    rnd = att.get("randomisation", {})
    if rnd.get("samples") and _ok(rnd.get("spearman_mean")) and rnd["spearman_mean"] >= RANDOMISATION_LIMIT:
        out.append(
            _rec(
                "randomisation_failed",
                "high",
                f"the {att['method']} maps barely change when the top layers ({', '.join(rnd['randomised_layers'])}) "
                f"get random weights: mean Spearman rank correlation {rnd['spearman_mean']:.2f} over "
                f"{rnd['samples']} samples (>= {RANDOMISATION_LIMIT})",
                "do not read these maps as the model's reasons; try another method (--method gradcam++, layercam, "
                "scorecam) or an earlier layer (--layer) and re-run the audit",
                {"spearman_mean": rnd["spearman_mean"], "threshold": RANDOMISATION_LIMIT},
            )
        )

    faith = att.get("faithfulness", {})
    if faith.get("samples") and not faith.get("better_than_random", True):
        out.append(
            _rec(
                "unfaithful_maps",
                "medium",
                f"the maps rank pixels no better than random ones: insertion - deletion AUC {faith['score']:.3f} "
                f"vs {faith['random_score']:.3f} for random maps ({faith['samples']} samples)",
                "prefer a method that passes this check for this model (--method), and treat the panels as hints",
                {
                    k: faith[k]
                    for k in ("deletion_auc", "insertion_auc", "random_deletion_auc", "random_insertion_auc")
                },
            )
        )

    if n := cal.get("errors"):
        share = cal["high_confidence_error_share"]
        if share >= HIGH_CONF_ERROR_SHARE or (_ok(cal.get("ece")) and cal["ece"] >= ECE_LIMIT):
            out.append(
                _rec(
                    "overconfident",
                    "medium",
                    f"{cal['high_confidence_errors']} of {n} errors ({share:.0%}) are made with confidence >= 0.90; "
                    f"expected calibration error {cal['ece']:.3f}; mean confidence on errors "
                    f"{cal['mean_confidence_wrong']:.2f}",
                    "train with label smoothing (model.label_smoothing: 0.1) or calibrate the outputs "
                    "(temperature scaling on the validation split); check the high-confidence errors for label noise",
                    {
                        k: cal[k]
                        for k in ("ece", "high_confidence_errors", "errors", "high_confidence_error_share")
                    },
                )
            )

    pairs = report.get("confused_pairs", [])
    if pairs and cal.get("errors"):
        top = pairs[0]
        top5 = sum(p["count"] for p in pairs[:5]) / cal["errors"]
        if top["share_of_errors"] >= PAIR_SHARE or top5 >= TOP5_PAIR_SHARE:
            listed = "; ".join(f"{p['true_name']} -> {p['pred_name']} ({p['count']})" for p in pairs[:5])
            out.append(
                _rec(
                    "dominant_pairs",
                    "medium",
                    f"a few confusions dominate: the top pair {top['true_name']} -> {top['pred_name']} is "
                    f"{top['share_of_errors']:.0%} of all errors, the top 5 pairs {top5:.0%} ({listed})",
                    "targeted augmentation or more examples for these pairs (and a look at their panels for what "
                    "separates them); consider merging them if they are ambiguous by nature",
                    {
                        "top_pair_share": top["share_of_errors"],
                        "top5_share": top5,
                        "pairs": [p["rank"] for p in pairs[:5]],
                    },
                )
            )

    accs = [r["accuracy"] for r in report["per_class"] if _ok(r["accuracy"])]
    if len(accs) > 1:
        mean = sum(accs) / len(accs)
        weak = sorted(
            (r for r in report["per_class"] if _ok(r["accuracy"]) and r["accuracy"] < mean - WEAK_CLASS_GAP),
            key=lambda r: r["accuracy"],
        )
        if weak:
            listed = ", ".join(f"{r['name']} {r['accuracy']:.2f}" for r in weak[:8])
            out.append(
                _rec(
                    "weak_classes",
                    "medium",
                    f"{len(weak)} classes trail the mean class accuracy {mean:.2f} by more than {WEAK_CLASS_GAP:.2f}: {listed}",
                    "collect or augment data for these classes, or weight them up in the loss",
                    {"mean_class_accuracy": mean, "weak": {r["name"]: r["accuracy"] for r in weak}},
                )
            )

    conc, rel = overall.get("concentration_pred"), att.get("concentration_relative")
    if _ok(conc) and _ok(rel) and rel < DIFFUSE_LIMIT:
        out.append(
            _rec(
                "diffuse_attention",
                "low",
                f"attention is diffuse: mean concentration {conc:.3f}, {rel:.0%} of what one active cell of "
                f"{att['layer']} ({'x'.join(map(str, att['layer_resolution']))}) gives "
                f"({att['concentration_reference']:.3f}; below {DIFFUSE_LIMIT:.0%} counts as diffuse)",
                "train longer or with stronger augmentation; for finer maps explain an earlier layer (--layer)",
                {"concentration": conc, "relative": rel, "reference": att["concentration_reference"]},
            )
        )

    metrics = report.get("checkpoint_metrics") or {}
    train_acc = metrics.get("train/acc")
    if _ok(train_acc) and _ok(acc) and train_acc - acc > GENERALISATION_GAP:
        out.append(
            _rec(
                "overfitting",
                "medium",
                f"training accuracy {train_acc:.2f} vs {acc:.2f} on {report['split']}: a gap of {train_acc - acc:.2f}",
                "more regularisation (weight decay, augmentation, label smoothing) or early stopping",
                {"train_acc": train_acc, "audit_acc": acc},
            )
        )

    if not out:
        out.append(
            _rec(
                "no_issue",
                "info",
                f"no rule fired: accuracy {acc:.3f}, ECE {cal['ece']:.3f}, "
                + (
                    f"energy in mask {overall['energy_in_mask']:.2f}, "
                    if _ok(overall.get("energy_in_mask"))
                    else ""
                )
                + (
                    f"randomisation rank correlation {rnd['spearman_mean']:.2f}"
                    if _ok(rnd.get("spearman_mean"))
                    else "no randomisation check"
                ),
                "keep training or tighten the thresholds in lit_explain/audit/recommendations.py",
                {"accuracy": acc},
            )
        )
    order = {"high": 0, "medium": 1, "low": 2, "info": 3}
    return sorted(out, key=lambda r: order[r["severity"]])


def as_text(recs: list[Mapping[str, Any]]) -> str:
    """recommendations.txt: one numbered block per rule."""
    lines = [
        "Recommendations (from the measured numbers; thresholds in lit_explain/audit/recommendations.py)",
        "",
    ]
    for i, r in enumerate(recs, start=1):
        lines += [
            f"{i}. [{r['severity'].upper()}] {r['rule']}",
            f"   finding: {r['message']}",
            f"   action:  {r['action']}",
            "",
        ]
    return "\n".join(lines)
