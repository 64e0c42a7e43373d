"""The ASGI app: predict-and-explain endpoints over one :class:`~lit_explain.inference.Explainer`.

Endpoints:
    ``POST /predict_with_gradcam`` ``{"image": <base64 or data URL>, "top_k": 5}`` -> prediction, confidence,
    top-k probabilities and the Grad-CAM heatmap / overlay of the predicted class as base64 PNGs.
    ``POST /analyze_class`` ``{"image": ..., "class_name": "..."}`` -> the same, explained for that class.
    Both also take a ``multipart/form-data`` upload (a ``file`` field, ``curl -F file=@leaf.jpg``;
    :mod:`.multipart`).
    ``GET /health``, ``GET /classes``, ``GET /`` (a page to try it in a browser), ``GET /docs`` (the
    interactive API description FastAPI generates; ``/openapi.json`` the same as JSON).

Every error is a JSON ``{"error": "...", "request_id": "..."}``: a 4xx that says what was wrong with the
request, or a 500 whose details go to the server log under the same request id (:mod:`.errors`). The
service keeps serving after any bad request. The modules behind it: :mod:`.bodies` (reading and checking
the request: content type, size, body budget, read deadline), :mod:`.decoding` (size limits and the shared
pixel budget), :mod:`.batching` (micro-batches), :mod:`.service` (the answers), :mod:`.lowconf` (the
low-confidence log), :mod:`.protocol` (the deadline for request heads). Browsers get CORS headers only for
``ServeSettings.cors_origin``.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse
from PIL import Image

from lit_explain.inference.explainer import Explainer
from lit_explain.serve.bodies import JSON_MEDIA_TYPE, MAX_TOP_K, decode_base64_image
from lit_explain.serve.errors import REQUEST_ID_HEADER, ApiError, install_error_handling, request_id
from lit_explain.serve.multipart import MULTIPART_MEDIA_TYPE
from lit_explain.serve.service import DEFAULT_MAX_BYTES, ExplainService, ServeSettings


def request_body_docs(with_class: bool) -> dict[str, Any]:
    """The OpenAPI description of an explain route's body (for ``/docs``): JSON or a multipart upload.

    The routes read their bodies themselves (under the body limits), so FastAPI cannot infer this.
    """
    top_k = {"type": "integer", "minimum": 1, "maximum": MAX_TOP_K, "default": 5}
    image = {"type": "string", "description": "the image file in base64, or a data:image/...;base64, URL"}
    file = {"type": "string", "format": "binary", "description": "the image file"}
    named = (
        {"class_name": {"type": "string"}, "class_index": {"type": "integer", "description": "or this"}}
        if with_class
        else {}
    )

    def schema(first: str, field: dict[str, Any]) -> dict[str, Any]:
        return {"type": "object", "required": [first], "properties": {first: field, "top_k": top_k, **named}}

    content = {JSON_MEDIA_TYPE: {"schema": schema("image", image)}}
    content[MULTIPART_MEDIA_TYPE] = {"schema": schema("file", file)}
    return {"requestBody": {"required": True, "content": content}}


def _add_explain_routes(app: FastAPI, service: ExplainService) -> None:
    # The body's share of the body budget is held until the answer is built: the payload and the image
    # bytes decoded from it live that long.
    @app.post("/predict_with_gradcam", openapi_extra=request_body_docs(with_class=False))
    async def predict_with_gradcam(request: Request) -> dict[str, Any]:
        """Predict the class of ``image`` and explain the prediction."""
        async with service.bodies.payload(request) as payload:
            return await service.explain(payload, None, request_id(request))

    @app.post("/analyze_class", openapi_extra=request_body_docs(with_class=True))
    async def analyze_class(request: Request) -> dict[str, Any]:
        """Explain ``image`` for the class ``class_name`` (or an integer ``class_index``)."""
        async with service.bodies.payload(request) as payload:
            return await service.explain(payload, service.class_target(payload), request_id(request))


def _allow_origin(app: FastAPI, origin: str | None) -> None:
    """CORS for the one origin the operator named; without one no CORS header is ever sent."""
    if origin is None:
        return
    app.add_middleware(
        CORSMiddleware,
        allow_origins=[origin],
        allow_methods=["GET", "POST"],
        allow_headers=["Content-Type", REQUEST_ID_HEADER],
        expose_headers=[REQUEST_ID_HEADER],
    )


def _add_info_routes(app: FastAPI, service: ExplainService) -> None:
    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness, what is loaded, batching and decoding counters."""
        return service.health()

    @app.get("/classes")
    async def classes() -> dict[str, Any]:
        """All class names, in index order."""
        return {"class_names": service.explainer.class_names}

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        page = resources.files("lit_explain.serve") / "static" / "index.html"
        return HTMLResponse(page.read_text(encoding="utf-8"))


def create_app(explainer: Explainer, settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI app serving ``explainer`` (see the module docstring for the endpoints).

    Example:
        >>> app = create_app(Explainer.from_checkpoint("last.ckpt", guided=False))  # doctest: +SKIP
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)                          # doctest: +SKIP
    """
    service = ExplainService(explainer, settings or ServeSettings())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.batcher.start()
        yield
        await service.batcher.stop()

    app = FastAPI(title="lit_explain", summary="Predict and explain images with Grad-CAM", lifespan=lifespan)
    app.state.service = service
    app.state.explainer, app.state.settings = explainer, service.settings
    app.state.batcher, app.state.budget, app.state.log = service.batcher, service.budget, service.log
    install_error_handling(app)
    _allow_origin(app, service.settings.cors_origin)  # outside the error handling: errors get it too
    _add_explain_routes(app, service)
    _add_info_routes(app, service)
    return app


def warm_up(explainer: Explainer) -> None:
    """One explain of a blank image, so the first real request does not pay for lazy initialisation."""
    buffer = io.BytesIO()
    h, w = explainer.preprocess.input_size
    Image.new(explainer.preprocess.mode, (w, h)).save(buffer, format="PNG")
    explainer.explain(buffer.getvalue())


__all__ = [
    "DEFAULT_MAX_BYTES",
    "ApiError",
    "ServeSettings",
    "create_app",
    "decode_base64_image",
    "warm_up",
]
