"""Failures: logged with a traceback under a request id the client also gets; one bad request fails alone."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from serve_helpers import b64, png_bytes

from lit_explain.serve import ServeSettings, create_app

POISON_SIZE = (13, 13)  # the one request whose image makes the whole batch's explain fail
SECRET = "internal detail: tensor at 0x7f00 on worker 3"


@pytest.fixture
def poisoned(serve_explainer, monkeypatch):
    """The explainer, whose batched explain raises whenever the poisoned image is in the batch."""
    real = serve_explainer.explain_prepared
    calls: list[tuple[int, bool]] = []

    def explain_prepared(prepared, *args, **kwargs):
        has_poison = any(p.original_size == POISON_SIZE for p in prepared)
        calls.append((len(prepared), has_poison))
        if has_poison:
            raise RuntimeError(SECRET)
        return real(prepared, *args, **kwargs)

    monkeypatch.setattr(serve_explainer, "explain_prepared", explain_prepared)
    return calls


def test_one_poisoned_request_in_a_batch_of_8_fails_alone(serve_explainer, poisoned, caplog):
    # A long wait window, so the 8 concurrent requests are collected into one batch.
    settings = ServeSettings(max_batch=8, max_wait_ms=3000)
    images = [png_bytes(seed=i) for i in range(7)] + [png_bytes(POISON_SIZE, seed=99)]
    caplog.set_level(logging.INFO, logger="lit_explain")
    with TestClient(create_app(serve_explainer, settings), raise_server_exceptions=False) as client:
        with ThreadPoolExecutor(8) as pool:
            responses = list(
                pool.map(lambda im: client.post("/predict_with_gradcam", json={"image": b64(im)}), images)
            )
        health = client.get("/health").json()["batching"]

    assert [r.status_code for r in responses] == [200] * 7 + [500]
    assert all(r.json()["gradcam_overlay"] for r in responses[:7])
    # The poison was batched with others, that batch failed, and then each request ran alone.
    assert poisoned[0][1] and poisoned[0][0] > 1, poisoned
    assert health["isolated_failures"] >= 1 and health["items"] == 8

    failed = responses[7]
    rid = failed.headers["X-Request-ID"]
    assert failed.json() == {"error": "internal error; the server log has the details", "request_id": rid}
    assert SECRET not in failed.text and "RuntimeError" not in failed.text
    # ...while the log names the request and keeps the traceback.
    logged = [r for r in caplog.records if r.levelno == logging.ERROR and rid in r.getMessage()]
    assert len(logged) == 1, [r.getMessage() for r in caplog.records]
    record = logged[0]
    assert record.name == "lit_explain.serve" and "POST /predict_with_gradcam" in record.getMessage()
    assert record.exc_info is not None and str(record.exc_info[1]) == SECRET
    assert "Traceback" in caplog.text and SECRET in caplog.text


def test_client_errors_are_logged_as_one_line_with_the_request_id(serve_explainer, caplog):
    caplog.set_level(logging.INFO, logger="lit_explain")
    with TestClient(create_app(serve_explainer, ServeSettings(max_batch=1))) as client:
        r = client.post("/predict_with_gradcam", json={"image": "@@@"})
        echoed = client.get("/health", headers={"X-Request-ID": "trace-42"})
        refused = client.get("/health", headers={"X-Request-ID": "bad id\twith spaces" + "x" * 100})
    rid = r.json()["request_id"]
    assert r.status_code == 400 and r.headers["X-Request-ID"] == rid and len(rid) == 16
    lines = [rec for rec in caplog.records if rid in rec.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO and lines[0].exc_info is None
    assert "-> 400: field 'image' is not valid base64" in lines[0].getMessage()
    # A client's own short id is kept (to follow a request through proxies); anything else is replaced.
    assert echoed.headers["X-Request-ID"] == "trace-42"
    assert refused.headers["X-Request-ID"] != "" and "bad" not in refused.headers["X-Request-ID"]


def test_a_failing_answer_fails_only_its_request(serve_explainer, monkeypatch):
    """An error while building one answer (after a successful batch) reaches that request only."""
    from lit_explain.serve import service as service_module

    real = service_module._b64_png
    seen = {"n": 0}

    def flaky(image, level):
        seen["n"] += 1
        if seen["n"] == 1:
            raise ValueError("cannot encode")
        return real(image, level)

    monkeypatch.setattr(service_module, "_b64_png", flaky)
    with (
        TestClient(
            create_app(serve_explainer, ServeSettings(max_batch=4, max_wait_ms=2000)),
            raise_server_exceptions=False,
        ) as client,
        ThreadPoolExecutor(4) as pool,
    ):
        statuses = sorted(
            pool.map(
                lambda i: (
                    client.post("/predict_with_gradcam", json={"image": b64(png_bytes(seed=i))}).status_code
                ),
                range(4),
            )
        )
    assert statuses == [200, 200, 200, 500]


def test_an_unwritable_low_confidence_log_does_not_fail_the_request(serve_explainer, tmp_path, caplog):
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    settings = ServeSettings(max_batch=1, log_below=1.0, log_dir=blocker / "log")
    caplog.set_level(logging.INFO, logger="lit_explain")
    with TestClient(create_app(serve_explainer, settings)) as client:
        r = client.post("/predict_with_gradcam", json={"image": b64(png_bytes())})
        others = [client.get("/health"), client.post("/analyze_class", json={"image": b64(png_bytes())})]
    assert r.status_code == 200 and r.json()["gradcam_overlay"] and "logged" not in r.json()
    assert r.json()["low_confidence_log_error"] == "the record could not be written; the server log has why"
    # The server's paths stay in the server log: no response (body or headers) names the folder.
    for response in [r, *others]:
        assert "afile" not in response.text and str(tmp_path) not in response.text
        assert not any(str(tmp_path) in value for value in response.headers.values())
    warned = [rec for rec in caplog.records if rec.levelno == logging.WARNING]
    assert len(warned) == 1 and r.headers["X-Request-ID"] in warned[0].getMessage()
    assert "afile" in warned[0].getMessage()
    assert blocker.read_text() == "not a folder"
