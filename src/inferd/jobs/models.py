"""Job records as the store keeps them, independent of HTTP and of any store."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


class JobStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


TERMINAL_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


def utcnow() -> datetime:
    return datetime.now(UTC)


def wire_time(value: datetime | None) -> str | None:
    """A timestamp as API responses show it: RFC 3339 in UTC with a ``Z``."""
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


@dataclass(slots=True)
class JobError:
    code: str
    message: str


@dataclass(slots=True)
class Job:
    """One durable job. ``inputs`` is always a list; ``batch`` says whether the client sent
    ``inputs`` (answered as ``outputs``) or a single ``input`` (answered as ``output``)."""

    id: str
    tenant: str
    model: str
    version: str
    inputs: list[Any]
    batch: bool
    status: JobStatus = JobStatus.PENDING
    attempts: int = 0
    max_attempts: int = 3
    timeout_s: float | None = None
    created_at: datetime = field(default_factory=utcnow)
    run_after: datetime = field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    cancel_requested: bool = False
    outputs: list[Any] | None = None
    error: JobError | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None
    parameters: dict[str, Any] | None = None  # passed to the model's predict with every attempt
    priority: int = 0  # higher first among the tenant's pending jobs
    trace_context: str | None = None  # W3C traceparent of the submitting request (tracing on)
