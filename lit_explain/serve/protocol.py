"""A deadline for request heads: uvicorn's HTTP/1.1 protocol with slow or silent connections closed.

uvicorn (0.54, h11 implementation) times out only idle keep-alive connections between requests: a client
that connects and then sends nothing, or its request line and headers a byte at a time, holds a connection
(and a file descriptor) for as long as it likes, and a few thousand such clients exhaust the server. This
protocol closes a connection whose request head is not complete ``header_timeout_s`` seconds after the
connection opened, or after the first byte of a later request on a kept-alive connection arrived. The
body has its own deadline (:func:`lit_explain.serve.bodies.read_json`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger("lit_explain.serve")


class HeadDeadlineProtocol(H11Protocol):
    """:class:`H11Protocol` that closes connections whose request head is late (see the module docstring).

    Use :func:`head_deadline_protocol` to get one with a given deadline.
    """

    header_timeout_s: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._watch_head()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        super().connection_lost(exc)

    def _awaiting_head(self) -> bool:
        # IDLE on both sides: no request is being read or answered, so the next bytes are a request head.
        return self.conn.their_state is h11.IDLE and self.conn.our_state is h11.IDLE

    def _watch_head(self) -> None:
        if not self._awaiting_head() or self.transport.is_closing():
            self._stop_timer()
        elif self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_expired)

    def _stop_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_expired(self) -> None:
        self._head_timer = None
        if self._awaiting_head() and not self.transport.is_closing():
            # No response is possible: HTTP has no request to answer yet. Closing is what the client sees.
            peer = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
            logger.info("closing %s: no complete request head within %g s", peer, self.header_timeout_s)
            self.transport.close()


def head_deadline_protocol(header_timeout_s: float) -> type[HeadDeadlineProtocol]:
    """A protocol class for ``uvicorn.run(app, http=...)`` that closes connections after ``header_timeout_s``.

    Example:
        >>> uvicorn.run(app, http=head_deadline_protocol(10.0))  # doctest: +SKIP
    """
    return type(
        "HeadDeadlineProtocol", (HeadDeadlineProtocol,), {"header_timeout_s": float(header_timeout_s)}
    )


__all__ = ["HeadDeadlineProtocol", "head_deadline_protocol"]
