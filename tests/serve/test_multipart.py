"""Multipart uploads (``curl -F file=@x.jpg``) are answered like JSON bodies, under the same limits, only
from no web page or an allowed one; /docs describes both body kinds."""

from __future__ import annotations

import asyncio
import json

import pytest
from fastapi.testclient import TestClient
from serve_helpers import b64, png_bytes
from starlette.requests import Request

from lit_explain.serve import ServeSettings, create_app
from lit_explain.serve.bodies import BodyReader
from lit_explain.serve.budget import Budget
from lit_explain.serve.errors import ApiError
from lit_explain.serve.multipart import parse_multipart

PNG = png_bytes()


@pytest.fixture(scope="module")
def client(serve_explainer):
    settings = ServeSettings(max_batch=1, max_bytes=200_000, cors_origin="http://localhost:3000")
    with TestClient(create_app(serve_explainer, settings)) as c:
        yield c


def test_a_multipart_upload_is_answered_like_json(client):
    as_json = client.post("/predict_with_gradcam", json={"image": b64(PNG), "top_k": 3})
    upload = client.post(
        "/predict_with_gradcam", files={"file": ("x.png", PNG, "image/png")}, data={"top_k": "3"}
    )
    assert upload.status_code == 200, upload.text
    first, second = as_json.json(), upload.json()
    assert second["prediction"] == first["prediction"] and len(second["top_k"]) == 3
    assert second["gradcam_overlay"] == first["gradcam_overlay"]


def test_analyze_class_takes_a_class_name_field(client):
    r = client.post("/analyze_class", files={"file": ("x.png", PNG)}, data={"class_name": "star"})
    assert r.status_code == 200, r.text and r.json()["class_name"] == "star"
    missing = client.post("/analyze_class", files={"file": ("x.png", PNG)})
    assert missing.status_code == 422 and "class_name" in missing.json()["error"]


@pytest.mark.parametrize(
    ("files", "data", "status", "words"),
    [
        ({"other": ("x.png", PNG)}, {}, 422, "no 'file' field"),
        ({"file": ("x.png", b"")}, {}, 422, "empty"),
        ({"file": ("x.png", b"not an image")}, {}, 422, "image"),
        ({"file": ("x.png", PNG)}, {"top_k": "many"}, 422, "top_k"),
        ({"file": ("x.png", PNG + bytes(250_000))}, {}, 413, "exceeds the limit of 200,000 bytes"),
    ],
)
def test_bad_uploads_say_what_was_wrong(client, files, data, status, words):
    r = client.post("/predict_with_gradcam", files=files, data=data)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]


def test_malformed_multipart_bodies_are_400(client):
    for content_type, body in [
        ("multipart/form-data", b"--x\r\n"),  # no boundary parameter
        ("multipart/form-data; boundary=x", b"no boundary in here"),
        ("multipart/form-data; boundary=x", b'--x\r\nContent-Disposition: form-data; name="file"\r\n\r\nab'),
        ("multipart/form-data; boundary=x", b"--x\r\nContent-Type: image/png\r\n\r\nab\r\n--x--\r\n"),
    ]:
        r = client.post("/predict_with_gradcam", content=body, headers={"Content-Type": content_type})
        assert r.status_code == 400, r.text
        assert "multipart" in r.json()["error"] or "boundary" in r.json()["error"]


def test_text_plain_is_still_415(client):
    r = client.post("/predict_with_gradcam", content=b"x", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and "multipart/form-data" in r.json()["error"]


def test_uploads_only_from_no_page_cors_origin_or_the_server_itself(client):
    def upload(origin: str) -> int:
        files = {"file": ("x.png", PNG)}
        return client.post("/predict_with_gradcam", files=files, headers={"Origin": origin}).status_code

    assert upload("http://localhost:3000") == 200  # --cors_origin
    assert upload("http://testserver") == 200  # the server's own page
    refused = client.post(
        "/predict_with_gradcam", files={"file": ("x.png", PNG)}, headers={"Origin": "http://evil.example"}
    )
    assert refused.status_code == 403 and "--cors_origin" in refused.json()["error"]
    assert upload("null") == 403
    # JSON from any origin is still answered (browsers preflight it, and the preflight fails).
    other = client.post(
        "/predict_with_gradcam", json={"image": b64(PNG)}, headers={"Origin": "http://evil.example"}
    )
    assert other.status_code == 200


def test_uploads_share_the_body_budget_before_being_read():
    async def scenario() -> None:
        budget = Budget(1000, what="body budget")
        reader = BodyReader(max_bytes=5000, budget=budget, wait_s=0.05, timeout_s=10)
        body = b'--b\r\nContent-Disposition: form-data; name="file"\r\n\r\n' + b"A" * 900 + b"\r\n--b--\r\n"
        headers = [
            (b"content-type", b"multipart/form-data; boundary=b"),
            (b"content-length", b"%d" % len(body)),
        ]

        def request() -> Request:
            async def receive() -> dict:
                return {"type": "http.request", "body": body, "more_body": False}

            return Request({"type": "http", "method": "POST", "path": "/", "headers": headers}, receive)

        async with reader.payload(request()) as payload:
            assert payload["image"] == b"A" * 900 and budget.in_use == len(body)
            with pytest.raises(ApiError) as busy:
                async with reader.payload(request()):
                    pass
            assert busy.value.status == 503
        assert budget.in_use == 0

    asyncio.run(scenario())


def test_parser_fields_and_limits():
    body = (
        b'preamble\r\n--b\r\nContent-Disposition: form-data; name="top_k"\r\n\r\n3\r\n'
        b'--b\r\nContent-Disposition: form-data; name="image"; filename="a b.png"\r\n'
        b"Content-Type: image/png\r\n\r\n\r\n-b--\r\n\r\n--b--\r\nepilogue"
    )
    assert parse_multipart(body, "b") == {"top_k": 3, "image": b"\r\n-b--\r\n"}
    twice = b'--b\r\nContent-Disposition: form-data; name="file"\r\n\r\nx\r\n' * 2 + b"--b--"
    with pytest.raises(ApiError, match="given twice"):
        parse_multipart(twice, "b")
    many = b'--b\r\nContent-Disposition: form-data; name="f%d"\r\n\r\nx\r\n'
    with pytest.raises(ApiError, match="more than 16 parts"):
        parse_multipart(b"".join(many % i for i in range(20)) + b"--b--", "b")


def test_docs_describe_both_body_kinds(client):
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    for path in ("/predict_with_gradcam", "/analyze_class"):
        content = spec["paths"][path]["post"]["requestBody"]["content"]
        assert set(content) == {"application/json", "multipart/form-data"}
        assert content["multipart/form-data"]["schema"]["properties"]["file"]["format"] == "binary"
    assert "class_name" in json.dumps(spec["paths"]["/analyze_class"])
    assert client.get("/classes").json()["class_names"][0] == "circle"
