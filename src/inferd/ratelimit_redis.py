"""Tenant rate limits shared through Redis by every server process and replica.

One atomic Lua script implements GCRA (the generic cell rate algorithm: one timestamp per tenant, the
"theoretical arrival time", on Redis's own clock, so the servers' clocks do not matter). A process sends
every check it has in one script call: the checks made while the previous call is on the wire (or in the
same event-loop iteration) go together, counted per tenant, and the script takes each tenant's requests in
turn exactly as that many separate checks would. One round trip for many requests, none for tenants
without a limit.

The calls go over one connection of the limiter's own, written and read directly (no pipeline or pool
per call): a shared limit costs a request a few microseconds of this process's time, not a round trip's
worth of client machinery.

If Redis cannot be reached, requests are admitted by the per-process limiter (each process 1/N of the
limit) instead of failing; a warning is logged once per outage, ``rate_limit_shared`` drops to 0, and a
background probe switches back to the shared limits as soon as Redis answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

from inferd.core.tenancy import RateLimiter, rate_limited
from inferd.jobs.coalescer import Coalescer

logger = logging.getLogger("inferd.ratelimit")

KEY_PREFIX = "inferd:ratelimit:"

# KEYS: one per tenant; ARGV: per key, microseconds per request, burst, requests to check (in order).
# Returns per key the requests admitted (the first ones: a refusal leaves the key unchanged, so every
# later request of the key is refused too) and the microseconds until the first refused one would be
# admitted (0 when all were). The stored time is an integer, as after one check per call.
GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[3 * i - 2])
  local burst = tonumber(ARGV[3 * i - 1])
  local count = tonumber(ARGV[3 * i])
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  local admitted = 0
  local wait = 0
  while admitted < count do
    local new_tat = tat + interval
    local allowed_at = new_tat - burst * interval
    if allowed_at > now then
      wait = math.ceil(allowed_at - now)
      break
    end
    tat = math.floor(new_tat)
    admitted = admitted + 1
  end
  if admitted > 0 then
    redis.call('SET', key, string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
  end
  out[2 * i - 1] = admitted
  out[2 * i] = wait
end
return out
"""
GCRA_SHA = hashlib.sha1(GCRA.encode()).hexdigest().encode()

_UNKNOWN = -1  # Redis did not answer: the local limiter decides


def redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


class RedisRateLimiter:
    """Implements ``TenantLimit``: the limits of ``limits`` (the server's whole limits), shared through
    Redis; ``fallback`` (this process's share) while Redis is away. ``timeout_s`` bounds each call."""

    def __init__(
        self,
        *,
        client: Redis,
        limits: RateLimiter,
        fallback: RateLimiter,
        on_shared: Callable[[bool], None],
        timeout_s: float = 0.5,
        probe_interval_s: float = 1.0,
        description: str = "redis",
    ) -> None:
        self._client = client
        pool = client.connection_pool
        # Its own connection, outside the pool, without a socket timeout of its own: each call is
        # bounded as a whole by timeout_s (one timer instead of one per read and write).
        self._connection = pool.connection_class(**{**pool.connection_kwargs, "socket_timeout": None})
        self._limits = limits
        self._fallback = fallback
        self._on_shared = on_shared
        self._timeout_s = timeout_s
        self._probe_interval_s = probe_interval_s
        self._description = description
        self._shared = True
        self._probe: asyncio.Task[None] | None = None
        # Checks made while a call is on the wire (or in one loop iteration) go together in the next.
        self._checks: Coalescer[str, int] = Coalescer(self._run_checks)
        # Per tenant, its key and limits in the protocol, encoded once.
        self._encoded: dict[str, tuple[bytes, bytes]] = {}
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
        wait_us = await self._checks.submit(tenant)
        if wait_us == _UNKNOWN:
            self._fallback.acquire(tenant)
        elif wait_us > 0:
            rate, burst = limits
            raise rate_limited(tenant, rate, burst, wait_us / 1e6)

    async def _run_checks(self, tenants: list[str]) -> list[int]:
        """The wait in µs (0: admitted, ``_UNKNOWN``: Redis did not answer) of each check, in order:
        one script call with each tenant's count; a tenant's first ``admitted`` checks pass."""
        counts: dict[str, int] = {}
        for tenant in tenants:
            counts[tenant] = counts.get(tenant, 0) + 1
        try:
            answers = dict(zip(counts, await self._check(counts), strict=True))
        except Exception:  # an answer this code cannot read: these requests fail, with the reason logged
            logger.exception("rate limits: unexpected answer from %s", self._description)
            raise
        seen: dict[str, int] = {}
        waits = []
        for tenant in tenants:
            position = seen.get(tenant, 0)
            seen[tenant] = position + 1
            admitted, wait_us = answers[tenant]
            waits.append(0 if position < admitted else wait_us)
        return waits

    async def _check(self, batch: dict[str, int]) -> list[tuple[int, int]]:
        """(admitted, wait in µs) per tenant of ``batch`` (tenant: checks); an unreachable Redis
        answers ``_UNKNOWN`` for every check."""
        keys, args = [], []
        for tenant, count in batch.items():
            encoded = self._encoded.get(tenant) or self._encode(tenant)
            keys.append(encoded[0])
            args.append(encoded[1] + _bulk(b"%d" % count))
        head = b"*%d\r\n" % (3 + 4 * len(batch)) + _bulk(b"EVALSHA") + _bulk(GCRA_SHA)
        payload = b"".join((head, _bulk(b"%d" % len(batch)), *keys, *args))
        try:
            async with asyncio.timeout(self._timeout_s):
                try:
                    reply = await self._call(payload)
                except NoScriptError:  # a Redis that never saw the script, or restarted and lost it
                    await self._call(self._connection.pack_command("SCRIPT", "LOAD", GCRA))
                    reply = await self._call(payload)
        except (TimeoutError, RedisError, OSError) as exc:
            await self._connection.disconnect(nowait=True)
            self._lost(exc)
            return [(0, _UNKNOWN)] * len(batch)
        return [(int(reply[i]), int(reply[i + 1])) for i in range(0, len(reply), 2)]

    async def _call(self, payload: bytes | list[bytes]) -> Any:
        await self._connection.send_packed_command(payload, check_health=False)
        return await self._connection.read_response()

    def _encode(self, tenant: str) -> tuple[bytes, bytes]:
        limits = self._limits.limits_for(tenant)
        assert limits is not None  # only limited tenants are checked
        rate, burst = limits
        encoded = (
            _bulk((KEY_PREFIX + tenant).encode()),
            _bulk(repr(1e6 / rate).encode()) + _bulk(repr(float(burst)).encode()),
        )
        self._encoded[tenant] = encoded
        return encoded

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
        await self._connection.disconnect()
        await self._client.aclose()
