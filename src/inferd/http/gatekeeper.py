"""Authentication, scope check and rate limit: the same for every authenticated route."""

from __future__ import annotations

from inferd.core.tenancy import KeyRing, KeyScope, Principal, RateLimiter, TenantLimit
from inferd.http.wire import RequestInfo


class Gatekeeper:
    def __init__(self, *, keyring: KeyRing, rate_limiter: TenantLimit) -> None:
        self._keyring = keyring
        self._rate_limiter = rate_limiter
        # The in-process limiter decides without I/O: called directly, not through a coroutine.
        self._local_limiter = rate_limiter if isinstance(rate_limiter, RateLimiter) else None

    async def admit_key(
        self, key: str | None, scope_name: KeyScope, info: RequestInfo | None = None
    ) -> Principal:
        """``key`` from the request's headers (``wire.api_key_from_headers``) or gRPC metadata."""
        principal = self._keyring.authenticate(key)
        if info is not None:
            info.tenant = principal.tenant
        principal.require(scope_name)
        if self._local_limiter is not None:
            self._local_limiter.acquire(principal.tenant)
        else:
            await self._rate_limiter.admit(principal.tenant)
        return principal
