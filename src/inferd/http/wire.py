"""ASGI primitives shared by the dispatcher and the handlers: types, the per-request info the access
log reads, header lookup, the size-limited body reader and the response writer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from inferd.core.errors import InvalidInputError, PayloadTooLargeError
from inferd.core.settings import setting_source
from inferd.core.tenancy import malformed_authorization

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class BodyLimit:
    """The most bytes a request body may have, and what sets the limit or what to do instead (the 413
    says it)."""

    size: int
    advice: str

    @classmethod
    def server(cls, size: int) -> BodyLimit:
        """The server's ``max_body_bytes``."""
        return cls(size, f"the limit is {setting_source('max_body_bytes')}")

    def refuse(self, what: str) -> PayloadTooLargeError:
        return PayloadTooLargeError(f"{what} exceeds the {self.size}-byte limit; {self.advice}")


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


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def api_key_from_headers(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The request's key; None when it sent none. An Authorization header without a Bearer key (and
    no X-API-Key) is refused here, naming what it got."""
    malformed: str | None = None
    for key, value in headers:
        if key == b"authorization":
            text = value.decode("latin-1")
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            malformed = text
        elif key == b"x-api-key" and value:
            return value.decode("latin-1").strip()
    if malformed is not None:
        raise malformed_authorization(malformed)
    return None


async def read_body(scope: Scope, receive: Receive, limit: BodyLimit) -> bytes:
    """The whole body, refusing with 413 as soon as it passes ``limit`` (declared or streamed)."""
    declared = header(scope, b"content-length")
    if declared is not None:
        try:
            if int(declared) > limit.size:
                raise limit.refuse(f"request body of {int(declared)} bytes")
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
            if size > limit.size:
                raise limit.refuse("request body")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def send_response(
    send: Send,
    status: int,
    body: bytes,
    request_id: str,
    headers: list[tuple[bytes, bytes]] | None = None,
    content_type: bytes = b"application/json",
) -> None:
    all_headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode()),
    ]
    if headers:
        all_headers.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": body})
