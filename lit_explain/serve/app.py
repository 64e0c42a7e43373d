"""The ASGI app: predict-and-explain endpoints over one :class:`~lit_explain.inference.Explainer`.

Endpoints:
    ``POST /predict_with_gradcam`` ``{"image": <base64 or data URL>, "top_k": 5}`` -> prediction, confidence,
    top-k probabilities and the Grad-CAM heatmap / overlay of the predicted class as base64 PNGs.
    ``POST /analyze_class`` ``{"image": ..., "class_name": "..."}`` -> the same, explained for that class.
    ``GET /health``, ``GET /classes``, ``GET /`` (a page to try it in a browser).

Bodies are read by hand so that size limits apply while reading, and every error is a JSON
``{"error": "..."}`` with a 4xx status; the service keeps serving after any bad request.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import json
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException

from lit_explain.data.images import ImageDecodeError
from lit_explain.inference.explainer import Explainer, Explanation, UnknownClassError
from lit_explain.inference.outputs import write_json
from lit_explain.inference.preprocess import ImageTooLargeError, Prepared
from lit_explain.render import encode_png
from lit_explain.serve.batching import MicroBatcher

DEFAULT_MAX_BYTES = 20 * 1024 * 1024
MAX_TOP_K = 20
SHOWN_CLASSES = 50  # class names listed in an unknown-class error


class ApiError(Exception):
    """A request error turned into ``{"error": message, ...extra}`` with ``status``."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


@dataclass(frozen=True)
class ServeSettings:
    """Limits and options of the service.

    Attributes:
        max_bytes: largest request body (the base64 image is 4/3 of the file's size).
        max_batch, max_wait_ms: micro-batching (``max_batch=1`` turns it off).
        log_below: record requests whose confidence is below this into ``log_dir`` (None: off).
        log_dir: where the low-confidence records go.
        png_level: zlib level of the returned PNGs (1: fast).
    """

    max_bytes: int = DEFAULT_MAX_BYTES
    max_batch: int = 8
    max_wait_ms: float = 5.0
    log_below: float | None = None
    log_dir: Path = Path("low_confidence")
    png_level: int = 1


@dataclass
class _Work:
    prepared: Prepared
    raw: bytes
    target: int | None
    top_k: int


def _b64_png(image: Any, level: int) -> str:
    return base64.b64encode(encode_png(image, compress_level=level)).decode("ascii")


def decode_base64_image(value: Any) -> bytes:
    """Bytes of a base64 string or ``data:image/...;base64,`` URL; :class:`ApiError` 400/422 otherwise."""
    if not isinstance(value, str) or not value:
        raise ApiError(
            422, "field 'image' must be a non-empty base64 string (or a data:image/...;base64, URL)"
        )
    if value.startswith("data:"):
        header, sep, value = value.partition(",")
        if not sep or ";base64" not in header:
            raise ApiError(400, "field 'image' is a data URL without ';base64,' data")
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, f"field 'image' is not valid base64: {exc}") from None


class LowConfidenceLog:
    """Writes low-confidence requests (image, maps, JSON record) into one folder each, atomically."""

    def __init__(self, directory: Path, threshold: float) -> None:
        self.directory = Path(directory)
        self.threshold = threshold
        self.written = 0

    def maybe_record(self, work: _Work, result: Explanation, response: dict[str, Any]) -> Path | None:
        if result.confidence >= self.threshold:
            return None
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        name = f"{stamp}_{uuid.uuid4().hex[:8]}"
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f".{name}.tmp"
        tmp.mkdir()
        try:
            try:
                with Image.open(io.BytesIO(work.raw)) as image:
                    ext = (image.format or "bin").lower()
            except Exception:
                ext = "bin"
            (tmp / f"request_image.{ext}").write_bytes(work.raw)
            explained = result.primary
            (tmp / "heatmap.png").write_bytes(encode_png(explained.heatmap))
            (tmp / "overlay.png").write_bytes(encode_png(explained.overlay))
            (tmp / "model_input.png").write_bytes(encode_png(result.image))
            record = {
                "time": stamp,
                "threshold": self.threshold,
                **{k: v for k, v in response.items() if not k.startswith("gradcam_")},
                "summary": result.summary(),
            }
            write_json(tmp / "record.json", record)
            os.rename(tmp, self.directory / name)  # the folder appears complete or not at all
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.written += 1
        return self.directory / name


def create_app(explainer: Explainer, settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI app serving ``explainer`` (see the module docstring for the endpoints).

    Example:
        >>> app = create_app(Explainer.from_checkpoint("last.ckpt", guided=False))  # doctest: +SKIP
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)                          # doctest: +SKIP
    """
    settings = settings or ServeSettings()
    log = LowConfidenceLog(settings.log_dir, settings.log_below) if settings.log_below is not None else None
    started = time.time()

    def run_batch(items: list[_Work]) -> list[dict[str, Any] | Exception]:
        results = explainer.explain_prepared(
            [w.prepared for w in items],
            [w.target for w in items],
            [0 if w.target is not None else 1 for w in items],
        )
        out: list[dict[str, Any] | Exception] = []
        for work, result in zip(items, results, strict=True):
            explained = result.primary
            response: dict[str, Any] = {
                "prediction": result.prediction,
                "confidence": result.confidence,
                "top_k": [{"class_name": n, "probability": p} for n, _, p in result.top_k[: work.top_k]],
                "class_name": explained.class_name,
                "class_probability": explained.probability,
                "class_rank": explained.rank,
                "method": result.method,
                "layer": result.layer,
                "gradcam_heatmap": _b64_png(explained.heatmap, settings.png_level),
                "gradcam_overlay": _b64_png(explained.overlay, settings.png_level),
            }
            if log is not None:
                try:
                    record = log.maybe_record(work, result, response)
                except OSError as exc:  # a full disk must not fail the request itself
                    record, response["low_confidence_log_error"] = None, str(exc)
                if record is not None:
                    response["logged"] = record.name
            out.append(response)
        return out

    batcher: MicroBatcher[_Work, dict[str, Any]] = MicroBatcher(
        run_batch, settings.max_batch, settings.max_wait_ms
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="lit_explain", summary="Predict and explain images with Grad-CAM", lifespan=lifespan)
    app.state.explainer, app.state.settings, app.state.batcher, app.state.log = (
        explainer,
        settings,
        batcher,
        log,
    )

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message, **exc.extra}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)

    async def read_json(request: Request) -> dict[str, Any]:
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise ApiError(400, f"invalid Content-Length header {declared!r}")
            if int(declared) > settings.max_bytes:
                raise ApiError(
                    413,
                    f"request body of {int(declared):,} bytes exceeds the limit of {settings.max_bytes:,}",
                )
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > settings.max_bytes:  # chunked uploads have no Content-Length to check first
                raise ApiError(413, f"request body exceeds the limit of {settings.max_bytes:,} bytes")
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"request body is not valid JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise ApiError(422, f"request body must be a JSON object, got {type(payload).__name__}")
        return payload

    def top_k_of(payload: dict[str, Any]) -> int:
        value = payload.get("top_k", 5)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TOP_K:
            raise ApiError(422, f"field 'top_k' must be an integer from 1 to {MAX_TOP_K}, got {value!r}")
        return min(value, len(explainer.class_names))

    def prepare(raw: bytes) -> Prepared:
        try:
            return explainer.preprocess(raw)
        except ImageTooLargeError as exc:
            raise ApiError(413, str(exc)) from None
        except ImageDecodeError as exc:
            raise ApiError(422, f"field 'image' is not a readable image: {exc}") from None

    async def explain(payload: dict[str, Any], target: int | None) -> dict[str, Any]:
        raw = decode_base64_image(payload.get("image"))
        top_k = top_k_of(payload)
        # Decoding runs off the event loop, so one large image does not stall the other requests.
        prepared = await asyncio.to_thread(prepare, raw)
        return await batcher.submit(_Work(prepared, raw, target, top_k))

    @app.post("/predict_with_gradcam")
    async def predict_with_gradcam(request: Request) -> dict[str, Any]:
        """Predict the class of ``image`` and explain the prediction."""
        return await explain(await read_json(request), None)

    @app.post("/analyze_class")
    async def analyze_class(request: Request) -> dict[str, Any]:
        """Explain ``image`` for the class ``class_name`` (or an integer ``class_index``)."""
        payload = await read_json(request)
        name = payload.get("class_name", payload.get("class_index"))
        if name is None or isinstance(name, bool) or not isinstance(name, (str, int)):
            raise ApiError(422, "field 'class_name' (a class name string) is required")
        try:
            index = explainer.class_index(name)
        except UnknownClassError as exc:
            names = exc.valid
            raise ApiError(
                404,
                exc.message,
                valid_classes=names[:SHOWN_CLASSES],
                num_classes=len(names),
                truncated=len(names) > SHOWN_CLASSES,
            ) from None
        return await explain(payload, index)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness and what is loaded."""
        return {
            "status": "ok",
            "num_classes": len(explainer.class_names),
            "method": explainer.method,
            "layer": explainer.layer_name,
            "input_size": list(explainer.preprocess.input_size),
            "in_channels": explainer.preprocess.in_channels,
            "device": str(explainer.device),
            "batching": {
                "max_batch": settings.max_batch,
                "max_wait_ms": settings.max_wait_ms,
                **batcher.stats.as_dict(),
            },
            "low_confidence_logged": log.written if log is not None else None,
            "uptime_s": round(time.time() - started, 1),
        }

    @app.get("/classes")
    async def classes() -> dict[str, Any]:
        """All class names, in index order."""
        return {"class_names": explainer.class_names}

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        page = resources.files("lit_explain.serve") / "static" / "index.html"
        return HTMLResponse(page.read_text(encoding="utf-8"))

    return app


def warm_up(explainer: Explainer) -> None:
    """One explain of a blank image, so the first real request does not pay for lazy initialisation."""
    buffer = io.BytesIO()
    h, w = explainer.preprocess.input_size
    Image.new(explainer.preprocess.mode, (w, h)).save(buffer, format="PNG")
    explainer.explain(buffer.getvalue())


__all__ = ["DEFAULT_MAX_BYTES", "ApiError", "ServeSettings", "create_app", "decode_base64_image", "warm_up"]
