"""The worker's probe port routes as ``inferd serve`` does: on the path, its query string apart, and a
query parameter none of its routes takes is refused with the API's 422, never ignored."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import httpx

from inferd.metrics import InferdMetrics, MetricsExposition
from inferd.worker_http import WorkerEndpoints


def serve(check: Callable[[httpx.AsyncClient], Awaitable[None]], reasons: list[str] | None = None) -> None:
    async def readiness() -> list[str]:
        return reasons or []

    async def run() -> None:
        exposition = MetricsExposition(metrics=InferdMetrics(devices={"cpu": 1}))
        endpoints = WorkerEndpoints(exposition=exposition, readiness=readiness)
        await endpoints.start("127.0.0.1", 0)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{endpoints.port}", timeout=5) as client:
                await check(client)
        finally:
            await endpoints.close()

    asyncio.run(run())


def test_a_query_string_is_routed_apart_and_its_parameters_refused() -> None:
    async def check(client: httpx.AsyncClient) -> None:
        for path in ("/metrics", "/livez", "/readyz"):
            assert (await client.get(path)).status_code == 200, path
            assert (await client.get(path + "?")).status_code == 200, path  # an empty query: no parameter
            response = await client.get(path + "?x=1&debug&x=2")
            assert response.status_code == 422, (path, response.text)
            assert response.json() == {
                "error": {
                    "code": "invalid_input",
                    "message": f"unknown query parameters 'x', 'debug'; GET {path} takes no query parameters",
                }
            }
        assert (await client.get("/metrics")).text.count("executor_inflight") >= 1
        # The path is percent-decoded before routing, as the API's server does.
        assert (await client.get("/live%7A")).json() == {"status": "ok"}

    serve(check)


def test_other_paths_and_methods_answer_the_apis_error_codes() -> None:
    async def check(client: httpx.AsyncClient) -> None:
        missing = await client.get("/metrics/?x=1")
        assert missing.status_code == 404
        assert missing.json()["error"] == {
            "code": "not_found",
            "message": "no route GET '/metrics/'; this port serves /metrics, /livez, /readyz",
        }
        posted = await client.post("/livez?x=1")
        assert posted.status_code == 405 and posted.headers["allow"] == "GET, HEAD"
        assert posted.json()["error"]["code"] == "method_not_allowed"
        head = await client.head("/livez")
        assert head.status_code == 200 and head.content == b""
        refused_head = await client.head("/livez?x=1")
        assert refused_head.status_code == 422 and refused_head.content == b""

    serve(check)


def test_readiness_reasons_make_it_503_whatever_the_query() -> None:
    async def check(client: httpx.AsyncClient) -> None:
        response = await client.get("/readyz")
        assert response.status_code == 503
        assert response.json() == {"status": "not_ready", "reasons": ["draining"]}
        assert (await client.get("/readyz?verbose=1")).status_code == 422

    serve(check, reasons=["draining"])
