"""The route table: what /openapi.json documents is what the server serves and what its parsers accept;
unknown routes and methods; auth before anything else on every scoped route."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
from inferd_http_testkit import ADMIN_KEY, JOBS_KEY, PREDICT_KEY, InProcessAPI, assert_error

from inferd.core.errors import InvalidInputError
from inferd.http.routes import ErrorStyle, Route

PARAMS = {"name": "ok", "version": "1", "job_id": "00000000-0000-4000-8000-000000000000"}


def table_routes(api: InProcessAPI) -> list[Route]:
    return list(api.app.table.routes)


def concrete(path: str) -> str:
    for name, value in PARAMS.items():
        path = path.replace("{" + name + "}", value)
    return path


def resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    for part in schema.get("allOf", []):
        schema = {**resolve(document, part), **{k: v for k, v in schema.items() if k != "allOf"}}
    return schema


def test_openapi_documents_exactly_the_served_routes(api: InProcessAPI) -> None:
    document = api.get("/openapi.json").json()
    documented = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    served = {(route.method, route.path) for route in table_routes(api) if route.in_schema}
    assert documented == served
    for method, path in sorted(served):
        # Served: the dispatcher knows the route (anything but a 404/405 from routing itself).
        response = api.request(method, concrete(path), key=PREDICT_KEY, json={})
        if response.status_code in (404, 405):
            assert response.json()["error"]["code"] not in ("not_found", "method_not_allowed"), (
                path,
                response.text,
            )


def _body_cases(document: dict[str, Any], schema: dict[str, Any]) -> tuple[list[Any], list[Any]]:
    """(bodies the schema accepts, bodies it refuses), derived from the schema's own keywords."""
    example = schema["example"]
    accepted: list[Any] = [example]
    refused: list[Any] = ["not an object", [example], {**example, "unknown_field": 1}]
    assert schema.get("additionalProperties") is False
    for name in schema.get("required", []):
        refused.append({k: v for k, v in example.items() if k != name})
    one_of = [option["required"] for option in schema.get("oneOf", [])]
    if one_of:
        refused.append({k: v for k, v in example.items() if not any(k in names for names in one_of)})
        both = copy.deepcopy(example)
        for names in one_of:
            for name in names:
                both.setdefault(name, example.get(name, [1]))
        refused.append(both)
    for name, raw_prop in schema["properties"].items():
        prop = resolve(document, raw_prop)
        kind = prop.get("type")
        if kind is None:
            continue  # any JSON value
        if prop.get("nullable") and name not in schema.get("required", []):
            accepted.append({**example, name: None})
        if kind == "number":
            low = prop.get("minimum", 0)
            accepted.append({**example, name: low + 1})
            refused.append({**example, name: "1"})
            if prop.get("exclusiveMinimum"):
                refused.append({**example, name: low})
        elif kind == "integer":
            low, high = prop.get("minimum", 1), prop.get("maximum", 10)
            accepted.append({**example, name: low})
            refused += [{**example, name: 1.5}, {**example, name: high + 1}, {**example, name: low - 1}]
        elif kind == "object":
            accepted.append({**example, name: {"k": 1}})
            refused.append({**example, name: [1]})
        elif kind == "array" and name in example:
            refused.append({**example, name: "x"})
            if prop.get("minItems") == 1:
                refused.append({**example, name: []})
    return accepted, refused


def test_every_documented_body_is_what_its_parser_accepts(api: InProcessAPI) -> None:
    document = api.get("/openapi.json").json()
    checked = 0
    for route in table_routes(api):
        if route.body is None or route.body.parse is None:
            continue
        operation = document["paths"][route.path][route.method.lower()]
        schema = resolve(document, operation["requestBody"]["content"]["application/json"]["schema"])
        accepted, refused = _body_cases(document, schema)
        for body in accepted:
            route.body.parse(orjson.dumps(body))
        for body in refused:
            with pytest.raises(InvalidInputError):
                route.body.parse(orjson.dumps(body))
                pytest.fail(f"{route.method} {route.path} accepted {body!r}, which its schema refuses")
        checked += 1
    assert checked >= 6  # predict, batch and jobs, routed and pinned


def test_every_documented_query_parameter_is_parsed_and_no_other(api: InProcessAPI) -> None:
    """Each route's query parameters are declared once (its query model): the document lists exactly
    them, the dispatcher refuses any other one naming it and them, and V2 routes ignore others."""
    document = api.get("/openapi.json").json()
    checked = 0
    for route in table_routes(api):
        accepted = list(route.query.model_fields) if route.query is not None else []
        if route.in_schema:
            operation = document["paths"][route.path][route.method.lower()]
            documented = [p["name"] for p in operation.get("parameters", []) if p["in"] == "query"]
            assert documented == accepted, route.path
        # An admin key gets past every scope check, so the answer is the query's.
        url = concrete(route.path) + "?stauts=failed"
        response = api.request(route.method, url, key=ADMIN_KEY, json={})
        if route.ignores_unknown_query:
            assert route.error_style is ErrorStyle.V2, route.path
            assert response.status_code != 422 or "stauts" not in response.text, (route.path, response.text)
            continue
        message = assert_error(response, 422, "invalid_input")["error"]["message"]
        assert message.startswith(f"unknown query parameter 'stauts'; {route.method} {route.path} takes "), (
            message
        )
        if accepted:
            assert message.endswith("takes only " + ", ".join(accepted)), message
        else:
            assert message.endswith("takes no query parameters"), message
        if route.in_schema:
            assert "422" in document["paths"][route.path][route.method.lower()]["responses"], route.path
        checked += 1
    assert checked >= 20


def test_an_unknown_query_parameter_is_refused_not_ignored(api: InProcessAPI) -> None:
    api.post("/v1/models/ok/jobs", key=JOBS_KEY, json={"input": 1})
    assert api.get("/v1/jobs?status=failed", key=JOBS_KEY).json()["jobs"] == []
    response = api.get("/v1/jobs?stauts=failed&limit=5&x=1", key=JOBS_KEY)
    message = assert_error(response, 422, "invalid_input")["error"]["message"]
    assert message == (
        "unknown query parameters 'stauts', 'x'; GET /v1/jobs takes only status, model, limit, cursor"
    )
    ok = api.post("/v1/models/ok/predict?timeout_s=1", key=PREDICT_KEY, json={"input": 1})
    assert_error(ok, 422, "invalid_input")  # timeout_s goes in the body
    # An empty query string is no parameter.
    assert api.post("/v1/models/ok/predict?", key=PREDICT_KEY, json={"input": 1}).status_code == 200


def test_v2_routes_ignore_query_parameters_as_triton_does(api: InProcessAPI) -> None:
    """tritonclient's ``query_params=`` goes along on every call; the protocol defines none."""
    body = {"inputs": [{"name": "x", "datatype": "INT64", "shape": [1], "data": [1]}]}
    response = api.post("/v2/models/ok/infer?trace=1", key=PREDICT_KEY, json=body)
    assert response.status_code == 200, response.text
    assert api.get("/v2/health/ready?x=1").status_code == 200


def test_every_scoped_route_checks_the_key_before_anything_else(api: InProcessAPI) -> None:
    scoped = [route for route in table_routes(api) if route.scope is not None]
    assert len(scoped) >= 10
    for route in scoped:
        response = api.request(route.method, concrete(route.path), content=b"{oops")
        if route.error_style is ErrorStyle.V2:
            assert response.status_code == 401 and set(response.json()) == {"error"}, response.text
        else:
            assert_error(response, 401, "unauthenticated")
        assert response.headers["www-authenticate"] == "Bearer", route.path


def test_unknown_route_is_a_native_404(api: InProcessAPI) -> None:
    assert_error(api.get("/v1/nothing-here"), 404, "not_found")
    # No redirects: a trailing slash is another path (a redirect would be built from the Host header).
    response = api.post("/v1/models/ok/predict/", key=PREDICT_KEY, json={"input": 1})
    assert_error(response, 404, "not_found")


def test_head_is_served_by_the_get_route(api: InProcessAPI) -> None:
    assert api.request("HEAD", "/livez").status_code == 200
    assert api.request("HEAD", "/v1/models", key=PREDICT_KEY).status_code == 403  # the GET route's scope


def test_wrong_method_is_405_with_allow(api: InProcessAPI) -> None:
    response = api.get("/v1/models/ok/predict", key=PREDICT_KEY)
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "POST"


def test_unknown_v2_route_uses_the_protocol_error_shape(api: InProcessAPI) -> None:
    response = api.get("/v2/no/such/route")
    assert response.status_code == 404
    assert set(response.json()) == {"error"} and isinstance(response.json()["error"], str)
