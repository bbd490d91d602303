"""V2 gRPC against a real ``inferd serve`` process, with the unmodified ``tritonclient.grpc`` clients
(sync and aio): health, metadata, inference on the bundled iris (onnx, sklearn) and sentiment (BYTES)
models, the same outputs as /v1, and the status codes of errors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from inferd_http_testkit import (
    SERVER_START_TIMEOUT_S,
    ServerProcess,
    free_port,
    run_inferd,
    running_server,
    v1_batch_outputs,
)

grpcclient = pytest.importorskip("tritonclient.grpc")
grpcaio = pytest.importorskip("tritonclient.grpc.aio")
from tritonclient.utils import InferenceServerException  # noqa: E402

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "models"
KEY = "grpc-all-key"
METADATA_ONLY_KEY = "grpc-models-key"
KEYS = f"{KEY}:acme:predict,models;{METADATA_ONLY_KEY}:acme:models"
AUTH = {"authorization": f"Bearer {KEY}"}
IRIS_ROWS = [[5.1, 3.5, 1.4, 0.2], [7.0, 3.2, 4.7, 1.4], [6.3, 3.3, 6.0, 2.5]]
TEXTS = ["I love it, the food was delicious.", "Awful, a complete waste of money. I hate it."]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    port = free_port()
    env = {"INFERD_API_KEYS": KEYS, "INFERD_GRPC_PORT": str(port), "INFERD_ACCESS_LOG": "off"}
    with running_server(tmp_path_factory.mktemp("grpc-server"), env=env, models=EXAMPLES) as process:
        yield process, f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def client(server: tuple[ServerProcess, str]) -> Iterator[Any]:
    with grpcclient.InferenceServerClient(server[1]) as grpc_client:
        yield grpc_client


def iris_input(rows: Any = IRIS_ROWS, datatype: str = "FP32") -> Any:
    array = np.asarray(rows, dtype=np.float32 if datatype == "FP32" else np.float64)
    tensor = grpcclient.InferInput("input", list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def text_input(texts: list[str] = TEXTS) -> Any:
    array = np.asarray(texts, dtype=object)
    tensor = grpcclient.InferInput("text", list(array.shape), "BYTES")
    tensor.set_data_from_numpy(array)
    return tensor


def v1_outputs(server: ServerProcess, model: str, version: str, inputs: list[Any]) -> list[Any]:
    return v1_batch_outputs(server, KEY, model, version, inputs)


def test_health_and_server_metadata_are_public(client: Any) -> None:
    assert client.is_server_live() and client.is_server_ready()
    metadata = client.get_server_metadata(as_json=True)
    assert metadata["name"] == "inferd" and metadata["version"]


@pytest.mark.parametrize(("version", "platform"), [("1", "onnx"), ("2", "sklearn")])
def test_iris_metadata_readiness_and_inference_match_v1(
    server: tuple[ServerProcess, str], client: Any, version: str, platform: str
) -> None:
    assert client.is_model_ready("iris", version, headers=AUTH)
    metadata = client.get_model_metadata("iris", version, headers=AUTH, as_json=True)
    assert metadata["name"] == "iris" and metadata["versions"] == ["1", "2"]
    assert metadata["platform"] == platform
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "4"]}]
    assert metadata["outputs"] == [{"name": "label", "datatype": "INT64", "shape": ["-1"]}]
    result = client.infer("iris", [iris_input()], model_version=version, headers=AUTH, request_id="req-7")
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == ("iris", version, "req-7")
    labels = result.as_numpy("label")
    assert labels.dtype == np.int64 and labels.shape == (3,)
    assert labels.tolist() == v1_outputs(server[0], "iris", version, IRIS_ROWS) == [0, 1, 2]


def test_sentiment_bytes_in_and_out_match_v1(server: tuple[ServerProcess, str], client: Any) -> None:
    metadata = client.get_model_metadata("sentiment", headers=AUTH, as_json=True)
    assert [t["name"] for t in metadata["outputs"]] == ["label", "scores"]
    result = client.infer(
        "sentiment", [text_input()], headers=AUTH, outputs=[grpcclient.InferRequestedOutput("label")]
    )
    v1 = v1_outputs(server[0], "sentiment", "1", [{"text": text} for text in TEXTS])
    assert [label.decode() for label in result.as_numpy("label")] == [o["label"] for o in v1]
    assert result.as_numpy("scores") is None  # only the requested output comes back


@pytest.mark.parametrize("compression", [None, "gzip", "deflate"])
def test_a_large_tensor_both_ways_through_the_flow_control_windows(
    client: Any, compression: str | None
) -> None:
    # 800 KB each way: many times the 64 KiB a client's stream window starts with, so the answer goes
    # out in frames as the client's WINDOW_UPDATEs arrive; compressed requests are inflated first.
    array = np.arange(200_000, dtype=np.float32).reshape(1, -1)
    tensor = grpcclient.InferInput("x", list(array.shape), "FP32")
    tensor.set_data_from_numpy(array)
    result = client.infer("echo", [tensor], headers=AUTH, compression_algorithm=compression)
    (output,) = result.get_response().outputs
    assert np.array_equal(result.as_numpy(output.name), array)


def test_routed_infer_uses_the_highest_version(client: Any) -> None:
    result = client.infer("iris", [iris_input()], headers={"x-api-key": KEY})
    assert result.get_response().model_version == "2"


def assert_status(call: Any, status: str, fragment: str) -> None:
    with pytest.raises(InferenceServerException) as info:
        call()
    assert info.value.status() == f"StatusCode.{status}", info.value
    assert fragment in info.value.message()


def test_errors_are_grpc_status_codes(client: Any) -> None:
    assert_status(
        lambda: client.infer("nope", [iris_input()], headers=AUTH), "NOT_FOUND", "no model named 'nope'"
    )
    assert_status(
        lambda: client.infer("iris", [iris_input([[1.0, 2.0, 3.0]])], headers=AUTH),
        "INVALID_ARGUMENT",
        "shape [1, 3] does not match",
    )
    assert_status(
        lambda: client.infer("iris", [iris_input(datatype="FP64")], headers=AUTH),
        "INVALID_ARGUMENT",
        "datatype FP64, model iris version 2 expects FP32",
    )
    assert_status(lambda: client.infer("iris", [iris_input()]), "UNAUTHENTICATED", "missing API key")
    assert_status(
        lambda: client.infer("iris", [iris_input()], headers={"authorization": "Bearer wrong"}),
        "UNAUTHENTICATED",
        "unknown or revoked API key",
    )
    assert_status(
        lambda: client.infer("iris", [iris_input()], headers={"x-api-key": METADATA_ONLY_KEY}),
        "PERMISSION_DENIED",
        "lacks the 'predict' scope",
    )
    assert_status(lambda: client.get_model_metadata("iris"), "UNAUTHENTICATED", "missing API key")
    assert_status(
        lambda: client.infer("iris", [iris_input()], headers={"authorization": "Basic abc"}),
        "UNAUTHENTICATED",
        "Authorization must be 'Bearer <key>' (got 'Basic')",
    )
    assert_status(lambda: client.is_model_ready("nope", headers=AUTH), "NOT_FOUND", "no model named 'nope'")
    # Triton-only RPCs are not served.
    assert_status(lambda: client.get_model_config("iris", headers=AUTH), "UNIMPLEMENTED", "")


def test_grpc_inferences_are_counted_like_v1(server: tuple[ServerProcess, str], client: Any) -> None:
    def count() -> float:
        with server[0].client() as http:
            text = http.get("/metrics").text
        for line in text.splitlines():
            if line.startswith('inference_requests_total{model="iris",tenant="acme",version="1"}'):
                return float(line.split()[-1])
        return 0.0

    before = count()
    client.infer("iris", [iris_input()], model_version="1", headers=AUTH)
    assert count() == before + 1


def test_aio_client(server: tuple[ServerProcess, str]) -> None:
    async def scenario() -> tuple[bool, list[int], list[str]]:
        async with grpcaio.InferenceServerClient(server[1]) as aio:
            live = await aio.is_server_live()
            tensor = grpcaio.InferInput("input", [3, 4], "FP32")
            tensor.set_data_from_numpy(np.asarray(IRIS_ROWS, dtype=np.float32))
            results = await asyncio.gather(
                *(aio.infer("iris", [tensor], model_version="1", headers=AUTH) for _ in range(4))
            )
            texts = grpcaio.InferInput("text", [2], "BYTES")
            texts.set_data_from_numpy(np.asarray(TEXTS, dtype=object))
            sentiment = await aio.infer("sentiment", [texts], headers=AUTH)
            with pytest.raises(InferenceServerException) as info:
                await aio.infer("iris", [tensor], model_version="9", headers=AUTH)
            assert info.value.status() == "StatusCode.NOT_FOUND"
            labels = {tuple(r.as_numpy("label").tolist()) for r in results}
            assert len(labels) == 1
            return live, list(labels.pop()), [v.decode() for v in sentiment.as_numpy("label")]

    live, labels, sentiment = asyncio.run(scenario())
    assert live and labels == [0, 1, 2] and sentiment == ["positive", "negative"]


def test_a_taken_grpc_port_stops_serve_with_one_line(
    server: tuple[ServerProcess, str], tmp_path: Path
) -> None:
    port = server[1].rsplit(":", 1)[1]
    result = run_inferd(
        ["serve", "--models", str(EXAMPLES), "--dev", "--port", str(free_port()), "--grpc-port", port],
        cwd=tmp_path,
        env={"INFERD_STORE": f"sqlite:///{tmp_path / 'jobs.db'}"},
    )
    assert result.returncode != 0
    assert f"cannot serve gRPC on 127.0.0.1:{port}" in result.stderr and "--no-grpc" in result.stderr
    assert "Traceback" not in result.stderr


def test_workers_share_the_grpc_port(tmp_path: Path) -> None:
    port = free_port()
    env = {"INFERD_API_KEYS": KEYS, "INFERD_GRPC_PORT": str(port), "INFERD_ACCESS_LOG": "off"}
    line = f"serving V2 gRPC on 127.0.0.1:{port}"
    with running_server(tmp_path, env=env, models=EXAMPLES, args=["--workers", "2"]) as process:
        # /readyz answered from one process; the other may still be starting. Both must bind the port
        # (a process that could not would fail its start-up instead of logging this line).
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while process.output().count(line) < 2:
            assert time.monotonic() < deadline, process.output()
            time.sleep(0.1)
        # Each client is a new connection; the kernel spreads them over both processes' sockets.
        for _ in range(6):
            with grpcclient.InferenceServerClient(f"127.0.0.1:{port}") as fresh:
                result = fresh.infer("iris", [iris_input()], model_version="2", headers=AUTH)
                assert result.as_numpy("label").tolist() == [0, 1, 2]
