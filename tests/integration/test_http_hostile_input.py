"""Hostile input on the native API: huge names, deep nesting, huge integers. Each answer is a clear
4xx that quotes little of the input, nothing is counted as an inference error, and /metrics stays small."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from inferd_http_testkit import (
    JOBS_KEY,
    MODELS_KEY,
    PREDICT_KEY,
    InProcessAPI,
    assert_error,
    in_process_api,
)

from inferd.metrics import OTHER

HUGE_NAME = "m" * 60_000


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessAPI]:
    with in_process_api() as instance:  # the default 1 MiB body limit
        yield instance


@pytest.mark.parametrize(
    ("method", "path", "key"),
    [
        ("POST", f"/v1/models/{HUGE_NAME}/predict", PREDICT_KEY),
        ("POST", f"/v1/models/ok/versions/{HUGE_NAME}/predict", PREDICT_KEY),
        ("GET", f"/v1/models/{HUGE_NAME}", MODELS_KEY),
        ("GET", f"/v1/jobs/{HUGE_NAME}", JOBS_KEY),
    ],
)
def test_a_huge_name_is_not_echoed(api: InProcessAPI, method: str, path: str, key: str) -> None:
    response = api.request(method, path, key=key, json={"input": 1} if method == "POST" else None)
    assert response.status_code == 404, response.text[:300]
    assert len(response.content) < 600, response.text[:300]
    assert "60000 characters" in response.json()["error"]["message"]


def test_huge_unknown_names_share_the_other_label(api: InProcessAPI) -> None:
    for i in range(20):
        response = api.post(f"/v1/models/{i}{HUGE_NAME}/predict", key=PREDICT_KEY, json={"input": 1})
        assert_error(response, 404, "model_not_found")
    metrics = api.get("/metrics").text
    assert HUGE_NAME[:1000] not in metrics
    assert len(metrics) < 100_000
    assert f'model="{OTHER}",tenant="acme",version="{OTHER}"' in metrics


def test_unknown_fields_are_named_by_a_short_prefix(api: InProcessAPI) -> None:
    body = {"input": 1, **{f"{i}{HUGE_NAME[:10_000]}": 1 for i in range(20)}}
    response = api.post("/v1/models/ok/predict", key=PREDICT_KEY, json=body)
    message = assert_error(response, 422, "invalid_input")["error"]["message"]
    assert len(message) < 800, message
    assert "and 15 more" in message


def test_a_schema_error_quotes_a_short_prefix(api: InProcessAPI) -> None:
    response = api.post("/v1/models/schema/predict", key=PREDICT_KEY, json={"input": {"x": HUGE_NAME}})
    message = assert_error(response, 422, "invalid_input")["error"]["message"]
    assert len(message) < 500, message


# -- nesting ----------------------------------------------------------------------------------------


def nested(depth: int) -> bytes:
    """An input item nested ``depth`` levels deep (the body adds one more)."""
    return b'{"input": ' + b"[" * depth + b"1" + b"]" * depth + b"}"


def inference_errors(api: InProcessAPI) -> float:
    total = 0.0
    for line in api.get("/metrics").text.splitlines():
        if line.startswith("inference_errors_total{") and 'error_type="inference_error"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.parametrize("depth", [64, 300, 1023, 5000])
@pytest.mark.parametrize(
    ("path", "key"),
    [
        ("/v1/models/ok/predict", PREDICT_KEY),
        ("/v1/models/schema/predict", PREDICT_KEY),
        ("/v1/models/ok/predict/batch", PREDICT_KEY),
        ("/v1/models/ok/jobs", JOBS_KEY),
    ],
)
def test_deep_nesting_is_invalid_input_before_the_pipeline(
    api: InProcessAPI, caplog: pytest.LogCaptureFixture, path: str, key: str, depth: int
) -> None:
    before = inference_errors(api)
    with caplog.at_level("ERROR"):
        response = api.post(path, key=key, content=nested(depth))
    message = assert_error(response, 422, "invalid_input")["error"]["message"]
    assert "nested more than 64 levels" in message
    assert not caplog.records, [r.getMessage() for r in caplog.records]
    assert inference_errors(api) == before


def test_nesting_within_the_limit_is_served(api: InProcessAPI) -> None:
    item: object = 1
    for _ in range(62):  # + the body object + "input" list... 63 levels in all
        item = [item]
    response = api.post("/v1/models/ok/predict", key=PREDICT_KEY, json={"input": item})
    assert response.status_code == 200, response.text
    assert response.json()["output"] == item


def test_the_nesting_limit_is_a_setting(make_api: Callable[..., InProcessAPI]) -> None:
    strict = make_api(max_json_depth=3)
    assert strict.post("/v1/models/ok/predict", key=PREDICT_KEY, json={"input": [[1]]}).status_code == 200
    response = strict.post("/v1/models/ok/predict", key=PREDICT_KEY, json={"input": [[[1]]]})
    assert "nested more than 3 levels" in assert_error(response, 422, "invalid_input")["error"]["message"]


# -- integers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "number", ["123456789012345678901234567890", "-9223372036854775809", "18446744073709551616"]
)
@pytest.mark.parametrize("path", ["/v1/models/ok/predict", "/v1/models/ok/jobs"])
def test_integers_beyond_64_bits_are_refused(api: InProcessAPI, path: str, number: str) -> None:
    key = JOBS_KEY if path.endswith("jobs") else PREDICT_KEY
    body = f'{{"input": {{"n": [1, {number}]}}}}'.encode()
    message = assert_error(api.post(path, key=key, content=body), 422, "invalid_input")["error"]["message"]
    assert number in message and "send it as a string" in message


@pytest.mark.parametrize(
    "number", ["18446744073709551615", "-9223372036854775808", "0.1", "1e300", "12345678901234567890.5"]
)
def test_numbers_come_back_unchanged(api: InProcessAPI, number: str) -> None:
    body = f'{{"input": [{number}, "123456789012345678901234567890"]}}'.encode()
    response = api.post("/v1/models/ok/predict", key=PREDICT_KEY, content=body)
    assert response.status_code == 200, response.text
    assert response.json()["output"] == json.loads(f'[{number}, "123456789012345678901234567890"]')


# -- client deadlines -------------------------------------------------------------------------------


def executor_timeouts(api: InProcessAPI) -> float:
    lines = api.get("/metrics").text.splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("executor_timeouts_total{"))


@pytest.mark.parametrize("timeout", [1e-9, 0.001, 0, -1])
@pytest.mark.parametrize("path", ["/v1/models/ok/predict", "/v1/models/ok/jobs"])
def test_a_deadline_below_the_minimum_is_invalid_input(api: InProcessAPI, path: str, timeout: float) -> None:
    key = JOBS_KEY if path.endswith("jobs") else PREDICT_KEY
    before = executor_timeouts(api)
    for _ in range(10):
        response = api.post(path, key=key, json={"input": 1, "timeout_s": timeout})
        assert "at least 0.01" in assert_error(response, 422, "invalid_input")["error"]["message"]
    assert executor_timeouts(api) == before


def timeout_errors(api: InProcessAPI) -> float:
    lines = api.get("/metrics").text.splitlines()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in lines
        if line.startswith("inference_errors_total{") and 'error_type="timeout"' in line
    )


def test_a_client_deadline_expiring_is_not_an_executor_timeout(api: InProcessAPI, tmp_path: Path) -> None:
    def blocked_call(name: str, **body: Any) -> httpx.Response:
        # The call cannot end before it is released, so only a deadline can answer, whatever the load.
        gate = tmp_path / name
        try:
            return api.post(
                "/v1/models/sleepy/predict", key=PREDICT_KEY, json={"input": {"until": str(gate)}, **body}
            )
        finally:
            gate.touch()

    before_executor, before_errors = executor_timeouts(api), timeout_errors(api)
    for i in range(3):
        response = blocked_call(f"client-{i}", timeout_s=0.05)
        assert "request's timeout_s" in assert_error(response, 504, "timeout")["error"]["message"]
    assert executor_timeouts(api) == before_executor  # the operators' timeout alert stays quiet
    assert timeout_errors(api) == before_errors + 3  # the tenant's own error series shows them
    # The model's own timeout_s (0.3 s) passing is an executor timeout.
    response = blocked_call("model")
    assert_error(response, 504, "timeout")
    assert executor_timeouts(api) == before_executor + 1


# -- no redirects -----------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, PREDICT_KEY])
def test_a_trailing_slash_is_a_clear_404_never_a_redirect(api: InProcessAPI, key: str | None) -> None:
    response = api.post(
        "/v1/models/ok/predict/", key=key, json={"input": 1}, headers={"Host": "evil.example"}
    )
    message = assert_error(response, 404, "not_found")["error"]["message"]
    assert "location" not in response.headers
    assert "evil.example" not in response.text
    assert "'/v1/models/ok/predict' exists" in message


def test_the_root_points_to_the_docs(api: InProcessAPI) -> None:
    response = api.get("/")
    assert "GET /docs lists the routes" in assert_error(response, 404, "not_found")["error"]["message"]


@pytest.mark.parametrize("how", ["gzip", "binary"])
def test_deep_nesting_is_refused_inside_v2_bodies(api: InProcessAPI, how: str) -> None:
    deep = b"[" * 300 + b"]" * 300
    header = (
        b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}], "parameters": {"p": '
        + deep
        + b"}}"
    )
    if how == "gzip":
        body, headers = (
            gzip.compress(header),
            {"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )
    else:
        body = header + b"\x00" * 4
        headers = {
            "Inference-Header-Content-Length": str(len(header)),
            "Content-Type": "application/octet-stream",
        }
    response = api.post("/v2/models/ok/infer", key=PREDICT_KEY, content=body, headers=headers)
    assert response.status_code == 422, response.text
    assert "nested more than 64 levels" in response.json()["error"]


def test_a_json_bulk_body_is_refused_as_a_whole(api: InProcessAPI) -> None:
    headers = {"Content-Type": "application/json"}
    for body in (b"[null, null]", b'{"input": 1, "bogus": true}', b'{\n  "input": "no"\n'):
        response = api.post("/v1/models/ok/jobs/bulk", key=JOBS_KEY, content=body, headers=headers)
        assert_error(response, 422, "invalid_input")
    # A pretty-printed object spans lines and is still one job.
    response = api.post(
        "/v1/models/ok/jobs/bulk", key=JOBS_KEY, content=b'{\n  "input": 1\n}\n', headers=headers
    )
    assert response.status_code == 200, response.text
    assert json.loads(response.text)["status"] == "pending"
