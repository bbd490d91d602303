"""Runtimes behind the HTTP API: input of the wrong width is a 422 for predict and for job submission
(nothing queued), and the torch example answers like the other iris versions."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from inferd_http_testkit import JOBS_KEY, PREDICT_KEY, InProcessAPI, assert_error, in_process_api

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "models"
IRIS_ROW = [5.1, 3.5, 1.4, 0.2]


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
