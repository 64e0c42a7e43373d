"""The service's limits in-process: content type, CORS, the body budget, body deadline, log cap, settings."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from serve_helpers import b64, png_bytes
from starlette.requests import Request

from lit_explain.errors import ConfigError
from lit_explain.serve import ServeSettings, create_app
from lit_explain.serve.bodies import BodyReader, read_json
from lit_explain.serve.budget import Budget
from lit_explain.serve.errors import ApiError

BODY = json.dumps({"image": b64(png_bytes())}).encode()


@pytest.fixture(scope="module")
def client(serve_explainer):
    with TestClient(create_app(serve_explainer, ServeSettings(max_batch=1))) as c:
        yield c


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "text/plain; charset=utf-8",
        "application/x-www-form-urlencoded",
    ],
)
def test_a_body_not_declared_as_json_is_415(client, content_type):
    # text/plain and forms are what any web page may post cross-origin without a preflight (multipart
    # uploads are accepted, but only from no page or an allowed one: tests/serve/test_multipart.py).
    headers = {} if content_type is None else {"Content-Type": content_type}
    for path in ("/predict_with_gradcam", "/analyze_class"):
        r = client.post(path, content=BODY, headers=headers)
        assert r.status_code == 415, r.text
        assert "Content-Type: application/json" in r.json()["error"]


def test_json_with_parameters_is_accepted(client):
    r = client.post(
        "/predict_with_gradcam", content=BODY, headers={"Content-Type": "Application/JSON; charset=utf-8"}
    )
    assert r.status_code == 200, r.text


def test_no_cors_headers_by_default(client):
    origin = {"Origin": "http://evil.example"}
    r = client.post("/predict_with_gradcam", json={"image": b64(png_bytes())}, headers=origin)
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    preflight = client.options(
        "/predict_with_gradcam", headers={**origin, "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in preflight.headers
    assert not [
        name for name in client.get("/health", headers=origin).headers if name.startswith("access-control")
    ]


def test_cors_only_for_the_named_origin(serve_explainer):
    settings = ServeSettings(max_batch=1, cors_origin="http://localhost:3000")
    with TestClient(create_app(serve_explainer, settings)) as c:
        allowed = {"Origin": "http://localhost:3000"}
        preflight = c.options(
            "/predict_with_gradcam",
            headers={
                **allowed,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "http://localhost:3000"
        r = c.post("/predict_with_gradcam", json={"image": b64(png_bytes())}, headers=allowed)
        assert r.headers["access-control-allow-origin"] == "http://localhost:3000"
        assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
        bad = c.post(
            "/predict_with_gradcam", content=b"{", headers={**allowed, "Content-Type": "application/json"}
        )
        assert (
            bad.status_code == 400 and bad.headers["access-control-allow-origin"] == "http://localhost:3000"
        )
        other = c.post(
            "/predict_with_gradcam",
            json={"image": b64(png_bytes())},
            headers={"Origin": "http://evil.example"},
        )
        assert "access-control-allow-origin" not in other.headers


@pytest.mark.parametrize("origin", ["*", "localhost:3000", "http://localhost:3000/page", "null"])
def test_cors_origin_must_be_one_origin(origin):
    with pytest.raises(ConfigError, match="--cors_origin must be one web origin"):
        ServeSettings(cors_origin=origin)


def test_limits_are_checked():
    with pytest.raises(ConfigError, match="--body_budget must be >= 1"):
        ServeSettings(body_budget=0)
    with pytest.raises(ConfigError, match="--log_max_mb > 0"):
        ServeSettings(log_max_mb=0)
    with pytest.raises(ConfigError, match="--body_timeout_s, --header_timeout_s > 0"):
        ServeSettings(header_timeout_s=0)


def test_cli_reports_a_bad_origin_before_loading_the_model(tmp_path, capsys):
    from lit_explain.serve.cli import main as serve_main

    # The checkpoint does not exist: the origin is reported first, without loading anything.
    assert serve_main(["--ckpt_path", str(tmp_path / "missing.ckpt"), "--cors_origin", "*"]) == 2
    assert "--cors_origin must be one web origin" in capsys.readouterr().err


def test_concurrent_bodies_over_the_budget_get_503_with_retry_after(serve_explainer):
    body = json.dumps({"image": b64(png_bytes((200, 150)))}).encode()  # about 120 KB
    # One body fits in the budget at a time; the batcher holds each request for 400 ms (max_wait_ms),
    # so requests that arrive meanwhile give up after 50 ms of waiting.
    settings = ServeSettings(max_batch=4, max_wait_ms=400, body_budget=len(body) + 1000, body_wait_s=0.05)
    with TestClient(create_app(serve_explainer, settings)) as c, ThreadPoolExecutor(4) as pool:

        def post(_: int):
            return c.post("/predict_with_gradcam", content=body, headers={"Content-Type": "application/json"})

        responses = list(pool.map(post, range(4)))
        health = c.get("/health").json()["bodies"]
    statuses = sorted(r.status_code for r in responses)
    assert statuses[0] == 200 and 503 in statuses and set(statuses) <= {200, 503}, statuses
    for busy in (r for r in responses if r.status_code == 503):
        assert busy.headers["retry-after"] == "2"
        assert "body budget" in busy.json()["error"] and busy.json()["request_id"]
    assert health["peak"] <= health["capacity"] and health["timed_out"] == statuses.count(503)
    assert health["in_use"] == 0  # every reservation was given back, the refused ones included


def test_requests_wait_briefly_for_the_body_budget(serve_explainer):
    body = json.dumps({"image": b64(png_bytes((200, 150)))}).encode()
    settings = ServeSettings(max_batch=1, body_budget=len(body) + 1000, body_wait_s=30)
    with TestClient(create_app(serve_explainer, settings)) as c, ThreadPoolExecutor(4) as pool:

        def post(_: int):
            return c.post("/predict_with_gradcam", content=body, headers={"Content-Type": "application/json"})

        statuses = [r.status_code for r in pool.map(post, range(4))]
        health = c.get("/health").json()["bodies"]
    assert statuses == [200] * 4 and health["waited"] >= 1 and health["peak"] == len(body)


def fake_request(
    chunks: list[bytes], headers: dict[str, str], delay_s: float = 0.0
) -> tuple[Request, list[int]]:
    """A Starlette request whose body arrives in ``chunks`` (``delay_s`` apart); counts the chunks pulled."""
    pulled = [0]
    queue = iter(chunks)

    async def receive() -> dict:
        await asyncio.sleep(delay_s)
        chunk = next(queue, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled[0] += 1
        return {"type": "http.request", "body": chunk, "more_body": True}

    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "method": "POST", "path": "/", "headers": raw}, receive), pulled


def test_the_budget_is_reserved_before_any_of_the_body_is_read():
    async def scenario() -> None:
        budget = Budget(1000, what="body budget")
        reader = BodyReader(max_bytes=5000, budget=budget, wait_s=10, timeout_s=10)
        body = b'{"image": "' + b"A" * 600 + b'"}'
        json_headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
        first, _ = fake_request([body], json_headers)
        second, pulled = fake_request([body[:100], body[100:]], json_headers)
        async with reader.json(first) as payload:
            assert budget.in_use == len(body) and len(payload["image"]) == 600
            held = reader.json(second)
            waiting = asyncio.create_task(held.__aenter__())
            await asyncio.sleep(0.1)
            assert not waiting.done() and pulled[0] == 0  # 2 x 614 > 1000: waits, nothing buffered
        assert (await waiting)["image"] == "A" * 600 and pulled[0] == 2
        await held.__aexit__(None, None, None)
        assert budget.in_use == 0
        # A chunked upload (no Content-Length) is charged the most it may be: --max_bytes, capped at the budget.
        chunked, _ = fake_request([body], {"Content-Type": "application/json"})
        async with reader.json(chunked):
            assert budget.in_use == 1000

    asyncio.run(scenario())


def test_a_reservation_that_waits_too_long_times_out_and_leaves_the_queue():
    async def scenario() -> None:
        budget = Budget(100)
        async with budget.reserve(80):
            with pytest.raises(TimeoutError):
                async with budget.reserve(50, timeout=0.05):
                    pass
            assert not budget._waiters and budget.timed_out == 1
        async with budget.reserve(100, timeout=0.05):  # nothing left behind in the queue
            assert budget.in_use == 100

    asyncio.run(scenario())


def test_a_slow_body_is_a_408_that_closes_the_connection():
    async def scenario() -> None:
        request, pulled = fake_request([b"x"] * 1000, {"Content-Type": "application/json"}, delay_s=0.05)
        start = time.monotonic()
        with pytest.raises(ApiError) as caught:
            await read_json(request, 10_000, timeout_s=0.3)
        assert time.monotonic() - start < 1.0 and 3 <= pulled[0] <= 7
        assert caught.value.status == 408 and caught.value.headers == {"Connection": "close"}
        assert "--body_timeout_s" in caught.value.message

    asyncio.run(scenario())


def test_the_low_confidence_log_stops_at_its_cap_with_one_warning(serve_explainer, tmp_path, caplog):
    log_dir = tmp_path / "log"
    caplog.set_level(logging.INFO, logger="lit_explain")
    # Each record holds the ~15 KB request image, three small PNGs and record.json: about 40 KB.
    settings = ServeSettings(max_batch=1, log_below=1.0, log_dir=log_dir, log_max_mb=0.1)
    with TestClient(create_app(serve_explainer, settings)) as c:
        bodies = [
            c.post("/predict_with_gradcam", json={"image": b64(png_bytes(seed=i))}).json() for i in range(6)
        ]
        health = c.get("/health").json()
    logged = [b for b in bodies if "logged" in b]
    assert 1 <= len(logged) < 6 and bodies[0].get("logged") and "logged" not in bodies[-1]
    assert health["low_confidence_logged"] == len(logged) and health["low_confidence_log_full"] is True
    stored = sum(p.stat().st_size for p in log_dir.rglob("*") if p.is_file())
    assert stored <= 100_000 and len(list(log_dir.iterdir())) == len(logged)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "--log_max_mb" in warned[0]
    # A restarted server counts what the folder already holds: still full, nothing more written.
    with TestClient(create_app(serve_explainer, settings)) as c:
        again = c.post("/predict_with_gradcam", json={"image": b64(png_bytes(seed=9))}).json()
    assert "logged" not in again and len(list(log_dir.iterdir())) == len(logged)
