"""A model's exception text never reaches a client in production: the client gets a generic message
naming the request (or job) id, and the server log has the detail under that id. ``--dev`` and a
model's ``expose_errors: true`` show it."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from inferd_http_testkit import JOBS_KEY, MODELS, PREDICT_KEY, InProcessAPI, assert_error

SECRET = "kaboom"  # the exception text of tests/fixtures/models/boom


@pytest.mark.parametrize("path", ["/v1/models/boom/predict", "/v1/models/boom/predict/batch"])
def test_production_hides_the_detail_and_logs_it(
    make_api: Callable[..., InProcessAPI], caplog: pytest.LogCaptureFixture, path: str
) -> None:
    api = make_api()
    body = {"inputs": [1]} if path.endswith("batch") else {"input": 1}
    with caplog.at_level("ERROR", logger="inferd"):
        response = api.post(path, key=PREDICT_KEY, json=body)
    error = assert_error(response, 500, "inference_error")
    message = error["error"]["message"]
    assert SECRET not in message
    assert "RuntimeError" in message and error["request_id"] in message
    logged = [r.getMessage() for r in caplog.records if error["request_id"] in r.getMessage()]
    assert logged and SECRET in logged[0], [r.getMessage() for r in caplog.records]


def test_a_failed_job_hides_the_detail(make_api: Callable[..., InProcessAPI]) -> None:
    api = make_api(worker=True, job_max_attempts=1)
    submitted = api.post("/v1/models/boom/jobs", key=JOBS_KEY, json={"input": 1})
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    job = api.get(f"/v1/jobs/{job_id}?wait=30", key=JOBS_KEY).json()
    assert job["status"] == "failed", job
    assert SECRET not in job["error"]["message"] and job_id in job["error"]["message"]


def test_dev_mode_shows_the_detail(make_api: Callable[..., InProcessAPI]) -> None:
    api = make_api(dev=True)
    response = api.post("/v1/models/boom/predict", key="dev", json={"input": 1})
    assert SECRET in assert_error(response, 500, "inference_error")["error"]["message"]


def test_a_model_may_opt_in_to_show_the_detail(make_api: Callable[..., InProcessAPI], tmp_path: Path) -> None:
    repo = tmp_path / "models"
    shutil.copytree(MODELS / "boom", repo / "boom")
    spec = repo / "boom" / "1" / "model.yaml"
    spec.write_text(spec.read_text() + "expose_errors: true\n")
    api = make_api(models=repo)
    response = api.post("/v1/models/boom/predict", key=PREDICT_KEY, json={"input": 1})
    assert SECRET in assert_error(response, 500, "inference_error")["error"]["message"]
