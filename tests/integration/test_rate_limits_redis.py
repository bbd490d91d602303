"""Tenant rate limits shared through Redis (INFERD_REDIS_URL).

Against the machine's Redis (127.0.0.1:6379): one limit holds across the two processes of a
``--workers 2`` server and a second, separate server. The outage test runs its own redis-server on a
free port, stops it and starts it again (never the shared one).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
import redis.asyncio as aioredis
from inferd_http_testkit import FIXTURES, InProcessAPI, free_port, running_server

from inferd.core.errors import RateLimitedError
from inferd.core.tenancy import RateLimiter
from inferd.ratelimit_redis import RedisRateLimiter

REDIS_URL = "redis://127.0.0.1:6379/0"
WAIT_S = 30.0


def redis_or_skip(url: str = REDIS_URL) -> str:
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        reason = f"Redis is not reachable at {url}: {exc}"
        if os.environ.get("INFERD_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{reason}; INFERD_REQUIRE_SERVICES=1 requires it", pytrace=False)
        pytest.skip(reason)
    return url


def test_one_limit_across_two_worker_processes_and_a_second_server(tmp_path: Path) -> None:
    url = redis_or_skip()
    tenant = f"shared-{uuid.uuid4().hex[:8]}"  # a fresh Redis key: other runs never share this bucket
    env = {
        "INFERD_API_KEYS": f"kr:{tenant}:predict",
        "INFERD_REDIS_URL": url,
        "INFERD_RATE_LIMIT": "10/m",  # burst 10, then one more every 6 s: no refill during the test
        "INFERD_STORE": f"sqlite:///{tmp_path / 'jobs.db'}",
    }
    models = FIXTURES / "process_models"
    with (
        running_server(tmp_path / "a", env=env, models=models, args=("--workers", "2")) as first,
        running_server(tmp_path / "b", env=env, models=models) as second,
    ):
        statuses = []
        answered = set()
        for number in range(24):
            base = (first if number % 3 else second).base_url
            with httpx.Client(base_url=base, timeout=30.0) as client:
                response = client.post(
                    "/v1/models/ok/predict", json={"input": number}, headers={"Authorization": "Bearer kr"}
                )
            statuses.append(response.status_code)
            answered.add(response.headers["x-request-id"][:12])
        assert len(answered) == 3, "the requests did not reach all three processes"
        assert statuses.count(200) == 10, statuses  # per process it would have been 5 + 5 + 10
        assert set(statuses) == {200, 429}
        assert statuses[:10] == [200] * 10
        with httpx.Client(base_url=first.base_url) as client:
            assert "rate_limit_shared 1.0" in client.get("/metrics").text


class OwnRedis:
    def __init__(self, executable: str, port: int, workdir: Path) -> None:
        self.port = port
        self._command = [
            executable,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        self._workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            self._command, cwd=self._workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            try:
                client.ping()
                return
            except redis.RedisError:
                time.sleep(0.02)
        pytest.fail("the test's redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    executable = shutil.which("redis-server")
    if executable is None:
        if os.environ.get("INFERD_REQUIRE_SERVICES") == "1":
            pytest.fail("redis-server is not installed; INFERD_REQUIRE_SERVICES=1 requires it", pytrace=False)
        pytest.skip("redis-server is not installed")
    server = OwnRedis(executable, free_port(), tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_requests_keep_being_served_while_redis_is_away(
    own_redis: OwnRedis, caplog: pytest.LogCaptureFixture
) -> None:
    server, port = own_redis, own_redis.port
    api = InProcessAPI(
        redis_url=f"redis://127.0.0.1:{port}/0", rate_limit="1000/m", api_keys="k1:acme:predict"
    )
    try:

        def predict() -> int:
            return api.post("/v1/models/ok/predict", json={"input": 1}, key="k1").status_code

        def shared() -> float:
            text = api.get("/metrics").text
            return float(
                next(line.split()[1] for line in text.splitlines() if line.startswith("rate_limit_shared "))
            )

        assert predict() == 200
        assert shared() == 1
        assert redis.Redis(port=port).exists("inferd:ratelimit:acme")
        server.stop()
        with caplog.at_level(logging.WARNING, logger="inferd.ratelimit"):
            assert [predict() for _ in range(5)] == [200] * 5  # served under the local limit
        assert shared() == 0
        warnings = [r for r in caplog.records if "does not answer" in r.getMessage()]
        assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
        server.start()  # an empty Redis on the same port: the limiter must load its script again
        deadline = time.monotonic() + WAIT_S
        while shared() == 0 and time.monotonic() < deadline:
            api.run(_pause())
        assert shared() == 1
        assert predict() == 200
        assert redis.Redis(port=port).exists("inferd:ratelimit:acme")  # checked in Redis again
    finally:
        api.close()


async def _pause() -> None:
    import asyncio

    await asyncio.sleep(0.05)  # lets the limiter's probe run on the API's loop


def _limiter(port: int, limits: RateLimiter) -> RedisRateLimiter:
    client = aioredis.Redis(port=port, socket_timeout=0.5, socket_connect_timeout=0.5)
    return RedisRateLimiter(
        client=client, limits=limits, fallback=limits, on_shared=lambda shared: None, description="test"
    )


async def _outcomes(limiter: RedisRateLimiter, tenants: list[str]) -> list[float]:
    """Each check's outcome, in the order the checks were made: 0 admitted, else the Retry-After."""

    async def one(tenant: str) -> float:
        try:
            await limiter.admit(tenant)
        except RateLimitedError as exc:
            return exc.retry_after_s
        return 0

    return list(await asyncio.gather(*(one(tenant) for tenant in tenants)))


def _evalsha_calls(port: int) -> int:
    stats = redis.Redis(port=port).info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def test_checks_made_together_go_in_one_call_and_count_as_separate_checks(own_redis: OwnRedis) -> None:
    port = own_redis.port
    # burst 3 for acme and 2 for beta, one more every minute: nothing refills during the test.
    limits = RateLimiter(default=(1 / 60, 3), overrides={"beta": (1 / 60, 2), "free": None})

    async def scenario() -> tuple[list[float], int, list[float]]:
        limiter = _limiter(port, limits)
        try:
            await limiter.admit("warm")  # loads the script
            before = _evalsha_calls(port)
            together = ["acme", "beta", "acme", "free", "acme", "beta", "beta", "acme"]
            outcomes = await _outcomes(limiter, together)
            calls = _evalsha_calls(port) - before
            later = await _outcomes(limiter, ["acme", "beta"])
            return outcomes, calls, later
        finally:
            await limiter.close()

    outcomes, calls, later = asyncio.run(scenario())
    assert calls == 1  # eight checks, two limited tenants, one script call
    # Each tenant's first requests up to its burst are admitted, the rest refused until the next token
    # (a minute away), exactly as one check per call would have decided; the unlimited tenant passes.
    assert outcomes == [0, 0, 0, 0, 0, 0, 60, 60]
    assert later == [60, 60]
    stored = redis.Redis(port=port)
    assert stored.exists("inferd:ratelimit:acme") and stored.exists("inferd:ratelimit:beta")
    assert not stored.exists("inferd:ratelimit:free")


def test_one_call_decides_as_single_checks_do(own_redis: OwnRedis) -> None:
    """The same checks for one tenant, made one at a time and all together (on two keys): the same
    requests are admitted."""
    port = own_redis.port
    limits = RateLimiter(default=(1 / 60, 4))

    async def scenario() -> tuple[list[float], list[float]]:
        limiter = _limiter(port, limits)
        try:
            alone = [(await _outcomes(limiter, ["one-by-one"]))[0] for _ in range(6)]
            together = await _outcomes(limiter, ["all-at-once"] * 6)
            return alone, together
        finally:
            await limiter.close()

    alone, together = asyncio.run(scenario())
    assert alone == together == [0, 0, 0, 0, 60, 60]
