"""Reload everywhere, in process: the repository generation in the store, and a worker that has not
reloaded yet catching up instead of failing a job for a version it does not know."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from inferd.bootstrap import build_engine
from inferd.core.settings import load_settings
from inferd.jobs.memory import memory_store
from inferd.jobs.models import Job, JobStatus
from inferd.jobs.repository_sync import RepositorySync
from inferd.jobs.service import JobService

FIXTURE_ECHO = Path(__file__).resolve().parents[2] / "fixtures" / "job_models" / "echo" / "1"


def _repository(root: Path) -> Path:
    shutil.copytree(FIXTURE_ECHO, root / "echo" / "1")
    return root


def test_a_worker_behind_the_store_catches_up_before_running_a_job(tmp_path: Path) -> None:
    async def scenario() -> None:
        models = _repository(tmp_path / "models")
        settings = load_settings(
            flags={"models": models, "devices": "cpu=2", "log_level": "warning"}, environ={}
        )
        engine = build_engine(settings)
        store = memory_store()
        await store.open()
        sync = RepositorySync(registry=engine.registry, reload=engine.dataplane.reload_models, store=store)
        service = JobService(store=store, dataplane=engine.dataplane, metrics=engine.metrics, repository=sync)
        try:
            await sync.start()
            assert await sync.catch_up() is False  # nothing requested since start-up
            # Another process added a model and requested a reload; this one has not polled yet.
            shutil.copytree(FIXTURE_ECHO, models / "late" / "1")
            assert await store.bump_repository_generation() == 1
            await store.insert(
                Job(id="j-late", tenant="acme", model="late", version="1", inputs=[1], batch=False)
            )
            [claimed] = await service.mark_running(worker_id="w", limit=1, lease_s=30)
            done = await service.run(claimed, worker_id="w")
            assert done is not None and done.status is JobStatus.SUCCEEDED, done
            assert sync.knows("late", "1")
            assert await sync.catch_up() is False  # already at generation 1
        finally:
            await store.close()
            engine.close()

    asyncio.run(scenario())


def test_reload_everywhere_bumps_the_generation_once_per_request(tmp_path: Path) -> None:
    async def scenario() -> None:
        models = _repository(tmp_path / "models")
        engine = build_engine(load_settings(flags={"models": models, "devices": "cpu=1"}, environ={}))
        store = memory_store()
        await store.open()
        try:
            first = RepositorySync(
                registry=engine.registry, reload=engine.dataplane.reload_models, store=store
            )
            await first.start()
            shutil.copytree(FIXTURE_ECHO, models / "late" / "1")
            summary = await first.reload_everywhere()
            assert summary["added"] == ["late:1"]
            assert await store.repository_generation() == 1
            assert await first.catch_up() is False  # its own request does not make it reload again
        finally:
            await store.close()
            engine.close()

    asyncio.run(scenario())
