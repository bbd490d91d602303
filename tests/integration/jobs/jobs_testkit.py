"""Helpers for the job API tests: an in-process app with its lifespan running, and real processes.

In process: ``build_app(settings, engine=engine)`` behind ``httpx.ASGITransport``. ASGITransport does
not run the lifespan, so :func:`job_app` enters the app's lifespan itself (that starts the job
runtime: store, worker, queue-depth refresh) and leaves it at the end. Every test runs its body with
``asyncio.run`` and builds its own app, because a DeviceExecutor binds to the loop of its first call.

Real processes: ``inferd serve`` / ``inferd worker`` / ``inferd migrate`` / ``inferd jobs`` as
``python -m inferd.cli`` on free 127.0.0.1 ports, cwd in a tmp dir, no inherited INFERD_* settings,
access log off; :class:`Proc` terminates (then kills) what it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psycopg
import pytest
from inferd_http_testkit import Proc, free_port, server_env, start_inferd
from inferd_http_testkit import run_inferd as run_inferd_with
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql

from inferd.bootstrap import Engine, build_app, build_engine
from inferd.core.settings import Settings, load_settings
from inferd.http.asgi import InferdASGI

T = TypeVar("T")

JOB_MODELS = Path(__file__).resolve().parents[2] / "fixtures" / "job_models"
POSTGRES_URL = os.environ.get("INFERD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")

# key:tenant:scopes
API_KEYS = "ka:acme:jobs;kb:beta:jobs;kp:acme:predict"
ACME = "ka"
BETA = "kb"
PREDICT_ONLY = "kp"

TERMINAL = {"succeeded", "failed", "cancelled"}
JOB_FIELDS = {
    "priority",
    "id",
    "status",
    "model",
    "version",
    "created_at",
    "started_at",
    "finished_at",
    "attempts",
    "max_attempts",
    "error",
}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"error", "request_id"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    return body


def require_services() -> bool:
    return os.environ.get("INFERD_REQUIRE_SERVICES") == "1"


def postgres_or_skip() -> str:
    try:
        psycopg.connect(POSTGRES_URL, connect_timeout=3).close()
    except psycopg.Error as exc:
        reason = f"PostgreSQL is not reachable at {POSTGRES_URL}: {str(exc).strip()[:200]}"
        if require_services():
            pytest.fail(f"{reason}; INFERD_REQUIRE_SERVICES=1 requires it", pytrace=False)
        pytest.skip(reason)
    return POSTGRES_URL


@dataclass
class PgSchema:
    base_url: str
    name: str

    @property
    def url(self) -> str:
        separator = "&" if "?" in self.base_url else "?"
        return f"{self.base_url}{separator}schema={self.name}"

    def connect(self) -> psycopg.Connection[Any]:
        conn = psycopg.connect(self.base_url, autocommit=True)
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.name)))
        return conn


@contextlib.contextmanager
def pg_schema() -> Iterator[PgSchema]:
    """A fresh schema of the test database for one test (skips or fails without PostgreSQL)."""
    schema = PgSchema(postgres_or_skip(), f"inferd_t_{secrets.token_hex(6)}")
    try:
        yield schema
    finally:
        with psycopg.connect(schema.base_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema.name)))


# -- in process ------------------------------------------------------------------------------------


def job_settings(store: str, **overrides: Any) -> Settings:
    flags: dict[str, Any] = {
        "models": JOB_MODELS,
        "api_keys": API_KEYS,
        "access_log": "off",
        "log_level": "warning",
        "store": store,
        "job_retry_base_s": 0.01,
        "worker_concurrency": 4,
    }
    flags.update(overrides)
    return load_settings(flags=flags, environ={})


@dataclass
class JobApp:
    settings: Settings
    engine: Engine
    app: InferdASGI
    client: httpx.AsyncClient

    async def submit(
        self, model: str, body: dict[str, Any], *, key: str = ACME, headers: Mapping[str, str] | None = None
    ) -> httpx.Response:
        return await self.client.post(
            f"/v1/models/{model}/jobs", json=body, headers={**bearer(key), **(headers or {})}
        )

    async def submit_ok(self, model: str, body: dict[str, Any], *, key: str = ACME) -> dict[str, Any]:
        response = await self.submit(model, body, key=key)
        assert response.status_code == 202, response.text
        job: dict[str, Any] = response.json()
        return job

    async def get(self, job_id: str, *, key: str = ACME, wait: float | None = None) -> httpx.Response:
        params = {} if wait is None else {"wait": wait}
        return await self.client.get(f"/v1/jobs/{job_id}", params=params, headers=bearer(key))

    async def wait_done(self, job_id: str, *, key: str = ACME, timeout_s: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            response = await self.get(job_id, key=key, wait=1)
            assert response.status_code == 200, response.text
            job: dict[str, Any] = response.json()
            if job["status"] in TERMINAL:
                return job
            assert time.monotonic() < deadline, f"job not terminal after {timeout_s}s: {job}"

    async def cancel(self, job_id: str, *, key: str = ACME) -> httpx.Response:
        return await self.client.post(f"/v1/jobs/{job_id}/cancel", headers=bearer(key))

    async def list(self, *, key: str = ACME, **params: Any) -> httpx.Response:
        return await self.client.get("/v1/jobs", params=params, headers=bearer(key))


@contextlib.asynccontextmanager
async def job_app(tmp_path: Path, *, store: str | None = None, **overrides: Any) -> AsyncIterator[JobApp]:
    """The app of ``inferd serve`` on ``store`` (default: a SQLite store in tmp_path), its lifespan
    entered (runtime started)."""
    settings = job_settings(store or f"sqlite:///{tmp_path / 'jobs.db'}", **overrides)
    engine = build_engine(settings)
    app = build_app(settings, engine=engine)
    async with app.lifespan():  # closes the engine on exit
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield JobApp(settings, engine, app, client)


# -- real processes --------------------------------------------------------------------------------


# What every job-test process gets unless a test says otherwise.
PROCESS_DEFAULTS = {
    "INFERD_ACCESS_LOG": "off",
    "INFERD_API_KEYS": API_KEYS,
    "INFERD_JOB_RETRY_BASE_S": "0.05",
}


def process_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    return server_env({**PROCESS_DEFAULTS, **(extra or {})})


def run_inferd(
    args: Sequence[str], *, cwd: Path, env: Mapping[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return run_inferd_with(args, cwd=cwd, env={**PROCESS_DEFAULTS, **(env or {})}, timeout=timeout)


class Processes:
    """Starts inferd processes in a work dir and stops every one of them at teardown."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[Proc] = []

    def _start(self, name: str, args: Sequence[str], port: int, env: Mapping[str, str] | None) -> Proc:
        self.workdir.mkdir(parents=True, exist_ok=True)
        output_path = self.workdir / f"{name}-{len(self.started)}.out"
        process = start_inferd(args, env=process_env(env), cwd=self.workdir, output_path=output_path)
        proc = Proc(name, process, output_path, port)
        self.started.append(proc)
        return proc

    def serve(
        self, store: str, *args: str, env: Mapping[str, str] | None = None, models: Path = JOB_MODELS
    ) -> Proc:
        port = free_port()
        return self._start(
            "serve",
            [
                "serve",
                "--models",
                str(models),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--store",
                store,
                *args,
            ],
            port,
            env,
        )

    def worker(
        self,
        store: str,
        *,
        concurrency: int = 2,
        env: Mapping[str, str] | None = None,
        models: Path = JOB_MODELS,
    ) -> Proc:
        port = free_port()
        args = ["worker", "--models", str(models), "--store", store, "--concurrency", str(concurrency)]
        return self._start("worker", [*args, "--metrics-port", str(port)], port, env)

    def stop_all(self) -> None:
        for proc in self.started:
            with contextlib.suppress(Exception):
                proc.stop()


def metric_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    samples = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                samples.append((dict(sample.labels), sample.value))
    return samples


def metric_value(base_url: str, name: str, **labels: str) -> float | None:
    """The value of one series on a /metrics endpoint (None: no such series)."""
    text = httpx.get(f"{base_url}/metrics", timeout=5.0).text
    for sample_labels, value in metric_samples(text, name):
        if all(sample_labels.get(k) == v for k, v in labels.items()):
            return value
    return None


def poll_until(what: str, check: Callable[[], Any], *, timeout_s: float, interval_s: float = 0.05) -> Any:
    """Call ``check`` until it returns something truthy; fail naming ``what`` and its last value."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() >= deadline:
            pytest.fail(f"{what}: not true within {timeout_s}s (last: {last!r})")
        time.sleep(interval_s)


def worker_pid_of(lease_owner: str | None) -> int | None:
    """The pid in a worker id ``host:pid:hex``."""
    if not lease_owner:
        return None
    match = re.fullmatch(r".*:(\d+):[0-9a-f]+", lease_owner)
    return int(match.group(1)) if match else None


SIGKILL = signal.SIGKILL
SIGTERM = signal.SIGTERM


def with_store(url: str, action: Callable[[Any], Awaitable[T]]) -> T:
    """Open the store a URL names in this (test) process, run ``action(store)``, close it."""
    from inferd.jobs.urls import open_store

    async def run() -> T:
        store = open_store(url)
        await store.open()
        try:
            return await action(store)
        finally:
            await store.close()

    return asyncio.run(run())
