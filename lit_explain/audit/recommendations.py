"""What to change next: a table of rules over the audit's measured numbers, each citing the figures that fired it.

Each :class:`Rule` is a name, a severity, a condition (the report -> the evidence when the rule fires,
else None) and a finding (the evidence -> the message and the action, built from the numbers). Rules
say which way a number is off (over- or under-confident, from mean confidence against accuracy and the
reliability bins) and never recommend a setting the checkpoint already has: the report's
``training_settings`` (label smoothing, weight decay, augmentation) are read before an action is written.

Example:
    >>> for r in recommend(report): print(r["severity"], r["message"], "->", r["action"])   # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
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
LABEL_SMOOTHING = 0.1  # the value recommended when a run has none
WEIGHT_DECAY = 5e-4
SEVERITY_ORDER = {"high": 0, "medium": 1, "low": 2, "info": 3}

Evidence = dict[str, Any]


@dataclass(frozen=True)
class Rule:
    """One row of the table: when it fires and what it then says.

    Attributes:
        name: the rule's id in report.json.
        severity: ``high``, ``medium`` or ``low``.
        condition: report -> evidence (the numbers that fired it) or None.
        finding: (evidence, report) -> (message, action), both written from the numbers.
    """

    name: str
    severity: str
    condition: Callable[[Mapping[str, Any]], Evidence | None]
    finding: Callable[[Evidence, Mapping[str, Any]], tuple[str, str]]

    def apply(self, report: Mapping[str, Any]) -> dict[str, Any] | None:
        evidence = self.condition(report)
        if evidence is None:
            return None
        message, action = self.finding(evidence, report)
        return {
            "rule": self.name,
            "severity": self.severity,
            "message": message,
            "action": action,
            "evidence": evidence,
        }


def _ok(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _settings(report: Mapping[str, Any]) -> Mapping[str, Any]:
    return report.get("training_settings") or {}


def _smoothing(report: Mapping[str, Any]) -> float:
    value = _settings(report).get("label_smoothing")
    return float(value) if _ok(value) else 0.0


def _smoothing_advice(report: Mapping[str, Any]) -> str | None:
    """Label smoothing to add or raise, or None when the run already uses enough of it."""
    current = _smoothing(report)
    if current <= 0:
        return f"train with label smoothing (model.label_smoothing: {LABEL_SMOOTHING})"
    if current < LABEL_SMOOTHING:
        return f"raise label smoothing from {current:g} to {LABEL_SMOOTHING} (model.label_smoothing)"
    return None


# -- attention rules -------------------------------------------------------------------------------------


def _attention_off_object(report: Mapping[str, Any]) -> Evidence | None:
    att = report["attention"]
    overall = att.get("overall", {})
    energy = overall.get("energy_in_mask")
    if not att.get("has_masks") or not _ok(energy):
        return None
    area, pointing = overall.get("mask_area", float("nan")), overall.get("pointing_game", float("nan"))
    if not ((_ok(area) and energy < ENERGY_MARGIN * area) or (_ok(pointing) and pointing < POINTING_LIMIT)):
        return None
    thresholds = {"energy_vs_area": ENERGY_MARGIN, "pointing_game": POINTING_LIMIT}
    return {"energy_in_mask": energy, "mask_area": area, "pointing_game": pointing, "thresholds": thresholds}


def _attention_off_object_text(e: Evidence, report: Mapping[str, Any]) -> tuple[str, str]:
    energy, area, pointing = e["energy_in_mask"], e["mask_area"], e["pointing_game"]
    return (
        f"attention falls outside the object: energy inside the mask {energy:.2f} (the object covers "
        f"{area:.2f} of the image, so a blind map would score {area:.2f}); pointing game {pointing:.2f} "
        f"(the map's peak lies on the object for {pointing:.0%} of the explained samples)",
        "the model likely uses a shortcut or the background: look at the panels for a recurring cue "
        "(a patch, a watermark, a border), remove or randomise it in the training data, and add "
        "augmentation that breaks it (random erasing / cutout, random crops, background changes)",
    )


def _fixed_region(report: Mapping[str, Any]) -> Evidence | None:
    region = report["attention"].get("fixed_region", {})
    if not region.get("flagged"):
        return None
    keys = ("hot_cell", "peak_share", "energy_share", "classes_with_peak_there", "classes_considered")
    return {k: region[k] for k in keys}


def _fixed_region_text(e: Evidence, report: Mapping[str, Any]) -> tuple[str, str]:
    return (
        f"attention concentrates in one fixed image region across classes: the {e['hot_cell']} cell holds "
        f"the peak of {e['peak_share']:.0%} of the maps, for {e['classes_with_peak_there']}/"
        f"{e['classes_considered']} classes, with {e['energy_share']:.0%} of the mean map's energy "
        "(a uniform map gives 11%)",
        "a position-bound cue (corner patch, watermark, letterbox) is a likely shortcut: inspect "
        "attention_mean.png and the panels, crop or mask that region, and train with random crops/flips "
        "and random erasing",
    )


def _randomisation_failed(report: Mapping[str, Any]) -> Evidence | None:
    rnd = report["attention"].get("randomisation", {})
    rho = rnd.get("spearman_mean")
    if not rnd.get("samples") or not _ok(rho) or rho < RANDOMISATION_LIMIT:
        return None
    layers = list(rnd.get("randomised_layers", []))
    return {
        "spearman_mean": rho,
        "samples": rnd["samples"],
        "layers": layers,
        "threshold": RANDOMISATION_LIMIT,
    }


def _randomisation_failed_text(e: Evidence, report: Mapping[str, Any]) -> tuple[str, str]:
    return (
        f"the {report['attention']['method']} maps barely change when the top layers "
        f"({', '.join(e['layers'])}) get random weights: mean Spearman rank correlation "
        f"{e['spearman_mean']:.2f} over {e['samples']} samples (>= {RANDOMISATION_LIMIT})",
        "do not read these maps as the model's reasons; try another method (--method gradcam++, layercam, "
        "scorecam) or an earlier layer (--layer) and re-run the audit",
    )


def _unfaithful_maps(report: Mapping[str, Any]) -> Evidence | None:
    faith = report["attention"].get("faithfulness", {})
    if not faith.get("samples") or faith.get("better_than_random", True):
        return None
    keys = ("score", "random_score", "samples", "deletion_auc", "insertion_auc")
    return {k: faith[k] for k in (*keys, "random_deletion_auc", "random_insertion_auc") if k in faith}


def _unfaithful_maps_text(e: Evidence, report: Mapping[str, Any]) -> tuple[str, str]:
    return (
        f"the maps rank pixels no better than random ones: insertion - deletion AUC {e['score']:.3f} "
        f"vs {e['random_score']:.3f} for random maps ({e['samples']} samples)",
        "prefer a method that passes this check for this model (--method), and treat the panels as hints",
    )


def _diffuse_attention(report: Mapping[str, Any]) -> Evidence | None:
    att = report["attention"]
    conc, rel = att.get("overall", {}).get("concentration_pred"), att.get("concentration_relative")
    if not (_ok(conc) and _ok(rel) and rel < DIFFUSE_LIMIT):
        return None
    return {"concentration": conc, "relative": rel, "reference": att["concentration_reference"]}


def _diffuse_attention_text(e: Evidence, report: Mapping[str, Any]) -> tuple[str, str]:
    att = report["attention"]
    return (
        f"attention is diffuse: mean concentration {e['concentration']:.3f}, {e['relative']:.0%} of what one "
        f"active cell of {att['layer']} ({'x'.join(map(str, att['layer_resolution']))}) gives "
        f"({e['reference']:.3f}; below {DIFFUSE_LIMIT:.0%} counts as diffuse)",
        "train longer or with stronger augmentation; for finer maps explain an earlier layer (--layer)",
    )


# -- calibration rules -----------------------------------------------------------------------------------


def _calibration_evidence(report: Mapping[str, Any], direction: str) -> Evidence | None:
    cal = report["calibration"]
    ece = cal.get("ece")
    if cal.get("direction") != direction or not _ok(ece) or ece < ECE_LIMIT:
        return None
    share = cal.get("over_share" if direction == "overconfident" else "under_share", float("nan"))
    return {
        "ece": ece,
        "mean_confidence": cal["mean_confidence"],
        "accuracy": cal.get("accuracy", report["accuracy"]),
        "gap": cal["gap"],
        "bin_share": share,
        "label_smoothing": _smoothing(report),
        "threshold": ECE_LIMIT,
    }


def _calibration_message(e: Evidence, direction: str) -> str:
    relation = "exceeds" if direction == "overconfident" else "falls below"
    return (
        f"{direction}: mean confidence {e['mean_confidence']:.3f} vs accuracy {e['accuracy']:.3f} "
        f"(gap {e['gap']:+.3f}); confidence {relation} accuracy by more than 0.05 in reliability bins "
        f"holding {e['bin_share']:.0%} of the samples; expected calibration error {e['ece']:.3f} "
        f"(>= {ECE_LIMIT})"
    )


def _overconfident_text(e: Evidence, report: Mapping[str, Any]) -> tuple[str, str]:
    actions = [a for a in (_smoothing_advice(report),) if a]
    if not actions:
        actions.append(
            f"label smoothing is already {e['label_smoothing']:g} in this run, so calibrate instead"
        )
    actions.append(
        "calibrate the outputs with temperature scaling on the validation split (a temperature above 1)"
    )
    return _calibration_message(e, "overconfident"), "; ".join(actions)


def _underconfident_text(e: Evidence, report: Mapping[str, Any]) -> tuple[str, str]:
    actions = []
    if e["label_smoothing"] > 0:
        actions.append(
            f"label smoothing ({e['label_smoothing']:g} in this run) caps confidence: lower it or set "
            "model.label_smoothing: 0.0"
        )
    actions.append("train longer (an underconfident model has often not converged)")
    actions.append("or calibrate with temperature scaling on the validation split (a temperature below 1)")
    return _calibration_message(e, "underconfident"), "; ".join(actions)


def _confident_errors(report: Mapping[str, Any]) -> Evidence | None:
    cal = report["calibration"]
    errors, share = cal.get("errors"), cal.get("high_confidence_error_share")
    if not errors or not _ok(share) or share < HIGH_CONF_ERROR_SHARE:
        return None
    keys = ("high_confidence_errors", "errors", "high_confidence_error_share", "mean_confidence_wrong")
    return {k: cal[k] for k in keys} | {"threshold": HIGH_CONF_ERROR_SHARE}


def _confident_errors_text(e: Evidence, report: Mapping[str, Any]) -> tuple[str, str]:
    return (
        f"{e['high_confidence_errors']} of {e['errors']} errors ({e['high_confidence_error_share']:.0%}) are "
        f"made with confidence >= 0.90 (mean confidence on errors {e['mean_confidence_wrong']:.2f})",
        "check these errors for label noise or near-duplicate classes (shown_samples.csv and the "
        "worst_predictions panels list their files); confident errors are not fixed by calibration alone",
    )


# -- class and generalisation rules ----------------------------------------------------------------------


def _dominant_pairs(report: Mapping[str, Any]) -> Evidence | None:
    pairs, errors = report.get("confused_pairs", []), report["calibration"].get("errors")
    if not pairs or not errors:
        return None
    top5 = sum(p["count"] for p in pairs[:5]) / errors
    if pairs[0]["share_of_errors"] < PAIR_SHARE and top5 < TOP5_PAIR_SHARE:
        return None
    return {
        "top_pair_share": pairs[0]["share_of_errors"],
        "top5_share": top5,
        "pairs": [p["rank"] for p in pairs[:5]],
    }


def _dominant_pairs_text(e: Evidence, report: Mapping[str, Any]) -> tuple[str, str]:
    pairs = report["confused_pairs"]
    top = pairs[0]
    listed = "; ".join(f"{p['true_name']} -> {p['pred_name']} ({p['count']})" for p in pairs[:5])
    return (
        f"a few confusions dominate: the top pair {top['true_name']} -> {top['pred_name']} is "
        f"{e['top_pair_share']:.0%} of all errors, the top 5 pairs {e['top5_share']:.0%} ({listed})",
        "targeted augmentation or more examples for these pairs (and a look at their panels for what "
        "separates them); consider merging them if they are ambiguous by nature",
    )


def _weak_classes(report: Mapping[str, Any]) -> Evidence | None:
    rows = [r for r in report["per_class"] if _ok(r["accuracy"])]
    if len(rows) < 2:
        return None
    mean = sum(r["accuracy"] for r in rows) / len(rows)
    weak = sorted((r for r in rows if r["accuracy"] < mean - WEAK_CLASS_GAP), key=lambda r: r["accuracy"])
    if not weak:
        return None
    return {"mean_class_accuracy": mean, "weak": {r["name"]: r["accuracy"] for r in weak}}


def _weak_classes_text(e: Evidence, report: Mapping[str, Any]) -> tuple[str, str]:
    listed = ", ".join(f"{name} {acc:.2f}" for name, acc in list(e["weak"].items())[:8])
    return (
        f"{len(e['weak'])} classes trail the mean class accuracy {e['mean_class_accuracy']:.2f} by more than "
        f"{WEAK_CLASS_GAP:.2f}: {listed}",
        "collect or augment data for these classes, or weight them up in the loss",
    )


def _overfitting(report: Mapping[str, Any]) -> Evidence | None:
    train_acc, acc = (report.get("checkpoint_metrics") or {}).get("train/acc"), report["accuracy"]
    if not (_ok(train_acc) and _ok(acc) and train_acc - acc > GENERALISATION_GAP):
        return None
    return {"train_acc": train_acc, "audit_acc": acc, "gap": train_acc - acc, "threshold": GENERALISATION_GAP}


def _overfitting_text(e: Evidence, report: Mapping[str, Any]) -> tuple[str, str]:
    settings = _settings(report)
    actions = []
    decay = settings.get("weight_decay")
    if not _ok(decay) or decay <= 0:
        actions.append(f"weight decay (model.weight_decay: {WEIGHT_DECAY:g})")
    else:
        actions.append(f"stronger weight decay (model.weight_decay is {decay:g})")
    if settings.get("augment") is False:
        actions.append("augmentation (data.augment: true)")
    else:
        actions.append("stronger augmentation")
    if smoothing := _smoothing_advice(report):
        actions.append(smoothing.replace("train with ", ""))
    actions.append("early stopping on the validation loss")
    return (
        f"training accuracy {e['train_acc']:.2f} vs {e['audit_acc']:.2f} on {report['split']}: a gap of "
        f"{e['gap']:.2f} (> {GENERALISATION_GAP})",
        "more regularisation: " + ", ".join(actions),
    )


RULES: tuple[Rule, ...] = (
    Rule("attention_off_object", "high", _attention_off_object, _attention_off_object_text),
    Rule("fixed_region", "high", _fixed_region, _fixed_region_text),
    Rule("randomisation_failed", "high", _randomisation_failed, _randomisation_failed_text),
    Rule("unfaithful_maps", "medium", _unfaithful_maps, _unfaithful_maps_text),
    Rule("overconfident", "medium", lambda r: _calibration_evidence(r, "overconfident"), _overconfident_text),
    Rule(
        "underconfident", "medium", lambda r: _calibration_evidence(r, "underconfident"), _underconfident_text
    ),
    Rule("confident_errors", "medium", _confident_errors, _confident_errors_text),
    Rule("dominant_pairs", "medium", _dominant_pairs, _dominant_pairs_text),
    Rule("weak_classes", "medium", _weak_classes, _weak_classes_text),
    Rule("overfitting", "medium", _overfitting, _overfitting_text),
    Rule("diffuse_attention", "low", _diffuse_attention, _diffuse_attention_text),
)


def _no_issue(report: Mapping[str, Any]) -> dict[str, Any]:
    acc, cal = report["accuracy"], report["calibration"]
    overall = report["attention"].get("overall", {})
    rho = report["attention"].get("randomisation", {}).get("spearman_mean")
    message = f"no rule fired: accuracy {acc:.3f}, ECE {cal['ece']:.3f}, "
    if _ok(overall.get("energy_in_mask")):
        message += f"energy in mask {overall['energy_in_mask']:.2f}, "
    message += f"randomisation rank correlation {rho:.2f}" if _ok(rho) else "no randomisation check"
    return {
        "rule": "no_issue",
        "severity": "info",
        "message": message,
        "action": "keep training or tighten the thresholds in lit_explain/audit/recommendations.py",
        "evidence": {"accuracy": acc},
    }


def recommend(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The recommendations for a report dictionary (see :func:`lit_explain.audit.run_audit`), worst first."""
    fired = [rec for rule in RULES if (rec := rule.apply(report)) is not None]
    return sorted(fired, key=lambda r: SEVERITY_ORDER[r["severity"]]) or [_no_issue(report)]


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
