"""Fixtures for the JobService / JobWorker tests; the helpers live in svc_helpers.py.

``store_url`` is parametrized over SQLite (a file in tmp_path) and PostgreSQL (a fresh schema per
test, dropped afterwards). The PostgreSQL cases are skipped when the server is unreachable, unless
``INFERD_REQUIRE_SERVICES=1``, where that is a failure.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from svc_helpers import POSTGRES_URL, postgres_schema, require_services


@pytest.fixture(scope="session")
def postgres_base_url() -> str:
    try:
        psycopg.connect(POSTGRES_URL, connect_timeout=3).close()
    except psycopg.Error as exc:
        reason = f"PostgreSQL is not reachable at {POSTGRES_URL}: {str(exc).strip()[:200]}"
        if require_services():
            pytest.fail(f"{reason}; INFERD_REQUIRE_SERVICES=1 requires it", pytrace=False)
        pytest.skip(reason)
    return POSTGRES_URL


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'jobs.db'}"
        return
    base: str = request.getfixturevalue("postgres_base_url")
    with postgres_schema(base) as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'jobs.db'}"
