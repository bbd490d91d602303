"""Statements and row mapping of the PostgreSQL job store."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import orjson
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb, set_json_loads

from inferd.core.errors import ConfigError, InvalidInputError
from inferd.jobs.migrations import JOB_COLUMNS
from inferd.jobs.models import TERMINAL_STATUSES, Job, JobError, JobStatus

CHANNEL = "inferd_jobs"

# Lower case only: the schema also goes into the search_path startup option, where unquoted names
# are folded to lower case, so anything else could name a different schema there than in DDL.
_SCHEMA_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")

COLS = ", ".join(JOB_COLUMNS)
_J_COLS = ", ".join(f"j.{c}" for c in JOB_COLUMNS)
_INSERT_VALUES = f"INSERT INTO jobs ({COLS}) VALUES ({', '.join('%s' for _ in JOB_COLUMNS)})"
_INSERT_KEYED_VALUES = (
    f"{_INSERT_VALUES} ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"
)
_NOTIFYING = "WITH ins AS ({} RETURNING 1) SELECT pg_notify('" + CHANNEL + "', %s) FROM ins"
# (keyed, notify) -> statement; each reports the inserted row count through rowcount.
INSERTS = {
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
    "jsonb",  # parameters
)
# One array parameter per column, unnested into rows: a single fixed statement (prepared once per
# connection) inserts any number of jobs, without the 65535-parameter cap of a multi-row VALUES.
INSERT_MANY = (
    f"WITH ins AS (INSERT INTO jobs ({COLS}) SELECT * FROM unnest("
    + ", ".join(f"%s::{t}[]" for t in _ARRAY_TYPES)
    + f") RETURNING 1) SELECT (SELECT pg_notify('{CHANNEL}', %s) FROM ins LIMIT 1)"
)
TERMINAL = ", ".join(f"'{s.value}'" for s in TERMINAL_STATUSES)
LOST_MESSAGE = "worker lost while running the job (lease expired) and no attempts are left"

# Expired leases are settled or re-run in the same statement that claims pending work. Candidates
# are locked with SKIP LOCKED so concurrent claimers take disjoint jobs instead of queueing behind
# each other; both candidate sets are bounded by the limit, and the final pick is oldest first.
CLAIM = f"""
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

FINISH_MANY = f"""
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
RETRY_LATER = f"""
WITH u AS (
    UPDATE jobs SET
        status = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'pending' END,
        finished_at = CASE WHEN cancel_requested THEN %(now)s ELSE NULL END,
        run_after = %(run_after)s, error_code = %(code)s, error_message = %(message)s,
        lease_owner = NULL, lease_expires_at = NULL
    WHERE id = %(id)s AND status = 'running' AND lease_owner = %(worker)s AND attempts = %(attempt)s
    RETURNING {COLS}
)
SELECT u.*, pg_notify('{CHANNEL}', %(schema)s) FROM u
"""

RELEASE = f"""
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

CANCEL = f"""
UPDATE jobs SET
    status = CASE WHEN status = 'pending' THEN 'cancelled' ELSE status END,
    finished_at = CASE WHEN status = 'pending' THEN %(now)s ELSE finished_at END,
    cancel_requested = true
WHERE id = %(id)s AND tenant = %(tenant)s AND status IN ('pending', 'running')
RETURNING {COLS}
"""

RECONNECT_MIN_S = 0.5
RECONNECT_MAX_S = 30.0


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


def jsonb(value: Any) -> Jsonb | None:
    return None if value is None else Jsonb(value, dumps=_dumps)


def job_params(job: Job) -> list[Any]:
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
        jsonb(job.outputs),
        None if job.error is None else job.error.code,
        None if job.error is None else job.error.message,
        job.idempotency_key,
        job.request_hash,
        jsonb(job.parameters),
    ]


def row_to_job(row: Sequence[Any]) -> Job:
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
        parameters=row[22],
    )


def validate_schema_name(schema: str) -> str:
    if not _SCHEMA_RE.fullmatch(schema) or schema.startswith("pg_"):
        raise ConfigError(
            f"invalid PostgreSQL schema name {schema!r} for the job store: use 1-63 lower-case letters, "
            "digits and underscores, not starting with a digit or 'pg_'"
        )
    return schema


async def configure_connection(conn: AsyncConnection[Any]) -> None:
    set_json_loads(orjson.loads, conn)
