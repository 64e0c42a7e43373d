"""Malformed request bodies: every one is a JSON 4xx naming the problem, never a 500; echoed input is cut short."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from serve_helpers import b64, png_bytes

from lit_explain.serve import ServeSettings, create_app
from lit_explain.serve.errors import shorten

IMAGE = b64(png_bytes())


@pytest.fixture(scope="module")
def client(serve_explainer):
    # raise_server_exceptions=False: a 500 comes back as a response, so the status check below sees it.
    app = create_app(serve_explainer, ServeSettings(max_bytes=2_000_000, max_batch=1))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def post(client: TestClient, path: str, body: bytes):
    return client.post(path, content=body, headers={"Content-Type": "application/json"})


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        # Python refuses to convert integers over 4300 digits (ValueError, not a JSONDecodeError)
        (b'{"image": "x", "top_k": ' + b"9" * 5000 + b"}", 400, "integer of more than 4,300 digits"),
        (b"[" * 100_000 + b"]" * 100_000, 400, "nested too deeply"),  # RecursionError in the parser
        (b'{"image": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_001, 400, "nested too deeply"),
        (b'{"image": "\xff\xfe"}', 400, "not UTF-8"),
        (b'{"image": "abc"', 400, "not valid JSON"),
        (b"", 400, "not valid JSON"),
        (b"null", 422, "got null"),
        (b'"a string"', 422, "got a string"),
        (b"3.5", 422, "got a number"),
        (json.dumps({"top_k": 3}).encode(), 422, "field 'image' must be a non-empty base64 string"),
        (json.dumps({"image": ["a", "b"]}).encode(), 422, "field 'image' must be"),
        (json.dumps({"image": ""}).encode(), 422, "field 'image' must be"),
        (json.dumps({"image": "data:image/png,abc"}).encode(), 400, "without ';base64,'"),
        (json.dumps({"image": "not base64!"}).encode(), 400, "not valid base64"),
        (json.dumps({"image": b64(b"\0")}).encode(), 422, "not a readable image"),
        (json.dumps({"image": b64(b"%PDF-1.4 not an image")}).encode(), 422, "not a readable image"),
        (json.dumps({"image": b64(png_bytes()[:60])}).encode(), 422, "not a readable image"),  # truncated
        (json.dumps({"image": IMAGE, "top_k": "3"}).encode(), 422, "got '3'"),
        (json.dumps({"image": IMAGE, "top_k": True}).encode(), 422, "field 'top_k'"),
        (json.dumps({"image": IMAGE, "top_k": 2.0}).encode(), 422, "field 'top_k'"),
        (json.dumps({"image": IMAGE, "top_k": 21}).encode(), 422, "from 1 to 20"),
        (b'{"image": "x", "top_k": NaN}', 422, "got nan"),
    ],
)
def test_malformed_bodies_are_4xx(client, body, status, message):
    r = post(client, "/predict_with_gradcam", body)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
    assert r.json()["request_id"] == r.headers["X-Request-ID"]


VALID = {"class_name": ["circle", 0], "class_index": [0], "top_k": [7], "image": []}


@pytest.mark.parametrize("field", ["image", "top_k", "class_name", "class_index"])
def test_every_json_type_in_every_field_is_a_4xx(client, field):
    values = [None, True, -1, 0, 7, 1.5, 10**100, "", "x", "circle", [], [1], {}, {"a": [1]}]
    refused = 0
    for value in values:
        payload = {"image": IMAGE, field: value}
        if field in ("image", "top_k"):
            payload["class_name"] = "circle"
        r = client.post("/analyze_class", json=payload)
        if r.status_code == 200:
            assert (type(value), value) in [(type(v), v) for v in VALID[field]], (field, value)
            continue
        refused += 1
        assert 400 <= r.status_code < 500 and r.json()["error"], (field, value, r.text)
    assert refused == len(values) - len(VALID[field])


def test_a_huge_unknown_class_name_is_not_echoed_in_full(client):
    name = "z" * 1_000_000
    r = client.post("/analyze_class", json={"image": IMAGE, "class_name": name})
    assert r.status_code == 404
    error = r.json()["error"]
    assert error.startswith("unknown class name 'zzzz") and "(1,000,000 characters)" in error
    assert len(r.content) < 2_000  # the 1 MB name cost at most ~100 characters of the answer
    assert r.json()["valid_classes"][:2] == ["circle", "square"]


def test_huge_values_in_other_fields_are_cut_short(client):
    big_index = 10**4000  # under Python's 4300-digit limit, so it parses
    r = post(client, "/analyze_class", json.dumps({"image": IMAGE, "class_index": big_index}).encode())
    assert r.status_code == 404 and "is out of range" in r.json()["error"]
    assert len(r.json()["error"]) < 400
    r = client.post("/predict_with_gradcam", json={"image": IMAGE, "top_k": ["k"] * 100_000})
    assert r.status_code == 422 and len(r.json()["error"]) < 300 and r.json()["error"].endswith("…")


def test_shorten():
    assert shorten("abc") == "'abc'"
    assert shorten("z" * 1000, limit=10) == "'zzzzzzzzzz'… (1,000 characters)"
    assert shorten(list(range(1000)), limit=20) == "[0, 1, 2, 3, 4, 5, …"
    assert len(shorten(list(range(1000)), limit=20)) == 20
    nested: list = []
    for _ in range(100_000):
        nested = [nested]
    assert shorten(nested) == "<a list too large to show>"  # repr would recurse too deeply


def test_a_client_that_disconnects_mid_body_is_a_4xx_not_a_server_error():
    import asyncio

    from starlette.requests import Request

    from lit_explain.serve.bodies import read_json
    from lit_explain.serve.errors import ApiError

    messages = iter([{"type": "http.request", "body": b'{"image": ', "more_body": True}])

    async def receive() -> dict:
        return next(messages, {"type": "http.disconnect"})

    request = Request({"type": "http", "method": "POST", "path": "/", "headers": []}, receive)
    with pytest.raises(ApiError) as caught:
        asyncio.run(read_json(request, 1000))
    assert caught.value.status == 400 and "disconnected" in caught.value.message


def test_both_class_fields_at_once_are_refused(client):
    r = client.post("/analyze_class", json={"image": IMAGE, "class_name": "circle", "class_index": 0})
    assert r.status_code == 422 and "not both" in r.json()["error"]
