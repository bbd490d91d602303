"""JobService lifecycle: submission, claiming, running, the job document, refused late results."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from svc_helpers import OTHER_TENANT, TENANT, Clock, harness

from inferd.core.errors import ConflictError, InvalidInputError, ModelNotFoundError
from inferd.jobs.models import Job, JobError, JobStatus
from inferd.jobs.service import job_document, request_fingerprint

API_FIELDS = {
    "id",
    "status",
    "model",
    "version",
    "created_at",
    "started_at",
    "finished_at",
    "attempts",
    "max_attempts",
    "priority",
    "error",
}


def test_single_input_lifecycle_pending_running_succeeded(store_url: str) -> None:
    async def body() -> None:
        async with harness(store_url) as h:
            job = await h.submit("echo", {"text": "hi"})
            assert job.status is JobStatus.PENDING
            doc = job_document(job)
            assert set(doc) == API_FIELDS | {"output"}
            assert doc["status"] == "pending" and doc["attempts"] == 0 and doc["output"] is None
            assert doc["started_at"] is None and doc["finished_at"] is None and doc["error"] is None
            assert doc["created_at"].endswith("Z")

            claimed = await h.service.mark_running(worker_id="w1", limit=10, lease_s=30)
            assert [j.id for j in claimed] == [job.id]
            running = await h.store.get(job.id)
            assert running is not None
            assert running.status is JobStatus.RUNNING
            assert running.attempts == 1 and running.lease_owner == "w1" and running.started_at is not None
            # Nothing else to claim while it runs under a live lease.
            assert await h.service.mark_running(worker_id="w2", limit=10, lease_s=30) == []

            done = await h.service.run(claimed[0], worker_id="w1")
            assert done is not None and done.status is JobStatus.SUCCEEDED
            stored = await h.service.get(job.id, tenant=TENANT)
            doc = job_document(stored)
            assert set(doc) == API_FIELDS | {"output"}
            assert doc["status"] == "succeeded"
            assert doc["output"] == {"text": "hi"}
            assert doc["attempts"] == 1 and doc["error"] is None
            assert doc["started_at"] is not None and doc["finished_at"] is not None
            assert doc["finished_at"] >= doc["started_at"] >= doc["created_at"]
            finished = h.engine.metrics.registry.get_sample_value(
                "jobs_finished_total", {"model": "echo", "version": "2", "status": "succeeded"}
            )
            assert finished == 1

    asyncio.run(body())


def test_batch_inputs_answer_outputs_in_order_in_chunks_of_max_batch_size(store_url: str) -> None:
    async def body() -> None:
        async with harness(store_url) as h:
            items = [{"i": i} for i in range(10)]
            small = [[f"a{i}" for i in range(3)], [f"b{i}" for i in range(3)], [f"c{i}" for i in range(3)]]
            job = await h.submit("echo", inputs=items)
            others = [await h.submit("echo", inputs=chunk) for chunk in small]
            h.start_worker(concurrency=4)
            done = await h.wait_terminal(job.id)
            doc = job_document(done)
            assert set(doc) == API_FIELDS | {"outputs"}
            assert doc["status"] == "succeeded"
            assert doc["outputs"] == items
            for other, chunk in zip(others, small, strict=True):
                finished = await h.wait_terminal(other.id)
                assert finished.outputs == chunk
            calls = h.model_calls("echo", "2")
            sizes = [len(call) for call in calls]
            assert max(sizes) <= 4, sizes  # echo's max_batch_size, also when jobs ran concurrently
            assert sum(sizes) == 10 + 9
            seen = [item for call in calls for item in call]
            assert sorted(map(str, seen)) == sorted(map(str, items + [x for c in small for x in c]))
            # The 10-item job needed at least ceil(10 / 4) model calls.
            assert sum(1 for call in calls if any(item in items for item in call)) >= 3

    asyncio.run(body())


def test_single_input_that_is_a_list_is_one_item(store_url: str) -> None:
    async def body() -> None:
        async with harness(store_url) as h:
            job = await h.submit("echo", [1, 2, 3])
            h.start_worker()
            done = await h.wait_terminal(job.id)
            doc = job_document(done)
            assert doc["output"] == [1, 2, 3] and "outputs" not in doc
            assert h.model_calls("echo", "2") == [[[1, 2, 3]]]

    asyncio.run(body())


def test_version_is_resolved_at_submission_and_stored(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body() -> None:
        async with harness(store_url) as h:
            routed = await h.submit("echo", "routed")
            pinned = await h.submit("echo", "pinned", version="1")
            assert routed.version == "2"  # the highest version is the default route
            assert pinned.version == "1"
            stored = await h.store.get(routed.id)
            assert stored is not None and stored.version == "2"

            # Routing changes after submission (here: every unpinned call would go to version 1);
            # the stored version is what runs.
            registry = h.engine.registry
            original = registry.resolve

            def now_routes_to_v1(name: str, version: str | None, *, tenant: str) -> Any:
                return original(name, version or "1", tenant=tenant)

            monkeypatch.setattr(registry, "resolve", now_routes_to_v1)
            h.start_worker()
            done_routed = await h.wait_terminal(routed.id)
            done_pinned = await h.wait_terminal(pinned.id)
            assert done_routed.version == "2" and done_routed.outputs == ["routed"]
            assert done_pinned.version == "1" and done_pinned.outputs == ["pinned"]
            assert [item for call in h.model_calls("echo", "2") for item in call] == ["routed"]
            assert [item for call in h.model_calls("echo", "1") for item in call] == ["pinned"]

    asyncio.run(body())


def test_validation_at_submission_creates_no_job(store_url: str) -> None:
    async def body() -> None:
        async with harness(store_url) as h:
            with pytest.raises(ModelNotFoundError):
                await h.submit("no-such-model", 1)
            with pytest.raises(ModelNotFoundError):
                await h.submit("echo", 1, version="99")
            with pytest.raises(InvalidInputError, match="input_schema"):
                await h.submit("strict", "not an integer")
            with pytest.raises(InvalidInputError, match=r"inputs\[2\]"):
                await h.submit("strict", inputs=[1, 2, "three"])
            jobs, cursor = await h.service.list_jobs(
                tenant=TENANT, status=None, model=None, limit=100, cursor=None
            )
            assert jobs == [] and cursor is None
            assert await h.store.pending_counts() == {}
            ok = await h.submit("strict", inputs=[1, 2, 3])
            assert ok.status is JobStatus.PENDING

    asyncio.run(body())


def test_idempotency_key_same_body_same_job_other_body_conflict_per_tenant(store_url: str) -> None:
    async def body() -> None:
        async with harness(store_url) as h:

            async def create(tenant: str, item: Any) -> tuple[Job, bool]:
                return await h.service.create_job(
                    tenant=tenant,
                    model="echo",
                    version=None,
                    inputs=[item],
                    batch=False,
                    idempotency_key="key-1",
                    fingerprint=request_fingerprint("echo", None, {"input": item}),
                )

            first, created = await create(TENANT, "a")
            assert created
            again, created_again = await create(TENANT, "a")
            assert not created_again and again.id == first.id
            with pytest.raises(ConflictError):
                await create(TENANT, "b")
            other, other_created = await create(OTHER_TENANT, "a")
            assert other_created and other.id != first.id
            jobs, _ = await h.service.list_jobs(tenant=TENANT, status=None, model=None, limit=10, cursor=None)
            assert [j.id for j in jobs] == [first.id]
            # The gauge counts one pending job per tenant's submission, not the replays.
            assert await h.store.pending_counts() == {("echo", "2"): 2}

    asyncio.run(body())


def test_late_complete_after_it_already_finished_is_refused(store_url: str) -> None:
    async def body() -> None:
        async with harness(store_url) as h:
            job = await h.submit("echo", "x")
            [claimed] = await h.service.mark_running(worker_id="w1", limit=1, lease_s=30)
            done = await h.service.complete(claimed, worker_id="w1", outputs=["first"])
            assert done is not None and done.status is JobStatus.SUCCEEDED
            assert await h.service.complete(claimed, worker_id="w1", outputs=["second"]) is None
            assert await h.service.fail(claimed, worker_id="w1", error=_error(), retry=False) is None
            assert await h.service.fail(claimed, worker_id="w1", error=_error(), retry=True) is None
            stored = await h.store.get(job.id)
            assert stored is not None
            assert (
                stored.status is JobStatus.SUCCEEDED and stored.outputs == ["first"] and stored.error is None
            )

    asyncio.run(body())


def test_late_complete_after_another_worker_took_over_is_refused(store_url: str) -> None:
    async def body() -> None:
        clock = Clock()
        async with harness(store_url, clock=clock) as h:
            job = await h.submit("echo", "x")
            [stale] = await h.service.mark_running(worker_id="w1", limit=1, lease_s=5)
            clock.advance(6)  # w1's lease expired: it is presumed dead
            [fresh] = await h.service.mark_running(worker_id="w2", limit=1, lease_s=5)
            assert fresh.id == job.id and fresh.attempts == 2 and fresh.lease_owner == "w2"
            # w1 wakes up and reports: refused, whatever it reports.
            assert await h.service.complete(stale, worker_id="w1", outputs=["stale"]) is None
            assert await h.service.fail(stale, worker_id="w1", error=_error(), retry=True) is None
            # Even a stale attempt number with the right worker id is refused.
            assert await h.service.complete(stale, worker_id="w2", outputs=["stale"]) is None
            stored = await h.store.get(job.id)
            assert stored is not None and stored.status is JobStatus.RUNNING and stored.lease_owner == "w2"
            done = await h.service.complete(fresh, worker_id="w2", outputs=["fresh"])
            assert done is not None and done.outputs == ["fresh"] and done.attempts == 2

    asyncio.run(body())


def test_late_complete_after_cancel_is_refused(store_url: str) -> None:
    async def body() -> None:
        clock = Clock()
        async with harness(store_url, clock=clock) as h:
            # Cancelled while running: the worker's result is discarded, the job ends cancelled.
            job = await h.submit("echo", "x")
            [claimed] = await h.service.mark_running(worker_id="w1", limit=1, lease_s=30)
            marked = await h.service.cancel(job.id, tenant=TENANT)
            assert marked.status is JobStatus.RUNNING and marked.cancel_requested
            ended = await h.service.complete(claimed, worker_id="w1", outputs=["late"])
            assert ended is None or ended.status is JobStatus.CANCELLED
            stored = await h.store.get(job.id)
            assert stored is not None and stored.status is JobStatus.CANCELLED and stored.outputs is None
            assert job_document(stored)["output"] is None
            # A second report after that is refused outright.
            assert await h.service.complete(claimed, worker_id="w1", outputs=["later"]) is None
            stored = await h.store.get(job.id)
            assert stored is not None and stored.status is JobStatus.CANCELLED and stored.outputs is None

            # Cancelled while its worker was presumed dead: the next claim settles it as cancelled and
            # the returning worker's result is refused.
            job2 = await h.submit("echo", "y")
            [claimed2] = await h.service.mark_running(worker_id="w1", limit=1, lease_s=5)
            await h.service.cancel(job2.id, tenant=TENANT)
            clock.advance(6)
            assert await h.service.mark_running(worker_id="w2", limit=5, lease_s=5) == []
            assert await h.status(job2.id) is JobStatus.CANCELLED
            assert await h.service.complete(claimed2, worker_id="w1", outputs=["late"]) is None
            stored2 = await h.store.get(job2.id)
            assert stored2 is not None and stored2.status is JobStatus.CANCELLED and stored2.outputs is None

    asyncio.run(body())


def _error() -> Any:
    from inferd.jobs.models import JobError

    return JobError("inference_error", "late report")


def test_the_job_a_finish_returns_is_the_stored_job(store_url: str) -> None:
    """The store does not read finished jobs back; the service's copy must equal the stored row."""

    async def body() -> None:
        async with harness(store_url) as h:
            done, failed, cancelled = [await h.submit("echo", i) for i in range(3)]
            claimed = {
                job.id: job for job in await h.service.mark_running(worker_id="w1", limit=3, lease_s=5)
            }
            await h.service.cancel(cancelled.id, tenant=TENANT)
            outcomes = [
                await h.service.run(claimed[done.id], worker_id="w1"),
                await h.service.fail(
                    claimed[failed.id], worker_id="w1", error=JobError("invalid_input", "bad"), retry=False
                ),
                await h.service.run(claimed[cancelled.id], worker_id="w1"),
            ]
            assert [job.status for job in outcomes if job is not None] == [
                JobStatus.SUCCEEDED,
                JobStatus.FAILED,
                JobStatus.CANCELLED,
            ]
            for job in outcomes:
                assert job is not None and job == await h.store.get(job.id)

    asyncio.run(body())
