"""JobWorker in process: concurrency, lease renewal, takeover after a crash, graceful stop."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path

from svc_helpers import JOB_MODELS, OTHER_TENANT, TENANT, Clock, harness

from inferd.bootstrap import build_engine, build_job_runtime
from inferd.core.settings import load_settings
from inferd.jobs.models import JobStatus
from inferd.jobs.store import Finished, FinishRequest, JobStore


def _max_overlap(log: Path) -> int:
    running = peak = 0
    for line in log.read_text().splitlines():
        running += 1 if line.startswith("start ") else -1
        peak = max(peak, running)
    return peak


def test_worker_runs_at_most_concurrency_jobs_at_once(store_url: str, tmp_path: Path) -> None:
    async def body() -> None:
        async with harness(store_url) as h:
            log = tmp_path / "slow.log"
            jobs = [await h.submit("slowjob", {"sleep_s": 0.15, "log": str(log), "tag": i}) for i in range(6)]
            worker = h.start_worker(concurrency=2)
            peak_held = 0
            loop = asyncio.get_running_loop()
            started = loop.time()
            while True:
                peak_held = max(peak_held, len(worker.running_jobs))
                states = [await h.status(job.id) for job in jobs]
                if all(state.terminal for state in states):
                    break
                assert loop.time() - started < 15, states
                await asyncio.sleep(0.01)
            assert all(state is JobStatus.SUCCEEDED for state in states)
            assert peak_held <= 4  # two executing, two whose outcomes were being written
            assert _max_overlap(log) == 2  # it did use both slots, and never more
            assert log.read_text().count("end ") == 6

    asyncio.run(body())


def test_worker_claims_the_next_jobs_while_outcomes_are_written(store_url: str) -> None:
    """A slot is free once the model is done; the job stays held until its outcome is written, and a
    worker holds at most twice its concurrency."""
    writes_may_finish = asyncio.Event()

    def hold_finishes(store: JobStore) -> None:
        finish_many = store.finish_many

        async def held(requests: list[FinishRequest], *, now: datetime) -> list[Finished | None]:
            await writes_may_finish.wait()
            return await finish_many(requests, now=now)

        store.finish_many = held  # type: ignore[method-assign]

    async def body() -> None:
        async with harness(store_url, patch_store=hold_finishes) as h:
            jobs = [await h.submit("echo", i) for i in range(6)]
            worker = h.start_worker(concurrency=2)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while len(worker.running_jobs) < 4:
                assert loop.time() < deadline, worker.running_jobs
                await asyncio.sleep(0.01)
            states = [await h.status(job.id) for job in jobs]
            assert states.count(JobStatus.RUNNING) == 4 and states.count(JobStatus.PENDING) == 2
            writes_may_finish.set()
            for i, job in enumerate(jobs):
                done = await h.wait_terminal(job.id)
                assert done.status is JobStatus.SUCCEEDED and done.outputs == [i]

    asyncio.run(body())


def test_lease_is_renewed_while_a_long_job_runs(store_url: str) -> None:
    async def body() -> None:
        async with harness(store_url) as h:
            job = await h.submit("slowjob", {"sleep_s": 1.2})
            worker = h.start_worker(lease_s=0.6, worker_id="w-long")
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while not worker.running_jobs:
                assert loop.time() < deadline
                await asyncio.sleep(0.01)
            # Meanwhile another worker keeps trying to claim: the lease never lapses, so it gets nothing.
            while not (await h.status(job.id)).terminal:
                stolen = await h.service.mark_running(worker_id="w-thief", limit=5, lease_s=0.6)
                assert stolen == [], "a job was claimed while its worker renewed the lease"
                assert loop.time() < deadline
                await asyncio.sleep(0.05)
            done = await h.store.get(job.id)
            assert done is not None and done.status is JobStatus.SUCCEEDED and done.attempts == 1

    asyncio.run(body())


def test_job_of_a_crashed_worker_is_taken_over_after_the_lease(store_url: str) -> None:
    async def body() -> None:
        clock = Clock()
        async with harness(store_url, clock=clock) as h:
            job = await h.submit("echo", "orphan")
            # "w-dead" claims and then never reports nor renews: it crashed.
            [orphan] = await h.service.mark_running(worker_id="w-dead", limit=1, lease_s=30)
            assert orphan.attempts == 1
            clock.advance(31)  # its lease has lapsed
            h.start_worker(lease_s=5, worker_id="w-alive")
            done = await h.wait_terminal(job.id, timeout_s=10)
            assert done.status is JobStatus.SUCCEEDED and done.outputs == ["orphan"]
            assert done.attempts == 2
            # The dead worker's late report changes nothing.
            assert await h.service.complete(orphan, worker_id="w-dead", outputs=["zombie"]) is None
            stored = await h.store.get(job.id)
            assert stored is not None and stored.outputs == ["orphan"]

    asyncio.run(body())


def test_stop_and_drain_finishes_quick_jobs_and_releases_the_rest(store_url: str) -> None:
    async def body() -> None:
        async with harness(store_url) as h:
            quick = await h.submit("slowjob", {"sleep_s": 0.2, "tag": "quick"})
            slow = await h.submit("slowjob", {"sleep_s": 3.0, "tag": "slow"})
            worker = h.start_worker(concurrency=2, lease_s=5)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while len(worker.running_jobs) < 2:
                assert loop.time() < deadline
                await asyncio.sleep(0.02)
            h.workers.clear()  # stopped here, not by the harness
            worker.stop()
            started = loop.time()
            await worker.drain(grace_s=1.0)
            assert loop.time() - started < 2.5
            assert worker.running_jobs == []
            assert await h.status(quick.id) is JobStatus.SUCCEEDED
            released = await h.store.get(slow.id)
            assert released is not None and released.status is JobStatus.PENDING
            assert released.attempts == 0  # the interrupted attempt is given back
            assert released.lease_owner is None
            # And it is runnable again at once, by anyone.
            [again] = await h.service.mark_running(worker_id="w2", limit=5, lease_s=5)
            assert again.id == slow.id and again.attempts == 1

    asyncio.run(body())


def test_worker_picks_up_work_submitted_while_it_idles(store_url: str) -> None:
    async def body() -> None:
        async with harness(store_url) as h:
            h.start_worker(concurrency=1)
            await asyncio.sleep(0.2)  # idle, waiting for work
            jobs = [await h.submit("strict", i) for i in range(5)]
            for i, job in enumerate(jobs):
                done = await h.wait_terminal(job.id, timeout_s=10)
                assert done.status is JobStatus.SUCCEEDED and done.outputs == [2 * i]

    asyncio.run(body())


def test_claims_follow_the_tenant_weights_of_the_config(tmp_path: Path) -> None:
    """The ``tenants:`` section's weights reach the claims of the job runtime bootstrap builds."""
    settings = load_settings(
        flags={
            "models": JOB_MODELS,
            "access_log": "off",
            "log_level": "warning",
            "store": f"sqlite:///{tmp_path / 'jobs.db'}",
            "tenants": {TENANT: {"weight": 3}},
        },
        environ={},
    )

    async def body() -> None:
        engine = build_engine(settings)
        runtime = build_job_runtime(settings, engine, run_worker=False)
        await runtime.store.open()
        try:
            for tenant in (TENANT, OTHER_TENANT):  # the weighted tenant's jobs are the older ones
                for i in range(8):
                    await runtime.service.create_job(
                        tenant=tenant, model="echo", version=None, inputs=[i], batch=False
                    )
            claimed = await runtime.service.mark_running(worker_id="w1", limit=8, lease_s=5)
            assert sum(job.tenant == TENANT for job in claimed) == 6  # 3:1, OTHER_TENANT has the default 1
        finally:
            await runtime.store.close()
            engine.close()

    asyncio.run(body())
