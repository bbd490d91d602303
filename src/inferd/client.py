"""Python client for inferd's native HTTP API: ``Client`` (blocking) and ``AsyncClient`` (asyncio), on httpx.

    from inferd.client import Client

    with Client("http://127.0.0.1:8000", api_key="dev") as client:
        print(client.predict("iris", [5.1, 3.5, 1.4, 0.2]).output)

Errors are typed by the API's error code (``ModelNotFound``, ``RateLimited``, ...), all ``APIError``,
carrying ``code``, ``message``, ``status`` and the server's ``request_id``. A server that cannot be
reached raises ``ConnectionFailed``. Requests the server refused before doing anything (429, 503) are
retried as ``Retry-After`` asks; job submissions always carry an ``Idempotency-Key``, so retrying one
after a lost answer never creates a second job.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Self, TypeVar
from urllib.parse import quote

import httpx

from inferd.core import errors as core_errors
from inferd.jobs.models import TERMINAL_STATUSES

DEFAULT_URL = "http://127.0.0.1:8000"
MAX_WAIT_PER_CALL_S = 60.0  # the server holds GET /v1/jobs/{id}?wait= at most this long
RETRYABLE_STATUSES = frozenset({429, 503})


# -- errors ---------------------------------------------------------------------------------------------


class ClientError(Exception):
    """Root of the client's errors."""


class ConnectionFailed(ClientError):
    """The server could not be reached (or the connection broke) after the allowed retries."""


class APIError(ClientError):
    """The server answered with an error. ``code`` is the API's error code."""

    code: str = "http_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int,
        request_id: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.status = status
        self.request_id = request_id
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        request = f" (request {self.request_id})" if self.request_id else ""
        return f"{self.status} {self.code}: {self.message}{request}"


class Unauthenticated(APIError):
    code = core_errors.UnauthenticatedError.code


class Forbidden(APIError):
    code = core_errors.ForbiddenError.code


class ModelNotFound(APIError):
    code = core_errors.ModelNotFoundError.code


class JobNotFound(APIError):
    code = core_errors.JobNotFoundError.code


class InvalidInput(APIError):
    code = core_errors.InvalidInputError.code


class PayloadTooLarge(APIError):
    code = core_errors.PayloadTooLargeError.code


class RateLimited(APIError):
    code = core_errors.RateLimitedError.code


class Overloaded(APIError):
    code = core_errors.OverloadedError.code


class StoreUnavailable(APIError):
    code = core_errors.StoreUnavailableError.code


class InferenceTimeout(APIError):
    code = core_errors.InferenceTimeoutError.code


class InferenceFailed(APIError):
    code = core_errors.InferenceError.code


class Conflict(APIError):
    code = core_errors.ConflictError.code


_ERRORS_BY_CODE: dict[str, type[APIError]] = {
    cls.code: cls
    for cls in (
        Unauthenticated,
        Forbidden,
        ModelNotFound,
        JobNotFound,
        InvalidInput,
        PayloadTooLarge,
        RateLimited,
        Overloaded,
        StoreUnavailable,
        InferenceTimeout,
        InferenceFailed,
        Conflict,
    )
}


# -- results --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prediction:
    model: str
    version: str
    output: Any
    request_id: str | None


@dataclass(frozen=True)
class BatchPrediction:
    model: str
    version: str
    outputs: list[Any]
    request_id: str | None


@dataclass(frozen=True)
class Job:
    """A job object as the API returns it; ``raw`` is the whole JSON object."""

    id: str
    status: str
    model: str
    version: str
    attempts: int
    max_attempts: int
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    output: Any
    outputs: list[Any] | None
    error: dict[str, str] | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def done(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Job:
        return cls(
            id=data["id"],
            status=data["status"],
            model=data["model"],
            version=data["version"],
            attempts=data.get("attempts", 0),
            max_attempts=data.get("max_attempts", 0),
            created_at=data.get("created_at"),
            started_at=data.get("started_at"),
            finished_at=data.get("finished_at"),
            output=data.get("output"),
            outputs=data.get("outputs"),
            error=data.get("error"),
            raw=data,
        )


# -- what both clients share: building requests, reading answers, retry decisions -----------------------


@dataclass(frozen=True)
class _Call:
    method: str
    path: str
    json: Any = None
    content: bytes | None = None
    params: Mapping[str, Any] | None = None
    headers: Mapping[str, str] | None = None
    # A transport error after the request may have reached the server is retried only when repeating
    # the request changes nothing (reads, and submissions carrying an Idempotency-Key).
    repeatable: bool = False
    # 429 and 503 mean "refused before doing anything, come back later", except from a probe.
    retry_refusals: bool = True

    def request(self, http: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        return http.build_request(
            self.method,
            self.path,
            json=self.json,
            content=self.content,
            params=self.params,
            headers=self.headers,
        )


def _segment(value: str) -> str:
    """A name or id as one path segment: '/', '?', '#' and the like cannot change the route."""
    return quote(str(value), safe="")


def _model_path(model: str, version: str | None, suffix: str) -> str:
    versioned = f"/versions/{_segment(version)}" if version is not None else ""
    return f"/v1/models/{_segment(model)}{versioned}{suffix}"


def _body(key: str, value: Any, **optional: Any) -> dict[str, Any]:
    body = {key: value}
    body.update({name: item for name, item in optional.items() if item is not None})
    return body


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _raise_for(response: httpx.Response) -> None:
    try:
        body = response.json()
    except ValueError:
        body = None
    request_id = response.headers.get("x-request-id")
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = str(error.get("code") or "http_error")
        message = str(error.get("message") or response.reason_phrase)
        request_id = body.get("request_id") or request_id
    else:
        code, message = f"http_{response.status_code}", response.text[:500] or response.reason_phrase
    raise _api_error(code, message, response, request_id)


def _api_error(code: str, message: str, response: httpx.Response, request_id: str | None) -> APIError:
    cls = _ERRORS_BY_CODE.get(code, APIError)
    return cls(
        message,
        code=code,
        status=response.status_code,
        request_id=request_id,
        retry_after_s=_retry_after(response),
    )


def _bulk_outcomes(response: httpx.Response) -> list[Job | APIError]:
    """One outcome per line of a bulk submission: the job, or the refusal of that line alone (an
    ``APIError`` with the bulk response's status and request id)."""
    if response.status_code >= 400:
        _raise_for(response)
    request_id = response.headers.get("x-request-id")
    outcomes: list[Job | APIError] = []
    for line in response.content.splitlines():
        data = json.loads(line)
        if "id" in data:
            outcomes.append(Job.from_json(data))
        else:
            error = data.get("error") or {}
            outcomes.append(
                _api_error(
                    str(error.get("code", "http_error")), str(error.get("message", "")), response, request_id
                )
            )
    return outcomes


def _decode(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        _raise_for(response)
    return response.json()


T = TypeVar("T")


@dataclass(frozen=True)
class _Wait:
    seconds: float


# What the client does next (send a request, or wait before retrying it), written once for both clients:
# a plan yields steps, is sent each step's outcome (the response, the transport error, or None after a
# wait) and returns the method's result. Client runs plans blocking, AsyncClient on the event loop.
_Outcome = httpx.Response | httpx.TransportError | None
_Plan = Generator[_Call | _Wait, _Outcome, T]

_NOTHING: Any = object()
_READY = _Call("GET", "/readyz", repeatable=True, retry_refusals=False)


class _Base:
    def __init__(
        self,
        url: str,
        *,
        api_key: str | None,
        retries: int,
        max_retry_wait_s: float,
    ) -> None:
        self.url = url.rstrip("/")
        self.retries = retries
        self.max_retry_wait_s = max_retry_wait_s
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def _delay(self, call: _Call, attempt: int, response: httpx.Response | None) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or None: do not retry."""
        if attempt >= self.retries:
            return None
        if response is None:  # transport error: short exponential backoff
            return min(0.25 * 2**attempt, 5.0)
        if not call.retry_refusals or response.status_code not in RETRYABLE_STATUSES:
            return None
        return min(_retry_after(response) or 1.0, self.max_retry_wait_s)

    @staticmethod
    def _retry_transport(call: _Call, exc: httpx.TransportError) -> bool:
        # A connection that never opened sent nothing: always safe to try again.
        return call.repeatable or isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)

    def _send(self, call: _Call) -> _Plan[httpx.Response]:
        """``call`` with the retries it allows; the last response (raising ConnectionFailed when the
        server could not be reached)."""
        attempt = 0
        while True:
            outcome = yield call
            if isinstance(outcome, httpx.TransportError):
                delay = self._delay(call, attempt, None) if self._retry_transport(call, outcome) else None
                if delay is None:
                    raise ConnectionFailed(
                        f"cannot reach {self.url}: {type(outcome).__name__}: {outcome}"
                    ) from outcome
            else:
                assert outcome is not None
                delay = self._delay(call, attempt, outcome)
                if delay is None:
                    return outcome
            yield _Wait(delay)
            attempt += 1

    def _json(self, call: _Call) -> _Plan[Any]:
        return _decode((yield from self._send(call)))

    # the API's operations -----------------------------------------------------------------------------

    def _predict(
        self,
        model: str,
        input: Any,
        version: str | None,
        parameters: Mapping[str, Any] | None,
        timeout_s: float | None,
    ) -> _Plan[Prediction]:
        body = _body("input", input, parameters=parameters, timeout_s=timeout_s)
        data = yield from self._json(_Call("POST", _model_path(model, version, "/predict"), json=body))
        return Prediction(data["model"], data["version"], data["output"], data.get("request_id"))

    def _predict_batch(
        self,
        model: str,
        inputs: list[Any],
        version: str | None,
        parameters: Mapping[str, Any] | None,
        timeout_s: float | None,
    ) -> _Plan[BatchPrediction]:
        body = _body("inputs", list(inputs), parameters=parameters, timeout_s=timeout_s)
        call = _Call("POST", _model_path(model, version, "/predict/batch"), json=body)
        response = yield from self._send(call)
        data = _decode(response)
        return BatchPrediction(
            data["model"], data["version"], data["outputs"], response.headers.get("x-request-id")
        )

    def _submit_job(
        self,
        model: str,
        input: Any,
        inputs: list[Any] | None,
        version: str | None,
        parameters: Mapping[str, Any] | None,
        max_attempts: int | None,
        timeout_s: float | None,
        priority: int | None,
        idempotency_key: str | None,
    ) -> _Plan[Job]:
        if (inputs is None) == (input is _NOTHING):
            raise ValueError("pass exactly one of input or inputs")
        key, value = ("inputs", list(inputs)) if inputs is not None else ("input", input)
        body = _body(
            key,
            value,
            parameters=parameters,
            max_attempts=max_attempts,
            timeout_s=timeout_s,
            priority=priority,
        )
        headers = {"Idempotency-Key": idempotency_key or f"py-{uuid.uuid4().hex}"}
        call = _Call(
            "POST", _model_path(model, version, "/jobs"), json=body, headers=headers, repeatable=True
        )
        return Job.from_json((yield from self._json(call)))

    def _submit_jobs(
        self, model: str, jobs: Sequence[Mapping[str, Any]], version: str | None, idempotency_key: str | None
    ) -> _Plan[list[Job | APIError]]:
        content = b"".join(json.dumps(job, separators=(",", ":")).encode() + b"\n" for job in jobs)
        headers = {
            "Idempotency-Key": idempotency_key or f"py-{uuid.uuid4().hex}",
            "Content-Type": "application/x-ndjson",
        }
        path = _model_path(model, version, "/jobs/bulk")
        call = _Call("POST", path, content=content, headers=headers, repeatable=True)
        return _bulk_outcomes((yield from self._send(call)))

    def _get_job(self, job_id: str, wait_s: float | None) -> _Plan[Job]:
        params = {"wait": min(wait_s, MAX_WAIT_PER_CALL_S)} if wait_s else None
        call = _Call("GET", f"/v1/jobs/{_segment(job_id)}", params=params, repeatable=True)
        return Job.from_json((yield from self._json(call)))

    def _wait_job(self, job_id: str, timeout_s: float | None) -> _Plan[Job]:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            left = MAX_WAIT_PER_CALL_S if deadline is None else deadline - time.monotonic()
            job = yield from self._get_job(job_id, max(0.0, min(MAX_WAIT_PER_CALL_S, left)))
            if job.done:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is still {job.status} after {timeout_s}s")

    def _jobs_page(
        self, status: str | None, model: str | None, page_size: int, cursor: str | None
    ) -> _Plan[tuple[list[Job], str | None]]:
        """One page of the tenant's jobs and the cursor of the next (None after the last)."""
        params = {"status": status, "model": model, "limit": page_size, "cursor": cursor}
        call = _Call(
            "GET", "/v1/jobs", params={k: v for k, v in params.items() if v is not None}, repeatable=True
        )
        page = yield from self._json(call)
        return [Job.from_json(item) for item in page["jobs"]], page.get("next_cursor") or None

    def _cancel_job(self, job_id: str) -> _Plan[Job]:
        return Job.from_json((yield from self._json(_Call("POST", f"/v1/jobs/{_segment(job_id)}/cancel"))))

    def _models(self) -> _Plan[list[dict[str, Any]]]:
        listing = yield from self._json(_Call("GET", "/v1/models", repeatable=True))
        models: list[dict[str, Any]] = listing["models"]
        return models

    def _model(self, name: str) -> _Plan[dict[str, Any]]:
        entry: dict[str, Any] = yield from self._json(
            _Call("GET", f"/v1/models/{_segment(name)}", repeatable=True)
        )
        return entry

    def _reload_models(self) -> _Plan[dict[str, Any]]:
        summary: dict[str, Any] = yield from self._json(_Call("POST", "/v1/admin/models/reload"))
        return summary

    def _ready(self) -> _Plan[bool]:
        return (yield from self._send(_READY)).status_code == 200


class Client(_Base):
    """Blocking client. Use as a context manager, or call :meth:`close`."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = 90.0,
        retries: int = 5,
        max_retry_wait_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(url, api_key=api_key, retries=retries, max_retry_wait_s=max_retry_wait_s)
        self._http = httpx.Client(
            base_url=self.url, headers=self._headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _run(self, plan: _Plan[T]) -> T:
        outcome: _Outcome = None
        try:
            while True:
                step = plan.send(outcome)
                if isinstance(step, _Wait):
                    time.sleep(step.seconds)
                    outcome = None
                    continue
                try:
                    outcome = self._http.send(step.request(self._http))
                except httpx.TransportError as exc:
                    outcome = exc
        except StopIteration as done:
            result: T = done.value
            return result

    # API ----------------------------------------------------------------------------------------------

    def predict(
        self,
        model: str,
        input: Any,
        *,
        version: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> Prediction:
        """One input item through the model's pipeline (routed version unless ``version`` pins one)."""
        return self._run(self._predict(model, input, version, parameters, timeout_s))

    def predict_batch(
        self,
        model: str,
        inputs: list[Any],
        *,
        version: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> BatchPrediction:
        """Several input items in one call; outputs in input order."""
        return self._run(self._predict_batch(model, inputs, version, parameters, timeout_s))

    def submit_job(
        self,
        model: str,
        input: Any = _NOTHING,
        *,
        inputs: list[Any] | None = None,
        version: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        max_attempts: int | None = None,
        timeout_s: float | None = None,
        priority: int | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Queue a durable job (``input`` or ``inputs``). The Idempotency-Key (random unless given) makes
        the retries of a lost or refused submission return the same job."""
        return self._run(
            self._submit_job(
                model, input, inputs, version, parameters, max_attempts, timeout_s, priority, idempotency_key
            )
        )

    def submit_jobs(
        self,
        model: str,
        jobs: Sequence[Mapping[str, Any]],
        *,
        version: str | None = None,
        idempotency_key: str | None = None,
    ) -> list[Job | APIError]:
        """Queue many jobs in one request (``POST .../jobs/bulk``): each of ``jobs`` is a submission body
        (``{"input": ...}`` or ``{"inputs": [...]}``, optionally ``max_attempts``, ``timeout_s``,
        ``priority``, ``parameters``). One outcome per job, in order: the job, or the error refusing that
        one alone. The request's Idempotency-Key makes a retried request return the same jobs."""
        return self._run(self._submit_jobs(model, jobs, version, idempotency_key))

    def get_job(self, job_id: str, *, wait_s: float | None = None) -> Job:
        """The job; with ``wait_s`` the server holds the answer until it is done or the wait ends (≤ 60 s)."""
        return self._run(self._get_job(job_id, wait_s))

    def wait_job(self, job_id: str, *, timeout_s: float | None = None) -> Job:
        """Long-poll until the job is done; raise ``TimeoutError`` if ``timeout_s`` passes first."""
        return self._run(self._wait_job(job_id, timeout_s))

    def list_jobs(
        self, *, status: str | None = None, model: str | None = None, page_size: int = 100
    ) -> Iterator[Job]:
        """Your tenant's jobs, newest first, fetched page by page as you iterate."""
        cursor: str | None = None
        while True:
            jobs, cursor = self._run(self._jobs_page(status, model, page_size, cursor))
            yield from jobs
            if cursor is None:
                return

    def cancel_job(self, job_id: str) -> Job:
        return self._run(self._cancel_job(job_id))

    def models(self) -> list[dict[str, Any]]:
        return self._run(self._models())

    def model(self, name: str) -> dict[str, Any]:
        return self._run(self._model(name))

    def reload_models(self) -> dict[str, Any]:
        """Rescan the server's model repository (admin key); the summary of what changed."""
        return self._run(self._reload_models())

    def ready(self) -> bool:
        return self._run(self._ready())


class AsyncClient(_Base):
    """The same API for asyncio. ``max_connections`` bounds the requests in flight."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = 90.0,
        retries: int = 5,
        max_retry_wait_s: float = 30.0,
        max_connections: int = 100,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(url, api_key=api_key, retries=retries, max_retry_wait_s=max_retry_wait_s)
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers=self._headers,
            timeout=timeout,
            limits=httpx.Limits(max_connections=max_connections),
            transport=transport,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _run(self, plan: _Plan[T]) -> T:
        outcome: _Outcome = None
        try:
            while True:
                step = plan.send(outcome)
                if isinstance(step, _Wait):
                    await asyncio.sleep(step.seconds)
                    outcome = None
                    continue
                try:
                    outcome = await self._http.send(step.request(self._http))
                except httpx.TransportError as exc:
                    outcome = exc
        except StopIteration as done:
            result: T = done.value
            return result

    # API: as Client's -------------------------------------------------------------------------------

    async def predict(
        self,
        model: str,
        input: Any,
        *,
        version: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> Prediction:
        return await self._run(self._predict(model, input, version, parameters, timeout_s))

    async def predict_batch(
        self,
        model: str,
        inputs: list[Any],
        *,
        version: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> BatchPrediction:
        return await self._run(self._predict_batch(model, inputs, version, parameters, timeout_s))

    async def submit_job(
        self,
        model: str,
        input: Any = _NOTHING,
        *,
        inputs: list[Any] | None = None,
        version: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        max_attempts: int | None = None,
        timeout_s: float | None = None,
        priority: int | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        return await self._run(
            self._submit_job(
                model, input, inputs, version, parameters, max_attempts, timeout_s, priority, idempotency_key
            )
        )

    async def submit_jobs(
        self,
        model: str,
        jobs: Sequence[Mapping[str, Any]],
        *,
        version: str | None = None,
        idempotency_key: str | None = None,
    ) -> list[Job | APIError]:
        return await self._run(self._submit_jobs(model, jobs, version, idempotency_key))

    async def get_job(self, job_id: str, *, wait_s: float | None = None) -> Job:
        return await self._run(self._get_job(job_id, wait_s))

    async def wait_job(self, job_id: str, *, timeout_s: float | None = None) -> Job:
        return await self._run(self._wait_job(job_id, timeout_s))

    async def list_jobs(
        self, *, status: str | None = None, model: str | None = None, page_size: int = 100
    ) -> AsyncIterator[Job]:
        cursor: str | None = None
        while True:
            jobs, cursor = await self._run(self._jobs_page(status, model, page_size, cursor))
            for job in jobs:
                yield job
            if cursor is None:
                return

    async def cancel_job(self, job_id: str) -> Job:
        return await self._run(self._cancel_job(job_id))

    async def models(self) -> list[dict[str, Any]]:
        return await self._run(self._models())

    async def model(self, name: str) -> dict[str, Any]:
        return await self._run(self._model(name))

    async def reload_models(self) -> dict[str, Any]:
        return await self._run(self._reload_models())

    async def ready(self) -> bool:
        return await self._run(self._ready())
