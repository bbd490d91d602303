"""The HTTP server's connection limits: slow and idle clients must not hold the server.

uvicorn bounds only the idle time between requests (``timeout_keep_alive``); a client that sends its
headers or its body a byte at a time, or never, held a connection (and up to a whole body in memory)
for as long as it liked, and thousands of them stayed connected. Its ``limit_concurrency`` answers 503
only once a request's headers are complete, so it never refuses a client that never completes them.

This module's protocol is uvicorn's httptools protocol plus, per connection:

- ``header_timeout_s``: from the connection's opening (on a keep-alive connection, from the next
  request's first byte) until the request's headers are complete; a deadline, not an idle timer, so
  trickling bytes does not extend it.
  Past it: ``408 request_timeout`` and the connection is closed.
- ``body_timeout_s``: from the end of the headers until the whole body is in; past it, the same 408
  (or, once the response has started, just the close).
- ``max_connections``: open connections per process; one more is answered ``503 overloaded`` and closed
  at once, before reading anything. With ``max_body_bytes`` this bounds the memory bodies can take.
- ``keepalive_timeout_s`` (uvicorn's ``timeout_keep_alive``) and ``keepalive_max_requests``: requests
  served on one connection before it is closed (``Connection: close`` on the last response), so that
  long-lived client pools spread over replicas.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from inferd.core.errors import InferdError, OverloadedError, RequestTimeoutError
from inferd.http.errors import error_body, error_headers, error_status


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    header_timeout_s: float
    body_timeout_s: float
    max_connections: int
    keepalive_timeout_s: float
    keepalive_max_requests: int


def raw_error_response(error: InferdError) -> bytes:
    """A complete HTTP/1.1 error response with ``Connection: close``, for answers sent outside the app."""
    request_id = os.urandom(12).hex()
    body = error_body(error.code, error.message, request_id)
    status = error_status(error)
    reason = {408: b"Request Timeout", 503: b"Service Unavailable"}.get(status, b"Error")
    lines = [
        b"HTTP/1.1 %d %s" % (status, reason),
        b"content-type: application/json",
        b"content-length: %d" % len(body),
        b"x-request-id: " + request_id.encode(),
        b"connection: close",
        *(name + b": " + value for name, value in error_headers(error)),
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def guarded_protocol(limits: ConnectionLimits) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol class with ``limits`` enforced (uvicorn's ``Config(http=...)``)."""
    header_timeout = raw_error_response(
        RequestTimeoutError(
            f"the request headers did not arrive within {limits.header_timeout_s:g}s (header_timeout_s)"
        )
    )
    body_timeout = raw_error_response(
        RequestTimeoutError(
            f"the request body did not arrive within {limits.body_timeout_s:g}s (body_timeout_s)"
        )
    )
    too_many = raw_error_response(
        OverloadedError(f"the server holds its limit of {limits.max_connections} connections; retry later")
    )

    sweep_every_s = min(1.0, max(0.05, min(limits.header_timeout_s, limits.body_timeout_s) / 4))

    class GuardedProtocol(HttpToolsProtocol):
        # One timer per process sweeps every connection's deadline (a timer armed and cancelled per
        # request would cost the hot path); deadlines are kept to within ``sweep_every_s``.
        sweeper: asyncio.TimerHandle | None = None

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._deadline: float | None = None
            self._timeout_response = header_timeout
            self._served = 0

        @classmethod
        def _sweep(cls, loop: asyncio.AbstractEventLoop, connections: set[Any]) -> None:
            now = loop.time()
            for connection in list(connections):
                deadline = getattr(connection, "_deadline", None)
                if deadline is not None and now >= deadline:
                    connection._expire()
            cls.sweeper = (
                loop.call_later(sweep_every_s, cls._sweep, loop, connections) if connections else None
            )

        def _expire(self) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            if self.cycle is None or not self.cycle.response_started:
                self.transport.write(self._timeout_response)
            self.transport.close()

        def _await_headers(self) -> None:
            self._deadline = self.loop.time() + limits.header_timeout_s
            self._timeout_response = header_timeout

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > limits.max_connections:
                transport.write(too_many)
                transport.close()
                return
            self._await_headers()
            if GuardedProtocol.sweeper is None:
                GuardedProtocol.sweeper = self.loop.call_later(
                    sweep_every_s, GuardedProtocol._sweep, self.loop, self.connections
                )

        def connection_lost(self, exc: Exception | None) -> None:
            self._deadline = None
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._deadline is None:  # a keep-alive connection's next request: its first byte
                self._await_headers()

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            self._served += 1
            if self._served >= limits.keepalive_max_requests and self.cycle is not None:
                self.cycle.keep_alive = False
            self._deadline = self.loop.time() + limits.body_timeout_s
            self._timeout_response = body_timeout

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._deadline = None

    return GuardedProtocol


def server_options(limits: ConnectionLimits) -> dict[str, Any]:
    """``uvicorn.Config`` keyword arguments that enforce ``limits``.

    Also per request, and never used: uvicorn's ``X-Forwarded-*`` middleware rewrote the scope's client
    address and scheme, which inferd never reads (a header scan and a dict of the headers per request),
    and its ``server: uvicorn`` response header named the stack to every client (two regex checks per
    response)."""
    return {
        "http": guarded_protocol(limits),
        "timeout_keep_alive": limits.keepalive_timeout_s,
        "proxy_headers": False,
        "server_header": False,
    }
