"""The report's text summary and its two self-contained interactive pages (inline CSS/JS, no network)."""

from __future__ import annotations

import html as _html
import json
import math
from collections.abc import Mapping
from typing import Any

from lit_explain.audit.label_issues import label_issues_html
from lit_explain.outputs import json_safe


def _fmt(x: Any, spec: str = ".3f") -> str:
    if isinstance(x, float):
        return "n/a" if math.isnan(x) else format(x, spec)
    return str(x)


def summary_text(report: Mapping[str, Any]) -> str:
    """analysis_summary.txt: the headline numbers, best and worst classes, pairs and attention quality."""
    cal, att = report["calibration"], report["attention"]
    lines = [
        "lit_explain audit",
        *[f"FINDING [{f['severity'].upper()}] {f['message']}" for f in report.get("findings", [])],
        f"checkpoint: {report.get('checkpoint', '(in-memory model)')}",
        f"split: {report['split']}  samples: {report['num_samples']}  classes: {report['num_classes']}",
        f"accuracy: {_fmt(report['accuracy'], '.4f')}  mean loss: {_fmt(report['mean_loss'], '.4f')}",
        f"mean confidence: {_fmt(cal['mean_confidence'])} (right {_fmt(cal['mean_confidence_right'])}, "
        f"wrong {_fmt(cal['mean_confidence_wrong'])})  ECE: {_fmt(cal['ece'])}"
        + (
            f"  -> {cal['direction']} (confidence - accuracy {_fmt(cal['gap'], '+.3f')})"
            if "direction" in cal
            else ""
        ),
        f"errors: {cal['errors']}, of which {cal['high_confidence_errors']} with confidence >= 0.90",
        "",
    ]
    rows = [r for r in report["per_class"] if not math.isnan(r["accuracy"])]
    rows.sort(key=lambda r: r["accuracy"])
    lines.append("Worst classes:")
    lines += [
        f"  {r['name']:<24} acc {r['accuracy']:.3f}  support {r['support']}  most confused with {r['most_confused_with'] or '-'}"
        for r in rows[:10]
    ]
    lines.append("Best classes:")
    lines += [
        f"  {r['name']:<24} acc {r['accuracy']:.3f}  support {r['support']}" for r in reversed(rows[-5:])
    ]
    lines += ["", "Shown samples (file or split index; every one is in shown_samples.csv):"]
    for r in report["per_class"][:10]:
        lines += [f"  {r['name']}: " + ", ".join(f"{x['role']} {x['source']}" for x in r.get("samples", []))]
    lines += ["", "Most confused pairs (true -> predicted: count):"]
    lines += [
        f"  {p['rank']:>2}. {p['true_name']} -> {p['pred_name']}: {p['count']}"
        for p in report["confused_pairs"]
    ] or ["  none"]
    o = att["overall"]
    lines += [
        "",
        f"Attention ({att['method']} at {att['layer']}, {att['explained_samples']} explained samples):",
        f"  concentration of the predicted-class maps: {_fmt(o.get('concentration_pred', float('nan')))} "
        f"(right {_fmt(o.get('concentration_pred_right', float('nan')))}, wrong {_fmt(o.get('concentration_pred_wrong', float('nan')))})",
    ]
    if att["has_masks"]:
        lines += [
            f"  energy inside the object mask: {_fmt(o['energy_in_mask'])} (right {_fmt(o['energy_in_mask_right'])}, "
            f"wrong {_fmt(o['energy_in_mask_wrong'])}); object area {_fmt(o['mask_area'])}",
            f"  pointing game: {_fmt(o['pointing_game'])}",
        ]
    f, r, g = att["faithfulness"], att["randomisation"], att["fixed_region"]
    if f.get("samples"):
        lines.append(
            f"  deletion AUC {_fmt(f['deletion_auc'])} (random {_fmt(f['random_deletion_auc'])}), insertion AUC "
            f"{_fmt(f['insertion_auc'])} (random {_fmt(f['random_insertion_auc'])}) on {f['samples']} samples"
        )
    if r.get("samples"):
        verdict = "passes" if r["passed"] else "FAILS"
        lines.append(
            f"  model randomisation ({', '.join(r['randomised_layers'])}): Spearman {_fmt(r['spearman_mean'])} "
            f"-> the method {verdict} the sanity check (below {r['threshold']} passes)"
        )
    if g.get("samples"):
        lines.append(
            f"  hottest 3x3 region: {g['hot_cell']} holds the peak of {g['peak_share']:.0%} of maps"
            + (" -> FLAGGED as a fixed-region shortcut" if g["flagged"] else "")
        )
    shortcut = report.get("shortcut") or {}
    if "score" in shortcut:
        verdict = "FIRES" if shortcut["fires"] else "does not fire"
        lines.append(
            f"  shortcut test on {shortcut['samples']} images: score {shortcut['score']:.2f} -> {verdict} "
            f"(threshold {shortcut['threshold']}; densest region {shortcut['where']} {shortcut['region']})"
        )
    lines += ["", "Recommendations:"]
    lines += [f"  - [{x['severity']}] {x['message']}" for x in report["recommendations"]]
    if "timing" in report:
        lines += ["", "Timing (s): " + ", ".join(f"{k} {v:.1f}" for k, v in report["timing"].items())]
    return "\n".join(lines) + "\n"


def _data_script(report: Mapping[str, Any], element_id: str = "report-data") -> str:
    payload = {k: v for k, v in report.items() if k != "confusion_matrix"}
    text = json.dumps(json_safe(payload), allow_nan=False).replace("<", "\\u003c")
    return f'<script type="application/json" id="{element_id}">{text}</script>'


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2430;background:#f6f7f9}
header{background:#243447;color:#fff;padding:12px 20px}header h1{margin:0;font-size:20px}
main{padding:16px 20px;max-width:1400px}section{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:12px 16px;margin-bottom:16px}
h2{font-size:16px;margin:4px 0 10px}table{border-collapse:collapse;font-size:13px}td,th{border-bottom:1px solid #e5e8ec;padding:3px 8px;text-align:left}
th{cursor:pointer;background:#f0f2f5}.num{text-align:right;font-variant-numeric:tabular-nums}.high,.critical{color:#b42318}.medium,.warning{color:#b54708}.low,.info{color:#475467}
img{max-width:100%;border:1px solid #dde1e6}.row{display:flex;gap:16px;flex-wrap:wrap;align-items:flex-start}.card{flex:1 1 420px}
#tooltip{position:fixed;pointer-events:none;background:#1d2430;color:#fff;padding:6px 8px;border-radius:4px;font-size:12px;display:none;white-space:pre}
select,button{font-size:14px;padding:3px 6px}.bar:hover{opacity:.75}
"""


def accuracy_page(report: Mapping[str, Any]) -> str:
    """per_class_accuracy_interactive.html: an SVG bar chart with tooltips and sort controls."""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">
<title>Per-class accuracy ({_html.escape(report["split"])})</title><style>{_CSS}</style></head>
<body><header><h1>Per-class accuracy &mdash; {_html.escape(report["split"])} split, {report["num_samples"]} samples,
overall {report["accuracy"]:.3f}</h1></header>
<main><section><label>Sort by <select id="sort">
<option value="accuracy">accuracy (low first)</option><option value="-accuracy">accuracy (high first)</option>
<option value="id">class id</option><option value="name">name</option><option value="support">support</option>
</select></label> <span id="count"></span>
<div id="chart"></div></section></main><div id="tooltip"></div>
{_data_script(report)}
<script>
"use strict";
const report = JSON.parse(document.getElementById("report-data").textContent);
const rows = report.per_class.slice();
const tip = document.getElementById("tooltip");
const SVG = "http://www.w3.org/2000/svg";
function el(name, attrs, parent) {{
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}}
function color(a) {{ const h = Math.max(0, Math.min(1, a)) * 120; return "hsl(" + h + ",65%,45%)"; }}
function fmt(x, d) {{ return x === null || x === undefined ? "n/a" : Number(x).toFixed(d); }}
function draw() {{
  const key = document.getElementById("sort").value;
  const desc = key.startsWith("-"), k = desc ? key.slice(1) : key;
  rows.sort((a, b) => {{
    const va = a[k] === null ? -1 : a[k], vb = b[k] === null ? -1 : b[k];
    const c = typeof va === "string" ? va.localeCompare(vb) : va - vb;
    return desc ? -c : c;
  }});
  const barH = 16, labelW = 190, chartW = 620, top = 24;
  const chart = document.getElementById("chart");
  chart.textContent = "";
  const svg = el("svg", {{width: labelW + chartW + 70, height: top + rows.length * barH + 10, role: "img"}}, chart);
  for (const t of [0, 0.25, 0.5, 0.75, 1]) {{
    el("line", {{x1: labelW + t * chartW, x2: labelW + t * chartW, y1: 14, y2: top + rows.length * barH, stroke: "#d0d5dd"}}, svg);
    el("text", {{x: labelW + t * chartW, y: 12, "font-size": 11, "text-anchor": "middle"}}, svg).textContent = t.toFixed(2);
  }}
  rows.forEach((r, i) => {{
    const y = top + i * barH, a = r.accuracy === null ? 0 : r.accuracy;
    el("text", {{x: labelW - 6, y: y + barH - 4, "font-size": 12, "text-anchor": "end"}}, svg).textContent = r.id + " " + r.name;
    const bar = el("rect", {{class: "bar", x: labelW, y: y + 2, width: Math.max(1, a * chartW), height: barH - 4, fill: color(a), "data-class": r.id}}, svg);
    el("text", {{x: labelW + a * chartW + 4, y: y + barH - 4, "font-size": 11}}, svg).textContent = fmt(r.accuracy, 3);
    bar.addEventListener("mousemove", ev => {{
      tip.style.display = "block"; tip.style.left = (ev.clientX + 14) + "px"; tip.style.top = (ev.clientY + 10) + "px";
      tip.textContent = r.name + " (id " + r.id + ")\\naccuracy " + fmt(r.accuracy, 3) + "  (" + r.correct + "/" + r.support + ")" +
        "\\nmean confidence " + fmt(r.mean_confidence, 3) + "\\nmost confused with " + (r.most_confused_with || "-") + " (" + r.most_confused_count + ")";
    }});
    bar.addEventListener("mouseleave", () => {{ tip.style.display = "none"; }});
  }});
  document.getElementById("count").textContent = rows.length + " classes";
}}
document.getElementById("sort").addEventListener("change", draw);
draw();
</script></body></html>
"""


# The page's script: reads the report embedded by _data_script and fills the sections (no network access).
_INDEX_SCRIPT = """"use strict";
const report = JSON.parse(document.getElementById("report-data").textContent);
const names = report.class_names;
function fmt(x, d) { return x === null || x === undefined ? "n/a" : (typeof x === "number" ? x.toFixed(d === undefined ? 3 : d) : String(x)); }
function td(text, cls) { const c = document.createElement("td"); c.textContent = text; if (cls) c.className = cls; return c; }
function row(table, cells, header) {
  const tr = document.createElement("tr");
  for (const c of cells) { const e = document.createElement(header ? "th" : "td"); e.textContent = c; tr.appendChild(e); }
  table.appendChild(tr); return tr;
}
function kv(table, pairs) { table.textContent = ""; for (const [k, v] of pairs) row(table, [k, v]); }
const cal = report.calibration;
document.getElementById("summary").textContent =
  report.split + " split: " + report.num_samples + " samples, " + report.num_classes + " classes; accuracy " + fmt(report.accuracy, 4) +
  "; mean confidence " + fmt(cal.mean_confidence) +
  (cal.direction ? " (" + cal.direction + ", gap " + fmt(cal.gap) + ")" : "") + "; ECE " + fmt(cal.ece) + "; " + cal.errors + " errors (" +
  cal.high_confidence_errors + " with confidence >= 0.9)" + (report.timing ? "; audit took " + fmt(report.timing.total_s, 1) + " s" : "");
for (const r of report.recommendations) {
  const li = document.createElement("li"); li.className = r.severity;
  li.textContent = "[" + r.severity + "] " + r.message + " \\u2192 " + r.action;
  document.getElementById("recommendations").appendChild(li);
}
const att = report.attention, o = att.overall;
const attRows = [["method / layer", att.method + " / " + att.layer], ["explained samples", att.explained_samples],
  ["concentration (pred. class), right / wrong", fmt(o.concentration_pred_right) + " / " + fmt(o.concentration_pred_wrong)]];
if (att.has_masks) {
  attRows.push(["energy inside the object, right / wrong", fmt(o.energy_in_mask_right) + " / " + fmt(o.energy_in_mask_wrong) + " (object area " + fmt(o.mask_area) + ")"]);
  attRows.push(["pointing game", fmt(o.pointing_game)]);
}
if (att.faithfulness.samples) attRows.push(["deletion / insertion AUC (random maps)", fmt(att.faithfulness.deletion_auc) + " / " + fmt(att.faithfulness.insertion_auc) +
  " (" + fmt(att.faithfulness.random_deletion_auc) + " / " + fmt(att.faithfulness.random_insertion_auc) + ")"]);
if (att.randomisation.samples) attRows.push(["model randomisation: Spearman", fmt(att.randomisation.spearman_mean) + (att.randomisation.passed ? " (passes)" : " (FAILS)")]);
if (att.fixed_region.samples) attRows.push(["hottest region", att.fixed_region.hot_cell + ": peak of " + fmt(100 * att.fixed_region.peak_share, 0) + "% of maps" + (att.fixed_region.flagged ? " (FLAGGED)" : "")]);
kv(document.getElementById("attention"), attRows);
const pairsTable = document.getElementById("pairs");
row(pairsTable, ["#", "true", "predicted", "count", "share of class"], true);
for (const p of report.confused_pairs) {
  const tr = row(pairsTable, [p.rank, p.true_name, p.pred_name, p.count, fmt(p.share_of_true_class)]);
  if (p.panel) { const a = document.createElement("a"); a.href = p.panel; a.textContent = " panel"; tr.lastChild.appendChild(a); }
}
const select = document.getElementById("class-select");
for (const r of report.per_class) {
  const opt = document.createElement("option"); opt.value = String(r.id);
  opt.textContent = r.id + " " + r.name + " (" + fmt(r.accuracy) + ")"; select.appendChild(opt);
}
function showClass(id) {
  const r = report.per_class.find(x => x.id === id);
  if (!r) return;
  select.value = String(id);
  const a = r.attention || {};
  const stats = [["class", r.id + " " + r.name], ["accuracy", fmt(r.accuracy) + " (" + r.correct + "/" + r.support + ")"],
    ["mean confidence", fmt(r.mean_confidence)], ["mean loss", fmt(r.mean_loss)],
    ["most confused with", (r.most_confused_with || "-") + " (" + r.most_confused_count + ")"], ["predicted as this class", r.predicted_as_this],
    ["concentration right / wrong", fmt(a.concentration_pred_right) + " / " + fmt(a.concentration_pred_wrong)]];
  if (att.has_masks) stats.push(["energy in object right / wrong", fmt(a.energy_in_mask_right) + " / " + fmt(a.energy_in_mask_wrong)],
                                ["pointing game", fmt(a.pointing_game)]);
  kv(document.getElementById("class-stats"), stats);
  const pt = document.getElementById("class-pairs"); pt.textContent = "";
  row(pt, ["true", "predicted", "count"], true);
  for (const p of report.confused_pairs.filter(p => p.true_id === id || p.pred_id === id)) row(pt, [p.true_name, p.pred_name, p.count]);
  const img = document.getElementById("class-panel");
  if (r.panel) { img.src = r.panel; img.hidden = false; } else { img.removeAttribute("src"); img.hidden = true; }
  const st = document.getElementById("class-samples"); st.textContent = "";
  row(st, ["", "file / sample", "true", "predicted", "confidence"], true);
  for (const x of r.samples || []) row(st, [x.role, x.source, x.true_name, x.pred_name, fmt(x.confidence, 2)]);
  if (location.hash !== "#class-" + id) history.replaceState(null, "", "#class-" + id);
}
select.addEventListener("change", () => showClass(Number(select.value)));
function step(d) { const i = select.selectedIndex + d; if (i >= 0 && i < select.options.length) showClass(Number(select.options[i].value)); }
document.getElementById("prev").addEventListener("click", () => step(-1));
document.getElementById("next").addEventListener("click", () => step(1));
const fromHash = /^#class-(\\d+)$/.exec(location.hash);
showClass(fromHash ? Number(fromHash[1]) : report.per_class[0].id);
if (report.compare) {
  document.getElementById("compare-section").hidden = false;
  const c = report.compare, div = document.getElementById("compare");
  div.textContent = "vs " + c.other + ": accuracy " + fmt(c.other_accuracy, 4) + " -> " + fmt(c.accuracy, 4) +
    (c.attention_drift_mean === null ? "" : "; mean attention drift " + fmt(c.attention_drift_mean) + " over " + c.drift_samples + " probe images");
  const img = document.createElement("img"); img.src = c.figure; img.alt = "comparison"; div.appendChild(document.createElement("br")); div.appendChild(img);
}
"""


def _findings_section(report: Mapping[str, Any]) -> str:
    """The findings (a shortcut), above everything else, with the picture of the region; empty without any."""
    findings = report.get("findings") or []
    if not findings:
        return ""
    items = "".join(
        f'<li class="{_html.escape(f["severity"])}">{_html.escape(f["message"])}</li>' for f in findings
    )
    picture = (report.get("shortcut") or {}).get("picture")
    image = (
        f'<img id="shortcut-picture" src="{_html.escape(picture)}" alt="the shortcut region over sample images" '
        'style="max-width:420px">'
        if picture
        else ""
    )
    return f'<section id="findings"><h2>Findings</h2><ul>{items}</ul>{image}</section>'


def index_page(report: Mapping[str, Any]) -> str:
    """index.html: summary, recommendations, figures, and a class selector showing that class's numbers and panels."""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">
<title>lit_explain audit ({_html.escape(report["split"])})</title><style>{_CSS}</style></head>
<body><header><h1>lit_explain audit &mdash; {_html.escape(str(report.get("checkpoint", "in-memory model")))}</h1></header>
<main>
{_findings_section(report)}
<section><h2>Summary</h2><div id="summary"></div></section>
<section><h2>Recommendations</h2><ol id="recommendations"></ol></section>
{label_issues_html(report.get("label_issues"))}
<section><h2>Class</h2>
<label for="class-select">Class </label><select id="class-select"></select>
<button id="prev" type="button">&larr;</button><button id="next" type="button">&rarr;</button>
<div class="row"><div class="card"><table id="class-stats"></table><h2>Confused pairs involving this class</h2>
<table id="class-pairs"></table></div>
<div class="card"><img id="class-panel" alt="best and worst predictions of the selected class">
<h2>Samples in the panel (top to bottom)</h2><table id="class-samples"></table></div></div></section>
<section><h2>Attention quality</h2><table id="attention"></table>
<div class="row"><div class="card"><h2>Mean attention (predicted class)</h2><img src="attention_mean.png" alt="mean attention map" style="max-width:240px"></div></div></section>
<section><h2>Most confused pairs</h2><table id="pairs"></table></section>
<section id="compare-section" hidden><h2>Comparison</h2><div id="compare"></div></section>
<section><h2>Figures</h2><div class="row">
<div class="card"><a href="per_class_accuracy_interactive.html">interactive per-class accuracy</a><br><img src="top_confused_pairs.png" alt="top confused pairs"></div>
<div class="card"><img src="confusion_matrix_full.png" alt="confusion matrix"></div></div></section>
</main>
{_data_script(report)}
<script>
{_INDEX_SCRIPT}</script></body></html>
"""
