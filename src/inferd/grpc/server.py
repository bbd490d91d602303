"""The Open Inference Protocol over gRPC: ``inference.GRPCInferenceService`` on ``grpc.aio``, in the
HTTP server's process and event loop, over the same data plane, Gatekeeper and metrics.

Keys come as metadata (``authorization: Bearer <key>`` or ``x-api-key: <key>``); errors are gRPC status
codes from one table; the client's deadline shortens the model's timeout.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

from inferd import __version__
from inferd.core.dataplane import DataPlane
from inferd.core.errors import ConfigError, ErrorCode, InferdError, InvalidInputError
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

logger = logging.getLogger("inferd.grpc")

# Error code (core/errors.py) → gRPC status: the one table of this adapter.
STATUS_BY_CODE: dict[ErrorCode, grpc.StatusCode] = {
    ErrorCode.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorCode.FORBIDDEN: grpc.StatusCode.PERMISSION_DENIED,
    ErrorCode.MODEL_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.JOB_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.INVALID_INPUT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.PAYLOAD_TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.REQUEST_TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,  # HTTP only (slow clients); one table for all codes
    ErrorCode.RATE_LIMITED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.OVERLOADED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.STORE_UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorCode.CONFLICT: grpc.StatusCode.ABORTED,
    ErrorCode.INFERENCE_ERROR: grpc.StatusCode.INTERNAL,
    ErrorCode.CONFIG_ERROR: grpc.StatusCode.INTERNAL,
    # Raised by HTTP routing only; gRPC answers unknown methods itself.
    ErrorCode.NOT_FOUND: grpc.StatusCode.UNIMPLEMENTED,
    ErrorCode.METHOD_NOT_ALLOWED: grpc.StatusCode.UNIMPLEMENTED,
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


def status_of(error: InferdError) -> grpc.StatusCode:
    return STATUS_BY_CODE.get(error.code, grpc.StatusCode.INTERNAL)


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

    async def _principal(self, context: Any, rpc: str) -> Any:
        scope = self.SCOPES[rpc]
        return None if scope is None else await self._admit(api_key(context.invocation_metadata()), scope)

    async def ServerLive(self, request: Any, context: Any, response: Any) -> Any:
        return response(live=True)

    async def ServerReady(self, request: Any, context: Any, response: Any) -> Any:
        return response(ready=await self._plane.server_ready())

    async def ServerMetadata(self, request: Any, context: Any, response: Any) -> Any:
        return response(name="inferd", version=__version__, extensions=[])

    async def ModelReady(self, request: Any, context: Any, response: Any) -> Any:
        principal = await self._principal(context, "ModelReady")
        ready = self._plane.model_ready(request.name, request.version or None, tenant=principal.tenant)
        return response(ready=ready)

    async def ModelMetadata(self, request: Any, context: Any, response: Any) -> Any:
        principal = await self._principal(context, "ModelMetadata")
        meta = self._plane.model_metadata(request.name, request.version or None, tenant=principal.tenant)
        message = response(name=meta.name, versions=meta.versions, platform=meta.platform)
        for spec, target in [(s, message.inputs) for s in meta.inputs] + [
            (s, message.outputs) for s in meta.outputs
        ]:
            target.add(name=spec.name, datatype=spec.datatype.value, shape=list(spec.shape))
        return message

    async def ModelInfer(self, request: Any, context: Any, response: Any) -> Any:
        principal = await self._principal(context, "ModelInfer")
        remaining = context.time_remaining()
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

    def handler(self) -> grpc.GenericRpcHandler:
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                self._guarded(getattr(self, name), response_cls),
                request_deserializer=request_cls.FromString,
                response_serializer=response_cls.SerializeToString,
            )
            for name, (request_cls, response_cls) in self._methods.items()
        }
        return grpc.method_handlers_generic_handler(SERVICE, handlers)

    @staticmethod
    def _guarded(
        method: Callable[[Any, Any, Any], Awaitable[Any]], response_cls: Any
    ) -> Callable[[Any, Any], Awaitable[Any]]:
        async def call(request: Any, context: Any) -> Any:
            try:
                return await method(request, context, response_cls)
            except InferdError as exc:
                metadata: tuple[tuple[str, str], ...] = ()
                retry_after = getattr(exc, "retry_after_s", None)
                if retry_after is not None:
                    metadata = ((RETRY_AFTER, str(max(1, int(-(-float(retry_after) // 1))))),)
                # gRPC calls carry no request id: a fresh reference ties the message to the log line.
                await context.abort(
                    status_of(exc), exc.for_client(os.urandom(6).hex(), what="reference"), metadata
                )
            except _DeadlinePassed:
                await context.abort(
                    grpc.StatusCode.DEADLINE_EXCEEDED, "the call's deadline passed before it ran"
                )
            except Exception as exc:  # never a traceback to the client; the log has it
                logger.exception("gRPC %s failed", getattr(method, "__name__", "call"))
                await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}")

        return call


class _DeadlinePassed(Exception):
    pass


def check_port_free(host: str, port: int) -> None:
    """Fail before serving, in one line, when the gRPC port is taken (grpc would only say so from inside
    the server's start-up)."""
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


def server_options(*, max_message_bytes: int, reuse_port: bool) -> list[tuple[str, Any]]:
    return [
        # Several `serve --workers` processes share the port; a single one must fail on a taken port.
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", -1),
    ]


async def start_grpc_server(
    *,
    servicer: InferenceServicer,
    host: str,
    port: int,
    max_message_bytes: int,
    reuse_port: bool = False,
) -> tuple[grpc.aio.Server, int]:
    """Start serving on the running event loop; returns the server and the bound port."""
    server = grpc.aio.server(
        options=server_options(max_message_bytes=max_message_bytes, reuse_port=reuse_port)
    )
    server.add_generic_rpc_handlers((servicer.handler(),))
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        bound = 0
        logger.debug("gRPC bind of %s failed: %s", address, exc)
    if not bound:
        raise OSError(f"cannot serve gRPC on {address}: the port is in use or not available")
    await server.start()
    return server, bound
