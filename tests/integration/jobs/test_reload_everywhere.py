"""A model reload reaches every process sharing the job store: the other ``--workers`` process and a
separate ``inferd worker``, whether it was asked through the admin API or by SIGHUP."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import pytest
from jobs_testkit import ACME, JOB_MODELS, Proc, Processes, bearer, metric_value, poll_until

pytestmark = pytest.mark.slow

KEYS = "ka:acme:jobs;kadmin:ops:admin"
RELOAD_BOUND_S = 15.0  # a generous bound for a loaded CI machine; the note records the measured delay


def _every_process_serves(api: Proc, model: str) -> bool:
    """New connections until both server processes answered; True when both know the model."""
    answers: dict[str, int] = {}
    for _ in range(24):
        with httpx.Client(base_url=api.url, timeout=10) as client:
            response = client.get(f"/v1/models/{model}", headers=bearer("kadmin"))
        answers[response.headers["x-request-id"][:12]] = response.status_code
        if len(answers) == 2 and set(answers.values()) == {200}:
            return True
    return False


def _job_succeeds(api: Proc, model: str) -> None:
    response = httpx.post(
        f"{api.url}/v1/models/{model}/jobs", json={"input": 7}, headers=bearer(ACME), timeout=10
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    job = poll_until(
        f"job for {model} finished",
        lambda: (
            body
            if (body := httpx.get(f"{api.url}/v1/jobs/{job_id}", headers=bearer(ACME), timeout=10).json())[
                "status"
            ]
            in ("succeeded", "failed", "cancelled")
            else None
        ),
        timeout_s=RELOAD_BOUND_S,
    )
    assert job["status"] == "succeeded", job  # run by the separate worker: the API processes run no jobs
    assert job["output"] == 7


def test_reload_reaches_every_process_and_a_separate_worker(tmp_path: Path, procs: Processes) -> None:
    models = tmp_path / "models"
    shutil.copytree(JOB_MODELS / "echo" / "1", models / "echo" / "1")
    store = f"sqlite:///{tmp_path / 'jobs.db'}"
    env = {"INFERD_API_KEYS": KEYS}
    api = procs.serve(store, "--no-worker", "--workers", "2", models=models, env=env)
    api.wait_http("/readyz")
    worker = procs.worker(store, models=models, env=env)
    worker.wait_http("/metrics")

    def through_the_api() -> None:  # answered by one of the two processes
        response = httpx.post(f"{api.url}/v1/admin/models/reload", headers=bearer("kadmin"), timeout=30)
        assert response.status_code == 200, response.text
        assert response.json()["added"] == ["late:1"]

    for model, ask, how in (("late", through_the_api, "the API"), ("later", lambda: api.signal(1), "SIGHUP")):
        shutil.copytree(JOB_MODELS / "echo" / "1", models / model / "1")
        ask()
        asked = time.monotonic()
        poll_until(
            f"both server processes serve {model}:1",
            lambda model=model: _every_process_serves(api, model),
            timeout_s=RELOAD_BOUND_S,
        )
        poll_until(
            f"the worker loaded {model}:1",
            lambda model=model: metric_value(worker.url, "model_loaded", model=model, version="1") == 1,
            timeout_s=RELOAD_BOUND_S,
        )
        print(f"reload by {how} reached every process in {time.monotonic() - asked:.2f}s")
        _job_succeeds(api, model)
    assert api.process.poll() is None and worker.process.poll() is None
