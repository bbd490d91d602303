"""The native HTTP API against API.md: health, models, sync and batch predict, every error status,
X-Request-ID, and (on a real server process) chunked bodies and the
access log."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from inferd_http_testkit import (
    ADMIN_KEY,
    BROKEN_MODELS,
    JOBS_KEY,
    MODELS,
    MODELS_KEY,
    PREDICT_KEY,
    InProcessAPI,
    ServerProcess,
    assert_error,
    bearer,
    running_server,
)
from prometheus_client.parser import text_string_to_metric_families

SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
FIXTURE_MODELS = {"boom", "canary", "gpu", "ok", "schema", "sleepy", "tuned"}


def requests_total(api: InProcessAPI) -> dict[tuple[str, str, str], float]:
    text = api.get("/metrics").text
    values: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "inference_requests_total":
                labels = sample.labels
                values[(labels["model"], labels["version"], labels["tenant"])] = sample.value
    return values


# -- health -----------------------------------------------------------------------------------------


def test_livez(api: InProcessAPI) -> None:
    response = api.get("/livez")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert SANE_ID.fullmatch(response.headers["x-request-id"])


def test_readyz_is_200_when_every_model_loaded(api: InProcessAPI) -> None:
    response = api.get("/readyz")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ready"
    assert "reasons" not in body or body["reasons"] == []


def test_readyz_is_503_naming_the_broken_file(make_api: Callable[..., InProcessAPI]) -> None:
    broken = make_api(models=BROKEN_MODELS, strict_readiness=True)
    response = broken.get("/readyz")
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["status"] == "not_ready"
    reasons = body["reasons"]
    assert isinstance(reasons, list) and reasons
    named = [reason for reason in reasons if str(Path("broken") / "1" / "model.yaml") in reason]
    assert named, reasons
    assert "max_bach_size" in named[0], named
    # The good model of that repository still serves.
    ok = broken.post("/v1/models/ok/predict", key=PREDICT_KEY, json={"input": 1})
    assert ok.status_code == 200, ok.text


# -- models -----------------------------------------------------------------------------------------


def test_list_models_shape(api: InProcessAPI) -> None:
    response = api.get("/v1/models", key=MODELS_KEY)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"models"}
    by_name = {entry["name"]: entry for entry in body["models"]}
    assert set(by_name) == FIXTURE_MODELS
    for entry in body["models"]:
        assert {"name", "default_version", "routing", "versions"} <= set(entry), entry
        assert isinstance(entry["routing"], dict)
        for version in entry["versions"]:
            assert {"version", "state", "runtime", "device", "max_batch_size"} <= set(version), version
            assert version["state"] == "loaded", version
            assert version["runtime"] == "python"
            assert isinstance(version["version"], str)
            assert isinstance(version["max_batch_size"], int)
    ok = by_name["ok"]
    assert ok["default_version"] == "1"
    assert [v["version"] for v in ok["versions"]] == ["1"]
    assert ok["versions"][0]["device"] == "cpu"
    assert ok["versions"][0]["max_batch_size"] == 8
    assert by_name["gpu"]["versions"][0]["device"] == "gpu"
    canary = by_name["canary"]
    assert [v["version"] for v in canary["versions"]] == ["1", "2"]
    assert canary["default_version"] == "1"
    assert canary["routing"]["weights"] == {"1": 3, "2": 1}


def test_get_one_model_is_its_list_entry(api: InProcessAPI) -> None:
    listed = {e["name"]: e for e in api.get("/v1/models", key=MODELS_KEY).json()["models"]}
    for name in ("ok", "canary"):
        response = api.get(f"/v1/models/{name}", key=MODELS_KEY)
        assert response.status_code == 200, response.text
        assert response.json() == listed[name]


def test_get_unknown_model_is_404(api: InProcessAPI) -> None:
    assert_error(api.get("/v1/models/nope", key=MODELS_KEY), 404, "model_not_found")


# -- predict ----------------------------------------------------------------------------------------


def test_predict_routed(api: InProcessAPI) -> None:
    item = {"a": [1, 2.5, None, True], "b": "ü"}
    response = api.post("/v1/models/ok/predict", key=PREDICT_KEY, json={"input": item})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"model", "version", "output", "request_id"}
    assert body["model"] == "ok"
    assert body["version"] == "1"
    assert body["output"] == item
    assert body["request_id"] == response.headers["x-request-id"]


def test_predict_accepts_timeout_and_parameters(api: InProcessAPI) -> None:
    response = api.post(
        "/v1/models/ok/predict", key=PREDICT_KEY, json={"input": 3, "timeout_s": 2, "parameters": {}}
    )
    assert response.status_code == 200, response.text
    assert response.json()["output"] == 3


def test_predict_pinned(api: InProcessAPI) -> None:
    for version in ("1", "2"):
        for _ in range(3):
            response = api.post(
                f"/v1/models/canary/versions/{version}/predict", key=PREDICT_KEY, json={"input": "x"}
            )
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["version"] == version
            assert body["output"] == {"version": version, "input": "x"}


def test_predict_routed_follows_weights(make_api: Callable[..., InProcessAPI]) -> None:
    api = make_api()  # fresh routing state
    served: Counter[str] = Counter()
    for i in range(8):
        response = api.post("/v1/models/canary/predict", key=PREDICT_KEY, json={"input": i})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["output"]["version"] == body["version"]
        served[body["version"]] += 1
    assert served == {"1": 6, "2": 2}


def test_batch_outputs_in_input_order(api: InProcessAPI) -> None:
    inputs: list[Any] = [{"i": i} for i in range(13)] + ["s", 0, None, [1, 2], 2.5, False, {"i": 1}]
    response = api.post("/v1/models/ok/predict/batch", key=PREDICT_KEY, json={"inputs": inputs})
    assert response.status_code == 200, response.text
    body = response.json()
    assert {"model", "version", "outputs"} <= set(body)
    assert body["model"] == "ok" and body["version"] == "1"
    assert body["outputs"] == inputs


def test_batch_pinned(api: InProcessAPI) -> None:
    response = api.post(
        "/v1/models/canary/versions/2/predict/batch", key=PREDICT_KEY, json={"inputs": [1, 2, 3]}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["version"] == "2"
    assert body["outputs"] == [{"version": "2", "input": i} for i in (1, 2, 3)]


def test_model_on_gpu_device_serves(api: InProcessAPI) -> None:
    response = api.post("/v1/models/gpu/predict", key=PREDICT_KEY, json={"input": [1, 2]})
    assert response.status_code == 200, response.text
    assert response.json()["output"] == [1, 2]


# -- errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/v1/models/nope/predict",
        "/v1/models/nope/predict/batch",
        "/v1/models/nope/versions/1/predict",
        "/v1/models/ok/versions/9/predict",
        "/v1/models/ok/versions/9/predict/batch",
    ],
)
def test_unknown_model_or_version_is_404(api: InProcessAPI, path: str) -> None:
    payload = {"inputs": [1]} if path.endswith("/batch") else {"input": 1}
    body = assert_error(api.post(path, key=PREDICT_KEY, json=payload), 404, "model_not_found")
    assert ("nope" in body["error"]["message"]) or ("'9'" in body["error"]["message"])


@pytest.mark.parametrize(
    ("path", "content", "fragment"),
    [
        ("/v1/models/ok/predict", b"{not json", "json"),
        ("/v1/models/ok/predict", b"[1, 2]", "object"),
        ("/v1/models/ok/predict", b'{"inputs": [1]}', "input"),
        ("/v1/models/ok/predict", b"{}", "input"),
        ("/v1/models/ok/predict", b'{"input": 1, "timeout_s": -1}', "timeout_s"),
        ("/v1/models/ok/predict/batch", b'{"inputs": []}', "inputs"),
        ("/v1/models/ok/predict/batch", b'{"input": 1}', "inputs"),
        ("/v1/models/schema/predict", b'{"input": {"x": "a string"}}', "input_schema"),
        ("/v1/models/schema/predict", b'{"input": {"y": 1}}', "input_schema"),
        ("/v1/models/schema/predict", b'{"input": {"x": -1}}', "x must not be negative"),
    ],
)
def test_invalid_input_is_422(api: InProcessAPI, path: str, content: bytes, fragment: str) -> None:
    response = api.post(path, key=PREDICT_KEY, content=content, headers={"content-type": "application/json"})
    body = assert_error(response, 422, "invalid_input")
    assert fragment.lower() in body["error"]["message"].lower(), body


def test_batch_validator_rejection_names_the_index(api: InProcessAPI) -> None:
    response = api.post(
        "/v1/models/schema/predict/batch", key=PREDICT_KEY, json={"inputs": [{"x": 1}, {"x": -5}, {"x": 2}]}
    )
    body = assert_error(response, 422, "invalid_input")
    assert "inputs[1]" in body["error"]["message"], body
    assert "x must not be negative" in body["error"]["message"]


def test_batch_schema_failure_names_the_index(api: InProcessAPI) -> None:
    response = api.post(
        "/v1/models/schema/predict/batch",
        key=PREDICT_KEY,
        json={"inputs": [{"x": 1}, {"x": 2}, {"x": "three"}]},
    )
    body = assert_error(response, 422, "invalid_input")
    assert "inputs[2]" in body["error"]["message"], body


def test_batch_over_max_inputs_is_422(make_api: Callable[..., InProcessAPI]) -> None:
    api = make_api(max_batch_inputs=3)
    ok = api.post("/v1/models/ok/predict/batch", key=PREDICT_KEY, json={"inputs": [1, 2, 3]})
    assert ok.status_code == 200, ok.text
    too_many = api.post("/v1/models/ok/predict/batch", key=PREDICT_KEY, json={"inputs": [1, 2, 3, 4]})
    assert_error(too_many, 422, "invalid_input")


def test_content_length_over_limit_is_413(api: InProcessAPI) -> None:
    body = json.dumps({"input": "x" * 5000}).encode()  # the api fixture's limit is 4096 bytes
    response = api.post(
        "/v1/models/ok/predict", key=PREDICT_KEY, content=body, headers={"content-type": "application/json"}
    )
    assert_error(response, 413, "payload_too_large")
    just_under = json.dumps({"input": "x" * 4000}).encode()
    assert len(just_under) <= 4096
    response = api.post("/v1/models/ok/predict", key=PREDICT_KEY, content=just_under)
    assert response.status_code == 200, response.text


def test_chunked_body_over_limit_is_413_in_process(api: InProcessAPI) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"input": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    response = api.post("/v1/models/ok/predict", key=PREDICT_KEY, content=chunks())
    assert_error(response, 413, "payload_too_large")


def test_rate_limited_is_429_with_retry_after_and_not_counted(
    make_api: Callable[..., InProcessAPI],
) -> None:
    api = make_api(rate_limit="2/s")
    statuses = []
    responses = []
    for i in range(3):
        response = api.post(
            "/v1/models/ok/predict", key=PREDICT_KEY, json={"input": 1}, headers={"X-Request-ID": f"rl-{i}"}
        )
        statuses.append(response.status_code)
        responses.append(response)
    assert statuses == [200, 200, 429]
    limited = responses[-1]
    assert_error(limited, 429, "rate_limited")
    assert limited.headers["x-request-id"] == "rl-2"
    insane = api.post(
        "/v1/models/ok/predict", key=PREDICT_KEY, json={"input": 1}, headers={"X-Request-ID": "no spaces"}
    )
    assert_error(insane, 429, "rate_limited")
    assert insane.headers["x-request-id"] != "no spaces"
    assert SANE_ID.fullmatch(insane.headers["x-request-id"])
    retry_after = limited.headers.get("retry-after")
    assert retry_after is not None and retry_after.isdigit() and int(retry_after) >= 1
    # Another tenant has its own bucket.
    other = api.post("/v1/models/ok/predict", key=ADMIN_KEY, json={"input": 1})
    assert other.status_code == 200, other.text
    # Only the two admitted calls of acme are inference requests.
    assert requests_total(api) == {("ok", "1", "acme"): 2.0, ("ok", "1", "beta"): 1.0}


def test_queue_full_is_503_overloaded_with_retry_after(
    make_api: Callable[..., InProcessAPI], tmp_path: Path
) -> None:
    """One executor thread, a queue of one, four calls that cannot end before the test releases them:
    at most two are admitted, the others are refused at once; the admitted ones answer once released."""
    repo = tmp_path / "models"
    shutil.copytree(MODELS / "sleepy", repo / "sleepy")
    spec = repo / "sleepy" / "1" / "model.yaml"
    spec.write_text(spec.read_text().replace("timeout_s: 0.3", "timeout_s: 60"))  # no deadline in play
    api = make_api(models=repo, devices="cpu=1", queue_limit=1)
    gate = tmp_path / "gate"

    async def scenario() -> tuple[list[httpx.Response], list[httpx.Response]]:
        body = {"input": {"until": str(gate)}}
        calls = [
            asyncio.ensure_future(
                api.arequest("POST", "/v1/models/sleepy/predict", key=PREDICT_KEY, json=body)
            )
            for _ in range(4)
        ]
        answered: set[asyncio.Future[httpx.Response]] = set()
        while len(answered) < 2:  # what was refused, while the admitted calls wait for the gate
            done, _ = await asyncio.wait(set(calls) - answered, return_when=asyncio.FIRST_COMPLETED)
            answered |= done
        before_release = [call.result() for call in answered]
        gate.touch()
        return before_release, list(await asyncio.gather(*calls))

    before_release, responses = api.run(scenario())
    assert {r.status_code for r in before_release} == {503}, [r.text for r in before_release]
    statuses = sorted(r.status_code for r in responses)
    assert statuses[0] == 200 and set(statuses) == {200, 503}, statuses  # the first call runs
    for response in responses:
        if response.status_code == 503:
            assert_error(response, 503, "overloaded")
            retry_after = response.headers.get("retry-after")
            assert retry_after is not None and int(retry_after) >= 1


def _gated_predict(api: InProcessAPI, tmp_path: Path, **body: Any) -> httpx.Response:
    """Predict on sleepy with a call that cannot end before this test releases it: the answer must
    come from the deadline, while the call still runs, however loaded the machine is."""
    gate = tmp_path / "gate"
    try:
        response = api.post(
            "/v1/models/sleepy/predict", key=PREDICT_KEY, json={"input": {"until": str(gate)}, **body}
        )
        assert not Path(f"{gate}.done").exists(), "answered only after the model call ended"
    finally:
        gate.touch()  # frees the executor thread for the next test
    return response


def test_timeout_is_504(api: InProcessAPI, tmp_path: Path) -> None:
    body = assert_error(_gated_predict(api, tmp_path), 504, "timeout")
    assert "within 0.3s" in body["error"]["message"], body  # the model's timeout_s


def test_request_timeout_shortens_the_model_timeout(api: InProcessAPI, tmp_path: Path) -> None:
    body = assert_error(_gated_predict(api, tmp_path, timeout_s=0.05), 504, "timeout")
    assert "timeout_s of 0.05s" in body["error"]["message"], body  # the request's, not the model's 0.3 s


def test_pipeline_exception_is_500_without_traceback(api: InProcessAPI) -> None:
    for path, payload in [
        ("/v1/models/boom/predict", {"input": 1}),
        ("/v1/models/boom/predict/batch", {"inputs": [1, 2]}),
    ]:
        body = assert_error(api.post(path, key=PREDICT_KEY, json=payload), 500, "inference_error")
        message = body["error"]["message"]
        assert "Traceback" not in message
        assert 'File "' not in message and ".py" not in message
        assert "\n" not in message


# -- X-Request-ID -----------------------------------------------------------------------------------

REQUEST_KINDS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "200 predict": ("POST", "/v1/models/ok/predict", {"key": PREDICT_KEY, "json": {"input": 1}}),
    "200 batch": ("POST", "/v1/models/ok/predict/batch", {"key": PREDICT_KEY, "json": {"inputs": [1]}}),
    "200 livez": ("GET", "/livez", {}),
    "200 metrics": ("GET", "/metrics", {}),
    "200 models": ("GET", "/v1/models", {"key": MODELS_KEY}),
    "401 no key": ("POST", "/v1/models/ok/predict", {"json": {"input": 1}}),
    "401 unknown key": ("GET", "/v1/models", {"key": "who-am-i"}),
    "403 predict": ("POST", "/v1/models/ok/predict", {"key": JOBS_KEY, "json": {"input": 1}}),
    "403 models": ("GET", "/v1/models/ok", {"key": PREDICT_KEY}),
    "404 predict": ("POST", "/v1/models/nope/predict", {"key": PREDICT_KEY, "json": {"input": 1}}),
    "404 model": ("GET", "/v1/models/nope", {"key": MODELS_KEY}),
    "404 route": ("GET", "/no/such/route", {}),
    "413": ("POST", "/v1/models/ok/predict", {"key": PREDICT_KEY, "json": {"input": "x" * 5000}}),
    "422": ("POST", "/v1/models/ok/predict", {"key": PREDICT_KEY, "json": {"nothing": 1}}),
    "500": ("POST", "/v1/models/boom/predict", {"key": PREDICT_KEY, "json": {"input": 1}}),
}


@pytest.mark.parametrize("kind", sorted(REQUEST_KINDS))
def test_sane_request_id_is_echoed(api: InProcessAPI, kind: str) -> None:
    method, path, kwargs = REQUEST_KINDS[kind]
    sent = f"req-{kind.replace(' ', '_')}.A:1"
    response = api.request(method, path, headers={"X-Request-ID": sent}, **kwargs)
    assert str(response.status_code) == kind.split()[0], response.text
    assert response.headers["x-request-id"] == sent
    if response.status_code >= 400 and path.startswith("/v1/"):
        assert response.json()["request_id"] == sent


@pytest.mark.parametrize(
    "kind", ["200 predict", "401 no key", "403 predict", "404 predict", "413", "404 route"]
)
@pytest.mark.parametrize(
    "sent",
    ["x" * 129, "has space", "semi;colon", "slash/", 'quote"', "trailing-newline\n", "tab\tin"],
    ids=["too-long", "space", "semicolon", "slash", "quote", "newline", "tab"],
)
def test_insane_request_id_is_replaced(api: InProcessAPI, kind: str, sent: str) -> None:
    method, path, kwargs = REQUEST_KINDS[kind]
    response = api.request(method, path, headers={"X-Request-ID": sent}, **kwargs)
    assert str(response.status_code) == kind.split()[0], response.text
    generated = response.headers["x-request-id"]
    assert generated != sent
    assert generated.strip() != sent.strip()
    assert SANE_ID.fullmatch(generated), generated
    if path.startswith("/v1/"):
        assert response.json()["request_id"] == generated


def test_request_id_limits(api: InProcessAPI) -> None:
    longest = "a" * 128
    assert api.get("/livez", headers={"X-Request-ID": longest}).headers["x-request-id"] == longest
    first = api.get("/livez").headers["x-request-id"]
    second = api.get("/livez").headers["x-request-id"]
    assert SANE_ID.fullmatch(first) and SANE_ID.fullmatch(second)
    assert first != second


# -- real server: chunked bodies and the access log -----------------------------------------------

JSON = {"content-type": "application/json"}
LOG_KEY = "acme-secret-key-7f3a9c"
WRONG_KEY = "wrong-secret-key-51be0d"
PAYLOAD_MARKER = "PAYLOAD-TEXT-do-not-log-93d1"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {
        "INFERD_API_KEYS": f"{LOG_KEY}:acme:predict,models",
        "INFERD_MAX_BODY_BYTES": "1000",
    }
    with running_server(tmp_path_factory.mktemp("api-server"), env=env) as process:
        yield process


def _chunks(total: int, size: int = 100) -> Iterator[bytes]:
    body = json.dumps({"input": "z" * (total - 13)}).encode()
    for start in range(0, len(body), size):
        yield body[start : start + size]


def test_chunked_body_over_limit_is_413_on_a_real_server(server: ServerProcess) -> None:
    with server.client(LOG_KEY) as client:
        big = client.post(
            "/v1/models/ok/predict",
            content=_chunks(3000),
            headers={**JSON, "X-Request-ID": "chunked-big"},
        )
        assert "content-length" not in big.request.headers
        assert big.request.headers["transfer-encoding"] == "chunked"
        body = assert_error(big, 413, "payload_too_large")
        assert body["request_id"] == "chunked-big"
    # A chunked body under the limit is read whole and served.
    with server.client(LOG_KEY) as client:
        small = client.post("/v1/models/ok/predict", content=_chunks(500), headers=JSON)
        assert small.status_code == 200, small.text
        assert small.json()["output"] == "z" * 487


def test_content_length_over_limit_is_413_on_a_real_server(server: ServerProcess) -> None:
    with server.client(LOG_KEY) as client:
        response = client.post("/v1/models/ok/predict", json={"input": "z" * 2000})
        assert response.request.headers["content-length"]
        assert_error(response, 413, "payload_too_large")


def _log_records(path: Path, wanted: set[str], timeout_s: float = 3.5) -> list[dict[str, Any]]:
    """Poll the access log (flushed about once a second) until every wanted request id is there."""
    deadline = time.monotonic() + timeout_s
    while True:
        text = path.read_text() if path.exists() else ""
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
        if wanted <= {r.get("request_id") for r in records} or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def test_access_log_one_json_line_per_request(server: ServerProcess) -> None:
    with server.client() as client:
        auth = {"Authorization": f"Bearer {LOG_KEY}"}
        calls = {
            "log-ok": client.post(
                "/v1/models/ok/predict",
                json={"input": PAYLOAD_MARKER},
                headers={**auth, "X-Request-ID": "log-ok"},
            ),
            "log-batch": client.post(
                "/v1/models/canary/versions/2/predict/batch",
                json={"inputs": [PAYLOAD_MARKER]},
                headers={"X-API-Key": LOG_KEY, "X-Request-ID": "log-batch"},
            ),
            "log-401": client.post(
                "/v1/models/ok/predict",
                json={"input": PAYLOAD_MARKER},
                headers={**bearer(WRONG_KEY), "X-Request-ID": "log-401"},
            ),
            "log-404": client.post(
                "/v1/models/nope/predict",
                json={"input": PAYLOAD_MARKER},
                headers={**auth, "X-Request-ID": "log-404"},
            ),
            "log-422": client.post(
                "/v1/models/schema/predict",
                json={"input": {"x": -1, "note": PAYLOAD_MARKER}},
                headers={**auth, "X-Request-ID": "log-422"},
            ),
            "log-models": client.get("/v1/models", headers={**auth, "X-Request-ID": "log-models"}),
            "log-livez": client.get("/livez", headers={"X-Request-ID": "log-livez"}),
            "log-500": client.post(
                "/v1/models/boom/predict",
                json={"input": PAYLOAD_MARKER},
                headers={**auth, "X-Request-ID": "log-500"},
            ),
        }
    assert [r.status_code for r in calls.values()] == [200, 200, 401, 404, 422, 200, 200, 500]
    records = _log_records(server.access_log, set(calls))
    by_id: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_id.setdefault(record["request_id"], []).append(record)
    for request_id in calls:
        assert len(by_id.get(request_id, [])) == 1, (request_id, records)
    required = {"time", "request_id", "tenant", "method", "path", "status", "model", "version", "latency_ms"}
    for request_id, response in calls.items():
        record = by_id[request_id][0]
        assert required <= set(record), record
        assert record["status"] == response.status_code
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)", record["time"]), record
        assert isinstance(record["latency_ms"], int | float) and record["latency_ms"] >= 0
        assert record["path"] == response.request.url.path
        assert record["method"] == response.request.method
    ok = by_id["log-ok"][0]
    assert (ok["tenant"], ok["model"], ok["version"]) == ("acme", "ok", "1")
    batch = by_id["log-batch"][0]
    assert (batch["tenant"], batch["model"], batch["version"]) == ("acme", "canary", "2")
    assert by_id["log-401"][0]["tenant"] is None
    assert by_id["log-404"][0]["model"] == "nope"
    assert by_id["log-404"][0]["tenant"] == "acme"
    assert by_id["log-422"][0]["model"] == "schema"
    assert by_id["log-models"][0]["tenant"] == "acme"
    failed = by_id["log-500"][0]
    assert (failed["error"], failed["cause"]) == ("inference_error", "RuntimeError")
    assert by_id["log-422"][0]["error"] == "invalid_input" and "cause" not in by_id["log-422"][0]
    text = server.access_log.read_text()
    assert LOG_KEY not in text
    assert WRONG_KEY not in text
    assert PAYLOAD_MARKER not in text


# -- request parameters ----------------------------------------------------------------------------


def test_parameters_reach_models_that_take_them(api: InProcessAPI) -> None:
    auth = bearer(PREDICT_KEY)
    single = api.post("/v1/models/tuned/predict", json={"input": 2, "parameters": {"scale": 5}}, headers=auth)
    assert single.status_code == 200, single.text
    assert single.json()["output"] == 10
    batch = api.post(
        "/v1/models/tuned/predict/batch",
        json={"inputs": [1, 2, 3], "parameters": {"scale": -1}},
        headers=auth,
    )
    assert batch.json()["outputs"] == [-1, -2, -3]
    default = api.post("/v1/models/tuned/predict", json={"input": 2, "parameters": {}}, headers=auth)
    assert default.json()["output"] == 2


def test_parameters_for_a_model_without_them_are_invalid_input(api: InProcessAPI) -> None:
    response = api.post(
        "/v1/models/ok/predict", json={"input": 1, "parameters": {"scale": 2}}, headers=bearer(PREDICT_KEY)
    )
    body = assert_error(response, 422, "invalid_input")
    assert "takes no parameters" in body["error"]["message"]
    not_an_object = api.post(
        "/v1/models/tuned/predict", json={"input": 1, "parameters": [1]}, headers=bearer(PREDICT_KEY)
    )
    assert_error(not_an_object, 422, "invalid_input")


# -- reloading the model repository ------------------------------------------------------------------


def test_admin_reload_serves_new_models_and_drops_removed_ones(
    make_api: Callable[..., InProcessAPI], tmp_path: Path
) -> None:
    repo = tmp_path / "models"
    shutil.copytree(MODELS, repo, ignore=shutil.ignore_patterns("__pycache__"))
    api = make_api(models=repo)
    admin, predictor = bearer(ADMIN_KEY), bearer(PREDICT_KEY)

    assert_error(api.post("/v1/admin/models/reload", headers=predictor), 403, "forbidden")
    assert_error(
        api.post("/v1/models/fresh/predict", json={"input": 1}, headers=predictor), 404, "model_not_found"
    )

    shutil.copytree(repo / "ok", repo / "fresh")
    shutil.rmtree(repo / "boom")
    response = api.post("/v1/admin/models/reload", headers=admin)
    assert response.status_code == 200, response.text
    summary = response.json()
    assert summary["added"] == ["fresh:1"]
    assert summary["removed"] == ["boom:1"]
    assert summary["failed"] == [] and summary["reloaded"] == []
    assert "ok:1" in summary["unchanged"]

    served = api.post("/v1/models/fresh/predict", json={"input": {"a": 1}}, headers=predictor)
    assert served.status_code == 200 and served.json()["output"] == {"a": 1}
    assert_error(
        api.post("/v1/models/boom/predict", json={"input": 1}, headers=predictor), 404, "model_not_found"
    )
    names = {entry["name"] for entry in api.get("/v1/models", headers=admin).json()["models"]}
    assert "fresh" in names and "boom" not in names
