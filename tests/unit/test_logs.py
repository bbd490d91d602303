"""inferd.logs: one JSON object per line with time, level, logger, message, the request id of the request
being served, context fields (trace ids) and tracebacks; uvicorn's loggers, warnings and uncaught
exceptions go through the same handler."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from inferd.logs import REQUEST_ID, JsonLogFormatter, configure_logging


def record(
    message: str = "hello %s", *args: Any, exc_info: Any = None, name: str = "inferd.test"
) -> logging.LogRecord:
    return logging.LogRecord(name, logging.WARNING, __file__, 1, message, args or ("world",), exc_info)


def test_a_line_has_time_level_logger_and_message() -> None:
    line = json.loads(JsonLogFormatter().format(record()))
    assert line["level"] == "warning" and line["logger"] == "inferd.test" and line["message"] == "hello world"
    assert line["time"].endswith("Z") and "T" in line["time"]
    assert "request_id" not in line


def test_the_request_id_of_the_request_being_served_is_added() -> None:
    formatter = JsonLogFormatter()

    async def serve(request_id: str) -> dict[str, Any]:
        REQUEST_ID.set(request_id)
        await asyncio.sleep(0)
        return dict(json.loads(formatter.format(record())))

    async def two_requests() -> list[dict[str, Any]]:
        return list(await asyncio.gather(serve("req-a"), serve("req-b")))

    first, second = asyncio.run(two_requests())
    assert (first["request_id"], second["request_id"]) == ("req-a", "req-b")
    assert "request_id" not in json.loads(formatter.format(record()))  # not leaked out of the tasks


def test_tracebacks_and_context_fields_are_fields_of_the_one_line() -> None:
    try:
        raise ValueError("bad")
    except ValueError:
        failing = record(exc_info=sys.exc_info())
    text = JsonLogFormatter(context=[lambda: {"trace_id": "t" * 32, "span_id": "s" * 16}]).format(failing)
    assert "\n" not in text
    line = json.loads(text)
    assert (
        "ValueError: bad" in line["exception"]
        and line["trace_id"] == "t" * 32
        and line["span_id"] == "s" * 16
    )


@pytest.fixture
def restored_logging() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, sys.excepthook, threading.excepthook)
    try:
        yield io.StringIO()
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        sys.excepthook, threading.excepthook = saved[2], saved[3]
        logging.captureWarnings(False)


def test_configure_logging_sends_uvicorn_warnings_and_crashes_through_json(
    restored_logging: io.StringIO,
) -> None:
    configure_logging("info", stream=restored_logging)
    logging.getLogger("uvicorn.error").info("Application startup complete.")
    logging.getLogger("inferd").debug("not at info level")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("careful", UserWarning, stacklevel=1)
    try:
        raise RuntimeError("crash")
    except RuntimeError:
        sys.excepthook(*sys.exc_info())
    lines = [json.loads(line) for line in restored_logging.getvalue().splitlines()]
    assert [(line["logger"], line["level"]) for line in lines] == [
        ("uvicorn.error", "info"),
        ("py.warnings", "warning"),
        ("inferd", "critical"),
    ]
    assert "RuntimeError: crash" in lines[2]["exception"]
