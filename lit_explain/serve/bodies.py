"""Reading a request body into checked fields; anything malformed becomes an :class:`ApiError` (4xx).

The body is read by hand so that the size limit applies while reading (a chunked upload has no
``Content-Length`` to check first). JSON that Python's parser cannot hold (a 5000-digit integer, 100,000
levels of nesting) is a 400 like any other invalid JSON, and values echoed back are shortened.

:class:`BodyReader` adds the limits that bound what requests in flight hold, checked before a byte of the
body is buffered: the ``Content-Type`` must be ``application/json`` (415; a cross-origin web page cannot
send that without a CORS preflight, which the service refuses unless ``--cors_origin`` names the page),
or a ``multipart/form-data`` upload from no web page, ``--cors_origin`` or the server's own page
(:mod:`.multipart`), the bodies being read and handled share a byte budget (a request that cannot get its share within
``body_wait_s`` gets 503 with ``Retry-After``), and a body must arrive within ``body_timeout_s`` (408).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request
from starlette.requests import ClientDisconnect

from lit_explain.serve.budget import Budget
from lit_explain.serve.decoding import release_memory
from lit_explain.serve.errors import ApiError, shorten
from lit_explain.serve.multipart import (
    MULTIPART_MEDIA_TYPE,
    check_upload_origin,
    multipart_boundary,
    parse_multipart,
)

MAX_TOP_K = 20
JSON_MEDIA_TYPE = "application/json"
# Bytes of request bodies held at once: ten 20 MB bodies. A held body costs about twice its size in memory
# (the JSON text's image string and the decoded file), measured in docs/benchmarks.md.
DEFAULT_BODY_BUDGET = 200_000_000
RETRY_AFTER_S = 2  # what a 503 for a full body budget tells the client to wait
TRIM_AFTER_BYTES = 4_000_000  # hand freed memory back to the OS after a body this large


def require_json(request: Request) -> None:
    """415 unless the request says its body is JSON: the service's one check of ``Content-Type``.

    ``text/plain``, form and multipart bodies are what a web page may post to another origin without a
    CORS preflight; refusing them keeps other sites from using a server on localhost.
    """
    given = request.headers.get("content-type")
    if given is None or given.split(";", 1)[0].strip().lower() != JSON_MEDIA_TYPE:
        shown = "no Content-Type" if given is None else f"Content-Type {shorten(given, 60)}"
        raise ApiError(
            415,
            f"the request body must be JSON sent with Content-Type: {JSON_MEDIA_TYPE} (or a "
            f"{MULTIPART_MEDIA_TYPE} upload: curl -F file=@image.jpg URL), got {shown}",
        )


def media_type(request: Request) -> str | None:
    """The request's Content-Type without parameters, lower-cased (None without the header)."""
    given = request.headers.get("content-type")
    return None if given is None else given.split(";", 1)[0].strip().lower()


def body_parser(request: Request, cors_origin: str | None) -> Callable[[bytearray], dict[str, Any]]:
    """How to read this request's body: JSON, or a multipart upload; 415 for anything else.

    Checked from the headers alone, before the body is reserved or read. A multipart upload from a web
    page other than ``cors_origin`` or the server's own is a 403 (:func:`check_upload_origin`).
    """
    if media_type(request) == MULTIPART_MEDIA_TYPE:
        check_upload_origin(request, cors_origin)
        boundary = multipart_boundary(request.headers["content-type"])
        return lambda body: parse_multipart(body, boundary)
    require_json(request)
    return parse_json_object


def declared_length(request: Request, max_bytes: int) -> int | None:
    """The body size the client declared (None for a chunked upload); 400 if invalid, 413 over ``max_bytes``."""
    declared = request.headers.get("content-length")
    if declared is None:
        return None
    if not declared.isdigit() or len(declared) > 20:
        raise ApiError(400, f"invalid Content-Length header {shorten(declared, 30)}")
    if int(declared) > max_bytes:
        raise ApiError(
            413, f"request body of {int(declared):,} bytes exceeds the limit of {max_bytes:,} bytes"
        )
    return int(declared)


async def _collect(request: Request, max_bytes: int) -> bytearray:
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_bytes:
                raise ApiError(413, f"request body exceeds the limit of {max_bytes:,} bytes")
    except ClientDisconnect:  # nobody is left to answer; a 4xx keeps it out of the server-error log
        raise ApiError(400, "the client disconnected before sending the whole body") from None
    return body


async def read_json(request: Request, max_bytes: int, timeout_s: float | None = None) -> dict[str, Any]:
    """The request body as a JSON object; 413 over ``max_bytes``, 400 for invalid JSON, 422 for a non-object.

    With ``timeout_s``, a body that has not fully arrived that many seconds after reading began is a 408,
    answered with ``Connection: close`` so that the slow client does not keep the connection either.
    """
    return parse_json_object(await read_body(request, max_bytes, timeout_s))


async def read_body(request: Request, max_bytes: int, timeout_s: float | None = None) -> bytearray:
    """The raw request body under the size limit and deadline of :func:`read_json`."""
    declared_length(request, max_bytes)
    try:
        async with asyncio.timeout(timeout_s):
            body = await _collect(request, max_bytes)
    except TimeoutError:
        raise ApiError(
            408,
            f"the request body did not arrive within {timeout_s:g} s; send it in one go, or start the "
            "server with a longer --body_timeout_s",
            headers={"Connection": "close"},
        ) from None
    return body


class BodyReader:
    """Request bodies under the limits that bound what requests in flight hold in memory.

    ``async with reader.payload(request) as payload`` (JSON or a multipart upload; ``reader.json`` for
    JSON only) checks the content type and the declared length,
    reserves the body's bytes from the shared budget (the declared length, or ``max_bytes`` for a chunked
    upload, whose size is unknown until it has arrived) *before* reading any of it, reads it within
    ``timeout_s``, and keeps the reservation until the block ends, because the payload and what the request
    derives from it (the decoded image file) live that long.

    Args:
        max_bytes: the largest body (413 above it).
        budget: the byte budget shared by all requests.
        wait_s: how long a request may wait for its share of the budget before a 503.
        timeout_s: how long a body may take to arrive once reading began (408 after it).
        cors_origin: the web origin, besides the server's own, allowed to send multipart uploads.

    Example:
        >>> reader = BodyReader(20_000_000, Budget(200_000_000, what="body budget"), wait_s=5, timeout_s=30)
        >>> async with reader.json(request) as payload:  # doctest: +SKIP
        ...     return await service.explain(payload, None)
    """

    def __init__(
        self, max_bytes: int, budget: Budget, wait_s: float, timeout_s: float, cors_origin: str | None = None
    ) -> None:
        self.max_bytes, self.budget = max_bytes, budget
        self.wait_s, self.timeout_s = wait_s, timeout_s
        self.cors_origin = cors_origin

    def json(self, request: Request) -> contextlib.AbstractAsyncContextManager[dict[str, Any]]:
        """A JSON body only (415 for anything else)."""
        require_json(request)
        return self._held(request, parse_json_object)

    def payload(self, request: Request) -> contextlib.AbstractAsyncContextManager[dict[str, Any]]:
        """A JSON body or a multipart upload, as the same payload dict (the image as bytes for multipart)."""
        return self._held(request, body_parser(request, self.cors_origin))

    @contextlib.asynccontextmanager
    async def _held(
        self, request: Request, parse: Callable[[bytearray], dict[str, Any]]
    ) -> AsyncIterator[dict[str, Any]]:
        declared = declared_length(request, self.max_bytes)
        charge = self.max_bytes if declared is None else declared
        async with contextlib.AsyncExitStack() as stack:
            try:
                await stack.enter_async_context(self.budget.reserve(charge, timeout=self.wait_s))
            except TimeoutError:
                raise self._busy(charge) from None
            body = await read_body(request, self.max_bytes, self.timeout_s)
            try:
                payload = parse(body)  # json reads the bytearray as is: no second copy of a large body
            finally:
                body.clear()  # multipart copied the image out; the raw body is not needed any more
            try:
                yield payload
            finally:
                # Drop the body's data when the block ends rather than when the caller's frame does, so the
                # budget is released with the memory it stands for, which can then go back to the OS.
                payload.clear()
                if charge >= TRIM_AFTER_BYTES:
                    await asyncio.to_thread(release_memory)

    def _busy(self, charge: int) -> ApiError:
        # The body stays unread; the server discards it as it arrives and keeps the connection usable.
        return ApiError(
            503,
            f"the server is busy: request bodies in flight already hold its body budget of "
            f"{self.budget.capacity:,} bytes (this one needs {charge:,}); retry in {RETRY_AFTER_S} s",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )


def parse_json_object(body: bytes | bytearray) -> dict[str, Any]:
    """Parse ``body`` as a JSON object, turning every way it can fail into a 400/422 :class:`ApiError`."""
    try:
        payload = json.loads(body)
    except RecursionError:
        raise ApiError(400, "request body is not valid JSON: it is nested too deeply") from None
    except UnicodeDecodeError:
        raise ApiError(400, "request body is not valid JSON: it is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc.msg} at character {exc.pos}") from None
    except ValueError:  # valid JSON, but Python refuses to convert integers of more than 4300 digits
        raise ApiError(
            400, f"request body has an integer of more than {sys.get_int_max_str_digits():,} digits"
        ) from None
    if not isinstance(payload, dict):
        raise ApiError(422, f"request body must be a JSON object, got {_json_type(payload)}")
    return payload


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return "a string" if isinstance(value, str) else "an array"


def image_bytes(value: Any) -> bytes:
    """The image of a payload: the bytes of a multipart file, else a JSON base64 string decoded."""
    if isinstance(value, bytes):  # only a multipart upload gives bytes; JSON cannot
        if not value:
            raise ApiError(422, "the uploaded file is empty; send the image in the 'file' field")
        return value
    return decode_base64_image(value)


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


def top_k_field(payload: dict[str, Any], num_classes: int) -> int:
    """``top_k`` (default 5): an integer in 1..MAX_TOP_K, capped at the number of classes."""
    value = payload.get("top_k", 5)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TOP_K:
        raise ApiError(422, f"field 'top_k' must be an integer from 1 to {MAX_TOP_K}, got {shorten(value)}")
    return min(value, num_classes)


def class_field(payload: dict[str, Any]) -> str | int:
    """The class to explain: ``class_name`` (a name, or an index for convenience) or ``class_index``."""
    name, index = payload.get("class_name"), payload.get("class_index")
    if name is not None and index is not None:
        raise ApiError(422, "give either field 'class_name' or field 'class_index', not both")
    if index is not None:
        if isinstance(index, bool) or not isinstance(index, int):
            raise ApiError(422, f"field 'class_index' must be an integer, got {shorten(index)}")
        return index
    if name is None:
        raise ApiError(422, "field 'class_name' (a class name) or 'class_index' (an integer) is required")
    if isinstance(name, bool) or not isinstance(name, (str, int)):
        raise ApiError(422, f"field 'class_name' must be a class name string, got {shorten(name)}")
    return name


__all__ = [
    "DEFAULT_BODY_BUDGET",
    "JSON_MEDIA_TYPE",
    "MAX_TOP_K",
    "RETRY_AFTER_S",
    "BodyReader",
    "body_parser",
    "class_field",
    "declared_length",
    "decode_base64_image",
    "image_bytes",
    "media_type",
    "parse_json_object",
    "read_body",
    "read_json",
    "require_json",
    "top_k_field",
]
