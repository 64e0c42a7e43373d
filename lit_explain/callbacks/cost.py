"""What the explanations cost a run: seconds on the training thread (per callback, per epoch, in all) and
seconds on the background writer, so a user can choose ``every_n_epochs`` from numbers.

One :class:`CostAccount` per trainer, shared by every lit_explain callback of that trainer.
"""

from __future__ import annotations

import importlib.util
import time
import weakref
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import lightning as L


@dataclass
class CostAccount:
    """Training-thread seconds of the explanation callbacks of one trainer.

    Example:
        >>> account = CostAccount()
        >>> with account.timed("ProbeHeatmaps"):
        ...     pass
        >>> sorted(account.by_callback)
        ['ProbeHeatmaps']
    """

    by_callback: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    epoch_s: float = 0.0
    total_s: float = 0.0
    fit_start: float | None = None
    _depth: int = 0

    @contextmanager
    def timed(self, owner: str) -> Iterator[None]:
        # Nested timings (a hook calling a timed helper) count once, in the outermost owner.
        if self._depth:
            yield
            return
        self._depth += 1
        start = time.perf_counter()
        try:
            yield
        finally:
            self._depth -= 1
            spent = time.perf_counter() - start
            self.by_callback[owner] += spent
            self.epoch_s += spent
            self.total_s += spent

    def take_epoch(self) -> float:
        """The seconds spent since the last call (one epoch's cost), and start counting the next."""
        spent, self.epoch_s = self.epoch_s, 0.0
        return spent

    def fit_seconds(self) -> float | None:
        return None if self.fit_start is None else time.perf_counter() - self.fit_start


_ACCOUNTS: weakref.WeakKeyDictionary[L.Trainer, CostAccount] = weakref.WeakKeyDictionary()


def cost_account(trainer: L.Trainer) -> CostAccount:
    """The trainer's account (created on first use)."""
    account = _ACCOUNTS.get(trainer)
    if account is None:
        account = _ACCOUNTS[trainer] = CostAccount()
    return account


def missing_speedups(tensorboard: bool) -> list[str]:
    """The optional extras that make the pictures cheaper and are not installed here.

    ``fast-png`` (ISA-L deflate) always counts; ``fast-tensorboard`` (the C CRC of event records) only when a
    TensorBoard logger writes. Without both, the demo's callbacks took 9.6-10.3% of training instead of
    about 5% (docs/benchmarks.md, "Callbacks").

    Example:
        >>> set(missing_speedups(tensorboard=True)) <= {"fast-png", "fast-tensorboard"}
        True
    """
    from lit_explain.render import png

    missing = [] if png.has_fast_deflate() else ["fast-png"]
    if tensorboard and importlib.util.find_spec("crc32c") is None:
        missing.append("fast-tensorboard")
    return missing


def cost_line(
    training_thread_s: float,
    fit_s: float | None,
    background_s: float,
    inline: bool = False,
    missing: Sequence[str] = (),
) -> str:
    """The end-of-fit summary; ``inline``: the pictures were drawn on the training thread (no spare core);
    ``missing``: speed-up extras not installed (:func:`missing_speedups`), named with the command that adds them.

    Example:
        >>> cost_line(1.25, 50.0, 3.5)
        'explainability: 1.2 s on the training thread (2.5% of training), 3.5 s in the background'
        >>> cost_line(1.25, 50.0, 0.0, inline=True)
        'explainability: 1.2 s on the training thread (2.5% of training; pictures drawn there too: no spare CPU core)'
        >>> cost_line(1.25, 50.0, 3.5, missing=["fast-png"]).split("; ")[-1]
        "cheaper pictures: pip install 'lit_explain[fast-png]' (with both speed-ups the demo's cost halves)"
    """
    share = f"{100 * training_thread_s / fit_s:.1f}% of training" if fit_s else ""
    if inline:
        where = "; ".join(x for x in (share, "pictures drawn there too: no spare CPU core") if x)
        line = f"explainability: {training_thread_s:.1f} s on the training thread ({where})"
    else:
        share = f" ({share})" if share else ""
        line = (
            f"explainability: {training_thread_s:.1f} s on the training thread{share}, "
            f"{background_s:.1f} s in the background"
        )
    if missing:
        extras = ",".join(missing)
        line += f"; cheaper pictures: pip install 'lit_explain[{extras}]' (with both speed-ups the demo's cost halves)"
    return line
