"""Authentication, scopes, public routes, tenant labels, and start-up refusals of ``inferd serve``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from inferd_http_testkit import (
    ADMIN_KEY,
    JOBS_KEY,
    MODELS,
    MODELS_KEY,
    PREDICT_KEY,
    InProcessAPI,
    assert_error,
    free_port,
    run_inferd,
)
from prometheus_client.parser import text_string_to_metric_families

ALL_KEYS = (PREDICT_KEY, MODELS_KEY, ADMIN_KEY, JOBS_KEY)

# route -> (method, path, json body, keys that may call it)
ROUTES: dict[str, tuple[str, str, object, set[str]]] = {
    "list models": ("GET", "/v1/models", None, {MODELS_KEY, ADMIN_KEY}),
    "get model": ("GET", "/v1/models/ok", None, {MODELS_KEY, ADMIN_KEY}),
    "predict": ("POST", "/v1/models/ok/predict", {"input": 1}, {PREDICT_KEY, ADMIN_KEY}),
    "predict pinned": ("POST", "/v1/models/ok/versions/1/predict", {"input": 1}, {PREDICT_KEY, ADMIN_KEY}),
    "batch": ("POST", "/v1/models/ok/predict/batch", {"inputs": [1]}, {PREDICT_KEY, ADMIN_KEY}),
    "batch pinned": (
        "POST",
        "/v1/models/ok/versions/1/predict/batch",
        {"inputs": [1]},
        {PREDICT_KEY, ADMIN_KEY},
    ),
}


@pytest.mark.parametrize("header_style", ["bearer", "x-api-key"])
@pytest.mark.parametrize("key", ALL_KEYS)
@pytest.mark.parametrize("route", list(ROUTES))
def test_scope_matrix(api: InProcessAPI, route: str, key: str, header_style: str) -> None:
    method, path, body, allowed = ROUTES[route]
    headers = {"Authorization": f"Bearer {key}"} if header_style == "bearer" else {"X-API-Key": key}
    response = api.request(method, path, headers=headers, json=body)
    if key in allowed:
        assert response.status_code == 200, response.text
    else:
        body_ = assert_error(response, 403, "forbidden")
        assert "scope" in body_["error"]["message"]
        assert "www-authenticate" not in response.headers


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer not-a-key"},
        {"X-API-Key": "not-a-key"},
        {"Authorization": "Bearer "},
        {"Authorization": "Basic azE6"},
        {"Authorization": PREDICT_KEY},  # no scheme
        {"Authorization": f"Bearer {PREDICT_KEY}x"},
    ],
    ids=["none", "unknown-bearer", "unknown-x-api-key", "empty-bearer", "basic", "no-scheme", "suffix"],
)
def test_unauthenticated_is_401_with_www_authenticate(
    api: InProcessAPI, route: str, headers: dict[str, str]
) -> None:
    method, path, body, _ = ROUTES[route]
    response = api.request(method, path, headers=headers, json=body)
    assert_error(response, 401, "unauthenticated")
    assert response.headers.get("www-authenticate", "").split(" ")[0].lower() == "bearer"


@pytest.mark.parametrize(
    ("authorization", "got"),
    [
        ("Basic azE6", "(got 'Basic')"),
        ("Bearer ", "(got 'Bearer' without a key)"),
        (PREDICT_KEY, "(got a value without a scheme)"),  # a lone word may be the key: never echoed
    ],
)
def test_an_authorization_without_a_bearer_key_is_named(
    api: InProcessAPI, authorization: str, got: str
) -> None:
    response = api.post("/v1/models/ok/predict", headers={"Authorization": authorization}, json={"input": 1})
    message = assert_error(response, 401, "unauthenticated")["error"]["message"]
    assert message == f"Authorization must be 'Bearer <key>' {got}; or send 'X-API-Key: <key>'"


def test_x_api_key_beside_another_authorization_scheme_is_used(api: InProcessAPI) -> None:
    headers = {"Authorization": "Basic azE6", "X-API-Key": PREDICT_KEY}
    response = api.post("/v1/models/ok/predict", headers=headers, json={"input": 1})
    assert response.status_code == 200, response.text


def test_bearer_scheme_is_case_insensitive(api: InProcessAPI) -> None:
    response = api.post(
        "/v1/models/ok/predict", headers={"Authorization": f"bearer {PREDICT_KEY}"}, json={"input": 1}
    )
    assert response.status_code == 200, response.text


def test_auth_is_checked_before_the_body(api: InProcessAPI) -> None:
    # A caller without a key learns nothing about models or body validation.
    for path in ("/v1/models/nope/predict", "/v1/models/ok/predict"):
        response = api.post(path, json={"nothing": 1})
        assert_error(response, 401, "unauthenticated")
        response = api.post(path, headers={"X-API-Key": JOBS_KEY}, json={"nothing": 1})
        assert_error(response, 403, "forbidden")


@pytest.mark.parametrize("path", ["/livez", "/readyz", "/metrics", "/docs", "/openapi.json"])
def test_public_routes_need_no_key(api: InProcessAPI, path: str) -> None:
    response = api.get(path)
    assert response.status_code == 200, response.text
    # ... and a wrong key does not break them either.
    assert api.get(path, headers={"Authorization": "Bearer nope"}).status_code == 200


def test_openapi_documents_the_predict_routes(api: InProcessAPI) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    for path in (
        "/v1/models",
        "/v1/models/{name}",
        "/v1/models/{name}/predict",
        "/v1/models/{name}/versions/{version}/predict",
        "/v1/models/{name}/predict/batch",
        "/v1/models/{name}/versions/{version}/predict/batch",
    ):
        assert path in paths, sorted(paths)


def test_tenant_label_is_the_keys_tenant(make_api: Callable[..., InProcessAPI]) -> None:
    api = make_api()
    for key in (PREDICT_KEY, PREDICT_KEY, ADMIN_KEY):
        assert api.post("/v1/models/ok/predict", key=key, json={"input": 1}).status_code == 200
    assert (
        api.post(
            "/v1/models/ok/predict/batch", headers={"X-API-Key": ADMIN_KEY}, json={"inputs": [1, 2]}
        ).status_code
        == 200
    )
    # Not counted: no key, unknown key, missing scope.
    api.post("/v1/models/ok/predict", json={"input": 1})
    api.post("/v1/models/ok/predict", key="stranger", json={"input": 1})
    api.post("/v1/models/ok/predict", key=MODELS_KEY, json={"input": 1})
    counts = {}
    for family in text_string_to_metric_families(api.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "inference_requests_total":
                counts[sample.labels["tenant"]] = (
                    sample.labels["model"],
                    sample.labels["version"],
                    sample.value,
                )
    assert counts == {"acme": ("ok", "1", 2.0), "beta": ("ok", "1", 2.0)}


# -- start-up refusals ------------------------------------------------------------------------------


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_serve_without_keys_and_without_dev_refuses(tmp_path: Path) -> None:
    result = run_inferd(["serve", "--models", str(MODELS), "--port", str(free_port())], cwd=tmp_path, env={})
    assert result.returncode != 0
    assert "INFERD_API_KEYS" in _flat(result.stderr + result.stdout), result.stderr


def test_serve_with_malformed_key_entry_refuses_naming_it(tmp_path: Path) -> None:
    secret = "topsecret-key-0d9e"
    # Two parts: either could be the key, so neither may be printed.
    result = run_inferd(
        ["serve", "--models", str(MODELS), "--port", str(free_port())],
        cwd=tmp_path,
        env={"INFERD_API_KEYS": f"good-key-1:acme:predict;beta:{secret};"},
    )
    output = _flat(result.stderr + result.stdout)
    assert result.returncode != 0, output
    assert "INFERD_API_KEYS" in output
    assert "entry 2" in output, output
    assert "KEY:TENANT:SCOPE" in output, output
    assert secret not in output
    assert "good-key-1" not in output


def test_serve_with_unknown_scope_refuses_without_printing_the_key(tmp_path: Path) -> None:
    secret = "topsecret-key-77aa"
    result = run_inferd(
        ["serve", "--models", str(MODELS), "--port", str(free_port())],
        cwd=tmp_path,
        env={"INFERD_API_KEYS": f"{secret}:acme:predict,fly"},
    )
    output = _flat(result.stderr + result.stdout)
    assert result.returncode != 0, output
    assert "entry 1" in output and "fly" in output, output
    assert secret not in output


def test_dev_mode_refuses_a_non_loopback_host(tmp_path: Path) -> None:
    result = run_inferd(
        ["serve", "--models", str(MODELS), "--dev", "--host", "0.0.0.0", "--port", str(free_port())],
        cwd=tmp_path,
    )
    output = _flat(result.stderr + result.stdout)
    assert result.returncode != 0, output
    assert "0.0.0.0" in output and "loopback" in output, output


def test_an_unreachable_job_store_stops_start_up_with_one_clear_line(tmp_path: Path) -> None:
    unreachable = f"postgresql://inferd:hunter2@127.0.0.1:{free_port()}/inferd"
    result = run_inferd(
        ["serve", "--models", str(MODELS), "--dev", "--port", str(free_port()), "--store", unreachable],
        cwd=tmp_path,
    )
    output = _flat(result.stderr + result.stdout)
    assert result.returncode == 2, output
    assert "cannot open the job store postgresql://inferd:***@127.0.0.1" in output, output
    assert "hunter2" not in output
    assert "Traceback" not in output
