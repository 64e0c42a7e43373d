"""What a failed request gives the client, what it leaves in the log, and the request id that links them.

Every HTTP request gets an id (the client's ``X-Request-ID`` when it is a short token, else a fresh one),
returned in the ``X-Request-ID`` header of every response and in the body of every error. A request error
(:class:`ApiError`, a 4xx) answers ``{"error": message, "request_id": id}`` and is logged as one line; an
unexpected exception answers a 500 with a short message and the id only, never the exception's text, and
is logged with its traceback on the ``lit_explain.serve`` logger. ``python -m lit_explain serve`` routes
that logger through uvicorn's handlers.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("lit_explain.serve")

ECHO_LIMIT = 100  # characters of a client's value repeated in an error message
MESSAGE_LIMIT = 1000  # characters of any error message sent back
REQUEST_ID_HEADER = "X-Request-ID"
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class ApiError(Exception):
    """A request error turned into ``{"error": message, ...extra, "request_id": id}`` with ``status``.

    ``headers`` go on the response as they are.

    Example:
        >>> raise ApiError(422, "field 'top_k' must be an integer from 1 to 20")  # doctest: +SKIP
    """

    def __init__(
        self, status: int, message: str, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra
        self.headers = headers or {}  # e.g. Retry-After on a 503, Connection: close on a 408


def shorten(value: Any, limit: int = ECHO_LIMIT) -> str:
    """``repr(value)`` cut to about ``limit`` characters with an ellipsis, for echoing client input.

    Never fails and never builds the whole text of a huge string (a 1 MB class name costs ``limit``).

    Example:
        >>> shorten("z" * 1000, limit=10)
        "'zzzzzzzzzz'… (1,000 characters)"
    """
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(value)
        return f"{value[:limit]!r}… ({len(value):,} characters)"
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # ints over 4300 digits, very deep nesting
        return f"<a {type(value).__name__} too large to show>"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _clip(message: str) -> str:
    return message if len(message) <= MESSAGE_LIMIT else message[: MESSAGE_LIMIT - 1] + "…"


def request_id(request: Request) -> str:
    """The id :class:`RequestContext` gave this request ("-" outside it, e.g. a bare ASGI test)."""
    return request.scope.get("state", {}).get("request_id", "-")


def _incoming_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if _CLIENT_ID.fullmatch(text) else None
    return None


class RequestContext:
    """ASGI middleware: a request id for every request, and a logged JSON 500 for any unexpected exception.

    Sits outside the routes' own handlers, so it sees exactly the exceptions that no route turned into a
    4xx. The client gets ``{"error": "internal error ...", "request_id": id}``; the log gets the id, the
    method, the path and the traceback.

    Example:
        >>> app.add_middleware(RequestContext)  # doctest: +SKIP
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = _incoming_id(scope) or uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = rid
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                MutableHeaders(scope=message).append(REQUEST_ID_HEADER, rid)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            logger.exception("request %s: %s %s failed", rid, scope.get("method"), scope.get("path"))
            if started:  # half a response is out: nothing valid can follow, let the server drop it
                raise
            body = {"error": "internal error; the server log has the details", "request_id": rid}
            await JSONResponse(body, status_code=500)(scope, receive, send_with_id)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    rid = request_id(request)
    message = _clip(exc.message)
    logger.info("request %s: %s %s -> %d: %s", rid, request.method, request.url.path, exc.status, message)
    return JSONResponse(
        {"error": message, **exc.extra, "request_id": rid}, status_code=exc.status, headers=exc.headers
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return JSONResponse(
        {"error": _clip(str(exc.detail)), "request_id": request_id(request)},
        status_code=exc.status_code,
        headers=exc.headers,
    )


def install_error_handling(app: FastAPI) -> None:
    """JSON errors with a request id for ``app``: 4xx from :class:`ApiError` / routing, logged 500s otherwise."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_middleware(RequestContext)


__all__ = [
    "ECHO_LIMIT",
    "REQUEST_ID_HEADER",
    "ApiError",
    "RequestContext",
    "install_error_handling",
    "logger",
    "request_id",
    "shorten",
]
