"""SQLite job store: the embedded default, one file, no server.

sqlite3 is blocking and a connection belongs to one thread, so every call runs on one dedicated
background thread owning one connection: calls from the API and an in-process worker are serialized
there, and the event loop never blocks on disk. Other processes may use the same file: WAL lets
readers run beside the single writer, busy_timeout makes writers queue instead of failing, and every
read-modify-write runs as one statement or inside ``BEGIN IMMEDIATE``.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import TypeVar

from inferd.core.errors import ConfigError, ConflictError
from inferd.jobs import sqlite_sql as q
from inferd.jobs.migrations import apply_sqlite_migrations
from inferd.jobs.models import Job, JobError, JobStatus, utcnow
from inferd.jobs.store import (
    CancelResult,
    FinishOne,
    FinishRequest,
    InsertResult,
    ListQuery,
    check_finish_requests,
)

T = TypeVar("T")

log = logging.getLogger(__name__)


class SQLiteJobStore(FinishOne):
    """JobStore on a SQLite file. ``open()`` creates the file and applies migrations."""

    def __init__(self, path: str, *, busy_timeout_s: float = 10.0) -> None:
        self.path = path
        self.busy_timeout_s = busy_timeout_s
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._work = asyncio.Event()

    # -- plumbing ---------------------------------------------------------------------------------

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        executor = self._executor
        if executor is None:
            raise RuntimeError("SQLiteJobStore is not open")
        return await asyncio.get_running_loop().run_in_executor(executor, self._call, fn)

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        if conn is None:
            raise RuntimeError("SQLiteJobStore is not open")
        return fn(conn)

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
        if sqlite3.sqlite_version_info < q.MIN_SQLITE:
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
            apply_sqlite_migrations(conn, where=repr(self.path))
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

    async def open(self) -> None:
        if self._executor is not None:
            raise RuntimeError("SQLiteJobStore is already open")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inferd-sqlite")
        self._work = asyncio.Event()  # bound to the loop that opens the store
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
            self._work.set()  # wake waiters so they notice the store is gone

    async def ping(self) -> bool:
        try:
            return await self._run(lambda conn: conn.execute("SELECT 1").fetchone() == (1,))
        except (sqlite3.Error, RuntimeError):
            return False

    # -- submission -------------------------------------------------------------------------------

    async def insert(self, job: Job) -> InsertResult:
        params = q.job_params(job)
        key = job.idempotency_key

        def do(conn: sqlite3.Connection) -> InsertResult:
            try:
                if key is None:
                    conn.execute(q.INSERT, params)
                    return InsertResult(job, created=True)
                # A keyed insert that loses the unique index race inserts nothing and reads the
                # winner; the loop covers the winner being deleted between the two statements.
                for _ in range(3):
                    if conn.execute(q.INSERT_KEYED, params).rowcount == 1:
                        return InsertResult(job, created=True)
                    row = conn.execute(
                        f"SELECT {q.COLS} FROM jobs WHERE tenant = ? AND idempotency_key = ?",
                        (job.tenant, key),
                    ).fetchone()
                    if row is not None:
                        return InsertResult(q.row_to_job(row), created=False)
            except sqlite3.IntegrityError as exc:
                raise ConflictError(f"cannot insert job {job.id!r}: {exc}") from exc
            raise ConflictError(f"idempotency key {key!r} kept conflicting with a vanishing job")

        result = await self._run(do)
        if result.created:
            self._work.set()
        return result

    async def insert_many(self, jobs: list[Job]) -> list[InsertResult]:
        if any(job.idempotency_key is not None for job in jobs):
            raise ValueError("insert_many does not take idempotency keys; use insert for those jobs")
        if not jobs:
            return []
        rows = [q.job_params(job) for job in jobs]

        def do(conn: sqlite3.Connection) -> None:
            try:
                self._write_tx(conn, lambda c: c.executemany(q.INSERT, rows))
            except sqlite3.IntegrityError as exc:
                raise ConflictError(f"cannot insert jobs: {exc}") from exc

        await self._run(do)
        self._work.set()
        return [InsertResult(job, created=True) for job in jobs]

    # -- reads ------------------------------------------------------------------------------------

    async def get(self, job_id: str, *, tenant: str | None = None) -> Job | None:
        query = f"SELECT {q.COLS} FROM jobs WHERE id = ?"
        params: tuple[str, ...] = (job_id,)
        if tenant is not None:
            query, params = query + " AND tenant = ?", (job_id, tenant)
        row = await self._run(lambda conn: conn.execute(query, params).fetchone())
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
            columns=q.COLS,
            mark="?",
            tenant=tenant,
            status=status,
            model=model,
            limit=limit,
            cursor=cursor,
            encode_time=q.to_text,
        )
        rows = await self._run(lambda conn: conn.execute(query.sql, query.params).fetchall())
        return query.page([q.row_to_job(row) for row in rows])

    async def pending_counts(self) -> dict[tuple[str, str], int]:
        rows = await self._run(
            lambda conn: conn.execute(
                "SELECT model, version, count(*) FROM jobs WHERE status = 'pending' GROUP BY model, version"
            ).fetchall()
        )
        return {(model, version): count for model, version, count in rows}

    # -- worker side ------------------------------------------------------------------------------

    async def claim(self, *, worker_id: str, limit: int, lease_s: float, now: datetime) -> list[Job]:
        if limit < 1:
            return []
        now_s = q.to_text(now)
        expires = q.to_text(now + timedelta(seconds=lease_s))

        def tx(conn: sqlite3.Connection) -> list[Job]:
            # Jobs of dead workers that must not run again are settled first, so they neither take
            # claim slots nor linger as "running" forever.
            conn.execute(
                "UPDATE jobs SET status = 'cancelled', finished_at = ?, lease_owner = NULL, "
                "lease_expires_at = NULL "
                "WHERE status = 'running' AND lease_expires_at < ? AND cancel_requested",
                (now_s, now_s),
            )
            conn.execute(
                "UPDATE jobs SET status = 'failed', finished_at = ?, lease_owner = NULL, "
                "lease_expires_at = NULL, error_code = 'inference_error', error_message = ? "
                "WHERE status = 'running' AND lease_expires_at < ? AND attempts >= max_attempts",
                (now_s, q.LOST_MESSAGE, now_s),
            )
            rows = conn.execute(
                f"""
                UPDATE jobs SET status = 'running', attempts = attempts + 1, lease_owner = ?,
                    lease_expires_at = ?, started_at = ?
                WHERE id IN (
                    SELECT id FROM (
                        SELECT id, created_at FROM (
                            SELECT id, created_at FROM jobs
                            WHERE status = 'pending' AND run_after <= ? AND NOT cancel_requested
                            ORDER BY created_at, id LIMIT ?
                        )
                        UNION ALL
                        SELECT id, created_at FROM (
                            SELECT id, created_at FROM jobs
                            WHERE status = 'running' AND lease_expires_at < ?
                            ORDER BY created_at, id LIMIT ?
                        )
                    )
                    ORDER BY created_at, id LIMIT ?
                )
                RETURNING {q.COLS}
                """,
                (worker_id, expires, now_s, now_s, limit, now_s, limit, limit),
            ).fetchall()
            return [q.row_to_job(row) for row in rows]

        jobs = await self._run(lambda conn: self._write_tx(conn, tx))
        # RETURNING order is unspecified in SQLite; callers get oldest first.
        jobs.sort(key=lambda job: (job.created_at, job.id))
        return jobs

    async def renew_leases(self, job_ids: list[str], *, worker_id: str, lease_s: float, now: datetime) -> int:
        if not job_ids:
            return 0
        params = (q.to_text(now + timedelta(seconds=lease_s)), q.id_list(job_ids), worker_id)
        return await self._run(
            lambda conn: (
                conn.execute(
                    "UPDATE jobs SET lease_expires_at = ? "
                    "WHERE id IN (SELECT value FROM json_each(?)) AND status = 'running' AND lease_owner = ?",
                    params,
                ).rowcount
            )
        )

    async def finish_many(self, requests: list[FinishRequest], *, now: datetime) -> list[Job | None]:
        check_finish_requests(requests)
        params = [
            (
                JobStatus(r.status).value,
                q.to_text(now),
                None if r.outputs is None else q.dump_json(r.outputs),
                None if r.error is None else r.error.code,
                None if r.error is None else r.error.message,
                r.job_id,
                r.worker_id,
                r.attempt,
            )
            for r in requests
        ]

        def tx(conn: sqlite3.Connection) -> list[Job | None]:
            rows = [conn.execute(q.FINISH, row_params).fetchone() for row_params in params]
            return [None if row is None else q.row_to_job(row) for row in rows]

        return await self._run(lambda conn: self._write_tx(conn, tx))

    async def retry_later(
        self, job_id: str, *, worker_id: str, attempt: int, error: JobError, run_after: datetime
    ) -> Job | None:
        # A job whose cancellation was requested while it ran is not retried: it ends cancelled.
        params = (
            q.to_text(utcnow()),
            q.to_text(run_after),
            error.code,
            error.message,
            job_id,
            worker_id,
            attempt,
        )
        row = await self._run(
            lambda conn: conn.execute(
                f"""
                UPDATE jobs SET
                    status = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'pending' END,
                    finished_at = CASE WHEN cancel_requested THEN ? ELSE NULL END,
                    run_after = ?, error_code = ?, error_message = ?,
                    lease_owner = NULL, lease_expires_at = NULL
                WHERE id = ? AND status = 'running' AND lease_owner = ? AND attempts = ?
                RETURNING {q.COLS}
                """,
                params,
            ).fetchone()
        )
        if row is None:
            return None
        self._work.set()
        return q.row_to_job(row)

    async def release(self, job_ids: list[str], *, worker_id: str) -> int:
        if not job_ids:
            return 0
        params = (q.to_text(utcnow()), q.id_list(job_ids), worker_id)
        count = await self._run(
            lambda conn: (
                conn.execute(
                    """
                UPDATE jobs SET
                    status = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'pending' END,
                    attempts = CASE WHEN cancel_requested THEN attempts ELSE attempts - 1 END,
                    finished_at = CASE WHEN cancel_requested THEN ? ELSE NULL END,
                    lease_owner = NULL, lease_expires_at = NULL
                WHERE id IN (SELECT value FROM json_each(?)) AND status = 'running' AND lease_owner = ?
                """,
                    params,
                ).rowcount
            )
        )
        if count:
            self._work.set()
        return count

    async def cancel(self, job_id: str, *, tenant: str, now: datetime) -> CancelResult:
        params = (q.to_text(now), job_id, tenant)

        def do(conn: sqlite3.Connection) -> CancelResult:
            row = conn.execute(
                f"""
                UPDATE jobs SET
                    status = CASE WHEN status = 'pending' THEN 'cancelled' ELSE status END,
                    finished_at = CASE WHEN status = 'pending' THEN ? ELSE finished_at END,
                    cancel_requested = 1
                WHERE id = ? AND tenant = ? AND status IN ('pending', 'running')
                RETURNING {q.COLS}
                """,
                params,
            ).fetchone()
            if row is not None:
                job = q.row_to_job(row)
                return CancelResult(
                    job, "cancelled" if job.status is JobStatus.CANCELLED else "cancel_requested"
                )
            # Nothing matched: the job is missing or already terminal, and terminal is final.
            row = conn.execute(
                f"SELECT {q.COLS} FROM jobs WHERE id = ? AND tenant = ?", (job_id, tenant)
            ).fetchone()
            return (
                CancelResult(None, "not_found")
                if row is None
                else CancelResult(q.row_to_job(row), "terminal")
            )

        return await self._run(do)

    async def delete_finished_before(self, cutoff: datetime) -> int:
        params = (q.to_text(cutoff),)
        return await self._run(
            lambda conn: (
                conn.execute(
                    f"DELETE FROM jobs WHERE status IN ({q.TERMINAL}) AND finished_at < ?", params
                ).rowcount
            )
        )

    async def wait_for_work(self, timeout_s: float) -> None:
        # Only this process's writes set the event; the timeout doubles as the polling interval
        # that picks up jobs submitted by other processes sharing the file.
        try:
            async with asyncio.timeout(timeout_s):
                await self._work.wait()
        except TimeoutError:
            pass
        self._work.clear()
