"""The server's outermost ASGI callable, in pure ASGI (no BaseHTTPMiddleware).

It gives every response an ``X-Request-ID``, enforces the body limit while reading (chunked bodies
too), writes the access log line, and serves the predict routes directly: they are the hot path, and
FastAPI's routing, dependency injection and encoders cost more than the model call of a small model.
Every other route goes to the FastAPI app, which also documents the predict routes in ``/docs``.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from inferd.core.errors import InferdError, InvalidInputError, PayloadTooLargeError
from inferd.http.access_log import AccessLog
from inferd.http.errors import error_body, error_headers, error_status

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_SANE_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")
_JSON_HEADERS = [(b"content-type", b"application/json")]


@dataclass(slots=True)
class RequestInfo:
    """What the access log says about one request; filled in by whoever handles it."""

    request_id: str
    tenant: str | None = None
    model: str | None = None
    version: str | None = None
    status: int = 0
    error: str | None = None


def request_info(scope: Scope) -> RequestInfo:
    info: RequestInfo = scope["state"]["inferd"]
    return info


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def api_key_from_headers(headers: list[tuple[bytes, bytes]]) -> str | None:
    for key, value in headers:
        if key == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif key == b"x-api-key" and value:
            return value.decode("latin-1").strip()
    return None


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole body, refusing with 413 as soon as it passes ``limit`` (declared or streamed)."""
    declared = header(scope, b"content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise PayloadTooLargeError(
                    f"request body of {int(declared)} bytes exceeds the {limit}-byte limit"
                )
        except ValueError:
            raise InvalidInputError("Content-Length header is not a number") from None
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidInputError("client disconnected before sending the whole body")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLargeError(f"request body exceeds the {limit}-byte limit")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def send_response(
    send: Send, status: int, body: bytes, request_id: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    all_headers = [
        *_JSON_HEADERS,
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode()),
    ]
    if headers:
        all_headers.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, error: InferdError, info: RequestInfo) -> None:
    info.status = error_status(error)
    info.error = error.code
    await send_response(
        send,
        info.status,
        error_body(error.code, error.message, info.request_id),
        info.request_id,
        error_headers(error),
    )


FastHandler = Callable[[Scope, Receive, Send, RequestInfo, str, str | None, bool], Awaitable[None]]


class BodyLimitedReceive:
    """Wraps ``receive`` for the FastAPI side: raises PayloadTooLargeError past the limit."""

    __slots__ = ("_receive", "_limit", "_size")

    def __init__(self, receive: Receive, limit: int) -> None:
        self._receive = receive
        self._limit = limit
        self._size = 0

    async def __call__(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self._size += len(message.get("body", b""))
            if self._size > self._limit:
                raise PayloadTooLargeError(f"request body exceeds the {self._limit}-byte limit")
        return message


class InferdASGI:
    def __init__(
        self,
        *,
        app: ASGIApp,
        predict: FastHandler | None,
        access_log: AccessLog,
        max_body_bytes: int,
    ) -> None:
        self._app = app
        self._predict = predict
        self._access_log = access_log
        self._max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        sent_id = header(scope, b"x-request-id")
        request_id = sent_id.decode() if sent_id and _SANE_REQUEST_ID.match(sent_id) else os.urandom(12).hex()
        info = RequestInfo(request_id)
        state = scope.setdefault("state", {})
        state["inferd"] = info
        state["request_id"] = request_id
        path: str = scope["path"]
        try:
            route = self._fast_route(scope["method"], path) if self._predict is not None else None
            if route is not None:
                assert self._predict is not None
                await self._predict(scope, receive, send, info, *route)
            else:
                await self._forward(scope, receive, send, info)
        finally:
            if self._access_log.enabled:
                record: dict[str, Any] = {
                    "request_id": request_id,
                    "tenant": info.tenant,
                    "method": scope["method"],
                    "path": path,
                    "status": info.status,
                    "model": info.model,
                    "version": info.version,
                    "latency_ms": round((time.perf_counter() - started) * 1000, 3),
                }
                if info.error:
                    record["error"] = info.error
                self._access_log.write(record)

    @staticmethod
    def _fast_route(method: str, path: str) -> tuple[str, str | None, bool] | None:
        if method != "POST" or not path.startswith("/v1/models/"):
            return None
        parts = path[len("/v1/models/") :].split("/")
        batch = parts[-1] == "batch"
        if batch:
            parts.pop()
        if not parts or parts[-1] != "predict" or not parts[0]:
            return None
        if len(parts) == 2:
            return parts[0], None, batch
        if len(parts) == 4 and parts[1] == "versions" and parts[2]:
            return parts[0], parts[2], batch
        return None

    async def _forward(self, scope: Scope, receive: Receive, send: Send, info: RequestInfo) -> None:
        id_header = (b"x-request-id", info.request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                info.status = message["status"]
                message["headers"] = [*message.get("headers", []), id_header]
            await send(message)

        await self._app(scope, BodyLimitedReceive(receive, self._max_body_bytes), send_with_id)
