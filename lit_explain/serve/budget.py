"""A first-come-first-served counting semaphore for one event loop: the service's memory budgets.

The decode budget (:class:`~lit_explain.serve.decoding.PixelBudget`, pixels being decoded) and the body
budget (bytes of request bodies in flight, :mod:`lit_explain.serve.bodies`) are both one of these.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator


class Budget:
    """Units (pixels, bytes) that concurrent requests hold for a while; requests that do not fit wait.

    ``async with budget.reserve(n)`` waits until ``n`` more units fit, holds them inside the block and
    returns them on exit (also on errors and cancellation). A request larger than the whole budget waits
    until nothing else holds any, then runs alone. Waiters are served in arrival order, so a stream of
    small requests cannot starve a large one. With ``timeout``, a request that could not start within
    that many seconds leaves the queue and raises :class:`TimeoutError` (the caller answers 503).
    ``peak`` is the most units ever held at once.

    Args:
        capacity: units that may be held at once (>= 1).
        what: names the budget in errors, e.g. "pixel budget".

    Example:
        >>> budget = Budget(200_000_000, what="body budget")
        >>> async def handle(nbytes):
        ...     async with budget.reserve(nbytes, timeout=5.0):
        ...         return await read_body()  # doctest: +SKIP
    """

    def __init__(self, capacity: int, what: str = "budget") -> None:
        if capacity < 1:
            raise ValueError(f"the {what} must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self.in_use = 0
        self.peak = 0
        self.waited = 0  # reservations that had to wait
        self.timed_out = 0  # reservations that gave up waiting
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    def _grant(self, units: int) -> None:
        self.in_use += units
        self.peak = max(self.peak, self.in_use)

    def _wake(self) -> None:
        while self._waiters and self.in_use + self._waiters[0][0] <= self.capacity:
            units, future = self._waiters.popleft()
            if not future.done():  # skip waiters that were cancelled meanwhile
                self._grant(units)
                future.set_result(None)

    def _release(self, units: int) -> None:
        self.in_use -= units
        self._wake()

    async def _wait(self, need: int, timeout: float | None) -> None:
        self.waited += 1
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (need, future)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(timeout):
                await future
        except (asyncio.CancelledError, TimeoutError) as exc:
            if future.done() and not future.cancelled():
                self._release(need)  # granted just as the request was cancelled or timed out
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)
                self._wake()  # a cancelled head may have been blocking smaller requests
            if isinstance(exc, TimeoutError):
                self.timed_out += 1
            raise

    @contextlib.asynccontextmanager
    async def reserve(self, units: int, timeout: float | None = None) -> AsyncIterator[None]:
        """Hold ``units`` (at least 1, at most the whole budget) for the duration of the block.

        Raises :class:`TimeoutError` when they could not be had within ``timeout`` seconds (None: wait).
        """
        need = min(max(int(units), 1), self.capacity)
        if not self._waiters and self.in_use + need <= self.capacity:
            self._grant(need)
        else:
            await self._wait(need, timeout)
        try:
            yield
        finally:
            self._release(need)

    def as_dict(self) -> dict[str, int]:
        return {
            "capacity": self.capacity,
            "in_use": self.in_use,
            "peak": self.peak,
            "waited": self.waited,
            "timed_out": self.timed_out,
        }


__all__ = ["Budget"]
