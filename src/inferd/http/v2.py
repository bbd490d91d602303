"""The Open Inference Protocol (V2) over REST: a thin adapter over the data plane.

Health answers are booleans in the status code, as the protocol says: 200 is true, 400 is false.
Errors have the protocol's shape ``{"error": "<message>"}`` with the native API's statuses.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, JsonValue

from inferd import __version__
from inferd.core.dataplane import DataPlane
from inferd.core.errors import InvalidInputError
from inferd.core.tenancy import KeyScope
from inferd.core.tensors import Datatype, TensorSpec, select_outputs
from inferd.http.compression import MIN_COMPRESS_BYTES, accepted_encoding, compress, decompress
from inferd.http.routes import Body, Call, ErrorStyle, HeaderParam, Reply, Route
from inferd.http.v2_codec import encode_infer_response, parse_infer_request

EXTENSIONS = ("binary_tensor_data", "parameters")
INFER_ERRORS = (401, 403, 404, 413, 422, 429, 500, 503, 504)


class V2InputTensor(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    datatype: Datatype
    shape: list[int]
    parameters: dict[str, Any] | None = Field(
        default=None, description="`binary_data_size`: this input's bytes in the binary part of the body."
    )
    data: Any = Field(default=None, description="Row-major flattened or nested values.")


class V2RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    parameters: dict[str, Any] | None = Field(
        default=None, description="`binary_data`: true to receive this output as binary data."
    )


class V2InferRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "id": "42",
                "inputs": [
                    {"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}
                ],
            }
        },
    )

    id: str | None = Field(default=None, description="Echoed in the response.")
    parameters: dict[str, JsonValue] | None = Field(
        default=None,
        description="Passed to the model, except the protocol's `binary_data_output` (all outputs as "
        "binary data) and `timeout` (microseconds; shortens the model's timeout_s).",
    )
    inputs: list[V2InputTensor] = Field(min_length=1)
    outputs: list[V2RequestedOutput] | None = Field(
        default=None, description="The outputs to return (default: all)."
    )


class V2OutputTensor(BaseModel):
    name: str
    datatype: Datatype
    shape: list[int]
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[V2OutputTensor]


class V2TensorMetadata(BaseModel):
    name: str
    datatype: Datatype
    shape: list[int]


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[V2TensorMetadata]
    outputs: list[V2TensorMetadata]


class V2ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class V2Live(BaseModel):
    live: bool


class V2Ready(BaseModel):
    ready: bool


class V2ModelReady(BaseModel):
    name: str
    ready: bool


def _specs(specs: tuple[TensorSpec, ...]) -> list[dict[str, Any]]:
    return [{"name": s.name, "datatype": s.datatype.value, "shape": list(s.shape)} for s in specs]


def _json(status: int, document: Any) -> Reply:
    return Reply(status, orjson.dumps(document))


class V2Routes:
    def __init__(self, *, dataplane: DataPlane) -> None:
        self._dataplane = dataplane

    async def server_metadata(self, call: Call) -> Reply:
        return _json(200, {"name": "inferd", "version": __version__, "extensions": EXTENSIONS})

    async def live(self, call: Call) -> Reply:
        return _json(200, {"live": True})

    async def ready(self, call: Call) -> Reply:
        ready = await self._dataplane.server_ready()
        return _json(200 if ready else 400, {"ready": ready})

    async def model_metadata(self, call: Call) -> Reply:
        meta = self._dataplane.model_metadata(
            call.params["name"], call.params.get("version"), tenant=call.tenant
        )
        document = {
            "name": meta.name,
            "versions": meta.versions,
            "platform": meta.platform,
            "inputs": _specs(meta.inputs),
            "outputs": _specs(meta.outputs),
        }
        return _json(200, document)

    async def model_ready(self, call: Call) -> Reply:
        name = call.params["name"]
        ready = self._dataplane.model_ready(name, call.params.get("version"), tenant=call.tenant)
        return _json(200 if ready else 400, {"name": name, "ready": ready})

    async def infer(self, call: Call) -> Reply:
        info = call.info
        name = info.model = call.params["name"]
        body = await call.body()
        encoding = call.header(b"content-encoding")
        if encoding is not None:
            body = decompress(body, encoding.decode("latin-1"), call.body_limit)
        header_length = _header_length(call.header(b"inference-header-content-length"))
        if encoding is not None or header_length is not None:
            call.check_json(body if header_length is None else body[:header_length])
        request = parse_infer_request(body, header_length)
        prediction = await self._dataplane.infer_tensors(
            tenant=call.tenant,
            model=name,
            version=call.params.get("version"),
            tensors=request.tensors,
            timeout_s=request.timeout_s,
            parameters=request.parameters,
        )
        info.version = prediction.version
        outputs = select_outputs(prediction.outputs, [output.name for output in request.outputs])
        payload, header_length = encode_infer_response(
            model=prediction.model, version=prediction.version, request=request, outputs=outputs
        )
        headers: list[tuple[bytes, bytes]] = []
        content_type = b"application/json"
        if header_length is not None:
            headers.append((b"inference-header-content-length", str(header_length).encode()))
            content_type = b"application/octet-stream"
        answer_encoding = accepted_encoding(call.header(b"accept-encoding"))
        if answer_encoding is not None and len(payload) >= MIN_COMPRESS_BYTES:
            payload = compress(payload, answer_encoding)
            headers.append((b"content-encoding", answer_encoding.encode()))
        return Reply(200, payload, headers, content_type)

    def routes(self) -> list[Route]:
        routes = [
            Route(
                "GET",
                "/v2",
                self.server_metadata,
                None,
                "Server metadata",
                "v2",
                response=V2ServerMetadata,
            ),
            Route(
                "GET",
                "/v2/health/live",
                self.live,
                None,
                "Liveness (200 true)",
                "v2",
                response=V2Live,
            ),
            Route(
                "GET",
                "/v2/health/ready",
                self.ready,
                None,
                "Readiness (200 true, 400 false)",
                "v2",
                response=V2Ready,
                response_statuses=(400,),
            ),
        ]
        infer_body = Body(
            V2InferRequest,
            parse_infer_request,
            content_types=("application/json", "application/octet-stream"),
        )
        # Content-Encoding and Inference-Header-Content-Length describe the body's bytes (compressed;
        # where its JSON header ends), which no parameter schema can tie to the body: described in words.
        infer_headers = {"Accept-Encoding": HeaderParam("gzip or deflate: the response is compressed")}
        infer_description = (
            "The body may be compressed (`Content-Encoding: gzip` or `deflate`; the body limit applies to "
            "the decompressed size). Binary tensor data extension: send `Content-Type: "
            "application/octet-stream` and `Inference-Header-Content-Length: <length of the JSON header>`, "
            "the JSON header, then the inputs' raw data."
        )
        for prefix, how in (
            ("/v2/models/{name}", "the version routing chooses"),
            ("/v2/models/{name}/versions/{version}", "a pinned version"),
        ):
            routes += [
                Route(
                    "GET",
                    prefix,
                    self.model_metadata,
                    KeyScope.MODELS,
                    f"Model metadata ({how})",
                    "v2",
                    response=V2ModelMetadata,
                    errors=(404,),
                ),
                Route(
                    "GET",
                    f"{prefix}/ready",
                    self.model_ready,
                    KeyScope.MODELS,
                    f"Model readiness ({how}; 200 true, 400 false)",
                    "v2",
                    response=V2ModelReady,
                    response_statuses=(400,),
                    errors=(404,),
                ),
                Route(
                    "POST",
                    f"{prefix}/infer",
                    self.infer,
                    KeyScope.PREDICT,
                    f"Inference on {how}",
                    "v2",
                    body=infer_body,
                    response=V2InferResponse,
                    errors=INFER_ERRORS,
                    headers=infer_headers,
                    description=infer_description,
                ),
            ]
        # The protocol's error shape; query parameters a route does not declare are ignored, as Triton
        # does: tritonclient sends its callers' query_params= along (e.g. for a proxy in front).
        return [replace(route, error_style=ErrorStyle.V2, ignores_unknown_query=True) for route in routes]


def _header_length(value: bytes | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidInputError("Inference-Header-Content-Length must be a number of bytes") from None
