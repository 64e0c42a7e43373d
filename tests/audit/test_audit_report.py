"""Every report file, for a shapes checkpoint and for a CIFAR-layout checkpoint, with its contents checked."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

FIXED_FILES = [
    "confusion_matrix_full.png",
    "per_class_accuracy.csv",
    "per_class_accuracy_interactive.html",
    "most_confused_pairs.csv",
    "top_confused_pairs.png",
    "analysis_summary.txt",
    "recommendations.txt",
    "report.json",
    "index.html",
    "attention_mean.png",
    "attention_probe.pt",
]


@pytest.fixture(params=["shapes_report", "cifar_report"])
def report_dir(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue(request.param)


def _png_ok(path: Path) -> None:
    with Image.open(path) as im:
        im.load()
        pixels = np.asarray(im.convert("RGB"), dtype=np.float32)
    assert pixels.shape[0] > 20 and pixels.shape[1] > 20, path
    assert pixels.std() > 5.0, f"{path} looks blank"


def test_every_file_is_there_and_decodes(report_dir: Path) -> None:
    for name in FIXED_FILES:
        assert (report_dir / name).is_file(), name
    report = json.loads((report_dir / "report.json").read_text())
    shown = [r for r in report["per_class"] if r["support"] > 0]
    panels = sorted((report_dir / "worst_predictions").glob("class_*.png"))
    assert len(panels) == len(shown) == report["num_classes"]
    for r in shown:
        assert re.fullmatch(r"worst_predictions/class_\d{3}_[A-Za-z0-9_-]+\.png", r["panel"])
        assert (report_dir / r["panel"]).is_file()
    pair_files = sorted(report_dir.glob("confused_pair_*_to_*.png"))
    assert len(pair_files) == min(5, len(report["confused_pairs"]))
    for path in [*report_dir.glob("*.png"), *panels[:10]]:
        _png_ok(path)
    assert not list(report_dir.parent.glob(".report.tmp-*")), "the temporary directory was left behind"


def test_csv_contents(report_dir: Path) -> None:
    report = json.loads((report_dir / "report.json").read_text())
    with open(report_dir / "per_class_accuracy.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == report["num_classes"]
    assert set(rows[0]) >= {
        "class_id",
        "class_name",
        "accuracy",
        "support",
        "correct",
        "mean_confidence",
        "most_confused_with",
    }
    assert [r["class_name"] for r in rows] == report["class_names"]
    assert sum(int(r["support"]) for r in rows) == report["num_samples"]
    for r in rows:
        assert int(r["correct"]) <= int(r["support"])
        assert float(r["accuracy"]) == pytest.approx(int(r["correct"]) / int(r["support"]), abs=1e-5)
    with open(report_dir / "most_confused_pairs.csv") as f:
        pairs = list(csv.DictReader(f))
    counts = [int(p["count"]) for p in pairs]
    assert 0 < len(pairs) <= 15
    assert counts == sorted(counts, reverse=True)
    cm = np.array(report["confusion_matrix"])
    for p in pairs:
        assert p["true_name"] != p["pred_name"]
        assert cm[int(p["true_id"]), int(p["pred_id"])] == int(p["count"])


def test_json_schema(report_dir: Path) -> None:
    report = json.loads((report_dir / "report.json").read_text())
    assert report["schema_version"] == 1
    for key, kind in {
        "split": str,
        "num_samples": int,
        "num_classes": int,
        "class_names": list,
        "accuracy": float,
        "calibration": dict,
        "per_class": list,
        "confused_pairs": list,
        "confusion_matrix": list,
        "attention": dict,
        "recommendations": list,
        "timing": dict,
        "checkpoint": str,
    }.items():
        assert isinstance(report[key], kind), key
    n = report["num_classes"]
    assert len(report["confusion_matrix"]) == n and all(len(r) == n for r in report["confusion_matrix"])
    assert sum(map(sum, report["confusion_matrix"])) == report["num_samples"]
    att = report["attention"]
    assert att["method"] == "gradcam" and att["layer"] == "layer4"
    assert {"overall", "faithfulness", "randomisation", "fixed_region"} <= set(att)
    for rec in report["recommendations"]:
        assert {"rule", "severity", "message", "action", "evidence"} <= set(rec)
    assert report["timing"]["total_s"] > 0
    probe = torch.load(report_dir / "attention_probe.pt", weights_only=True)
    assert probe["maps"].shape[0] == probe["indices"].shape[0] > 0


def test_shapes_report_has_mask_metrics(shapes_report: Path, shapes_checkpoint: Path) -> None:
    """The mask numbers, recomputed outside the audit over the samples it explained (shown ones and probes)."""
    from lit_explain.audit.source import build_datamodule, data_spec, load_model
    from lit_explain.explain import cam, energy_pointing_game, pointing_game

    report = json.loads((shapes_report / "report.json").read_text())
    att = report["attention"]
    assert att["has_masks"]
    shown = [s for r in report["per_class"] for s in r["samples"]]
    shown += [s for p in report["confused_pairs"] for s in p["samples"]]
    probe = torch.load(shapes_report / "attention_probe.pt", weights_only=True)
    indices = sorted({s["index"] for s in shown} | set(probe["indices"].tolist()))
    assert att["explained_samples"] == len(indices)
    dataset = build_datamodule(data_spec(shapes_checkpoint, None, None)).dataset(report["split"])
    images = torch.stack([dataset[i]["image"] for i in indices])
    masks = torch.stack([dataset[i]["mask"] for i in indices])[:, None]  # True on the object
    net = load_model(shapes_checkpoint).net.eval()
    with torch.no_grad():
        preds = net(images).argmax(1)
    maps = cam(net, images, layer=att["layer"], targets=preds, method=att["method"]).maps
    overall = att["overall"]
    assert overall["mask_area"] == pytest.approx(float(masks.float().mean()), abs=1e-5)
    assert overall["mask_area"] < 0.5  # the shapes are smaller than the background: not the inverted mask
    assert overall["energy_in_mask"] == pytest.approx(
        float(energy_pointing_game(maps, masks).mean()), abs=1e-4
    )
    assert overall["pointing_game"] == pytest.approx(float(pointing_game(maps, masks).mean()), abs=1e-4)


def test_pages_are_self_contained(report_dir: Path) -> None:
    for page in ("index.html", "per_class_accuracy_interactive.html"):
        text = (report_dir / page).read_text()
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", text), (
            f"{page} loads something from the network"
        )
        for ref in re.findall(r"""(?:src|href)="([^"#:]+)\"""", text):
            assert (report_dir / ref).exists(), f"{page} links to missing {ref}"
    summary = (report_dir / "analysis_summary.txt").read_text()
    assert "accuracy" in summary and "Most confused pairs" in summary


def test_attention_quality_numbers_recomputed(shapes_report: Path, shapes_checkpoint: Path) -> None:
    """Deletion/insertion AUC and the randomisation Spearman, recomputed outside the audit from its probe."""
    import copy

    from scipy.stats import spearmanr

    from lit_explain.audit.source import build_datamodule, data_spec, load_model
    from lit_explain.explain import cam, deletion_auc, insertion_auc

    att = json.loads((shapes_report / "report.json").read_text())["attention"]
    faith, rnd = att["faithfulness"], att["randomisation"]
    probe = torch.load(shapes_report / "attention_probe.pt", weights_only=True)
    indices = probe["indices"][: faith["samples"]].tolist()  # the quality samples are the probe's first ones
    dataset = build_datamodule(data_spec(shapes_checkpoint, None, None)).dataset(probe["split"])
    images = torch.stack([dataset[i]["image"] for i in indices])
    net = load_model(shapes_checkpoint).net.eval()
    with torch.no_grad():
        preds = net(images).argmax(1)
    maps = cam(net, images, layer=att["layer"], targets=preds, method=att["method"]).maps
    kw = {"steps": faith["steps"], "score": "prob"}
    assert faith["deletion_auc"] == pytest.approx(
        float(deletion_auc(net, images, maps, preds, **kw).mean()), abs=1e-4
    )
    assert faith["insertion_auc"] == pytest.approx(
        float(insertion_auc(net, images, maps, preds, **kw).mean()), abs=1e-4
    )
    # The randomised network, built the plain way (a deep copy) that the audit avoids for memory's sake.
    randomised = copy.deepcopy(net)
    torch.manual_seed(0)
    for name in rnd["randomised_layers"]:
        for module in randomised.get_submodule(name).modules():
            if callable(getattr(module, "reset_parameters", None)):
                module.reset_parameters()
    new = cam(randomised, images, layer=att["layer"], targets=preds, method=att["method"]).maps
    rhos = [
        spearmanr(a.flatten().numpy(), b.flatten().numpy()).statistic for a, b in zip(maps, new, strict=True)
    ]
    assert rnd["samples"] == len(indices)
    assert rnd["spearman_mean"] == pytest.approx(float(np.nanmean(rhos)), abs=1e-4)


def test_every_shown_sample_carries_its_source(report_dir: Path) -> None:
    report = json.loads((report_dir / "report.json").read_text())
    samples = [s for r in report["per_class"] for s in r["samples"]]
    samples += [s for p in report["confused_pairs"] for s in p["samples"]]
    assert samples
    for s in samples:
        # Generated / in-memory data: the split and the index in it (file-based data: the relative path).
        assert s["source"] == f"{report['split']} idx {s['index']}"
    with open(report_dir / "shown_samples.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["source"], r["role"]) for r in rows] == [(s["source"], s["role"]) for s in samples]
    first = report["per_class"][0]
    assert {r["panel"] for r in rows if r["source"] == first["samples"][0]["source"]} >= {first["panel"]}
    assert 'id="class-samples"' in (report_dir / "index.html").read_text()
    summary = (report_dir / "analysis_summary.txt").read_text()
    assert f"{first['samples'][0]['role']} {first['samples'][0]['source']}" in summary
