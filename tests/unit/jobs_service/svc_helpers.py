"""Helpers for the JobService / JobWorker tests (in process, no HTTP).

Each test body is an ``async def`` run with ``asyncio.run`` inside a sync test, and builds its own
engine (``harness``): a DeviceExecutor binds to the loop of its first call, so engines are never
shared between loops.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from inferd.bootstrap import Engine, build_engine
from inferd.core.settings import load_settings
from inferd.jobs.memory import memory_store
from inferd.jobs.models import Job, JobStatus
from inferd.jobs.service import JobService
from inferd.jobs.store import JobStore
from inferd.jobs.urls import open_store
from inferd.jobs.worker import JobWorker

JOB_MODELS = Path(__file__).resolve().parents[2] / "fixtures" / "job_models"
POSTGRES_URL = os.environ.get("INFERD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
MEMORY = "memory"  # the store_url of the in-memory store
TENANT = "acme"
OTHER_TENANT = "beta"


def require_services() -> bool:
    return os.environ.get("INFERD_REQUIRE_SERVICES") == "1"


@contextlib.contextmanager
def postgres_schema(base_url: str) -> Iterator[str]:
    """A store URL on a fresh schema of the test database; the schema is dropped afterwards."""
    schema = f"inferd_t_{secrets.token_hex(6)}"
    separator = "&" if "?" in base_url else "?"
    try:
        yield f"{base_url}{separator}schema={schema}"
    finally:
        with psycopg.connect(base_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


class Clock:
    """A settable clock for the service (leases, backoff and retention without sleeping)."""

    def __init__(self, start: datetime | None = None) -> None:
        self.current = start or datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.current

    def advance(self, seconds: float) -> datetime:
        self.current += timedelta(seconds=seconds)
        return self.current


@dataclass
class Harness:
    engine: Engine
    store: JobStore
    service: JobService
    workers: list[tuple[JobWorker, asyncio.Task[None]]] = field(default_factory=list)

    def model_calls(self, model: str, version: str) -> list[list[Any]]:
        """The batches an in-process python model instance (echo) was called with."""
        pipeline = self.engine.registry.models[model].versions[version].pipeline
        assert pipeline is not None, f"{model}:{version} is not loaded"
        calls: list[list[Any]] = pipeline.model.instance.calls
        return calls

    def start_worker(
        self, *, concurrency: int = 4, lease_s: float = 5.0, worker_id: str | None = None
    ) -> JobWorker:
        worker = JobWorker(
            service=self.service,
            concurrency=concurrency,
            lease_s=lease_s,
            poll_interval_s=0.05,
            worker_id=worker_id,
        )
        self.workers.append((worker, asyncio.create_task(worker.run())))
        return worker

    async def stop_workers(self, grace_s: float = 5.0) -> None:
        workers, self.workers = self.workers, []
        for worker, _ in workers:
            worker.stop()
        for worker, task in workers:
            await asyncio.wait_for(task, timeout=5)
            await worker.drain(grace_s)

    async def submit(
        self, model: str, item: Any = None, *, inputs: list[Any] | None = None, **kwargs: Any
    ) -> Job:
        job, created = await self.service.create_job(
            tenant=kwargs.pop("tenant", TENANT),
            model=model,
            version=kwargs.pop("version", None),
            inputs=inputs if inputs is not None else [item],
            batch=inputs is not None,
            **kwargs,
        )
        assert created
        return job

    async def wait_terminal(self, job_id: str, *, tenant: str = TENANT, timeout_s: float = 15.0) -> Job:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            job = await self.service.get(
                job_id, tenant=tenant, wait_s=min(1.0, max(0.0, deadline - loop.time()))
            )
            if job.status.terminal:
                return job
            if loop.time() >= deadline:
                raise AssertionError(f"job {job_id} not terminal after {timeout_s}s: {job}")

    async def status(self, job_id: str) -> JobStatus:
        job = await self.store.get(job_id)
        assert job is not None
        return job.status


@contextlib.asynccontextmanager
async def harness(
    url: str,
    *,
    clock: Clock | None = None,
    retry_base_s: float = 0.01,
    max_result_bytes: int = 10 * 1024 * 1024,
    default_max_attempts: int = 3,
    patch_store: Callable[[JobStore], None] | None = None,
) -> AsyncIterator[Harness]:
    """An engine on the job_models repository, the store ``url`` names (opened) and a JobService.
    ``patch_store`` may wrap store methods before the service binds them."""
    settings = load_settings(
        flags={"models": JOB_MODELS, "access_log": "off", "log_level": "warning", "devices": "cpu=4"},
        environ={},
    )
    engine = build_engine(settings)
    store = memory_store() if url == MEMORY else open_store(url)
    await store.open()
    if patch_store is not None:
        patch_store(store)
    kwargs: dict[str, Any] = {} if clock is None else {"clock": clock}
    service = JobService(
        store=store,
        dataplane=engine.dataplane,
        metrics=engine.metrics,
        default_max_attempts=default_max_attempts,
        retry_base_s=retry_base_s,
        max_result_bytes=max_result_bytes,
        **kwargs,
    )
    h = Harness(engine, store, service)
    try:
        yield h
    finally:
        try:
            await h.stop_workers(grace_s=1.0)
        finally:
            await store.close()
            engine.close()


def gauge_value(engine: Engine, name: str, labels: dict[str, str]) -> float | None:
    value = engine.metrics.registry.get_sample_value(name, labels)
    return value
