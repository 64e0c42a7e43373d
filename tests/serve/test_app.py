"""The ASGI app in-process: both endpoints, every bad input as a JSON 4xx, batching, low-confidence log."""

from __future__ import annotations

import base64
import io
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from serve_helpers import b64, png_bytes

from lit_explain.serve import ServeSettings, create_app


@pytest.fixture(scope="module")
def client(serve_explainer, tmp_path_factory):
    settings = ServeSettings(
        max_bytes=200_000, max_batch=4, max_wait_ms=30, log_below=0.5, log_dir=tmp_path_factory.mktemp("log")
    )
    with pytest.MonkeyPatch.context() as patch:  # the explainer is shared by the whole session
        patch.setattr(serve_explainer.preprocess, "max_pixels", 500_000)
        with TestClient(create_app(serve_explainer, settings)) as c:
            yield c


def blank_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


def decode_png(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text)))


def test_predict_with_gradcam(client, serve_explainer):
    image = png_bytes()
    r = client.post("/predict_with_gradcam", json={"image": b64(image)})
    assert r.status_code == 200, r.text
    body = r.json()
    # Explain the prediction, list the five most probable classes: what the service asks the explainer for.
    (expected,) = serve_explainer.explain_prepared([serve_explainer.preprocess(image)], None, 1, report_k=5)
    assert body["prediction"] == expected.prediction
    assert body["confidence"] == pytest.approx(expected.confidence, abs=1e-5)
    assert [t["class_name"] for t in body["top_k"]] == [n for n, _, _ in expected.top_k]
    assert len(body["top_k"]) == 5
    for key in ("gradcam_heatmap", "gradcam_overlay"):
        picture = decode_png(body[key])
        assert picture.size == (64, 64) and picture.mode == "RGB"
    overlay = torch.from_numpy(np.asarray(decode_png(body["gradcam_overlay"]), dtype=np.float32)).reshape(
        -1, 3
    )
    reference = (expected.primary.overlay.permute(1, 2, 0).reshape(-1, 3) * 255).round()
    assert (overlay - reference).abs().max() <= 1.0


def test_data_url_and_top_k(client):
    url = "data:image/png;base64," + b64(png_bytes(mode="RGBA"))
    body = client.post("/predict_with_gradcam", json={"image": url, "top_k": 2}).json()
    assert len(body["top_k"]) == 2 and body["class_rank"] == 1


def independent_probabilities(explainer, image: bytes) -> torch.Tensor:
    """Softmax of one plain forward of the model, outside the explain path the service uses."""
    x = explainer.preprocess(image).tensor[None]
    model, was_training = explainer.model, explainer.model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(x).softmax(dim=1)[0]
    finally:
        model.train(was_training)


def test_analyze_class(client, serve_explainer):
    image = png_bytes(seed=3)
    r = client.post("/analyze_class", json={"image": b64(image), "class_name": "Star"})
    assert r.status_code == 200, r.text
    body = r.json()
    probs = independent_probabilities(serve_explainer, image)
    star = serve_explainer.class_names.index("star")
    assert body["class_name"] == "star"
    assert body["class_probability"] == pytest.approx(probs[star].item(), abs=1e-5)
    assert body["class_rank"] == int((probs > probs[star]).sum()) + 1
    ranked = probs.argsort(descending=True)[:5].tolist()
    assert [t["class_name"] for t in body["top_k"]] == [serve_explainer.class_names[i] for i in ranked]
    assert [t["probability"] for t in body["top_k"]] == pytest.approx(probs[ranked].tolist(), abs=1e-5)


@pytest.mark.parametrize(
    ("path", "content", "status", "message"),
    [
        ("/predict_with_gradcam", b"{not json", 400, "not valid JSON"),
        ("/predict_with_gradcam", b"[1, 2]", 422, "JSON object"),
        ("/predict_with_gradcam", b"{}", 422, "field 'image'"),
        (
            "/predict_with_gradcam",
            json.dumps({"image": "@@@not base64@@@"}).encode(),
            400,
            "not valid base64",
        ),
        (
            "/predict_with_gradcam",
            json.dumps({"image": b64(b"hello, not an image")}).encode(),
            422,
            "not a readable image",
        ),
        ("/predict_with_gradcam", json.dumps({"image": b64(png_bytes()), "top_k": 0}).encode(), 422, "top_k"),
        (
            "/predict_with_gradcam",
            json.dumps({"image": b64(png_bytes((1000, 1000)))}).encode(),
            413,
            "exceeds the limit of 200,000 bytes",
        ),
        (
            "/predict_with_gradcam",
            json.dumps({"image": b64(blank_png(900, 900))}).encode(),
            413,
            "900x900 = 810,000 pixels, more than the limit of 500,000",
        ),
        ("/analyze_class", json.dumps({"image": b64(png_bytes())}).encode(), 422, "class_name"),
        (
            "/analyze_class",
            json.dumps({"image": b64(png_bytes()), "class_name": "hexagon"}).encode(),
            404,
            "unknown class name 'hexagon'",
        ),
    ],
)
def test_bad_input_gives_json_4xx_and_service_keeps_serving(client, path, content, status, message):
    r = client.post(path, content=content, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
    assert r.json()["request_id"] == r.headers["X-Request-ID"]
    assert client.post("/predict_with_gradcam", json={"image": b64(png_bytes())}).status_code == 200


def test_unknown_class_lists_valid_names(client):
    body = client.post("/analyze_class", json={"image": b64(png_bytes()), "class_name": "hexagon"}).json()
    assert body["valid_classes"] == ["circle", "square", "triangle", "star", "cross", "ring"]
    assert body["num_classes"] == 6 and body["truncated"] is False


def test_oversized_body_rejected_from_content_length_and_while_streaming(client):
    # Only the declared length is too large (the 10 bytes sent are not even JSON): the header check answers.
    declared = client.post(
        "/predict_with_gradcam",
        content=b"x" * 10,
        headers={"Content-Type": "application/json", "Content-Length": "999999999"},
    )
    assert declared.status_code == 413, declared.text
    assert declared.json()["error"] == "request body of 999,999,999 bytes exceeds the limit of 200,000 bytes"

    def chunks():  # chunked transfer: no Content-Length to check up front
        for _ in range(50):
            yield b"x" * 10_000

    streamed = client.post(
        "/predict_with_gradcam", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert streamed.status_code == 413, streamed.text
    assert streamed.json()["error"] == "request body exceeds the limit of 200,000 bytes"


def test_unknown_route_and_health(client):
    missing = client.get("/nope")
    assert missing.status_code == 404
    assert missing.json() == {"error": "Not Found", "request_id": missing.headers["X-Request-ID"]}
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["num_classes"] == 6 and health["input_size"] == [64, 64]
    assert client.get("/classes").json()["class_names"][0] == "circle"
    page = client.get("/")
    assert page.status_code == 200 and 'type="file"' in page.text and "predict_with_gradcam" in page.text


def test_concurrent_requests_share_batches(client):
    before = client.get("/health").json()["batching"]
    images = [b64(png_bytes(seed=i)) for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        responses = list(
            pool.map(lambda im: client.post("/predict_with_gradcam", json={"image": im}), images)
        )
    assert all(r.status_code == 200 for r in responses)
    after = client.get("/health").json()["batching"]
    assert after["items"] - before["items"] == 8
    assert after["batches"] - before["batches"] < 8  # at least two requests shared a forward/backward
    assert after["largest_batch"] <= 4


def test_low_confidence_requests_are_recorded(client):
    log_dir = client.app.state.settings.log_dir
    body = client.post("/predict_with_gradcam", json={"image": b64(png_bytes(seed=11))}).json()
    # The seeded, untrained 6-class model is far from confident on this image (threshold 0.5).
    assert body["confidence"] < 0.5, body["confidence"]
    record_dir = log_dir / body["logged"]
    record = json.loads((record_dir / "record.json").read_text())
    assert record["prediction"] == body["prediction"] and record["threshold"] == 0.5
    assert {p.name for p in record_dir.iterdir()} >= {
        "request_image.png",
        "heatmap.png",
        "overlay.png",
        "record.json",
    }
    assert not [p for p in log_dir.iterdir() if p.name.startswith(".")]  # no half-written folders
