"""Resuming with a larger max_epochs: the step-based schedule is continued to the new last step (it used to
stop the run with OneCycleLR's `Tried to step 10 times ... total steps is 9`)."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from checkpoint_helpers import tiny_recipe
from lightning.pytorch import Callback

from lit_explain.cli import LitExplainCLI
from lit_explain.models.schedules import ContinuedLR, build_schedule, schedule_plan

STEPS_PER_EPOCH = 3  # 24 training images, batch 8


class LrRecorder(Callback):
    """The learning rate each optimizer step uses, by global step."""

    def __init__(self) -> None:
        self.lrs: dict[int, float] = {}

    def on_train_batch_start(self, trainer: Any, *args: Any) -> None:
        self.lrs[trainer.global_step] = trainer.optimizers[0].param_groups[0]["lr"]


def _fit(cwd: Path, config: Path, epochs: int, *args: str) -> tuple[LitExplainCLI, LrRecorder]:
    recorder = LrRecorder()
    previous = Path.cwd()
    os.chdir(cwd)
    try:
        argv = ["fit", "--config", str(config), f"--trainer.max_epochs={epochs}", *args]
        cli = LitExplainCLI(args=argv, trainer_defaults={"callbacks": [recorder]})
    finally:
        os.chdir(previous)
    return cli, recorder


def _largest_change(lrs: list[float]) -> float:
    return max(abs(b - a) for a, b in itertools.pairwise(lrs))


@pytest.mark.slow
def test_resume_with_more_epochs_continues_the_one_cycle_schedule(tmp_path):
    config = tiny_recipe(tmp_path / "tiny.yaml", train_size=24, val_size=8)
    root = f"--trainer.default_root_dir={tmp_path / 'runs'}"
    first, before = _fit(tmp_path, config, 3, root)
    assert first.model.hparams.scheduler == "onecycle"
    with pytest.warns(UserWarning, match="built for 9 steps, this run has 15"):
        resumed, after = _fit(tmp_path, config, 5, root, "--ckpt_path=last")

    assert resumed.trainer.global_step == 5 * STEPS_PER_EPOCH
    assert sorted(before.lrs) == list(range(9)) and sorted(after.lrs) == list(range(9, 15))
    curve = [before.lrs[s] for s in range(9)] + [after.lrs[s] for s in range(9, 15)]
    # No jump at the resume point bigger than any step-to-step change of the first run.
    assert abs(curve[9] - curve[8]) <= _largest_change(curve[:9])
    assert all(b <= a * (1 + 1e-6) for a, b in itertools.pairwise(curve[9:]))  # annealing only
    final = schedule_plan("onecycle", 15).final_factor * first.model.hparams.lr
    assert curve[-1] == pytest.approx(final, rel=1e-6)
    (last,) = (tmp_path / "runs").rglob("last.ckpt")  # the run continued in its own folder
    assert torch.load(last, weights_only=True)["global_step"] == 15


def _optimizer(lr: float = 0.1) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr, momentum=0.9)


def _run(scheduler: Any, steps: int) -> list[float]:
    """The rate each of ``steps`` optimizer steps uses."""
    lrs = []
    for _ in range(steps):
        lrs.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize(("kind", "stop"), [("onecycle", 6), ("onecycle", 1), ("cosine", 5)])
def test_continuation_is_continuous_and_ends_at_the_schedules_end(kind, stop):
    # Interrupted at `stop` of 9 steps (1: still warming up), resumed in a 20-step run.
    warmup = 2 if kind == "cosine" else 0
    old = build_schedule(_optimizer(), kind, 9, warmup)
    before = _run(old, stop)
    state = old.state_dict()
    plan = schedule_plan(kind, 20, warmup)
    continued = ContinuedLR(_optimizer(), stop, state["_last_lr"][0] / 0.1, plan)
    after = _run(continued, 20 - stop)
    curve = before + after
    assert curve[stop] == pytest.approx(old.get_last_lr()[0], abs=1e-12)  # the rate the old one would use
    # Smooth: no step moves the rate more than the new run's own schedule does at its steepest.
    fresh = _run(build_schedule(_optimizer(), kind, 20, warmup), 20)
    assert _largest_change(after) <= 1.5 * _largest_change(fresh)
    assert curve[-1] == pytest.approx(plan.final_factor * 0.1, abs=1e-12)
    if stop < plan.peak_step:
        assert max(after) == pytest.approx(0.1, rel=1e-6)  # the warm-up was finished at the new peak


def test_a_continuation_resumed_again_keeps_its_curve():
    plan = schedule_plan("onecycle", 20)
    first = ContinuedLR(_optimizer(), 9, 0.2, plan)
    _run(first, 4)
    again = ContinuedLR(_optimizer(), 9, 0.2, plan)
    again.load_state_dict(first.state_dict())
    assert _run(again, 7) == _run(first, 7)
    # A state of another schedule is not loaded: the continuation keeps (and re-applies) its own rates.
    other = ContinuedLR(_optimizer(), 9, 0.2, plan)
    other.optimizer.param_groups[0]["lr"] = 1.0  # what Lightning's optimizer restore just put there
    other.load_state_dict(build_schedule(_optimizer(), "onecycle", 9).state_dict())
    assert other.optimizer.param_groups[0]["lr"] == pytest.approx(0.02)
