"""The gRPC adapter in process: the committed descriptor against the .proto and tritonclient's
messages, the status code table, retry delay, deadlines, typed contents, and auth through the
Gatekeeper, on the real transport (grpc/transport.py) over a fake data plane, with grpc.aio as the client."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import pytest

from inferd.core.dataplane import ModelMetadata
from inferd.core.errors import (
    InferenceError,
    InferenceTimeoutError,
    ModelNotFoundError,
    OverloadedError,
    RateLimitedError,
)
from inferd.core.prediction import Prediction
from inferd.core.tenancy import KeyRing, RateLimiter
from inferd.core.tensors import Datatype, Tensor, TensorSpec
from inferd.grpc import messages
from inferd.grpc.server import RETRY_AFTER, STATUS_BY_CODE, InferenceServicer, start_grpc_server
from inferd.grpc.transport import GrpcStatus
from inferd.http.gatekeeper import Gatekeeper

KEY = "unit-key"


def test_committed_descriptor_is_compiled_from_the_proto() -> None:
    pytest.importorskip("grpc_tools")
    from inferd.grpc import _descriptor, protogen

    assert protogen.compile_descriptor() == _descriptor.SERIALIZED


def test_messages_match_tritonclients_field_by_field() -> None:
    service_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2")

    def fields(descriptor: Any) -> dict[str, Any]:
        found = {
            f.name: (f.number, f.type, f.is_repeated, f.message_type.full_name if f.message_type else None)
            for f in descriptor.fields
        }
        for nested in descriptor.nested_types:
            if not nested.GetOptions().map_entry:
                found[nested.name] = fields(nested)
        return found

    ours = messages.service_methods()
    theirs = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods_by_name
    for name, (request_cls, response_cls) in ours.items():
        method = theirs[name]
        assert fields(request_cls.DESCRIPTOR) == fields(method.input_type), name
        assert fields(response_cls.DESCRIPTOR) == fields(method.output_type), name
        assert request_cls.DESCRIPTOR.full_name == method.input_type.full_name


@dataclass
class FakePlane:
    error: Exception | None = None
    calls: list[dict[str, Any]] = field(default_factory=list)

    async def server_ready(self) -> bool:
        return True

    def model_ready(self, name: str, version: str | None, *, tenant: str) -> bool:
        if self.error:
            raise self.error
        return name == "m"

    def model_metadata(self, name: str, version: str | None, *, tenant: str) -> ModelMetadata:
        spec = TensorSpec(name="x", datatype=Datatype.FP32, shape=(-1, 2))
        return ModelMetadata(name, ["1"], "python", (spec,), (spec,))

    async def infer_tensors(self, **kwargs: Any) -> Prediction:
        self.calls.append(kwargs)
        if self.error:
            raise self.error
        outputs = [Tensor(t.name + "_out", t.datatype, t.array) for t in kwargs["tensors"]]
        return Prediction(kwargs["model"], "1", outputs)


@dataclass
class Harness:
    plane: FakePlane
    channel: grpc.aio.Channel

    async def call(
        self, rpc: str, request: Any, *, key: str | None = KEY, timeout: float | None = None
    ) -> Any:
        request_cls, response_cls = messages.service_methods()[rpc]
        stub = self.channel.unary_unary(
            f"/{messages.SERVICE}/{rpc}",
            request_serializer=request_cls.SerializeToString,
            response_deserializer=response_cls.FromString,
        )
        metadata = (("authorization", f"Bearer {key}"),) if key else ()
        return await stub(request, metadata=metadata, timeout=timeout)


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[Harness]:
    plane = FakePlane()
    gatekeeper = Gatekeeper(
        keyring=KeyRing.parse(f"{KEY}:acme:predict,models;limited:slow:predict"),
        rate_limiter=RateLimiter(default=None, overrides={"slow": (0.001, 1.0)}),
    )
    servicer = InferenceServicer(plane=plane, admit=gatekeeper.admit_key)  # type: ignore[arg-type]
    server, port = await start_grpc_server(
        servicer=servicer, host="127.0.0.1", port=0, max_message_bytes=1 << 20
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Harness(plane, channel)
    finally:
        await channel.close()
        await server.stop(None)


def infer_request(**tensors: tuple[str, Any]) -> Any:
    request = messages.ModelInferRequest(model_name="m", id="r1")
    for name, (datatype, array) in tensors.items():
        request.inputs.add(name=name, datatype=datatype, shape=list(np.shape(array)))
    return request


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_raw_contents_round_trip_and_the_deadline_shortens_the_timeout() -> None:
    async def scenario() -> None:
        async with serving() as h:
            array = np.arange(6, dtype="<f4").reshape(3, 2)
            request = infer_request(x=("FP32", array))
            request.raw_input_contents.append(array.tobytes())
            response = await h.call("ModelInfer", request, timeout=2.0)
            assert (response.model_name, response.model_version, response.id) == ("m", "1", "r1")
            (output,) = response.outputs
            assert (output.name, output.datatype, list(output.shape)) == ("x_out", "FP32", [3, 2])
            assert np.frombuffer(response.raw_output_contents[0], "<f4").tolist() == array.ravel().tolist()
            (call,) = h.plane.calls
            assert call["tenant"] == "acme" and call["version"] is None
            assert 0 < call["timeout_s"] <= 2.1  # grpc rounds the deadline up to its timer tick
            await h.call("ModelInfer", request)
            assert h.plane.calls[1]["timeout_s"] is None  # no deadline: the model's own timeout

    run(scenario())


def test_typed_contents_and_parameters() -> None:
    async def scenario() -> None:
        async with serving() as h:
            request = infer_request(a=("INT8", [1, -2]), t=("BYTES", ["x", "y"]))
            request.inputs[0].contents.int_contents.extend([1, -2])
            request.inputs[1].contents.bytes_contents.extend([b"x", b"\xff"])
            request.parameters["temperature"].double_param = 0.5
            request.parameters["greedy"].bool_param = True
            response = await h.call("ModelInfer", request)
            assert [o.datatype for o in response.outputs] == ["INT8", "BYTES"]
            (call,) = h.plane.calls
            a, t = call["tensors"]
            assert a.array.dtype == np.int8 and a.array.tolist() == [1, -2]
            assert t.array.tolist() == ["x", b"\xff"]
            assert call["parameters"] == {"temperature": 0.5, "greedy": True}
            assert response.raw_output_contents[1] == b"\x01\x00\x00\x00x\x01\x00\x00\x00\xff"

            bad = infer_request(a=("INT8", [1, 300]))
            bad.inputs[0].contents.int_contents.extend([1, 300])
            await _expect(h.call("ModelInfer", bad), GrpcStatus.INVALID_ARGUMENT, "out of range for INT8")
            half = infer_request(a=("FP16", [1.0]))
            half.inputs[0].contents.fp32_contents.append(1.0)
            await _expect(
                h.call("ModelInfer", half), GrpcStatus.INVALID_ARGUMENT, "only as raw_input_contents"
            )
            mismatch = infer_request(a=("INT8", [1]), b=("INT8", [1]))
            mismatch.raw_input_contents.append(b"\x01")
            await _expect(
                h.call("ModelInfer", mismatch), GrpcStatus.INVALID_ARGUMENT, "1 entries for 2 inputs"
            )
            short = infer_request(a=("INT32", [1, 2]))
            short.raw_input_contents.append(b"\x01\x00\x00\x00")
            await _expect(h.call("ModelInfer", short), GrpcStatus.INVALID_ARGUMENT, "needs 8 bytes")
            unknown = infer_request(a=("FLOAT", [1]))
            unknown.raw_input_contents.append(b"\x00" * 4)
            await _expect(h.call("ModelInfer", unknown), GrpcStatus.INVALID_ARGUMENT, "not a V2 datatype")

    run(scenario())


async def _expect(call: Any, status: GrpcStatus, fragment: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code().value[0] == status, info.value
    assert fragment in (info.value.details() or "")
    return info.value


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (ModelNotFoundError("no model named 'q'"), GrpcStatus.NOT_FOUND),
        (InferenceTimeoutError("too slow"), GrpcStatus.DEADLINE_EXCEEDED),
        (InferenceError("model m:1 failed: ValueError: x"), GrpcStatus.INTERNAL),
        (OverloadedError("queue full", retry_after_s=2.0), GrpcStatus.RESOURCE_EXHAUSTED),
        (RuntimeError("a bug"), GrpcStatus.INTERNAL),
    ],
)
def test_errors_map_through_the_table(error: Exception, status: GrpcStatus) -> None:
    async def scenario() -> None:
        async with serving() as h:
            h.plane.error = error
            request = infer_request(x=("INT8", [1]))
            request.raw_input_contents.append(b"\x01")
            failure = await _expect(h.call("ModelInfer", request), status, "")
            details = failure.details() or ""
            if isinstance(error, RuntimeError):
                assert details == "internal error: RuntimeError"  # no traceback, no internals
            else:
                assert details == str(error)
            trailing = dict(failure.trailing_metadata() or ())
            if isinstance(error, OverloadedError):
                assert trailing[RETRY_AFTER] == "2"

    run(scenario())


def test_rate_limit_answers_resource_exhausted_with_the_retry_delay() -> None:
    async def scenario() -> None:
        async with serving() as h:
            assert (await h.call("ModelReady", messages.service_methods()["ModelReady"][0](name="m"))).ready
            request = infer_request(x=("INT8", [1]))
            request.raw_input_contents.append(b"\x01")
            await h.call("ModelInfer", request, key="limited")  # the burst of 1
            failure = await _expect(
                h.call("ModelInfer", request, key="limited"), GrpcStatus.RESOURCE_EXHAUSTED, "rate limit"
            )
            assert int(dict(failure.trailing_metadata() or ())[RETRY_AFTER]) >= 1
            await _expect(
                h.call("ModelReady", messages.service_methods()["ModelReady"][0](name="m"), key="limited"),
                GrpcStatus.PERMISSION_DENIED,
                "lacks the 'models' scope",
            )

    run(scenario())


def test_every_error_code_has_a_status() -> None:
    from inferd.core import errors

    codes = {
        cls.code
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.InferdError)
    }
    assert codes <= set(STATUS_BY_CODE)
    assert STATUS_BY_CODE[RateLimitedError("x", retry_after_s=1).code] is GrpcStatus.RESOURCE_EXHAUSTED


def test_public_health_and_metadata() -> None:
    async def scenario() -> None:
        async with serving() as h:
            methods = messages.service_methods()
            assert (await h.call("ServerLive", methods["ServerLive"][0](), key=None)).live
            assert (await h.call("ServerReady", methods["ServerReady"][0](), key=None)).ready
            assert (await h.call("ServerMetadata", methods["ServerMetadata"][0](), key=None)).name == "inferd"
            meta = await h.call("ModelMetadata", methods["ModelMetadata"][0](name="m"))
            assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("x", "FP32", [-1, 2])]
            await _expect(
                h.call("ModelMetadata", methods["ModelMetadata"][0](name="m"), key=None),
                GrpcStatus.UNAUTHENTICATED,
                "missing API key",
            )

    run(scenario())


def test_a_taken_port_is_a_clear_error() -> None:
    async def scenario() -> None:
        gatekeeper = Gatekeeper(
            keyring=KeyRing.parse(f"{KEY}:acme:predict"), rate_limiter=RateLimiter(default=None)
        )
        servicer = InferenceServicer(plane=FakePlane(), admit=gatekeeper.admit_key)  # type: ignore[arg-type]
        first, port = await start_grpc_server(
            servicer=servicer, host="127.0.0.1", port=0, max_message_bytes=1024
        )
        try:
            with pytest.raises(OSError, match=f"cannot serve gRPC on 127.0.0.1:{port}"):
                await start_grpc_server(
                    servicer=servicer, host="127.0.0.1", port=port, max_message_bytes=1024
                )
        finally:
            await first.stop(None)

    run(scenario())
