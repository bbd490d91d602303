"""The PostgreSQL connector's named queries (``%(name)s`` parameters; see connector.Query).

Batched queries take one array parameter per field, unnested into rows: a single fixed statement
(prepared once per connection) handles any number of jobs, without the 65535-parameter cap of a
multi-row VALUES.
"""

from __future__ import annotations

from inferd.jobs.connector import Query, sql_text
from inferd.jobs.migrations import JOB_COLUMN_KINDS, JOB_COLUMNS, KEY_COLUMNS, Kind

CHANNEL = "inferd_jobs"

COLS = ", ".join(JOB_COLUMNS)
KEY_COLS = ", ".join(KEY_COLUMNS)
_J_COLS = ", ".join(f"j.{c}" for c in JOB_COLUMNS)
PG_TYPES = {
    Kind.TEXT: "text",
    Kind.INTEGER: "integer",
    Kind.REAL: "double precision",
    Kind.BOOLEAN: "boolean",
    Kind.TIME: "timestamptz",
    Kind.JSON: "jsonb",
}
_INSERT_VALUES = f"INSERT INTO jobs ({COLS}) VALUES ({', '.join(f'%({c})s' for c in JOB_COLUMNS)})"
_LIST = sql_text(
    f"""
SELECT {COLS} FROM jobs
WHERE tenant = %(tenant)s AND (%(status)s::text IS NULL OR status = %(status)s)
    AND (%(model)s::text IS NULL OR model = %(model)s) {{{{after}}}}
ORDER BY created_at DESC, id DESC LIMIT %(limit)s
"""
)


def _array(column: str) -> str:
    """A batched column parameter, sent in binary format (``%(name)b``): psycopg quotes every element
    of a text-format array with a regular expression in Python: a 1,000-row insert took about 1.5x as
    long with text-format arrays. JSON travels as text[] (one string per row, made by orjson) and
    is cast to jsonb[] in SQL, rather than as one Jsonb adapter per value."""
    kind = JOB_COLUMN_KINDS[column]
    return f"%({column})b::text[]::jsonb[]" if kind is Kind.JSON else f"%({column})b::{PG_TYPES[kind]}[]"


_UNNEST_JOBS = f"INSERT INTO jobs ({COLS}) SELECT * FROM unnest({', '.join(_array(c) for c in JOB_COLUMNS)})"

QUERIES: dict[Query, str] = {
    Query.PING: "SELECT 1 AS ok",
    Query.INSERT_JOBS: _UNNEST_JOBS,
    Query.INSERT_JOB_KEYED: f"{_INSERT_VALUES} ON CONFLICT (tenant, idempotency_key)"
    " WHERE idempotency_key IS NOT NULL DO NOTHING",
    Query.INSERT_JOBS_KEYED: (
        f"{_UNNEST_JOBS} ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING RETURNING id"
    ),
    Query.GET_JOB: f"SELECT {COLS} FROM jobs WHERE id = %(id)s AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s)",
    Query.GET_JOB_BY_KEY: f"SELECT {COLS} FROM jobs WHERE tenant = %(tenant)s AND idempotency_key = %(idempotency_key)s",
    Query.LIST_JOBS: _LIST.replace("{after}", ""),
    Query.LIST_JOBS_AFTER: _LIST.replace(
        "{after}", "AND (created_at, id) < (%(after_created)s::timestamptz, %(after_id)s::text)"
    ),
    Query.PENDING_COUNTS: sql_text(
        "SELECT model, version, count(*) AS count FROM jobs WHERE status = {pending} GROUP BY model, version"
    ),
    # Expired leases are settled or re-run in the same statement that claims pending work. Candidates
    # are locked with SKIP LOCKED so concurrent claimers take disjoint jobs instead of queueing behind
    # each other. The tenants with pending jobs come from a skip scan of the fair claim index (one
    # probe per tenant); each tenant contributes at most ``limit`` candidates in its priority order,
    # read from the same index; the final pick takes the lowest turns (the tenant's start, then
    # 1 / its weight per job) and moves the next turns of the tenants it took from and the clock.
    # The starts come from claim_starts (migration 11): while two or more tenants wait, it locks the
    # clock row until this claim commits and reads the turns after the claim before it committed, so
    # concurrent claims take turns there: each one picks by the turns the others left, and charges
    # them exactly. Candidates are locked after that (they are read per tenant of the starts), so a
    # claim does not skip the jobs the claim before it locked but left, and those it took are no
    # candidates (a locked row is read again as it stands). With one tenant waiting, claims overlap
    # and each adds its jobs to the tenant's latest turn (the upsert reads the row's latest version).
    # A tenant that has no turn row yet (new, or pruned) starts from the clock. The clock is written
    # before the turn rows (their condition reads it), as the locking claims take them, so claims of
    # either kind never wait for each other's rows crosswise.
    Query.CLAIM: sql_text(
        f"""
WITH RECURSIVE tenants AS (
    (SELECT tenant FROM jobs WHERE status = {{pending}} ORDER BY tenant LIMIT 1)
    UNION ALL
    SELECT (SELECT j.tenant FROM jobs j WHERE j.status = {{pending}} AND j.tenant > t.tenant
            ORDER BY j.tenant LIMIT 1)
    FROM tenants t WHERE t.tenant IS NOT NULL
),
shares AS MATERIALIZED (
    SELECT s.tenant, s.start,
        coalesce(w.value::double precision, %(default_weight)s::double precision) AS weight
    FROM claim_starts(ARRAY(SELECT tenant FROM tenants WHERE tenant IS NOT NULL)) s
        LEFT JOIN jsonb_each_text(%(weights)s::jsonb) w ON w.key = s.tenant
),
expired AS (
    SELECT id, created_at, attempts, max_attempts, cancel_requested FROM jobs
    WHERE status = {{running}} AND lease_expires_at < %(now)s
    ORDER BY created_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
),
settled AS (
    UPDATE jobs j SET
        status = CASE WHEN e.cancel_requested THEN {{cancelled}} ELSE {{failed}} END,
        finished_at = %(now)s, lease_owner = NULL, lease_expires_at = NULL,
        error_code = CASE WHEN e.cancel_requested THEN j.error_code ELSE 'inference_error' END,
        error_message = CASE WHEN e.cancel_requested THEN j.error_message ELSE %(lost)s END
    FROM expired e
    WHERE j.id = e.id AND (e.cancel_requested OR e.attempts >= e.max_attempts)
    RETURNING j.id
),
candidates AS (
    SELECT c.id, s.tenant, c.priority, c.created_at, s.start, s.weight FROM shares s
    CROSS JOIN LATERAL (
        SELECT id, priority, created_at FROM jobs
        WHERE status = {{pending}} AND tenant = s.tenant AND run_after <= %(now)s AND NOT cancel_requested
        ORDER BY priority DESC, created_at, id
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ) c
),
runnable AS (
    SELECT id, tenant, created_at,
        start + (row_number() OVER (PARTITION BY tenant ORDER BY priority DESC, created_at, id) - 1) / weight AS turn
    FROM candidates
),
picked AS MATERIALIZED (
    SELECT id, tenant, turn FROM (
        SELECT id, tenant, created_at, turn FROM runnable
        UNION ALL
        SELECT id, NULL, created_at, NULL FROM expired WHERE NOT (cancel_requested OR attempts >= max_attempts)
    ) u
    ORDER BY turn NULLS FIRST, created_at, id
    LIMIT %(limit)s
),
taken AS (
    SELECT s.tenant, s.start, count(*) / s.weight AS step
    FROM picked p JOIN shares s ON s.tenant = p.tenant
    GROUP BY s.tenant, s.start, s.weight
),
clocked AS (
    UPDATE claim_clock SET turn = greatest(turn, (SELECT max(turn) FROM picked))
    WHERE id = 1 AND EXISTS (SELECT 1 FROM picked WHERE turn IS NOT NULL)
    RETURNING turn
),
turned AS (
    INSERT INTO tenant_turns AS n (tenant, next_turn)
    SELECT tenant, start + step FROM taken WHERE (SELECT count(*) FROM clocked) > 0
    ON CONFLICT (tenant) DO UPDATE SET
        next_turn = greatest(n.next_turn + (SELECT k.step FROM taken k WHERE k.tenant = excluded.tenant),
            excluded.next_turn)
)
UPDATE jobs j SET
    status = {{running}}, attempts = j.attempts + 1, lease_owner = %(worker)s,
    lease_expires_at = %(expires)s, started_at = %(now)s
FROM picked p
WHERE j.id = p.id
RETURNING {_J_COLS}
"""
    ),
    Query.RENEW_LEASES: sql_text(
        "UPDATE jobs SET lease_expires_at = %(expires)s "
        "WHERE id = ANY(%(ids)s::text[]) AND status = {running} AND lease_owner = %(worker)s"
    ),
    Query.FINISH_JOBS: sql_text(
        """
UPDATE jobs j SET
    status = CASE WHEN j.cancel_requested THEN {cancelled} ELSE v.status END,
    finished_at = %(now)s,
    outputs = CASE WHEN j.cancel_requested THEN NULL ELSE v.outputs END,
    error_code = CASE WHEN j.cancel_requested THEN NULL ELSE v.error_code END,
    error_message = CASE WHEN j.cancel_requested THEN NULL ELSE v.error_message END,
    lease_owner = NULL, lease_expires_at = NULL
FROM unnest(%(id)b::text[], %(status)b::text[], %(outputs)b::text[]::jsonb[], %(error_code)b::text[],
            %(error_message)b::text[], %(worker)b::text[], %(attempt)b::int[])
     AS v(id, status, outputs, error_code, error_message, worker, attempt)
WHERE j.id = v.id AND j.status = {running} AND j.lease_owner = v.worker AND j.attempts = v.attempt
RETURNING j.id, j.status, j.finished_at
"""
    ),
    Query.RETRY_LATER: sql_text(
        f"""
UPDATE jobs SET
    status = CASE WHEN cancel_requested THEN {{cancelled}} ELSE {{pending}} END,
    finished_at = CASE WHEN cancel_requested THEN %(now)s ELSE NULL END,
    run_after = %(run_after)s, error_code = %(error_code)s, error_message = %(error_message)s,
    lease_owner = NULL, lease_expires_at = NULL
WHERE id = %(id)s AND status = {{running}} AND lease_owner = %(worker)s AND attempts = %(attempt)s
RETURNING {COLS}
"""
    ),
    Query.RELEASE: sql_text(
        """
UPDATE jobs SET
    status = CASE WHEN cancel_requested THEN {cancelled} ELSE {pending} END,
    attempts = CASE WHEN cancel_requested THEN attempts ELSE attempts - 1 END,
    finished_at = CASE WHEN cancel_requested THEN %(now)s ELSE NULL END,
    lease_owner = NULL, lease_expires_at = NULL
WHERE id = ANY(%(ids)s::text[]) AND status = {running} AND lease_owner = %(worker)s
"""
    ),
    Query.CANCEL: sql_text(
        f"""
UPDATE jobs SET
    status = CASE WHEN status = {{pending}} THEN {{cancelled}} ELSE status END,
    finished_at = CASE WHEN status = {{pending}} THEN %(now)s ELSE finished_at END,
    cancel_requested = true
WHERE id = %(id)s AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s) AND status IN ({{pending}}, {{running}})
RETURNING {COLS}
"""
    ),
    Query.DELETE_FINISHED: sql_text(
        "DELETE FROM jobs WHERE status IN ({terminal}) AND finished_at < %(cutoff)s"
    ),
    # A row a claim is writing is skipped (it moves past the clock anyway), and the rest are locked in
    # tenant order, as claims lock them: the sweep neither waits for a claim nor deadlocks with one. A
    # row a claim moved after this statement's snapshot is checked again as it stands, against a clock
    # that can only have grown since.
    Query.PRUNE_TURNS: (
        "DELETE FROM tenant_turns WHERE tenant IN (SELECT tenant FROM tenant_turns"
        " WHERE next_turn <= (SELECT turn FROM claim_clock WHERE id = 1) ORDER BY tenant FOR UPDATE SKIP LOCKED)"
    ),
    Query.REPOSITORY_GENERATION: "SELECT generation FROM model_repository WHERE id = 1",
    Query.BUMP_REPOSITORY_GENERATION: (
        "UPDATE model_repository SET generation = generation + 1 WHERE id = 1 RETURNING generation"
    ),
    Query.INSERT_KEY: f"INSERT INTO api_keys ({KEY_COLS}) VALUES ({', '.join(f'%({c})s' for c in KEY_COLUMNS)})",
    Query.LIST_KEYS: f"SELECT {KEY_COLS} FROM api_keys WHERE revoked_at IS NULL ORDER BY created_at, id",
    Query.REVOKE_KEY: (
        f"UPDATE api_keys SET revoked_at = %(now)s WHERE id = %(id)s AND revoked_at IS NULL RETURNING {KEY_COLS}"
    ),
    Query.TOUCH_KEYS: "UPDATE api_keys SET last_used_at = %(now)s WHERE id = ANY(%(ids)s::text[])",
}
