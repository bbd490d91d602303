"""Coalesced store writes: concurrent submissions (insert_many) and finishes (finish_many) share one
statement, and one item the store refuses fails alone, not the others written with it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from svc_helpers import TENANT, harness, postgres_schema

from inferd.core.errors import InvalidInputError
from inferd.jobs.models import Job, JobStatus
from inferd.jobs.store import JobStore


class Recorder:
    """Wraps a store's batched write: records batch sizes, refuses (all-or-nothing) batches holding
    an item ``poisoned`` says is bad."""

    def __init__(self, method: str, poisoned: Any = None) -> None:
        self.method = method
        self.poisoned = poisoned
        self.sizes: list[int] = []

    def __call__(self, store: JobStore) -> None:
        original = getattr(store, self.method)

        async def wrapped(items: list[Any], **kwargs: Any) -> Any:
            self.sizes.append(len(items))
            if self.poisoned is not None and any(self.poisoned(item) for item in items):
                raise InvalidInputError("the store refuses this item's data")
            return await original(items, **kwargs)

        setattr(store, self.method, wrapped)


async def _outcome(awaitable: Any) -> Any:
    try:
        return await awaitable
    except Exception as exc:
        return exc


def test_concurrent_submissions_are_all_stored_in_shared_writes(store_url: str) -> None:
    async def body() -> None:
        recorder = Recorder("insert_many")
        async with harness(store_url, patch_store=recorder) as h:
            jobs = await asyncio.gather(*(h.submit("strict", i) for i in range(40)))
            assert len({job.id for job in jobs}) == 40
            assert sum(recorder.sizes) == 40
            assert max(recorder.sizes) > 1, recorder.sizes  # concurrent submissions were merged
            assert await h.store.pending_counts() == {("strict", "1"): 40}
            for i, job in enumerate(jobs):
                stored = await h.store.get(job.id, tenant=TENANT)
                assert stored is not None and stored.inputs == [i] and stored.status is JobStatus.PENDING

    asyncio.run(body())


def test_a_submission_the_store_refuses_fails_alone_not_its_batch(store_url: str) -> None:
    async def body() -> None:
        recorder = Recorder("insert_many", poisoned=lambda job: job.inputs == [13])
        async with harness(store_url, patch_store=recorder) as h:
            outcomes = await asyncio.gather(*(_outcome(h.submit("strict", i)) for i in range(20)))
            assert max(recorder.sizes) > 1, recorder.sizes  # the refused job did share a write
            assert isinstance(outcomes[13], InvalidInputError)
            assert all(isinstance(job, Job) for i, job in enumerate(outcomes) if i != 13), outcomes
            assert await h.store.pending_counts() == {("strict", "1"): 19}
            jobs, _ = await h.service.list_jobs(
                tenant=TENANT, status=None, model=None, limit=100, cursor=None
            )
            assert sorted(job.inputs[0] for job in jobs) == [i for i in range(20) if i != 13]

    asyncio.run(body())


def test_a_finish_the_store_refuses_fails_alone_not_its_batch(store_url: str) -> None:
    async def body() -> None:
        recorder = Recorder("finish_many", poisoned=lambda request: request.outputs == ["poison"])
        async with harness(store_url, patch_store=recorder) as h:
            for i in range(8):
                await h.submit("strict", i)
            claimed = await h.service.mark_running(worker_id="w1", limit=10, lease_s=30)
            assert len(claimed) == 8
            outputs = [["poison"] if i == 3 else [i] for i in range(8)]
            outcomes = await asyncio.gather(
                *(
                    _outcome(h.service.complete(job, worker_id="w1", outputs=out))
                    for job, out in zip(claimed, outputs, strict=True)
                )
            )
            assert max(recorder.sizes) > 1, recorder.sizes
            for i, (job, outcome) in enumerate(zip(claimed, outcomes, strict=True)):
                stored = await h.store.get(job.id)
                assert stored is not None
                if i == 3:
                    # An output the store refuses fails its own job at once (no retry: it would be
                    # refused again), with a message that says why.
                    assert isinstance(outcome, Job) and outcome.status is JobStatus.FAILED, outcome
                    assert stored.status is JobStatus.FAILED and stored.error is not None
                    assert stored.error.code == "inference_error"
                    assert "cannot be stored" in stored.error.message
                else:
                    assert isinstance(outcome, Job) and outcome.status is JobStatus.SUCCEEDED, outcome
                    assert stored.status is JobStatus.SUCCEEDED and stored.outputs == outputs[i]

    asyncio.run(body())


@pytest.mark.postgres
def test_nul_character_on_postgres_fails_only_its_own_submission(postgres_base_url: str) -> None:
    """PostgreSQL's jsonb cannot hold U+0000: such a submission fails, its neighbours must not."""

    async def body(url: str) -> None:
        async with harness(url) as h:
            items = ["a", "b\u0000c", "d", "e"]
            outcomes = await asyncio.gather(*(_outcome(h.submit("echo", item)) for item in items))
            assert isinstance(outcomes[1], Exception)
            assert all(isinstance(outcomes[i], Job) for i in (0, 2, 3)), outcomes
            jobs, _ = await h.service.list_jobs(tenant=TENANT, status=None, model=None, limit=10, cursor=None)
            assert sorted(job.inputs[0] for job in jobs) == ["a", "d", "e"]

    with postgres_schema(postgres_base_url) as url:
        asyncio.run(body(url))
