"""``explain`` runs sharing one ``--output``, and symlinks inside it: one writer, nothing written outside."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from lit_explain.cli import main as lit_main
from lit_explain.outputs import LOCK, MARKER

# Imports first (seconds), then wait for the start file, then exactly `python -m lit_explain ...`: the
# three runs reach the --output lock within milliseconds of each other, not seconds apart.
GATED = (
    "import os, runpy, sys, time\n"
    "import lit_explain.cli\n"
    "go = sys.argv.pop(1)\n"
    "open(go + '.' + str(os.getpid()), 'w').close()\n"
    "while not os.path.exists(go):\n"
    "    time.sleep(0.005)\n"
    "runpy.run_module('lit_explain', run_name='__main__', alter_sys=True)\n"
)


def _images(folder: Path, seed: int, count: int = 6) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    return folder


def _start_gated(go: Path, args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", GATED, str(go), "explain", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_concurrent_runs_to_one_output_one_completes_the_others_refuse(quick_ckpt, tmp_path):
    out = tmp_path / "same"
    out.mkdir()  # a re-run with --overwrite, as in the report: the folder exists
    go = tmp_path / "go"
    procs = []
    for run in range(3):
        images = _images(tmp_path / f"run{run}", seed=run)
        args = ["--ckpt_path", str(quick_ckpt), "--images_dir", str(images), "--output", str(out)]
        procs.append(_start_gated(go, [*args, "--overwrite", "--no_guided", "true", "--progress", "false"]))
    deadline = time.monotonic() + 240
    while len(list(tmp_path.glob("go.*"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)  # every process has imported lit_explain and waits
    go.touch()
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    # Before: all three exited 0, and one run's image folders held another run's pictures.
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2, 2], [err[-2000:] for _, _, err in results]
    busy = f"error: another lit_explain run is writing {out} (lock {out / LOCK}); wait for it or choose another --output"
    for code, _, err in results:
        if code == 2:
            assert err.strip().splitlines() == [busy]
    winner = next(run for run, (code, _, _) in enumerate(results) if code == 0)
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [r["file"] for r in rows] == [f"img{i}.png" for i in range(6)]
    for row in rows:  # summary.csv and every per-image folder describe the same run's same image
        summary = json.loads((out / row["output_dir"] / "analysis_summary.json").read_text())
        assert summary["source"] == str(tmp_path / f"run{winner}" / row["file"])
        assert summary["prediction"] == row["prediction"]
        assert f"{summary['confidence']:.6f}" == row["confidence"]
    assert not (out / LOCK).exists()  # the winner's lock file went with it


def _explain(ckpt: Path, *args: str) -> int:
    return lit_main(
        ["explain", "--ckpt_path", str(ckpt), "--no_guided", "true", "--progress", "false", *args]
    )


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_symlinks_inside_output_are_refused_and_their_targets_untouched(quick_ckpt, tmp_path, capsys):
    images = _images(tmp_path / "in", seed=0, count=2)
    out = tmp_path / "out"
    assert _explain(quick_ckpt, "--images_dir", str(images), "--output", str(out)) == 0
    capsys.readouterr()
    outside = tmp_path / "outside"  # what the links point to: must never be written, replaced or deleted
    outside.mkdir()
    (outside / MARKER).write_text(json.dumps({"tool": "lit_explain", "kind": "explain"}))
    (outside / "analysis_summary.json").write_text("precious")
    (outside / "gradcam_prediction.png").write_bytes(b"precious")
    (outside / "file.csv").write_text("precious")
    before = _snapshot(outside)
    folder, single = out / "img0_png", tmp_path / "single"
    cases = [
        # Before: written through (the outside folder's marker made it "ours"), files replaced there.
        (folder, outside, ["--images_dir", str(images), "--output", str(out)]),
        # Before: os.replace swapped the link for a file, deleting a link lit_explain did not make.
        (out / "summary.csv", outside / "file.csv", ["--images_dir", str(images), "--output", str(out)]),
        (single / "top_predictions", outside, ["--image", str(images / "img1.png"), "--output", str(single)]),
    ]
    assert _explain(quick_ckpt, "--image", str(images / "img1.png"), "--output", str(single)) == 0
    capsys.readouterr()
    for link, target, args in cases:
        kept = link.with_name(link.name + ".real")
        if link.exists():
            link.rename(kept)
        link.symlink_to(target)
        assert _explain(quick_ckpt, *args, "--overwrite", "--top_k", "2") == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert f"error: {link} is a symlink (to {target}) inside --output" in err
        assert "never writes through one" in err
        assert link.is_symlink() and os.readlink(link) == str(target)
        assert _snapshot(outside) == before
        link.unlink()
        if kept.exists():
            kept.rename(link)
    # With the links gone, the same runs write again.
    assert _explain(quick_ckpt, "--images_dir", str(images), "--output", str(out), "--overwrite") == 0
    assert _snapshot(outside) == before
