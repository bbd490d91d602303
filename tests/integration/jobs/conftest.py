"""Fixtures for the job API tests; the helpers live in jobs_testkit.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from jobs_testkit import PgSchema, Processes, pg_schema


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    """Starts inferd processes with cwd in tmp_path; every one is terminated (or killed) at teardown."""
    processes = Processes(tmp_path / "work")
    try:
        yield processes
    finally:
        processes.stop_all()


@pytest.fixture
def pg() -> Iterator[PgSchema]:
    """A fresh PostgreSQL schema, dropped afterwards (skip, or fail with INFERD_REQUIRE_SERVICES=1)."""
    with pg_schema() as schema:
        yield schema
