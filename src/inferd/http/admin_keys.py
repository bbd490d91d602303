"""Run-time API keys under /v1/admin/keys (scope ``admin``): create, list, revoke."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from inferd.core import json_limits
from inferd.core.errors import InvalidInputError, KeyNotFoundError, validation_problems
from inferd.core.tenancy import TENANT_PATTERN, ApiKey, KeyScope
from inferd.http.routes import Body, Call, Reply, Route
from inferd.jobs.models import utcnow, wire_time
from inferd.jobs.store import JobStore


class KeyCreateRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"example": {"tenant": "acme", "scopes": ["predict", "jobs"]}},
    )

    tenant: str = Field(pattern=TENANT_PATTERN, description="1-100 letters, digits, '.', '_' or '-'.")
    scopes: list[KeyScope] = Field(min_length=1, description="What the key may do; admin: everything.")
    expires_at: AwareDatetime | None = Field(
        default=None, description="RFC 3339; the key stops working then."
    )


class KeyInfo(BaseModel):
    id: str
    tenant: str
    scopes: list[KeyScope]
    prefix: str = Field(description="The key's first characters, to recognise it.")
    created_at: str
    expires_at: str | None
    last_used_at: str | None = Field(description="Updated about every half second while the key is used.")
    revoked_at: str | None


class KeyCreated(KeyInfo):
    key: str = Field(description="The key itself: shown only in this answer, never stored.")


class KeyList(BaseModel):
    keys: list[KeyInfo]


def key_document(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "tenant": key.tenant,
        "scopes": sorted(key.scopes),
        "prefix": key.prefix,
        "created_at": wire_time(key.created_at),
        "expires_at": wire_time(key.expires_at),
        "last_used_at": wire_time(key.last_used_at),
        "revoked_at": wire_time(key.revoked_at),
    }


def _parse_create(body: bytes) -> KeyCreateRequest:
    try:
        return KeyCreateRequest.model_validate_json(body)
    except ValidationError as exc:
        example = '{"tenant": ..., "scopes": [...]}'
        raise json_limits.not_utf8(body, "request body", example=example) or InvalidInputError(
            validation_problems(exc, whole="body")
        ) from None


class KeyRoutes:
    def __init__(self, *, store: JobStore, clock: Callable[[], datetime] = utcnow) -> None:
        self._store = store
        self._clock = clock

    async def create_key(self, call: Call) -> Reply:
        request: KeyCreateRequest = await call.parsed_body()
        key, secret = await self._store.create_key(
            tenant=request.tenant, scopes=request.scopes, expires_at=request.expires_at, now=self._clock()
        )
        return Reply.json({**key_document(key), "key": secret}, 201)

    async def list_keys(self, call: Call) -> Reply:
        keys = await self._store.list_keys()
        return Reply.json({"keys": [key_document(key) for key in keys]})

    async def revoke_key(self, call: Call) -> Reply:
        key_id = call.params["key_id"]
        key = await self._store.revoke_key(key_id, now=self._clock())
        if key is None:
            raise KeyNotFoundError(f"no API key {key_id[:100]!r} (or it is revoked already)")
        return Reply.json(key_document(key))

    def routes(self) -> list[Route]:
        return [
            Route(
                "GET",
                "/v1/admin/keys",
                self.list_keys,
                KeyScope.ADMIN,
                "The run-time API keys that are not revoked (INFERD_API_KEYS keys are not listed)",
                "admin",
                response=KeyList,
                errors=(401, 403, 429, 503),
            ),
            Route(
                "POST",
                "/v1/admin/keys",
                self.create_key,
                KeyScope.ADMIN,
                "Make an API key; the answer holds the key itself, shown this once",
                "admin",
                body=Body(KeyCreateRequest, _parse_create),
                response=KeyCreated,
                status=201,
                errors=(401, 403, 422, 429, 503),
            ),
            Route(
                "DELETE",
                "/v1/admin/keys/{key_id}",
                self.revoke_key,
                KeyScope.ADMIN,
                "Revoke an API key: every process sharing the store refuses it within about a second",
                "admin",
                response=KeyInfo,
                errors=(401, 403, 404, 429, 503),
            ),
        ]
