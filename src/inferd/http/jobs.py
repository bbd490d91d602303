"""The job routes of the native API (scope ``jobs``); a thin adapter over JobService."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response

from inferd.core.errors import InferdError, InvalidInputError
from inferd.core.tenancy import Principal
from inferd.http.asgi import (
    Receive,
    RequestInfo,
    Scope,
    Send,
    header,
    read_body,
    request_info,
    send_error,
    send_response,
)
from inferd.http.predict import Gatekeeper, parse_inputs, parse_json_object, parse_parameters, parse_timeout
from inferd.jobs.models import JobStatus
from inferd.jobs.service import MAX_WAIT_S, JobService, job_document, request_fingerprint

_SUBMIT_FIELDS = frozenset({"input", "inputs", "max_attempts", "timeout_s", "parameters"})
MAX_IDEMPOTENCY_KEY = 200
MAX_ATTEMPTS_LIMIT = 20


def parse_job_request(
    data: dict[str, Any], *, max_inputs: int
) -> tuple[list[Any], bool, int | None, float | None]:
    inputs, batch = parse_inputs(data, batch=None, max_inputs=max_inputs, allowed=_SUBMIT_FIELDS)
    max_attempts = data.get("max_attempts")
    if max_attempts is not None and (
        isinstance(max_attempts, bool)
        or not isinstance(max_attempts, int)
        or not 1 <= max_attempts <= MAX_ATTEMPTS_LIMIT
    ):
        raise InvalidInputError(f'"max_attempts" must be an integer from 1 to {MAX_ATTEMPTS_LIMIT}')
    return inputs, batch, max_attempts, parse_timeout(data)


class JobSubmitHandler:
    """Job submission, served by the pure-ASGI fast path and by the documented FastAPI routes."""

    def __init__(
        self, *, service: JobService, gatekeeper: Gatekeeper, max_body_bytes: int, max_inputs: int
    ) -> None:
        self._service = service
        self._gatekeeper = gatekeeper
        self._max_body_bytes = max_body_bytes
        self._max_inputs = max_inputs

    async def __call__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        info: RequestInfo,
        name: str,
        version: str | None,
        _: bool,
    ) -> None:
        try:
            principal = self._gatekeeper.admit(scope["headers"], "jobs", info)
            raw_key = header(scope, b"idempotency-key")
            body = await read_body(scope, receive, self._max_body_bytes)
            key = raw_key.decode("latin-1") if raw_key is not None else None
            payload, location = await self.execute(principal, name, version, body, key, info)
        except InferdError as exc:
            await send_error(send, exc, info)
            return
        info.status = 202
        await send_response(send, 202, payload, info.request_id, [(b"location", location.encode())])

    async def execute(
        self,
        principal: Principal,
        name: str,
        version: str | None,
        body: bytes,
        idempotency_key: str | None,
        info: RequestInfo,
    ) -> tuple[bytes, str]:
        info.model = name
        if idempotency_key is not None and not 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
            raise InvalidInputError(f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters")
        data = parse_json_object(body, '{"input": ...} or {"inputs": [...]}')
        inputs, batch, max_attempts, timeout_s = parse_job_request(data, max_inputs=self._max_inputs)
        job, _ = await self._service.create_job(
            tenant=principal.tenant,
            model=name,
            version=version,
            inputs=inputs,
            batch=batch,
            max_attempts=max_attempts,
            timeout_s=timeout_s,
            idempotency_key=idempotency_key,
            fingerprint=request_fingerprint(name, version, data) if idempotency_key else None,
            parameters=parse_parameters(data),
        )
        info.version = job.version
        return orjson.dumps(job_document(job)), f"/v1/jobs/{job.id}"


def create_jobs_router(*, service: JobService, submitter: JobSubmitHandler, requires: Any) -> APIRouter:
    router = APIRouter(tags=["jobs"])
    jobs_scope = requires("jobs")

    async def submit(
        request: Request, principal: Principal, name: str, version: str | None, idempotency_key: str | None
    ) -> Response:
        info = request_info(request.scope)
        payload, location = await submitter.execute(
            principal, name, version, await request.body(), idempotency_key, info
        )
        return Response(
            payload, status_code=202, media_type="application/json", headers={"Location": location}
        )

    @router.post("/v1/models/{name}/jobs", status_code=202)
    async def submit_routed(
        request: Request,
        name: str,
        principal: Principal = jobs_scope,
        idempotency_key: Annotated[str | None, Header()] = None,
    ) -> Response:
        """Submit a durable job: `{"input": ...}` or `{"inputs": [...]}`, optional `max_attempts`, `timeout_s`."""
        return await submit(request, principal, name, None, idempotency_key)

    @router.post("/v1/models/{name}/versions/{version}/jobs", status_code=202)
    async def submit_pinned(
        request: Request,
        name: str,
        version: str,
        principal: Principal = jobs_scope,
        idempotency_key: Annotated[str | None, Header()] = None,
    ) -> Response:
        return await submit(request, principal, name, version, idempotency_key)

    @router.get("/v1/jobs/{job_id}")
    async def get_job(
        job_id: str,
        principal: Principal = jobs_scope,
        wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S, description="Seconds to hold until terminal.")] = 0,
    ) -> dict[str, Any]:
        return job_document(await service.get(job_id, tenant=principal.tenant, wait_s=wait))

    @router.get("/v1/jobs")
    async def list_jobs(
        principal: Principal = jobs_scope,
        status: JobStatus | None = None,
        model: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        jobs, next_cursor = await service.list_jobs(
            tenant=principal.tenant, status=status, model=model, limit=limit, cursor=cursor
        )
        return {"jobs": [job_document(job) for job in jobs], "next_cursor": next_cursor}

    @router.post("/v1/jobs/{job_id}/cancel")
    async def cancel_job(job_id: str, principal: Principal = jobs_scope) -> dict[str, Any]:
        return job_document(await service.cancel(job_id, tenant=principal.tenant))

    return router
