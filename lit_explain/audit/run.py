"""The audit's order of work: one inference pass, CAMs for the shown samples only, then the report folder.

The jobs live in their own modules: settings in :mod:`~lit_explain.audit.options`, the numbers in
:mod:`~lit_explain.audit.stats`, attention quality in :mod:`~lit_explain.audit.attention`, the files in
:mod:`~lit_explain.audit.writing`, loading a checkpoint in :mod:`~lit_explain.audit.checkpoint`. This
module only runs them in order and assembles ``report.json``.
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, default_collate
from tqdm.auto import tqdm

from lit_explain.audit import recommendations
from lit_explain.audit.attention import (
    explain_batch,
    faithfulness,
    fixed_region,
    randomisation_check,
    reference_concentration,
    sample_stats,
    thumbnails,
)
from lit_explain.audit.label_issues import label_issues_section, read_label_issues
from lit_explain.audit.options import AuditOptions, default_output, resolve_classes
from lit_explain.audit.report import REPORT_FILE, SCHEMA_VERSION, panel_rows, save_panel
from lit_explain.audit.samples import sample_source
from lit_explain.audit.selection import (
    ClassSelection,
    PairSelection,
    probe_positions,
    select_class_samples,
    select_pairs,
)
from lit_explain.audit.shortcut import shortcut_check
from lit_explain.audit.stats import StatsStore, aggregate, calibration, mean, per_class
from lit_explain.audit.sweep import SweepResult, sweep
from lit_explain.audit.writing import write_mean_map, write_probe, write_report_files
from lit_explain.callbacks.settings import explain_layers
from lit_explain.data.base import ExplainableDataModule
from lit_explain.data.batch import batch_masks, split_batch
from lit_explain.errors import ConfigError
from lit_explain.explain import cam, is_rollout_method, resolve_layer
from lit_explain.outputs import AtomicReportDir, safe_name, write_json

__all__ = ["AuditOptions", "check_layer", "default_output", "resolve_classes", "run_audit"]

Group = tuple[
    str, Any, list[int]
]  # ("class", class id, positions) | ("pair", PairSelection, ...) | ("probe", ...)


@dataclass
class _Audit:
    """What every step of one audit reads: the network, the data, the settings and the sweep."""

    net: nn.Module
    dataset: Dataset
    split: str
    root: str | None  # the data folder, so that sample sources are relative to it
    mean: Sequence[float]
    std: Sequence[float]
    options: AuditOptions
    names: list[str]
    classes: list[int]
    head: str | None
    timing: dict[str, float]
    result: SweepResult | None = None
    shortcut_layers: str | list[str] | None = None  # the layers the training-time ShortcutAlarm explains
    label_issues: Path | None = None  # the training run's label_issues.csv, shown with its top rows

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def source(self, pos: int) -> str:
        return sample_source(self.dataset, int(self.result.indices[pos]), self.split, self.root)

    def sample(self, pos: int, role: str) -> dict[str, Any]:
        r = self.result
        return {
            "role": role,
            "source": self.source(pos),
            "index": int(r.indices[pos]),
            "true_name": self.names[int(r.labels[pos])],
            "pred_name": self.names[int(r.preds[pos])],
            "confidence": float(r.confidence[pos]),
            "correct": bool(r.correct[pos]),
        }

    def caption(self, pos: int, tag: str) -> str:
        s = self.sample(pos, tag)
        return f"{tag}: {s['source']}\ntrue: {s['true_name']}  pred: {s['pred_name']} ({s['confidence']:.2f})"


@dataclass
class _Shown:
    """What the explain-and-render step produced."""

    store: StatsStore = field(default_factory=StatsStore)
    probe_maps: dict[int, Tensor] = field(default_factory=dict)
    panels: dict[int, str] = field(default_factory=dict)  # class id -> panel file
    pair_files: dict[int, str] = field(default_factory=dict)  # pair rank -> panel file
    layer: str | None = None
    raw_size: tuple[int, int] | None = None
    image_size: tuple[int, int] | None = None


def run_audit(
    model: nn.Module,
    datamodule: ExplainableDataModule,
    output: str | Path,
    options: AuditOptions | None = None,
    *,
    class_names: Sequence[str] | None = None,
    device: torch.device | str | None = None,
    head: str | None = None,
    label_issues: str | Path | None = None,
) -> dict[str, Any]:
    """Audit ``model`` on a split of ``datamodule`` and write the report directory ``output``.

    ``model`` is an :class:`~lit_explain.models.ImageClassifier` (its ``.net`` is explained) or a plain
    classifier network. Returns the report dictionary (also written as ``report.json``).

    Example:
        >>> model = load_classifier("best.ckpt")                      # doctest: +SKIP
        >>> run_audit(model, ShapesDataModule(), "audit/", AuditOptions(split="val"))  # doctest: +SKIP
    """
    options = options or AuditOptions()
    options.validate()
    net = getattr(model, "net", None) or model
    check_layer(net, options)  # a wrong --layer fails now, with the valid names, not after the sweep
    names = list(class_names or getattr(model, "class_names", None) or datamodule.class_names)
    if head is None and hasattr(model, "head_name"):
        head = model.head_name
    if device is not None:
        net = net.to(device)
    root = getattr(datamodule, "root", None)
    audit = _Audit(
        net, datamodule.dataset(options.split), options.split, str(root) if root is not None else None,
        datamodule.mean, datamodule.std, options, names, resolve_classes(options.classes, names), head, {},
    )  # fmt: skip
    audit.shortcut_layers = explain_layers(model, options.layer)
    audit.label_issues = Path(label_issues) if label_issues is not None else None
    t0 = time.perf_counter()
    target = AtomicReportDir(output, overwrite=options.overwrite, kind="audit")
    with target as tmp:
        # Fork the RNG so that an audit inside training (the callback) leaves its random stream untouched.
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            report = _audit_into(tmp, audit, datamodule, training_settings(model, datamodule))
        audit.timing["total_s"] = time.perf_counter() - t0
        report["timing"] = audit.timing
        write_json(tmp / REPORT_FILE, report, overwrite=True, indent=1)
        final = target.commit()
    report["path"] = str(final)
    return report


def check_layer(net: nn.Module, options: AuditOptions) -> None:
    """Raise :class:`~lit_explain.explain.layers.LayerNotFoundError` (listing the candidates) for a bad layer.

    Rollout methods explain through every attention block and take no layer; None is chosen per batch.
    """
    if options.layer is not None and not is_rollout_method(options.method):
        resolve_layer(net, options.layer)


def training_settings(model: nn.Module, datamodule: ExplainableDataModule) -> dict[str, Any]:
    """The checkpoint's own regularisation settings, so that no recommendation repeats one already set."""
    hp = getattr(model, "hparams", None) or {}
    data_hp = getattr(datamodule, "hparams", None) or {}
    return {
        "label_smoothing": hp.get("label_smoothing"),
        "weight_decay": hp.get("weight_decay"),
        "augment": data_hp.get("augment"),
    }


def _timed(audit: _Audit, key: str, start: float) -> None:
    audit.timing[key] = time.perf_counter() - start


def _audit_into(
    tmp: Path, audit: _Audit, datamodule: ExplainableDataModule, settings: dict[str, Any]
) -> dict[str, Any]:
    t = time.perf_counter()
    audit.result = _sweep(audit, datamodule)
    _timed(audit, "inference_s", t)

    t = time.perf_counter()
    result, options = audit.result, audit.options
    selections = {
        c: select_class_samples(result, c, options.best_per_class, options.worst_per_class)
        for c in audit.classes
    }
    pairs = select_pairs(result, audit.classes, top_n=options.top_pairs, examples=options.pair_examples)
    probe = probe_positions(result, audit.classes, options.probe_per_class)
    shown = _explain_and_render(tmp, audit, _groups(audit, selections, pairs, probe), selections)
    _timed(audit, "explain_render_s", t)

    t = time.perf_counter()
    shortcut = shortcut_check(
        audit.net, datamodule, audit.split, tmp,
        layers=audit.shortcut_layers, names=audit.names, mean=audit.mean, std=audit.std,
    )  # fmt: skip
    _timed(audit, "shortcut_s", t)

    t = time.perf_counter()
    faith, randomisation = _attention_quality(audit, probe[: options.quality_samples], shown.layer)
    _timed(audit, "attention_quality_s", t)

    t = time.perf_counter()
    pos, values, thumbs = shown.store.tensors()
    overall, by_class = aggregate(values, result.labels[pos], result.correct[pos], audit.classes)
    probe_order = [p for p in probe if p in shown.probe_maps]
    write_probe(
        tmp, audit.split, result.indices[probe_order], result.labels[probe_order],
        [shown.probe_maps[p] for p in probe_order],
    )  # fmt: skip
    attention = {
        **_attention_summary(audit, shown, overall, "energy_in_mask" in values, int(pos.numel())),
        "faithfulness": faith,
        "randomisation": randomisation,
        "fixed_region": fixed_region(thumbs, result.labels[pos], audit.classes),
        "mean_map_file": write_mean_map(tmp, thumbs),
    }
    report = _report(audit, selections, pairs, shown, by_class, attention, settings, shortcut)
    if audit.label_issues is not None:
        rows, counts = read_label_issues(audit.label_issues, options.label_issues_top)
        report["label_issues"] = label_issues_section(
            tmp, audit.net, datamodule, audit.label_issues, rows, counts,
            class_names=audit.names, layer=shown.layer or options.layer, method=options.method,
            device=audit.device,
        )  # fmt: skip
    if options.compare_to:
        from lit_explain.audit.compare import compare_reports

        report["compare"] = compare_reports(report, tmp, options.compare_to)
    _timed(audit, "aggregate_s", t)

    t = time.perf_counter()
    write_report_files(tmp, report, result.confusion_matrix(), audit.names)
    _timed(audit, "files_s", t)
    return report


def _sweep(audit: _Audit, datamodule: ExplainableDataModule) -> SweepResult:
    """One inference pass over the chosen classes of the split (O(N) scalars kept)."""
    options = audit.options
    positions = _positions(datamodule, audit.split, audit.classes, options.max_samples)
    result = sweep(
        audit.net,
        audit.dataset,
        len(audit.names),
        positions,
        batch_size=options.batch_size,
        num_workers=options.num_workers,
        device=audit.device,
        progress=options.progress,
    )
    if len(result) == 0:
        raise ConfigError(f"no samples of the chosen classes in the {audit.split} split")
    return result


def _positions(
    datamodule: ExplainableDataModule, split: str, classes: list[int], max_samples: int | None
) -> Tensor | None:
    n_classes = datamodule.num_classes
    if len(classes) == n_classes and max_samples is None:
        return None
    labels = datamodule.split_labels(split)
    keep = torch.zeros(n_classes, dtype=torch.bool)
    keep[classes] = True
    positions = torch.nonzero(keep[labels]).flatten()
    return positions[:max_samples] if max_samples is not None else positions


def _groups(
    audit: _Audit, selections: dict[int, ClassSelection], pairs: list[PairSelection], probe: list[int]
) -> list[Group]:
    """The samples to explain: per class best/worst, the top pairs' examples, and the fixed probe."""
    size = audit.options.cam_batch_size
    groups: list[Group] = [("class", c, s.positions) for c, s in selections.items() if s.positions]
    groups += [("pair", p, p.positions) for p in pairs[: audit.options.pair_panels] if p.positions]
    groups += [("probe", None, probe[i : i + size]) for i in range(0, len(probe), size)]
    return groups


def _batches(groups: list[Group], size: int) -> list[list[Group]]:
    """Whole groups packed into batches of about ``size`` samples (a group is never split)."""
    out: list[list[Group]] = []
    current: list[Group] = []
    count = 0
    for group in groups:
        if current and count + len(group[2]) > size:
            out.append(current)
            current, count = [], 0
        current.append(group)
        count += len(group[2])
    if current:
        out.append(current)
    return out


def _fetch(audit: _Audit, positions: list[int]) -> tuple[Tensor, Tensor | None]:
    batch = default_collate([audit.dataset[int(audit.result.indices[p])] for p in positions])
    images, _ = split_batch(batch)
    return images, batch_masks(batch)


def _explain_and_render(
    tmp: Path, audit: _Audit, groups: list[Group], selections: dict[int, ClassSelection]
) -> _Shown:
    """CAMs (true and predicted class) for every shown sample, their attention numbers, and the panels."""
    shown, result, options = _Shown(layer=audit.options.layer), audit.result, audit.options
    (tmp / "worst_predictions").mkdir()
    probe_set = {p for kind, _, ps in groups if kind == "probe" for p in ps}
    batches = _batches(groups, options.cam_batch_size)
    for batch in tqdm(
        batches, desc="audit: explain + render", unit="batch", disable=not options.progress, leave=False
    ):
        unique = list(dict.fromkeys(p for _, _, ps in batch for p in ps))
        images, masks = _fetch(audit, unique)
        maps = explain_batch(
            audit.net, images, result.labels[unique], result.preds[unique], options.layer, options.method
        )
        shown.layer, shown.raw_size, shown.image_size = maps.layer, maps.raw_size, tuple(images.shape[-2:])
        shown.store.add(unique, sample_stats(maps, masks), thumbnails(maps.pred))
        where = {p: i for i, p in enumerate(unique)}
        for p in probe_set & set(unique):
            shown.probe_maps[p] = thumbnails(maps.true[where[p] : where[p] + 1])[0]
        for kind, key, ps in batch:
            if kind != "probe":
                idx = torch.tensor([where[p] for p in ps])
                rows = panel_rows(
                    images[idx].to(audit.device), maps.true[idx], maps.pred[idx], audit.mean, audit.std
                )
                _save_group_panel(tmp, audit, shown, kind, key, selections, rows)
    return shown


def _save_group_panel(
    tmp: Path,
    audit: _Audit,
    shown: _Shown,
    kind: str,
    key: Any,
    selections: dict[int, ClassSelection],
    rows: Tensor,
) -> None:
    names = audit.names
    if kind == "class":
        sel = selections[key]
        captions = [audit.caption(p, "best") for p in sel.best] + [
            audit.caption(p, "worst") for p in sel.worst
        ]
        rel = f"worst_predictions/class_{key:03d}_{safe_name(names[key], 40)}.png"
        shown.panels[key] = rel
        positions = sel.positions
    else:
        tag = f"{names[key.true_id]} -> {names[key.pred_id]}"
        captions = [audit.caption(p, tag) for p in key.positions]
        rel = f"confused_pair_{key.rank}_{safe_name(names[key.true_id], 40)}_to_{safe_name(names[key.pred_id], 40)}.png"
        shown.pair_files[key.rank] = rel
        positions = key.positions
    save_panel(tmp / rel, rows, captions, audit.result.correct[positions], audit.options.method)


def _attention_quality(audit: _Audit, quality: list[int], layer: str | None) -> tuple[dict, dict]:
    """Faithfulness (deletion/insertion) and the model-randomisation check on the first probe samples."""
    if not quality or not layer:
        return {"samples": 0}, {"samples": 0}
    images, _ = _fetch(audit, quality)
    images = images.to(audit.device)
    targets = audit.result.preds[quality].to(audit.device)
    method = audit.options.method
    maps = cam(audit.net, images, layer=layer, targets=targets, method=method).maps
    faith = faithfulness(audit.net, images, maps, targets, steps=audit.options.faithfulness_steps)
    randomisation = randomisation_check(audit.net, images, targets, maps, layer, method, head=audit.head)
    return faith, randomisation


def _attention_summary(
    audit: _Audit, shown: _Shown, overall: dict[str, Any], has_masks: bool, explained: int
) -> dict[str, Any]:
    raw, size = shown.raw_size, shown.image_size
    reference = reference_concentration(raw, size) if raw and size else float("nan")
    # A 1x1 layer (ResNet-18's layer4 at 32 px) gives constant maps: reference 0, no relative number.
    relative = overall.get("concentration_pred", float("nan")) / reference if reference else float("nan")
    return {
        "concentration_reference": reference,
        "concentration_relative": relative,
        "layer_resolution": list(raw or ()),
        "method": audit.options.method,
        "layer": shown.layer,
        "has_masks": has_masks,
        "explained_samples": explained,
        "overall": overall,
    }


def _pair_rows(
    audit: _Audit, pairs: list[PairSelection], shown: _Shown, n_errors: int
) -> list[dict[str, Any]]:
    names, labels = audit.names, audit.result.labels
    return [
        {
            "rank": p.rank,
            "true_id": p.true_id,
            "true_name": names[p.true_id],
            "pred_id": p.pred_id,
            "pred_name": names[p.pred_id],
            "count": p.count,
            "share_of_true_class": p.count / max(1, int((labels == p.true_id).sum())),
            "share_of_errors": p.count / max(1, n_errors),
            "panel": shown.pair_files.get(p.rank, ""),
            "samples": [audit.sample(pos, "example") for pos in p.positions]
            if p.rank in shown.pair_files
            else [],
        }
        for p in pairs
    ]


def _report(
    audit: _Audit,
    selections: dict[int, ClassSelection],
    pairs: list[PairSelection],
    shown: _Shown,
    by_class: dict[int, dict[str, Any]],
    attention: dict[str, Any],
    settings: dict[str, Any],
    shortcut: dict[str, Any],
) -> dict[str, Any]:
    result = audit.result
    classes = per_class(result, audit.classes, audit.names)
    for row in classes:
        sel = selections[row["id"]]
        row["attention"] = by_class[row["id"]]
        row["panel"] = shown.panels.get(row["id"], "")
        row["samples"] = [audit.sample(p, "best") for p in sel.best] + [
            audit.sample(p, "worst") for p in sel.worst
        ]
    cal = calibration(result)
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        # Findings first (the findings.json schema): a shortcut makes every number below suspect.
        "findings": [shortcut["finding"]] if shortcut.get("finding") else [],
        "split": audit.split,
        "num_samples": len(result),
        "num_classes": len(audit.names),
        "class_names": audit.names,
        "classes_audited": audit.classes,
        "accuracy": result.accuracy,
        "mean_loss": mean(result.loss),
        "calibration": cal,
        "per_class": classes,
        "confused_pairs": _pair_rows(audit, pairs, shown, cal["errors"]),
        "confusion_matrix": result.confusion_matrix().tolist(),
        "attention": attention,
        "shortcut": shortcut,
        "training_settings": settings,
        **audit.options.extra,
    }
    report["recommendations"] = recommendations.recommend(report)
    return report
