"""The JobStore protocol: what JobService needs from durable storage.

Every state-changing method is a *conditional* update: it names the state it expects the row to be
in (and, for workers, the lease owner and attempt), and reports whether it matched. That is how late
results for cancelled or re-leased jobs are refused instead of overwriting newer state.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from inferd.core.errors import InvalidInputError
from inferd.jobs.models import Job, JobError, JobStatus


@dataclass(slots=True)
class InsertResult:
    job: Job
    created: bool  # False: a job with the same (tenant, idempotency_key) existed and is returned


@dataclass(slots=True)
class FinishRequest:
    """One worker's outcome for one attempt, as ``finish`` takes it."""

    job_id: str
    worker_id: str
    attempt: int
    status: JobStatus
    outputs: list[Any] | None
    error: JobError | None


@dataclass(slots=True)
class CancelResult:
    job: Job | None  # None: no such job for this tenant
    outcome: str  # "cancelled" | "cancel_requested" | "terminal" | "not_found"


class JobStore(Protocol):
    async def open(self) -> None:
        """Connect and apply pending schema migrations."""

    async def close(self) -> None: ...

    async def ping(self) -> bool:
        """True when the store answers a trivial query."""

    async def insert(self, job: Job) -> InsertResult:
        """Insert a pending job. With an idempotency key, an existing job of the same tenant and key
        is returned instead (created=False); the caller compares ``request_hash``."""

    async def insert_many(self, jobs: list[Job]) -> list[InsertResult]:
        """Insert pending jobs in one transaction (bulk submission). Jobs must not carry an
        idempotency key (ValueError): the per-key lookup is what single ``insert`` is for."""

    async def get(self, job_id: str, *, tenant: str | None = None) -> Job | None:
        """The job, or None; with ``tenant``, jobs of other tenants are None too."""

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

    async def claim(self, *, worker_id: str, limit: int, lease_s: float, now: datetime) -> list[Job]:
        """Atomically take up to ``limit`` runnable jobs, oldest first: pending with run_after <= now,
        or running with an expired lease (its worker died). Each claimed job becomes running with
        attempts + 1, lease_owner = worker_id, lease_expires_at = now + lease_s, started_at = now.
        Concurrent claimers never get the same job (SKIP LOCKED / a single writer)."""

    async def renew_leases(self, job_ids: list[str], *, worker_id: str, lease_s: float, now: datetime) -> int:
        """Extend the leases this worker still holds; returns how many were renewed."""

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
        Returns the updated job, or None when the condition did not match (nothing written)."""

    async def finish_many(self, requests: list[FinishRequest], *, now: datetime) -> list[Job | None]:
        """``finish`` for several jobs in one statement and one commit; results in request order."""

    async def retry_later(
        self, job_id: str, *, worker_id: str, attempt: int, error: JobError, run_after: datetime
    ) -> Job | None:
        """Running → pending with run_after (backoff), keeping the last error; same condition as finish."""

    async def release(self, job_ids: list[str], *, worker_id: str) -> int:
        """Running → pending for jobs this worker holds (graceful shutdown); the attempt is given back."""

    async def cancel(self, job_id: str, *, tenant: str, now: datetime) -> CancelResult:
        """pending → cancelled; running → cancel_requested; terminal → unchanged ("terminal")."""

    async def pending_counts(self) -> dict[tuple[str, str], int]:
        """Number of pending jobs per (model, version): the truth behind job_queue_depth."""

    async def delete_finished_before(self, cutoff: datetime) -> int:
        """Delete terminal jobs finished before ``cutoff``; returns how many."""

    async def wait_for_work(self, timeout_s: float) -> None:
        """Return when new work may be available (a notification) or after ``timeout_s``."""


def encode_cursor(created_at: datetime, job_id: str) -> str:
    """The list_jobs page cursor: the (created_at, id) of the last job returned, opaque to clients."""
    raw = json.dumps([created_at.isoformat(timespec="microseconds"), job_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Inverse of :func:`encode_cursor`; InvalidInputError for anything it did not produce."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, job_id = json.loads(raw)
        when = datetime.fromisoformat(created)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise InvalidInputError(f"invalid page cursor {cursor!r}") from exc
    if not isinstance(job_id, str) or when.tzinfo is None:
        raise InvalidInputError(f"invalid page cursor {cursor!r}")
    return when, job_id


@dataclass(slots=True)
class ListQuery:
    """``list_jobs`` as SQL for either dialect: newest first, keyset-paged, one extra row to tell
    whether another page exists (so the last page has no cursor)."""

    sql: str
    params: list[Any]
    limit: int

    @classmethod
    def build(
        cls,
        *,
        columns: str,
        mark: str,
        tenant: str,
        status: JobStatus | None,
        model: str | None,
        limit: int,
        cursor: str | None,
        encode_time: Callable[[datetime], Any] = lambda value: value,
    ) -> ListQuery:
        if limit < 1:
            raise InvalidInputError(f"limit must be at least 1, got {limit}")
        where = [f"tenant = {mark}"]
        params: list[Any] = [tenant]
        if status is not None:
            where.append(f"status = {mark}")
            params.append(JobStatus(status).value)
        if model is not None:
            where.append(f"model = {mark}")
            params.append(model)
        if cursor is not None:
            created_at, last_id = decode_cursor(cursor)
            where.append(f"(created_at, id) < ({mark}, {mark})")
            params += [encode_time(created_at), last_id]
        params.append(limit + 1)
        sql = (
            f"SELECT {columns} FROM jobs WHERE {' AND '.join(where)} "
            f"ORDER BY created_at DESC, id DESC LIMIT {mark}"
        )
        return cls(sql, params, limit)

    def page(self, jobs: list[Job]) -> tuple[list[Job], str | None]:
        if len(jobs) <= self.limit:
            return jobs, None
        kept = jobs[: self.limit]
        return kept, encode_cursor(kept[-1].created_at, kept[-1].id)


def check_finish_requests(requests: list[FinishRequest]) -> None:
    for request in requests:
        if request.status not in (JobStatus.SUCCEEDED, JobStatus.FAILED):
            raise ValueError(f"finish takes succeeded or failed, not {request.status!r}")


class FinishOne:
    """``finish`` for one job, in terms of the store's own ``finish_many``."""

    async def finish_many(self, requests: list[FinishRequest], *, now: datetime) -> list[Job | None]:
        raise NotImplementedError

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
