"""V2 REST framing: the binary tensor data extension both ways, protocol parameters, and bounded
decompression."""

from __future__ import annotations

import gzip
import struct
import zlib

import numpy as np
import orjson
import pytest

from inferd.core.errors import InvalidInputError, PayloadTooLargeError
from inferd.core.tensors import Datatype, Tensor
from inferd.http.compression import accepted_encoding, compress, decompress
from inferd.http.v2_codec import encode_infer_response, parse_infer_request
from inferd.http.wire import BodyLimit


def binary_request(header: dict[str, object], *blobs: bytes) -> tuple[bytes, int]:
    head = orjson.dumps(header)
    return head + b"".join(blobs), len(head)


def test_binary_inputs_follow_the_header_in_input_order() -> None:
    floats = np.arange(8, dtype=np.float32).reshape(2, 4)
    texts = b"".join(struct.pack("<I", len(t)) + t for t in (b"ab", b"\xff"))
    body, length = binary_request(
        {
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [2, 4], "parameters": {"binary_data_size": 32}},
                {
                    "name": "t",
                    "datatype": "BYTES",
                    "shape": [2],
                    "parameters": {"binary_data_size": len(texts)},
                },
                {"name": "j", "datatype": "INT32", "shape": [1], "data": [7]},
            ],
            "parameters": {"binary_data_output": True, "timeout": 250_000, "temperature": 0.5},
        },
        floats.tobytes(),
        texts,
    )
    request = parse_infer_request(body, length)
    x, t, j = request.tensors
    assert np.array_equal(x.array, floats) and x.parameters is None
    assert t.array.tolist() == ["ab", b"\xff"]  # UTF-8 as str, anything else as bytes
    assert j.array.tolist() == [7]
    assert request.binary_output is True and request.timeout_s == 0.25
    assert request.parameters == {"temperature": 0.5}  # protocol keys are not the model's


@pytest.mark.parametrize(
    ("size", "blob", "fragment"),
    [(16, b"\0" * 32, "16 bytes of binary data are not claimed"), (64, b"\0" * 32, "runs past the end")],
)
def test_binary_sizes_must_add_up(size: int, blob: bytes, fragment: str) -> None:
    header = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [4], "parameters": {"binary_data_size": size}}]
    }
    body, length = binary_request(header, blob)
    with pytest.raises(InvalidInputError) as info:
        parse_infer_request(body, length)
    assert fragment in info.value.message


@pytest.mark.parametrize(
    ("request_body", "fragment"),
    [
        ({"inputs": []}, "non-empty"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]}, '"data"'),
        ({"inputs": [{"name": "x", "datatype": "FP99", "shape": [1], "data": [1]}]}, "FP99"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [3], "data": [1, 2]}]}, "needs 3 elements"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1], "extra": 1}]}, "extra"),
        ({"id": 5, "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]}, '"id"'),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}], "outputs": [{}]}, "name"),
    ],
)
def test_malformed_requests_say_what_to_fix(request_body: dict[str, object], fragment: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        parse_infer_request(orjson.dumps(request_body))
    assert fragment in info.value.message


def test_header_length_must_fit_the_body() -> None:
    with pytest.raises(InvalidInputError):
        parse_infer_request(b"{}", 10)


def test_response_binary_per_output_or_for_all() -> None:
    request = parse_infer_request(
        orjson.dumps(
            {
                "id": "r1",
                "inputs": [{"name": "x", "datatype": "INT64", "shape": [2], "data": [1, 2]}],
                "outputs": [{"name": "a", "parameters": {"binary_data": True}}, {"name": "b"}],
            }
        )
    )
    outputs = [
        Tensor("a", Datatype.INT64, np.array([1, 2])),
        Tensor("b", Datatype.BYTES, np.array(["z"], dtype=object)),
    ]
    body, length = encode_infer_response(model="m", version="1", request=request, outputs=outputs)
    assert length is not None
    header = orjson.loads(body[:length])
    assert header["id"] == "r1" and header["model_version"] == "1"
    assert (
        header["outputs"][0]["parameters"] == {"binary_data_size": 16} and "data" not in header["outputs"][0]
    )
    assert header["outputs"][1]["data"] == ["z"]
    assert np.frombuffer(body[length:], dtype="<i8").tolist() == [1, 2]

    request.outputs = []
    body, length = encode_infer_response(model="m", version="1", request=request, outputs=outputs[:1])
    assert length is None and orjson.loads(body)["outputs"][0]["data"] == [1, 2]


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_decompression_round_trips_and_is_bounded(encoding: str) -> None:
    data = b"x" * 10_000
    assert decompress(compress(data, encoding), encoding, BodyLimit.server(10_000)) == data
    packed = gzip.compress(data) if encoding == "gzip" else zlib.compress(data)
    assert decompress(packed, encoding.upper(), BodyLimit.server(10_000)) == data
    with pytest.raises(PayloadTooLargeError) as refused:
        decompress(packed, encoding, BodyLimit.server(9_999))
    assert refused.value.message == (
        "decompressed request body exceeds the 9999-byte limit; the limit is the server setting "
        "max_body_bytes (INFERD_MAX_BODY_BYTES, or max_body_bytes: in the config file)"
    )
    with pytest.raises(InvalidInputError):
        decompress(packed[:20], encoding, BodyLimit.server(10_000))  # truncated
    with pytest.raises(InvalidInputError):
        decompress(b"not compressed", encoding, BodyLimit.server(10_000))


def test_unknown_encoding_and_identity() -> None:
    assert decompress(b"abc", "identity", BodyLimit.server(3)) == b"abc"
    with pytest.raises(InvalidInputError):
        decompress(b"abc", "br", BodyLimit.server(100))


@pytest.mark.parametrize(
    ("header", "chosen"),
    [
        (None, None),
        (b"gzip", "gzip"),
        (b"deflate, gzip;q=0", "deflate"),
        (b"br", None),
        (b"*", "gzip"),
        (b"gzip;q=0, deflate;q=0.5", "deflate"),
    ],
)
def test_accept_encoding(header: bytes | None, chosen: str | None) -> None:
    assert accepted_encoding(header) == chosen
