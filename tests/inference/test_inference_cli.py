"""``python -m lit_explain explain``: single image, folder, named class, top-k, bad input."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from lit_explain.cli import main as lit_main


def test_single_image_top_k_and_class(quick_ckpt, odd_images, tmp_path, capsys):
    out = tmp_path / "single"
    args = ["explain", "--ckpt_path", str(quick_ckpt), "--image", str(odd_images["rgb.jpg"]), "--top_k", "2"]
    assert lit_main([*args, "--class_name", "star", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "analysis_summary.json").read_text())
    assert summary["prediction"] in printed and "requested star" in printed
    assert (out / "gradcam_prediction.png").stat().st_size > 1000
    tops = sorted(p.name for p in (out / "top_predictions").iterdir())
    assert len(tops) == 2 and tops[0].startswith("gradcam_top1_") and tops[1].startswith("gradcam_top2_")
    assert json.loads((out / "class_analysis_star.json").read_text())["class_name"] == "star"
    assert summary["method"] == "gradcam" and summary["layer"] == "layer4"
    assert set(summary["timings_s"]) == {"preprocess", "explain", "render"}
    # A second run into the same folder refuses to overwrite, and says how to.
    assert lit_main([*args, "--output", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert lit_main([*args, "--output", str(out), "--overwrite", "true"]) == 0


def test_folder_lists_unreadable_and_skipped_files(quick_ckpt, odd_images, tmp_path, capsys):
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    for name, path in odd_images.items():
        (folder / ("nested" if name.startswith("gray") else "") / name).write_bytes(path.read_bytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    code = lit_main(
        [
            "explain",
            "--ckpt_path",
            str(quick_ckpt),
            "--images_dir",
            str(folder),
            "--output",
            str(out),
            "--batch_size",
            "4",
            "--method",
            "gradcam++",
            "--no_guided",
            "true",
        ]
    )
    assert code == 0
    err = capsys.readouterr().err
    assert "1 unreadable" in err and "broken.jpg" in err and "1 files skipped" in err
    rows = {r["file"]: r for r in csv.DictReader((out / "summary.csv").open())}
    assert rows["broken.jpg"]["status"] == "unreadable" and "cannot decode" in rows["broken.jpg"]["error"]
    assert rows["notes.txt"]["status"] == "skipped"
    ok = [r for r in rows.values() if r["status"] == "ok"]
    assert len(ok) == len(odd_images)
    for row in ok:
        summary = json.loads((out / row["output_dir"] / "analysis_summary.json").read_text())
        assert summary["prediction"] == row["prediction"] and summary["method"] == "gradcam++"
    report = json.loads((out / "folder_summary.json").read_text())
    assert report["explained"] == len(odd_images) and report["unreadable_count"] == 1


def test_folder_with_class_name(quick_ckpt, odd_images, tmp_path):
    folder = tmp_path / "two"
    folder.mkdir()
    for name in ("rgb.jpg", "deep16.png"):
        (folder / name).write_bytes(odd_images[name].read_bytes())
    out = tmp_path / "out"
    assert (
        lit_main(
            [
                "explain",
                "--ckpt_path",
                str(quick_ckpt),
                "--images_dir",
                str(folder),
                "--class_name",
                "ring",
                "--output",
                str(out),
                "--progress",
                "false",
            ]
        )
        == 0
    )
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert {r["explained_class"] for r in rows} == {"ring"}
    assert (out / "deep16_png" / "class_analysis_ring.json").is_file()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "exactly one of --image"),
        (["--image", "missing.png"], "cannot open image missing.png"),
        (["--image", "IMG", "--class_name", "hexagon"], "unknown class name 'hexagon'"),
        (["--image", "IMG", "--layer", "layer9"], "layer9"),
        (["--image", "IMG", "--top_k", "0"], "--top_k must be >= 1"),
    ],
)
def test_bad_input_is_a_clear_error(quick_ckpt, odd_images, tmp_path, capsys, extra, message):
    extra = [str(odd_images["rgb.jpg"]) if a == "IMG" else a for a in extra]
    code = lit_main(["explain", "--ckpt_path", str(quick_ckpt), "--output", str(tmp_path / "o"), *extra])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_plain_file_with_labels_and_help(gray_plain_file, odd_images, tmp_path, capsys):
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"0": "cat", "1": "dog", "2": "bird"}))
    out = tmp_path / "plain"
    code = lit_main(
        [
            "explain",
            "--ckpt_path",
            str(gray_plain_file),
            "--backbone",
            "resnet18",
            "--labels",
            str(labels),
            "--image",
            str(odd_images["rgba.png"]),
            "--class_name",
            "dog",
            "--output",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert json.loads((out / "class_analysis_dog.json").read_text())["class_name"] == "dog"
    with pytest.raises(SystemExit) as exited:
        lit_main(["explain", "--help"])
    assert exited.value.code == 0
    helped = capsys.readouterr().out
    assert "--images_dir" in helped and "--top_k" in helped and "--class_name" in helped


def test_module_entry_point(quick_ckpt, odd_images, tmp_path):
    out = tmp_path / "sub"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "lit_explain",
            "explain",
            "--ckpt_path",
            str(quick_ckpt),
            "--image",
            str(odd_images["tiny.bmp"]),
            "--output",
            str(out),
            "--no_guided",
            "true",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert (out / "gradcam_prediction.png").is_file()
