"""SQLite connector: the embedded default, one file, no server.

sqlite3 is blocking and a connection belongs to one thread, so every call runs on one dedicated
background thread owning one connection: calls from the API and an in-process worker are serialized
there, and the event loop never blocks on disk. Other processes may use the same file: WAL lets
readers run beside the single writer, busy_timeout makes writers queue instead of failing, and every
read-modify-write runs as one statement or inside ``BEGIN IMMEDIATE``. A writer waits for the lock at
most ``busy_timeout_s`` (1.5 s): longer means the file is held by something else (a backup, a
shell), and the client gets StoreUnavailableError (503) rather than a hang.

Values: timestamps are fixed-width ISO-8601 UTC text (they sort as text), booleans integers, JSON
text; id lists one JSON parameter.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson

from inferd.core.errors import ConfigError, ConflictError, InvalidInputError, StoreUnavailableError
from inferd.jobs.connector import Params, Query, Row
from inferd.jobs.migrations import COLUMN_KINDS, Kind, apply_sqlite_migrations
from inferd.jobs.sqlite_sql import QUERIES
from inferd.jobs.store import JobStore

T = TypeVar("T")

log = logging.getLogger(__name__)

# Primary result codes that mean "the file cannot be written now" (locked by another process, a
# read-only file or file system, a full disk, an I/O error), not a bad statement.
_UNAVAILABLE = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
    }
)

# RETURNING needs 3.35 (2021); Python on Linux usually links the distribution's SQLite, which may be older.
MIN_SQLITE = (3, 35, 0)


def to_text(value: datetime) -> str:
    # Naive datetimes are taken as UTC (PostgreSQL's session time zone is UTC too).
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def dump_json(value: Any) -> str:
    try:
        # numpy arrays and scalars are accepted because model outputs are often made of them.
        return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()
    except orjson.JSONEncodeError as exc:
        # orjson also refuses integers beyond 64 bits; even stored exactly they would be read back
        # as floats, so they are refused rather than silently altered.
        raise InvalidInputError(f"job data is not JSON-serializable: {exc}") from exc


def _encode(name: str, value: Any) -> Any:
    if value is None:
        return None
    if COLUMN_KINDS.get(name) is Kind.JSON or isinstance(value, list | tuple | dict):
        return dump_json(value)
    if isinstance(value, datetime):
        return to_text(value)
    if isinstance(value, bool):
        return int(value)
    return value


def _encode_all(params: Params) -> dict[str, Any]:
    return {name: _encode(name, value) for name, value in params.items()}


def _decoder(name: str) -> Callable[[Any], Any] | None:
    kind = COLUMN_KINDS.get(name)
    if kind is Kind.JSON:
        return orjson.loads
    if kind is Kind.TIME:
        return datetime.fromisoformat
    if kind is Kind.BOOLEAN:
        return bool
    return None


def _rows(cursor: sqlite3.Cursor) -> list[Row]:
    if cursor.description is None:
        return []
    names = [column[0] for column in cursor.description]
    decoders = [_decoder(name) for name in names]
    rows: list[Row] = []
    for raw in cursor.fetchall():
        rows.append(
            {
                name: value if decode is None or value is None else decode(value)
                for name, decode, value in zip(names, decoders, raw, strict=True)
            }
        )
    return rows


class SQLiteConnector:
    """The jobs of one SQLite file. ``open()`` creates the file and applies migrations."""

    def __init__(self, path: str, *, busy_timeout_s: float = 1.5) -> None:
        self.path = path
        self.busy_timeout_s = busy_timeout_s
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    # -- plumbing ---------------------------------------------------------------------------------

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        executor = self._executor
        if executor is None:
            raise RuntimeError("the SQLite job store is not open")
        return await asyncio.get_running_loop().run_in_executor(executor, self._call, fn)

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        if conn is None:
            raise RuntimeError("the SQLite job store is not open")
        try:
            return fn(conn)
        except sqlite3.IntegrityError as exc:
            raise ConflictError(f"the job store refused a duplicate: {exc}") from exc
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF in _UNAVAILABLE:
                raise StoreUnavailableError(
                    f"the job store (SQLite file {self.path}) cannot be written right now ({exc}); retry shortly",
                    cause=type(exc).__name__,
                ) from exc
            raise

    @staticmethod
    def _write_tx(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

    def _connect(self) -> None:
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise ConfigError(
                f"the SQLite job store needs SQLite >= 3.35 (for RETURNING), but Python is linked "
                f"against {sqlite3.sqlite_version}; use a newer Python build or the PostgreSQL store"
            )
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
        try:
            self._enable_wal(conn)
            # NORMAL in WAL mode only risks the last commits on power loss (never corruption) and
            # saves an fsync per commit, which would otherwise bound the job rate.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
            self.applied_migrations = apply_sqlite_migrations(conn, where=repr(self.path))
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _enable_wal(self, conn: sqlite3.Connection) -> None:
        # Switching a new file to WAL needs an exclusive lock and SQLite reports contention for it
        # at once, without the busy handler, so processes opening a fresh file together retry here.
        # Once switched, the mode is stored in the file and this is a no-op.
        deadline = time.monotonic() + self.busy_timeout_s
        while True:
            try:
                row = conn.execute("PRAGMA journal_mode=WAL").fetchone()
                break
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        if row is None or str(row[0]).lower() != "wal":
            log.warning(
                "job store %s: SQLite refused WAL mode (journal_mode is %s); readers will block writers",
                self.path,
                None if row is None else row[0],
            )

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            # Refreshes planner statistics where they drifted; SQLite recommends it before closing.
            conn.execute("PRAGMA optimize")
        except sqlite3.Error as exc:  # e.g. busy: only a missed optimization
            log.debug("job store %s: PRAGMA optimize skipped: %s", self.path, exc)
        finally:
            conn.close()

    async def open(self, on_notification: Callable[[], None]) -> None:
        # Only this process's writes wake its workers (the store does that); other processes
        # sharing the file are found by polling.
        if self._executor is not None:
            raise RuntimeError("the SQLite job store is already open")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inferd-sqlite")
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._connect)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    async def close(self) -> None:
        executor = self._executor
        if executor is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._disconnect)
        finally:
            self._executor = None
            executor.shutdown(wait=False)

    # -- queries ----------------------------------------------------------------------------------

    @staticmethod
    def _statements(query: Query) -> Sequence[str]:
        text = QUERIES[query]
        return (text,) if isinstance(text, str) else text

    async def fetch(self, query: Query, params: Params) -> list[Row]:
        statements, values = self._statements(query), _encode_all(params)

        def do(conn: sqlite3.Connection) -> list[Row]:
            if len(statements) == 1:
                return _rows(conn.execute(statements[0], values))

            def tx(c: sqlite3.Connection) -> list[Row]:
                rows: list[Row] = []
                for statement in statements:
                    rows = _rows(c.execute(statement, values))
                return rows

            return self._write_tx(conn, tx)

        return await self._run(do)

    async def execute(self, query: Query, params: Params) -> int:
        [statement] = self._statements(query)
        values = _encode_all(params)
        return await self._run(lambda conn: conn.execute(statement, values).rowcount)

    async def fetch_batch(self, query: Query, rows: Sequence[Params], params: Params) -> list[Row]:
        [statement] = self._statements(query)
        items = [_encode_all({**params, **row}) for row in rows]

        def tx(conn: sqlite3.Connection) -> list[Row]:
            found: list[Row] = []
            for item in items:
                found += _rows(conn.execute(statement, item))
            return found

        return await self._run(lambda conn: self._write_tx(conn, tx))

    def announce_work(self) -> None:
        """Nothing to send: other processes poll the file."""


def sqlite_store(path: str, *, busy_timeout_s: float = 1.5) -> JobStore:
    """A (not yet opened) job store on the SQLite file at ``path``."""
    return JobStore(SQLiteConnector(path, busy_timeout_s=busy_timeout_s))
