"""Learning-rate schedules of :class:`~lit_explain.models.classifier.ImageClassifier`, and how a resumed run
continues one when its length changed (``fit --ckpt_path last --trainer.max_epochs=N`` with a larger N).

A step-based schedule is built for a total number of optimizer steps. Resuming with another total used to
load the checkpoint's schedule as it was, so one-cycle stepped past its end and stopped the run
(``Tried to step 16 times``). :class:`ContinuedLR` replaces it then: it starts at the learning rate the
checkpoint's schedule had reached (so the curve has no jump), finishes a warm-up that was still under way,
and anneals (cosine) to the schedule's final learning rate at the new last step.

Example:
    >>> plan = schedule_plan("onecycle", total_steps=15)
    >>> scheduler = ContinuedLR(optimizer, start_step=9, start_factor=plan.final_factor, plan=plan)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

# OneCycleLR's settings, spelled out so the continuation knows where the schedule peaks and ends.
ONECYCLE_PCT_START = 0.3
ONECYCLE_DIV = 25.0
ONECYCLE_FINAL_DIV = 1e4
WARMUP_START_FACTOR = 0.01


@dataclass(frozen=True)
class SchedulePlan:
    """A schedule's shape over ``total_steps`` as factors of the peak learning rate (``model.lr``): 1.0 at
    ``peak_step`` (the end of the warm-up), ``final_factor`` at the last step (``total_steps - 1``)."""

    total_steps: int
    peak_step: float
    final_factor: float


def schedule_plan(kind: str, total_steps: int, warmup_steps: int = 0) -> SchedulePlan:
    """The shape of the ``"onecycle"`` or ``"cosine"`` schedule :func:`build_schedule` makes."""
    if kind == "onecycle":
        # OneCycleLR: warm-up ends at step pct_start * total - 1; it ends at max_lr / div / final_div.
        return SchedulePlan(
            total_steps, ONECYCLE_PCT_START * total_steps - 1, 1.0 / (ONECYCLE_DIV * ONECYCLE_FINAL_DIV)
        )
    return SchedulePlan(total_steps, float(warmup_steps), 0.0)  # cosine anneals to eta_min = 0


def build_schedule(optimizer: Optimizer, kind: str, total_steps: int, warmup_steps: int = 0) -> LRScheduler:
    """The per-step schedule ``kind`` (``"onecycle"`` or ``"cosine"`` with linear warm-up) over ``total_steps``."""
    if kind == "onecycle":
        max_lrs = [group["lr"] for group in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=max_lrs,
            total_steps=total_steps,
            pct_start=ONECYCLE_PCT_START,
            div_factor=ONECYCLE_DIV,
            final_div_factor=ONECYCLE_FINAL_DIV,
        )
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warmup_steps))
    if warmup_steps <= 0:
        return cosine
    ramp = torch.optim.lr_scheduler.LinearLR(
        optimizer, start_factor=WARMUP_START_FACTOR, total_iters=warmup_steps
    )
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [ramp, cosine], milestones=[warmup_steps])


def planned_steps(state: dict[str, Any]) -> int | None:
    """The total steps a saved scheduler state was built for; None for a schedule of unknown kind."""
    if "total_steps" in state:  # OneCycleLR, ContinuedLR
        return int(state["total_steps"])
    nested = state.get("_schedulers")
    if nested and state.get("_milestones"):  # SequentialLR: warm-up, then the last schedule
        last = planned_steps(nested[-1])
        return None if last is None else int(state["_milestones"][-1]) + last
    if "T_max" in state:  # CosineAnnealingLR
        return int(state["T_max"])
    return None


def steps_taken(state: dict[str, Any]) -> int:
    """How many steps a saved scheduler state had taken (a continuation counts from its start)."""
    return int(state.get("start_step", 0)) + int(state["last_epoch"])


def is_continuation(state: dict[str, Any]) -> bool:
    return "start_factor" in state and "start_step" in state


class ContinuedLR(LRScheduler):
    """Continue a schedule from ``start_step`` at ``start_factor`` x the peak learning rate to the end of ``plan``.

    Before ``plan.peak_step`` (a warm-up still under way) it rises to the peak first; then it anneals by
    cosine to ``plan.final_factor`` at step ``plan.total_steps - 1`` and stays there. Each group's peak is
    its ``initial_lr`` (``model.lr``, or ``lr_ratio`` x that for groups ``BackboneUnfreeze`` adds).

    Args:
        optimizer: the optimizer whose groups it schedules.
        start_step: the schedule's step when the run resumed.
        start_factor: the learning rate then, as a factor of the peak.
        plan: the new run's schedule shape (:func:`schedule_plan`).
    """

    def __init__(
        self, optimizer: Optimizer, start_step: int, start_factor: float, plan: SchedulePlan
    ) -> None:
        self.start_step = int(start_step)
        self.start_factor = float(start_factor)
        self.total_steps = int(plan.total_steps)
        self.peak_step = float(plan.peak_step)
        self.final_factor = float(plan.final_factor)
        super().__init__(optimizer)

    def factor(self, step: int) -> float:
        """The learning rate at schedule step ``step`` as a factor of the peak."""
        origin, value = float(self.start_step), self.start_factor
        if origin < self.peak_step and value < 1.0:  # resumed during the warm-up: finish it first
            if step <= self.peak_step:
                return _cosine_between(value, 1.0, (step - origin) / (self.peak_step - origin))
            origin, value = self.peak_step, 1.0
        end = self.total_steps - 1
        if end <= origin:
            return self.final_factor
        return _cosine_between(value, self.final_factor, (step - origin) / (end - origin))

    def get_lr(self) -> list[float]:
        factor = self.factor(self.start_step + self.last_epoch)
        return [base * factor for base in self.base_lrs]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a continuation of the same length; any other state is the one this was built from."""
        if is_continuation(state_dict) and planned_steps(state_dict) == self.total_steps:
            super().load_state_dict(state_dict)
        # Lightning restored the optimizer just before, with the checkpoint schedule's last rates (one step
        # past the end for a finished one-cycle): this schedule's rates go back, used by the next step.
        for group, lr in zip(self.optimizer.param_groups, self.get_last_lr(), strict=False):
            group["lr"] = lr


def _cosine_between(start: float, end: float, progress: float) -> float:
    progress = min(1.0, max(0.0, progress))
    return end + (start - end) * (1.0 + math.cos(math.pi * progress)) / 2.0
