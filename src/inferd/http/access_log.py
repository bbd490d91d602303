"""One JSON line per request, written through a buffer flushed about once a second.

A ``logging`` handler per line costs a third of an echo call's throughput (PERF-NOTES); a plain
buffered write does not. Keys, payloads and bodies are never logged.
"""

from __future__ import annotations

import sys
import threading
from datetime import UTC, datetime
from typing import IO, Any

import orjson

# The path, model and version come from the client; a 60 KB model name is logged as its prefix.
MAX_FIELD_CHARS = 256
_CLIENT_FIELDS = ("path", "model", "version")


class AccessLog:
    def __init__(self, destination: str, *, flush_bytes: int = 64 * 1024) -> None:
        self.enabled = destination.lower() not in ("off", "none", "")
        self._owns_stream = False
        self._stream: IO[str] | None = None
        if self.enabled:
            if destination == "-":
                self._stream = sys.stderr
            else:
                self._stream = open(destination, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
                self._owns_stream = True
        self._buffer: list[str] = []
        self._size = 0
        self._flush_bytes = flush_bytes
        self._lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        for field in _CLIENT_FIELDS:
            value = record.get(field)
            if value is not None and len(value) > MAX_FIELD_CHARS:
                record[field] = value[:MAX_FIELD_CHARS] + "..."
        record["time"] = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        record["level"] = "info"  # the fields every log line of the process has (inferd.logs)
        record["logger"] = "inferd.access"
        line = orjson.dumps(record).decode() + "\n"
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
            data = "".join(self._buffer)
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
