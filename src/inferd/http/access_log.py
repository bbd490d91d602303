"""One JSON line per request, written through a buffer flushed about once a second.

A ``logging`` handler per line costs a third of an echo call's throughput (PERF-NOTES); a plain
buffered write does not. Keys, payloads and bodies are never logged.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import IO, Any

import orjson

from inferd.http.wire import RequestInfo

# The path, model and version come from the client; a 60 KB model name is logged as its prefix.
MAX_FIELD_CHARS = 256
_CLIENT_FIELDS = ("path", "model", "version")


def _cut(value: str | None) -> str | None:
    return value if value is None or len(value) <= MAX_FIELD_CHARS else value[:MAX_FIELD_CHARS] + "..."


class AccessLog:
    def __init__(
        self, destination: str, *, flush_bytes: int = 64 * 1024, clock: Callable[[], float] = time.time
    ) -> None:
        self.enabled = destination.lower() not in ("off", "none", "")
        self._owns_stream = False
        self._stream: IO[str] | None = None
        if self.enabled:
            if destination == "-":
                self._stream = sys.stderr
            else:
                self._stream = open(destination, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
                self._owns_stream = True
        self._buffer: list[bytes] = []
        self._size = 0
        self._flush_bytes = flush_bytes
        self._lock = threading.Lock()
        self._clock = clock
        # Lines within one second share their time up to the seconds; formatting a datetime per line
        # cost more than the rest of the line.
        self._second = -1
        self._second_text = ""

    def request(self, info: RequestInfo, method: str, path: str, latency_ms: float) -> None:
        """One request's line."""
        if not self.enabled:
            return
        record: dict[str, Any] = {
            "request_id": info.request_id,
            "tenant": info.tenant,
            "method": method,
            "path": _cut(path),
            "status": info.status,
            "model": _cut(info.model),
            "version": _cut(info.version),
            "latency_ms": latency_ms,
        }
        if info.error:
            record["error"] = info.error
        if info.cause:
            record["cause"] = info.cause
        self._append(record)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        for field in _CLIENT_FIELDS:
            if field in record:
                record[field] = _cut(record[field])
        self._append(record)

    def _append(self, record: dict[str, Any]) -> None:
        now = self._clock()
        second = int(now)
        if second != self._second:
            self._second = second
            self._second_text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        record["time"] = f"{self._second_text}{int((now - second) * 1000):03d}Z"
        record["level"] = "info"  # the fields every log line of the process has (inferd.logs)
        record["logger"] = "inferd.access"
        line = orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
        with self._lock:
            self._buffer.append(line)
            self._size += len(line)
            if self._size < self._flush_bytes:
                return
        self.flush()

    def flush(self) -> None:
        with self._lock:
            if not self._buffer or self._stream is None:
                return
            data = b"".join(self._buffer).decode()
            self._buffer.clear()
            self._size = 0
        try:
            self._stream.write(data)
            self._stream.flush()
        except (OSError, ValueError):  # closed or broken stream: the log must never fail a request
            pass

    def close(self) -> None:
        self.flush()
        if self._owns_stream and self._stream is not None:
            self._stream.close()
        self._stream = None
