"""JobService: the only writer of job state.

Every transition is a conditional update in the store (see store.py), so a late result for a job that
was cancelled, re-leased to another worker, or already finished is refused instead of overwriting it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

import orjson

from inferd.core.dataplane import DataPlane
from inferd.core.errors import (
    ConflictError,
    ErrorCode,
    InferdError,
    InferenceError,
    InvalidInputError,
    JobNotFoundError,
    ModelNotFoundError,
    quote,
)
from inferd.core.tenancy import EQUAL_WEIGHTS, TenantWeights
from inferd.jobs.coalescer import Coalescer
from inferd.jobs.models import Job, JobError, JobStatus, utcnow, wire_time
from inferd.jobs.repository_sync import RepositorySync
from inferd.jobs.store import Finished, FinishRequest, InsertResult, JobStore
from inferd.metrics import InferdMetrics

logger = logging.getLogger("inferd.jobs")

RETRYABLE = frozenset({ErrorCode.TIMEOUT, ErrorCode.INFERENCE_ERROR, ErrorCode.OVERLOADED})
MAX_WAIT_S = 60.0


def request_fingerprint(model: str, version: str | None, body: Any) -> str:
    """What makes two submissions 'the same' for an idempotency key."""
    canonical = orjson.dumps({"model": model, "version": version, "body": body}, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


@dataclass(slots=True)
class JobSubmission:
    """One job as a client asked for it (a line of a bulk submission, or a single submission)."""

    inputs: list[Any]
    batch: bool
    max_attempts: int | None = None
    timeout_s: float | None = None
    parameters: dict[str, Any] | None = None
    priority: int = 0
    idempotency_key: str | None = None
    fingerprint: str | None = None


class JobTracer(Protocol):
    """Carries a trace from the request that submits a job to the worker that runs it (inferd.tracing)."""

    def current_traceparent(self) -> str | None: ...

    def job_span(
        self,
        *,
        job_id: str,
        model: str,
        version: str,
        attempt: int,
        traceparent: str | None,
        queued_since: datetime | None,
    ) -> AbstractContextManager[Any]: ...


class JobService:
    def __init__(
        self,
        *,
        store: JobStore,
        dataplane: DataPlane,
        metrics: InferdMetrics,
        default_max_attempts: int = 3,
        retry_base_s: float = 1.0,
        max_result_bytes: int = 10 * 1024 * 1024,
        clock: Callable[[], datetime] = utcnow,
        repository: RepositorySync | None = None,
        tracer: JobTracer | None = None,
        tenant_weights: TenantWeights = EQUAL_WEIGHTS,
    ) -> None:
        self.store = store
        self._tenant_weights = tenant_weights
        self.dataplane = dataplane
        self._tracer = tracer
        self._metrics = metrics
        self._default_max_attempts = default_max_attempts
        self._retry_base_s = retry_base_s
        self._max_result_bytes = max_result_bytes
        self._clock = clock
        self._repository = repository
        self._finished = asyncio.Event()  # pulsed when this process finishes a job: wakes long-polls early
        self._depth: dict[tuple[str, str], int] = {}  # mirrors job_queue_depth, refreshed from the store
        self._inserts: Coalescer[Job, InsertResult] = Coalescer(lambda jobs: self.store.insert_many(jobs))
        self._finishes: Coalescer[FinishRequest, Finished | None] = Coalescer(
            lambda requests: self.store.finish_many(requests, now=self._clock())
        )

    # -- clients ---------------------------------------------------------------------------------

    async def create_job(
        self,
        *,
        tenant: str,
        model: str,
        version: str | None,
        inputs: Sequence[Any],
        batch: bool,
        max_attempts: int | None = None,
        timeout_s: float | None = None,
        idempotency_key: str | None = None,
        fingerprint: str | None = None,
        parameters: dict[str, Any] | None = None,
        priority: int = 0,
    ) -> tuple[Job, bool]:
        """Validate the input now (invalid jobs are never queued), resolve the version through routing,
        and store a pending job. Returns (job, created)."""
        target = await self.dataplane.check_inputs(
            tenant=tenant, model=model, version=version, inputs=inputs, indexed=batch, parameters=parameters
        )
        now = self._clock()
        job = Job(
            id=str(uuid.uuid4()),
            tenant=tenant,
            model=target.name,
            version=target.version,
            inputs=list(inputs),
            batch=batch,
            max_attempts=max_attempts or self._default_max_attempts,
            timeout_s=timeout_s,
            created_at=now,
            run_after=now,
            idempotency_key=idempotency_key,
            request_hash=fingerprint,
            parameters=parameters or None,
            priority=priority,
            trace_context=self._tracer.current_traceparent() if self._tracer is not None else None,
        )
        try:
            if idempotency_key is None:
                result = await self._inserts.submit(job)
            else:
                result = await self.store.insert(job)
        except InferdError:
            raise
        except Exception as exc:  # unreachable, locked, ...: a clear 500, the details in the log
            logger.exception("storing a job for model %s failed", job.model)
            raise InferenceError(f"the job could not be stored ({type(exc).__name__}); retry later") from exc
        if not result.created:
            self._check_same_request(result.job, fingerprint)
            return result.job, False
        # The seed's bookkeeping; the periodic refresh from the store keeps it true across processes.
        self._adjust_depth(job.model, job.version, +1)
        return result.job, True

    async def create_jobs(
        self,
        *,
        tenant: str,
        model: str,
        version: str | None,
        submissions: Sequence[JobSubmission | InferdError],
    ) -> list[Job | InferdError]:
        """Bulk submission: validate and route each line alone, store the valid ones together, and
        answer one outcome per line in order (an error stays with its line). A line whose
        idempotency key was used before answers the job it made. An unknown model or version is the
        whole request's error (ModelNotFoundError), not each line's."""
        outcomes: list[Job | InferdError] = []
        pending: list[tuple[int, Job, str | None]] = []
        now = self._clock()
        traceparent = self._tracer.current_traceparent() if self._tracer is not None else None
        for submission in submissions:
            if isinstance(submission, InferdError):
                outcomes.append(submission)
                continue
            try:
                target = await self.dataplane.check_inputs(
                    tenant=tenant,
                    model=model,
                    version=version,
                    inputs=submission.inputs,
                    indexed=submission.batch,
                    parameters=submission.parameters,
                )
            except ModelNotFoundError:
                raise  # the model is the request's (its path), so no line could succeed: a 404 for all
            except InferdError as exc:
                outcomes.append(exc)
                continue
            job = Job(
                id=str(uuid.uuid4()),
                tenant=tenant,
                model=target.name,
                version=target.version,
                inputs=list(submission.inputs),
                batch=submission.batch,
                max_attempts=submission.max_attempts or self._default_max_attempts,
                timeout_s=submission.timeout_s,
                created_at=now,
                run_after=now,
                idempotency_key=submission.idempotency_key,
                request_hash=submission.fingerprint,
                parameters=submission.parameters or None,
                priority=submission.priority,
                trace_context=traceparent,
            )
            pending.append((len(outcomes), job, submission.fingerprint))
            outcomes.append(job)
        if not pending:
            return outcomes
        jobs = [job for _, job, _ in pending]
        try:
            results: list[InsertResult | InferdError] = list(await self.store.insert_many(jobs))
        except InvalidInputError:
            # A value this database cannot hold (e.g. U+0000 on PostgreSQL) in some line: store the
            # lines one by one so only the bad one fails.
            results = [await self._insert_alone(job) for job in jobs]
        except InferdError:
            raise
        except Exception as exc:  # unreachable, locked, ...: a clear 500, the details in the log
            logger.exception("storing %d jobs for model %s failed", len(jobs), model)
            raise InferenceError(f"the jobs could not be stored ({type(exc).__name__}); retry later") from exc
        for (position, _, fingerprint), result in zip(pending, results, strict=True):
            if isinstance(result, InferdError):
                outcomes[position] = result
            elif not result.created:
                try:
                    self._check_same_request(result.job, fingerprint)
                    outcomes[position] = result.job
                except ConflictError as exc:
                    outcomes[position] = exc
            else:
                self._adjust_depth(result.job.model, result.job.version, +1)
        return outcomes

    async def _insert_alone(self, job: Job) -> InsertResult | InferdError:
        try:
            return (await self.store.insert_many([job]))[0]
        except InferdError as exc:
            return exc

    @staticmethod
    def _check_same_request(job: Job, fingerprint: str | None) -> None:
        if job.request_hash != fingerprint:
            raise ConflictError(
                "this Idempotency-Key was already used with a different request body; use a new key"
            )

    async def get(self, job_id: str, *, tenant: str | None, wait_s: float = 0.0) -> Job:
        """The tenant's job (``tenant`` None: any tenant's, for admin keys); with ``wait_s``, hold
        until it is terminal or the wait ends."""
        deadline = asyncio.get_running_loop().time() + min(max(wait_s, 0.0), MAX_WAIT_S)
        interval = 0.02
        while True:
            job = await self.store.get(job_id, tenant=tenant)
            if job is None:
                raise JobNotFoundError(f"no job {quote(job_id)} for this tenant")
            remaining = deadline - asyncio.get_running_loop().time()
            if job.status.terminal or remaining <= 0:
                return job
            # Jobs finished by this process wake us at once; others are seen by polling.
            try:
                await asyncio.wait_for(self._finished.wait(), timeout=min(interval, remaining))
            except TimeoutError:
                pass
            interval = min(interval * 2, 0.25)

    async def list_jobs(
        self, *, tenant: str, status: JobStatus | None, model: str | None, limit: int, cursor: str | None
    ) -> tuple[list[Job], str | None]:
        return await self.store.list_jobs(
            tenant=tenant, status=status, model=model, limit=limit, cursor=cursor
        )

    async def cancel(self, job_id: str, *, tenant: str | None) -> Job:
        result = await self.store.cancel(job_id, tenant=tenant, now=self._clock())
        if result.job is None:
            raise JobNotFoundError(f"no job {quote(job_id)} for this tenant")
        if result.outcome == "terminal":
            raise ConflictError(
                f"job {job_id} is already {result.job.status.value}; only pending or running jobs can be cancelled"
            )
        if result.outcome == "cancelled":
            self._adjust_depth(result.job.model, result.job.version, -1)
            self._finished_job(result.job)
        return result.job

    # -- workers ---------------------------------------------------------------------------------

    async def mark_running(self, *, worker_id: str, limit: int, lease_s: float) -> list[Job]:
        """Claim up to ``limit`` runnable jobs for this worker (each claim is a lease), shared between
        tenants by their weights."""
        now = self._clock()
        jobs = await self.store.claim(
            worker_id=worker_id, limit=limit, lease_s=lease_s, now=now, weights=self._tenant_weights
        )
        for job in jobs:
            self._adjust_depth(job.model, job.version, -1)
            waited_since = job.run_after if job.attempts > 1 else job.created_at
            self._metrics.job_queue_wait.labels(job.model, job.version).observe(
                max(0.0, (now - waited_since).total_seconds())
            )
        return jobs

    async def renew(self, job_ids: list[str], *, worker_id: str, lease_s: float) -> int:
        if not job_ids:
            return 0
        return await self.store.renew_leases(job_ids, worker_id=worker_id, lease_s=lease_s, now=self._clock())

    async def run(
        self, job: Job, *, worker_id: str, executed: Callable[[], None] | None = None
    ) -> Job | None:
        """Execute one attempt through the data plane and record the outcome (in a span of the submitting
        request's trace when tracing is on). ``executed`` is called once the model is done with the job,
        before the outcome is written: the worker's slot is free from then on."""
        if self._tracer is None:
            return await self._run(job, worker_id=worker_id, executed=executed)
        with self._tracer.job_span(
            job_id=job.id,
            model=job.model,
            version=job.version,
            attempt=job.attempts,
            traceparent=job.trace_context,
            queued_since=job.run_after,
        ):
            return await self._run(job, worker_id=worker_id, executed=executed)

    async def _run(self, job: Job, *, worker_id: str, executed: Callable[[], None] | None) -> Job | None:
        if self._repository is not None and not self._repository.knows(job.model, job.version):
            # Submitted through a process that reloaded before this one: catch up instead of failing.
            await self._repository.catch_up()
        try:
            try:
                prediction = await self.dataplane.infer(
                    tenant=job.tenant,
                    model=job.model,
                    version=job.version,
                    inputs=job.inputs,
                    indexed=job.batch,
                    timeout_s=job.timeout_s,
                    parameters=job.parameters,
                )
            finally:
                if executed is not None:
                    executed()
            encoded = orjson.dumps(prediction.outputs, option=orjson.OPT_SERIALIZE_NUMPY)
            size = len(encoded)
            if size > self._max_result_bytes:
                error = JobError(
                    "inference_error",
                    f"the result is {size} bytes, over the {self._max_result_bytes}-byte limit "
                    "(INFERD_JOB_MAX_RESULT_BYTES); split the inputs into smaller jobs",
                )
                return await self.fail(job, worker_id=worker_id, error=error, retry=False)
            outputs = orjson.loads(encoded)  # plain JSON values (numpy ones converted) for the store
        except InferdError as exc:
            message = exc.for_client(job.id, what="job")
            return await self.fail(
                job, worker_id=worker_id, error=JobError(exc.code, message), retry=exc.code in RETRYABLE
            )
        except TypeError as exc:  # outputs orjson cannot encode
            error = JobError(ErrorCode.INFERENCE_ERROR, f"the model's output is not JSON-serializable: {exc}")
            return await self.fail(job, worker_id=worker_id, error=error, retry=False)
        return await self.complete(job, worker_id=worker_id, outputs=outputs)

    async def complete(self, job: Job, *, worker_id: str, outputs: list[Any]) -> Job | None:
        request = FinishRequest(job.id, worker_id, job.attempts, JobStatus.SUCCEEDED, outputs, None)
        try:
            done = await self._finishes.submit(request)
        except InvalidInputError as exc:  # the store refuses this output (e.g. U+0000 on PostgreSQL)
            error = JobError(ErrorCode.INFERENCE_ERROR, f"the model's output cannot be stored: {exc.message}")
            return await self.fail(job, worker_id=worker_id, error=error, retry=False)
        return self._recorded(job, _finished_job(job, request, done))

    async def fail(self, job: Job, *, worker_id: str, error: JobError, retry: bool) -> Job | None:
        if retry and job.attempts < job.max_attempts:
            delay = self._retry_base_s * 2 ** (job.attempts - 1)
            delay *= random.uniform(0.8, 1.2)  # spread retries of jobs that failed together
            run_after = self._clock() + timedelta(seconds=delay)
            requeued = await self.store.retry_later(
                job.id, worker_id=worker_id, attempt=job.attempts, error=error, run_after=run_after
            )
            if requeued is not None and requeued.status.terminal:  # cancelled while it ran: not retried
                return self._recorded(job, requeued)
            if requeued is not None:
                self._adjust_depth(job.model, job.version, +1)
                logger.info(
                    "job %s attempt %d failed (%s); retrying in %.1fs",
                    job.id,
                    job.attempts,
                    error.code,
                    delay,
                )
                return requeued
            return self._recorded(job, None)
        request = FinishRequest(job.id, worker_id, job.attempts, JobStatus.FAILED, None, error)
        return self._recorded(job, _finished_job(job, request, await self._finishes.submit(request)))

    def _recorded(self, job: Job, done: Job | None) -> Job | None:
        if done is None:
            # Cancelled, re-leased after our lease expired, or finished elsewhere: our result is discarded.
            logger.warning(
                "job %s attempt %d: result discarded (job no longer held by this worker)",
                job.id,
                job.attempts,
            )
            return None
        self._finished_job(done)
        return done

    def _finished_job(self, job: Job) -> None:
        if job.status.terminal:
            self._metrics.jobs_finished.labels(job.model, job.version, job.status.value).inc()
        self._finished.set()
        self._finished = asyncio.Event()

    async def release(self, job_ids: list[str], *, worker_id: str) -> int:
        return await self.store.release(job_ids, worker_id=worker_id) if job_ids else 0

    # -- housekeeping ----------------------------------------------------------------------------

    def _adjust_depth(self, model: str, version: str, delta: int) -> None:
        """The seed's bookkeeping between two refreshes. Never below zero: a job taken over from a dead
        worker was running, not pending, and the store cannot tell the two apart in one claim."""
        key = (model, version)
        value = max(0, self._depth.get(key, 0) + delta)
        self._depth[key] = value
        self._metrics.job_queue_depth.labels(model, version).set(value)

    async def refresh_queue_depth(self) -> None:
        """Set job_queue_depth from the store: the truth across processes, restarts and crashes."""
        counts = await self.store.pending_counts()
        gauge = self._metrics.job_queue_depth
        # Every loaded version has a series, at 0 while nothing waits: an alert or a KEDA trigger on
        # job_queue_depth sees "empty", not "absent".
        loaded = set(self.dataplane.loaded_versions())
        for key in {*counts, *self._depth, *loaded}:
            self._depth[key] = counts.get(key, 0)
            gauge.labels(*key).set(self._depth[key])

    async def delete_expired(self, ttl_s: float) -> int:
        return await self.store.delete_finished_before(self._clock() - timedelta(seconds=ttl_s))


def _finished_job(job: Job, request: FinishRequest, done: Finished | None) -> Job | None:
    """The job as ``finish_many`` left it in the store: the claimed job, the outcome written (none
    when its cancellation was requested meanwhile), its lease gone."""
    if done is None:
        return None
    discarded = done.status is JobStatus.CANCELLED
    return replace(
        job,
        status=done.status,
        finished_at=done.finished_at,
        outputs=None if discarded else request.outputs,
        error=None if discarded else request.error,
        cancel_requested=job.cancel_requested or discarded,
        lease_owner=None,
        lease_expires_at=None,
    )


def job_document(job: Job) -> dict[str, Any]:
    """The job object of the API."""
    document: dict[str, Any] = {
        "id": job.id,
        "status": job.status.value,
        "model": job.model,
        "version": job.version,
        "created_at": wire_time(job.created_at),
        "started_at": wire_time(job.started_at),
        "finished_at": wire_time(job.finished_at),
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "priority": job.priority,
    }
    if job.batch:
        document["outputs"] = job.outputs
    else:
        document["output"] = job.outputs[0] if job.outputs else None
    document["error"] = {"code": job.error.code, "message": job.error.message} if job.error else None
    return document
