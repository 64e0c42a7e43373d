"""Reading a request body into checked fields; anything malformed becomes an :class:`ApiError` (4xx).

The body is read by hand so that the size limit applies while reading (a chunked upload has no
``Content-Length`` to check first). JSON that Python's parser cannot hold (a 5000-digit integer, 100,000
levels of nesting) is a 400 like any other invalid JSON, and values echoed back are shortened.
"""

from __future__ import annotations

import base64
import binascii
import json
import sys
from typing import Any

from fastapi import Request
from starlette.requests import ClientDisconnect

from lit_explain.serve.errors import ApiError, shorten

MAX_TOP_K = 20


async def read_json(request: Request, max_bytes: int) -> dict[str, Any]:
    """The request body as a JSON object; 413 over ``max_bytes``, 400 for invalid JSON, 422 for a non-object."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit() or len(declared) > 20:
            raise ApiError(400, f"invalid Content-Length header {shorten(declared, 30)}")
        if int(declared) > max_bytes:
            raise ApiError(
                413, f"request body of {int(declared):,} bytes exceeds the limit of {max_bytes:,} bytes"
            )
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_bytes:
                raise ApiError(413, f"request body exceeds the limit of {max_bytes:,} bytes")
    except ClientDisconnect:  # nobody is left to answer; a 4xx keeps it out of the server-error log
        raise ApiError(400, "the client disconnected before sending the whole body") from None
    return parse_json_object(bytes(body))


def parse_json_object(body: bytes) -> dict[str, Any]:
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


__all__ = ["MAX_TOP_K", "class_field", "decode_base64_image", "parse_json_object", "read_json", "top_k_field"]
