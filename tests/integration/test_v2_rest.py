"""V2 REST against a real ``inferd serve`` process, with the unmodified ``tritonclient.http`` clients
(sync and aio): health, metadata, inference on the bundled iris (onnx, sklearn) and sentiment (BYTES)
models with binary data (the client's default) and JSON, compressed requests and responses, the same
outputs as /v1, errors in the protocol's shape, metrics as /v1 and the body limit on decompressed
bodies."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson
import pytest
from inferd_http_testkit import EXAMPLES, IRIS_ROWS, TEXTS, ServerProcess, running_server, v1_batch_outputs
from prometheus_client.parser import text_string_to_metric_families

httpclient = pytest.importorskip("tritonclient.http")
httpaio = pytest.importorskip("tritonclient.http.aio")
from tritonclient.utils import InferenceServerException  # noqa: E402

pytestmark = pytest.mark.slow

KEY = "v2-all-key"
MODELS_ONLY_KEY = "v2-models-key"
KEYS = f"{KEY}:acme:predict,models;{MODELS_ONLY_KEY}:acme:models"


def auth(key: str = KEY) -> dict[str, str]:
    # A new dict per call: tritonclient adds its own headers (Inference-Header-Content-Length, encodings)
    # to the dict it is given.
    return {"Authorization": f"Bearer {key}"}


MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"INFERD_API_KEYS": KEYS, "INFERD_MAX_BODY_BYTES": str(MAX_BODY)}
    with running_server(
        tmp_path_factory.mktemp("v2-server"), env=env, models=EXAMPLES, args=["--no-grpc"]
    ) as process:
        yield process


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[Any]:
    triton = httpclient.InferenceServerClient(server.base_url.removeprefix("http://"))
    yield triton
    triton.close()


def iris_input(binary: bool = True, rows: Any = IRIS_ROWS, datatype: str = "FP32") -> Any:
    array = np.asarray(rows, dtype=np.float32 if datatype == "FP32" else np.float64)
    tensor = httpclient.InferInput("input", list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def text_input(binary: bool = True) -> Any:
    tensor = httpclient.InferInput("text", [len(TEXTS)], "BYTES")
    tensor.set_data_from_numpy(np.asarray(TEXTS, dtype=object), binary_data=binary)
    return tensor


def v1_outputs(server: ServerProcess, model: str, version: str, inputs: list[Any]) -> list[Any]:
    return v1_batch_outputs(server, KEY, model, version, inputs)


def requests_total(server: ServerProcess) -> dict[tuple[str, str], float]:
    with server.client() as http:
        text = http.get("/metrics").text
    totals: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "inference_requests_total" and sample.labels["tenant"] == "acme":
                totals[(sample.labels["model"], sample.labels["version"])] = sample.value
    return totals


def test_health_and_server_metadata(client: Any) -> None:
    assert client.is_server_live() and client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "inferd" and "binary_tensor_data" in metadata["extensions"]


@pytest.mark.parametrize(("version", "platform"), [("1", "onnx"), ("2", "sklearn")])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_iris_metadata_readiness_and_inference_match_v1(
    server: ServerProcess, client: Any, version: str, platform: str, binary: bool
) -> None:
    assert client.is_model_ready("iris", version, headers=auth())
    metadata = client.get_model_metadata("iris", version, headers=auth())
    assert metadata["name"] == "iris" and metadata["versions"] == ["1", "2"]
    assert metadata["platform"] == platform
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert metadata["outputs"] == [{"name": "label", "datatype": "INT64", "shape": [-1]}]

    outputs = [httpclient.InferRequestedOutput("label", binary_data=binary)]
    before = requests_total(server).get(("iris", version), 0.0)
    result = client.infer(
        "iris", [iris_input(binary)], model_version=version, outputs=outputs, headers=auth(), request_id="r-7"
    )
    labels = result.as_numpy("label")
    assert labels.dtype == np.int64 and labels.shape == (3,)
    assert labels.tolist() == v1_outputs(server, "iris", version, IRIS_ROWS)
    response = result.get_response()
    assert response["id"] == "r-7" and response["model_version"] == version
    assert ("parameters" in response["outputs"][0]) is binary  # binary_data_size only for binary outputs
    # One V2 infer is one request, like /v1 (the v1 comparison above added one more).
    assert requests_total(server)[("iris", version)] == before + 2


def test_client_defaults_and_routed_call(server: ServerProcess, client: Any) -> None:
    # No outputs and binary inputs: tritonclient asks for every output as binary data.
    result = client.infer("iris", [iris_input()], headers=auth())
    assert result.get_response()["model_version"] == "2"  # routed: the highest version
    assert result.as_numpy("label").tolist() == v1_outputs(server, "iris", "2", IRIS_ROWS)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_sentiment_bytes_tensors(server: ServerProcess, client: Any, binary: bool) -> None:
    outputs = [httpclient.InferRequestedOutput("label", binary_data=binary)]
    result = client.infer("sentiment", [text_input(binary)], outputs=outputs, headers=auth())
    labels = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("label").tolist()]
    expected = v1_outputs(server, "sentiment", "1", [{"text": text} for text in TEXTS])
    assert labels == [output["label"] for output in expected]
    assert [output["name"] for output in result.get_response()["outputs"]] == ["label"]  # only those asked


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests_and_responses(server: ServerProcess, client: Any, algorithm: str) -> None:
    rows = IRIS_ROWS * 40  # a response large enough to be compressed
    result = client.infer(
        "iris",
        [iris_input(True, rows)],
        model_version="2",
        headers=auth(),
        request_compression_algorithm=algorithm,
        response_compression_algorithm=algorithm,
    )
    assert result.as_numpy("label").tolist() == v1_outputs(server, "iris", "2", IRIS_ROWS) * 40
    body = orjson.dumps(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": IRIS_ROWS[0]}]}
    )
    packed = gzip.compress(body) if algorithm == "gzip" else zlib.compress(body)
    with server.client(KEY) as http:
        response = http.post(
            "/v2/models/iris/versions/2/infer",
            content=packed,
            headers={"Content-Encoding": algorithm, "Accept-Encoding": algorithm},
        )
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == v1_outputs(server, "iris", "2", IRIS_ROWS[:1])


def test_zip_bomb_is_413(server: ServerProcess) -> None:
    bomb = gzip.compress(b"[" + b" " * (50 * 1024 * 1024) + b"]")
    assert len(bomb) < MAX_BODY
    with server.client(KEY) as http:
        response = http.post("/v2/models/iris/infer", content=bomb, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 413
    assert "decompressed" in response.json()["error"]
    with server.client() as http:
        assert http.get("/livez").status_code == 200


def test_aio_client(server: ServerProcess) -> None:
    async def scenario() -> list[int]:
        triton = httpaio.InferenceServerClient(server.base_url.removeprefix("http://"))
        try:
            assert await triton.is_server_ready()
            assert await triton.is_model_ready("iris", "1", headers=auth())
            tensor = httpaio.InferInput("input", [3, 4], "FP32")
            tensor.set_data_from_numpy(np.asarray(IRIS_ROWS, dtype=np.float32))
            result = await triton.infer("iris", [tensor], model_version="1", headers=auth())
            labels: list[int] = result.as_numpy("label").tolist()
            return labels
        finally:
            await triton.close()

    assert asyncio.run(scenario()) == v1_outputs(server, "iris", "1", IRIS_ROWS)


def _error(call: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value


def test_errors_have_the_protocol_shape_and_native_statuses(client: Any) -> None:
    unknown = _error(lambda: client.infer("nope", [iris_input()], headers=auth()))
    assert unknown.status() == "404" and "nope" in unknown.message()
    assert _error(lambda: client.get_model_metadata("iris", "9", headers=auth())).status() == "404"
    assert not client.is_model_ready("nope", headers=auth())

    bad_shape = _error(lambda: client.infer("iris", [iris_input(rows=[[1.0, 2.0, 3.0]])], headers=auth()))
    assert bad_shape.status() == "422" and "shape" in bad_shape.message()
    bad_type = _error(lambda: client.infer("iris", [iris_input(datatype="FP64")], headers=auth()))
    assert bad_type.status() == "422" and "FP32" in bad_type.message()

    no_key = _error(lambda: client.infer("iris", [iris_input()]))
    assert no_key.status() == "401" and "key" in no_key.message()
    forbidden = _error(lambda: client.infer("iris", [iris_input()], headers=auth(MODELS_ONLY_KEY)))
    assert forbidden.status() == "403" and "predict" in forbidden.message()
    assert _error(lambda: client.get_model_metadata("iris")).status() == "401"
    assert client.get_model_metadata("iris", headers=auth(MODELS_ONLY_KEY))["name"] == "iris"


def test_raw_http_details(server: ServerProcess) -> None:
    with server.client(KEY) as http:
        health = http.get("/v2/health/ready", headers={"X-Request-ID": "v2-id-1"})
        assert health.status_code == 200 and health.json() == {"ready": True}
        assert health.headers["x-request-id"] == "v2-id-1"
        assert http.get("/v2/models/iris/versions/1/ready").json() == {"name": "iris", "ready": True}
        body = {
            "id": "x1",
            "parameters": {"binary_data_output": False},
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 4], "data": IRIS_ROWS[:2]}],
            "outputs": [{"name": "nope"}],
        }
        missing = http.post("/v2/models/iris/infer", json=body)
        assert missing.status_code == 422 and "nope" in missing.json()["error"]
        classification = http.post(
            "/v2/models/iris/infer",
            json={**body, "outputs": [{"name": "label", "parameters": {"classification": 2}}]},
        )
        assert classification.status_code == 422 and "classification" in classification.json()["error"]
        unknown_field = http.post("/v2/models/iris/infer", json={**body, "extra": 1})
        assert unknown_field.status_code == 422 and set(unknown_field.json()) == {"error"}
        parameters = http.post(
            "/v2/models/iris/infer", json={**body, "outputs": [], "parameters": {"temperature": 1}}
        )
        assert parameters.status_code == 422 and "parameters" in parameters.json()["error"]
