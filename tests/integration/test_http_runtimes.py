"""Runtimes behind the HTTP API: input of the wrong width is a 422 for predict and for job submission
(nothing queued), the torch example answers like the other iris versions, and an onnx model with two
inputs takes both by name over /v1 and V2 REST."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from inferd_http_testkit import JOBS_KEY, MODELS_KEY, PREDICT_KEY, InProcessAPI, assert_error, in_process_api

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "models"
IRIS_ROW = [5.1, 3.5, 1.4, 0.2]
# The two-input model in process (batches as Columns) and in a model process (Columns pickled across).
PAIR_VERSIONS = {"1": "thread", "2": "process"}


def write_two_input_onnx(path: Path) -> None:
    """``scaled = features * float(scale)``: features FP32 [N, 3], scale INT64 [N, 1]. Different
    datatypes and widths, so an input fed under the other's name or element type cannot pass."""
    from onnx import TensorProto, helper, save_model

    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["scale"], ["scale_f"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["features", "scale_f"], ["scaled"]),
        ],
        "two_inputs",
        [
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("scale", TensorProto.INT64, ["N", 1]),
        ],
        [helper.make_tensor_value_info("scaled", TensorProto.FLOAT, ["N", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime the onnx extra allows
    save_model(model, str(path))


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessAPI]:
    """Iris as sklearn and onnx without an input_schema (only the runtime checks the width), and torch."""
    repo = tmp_path_factory.mktemp("models")
    for name, version, runtime, artifact in (
        ("plain", "1", "onnx", EXAMPLES / "iris" / "1" / "model.onnx"),
        ("plain", "2", "sklearn", EXAMPLES / "iris" / "2" / "model.joblib"),
    ):
        folder = repo / name / version
        folder.mkdir(parents=True)
        shutil.copyfile(artifact, folder / artifact.name)
        (folder / "model.yaml").write_text(
            f"runtime: {runtime}\nartifact: {artifact.name}\nmax_batch_size: 8\n"
        )
    shutil.copytree(EXAMPLES / "iris_torch", repo / "iris_torch")
    for version, isolation in PAIR_VERSIONS.items():
        pair = repo / "pair" / version
        pair.mkdir(parents=True)
        write_two_input_onnx(pair / "model.onnx")
        (pair / "model.yaml").write_text(
            f"runtime: onnx\nartifact: model.onnx\nmax_batch_size: 8\nisolation: {isolation}\n"
        )
    with in_process_api(models=repo) as instance:
        yield instance


@pytest.mark.parametrize("version", ["1", "2"])
def test_wrong_width_is_422_naming_the_expected_width(api: InProcessAPI, version: str) -> None:
    response = api.post(
        f"/v1/models/plain/versions/{version}/predict", key=PREDICT_KEY, json={"input": [1.0, 2.0]}
    )
    body = assert_error(response, 422, "invalid_input")
    assert "4" in body["error"]["message"], body
    good = api.post(f"/v1/models/plain/versions/{version}/predict", key=PREDICT_KEY, json={"input": IRIS_ROW})
    assert good.status_code == 200 and good.json()["output"] == 0


def test_batch_with_one_row_of_the_wrong_width_names_it(api: InProcessAPI) -> None:
    response = api.post(
        "/v1/models/plain/versions/2/predict/batch", key=PREDICT_KEY, json={"inputs": [IRIS_ROW, [1, 2, 3]]}
    )
    body = assert_error(response, 422, "invalid_input")
    assert body["error"]["message"].startswith("inputs[1]: has 3 features; the model takes 4"), body


def test_job_with_the_wrong_width_fails_at_submission(api: InProcessAPI) -> None:
    response = api.post("/v1/models/plain/versions/2/jobs", key=JOBS_KEY, json={"input": [1.0, 2.0, 3.0]})
    body = assert_error(response, 422, "invalid_input")
    assert "the model takes 4" in body["error"]["message"]
    listed = api.get("/v1/jobs", key=JOBS_KEY)
    assert listed.status_code == 200 and listed.json()["jobs"] == []  # nothing was queued


@pytest.mark.parametrize("version", ["1", "2"])
def test_torch_example_predicts_like_the_other_iris_versions(api: InProcessAPI, version: str) -> None:
    response = api.post(
        f"/v1/models/iris_torch/versions/{version}/predict/batch",
        key=PREDICT_KEY,
        json={"inputs": [IRIS_ROW, [7.0, 3.2, 4.7, 1.4], [6.3, 3.3, 6.0, 2.5]]},
    )
    assert response.status_code == 200, response.text
    assert response.json()["outputs"] == [0, 1, 2]


PAIR_ITEMS = [{"features": [1.0, 2.0, 3.0], "scale": [2]}, {"scale": [-1], "features": [0.5, 0.0, 4.0]}]
PAIR_OUTPUTS = [[2.0, 4.0, 6.0], [-0.5, 0.0, -4.0]]


@pytest.mark.parametrize("version", list(PAIR_VERSIONS))
def test_two_input_onnx_takes_one_mapping_per_item_over_v1(api: InProcessAPI, version: str) -> None:
    one = api.post(
        f"/v1/models/pair/versions/{version}/predict", key=PREDICT_KEY, json={"input": PAIR_ITEMS[0]}
    )
    assert one.status_code == 200, one.text
    assert one.json()["output"] == PAIR_OUTPUTS[0]
    batch = api.post(
        f"/v1/models/pair/versions/{version}/predict/batch", key=PREDICT_KEY, json={"inputs": PAIR_ITEMS}
    )
    assert batch.status_code == 200, batch.text
    assert batch.json()["outputs"] == PAIR_OUTPUTS


@pytest.mark.parametrize(
    ("item", "fragment"),
    [
        ({"features": [1.0, 2.0, 3.0]}, "inputs 'features', 'scale' to their rows, got 'features'"),
        ({"features": [1.0, 2.0, 3.0], "scale": [1], "extra": 1}, "got 'features', 'scale', 'extra'"),
        ([1.0, 2.0, 3.0], "got a list"),
        ({"features": [1.0, 2.0], "scale": [1]}, "input 'features' (rows of shape [3], float32)"),
        ({"features": [1.0, 2.0, 3.0], "scale": ["x"]}, "input 'scale' (rows of shape [1], int64)"),
    ],
)
def test_two_input_onnx_names_what_an_item_lacks(api: InProcessAPI, item: Any, fragment: str) -> None:
    response = api.post(
        "/v1/models/pair/versions/1/predict/batch", key=PREDICT_KEY, json={"inputs": [PAIR_ITEMS[0], item]}
    )
    body = assert_error(response, 422, "invalid_input")
    assert fragment in body["error"]["message"], body


@pytest.mark.parametrize("version", list(PAIR_VERSIONS))
def test_two_input_onnx_over_v2_rest_feeds_both_tensors_by_name(api: InProcessAPI, version: str) -> None:
    metadata = api.get(f"/v2/models/pair/versions/{version}", key=MODELS_KEY)
    assert metadata.status_code == 200, metadata.text
    assert metadata.json()["inputs"] == [
        {"name": "features", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "scale", "datatype": "INT64", "shape": [-1, 1]},
    ]
    features = np.asarray([item["features"] for item in PAIR_ITEMS], dtype=np.float32)
    request = {
        "inputs": [  # in the other order than the model declares them: names decide, not positions
            {"name": "scale", "datatype": "INT64", "shape": [2, 1], "data": [2, -1]},
            {"name": "features", "datatype": "FP32", "shape": [2, 3], "data": features.ravel().tolist()},
        ]
    }
    response = api.post(f"/v2/models/pair/versions/{version}/infer", key=PREDICT_KEY, json=request)
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    assert output["name"] == "scaled" and output["shape"] == [2, 3]
    assert output["data"] == [value for row in PAIR_OUTPUTS for value in row]
    missing = api.post(
        f"/v2/models/pair/versions/{version}/infer", key=PREDICT_KEY, json={"inputs": request["inputs"][1:]}
    )
    assert missing.status_code == 422 and "'scale'" in missing.text, missing.text
