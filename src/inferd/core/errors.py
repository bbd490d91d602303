"""One error tree for the whole server.

Errors carry a stable ``code`` (the API's error code) and a message for humans; they never carry
HTTP status codes. Adapters (native HTTP, V2 protocol, CLI, job worker) map codes to their own shape.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("inferd.errors")

# Messages quote at most this much of what a client sent (a model name, a job id, a field name): a
# 60 KB name must not come back in a 404 body, nor reach the logs.
QUOTE_CHARS = 64


def quote(text: str, limit: int = QUOTE_CHARS) -> str:
    """``repr`` of client-sent text, cut to a short prefix that says how long the whole was."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def shorten(text: str, limit: int = 300) -> str:
    """A message that may embed client data (a JSON Schema error quotes the offending value), cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


class InferdError(Exception):
    """Root of every error inferd raises on purpose."""

    code: str = "inference_error"

    def __init__(self, message: str, *, cause: str | None = None, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        # A short cause that is safe to log: never input data (the message may quote the input).
        self.cause = cause
        # What only the server log gets (a model's exception text may carry paths, SQL or another
        # tenant's data); adapters log it under the request's id and tell the client where it is.
        self.detail = detail

    def for_client(self, reference: str, *, what: str = "request id") -> str:
        """The message a client gets; the private detail, if any, goes to the server log under
        ``reference`` (a request id, a job id), which the message names."""
        if self.detail is None:
            return self.message
        logger.error("%s %s: %s: %s", what, reference, self.code, self.detail)
        return f"{self.message}; the server log has the details under {what} {reference}"


class ConfigError(InferdError):
    """Settings, keys or a model repository entry are malformed; says which and what to fix."""

    code = "config_error"


class UnauthenticatedError(InferdError):
    code = "unauthenticated"


class ForbiddenError(InferdError):
    code = "forbidden"


class ModelNotFoundError(InferdError):
    code = "model_not_found"


class ModelNotReadyError(InferdError):
    """The model exists but failed to load (or is not loaded); reported as a pipeline failure."""

    code = "inference_error"


class InvalidInputError(InferdError):
    code = "invalid_input"


class PayloadTooLargeError(InferdError):
    code = "payload_too_large"


class RequestTimeoutError(InferdError):
    """The client did not send its request's headers or body in time."""

    code = "request_timeout"


class RateLimitedError(InferdError):
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class OverloadedError(InferdError):
    code = "overloaded"

    def __init__(self, message: str, *, retry_after_s: float = 1.0, cause: str | None = None) -> None:
        super().__init__(message, cause=cause)
        self.retry_after_s = retry_after_s


class StoreUnavailableError(InferdError):
    """The job store cannot be reached or written right now; the client may retry."""

    code = "store_unavailable"

    def __init__(self, message: str, *, retry_after_s: float = 1.0, cause: str | None = None) -> None:
        super().__init__(message, cause=cause)
        self.retry_after_s = retry_after_s


class InferenceTimeoutError(InferdError):
    code = "timeout"


class InferenceError(InferdError):
    code = "inference_error"


class JobNotFoundError(InferdError):
    code = "job_not_found"


class ConflictError(InferdError):
    code = "conflict"


class RouteNotFoundError(InferdError):
    """No route of a front end has this path."""

    code = "not_found"


class KeyNotFoundError(InferdError):
    """No run-time API key with this id (or it was revoked already)."""

    code = "not_found"


class MethodNotAllowedError(InferdError):
    code = "method_not_allowed"

    def __init__(self, message: str, *, allowed: list[str]) -> None:
        super().__init__(message)
        self.allowed = allowed


class MissingExtraError(InferdError):
    """A runtime needs an optional dependency that is not installed."""

    code = "inference_error"

    def __init__(self, runtime: str, extra: str, module: str) -> None:
        super().__init__(
            f"the {runtime!r} runtime needs the Python package {module!r}, which is not installed; "
            f"install it with: pip install 'inferd[{extra}]'"
        )
        self.extra = extra
