"""Sync and batch predict on the native API: body parsers, handlers and their routes."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import orjson

from inferd.core import json_limits
from inferd.core.dataplane import DataPlane
from inferd.core.errors import InferenceError, InvalidInputError, quote_names
from inferd.core.tenancy import KeyScope
from inferd.http.routes import Body, Call, Reply, Route
from inferd.http.schemas import (
    MIN_CLIENT_TIMEOUT_S,
    BatchPredictRequest,
    BatchPredictResponse,
    PredictRequest,
    PredictResponse,
)

_SINGLE_FIELDS = frozenset({"input", "timeout_s", "parameters"})
_BATCH_FIELDS = frozenset({"inputs", "timeout_s", "parameters"})
_DUMP_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
PREDICT_ERRORS = (401, 403, 404, 413, 422, 429, 500, 503, 504)


def parse_timeout(data: dict[str, Any]) -> float | None:
    timeout = data.get("timeout_s")
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < MIN_CLIENT_TIMEOUT_S:
        raise InvalidInputError(
            f'"timeout_s" must be a number of seconds, at least {MIN_CLIENT_TIMEOUT_S:g}; '
            "leave it out to use the model's timeout_s"
        )
    return float(timeout)


def parse_json_object(body: bytes, example: str) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise json_limits.decode_error(body, exc, example=example) from None
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
        raise InvalidInputError(
            f"unknown field(s) {quote_names(sorted(unknown))}; allowed: {sorted(allowed)}"
            + _other_route(data, unknown, batch)
        )
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


_V2_TENSOR_FIELDS = frozenset({"name", "datatype", "shape"})


def _other_route(data: dict[str, Any], unknown: set[str], batch: bool | None) -> str:
    """Where a body with the other form's field belongs: the commonest mix-up between the routes."""
    if batch is False and "inputs" in unknown:
        inputs = data["inputs"]
        if (
            isinstance(inputs, list)
            and inputs
            and all(isinstance(tensor, dict) and tensor.keys() >= _V2_TENSOR_FIELDS for tensor in inputs)
        ):
            return (
                '; "inputs" holds V2 tensors: POST them to /v2/models/{name}/infer (the Open Inference '
                'Protocol), or send one item here as {"input": ...}'
            )
        return (
            '; several items go to .../predict/batch (this path + /batch) as {"inputs": [...]}, '
            'one item here as {"input": ...}'
        )
    if batch is True and "input" in unknown:
        return (
            '; one item goes to .../predict (this path without /batch) as {"input": ...}, '
            'or here as {"inputs": [item]}'
        )
    return ""


@dataclass(slots=True)
class PredictBody:
    inputs: list[Any]
    timeout_s: float | None
    parameters: dict[str, Any] | None


class PredictRoutes:
    """``/v1/models/{name}[/versions/{version}]/predict[/batch]`` over the data plane."""

    def __init__(self, *, dataplane: DataPlane, max_batch_inputs: int) -> None:
        self._dataplane = dataplane
        self._max_batch_inputs = max_batch_inputs

    def parse_single(self, body: bytes) -> PredictBody:
        data = parse_json_object(body, '{"input": ...}')
        inputs, _ = parse_inputs(data, batch=False, max_inputs=1, allowed=_SINGLE_FIELDS)
        return PredictBody(inputs, parse_timeout(data), parse_parameters(data))

    def parse_batch(self, body: bytes) -> PredictBody:
        data = parse_json_object(body, '{"inputs": [...]}')
        inputs, _ = parse_inputs(data, batch=True, max_inputs=self._max_batch_inputs, allowed=_BATCH_FIELDS)
        return PredictBody(inputs, parse_timeout(data), parse_parameters(data))

    async def _run(self, call: Call, batch: bool) -> Reply:
        info = call.info
        name = info.model = call.params["name"]
        request: PredictBody = await call.parsed_body()
        prediction = await self._dataplane.infer(
            tenant=call.tenant,
            model=name,
            version=call.params.get("version"),
            inputs=request.inputs,
            indexed=batch,
            timeout_s=request.timeout_s,
            parameters=request.parameters,
        )
        info.version = prediction.version
        response: dict[str, Any] = {"model": prediction.model, "version": prediction.version}
        if batch:
            response["outputs"] = prediction.outputs
        else:
            response["output"] = prediction.outputs[0]
        response["request_id"] = info.request_id
        try:
            return Reply(200, orjson.dumps(response, option=_DUMP_OPTIONS))
        except TypeError as exc:
            raise InferenceError(f"the model's output is not JSON-serializable: {exc}") from None

    def predict(self, call: Call) -> Awaitable[Reply]:
        return self._run(call, False)

    def predict_batch(self, call: Call) -> Awaitable[Reply]:
        return self._run(call, True)

    def routes(self) -> list[Route]:
        single = Body(PredictRequest, self.parse_single)
        batch = Body(BatchPredictRequest, self.parse_batch)
        routes = []
        for prefix, how in (
            ("/v1/models/{name}", "the version routing chooses (routing.yaml, else the highest)"),
            ("/v1/models/{name}/versions/{version}", "a pinned version"),
        ):
            routes += [
                Route(
                    "POST",
                    f"{prefix}/predict",
                    self.predict,
                    KeyScope.PREDICT,
                    f"Predict one input on {how}",
                    "inference",
                    body=single,
                    response=PredictResponse,
                    errors=PREDICT_ERRORS,
                ),
                Route(
                    "POST",
                    f"{prefix}/predict/batch",
                    self.predict_batch,
                    KeyScope.PREDICT,
                    f"Predict a batch of inputs on {how}; outputs in input order",
                    "inference",
                    body=batch,
                    response=BatchPredictResponse,
                    errors=PREDICT_ERRORS,
                ),
            ]
        return routes
