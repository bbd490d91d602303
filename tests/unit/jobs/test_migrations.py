"""Schema migrations: fresh installs, upgrades in place, concurrency and failure, on both stores."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import psycopg
import pytest
from psycopg import AsyncConnection

from inferd.core.errors import ConfigError
from inferd.jobs.migrations import (
    JOB_COLUMNS,
    POSTGRES_MIGRATIONS,
    SQLITE_MIGRATIONS,
    Migration,
    apply_postgres_migrations,
    apply_sqlite_migrations,
    check_sequence,
)
from inferd.jobs.models import JobStatus
from inferd.jobs.store import JobStore

StoreFactory = Callable[[], Awaitable[JobStore]]

# Migrations are a database's concern: SQLite and PostgreSQL, not the in-memory connector.
DATABASES = pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)

INDEXES = {
    "jobs_pending_fair_idx",
    "jobs_running_lease_idx",
    "jobs_tenant_created_idx",
    "jobs_terminal_finished_idx",
    "jobs_tenant_idempotency_key_idx",
}


class Backend(Protocol):  # conftest.Backend
    name: str
    sqlite_path: str
    postgres_url: str
    schema: str

    def make(self) -> JobStore: ...


# -- raw access to the test database, bypassing the stores ----------------------------------------------


async def apply_raw(
    backend: Backend, migrations: Sequence[Migration] | None = None, target: int | None = None
) -> None:
    if backend.name == "sqlite":
        conn = sqlite3.connect(backend.sqlite_path, isolation_level=None)
        try:
            apply_sqlite_migrations(conn, migrations=migrations or SQLITE_MIGRATIONS, target=target)
        finally:
            conn.close()
        return
    async with await AsyncConnection.connect(backend.postgres_url, autocommit=True) as aconn:
        await apply_postgres_migrations(
            aconn, schema=backend.schema, migrations=migrations or POSTGRES_MIGRATIONS, target=target
        )


async def query(backend: Backend, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Run one statement; ``{schema}`` in it names the test schema (PostgreSQL) or nothing (SQLite),
    ``?`` marks parameters."""
    if backend.name == "sqlite":
        conn = sqlite3.connect(backend.sqlite_path, isolation_level=None)
        try:
            return conn.execute(statement.replace("{schema}", ""), params).fetchall()
        finally:
            conn.close()
    text = statement.replace("?", "%s").replace("{schema}", f"{backend.schema}.")
    async with await AsyncConnection.connect(backend.postgres_url, autocommit=True) as aconn:
        cur = await aconn.execute(text, params)
        return await cur.fetchall() if cur.description else []


async def applied_versions(backend: Backend) -> list[int]:
    rows = await query(backend, "SELECT version FROM {schema}schema_migrations ORDER BY version")
    return [row[0] for row in rows]


async def index_names(backend: Backend) -> set[str]:
    if backend.name == "sqlite":
        rows = await query(
            backend, "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'jobs'"
        )
    else:
        rows = await query(
            backend,
            "SELECT indexname FROM pg_indexes WHERE schemaname = ? AND tablename = 'jobs'",
            [backend.schema],
        )
    return {row[0] for row in rows}


async def column_names(backend: Backend) -> tuple[str, ...]:
    if backend.name == "sqlite":
        return tuple(row[1] for row in await query(backend, "PRAGMA table_info(jobs)"))
    rows = await query(
        backend,
        "SELECT column_name FROM information_schema.columns WHERE table_schema = ? AND table_name = 'jobs' "
        "ORDER BY ordinal_position",
        [backend.schema],
    )
    return tuple(row[0] for row in rows)


# -- the shipped steps ---------------------------------------------------------------------------------------


def test_shipped_migrations_are_sequential_and_paired() -> None:
    check_sequence(SQLITE_MIGRATIONS)
    check_sequence(POSTGRES_MIGRATIONS)
    assert len(SQLITE_MIGRATIONS) >= 2
    # Both dialects describe the same schema history, version by version.
    assert [(m.version, m.name) for m in SQLITE_MIGRATIONS] == [
        (m.version, m.name) for m in POSTGRES_MIGRATIONS
    ]


@pytest.mark.parametrize("versions", [[2, 1], [1, 3], [0, 1], [1, 1]])
def test_check_sequence_rejects_gaps_and_disorder(versions: list[int]) -> None:
    with pytest.raises(ValueError, match="1..N"):
        check_sequence([Migration(v, f"m{v}", ()) for v in versions])


# -- against a database ----------------------------------------------------------------------------------------


@DATABASES
async def test_fresh_store_is_at_the_latest_version(backend: Backend, store_factory: StoreFactory) -> None:
    await store_factory()
    assert await applied_versions(backend) == [m.version for m in SQLITE_MIGRATIONS]
    assert await index_names(backend) >= INDEXES
    assert "jobs_pending_created_idx" not in await index_names(backend)  # dropped by migration 9
    # Rows are mapped by name, but the insert statements list JOB_COLUMNS: the table has exactly these.
    assert await column_names(backend) == JOB_COLUMNS


@DATABASES
async def test_upgrade_in_place_keeps_existing_jobs(backend: Backend, store_factory: StoreFactory) -> None:
    await apply_raw(backend, target=1)
    assert await applied_versions(backend) == [1]
    assert not INDEXES & await index_names(backend)

    # A job as a v1 install wrote it, in v1's own column layout.
    created = "2023-05-06T07:08:09.101112+00:00"
    values: dict[str, Any] = {
        "id": "job-from-v1",
        "tenant": "acme",
        "model": "iris",
        "version": "3",
        "inputs": '[{"x": [1, 2.5]}]',
        "batch": 1,
        "status": "pending",
        "attempts": 0,
        "max_attempts": 4,
        "timeout_s": 12.5,
        "created_at": created,
        "run_after": created,
        "cancel_requested": 0,
        "idempotency_key": "idem-1",
        "request_hash": "hash-1",
    }
    if backend.name == "postgres":
        values["batch"] = True
        values["cancel_requested"] = False
    names = ", ".join(values)
    marks = ", ".join("?" for _ in values)
    await query(backend, f"INSERT INTO {{schema}}jobs ({names}) VALUES ({marks})", list(values.values()))

    store = await store_factory()
    assert await applied_versions(backend) == [m.version for m in SQLITE_MIGRATIONS]
    assert await index_names(backend) >= INDEXES

    job = await store.get("job-from-v1", tenant="acme")
    assert job is not None
    assert (job.model, job.version, job.inputs, job.batch) == ("iris", "3", [{"x": [1, 2.5]}], True)
    assert (job.status, job.attempts, job.max_attempts, job.timeout_s) == (JobStatus.PENDING, 0, 4, 12.5)
    assert job.created_at == datetime(2023, 5, 6, 7, 8, 9, 101112, tzinfo=UTC)
    assert (job.idempotency_key, job.request_hash, job.outputs, job.error) == ("idem-1", "hash-1", None, None)
    # ... and it is a working job in the upgraded store.
    claimed = await store.claim(worker_id="w", limit=5, lease_s=10, now=datetime(2024, 1, 1, tzinfo=UTC))
    assert [j.id for j in claimed] == ["job-from-v1"]


@DATABASES
async def test_reopening_applies_nothing_twice(backend: Backend, store_factory: StoreFactory) -> None:
    first = await store_factory()
    await first.close()
    before = await query(
        backend, "SELECT version, applied_at FROM {schema}schema_migrations ORDER BY version"
    )
    await store_factory()
    after = await query(backend, "SELECT version, applied_at FROM {schema}schema_migrations ORDER BY version")
    assert after == before
    assert len(after) == len(SQLITE_MIGRATIONS)


@DATABASES
async def test_concurrent_first_opens_do_not_race(backend: Backend, store_factory: StoreFactory) -> None:
    stores = await asyncio.gather(*(store_factory() for _ in range(4)))
    assert await applied_versions(backend) == [m.version for m in SQLITE_MIGRATIONS]
    assert all([await s.ping() for s in stores])


@DATABASES
async def test_failed_migration_leaves_the_previous_version(backend: Backend) -> None:
    shipped = SQLITE_MIGRATIONS if backend.name == "sqlite" else POSTGRES_MIGRATIONS
    await apply_raw(backend)
    broken = Migration(
        len(shipped) + 1,
        "half-done",
        ("CREATE TABLE half_done (x integer)", "ALTER TABLE no_such_table ADD COLUMN y integer"),
    )
    with pytest.raises((sqlite3.Error, psycopg.Error)):
        await apply_raw(backend, [*shipped, broken])
    assert await applied_versions(backend) == [m.version for m in shipped]
    with pytest.raises((sqlite3.Error, psycopg.Error)):
        await query(backend, "SELECT * FROM {schema}half_done")


@DATABASES
async def test_database_from_a_newer_version_is_refused(
    backend: Backend, store_factory: StoreFactory
) -> None:
    await apply_raw(backend)
    await query(
        backend,
        "INSERT INTO {schema}schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
        [99, "from the future", datetime.now(UTC).isoformat()],
    )
    with pytest.raises(ConfigError, match="schema version 99"):
        await store_factory()
