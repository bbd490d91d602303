"""Fixtures for the JobService / JobWorker tests; the helpers live in svc_helpers.py.

``store_url`` names the in-memory store: the service and the worker are tested here, and the stores
they run on pass one contract suite (tests/unit/jobs). Tests of one database's own behaviour use
``postgres_base_url``, skipped when the server is unreachable, unless ``INFERD_REQUIRE_SERVICES=1``,
where that is a failure.
"""

from __future__ import annotations

import psycopg
import pytest
from svc_helpers import MEMORY, POSTGRES_URL, require_services


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


@pytest.fixture
def store_url() -> str:
    return MEMORY
