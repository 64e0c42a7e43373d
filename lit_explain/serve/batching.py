"""Request micro-batching: concurrent requests share one forward/backward pass.

Requests wait in an asyncio queue; a single worker takes the first one, collects more for up to
``max_wait_ms`` or until ``max_batch`` items, runs the batch function once in a worker thread (the model is
never used by two threads at once) and resolves each request's future with its own result or exception.
A batch that fails as a whole is re-run one request at a time, so one bad request cannot fail the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

logger = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class BatchStats:
    """Counters for ``/health``: how many batches ran and how full they were."""

    batches: int = 0
    items: int = 0
    largest: int = 0
    busy_s: float = 0.0
    isolated: int = 0  # batches that failed as a whole and were re-run one item at a time

    def as_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "items": self.items,
            "mean_batch": round(self.items / self.batches, 3) if self.batches else 0.0,
            "largest_batch": self.largest,
            "busy_s": round(self.busy_s, 3),
            "isolated_failures": self.isolated,
        }


class MicroBatcher(Generic[Item, Result]):
    """Collect concurrent ``submit`` calls into batches for ``run_batch(items) -> results``.

    ``run_batch`` returns one result per item, or an ``Exception`` instance for an item that failed on
    its own (it is raised to that request only). If ``run_batch`` itself raises for a batch of several
    items, each item is run again alone, so a request that poisons the batch fails alone and the others
    are answered (``run_batch`` must therefore be safe to call again after it raised). Start it inside
    the running event loop (``start``), stop it with ``stop``.

    Args:
        run_batch: blocking function over a list of items, run in a worker thread.
        max_batch: most items per call (1 turns batching off).
        max_wait_ms: how long the first item waits for company.

    Example:
        >>> batcher = MicroBatcher(lambda xs: [x * 2 for x in xs], max_batch=8, max_wait_ms=5)
        >>> async def demo():
        ...     batcher.start()
        ...     out = await asyncio.gather(*(batcher.submit(i) for i in range(3)))
        ...     await batcher.stop()
        ...     return out
        >>> asyncio.run(demo())
        [0, 2, 4]
    """

    def __init__(
        self,
        run_batch: Callable[[list[Item]], Sequence[Result | Exception]],
        max_batch: int = 8,
        max_wait_ms: float = 5.0,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.stats = BatchStats()
        self._queue: asyncio.Queue[tuple[Item, asyncio.Future[Result]]] | None = None
        self._worker: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done()

    def start(self) -> None:
        """Start the worker task on the running loop."""
        if self.running:
            return
        self._queue = asyncio.Queue()
        self._worker = asyncio.get_running_loop().create_task(self._loop(), name="micro-batcher")

    async def stop(self) -> None:
        """Cancel the worker; requests still queued get a cancellation."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        if self._queue is not None:
            while not self._queue.empty():
                _, future = self._queue.get_nowait()
                if not future.done():
                    future.cancel()

    async def submit(self, item: Item) -> Result:
        """Queue ``item`` and wait for its result."""
        if not self.running:
            self.start()
        assert self._queue is not None
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        await self._queue.put((item, future))
        return await future

    async def _collect(self) -> list[tuple[Item, asyncio.Future[Result]]]:
        assert self._queue is not None
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch:
            # Take what is already waiting without sleeping, then wait out the rest of the window.
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return batch

    async def _run(self, items: list[Item]) -> Sequence[Result | Exception]:
        results = await asyncio.to_thread(self.run_batch, items)
        if len(results) != len(items):
            raise RuntimeError(f"run_batch returned {len(results)} results for {len(items)} items")
        return results

    async def _run_isolated(self, items: list[Item]) -> list[Result | Exception]:
        """Run ``items`` as one batch; if the whole batch fails, run each alone so one bad item fails alone."""
        try:
            return list(await self._run(items))
        except Exception as exc:
            if len(items) == 1:
                return [exc]
            logger.warning(
                "a batch of %d failed (%s); running its requests one by one",
                len(items),
                type(exc).__name__,
                exc_info=exc,
            )
        self.stats.isolated += 1
        results: list[Result | Exception] = []
        for item in items:
            try:
                results.extend(await self._run([item]))
            except Exception as exc:
                results.append(exc)
        return results

    async def _loop(self) -> None:
        while True:
            batch = await self._collect()
            live = [(item, fut) for item, fut in batch if not fut.done()]  # a client may have gone away
            if not live:
                continue
            start = time.perf_counter()
            results = await self._run_isolated([item for item, _ in live])
            self.stats.batches += 1
            self.stats.items += len(live)
            self.stats.largest = max(self.stats.largest, len(live))
            self.stats.busy_s += time.perf_counter() - start
            for (_, future), result in zip(live, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)
