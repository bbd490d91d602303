"""Tenants, API keys, scopes and per-tenant rate limits."""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from inferd.core.errors import ConfigError, ForbiddenError, RateLimitedError, UnauthenticatedError

SCOPES = frozenset({"predict", "jobs", "models", "admin"})
DEV_KEY = "dev"
DEV_TENANT = "dev"


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: str
    scopes: frozenset[str]

    def require(self, scope: str) -> None:
        if scope not in self.scopes and "admin" not in self.scopes:
            raise ForbiddenError(f"this API key lacks the {scope!r} scope (tenant {self.tenant!r})")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class KeyRing:
    """Keys are stored as SHA-256 digests and looked up by digest, so lookup time does not depend on
    how much of a guessed key matches (no timing oracle) and raw keys are never kept or logged."""

    def __init__(self, principals_by_key: Mapping[str, Principal]) -> None:
        self._by_digest = {_digest(key): principal for key, principal in principals_by_key.items()}

    def merged(self, other: KeyRing) -> KeyRing:
        ring = KeyRing({})
        ring._by_digest = {**self._by_digest, **other._by_digest}
        return ring

    def __len__(self) -> int:
        return len(self._by_digest)

    @classmethod
    def parse(cls, text: str) -> KeyRing:
        """``KEY:TENANT:SCOPE[,SCOPE...];...``; a malformed entry stops start-up, naming the entry."""
        principals: dict[str, Principal] = {}
        for position, raw in enumerate(text.split(";"), start=1):
            entry = raw.strip()
            if not entry:
                continue
            parts = entry.split(":")
            # Name the entry by position and tenant only: the key itself is a secret. Only a three-part
            # entry says which part is the tenant; in "a:b" or "k:e:y:t:s" the second part may be the key.
            shown = f"entry {position}" + (
                f" (tenant {parts[1].strip()!r})" if len(parts) == 3 and parts[1].strip() else ""
            )
            if len(parts) != 3 or not all(p.strip() for p in parts):
                raise ConfigError(f"INFERD_API_KEYS {shown}: must look like KEY:TENANT:SCOPE[,SCOPE...]")
            key, tenant, scope_text = (p.strip() for p in parts)
            scopes = frozenset(s.strip() for s in scope_text.split(",") if s.strip())
            unknown = scopes - SCOPES
            if not scopes or unknown:
                raise ConfigError(
                    f"INFERD_API_KEYS {shown}: unknown scope(s) {sorted(unknown)}; use {sorted(SCOPES)}"
                )
            if key in principals:
                raise ConfigError(f"INFERD_API_KEYS {shown}: the same key appears twice")
            principals[key] = Principal(tenant, scopes)
        return cls(principals)

    @classmethod
    def dev(cls) -> KeyRing:
        return cls({DEV_KEY: Principal(DEV_TENANT, SCOPES)})

    def authenticate(self, key: str | None) -> Principal:
        if not key:
            raise UnauthenticatedError(
                "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
            )
        principal = self._by_digest.get(_digest(key))
        if principal is None:
            raise UnauthenticatedError("unknown or revoked API key")
        return principal


class TenantLimit(Protocol):
    """A tenant's rate limit as the request path checks it: raises RateLimitedError when over."""

    async def admit(self, tenant: str) -> None: ...


def rate_limited(tenant: str, rate: float, burst: float, retry_after_s: float) -> RateLimitedError:
    retry_after = max(1, math.ceil(retry_after_s))
    return RateLimitedError(
        f"tenant {tenant!r} is over its rate limit ({rate:g}/s, burst {burst:g}); retry in {retry_after}s",
        retry_after_s=retry_after,
    )


class _Bucket:
    __slots__ = ("tokens", "updated")

    def __init__(self, tokens: float, updated: float) -> None:
        self.tokens = tokens
        self.updated = updated


class RateLimiter:
    """Token bucket per tenant: ``rate`` tokens per second, ``burst`` capacity (the settings default it to
    N for 'N/s' or 'N/m'). An override of None exempts a tenant. In-process: each replica limits alone."""

    def __init__(
        self,
        *,
        default: tuple[float, float] | None,
        overrides: Mapping[str, tuple[float, float] | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._default = default
        self._overrides = dict(overrides or {})
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self._default is not None or any(v is not None for v in self._overrides.values())

    def limits_for(self, tenant: str) -> tuple[float, float] | None:
        """(rate per second, burst) of the tenant; None when it is not limited."""
        return self._overrides.get(tenant, self._default)

    async def admit(self, tenant: str) -> None:
        """The :class:`TenantLimit` form of :meth:`acquire`."""
        self.acquire(tenant)

    def acquire(self, tenant: str, cost: float = 1.0) -> None:
        limits = self._overrides.get(tenant, self._default)
        if limits is None:
            return
        rate, burst = limits
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(tenant)
            if bucket is None:
                bucket = self._buckets[tenant] = _Bucket(burst, now)
            bucket.tokens = min(burst, bucket.tokens + (now - bucket.updated) * rate)
            bucket.updated = now
            if bucket.tokens >= cost:
                bucket.tokens -= cost
                return
            missing = cost - bucket.tokens
        raise rate_limited(tenant, rate, burst, missing / rate)
