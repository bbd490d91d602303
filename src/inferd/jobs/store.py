"""The job store: durable job state, written once over any :class:`~inferd.jobs.connector.Connector`.

Every state-changing method is a *conditional* update: it names the state it expects the row to be
in (and, for workers, the lease owner and attempt), and reports whether it matched. That is how late
results for cancelled or re-leased jobs are refused instead of overwriting newer state.
"""

from __future__ import annotations

import asyncio
import enum
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from inferd.core.errors import ConflictError, InvalidInputError, quote
from inferd.core.tenancy import (
    EQUAL_WEIGHTS,
    PREFIX_SHOWN,
    ApiKey,
    TenantWeights,
    check_tenant,
    key_digest,
    new_key,
    parse_scopes,
)
from inferd.jobs.connector import Connector, Query, Row, job_from_row, job_row
from inferd.jobs.models import Job, JobError, JobStatus, utcnow

LOST_MESSAGE = "worker lost while running the job (lease expired) and no attempts are left"


@dataclass(slots=True)
class InsertResult:
    job: Job
    created: bool  # False: a job with the same (tenant, idempotency_key) existed and is returned


@dataclass(frozen=True, slots=True)
class Finished:
    """What ``finish_many`` wrote for one job: its final status (cancelled, instead of the worker's
    outcome, when its cancellation was requested while it ran) and when."""

    status: JobStatus
    finished_at: datetime


@dataclass(slots=True)
class FinishRequest:
    """One worker's outcome for one attempt, as ``finish`` takes it."""

    job_id: str
    worker_id: str
    attempt: int
    status: JobStatus
    outputs: list[Any] | None
    error: JobError | None


class CancelOutcome(enum.StrEnum):
    CANCELLED = "cancelled"  # it was pending: cancelled now
    CANCEL_REQUESTED = "cancel_requested"  # it is running: its worker's result will be discarded
    TERMINAL = "terminal"  # already finished: unchanged
    NOT_FOUND = "not_found"  # no such job for this tenant


@dataclass(slots=True)
class CancelResult:
    job: Job | None  # None: no such job for this tenant
    outcome: CancelOutcome


def _has_nul(text: str | None) -> bool:
    # PostgreSQL text cannot hold U+0000 (it raises instead of matching nothing), so such values are
    # settled here, the same way on every store: no stored job can carry one.
    return text is not None and "\x00" in text


# A page cursor is the (created_at, id) of the last job returned: microseconds since the epoch and the
# job's id (a UUID). Every string of this shape is a position in the keyset order, so the API's schema
# can say exactly which cursors it accepts (a pattern), and the server accepts every one of them.
CURSOR_PATTERN = r"^[0-9]{1,16}_[0-9A-Za-z_-]{1,64}$"
_CURSOR = re.compile(CURSOR_PATTERN)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def encode_cursor(created_at: datetime, job_id: str) -> str:
    """The list_jobs page cursor of the last job returned; opaque to clients."""
    micros = (created_at - _EPOCH) // timedelta(microseconds=1)
    return f"{micros}_{job_id}"


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Inverse of :func:`encode_cursor`; InvalidInputError for anything not of its shape."""
    if not _CURSOR.fullmatch(cursor):
        raise InvalidInputError(f"invalid page cursor {quote(cursor)}: send the next_cursor of a page")
    micros, _, job_id = cursor.partition("_")
    return _EPOCH + timedelta(microseconds=int(micros)), job_id


def _key_from_row(row: Row) -> ApiKey:
    return ApiKey(
        id=row["id"],
        digest=row["digest"],
        prefix=row["prefix"],
        tenant=row["tenant"],
        scopes=parse_scopes(row["scopes"].split(",")),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
        last_used_at=row["last_used_at"],
    )


def _jobs(rows: list[Row]) -> list[Job]:
    return [job_from_row(row) for row in rows]


def _oldest_first(jobs: list[Job]) -> list[Job]:
    # UPDATE ... RETURNING has no defined order in either database.
    return sorted(jobs, key=lambda job: (job.created_at, job.id))


class JobStore:
    """What JobService needs from durable storage. ``open()`` connects and migrates."""

    def __init__(self, connector: Connector) -> None:
        self.connector = connector
        self._open = False
        self._work = asyncio.Event()

    def _wake(self) -> None:
        self._work.set()

    def _announce(self) -> None:
        """After a write that made jobs runnable: wake this process's worker and the others."""
        self._work.set()
        self.connector.announce_work()

    async def open(self) -> None:
        if self._open:
            raise RuntimeError("the job store is already open")
        self._work = asyncio.Event()
        await self.connector.open(self._wake)
        self._open = True

    async def close(self) -> None:
        if not self._open:
            return
        self._open = False
        try:
            await self.connector.close()
        finally:
            self._work.set()  # wake waiters so they notice the store is gone

    async def _fetch(self, query: Query, **params: Any) -> list[Row]:
        if not self._open:
            raise RuntimeError("the job store is not open")
        return await self.connector.fetch(query, params)

    async def _execute(self, query: Query, **params: Any) -> int:
        if not self._open:
            raise RuntimeError("the job store is not open")
        return await self.connector.execute(query, params)

    async def _fetch_batch(self, query: Query, rows: list[Row], **params: Any) -> list[Row]:
        if not self._open:
            raise RuntimeError("the job store is not open")
        return await self.connector.fetch_batch(query, rows, params)

    async def ping(self) -> bool:
        """True when the store answers a trivial query."""
        try:
            return bool(await self._fetch(Query.PING))
        except Exception:
            return False

    # -- submission -------------------------------------------------------------------------------

    async def insert(self, job: Job) -> InsertResult:
        """Insert a pending job. With an idempotency key, an existing job of the same tenant and key
        is returned instead (created=False); the caller compares ``request_hash``."""
        if job.idempotency_key is None:
            [result] = await self.insert_many([job])
            return result
        if _has_nul(job.idempotency_key):
            raise InvalidInputError("the Idempotency-Key must not contain the character U+0000")
        row = job_row(job)
        # Losing the unique-index race inserts nothing; the winner is then read in a new statement
        # (a fresh snapshot, which sees it committed). The loop covers the winner being deleted in
        # between.
        for _ in range(3):
            if await self._execute(Query.INSERT_JOB_KEYED, **row) == 1:
                self._announce()
                return InsertResult(job, created=True)
            found = await self._fetch(
                Query.GET_JOB_BY_KEY, tenant=job.tenant, idempotency_key=job.idempotency_key
            )
            if found:
                return InsertResult(job_from_row(found[0]), created=False)
        raise ConflictError(f"idempotency key {job.idempotency_key!r} kept conflicting with a vanishing job")

    async def insert_many(self, jobs: list[Job]) -> list[InsertResult]:
        """Insert pending jobs (bulk submission), results in order: one statement for the jobs without
        an idempotency key, one for those with one; a keyed job whose key the tenant already used is
        not inserted, and the existing job is returned instead (created=False), as :meth:`insert` does."""
        if not jobs:
            return []
        plain = [job_row(job) for job in jobs if job.idempotency_key is None]
        keyed = [job for job in jobs if job.idempotency_key is not None]
        if plain:
            await self._fetch_batch(Query.INSERT_JOBS, plain)
        inserted: set[str] = set()
        if keyed:
            rows = await self._fetch_batch(Query.INSERT_JOBS_KEYED, [job_row(job) for job in keyed])
            inserted = {row["id"] for row in rows}
        if plain or inserted:
            self._announce()
        results: list[InsertResult] = []
        for job in jobs:
            if job.idempotency_key is None or job.id in inserted:
                results.append(InsertResult(job, created=True))
            else:  # the key was used before: the job it made (retries of a bulk request land here)
                results.append(await self.insert(job))
        return results

    # -- reads ------------------------------------------------------------------------------------

    async def get(self, job_id: str, *, tenant: str | None = None) -> Job | None:
        """The job, or None; with ``tenant``, jobs of other tenants are None too."""
        if _has_nul(job_id):
            return None
        rows = await self._fetch(Query.GET_JOB, id=job_id, tenant=tenant)
        return job_from_row(rows[0]) if rows else None

    async def list_jobs(
        self,
        *,
        tenant: str,
        status: JobStatus | None = None,
        model: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[Job], str | None]:
        """The tenant's jobs, newest first, and an opaque cursor for the next page (None at the end)."""
        if limit < 1:
            raise InvalidInputError(f"limit must be at least 1, got {limit}")
        if _has_nul(model):
            raise InvalidInputError("the model filter must not contain the character U+0000")
        params: dict[str, Any] = {
            "tenant": tenant,
            "status": None if status is None else JobStatus(status).value,
            "model": model,
            "limit": limit + 1,  # one more tells whether another page exists
        }
        if cursor is None:
            rows = await self._fetch(Query.LIST_JOBS, **params)
        else:
            params["after_created"], params["after_id"] = decode_cursor(cursor)
            rows = await self._fetch(Query.LIST_JOBS_AFTER, **params)
        jobs = _jobs(rows)
        if len(jobs) <= limit:
            return jobs, None
        kept = jobs[:limit]
        return kept, encode_cursor(kept[-1].created_at, kept[-1].id)

    async def pending_counts(self) -> dict[tuple[str, str], int]:
        """Number of pending jobs per (model, version): the truth behind job_queue_depth."""
        rows = await self._fetch(Query.PENDING_COUNTS)
        return {(row["model"], row["version"]): int(row["count"]) for row in rows}

    # -- worker side ------------------------------------------------------------------------------

    async def claim(
        self,
        *,
        worker_id: str,
        limit: int,
        lease_s: float,
        now: datetime,
        weights: TenantWeights = EQUAL_WEIGHTS,
    ) -> list[Job]:
        """Atomically take up to ``limit`` runnable jobs: pending with run_after <= now, or running
        with an expired lease (its worker died; those come first and take no turn). Pending jobs are
        shared between tenants by ``weights`` across claims (stride scheduling): the store keeps each
        tenant's next turn; its k-th job in its own order (priority, then age) has the turn
        next turn + (k - 1) / weight, the claim takes the lowest turns (ties: oldest first) and moves
        the next turn of each tenant it took n jobs from by n / weight. A tenant whose next turn is
        behind the turn of the latest job claimed (it had nothing pending) starts from that turn, so
        idleness earns no credit. Claims of one job thus alternate between tenants of equal weight.
        Each claimed job becomes running with attempts + 1, lease_owner = worker_id,
        lease_expires_at = now + lease_s, started_at = now. Concurrent claimers never get the same
        job (SKIP LOCKED / a single writer), and read the turns one after another: each picks by the
        turns the claims before it left. Jobs of dead workers that must not run again (cancel
        requested, no attempt left) are settled first."""
        if limit < 1:
            return []
        rows = await self._fetch(
            Query.CLAIM,
            now=now,
            expires=now + timedelta(seconds=lease_s),
            worker=worker_id,
            limit=limit,
            lost=LOST_MESSAGE,
            weights=dict(weights.listed),
            default_weight=float(weights.default),
        )
        return _oldest_first(_jobs(rows))

    async def renew_leases(self, job_ids: list[str], *, worker_id: str, lease_s: float, now: datetime) -> int:
        """Extend the leases this worker still holds; returns how many were renewed."""
        if not job_ids:
            return 0
        return await self._execute(
            Query.RENEW_LEASES, ids=list(job_ids), worker=worker_id, expires=now + timedelta(seconds=lease_s)
        )

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
        """Running → succeeded/failed, only if this worker still holds this attempt's lease. If the job
        was marked for cancellation meanwhile it becomes cancelled and the result is discarded.
        Returns the updated job (read back), or None when the condition did not match (nothing
        written)."""
        request = FinishRequest(job_id, worker_id, attempt, status, outputs, error)
        [finished] = await self.finish_many([request], now=now)
        return None if finished is None else await self.get(job_id)

    async def finish_many(self, requests: list[FinishRequest], *, now: datetime) -> list[Finished | None]:
        """``finish`` for several jobs in one statement; for each request, in order, what was written
        (None: the condition did not match). Workers hold the rest of the job already, so it is
        not read back."""
        for request in requests:
            if request.status not in (JobStatus.SUCCEEDED, JobStatus.FAILED):
                raise ValueError(f"finish takes succeeded or failed, not {request.status!r}")
        if not requests:
            return []
        rows = [
            {
                "id": r.job_id,
                "worker": r.worker_id,
                "attempt": r.attempt,
                "status": JobStatus(r.status).value,
                "outputs": r.outputs,
                "error_code": None if r.error is None else r.error.code,
                "error_message": None if r.error is None else r.error.message,
            }
            for r in requests
        ]
        done = {
            row["id"]: Finished(JobStatus(row["status"]), row["finished_at"])
            for row in await self._fetch_batch(Query.FINISH_JOBS, rows, now=now)
        }
        return [done.get(r.job_id) for r in requests]

    async def retry_later(
        self, job_id: str, *, worker_id: str, attempt: int, error: JobError, run_after: datetime
    ) -> Job | None:
        """Running → pending with run_after (backoff), keeping the last error; same condition as
        finish. A job whose cancellation was requested while it ran ends cancelled instead."""
        rows = await self._fetch(
            Query.RETRY_LATER,
            id=job_id,
            worker=worker_id,
            attempt=attempt,
            now=utcnow(),
            run_after=run_after,
            error_code=error.code,
            error_message=error.message,
        )
        if not rows:
            return None
        self._announce()
        return job_from_row(rows[0])

    async def release(self, job_ids: list[str], *, worker_id: str) -> int:
        """Running → pending for jobs this worker holds (graceful shutdown); the attempt is given back."""
        if not job_ids:
            return 0
        count = await self._execute(Query.RELEASE, ids=list(job_ids), worker=worker_id, now=utcnow())
        if count:
            self._announce()
        return count

    async def cancel(self, job_id: str, *, tenant: str | None, now: datetime) -> CancelResult:
        """pending → cancelled; running → cancel_requested; terminal → unchanged ("terminal").
        ``tenant`` None: any tenant's job."""
        if _has_nul(job_id):
            return CancelResult(None, CancelOutcome.NOT_FOUND)
        rows = await self._fetch(Query.CANCEL, id=job_id, tenant=tenant, now=now)
        if rows:
            job = job_from_row(rows[0])
            if job.status is JobStatus.CANCELLED:
                return CancelResult(job, CancelOutcome.CANCELLED)
            return CancelResult(job, CancelOutcome.CANCEL_REQUESTED)
        # Nothing matched: the job is missing or already terminal, and terminal is final. A new
        # statement (fresh snapshot) so a job that finished while we tried reads as finished.
        current = await self.get(job_id, tenant=tenant)
        if current is None:
            return CancelResult(None, CancelOutcome.NOT_FOUND)
        return CancelResult(current, CancelOutcome.TERMINAL)

    async def delete_finished_before(self, cutoff: datetime) -> int:
        """Delete terminal jobs finished before ``cutoff``; returns how many."""
        return await self._execute(Query.DELETE_FINISHED, cutoff=cutoff)

    async def prune_turns(self) -> int:
        """Delete the next turns of tenants that are at or behind the clock (see ``claim``): such a
        tenant starts from the clock either way, so its row says nothing; kept, the table would hold a
        row for every tenant ever claimed from. Returns how many were deleted."""
        return await self._execute(Query.PRUNE_TURNS)

    async def repository_generation(self) -> int:
        """How many reloads of the model repository were requested (by any process sharing the store)."""
        rows = await self._fetch(Query.REPOSITORY_GENERATION)
        return int(rows[0]["generation"])

    async def bump_repository_generation(self) -> int:
        """Record one more reload request; the new generation."""
        rows = await self._fetch(Query.BUMP_REPOSITORY_GENERATION)
        return int(rows[0]["generation"])

    async def wait_for_work(self, timeout_s: float) -> None:
        """Return when new work may be available or after ``timeout_s``. Writes of this process wake
        it at once; other processes' writes wake it where the connector hears them (PostgreSQL),
        and the timeout doubles as the polling interval where it does not (SQLite)."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._work.wait()
        except TimeoutError:
            pass
        self._work.clear()

    # -- API keys made at run time ------------------------------------------------------------------

    async def create_key(
        self, *, tenant: str, scopes: Iterable[str], expires_at: datetime | None, now: datetime
    ) -> tuple[ApiKey, str]:
        """A new key for ``tenant``: its record and the key itself, which is not stored anywhere
        (only its digest), so this is the one time it can be shown."""
        chosen = parse_scopes(scopes)
        if expires_at is not None and expires_at <= now:
            raise InvalidInputError("expires_at must be in the future")
        secret = new_key()
        key = ApiKey(
            id=f"key_{secrets.token_hex(8)}",
            digest=key_digest(secret),
            prefix=secret[:PREFIX_SHOWN],
            tenant=check_tenant(tenant),
            scopes=chosen,
            created_at=now,
            expires_at=expires_at,
        )
        row = {
            "id": key.id,
            "digest": key.digest,
            "prefix": key.prefix,
            "tenant": key.tenant,
            "scopes": ",".join(sorted(key.scopes)),
            "created_at": key.created_at,
            "expires_at": key.expires_at,
            "revoked_at": None,
            "last_used_at": None,
        }
        await self._execute(Query.INSERT_KEY, **row)
        return key, secret

    async def list_keys(self) -> list[ApiKey]:
        """The keys not revoked (expired ones included, until revoked), oldest first."""
        return [_key_from_row(row) for row in await self._fetch(Query.LIST_KEYS)]

    async def revoke_key(self, key_id: str, *, now: datetime) -> ApiKey | None:
        """Revoke a key; None when there is no such key or it was revoked already."""
        if _has_nul(key_id):
            return None
        rows = await self._fetch(Query.REVOKE_KEY, id=key_id, now=now)
        return _key_from_row(rows[0]) if rows else None

    async def touch_keys(self, key_ids: Iterable[str], *, now: datetime) -> int:
        """Record that these keys were used (up to ``now``)."""
        ids = sorted(key_ids)
        return await self._execute(Query.TOUCH_KEYS, ids=ids, now=now) if ids else 0
