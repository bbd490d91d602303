"""The job routes of the native API (scope ``jobs``); a thin adapter over JobService."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from inferd.core import json_limits
from inferd.core.errors import InferdError, InvalidInputError
from inferd.core.tenancy import KeyScope
from inferd.http.predict import parse_inputs, parse_json_object, parse_parameters, parse_timeout
from inferd.http.routes import Body, Call, HeaderParam, Reply, Route
from inferd.http.schemas import (
    JobBulkLine,
    JobDocument,
    JobList,
    JobListQuery,
    JobSubmitRequest,
    JobWaitQuery,
)
from inferd.http.wire import BodyLimit
from inferd.jobs.migrations import PRIORITY_MAX, PRIORITY_MIN
from inferd.jobs.models import Job
from inferd.jobs.service import JobService, JobSubmission, job_document, request_fingerprint

_SUBMIT_FIELDS = frozenset({"input", "inputs", "max_attempts", "timeout_s", "parameters", "priority"})
_BULK_LINE_FIELDS = _SUBMIT_FIELDS | {"idempotency_key"}
_SUBMIT_EXAMPLE = '{"input": ...} or {"inputs": [...]}'
MAX_IDEMPOTENCY_KEY = 200
MAX_ATTEMPTS_LIMIT = 20
MAX_BULK_JOBS = 10_000
MAX_BULK_BYTES = 16 * 1024 * 1024
_BULK_LIMIT = BodyLimit(
    MAX_BULK_BYTES, f"split the lines over several requests (at most {MAX_BULK_JOBS} each)"
)
BULK_MEDIA_TYPE = "application/x-ndjson"
_JSON_WHITESPACE = b" \t\r\n"
JOB_ERRORS = (401, 403, 404, 422, 429, 500, 503)  # 503: store_unavailable


@dataclass(slots=True)
class JobRequest:
    data: dict[str, Any]
    inputs: list[Any]
    batch: bool
    max_attempts: int | None
    timeout_s: float | None
    parameters: dict[str, Any] | None
    priority: int


def _int_field(data: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = data.get(name)
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high
    ):
        raise InvalidInputError(f'"{name}" must be an integer from {low} to {high}')
    return value


def check_idempotency_key(key: Any) -> None:
    if key is not None and (not isinstance(key, str) or not 0 < len(key) <= MAX_IDEMPOTENCY_KEY):
        raise InvalidInputError(
            f"an idempotency key must be a string of 1 to {MAX_IDEMPOTENCY_KEY} characters"
        )


def parse_job_request(
    data: dict[str, Any], *, max_inputs: int, allowed: frozenset[str] = _SUBMIT_FIELDS
) -> JobRequest:
    inputs, batch = parse_inputs(data, batch=None, max_inputs=max_inputs, allowed=allowed)
    return JobRequest(
        data,
        inputs,
        batch,
        _int_field(data, "max_attempts", 1, MAX_ATTEMPTS_LIMIT),
        parse_timeout(data),
        parse_parameters(data),
        _int_field(data, "priority", PRIORITY_MIN, PRIORITY_MAX) or 0,
    )


def _owner(call: Call) -> str | None:
    """Whose job a key may read or cancel by id: its tenant's, or for an admin key anyone's (None).
    Listing stays per tenant for every key."""
    principal = call.principal
    assert principal is not None
    return None if KeyScope.ADMIN in principal.scopes else principal.tenant


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
        check_idempotency_key(key)
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
            priority=request.priority,
        )
        info.version = job.version
        location = f"/v1/jobs/{job.id}".encode()
        return Reply(202, orjson.dumps(job_document(job)), [(b"location", location)])

    def _bulk_line(
        self, line: bytes, number: int, name: str, version: str | None, key: str | None
    ) -> JobSubmission:
        data = parse_json_object(line, _SUBMIT_EXAMPLE)
        request = parse_job_request(data, max_inputs=self._max_inputs, allowed=_BULK_LINE_FIELDS)
        return self._bulk_submission(data, request, number, name, version, key)

    def _numbered_bulk_line(
        self, line: bytes, number: int, name: str, version: str | None, key: str | None
    ) -> JobSubmission:
        """A line of a JSON Lines body; what is wrong with it is its own error, naming its line."""
        try:
            data = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise json_limits.not_utf8(line, f"line {number}", example=_SUBMIT_EXAMPLE) or InvalidInputError(
                f"line {number} is not valid JSON ({exc.msg} at column {exc.colno}); send {_SUBMIT_EXAMPLE}"
            ) from None
        if not isinstance(data, dict):
            raise InvalidInputError(f"line {number} must be a JSON object like {_SUBMIT_EXAMPLE}")
        try:
            request = parse_job_request(data, max_inputs=self._max_inputs, allowed=_BULK_LINE_FIELDS)
            return self._bulk_submission(data, request, number, name, version, key)
        except InvalidInputError as exc:
            raise InvalidInputError(f"line {number}: {exc.message}") from None

    def _bulk_submission(
        self,
        data: dict[str, Any],
        request: JobRequest,
        number: int,
        name: str,
        version: str | None,
        key: str | None,
    ) -> JobSubmission:
        line_key = data.get("idempotency_key")
        check_idempotency_key(line_key)
        if line_key is None and key is not None:
            line_key = f"{key}:{number}"  # a retried request maps every line to the job it made
        body = {field: value for field, value in data.items() if field != "idempotency_key"}
        return JobSubmission(
            inputs=request.inputs,
            batch=request.batch,
            max_attempts=request.max_attempts,
            timeout_s=request.timeout_s,
            parameters=request.parameters,
            priority=request.priority,
            idempotency_key=line_key,
            fingerprint=request_fingerprint(name, version, body) if line_key else None,
        )

    async def submit_bulk(self, call: Call) -> Reply:
        """JSON Lines in (one job per line), one JSON line out per non-blank line in order: the job, or
        ``{"error": {"code", "message"}}`` for a line that was refused (the others are stored)."""
        name = call.info.model = call.params["name"]
        version = call.params.get("version")
        raw_key = call.header(b"idempotency-key")
        key = raw_key.decode("latin-1") if raw_key is not None else None
        check_idempotency_key(key)
        text = await call.body(_BULK_LIMIT)
        content_type = call.header(b"content-type") or b""
        if content_type.split(b";")[0].strip().lower() == b"application/json":
            # One JSON document (it may span lines): the one line of the body, and as the request's
            # whole body, what is wrong with it is the request's error (422), as on the single-job route.
            submission = self._bulk_line(text, 1, name, version, key)
            outcomes = await self._service.create_jobs(
                tenant=call.tenant, model=name, version=version, submissions=[submission]
            )
            if isinstance(outcomes[0], InferdError):
                raise outcomes[0]
            return self._bulk_reply(outcomes)
        # Blank lines (a trailing one, \r\n endings) carry no job: skipped, while a line keeps its number
        # in the body for its error message and its KEY:LINE idempotency key.
        lines = [
            (number, line)
            for number, line in enumerate(text.split(b"\n"), start=1)
            if line.strip(_JSON_WHITESPACE)
        ]
        if not lines:
            raise InvalidInputError(f"send one job per line, e.g. {_SUBMIT_EXAMPLE}")
        if len(lines) > MAX_BULK_JOBS:
            raise InvalidInputError(
                f"{len(lines)} lines; at most {MAX_BULK_JOBS} jobs per bulk request: split them"
            )
        submissions: list[JobSubmission | InferdError] = []
        for number, line in lines:
            try:
                submissions.append(self._numbered_bulk_line(line, number, name, version, key))
            except InferdError as exc:
                submissions.append(exc)
        outcomes = await self._service.create_jobs(
            tenant=call.tenant, model=name, version=version, submissions=submissions
        )
        # Every line resolves to the same version; a line refused before resolving names none.
        call.info.version = next((outcome.version for outcome in outcomes if outcome.version), None)
        return self._bulk_reply(outcomes)

    @staticmethod
    def _bulk_reply(outcomes: Sequence[Job | InferdError]) -> Reply:
        body = b"".join(
            orjson.dumps(
                {"error": {"code": outcome.code, "message": outcome.message}}
                if isinstance(outcome, InferdError)
                else job_document(outcome)
            )
            + b"\n"
            for outcome in outcomes
        )
        return Reply(200, body, content_type=BULK_MEDIA_TYPE.encode())

    async def get_job(self, call: Call) -> Reply:
        query: JobWaitQuery = call.query
        job = await self._service.get(call.params["job_id"], tenant=_owner(call), wait_s=query.wait)
        return Reply(200, orjson.dumps(job_document(job)))

    async def list_jobs(self, call: Call) -> Reply:
        query: JobListQuery = call.query
        jobs, next_cursor = await self._service.list_jobs(
            tenant=call.tenant, status=query.status, model=query.model, limit=query.limit, cursor=query.cursor
        )
        body = {"jobs": [job_document(job) for job in jobs], "next_cursor": next_cursor}
        return Reply(200, orjson.dumps(body))

    async def cancel_job(self, call: Call) -> Reply:
        job = await self._service.cancel(call.params["job_id"], tenant=_owner(call))
        return Reply(200, orjson.dumps(job_document(job)))

    def routes(self) -> list[Route]:
        submit = Body(JobSubmitRequest, self.parse_submit)
        idempotency = {
            "Idempotency-Key": HeaderParam(
                "The same key and body from the same tenant return the same job.",
                {"minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY},
            )
        }
        routes = [
            Route(
                "POST",
                f"{prefix}/jobs",
                self.submit_job,
                KeyScope.JOBS,
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
                "POST",
                f"{prefix}/jobs/bulk",
                self.submit_bulk,
                KeyScope.JOBS,
                f"Submit many jobs on {how}: JSON Lines, one job per line; one JSON line per line back",
                "jobs",
                # A JSON object on one line is a one-line JSON Lines body, so plain JSON is accepted too.
                body=Body(JobBulkLine, None, content_types=(BULK_MEDIA_TYPE, "application/json")),
                response_content_type=BULK_MEDIA_TYPE,
                errors=(*JOB_ERRORS, 413),
                headers={
                    "Idempotency-Key": HeaderParam(
                        "Keys every line without its own idempotency_key as KEY:LINE.",
                        {"minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY},
                    )
                },
                description=(
                    f"Each line is one job body (as for a single job) plus an optional `idempotency_key`; at "
                    f"most {MAX_BULK_JOBS} lines; blank lines are skipped. The answer has one line per "
                    'non-blank input line, in order: the job, or `{"error": {"code", "message"}}` for a line '
                    "that was refused (a line that is not a job body is named by its number in the body); "
                    "the other lines are stored."
                ),
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
                KeyScope.JOBS,
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
                KeyScope.JOBS,
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
                KeyScope.JOBS,
                "Cancel a pending or running job; 409 for a finished one",
                "jobs",
                response=JobDocument,
                errors=(*JOB_ERRORS, 409),
            ),
        ]
        return routes
