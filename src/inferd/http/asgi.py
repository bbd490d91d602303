"""The server's outermost ASGI callable, in pure ASGI (no BaseHTTPMiddleware).

It gives every response an ``X-Request-ID``, enforces the body limit while reading (chunked bodies
too), writes the access log line, and serves the predict routes directly: they are the hot path, and
FastAPI's routing, dependency injection and encoders cost more than the model call of a small model.
Every other route goes to the FastAPI app, which also documents the predict routes in ``/docs``.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from inferd.core.errors import InferdError, InferenceError, InvalidInputError, PayloadTooLargeError
from inferd.http.access_log import AccessLog
from inferd.http.errors import error_body, error_headers, error_status

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Used with fullmatch: with match() and "$", a value ending in "\n" passed and was echoed back.
logger = logging.getLogger("inferd.http")

_SANE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
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
    cause: str | None = None


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
    info.cause = error.cause
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
        submit_job: FastHandler | None = None,
        access_log: AccessLog,
        max_body_bytes: int,
    ) -> None:
        self._app = app
        self._fast_handlers = {
            action: handler
            for action, handler in (("predict", predict), ("jobs", submit_job))
            if handler is not None
        }
        self._access_log = access_log
        self._max_body_bytes = max_body_bytes
        self._id_prefix = os.urandom(6).hex()
        self._id_counter = itertools.count()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        sent_id = header(scope, b"x-request-id")
        if sent_id and _SANE_REQUEST_ID.fullmatch(sent_id):
            request_id = sent_id.decode()
        else:
            # A random per-process prefix and a counter: unique across replicas without a syscall
            # (and a GIL release) per request, which os.urandom would cost.
            request_id = f"{self._id_prefix}{next(self._id_counter):012x}"
        info = RequestInfo(request_id)
        state = scope.setdefault("state", {})
        state["inferd"] = info
        state["request_id"] = request_id
        path: str = scope["path"]
        try:
            route = self._fast_route(scope["method"], path) if self._fast_handlers else None
            handler = self._fast_handlers.get(route[0]) if route is not None else None
            if route is not None and handler is not None:
                await handler(scope, receive, send, info, *route[1:])
            else:
                await self._forward(scope, receive, send, info)
        except Exception:
            # FastAPI's handler already answered and logged it (it re-raises for the server's sake);
            # anything else gets the native 500 here. Either way the server prints no second traceback.
            if info.status == 0:
                logger.exception("unhandled error on %s %s", scope["method"], path)
                error = InferenceError("internal error; the server log has the details")
                await send_error(send, error, info)
            info.error = info.error or "inference_error"
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
                if info.cause:
                    record["cause"] = info.cause
                self._access_log.write(record)

    @staticmethod
    def _fast_route(method: str, path: str) -> tuple[str, str, str | None, bool] | None:
        """``(action, name, version, batch)`` for ``/v1/models/{name}[/versions/{v}]/predict[/batch]``
        and ``.../jobs``; None for every other route."""
        if method != "POST" or not path.startswith("/v1/models/"):
            return None
        parts = path[len("/v1/models/") :].split("/")
        batch = parts[-1] == "batch"
        if batch:
            parts.pop()
        action = parts[-1]
        if action not in ("predict", "jobs") or (batch and action == "jobs") or not parts[0]:
            return None
        if len(parts) == 2:
            return action, parts[0], None, batch
        if len(parts) == 4 and parts[1] == "versions" and parts[2]:
            return action, parts[0], parts[2], batch
        return None

    async def _forward(self, scope: Scope, receive: Receive, send: Send, info: RequestInfo) -> None:
        id_header = (b"x-request-id", info.request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                info.status = message["status"]
                message["headers"] = [*message.get("headers", []), id_header]
            await send(message)

        if _declares_body(scope):
            # FastAPI turns any exception raised while it reads a body into "400 There was an error
            # parsing the body", so a limit raised from inside its receive never reached the client as
            # 413. Read (and limit) the body here, answer 413 ourselves, and replay it to the app.
            try:
                body = await read_body(scope, receive, self._max_body_bytes)
            except InferdError as exc:
                await send_error(send, exc, info)
                return
            await self._app(scope, _ReplayReceive(body, receive), send_with_id)
            return
        await self._app(scope, BodyLimitedReceive(receive, self._max_body_bytes), send_with_id)


def _declares_body(scope: Scope) -> bool:
    for key, value in scope["headers"]:
        if key == b"transfer-encoding" or (key == b"content-length" and value.strip() != b"0"):
            return True
    return False


class _ReplayReceive:
    """Hands the already-read body to the app once, then passes on the server's messages (disconnect)."""

    __slots__ = ("_body", "_receive")

    def __init__(self, body: bytes, receive: Receive) -> None:
        self._body: bytes | None = body
        self._receive = receive

    async def __call__(self) -> Message:
        if self._body is None:
            return await self._receive()
        body, self._body = self._body, None
        return {"type": "http.request", "body": body, "more_body": False}
