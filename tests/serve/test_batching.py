"""MicroBatcher: concurrent submissions share calls, results and errors go to the right caller."""

from __future__ import annotations

import asyncio
import threading

import pytest

from lit_explain.serve import MicroBatcher


def test_concurrent_requests_are_batched_and_answered_in_order():
    calls: list[list[int]] = []

    def run(items: list[int]) -> list[int]:
        calls.append(list(items))
        return [x * 10 for x in items]

    async def scenario() -> list[int]:
        batcher = MicroBatcher(run, max_batch=4, max_wait_ms=50)
        batcher.start()
        out = await asyncio.gather(*(batcher.submit(i) for i in range(10)))
        await batcher.stop()
        assert batcher.stats.items == 10 and batcher.stats.largest == 4
        return out

    assert asyncio.run(scenario()) == [i * 10 for i in range(10)]
    assert [len(c) for c in calls] == [4, 4, 2]


def test_max_batch_one_runs_one_at_a_time_in_one_thread():
    threads: set[int] = set()
    active = 0
    peak = 0
    lock = threading.Lock()

    def run(items: list[int]) -> list[int]:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        threads.add(threading.get_ident())
        with lock:
            active -= 1
        return items

    async def scenario() -> None:
        batcher = MicroBatcher(run, max_batch=1, max_wait_ms=0)
        assert await asyncio.gather(*(batcher.submit(i) for i in range(6))) == list(range(6))
        assert batcher.stats.batches == 6
        await batcher.stop()

    asyncio.run(scenario())
    assert peak == 1  # the model is never used by two threads at once


def test_errors_reach_only_their_request_and_the_batcher_survives():
    def run(items: list[int]) -> list[object]:
        if 99 in items and len(items) == 1:
            raise RuntimeError("whole batch failed")
        return [ValueError(f"bad {x}") if x < 0 else x for x in items]

    async def scenario() -> None:
        batcher = MicroBatcher(run, max_batch=8, max_wait_ms=20)
        results = await asyncio.gather(
            batcher.submit(1), batcher.submit(-2), batcher.submit(3), return_exceptions=True
        )
        assert results[0] == 1 and results[2] == 3
        assert isinstance(results[1], ValueError) and "bad -2" in str(results[1])
        with pytest.raises(RuntimeError, match="whole batch"):
            await batcher.submit(99)
        assert await batcher.submit(5) == 5
        await batcher.stop()

    asyncio.run(scenario())


def test_invalid_settings():
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(lambda xs: xs, max_batch=0)
    with pytest.raises(ValueError, match="max_wait_ms"):
        MicroBatcher(lambda xs: xs, max_wait_ms=-1)


def test_one_poisoned_item_in_a_batch_of_8_fails_alone():
    calls: list[list[int]] = []

    def run(items: list[int]) -> list[int]:
        calls.append(list(items))
        if 13 in items:
            raise RuntimeError("poisoned batch")
        return [x * 10 for x in items]

    items = [1, 2, 3, 13, 5, 6, 7, 8]

    async def scenario() -> tuple[list[object], object]:
        batcher = MicroBatcher(run, max_batch=8, max_wait_ms=1000)
        results = await asyncio.gather(*(batcher.submit(i) for i in items), return_exceptions=True)
        await batcher.stop()
        return results, batcher.stats

    results, stats = asyncio.run(scenario())
    assert calls[0] == items  # one batch of 8 ...
    assert calls[1:] == [[i] for i in items]  # ... that failed, so each item ran alone
    assert [r for r in results if not isinstance(r, Exception)] == [10, 20, 30, 50, 60, 70, 80]
    assert isinstance(results[3], RuntimeError) and str(results[3]) == "poisoned batch"
    assert (stats.batches, stats.items, stats.isolated) == (1, 8, 1)
