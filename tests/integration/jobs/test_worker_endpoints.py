"""A worker's metrics port answers /metrics, /livez and /readyz on their own paths: probes for
orchestrators, and readiness turns 503 while the worker drains after SIGTERM."""

from __future__ import annotations

from pathlib import Path

import httpx
from jobs_testkit import SIGTERM, Processes, poll_until, with_store

from inferd.jobs.models import Job, JobStatus


def test_worker_port_serves_metrics_and_probes_on_their_own_paths(tmp_path: Path, procs: Processes) -> None:
    store = f"sqlite:///{tmp_path / 'jobs.db'}"
    job = Job(
        id="drain-job", tenant="acme", model="slowjob", version="1", inputs=[{"sleep_s": 4}], batch=False
    )
    with_store(store, lambda s: s.insert(job))
    worker = procs.worker(store, concurrency=1)
    worker.wait_http("/readyz")

    live = httpx.get(worker.url + "/livez", timeout=5)
    assert (live.status_code, live.json()) == (200, {"status": "ok"})
    ready = httpx.get(worker.url + "/readyz", timeout=5)
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
    metrics = httpx.get(worker.url + "/metrics", timeout=5)
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert 'executor_inflight{device="cpu"}' in metrics.text
    openmetrics = httpx.get(
        worker.url + "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}, timeout=5
    )
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.endswith("# EOF\n")
    assert (
        httpx.get(worker.url + "/metrics", headers={"Accept-Encoding": "gzip"}).headers["content-encoding"]
        == "gzip"
    )
    other = httpx.get(worker.url + "/", timeout=5)
    assert other.status_code == 404 and "executor_inflight" not in other.text
    assert httpx.post(worker.url + "/metrics", timeout=5).status_code == 405
    assert httpx.head(worker.url + "/livez", timeout=5).status_code == 200

    def running() -> bool:
        stored = with_store(store, lambda s: s.get(job.id))
        return stored is not None and stored.status is JobStatus.RUNNING

    poll_until("the job runs on the worker", running, timeout_s=20)
    worker.signal(SIGTERM)
    # Draining: still alive (the running job may finish), no longer ready for new work.
    draining = poll_until(
        "/readyz answers 503 while draining",
        lambda: (r := httpx.get(worker.url + "/readyz", timeout=5)).status_code == 503 and r,
        timeout_s=10,
    )
    assert draining.json()["status"] == "not_ready" and "draining" in draining.json()["reasons"][0]
    assert httpx.get(worker.url + "/livez", timeout=5).status_code == 200
    assert worker.wait_exit(30) == 0, worker.output()
