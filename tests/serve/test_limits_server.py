"""Slow clients against a real server: late request heads and late bodies are cut off at their deadlines."""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from serve_helpers import b64, free_port, png_bytes, start_server, stop_server

HEAD_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0
SLACK_S = 1.5  # scheduling on a busy 2-core machine


@pytest.fixture(scope="module")
def strict_server(serve_ckpt, tmp_path_factory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("strict") / "server.log"
    proc = start_server(
        serve_ckpt,
        port,
        "--header_timeout_s",
        str(HEAD_TIMEOUT_S),
        "--body_timeout_s",
        str(BODY_TIMEOUT_S),
        log_level="info",
        log=log,
    )
    try:
        yield port
    finally:
        stop_server(proc)


def trickle(
    port: int, first: bytes, byte: bytes = b"a", every_s: float = 0.2, give_up_s: float = 15.0
) -> tuple[float, bytes]:
    """Send ``first``, then one ``byte`` every ``every_s`` until the server closes; (seconds open, reply)."""
    reply = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        start = time.monotonic()
        s.sendall(first)
        while time.monotonic() - start < give_up_s:
            readable, _, _ = select.select([s], [], [], every_s)
            try:
                if readable:
                    data = s.recv(65536)
                    if not data:
                        return time.monotonic() - start, reply
                    reply += data
                else:
                    s.sendall(byte)
            except OSError:  # reset by the server: closed as well
                return time.monotonic() - start, reply
    return give_up_s, reply


def test_ten_slow_header_clients_are_dropped_within_the_deadline(strict_server):
    head = b"POST /predict_with_gradcam HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "  # never finished
    with ThreadPoolExecutor(11) as pool:
        slow = [pool.submit(trickle, strict_server, head) for _ in range(10)]
        silent = pool.submit(trickle, strict_server, b"", b"", 0.2)  # connects and sends nothing
        results = [f.result() for f in [*slow, silent]]
    held = [seconds for seconds, _ in results]
    assert all(HEAD_TIMEOUT_S - 0.2 <= s <= HEAD_TIMEOUT_S + SLACK_S for s in held), held
    assert all(reply == b"" for _, reply in results)
    # The server is unharmed and a prompt client is served.
    r = httpx.post(
        f"http://127.0.0.1:{strict_server}/predict_with_gradcam", json={"image": b64(png_bytes())}, timeout=60
    )
    assert r.status_code == 200


def test_a_kept_alive_connection_gets_the_same_deadline_for_its_next_head(strict_server):
    request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with socket.create_connection(("127.0.0.1", strict_server), timeout=10) as s:
        s.sendall(request)
        response = s.recv(65536)
        head, _, body = response.partition(b"\r\n\r\n")
        length = int(
            next(h for h in head.lower().split(b"\r\n") if h.startswith(b"content-length:")).split(b":")[1]
        )
        while len(body) < length:
            body += s.recv(65536)
        assert head.startswith(b"HTTP/1.1 200") and len(body) == length
        start = time.monotonic()
        s.sendall(b"GET /health HTTP/1.1\r\nX-Slow: ")  # the next head, never finished
        s.settimeout(HEAD_TIMEOUT_S + SLACK_S + 3)
        with contextlib.suppress(ConnectionResetError):
            assert s.recv(65536) == b""
        assert time.monotonic() - start <= HEAD_TIMEOUT_S + SLACK_S


def test_a_slow_body_gets_408_and_the_connection_is_closed(strict_server):
    head = (
        b"POST /predict_with_gradcam HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100000\r\n\r\n{"image": "'
    )
    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(lambda _: trickle(strict_server, head, b"A"), range(10)))
    for seconds, reply in results:
        assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
        assert b"connection: close" in reply.lower() and b"--body_timeout_s" in reply
        assert BODY_TIMEOUT_S - 0.2 <= seconds <= BODY_TIMEOUT_S + SLACK_S, seconds
