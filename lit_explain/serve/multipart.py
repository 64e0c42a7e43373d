"""``multipart/form-data`` uploads (``curl -F file=@leaf.jpg``), parsed with the standard library.

python-multipart (what starlette's ``request.form()`` needs) is not a dependency: the body has already been
read under the body limits (:class:`~lit_explain.serve.bodies.BodyReader`), so parsing it is a matter of
splitting it at its boundary (RFC 7578 / RFC 2046) and reading each part's headers with :mod:`email`. The
image is copied out once; text fields become the same payload keys a JSON body has.

A web page on another origin can post a form without a CORS preflight, so multipart is accepted only from
a request without an ``Origin`` header (curl, scripts), from ``--cors_origin`` or from the server's own
origin (:func:`check_upload_origin`).
"""

from __future__ import annotations

import re
from email.message import Message
from email.parser import BytesHeaderParser
from email.utils import collapse_rfc2231_value
from typing import Any

from fastapi import Request

from lit_explain.serve.errors import ApiError, shorten

MULTIPART_MEDIA_TYPE = "multipart/form-data"
FILE_FIELDS = ("file", "image")  # the image's part; "image" as in the JSON body
INTEGER_FIELDS = ("top_k", "class_index")  # sent as text in a form, integers in the payload
TEXT_FIELDS = ("class_name", *INTEGER_FIELDS)
MAX_PARTS = 16
MAX_PART_HEADER_BYTES = 8192
MAX_TEXT_FIELD_BYTES = 4096
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")


def multipart_boundary(content_type: str) -> str:
    """The ``boundary`` parameter of a ``multipart/form-data`` Content-Type; 400 when missing or invalid."""
    header = Message()
    header["content-type"] = content_type
    boundary = header.get_param("boundary")
    if isinstance(boundary, tuple):  # an RFC 2231 encoded parameter
        boundary = collapse_rfc2231_value(boundary)
    if not boundary or not _BOUNDARY.fullmatch(str(boundary)):
        raise ApiError(
            400,
            f"Content-Type {shorten(content_type, 80)} needs a boundary parameter of 1 to 70 characters; "
            "let the client build the form (curl -F file=@image.jpg URL)",
        )
    return str(boundary)


def request_origin(request: Request) -> str:
    """The server's own origin as this request reached it (``http://127.0.0.1:8000``)."""
    return f"{request.url.scheme}://{request.headers.get('host', '')}".lower()


def check_upload_origin(request: Request, cors_origin: str | None) -> None:
    """403 for a multipart upload from a web page other than ``cors_origin`` or the server's own."""
    origin = request.headers.get("origin")
    if origin is None:
        return
    allowed = {request_origin(request)} | ({cors_origin.lower()} if cors_origin else set())
    if origin.strip().lower() not in allowed:
        raise ApiError(
            403,
            f"multipart uploads from the web page at {shorten(origin, 60)} are refused: any page may post a "
            "form without asking first. Send JSON (Content-Type: application/json), or start the server "
            "with --cors_origin naming that page's origin",
        )


def parse_multipart(body: bytes | bytearray, boundary: str) -> dict[str, Any]:
    """The fields of a multipart body: the image as bytes under ``"image"``, text fields as strings.

    ``top_k`` and ``class_index`` become integers when they are; the field checks that follow (the same as
    for JSON) report anything else. Other fields are ignored, as unknown JSON keys are.
    """
    delimiter = b"--" + boundary.encode("ascii")
    payload: dict[str, Any] = {}
    for headers, start, end in _parts(body, delimiter):
        name = _field_name(headers)
        key = "image" if name in FILE_FIELDS else name
        if key != "image" and key not in TEXT_FIELDS:
            continue  # ignored, as unknown JSON keys are
        if key in payload:
            raise ApiError(400, f"multipart field {shorten(name, 40)} is given twice; send the image once")
        if key == "image":
            payload[key] = bytes(body[start:end])  # the one copy of the image
        elif end - start > MAX_TEXT_FIELD_BYTES:
            raise ApiError(413, f"multipart field {shorten(name, 40)} is over {MAX_TEXT_FIELD_BYTES:,} bytes")
        else:
            payload[key] = _text(name, body[start:end])
    if "image" not in payload:
        raise ApiError(
            422, "the multipart upload has no 'file' field holding the image (curl -F file=@image.jpg URL)"
        )
    return payload


def _parts(body: bytes | bytearray, delimiter: bytes) -> list[tuple[Message, int, int]]:
    """(headers, data start, data end) of every part between the first delimiter and the closing one."""
    if body.startswith(delimiter):
        pos = len(delimiter)
    else:  # a preamble before the first delimiter is allowed and ignored
        first = body.find(b"\r\n" + delimiter)
        if first < 0:
            raise ApiError(
                400, "the multipart body does not contain its boundary; send the form as the client built it"
            )
        pos = first + 2 + len(delimiter)
    parts: list[tuple[Message, int, int]] = []
    while not body.startswith(b"--", pos):  # "--" right after a delimiter closes the body
        line_end = body.find(b"\r\n", pos)
        if line_end < 0 or body[pos:line_end].strip(b" \t"):
            raise ApiError(400, "the multipart body is malformed after a boundary line")
        headers, start = _headers(body, line_end + 2)
        end = body.find(b"\r\n" + delimiter, start)
        if end < 0:
            raise ApiError(
                400, "the multipart body ends before its closing boundary; was the upload cut short?"
            )
        parts.append((headers, start, end))
        if len(parts) > MAX_PARTS:
            raise ApiError(
                400, f"the multipart body has more than {MAX_PARTS} parts; send the image and a few fields"
            )
        pos = end + 2 + len(delimiter)
    return parts


def _headers(body: bytes | bytearray, start: int) -> tuple[Message, int]:
    """A part's headers (parsed by :mod:`email`) and where its data begins."""
    if body.startswith(b"\r\n", start):  # a part without headers
        return Message(), start + 2
    end = body.find(b"\r\n\r\n", start, start + MAX_PART_HEADER_BYTES)
    if end < 0:
        raise ApiError(400, f"a multipart part has no end of headers within {MAX_PART_HEADER_BYTES:,} bytes")
    return BytesHeaderParser().parsebytes(bytes(body[start : end + 4])), end + 4


def _field_name(headers: Message) -> str:
    """The ``name`` of a ``Content-Disposition: form-data`` part; 400 for a part that has none."""
    name = headers.get_param("name", header="content-disposition")
    if isinstance(name, tuple):
        name = collapse_rfc2231_value(name)
    if headers.get_content_disposition() != "form-data" or not name:
        raise ApiError(400, "every multipart part needs 'Content-Disposition: form-data; name=...'")
    return str(name)


def _text(name: str, data: bytes | bytearray) -> str | int:
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, f"multipart field {shorten(name, 40)} is not UTF-8 text") from None
    if name in INTEGER_FIELDS and re.fullmatch(r"-?\d{1,9}", text.strip()):
        return int(text)
    return text


__all__ = [
    "MULTIPART_MEDIA_TYPE",
    "check_upload_origin",
    "multipart_boundary",
    "parse_multipart",
    "request_origin",
]
