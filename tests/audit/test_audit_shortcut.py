"""The audit runs the shortcut test on the checkpoint's split and puts a shortcut first in every output."""

from __future__ import annotations

import json
from pathlib import Path

from colour_net import ColourNet, corner_mask

from lit_explain.audit.run import run_audit
from lit_explain.data import ShapesDataModule


def audit(tmp_path: Path, audit_options, corner_only: bool) -> Path:
    dm = ShapesDataModule(
        train_size=32, val_size=96, batch_size=32, spurious_cue=True, eval_cue="random", corner="bottom_right"
    )
    dm.setup("fit")
    out = tmp_path / "report"
    run_audit(
        ColourNet(corner_mask(64, corner_only)), dm, out, audit_options(layer="conv", method="layercam")
    )
    return out


def test_a_shortcut_comes_first_in_report_recommendations_and_page(tmp_path: Path, audit_options) -> None:
    out = audit(tmp_path, audit_options, corner_only=True)
    saved = json.loads((out / "report.json").read_text())
    assert saved["shortcut"]["fires"] and saved["shortcut"]["where"] == "bottom-right corner"
    # report.json: the findings (findings.json's schema) come before the numbers, the shortcut rule first.
    keys = list(saved)
    assert keys.index("findings") < keys.index("accuracy")
    finding = saved["findings"][0]
    assert (
        finding["kind"] == "shortcut"
        and "epoch" in finding
        and finding["severity"] in ("warning", "critical")
    )
    assert "bottom-right corner" in finding["message"] and "crop or mask it" in finding["message"]
    x0, y0, x1, y1 = finding["region"]
    assert 40 <= x0 < x1 <= 64 and 40 <= y0 < y1 <= 64
    # Chance accuracy on a split whose stamps are random fires near_chance too; the shortcut still leads.
    rules = [r["rule"] for r in saved["recommendations"]]
    assert rules[0] == "shortcut" and "near_chance" in rules
    text = (out / "recommendations.txt").read_text()
    assert text.split("\n1. ")[1].startswith("[HIGH] shortcut")
    page = (out / "index.html").read_text()
    assert page.index('id="findings"') < page.index("<h2>Summary</h2>")
    assert 'src="shortcut_region.png"' in page
    assert (out / "shortcut_region.png").read_bytes().startswith(b"\x89PNG")
    assert (out / "analysis_summary.txt").read_text().splitlines()[1].startswith("FINDING [")


def test_no_shortcut_no_finding(tmp_path: Path, audit_options) -> None:
    out = audit(tmp_path, audit_options, corner_only=False)
    saved = json.loads((out / "report.json").read_text())
    assert saved["findings"] == [] and not saved["shortcut"]["fires"]
    assert saved["shortcut"]["score"] < saved["shortcut"]["threshold"]
    assert "shortcut" not in [r["rule"] for r in saved["recommendations"]]
    assert 'id="findings"' not in (out / "index.html").read_text()
    assert not (out / "shortcut_region.png").exists()
