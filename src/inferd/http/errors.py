"""One table from error codes to HTTP statuses, and the two error bodies: the native one and the Open
Inference Protocol's."""

from __future__ import annotations

import orjson

from inferd.core.errors import InferdError

STATUS_BY_CODE = {
    "unauthenticated": 401,
    "forbidden": 403,
    "model_not_found": 404,
    "job_not_found": 404,
    "invalid_input": 422,
    "payload_too_large": 413,
    "request_timeout": 408,
    "rate_limited": 429,
    "overloaded": 503,
    "store_unavailable": 503,
    "timeout": 504,
    "inference_error": 500,
    "conflict": 409,
    "not_found": 404,
    "method_not_allowed": 405,
}


def error_status(error: InferdError) -> int:
    return STATUS_BY_CODE.get(error.code, 500)


def error_headers(error: InferdError) -> list[tuple[bytes, bytes]]:
    headers: list[tuple[bytes, bytes]] = []
    if error.code == "unauthenticated":
        headers.append((b"www-authenticate", b"Bearer"))
    retry_after = getattr(error, "retry_after_s", None)
    if retry_after is not None:
        seconds = max(1, int(-(-float(retry_after) // 1)))
        headers.append((b"retry-after", str(seconds).encode()))
    allowed = getattr(error, "allowed", None)
    if allowed:
        headers.append((b"allow", ", ".join(allowed).encode()))
    return headers


def error_body(code: str, message: str, request_id: str) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message}, "request_id": request_id})


def v2_error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})
