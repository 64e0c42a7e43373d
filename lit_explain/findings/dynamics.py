"""Training dynamics -> likely label errors: AUM, Dataset Cartography and confident learning, on tensors.

Per training sample, every training step that sees it gives three numbers from logits the step computed
anyway: the *margin* (assigned-class logit minus the largest other logit), the assigned-class probability
and whether the assigned class was predicted. Summed over the run (:class:`DynamicsStats`) they give

* AUM, the area under the margin (Pleiss et al. 2020): the mean margin. A mislabelled sample is pulled
  towards its given class only by memorisation while every similar sample pulls the other way, so its
  margin stays low or negative for most of the run;
* Dataset Cartography (Swayamdipta et al. 2020): confidence (mean assigned-class probability),
  variability (its standard deviation across epochs) and correctness (share of steps predicted right);
* confident learning (Northcutt et al. 2021, cleanlab's method) on any ``[N, C]`` probabilities: the
  cleanlab-style baseline on the last epoch's in-sample probabilities.

Scores are *suspicion* scores: higher = the given label is more likely wrong. No Lightning here; the
``TrainingDynamics`` callback, the benchmark and the audit call these functions.

Example:
    >>> stats = stats_from_logits(logits_per_epoch, labels)    # [E, N, C], [N]   # doctest: +SKIP
    >>> table = label_issue_table(stats, sources)                                  # doctest: +SKIP
    >>> table.rows[0]["source"], table.flagged                                     # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from lit_explain.findings.store import Finding

Method = Literal["late_aum", "aum", "confidence"]
METHODS: tuple[str, ...] = ("late_aum", "aum", "confidence")
CSV_COLUMNS = (
    "rank",
    "index",
    "source",
    "given_label",
    "suggested_label",
    "score",
    "flagged",
    "aum",
    "late_aum",
    "confidence",
    "variability",
    "correctness",
    "seen",
)
TOP_SOURCES = 5


@dataclass(frozen=True)
class StepValues:
    """What one training step says about each sample of its batch (all ``[B]``, on the logits' device)."""

    margin: Tensor  # float32: assigned-class logit minus the largest other logit
    prob: Tensor  # float32: softmax probability of the assigned class
    correct: Tensor  # float32 0/1: the assigned class is the arg-max
    other: Tensor  # int64: the class with the largest other logit (the suggested label)


def hard_labels(labels: Tensor) -> Tensor:
    """Class indices from hard labels ``[B]`` or soft ones ``[B, C]`` (MixUp/CutMix: the dominant class)."""
    return labels.argmax(dim=1) if labels.is_floating_point() and labels.dim() == 2 else labels.long()


def step_values(logits: Tensor, labels: Tensor) -> StepValues:
    """Margin, assigned-class probability, correctness and runner-up class of each row of ``logits``.

    Example:
        >>> v = step_values(torch.tensor([[2.0, 0.5, 1.0]]), torch.tensor([2]))
        >>> float(v.margin[0]), int(v.other[0]), float(v.correct[0])
        (-1.0, 0, 0.0)
    """
    logits = logits.detach().float()
    labels = hard_labels(labels).to(logits.device)
    assigned = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    largest_other, other = others.max(dim=1)
    prob = logits.softmax(dim=1).gather(1, labels[:, None]).squeeze(1)
    return StepValues(
        margin=assigned - largest_other,
        prob=prob,
        correct=(assigned > largest_other).float(),
        other=other,
    )


@dataclass(frozen=True)
class DynamicsStats:
    """Per-sample sums over every training step that saw the sample (all ``[N]``; ``count == 0``: unseen).

    Example:
        >>> stats = stats_from_logits(torch.randn(3, 10, 4), torch.randint(4, (10,)))
        >>> stats.count.tolist()[:3], aum(stats).shape
        ([3.0, 3.0, 3.0], torch.Size([10]))
    """

    margin_sum: Tensor
    prob_sum: Tensor
    prob_sq_sum: Tensor
    correct_sum: Tensor
    count: Tensor
    late_margin_sum: Tensor  # margins weighted by epoch² (epochs counted from 1): later epochs count more
    late_weight_sum: Tensor
    label: Tensor  # int64, the given label (-1: never seen)
    other: Tensor  # int64, runner-up class at the latest step that saw the sample (-1: never seen)
    class_prob_sum: Tensor | None = None  # float32 [N, C]: summed softmax probabilities of every class

    def to(self, device: torch.device | str) -> DynamicsStats:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return DynamicsStats(**{k: v.to(device) if v is not None else None for k, v in moved.items()})

    def mean_probs(self) -> Tensor | None:
        """Mean softmax probabilities ``[N, C]`` over the steps that saw each sample (None: not recorded)."""
        if self.class_prob_sum is None:
            return None
        return self.class_prob_sum / self.count.clamp_min(1)[:, None]


def stats_from_logits(logits: Tensor, labels: Tensor) -> DynamicsStats:
    """Sum the step values of per-epoch logits ``[E, N, C]`` (NaN rows: not seen that epoch) into stats.

    The same sums the callback accumulates step by step, for benchmarks and tests.
    """
    epochs, n = logits.shape[:2]
    zeros = torch.zeros(n, dtype=torch.float32)
    sums = {name: zeros.clone() for name in ("margin_sum", "prob_sum", "prob_sq_sum", "late_margin_sum")}
    late_weight_sum = zeros.clone()
    correct_sum, count = zeros.clone(), zeros.clone()
    other = torch.full((n,), -1, dtype=torch.long)
    class_prob_sum = torch.zeros(n, logits.shape[2])
    labels = hard_labels(labels)
    for e in range(epochs):
        seen = ~logits[e].isnan().any(dim=1)
        v = step_values(logits[e][seen], labels[seen])
        sums["margin_sum"][seen] += v.margin
        sums["late_margin_sum"][seen] += epoch_weight(e) * v.margin
        late_weight_sum[seen] += epoch_weight(e)
        sums["prob_sum"][seen] += v.prob
        sums["prob_sq_sum"][seen] += v.prob**2
        correct_sum[seen] += v.correct
        count[seen] += 1
        other[seen] = v.other
        class_prob_sum[seen] += logits[e][seen].float().softmax(dim=1)
    label = torch.where(count > 0, labels, torch.full_like(labels, -1))
    return DynamicsStats(
        **sums,
        correct_sum=correct_sum,
        count=count,
        late_weight_sum=late_weight_sum,
        label=label,
        other=other,
        class_prob_sum=class_prob_sum,
    )


def _mean(total: Tensor, count: Tensor) -> Tensor:
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))


def epoch_weight(epoch: int) -> float:
    """The weight of a margin seen in (0-based) ``epoch`` in :func:`late_aum`: ``(epoch + 1) ** 2``.

    Early epochs, when the network has learned little, give every sample a low margin; counting later
    epochs more separates memorised wrong labels from hard right ones better (docs/benchmarks.md).
    """
    return float((epoch + 1) ** 2)


def aum(stats: DynamicsStats) -> Tensor:
    """Area under the margin: the mean margin over the steps that saw each sample (NaN: unseen)."""
    return _mean(stats.margin_sum, stats.count)


def late_aum(stats: DynamicsStats) -> Tensor:
    """AUM with each epoch's margin weighted by :func:`epoch_weight` (NaN: unseen)."""
    return _mean(stats.late_margin_sum, stats.late_weight_sum)


@dataclass(frozen=True)
class Cartography:
    """Dataset Cartography coordinates per sample (all ``[N]``, NaN where unseen)."""

    confidence: Tensor  # mean assigned-class probability
    variability: Tensor  # its standard deviation across the steps (epochs) that saw the sample
    correctness: Tensor  # share of those steps that predicted the assigned class


def cartography(stats: DynamicsStats) -> Cartography:
    """Confidence, variability and correctness from the sums (population standard deviation, as the paper)."""
    confidence = _mean(stats.prob_sum, stats.count)
    second = _mean(stats.prob_sq_sum, stats.count)
    variability = (second - confidence**2).clamp_min(0).sqrt()
    return Cartography(confidence, variability, _mean(stats.correct_sum, stats.count))


def suspicion(stats: DynamicsStats, method: Method = "aum") -> Tensor:
    """Higher = the given label more likely wrong: ``-AUM``, ``-late AUM`` or ``-confidence`` (NaN: unseen)."""
    if method == "aum":
        return -aum(stats)
    if method == "late_aum":
        return -late_aum(stats)
    if method == "confidence":
        return -cartography(stats).confidence
    raise ValueError(f"unknown label-issue method {method!r}; choose one of {', '.join(METHODS)}")


@dataclass(frozen=True)
class ConfidentLearning:
    """Confident learning on ``[N, C]`` probabilities (cleanlab's ``find_label_issues(filter_by=
    "confident_learning")``, re-implemented: lit_explain does not depend on cleanlab).

    Attributes:
        score: suspicion, higher = more likely wrong: the flagged samples first (by ``1 - p(given)``), then
            the others by ``1 - p(given)`` (cleanlab's ``self_confidence`` quality, reversed).
        flagged: bool ``[N]``: the confident joint puts the sample off its given class.
        suggested: int64 ``[N]``: the class with the highest probability.
    """

    score: Tensor
    flagged: Tensor
    suggested: Tensor


def confident_learning(probs: Tensor, labels: Tensor) -> ConfidentLearning:
    """Flag samples whose confidently predicted class is not their given class.

    Per class ``j`` the threshold ``t_j`` is the mean probability of ``j`` over the samples labelled ``j``;
    a sample is *confidently* of class ``j`` when ``p_j >= t_j`` (the arg-max among such classes). It is
    flagged when that class exists and differs from its label (the off-diagonal of the confident joint).

    Example:
        >>> p = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.2, 0.8], [0.9, 0.1]])
        >>> confident_learning(p, torch.tensor([0, 0, 1, 1])).flagged.tolist()
        [False, False, False, True]
    """
    probs = probs.float()
    labels = hard_labels(labels).to(probs.device)
    classes = probs.shape[1]
    given = probs.gather(1, labels[:, None]).squeeze(1)
    sums = torch.zeros(classes, device=probs.device).index_add_(0, labels, given)
    counts = torch.bincount(labels, minlength=classes).float()
    thresholds = torch.where(counts > 0, sums / counts.clamp_min(1), torch.ones_like(sums))
    above = probs >= thresholds[None, :]
    confident = torch.where(above, probs, torch.full_like(probs, -1.0)).argmax(dim=1)
    flagged = above.any(dim=1) & (confident != labels)
    score = (1.0 - given) + flagged.float()  # flagged rank above every unflagged one
    return ConfidentLearning(score=score, flagged=flagged, suggested=probs.argmax(dim=1))


def estimated_issue_count(probs: Tensor, labels: Tensor) -> int:
    """How many labels are wrong, estimated by confident learning's calibrated confident joint.

    The confident joint counts, per given class ``i``, the samples confidently of class ``j`` (as in
    :func:`confident_learning`); each row is rescaled to the number of samples labelled ``i`` (cleanlab's
    calibration) and the off-diagonal is the estimate.

    Example:
        >>> p = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.2, 0.8], [0.9, 0.1]])
        >>> estimated_issue_count(p, torch.tensor([0, 0, 1, 1]))
        1
    """
    probs = probs.float()
    labels = hard_labels(labels).to(probs.device)
    seen = labels >= 0
    probs, labels = probs[seen], labels[seen]
    classes = probs.shape[1]
    given = probs.gather(1, labels[:, None]).squeeze(1)
    counts = torch.bincount(labels, minlength=classes).float()
    thresholds = torch.zeros(classes, device=probs.device).index_add_(0, labels, given) / counts.clamp_min(1)
    thresholds = torch.where(counts > 0, thresholds, torch.ones_like(thresholds))
    above = probs >= thresholds[None, :]
    confident = torch.where(above, probs, torch.full_like(probs, -1.0)).argmax(dim=1)
    has = above.any(dim=1)
    joint = torch.zeros(classes, classes, device=probs.device)
    joint.index_put_((labels[has], confident[has]), torch.ones_like(given[has]), accumulate=True)
    calibrated = joint / joint.sum(dim=1, keepdim=True).clamp_min(1) * counts[:, None]
    return round(float(calibrated.sum() - calibrated.diagonal().sum()))


SKETCH_POINTS = 1024
"""The mixture is fitted to this many evenly spaced quantiles of the margins (the whole distribution's
shape at a fixed cost: 50,000 samples fit as fast as 1,000); every sample is then assigned once."""


def mixture_issue_count(late_margin: Tensor) -> int:
    """How many labels look wrong: the samples in the low component of a two-component Gaussian mixture
    fitted to the late-weighted AUM (as DivideMix, Li et al. 2020, splits per-sample losses).

    None when that component is not a minority with a negative mean margin: a component whose samples still
    favour their given label on average is a clean run's hardest samples, and one holding most samples is a
    network that has not learned yet (early epochs), not wrong labels. Unlike confident learning's estimate
    from in-sample probabilities (:func:`estimated_issue_count`), which shrinks as the network memorises the
    wrong labels (shapes demo at 5% noise: 188-261 of 250 wrong labels after 6 epochs, 33-57 after 10), the
    count does not depend on how long training ran (206-239 and 216-244). NaN (unseen) values are left out.
    The mixture is fitted to :data:`SKETCH_POINTS` quantiles from three starting points (the low component at
    the 1st, 5th and 20th percentile); the most likely fit is kept.

    Example:
        >>> margins = torch.cat([torch.full((90,), 3.0) + torch.linspace(-1, 1, 90), torch.full((10,), -2.0)])
        >>> mixture_issue_count(margins)
        10
        >>> mixture_issue_count(margins.abs())  # every margin positive: nothing looks wrong
        0
    """
    x = late_margin[~late_margin.isnan()].double().cpu().numpy()
    if x.size < 2 or float(x.std()) == 0.0:
        return 0
    sketch = np.quantile(x, (np.arange(min(x.size, SKETCH_POINTS)) + 0.5) / min(x.size, SKETCH_POINTS))
    fits = [_two_gaussians(sketch, q) for q in (0.01, 0.05, 0.2)]
    _, weight, mean, var = max(fits, key=lambda fit: fit[0])
    low = int(mean.argmin())
    if float(mean[low]) >= 0.0 or float(weight[low]) >= 0.5:
        return 0
    log_p = _component_log_density(x, weight, mean, var)
    return int((log_p[:, low] > log_p[:, 1 - low]).sum())


def _component_log_density(
    x: np.ndarray, weight: np.ndarray, mean: np.ndarray, var: np.ndarray
) -> np.ndarray:
    """``log(weight_k * N(x | mean_k, var_k))`` per sample and component, ``[N, 2]``."""
    return np.log(weight) - 0.5 * np.log(2 * np.pi * var) - 0.5 * (x[:, None] - mean) ** 2 / var


def _two_gaussians(
    x: np.ndarray, low_start: float, iterations: int = 300
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """EM for a 1-D two-component Gaussian mixture: (log-likelihood, weights, means, variances; each ``[2]``).

    numpy on ``[N]`` vectors: torch's softmax over a dimension of 2 and its OpenMP threads made each step
    30-100x slower on a busy 2-core machine.
    """
    floor = 1e-6 * float(x.var()) + 1e-12  # keeps a component from collapsing onto one value
    mean = np.quantile(x, [low_start, 0.5])
    var = np.full(2, x.var() / 4)
    weight = np.array([low_start * 2, 1 - low_start * 2])
    previous = -np.inf
    for _ in range(iterations):
        log_p = _component_log_density(x, weight, mean, var)
        likelihood = float(np.logaddexp(log_p[:, 0], log_p[:, 1]).sum())
        first = 1.0 / (1.0 + np.exp(np.clip(log_p[:, 1] - log_p[:, 0], -700, 700)))
        resp = np.stack([first, 1.0 - first], axis=1)
        total = np.maximum(resp.sum(axis=0), 1e-12)
        weight = np.maximum(total / x.size, 1e-12)
        mean = (resp * x[:, None]).sum(axis=0) / total
        var = np.maximum((resp * (x[:, None] - mean) ** 2).sum(axis=0) / total, floor)
        if likelihood - previous < 1e-6 * abs(likelihood):
            break
        previous = likelihood
    return likelihood, weight, mean, var


def suggested_labels(stats: DynamicsStats) -> Tensor:
    """Per sample the most probable class other than the given one (mean probabilities over the run when
    recorded, else the runner-up at the latest step)."""
    mean = stats.mean_probs()
    if mean is None:
        return stats.other
    given = stats.label.clamp_min(0)[:, None]
    return mean.scatter(1, given, float("-inf")).argmax(dim=1)


def ranking(score: Tensor) -> Tensor:
    """Indices from most to least suspicious (NaN last; ties by index, so the order is reproducible)."""
    score = score.detach().double().cpu()
    key = torch.where(score.isnan(), torch.full_like(score, float("-inf")), score)
    # A stable sort on the negated key keeps equal scores in index order.
    return torch.sort(-key, stable=True).indices


def precision_at_k(score: Tensor, truth: Tensor, k: int | None = None) -> float:
    """Share of the top ``k`` (default: as many as ``truth`` holds) that are in ``truth`` (indices)."""
    k = len(truth) if k is None else k
    if k == 0:
        return float("nan")
    top = set(ranking(score)[:k].tolist())
    return len(top & set(truth.tolist())) / k


def recall_at(score: Tensor, truth: Tensor, k: int) -> float:
    """Share of ``truth`` (indices) found among the top ``k``."""
    if len(truth) == 0:
        return float("nan")
    top = set(ranking(score)[:k].tolist())
    return len(top & set(truth.tolist())) / len(truth)


@dataclass(frozen=True)
class LabelIssueTable:
    """Every seen training sample, most suspicious first, and how many look wrong (the first ``flagged``).

    Example:
        >>> stats = stats_from_logits(torch.randn(2, 6, 3), torch.tensor([0, 1, 2, 0, 1, 2]))
        >>> table = label_issue_table(stats, [f"idx {i}" for i in range(6)], ["a", "b", "c"])
        >>> [row["rank"] for row in table.rows]
        [1, 2, 3, 4, 5, 6]
    """

    rows: list[dict[str, Any]]
    flagged: int
    method: str
    rule: str  # how ``flagged`` was decided, for the message

    def top_sources(self, n: int = TOP_SOURCES) -> list[str]:
        return [row["source"] for row in self.rows[: min(n, self.flagged)]]


def label_issue_table(
    stats: DynamicsStats,
    sources: Sequence[str],
    class_names: Sequence[str] | None = None,
    method: Method = "aum",
    threshold: float | None = None,
) -> LabelIssueTable:
    """Rows for ``label_issues.csv``: every sample seen in training, most suspicious first.

    ``score`` is the suspicion (``-AUM`` for ``method="aum"``, ``-confidence`` for ``"confidence"``). How
    many are ``flagged``: with ``threshold=None``, the number of wrong labels a mixture on the late-weighted
    AUM estimates (:func:`mixture_issue_count`), taken from the top of the ranking; with a ``threshold``, the
    samples whose AUM (or confidence) is below it. The suggested label is :func:`suggested_labels`.
    """
    stats = stats.to("cpu")
    score = suspicion(stats, method)
    carto = cartography(stats)
    margin, late = aum(stats), late_aum(stats)
    suggested = suggested_labels(stats)
    ranked = ranking(score)
    order = ranked[stats.count[ranked] > 0].tolist()
    what = {"aum": "AUM", "late_aum": "late-weighted AUM", "confidence": "mean confidence"}[method]
    if threshold is None:
        n_flagged = min(len(order), mixture_issue_count(late))
        rule = "the low group of a two-group mixture on the late-weighted AUM"
        rule += "" if method == "late_aum" else f", lowest {what} first"
    else:
        n_flagged = int((-score[order] < threshold).sum()) if order else 0  # -score: AUM or confidence
        rule = f"{what} below {threshold:g}"
    names = list(class_names) if class_names is not None else None

    def name(c: int) -> str | int:
        return names[c] if names is not None and 0 <= c < len(names) else c

    # Whole columns to Python numbers at once: indexing tensors per row costs ~50 us a value (0.25 s for 5,000
    # samples on every epoch end, on the training thread).
    index = torch.tensor(order, dtype=torch.long)
    columns = {
        key: [round(v, 6) for v in values[index].tolist()]
        for key, values in (
            ("score", score),
            ("aum", margin),
            ("late_aum", late),
            ("confidence", carto.confidence),
            ("variability", carto.variability),
            ("correctness", carto.correctness),
        )
    }
    given, suggestion, seen = (t[index].tolist() for t in (stats.label, suggested, stats.count))
    rows = [
        {
            "rank": rank,
            "index": i,
            "source": sources[i] if i < len(sources) else f"idx {i}",
            "given_label": name(int(given[row])),
            "suggested_label": name(int(suggestion[row])),
            "score": columns["score"][row],
            "flagged": int(rank <= n_flagged),
            "aum": columns["aum"][row],
            "late_aum": columns["late_aum"][row],
            "confidence": columns["confidence"][row],
            "variability": columns["variability"][row],
            "correctness": columns["correctness"][row],
            "seen": int(seen[row]),
        }
        for row, (rank, i) in enumerate(enumerate(order, start=1))
    ]
    return LabelIssueTable(rows=rows, flagged=n_flagged, method=method, rule=rule)


def label_issues_message(table: LabelIssueTable, epoch: int) -> str:
    """One finding's text: how many look wrong, the first few, and what to do.

    Example:
        >>> row = {"source": "idx 3", "given_label": "star", "suggested_label": "cross"}
        >>> print(label_issues_message(LabelIssueTable([row], 1, "aum", "AUM below 0"), epoch=5))  # doctest: +ELLIPSIS
        1 of 1 training labels look wrong after epoch 5 (100.0%; AUM below 0): idx 3 (given star, looks ...
    """
    n = len(table.rows)
    share = table.flagged / n if n else 0.0
    shown = "; ".join(
        f"{row['source']} (given {row['given_label']}, looks like {row['suggested_label']})"
        for row in table.rows[: min(TOP_SOURCES, table.flagged)]
    )
    return (
        f"{table.flagged} of {n} training labels look wrong after epoch {epoch} ({share:.1%}; {table.rule}): "
        f"{shown}. Check these files' labels (label_issues.csv lists every sample, most suspicious first), "
        "fix or drop the wrong ones and retrain"
    )


def label_issues_finding(table: LabelIssueTable, epoch: int) -> Finding | None:
    """A ``"label_issues"`` finding when any sample looks wrong at the threshold, else None."""
    if table.flagged == 0:
        return None
    n = len(table.rows)
    share = table.flagged / n if n else 0.0
    return Finding(
        kind="label_issues",
        epoch=epoch,
        # A few percent wrong labels is ordinary in real data; a large share is worth stopping for.
        severity="critical" if share >= 0.2 else "warning",
        message=label_issues_message(table, epoch),
        details={
            "flagged": table.flagged,
            "samples": n,
            "method": table.method,
            "rule": table.rule,
            "top_sources": table.top_sources(),
        },
    )
