"""The README's label-noise command, run as printed (plus small-run flags), twice in one folder: each run
prints the finding, writes its own label_issues.csv listing every training sample and a findings.json entry."""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import pytest
from callback_helpers import run_as_printed

REPO = Path(__file__).resolve().parents[2]
# The full command trains 10 epochs on 5,000 images (about 3 minutes); the flags below keep its meaning
# (the flipped labels, the callback as the recipe sets it) on a small set.
SMALL = [
    "--trainer.max_epochs=2",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.num_sanity_val_steps=0",
    "--data.init_args.train_size=160",
    "--data.init_args.val_size=48",
]

# The columns issue 23 asks of label_issues.csv (the file has more).
REQUIRED_COLUMNS = {"rank", "index", "source", "given_label", "suggested_label", "score"}


def readme_label_noise_command() -> str:
    found = re.findall(
        r"^(python -m lit_explain fit --data\.init_args\.label_noise \S+(?: --\S+ \S+)*)$", _readme(), re.M
    )
    assert len(found) == 1, f"README has {len(found)} label-noise fit commands"
    return found[0]


def _readme() -> str:
    return (REPO / "README.md").read_text()


@pytest.mark.slow
def test_readme_label_noise_command_finds_flipped_labels_twice_in_one_folder(tmp_path: Path) -> None:
    command = readme_label_noise_command()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for run in (1, 2):
        done = run_as_printed(command, tmp_path, env, SMALL)
        assert done.returncode == 0, done.stderr[-3000:]
        printed = done.stdout + done.stderr
        assert re.search(r"TrainingDynamics: \d+ of 160 training labels look wrong after epoch 2", printed)
        tables = sorted(tmp_path.rglob("label_issues.csv"))
        assert len(tables) == run, tables  # a second run writes its own, the first one is kept
        with tables[-1].open() as handle:
            rows = list(csv.DictReader(handle))
        assert len(rows) == 160 and set(rows[0]) >= REQUIRED_COLUMNS
        assert [int(r["rank"]) for r in rows] == list(range(1, 161))
        findings = json.loads((tables[-1].parent / "findings.json").read_text())
        entry = [f for f in findings if f["kind"] == "label_issues"]
        assert len(entry) == 1
        assert f"TrainingDynamics: {entry[0]['message']}" in printed  # the finding's line as printed
