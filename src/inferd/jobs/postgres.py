"""PostgreSQL job store: for several API/worker processes or hosts sharing one queue.

Every operation is one statement on an autocommit pooled connection (one round trip). Concurrent
claimers are kept apart by ``FOR UPDATE SKIP LOCKED``; idempotent submission relies on the unique
(tenant, idempotency_key) index. Workers are woken by LISTEN/NOTIFY: writes that make work available
call ``pg_notify`` in the same statement, so the notification is sent exactly when the row commits.

Single inserts notify at most once per ``notify_debounce_s``: a committing NOTIFY takes a cluster-wide
lock, which serializes those commits and defeats group commit (measured: about 3x fewer inserts/s
when every insert notifies). An insert that skips it schedules one trailing notification at the end of
the window, so no wake-up is lost; it is merely up to one window late during a burst.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import orjson
import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import Jsonb, set_json_loads
from psycopg_pool import AsyncConnectionPool

from inferd.core.errors import ConfigError, ConflictError, InvalidInputError
from inferd.jobs.migrations import JOB_COLUMNS, apply_postgres_migrations
from inferd.jobs.models import TERMINAL_STATUSES, Job, JobError, JobStatus, utcnow
from inferd.jobs.store import CancelResult, FinishRequest, InsertResult, decode_cursor, encode_cursor

log = logging.getLogger(__name__)

CHANNEL = "inferd_jobs"

# Lower case only: the schema also goes into the search_path startup option, where unquoted names
# are folded to lower case, so anything else could name a different schema there than in DDL.
_SCHEMA_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")

_COLS = ", ".join(JOB_COLUMNS)
_J_COLS = ", ".join(f"j.{c}" for c in JOB_COLUMNS)
_INSERT_VALUES = f"INSERT INTO jobs ({_COLS}) VALUES ({', '.join('%s' for _ in JOB_COLUMNS)})"
_INSERT_KEYED_VALUES = (
    f"{_INSERT_VALUES} ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"
)
_NOTIFYING = "WITH ins AS ({} RETURNING 1) SELECT pg_notify('" + CHANNEL + "', %s) FROM ins"
# (keyed, notify) -> statement; each reports the inserted row count through rowcount.
_INSERTS = {
    (False, False): _INSERT_VALUES,
    (False, True): _NOTIFYING.format(_INSERT_VALUES),
    (True, False): _INSERT_KEYED_VALUES,
    (True, True): _NOTIFYING.format(_INSERT_KEYED_VALUES),
}
_ARRAY_TYPES = (
    "text",  # id
    "text",  # tenant
    "text",  # model
    "text",  # version
    "jsonb",  # inputs
    "boolean",  # batch
    "text",  # status
    "integer",  # attempts
    "integer",  # max_attempts
    "double precision",  # timeout_s
    "timestamptz",  # created_at
    "timestamptz",  # run_after
    "timestamptz",  # started_at
    "timestamptz",  # finished_at
    "text",  # lease_owner
    "timestamptz",  # lease_expires_at
    "boolean",  # cancel_requested
    "jsonb",  # outputs
    "text",  # error_code
    "text",  # error_message
    "text",  # idempotency_key
    "text",  # request_hash
)
# One array parameter per column, unnested into rows: a single fixed statement (prepared once per
# connection) inserts any number of jobs, without the 65535-parameter cap of a multi-row VALUES.
_INSERT_MANY = (
    f"WITH ins AS (INSERT INTO jobs ({_COLS}) SELECT * FROM unnest("
    + ", ".join(f"%s::{t}[]" for t in _ARRAY_TYPES)
    + f") RETURNING 1) SELECT (SELECT pg_notify('{CHANNEL}', %s) FROM ins LIMIT 1)"
)
_TERMINAL = ", ".join(f"'{s.value}'" for s in TERMINAL_STATUSES)
_LOST_MESSAGE = "worker lost while running the job (lease expired) and no attempts are left"

# Expired leases are settled or re-run in the same statement that claims pending work. Candidates
# are locked with SKIP LOCKED so concurrent claimers take disjoint jobs instead of queueing behind
# each other; both candidate sets are bounded by the limit, and the final pick is oldest first.
_CLAIM = f"""
WITH expired AS (
    SELECT id, created_at, attempts, max_attempts, cancel_requested FROM jobs
    WHERE status = 'running' AND lease_expires_at < %(now)s
    ORDER BY created_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
),
settled AS (
    UPDATE jobs j SET
        status = CASE WHEN e.cancel_requested THEN 'cancelled' ELSE 'failed' END,
        finished_at = %(now)s, lease_owner = NULL, lease_expires_at = NULL,
        error_code = CASE WHEN e.cancel_requested THEN j.error_code ELSE 'inference_error' END,
        error_message = CASE WHEN e.cancel_requested THEN j.error_message ELSE %(lost)s END
    FROM expired e
    WHERE j.id = e.id AND (e.cancel_requested OR e.attempts >= e.max_attempts)
    RETURNING j.id
),
runnable AS (
    SELECT id, created_at FROM jobs
    WHERE status = 'pending' AND run_after <= %(now)s AND NOT cancel_requested
    ORDER BY created_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
),
picked AS (
    SELECT id, created_at FROM runnable
    UNION ALL
    SELECT id, created_at FROM expired WHERE NOT (cancel_requested OR attempts >= max_attempts)
    ORDER BY created_at, id
    LIMIT %(limit)s
)
UPDATE jobs j SET
    status = 'running', attempts = j.attempts + 1, lease_owner = %(worker)s,
    lease_expires_at = %(expires)s, started_at = %(now)s
FROM picked p
WHERE j.id = p.id
RETURNING {_J_COLS}
"""

_FINISH_MANY = f"""
UPDATE jobs j SET
    status = CASE WHEN j.cancel_requested THEN 'cancelled' ELSE v.status END,
    finished_at = %(now)s,
    outputs = CASE WHEN j.cancel_requested THEN NULL ELSE v.outputs END,
    error_code = CASE WHEN j.cancel_requested THEN NULL ELSE v.code END,
    error_message = CASE WHEN j.cancel_requested THEN NULL ELSE v.message END,
    lease_owner = NULL, lease_expires_at = NULL
FROM unnest(%(ids)s::text[], %(statuses)s::text[], %(outputs)s::jsonb[], %(codes)s::text[],
            %(messages)s::text[], %(workers)s::text[], %(attempts)s::int[])
     AS v(id, status, outputs, code, message, worker, attempt)
WHERE j.id = v.id AND j.status = 'running' AND j.lease_owner = v.worker AND j.attempts = v.attempt
RETURNING {_J_COLS}
"""

# A job whose cancellation was requested while it ran is not retried: it ends cancelled.
_RETRY_LATER = f"""
WITH u AS (
    UPDATE jobs SET
        status = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'pending' END,
        finished_at = CASE WHEN cancel_requested THEN %(now)s ELSE NULL END,
        run_after = %(run_after)s, error_code = %(code)s, error_message = %(message)s,
        lease_owner = NULL, lease_expires_at = NULL
    WHERE id = %(id)s AND status = 'running' AND lease_owner = %(worker)s AND attempts = %(attempt)s
    RETURNING {_COLS}
)
SELECT u.*, pg_notify('{CHANNEL}', %(schema)s) FROM u
"""

_RELEASE = f"""
WITH u AS (
    UPDATE jobs SET
        status = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'pending' END,
        attempts = CASE WHEN cancel_requested THEN attempts ELSE attempts - 1 END,
        finished_at = CASE WHEN cancel_requested THEN %(now)s ELSE NULL END,
        lease_owner = NULL, lease_expires_at = NULL
    WHERE id = ANY(%(ids)s::text[]) AND status = 'running' AND lease_owner = %(worker)s
    RETURNING 1
)
SELECT (SELECT count(*) FROM u), (SELECT pg_notify('{CHANNEL}', %(schema)s) FROM u LIMIT 1)
"""

_CANCEL = f"""
UPDATE jobs SET
    status = CASE WHEN status = 'pending' THEN 'cancelled' ELSE status END,
    finished_at = CASE WHEN status = 'pending' THEN %(now)s ELSE finished_at END,
    cancel_requested = true
WHERE id = %(id)s AND tenant = %(tenant)s AND status IN ('pending', 'running')
RETURNING {_COLS}
"""

_RECONNECT_MIN_S = 0.5
_RECONNECT_MAX_S = 30.0


# An escaped NUL that is not itself an escaped backslash followed by "u0000".
_ESCAPED_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


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


def _jsonb(value: Any) -> Jsonb | None:
    return None if value is None else Jsonb(value, dumps=_dumps)


def _params(job: Job) -> list[Any]:
    return [
        job.id,
        job.tenant,
        job.model,
        job.version,
        Jsonb(job.inputs, dumps=_dumps),
        job.batch,
        JobStatus(job.status).value,
        int(job.attempts),
        int(job.max_attempts),
        None if job.timeout_s is None else float(job.timeout_s),
        job.created_at,
        job.run_after,
        job.started_at,
        job.finished_at,
        job.lease_owner,
        job.lease_expires_at,
        job.cancel_requested,
        _jsonb(job.outputs),
        None if job.error is None else job.error.code,
        None if job.error is None else job.error.message,
        job.idempotency_key,
        job.request_hash,
    ]


def _job(row: Sequence[Any]) -> Job:
    return Job(
        id=row[0],
        tenant=row[1],
        model=row[2],
        version=row[3],
        inputs=row[4],
        batch=row[5],
        status=JobStatus(row[6]),
        attempts=row[7],
        max_attempts=row[8],
        timeout_s=row[9],
        created_at=row[10],
        run_after=row[11],
        started_at=row[12],
        finished_at=row[13],
        lease_owner=row[14],
        lease_expires_at=row[15],
        cancel_requested=row[16],
        outputs=row[17],
        error=None if row[18] is None else JobError(row[18], row[19] or ""),
        idempotency_key=row[20],
        request_hash=row[21],
    )


def validate_schema_name(schema: str) -> str:
    if not _SCHEMA_RE.fullmatch(schema) or schema.startswith("pg_"):
        raise ConfigError(
            f"invalid PostgreSQL schema name {schema!r} for the job store: use 1-63 lower-case letters, "
            "digits and underscores, not starting with a digit or 'pg_'"
        )
    return schema


async def _configure(conn: AsyncConnection[Any]) -> None:
    set_json_loads(orjson.loads, conn)


class PostgresJobStore:
    """JobStore on PostgreSQL; tables live in ``schema`` (created if missing)."""

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "public",
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout_s: float = 10.0,
        notify_debounce_s: float = 0.01,
    ) -> None:
        self.dsn = dsn
        self.schema = validate_schema_name(schema)
        self.min_size = min_size
        self.max_size = max_size
        self.connect_timeout_s = connect_timeout_s
        self.notify_debounce_s = notify_debounce_s
        self._pool: AsyncConnectionPool[Any] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._work = asyncio.Event()
        self._last_notify = float("-inf")  # loop time of the last notification this store sent
        self._trailing_notify: asyncio.Task[None] | None = None

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
            raise RuntimeError("PostgresJobStore is not open")
        return self._pool

    def _notify_now(self) -> bool:
        """Whether the next insert should notify in its statement (leading edge of the window)."""
        now = asyncio.get_running_loop().time()
        if now - self._last_notify >= self.notify_debounce_s:
            self._last_notify = now
            return True
        return False

    def _notify_later(self) -> None:
        """After an insert committed without notifying: make sure one notification follows it."""
        if self._trailing_notify is None:
            self._trailing_notify = asyncio.create_task(self._send_trailing_notify())

    async def _send_trailing_notify(self) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, self._last_notify + self.notify_debounce_s - loop.time()))
        # Cleared before sending, so inserts committing from here on schedule their own.
        self._trailing_notify = None
        self._last_notify = loop.time()
        try:
            async with self._pool_or_raise().connection() as conn:
                await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, self.schema))
        except (psycopg.Error, RuntimeError) as exc:
            # Other processes' workers still find the jobs when their wait times out.
            log.warning("job store: could not notify workers of new jobs: %s", exc)

    async def _listen_connection(self, conninfo: str) -> AsyncConnection[Any]:
        conn = await AsyncConnection.connect(conninfo, autocommit=True)
        try:
            await conn.execute(f"LISTEN {CHANNEL}")
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _listen(self, conn: AsyncConnection[Any] | None, conninfo: str) -> None:
        delay = _RECONNECT_MIN_S
        while True:
            if conn is None:
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RECONNECT_MAX_S)
                try:
                    conn = await self._listen_connection(conninfo)
                except psycopg.Error as exc:
                    log.warning("job store: LISTEN reconnect failed, still polling: %s", exc)
                    continue
                delay = _RECONNECT_MIN_S
                log.info("job store: LISTEN %s re-established", CHANNEL)
                # Notifications sent while disconnected are lost; let the workers look once.
                self._work.set()
            try:
                async with conn:
                    async for notify in conn.notifies():
                        # The channel is database-wide; stores in other schemas are not our queue.
                        if notify.payload == self.schema:
                            self._work.set()
            except psycopg.Error as exc:
                log.warning("job store: LISTEN connection lost, workers poll until it is back: %s", exc)
            conn = None

    async def open(self) -> None:
        if self._pool is not None:
            raise RuntimeError("PostgresJobStore is already open")
        conninfo = self._conninfo()
        # The listening connection comes first: it gives a plain libpq error when the server is
        # unreachable (rather than a pool timeout), and it runs the migrations before it LISTENs.
        conn = await AsyncConnection.connect(conninfo, autocommit=True)
        try:
            await apply_postgres_migrations(conn, schema=self.schema)
            await conn.execute(f"LISTEN {CHANNEL}")
            pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
                conninfo,
                min_size=self.min_size,
                max_size=self.max_size,
                kwargs={"autocommit": True},
                configure=_configure,
                open=False,
                name=f"inferd-jobs-{self.schema}",
            )
            try:
                await pool.open(wait=True, timeout=self.connect_timeout_s)
            except BaseException:
                await pool.close()
                raise
        except BaseException:
            await conn.close()
            raise
        self._pool = pool
        self._work = asyncio.Event()  # bound to the loop that opens the store
        self._listener = asyncio.create_task(self._listen(conn, conninfo), name="inferd-jobs-listen")

    async def close(self) -> None:
        trailing, self._trailing_notify = self._trailing_notify, None
        if trailing is not None:
            trailing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await trailing
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()
        self._work.set()  # wake waiters so they notice the store is gone

    async def ping(self) -> bool:
        try:
            async with self._pool_or_raise().connection(timeout=5.0) as conn:
                cur = await conn.execute("SELECT 1")
                return await cur.fetchone() == (1,)
        except (psycopg.Error, RuntimeError):
            return False

    # -- submission -------------------------------------------------------------------------------

    async def insert(self, job: Job) -> InsertResult:
        keyed = job.idempotency_key is not None
        row_params = _params(job)
        try:
            async with self._pool_or_raise().connection() as conn:
                # Losing the unique-index race inserts nothing; the winner is then read in a new
                # statement (a fresh snapshot, which sees it committed). The loop covers the winner
                # being deleted in between.
                for _ in range(3):
                    notify = self._notify_now()
                    statement = _INSERTS[keyed, notify]
                    cur = await conn.execute(statement, [*row_params, self.schema] if notify else row_params)
                    if cur.rowcount == 1:
                        break
                    if notify:
                        self._last_notify = float("-inf")  # nothing was inserted, nothing was sent
                    cur = await conn.execute(
                        f"SELECT {_COLS} FROM jobs WHERE tenant = %s AND idempotency_key = %s",
                        (job.tenant, job.idempotency_key),
                    )
                    row = await cur.fetchone()
                    if row is not None:
                        return InsertResult(_job(row), created=False)
                else:
                    raise ConflictError(
                        f"idempotency key {job.idempotency_key!r} kept conflicting with a vanishing job"
                    )
        except psycopg.errors.UniqueViolation as exc:
            raise ConflictError(f"cannot insert job {job.id!r}: {exc}") from exc
        if not notify:
            self._notify_later()
        self._work.set()
        return InsertResult(job, created=True)

    async def insert_many(self, jobs: list[Job]) -> list[InsertResult]:
        if any(job.idempotency_key is not None for job in jobs):
            raise ValueError("insert_many does not take idempotency keys; use insert for those jobs")
        if not jobs:
            return []
        columns: list[list[Any]] = [list(col) for col in zip(*(_params(job) for job in jobs), strict=True)]
        try:
            async with self._pool_or_raise().connection() as conn:
                await conn.execute(_INSERT_MANY, [*columns, self.schema])
        except psycopg.errors.UniqueViolation as exc:
            raise ConflictError(f"cannot insert jobs: {exc}") from exc
        self._work.set()
        return [InsertResult(job, created=True) for job in jobs]

    # -- reads ------------------------------------------------------------------------------------

    async def get(self, job_id: str, *, tenant: str | None = None) -> Job | None:
        async with self._pool_or_raise().connection() as conn:
            if tenant is None:
                cur = await conn.execute(f"SELECT {_COLS} FROM jobs WHERE id = %s", (job_id,))
            else:
                cur = await conn.execute(
                    f"SELECT {_COLS} FROM jobs WHERE id = %s AND tenant = %s", (job_id, tenant)
                )
            row = await cur.fetchone()
        return None if row is None else _job(row)

    async def list_jobs(
        self,
        *,
        tenant: str,
        status: JobStatus | None = None,
        model: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[Job], str | None]:
        if limit < 1:
            raise InvalidInputError(f"limit must be at least 1, got {limit}")
        where = ["tenant = %s"]
        params: list[Any] = [tenant]
        if status is not None:
            where.append("status = %s")
            params.append(JobStatus(status).value)
        if model is not None:
            where.append("model = %s")
            params.append(model)
        if cursor is not None:
            created_at, last_id = decode_cursor(cursor)
            where.append("(created_at, id) < (%s, %s)")
            params += [created_at, last_id]
        # One extra row tells whether another page exists, so the last page has no cursor.
        params.append(limit + 1)
        query = (
            f"SELECT {_COLS} FROM jobs WHERE {' AND '.join(where)} ORDER BY created_at DESC, id DESC LIMIT %s"
        )
        async with self._pool_or_raise().connection() as conn:
            cur = await conn.execute(query, params)
            rows = await cur.fetchall()
        jobs = [_job(row) for row in rows[:limit]]
        next_cursor = encode_cursor(jobs[-1].created_at, jobs[-1].id) if len(rows) > limit else None
        return jobs, next_cursor

    async def pending_counts(self) -> dict[tuple[str, str], int]:
        async with self._pool_or_raise().connection() as conn:
            cur = await conn.execute(
                "SELECT model, version, count(*) FROM jobs WHERE status = 'pending' GROUP BY model, version"
            )
            rows = await cur.fetchall()
        return {(model, version): count for model, version, count in rows}

    # -- worker side ------------------------------------------------------------------------------

    async def claim(self, *, worker_id: str, limit: int, lease_s: float, now: datetime) -> list[Job]:
        if limit < 1:
            return []
        params = {
            "now": now,
            "limit": limit,
            "lost": _LOST_MESSAGE,
            "worker": worker_id,
            "expires": now + timedelta(seconds=lease_s),
        }
        async with self._pool_or_raise().connection() as conn:
            cur = await conn.execute(_CLAIM, params)
            rows = await cur.fetchall()
        # UPDATE ... RETURNING has no defined order; callers get oldest first.
        return sorted((_job(row) for row in rows), key=lambda job: (job.created_at, job.id))

    async def renew_leases(self, job_ids: list[str], *, worker_id: str, lease_s: float, now: datetime) -> int:
        if not job_ids:
            return 0
        async with self._pool_or_raise().connection() as conn:
            cur = await conn.execute(
                "UPDATE jobs SET lease_expires_at = %s "
                "WHERE id = ANY(%s::text[]) AND status = 'running' AND lease_owner = %s",
                (now + timedelta(seconds=lease_s), list(job_ids), worker_id),
            )
            return cur.rowcount

    async def finish(
        self,
        job_id: str,
        *,
        worker_id: str,
        attempt: int,
        status: JobStatus,
        outputs: list[Any] | None,
        error: JobError | None,
        now: datetime,
    ) -> Job | None:
        request = FinishRequest(job_id, worker_id, attempt, status, outputs, error)
        return (await self.finish_many([request], now=now))[0]

    async def finish_many(self, requests: list[FinishRequest], *, now: datetime) -> list[Job | None]:
        for request in requests:
            if request.status not in (JobStatus.SUCCEEDED, JobStatus.FAILED):
                raise ValueError(f"finish takes succeeded or failed, not {request.status!r}")
        if not requests:
            return []
        params = {
            "now": now,
            "ids": [r.job_id for r in requests],
            "statuses": [JobStatus(r.status).value for r in requests],
            "outputs": [_jsonb(r.outputs) for r in requests],
            "codes": [None if r.error is None else r.error.code for r in requests],
            "messages": [None if r.error is None else r.error.message for r in requests],
            "workers": [r.worker_id for r in requests],
            "attempts": [r.attempt for r in requests],
        }
        async with self._pool_or_raise().connection() as conn:
            cur = await conn.execute(_FINISH_MANY, params)
            rows = await cur.fetchall()
        done = {job.id: job for job in (_job(row) for row in rows)}
        return [done.get(r.job_id) for r in requests]

    async def retry_later(
        self, job_id: str, *, worker_id: str, attempt: int, error: JobError, run_after: datetime
    ) -> Job | None:
        params = {
            "now": utcnow(),
            "run_after": run_after,
            "code": error.code,
            "message": error.message,
            "id": job_id,
            "worker": worker_id,
            "attempt": attempt,
            "schema": self.schema,
        }
        async with self._pool_or_raise().connection() as conn:
            cur = await conn.execute(_RETRY_LATER, params)
            row = await cur.fetchone()
        if row is None:
            return None
        self._work.set()
        return _job(row)

    async def release(self, job_ids: list[str], *, worker_id: str) -> int:
        if not job_ids:
            return 0
        params = {"now": utcnow(), "ids": list(job_ids), "worker": worker_id, "schema": self.schema}
        async with self._pool_or_raise().connection() as conn:
            cur = await conn.execute(_RELEASE, params)
            row = await cur.fetchone()
        count = int(row[0]) if row is not None else 0
        if count:
            self._work.set()
        return count

    async def cancel(self, job_id: str, *, tenant: str, now: datetime) -> CancelResult:
        async with self._pool_or_raise().connection() as conn:
            cur = await conn.execute(_CANCEL, {"now": now, "id": job_id, "tenant": tenant})
            row = await cur.fetchone()
            if row is not None:
                job = _job(row)
                outcome = "cancelled" if job.status is JobStatus.CANCELLED else "cancel_requested"
                return CancelResult(job, outcome)
            # Nothing matched: the job is missing or already terminal, and terminal is final. A new
            # statement (fresh snapshot) so a job that finished while we tried reads as finished.
            cur = await conn.execute(
                f"SELECT {_COLS} FROM jobs WHERE id = %s AND tenant = %s", (job_id, tenant)
            )
            row = await cur.fetchone()
        return CancelResult(None, "not_found") if row is None else CancelResult(_job(row), "terminal")

    async def delete_finished_before(self, cutoff: datetime) -> int:
        async with self._pool_or_raise().connection() as conn:
            cur = await conn.execute(
                f"DELETE FROM jobs WHERE status IN ({_TERMINAL}) AND finished_at < %s", (cutoff,)
            )
            return cur.rowcount

    async def wait_for_work(self, timeout_s: float) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                await self._work.wait()
        except TimeoutError:
            pass
        self._work.clear()
