"""One table from error codes to HTTP statuses, and the two error bodies: the native one and the Open
Inference Protocol's."""

from __future__ import annotations

import orjson

from inferd.core.errors import ErrorCode, InferdError, retry_after_seconds

STATUS_BY_CODE: dict[ErrorCode, int] = {
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.MODEL_NOT_FOUND: 404,
    ErrorCode.JOB_NOT_FOUND: 404,
    ErrorCode.INVALID_INPUT: 422,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.REQUEST_TIMEOUT: 408,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.OVERLOADED: 503,
    ErrorCode.STORE_UNAVAILABLE: 503,
    ErrorCode.TIMEOUT: 504,
    ErrorCode.INFERENCE_ERROR: 500,
    ErrorCode.CONFLICT: 409,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
}


def error_status(error: InferdError) -> int:
    return STATUS_BY_CODE.get(error.code, 500)


def error_headers(error: InferdError) -> list[tuple[bytes, bytes]]:
    headers: list[tuple[bytes, bytes]] = []
    if error.code is ErrorCode.UNAUTHENTICATED:
        headers.append((b"www-authenticate", b"Bearer"))
    seconds = retry_after_seconds(error)
    if seconds is not None:
        headers.append((b"retry-after", str(seconds).encode()))
    allowed = getattr(error, "allowed", None)
    if allowed:
        headers.append((b"allow", ", ".join(allowed).encode()))
    return headers


def error_body(code: str, message: str, request_id: str | None) -> bytes:
    """The API's error body; ``request_id`` None where the port has none (a worker's probe port)."""
    body: dict[str, object] = {"error": {"code": code, "message": message}}
    if request_id is not None:
        body["request_id"] = request_id
    return orjson.dumps(body)


def v2_error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})
