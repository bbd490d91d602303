"""Fixtures for the job store tests.

``backend`` is parametrized over SQLite, PostgreSQL and memory, so every test using it (or ``store``)
runs against each (tests of the databases themselves narrow it to SQLite and PostgreSQL). Memory
stores of one test share one connector, as processes share a database. Each test gets its own event loop (``runner``); ``async def`` tests run on it, and the
stores are opened and closed on it too, since both stores bind loop-owned resources at ``open()``.

PostgreSQL comes from ``INFERD_TEST_POSTGRES_URL`` (default: the local test database). Every test
gets a fresh schema, dropped afterwards. When the server is unreachable the PostgreSQL cases are
skipped, unless ``INFERD_REQUIRE_SERVICES=1`` (CI), where that is a failure.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import os
import secrets
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from inferd.jobs.memory import MemoryConnector
from inferd.jobs.models import Job
from inferd.jobs.postgres import postgres_store
from inferd.jobs.sqlite import sqlite_store
from inferd.jobs.store import JobStore

POSTGRES_URL_ENV = "INFERD_TEST_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"

# Fixed clock for job timestamps: tests pass ``now`` explicitly, so nothing depends on wall time.
BASE = datetime(2024, 1, 1, tzinfo=UTC)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run ``async def`` tests on the test's own loop (a minimal stand-in for pytest-asyncio)."""
    func = pyfuncitem.obj
    if not inspect.iscoroutinefunction(func):
        return None
    runner: asyncio.Runner = pyfuncitem.funcargs["runner"]
    kwargs = {name: pyfuncitem.funcargs[name] for name in inspect.signature(func).parameters}
    runner.run(func(**kwargs))
    return True


@pytest.fixture(autouse=True)
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as loop_runner:
        yield loop_runner


@pytest.fixture(scope="session")
def postgres_url() -> str:
    url = os.environ.get(POSTGRES_URL_ENV, DEFAULT_POSTGRES_URL)
    try:
        psycopg.connect(url, connect_timeout=3).close()
    except psycopg.Error as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        reason = f"PostgreSQL is not reachable at {url} ({first_line}); set {POSTGRES_URL_ENV} to use another"
        if os.environ.get("INFERD_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{reason}; INFERD_REQUIRE_SERVICES=1 requires it", pytrace=False)
        pytest.skip(reason)
    return url


@dataclass
class Backend:
    """Where one test's stores live; ``make()`` builds an unopened store on it."""

    name: str
    sqlite_path: str = ""
    postgres_url: str = ""
    schema: str = ""
    memory: MemoryConnector | None = None

    def make(self) -> JobStore:
        if self.name == "sqlite":
            return sqlite_store(self.sqlite_path)
        if self.memory is not None:
            return JobStore(self.memory)
        return postgres_store(self.postgres_url, schema=self.schema, max_size=4)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres), "memory"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        yield Backend("sqlite", sqlite_path=str(tmp_path / "jobs.db"))
        return
    if request.param == "memory":
        yield Backend("memory", memory=MemoryConnector())
        return
    url: str = request.getfixturevalue("postgres_url")
    schema = f"inferd_test_{secrets.token_hex(6)}"
    yield Backend("postgres", postgres_url=url, schema=schema)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


StoreFactory = Callable[[], Awaitable[JobStore]]


@pytest.fixture
def store_factory(backend: Backend, runner: asyncio.Runner) -> Iterator[StoreFactory]:
    """Opens further stores on the test's database (another process, as far as the store can
    tell); all are closed after the test, on the test's loop."""
    opened: list[JobStore] = []

    async def open_store() -> JobStore:
        store = backend.make()
        await store.open()
        opened.append(store)
        return store

    yield open_store

    async def close_all() -> None:
        for store in reversed(opened):
            await store.close()

    runner.run(close_all())


@pytest.fixture
def store(store_factory: StoreFactory, runner: asyncio.Runner) -> JobStore:
    return runner.run(store_factory())


JobFactory = Callable[..., Job]


@pytest.fixture
def make_job() -> JobFactory:
    """Jobs with unique ids, created 1 ms apart from BASE (so creation order is unambiguous)."""
    counter = itertools.count()

    def make(**overrides: Any) -> Job:
        created_at = overrides.pop("created_at", BASE + timedelta(milliseconds=next(counter)))
        fields: dict[str, Any] = {
            "id": uuid.uuid4().hex,
            "tenant": "tenant-a",
            "model": "iris",
            "version": "1",
            "inputs": [[5.1, 3.5, 1.4, 0.2]],
            "batch": True,
            "created_at": created_at,
            "run_after": created_at,
        }
        fields.update(overrides)
        return Job(**fields)

    return make
