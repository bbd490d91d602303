"""The job routes of the native API (scope ``jobs``); a thin adapter over JobService."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from inferd.core.errors import InvalidInputError
from inferd.http.predict import parse_inputs, parse_json_object, parse_parameters, parse_timeout
from inferd.http.routes import Body, Call, Reply, Route
from inferd.http.schemas import JobDocument, JobList, JobListQuery, JobSubmitRequest, JobWaitQuery
from inferd.jobs.service import JobService, job_document, request_fingerprint

_SUBMIT_FIELDS = frozenset({"input", "inputs", "max_attempts", "timeout_s", "parameters"})
MAX_IDEMPOTENCY_KEY = 200
MAX_ATTEMPTS_LIMIT = 20
JOB_ERRORS = (401, 403, 404, 422, 429, 500, 503)  # 503: store_unavailable


@dataclass(slots=True)
class JobRequest:
    data: dict[str, Any]
    inputs: list[Any]
    batch: bool
    max_attempts: int | None
    timeout_s: float | None
    parameters: dict[str, Any] | None


def parse_job_request(data: dict[str, Any], *, max_inputs: int) -> JobRequest:
    inputs, batch = parse_inputs(data, batch=None, max_inputs=max_inputs, allowed=_SUBMIT_FIELDS)
    max_attempts = data.get("max_attempts")
    if max_attempts is not None and (
        isinstance(max_attempts, bool)
        or not isinstance(max_attempts, int)
        or not 1 <= max_attempts <= MAX_ATTEMPTS_LIMIT
    ):
        raise InvalidInputError(f'"max_attempts" must be an integer from 1 to {MAX_ATTEMPTS_LIMIT}')
    return JobRequest(data, inputs, batch, max_attempts, parse_timeout(data), parse_parameters(data))


class JobRoutes:
    def __init__(self, *, service: JobService, max_inputs: int) -> None:
        self._service = service
        self._max_inputs = max_inputs

    def parse_submit(self, body: bytes) -> JobRequest:
        data = parse_json_object(body, '{"input": ...} or {"inputs": [...]}')
        return parse_job_request(data, max_inputs=self._max_inputs)

    async def submit_job(self, call: Call) -> Reply:
        info = call.info
        name = info.model = call.params["name"]
        version = call.params.get("version")
        raw_key = call.header(b"idempotency-key")
        key = raw_key.decode("latin-1") if raw_key is not None else None
        if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
            raise InvalidInputError(f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters")
        request: JobRequest = await call.parsed_body()
        job, _ = await self._service.create_job(
            tenant=call.tenant,
            model=name,
            version=version,
            inputs=request.inputs,
            batch=request.batch,
            max_attempts=request.max_attempts,
            timeout_s=request.timeout_s,
            idempotency_key=key,
            fingerprint=request_fingerprint(name, version, request.data) if key else None,
            parameters=request.parameters,
        )
        info.version = job.version
        location = f"/v1/jobs/{job.id}".encode()
        return Reply(202, orjson.dumps(job_document(job)), [(b"location", location)])

    async def get_job(self, call: Call) -> Reply:
        query: JobWaitQuery = call.query
        job = await self._service.get(call.params["job_id"], tenant=call.tenant, wait_s=query.wait)
        return Reply(200, orjson.dumps(job_document(job)))

    async def list_jobs(self, call: Call) -> Reply:
        query: JobListQuery = call.query
        jobs, next_cursor = await self._service.list_jobs(
            tenant=call.tenant, status=query.status, model=query.model, limit=query.limit, cursor=query.cursor
        )
        body = {"jobs": [job_document(job) for job in jobs], "next_cursor": next_cursor}
        return Reply(200, orjson.dumps(body))

    async def cancel_job(self, call: Call) -> Reply:
        job = await self._service.cancel(call.params["job_id"], tenant=call.tenant)
        return Reply(200, orjson.dumps(job_document(job)))

    def routes(self) -> list[Route]:
        submit = Body(JobSubmitRequest, self.parse_submit)
        idempotency = {
            "Idempotency-Key": "The same key and body from the same tenant return the same job (1-200 chars)."
        }
        routes = [
            Route(
                "POST",
                f"{prefix}/jobs",
                self.submit_job,
                "jobs",
                f"Submit a durable job on {how}; 202 with Location: /v1/jobs/{{id}}",
                "jobs",
                body=submit,
                response=JobDocument,
                status=202,
                errors=(*JOB_ERRORS, 409, 413),
                headers=idempotency,
            )
            for prefix, how in (
                ("/v1/models/{name}", "the version routing chooses"),
                ("/v1/models/{name}/versions/{version}", "a pinned version"),
            )
        ]
        routes += [
            Route(
                "GET",
                "/v1/jobs/{job_id}",
                self.get_job,
                "jobs",
                "A job of this tenant; ?wait= holds the request until the job is terminal",
                "jobs",
                query=JobWaitQuery,
                response=JobDocument,
                errors=JOB_ERRORS,
            ),
            Route(
                "GET",
                "/v1/jobs",
                self.list_jobs,
                "jobs",
                "This tenant's jobs, newest first, keyset-paged",
                "jobs",
                query=JobListQuery,
                response=JobList,
                errors=JOB_ERRORS,
            ),
            Route(
                "POST",
                "/v1/jobs/{job_id}/cancel",
                self.cancel_job,
                "jobs",
                "Cancel a pending or running job; 409 for a finished one",
                "jobs",
                response=JobDocument,
                errors=(*JOB_ERRORS, 409),
            ),
        ]
        return routes
