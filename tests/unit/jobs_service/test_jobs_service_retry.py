"""Retries and backoff, cancellation, retention and the result-size bound (JobService)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from svc_helpers import TENANT, Clock, harness

from inferd.core.errors import ConflictError
from inferd.jobs.models import Job, JobError, JobStatus
from inferd.jobs.service import job_document


def _finished_count(h: Any, model: str, version: str, status: str) -> float:
    value = h.engine.metrics.registry.get_sample_value(
        "jobs_finished_total", {"model": model, "version": version, "status": status}
    )
    return value or 0.0


def _depth(h: Any, model: str, version: str = "1") -> float | None:
    value: float | None = h.engine.metrics.registry.get_sample_value(
        "job_queue_depth", {"model": model, "version": version}
    )
    return value


def test_flaky_job_succeeds_on_the_second_attempt(store_url: str, tmp_path: Path) -> None:
    async def body() -> None:
        async with harness(store_url, retry_base_s=0.01) as h:
            marker = tmp_path / "flaky-marker"
            job = await h.submit("flaky", {"marker": str(marker)})
            h.start_worker()
            done = await h.wait_terminal(job.id)
            assert done.status is JobStatus.SUCCEEDED, done
            assert done.attempts == 2
            assert done.outputs == [{"ok": True, "failures": 1}]
            assert done.error is None  # the first attempt's error is not reported on success
            assert marker.read_text() == "1"

    asyncio.run(body())


def test_inference_error_is_retried_up_to_max_attempts_then_failed_with_last_error(
    store_url: str, tmp_path: Path
) -> None:
    async def body() -> None:
        async with harness(store_url, retry_base_s=0.01) as h:
            marker = tmp_path / "always"
            job = await h.submit("flaky", {"marker": str(marker), "failures": 10}, max_attempts=3)
            h.start_worker()
            done = await h.wait_terminal(job.id)
            assert done.status is JobStatus.FAILED
            assert done.attempts == 3 and done.max_attempts == 3
            assert done.error is not None and done.error.code == "inference_error"
            assert "flaky failure 3 of 10" in done.error.message  # the last attempt's error
            assert marker.read_text() == "3"  # and no fourth attempt ran
            assert _finished_count(h, "flaky", "1", "failed") == 1

    asyncio.run(body())


def test_timeout_is_retried_up_to_max_attempts_then_failed(store_url: str) -> None:
    async def body() -> None:
        async with harness(store_url, retry_base_s=0.01) as h:
            job = await h.submit("slowjob", {"sleep_s": 0.4}, max_attempts=2, timeout_s=0.05)
            h.start_worker()
            done = await h.wait_terminal(job.id)
            assert done.status is JobStatus.FAILED
            assert done.attempts == 2
            assert done.error is not None and done.error.code == "timeout"
            doc = job_document(done)
            assert doc["error"] == {"code": "timeout", "message": done.error.message}
            assert doc["output"] is None

    asyncio.run(body())


@pytest.mark.parametrize(
    ("model", "item", "code"),
    [("strict", "not an integer", "invalid_input"), ("no-such-model", 1, "model_not_found")],
)
def test_invalid_input_and_model_not_found_are_not_retried(
    store_url: str, model: str, item: Any, code: str
) -> None:
    async def body() -> None:
        async with harness(store_url, retry_base_s=0.01) as h:
            # Submission validates, so such a job only exists when the model changed after submission
            # (or was removed): insert it into the store directly.
            job = Job(
                id=f"direct-{code}", tenant=TENANT, model=model, version="1", inputs=[item], batch=False
            )
            await h.store.insert(job)
            [claimed] = await h.service.mark_running(worker_id="w1", limit=1, lease_s=30)
            done = await h.service.run(claimed, worker_id="w1")
            assert done is not None and done.status is JobStatus.FAILED
            assert done.attempts == 1 and done.max_attempts == 3
            assert done.error is not None and done.error.code == code
            assert await h.service.mark_running(worker_id="w1", limit=1, lease_s=30) == []

    asyncio.run(body())


def test_backoff_delay_grows_with_each_attempt(store_url: str, tmp_path: Path) -> None:
    async def body() -> None:
        clock = Clock()
        async with harness(store_url, clock=clock, retry_base_s=10.0) as h:
            job = await h.submit("flaky", {"marker": str(tmp_path / "m"), "failures": 10}, max_attempts=4)
            delays: list[float] = []
            for attempt in (1, 2, 3):
                [claimed] = await h.service.mark_running(worker_id="w1", limit=1, lease_s=30)
                assert claimed.attempts == attempt
                failed_at = clock()
                requeued = await h.service.run(claimed, worker_id="w1")
                assert requeued is not None and requeued.status is JobStatus.PENDING
                assert requeued.error is not None and requeued.error.code == "inference_error"
                delays.append((requeued.run_after - failed_at).total_seconds())
                # Not runnable before its run_after ...
                clock.advance(delays[-1] - 0.5)
                assert await h.service.mark_running(worker_id="w1", limit=1, lease_s=30) == []
                # ... and runnable after it.
                clock.advance(1.0)
            # base * 2**(attempt-1), with +-20% jitter: 8..12, 16..24, 32..48.
            for delay, nominal in zip(delays, (10.0, 20.0, 40.0), strict=True):
                assert nominal * 0.8 - 0.01 <= delay <= nominal * 1.2 + 0.01, delays
            assert delays[0] < delays[1] < delays[2]
            [last] = await h.service.mark_running(worker_id="w1", limit=1, lease_s=30)
            assert last.attempts == 4
            done = await h.service.run(last, worker_id="w1")
            assert done is not None and done.status is JobStatus.FAILED and done.attempts == 4
            assert job.id == done.id

    asyncio.run(body())


def test_cancel_pending_running_and_terminal(store_url: str) -> None:
    async def body() -> None:
        async with harness(store_url) as h:
            pending = await h.submit("echo", "p")
            cancelled = await h.service.cancel(pending.id, tenant=TENANT)
            assert cancelled.status is JobStatus.CANCELLED and cancelled.finished_at is not None
            assert await h.service.mark_running(worker_id="w1", limit=5, lease_s=30) == []
            with pytest.raises(ConflictError):
                await h.service.cancel(pending.id, tenant=TENANT)

            running = await h.submit("echo", "r")
            [claimed] = await h.service.mark_running(worker_id="w1", limit=5, lease_s=30)
            marked = await h.service.cancel(running.id, tenant=TENANT)
            assert marked.status is JobStatus.RUNNING and marked.cancel_requested
            await h.service.run(claimed, worker_id="w1")
            final = await h.service.get(running.id, tenant=TENANT)
            assert final.status is JobStatus.CANCELLED and final.outputs is None and final.error is None
            assert job_document(final)["output"] is None
            with pytest.raises(ConflictError):
                await h.service.cancel(running.id, tenant=TENANT)

            done = await h.submit("echo", "d")
            [claimed] = await h.service.mark_running(worker_id="w1", limit=5, lease_s=30)
            await h.service.run(claimed, worker_id="w1")
            with pytest.raises(ConflictError):
                await h.service.cancel(done.id, tenant=TENANT)
            assert (await h.service.get(done.id, tenant=TENANT)).status is JobStatus.SUCCEEDED
            assert _finished_count(h, "echo", "2", "cancelled") == 2

    asyncio.run(body())


def test_cancel_while_a_failing_attempt_runs_ends_cancelled_not_retried(
    store_url: str, tmp_path: Path
) -> None:
    async def body() -> None:
        async with harness(store_url, retry_base_s=0.01) as h:
            job = await h.submit("flaky", {"marker": str(tmp_path / "m")})
            await h.service.refresh_queue_depth()
            assert _depth(h, "flaky") == 1
            [claimed] = await h.service.mark_running(worker_id="w1", limit=1, lease_s=30)
            assert _depth(h, "flaky") == 0
            await h.service.cancel(job.id, tenant=TENANT)
            # The attempt fails with a retryable error, but the job was cancelled meanwhile.
            ended = await h.service.run(claimed, worker_id="w1")
            assert ended is not None and ended.status is JobStatus.CANCELLED
            stored = await h.store.get(job.id)
            assert stored is not None and stored.status is JobStatus.CANCELLED
            assert await h.service.mark_running(worker_id="w1", limit=1, lease_s=30) == []
            # Bookkeeping follows: no pending job was added, one job finished as cancelled, and a
            # long-poll on it is answered.
            assert _depth(h, "flaky") == 0
            assert _finished_count(h, "flaky", "1", "cancelled") == 1

    asyncio.run(body())


def test_retention_deletes_only_finished_jobs_older_than_the_ttl(store_url: str) -> None:
    async def body() -> None:
        clock = Clock()
        async with harness(store_url, clock=clock) as h:
            ttl = 3600.0
            old_done = await h.submit("echo", "old")
            [claimed] = await h.service.mark_running(worker_id="w1", limit=1, lease_s=1e6)
            await h.service.run(claimed, worker_id="w1")
            old_cancelled = await h.submit("echo", "old-cancelled")
            await h.service.cancel(old_cancelled.id, tenant=TENANT)
            old_pending = await h.submit("echo", "old-pending")
            old_running = await h.submit("strict", 1)
            claimed_running = await h.service.mark_running(worker_id="w1", limit=5, lease_s=1e6)
            assert {j.id for j in claimed_running} == {old_pending.id, old_running.id}
            await h.service.cancel(old_pending.id, tenant=TENANT)  # running with cancel requested

            clock.advance(ttl - 60)
            recent_done = await h.submit("strict", 2)
            [claimed_recent] = await h.service.mark_running(worker_id="w2", limit=1, lease_s=1e6)
            assert claimed_recent.id == recent_done.id
            await h.service.run(claimed_recent, worker_id="w2")
            still_pending = await h.submit("echo", "still-pending")  # older than the ttl at the end

            assert await h.service.delete_expired(ttl) == 0  # nothing is older than the ttl yet
            clock.advance(120)
            assert await h.service.delete_expired(ttl) == 2
            assert await h.store.get(old_done.id) is None
            assert await h.store.get(old_cancelled.id) is None
            for kept in (old_pending, old_running, still_pending, recent_done):
                assert await h.store.get(kept.id) is not None, kept
            assert await h.status(still_pending.id) is JobStatus.PENDING
            assert await h.status(old_running.id) is JobStatus.RUNNING
            clock.advance(ttl)
            assert await h.service.delete_expired(ttl) == 1  # recent_done aged out too
            assert await h.store.get(old_running.id) is not None

    asyncio.run(body())


def test_result_over_the_size_limit_fails_the_job_with_a_clear_message(store_url: str) -> None:
    async def body() -> None:
        async with harness(store_url, max_result_bytes=1000) as h:
            small = await h.submit("big", {"n": 500})
            big = await h.submit("big", {"n": 5000})
            h.start_worker()
            ok = await h.wait_terminal(small.id)
            assert ok.status is JobStatus.SUCCEEDED and ok.outputs == ["x" * 500]
            failed = await h.wait_terminal(big.id)
            assert failed.status is JobStatus.FAILED
            assert failed.attempts == 1  # deterministic: not retried
            assert failed.outputs is None
            assert failed.error is not None and failed.error.code == "inference_error"
            assert "1000-byte limit" in failed.error.message
            assert "INFERD_JOB_MAX_RESULT_BYTES" in failed.error.message

    asyncio.run(body())


def test_queue_depth_gauge_follows_the_store(store_url: str) -> None:
    async def body() -> None:
        async with harness(store_url) as h:
            for i in range(3):
                await h.submit("strict", i)
            assert _depth(h, "strict") == 3
            await h.service.refresh_queue_depth()
            assert _depth(h, "strict") == 3
            await h.service.mark_running(worker_id="w1", limit=2, lease_s=30)
            assert _depth(h, "strict") == 1
            # Another process's submission is seen at the next refresh.
            foreign = Job(id="foreign", tenant=TENANT, model="strict", version="1", inputs=[5], batch=False)
            await h.store.insert(foreign)
            await h.service.refresh_queue_depth()
            assert _depth(h, "strict") == 2
            await h.service.mark_running(worker_id="w1", limit=10, lease_s=30)
            await h.service.refresh_queue_depth()
            assert _depth(h, "strict") == 0

    asyncio.run(body())


def test_fail_without_retry_records_the_error(store_url: str) -> None:
    async def body() -> None:
        async with harness(store_url) as h:
            job = await h.submit("echo", "x")
            [claimed] = await h.service.mark_running(worker_id="w1", limit=1, lease_s=30)
            done = await h.service.fail(
                claimed, worker_id="w1", error=JobError("invalid_input", "bad"), retry=False
            )
            assert done is not None and done.status is JobStatus.FAILED and done.attempts == 1
            assert job_document(done)["error"] == {"code": "invalid_input", "message": "bad"}
            assert job.id == done.id

    asyncio.run(body())
