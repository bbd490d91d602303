"""Versioned schema migrations for the job stores.

Each dialect has an ordered tuple of :class:`Migration` steps. ``schema_migrations`` records which
versions a database has; opening a store applies the missing ones, all in one transaction, so a
failed upgrade leaves the database at its previous version. Steps are append-only: once released, a
migration is never edited, a new version is added instead.

Concurrent starters are serialized: SQLite by ``BEGIN IMMEDIATE`` (one writer per file), PostgreSQL
by a transaction-scoped advisory lock keyed on the schema, so several processes booting against an
empty database at once neither fail on duplicate DDL nor apply a step twice.
"""

from __future__ import annotations

import enum
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from psycopg import AsyncConnection, sql

from inferd.core.errors import ConfigError
from inferd.jobs.models import JobStatus


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


class Kind(enum.Enum):
    """How a column's values travel: connectors encode parameters and decode rows by these."""

    TEXT = "text"
    INTEGER = "integer"
    REAL = "real"
    BOOLEAN = "boolean"
    TIME = "time"
    JSON = "json"


# The jobs columns of the current schema and their kinds: rows are mapped to jobs by these names.
JOB_COLUMN_KINDS: dict[str, Kind] = {
    "id": Kind.TEXT,
    "tenant": Kind.TEXT,
    "model": Kind.TEXT,
    "version": Kind.TEXT,
    "inputs": Kind.JSON,
    "batch": Kind.BOOLEAN,
    "status": Kind.TEXT,
    "attempts": Kind.INTEGER,
    "max_attempts": Kind.INTEGER,
    "timeout_s": Kind.REAL,
    "created_at": Kind.TIME,
    "run_after": Kind.TIME,
    "started_at": Kind.TIME,
    "finished_at": Kind.TIME,
    "lease_owner": Kind.TEXT,
    "lease_expires_at": Kind.TIME,
    "cancel_requested": Kind.BOOLEAN,
    "outputs": Kind.JSON,
    "error_code": Kind.TEXT,
    "error_message": Kind.TEXT,
    "idempotency_key": Kind.TEXT,
    "request_hash": Kind.TEXT,
    "parameters": Kind.JSON,
    "priority": Kind.INTEGER,
    "trace_context": Kind.TEXT,
}
JOB_COLUMNS: tuple[str, ...] = tuple(JOB_COLUMN_KINDS)

# The api_keys columns: keys made at run time (``inferd keys``, /v1/admin/keys). Only a SHA-256 digest
# of each key is stored; ``prefix`` is its first characters, for people to recognise it.
KEY_COLUMN_KINDS: dict[str, Kind] = {
    "id": Kind.TEXT,
    "digest": Kind.TEXT,
    "prefix": Kind.TEXT,
    "tenant": Kind.TEXT,
    "scopes": Kind.TEXT,  # comma-separated
    "created_at": Kind.TIME,
    "expires_at": Kind.TIME,
    "revoked_at": Kind.TIME,
    "last_used_at": Kind.TIME,
}
KEY_COLUMNS: tuple[str, ...] = tuple(KEY_COLUMN_KINDS)
# How connectors encode and decode a column, whichever table it is in (shared names agree on kinds).
COLUMN_KINDS: dict[str, Kind] = {**JOB_COLUMN_KINDS, **KEY_COLUMN_KINDS}

# Generated from the enum, so it reads exactly as when the step was released.
_STATUS_CHECK = f"CHECK (status IN ({', '.join(repr(s.value) for s in JobStatus)}))"

# Shared by both dialects (SQLite has partial indexes and DESC index columns too). Most are partial,
# so each query has exactly one index that fits it and the planner cannot wander off to a broader
# one (without fresh statistics, both planners prefer any index with "status = ?" and then sort).
# - claim scans pending jobs in creation order and stops after LIMIT rows: ordered by created_at, so
#   that is O(limit) rather than a sort of every runnable job, as (status, run_after, ...) would need;
#   only pending rows are in it, so it stays small however many finished jobs are kept.
# - expired leases are looked up among running jobs only.
# - list_jobs is keyset-paginated newest first per tenant.
# - the retention sweep deletes terminal jobs by finished_at.
# - the unique idempotency index is what makes insert race-free (ON CONFLICT ... DO NOTHING).
# Fair claims (migration 6) walk the tenants with pending jobs through this index (a skip scan: one
# probe per tenant, never a scan of the pending set) and take each tenant's next jobs from it in
# priority order.
_FAIR_CLAIM_INDEX = "CREATE INDEX jobs_pending_fair_idx ON jobs (tenant, priority DESC, created_at, id) WHERE status = 'pending'"
# Since fair claims the creation-order pending index serves no query; it only cost a write on every
# insert and claim.
_DROP_CREATION_ORDER_INDEX = Migration(
    9, "drop the creation-order pending index", ("DROP INDEX IF EXISTS jobs_pending_created_idx",)
)


# Fair claims across claims (stride scheduling): each tenant's next turn, and the turn of the latest
# job claimed, where a tenant that was idle starts again (so idleness banks no credit). tenant_turns
# holds a row per tenant claimed from until the clock catches up with its next turn: the retention
# janitor then deletes it (an absent row means the same). A claim reads and writes only the rows of
# the tenants it takes jobs from (and the clock). Turns are doubles: SQLite's REAL is one,
# PostgreSQL's real is single precision, hence the parameter.
def _fair_turns(real: str) -> Migration:
    return Migration(
        10,
        "add tenant turns for fair claims",
        (
            f"CREATE TABLE tenant_turns (tenant TEXT PRIMARY KEY, next_turn {real} NOT NULL)",
            f"CREATE TABLE claim_clock (id INTEGER PRIMARY KEY CHECK (id = 1), turn {real} NOT NULL)",
            "INSERT INTO claim_clock (id, turn) VALUES (1, 0)",
        ),
    )


# Concurrent PostgreSQL claims read the turns exactly (migration 11). A claim is one statement, and a
# statement reads from the snapshot it started with: two claims at once both read the turns as they
# were before either, and both could take their jobs from the tenant whose turn it was. The claim gets
# its tenants' starting turns from this function instead. While two or more tenants wait, its first
# statement locks the clock row (held until the claim commits, so claims take turns), and, the function
# being volatile, its second one reads with a fresh snapshot, taken once the claim before it committed:
# its turns and rows too, which a lock on the turn rows alone would not show a statement that began
# before they were inserted. With one tenant waiting there is no turn to take from anyone: claims
# overlap, and each adds its jobs to the tenant's turn. ROWS 10: at the default estimate (1,000 rows)
# the claim's generic plan took about twice as long. SQLite has one writer at a time already: the step
# is empty there.
_CLAIM_STARTS_NAME = "serialize fair claims: read the turns after the claim before has committed"
_CLAIM_STARTS = """
CREATE FUNCTION claim_starts(text[]) RETURNS TABLE (tenant text, start double precision)
LANGUAGE sql VOLATILE ROWS 10 AS $$
    SELECT c.turn FROM claim_clock c WHERE c.id = 1 AND cardinality($1) > 1 FOR UPDATE;
    SELECT t.name, greatest(n.next_turn, c.turn)
    FROM unnest($1) AS t(name) CROSS JOIN claim_clock c LEFT JOIN tenant_turns n ON n.tenant = t.name
    WHERE c.id = 1;
$$
"""

PRIORITY_MIN, PRIORITY_MAX = -(2**31), 2**31 - 1  # the column is a 32-bit integer in both dialects

_INDEXES: tuple[str, ...] = (
    "CREATE INDEX jobs_pending_created_idx ON jobs (created_at, id) WHERE status = 'pending'",
    "CREATE INDEX jobs_running_lease_idx ON jobs (lease_expires_at) WHERE status = 'running'",
    "CREATE INDEX jobs_tenant_created_idx ON jobs (tenant, created_at DESC, id DESC)",
    "CREATE INDEX jobs_terminal_finished_idx ON jobs (finished_at)"
    " WHERE status IN ('succeeded', 'failed', 'cancelled')",
    "CREATE UNIQUE INDEX jobs_tenant_idempotency_key_idx ON jobs (tenant, idempotency_key)"
    " WHERE idempotency_key IS NOT NULL",
)

# SQLite keeps timestamps as fixed-width ISO-8601 UTC strings ("2024-01-02T03:04:05.000006+00:00"):
# exact to the microsecond (unlike floats), readable in the sqlite3 shell, and they sort as text.
SQLITE_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "create jobs table",
        (
            f"""
            CREATE TABLE jobs (
                id TEXT PRIMARY KEY,
                tenant TEXT NOT NULL,
                model TEXT NOT NULL,
                version TEXT NOT NULL,
                inputs TEXT NOT NULL,
                batch INTEGER NOT NULL,
                status TEXT NOT NULL {_STATUS_CHECK},
                attempts INTEGER NOT NULL DEFAULT 0,
                max_attempts INTEGER NOT NULL,
                timeout_s REAL,
                created_at TEXT NOT NULL,
                run_after TEXT NOT NULL,
                started_at TEXT,
                finished_at TEXT,
                lease_owner TEXT,
                lease_expires_at TEXT,
                cancel_requested INTEGER NOT NULL DEFAULT 0,
                outputs TEXT,
                error_code TEXT,
                error_message TEXT,
                idempotency_key TEXT,
                request_hash TEXT
            )
            """,
        ),
    ),
    Migration(2, "add job indexes", _INDEXES),
    # PostgreSQL only; SQLite has no autovacuum settings, so the step is empty there to keep the
    # version numbers of both dialects aligned.
    Migration(3, "vacuum the jobs table often", ()),
    Migration(4, "add job parameters", ("ALTER TABLE jobs ADD COLUMN parameters TEXT",)),
    Migration(
        5,
        "add the model repository generation",
        (
            "CREATE TABLE model_repository (id INTEGER PRIMARY KEY CHECK (id = 1), generation INTEGER NOT NULL)",
            "INSERT INTO model_repository (id, generation) VALUES (1, 0)",
        ),
    ),
    Migration(
        6,
        "add job priority and the fair claim index",
        ("ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0", _FAIR_CLAIM_INDEX),
    ),
    Migration(
        7,
        "create the api keys table",
        (
            """
            CREATE TABLE api_keys (
                id TEXT PRIMARY KEY,
                digest TEXT NOT NULL UNIQUE,
                prefix TEXT NOT NULL,
                tenant TEXT NOT NULL,
                scopes TEXT NOT NULL,
                created_at TEXT NOT NULL,
                expires_at TEXT,
                revoked_at TEXT,
                last_used_at TEXT
            )
            """,
        ),
    ),
    Migration(8, "add job trace context", ("ALTER TABLE jobs ADD COLUMN trace_context TEXT",)),
    _DROP_CREATION_ORDER_INDEX,
    _fair_turns("REAL"),
    Migration(11, _CLAIM_STARTS_NAME, ()),
)

POSTGRES_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "create jobs table",
        (
            f"""
            CREATE TABLE jobs (
                id text PRIMARY KEY,
                tenant text NOT NULL,
                model text NOT NULL,
                version text NOT NULL,
                inputs jsonb NOT NULL,
                batch boolean NOT NULL,
                status text NOT NULL {_STATUS_CHECK},
                attempts integer NOT NULL DEFAULT 0,
                max_attempts integer NOT NULL,
                timeout_s double precision,
                created_at timestamptz NOT NULL,
                run_after timestamptz NOT NULL,
                started_at timestamptz,
                finished_at timestamptz,
                lease_owner text,
                lease_expires_at timestamptz,
                cancel_requested boolean NOT NULL DEFAULT false,
                outputs jsonb,
                error_code text,
                error_message text,
                idempotency_key text,
                request_hash text
            )
            """,
        ),
    ),
    Migration(2, "add job indexes", _INDEXES),
    # A queue table churns: every job is inserted, updated a few times and deleted. With the default
    # thresholds (20% of the table) dead entries pile up at the head of the pending index, which
    # every claim scans, and statistics lag behind bursts, so the planner may sort every pending job
    # instead of reading the index in order. 1% keeps both fresh.
    Migration(
        3,
        "vacuum the jobs table often",
        (
            "ALTER TABLE jobs SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_analyze_scale_factor = 0.01,"
            " autovacuum_vacuum_insert_scale_factor = 0.01)",
        ),
    ),
    Migration(4, "add job parameters", ("ALTER TABLE jobs ADD COLUMN parameters jsonb",)),
    # One row: bumped by every reload request, so each process sharing the store reloads its models.
    Migration(
        5,
        "add the model repository generation",
        (
            "CREATE TABLE model_repository (id integer PRIMARY KEY CHECK (id = 1), generation bigint NOT NULL)",
            "INSERT INTO model_repository (id, generation) VALUES (1, 0)",
        ),
    ),
    Migration(
        6,
        "add job priority and the fair claim index",
        ("ALTER TABLE jobs ADD COLUMN priority integer NOT NULL DEFAULT 0", _FAIR_CLAIM_INDEX),
    ),
    Migration(
        7,
        "create the api keys table",
        (
            """
            CREATE TABLE api_keys (
                id text PRIMARY KEY,
                digest text NOT NULL UNIQUE,
                prefix text NOT NULL,
                tenant text NOT NULL,
                scopes text NOT NULL,
                created_at timestamptz NOT NULL,
                expires_at timestamptz,
                revoked_at timestamptz,
                last_used_at timestamptz
            )
            """,
        ),
    ),
    Migration(8, "add job trace context", ("ALTER TABLE jobs ADD COLUMN trace_context text",)),
    _DROP_CREATION_ORDER_INDEX,
    _fair_turns("double precision"),
    Migration(11, _CLAIM_STARTS_NAME, (_CLAIM_STARTS,)),
)

# First key of the two-int advisory lock ("infd"); the second is hashtext(schema), so stores in
# different schemas of one database migrate independently.
_PG_LOCK_CLASS = 0x696E6664

_SQLITE_BOOKKEEPING = """
    CREATE TABLE IF NOT EXISTS schema_migrations (
        version INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        applied_at TEXT NOT NULL
    )
"""

_PG_BOOKKEEPING = """
    CREATE TABLE IF NOT EXISTS schema_migrations (
        version integer PRIMARY KEY,
        name text NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now()
    )
"""


def check_sequence(migrations: Sequence[Migration]) -> None:
    """Versions must be 1, 2, 3, ... so "applied up to N" is meaningful."""
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise ValueError(f"migration versions must be 1..N in order, got {versions}")


def _pending(
    migrations: Sequence[Migration], applied: set[int], target: int | None, where: str
) -> list[Migration]:
    known = migrations[-1].version if migrations else 0
    newest = max(applied, default=0)
    if newest > known:
        raise ConfigError(
            f"the job store at {where} has schema version {newest}, but this inferd only knows versions up "
            f"to {known}: it was upgraded by a newer inferd; run that version (or a newer one) instead"
        )
    return [m for m in migrations if m.version not in applied and (target is None or m.version <= target)]


def apply_sqlite_migrations(
    conn: sqlite3.Connection,
    *,
    migrations: Sequence[Migration] = SQLITE_MIGRATIONS,
    target: int | None = None,
    where: str = "this SQLite database",
) -> list[int]:
    """Apply the missing migrations (up to ``target``, default all) in one transaction; returns the
    versions applied. ``conn`` must be in autocommit mode (``isolation_level=None``)."""
    check_sequence(migrations)
    # IMMEDIATE takes the write lock up front (waiting up to busy_timeout), so two processes opening
    # the same new file serialize here instead of failing halfway through the DDL.
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(_SQLITE_BOOKKEEPING)
        applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        todo = _pending(migrations, applied, target, where)
        for migration in todo:
            for statement in migration.statements:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.name, datetime.now(UTC).isoformat(timespec="microseconds")),
            )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return [m.version for m in todo]


async def apply_postgres_migrations(
    conn: AsyncConnection[Any],
    *,
    schema: str,
    migrations: Sequence[Migration] = POSTGRES_MIGRATIONS,
    target: int | None = None,
) -> list[int]:
    """Create ``schema`` if missing and apply the missing migrations in it (up to ``target``, default
    all), in one transaction under an advisory lock; returns the versions applied."""
    check_sequence(migrations)
    async with conn.transaction():
        await conn.execute(f"SELECT pg_advisory_xact_lock({_PG_LOCK_CLASS}, hashtext(%s))", (schema,))
        cur = await conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
        # Checked first because CREATE SCHEMA IF NOT EXISTS still demands CREATE on the database,
        # which a least-privilege role using a pre-created schema does not have.
        if await cur.fetchone() is None:
            await conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        # Whatever search_path the connection came with, the DDL below must land in this schema.
        await conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
        await conn.execute(_PG_BOOKKEEPING)
        cur = await conn.execute("SELECT version FROM schema_migrations")
        applied = {row[0] for row in await cur.fetchall()}
        todo = _pending(migrations, applied, target, f"PostgreSQL schema {schema!r}")
        for migration in todo:
            for statement in migration.statements:
                await conn.execute(statement)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )
    return [m.version for m in todo]
