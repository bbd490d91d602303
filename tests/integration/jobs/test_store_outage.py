"""The job store going away and coming back, with a real ``inferd serve`` and a private PostgreSQL.

While the store is unreachable, job routes answer 503 ``store_unavailable`` with Retry-After (never a
500), sync predict keeps working and /readyz says not ready; once the database answers again the API,
readiness and the in-process worker carry on by themselves. (How fast is measured by
bench/fault_bench.py, not asserted here.)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from jobs_testkit import (
    ACME,
    PREDICT_ONLY,
    TERMINAL,
    Processes,
    assert_error,
    bearer,
    poll_until,
    require_services,
)
from private_pg import PrivatePostgres, unavailable_reason

pytestmark = pytest.mark.slow


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    reason = unavailable_reason()
    if reason is not None:
        if require_services():
            pytest.fail(f"{reason}; INFERD_REQUIRE_SERVICES=1 requires it", pytrace=False)
        pytest.skip(reason)
    server = PrivatePostgres()
    try:
        server.start()
        yield server
    finally:
        server.close()


def _submit(url: str, item: Any) -> httpx.Response:
    return httpx.post(f"{url}/v1/models/echo/jobs", json={"input": item}, headers=bearer(ACME), timeout=10)


def _done(url: str, job_id: str) -> dict[str, Any] | None:
    response = httpx.get(f"{url}/v1/jobs/{job_id}", params={"wait": 1}, headers=bearer(ACME), timeout=10)
    if response.status_code != 200:
        return None
    job: dict[str, Any] = response.json()
    return job if job["status"] in TERMINAL else None


def _unavailable(response: httpx.Response) -> None:
    assert_error(response, 503, "store_unavailable")
    assert int(response.headers["retry-after"]) >= 1


def test_postgres_outage_answers_503_keeps_predict_and_recovers(
    procs: Processes, private_pg: PrivatePostgres
) -> None:
    api = procs.serve(private_pg.url)
    api.wait_http("/readyz")
    before = _submit(api.url, "before")
    assert before.status_code == 202, before.text
    job_id = before.json()["id"]
    assert (
        poll_until("the first job done", lambda: _done(api.url, job_id), timeout_s=30)["output"] == "before"
    )

    private_pg.stop()
    for i in range(3):
        _unavailable(_submit(api.url, f"during-{i}"))
        _unavailable(httpx.get(f"{api.url}/v1/jobs/{job_id}", headers=bearer(ACME), timeout=10))
        _unavailable(httpx.get(f"{api.url}/v1/jobs", headers=bearer(ACME), timeout=10))
        _unavailable(httpx.post(f"{api.url}/v1/jobs/{job_id}/cancel", headers=bearer(ACME), timeout=10))
        predict = httpx.post(
            f"{api.url}/v1/models/echo/predict", json={"input": i}, headers=bearer(PREDICT_ONLY), timeout=10
        )
        assert predict.status_code == 200, predict.text
    poll_until(
        "/readyz not ready",
        lambda: httpx.get(f"{api.url}/readyz", timeout=10).status_code == 503,
        timeout_s=10,
    )

    private_pg.start()
    after = poll_until("a submission accepted again", lambda: _accepted(api.url), timeout_s=30)
    api.wait_http("/readyz")
    done = poll_until("the job after the outage done", lambda: _done(api.url, after["id"]), timeout_s=30)
    assert done["status"] == "succeeded" and done["output"] == "after"
    assert "Traceback" not in api.output()


def _accepted(url: str) -> dict[str, Any] | None:
    response = _submit(url, "after")
    if response.status_code == 503:
        return None
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job
