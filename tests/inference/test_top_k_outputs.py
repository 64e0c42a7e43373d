"""``--top_k K`` is honoured in every output: the JSON summary, the folder CSV and the pictures list exactly
the K most probable classes (the model here has 6), and the HTTP service still lists what it is asked for."""

from __future__ import annotations

import csv
import json

import pytest

from lit_explain.cli import main as lit_main
from lit_explain.inference import Explainer


@pytest.fixture(scope="module")
def explainer(quick_ckpt):
    return Explainer.from_checkpoint(quick_ckpt, layer="layer4", guided=False)


@pytest.mark.parametrize("k", [1, 3])
def test_the_api_lists_k_classes(explainer, odd_images, k):
    r = explainer.explain(odd_images["rgb.jpg"], top_k=k)
    assert len(r.top_k) == k and len(r.summary()["top_k"]) == k
    assert [i for _, i, _ in r.top_k] == [e.class_index for e in r.top_explained]


def test_a_named_class_alone_still_lists_the_prediction(explainer, odd_images):
    r = explainer.explain(odd_images["rgb.jpg"], target="star", top_k=0)
    assert [n for n, _, _ in r.top_k] == [r.prediction]


def test_report_k_lists_more_than_it_explains(explainer, odd_images):
    prepared = [explainer.preprocess(odd_images["rgb.jpg"])]
    (r,) = explainer.explain_prepared(prepared, None, 1, report_k=4)
    assert len(r.top_k) == 4 and len(r.explained) == 1


def test_explain_cli_honours_top_k_in_json_csv_and_pictures(quick_ckpt, odd_images, tmp_path):
    single = tmp_path / "single"
    args = ["explain", "--ckpt_path", str(quick_ckpt), "--top_k", "3", "--no_guided", "true"]
    assert lit_main([*args, "--image", str(odd_images["rgb.jpg"]), "--output", str(single)]) == 0
    summary = json.loads((single / "analysis_summary.json").read_text())
    assert len(summary["top_k"]) == 3
    assert len(list((single / "top_predictions").iterdir())) == 3
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("rgb.jpg", "rgba.png"):
        (folder / name).write_bytes(odd_images[name].read_bytes())
    out = tmp_path / "folder"
    assert lit_main([*args, "--images_dir", str(folder), "--output", str(out)]) == 0
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert len(rows) == 2
    for row in rows:
        cells = row["top_k"].split("; ")
        assert len(cells) == 3 and cells[0].startswith(row["prediction"] + " ")
        own = json.loads((out / row["output_dir"] / "analysis_summary.json").read_text())
        assert [c.rsplit(" ", 1)[0] for c in cells] == [t["class_name"] for t in own["top_k"]]
