"""The seam between the job-store logic (store.py) and one database dialect.

The store says *what* to run by naming a :class:`Query` with a dict of parameters; a connector holds
the dialect's text (or, in memory, a function) for every name, encodes the parameters and returns rows
as dicts keyed by column name, with values in Python types (datetimes in UTC, booleans, decoded
JSON). Connectors hold no job logic: conditions, retries and wake-ups live once in the store.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from inferd.jobs.models import Job, JobError, JobStatus

Row = dict[str, Any]
Params = Mapping[str, Any]


class Query(enum.StrEnum):
    """Every statement the store runs. Parameters (``:name``) and result columns are listed."""

    PING = "ping"  # -> ok
    # Batched: one row of job columns per job; nothing returned.
    INSERT_JOBS = "insert_jobs"
    # Job columns; does nothing (rowcount 0) when the tenant already used the idempotency key.
    INSERT_JOB_KEYED = "insert_job_keyed"
    # Batched like INSERT_JOBS, for jobs with idempotency keys -> id of each job inserted (a job whose
    # key the tenant already used, earlier or in the same batch, is skipped).
    INSERT_JOBS_KEYED = "insert_jobs_keyed"
    GET_JOB = "get_job"  # id, tenant (None: any) -> job
    GET_JOB_BY_KEY = "get_job_by_key"  # tenant, idempotency_key -> job
    LIST_JOBS = "list_jobs"  # tenant, status, model (None: any), limit -> jobs, newest first
    LIST_JOBS_AFTER = "list_jobs_after"  # ... and after_created, after_id: the page after that job
    PENDING_COUNTS = "pending_counts"  # -> model, version, count
    # now, expires, worker, limit, lost, weights ({tenant: weight}, a mapping: JSON), default_weight
    # -> the claimed jobs. Expired leases are settled (cancelled, or failed with ``lost`` as the message
    # when no attempt is left) or re-run in the same transaction. Pending jobs are taken by weight:
    # each tenant's runnable jobs are ranked by (priority descending, created_at, id), the job of rank k
    # has the turn (k - 1) / weight (the tenant's weight, else default_weight; a float8 division), and
    # the claim takes the lowest turns (ties by created_at, id); expired jobs to re-run come first.
    CLAIM = "claim"
    RENEW_LEASES = "renew_leases"  # ids, worker, expires -> rowcount
    # Batched: id, worker, attempt, status, outputs, error_code, error_message; and now -> id, status,
    # finished_at of each job finished (the caller has the rest: returning whole rows cost a fifth of
    # the statement's time).
    FINISH_JOBS = "finish_jobs"
    RETRY_LATER = "retry_later"  # id, worker, attempt, now, run_after, error_code, error_message -> job
    RELEASE = "release"  # ids, worker, now -> rowcount
    CANCEL = "cancel"  # id, tenant (None: any), now -> the job, when it was pending or running
    DELETE_FINISHED = "delete_finished"  # cutoff -> rowcount
    # -> rowcount: the tenant turn rows at or behind the clock deleted (an absent row means the same).
    PRUNE_TURNS = "prune_turns"
    REPOSITORY_GENERATION = "repository_generation"  # -> generation
    BUMP_REPOSITORY_GENERATION = "bump_repository_generation"  # -> generation (the new one)
    # API keys made at run time.
    INSERT_KEY = "insert_key"  # key columns
    LIST_KEYS = "list_keys"  # -> the keys not revoked, oldest first
    REVOKE_KEY = "revoke_key"  # id, now -> the key, when it was not revoked yet
    TOUCH_KEYS = "touch_keys"  # ids, now: last_used_at -> rowcount


class Connector(Protocol):
    """One database dialect. Methods raise the dialect's errors, except the ones documented."""

    # The schema migrations the last open() applied (empty when the schema was up to date).
    applied_migrations: list[int]

    async def open(self, on_notification: Callable[[], None]) -> None:
        """Connect and apply pending schema migrations; call ``on_notification`` whenever another
        process announces work (dialects that cannot hear other processes never call it)."""

    async def close(self) -> None: ...

    async def fetch(self, query: Query, params: Params) -> list[Row]:
        """Run ``query`` and return its rows."""

    async def execute(self, query: Query, params: Params) -> int:
        """Run ``query`` and return the number of rows it changed."""

    async def fetch_batch(self, query: Query, rows: Sequence[Params], params: Params) -> list[Row]:
        """Run a batched ``query`` for every item of ``rows`` (each merged over ``params``) in one
        transaction, and return the rows all of them returned. A unique-key violation raises
        ConflictError; a value the database cannot hold raises InvalidInputError."""

    def announce_work(self) -> None:
        """Tell other processes that jobs became runnable (after the write committed)."""


def sql_text(template: str) -> str:
    """SQL with the status literals filled in from the enum (``{pending}``, ``{terminal}``, ...)."""
    values = {status.name.lower(): f"'{status.value}'" for status in JobStatus}
    values["terminal"] = ", ".join(f"'{status.value}'" for status in JobStatus if status.terminal)
    return template.format_map(values)


def job_row(job: Job) -> Row:
    """The job as the parameters of an insert: one entry per column, in Python types."""
    return {
        "id": job.id,
        "tenant": job.tenant,
        "model": job.model,
        "version": job.version,
        "inputs": job.inputs,
        "batch": job.batch,
        "status": JobStatus(job.status).value,
        "attempts": int(job.attempts),
        "max_attempts": int(job.max_attempts),
        "timeout_s": None if job.timeout_s is None else float(job.timeout_s),
        "created_at": job.created_at,
        "run_after": job.run_after,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "lease_owner": job.lease_owner,
        "lease_expires_at": job.lease_expires_at,
        "cancel_requested": job.cancel_requested,
        "outputs": job.outputs,
        "error_code": None if job.error is None else job.error.code,
        "error_message": None if job.error is None else job.error.message,
        "idempotency_key": job.idempotency_key,
        "request_hash": job.request_hash,
        "parameters": job.parameters,
        "priority": int(job.priority),
        "trace_context": job.trace_context,
    }


def job_from_row(row: Mapping[str, Any]) -> Job:
    """The job a row holds, by column name (extra columns are ignored)."""
    return Job(
        id=row["id"],
        tenant=row["tenant"],
        model=row["model"],
        version=row["version"],
        inputs=row["inputs"],
        batch=bool(row["batch"]),
        status=JobStatus(row["status"]),
        attempts=row["attempts"],
        max_attempts=row["max_attempts"],
        timeout_s=row["timeout_s"],
        created_at=row["created_at"],
        run_after=row["run_after"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        lease_owner=row["lease_owner"],
        lease_expires_at=row["lease_expires_at"],
        cancel_requested=bool(row["cancel_requested"]),
        outputs=row["outputs"],
        error=None if row["error_code"] is None else JobError(row["error_code"], row["error_message"] or ""),
        idempotency_key=row["idempotency_key"],
        request_hash=row["request_hash"],
        parameters=row["parameters"],
        priority=row["priority"],
        trace_context=row["trace_context"],
    )
