"""One error tree for the whole server.

Errors carry a stable ``code`` (the API's error code) and a message for humans; they never carry
HTTP status codes. Adapters (native HTTP, V2 protocol, CLI, job worker) map codes to their own shape.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError
    from pydantic_core import ErrorDetails

logger = logging.getLogger("inferd.errors")

# Messages quote at most this much of what a client sent (a model name, a job id, a field name): a
# 60 KB name must not come back in a 404 body, nor reach the logs.
QUOTE_CHARS = 64


def quote(text: str, limit: int = QUOTE_CHARS) -> str:
    """``repr`` of client-sent text, cut to a short prefix that says how long the whole was."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def quote_names(names: Sequence[str], shown: int = 5) -> str:
    """Client-sent names (fields, parameters) for a message: the first ``shown`` quoted, then a count."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(quote(name) for name in names[:shown]) + more


def shorten(text: str, limit: int = 300) -> str:
    """A message that may embed client data (a JSON Schema error quotes the offending value), cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validation_problem(error: ErrorDetails, *, whole: str = "", prefix: str = "") -> str:
    """One pydantic error as ``location: message`` (``whole`` names the location when the problem is the
    value itself; empty: the message alone)."""
    # A ValueError raised by a validator is inferd's own sentence: without pydantic's "Value error, ",
    # and without the location again when the sentence starts with it.
    message = str(error["ctx"]["error"]) if error["type"] == "value_error" else error["msg"]
    location = ".".join(str(part) for part in error["loc"]) or whole
    if not location or message.startswith(f"{location}: "):
        return f"{prefix}{message}"
    return f"{prefix}{location}: {message}"


def validation_problems(exc: ValidationError, *, whole: str, prefix: str = "") -> str:
    """A pydantic validation error as one line, one :func:`validation_problem` per problem."""
    return "; ".join(validation_problem(error, whole=whole, prefix=prefix) for error in exc.errors())


# The cause of an error raised because the call passed its deadline (e.g. its model process was
# stopped): the client is answered with a timeout, so it is expected, not a model failure.
DEADLINE_CAUSE = "deadline"


class ErrorCode(enum.StrEnum):
    """Every error code inferd answers with; each adapter maps them to its statuses in one table."""

    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    MODEL_NOT_FOUND = "model_not_found"
    JOB_NOT_FOUND = "job_not_found"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    INVALID_INPUT = "invalid_input"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    REQUEST_TIMEOUT = "request_timeout"
    RATE_LIMITED = "rate_limited"
    OVERLOADED = "overloaded"
    STORE_UNAVAILABLE = "store_unavailable"
    TIMEOUT = "timeout"
    INFERENCE_ERROR = "inference_error"
    CONFLICT = "conflict"
    CONFIG_ERROR = "config_error"


class InferdError(Exception):
    """Root of every error inferd raises on purpose."""

    code: ErrorCode = ErrorCode.INFERENCE_ERROR

    def __init__(self, message: str, *, cause: str | None = None, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        # A short cause that is safe to log: never input data (the message may quote the input).
        self.cause = cause
        # What only the server log gets (a model's exception text may carry paths, SQL or another
        # tenant's data); adapters log it under the request's id and tell the client where it is.
        self.detail = detail
        # The model version the request had resolved to when it failed (None: it failed before): the
        # access log names it on error lines as on success lines.
        self.version: str | None = None

    def for_client(self, reference: str, *, what: str = "request id") -> str:
        """The message a client gets; the private detail, if any, goes to the server log under
        ``reference`` (a request id, a job id), which the message names."""
        if self.detail is None:
            return self.message
        logger.error("%s %s: %s: %s", what, reference, self.code, self.detail)
        return f"{self.message}; the server log has the details under {what} {reference}"


class ConfigError(InferdError):
    """Settings, keys or a model repository entry are malformed; says which and what to fix."""

    code = ErrorCode.CONFIG_ERROR


class UnauthenticatedError(InferdError):
    code = ErrorCode.UNAUTHENTICATED


class ForbiddenError(InferdError):
    code = ErrorCode.FORBIDDEN


class ModelNotFoundError(InferdError):
    code = ErrorCode.MODEL_NOT_FOUND


class ModelNotReadyError(InferdError):
    """The model exists but failed to load (or is not loaded); reported as a pipeline failure."""

    code = ErrorCode.INFERENCE_ERROR


class InvalidInputError(InferdError):
    code = ErrorCode.INVALID_INPUT


def unknown_query_parameters(
    method: str, path: str, unknown: Sequence[str], accepted: Sequence[str]
) -> InvalidInputError:
    """The refusal of query parameters a route does not take (every front end refuses them the same
    way rather than ignore them: a misspelt filter must not silently match everything)."""
    plural = "s" if len(unknown) > 1 else ""
    takes = f"takes only {', '.join(accepted)}" if accepted else "takes no query parameters"
    return InvalidInputError(
        f"unknown query parameter{plural} {quote_names(unknown)}; {method} {path} {takes}"
    )


def retry_after_seconds(error: InferdError) -> int | None:
    """Whole seconds to wait before retrying (HTTP's Retry-After, gRPC's retry-after trailer), rounded
    up and at least 1; None when the error carries no retry delay."""
    retry_after = getattr(error, "retry_after_s", None)
    if retry_after is None:
        return None
    return max(1, int(-(-float(retry_after) // 1)))


class PayloadTooLargeError(InferdError):
    code = ErrorCode.PAYLOAD_TOO_LARGE


class RequestTimeoutError(InferdError):
    """The client did not send its request's headers or body in time."""

    code = ErrorCode.REQUEST_TIMEOUT


class RateLimitedError(InferdError):
    code = ErrorCode.RATE_LIMITED

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class OverloadedError(InferdError):
    code = ErrorCode.OVERLOADED

    def __init__(self, message: str, *, retry_after_s: float = 1.0, cause: str | None = None) -> None:
        super().__init__(message, cause=cause)
        self.retry_after_s = retry_after_s


class StoreUnavailableError(InferdError):
    """The job store cannot be reached or written right now; the client may retry."""

    code = ErrorCode.STORE_UNAVAILABLE

    def __init__(self, message: str, *, retry_after_s: float = 1.0, cause: str | None = None) -> None:
        super().__init__(message, cause=cause)
        self.retry_after_s = retry_after_s


class InferenceTimeoutError(InferdError):
    code = ErrorCode.TIMEOUT


class InferenceError(InferdError):
    code = ErrorCode.INFERENCE_ERROR


class JobNotFoundError(InferdError):
    code = ErrorCode.JOB_NOT_FOUND


class ConflictError(InferdError):
    code = ErrorCode.CONFLICT


class RouteNotFoundError(InferdError):
    """No route of a front end has this path."""

    code = ErrorCode.NOT_FOUND


class KeyNotFoundError(InferdError):
    """No run-time API key with this id (or it was revoked already)."""

    code = ErrorCode.NOT_FOUND


class MethodNotAllowedError(InferdError):
    code = ErrorCode.METHOD_NOT_ALLOWED

    def __init__(self, message: str, *, allowed: list[str]) -> None:
        super().__init__(message)
        self.allowed = allowed

    @classmethod
    def on(cls, method: str, path: str, allowed: Sequence[str]) -> MethodNotAllowedError:
        """The refusal of ``method`` on a path that takes only ``allowed`` (every front end words it so)."""
        return cls(f"{method} is not allowed on {path}; allowed: {', '.join(allowed)}", allowed=list(allowed))


class MissingExtraError(InferdError):
    """A runtime needs an optional dependency that is not installed."""

    code = ErrorCode.INFERENCE_ERROR

    def __init__(self, runtime: str, extra: str, module: str) -> None:
        super().__init__(
            f"the {runtime!r} runtime needs the Python package {module!r}, which is not installed; "
            f"install it with: pip install 'inferd[{extra}]'"
        )
        self.extra = extra
