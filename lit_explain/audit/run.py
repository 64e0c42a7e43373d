"""The audit itself: one inference pass, CAMs for the shown samples only, then the report directory."""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import default_collate
from tqdm.auto import tqdm

from lit_explain.audit import html, recommendations
from lit_explain.audit.attention import (
    THUMB,
    explain_batch,
    faithfulness,
    fixed_region,
    randomisation_check,
    reference_concentration,
    sample_stats,
    thumbnails,
)
from lit_explain.audit.report import (
    REPORT_FILE,
    SCHEMA_VERSION,
    AtomicReportDir,
    panel_rows,
    safe_name,
    save_panel,
    write_csv,
    write_json,
)
from lit_explain.audit.selection import (
    most_confused_with,
    probe_positions,
    select_class_samples,
    select_pairs,
)
from lit_explain.audit.sweep import SweepResult, sweep
from lit_explain.data.base import ExplainableDataModule
from lit_explain.data.batch import batch_masks, split_batch
from lit_explain.errors import ConfigError
from lit_explain.explain import METHODS
from lit_explain.render import (
    colorize,
    confused_pairs_figure,
    confusion_matrix_figure,
    figure_to_png,
    name_pairs,
    per_class_accuracy_figure,
)

PROBE_FILE = "attention_probe.pt"


@dataclass
class AuditOptions:
    """Settings of one audit (the CLI flags of ``python -m lit_explain audit``).

    Example:
        >>> AuditOptions(split="test", method="gradcam++", max_samples=2000)
    """

    split: str = "val"
    layer: str | None = None
    method: str = "gradcam"
    classes: Sequence[int | str] | None = None
    max_samples: int | None = None
    batch_size: int = 256
    cam_batch_size: int = 64
    num_workers: int = 0
    best_per_class: int = 3
    worst_per_class: int = 5
    top_pairs: int = 15
    pair_panels: int = 5
    pair_examples: int = 6
    probe_per_class: int = 2
    quality_samples: int = 32
    faithfulness_steps: int = 10
    progress: bool = True
    overwrite: bool = False
    compare_to: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # provenance written into report.json

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"--method {self.method!r} is not known; choose one of {', '.join(METHODS)}")
        for name in ("batch_size", "cam_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.max_samples is not None and self.max_samples < 1:
            raise ConfigError(f"--max_samples must be >= 1, got {self.max_samples}")
        if self.quality_samples < 0 or self.faithfulness_steps < 1:
            raise ConfigError("--quality_samples must be >= 0 and --faithfulness_steps >= 1")


def resolve_classes(classes: Sequence[int | str] | None, class_names: Sequence[str]) -> list[int]:
    """Class ids from ids or names (``["3", "cat"]``); all classes when None."""
    if not classes:
        return list(range(len(class_names)))
    lookup = {name: i for i, name in enumerate(class_names)}
    chosen = []
    for c in classes:
        text = str(c)
        if text in lookup:
            chosen.append(lookup[text])
        elif text.lstrip("-").isdigit() and 0 <= int(text) < len(class_names):
            chosen.append(int(text))
        else:
            shown = ", ".join(list(class_names)[:12]) + (", ..." if len(class_names) > 12 else "")
            raise ConfigError(
                f"--classes: {text!r} is neither a class name nor an id 0..{len(class_names) - 1} ({shown})"
            )
    return sorted(set(chosen))


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


def _ece(confidence: Tensor, correct: Tensor, bins: int = 15) -> float:
    """Expected calibration error with equal-width confidence bins (Guo et al., 2017)."""
    if confidence.numel() == 0:
        return float("nan")
    which = (confidence * bins).long().clamp(0, bins - 1)
    conf_sum = torch.bincount(which, weights=confidence.float(), minlength=bins)
    acc_sum = torch.bincount(which, weights=correct.float(), minlength=bins)
    return float((conf_sum - acc_sum).abs().sum() / confidence.numel())


def _mean(values: Tensor) -> float:
    return float(values.float().mean()) if values.numel() else float("nan")


def _per_class(result: SweepResult, classes: list[int], class_names: Sequence[str]) -> list[dict[str, Any]]:
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
                "mean_confidence": _mean(result.confidence[mine]),
                "mean_true_prob": _mean(result.true_prob[mine]),
                "mean_loss": _mean(result.loss[mine]),
                "most_confused_with": class_names[int(other[c])] if int(other[c]) >= 0 else "",
                "most_confused_with_id": int(other[c]),
                "most_confused_count": int(other_count[c]),
                "predicted_as_this": int(cm[:, c].sum()),
            }
        )
    return rows


class _StatsStore:
    """Per explained sample (by sweep position): attention numbers and a small map, each kept once."""

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


def _fetch(dataset, result: SweepResult, positions: list[int]) -> tuple[Tensor, Tensor | None]:
    batch = default_collate([dataset[int(result.indices[p])] for p in positions])
    images, _ = split_batch(batch)
    masks = batch_masks(batch)
    return images, masks


def _caption(result: SweepResult, pos: int, class_names: Sequence[str], tag: str) -> str:
    label, pred = int(result.labels[pos]), int(result.preds[pos])
    return (
        f"{tag} #{int(result.indices[pos])}  true: {class_names[label]}  "
        f"pred: {class_names[pred]} ({float(result.confidence[pos]):.2f})"
    )


def _aggregate(
    values: Mapping[str, Tensor], labels: Tensor, correct: Tensor, classes: list[int]
) -> tuple[dict, dict]:
    def summary(select: Tensor) -> dict[str, Any]:
        out: dict[str, Any] = {
            "n": int(select.sum()),
            "n_right": int((select & correct).sum()),
            "n_wrong": int((select & ~correct).sum()),
        }
        for key, v in values.items():
            out[key] = _mean(v[select])
            out[f"{key}_right"] = _mean(v[select & correct])
            out[f"{key}_wrong"] = _mean(v[select & ~correct])
        return out

    overall = summary(torch.ones_like(labels, dtype=torch.bool))
    per_class = {c: summary(labels == c) for c in classes}
    return overall, per_class


def _figure(path: Path, fig) -> None:
    path.write_bytes(figure_to_png(fig))


def run_audit(
    model: nn.Module,
    datamodule: ExplainableDataModule,
    output: str | Path,
    options: AuditOptions | None = None,
    *,
    class_names: Sequence[str] | None = None,
    device: torch.device | str | None = None,
    head: str | None = None,
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
    names = list(class_names or getattr(model, "class_names", None) or datamodule.class_names)
    if head is None and hasattr(model, "head_name"):
        head = model.head_name
    if device is not None:
        net = net.to(device)
    classes = resolve_classes(options.classes, names)
    timing: dict[str, float] = {}
    t0 = time.perf_counter()

    target = AtomicReportDir(output, overwrite=options.overwrite, kind="audit")
    with target as tmp:
        # Fork the RNG so that an audit inside training (the callback) leaves its random stream untouched.
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            report = _audit_into(tmp, net, datamodule, options, names, classes, head, timing)
        timing["total_s"] = time.perf_counter() - t0
        report["timing"] = timing
        write_json(tmp / REPORT_FILE, report)
        final = target.commit()
    report["path"] = str(final)
    return report


def _batches(groups: list[tuple[str, Any, list[int]]], size: int) -> list[list[tuple[str, Any, list[int]]]]:
    """Whole groups packed into batches of about ``size`` samples (a group is never split)."""
    out: list[list[tuple[str, Any, list[int]]]] = []
    current: list[tuple[str, Any, list[int]]] = []
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


def _audit_into(
    tmp: Path,
    net: nn.Module,
    datamodule: ExplainableDataModule,
    options: AuditOptions,
    names: list[str],
    classes: list[int],
    head: str | None,
    timing: dict[str, float],
) -> dict[str, Any]:
    split = options.split
    dataset = datamodule.dataset(split)
    device = next(net.parameters()).device
    mean, std = datamodule.mean, datamodule.std

    # 1. One inference pass, O(N) scalars.
    t = time.perf_counter()
    positions = _positions(datamodule, split, classes, options.max_samples)
    result = sweep(
        net,
        dataset,
        len(names),
        positions,
        batch_size=options.batch_size,
        num_workers=options.num_workers,
        device=device,
        progress=options.progress,
    )
    if len(result) == 0:
        raise ConfigError(f"no samples of the chosen classes in the {split} split")
    timing["inference_s"] = time.perf_counter() - t

    # 2. Numbers from the scalars.
    cm = result.confusion_matrix()
    per_class = _per_class(result, classes, names)
    pairs = select_pairs(result, classes, top_n=options.top_pairs, examples=options.pair_examples)
    correct = result.correct
    wrong_conf = result.confidence[~correct]
    n_errors = int((~correct).sum())
    calibration = {
        "ece": _ece(result.confidence, correct),
        "mean_confidence": _mean(result.confidence),
        "mean_confidence_right": _mean(result.confidence[correct]),
        "mean_confidence_wrong": _mean(wrong_conf),
        "errors": n_errors,
        "high_confidence_errors": int((wrong_conf >= 0.9).sum()),
        "high_confidence_error_share": float((wrong_conf >= 0.9).float().mean()) if n_errors else 0.0,
    }

    # 3. Which samples to explain: per class best/worst, the top pairs' examples, and a fixed probe.
    t = time.perf_counter()
    selections = {
        c: select_class_samples(result, c, options.best_per_class, options.worst_per_class) for c in classes
    }
    probe = probe_positions(result, classes, options.probe_per_class)
    groups: list[tuple[str, Any, list[int]]] = [
        ("class", c, s.positions) for c, s in selections.items() if s.positions
    ]
    groups += [("pair", p, p.positions) for p in pairs[: options.pair_panels] if p.positions]
    groups += [
        ("probe", None, probe[i : i + options.cam_batch_size])
        for i in range(0, len(probe), options.cam_batch_size)
    ]
    store = _StatsStore()
    probe_set = set(probe)
    probe_maps: dict[int, Tensor] = {}
    panels: dict[int, str] = {}
    pair_files: dict[int, str] = {}
    layer_name = options.layer
    raw_size: tuple[int, int] | None = None
    image_size: tuple[int, int] | None = None
    (tmp / "worst_predictions").mkdir()
    batches = _batches(groups, options.cam_batch_size)
    for batch_groups in tqdm(
        batches, desc="audit: explain + render", unit="batch", disable=not options.progress, leave=False
    ):
        unique = list(dict.fromkeys(p for _, _, ps in batch_groups for p in ps))
        images, masks = _fetch(dataset, result, unique)
        maps = explain_batch(
            net, images, result.labels[unique], result.preds[unique], options.layer, options.method
        )
        layer_name, raw_size, image_size = maps.layer, maps.raw_size, tuple(images.shape[-2:])
        store.add(unique, sample_stats(maps, masks), thumbnails(maps.pred))
        for i, p in enumerate(unique):
            if p in probe_set:
                probe_maps[p] = thumbnails(maps.true[i : i + 1])[0]
        where = {p: i for i, p in enumerate(unique)}
        for kind, key, ps in batch_groups:
            if kind == "probe":
                continue
            idx = torch.tensor([where[p] for p in ps])
            rows = panel_rows(images[idx].to(device), maps.true[idx], maps.pred[idx], mean, std)
            ok = correct[ps]
            if kind == "class":
                sel = selections[key]
                captions = [_caption(result, p, names, "best") for p in sel.best]
                captions += [_caption(result, p, names, "worst") for p in sel.worst]
                rel = f"worst_predictions/class_{key:03d}_{safe_name(names[key])}.png"
                panels[key] = rel
            else:
                captions = [
                    _caption(result, p, names, f"{names[key.true_id]} -> {names[key.pred_id]}") for p in ps
                ]
                rel = f"confused_pair_{key.rank}_{safe_name(names[key.true_id])}_to_{safe_name(names[key.pred_id])}.png"
                pair_files[key.rank] = rel
            save_panel(tmp / rel, rows, captions, ok, options.method)
    timing["explain_render_s"] = time.perf_counter() - t

    # 4. Attention quality on the probe: faithfulness and the model-randomisation check.
    t = time.perf_counter()
    quality = probe[: options.quality_samples]
    faith: dict[str, Any] = {"samples": 0}
    randomisation: dict[str, Any] = {"samples": 0}
    if quality and layer_name:
        images, _ = _fetch(dataset, result, quality)
        images = images.to(device)
        targets = result.preds[quality].to(device)
        from lit_explain.explain import cam

        maps = cam(net, images, layer=layer_name, targets=targets, method=options.method).maps
        faith = faithfulness(net, images, maps, targets, steps=options.faithfulness_steps)
        randomisation = randomisation_check(net, images, targets, maps, layer_name, options.method, head=head)
    timing["attention_quality_s"] = time.perf_counter() - t

    # 5. Aggregate the attention numbers; look for a fixed hot region.
    t = time.perf_counter()
    pos, values, thumbs = store.tensors()
    overall, by_class = _aggregate(values, result.labels[pos], correct[pos], classes)
    region = fixed_region(thumbs, result.labels[pos], classes)
    for row in per_class:
        row["attention"] = by_class[row["id"]]
        row["panel"] = panels.get(row["id"], "")
    mean_map = thumbs.float().mean(dim=0) if thumbs.numel() else torch.zeros(THUMB, THUMB)
    mean_map = (mean_map - mean_map.min()) / (mean_map.max() - mean_map.min()).clamp_min(1e-12)
    big = F.interpolate(mean_map[None, None], size=(192, 192), mode="bilinear", align_corners=False)[0]
    from lit_explain.render import save_png

    save_png(tmp / "attention_mean.png", colorize(big), overwrite=True)

    probe_order = [p for p in probe if p in probe_maps]
    torch.save(
        {
            "split": split,
            "indices": result.indices[probe_order].clone(),
            "labels": result.labels[probe_order].clone(),
            "maps": torch.stack([probe_maps[p] for p in probe_order])
            if probe_order
            else torch.zeros(0, THUMB, THUMB),
        },
        tmp / PROBE_FILE,
    )

    reference = reference_concentration(raw_size, image_size) if raw_size and image_size else float("nan")
    attention = {
        "concentration_reference": reference,
        "concentration_relative": overall.get("concentration_pred", float("nan")) / reference,
        "layer_resolution": list(raw_size or ()),
        "method": options.method,
        "layer": layer_name,
        "has_masks": "energy_in_mask" in values,
        "explained_samples": int(pos.numel()),
        "overall": overall,
        "faithfulness": faith,
        "randomisation": randomisation,
        "fixed_region": region,
        "mean_map_file": "attention_mean.png",
    }

    pair_rows = [
        {
            "rank": p.rank,
            "true_id": p.true_id,
            "true_name": names[p.true_id],
            "pred_id": p.pred_id,
            "pred_name": names[p.pred_id],
            "count": p.count,
            "share_of_true_class": p.count / max(1, int((result.labels == p.true_id).sum())),
            "share_of_errors": p.count / max(1, n_errors),
            "panel": pair_files.get(p.rank, ""),
        }
        for p in pairs
    ]
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "split": split,
        "num_samples": len(result),
        "num_classes": len(names),
        "class_names": names,
        "classes_audited": classes,
        "accuracy": result.accuracy,
        "mean_loss": _mean(result.loss),
        "calibration": calibration,
        "per_class": per_class,
        "confused_pairs": pair_rows,
        "confusion_matrix": cm.tolist(),
        "attention": attention,
        **options.extra,
    }
    report["recommendations"] = recommendations.recommend(report)
    if options.compare_to:
        from lit_explain.audit.compare import compare_reports

        report["compare"] = compare_reports(report, tmp, options.compare_to)
    timing["aggregate_s"] = time.perf_counter() - t

    t = time.perf_counter()
    _write_files(tmp, report, cm, names, classes)
    timing["files_s"] = time.perf_counter() - t
    return report


def _write_files(tmp: Path, report: dict[str, Any], cm: Tensor, names: list[str], classes: list[int]) -> None:
    per_class = report["per_class"]
    write_csv(
        tmp / "per_class_accuracy.csv",
        fields=[
            "class_id",
            "class_name",
            "accuracy",
            "support",
            "correct",
            "mean_confidence",
            "most_confused_with",
            "most_confused_count",
        ],
        rows=[
            [
                r["id"],
                r["name"],
                r["accuracy"],
                r["support"],
                r["correct"],
                r["mean_confidence"],
                r["most_confused_with"],
                r["most_confused_count"],
            ]
            for r in per_class
        ],
    )
    pairs = report["confused_pairs"]
    write_csv(
        tmp / "most_confused_pairs.csv",
        fields=["rank", "true_id", "true_name", "pred_id", "pred_name", "count", "share_of_true_class"],
        rows=[
            [
                p["rank"],
                p["true_id"],
                p["true_name"],
                p["pred_id"],
                p["pred_name"],
                p["count"],
                p["share_of_true_class"],
            ]
            for p in pairs
        ],
    )
    _figure(
        tmp / "confusion_matrix_full.png",
        confusion_matrix_figure(cm, names, normalize=True, title=f"Confusion matrix ({report['split']})"),
    )
    acc = torch.tensor([r["accuracy"] for r in per_class], dtype=torch.float64)
    _figure(tmp / "per_class_accuracy.png", per_class_accuracy_figure(acc, [r["name"] for r in per_class]))
    named = name_pairs([(p["true_id"], p["pred_id"], p["count"]) for p in pairs], names)
    _figure(
        tmp / "top_confused_pairs.png",
        confused_pairs_figure(
            named or [("(none)", "(none)", 0)], title="Most confused pairs (true -> predicted)"
        ),
    )
    if "compare" in report:
        from lit_explain.audit.compare import write_compare_files

        write_compare_files(tmp, report["compare"])
    (tmp / "recommendations.txt").write_text(
        recommendations.as_text(report["recommendations"]), encoding="utf-8"
    )
    (tmp / "analysis_summary.txt").write_text(html.summary_text(report), encoding="utf-8")
    (tmp / "per_class_accuracy_interactive.html").write_text(html.accuracy_page(report), encoding="utf-8")
    (tmp / "index.html").write_text(html.index_page(report), encoding="utf-8")


def default_output(ckpt_path: str | Path, split: str) -> Path:
    """``<checkpoint dir>/<checkpoint stem>_audit_<split>``: the report next to its checkpoint."""
    ckpt_path = Path(ckpt_path)
    return ckpt_path.parent / f"{ckpt_path.stem}_audit_{split}"


def audit_checkpoint(
    ckpt_path: str | Path,
    output: str | Path | None = None,
    options: AuditOptions | None = None,
    *,
    data_config: str | Path | None = None,
    data_overrides: Mapping[str, Any] | None = None,
    datamodule: ExplainableDataModule | None = None,
    backbone: str | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Audit a checkpoint on the data it was trained on (or ``datamodule`` / ``data_config``).

    Example:
        >>> report = audit_checkpoint("lightning_logs/shapes_demo/version_0/checkpoints/last.ckpt",
        ...                           options=AuditOptions(split="val"))          # doctest: +SKIP
        >>> report["accuracy"], report["path"]                                  # doctest: +SKIP
    """
    from lit_explain.audit.source import build_datamodule, check_fits, data_spec, load_model
    from lit_explain.models.loading import read_checkpoint

    options = options or AuditOptions()
    options.validate()
    output = Path(output) if output is not None else default_output(ckpt_path, options.split)
    # Refuse before the (long) sweep, not only at the end.
    AtomicReportDir(output, overwrite=options.overwrite, kind="audit").check()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(ckpt_path, map_location=device, backbone=backbone)
    spec = None
    if datamodule is None:
        spec = data_spec(ckpt_path, data_config, data_overrides)
        datamodule = build_datamodule(spec)
    check_fits(model, datamodule, ckpt_path)
    meta: dict[str, Any] = {}
    if str(ckpt_path).endswith(".ckpt"):
        ckpt = read_checkpoint(ckpt_path)
        meta = dict((ckpt.get("lit_explain") or {}).get("metrics") or {})
        meta_epoch = (ckpt.get("lit_explain") or {}).get("epoch", ckpt.get("epoch"))
    else:
        meta_epoch = None
    options.extra = {
        **options.extra,
        "checkpoint": str(ckpt_path),
        "checkpoint_epoch": meta_epoch,
        "checkpoint_metrics": meta,
        "backbone": model.hparams.get("backbone"),
        "data": {"class_path": spec["class_path"], "init_args": spec["init_args"], "source": spec["source"]}
        if spec
        else {
            "class_path": f"{type(datamodule).__module__}.{type(datamodule).__qualname__}",
            "source": "given",
        },
    }
    return run_audit(model, datamodule, output, options, device=device)
