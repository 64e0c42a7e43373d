"""DDP on CPU through the real CLI: no hang, each grid once per epoch, worst-k drawn from both ranks."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from callback_helpers import events

pytestmark = pytest.mark.slow  # two processes, two epochs through `python -m lit_explain fit` (~1-2 min)

EPOCHS = 2


def test_ddp_fit_logs_each_grid_once_per_epoch_with_samples_from_both_ranks(tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "lit_explain",
        "fit",
        "--trainer.strategy=ddp",
        "--trainer.devices=2",
        "--trainer.accelerator=cpu",
        f"--trainer.max_epochs={EPOCHS}",
        "--trainer.enable_progress_bar=false",
        "--data.init_args.train_size=64",
        "--data.init_args.val_size=64",
        "--data.init_args.batch_size=16",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=540, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]

    (log_dir,) = list((tmp_path / "shapes_demo").glob("version_*"))
    acc = events(log_dir)
    steps_per_epoch = 64 // 16 // 2  # each rank sees half of every epoch's batches
    steps = [steps_per_epoch * (e + 1) for e in range(EPOCHS)]
    for tag in (
        "explain/probes/page_0",
        "explain/worst/page_0",
        "val/confusion_matrix",
        "val/per_class_accuracy",
    ):
        assert [e.step for e in acc.Images(tag)] == steps, tag
    table = acc.Tensors("explain/worst_table/text_summary")
    assert len(table) == EPOCHS
    for entry in table:
        text = entry.tensor_proto.string_val[0].decode()
        assert "process" in text.splitlines()[0]  # a distributed run says which process saw each sample
        # | place | idx N | true | predicted | confidence | loss | process |
        rows = re.findall(r"^\| \d+ \| idx (\d+) \|.*\| (\d+) \|$", text, flags=re.MULTILINE)
        assert len(rows) == 16
        assert {rank for _, rank in rows} == {"0", "1"}
        # DistributedSampler without shuffling deals dataset index i to rank i % 2.
        assert all(int(index) % 2 == int(rank) for index, rank in rows)
    # TrainingDynamics counted every training sample once per epoch, from both ranks.
    with (log_dir / "label_issues.csv").open() as handle:
        issues = list(csv.DictReader(handle))
    assert len(issues) == 64 and {r["seen"] for r in issues} == {str(EPOCHS)}
