"""Jobs across real processes: ``inferd serve`` / ``inferd worker`` / ``inferd migrate`` / ``inferd jobs``.

Every process binds 127.0.0.1 on a free port, runs with cwd in tmp_path and the access log off, and
is terminated (or killed) at teardown by the ``procs`` fixture.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from jobs_testkit import (
    ACME,
    SIGKILL,
    SIGTERM,
    TERMINAL,
    PgSchema,
    Processes,
    bearer,
    metric_samples,
    metric_value,
    poll_until,
    run_inferd,
    with_store,
    worker_pid_of,
)
from psycopg import sql

from inferd.jobs.models import Job, JobStatus

pytestmark = pytest.mark.slow


def _submit(base_url: str, model: str, body: dict[str, Any], key: str = ACME) -> dict[str, Any]:
    response = httpx.post(f"{base_url}/v1/models/{model}/jobs", json=body, headers=bearer(key), timeout=10)
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


def _get(base_url: str, job_id: str, *, wait: float = 0, key: str = ACME) -> dict[str, Any]:
    response = httpx.get(
        f"{base_url}/v1/jobs/{job_id}", params={"wait": wait}, headers=bearer(key), timeout=wait + 10
    )
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    return job


def _wait_done(base_url: str, job_id: str, timeout_s: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        job = _get(base_url, job_id, wait=2)
        if job["status"] in TERMINAL:
            return job
        assert time.monotonic() < deadline, f"job not terminal after {timeout_s}s: {job}"


def _all_jobs(url: str) -> list[Job]:
    async def read(store: Any) -> list[Job]:
        jobs: list[Job] = []
        for tenant in ("acme", "beta"):
            cursor = None
            while True:
                page, cursor = await store.list_jobs(tenant=tenant, limit=1000, cursor=cursor)
                jobs += page
                if cursor is None:
                    break
        return jobs

    return with_store(url, read)


# -- migrate ------------------------------------------------------------------------------------------


def test_migrate_sqlite(tmp_path: Path) -> None:
    db = tmp_path / "sub" / "jobs.db"
    outputs = []
    for _ in range(2):  # idempotent; the first run says what it applied, the second that nothing was due
        result = run_inferd(["migrate", "--store", f"sqlite:///{db}"], cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        outputs.append(result.stdout)
    assert "applied migration(s) 1, 2" in outputs[0] and "up to date" not in outputs[0], outputs
    assert "already up to date" in outputs[1], outputs
    assert db.exists()
    assert with_store(f"sqlite:///{db}", lambda store: store.pending_counts()) == {}
    bad = run_inferd(["migrate", "--store", "mysql://nope"], cwd=tmp_path)
    assert bad.returncode != 0
    assert "job store URL" in bad.stderr


def test_migrate_postgres(tmp_path: Path, pg: PgSchema) -> None:
    for _ in range(2):
        result = run_inferd(["migrate", "--store", pg.url], cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
    with pg.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s AND table_name = 'jobs'",
            (pg.name,),
        ).fetchone()
    assert row == (1,)


# -- the jobs CLI --------------------------------------------------------------------------------------


def test_cli_jobs_submit_wait_writes_outputs_in_input_order(tmp_path: Path, procs: Processes) -> None:
    server = procs.serve(f"sqlite:///{tmp_path / 'jobs.db'}", "--dev")
    items: list[Any] = [{"i": i, "nested": [i, {"k": str(i)}]} for i in range(9)] + [
        "text",
        3.5,
        None,
        [1, 2],
    ]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(json.dumps(item) for item in items) + "\n")
    server.wait_http("/readyz")
    for extra in ([], ["--batch-size", "5"]):
        out = tmp_path / f"out{len(extra)}.jsonl"
        result = run_inferd(
            [
                "jobs",
                "submit",
                "echo",
                str(source),
                "--wait",
                "--output",
                str(out),
                "--key",
                "dev",
                "--url",
                server.url,
                *extra,
            ],
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        assert lines == [{"output": item} for item in items]


def test_cli_jobs_submit_waits_out_rate_limits_without_duplicating_jobs(
    tmp_path: Path, procs: Processes
) -> None:
    server = procs.serve(f"sqlite:///{tmp_path / 'jobs.db'}", "--dev", env={"INFERD_RATE_LIMIT": "4/s"})
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(json.dumps(i) for i in range(12)) + "\n")
    server.wait_http("/readyz")
    out = tmp_path / "out.jsonl"
    args = ["jobs", "submit", "echo", str(source), "--output", str(out), "--key", "dev", "--url", server.url]
    result = run_inferd(args, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [json.loads(line) for line in out.read_text().splitlines()] == [{"output": i} for i in range(12)]
    listed = run_inferd(["jobs", "list", "--json", "--key", "dev", "--url", server.url], cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)["jobs"]) == 12  # 429s were retried with the same key: no duplicates


# -- job_queue_depth across processes ------------------------------------------------------------------


def test_queue_depth_is_the_store_truth_in_api_and_worker_processes(tmp_path: Path, procs: Processes) -> None:
    store = f"sqlite:///{tmp_path / 'jobs.db'}"
    api = procs.serve(store, "--no-worker")
    api.wait_http("/readyz")
    n = 6
    jobs = [_submit(api.url, "slowjob", {"input": {"sleep_s": 0.05, "tag": i}}) for i in range(n)]
    poll_until(
        "API job_queue_depth == N",
        lambda: metric_value(api.url, "job_queue_depth", model="slowjob", version="1") == n,
        timeout_s=2,
    )
    assert all(_get(api.url, job["id"])["status"] == "pending" for job in jobs)

    worker = procs.worker(store, concurrency=2)
    worker.wait_http("/metrics")
    for job in jobs:
        assert _wait_done(api.url, job["id"])["status"] == "succeeded"
    poll_until(
        "API job_queue_depth back to 0",
        lambda: metric_value(api.url, "job_queue_depth", model="slowjob", version="1") == 0,
        timeout_s=2.5,
    )
    poll_until(
        "worker job_queue_depth is 0",
        lambda: metric_value(worker.url, "job_queue_depth", model="slowjob", version="1") == 0,
        timeout_s=2.5,
    )
    poll_until(
        "worker's jobs_finished_total == N",
        lambda: (
            metric_value(worker.url, "jobs_finished_total", model="slowjob", version="1", status="succeeded")
            == n
        ),
        timeout_s=2,
    )
    # The API process ran nothing.
    assert (
        metric_value(api.url, "jobs_finished_total", model="slowjob", version="1", status="succeeded") is None
    )


# -- restarts and shutdown -----------------------------------------------------------------------------


def test_jobs_accepted_before_a_restart_complete_after_it(tmp_path: Path, procs: Processes) -> None:
    store = f"sqlite:///{tmp_path / 'jobs.db'}"
    first = procs.serve(store, "--no-worker")
    first.wait_http("/readyz")
    echo = _submit(first.url, "echo", {"inputs": ["a", "b", "c", "d", "e"]})
    strict = _submit(first.url, "strict", {"input": 21})
    assert _get(first.url, echo["id"])["status"] == "pending"
    first.signal(SIGTERM)
    # uvicorn (>= 0.29) shuts down gracefully, then re-raises the signal it caught: -SIGTERM.
    assert first.wait_exit(30) in (0, -SIGTERM), first.output()
    assert "Application shutdown complete" in first.output()

    second = procs.serve(store)  # with the in-process worker
    second.wait_http("/readyz")
    done = _wait_done(second.url, echo["id"])
    assert done["status"] == "succeeded" and done["outputs"] == ["a", "b", "c", "d", "e"]
    assert done["attempts"] == 1
    assert _wait_done(second.url, strict["id"])["output"] == 42


def test_sigterm_on_a_worker_with_a_running_job_loses_nothing(tmp_path: Path, procs: Processes) -> None:
    store = f"sqlite:///{tmp_path / 'jobs.db'}"
    job = Job(
        id="sigterm-job", tenant="acme", model="slowjob", version="1", inputs=[{"sleep_s": 1.5}], batch=False
    )
    with_store(store, lambda s: s.insert(job))
    worker = procs.worker(store, concurrency=1, env={"INFERD_JOB_LEASE_S": "5"})
    worker.wait_http("/metrics")

    def running() -> bool:
        stored = with_store(store, lambda s: s.get(job.id))
        return stored is not None and stored.status is JobStatus.RUNNING

    poll_until("the job runs on the worker", running, timeout_s=20)
    signalled = time.monotonic()
    worker.signal(SIGTERM)
    code = worker.wait_exit(30)  # the shutdown grace period is 25 s
    took = time.monotonic() - signalled
    assert code == 0, worker.output()
    assert took < 28, took
    stored = with_store(store, lambda s: s.get(job.id))
    assert stored is not None
    # Finished within the grace period, or handed back for another worker: never left "running".
    assert stored.status in (JobStatus.SUCCEEDED, JobStatus.PENDING), stored
    if stored.status is JobStatus.SUCCEEDED:
        assert stored.outputs == [{"slept": 1.5, "tag": None}] and stored.attempts == 1
    else:
        assert stored.attempts == 0 and stored.lease_owner is None


# -- crash recovery on PostgreSQL ---------------------------------------------------------------------

_TRANSITION_LOG = """
CREATE TABLE transitions (
    seq bigserial PRIMARY KEY, job_id text, old_status text, new_status text,
    old_attempts int, new_attempts int, old_owner text, new_owner text
);
CREATE FUNCTION log_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO transitions (job_id, old_status, new_status, old_attempts, new_attempts, old_owner, new_owner)
    VALUES (NEW.id, OLD.status, NEW.status, OLD.attempts, NEW.attempts, OLD.lease_owner, NEW.lease_owner);
    RETURN NEW;
END $$;
CREATE TRIGGER jobs_transitions AFTER UPDATE ON jobs FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.attempts IS DISTINCT FROM NEW.attempts)
    EXECUTE FUNCTION log_transition();
"""


def _finished_total(base_url: str) -> float:
    text = httpx.get(f"{base_url}/metrics", timeout=5).text
    return sum(
        value for labels, value in metric_samples(text, "jobs_finished_total") if labels["model"] == "slowjob"
    )


def test_killed_worker_jobs_are_recovered_and_finalized_exactly_once(
    tmp_path: Path, procs: Processes, pg: PgSchema
) -> None:
    migrated = run_inferd(["migrate", "--store", pg.url], cwd=tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    with pg.connect() as conn:
        conn.execute(sql.SQL(_TRANSITION_LOG))

    env = {"INFERD_JOB_LEASE_S": "2"}
    api = procs.serve(pg.url, "--no-worker", env=env)
    victim = procs.worker(pg.url, concurrency=2, env=env)
    survivor = procs.worker(pg.url, concurrency=2, env=env)
    for proc in (api, victim, survivor):
        proc.wait_http("/readyz" if proc is api else "/metrics")

    log = tmp_path / "slowjob.log"
    release = tmp_path / "release"
    n = 20
    gated = 4  # as many as both workers run at once: each ends up holding gated jobs only
    # The gated jobs cannot finish before the test releases them, after the kill: the victim is killed
    # mid-job for sure, however slowly the machine runs.
    ids = [
        _submit(
            api.url,
            "slowjob",
            {
                "input": {
                    "sleep_s": 0.4,
                    "log": str(log),
                    "tag": i,
                    **({"until": str(release)} if i < gated else {}),
                }
            },
        )["id"]
        for i in range(n)
    ]

    def held_by_victim() -> list[str]:
        with pg.connect() as conn:
            rows = conn.execute(
                "SELECT id FROM jobs WHERE status = 'running' AND lease_owner LIKE %s", (f"%:{victim.pid}:%",)
            ).fetchall()
        return [row[0] for row in rows]

    poll_until(
        "the victim worker runs a gated job",
        lambda: set(ids[:gated]) & set(held_by_victim()),
        timeout_s=30,
        interval_s=0.02,
    )
    victim_finished_before_kill = _finished_total(victim.url)
    victim.signal(SIGKILL)
    assert victim.wait_exit(10) == -9
    held = held_by_victim()
    assert set(ids[:gated]) & set(held), "the victim held no gated job when it was killed"
    release.touch()

    def all_terminal() -> bool:
        with pg.connect() as conn:
            row = conn.execute(
                "SELECT count(*) FROM jobs WHERE status IN ('succeeded', 'failed', 'cancelled')"
            ).fetchone()
        return row is not None and row[0] == n

    poll_until("every job terminal", all_terminal, timeout_s=60, interval_s=0.2)

    jobs = {job.id: job for job in _all_jobs(pg.url)}
    assert set(jobs) == set(ids)
    assert all(job.status is JobStatus.SUCCEEDED for job in jobs.values()), {
        job.id: (job.status, job.error) for job in jobs.values() if job.status is not JobStatus.SUCCEEDED
    }
    assert all(job.finished_at is not None and job.outputs is not None for job in jobs.values())
    for job_id in held:
        assert jobs[job_id].attempts >= 2, jobs[job_id]  # re-run after the victim's lease expired
    assert max(job.attempts for job in jobs.values()) >= 2

    with pg.connect() as conn:
        transitions = conn.execute(
            "SELECT job_id, old_status, new_status, old_owner, new_owner FROM transitions ORDER BY seq"
        ).fetchall()
    finals: dict[str, list[tuple[Any, ...]]] = {job_id: [] for job_id in ids}
    for job_id, old, new, old_owner, _ in transitions:
        if new in TERMINAL:
            finals[job_id].append((old, new, old_owner))
    # No job "ended twice": exactly one transition into a terminal state per job, from running.
    assert {job_id: len(ends) for job_id, ends in finals.items()} == {job_id: 1 for job_id in ids}
    assert all(ends[0][0] == "running" for ends in finals.values())
    # The jobs the victim held were taken over (running -> running under another owner).
    takeovers = {
        job_id
        for job_id, old, new, old_owner, new_owner in transitions
        if old == "running"
        and new == "running"
        and worker_pid_of(old_owner) == victim.pid
        and worker_pid_of(new_owner) == survivor.pid
    }
    assert set(held) <= takeovers

    # The metrics agree with the store: every finish the survivor counted is one of its terminal
    # transitions, and the two workers' counts never add up to more than the number of jobs.
    by_survivor = sum(1 for ends in finals.values() if worker_pid_of(ends[0][2]) == survivor.pid)
    by_victim = sum(1 for ends in finals.values() if worker_pid_of(ends[0][2]) == victim.pid)
    assert by_survivor + by_victim == n
    # (A worker counts a finish just after the store committed it: allow it a moment.)
    poll_until(
        "survivor's jobs_finished_total", lambda: _finished_total(survivor.url) == by_survivor, timeout_s=2
    )
    survivor_finished = _finished_total(survivor.url)
    assert victim_finished_before_kill <= by_victim
    assert survivor_finished + victim_finished_before_kill <= n

    # Every job's model call completed at least once (the side log the model writes).
    ended = {line.split()[1] for line in log.read_text().splitlines() if line.startswith("end ")}
    assert ended == {str(i) for i in range(n)}
