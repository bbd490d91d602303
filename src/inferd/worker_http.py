"""The HTTP port of ``inferd worker``: ``/metrics``, ``/livez`` and ``/readyz``, each on its own path.

A worker has no API, but orchestrators need a liveness and a readiness probe for it and Prometheus a
scrape target. This is a minimal HTTP/1.1 responder on the worker's event loop (one request per
connection), so a readiness check can ask the job store the same way ``inferd serve``'s /readyz does.
Requests are routed and refused as ``inferd serve`` does it (paths percent-decoded, query parameters
refused rather than ignored, errors in the API's body), so probes behave the same on either port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl, unquote

from inferd.core.errors import (
    InferdError,
    MethodNotAllowedError,
    RouteNotFoundError,
    quote,
    unknown_query_parameters,
)
from inferd.http.errors import error_body, error_headers, error_status
from inferd.metrics import MetricsExposition

logger = logging.getLogger("inferd.worker")

ReadinessCheck = Callable[[], Awaitable[list[str]]]
_JSON = {"Content-Type": "application/json"}
_PATHS = ("/metrics", "/livez", "/readyz")
_METHODS = ("GET", "HEAD")
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    422: "Unprocessable Entity",
    503: "Service Unavailable",
}
_HEADER_TIMEOUT_S = 5.0


class WorkerEndpoints:
    def __init__(self, *, exposition: MetricsExposition, readiness: ReadinessCheck) -> None:
        self._exposition = exposition
        self._readiness = readiness
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._handle, host, port)

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _HEADER_TIMEOUT_S)
            status, headers, body = await self._respond(head)
            method = head.split(b" ", 1)[0]
            fields = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
            writer.write(
                f"HTTP/1.1 {status} {_REASONS[status]}\r\n{fields}"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode("latin-1")
            )
            if method != b"HEAD":
                writer.write(body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            pass  # a client that went away or never sent a request: nothing to answer
        except Exception:
            logger.exception("worker HTTP endpoint failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _respond(self, head: bytes) -> tuple[int, dict[str, str], bytes]:
        request_line, _, header_block = head.partition(b"\r\n")
        parts = request_line.split(b" ")
        if len(parts) != 3:
            return 400, _JSON, b'{"status": "bad request"}'
        method = parts[0].decode("latin-1")
        target, _, query = parts[1].decode("latin-1").partition("?")
        # Routed as ``inferd serve`` routes: on the percent-decoded path, its query string apart.
        path = unquote(target)
        if path not in _PATHS:
            return _error(
                RouteNotFoundError(f"no route {method} {quote(path)}; this port serves {', '.join(_PATHS)}")
            )
        if method not in _METHODS:
            return _error(MethodNotAllowedError.on(method, path, _METHODS))
        unknown = list(dict.fromkeys(name for name, _ in parse_qsl(query, keep_blank_values=True)))
        if unknown:
            return _error(unknown_query_parameters("GET", path, unknown, []))
        if path == "/metrics":
            headers = _headers(header_block)
            body, response_headers = await asyncio.to_thread(
                self._exposition.render, headers.get("accept"), headers.get("accept-encoding")
            )
            return 200, response_headers, body
        if path == "/livez":
            return 200, _JSON, b'{"status": "ok"}'
        reasons = await self._readiness()
        if reasons:
            return 503, _JSON, json.dumps({"status": "not_ready", "reasons": reasons}).encode()
        return 200, _JSON, b'{"status": "ready"}'


def _error(error: InferdError) -> tuple[int, dict[str, str], bytes]:
    """The API's error status, headers and body for ``error`` (without a request id: this port has none)."""
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in error_headers(error)}
    return error_status(error), {**_JSON, **headers}, error_body(error.code, error.message, None)


def _headers(block: bytes) -> dict[str, str]:
    headers = {}
    for line in block.decode("latin-1").split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers
