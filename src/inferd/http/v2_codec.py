"""V2 REST infer bodies: the JSON request (with the binary tensor data extension) in, the response out.

Tensor conversion itself (datatypes, JSON ``data`` and raw bytes to numpy, BYTES framing) is
``core/tensors.py``, shared with gRPC; this module only deals with the REST framing: the JSON header,
``Inference-Header-Content-Length``, ``binary_data_size`` per input, ``binary_data`` per requested
output and ``binary_data_output`` for all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from inferd.core import json_limits
from inferd.core.errors import InvalidInputError
from inferd.core.tensors import (
    Tensor,
    decode_json,
    decode_raw,
    encode_json,
    encode_raw,
    parse_datatype,
    parse_shape,
)

_REQUEST_FIELDS = frozenset({"id", "parameters", "inputs", "outputs"})
_INPUT_FIELDS = frozenset({"name", "shape", "datatype", "parameters", "data"})
_OUTPUT_FIELDS = frozenset({"name", "parameters"})
# Request parameters that steer the protocol (tritonclient sends them) rather than the model.
PROTOCOL_PARAMETERS = frozenset(
    {"binary_data_output", "timeout", "priority", "sequence_id", "sequence_start", "sequence_end"}
)
_DUMP = orjson.OPT_SERIALIZE_NUMPY


@dataclass(slots=True)
class RequestedOutput:
    name: str
    binary: bool | None  # None: as binary_data_output says


@dataclass(slots=True)
class InferRequest:
    id: str | None
    tensors: list[Tensor]
    parameters: dict[str, Any] | None  # for the model
    outputs: list[RequestedOutput]
    binary_output: bool
    timeout_s: float | None


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInputError(f"{what} must be a JSON object")
    return value


def _check_fields(data: dict[str, Any], allowed: frozenset[str], what: str) -> None:
    unknown = data.keys() - allowed
    if unknown:
        raise InvalidInputError(f"{what}: unknown field(s) {sorted(unknown)}; allowed: {sorted(allowed)}")


def _parameters(data: dict[str, Any], what: str) -> dict[str, Any]:
    parameters = data.get("parameters")
    if parameters is None:
        return {}
    return dict(_object(parameters, f'{what} "parameters"'))


def parse_infer_request(body: bytes, header_length: int | None = None) -> InferRequest:
    """A V2 infer request: all JSON, or (binary extension) a JSON header of ``header_length`` bytes
    followed by the inputs' raw data in input order."""
    if header_length is None:
        header, binary = body, memoryview(b"")
    else:
        if not 0 < header_length <= len(body):
            raise InvalidInputError(
                f"Inference-Header-Content-Length {header_length} does not fit a body of {len(body)} bytes"
            )
        header, binary = body[:header_length], memoryview(body)[header_length:]
    try:
        data = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise json_limits.decode_error(header, exc, example="a V2 inference request") from None
    data = _object(data, "the request body")
    _check_fields(data, _REQUEST_FIELDS, "request")
    request_id = data.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInputError('"id" must be a string')
    parameters = _parameters(data, "request")
    raw_inputs = data.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInputError('"inputs" must be a non-empty list of tensors')
    tensors: list[Tensor] = []
    offset = 0
    for index, raw in enumerate(raw_inputs):
        tensor, offset = _input_tensor(_object(raw, f"inputs[{index}]"), index, binary, offset)
        tensors.append(tensor)
    if offset != len(binary):
        raise InvalidInputError(
            f"{len(binary) - offset} bytes of binary data are not claimed by any input's binary_data_size"
        )
    binary_output = parameters.pop("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise InvalidInputError('"binary_data_output" must be true or false')
    timeout = parameters.get("timeout")
    timeout_s = None
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0:
            raise InvalidInputError('"timeout" must be a non-negative number of microseconds')
        timeout_s = timeout / 1_000_000 if timeout > 0 else None
    model_parameters = {k: v for k, v in parameters.items() if k not in PROTOCOL_PARAMETERS}
    return InferRequest(
        id=request_id,
        tensors=tensors,
        parameters=model_parameters or None,
        outputs=_requested_outputs(data.get("outputs")),
        binary_output=binary_output,
        timeout_s=timeout_s,
    )


def _input_tensor(raw: dict[str, Any], index: int, binary: memoryview, offset: int) -> tuple[Tensor, int]:
    _check_fields(raw, _INPUT_FIELDS, f"inputs[{index}]")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInputError(f'inputs[{index}] needs a "name"')
    if "datatype" not in raw or "shape" not in raw:
        raise InvalidInputError(f'input {name!r} needs "datatype" and "shape"')
    datatype = parse_datatype(name, raw["datatype"])
    shape = parse_shape(name, raw["shape"])
    parameters = _parameters(raw, f"input {name!r}")
    size = parameters.pop("binary_data_size", None)
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidInputError(f'input {name!r}: "binary_data_size" must be a non-negative integer')
        if "data" in raw:
            raise InvalidInputError(f'input {name!r}: send "data" or "binary_data_size", not both')
        if offset + size > len(binary):
            raise InvalidInputError(
                f"input {name!r}: binary_data_size {size} runs past the end of the body's binary data"
            )
        array = decode_raw(name, datatype, shape, binary[offset : offset + size])
        offset += size
    else:
        if "data" not in raw:
            raise InvalidInputError(f'input {name!r} needs "data" (or binary data with "binary_data_size")')
        array = decode_json(name, datatype, shape, raw["data"])
    return Tensor(name, datatype, array, parameters or None), offset


def _requested_outputs(raw: Any) -> list[RequestedOutput]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidInputError('"outputs" must be a list of {"name": ...}')
    outputs = []
    for index, item in enumerate(raw):
        item = _object(item, f"outputs[{index}]")
        _check_fields(item, _OUTPUT_FIELDS, f"outputs[{index}]")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidInputError(f'outputs[{index}] needs a "name"')
        parameters = _parameters(item, f"output {name!r}")
        if "classification" in parameters:
            raise InvalidInputError(
                f"output {name!r}: the classification extension is not supported; ask for the output itself"
            )
        binary = parameters.get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise InvalidInputError(f'output {name!r}: "binary_data" must be true or false')
        outputs.append(RequestedOutput(name, binary))
    return outputs


def encode_infer_response(
    *, model: str, version: str, request: InferRequest, outputs: list[Tensor]
) -> tuple[bytes, int | None]:
    """The response body and, when any output travels as binary data, the JSON header's length (for
    ``Inference-Header-Content-Length``)."""
    binary_flags = {output.name: output.binary for output in request.outputs}
    document: dict[str, Any] = {"model_name": model, "model_version": version}
    if request.id is not None:
        document["id"] = request.id
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for tensor in outputs:
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype.value,
            "shape": tensor.shape,
        }
        flag = binary_flags.get(tensor.name)
        if flag if flag is not None else request.binary_output:
            blob = encode_raw(tensor)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = encode_json(tensor)
        entries.append(entry)
    document["outputs"] = entries
    header = orjson.dumps(document, option=_DUMP)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)
