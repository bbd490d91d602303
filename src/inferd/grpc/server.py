"""The Open Inference Protocol over gRPC: ``inference.GRPCInferenceService`` on inferd's own HTTP/2
transport (grpc/transport.py), in the HTTP server's process and event loop, over the same data plane,
Gatekeeper and metrics.

Keys come as metadata (``authorization: Bearer <key>`` or ``x-api-key: <key>``); errors are gRPC status
codes from one table; the client's deadline shortens the model's timeout.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from google.protobuf.message import DecodeError

from inferd import __version__
from inferd.core.dataplane import DataPlane
from inferd.core.errors import ConfigError, ErrorCode, InferdError, InvalidInputError, retry_after_seconds
from inferd.core.tenancy import KeyScope, malformed_authorization
from inferd.core.tensors import (
    Datatype,
    Tensor,
    decode_json,
    decode_raw,
    encode_raw,
    parse_datatype,
    parse_shape,
    select_outputs,
)
from inferd.grpc.messages import SERVICE, ModelInferResponse, service_methods
from inferd.grpc.transport import Call, GrpcError, GrpcServer, GrpcStatus, Route
from inferd.http.wire import BodyLimit

logger = logging.getLogger("inferd.grpc")

# Error code (core/errors.py) → gRPC status: the one table of this adapter.
STATUS_BY_CODE: dict[ErrorCode, GrpcStatus] = {
    ErrorCode.UNAUTHENTICATED: GrpcStatus.UNAUTHENTICATED,
    ErrorCode.FORBIDDEN: GrpcStatus.PERMISSION_DENIED,
    ErrorCode.MODEL_NOT_FOUND: GrpcStatus.NOT_FOUND,
    ErrorCode.JOB_NOT_FOUND: GrpcStatus.NOT_FOUND,
    ErrorCode.INVALID_INPUT: GrpcStatus.INVALID_ARGUMENT,
    ErrorCode.PAYLOAD_TOO_LARGE: GrpcStatus.RESOURCE_EXHAUSTED,
    ErrorCode.REQUEST_TIMEOUT: GrpcStatus.DEADLINE_EXCEEDED,  # HTTP only (slow clients); one table for all codes
    ErrorCode.RATE_LIMITED: GrpcStatus.RESOURCE_EXHAUSTED,
    ErrorCode.OVERLOADED: GrpcStatus.RESOURCE_EXHAUSTED,
    ErrorCode.STORE_UNAVAILABLE: GrpcStatus.UNAVAILABLE,
    ErrorCode.TIMEOUT: GrpcStatus.DEADLINE_EXCEEDED,
    ErrorCode.CONFLICT: GrpcStatus.ABORTED,
    ErrorCode.INFERENCE_ERROR: GrpcStatus.INTERNAL,
    ErrorCode.CONFIG_ERROR: GrpcStatus.INTERNAL,
    # Raised by HTTP routing only; gRPC answers unknown methods itself.
    ErrorCode.NOT_FOUND: GrpcStatus.UNIMPLEMENTED,
    ErrorCode.METHOD_NOT_ALLOWED: GrpcStatus.UNIMPLEMENTED,
}
# Trailing metadata key with the seconds to wait before retrying (RESOURCE_EXHAUSTED), as HTTP's Retry-After.
RETRY_AFTER = "retry-after"

# Typed contents field per datatype (FP16 has none: raw contents only).
_CONTENTS_FIELD = {
    Datatype.BOOL: "bool_contents",
    Datatype.INT8: "int_contents",
    Datatype.INT16: "int_contents",
    Datatype.INT32: "int_contents",
    Datatype.INT64: "int64_contents",
    Datatype.UINT8: "uint_contents",
    Datatype.UINT16: "uint_contents",
    Datatype.UINT32: "uint_contents",
    Datatype.UINT64: "uint64_contents",
    Datatype.FP32: "fp32_contents",
    Datatype.FP64: "fp64_contents",
    Datatype.BYTES: "bytes_contents",
}


def status_of(error: InferdError) -> GrpcStatus:
    return STATUS_BY_CODE.get(error.code, GrpcStatus.INTERNAL)


def api_key(metadata: Sequence[tuple[str, Any]] | None) -> str | None:
    """As ``http.wire.api_key_from_headers``, over gRPC metadata."""
    malformed: str | None = None
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            malformed = value
        elif key == "x-api-key" and isinstance(value, str) and value:
            return value.strip()
    if malformed is not None:
        raise malformed_authorization(malformed)
    return None


def _parameter_value(parameter: Any) -> Any:
    choice = parameter.WhichOneof("parameter_choice")
    return None if choice is None else getattr(parameter, choice)


def parameters_of(parameters: Any) -> dict[str, Any] | None:
    if not parameters:
        return None
    return {key: _parameter_value(value) for key, value in parameters.items()}


def decode_inputs(request: Any) -> list[Tensor]:
    """The request's input tensors, from ``raw_input_contents`` (one entry per input) or typed contents."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInputError(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs: send one per input"
        )
    tensors = []
    for index, tensor in enumerate(request.inputs):
        name = tensor.name
        datatype = parse_datatype(name, tensor.datatype)
        shape = parse_shape(name, list(tensor.shape))
        if raw:
            array = decode_raw(name, datatype, shape, raw[index])
        else:
            field = _CONTENTS_FIELD.get(datatype)
            if field is None:
                raise InvalidInputError(f"input {name!r}: {datatype} travels only as raw_input_contents")
            array = decode_json(name, datatype, shape, list(getattr(tensor.contents, field)))
        tensors.append(Tensor(name, datatype, array, parameters_of(tensor.parameters)))
    return tensors


def encode_response(request: Any, model: str, version: str, outputs: list[Tensor]) -> Any:
    response = ModelInferResponse(model_name=model, model_version=version, id=request.id)
    if request.outputs:
        outputs = select_outputs(outputs, [output.name for output in request.outputs])
    for tensor in outputs:
        output = response.outputs.add()
        output.name = tensor.name
        output.datatype = tensor.datatype.value
        output.shape.extend(tensor.array.shape)
        response.raw_output_contents.append(encode_raw(tensor))
    return response


class InferenceServicer:
    """The six RPCs; each one admits its key through the Gatekeeper (the same as HTTP) when it needs a scope."""

    # RPC → scope; None: public (health, as /v2/health/* and /livez).
    SCOPES: dict[str, KeyScope | None] = {
        "ServerLive": None,
        "ServerReady": None,
        "ServerMetadata": None,
        "ModelReady": KeyScope.MODELS,
        "ModelMetadata": KeyScope.MODELS,
        "ModelInfer": KeyScope.PREDICT,
    }

    def __init__(self, *, plane: DataPlane, admit: Callable[[str | None, KeyScope], Awaitable[Any]]) -> None:
        self._plane = plane
        self._admit = admit
        self._methods = service_methods()

    async def _principal(self, call: Call, rpc: str) -> Any:
        scope = self.SCOPES[rpc]
        return None if scope is None else await self._admit(api_key(call.metadata), scope)

    async def ServerLive(self, request: Any, call: Call, response: Any) -> Any:
        return response(live=True)

    async def ServerReady(self, request: Any, call: Call, response: Any) -> Any:
        return response(ready=await self._plane.server_ready())

    async def ServerMetadata(self, request: Any, call: Call, response: Any) -> Any:
        return response(name="inferd", version=__version__, extensions=[])

    async def ModelReady(self, request: Any, call: Call, response: Any) -> Any:
        principal = await self._principal(call, "ModelReady")
        ready = self._plane.model_ready(request.name, request.version or None, tenant=principal.tenant)
        return response(ready=ready)

    async def ModelMetadata(self, request: Any, call: Call, response: Any) -> Any:
        principal = await self._principal(call, "ModelMetadata")
        meta = self._plane.model_metadata(request.name, request.version or None, tenant=principal.tenant)
        message = response(name=meta.name, versions=meta.versions, platform=meta.platform)
        for spec, target in [(s, message.inputs) for s in meta.inputs] + [
            (s, message.outputs) for s in meta.outputs
        ]:
            target.add(name=spec.name, datatype=spec.datatype.value, shape=list(spec.shape))
        return message

    async def ModelInfer(self, request: Any, call: Call, response: Any) -> Any:
        principal = await self._principal(call, "ModelInfer")
        remaining = call.time_remaining()
        if remaining is not None and remaining <= 0:
            raise _DeadlinePassed()
        prediction = await self._plane.infer_tensors(
            tenant=principal.tenant,
            model=request.model_name,
            version=request.model_version or None,
            tensors=decode_inputs(request),
            timeout_s=remaining,
            parameters=parameters_of(request.parameters),
        )
        return encode_response(request, prediction.model, prediction.version, prediction.outputs)

    def routes(self) -> dict[str, Route]:
        """``/inference.GRPCInferenceService/<RPC>`` → its route, for every RPC the .proto declares."""
        return {
            f"/{SERVICE}/{name}": self._route(getattr(self, name), request_cls, response_cls)
            for name, (request_cls, response_cls) in self._methods.items()
        }

    @staticmethod
    def _route(
        method: Callable[[Any, Call, Any], Awaitable[Any]], request_cls: Any, response_cls: Any
    ) -> Route:
        async def call(message: bytes, context: Call) -> bytes:
            try:
                request = request_cls.FromString(message)
            except DecodeError:
                raise GrpcError(
                    GrpcStatus.INVALID_ARGUMENT, f"the request is not a valid {request_cls.DESCRIPTOR.name}"
                ) from None
            try:
                response = await method(request, context, response_cls)
            except InferdError as exc:
                seconds = retry_after_seconds(exc)
                trailers = () if seconds is None else ((RETRY_AFTER, str(seconds)),)
                # gRPC calls carry no request id: a fresh reference ties the message to the log line.
                raise GrpcError(
                    status_of(exc), exc.for_client(os.urandom(6).hex(), what="reference"), trailers
                ) from None
            except _DeadlinePassed:
                raise GrpcError(
                    GrpcStatus.DEADLINE_EXCEEDED, "the call's deadline passed before it ran"
                ) from None
            serialized: bytes = response.SerializeToString()
            return serialized

        return call


class _DeadlinePassed(Exception):
    pass


def check_port_free(host: str, port: int) -> None:
    """Fail before serving, in one line, when the gRPC port is taken (the server would only say so from
    inside its start-up)."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                f"cannot serve gRPC on {host}:{port}: {exc.strerror}; pick another --grpc-port or pass --no-grpc"
            ) from None


async def start_grpc_server(
    *,
    servicer: InferenceServicer,
    host: str,
    port: int,
    max_message_bytes: int,
    reuse_port: bool = False,
) -> tuple[GrpcServer, int]:
    """Start serving on the running event loop; returns the server and the bound port. With
    ``reuse_port`` (every ``serve --workers`` process) the processes share the port; without, a taken
    port is an OSError."""
    server = GrpcServer(servicer.routes(), limit=BodyLimit.server(max_message_bytes))
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = await server.start(host, port, reuse_port=reuse_port)
    except OSError as exc:
        raise OSError(f"cannot serve gRPC on {address}: {exc.strerror or exc}") from None
    return server, bound
