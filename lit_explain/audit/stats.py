"""The audit's numbers from the sweep's per-sample scalars: calibration, per-class rows, attention means.

Pure tensor maths on the CPU (no files, no model): each function here is checked against a hand count.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from lit_explain.audit.attention import THUMB
from lit_explain.audit.selection import most_confused_with
from lit_explain.audit.sweep import SweepResult

ECE_BINS = 15  # Guo et al. (2017)
RELIABILITY_BINS = 10  # coarser bins for the report's reliability table (fewer empty bins)
CALIBRATED_GAP = 0.02  # |mean confidence - accuracy| below this counts as calibrated
BIN_MARGIN = 0.05  # a reliability bin leans one way when confidence and accuracy differ by more
HIGH_CONFIDENCE = 0.9


def mean(values: Tensor) -> float:
    """The mean as a float; NaN for an empty tensor."""
    return float(values.float().mean()) if values.numel() else float("nan")


def standard_error(values: Tensor) -> float:
    """The standard error of the mean of ``values`` (sample std / sqrt(n)); NaN for fewer than 2 values."""
    n = values.numel()
    return float(values.float().std() / math.sqrt(n)) if n > 1 else float("nan")


def binomial_se(p: float, n: int) -> float:
    """Standard error of an accuracy ``p`` measured on ``n`` samples (normal approximation); NaN for n < 1.

    Example:
        >>> round(binomial_se(0.5, 100), 3)
        0.05
    """
    return math.sqrt(p * (1.0 - p) / n) if n >= 1 else float("nan")


def chance_accuracy(supports: Sequence[int], num_classes: int) -> tuple[float, int | None]:
    """What a model that learned nothing scores: the larger of 1/num_classes (uniform guessing) and the share
    of the most frequent class (always predicting it), and that class's position (None when 1/num_classes).

    Example:
        >>> chance_accuracy([30, 10, 10, 10], 4)    # always answering class 0 is right half the time
        (0.5, 0)
    """
    total = sum(supports)
    uniform = 1.0 / num_classes if num_classes else float("nan")
    if not total:
        return uniform, None
    top = max(range(len(supports)), key=lambda i: supports[i])
    majority = supports[top] / total
    return (majority, top) if majority > uniform else (uniform, None)


def ece(confidence: Tensor, correct: Tensor, bins: int = ECE_BINS) -> float:
    """Expected calibration error with equal-width confidence bins (Guo et al., 2017).

    Example:
        >>> ece(torch.tensor([0.9, 0.9]), torch.tensor([True, False]))   # 0.9 confident, 0.5 right
        0.4000000059604645
    """
    if confidence.numel() == 0:
        return float("nan")
    which = (confidence * bins).long().clamp(0, bins - 1)
    conf_sum = torch.bincount(which, weights=confidence.float(), minlength=bins)
    acc_sum = torch.bincount(which, weights=correct.float(), minlength=bins)
    return float((conf_sum - acc_sum).abs().sum() / confidence.numel())


def reliability(confidence: Tensor, correct: Tensor, bins: int = RELIABILITY_BINS) -> list[dict[str, Any]]:
    """Per non-empty equal-width confidence bin: range, count, mean confidence, accuracy and their gap."""
    which = (confidence * bins).long().clamp(0, bins - 1)
    rows = []
    for b in range(bins):
        mine = which == b
        n = int(mine.sum())
        if n:
            conf, acc = mean(confidence[mine]), mean(correct[mine])
            rows.append(
                {
                    "lo": b / bins,
                    "hi": (b + 1) / bins,
                    "count": n,
                    "confidence": conf,
                    "accuracy": acc,
                    "gap": conf - acc,
                }
            )
    return rows


def direction(gap: float) -> str:
    """``overconfident`` (confidence above accuracy), ``underconfident``, or ``calibrated`` (within 0.02)."""
    if gap != gap or abs(gap) < CALIBRATED_GAP:  # NaN: nothing to say
        return "calibrated"
    return "overconfident" if gap > 0 else "underconfident"


def calibration(result: SweepResult) -> dict[str, Any]:
    """Calibration of the sweep: ECE, the direction of the miscalibration, reliability bins, confident errors."""
    correct, confidence = result.correct, result.confidence
    wrong_conf = confidence[~correct]
    n_errors = int((~correct).sum())
    bins = reliability(confidence, correct)
    total = max(1, len(result))
    gap = mean(confidence) - result.accuracy
    return {
        # The gap's own noise: the standard error of the mean of (confidence - correct) over the samples.
        "gap_se": standard_error(confidence.float() - correct.float()),
        "ece": ece(confidence, correct),
        "accuracy": result.accuracy,
        "mean_confidence": mean(confidence),
        "gap": gap,
        "direction": direction(gap),
        "over_share": sum(b["count"] for b in bins if b["gap"] > BIN_MARGIN) / total,
        "under_share": sum(b["count"] for b in bins if b["gap"] < -BIN_MARGIN) / total,
        "reliability": bins,
        "mean_confidence_right": mean(confidence[correct]),
        "mean_confidence_wrong": mean(wrong_conf),
        "errors": n_errors,
        "high_confidence_errors": int((wrong_conf >= HIGH_CONFIDENCE).sum()),
        "high_confidence_error_share": float((wrong_conf >= HIGH_CONFIDENCE).float().mean())
        if n_errors
        else 0.0,
    }


def per_class(result: SweepResult, classes: list[int], class_names: Sequence[str]) -> list[dict[str, Any]]:
    """One row per audited class: accuracy, support, confidence, loss and its most frequent confusion."""
    cm = result.confusion_matrix()
    other, other_count = most_confused_with(cm)
    rows = []
    for c in classes:
        mine = result.labels == c
        support = int(mine.sum())
        correct = int(cm[c, c])
        rows.append(
            {
                "id": c,
                "name": class_names[c],
                "accuracy": correct / support if support else float("nan"),
                "support": support,
                "correct": correct,
                "mean_confidence": mean(result.confidence[mine]),
                "mean_true_prob": mean(result.true_prob[mine]),
                "mean_loss": mean(result.loss[mine]),
                "most_confused_with": class_names[int(other[c])] if int(other[c]) >= 0 else "",
                "most_confused_with_id": int(other[c]),
                "most_confused_count": int(other_count[c]),
                "predicted_as_this": int(cm[:, c].sum()),
            }
        )
    return rows


class StatsStore:
    """Per explained sample (by sweep position): attention numbers and a small map, each kept once.

    Example:
        >>> store = StatsStore()
        >>> store.add([3, 5], {"concentration_pred": torch.tensor([0.1, 0.2])}, torch.zeros(2, 24, 24))
        >>> store.add([5], {"concentration_pred": torch.tensor([0.9])}, torch.zeros(1, 24, 24))  # seen
        >>> store.tensors()[1]["concentration_pred"].tolist()
        [0.10000000149011612, 0.20000000298023224]
    """

    def __init__(self) -> None:
        self.positions: list[int] = []
        self.values: dict[str, list[Tensor]] = {}
        self.thumbs: list[Tensor] = []
        self.seen: set[int] = set()

    def add(self, positions: list[int], stats: Mapping[str, Tensor], thumbs: Tensor) -> None:
        keep = [i for i, p in enumerate(positions) if p not in self.seen]
        if not keep:
            return
        idx = torch.tensor(keep)
        self.positions += [positions[i] for i in keep]
        self.seen.update(positions[i] for i in keep)
        for key, value in stats.items():
            self.values.setdefault(key, []).append(value[idx])
        self.thumbs.append(thumbs[idx])

    def tensors(self) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        pos = torch.tensor(self.positions, dtype=torch.long)
        values = {k: torch.cat(v) for k, v in self.values.items()}
        thumbs = torch.cat(self.thumbs) if self.thumbs else torch.zeros(0, THUMB, THUMB, dtype=torch.float16)
        return pos, values, thumbs


def aggregate(
    values: Mapping[str, Tensor], labels: Tensor, correct: Tensor, classes: list[int]
) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    """Means of every attention number overall and per class, each also over right and wrong samples."""

    def summary(select: Tensor) -> dict[str, Any]:
        out: dict[str, Any] = {
            "n": int(select.sum()),
            "n_right": int((select & correct).sum()),
            "n_wrong": int((select & ~correct).sum()),
        }
        for key, v in values.items():
            out[key] = mean(v[select])
            out[f"{key}_right"] = mean(v[select & correct])
            out[f"{key}_wrong"] = mean(v[select & ~correct])
        return out

    overall = summary(torch.ones_like(labels, dtype=torch.bool))
    return overall, {c: summary(labels == c) for c in classes}
