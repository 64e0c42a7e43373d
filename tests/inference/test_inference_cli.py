"""``python -m lit_explain explain``: single image, folder, named class, top-k, bad input."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

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
    assert "1 unreadable" in err and "broken.jpg" in err and "1 entries skipped" in err
    assert "notes.txt: not an image extension" in err
    rows = {r["file"]: r for r in csv.DictReader((out / "summary.csv").open())}
    assert rows["broken.jpg"]["status"] == "unreadable" and "cannot decode" in rows["broken.jpg"]["error"]
    assert rows["notes.txt"]["status"] == "skipped" and rows["notes.txt"]["error"] == "not an image extension"
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


def _explain(ckpt: Path, *args: str) -> int:
    return lit_main(
        ["explain", "--ckpt_path", str(ckpt), "--no_guided", "true", "--progress", "false", *args]
    )


def test_output_that_is_a_file_or_someone_elses_folder_is_refused(quick_ckpt, odd_images, tmp_path, capsys):
    image = str(odd_images["tiny.bmp"])
    afile = tmp_path / "afile"
    afile.write_text("user data")
    for mode in (["--image", image], ["--images_dir", str(odd_images["tiny.bmp"].parent)]):
        assert _explain(quick_ckpt, *mode, "--output", str(afile), "--overwrite") == 2
        err = capsys.readouterr().err
        # Before: "afile/gradcam_prediction.png already exists", which sends the user the wrong way.
        assert f"--output {afile} is a file, not a folder" in err and "already exists" not in err
        assert err.count("\n") == 1
    assert afile.read_text() == "user data"
    home = tmp_path / "v"
    (home / "sub").mkdir(parents=True)
    (home / "thesis.txt").write_text("years of work")
    for mode in (["--image", image], ["--images_dir", str(odd_images["tiny.bmp"].parent)]):
        assert _explain(quick_ckpt, *mode, "--output", str(home), "--overwrite", "true") == 2
        assert "did not write (sub, thesis.txt)" in capsys.readouterr().err
    assert sorted(p.name for p in home.iterdir()) == ["sub", "thesis.txt"]


def test_bare_overwrite_replaces_an_earlier_result(quick_ckpt, odd_images, tmp_path, capsys):
    out = tmp_path / "o"
    args = ["--image", str(odd_images["tiny.bmp"]), "--output", str(out)]
    assert _explain(quick_ckpt, *args) == 0
    assert _explain(quick_ckpt, *args) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    before = (out / "analysis_summary.json").stat().st_mtime_ns
    assert _explain(quick_ckpt, *args, "--overwrite") == 0  # bare flag (jsonargparse wanted a value)
    assert (out / "analysis_summary.json").stat().st_mtime_ns > before
    assert _explain(quick_ckpt, *args, "--overwrite", "false") == 2


def test_folder_names_are_unique_and_every_skipped_entry_is_listed(quick_ckpt, odd_images, tmp_path, capsys):
    folder = tmp_path / "in"
    (folder / "d.jpg").mkdir(parents=True)  # a folder named like an image
    (folder / "sub").mkdir()
    data = odd_images["rgb.jpg"].read_bytes()
    for name in ("x.y.jpg", "x_y.jpg", "sub/a.png", "x_y_jpg_2.jpg"):
        (folder / name).write_bytes(odd_images["gray.png"].read_bytes() if name.endswith("png") else data)
    (folder / "x_y_jpg").mkdir()  # an input folder with the name x_y.jpg would get: taken
    (folder / "x_y_jpg" / "b.jpg").write_bytes(data)
    (folder / "gone.jpg").symlink_to(folder / "missing.jpg")
    (folder / "linked").symlink_to(folder / "sub")
    os.mkfifo(folder / "pipe.jpg")
    (folder / ".hidden.jpg").write_bytes(data)
    out = folder / "out"  # inside the input folder: a second run must not explain the first's pictures
    for _ in range(2):
        assert _explain(quick_ckpt, "--images_dir", str(folder), "--output", str(out), "--overwrite") == 0
    err = capsys.readouterr().err
    rows = {r["file"]: r for r in csv.DictReader((out / "summary.csv").open())}
    outputs = {f: r["output_dir"] for f, r in rows.items() if r["status"] == "ok"}
    assert outputs == {
        "sub/a.png": "sub/a_png",
        "x.y.jpg": "x_y_jpg_2",
        "x_y.jpg": "x_y_jpg_3",
        "x_y_jpg/b.jpg": "x_y_jpg/b_jpg",
        "x_y_jpg_2.jpg": "x_y_jpg_2_jpg",
    }
    for name, folder_name in outputs.items():
        summary = json.loads((out / folder_name / "analysis_summary.json").read_text())
        assert summary["source"].endswith(name)  # each folder holds its own image's results
    skipped = {f: r["error"] for f, r in rows.items() if r["status"] == "skipped"}
    assert skipped["gone.jpg"].startswith("broken symlink")
    assert skipped["pipe.jpg"] == "a FIFO (named pipe), not an image file"
    assert skipped["d.jpg"].startswith("a folder named like an image")
    assert skipped["linked"] == "symlink to a folder (not followed)"
    assert skipped[".hidden.jpg"].startswith("hidden")
    assert skipped["out"].startswith("the --output folder")
    assert "x.y.jpg -> x_y_jpg_2" in err and "pipe.jpg: a FIFO" in err
    report = json.loads((out / "folder_summary.json").read_text())
    assert report["explained"] == 5 and report["renamed_outputs"]["x_y.jpg"] == "x_y_jpg_3"
