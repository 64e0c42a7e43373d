"""What to change next: a table of rules over the audit's measured numbers, each citing the figures that fired it.

Each :class:`Rule` is a name, a severity, a condition (the report -> the evidence when the rule fires,
else None) and a finding (the evidence -> the message and the action, built from the numbers). Rules
say which way a number is off (over- or under-confident, from mean confidence against accuracy and the
reliability bins) and never recommend a setting the checkpoint already has: the report's
``training_settings`` (label smoothing, weight decay, augmentation) are read before an action is written.

Advice is right or silent. Some rules are preconditions: they check whether the numbers can carry a
conclusion at all (accuracy above chance, enough samples per class, training finished, maps that track the
model and pick evidence better than random ones). When one fires it comes first, and the findings it makes
unreliable are held back (severity ``info``, their action withheld, ``held_back_by`` naming why) or demoted
one severity step (``demoted_by``). E.g. a model at chance gets "near chance: train longer", not advice about
label smoothing or a shortcut read from maps of an untrained network.

Example:
    >>> for r in recommend(report): print(r["severity"], r["message"], "->", r["action"])   # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lit_explain.audit.stats import binomial_se, chance_accuracy

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
# Noise: a difference counts only beyond this many standard errors (about a one-sided 2.5% test).
NOISE_SE = 2.0
Z95 = 1.96
# Per-class judgements need the 95% interval of a class accuracy of 0.5 (the widest) to be no wider than
# the gap the per-class rules look for: 1.96 * 0.5 / sqrt(n) <= WEAK_CLASS_GAP -> n >= 43.
MIN_SAMPLES_PER_CLASS = math.ceil((Z95 * 0.5 / WEAK_CLASS_GAP) ** 2)
LABEL_SMOOTHING = 0.1  # the value recommended when a run has none
WEIGHT_DECAY = 5e-4
SEVERITY_ORDER = {"high": 0, "medium": 1, "low": 2, "info": 3}
DEMOTED = {"high": "medium", "medium": "low", "low": "low", "info": "info"}

Evidence = dict[str, Any]
# What a failed precondition does to a later finding: hold it back (info, no action) or demote it one step.
SUPPRESS, DEMOTE = "suppress", "demote"
CALIBRATION = ("overconfident", "underconfident", "confident_errors")
PER_CLASS = ("weak_classes", "dominant_pairs")
MAP_READING = ("attention_off_object", "fixed_region", "diffuse_attention")
MAP_CHECKS = ("randomisation_failed", "unfaithful_maps")  # whether the maps can be read at all


@dataclass(frozen=True)
class Rule:
    """One row of the table: when it fires and what it then says.

    Attributes:
        name: the rule's id in report.json.
        severity: ``high``, ``medium`` or ``low``.
        condition: report -> evidence (the numbers that fired it) or None.
        finding: (evidence, report) -> (message, action), both written from the numbers.
        invalidates: for a precondition, evidence -> {rule name: SUPPRESS or DEMOTE}, the findings it makes
            unreliable; None for an ordinary rule.
        reason: for a precondition, evidence -> the short reason quoted beside the findings it affects.
    """

    name: str
    severity: str
    condition: Callable[[Mapping[str, Any]], Evidence | None]
    finding: Callable[[Evidence, Mapping[str, Any]], tuple[str, str]]
    invalidates: Callable[[Evidence], Mapping[str, str]] | None = None
    reason: Callable[[Evidence], str] | None = None

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


# -- preconditions: can the numbers carry a conclusion? --------------------------------------------------


def _count(x: Any) -> int | None:
    return int(x) if isinstance(x, int) and not isinstance(x, bool) else None


def _never_predicted(report: Mapping[str, Any]) -> list[str]:
    """Audited classes present in the split that the model never predicts (a collapse onto a few classes)."""
    return [
        r["name"]
        for r in report.get("per_class", [])
        if (_count(r.get("support")) or 0) > 0 and _count(r.get("predicted_as_this")) == 0
    ]


def _collapse_note(names: list[str], report: Mapping[str, Any]) -> str:
    if not names:
        return ""
    listed = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
    return f"; {len(names)} of {len(report['per_class'])} classes are never predicted ({listed})"


def _near_chance(report: Mapping[str, Any]) -> Evidence | None:
    """Accuracy within NOISE_SE binomial standard errors of what guessing or always answering one class scores."""
    rows, n, acc = report.get("per_class", []), _count(report.get("num_samples")), report.get("accuracy")
    supports = [_count(r.get("support")) for r in rows]
    if not rows or not n or not _ok(acc) or None in supports:
        return None
    chance, top = chance_accuracy(supports, _count(report.get("num_classes")) or len(rows))
    se = binomial_se(chance, n)
    if acc >= chance + NOISE_SE * se:
        return None
    train = (report.get("checkpoint_metrics") or {}).get("train/acc")
    if top is None:
        basis = f"1/{_count(report.get('num_classes')) or len(rows)} classes"
    else:
        basis = f"always answering {rows[top]['name']}, {supports[top]} of {n}"
    return {
        "accuracy": acc,
        "chance": chance,
        "chance_basis": basis,
        "samples": n,
        "standard_error": se,
        "limit": chance + NOISE_SE * se,
        "train_acc": train if _ok(train) else None,
        # Training accuracy well above the evaluation's: the model learned something that does not carry over.
        "learned_elsewhere": _ok(train) and train - acc > GENERALISATION_GAP,
        "never_predicted": _never_predicted(report),
    }


def _near_chance_text(e: Evidence, report: Mapping[str, Any]) -> tuple[str, str]:
    where = (
        "at or below"
        if e["accuracy"] <= e["chance"]
        else f"less than {NOISE_SE:g} standard errors ({e['standard_error']:.3f}) above"
    )
    message = (
        f"near chance: accuracy {e['accuracy']:.3f} on {e['samples']} samples is {where} chance "
        f"{e['chance']:.3f} ({e['chance_basis']})"
    )
    if e["train_acc"] is not None:
        message += f"; training accuracy {e['train_acc']:.2f}"
    message += _collapse_note(e["never_predicted"], report)
    if e["learned_elsewhere"]:
        return message, (
            f"what the model learned in training does not carry over to {report['split']}: look for a cue "
            "present in the training data only (the attention findings below) or memorised samples; "
            "calibration and per-class advice are held back until accuracy rises above chance"
        )
    return message, (
        "train longer (and check the learning rate and the labels) before judging attention: at chance the "
        "maps, confidences and per-class numbers describe an untrained network, so the findings they would "
        "give are held back"
    )


def _near_chance_invalidates(e: Evidence) -> dict[str, str]:
    held = dict.fromkeys((*CALIBRATION, *PER_CLASS), SUPPRESS)
    if e["learned_elsewhere"]:
        # Chance on this split after learning the training data: the attention findings may say why.
        return held | {"diffuse_attention": DEMOTE}
    return held | dict.fromkeys(MAP_READING, SUPPRESS) | dict.fromkeys(MAP_CHECKS, DEMOTE)


def _plans(progress: Mapping[str, Any]) -> list[tuple[str, int | None, int]]:
    """(unit, done, planned) for each plan on record: the epochs, Trainer.max_steps, the schedule's steps."""
    step = _count(progress.get("step"))
    candidates = (
        ("epoch", _count(progress.get("epochs_done")), _count(progress.get("max_epochs"))),
        ("step", step, _count(progress.get("max_steps"))),
        ("step", step, _count(progress.get("planned_steps"))),
    )
    return [(unit, done, planned) for unit, done, planned in candidates if done is not None and planned]


def _not_converged(report: Mapping[str, Any]) -> Evidence | None:
    """Saved before any planned end (epochs, max_steps, schedule) was reached, and not levelled off."""
    progress = report.get("training_progress") or {}
    plans = _plans(progress)
    # Any plan reached means the run ended as configured (max_steps=40 ends before max_epochs=6).
    if not plans or any(done >= planned for _, done, planned in plans) or progress.get("improving") is False:
        return None
    unit, done, planned = plans[0]
    return {
        "done": done,
        "planned": planned,
        "unit": unit,
        "fraction": done / planned,
        "improving": progress.get("improving"),
        "monitor": progress.get("monitor"),
        "never_predicted": _never_predicted(report),
    }


def _not_converged_text(e: Evidence, report: Mapping[str, Any]) -> tuple[str, str]:
    message = (
        f"not converged: the checkpoint was saved after {e['unit']} {e['done']} of {e['planned']} "
        f"({e['fraction']:.0%} of the planned training)"
    )
    if e["improving"]:
        message += f", with {e['monitor'] or 'its monitored metric'} still improving (the best so far)"
    else:
        message += "; whether it was still improving is not recorded"
    message += _collapse_note(e["never_predicted"], report)
    return message, (
        "finish the training (fit --config CONFIG --ckpt_path CHECKPOINT, or --ckpt_path last, resumes it) "
        "and audit the final checkpoint: confidences and attention still change while the learning rate "
        "anneals, so calibration advice is held back and other findings are demoted"
    )


def _not_converged_invalidates(e: Evidence) -> dict[str, str]:
    held = dict.fromkeys(("overconfident", "underconfident", "diffuse_attention"), SUPPRESS)
    later = ("confident_errors", *PER_CLASS, "attention_off_object", "fixed_region", "overfitting")
    # A shortcut is often learned first and kept, so the attention findings stay visible, one step lower.
    return held | dict.fromkeys(later, DEMOTE)


def _too_few_samples(report: Mapping[str, Any]) -> Evidence | None:
    """Fewer than MIN_SAMPLES_PER_CLASS samples in some audited class present in the split."""
    rows = [r for r in report.get("per_class", []) if (_count(r.get("support")) or 0) > 0]
    if not rows:
        return None
    small = sorted((r for r in rows if r["support"] < MIN_SAMPLES_PER_CLASS), key=lambda r: r["support"])
    if not small:
        return None
    return {
        "classes_below": len(small),
        "classes": len(rows),
        "fewest": small[0]["support"],
        "fewest_class": small[0]["name"],
        "samples": _count(report.get("num_samples")),
        "minimum": MIN_SAMPLES_PER_CLASS,
    }


def _too_few_samples_text(e: Evidence, report: Mapping[str, Any]) -> tuple[str, str]:
    width = Z95 * 0.5 / math.sqrt(e["fewest"])
    return (
        f"too few samples to judge classes: {e['classes_below']} of {e['classes']} classes have fewer than "
        f"{e['minimum']} samples (fewest: {e['fewest_class']} with {e['fewest']}; {e['samples']} in all); "
        f"at {e['fewest']} samples a class accuracy of 0.5 is only known to +-{width:.2f} (95%), and "
        f"{e['minimum']} are needed to resolve the {WEAK_CLASS_GAP:.2f} gaps the per-class rules look for",
        "audit more samples (a larger split, --split test, no --max_samples) before acting on per-class or "
        "confused-pair findings; they are held back",
    )


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


def _shortcut(report: Mapping[str, Any]) -> Evidence | None:
    """The shortcut test (lit_explain.findings.shortcut) fired on the audited split: see report["shortcut"]."""
    shortcut = report.get("shortcut") or {}
    if not shortcut.get("fires"):
        return None
    keys = ("score", "threshold", "where", "region", "share", "classes", "follow", "control_follow")
    keys += ("occlusion_drop", "control_drop", "own_drop", "samples", "picture", "statement", "advice")
    return {k: shortcut[k] for k in keys if k in shortcut}


def _shortcut_text(e: Evidence, report: Mapping[str, Any]) -> tuple[str, str]:
    picture = f" (the region over a few images: {e['picture']})" if e.get("picture") else ""
    return e["statement"] + picture, e["advice"]


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
    faith = report["attention"].get("faithfulness", {})
    return {
        "spearman_mean": rho,
        "samples": rnd["samples"],
        "layers": layers,
        "threshold": RANDOMISATION_LIMIT,
        # Deletion/insertion test the maps against the model directly: when they pass, the maps carry
        # evidence whatever this indirect check says, and the findings read from them stand.
        "faithful_maps": bool(faith.get("samples")) and _unfaithful_maps(report) is None,
    }


def _randomisation_failed_text(e: Evidence, report: Mapping[str, Any]) -> tuple[str, str]:
    return (
        f"the {report['attention']['method']} maps barely change when the top layers "
        f"({', '.join(e['layers'])}) get random weights: mean Spearman rank correlation "
        f"{e['spearman_mean']:.2f} over {e['samples']} samples (>= {RANDOMISATION_LIMIT})",
        (
            "the deletion/insertion check passes, so the maps do follow the model's evidence; to be sure, "
            if e.get("faithful_maps")
            else "do not read these maps as the model's reasons; "
        )
        + "try another method (--method gradcam++, layercam, scorecam) or an earlier layer (--layer) "
        "and re-run the audit",
    )


def _beats(better: Any, worse: Any, se: Any) -> bool | None:
    """Whether ``better`` exceeds ``worse`` by more than NOISE_SE standard errors (by anything when the
    standard error is unknown); None when either number is missing."""
    if not (_ok(better) and _ok(worse)):
        return None
    return better - worse > (NOISE_SE * se if _ok(se) else 0.0)


def _unfaithful_maps(report: Mapping[str, Any]) -> Evidence | None:
    """The maps pick evidence no better than random maps: insertion - deletion, or deletion AUC alone
    (lower is better), not beyond noise of the same numbers for random maps on the same images."""
    faith = report["attention"].get("faithfulness", {})
    if not faith.get("samples"):
        return None
    ranks = _beats(faith.get("score"), faith.get("random_score"), faith.get("score_se"))
    if ranks is None:
        ranks = bool(faith.get("better_than_random", True))
    deletes = _beats(faith.get("random_deletion_auc"), faith.get("deletion_auc"), faith.get("deletion_se"))
    if ranks and deletes is not False:
        return None
    keys = ("score", "random_score", "samples", "deletion_auc", "insertion_auc", "score_se", "deletion_se")
    evidence = {k: faith[k] for k in (*keys, "random_deletion_auc", "random_insertion_auc") if k in faith}
    return evidence | {"ranking_no_better": not ranks, "deletion_no_better": deletes is False}


def _unfaithful_maps_text(e: Evidence, report: Mapping[str, Any]) -> tuple[str, str]:
    parts = []
    if e["deletion_no_better"]:
        noise = f", noise +-{NOISE_SE * e['deletion_se']:.3f}" if _ok(e.get("deletion_se")) else ""
        parts.append(
            f"deletion AUC {e['deletion_auc']:.3f} vs {e['random_deletion_auc']:.3f} for random maps (lower is "
            f"better; difference {e['random_deletion_auc'] - e['deletion_auc']:+.3f}{noise})"
        )
    if _ok(e.get("score")) and _ok(e.get("random_score")):
        noise = f", noise +-{NOISE_SE * e['score_se']:.3f}" if _ok(e.get("score_se")) else ""
        parts.append(
            f"insertion - deletion AUC {e['score']:.3f} vs {e['random_score']:.3f} for random maps{noise}"
        )
    found = "; ".join(parts) or "the faithfulness check found them no better than random maps"
    return (
        f"the maps are no better than random at picking evidence: {found} ({e['samples']} samples)",
        "prefer a method that passes this check for this model (--method), audit more samples "
        "(--quality_samples) if the noise is wide, and treat the panels as hints",
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
    gap, n = cal.get("gap"), _count(report.get("num_samples"))
    # The gap's standard error from the per-sample values, else the accuracy's binomial one.
    se = cal.get("gap_se")
    if not _ok(se) and n and _ok(cal.get("accuracy")):
        se = binomial_se(cal["accuracy"], n)
    if _ok(gap) and _ok(se) and abs(gap) <= NOISE_SE * se:
        return None  # a gap within noise says nothing about the direction
    share = cal.get("over_share" if direction == "overconfident" else "under_share", float("nan"))
    return {
        "ece": ece,
        "mean_confidence": cal["mean_confidence"],
        "accuracy": cal.get("accuracy", report["accuracy"]),
        "gap": cal["gap"],
        "bin_share": share,
        "label_smoothing": _smoothing(report),
        "threshold": ECE_LIMIT,
        "gap_se": se if _ok(se) else None,
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
    # A shortcut first, whatever else fires: it explains an accuracy at chance on a split without the cue,
    # and every other number describes a model that reads the wrong region.
    Rule(
        "shortcut",
        "high",
        _shortcut,
        _shortcut_text,
        lambda e: {"near_chance": DEMOTE},
        lambda e: f"the model decides from a shortcut in the {e['where']}",
    ),
    # Preconditions next, in the order they are listed when several fire.
    Rule(
        "near_chance",
        "high",
        _near_chance,
        _near_chance_text,
        _near_chance_invalidates,
        lambda e: f"accuracy {e['accuracy']:.2f} is at chance ({e['chance']:.2f})",
    ),
    Rule(
        "not_converged",
        "high",
        _not_converged,
        _not_converged_text,
        _not_converged_invalidates,
        lambda e: f"training stopped at {e['unit']} {e['done']} of {e['planned']}",
    ),
    Rule(
        "too_few_samples",
        "medium",
        _too_few_samples,
        _too_few_samples_text,
        lambda e: dict.fromkeys(PER_CLASS, SUPPRESS),
        lambda e: f"{e['classes_below']} classes have fewer than {e['minimum']} samples",
    ),
    Rule(
        "randomisation_failed",
        "high",
        _randomisation_failed,
        _randomisation_failed_text,
        lambda e: {} if e["faithful_maps"] else dict.fromkeys(MAP_READING, DEMOTE),
        lambda e: "the maps barely depend on the trained weights",
    ),
    Rule(
        "unfaithful_maps",
        "medium",
        _unfaithful_maps,
        _unfaithful_maps_text,
        lambda e: dict.fromkeys(MAP_READING, DEMOTE),
        lambda e: "the maps pick evidence no better than random ones",
    ),
    Rule("attention_off_object", "high", _attention_off_object, _attention_off_object_text),
    Rule("fixed_region", "high", _fixed_region, _fixed_region_text),
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
PRECONDITIONS = tuple(rule.name for rule in RULES if rule.invalidates is not None)


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


Reasons = list[tuple[str, str]]  # (precondition name, its short reason)


def _effects(fired: list[tuple[Rule, dict[str, Any]]]) -> dict[str, dict[str, Reasons]]:
    """rule name -> {SUPPRESS: reasons, DEMOTE: reasons} from the preconditions that fired."""
    out: dict[str, dict[str, Reasons]] = {}
    for rule, rec in fired:
        if rule.invalidates is None or rule.reason is None:
            continue
        reason = (rule.name, rule.reason(rec["evidence"]))
        for name, effect in rule.invalidates(rec["evidence"]).items():
            if name != rule.name:
                out.setdefault(name, {}).setdefault(effect, []).append(reason)
    return out


def _quote(reasons: Reasons) -> str:
    return "; ".join(f"{name}: {why}" for name, why in reasons)


def _held_back(rec: dict[str, Any], reasons: Reasons) -> dict[str, Any]:
    # The finding stays visible (with its numbers) but its advice is withheld: it would be acted on wrongly.
    return rec | {
        "severity": "info",
        "message": f"held back ({_quote(reasons)}): {rec['message']}",
        "action": "none until the findings above are resolved",
        "withheld_action": rec["action"],
        "held_back_by": [name for name, _ in reasons],
    }


def _demoted(rec: dict[str, Any], reasons: Reasons) -> dict[str, Any]:
    return rec | {
        "severity": DEMOTED[rec["severity"]],
        "message": f"{rec['message']} (less certain: {_quote(reasons)})",
        "demoted_by": [name for name, _ in reasons],
    }


def _order(rec: Mapping[str, Any]) -> tuple[int, int]:
    """Preconditions that still stand first (in table order), then the rest worst first, held-back last."""
    if rec["rule"] == "shortcut":
        return (-1, 0)
    if rec["severity"] == "info":
        return (2, 0)
    if rec["rule"] in PRECONDITIONS:
        return (0, PRECONDITIONS.index(rec["rule"]))
    return (1, SEVERITY_ORDER[rec["severity"]])


def recommend(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The recommendations for a report dictionary (see :func:`lit_explain.audit.run_audit`), most useful
    first: failed preconditions, then the other findings worst first, then the findings held back."""
    fired = [(rule, rec) for rule in RULES if (rec := rule.apply(report)) is not None]
    effects = _effects(fired)
    out = []
    for _, rec in fired:
        effect = effects.get(rec["rule"], {})
        if effect.get(SUPPRESS):
            rec = _held_back(rec, effect[SUPPRESS] + effect.get(DEMOTE, []))
        elif effect.get(DEMOTE):
            rec = _demoted(rec, effect[DEMOTE])
        out.append(rec)
    return sorted(out, key=_order) or [_no_issue(report)]


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
