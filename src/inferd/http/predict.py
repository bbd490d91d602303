"""Sync and batch predict: the same code serves the pure-ASGI fast path and the FastAPI routes."""

from __future__ import annotations

from typing import Any

import orjson

from inferd.core.errors import InferdError, InferenceError, InvalidInputError
from inferd.core.prediction import PredictionService
from inferd.core.tenancy import KeyRing, Principal, RateLimiter
from inferd.http.asgi import (
    Receive,
    RequestInfo,
    Scope,
    Send,
    api_key_from_headers,
    read_body,
    send_error,
    send_response,
)

_SINGLE_FIELDS = frozenset({"input", "timeout_s", "parameters"})
_BATCH_FIELDS = frozenset({"inputs", "timeout_s", "parameters"})
_DUMP_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


class Gatekeeper:
    """Authentication, scope check and rate limit: the same for every authenticated route."""

    def __init__(self, *, keyring: KeyRing, rate_limiter: RateLimiter) -> None:
        self._keyring = keyring
        self._rate_limiter = rate_limiter

    def admit(self, headers: list[tuple[bytes, bytes]], scope_name: str, info: RequestInfo) -> Principal:
        return self.admit_key(api_key_from_headers(headers), scope_name, info)

    def admit_key(self, key: str | None, scope_name: str, info: RequestInfo | None = None) -> Principal:
        """The transport-free check (gRPC sends the key as metadata)."""
        principal = self._keyring.authenticate(key)
        if info is not None:
            info.tenant = principal.tenant
        principal.require(scope_name)
        self._rate_limiter.acquire(principal.tenant)
        return principal


def parse_timeout(data: dict[str, Any]) -> float | None:
    timeout = data.get("timeout_s")
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise InvalidInputError('"timeout_s" must be a positive number of seconds')
    return float(timeout)


def parse_json_object(body: bytes, example: str) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInputError(f"request body is not valid JSON ({exc}); send {example}") from None
    if not isinstance(data, dict):
        raise InvalidInputError(f"request body must be a JSON object like {example}")
    return data


def parse_parameters(data: dict[str, Any]) -> dict[str, Any] | None:
    """The request's ``parameters`` for the model; an empty object is the same as none."""
    parameters = data.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise InvalidInputError('"parameters" must be a JSON object')
    return parameters or None


def parse_inputs(
    data: dict[str, Any], *, batch: bool | None, max_inputs: int, allowed: frozenset[str]
) -> tuple[list[Any], bool]:
    """The request's items and whether it is a batch: ``[input]`` for a single item, ``inputs`` for a
    batch. ``batch=None`` accepts either form (jobs); unknown fields are refused, naming them."""
    unknown = data.keys() - allowed
    if unknown:
        raise InvalidInputError(f"unknown field(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    if batch is None:
        if ("input" in data) == ("inputs" in data):
            raise InvalidInputError('send exactly one of "input" (one item) or "inputs" (a list of items)')
        batch = "inputs" in data
    if not batch:
        if "input" not in data:
            raise InvalidInputError('request body needs an "input" field: {"input": ...}')
        return [data["input"]], False
    inputs = data.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInputError('request body needs a non-empty "inputs" list: {"inputs": [...]}')
    if len(inputs) > max_inputs:
        raise InvalidInputError(f'"inputs" has {len(inputs)} items; at most {max_inputs} per request')
    return inputs, True


class PredictHandler:
    def __init__(
        self,
        *,
        service: PredictionService,
        gatekeeper: Gatekeeper,
        max_body_bytes: int,
        max_batch_inputs: int,
    ) -> None:
        self._service = service
        self._gatekeeper = gatekeeper
        self._max_body_bytes = max_body_bytes
        self._max_batch_inputs = max_batch_inputs

    async def __call__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        info: RequestInfo,
        name: str,
        version: str | None,
        batch: bool,
    ) -> None:
        try:
            principal = self._gatekeeper.admit(scope["headers"], "predict", info)
            body = await read_body(scope, receive, self._max_body_bytes)
            payload = await self.execute(principal, name, version, batch, body, info)
        except InferdError as exc:
            await send_error(send, exc, info)
            return
        info.status = 200
        await send_response(send, 200, payload, info.request_id)

    async def execute(
        self,
        principal: Principal,
        name: str,
        version: str | None,
        batch: bool,
        body: bytes,
        info: RequestInfo,
    ) -> bytes:
        info.model = name
        example = '{"inputs": [...]}' if batch else '{"input": ...}'
        data = parse_json_object(body, example)
        allowed = _BATCH_FIELDS if batch else _SINGLE_FIELDS
        inputs, _ = parse_inputs(data, batch=batch, max_inputs=self._max_batch_inputs, allowed=allowed)
        prediction = await self._service.predict(
            tenant=principal.tenant,
            model=name,
            version=version,
            inputs=inputs,
            indexed=batch,
            timeout_s=parse_timeout(data),
            parameters=parse_parameters(data),
        )
        info.version = prediction.version
        response: dict[str, Any] = {"model": prediction.model, "version": prediction.version}
        if batch:
            response["outputs"] = prediction.outputs
        else:
            response["output"] = prediction.outputs[0]
        response["request_id"] = info.request_id
        try:
            return orjson.dumps(response, option=_DUMP_OPTIONS)
        except TypeError as exc:
            raise InferenceError(f"the model's output is not JSON-serializable: {exc}") from None
