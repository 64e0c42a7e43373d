"""The shared pixel budget: concurrent decodes never hold more pixels than it allows, in arrival order."""

from __future__ import annotations

import asyncio
import io
import platform
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from serve_helpers import b64, png_bytes

from lit_explain.serve import PixelBudget, ServeSettings, create_app
from lit_explain.serve.decoding import release_memory


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_reservation_waits_until_its_pixels_fit():
    async def scenario() -> None:
        budget = PixelBudget(100)
        entered = asyncio.Event()
        release_first = asyncio.Event()

        async def first() -> None:
            async with budget.reserve(60):
                await release_first.wait()

        async def second() -> None:
            async with budget.reserve(60):
                entered.set()

        tasks = [asyncio.create_task(first()), asyncio.create_task(second())]
        await settle()
        assert budget.in_use == 60 and not entered.is_set()  # 60 + 60 > 100
        release_first.set()
        await asyncio.gather(*tasks)
        assert entered.is_set() and budget.in_use == 0 and budget.peak == 60 and budget.waited == 1

    asyncio.run(scenario())


def test_first_come_first_served_and_oversized_requests_run_alone():
    async def scenario() -> list[str]:
        budget = PixelBudget(100)
        order: list[str] = []
        hold = asyncio.Event()

        async def job(name: str, pixels: int, wait: asyncio.Event | None = None) -> None:
            async with budget.reserve(pixels):
                order.append(name)
                assert budget.in_use <= budget.capacity
                if wait is not None:
                    await wait.wait()

        a = asyncio.create_task(job("a", 50, hold))
        await settle()
        big = asyncio.create_task(job("big", 10_000))  # larger than the budget: waits for all of it
        await settle()
        small = asyncio.create_task(job("small", 10))  # would fit now, but must not overtake "big"
        await settle()
        assert order == ["a"] and budget.in_use == 50
        hold.set()
        await asyncio.gather(a, big, small)
        assert budget.peak == 100 and budget.in_use == 0
        return order

    assert asyncio.run(scenario()) == ["a", "big", "small"]


def test_a_cancelled_waiter_gives_way():
    async def scenario() -> None:
        budget = PixelBudget(100)
        hold = asyncio.Event()

        async def job(pixels: int, wait: asyncio.Event | None = None) -> None:
            async with budget.reserve(pixels):
                if wait is not None:
                    await wait.wait()

        a = asyncio.create_task(job(70, hold))
        await settle()
        blocked = asyncio.create_task(job(80))  # waits behind "a" ...
        await settle()
        behind = asyncio.create_task(job(30))  # ... and "behind" waits behind it (first come, first served)
        await settle()
        blocked.cancel()
        await asyncio.gather(blocked, return_exceptions=True)
        await asyncio.wait_for(behind, timeout=5)  # 70 + 30 fit once the cancelled head is gone
        hold.set()
        await a
        assert budget.in_use == 0 and not budget._waiters

    asyncio.run(scenario())


def test_invalid_budget():
    with pytest.raises(ValueError, match="pixel budget"):
        PixelBudget(0)


class CountingPreprocess:
    """Wraps the explainer's preprocessor and records how many pixels are being decoded at once.

    An image larger than the whole budget counts as the budget (it must be decoded alone).
    """

    def __init__(self, inner, budget: int) -> None:
        self.inner, self.budget = inner, budget
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0
        self.alone: dict[int, bool] = {}  # pixels of each decode -> nothing else was decoding then

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def __call__(self, raw: bytes, **kwargs):
        with Image.open(io.BytesIO(raw)) as image:
            pixels = image.width * image.height
        counted = min(pixels, self.budget)
        with self.lock:
            self.alone[pixels] = self.now == 0
            self.now += counted
            self.peak = max(self.peak, self.now)
        try:
            time.sleep(0.05)  # hold the pixels, so requests that were let in together overlap
            return self.inner(raw, **kwargs)
        finally:
            with self.lock:
                self.now -= counted


def test_concurrent_requests_never_decode_more_pixels_than_the_budget(serve_explainer, monkeypatch):
    budget = 3 * 120 * 100  # three of the small images at once
    counting = CountingPreprocess(serve_explainer.preprocess, budget)
    monkeypatch.setattr(serve_explainer, "preprocess", counting)
    settings = ServeSettings(max_batch=8, max_wait_ms=5, decode_budget=budget)
    images = [png_bytes((120, 100), seed=i) for i in range(11)] + [png_bytes((300, 200), seed=11)]
    with TestClient(create_app(serve_explainer, settings)) as client, ThreadPoolExecutor(12) as pool:
        responses = list(
            pool.map(lambda im: client.post("/predict_with_gradcam", json={"image": b64(im)}), images)
        )
        decoding = client.get("/health").json()["decoding"]
    assert [r.status_code for r in responses] == [200] * 12
    assert counting.peak <= budget, counting.peak  # what the decoder really held at once
    assert decoding["peak"] <= budget and decoding["in_use"] == 0 and decoding["capacity"] == budget
    assert counting.alone[300 * 200]  # larger than the whole budget: decoded while nothing else was


def test_too_large_images_are_refused_without_waiting_for_the_budget(serve_explainer, monkeypatch):
    monkeypatch.setattr(serve_explainer.preprocess, "max_pixels", 50_000)
    app = create_app(serve_explainer, ServeSettings(decode_budget=10_000))
    with TestClient(app) as client:
        r = client.post("/predict_with_gradcam", json={"image": b64(png_bytes((300, 200)))})
    assert r.status_code == 413 and "300x200 = 60,000 pixels" in r.json()["error"]
    assert app.state.budget.peak == 0  # refused from the header: nothing was reserved


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_release_memory_uses_malloc_trim():
    assert release_memory() is True


def test_memory_is_handed_back_after_a_large_decode_only(serve_explainer, monkeypatch):
    from lit_explain.serve import decoding

    calls: list[int] = []
    monkeypatch.setattr(decoding, "release_memory", lambda: calls.append(1) or True)
    large = io.BytesIO()
    Image.new("RGB", (2100, 2000)).save(large, format="PNG")  # 4.2 megapixels, a few KB
    with TestClient(create_app(serve_explainer, ServeSettings(max_batch=1))) as client:
        assert client.post("/predict_with_gradcam", json={"image": b64(png_bytes())}).status_code == 200
        assert calls == []
        r = client.post("/predict_with_gradcam", json={"image": b64(large.getvalue())})
        assert r.status_code == 200 and calls == [1]


def test_images_converted_at_full_size_count_four_times(serve_explainer):
    app = create_app(serve_explainer, ServeSettings(max_batch=1))
    with TestClient(app) as client:
        assert (
            client.post("/predict_with_gradcam", json={"image": b64(png_bytes((100, 50)))}).status_code == 200
        )
        assert app.state.budget.peak == 100 * 50
        rgba = b64(png_bytes((100, 50), mode="RGBA"))  # composited onto white at full size, then shrunk
        assert client.post("/predict_with_gradcam", json={"image": rgba}).status_code == 200
        assert app.state.budget.peak == 4 * 100 * 50
