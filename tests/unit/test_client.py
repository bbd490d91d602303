"""inferd.client against a scripted server (httpx.MockTransport): paths and bodies, typed errors with the
API's code and request id, retries of refused requests (429/503 with Retry-After) that never duplicate a
job, long-poll waits, cursor paging. Retry waits are capped at 0 s so nothing sleeps."""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from inferd.client import (
    APIError,
    AsyncClient,
    Client,
    ConnectionFailed,
    InvalidInput,
    Job,
    JobNotFound,
    ModelNotFound,
    Overloaded,
    RateLimited,
    StoreUnavailable,
)

Handler = Callable[[httpx.Request], httpx.Response]


def job_json(job_id: str = "j1", status: str = "pending", **extra: Any) -> dict[str, Any]:
    body = {
        "id": job_id,
        "status": status,
        "model": "iris",
        "version": "2",
        "created_at": "2026-01-01T00:00:00Z",
        "started_at": None,
        "finished_at": None,
        "attempts": 0,
        "max_attempts": 3,
        "error": None,
    }
    body.update(extra)
    return body


def error(status: int, code: str, request_id: str = "req-1", **headers: str) -> httpx.Response:
    body = {"error": {"code": code, "message": f"{code} happened"}, "request_id": request_id}
    return httpx.Response(status, json=body, headers={"x-request-id": request_id, **headers})


class Server:
    """Answers from a list of scripted responses (or handlers), and records every request."""

    def __init__(self, *responses: httpx.Response | Handler | Exception) -> None:
        self.responses = list(responses)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.responses.pop(0) if len(self.responses) > 1 else self.responses[0]
        if isinstance(answer, Exception):
            raise answer
        return answer(request) if callable(answer) else answer

    def client(self, **kwargs: Any) -> Client:
        return Client(
            "http://inferd.test",
            api_key="k",
            max_retry_wait_s=0,
            transport=httpx.MockTransport(self),
            **kwargs,
        )

    def async_client(self, **kwargs: Any) -> AsyncClient:
        return AsyncClient(
            "http://inferd.test",
            api_key="k",
            max_retry_wait_s=0,
            transport=httpx.MockTransport(self),
            **kwargs,
        )

    def bodies(self) -> list[Any]:
        return [json.loads(r.content) if r.content else None for r in self.requests]


def test_predict_sends_the_native_body_and_returns_the_output() -> None:
    server = Server(
        httpx.Response(200, json={"model": "iris", "version": "1", "output": 0, "request_id": "r9"})
    )
    with server.client() as client:
        result = client.predict("iris", [5.1, 3.5, 1.4, 0.2], version="1", parameters={"t": 1}, timeout_s=2)
    assert (result.model, result.version, result.output, result.request_id) == ("iris", "1", 0, "r9")
    (request,) = server.requests
    assert request.method == "POST" and request.url.path == "/v1/models/iris/versions/1/predict"
    assert request.headers["authorization"] == "Bearer k"
    assert server.bodies() == [{"input": [5.1, 3.5, 1.4, 0.2], "parameters": {"t": 1}, "timeout_s": 2}]


def test_names_and_ids_stay_one_path_segment() -> None:
    server = Server(httpx.Response(200, json={"model": "a/b?c", "version": "1", "output": 1}))
    with server.client() as client:
        client.predict("a/b?c", 1, version="x#y")
    assert server.requests[0].url.raw_path == b"/v1/models/a%2Fb%3Fc/versions/x%23y/predict"


def test_batch_predict_returns_outputs_in_order_with_the_request_id() -> None:
    server = Server(
        httpx.Response(
            200, json={"model": "iris", "version": "2", "outputs": [0, 2]}, headers={"x-request-id": "b1"}
        )
    )
    with server.client() as client:
        result = client.predict_batch("iris", [[1, 2, 3, 4], [6, 3, 5, 2]])
    assert result.outputs == [0, 2] and result.request_id == "b1"
    assert server.requests[0].url.path == "/v1/models/iris/predict/batch"
    assert server.bodies() == [{"inputs": [[1, 2, 3, 4], [6, 3, 5, 2]]}]


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (error(404, "model_not_found"), ModelNotFound),
        (error(422, "invalid_input"), InvalidInput),
        (error(404, "job_not_found"), JobNotFound),
        (error(418, "something_new"), APIError),
    ],
)
def test_api_errors_are_typed_and_carry_code_status_and_request_id(
    response: httpx.Response, expected: type[APIError]
) -> None:
    server = Server(response)
    with server.client() as client, pytest.raises(expected) as caught:
        client.predict("m", 1)
    exc = caught.value
    assert type(exc) is expected
    assert (exc.status, exc.request_id) == (response.status_code, "req-1")
    assert exc.code == response.json()["error"]["code"] and exc.message.endswith("happened")
    assert str(exc) == f"{exc.status} {exc.code}: {exc.message} (request req-1)"
    assert len(server.requests) == 1  # client errors are never retried


def test_a_non_json_error_still_raises_an_api_error() -> None:
    server = Server(httpx.Response(502, text="bad gateway"))
    with server.client() as client, pytest.raises(APIError) as caught:
        client.models()
    assert (caught.value.status, caught.value.code, caught.value.message) == (502, "http_502", "bad gateway")


def test_submit_retries_refusals_with_one_idempotency_key() -> None:
    server = Server(
        error(429, "rate_limited", **{"retry-after": "1"}),
        error(503, "store_unavailable", **{"retry-after": "2"}),
        httpx.TransportError("connection reset"),
        httpx.Response(202, json=job_json()),
    )
    with server.client() as client:
        job = client.submit_job("iris", inputs=[[1, 2, 3, 4]], max_attempts=2, priority=5)
    assert isinstance(job, Job) and job.id == "j1" and not job.done
    keys = {request.headers["idempotency-key"] for request in server.requests}
    assert len(server.requests) == 4 and len(keys) == 1
    assert server.bodies()[0] == {"inputs": [[1, 2, 3, 4]], "max_attempts": 2, "priority": 5}


def test_a_caller_chosen_idempotency_key_is_sent_as_is() -> None:
    server = Server(httpx.Response(202, json=job_json()))
    with server.client() as client:
        client.submit_job("iris", {"x": 1}, idempotency_key="order-42")
    assert server.requests[0].headers["idempotency-key"] == "order-42"
    assert server.bodies() == [{"input": {"x": 1}}]


def test_bulk_submission_sends_json_lines_and_answers_per_line() -> None:
    body = (
        json.dumps(job_json("a"))
        + "\n"
        + json.dumps({"error": {"code": "invalid_input", "message": "bad"}})
        + "\n"
    ).encode()
    server = Server(
        error(429, "rate_limited", **{"retry-after": "1"}),
        httpx.Response(200, content=body, headers={"x-request-id": "bulk-1"}),
    )
    with server.client() as client:
        outcomes = client.submit_jobs("iris", [{"input": 1}, {"input": "x"}], version="2")
    first, second = outcomes
    assert isinstance(first, Job) and first.id == "a"
    assert isinstance(second, InvalidInput) and second.message == "bad" and second.request_id == "bulk-1"
    request = server.requests[-1]
    assert request.url.path == "/v1/models/iris/versions/2/jobs/bulk"
    assert request.headers["content-type"] == "application/x-ndjson"
    assert request.content == b'{"input":1}\n{"input":"x"}\n'
    assert server.requests[0].headers["idempotency-key"] == request.headers["idempotency-key"]


def test_submit_takes_exactly_one_of_input_and_inputs() -> None:
    with Server(httpx.Response(202, json=job_json())).client() as client:
        with pytest.raises(ValueError):
            client.submit_job("iris")
        with pytest.raises(ValueError):
            client.submit_job("iris", 1, inputs=[1])


def test_refusals_past_the_retry_budget_raise_with_retry_after() -> None:
    server = Server(error(429, "rate_limited", **{"retry-after": "3"}))
    with server.client(retries=2) as client, pytest.raises(RateLimited) as caught:
        client.predict("iris", 1)
    assert caught.value.retry_after_s == 3.0
    assert len(server.requests) == 3


def test_overloaded_is_retried_then_succeeds() -> None:
    server = Server(
        error(503, "overloaded"), httpx.Response(200, json={"model": "m", "version": "1", "output": 1})
    )
    with server.client() as client:
        assert client.predict("m", 1).output == 1
    assert len(server.requests) == 2


def test_a_predict_whose_connection_broke_is_not_resent_but_one_never_sent_is() -> None:
    broken = Server(httpx.ReadError("reset"))
    with broken.client() as client, pytest.raises(ConnectionFailed):
        client.predict("m", 1)
    assert len(broken.requests) == 1
    refused = Server(
        httpx.ConnectError("refused"), httpx.Response(200, json={"model": "m", "version": "1", "output": 1})
    )
    with refused.client() as client:
        assert client.predict("m", 1).output == 1
    assert len(refused.requests) == 2


def test_unreachable_server_raises_connection_failed_after_the_retries() -> None:
    server = Server(httpx.ConnectError("refused"))
    with server.client(retries=2) as client, pytest.raises(ConnectionFailed, match="cannot reach"):
        client.models()
    assert len(server.requests) == 3


def test_wait_job_long_polls_until_done() -> None:
    server = Server(
        httpx.Response(200, json=job_json(status="running")),
        httpx.Response(200, json=job_json(status="succeeded", output=7)),
    )
    with server.client() as client:
        job = client.wait_job("j1")
    assert job.done and job.output == 7
    assert [r.url.params["wait"] for r in server.requests] == ["60.0", "60.0"]


def test_wait_job_with_a_timeout_asks_for_no_longer_and_raises_when_it_passes() -> None:
    server = Server(httpx.Response(200, json=job_json(status="pending")))
    with server.client() as client, pytest.raises(TimeoutError, match="still pending"):
        client.wait_job("j1", timeout_s=0)
    assert len(server.requests) == 1 and "wait" not in server.requests[0].url.params


def test_list_jobs_follows_the_cursor_lazily() -> None:
    pages = {
        None: {"jobs": [job_json("a"), job_json("b")], "next_cursor": "c1"},
        "c1": {"jobs": [job_json("c")], "next_cursor": None},
    }
    server = Server(lambda request: httpx.Response(200, json=pages[request.url.params.get("cursor")]))
    with server.client() as client:
        jobs = client.list_jobs(status="pending", page_size=2)
        assert next(jobs).id == "a" and len(server.requests) == 1
        assert [job.id for job in jobs] == ["b", "c"]
    assert dict(server.requests[0].url.params) == {"status": "pending", "limit": "2"}
    assert server.requests[1].url.params["cursor"] == "c1"


def test_cancel_models_reload_and_ready() -> None:
    server = Server(
        lambda request: {
            "/v1/jobs/j1/cancel": httpx.Response(200, json=job_json(status="cancelled")),
            "/v1/models": httpx.Response(200, json={"models": [{"name": "iris"}]}),
            "/v1/models/iris": httpx.Response(200, json={"name": "iris"}),
            "/v1/admin/models/reload": httpx.Response(200, json={"added": []}),
            "/readyz": httpx.Response(503, json={"status": "not_ready"}),
        }[request.url.path]
    )
    with server.client() as client:
        assert client.cancel_job("j1").status == "cancelled"
        assert client.models() == [{"name": "iris"}]
        assert client.model("iris") == {"name": "iris"}
        assert client.reload_models() == {"added": []}
        assert client.ready() is False
    assert [r.method for r in server.requests] == ["POST", "GET", "GET", "POST", "GET"]  # 503 probe: no retry


def test_async_client_has_the_same_behaviour() -> None:
    server = Server(
        error(503, "store_unavailable"),
        httpx.Response(202, json=job_json()),
        httpx.Response(200, json=job_json(status="failed", error={"code": "timeout", "message": "t"})),
        lambda request: httpx.Response(200, json={"jobs": [job_json("x")], "next_cursor": None}),
    )

    async def scenario() -> tuple[Job, Job, list[str]]:
        async with server.async_client() as client:
            submitted = await client.submit_job("iris", [1, 2, 3, 4])
            finished = await client.wait_job(submitted.id, timeout_s=30)
            listed = [job.id async for job in client.list_jobs()]
            return submitted, finished, listed

    submitted, finished, listed = asyncio.run(scenario())
    assert submitted.status == "pending" and finished.error == {"code": "timeout", "message": "t"}
    assert listed == ["x"]
    assert server.requests[0].headers["idempotency-key"] == server.requests[1].headers["idempotency-key"]


def test_async_client_raises_typed_errors() -> None:
    server = Server(error(503, "overloaded"))

    async def scenario() -> None:
        async with server.async_client(retries=1) as client:
            await client.predict("m", 1)

    with pytest.raises(Overloaded):
        asyncio.run(scenario())
    assert len(server.requests) == 2
    assert StoreUnavailable.code == "store_unavailable"


def test_async_client_offers_every_client_method_with_the_same_signature() -> None:
    public = {name for name in vars(Client) if not name.startswith("_")} - {"close"}
    assert public <= set(vars(AsyncClient)), public - set(vars(AsyncClient))
    for name in public:
        sync, asynchronous = (
            inspect.signature(getattr(cls, name)).parameters for cls in (Client, AsyncClient)
        )
        assert sync == asynchronous, name


def test_async_client_retries_an_unreachable_server_and_raises_connection_failed() -> None:
    server = Server(httpx.ConnectError("refused"), httpx.ConnectError("refused"))

    async def scenario() -> None:
        async with server.async_client(retries=1) as client:
            await client.get_job("j1")

    with pytest.raises(ConnectionFailed, match="cannot reach"):
        asyncio.run(scenario())
    assert len(server.requests) == 2
