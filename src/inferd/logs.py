"""Process logging for ``inferd serve`` and ``inferd worker``: every line one JSON object.

Each line has ``time``, ``level``, ``logger`` and ``message``; ``request_id`` when it was written while
serving a request (the HTTP front sets :data:`REQUEST_ID` for the request's task); ``exception`` with the
traceback when there is one; and whatever a context provider adds (the tracing extra adds ``trace_id`` and
``span_id``). uvicorn's own loggers, Python warnings and uncaught exceptions go through the same handler.

The access log is separate on purpose: a ``logging`` call per request costs a measurable share of a small
model's call, so it has its own buffered JSON writer (``http/access_log.py``) with the same fields.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from types import TracebackType
from typing import IO, Any

import orjson

# Set once per request by the HTTP front; each request runs in its own task, so no reset is needed.
REQUEST_ID: ContextVar[str | None] = ContextVar("inferd_request_id", default=None)

ContextProvider = Callable[[], dict[str, str]]


class JsonLogFormatter(logging.Formatter):
    def __init__(self, *, context: list[ContextProvider] | None = None) -> None:
        super().__init__()
        self._context = context or []

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or REQUEST_ID.get()
        if request_id:
            entry["request_id"] = request_id
        for provider in self._context:
            entry.update(provider())
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(
    level: str, *, context: list[ContextProvider] | None = None, stream: IO[str] | None = None
) -> None:
    """Route every log record of the process, uvicorn's included, to one JSON handler on ``stream``
    (stderr)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonLogFormatter(context=context))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # uvicorn is started with log_config=None, so its loggers keep no handlers and propagate here.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    logging.captureWarnings(True)
    crash_logger = logging.getLogger("inferd")

    def log_uncaught(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        if issubclass(kind, KeyboardInterrupt):
            sys.__excepthook__(kind, value, tb)
            return
        crash_logger.critical("uncaught exception", exc_info=(kind, value, tb))

    def log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is not None and not isinstance(args.exc_value, SystemExit):
            crash_logger.critical(
                "uncaught exception in thread %s",
                args.thread.name if args.thread else "?",
                exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
            )

    sys.excepthook = log_uncaught
    threading.excepthook = log_uncaught_in_thread
