"""The SQLite connector's named queries (``:name`` parameters; see connector.Query).

A query is one statement or, where SQLite needs several, a tuple of them run in one write
transaction; the last one's rows are the result.
"""

from __future__ import annotations

from inferd.jobs.connector import Query, sql_text
from inferd.jobs.migrations import JOB_COLUMNS, KEY_COLUMNS

COLS = ", ".join(JOB_COLUMNS)
KEY_COLS = ", ".join(KEY_COLUMNS)
_INSERT = f"INSERT INTO jobs ({COLS}) VALUES ({', '.join(f':{c}' for c in JOB_COLUMNS)})"
_LIST = sql_text(
    f"""
SELECT {COLS} FROM jobs
WHERE tenant = :tenant AND (:status IS NULL OR status = :status) AND (:model IS NULL OR model = :model)
    {{{{after}}}}
ORDER BY created_at DESC, id DESC LIMIT :limit
"""
)

QUERIES: dict[Query, str | tuple[str, ...]] = {
    Query.PING: "SELECT 1 AS ok",
    Query.INSERT_JOBS: _INSERT,
    Query.INSERT_JOB_KEYED: f"{_INSERT} ON CONFLICT (tenant, idempotency_key)"
    " WHERE idempotency_key IS NOT NULL DO NOTHING",
    Query.INSERT_JOBS_KEYED: f"{_INSERT} ON CONFLICT (tenant, idempotency_key)"
    " WHERE idempotency_key IS NOT NULL DO NOTHING RETURNING id",
    Query.GET_JOB: f"SELECT {COLS} FROM jobs WHERE id = :id AND (:tenant IS NULL OR tenant = :tenant)",
    Query.GET_JOB_BY_KEY: f"SELECT {COLS} FROM jobs WHERE tenant = :tenant AND idempotency_key = :idempotency_key",
    Query.LIST_JOBS: _LIST.replace("{after}", ""),
    Query.LIST_JOBS_AFTER: _LIST.replace("{after}", "AND (created_at, id) < (:after_created, :after_id)"),
    Query.PENDING_COUNTS: sql_text(
        "SELECT model, version, count(*) AS count FROM jobs WHERE status = {pending} GROUP BY model, version"
    ),
    Query.CLAIM: (
        sql_text(
            "UPDATE jobs SET status = {cancelled}, finished_at = :now, lease_owner = NULL, "
            "lease_expires_at = NULL "
            "WHERE status = {running} AND lease_expires_at < :now AND cancel_requested"
        ),
        sql_text(
            "UPDATE jobs SET status = {failed}, finished_at = :now, lease_owner = NULL, "
            "lease_expires_at = NULL, error_code = 'inference_error', error_message = :lost "
            "WHERE status = {running} AND lease_expires_at < :now AND attempts >= max_attempts"
        ),
        # The pick is kept in a temporary table (this connection's own), because three writes
        # follow from it: the tenants' next turns, the clock and the jobs.
        "CREATE TEMP TABLE IF NOT EXISTS claim_pick (id TEXT PRIMARY KEY, tenant TEXT, turn REAL,"
        " start REAL, weight REAL)",
        "DELETE FROM temp.claim_pick",
        sql_text(
            """
            WITH RECURSIVE tenants(tenant) AS (
                SELECT (SELECT tenant FROM jobs WHERE status = {pending} ORDER BY tenant LIMIT 1)
                UNION ALL
                SELECT (SELECT j.tenant FROM jobs j WHERE j.status = {pending} AND j.tenant > t.tenant
                        ORDER BY j.tenant LIMIT 1)
                FROM tenants t WHERE t.tenant IS NOT NULL
            ),
            shares(tenant, start, weight) AS (
                SELECT t.tenant, max(coalesce(n.next_turn, c.turn), c.turn),
                    coalesce((SELECT w.value FROM json_each(:weights) w WHERE w.key = t.tenant), :default_weight)
                FROM tenants t JOIN claim_clock c ON c.id = 1
                    LEFT JOIN tenant_turns n ON n.tenant = t.tenant
                WHERE t.tenant IS NOT NULL
            )
            INSERT INTO temp.claim_pick (id, tenant, turn, start, weight)
            SELECT id, tenant, turn, start, weight FROM (
                SELECT c.id, c.created_at, s.tenant, s.start, s.weight,
                    s.start + (row_number() OVER (PARTITION BY s.tenant ORDER BY c.priority DESC, c.created_at, c.id)
                        - 1) * 1.0 / s.weight AS turn
                FROM shares s JOIN jobs c ON c.id IN (
                    SELECT id FROM jobs
                    WHERE status = {pending} AND tenant = s.tenant AND run_after <= :now AND NOT cancel_requested
                    ORDER BY priority DESC, created_at, id LIMIT :limit
                )
                UNION ALL
                SELECT id, created_at, NULL, NULL, NULL, NULL FROM (
                    SELECT id, created_at FROM jobs
                    WHERE status = {running} AND lease_expires_at < :now
                    ORDER BY created_at, id LIMIT :limit
                )
            )
            ORDER BY turn, created_at, id LIMIT :limit
            """
        ),
        # A re-run has no tenant and no turn here (NULL sorts first): it does not count as a turn.
        """
        INSERT INTO tenant_turns (tenant, next_turn)
        SELECT tenant, start + count(*) * 1.0 / weight FROM temp.claim_pick WHERE tenant IS NOT NULL
        GROUP BY tenant, start, weight
        ON CONFLICT (tenant) DO UPDATE SET next_turn = excluded.next_turn
        """,
        "UPDATE claim_clock SET turn = max(turn, (SELECT max(turn) FROM temp.claim_pick))"
        " WHERE id = 1 AND EXISTS (SELECT 1 FROM temp.claim_pick WHERE turn IS NOT NULL)",
        sql_text(
            f"""
            UPDATE jobs SET status = {{running}}, attempts = attempts + 1, lease_owner = :worker,
                lease_expires_at = :expires, started_at = :now
            WHERE id IN (SELECT id FROM temp.claim_pick)
            RETURNING {COLS}
            """
        ),
    ),
    # Id lists travel as one JSON parameter expanded with json_each, so the statement text is
    # fixed (and cached) whatever the number of ids.
    Query.RENEW_LEASES: sql_text(
        "UPDATE jobs SET lease_expires_at = :expires "
        "WHERE id IN (SELECT value FROM json_each(:ids)) AND status = {running} AND lease_owner = :worker"
    ),
    Query.FINISH_JOBS: sql_text(
        """
        UPDATE jobs SET
            status = CASE WHEN cancel_requested THEN {cancelled} ELSE :status END,
            finished_at = :now,
            outputs = CASE WHEN cancel_requested THEN NULL ELSE :outputs END,
            error_code = CASE WHEN cancel_requested THEN NULL ELSE :error_code END,
            error_message = CASE WHEN cancel_requested THEN NULL ELSE :error_message END,
            lease_owner = NULL, lease_expires_at = NULL
        WHERE id = :id AND status = {running} AND lease_owner = :worker AND attempts = :attempt
        RETURNING id, status, finished_at
        """
    ),
    Query.RETRY_LATER: sql_text(
        f"""
        UPDATE jobs SET
            status = CASE WHEN cancel_requested THEN {{cancelled}} ELSE {{pending}} END,
            finished_at = CASE WHEN cancel_requested THEN :now ELSE NULL END,
            run_after = :run_after, error_code = :error_code, error_message = :error_message,
            lease_owner = NULL, lease_expires_at = NULL
        WHERE id = :id AND status = {{running}} AND lease_owner = :worker AND attempts = :attempt
        RETURNING {COLS}
        """
    ),
    Query.RELEASE: sql_text(
        """
        UPDATE jobs SET
            status = CASE WHEN cancel_requested THEN {cancelled} ELSE {pending} END,
            attempts = CASE WHEN cancel_requested THEN attempts ELSE attempts - 1 END,
            finished_at = CASE WHEN cancel_requested THEN :now ELSE NULL END,
            lease_owner = NULL, lease_expires_at = NULL
        WHERE id IN (SELECT value FROM json_each(:ids)) AND status = {running} AND lease_owner = :worker
        """
    ),
    Query.CANCEL: sql_text(
        f"""
        UPDATE jobs SET
            status = CASE WHEN status = {{pending}} THEN {{cancelled}} ELSE status END,
            finished_at = CASE WHEN status = {{pending}} THEN :now ELSE finished_at END,
            cancel_requested = 1
        WHERE id = :id AND (:tenant IS NULL OR tenant = :tenant) AND status IN ({{pending}}, {{running}})
        RETURNING {COLS}
        """
    ),
    Query.DELETE_FINISHED: sql_text(
        "DELETE FROM jobs WHERE status IN ({terminal}) AND finished_at < :cutoff"
    ),
    Query.PRUNE_TURNS: "DELETE FROM tenant_turns WHERE next_turn <= (SELECT turn FROM claim_clock WHERE id = 1)",
    Query.REPOSITORY_GENERATION: "SELECT generation FROM model_repository WHERE id = 1",
    Query.BUMP_REPOSITORY_GENERATION: (
        "UPDATE model_repository SET generation = generation + 1 WHERE id = 1 RETURNING generation"
    ),
    Query.INSERT_KEY: f"INSERT INTO api_keys ({KEY_COLS}) VALUES ({', '.join(f':{c}' for c in KEY_COLUMNS)})",
    Query.LIST_KEYS: f"SELECT {KEY_COLS} FROM api_keys WHERE revoked_at IS NULL ORDER BY created_at, id",
    Query.REVOKE_KEY: (
        f"UPDATE api_keys SET revoked_at = :now WHERE id = :id AND revoked_at IS NULL RETURNING {KEY_COLS}"
    ),
    Query.TOUCH_KEYS: "UPDATE api_keys SET last_used_at = :now WHERE id IN (SELECT value FROM json_each(:ids))",
}
