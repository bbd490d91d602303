"""Authentication, scope check and rate limit: the same for every authenticated route."""

from __future__ import annotations

from inferd.core.tenancy import KeyRing, KeyScope, Principal, TenantLimit
from inferd.http.wire import RequestInfo, api_key_from_headers


class Gatekeeper:
    def __init__(self, *, keyring: KeyRing, rate_limiter: TenantLimit) -> None:
        self._keyring = keyring
        self._rate_limiter = rate_limiter

    async def admit(
        self, headers: list[tuple[bytes, bytes]], scope_name: KeyScope, info: RequestInfo
    ) -> Principal:
        return await self.admit_key(api_key_from_headers(headers), scope_name, info)

    async def admit_key(
        self, key: str | None, scope_name: KeyScope, info: RequestInfo | None = None
    ) -> Principal:
        """The transport-free check (gRPC sends the key as metadata)."""
        principal = self._keyring.authenticate(key)
        if info is not None:
            info.tenant = principal.tenant
        principal.require(scope_name)
        await self._rate_limiter.admit(principal.tenant)
        return principal
