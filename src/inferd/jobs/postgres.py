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
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import AsyncConnectionPool

from inferd.core.errors import ConfigError, ConflictError
from inferd.jobs import postgres_sql as q
from inferd.jobs.migrations import apply_postgres_migrations
from inferd.jobs.models import Job, JobError, JobStatus, utcnow
from inferd.jobs.store import (
    CancelResult,
    FinishOne,
    FinishRequest,
    InsertResult,
    ListQuery,
    check_finish_requests,
)

log = logging.getLogger(__name__)


class PostgresJobStore(FinishOne):
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
        self.schema = q.validate_schema_name(schema)
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
                await conn.execute("SELECT pg_notify(%s, %s)", (q.CHANNEL, self.schema))
        except (psycopg.Error, RuntimeError) as exc:
            # Other processes' workers still find the jobs when their wait times out.
            log.warning("job store: could not notify workers of new jobs: %s", exc)

    async def _listen_connection(self, conninfo: str) -> AsyncConnection[Any]:
        conn = await AsyncConnection.connect(conninfo, autocommit=True)
        try:
            await conn.execute(f"LISTEN {q.CHANNEL}")
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _listen(self, conn: AsyncConnection[Any] | None, conninfo: str) -> None:
        delay = q.RECONNECT_MIN_S
        while True:
            if conn is None:
                await asyncio.sleep(delay)
                delay = min(delay * 2, q.RECONNECT_MAX_S)
                try:
                    conn = await self._listen_connection(conninfo)
                except psycopg.Error as exc:
                    log.warning("job store: LISTEN reconnect failed, still polling: %s", exc)
                    continue
                delay = q.RECONNECT_MIN_S
                log.info("job store: LISTEN %s re-established", q.CHANNEL)
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
            await conn.execute(f"LISTEN {q.CHANNEL}")
            pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
                conninfo,
                min_size=self.min_size,
                max_size=self.max_size,
                kwargs={"autocommit": True},
                configure=q.configure_connection,
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
        row_params = q.job_params(job)
        try:
            async with self._pool_or_raise().connection() as conn:
                # Losing the unique-index race inserts nothing; the winner is then read in a new
                # statement (a fresh snapshot, which sees it committed). The loop covers the winner
                # being deleted in between.
                for _ in range(3):
                    notify = self._notify_now()
                    statement = q.INSERTS[keyed, notify]
                    cur = await conn.execute(statement, [*row_params, self.schema] if notify else row_params)
                    if cur.rowcount == 1:
                        break
                    if notify:
                        self._last_notify = float("-inf")  # nothing was inserted, nothing was sent
                    cur = await conn.execute(
                        f"SELECT {q.COLS} FROM jobs WHERE tenant = %s AND idempotency_key = %s",
                        (job.tenant, job.idempotency_key),
                    )
                    row = await cur.fetchone()
                    if row is not None:
                        return InsertResult(q.row_to_job(row), created=False)
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
        columns: list[list[Any]] = [
            list(col) for col in zip(*(q.job_params(job) for job in jobs), strict=True)
        ]
        try:
            async with self._pool_or_raise().connection() as conn:
                await conn.execute(q.INSERT_MANY, [*columns, self.schema])
        except psycopg.errors.UniqueViolation as exc:
            raise ConflictError(f"cannot insert jobs: {exc}") from exc
        self._work.set()
        return [InsertResult(job, created=True) for job in jobs]

    # -- reads ------------------------------------------------------------------------------------

    async def get(self, job_id: str, *, tenant: str | None = None) -> Job | None:
        async with self._pool_or_raise().connection() as conn:
            if tenant is None:
                cur = await conn.execute(f"SELECT {q.COLS} FROM jobs WHERE id = %s", (job_id,))
            else:
                cur = await conn.execute(
                    f"SELECT {q.COLS} FROM jobs WHERE id = %s AND tenant = %s", (job_id, tenant)
                )
            row = await cur.fetchone()
        return None if row is None else q.row_to_job(row)

    async def list_jobs(
        self,
        *,
        tenant: str,
        status: JobStatus | None = None,
        model: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[Job], str | None]:
        query = ListQuery.build(
            columns=q.COLS, mark="%s", tenant=tenant, status=status, model=model, limit=limit, cursor=cursor
        )
        async with self._pool_or_raise().connection() as conn:
            cur = await conn.execute(query.sql, query.params)
            rows = await cur.fetchall()
        return query.page([q.row_to_job(row) for row in rows])

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
            "lost": q.LOST_MESSAGE,
            "worker": worker_id,
            "expires": now + timedelta(seconds=lease_s),
        }
        async with self._pool_or_raise().connection() as conn:
            cur = await conn.execute(q.CLAIM, params)
            rows = await cur.fetchall()
        # UPDATE ... RETURNING has no defined order; callers get oldest first.
        return sorted((q.row_to_job(row) for row in rows), key=lambda job: (job.created_at, job.id))

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

    async def finish_many(self, requests: list[FinishRequest], *, now: datetime) -> list[Job | None]:
        check_finish_requests(requests)
        if not requests:
            return []
        params = {
            "now": now,
            "ids": [r.job_id for r in requests],
            "statuses": [JobStatus(r.status).value for r in requests],
            "outputs": [q.jsonb(r.outputs) for r in requests],
            "codes": [None if r.error is None else r.error.code for r in requests],
            "messages": [None if r.error is None else r.error.message for r in requests],
            "workers": [r.worker_id for r in requests],
            "attempts": [r.attempt for r in requests],
        }
        async with self._pool_or_raise().connection() as conn:
            cur = await conn.execute(q.FINISH_MANY, params)
            rows = await cur.fetchall()
        done = {job.id: job for job in (q.row_to_job(row) for row in rows)}
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
            cur = await conn.execute(q.RETRY_LATER, params)
            row = await cur.fetchone()
        if row is None:
            return None
        self._work.set()
        return q.row_to_job(row)

    async def release(self, job_ids: list[str], *, worker_id: str) -> int:
        if not job_ids:
            return 0
        params = {"now": utcnow(), "ids": list(job_ids), "worker": worker_id, "schema": self.schema}
        async with self._pool_or_raise().connection() as conn:
            cur = await conn.execute(q.RELEASE, params)
            row = await cur.fetchone()
        count = int(row[0]) if row is not None else 0
        if count:
            self._work.set()
        return count

    async def cancel(self, job_id: str, *, tenant: str, now: datetime) -> CancelResult:
        async with self._pool_or_raise().connection() as conn:
            cur = await conn.execute(q.CANCEL, {"now": now, "id": job_id, "tenant": tenant})
            row = await cur.fetchone()
            if row is not None:
                job = q.row_to_job(row)
                outcome = "cancelled" if job.status is JobStatus.CANCELLED else "cancel_requested"
                return CancelResult(job, outcome)
            # Nothing matched: the job is missing or already terminal, and terminal is final. A new
            # statement (fresh snapshot) so a job that finished while we tried reads as finished.
            cur = await conn.execute(
                f"SELECT {q.COLS} FROM jobs WHERE id = %s AND tenant = %s", (job_id, tenant)
            )
            row = await cur.fetchone()
        return CancelResult(None, "not_found") if row is None else CancelResult(q.row_to_job(row), "terminal")

    async def delete_finished_before(self, cutoff: datetime) -> int:
        async with self._pool_or_raise().connection() as conn:
            cur = await conn.execute(
                f"DELETE FROM jobs WHERE status IN ({q.TERMINAL}) AND finished_at < %s", (cutoff,)
            )
            return cur.rowcount

    async def wait_for_work(self, timeout_s: float) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                await self._work.wait()
        except TimeoutError:
            pass
        self._work.clear()
