"""PostgreSQL connector: for several API/worker processes or hosts sharing one queue.

Every query is one statement on an autocommit pooled connection (one round trip). Concurrent
claimers are kept apart by ``FOR UPDATE SKIP LOCKED``; idempotent submission relies on the unique
(tenant, idempotency_key) index. Other processes are woken by LISTEN/NOTIFY.

Outages: the first query that finds the server gone answers StoreUnavailableError, and so does
every query after it, at once, while a probe tries to connect every PROBE_INTERVAL_S; when it
answers, a fresh pool replaces the old one. (The pool's own reconnection backs off exponentially,
which kept the API blocked for many seconds after the server was back.) Getting a pooled connection
waits at most ``answer_timeout_s``, so a client never waits long for a 503.

Work announcements are sent at most once per ``notify_debounce_s``: a committing NOTIFY takes a
cluster-wide lock, which serializes those commits and defeats group commit (measured: about 3x fewer
inserts/s when every insert notifies). An announcement inside the window schedules one trailing
notification at its end, so no wake-up is lost; it is merely up to one window late during a burst.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb, set_json_loads
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from inferd.core.errors import ConfigError, ConflictError, InvalidInputError, StoreUnavailableError
from inferd.jobs.connector import Params, Query, Row
from inferd.jobs.migrations import COLUMN_KINDS, Kind, apply_postgres_migrations
from inferd.jobs.postgres_sql import CHANNEL, QUERIES
from inferd.jobs.store import JobStore

log = logging.getLogger(__name__)

RECONNECT_MIN_S = 0.5
RECONNECT_MAX_S = 2.0  # LISTEN comes back within this of the database
PROBE_INTERVAL_S = 0.25  # while the database is away: how often to try it
# SQLSTATEs of a server going away: admin and crash shutdown, "cannot connect now" (starting up).
_SHUTDOWN_STATES = frozenset({"57P01", "57P02", "57P03"})


def is_unreachable(exc: BaseException) -> bool:
    """What a lost server looks like: refused or dropped connections (no SQLSTATE, or class 08), a
    shutdown, no pooled connection in time. A deadlock, a cancelled statement or a bad one is not an
    outage, and does not make the store drop its pool."""
    if isinstance(exc, psycopg.InterfaceError | PoolTimeout):
        return True
    if not isinstance(exc, psycopg.OperationalError):
        return False
    state = exc.sqlstate
    return state is None or state.startswith("08") or state in _SHUTDOWN_STATES


# Lower case only: the schema also goes into the search_path startup option, where unquoted names
# are folded to lower case, so anything else could name a different schema there than in DDL.
_SCHEMA_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")

# An escaped NUL that is not itself an escaped backslash followed by "u0000".
_ESCAPED_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def validate_schema_name(schema: str) -> str:
    if not _SCHEMA_RE.fullmatch(schema) or schema.startswith("pg_"):
        raise ConfigError(
            f"invalid PostgreSQL schema name {schema!r} for the job store: use 1-63 lower-case letters, "
            "digits and underscores, not starting with a digit or 'pg_'"
        )
    return schema


def _dumps(value: Any) -> bytes:
    try:
        # numpy arrays and scalars are accepted because model outputs are often made of them.
        data = orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)
    except orjson.JSONEncodeError as exc:
        # orjson also refuses integers beyond 64 bits; even stored exactly they would be read back
        # as floats, so they are refused rather than silently altered.
        raise InvalidInputError(f"job data is not JSON-serializable: {exc}") from exc
    if _ESCAPED_NUL.search(data):
        # jsonb cannot hold U+0000; refusing it here gives the client a 422 instead of a store error.
        raise InvalidInputError("job data contains the character U+0000, which PostgreSQL cannot store")
    return data


def _encode(name: str, value: Any) -> Any:
    # A mapping parameter (claim weights) travels as JSON too, as in SQLite.
    if value is not None and (COLUMN_KINDS.get(name) is Kind.JSON or isinstance(value, dict)):
        return Jsonb(value, dumps=_dumps)
    return value


def _encode_column(name: str, values: list[Any]) -> list[Any]:
    # Batched queries take JSON columns as text[] (see postgres_sql._array): plain strings adapt in
    # C, where a Jsonb wrapper per value goes through Python for each one.
    if COLUMN_KINDS.get(name) is Kind.JSON:
        return [None if value is None else _dumps(value).decode() for value in values]
    return values


def _encode_all(params: Params) -> dict[str, Any]:
    return {name: _encode(name, value) for name, value in params.items()}


async def _configure(conn: AsyncConnection[Any]) -> None:
    set_json_loads(orjson.loads, conn)


class PostgresConnector:
    """The jobs of one PostgreSQL schema (created if missing)."""

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "public",
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout_s: float = 10.0,
        notify_debounce_s: float = 0.01,
        answer_timeout_s: float = 1.0,
    ) -> None:
        self.dsn = dsn
        self.schema = validate_schema_name(schema)
        self.min_size = min_size
        self.max_size = max_size
        self.connect_timeout_s = connect_timeout_s
        self.notify_debounce_s = notify_debounce_s
        self.answer_timeout_s = answer_timeout_s
        self._pool: AsyncConnectionPool[Any] | None = None
        self._healing: asyncio.Task[None] | None = None  # set while the server is away
        self._listener: asyncio.Task[None] | None = None
        self._last_notify = float("-inf")  # loop time of the last notification this process sent
        self._notifier: asyncio.Task[None] | None = None  # the next notification, once scheduled
        self._tasks: set[asyncio.Task[None]] = set()  # notifications and pool replacements under way

    # -- plumbing ---------------------------------------------------------------------------------

    def _conninfo(self) -> str:
        try:
            params = conninfo_to_dict(self.dsn)
        except psycopg.ProgrammingError as exc:
            raise ConfigError(f"invalid PostgreSQL connection string for the job store: {exc}") from exc
        # Appended to any options the DSN already has rather than replacing them. UTC makes
        # timestamptz values come back as UTC datetimes and naive ones count as UTC, as in SQLite.
        options = f"{params.get('options') or ''} -c search_path={self.schema} -c TimeZone=UTC".strip()
        extra: dict[str, Any] = {"options": options}
        if "connect_timeout" not in params:
            extra["connect_timeout"] = max(1, round(self.connect_timeout_s))
        return make_conninfo(self.dsn, **extra)

    def _pool_or_raise(self) -> AsyncConnectionPool[Any]:
        if self._pool is None:
            raise RuntimeError("the PostgreSQL job store is not open")
        return self._pool

    async def _listen_connection(self, conninfo: str) -> AsyncConnection[Any]:
        conn = await AsyncConnection.connect(conninfo, autocommit=True)
        try:
            await conn.execute(f"LISTEN {CHANNEL}")
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _listen(
        self, conn: AsyncConnection[Any] | None, conninfo: str, on_notification: Callable[[], None]
    ) -> None:
        delay = RECONNECT_MIN_S
        while True:
            if conn is None:
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_S)
                try:
                    conn = await self._listen_connection(conninfo)
                except psycopg.Error as exc:
                    log.warning("job store: LISTEN reconnect failed, still polling: %s", exc)
                    continue
                delay = RECONNECT_MIN_S
                log.info("job store: LISTEN %s re-established", CHANNEL)
                # Notifications sent while disconnected are lost; let the workers look once.
                on_notification()
            try:
                async with conn:
                    async for notify in conn.notifies():
                        # The channel is database-wide; stores in other schemas are not our queue.
                        if notify.payload == self.schema:
                            on_notification()
            except psycopg.Error as exc:
                log.warning("job store: LISTEN connection lost, workers poll until it is back: %s", exc)
            conn = None

    async def _open_pool(self, conninfo: str, timeout_s: float) -> AsyncConnectionPool[Any]:
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            conninfo,
            min_size=self.min_size,
            max_size=self.max_size,
            kwargs={"autocommit": True, "row_factory": dict_row},
            configure=_configure,
            open=False,
            name=f"inferd-jobs-{self.schema}",
        )
        try:
            await pool.open(wait=True, timeout=timeout_s)
        except BaseException:
            await pool.close()
            raise
        return pool

    def _keep(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _unavailable(self, exc: BaseException | None) -> StoreUnavailableError:
        if exc is not None and self._healing is None and self._pool is not None:
            log.warning("job store: PostgreSQL cannot be reached (%s); answering 503 until it is back", exc)
            self._healing = asyncio.create_task(self._heal(), name="inferd-jobs-heal")
        return StoreUnavailableError(
            "the job store (PostgreSQL) cannot be reached right now; retry shortly",
            cause=None if exc is None else type(exc).__name__,
        )

    async def _heal(self) -> None:
        conninfo = self._conninfo()
        # The old pool would keep reconnecting (and logging) with growing delays; it is replaced.
        # Queries still waiting on it fail with PoolClosed, an OperationalError: a 503 as well.
        old = self._pool
        if old is not None:
            self._keep(asyncio.create_task(old.close(timeout=0.5)))
        while True:
            try:
                # A plain connection first: refused at once while the server is away, where
                # opening a pool would wait for its timeout.
                probe = await AsyncConnection.connect(conninfo, autocommit=True)
                await probe.close()
                pool = await self._open_pool(conninfo, self.answer_timeout_s)
            except (psycopg.Error, PoolTimeout):
                await asyncio.sleep(PROBE_INTERVAL_S)
                continue
            self._pool = pool
            self._healing = None
            log.warning("job store: PostgreSQL answers again")
            return

    async def open(self, on_notification: Callable[[], None]) -> None:
        if self._pool is not None:
            raise RuntimeError("the PostgreSQL job store is already open")
        conninfo = self._conninfo()
        # The listening connection comes first: it gives a plain libpq error when the server is
        # unreachable (rather than a pool timeout), and it runs the migrations before it LISTENs.
        conn = await AsyncConnection.connect(conninfo, autocommit=True)
        try:
            self.applied_migrations = await apply_postgres_migrations(conn, schema=self.schema)
            await conn.execute(f"LISTEN {CHANNEL}")
            pool = await self._open_pool(conninfo, self.connect_timeout_s)
        except BaseException:
            await conn.close()
            raise
        self._pool = pool
        self._listener = asyncio.create_task(
            self._listen(conn, conninfo, on_notification), name="inferd-jobs-listen"
        )

    async def close(self) -> None:
        tasks = [*self._tasks, *(t for t in (self._listener, self._healing) if t is not None)]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._notifier = self._listener = self._healing = None
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    # -- queries ----------------------------------------------------------------------------------

    async def _cursor_rows(self, query: Query, values: Params) -> tuple[list[Row], int]:
        pool = self._pool_or_raise()
        if self._healing is not None:
            raise self._unavailable(None)
        try:
            async with pool.connection(timeout=self.answer_timeout_s) as conn:
                cur = await conn.execute(QUERIES[query], values)
                rows: list[Row] = await cur.fetchall() if cur.description else []
                return rows, cur.rowcount
        except psycopg.errors.UniqueViolation as exc:
            raise ConflictError(f"the job store refused a duplicate: {exc}") from exc
        except psycopg.Error as exc:
            if is_unreachable(exc):
                raise self._unavailable(exc) from exc
            raise

    async def fetch(self, query: Query, params: Params) -> list[Row]:
        return (await self._cursor_rows(query, _encode_all(params)))[0]

    async def execute(self, query: Query, params: Params) -> int:
        return (await self._cursor_rows(query, _encode_all(params)))[1]

    async def fetch_batch(self, query: Query, rows: Sequence[Params], params: Params) -> list[Row]:
        if not rows:
            return []
        arrays = {name: _encode_column(name, [row[name] for row in rows]) for name in rows[0]}
        return (await self._cursor_rows(query, {**_encode_all(params), **arrays}))[0]

    # -- wake-ups ---------------------------------------------------------------------------------

    def announce_work(self) -> None:
        if self._notifier is None and self._pool is not None:
            self._notifier = task = asyncio.create_task(self._notify())
            self._keep(task)

    async def _notify(self) -> None:
        loop = asyncio.get_running_loop()
        # Leading edge: at once when the last one is a window ago; otherwise at the window's end.
        await asyncio.sleep(max(0.0, self._last_notify + self.notify_debounce_s - loop.time()))
        # Cleared before sending, so announcements from here on schedule their own.
        self._notifier = None
        self._last_notify = loop.time()
        try:
            async with self._pool_or_raise().connection() as conn:
                await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, self.schema))
        except (psycopg.Error, RuntimeError) as exc:
            # Other processes' workers still find the jobs when their wait times out.
            log.warning("job store: could not notify workers of new jobs: %s", exc)


def postgres_store(dsn: str, **options: Any) -> JobStore:
    """A (not yet opened) job store on PostgreSQL; ``options`` as :class:`PostgresConnector` takes."""
    return JobStore(PostgresConnector(dsn, **options))
