"""Tenant rate limits shared through Redis by every server process and replica.

One atomic Lua script per check implements GCRA (the generic cell rate algorithm: one timestamp per
tenant, the "theoretical arrival time", on Redis's own clock, so the servers' clocks do not matter).
Checks that arrive while another is on the wire go together in one pipeline: one round trip for many
requests, none for tenants without a limit.

If Redis cannot be reached, requests are admitted by the per-process limiter (each process 1/N of the
limit) instead of failing; a warning is logged once per outage, ``rate_limit_shared`` drops to 0, and a
background probe switches back to the shared limits as soon as Redis answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

from inferd.core.tenancy import RateLimiter, rate_limited
from inferd.jobs.coalescer import Coalescer

logger = logging.getLogger("inferd.ratelimit")

KEY_PREFIX = "inferd:ratelimit:"

# KEYS[1] the tenant's key; ARGV: microseconds per request, burst, cost.
# Returns 0 when admitted, else the microseconds until the request would be admitted.
GCRA = """
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + cost * interval
local allowed_at = new_tat - burst * interval
if allowed_at > now then return math.ceil(allowed_at - now) end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return 0
"""

_Check = tuple[str, float, float]  # tenant, rate per second, burst
_UNKNOWN = -1  # Redis did not answer: the local limiter decides


def redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


class RedisRateLimiter:
    """Implements ``TenantLimit``: the limits of ``limits`` (the server's whole limits), shared through
    Redis; ``fallback`` (this process's share) while Redis is away."""

    def __init__(
        self,
        *,
        client: Redis,
        limits: RateLimiter,
        fallback: RateLimiter,
        on_shared: Callable[[bool], None],
        probe_interval_s: float = 1.0,
        description: str = "redis",
    ) -> None:
        self._client = client
        self._limits = limits
        self._fallback = fallback
        self._on_shared = on_shared
        self._probe_interval_s = probe_interval_s
        self._description = description
        self._sha: str | None = None
        self._shared = True
        self._probe: asyncio.Task[None] | None = None
        self._checks: Coalescer[_Check, int] = Coalescer(self._run_checks)
        on_shared(True)

    @property
    def shared(self) -> bool:
        return self._shared

    async def admit(self, tenant: str) -> None:
        limits = self._limits.limits_for(tenant)
        if limits is None:
            return
        if not self._shared:
            self._fallback.acquire(tenant)
            return
        rate, burst = limits
        wait_us = await self._checks.submit((tenant, rate, burst))
        if wait_us == _UNKNOWN:
            self._fallback.acquire(tenant)
        elif wait_us > 0:
            raise rate_limited(tenant, rate, burst, wait_us / 1e6)

    async def _run_checks(self, checks: list[_Check]) -> list[int]:
        """All checks in one pipeline; never raises (an unreachable Redis answers ``_UNKNOWN`` for each)."""
        try:
            if self._sha is None:
                self._sha = await self._client.script_load(GCRA)
            try:
                return await self._pipeline(checks, self._sha)
            except NoScriptError:  # Redis restarted and lost its scripts
                self._sha = await self._client.script_load(GCRA)
                return await self._pipeline(checks, self._sha)
        except (TimeoutError, RedisError, OSError) as exc:
            self._lost(exc)
            return [_UNKNOWN] * len(checks)

    async def _pipeline(self, checks: list[_Check], sha: str) -> list[int]:
        pipe = self._client.pipeline(transaction=False)
        for tenant, rate, burst in checks:
            pipe.evalsha(sha, 1, KEY_PREFIX + tenant, 1e6 / rate, burst, 1)
        results = await pipe.execute(raise_on_error=True)
        return [int(result) for result in results]

    def _lost(self, exc: BaseException) -> None:
        if not self._shared:
            return
        self._shared = False
        self._on_shared(False)
        logger.warning(
            "rate limits: %s does not answer (%s: %s); each process now enforces its own share of every "
            "limit until it is back",
            self._description,
            type(exc).__name__,
            exc,
        )
        self._probe = asyncio.get_running_loop().create_task(self._wait_for_redis())

    async def _wait_for_redis(self) -> None:
        while True:
            await asyncio.sleep(self._probe_interval_s)
            try:
                await self._client.ping()
            except (TimeoutError, RedisError, OSError):
                continue
            self._shared = True
            self._on_shared(True)
            logger.warning("rate limits: %s answers again; limits are shared again", self._description)
            return

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        await self._client.aclose()
