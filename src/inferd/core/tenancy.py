"""Tenants, API keys, scopes and per-tenant rate limits."""

from __future__ import annotations

import enum
import hashlib
import math
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from inferd.core.errors import (
    ConfigError,
    ForbiddenError,
    InvalidInputError,
    RateLimitedError,
    UnauthenticatedError,
    quote,
)


class KeyScope(enum.StrEnum):
    """What an API key may do (admin: everything). The values are the names INFERD_API_KEYS, the keys API,
    the CLI and the job store use."""

    PREDICT = "predict"
    JOBS = "jobs"
    MODELS = "models"
    ADMIN = "admin"


def read_scopes(names: Iterable[str]) -> tuple[frozenset[KeyScope], list[str]]:
    """The scopes ``names`` name (blank names skipped), and the names that are no scope."""
    chosen: set[KeyScope] = set()
    unknown: list[str] = []
    for name in (name.strip() for name in names):
        if name:
            try:
                chosen.add(KeyScope(name))
            except ValueError:
                unknown.append(name)
    return frozenset(chosen), sorted(unknown)


DEV_KEY = "dev"
DEV_TENANT = "dev"


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: str
    scopes: frozenset[KeyScope]

    def require(self, scope: KeyScope) -> None:
        if scope not in self.scopes and KeyScope.ADMIN not in self.scopes:
            raise ForbiddenError(f"this API key lacks the {str(scope)!r} scope (tenant {self.tenant!r})")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def key_digest(key: str) -> str:
    """What the store keeps of a run-time key: its SHA-256, hex."""
    return hashlib.sha256(key.encode()).hexdigest()


KEY_PREFIX = "ik_"  # run-time keys start with it, so a leaked one is easy to search for
PREFIX_SHOWN = 10  # characters of a key kept in clear to recognise it: "ik_" and 7 random ones
TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
_TENANT_RE = re.compile(TENANT_PATTERN)


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def check_tenant(tenant: str) -> str:
    if not _TENANT_RE.fullmatch(tenant):
        raise InvalidInputError(
            "a tenant is 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return tenant


def parse_scopes(names: Iterable[str]) -> frozenset[KeyScope]:
    chosen, unknown = read_scopes(names)
    if not chosen or unknown:
        got = sorted([*map(str, chosen), *unknown]) or "none"
        raise InvalidInputError(f"scopes must be some of {sorted(map(str, KeyScope))}; got {got}")
    return chosen


@dataclass(frozen=True, slots=True)
class TenantWeights:
    """Each tenant's ``weight`` (the config file's ``tenants:`` section): its share where tenants
    contend for a model's threads or for a job claim. A tenant not listed has ``default``."""

    listed: Mapping[str, float] = field(default_factory=dict)
    default: float = 1.0

    def of(self, tenant: str) -> float:
        return self.listed.get(tenant, self.default)


EQUAL_WEIGHTS = TenantWeights()


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key made at run time, as the store keeps it (never the key itself)."""

    id: str
    digest: str
    prefix: str
    tenant: str
    scopes: frozenset[KeyScope]
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None


class RuntimeKeys:
    """The store's keys as this process last read them; refreshed in the background (the job
    runtime), so checking a key never waits for the store. Expiry is checked at each use."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._by_digest: dict[bytes, tuple[str, Principal, float]] = {}
        self._used: set[str] = set()

    def replace(self, keys: Iterable[ApiKey]) -> None:
        self._by_digest = {
            bytes.fromhex(key.digest): (
                key.id,
                Principal(key.tenant, key.scopes),
                math.inf if key.expires_at is None else key.expires_at.timestamp(),
            )
            for key in keys
            if key.revoked_at is None
        }

    def lookup(self, digest: bytes) -> Principal | None:
        entry = self._by_digest.get(digest)
        if entry is None:
            return None
        key_id, principal, expires = entry
        if self._clock() >= expires:
            return None
        self._used.add(key_id)
        return principal

    def take_used(self) -> set[str]:
        """The ids of keys used since the last call (their last-use time is written in batches)."""
        used, self._used = self._used, set()
        return used


class KeyRing:
    """Keys are stored as SHA-256 digests and looked up by digest, so lookup time does not depend on
    how much of a guessed key matches (no timing oracle) and raw keys are never kept or logged.
    Configured keys come first; ``runtime`` holds those made at run time (the store's)."""

    def __init__(
        self, principals_by_key: Mapping[str, Principal], runtime: RuntimeKeys | None = None
    ) -> None:
        self._by_digest = {_digest(key): principal for key, principal in principals_by_key.items()}
        self.runtime = runtime

    def merged(self, other: KeyRing) -> KeyRing:
        ring = KeyRing({}, self.runtime or other.runtime)
        ring._by_digest = {**self._by_digest, **other._by_digest}
        return ring

    def with_runtime(self, runtime: RuntimeKeys) -> KeyRing:
        ring = KeyRing({}, runtime)
        ring._by_digest = self._by_digest
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
            scopes, unknown = read_scopes(scope_text.split(","))
            if not scopes or unknown:
                raise ConfigError(
                    f"INFERD_API_KEYS {shown}: unknown scope(s) {unknown}; use {sorted(map(str, KeyScope))}"
                )
            if key in principals:
                raise ConfigError(f"INFERD_API_KEYS {shown}: the same key appears twice")
            principals[key] = Principal(tenant, scopes)
        return cls(principals)

    @classmethod
    def dev(cls) -> KeyRing:
        return cls({DEV_KEY: Principal(DEV_TENANT, frozenset(KeyScope))})

    def authenticate(self, key: str | None) -> Principal:
        if not key:
            raise UnauthenticatedError(
                "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
            )
        digest = _digest(key)
        principal = self._by_digest.get(digest)
        if principal is None and self.runtime is not None:
            principal = self.runtime.lookup(digest)
        if principal is None:
            raise UnauthenticatedError("unknown or revoked API key (or expired)")
        return principal


def malformed_authorization(value: str) -> UnauthenticatedError:
    """The 401 for an Authorization header (or gRPC metadata) that carries no Bearer key. Only a scheme
    followed by credentials is named: a lone word may be the key itself."""
    scheme, space, _ = value.strip().partition(" ")
    if scheme.lower() == "bearer":
        got = "'Bearer' without a key"
    elif space:
        got = quote(scheme)
    else:
        got = "a value without a scheme"
    return UnauthenticatedError(
        f"Authorization must be 'Bearer <key>' (got {got}); or send 'X-API-Key: <key>'"
    )


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
