"""/docs as a user meets it: renders from local assets only, Authorize with both key schemes, every route
documents its real body and error shape, and every documented example works on the bundled models."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from inferd_http_testkit import ADMIN_KEY, EXAMPLES, InProcessAPI, in_process_api

from inferd.http.openapi import swagger_assets_dir


@pytest.fixture(scope="module")
def examples_api() -> Iterator[InProcessAPI]:
    with in_process_api(models=EXAMPLES) as api:
        yield api


@pytest.fixture(scope="module")
def document(examples_api: InProcessAPI) -> dict[str, Any]:
    response = examples_api.get("/openapi.json")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def test_docs_page_loads_nothing_from_the_internet(examples_api: InProcessAPI) -> None:
    page = examples_api.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert not re.search(r"(src|href)=\"(https?:)?//", page.text), page.text
    assets = re.findall(r"(?:src|href)=\"(/docs/assets/[^\"]+)\"", page.text)
    assert len(assets) >= 2
    for asset in assets:
        response = examples_api.get(asset)
        assert response.status_code == 200, asset
        assert response.content == (swagger_assets_dir() / asset.rsplit("/", 1)[1]).read_bytes()
    assert examples_api.get("/docs/assets/swagger-ui-bundle.js").headers["content-type"] in (
        "application/javascript",
        "text/javascript",
    )
    assert examples_api.get("/docs/assets/../../etc/passwd").status_code == 404


def test_authorize_offers_bearer_and_x_api_key(document: dict[str, Any]) -> None:
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schemes["bearer"]["description"],
    }
    assert schemes["apiKey"]["in"] == "header" and schemes["apiKey"]["name"] == "X-API-Key"
    public = {"/livez", "/readyz", "/metrics"}
    for path, _, operation in operations(document):
        if path in public or path == "/v2" or path.startswith("/v2/health"):
            assert "security" not in operation, path
        else:
            assert operation["security"] == [{"bearer": []}, {"apiKey": []}], path


def test_every_error_response_shows_the_real_error_shape(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert set(schemas["ErrorResponse"]["properties"]) == {"error", "request_id"}
    assert "detail" not in str(schemas)
    for path, method, operation in operations(document):
        expected = "V2ErrorResponse" if path.startswith("/v2") else "ErrorResponse"
        for status, response in operation["responses"].items():
            if int(status) >= 400 and not (path.endswith("ready") and status == "400"):
                ref = response["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/" + expected), (path, method, status)


def test_every_post_with_a_body_documents_it(document: dict[str, Any]) -> None:
    submit = document["paths"]["/v1/models/{name}/jobs"]["post"]
    assert submit["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/JobSubmitRequest"
    )
    assert "202" in submit["responses"]
    for path, method, operation in operations(document):
        if method == "post" and not path.endswith(("/cancel", "/reload")):
            assert "requestBody" in operation, path


def _example_url(path: str, operation: dict[str, Any]) -> str | None:
    for parameter in operation.get("parameters", []):
        if parameter["in"] == "path":
            if "example" not in parameter:
                return None
            path = path.replace("{" + parameter["name"] + "}", parameter["example"])
    return path


def test_every_documented_example_works_on_the_bundled_models(
    examples_api: InProcessAPI, document: dict[str, Any]
) -> None:
    schemas = document["components"]["schemas"]
    tried = 0
    for path, method, operation in operations(document):
        url = _example_url(path, operation)
        if url is None:
            continue  # needs an id only a previous call can give (a job)
        kwargs: dict[str, Any] = {}
        if "requestBody" in operation:
            schema = operation["requestBody"]["content"]["application/json"]["schema"]
            if "$ref" in schema:
                kwargs["json"] = schemas[schema["$ref"].rsplit("/", 1)[1]]["example"]
        response = examples_api.request(method.upper(), url, key=ADMIN_KEY, **kwargs)
        assert response.status_code < 400, (method, url, response.text)
        tried += 1
    assert tried >= 10


def test_scopes_are_documented_from_the_key_scope_enum(document: dict[str, Any]) -> None:
    from inferd.core.tenancy import KeyScope

    schemas = document["components"]["schemas"]
    assert schemas["KeyScope"]["enum"] == [scope.value for scope in KeyScope]
    for model in ("KeyCreateRequest", "KeyInfo"):
        assert schemas[model]["properties"]["scopes"]["items"] == {"$ref": "#/components/schemas/KeyScope"}
    needs = {
        operation["operationId"]: operation["description"]
        for _, _, operation in operations(document)
        if "security" in operation
    }
    assert needs and all(
        re.search(r"Needs the `(predict|jobs|models|admin)` scope \(or `admin`\)\.$", text)
        for text in needs.values()
    ), needs
