"""Statements and row mapping of the SQLite job store."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from inferd.core.errors import InvalidInputError
from inferd.jobs.migrations import JOB_COLUMNS
from inferd.jobs.models import TERMINAL_STATUSES, Job, JobError, JobStatus

COLS = ", ".join(JOB_COLUMNS)
_PLACEHOLDERS = ", ".join("?" for _ in JOB_COLUMNS)
INSERT = f"INSERT INTO jobs ({COLS}) VALUES ({_PLACEHOLDERS})"
INSERT_KEYED = f"{INSERT} ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"
TERMINAL = ", ".join(f"'{s.value}'" for s in TERMINAL_STATUSES)
LOST_MESSAGE = "worker lost while running the job (lease expired) and no attempts are left"
# RETURNING needs 3.35 (2021); Python on Linux usually links the distribution's SQLite, which may be older.
MIN_SQLITE = (3, 35, 0)


def to_text(value: datetime) -> str:
    # Naive datetimes are taken as UTC (PostgreSQL's session time zone is UTC too).
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _ts_or_none(value: datetime | None) -> str | None:
    return None if value is None else to_text(value)


def _dt(value: str) -> datetime:
    return datetime.fromisoformat(value)


def _dt_or_none(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def dump_json(value: Any) -> str:
    try:
        # numpy arrays and scalars are accepted because model outputs are often made of them.
        return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()
    except orjson.JSONEncodeError as exc:
        # orjson also refuses integers beyond 64 bits; even stored exactly they would be read back
        # as floats, so they are refused rather than silently altered.
        raise InvalidInputError(f"job data is not JSON-serializable: {exc}") from exc


def job_params(job: Job) -> tuple[Any, ...]:
    return (
        job.id,
        job.tenant,
        job.model,
        job.version,
        dump_json(job.inputs),
        int(job.batch),
        JobStatus(job.status).value,
        job.attempts,
        job.max_attempts,
        job.timeout_s,
        to_text(job.created_at),
        to_text(job.run_after),
        _ts_or_none(job.started_at),
        _ts_or_none(job.finished_at),
        job.lease_owner,
        _ts_or_none(job.lease_expires_at),
        int(job.cancel_requested),
        None if job.outputs is None else dump_json(job.outputs),
        None if job.error is None else job.error.code,
        None if job.error is None else job.error.message,
        job.idempotency_key,
        job.request_hash,
        None if job.parameters is None else dump_json(job.parameters),
    )


def row_to_job(row: Sequence[Any]) -> Job:
    return Job(
        id=row[0],
        tenant=row[1],
        model=row[2],
        version=row[3],
        inputs=orjson.loads(row[4]),
        batch=bool(row[5]),
        status=JobStatus(row[6]),
        attempts=row[7],
        max_attempts=row[8],
        timeout_s=row[9],
        created_at=_dt(row[10]),
        run_after=_dt(row[11]),
        started_at=_dt_or_none(row[12]),
        finished_at=_dt_or_none(row[13]),
        lease_owner=row[14],
        lease_expires_at=_dt_or_none(row[15]),
        cancel_requested=bool(row[16]),
        outputs=None if row[17] is None else orjson.loads(row[17]),
        error=None if row[18] is None else JobError(row[18], row[19] or ""),
        idempotency_key=row[20],
        request_hash=row[21],
        parameters=None if row[22] is None else orjson.loads(row[22]),
    )


def id_list(job_ids: Iterable[str]) -> str:
    # Passed as one JSON parameter and expanded with json_each, so the statement text is fixed
    # (and cached) whatever the number of ids.
    return orjson.dumps(list(job_ids)).decode()


FINISH = f"""
UPDATE jobs SET
    status = CASE WHEN cancel_requested THEN 'cancelled' ELSE ? END,
    finished_at = ?,
    outputs = CASE WHEN cancel_requested THEN NULL ELSE ? END,
    error_code = CASE WHEN cancel_requested THEN NULL ELSE ? END,
    error_message = CASE WHEN cancel_requested THEN NULL ELSE ? END,
    lease_owner = NULL, lease_expires_at = NULL
WHERE id = ? AND status = 'running' AND lease_owner = ? AND attempts = ?
RETURNING {COLS}
"""
